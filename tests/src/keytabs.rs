//! Keytabs for the lab's accounts, made the way an administrator would: the computer's or
//! service account's password through MIT `ktutil` with the salt AD uses (the KDC's keys are
//! derived from it), or — for a DC, whose password nobody knows — exported on the DC itself
//! (`samba-tool domain exportkeytab` through `lab.sh exec`). AES-256 only: the service account
//! gets `msDS-SupportedEncryptionTypes` = AES, as the enrollment docs ask, so its tickets are
//! never RC4.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{Lab, TestHost};

/// msDS-SupportedEncryptionTypes: AES128 | AES256.
pub const AES_ONLY: u32 = 0x18;

/// Writes `path` (mode 0600) with `principal`'s AES-256 key from `password` and AD's `salt`.
pub fn from_password(principal: &str, password: &str, salt: &str, path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut child = Command::new("ktutil")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ktutil (krb5-user)")?;
    let script = format!(
        "addent -password -p {principal} -k 1 -e aes256-cts-hmac-sha1-96 -s {salt}\n{password}\nwkt {}\nquit\n",
        path.display()
    );
    child.stdin.take().expect("stdin").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !path.is_file() {
        bail!(
            "ktutil wrote no {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    set_private(path);
    Ok(())
}

fn set_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

impl Lab {
    /// The keytab of a test computer (`HV01$@LAB.TEST`), as the host itself holds it.
    pub fn host_keytab(&self, host: &TestHost, path: &Path) -> Result<()> {
        let realm = self.realm();
        let salt = format!("{realm}host{}.{}", host.netbios.to_lowercase(), realm.to_lowercase());
        from_password(&format!("{}$@{realm}", host.netbios), &host.password, &salt, path)
    }

    /// The first DC's own keytab (`DC1$`), exported on the DC.
    pub fn dc_keytab(&self, path: &Path) -> Result<()> {
        let _ = std::fs::remove_file(path);
        let smb_conf = Path::new(self.var("KCDSYNC_LAB_DIR")).join("etc/smb.conf");
        let dc = self
            .var("LAB_DC_HOST")
            .split('.')
            .next()
            .unwrap_or("dc1")
            .to_uppercase();
        let out = Command::new("bash")
            .arg(crate::repo_root().join("deploy/lab/lab.sh"))
            .args(["exec", "--", "samba-tool", "domain", "exportkeytab"])
            .arg(path)
            .arg(format!("--principal={dc}$@{}", self.realm()))
            .arg("-s")
            .arg(&smb_conf)
            .output()?;
        if !path.is_file() {
            bail!(
                "exportkeytab wrote no {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        set_private(path);
        Ok(())
    }

    /// A user account `name` in `ou_dn` with a password, AES-only tickets and, when given, the
    /// service principal `spn`; its keytab for `principal` (the SPN, or the user) in `path`.
    pub async fn account_with_keytab(&self, ou_dn: &str, name: &str, spn: Option<&str>, path: &Path) -> Result<String> {
        let mut ldap = self.admin().await?;
        let dn = format!("CN={name},{ou_dn}");
        let password = format!("Kcd-{}-Aa1!", crate::token());
        let mut attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> = vec![
            (b"objectClass".to_vec(), HashSet::from([b"user".to_vec()])),
            (b"sAMAccountName".to_vec(), HashSet::from([name.as_bytes().to_vec()])),
            (b"unicodePwd".to_vec(), HashSet::from([crate::unicode_pwd(&password)])),
            // NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD
            (b"userAccountControl".to_vec(), HashSet::from([b"66048".to_vec()])),
            (
                b"msDS-SupportedEncryptionTypes".to_vec(),
                HashSet::from([AES_ONLY.to_string().into_bytes()]),
            ),
        ];
        if let Some(spn) = spn {
            attrs.push((
                b"servicePrincipalName".to_vec(),
                HashSet::from([spn.as_bytes().to_vec()]),
            ));
        }
        ldap.add(&dn, attrs)
            .await?
            .success()
            .with_context(|| format!("creating {dn}"))?;
        let _ = ldap.unbind().await;
        let realm = self.realm();
        let principal = match spn {
            Some(spn) => format!("{spn}@{realm}"),
            None => format!("{name}@{realm}"),
        };
        // A user's keys are salted with the realm and its sAMAccountName.
        from_password(&principal, &password, &format!("{realm}{name}"), path)?;
        Ok(principal)
    }
}
