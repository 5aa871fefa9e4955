//! Writing the PEM files: private keys 0600 from the moment they exist,
//! certificates 0644, new directories 0700, and nothing replaced without
//! `--force`. Also loading a CA directory as `certs ca` wrote it.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;

use super::{CA_CERT_FILE, CA_KEY_FILE, Ca};

/// Loads `ca.pem` + `ca.key` from a CA directory (as `certs ca` writes it).
/// Warns on stderr when the key is readable by group or others.
pub fn load_ca_dir(dir: &Path) -> anyhow::Result<Ca> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let cert = fs::read_to_string(&cert_path).with_context(|| {
        format!(
            "reading the CA certificate {} (create one with `certs ca`)",
            cert_path.display()
        )
    })?;
    let key = fs::read_to_string(&key_path).with_context(|| format!("reading the CA key {}", key_path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(&key_path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} is readable by others (mode {:o}); run `chmod 600 {}`",
                key_path.display(),
                meta.permissions().mode() & 0o777,
                key_path.display()
            );
        }
    }
    Ca::load(&cert, &key).with_context(|| format!("loading the CA from {}", dir.display()))
}

/// Refuses up front, before anything is written, if a target exists and
/// `--force` was not given.
pub(super) fn check_free(paths: &[&Path], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    let existing: Vec<String> = paths
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        anyhow::bail!("refusing to overwrite {}; pass --force to replace", existing.join(", "));
    }
    Ok(())
}

pub(super) fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))
}

pub(super) fn write_key(path: &Path, contents: &[u8], force: bool) -> anyhow::Result<()> {
    write_file(path, contents, 0o600, force)?;
    println!("wrote {} (private key, mode 0600)", path.display());
    Ok(())
}

pub(super) fn write_cert(path: &Path, contents: &[u8], force: bool) -> anyhow::Result<()> {
    write_file(path, contents, 0o644, force)?;
    println!("wrote {} (certificate, mode 0644)", path.display());
    Ok(())
}

/// Writes a file that has `mode` from the moment it exists. Without `force`
/// the file must not exist (create_new, so a race cannot clobber it either).
/// With `force` the content goes to a fresh sibling file that is then renamed
/// over the target: an existing file's looser mode is never inherited, and
/// readers see the old or the new file, never half of one.
fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    let target = if force {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("target has no file name")?;
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        tmp
    } else {
        path.to_path_buf()
    };
    let result = (|| -> std::io::Result<()> {
        let mut file = open_new(&target, mode)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            anyhow::bail!("refusing to overwrite {}; pass --force to replace", path.display())
        }
        Err(e) => {
            let _ = fs::remove_file(&target);
            Err(e).with_context(|| format!("writing {}", target.display()))
        }
        Ok(()) if force => {
            if let Err(e) = fs::rename(&target, path) {
                let _ = fs::remove_file(&target);
                return Err(e).with_context(|| format!("replacing {}", path.display()));
            }
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

#[cfg(unix)]
fn open_new(path: &Path, mode: u32) -> std::io::Result<fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have narrowed the mode; set exactly what was asked
    // (never wider than `mode`, so keys stay 0600).
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(file)
}

#[cfg(not(unix))]
fn open_new(path: &Path, _mode: u32) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::certs::test_util::{HOST, der, verify_client};
    use crate::certs::{CertsCommand, peer_host_names, run};

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn cli_writes_keys_0600_certificates_0644_directories_0700() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("pki/ca");
        let out = dir.path().join("pki/tls");
        run(CertsCommand::Ca {
            out_dir: ca_dir.clone(),
            name: "kcdsync CA".into(),
            days: 30,
            force: false,
        })
        .unwrap();
        run(CertsCommand::Controller {
            ca_dir: ca_dir.clone(),
            out_dir: out.clone(),
            names: vec!["kcdsync.contoso.com".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            days: 10,
            force: false,
        })
        .unwrap();
        run(CertsCommand::Agent {
            ca_dir: ca_dir.clone(),
            out_dir: out.clone(),
            host: "HV01.Contoso.com".into(),
            days: 10,
            force: false,
        })
        .unwrap();
        run(CertsCommand::Agents {
            ca_dir: ca_dir.clone(),
            out_dir: out.clone(),
            hosts: vec![
                "hv02.contoso.com".into(),
                "hv03.contoso.com".into(),
                "HV02.contoso.com".into(),
            ],
            days: 10,
            force: false,
        })
        .unwrap();

        assert_eq!(mode(&ca_dir), 0o700);
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
        assert_eq!(mode(&ca_dir.join("ca.pem")), 0o644);
        for stem in ["controller", "hv01.contoso.com", "hv02.contoso.com", "hv03.contoso.com"] {
            assert_eq!(mode(&out.join(format!("{stem}.key"))), 0o600, "{stem}");
            assert_eq!(mode(&out.join(format!("{stem}.pem"))), 0o644, "{stem}");
        }
        let mut files: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files.len(), 8, "{files:?}");

        // The files are usable: the loaded CA trusts the agent certificate.
        let ca = load_ca_dir(&ca_dir).unwrap();
        let agent = fs::read_to_string(out.join("hv01.contoso.com.pem")).unwrap();
        verify_client(&ca, &agent).unwrap();
        assert_eq!(peer_host_names(&der(&agent)).unwrap(), [HOST]);
        let key = fs::read_to_string(out.join("hv01.contoso.com.key")).unwrap();
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    }

    #[test]
    fn existing_files_are_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca_cmd = |force| CertsCommand::Ca {
            out_dir: ca_dir.clone(),
            name: "kcdsync CA".into(),
            days: 30,
            force,
        };
        run(ca_cmd(false)).unwrap();
        let before = fs::read(ca_dir.join("ca.pem")).unwrap();
        let err = run(ca_cmd(false)).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(fs::read(ca_dir.join("ca.pem")).unwrap(), before);

        // One existing agent file blocks the whole batch.
        let out = dir.path().join("agents");
        let agents = |force| CertsCommand::Agents {
            ca_dir: ca_dir.clone(),
            out_dir: out.clone(),
            hosts: vec!["hv01.contoso.com".into(), "hv02.contoso.com".into()],
            days: 10,
            force,
        };
        fs::create_dir(&out).unwrap();
        fs::write(out.join("hv02.contoso.com.key"), "keep me").unwrap();
        let err = run(agents(false)).unwrap_err();
        assert!(err.to_string().contains("hv02.contoso.com.key"), "{err}");
        assert!(!out.join("hv01.contoso.com.pem").exists());
        assert_eq!(fs::read_to_string(out.join("hv02.contoso.com.key")).unwrap(), "keep me");

        // --force replaces, and a replaced key does not keep a looser mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(out.join("hv02.contoso.com.key"), fs::Permissions::from_mode(0o644)).unwrap();
        }
        run(agents(true)).unwrap();
        assert_ne!(fs::read_to_string(out.join("hv02.contoso.com.key")).unwrap(), "keep me");
        #[cfg(unix)]
        assert_eq!(mode(&out.join("hv02.contoso.com.key")), 0o600);
        run(ca_cmd(true)).unwrap();
        assert_ne!(fs::read(ca_dir.join("ca.pem")).unwrap(), before);
        // No temporary files left behind.
        assert!(
            fs::read_dir(&out)
                .unwrap()
                .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.'))
        );
    }
}
