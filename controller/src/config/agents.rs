//! `[agents]`: the mTLS gRPC endpoint agents connect to, how long an
//! agent may stay silent before the controller calls its host stale, and the
//! CA that renews agents' certificates over their streams (`crate::renewal`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::certs::Ca;

use serde::Deserialize;

use super::{ConfigError, invalid, resolve};

/// How long a host may go without a heartbeat before it counts as stale,
/// when `[agents]` does not set `stale_after_secs` or is absent. The hub,
/// diagnosis and the API should all ask
/// [`Config::stale_after`](super::Config::stale_after), so they agree.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgents {
    listen: String,
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: PathBuf,
    #[serde(default = "default_heartbeat_secs")]
    heartbeat_secs: u64,
    #[serde(default = "default_stale_secs")]
    stale_after_secs: u64,
    #[serde(default = "default_max_message")]
    max_message_bytes: usize,
    issuing_ca_cert_file: Option<PathBuf>,
    issuing_ca_key_file: Option<PathBuf>,
    #[serde(default = "default_lifetime_hours")]
    cert_lifetime_hours: u64,
    enroll: Option<RawEnroll>,
}

/// `[agents.enroll]`: agents without a certificate enroll as their computer account.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnroll {
    keytab_file: PathBuf,
    service_principal: String,
}

/// `agents.cert_lifetime_hours`: an hour to 30 days.
const LIFETIME_HOURS: std::ops::RangeInclusive<u64> = 1..=720;

fn default_lifetime_hours() -> u64 {
    crate::renewal::DEFAULT_LIFETIME.as_secs() / 3600
}

fn default_heartbeat_secs() -> u64 {
    15
}
fn default_stale_secs() -> u64 {
    DEFAULT_STALE_AFTER.as_secs()
}
fn default_max_message() -> usize {
    1 << 20
}

/// The mTLS gRPC endpoint agents connect to (`serve` only).
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    pub listen: std::net::SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA that issued the agents' client certificates.
    pub client_ca_file: PathBuf,
    pub heartbeat: Duration,
    pub stale_after: Duration,
    pub max_message_bytes: usize,
    /// The CA that renews agents' certificates over their streams (`issuing_ca_cert_file` +
    /// `issuing_ca_key_file`), the one `client_ca_file` trusts; `None`: renewals are refused
    /// with FAILED_PRECONDITION.
    pub issuing_ca: Option<Arc<Ca>>,
    /// How long a renewed certificate lives (never past the CA's own end).
    pub cert_lifetime: Duration,
    /// Kerberos enrollment (`[agents.enroll]`): the controller's service principal and its
    /// keytab. `None`: agents need certificates made by hand (`certs agent`).
    pub enroll: Option<kcdsync_gss::Acceptor>,
}

pub(super) fn validate_agents(raw: RawAgents, base_dir: &Path) -> Result<AgentsConfig, ConfigError> {
    let listen = raw.listen.parse().map_err(|_| {
        invalid(
            "agents.listen",
            format!("`{}` is not an address:port such as 0.0.0.0:7443", raw.listen),
        )
    })?;
    let mut files = Vec::new();
    for (key, p) in [
        ("agents.cert_file", raw.cert_file),
        ("agents.key_file", raw.key_file),
        ("agents.client_ca_file", raw.client_ca_file),
    ] {
        let p = resolve(base_dir, p);
        if !p.is_file() {
            return Err(invalid(key, format!("{} does not exist or is not a file", p.display())));
        }
        files.push(p);
    }
    if raw.heartbeat_secs == 0 || raw.stale_after_secs <= raw.heartbeat_secs {
        return Err(invalid(
            "agents.stale_after_secs",
            "must be longer than agents.heartbeat_secs (which must be at least 1)",
        ));
    }
    if !(4096..=64 << 20).contains(&raw.max_message_bytes) {
        return Err(invalid("agents.max_message_bytes", "must be between 4096 and 67108864"));
    }
    let client_ca_file = files.pop().expect("three files");
    let key_file = files.pop().expect("three files");
    super::secret::check_private("agents.key_file", &key_file)?;
    let cert_file = files.pop().expect("three files");
    if !LIFETIME_HOURS.contains(&raw.cert_lifetime_hours) {
        return Err(invalid(
            "agents.cert_lifetime_hours",
            format!(
                "must be {} to {} hours (agents renew at half-life), not {}",
                LIFETIME_HOURS.start(),
                LIFETIME_HOURS.end(),
                raw.cert_lifetime_hours
            ),
        ));
    }
    let issuing_ca = match (raw.issuing_ca_cert_file, raw.issuing_ca_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(Arc::new(load_issuing_ca(
            &resolve(base_dir, cert),
            &resolve(base_dir, key),
            &client_ca_file,
        )?)),
        (Some(_), None) => {
            return Err(invalid(
                "agents.issuing_ca_key_file",
                "agents.issuing_ca_cert_file is set: give its private key too (or neither)",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "agents.issuing_ca_cert_file",
                "agents.issuing_ca_key_file is set: give the CA certificate too (or neither)",
            ));
        }
    };
    let enroll = match raw.enroll {
        None => None,
        Some(e) => Some(validate_enroll(e, base_dir, issuing_ca.is_some())?),
    };
    Ok(AgentsConfig {
        enroll,
        listen,
        cert_file,
        key_file,
        client_ca_file,
        heartbeat: Duration::from_secs(raw.heartbeat_secs),
        stale_after: Duration::from_secs(raw.stale_after_secs),
        max_message_bytes: raw.max_message_bytes,
        issuing_ca,
        cert_lifetime: Duration::from_secs(raw.cert_lifetime_hours * 3600),
    })
}

/// `[agents.enroll]`: a keytab private to the controller that really holds keys for a
/// principal in a realm (checked by acquiring the acceptor's credentials, as enrollment will),
/// and an issuing CA to certify the hosts that enroll.
fn validate_enroll(raw: RawEnroll, base_dir: &Path, has_ca: bool) -> Result<kcdsync_gss::Acceptor, ConfigError> {
    if !has_ca {
        return Err(invalid(
            "agents.enroll",
            "enrolling agents issues them certificates: set agents.issuing_ca_cert_file and \
             agents.issuing_ca_key_file too",
        ));
    }
    if kcdsync_gss::split_principal(&raw.service_principal).is_none() {
        return Err(invalid(
            "agents.enroll.service_principal",
            format!(
                "`{}` needs its realm: e.g. kcdsync/ctl.contoso.com@CONTOSO.COM (the realm is also the only one \
                 whose computer accounts may enroll)",
                raw.service_principal
            ),
        ));
    }
    let keytab = resolve(base_dir, raw.keytab_file);
    super::secret::check_private("agents.enroll.keytab_file", &keytab)?;
    let acceptor = kcdsync_gss::Acceptor {
        principal: raw.service_principal,
        keytab,
    };
    acceptor.check().map_err(|e| {
        invalid(
            "agents.enroll.keytab_file",
            format!(
                "{} cannot accept Kerberos for {}: {e} (export the service account's keys, e.g. \
                 `ktpass /princ {} /mapuser <account> /crypto AES256-SHA1 /ptype KRB5_NT_PRINCIPAL /out …`)",
                acceptor.keytab.display(),
                acceptor.principal,
                acceptor.principal
            ),
        )
    })?;
    Ok(acceptor)
}

/// The issuing CA: its key private to its owner (mode 600), the key the certificate's, and the
/// certificate one that `client_ca_file` trusts — a certificate from any other CA would be
/// issued and then refused at the agent's next connection.
fn load_issuing_ca(cert: &Path, key: &Path, client_ca_file: &Path) -> Result<Ca, ConfigError> {
    let cert_pem = std::fs::read_to_string(cert)
        .map_err(|e| invalid("agents.issuing_ca_cert_file", format!("{}: {e}", cert.display())))?;
    let key_pem = super::secret::read_private("agents.issuing_ca_key_file", key)?;
    let ca = Ca::load(&cert_pem, &key_pem).map_err(|e| {
        invalid(
            "agents.issuing_ca_cert_file",
            format!("{} with {}: {e}", cert.display(), key.display()),
        )
    })?;
    let trusted: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(client_ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid("agents.client_ca_file", format!("{}: {e}", client_ca_file.display())))?;
    if !trusted.iter().any(|t| t.as_ref() == ca.cert_der()) {
        return Err(invalid(
            "agents.issuing_ca_cert_file",
            format!(
                "{} (\"{}\") is not a certificate of agents.client_ca_file {}: the controller would issue \
                 certificates it then refuses; give the CA that issued the agents' certificates (`certs ca` wrote \
                 it as ca.pem + ca.key; an intermediate CA is not supported)",
                cert.display(),
                ca.name(),
                client_ca_file.display()
            ),
        ));
    }
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::DEFAULT_STALE_AFTER;
    use crate::config::test_util::{AD, parse};

    #[test]
    fn stale_after_is_the_agents_setting_or_one_minute() {
        let g = "\n[[group]]\nname = \"a\"\nmode = \"plan\"\nhosts = [\"hv01\"]\n";
        assert_eq!(DEFAULT_STALE_AFTER, Duration::from_secs(60));
        let c = parse(&format!("{AD}{g}")).unwrap();
        assert_eq!(c.stale_after(), DEFAULT_STALE_AFTER);
        // The test fixture's one file stands in for the certificate, key and CA.
        let agents =
            "[agents]\nlisten = \"127.0.0.1:7443\"\ncert_file = \"pw\"\nkey_file = \"pw\"\nclient_ca_file = \"pw\"\n";
        let c = parse(&format!("{AD}{agents}{g}")).unwrap();
        assert_eq!(c.stale_after(), DEFAULT_STALE_AFTER);
        let c = parse(&format!("{AD}{agents}stale_after_secs = 90\n{g}")).unwrap();
        assert_eq!(c.stale_after(), Duration::from_secs(90));
    }

    /// A config whose `[agents]` trusts `ca.pem` and adds `more`, in a directory holding the
    /// agents' CA (`ca.pem`, `ca.key` mode 600) and another CA (`other.pem`, `other.key`).
    fn with_cas(more: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        use crate::certs::Ca;
        let dir = tempfile::tempdir().unwrap();
        let private = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        };
        private("pw", "s3cret\n");
        let (ca, other) = (Ca::new("agents CA").unwrap(), Ca::new("other CA").unwrap());
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let public = std::fs::Permissions::from_mode(0o644);
            std::fs::set_permissions(dir.path().join("ca.pem"), public).unwrap();
        }
        private("ca.key", &ca.key_pem());
        std::fs::write(dir.path().join("other.pem"), other.cert_pem()).unwrap();
        private("other.key", &other.key_pem());
        let text = format!(
            "{AD}[agents]\nlisten = \"127.0.0.1:7443\"\ncert_file = \"pw\"\nkey_file = \"pw\"\nclient_ca_file = \"ca.pem\"\n{more}\n\
             [[group]]\nname = \"a\"\nmode = \"plan\"\nhosts = [\"hv01\"]\n"
        );
        crate::config::Config::parse(&text, &dir.path().join("kcdsync.toml"))
    }

    #[test]
    fn renewal_is_off_without_an_issuing_ca_and_lives_a_day_by_default() {
        let c = with_cas("").unwrap();
        let a = c.agents.unwrap();
        assert!(a.issuing_ca.is_none());
        assert_eq!(a.cert_lifetime, Duration::from_secs(24 * 3600));
        let c =
            with_cas("issuing_ca_cert_file = \"ca.pem\"\nissuing_ca_key_file = \"ca.key\"\ncert_lifetime_hours = 6")
                .unwrap();
        let a = c.agents.unwrap();
        assert_eq!(a.issuing_ca.unwrap().name(), "agents CA");
        assert_eq!(a.cert_lifetime, Duration::from_secs(6 * 3600));
    }

    #[test]
    fn the_issuing_ca_must_be_the_trusted_one_whole_and_private() {
        let e = with_cas("issuing_ca_cert_file = \"other.pem\"\nissuing_ca_key_file = \"other.key\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`agents.issuing_ca_cert_file`"), "{e}");
        assert!(e.contains("is not a certificate of agents.client_ca_file"), "{e}");
        let e = with_cas("issuing_ca_cert_file = \"ca.pem\"\nissuing_ca_key_file = \"other.key\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not belong to the CA certificate"), "{e}");
        let e = with_cas("issuing_ca_cert_file = \"ca.pem\"").unwrap_err().to_string();
        assert!(
            e.contains("`agents.issuing_ca_key_file`") && e.contains("or neither"),
            "{e}"
        );
        let e = with_cas("issuing_ca_key_file = \"ca.key\"").unwrap_err().to_string();
        assert!(e.contains("`agents.issuing_ca_cert_file`"), "{e}");
        for bad in [0, 721] {
            let e = with_cas(&format!("cert_lifetime_hours = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("`agents.cert_lifetime_hours`") && e.contains("1 to 720 hours"),
                "{e}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn an_issuing_ca_key_others_can_read_is_refused() {
        // ca.pem stands in for a key file of mode 0644.
        let e = with_cas("issuing_ca_cert_file = \"ca.pem\"\nissuing_ca_key_file = \"ca.pem\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`agents.issuing_ca_key_file`") && e.contains("chmod 600"),
            "{e}"
        );
    }
}
