//! The agent's configuration file (TOML), validated once at start-up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// PowerShell and klist on a real Hyper-V host.
    #[default]
    Windows,
    /// A host described by `simulated_host` (lab, demo, tests).
    Simulated,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    controller_url: String,
    /// Name to verify in the controller's certificate when the URL holds an
    /// IP address or a different name.
    tls_server_name: Option<String>,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    outbox_dir: PathBuf,
    #[serde(default)]
    probe: ProbeKind,
    simulated_host: Option<PathBuf>,
    #[serde(default = "d60")]
    report_interval_secs: u64,
    #[serde(default = "d10")]
    attempts_interval_secs: u64,
    #[serde(default = "d30")]
    probe_timeout_secs: u64,
    /// Above this many bytes of waiting attempts the agent stops reading the
    /// event log: the newest attempts wait there, none stored is dropped.
    #[serde(default = "default_outbox_max_bytes")]
    outbox_max_bytes: u64,
    /// The controller's `agents.max_message_bytes`.
    #[serde(default = "default_max_message_bytes")]
    max_message_bytes: usize,
    /// An attempt not acknowledged this long after it was sent is sent again.
    #[serde(default = "d30")]
    resend_after_secs: u64,
    /// At most one ticket purge per this many seconds; purges asked for within it wait for
    /// its end and are answered by one run.
    #[serde(default = "d10")]
    purge_min_interval_secs: u64,
    /// Where the Windows service writes its log (`agent.log`, rotated by size); default
    /// `logs` beside this file. A console run logs to stderr.
    log_dir: Option<PathBuf>,
    /// Enrollment (by Kerberos, or once by a join token): without it, cert_file and key_file
    /// are made by hand.
    enroll: Option<RawEnroll>,
}

/// `[enroll]`: get a certificate by proving, with Kerberos, that this agent is its host's
/// computer account — when there is none yet, or it has expired. A host that cannot reach its
/// KDC proves it once with a join token instead (`join_token_file`). One of the two at least.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnroll {
    /// The controller's service principal, e.g. `kcdsync/ctl.contoso.com` (realm: the host's).
    service_principal: Option<String>,
    /// A file holding a one-time join token (`kcdsync-controller agents token create HOST`),
    /// readable only by the agent (Unix: mode 600; Windows: SYSTEM and Administrators). Used
    /// when it exists and Kerberos is not configured or cannot get a ticket; deleted once spent.
    join_token_file: Option<PathBuf>,
    /// The FQDN to ask a certificate for; default the probe's (the computer's dNSHostName).
    host: Option<String>,
    /// Unix only (SSPI uses the logon session's): the host's keytab, its principal
    /// (default: the keytab's first), a credential cache (default: a private in-memory one).
    keytab_file: Option<PathBuf>,
    principal: Option<String>,
    ccache: Option<String>,
    /// The first wait after a failed enrollment (doubling, at most 10 minutes).
    #[serde(default = "d30")]
    retry_secs: u64,
}

/// `[enroll]`, validated: `service_principal`, `join_token_file` or both.
#[derive(Debug, Clone)]
pub struct EnrollConfig {
    /// Enrollment by Kerberos, to this service principal.
    pub service_principal: Option<String>,
    /// Enrollment by a one-time join token, read from this file when it exists.
    pub join_token_file: Option<PathBuf>,
    pub host: Option<String>,
    pub creds: kcdsync_gss::ClientCreds,
    pub retry: Duration,
}

fn validate_enroll(raw: RawEnroll, abs: impl Fn(PathBuf) -> PathBuf) -> Result<EnrollConfig, ConfigError> {
    let principal_like = |key: &'static str, v: &str| {
        let ok = !v.is_empty() && v.len() <= 256 && v.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
        if ok {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                key,
                message: format!("`{v}` is not a Kerberos principal name (e.g. kcdsync/ctl.contoso.com)"),
            })
        }
    };
    if raw.service_principal.is_none() && raw.join_token_file.is_none() {
        return Err(ConfigError::Invalid {
            key: "enroll",
            message: "say how to enroll: service_principal (Kerberos, as the controller's \
                      agents.enroll.service_principal says), join_token_file (a one-time token from \
                      `kcdsync-controller agents token create HOST`), or both"
                .into(),
        });
    }
    if let Some(spn) = &raw.service_principal {
        principal_like("enroll.service_principal", spn)?;
        if !spn.contains('/') {
            return Err(ConfigError::Invalid {
                key: "enroll.service_principal",
                message: format!(
                    "`{spn}` is not a service principal: it is SERVICE/HOST, e.g. kcdsync/ctl.contoso.com, as the \
                     controller's agents.enroll.service_principal says"
                ),
            });
        }
    }
    if let Some(p) = &raw.principal {
        principal_like("enroll.principal", p)?;
    }
    if let Some(h) = &raw.host {
        let ok = h.len() <= 253
            && h.contains('.')
            && h.split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !ok {
            return Err(ConfigError::Invalid {
                key: "enroll.host",
                message: format!("`{h}` is not a host's FQDN such as hv01.contoso.com"),
            });
        }
    }
    if !(1..=MAX_INTERVAL_SECS).contains(&raw.retry_secs) {
        return Err(ConfigError::Invalid {
            key: "enroll.retry_secs",
            message: format!("must be 1 to {MAX_INTERVAL_SECS} seconds, not {}", raw.retry_secs),
        });
    }
    Ok(EnrollConfig {
        service_principal: raw.service_principal,
        join_token_file: raw.join_token_file.map(&abs),
        host: raw.host.map(|h| h.to_ascii_lowercase()),
        creds: kcdsync_gss::ClientCreds {
            principal: raw.principal,
            keytab: raw.keytab_file.map(abs),
            ccache: raw.ccache,
        },
        retry: Duration::from_secs(raw.retry_secs),
    })
}

/// The service's log directory when the config does not say: `logs` beside the config file
/// (also where it logs when the config itself cannot be read).
pub fn default_log_dir(config_path: &Path) -> PathBuf {
    config_path.parent().unwrap_or(Path::new(".")).join("logs")
}

/// The longest report, attempts or probe interval: a day.
const MAX_INTERVAL_SECS: u64 = 86_400;

/// `outbox_max_bytes`: at least 1 MiB (a page of the event log must fit),
/// at most 16 GiB.
const OUTBOX_MAX_BYTES: std::ops::RangeInclusive<u64> = 1 << 20..=16 << 30;
/// `max_message_bytes`: the range the controller accepts for its own.
const MESSAGE_BYTES: std::ops::RangeInclusive<usize> = 4096..=64 << 20;

fn default_outbox_max_bytes() -> u64 {
    crate::outbox::DEFAULT_MAX_BYTES
}
fn default_max_message_bytes() -> usize {
    1 << 20
}
fn d60() -> u64 {
    60
}
fn d10() -> u64 {
    10
}
fn d30() -> u64 {
    30
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub controller_url: String,
    pub tls_server_name: Option<String>,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub outbox_dir: PathBuf,
    pub probe: ProbeKind,
    pub simulated_host: Option<PathBuf>,
    pub report_interval: Duration,
    pub attempts_interval: Duration,
    pub probe_timeout: Duration,
    pub outbox_max_bytes: u64,
    pub max_message_bytes: usize,
    pub resend_after: Duration,
    pub purge_min_interval: Duration,
    pub log_dir: PathBuf,
    pub enroll: Option<EnrollConfig>,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates the text of the file at `path` (relative paths in it are relative to
    /// the file's directory). Never panics: any text is a config or an error naming the file or
    /// the key.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        if !raw.controller_url.starts_with("https://") {
            return Err(ConfigError::Invalid {
                key: "controller_url",
                message: format!(
                    "`{}` must be an https:// URL (the agent only talks mTLS)",
                    raw.controller_url
                ),
            });
        }
        for (key, p) in [
            ("ca_file", &raw.ca_file),
            ("cert_file", &raw.cert_file),
            ("key_file", &raw.key_file),
        ] {
            let p = abs(p.clone());
            // An agent that enrolls writes its certificate and key itself: their directory
            // must be there, the files not yet.
            if raw.enroll.is_some() && key != "ca_file" {
                if !p.parent().is_some_and(Path::is_dir) {
                    return Err(ConfigError::Invalid {
                        key,
                        message: format!("the directory of {} does not exist", p.display()),
                    });
                }
                continue;
            }
            if !p.is_file() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{} does not exist or is not a file", p.display()),
                });
            }
        }
        if raw.probe == ProbeKind::Simulated && raw.simulated_host.is_none() {
            return Err(ConfigError::Invalid {
                key: "simulated_host",
                message: "probe = \"simulated\" needs the host description file".into(),
            });
        }
        for (key, v) in [
            ("report_interval_secs", raw.report_interval_secs),
            ("attempts_interval_secs", raw.attempts_interval_secs),
            ("probe_timeout_secs", raw.probe_timeout_secs),
            ("resend_after_secs", raw.resend_after_secs),
            ("purge_min_interval_secs", raw.purge_min_interval_secs),
        ] {
            // Bounded above too: an interval is added to clock instants, and a year-long one
            // is a typo, not a wish.
            if !(1..=MAX_INTERVAL_SECS).contains(&v) {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("must be 1 to {MAX_INTERVAL_SECS} seconds, not {v}"),
                });
            }
        }
        if !OUTBOX_MAX_BYTES.contains(&raw.outbox_max_bytes) {
            return Err(ConfigError::Invalid {
                key: "outbox_max_bytes",
                message: format!(
                    "must be {} to {} bytes (1 MiB to 16 GiB), not {}",
                    OUTBOX_MAX_BYTES.start(),
                    OUTBOX_MAX_BYTES.end(),
                    raw.outbox_max_bytes
                ),
            });
        }
        if !MESSAGE_BYTES.contains(&raw.max_message_bytes) {
            return Err(ConfigError::Invalid {
                key: "max_message_bytes",
                message: format!(
                    "must be {} to {} bytes, like the controller's agents.max_message_bytes, not {}",
                    MESSAGE_BYTES.start(),
                    MESSAGE_BYTES.end(),
                    raw.max_message_bytes
                ),
            });
        }
        let enroll = raw.enroll.clone().map(|e| validate_enroll(e, abs)).transpose()?;
        Ok(AgentConfig {
            enroll,
            controller_url: raw.controller_url,
            tls_server_name: raw.tls_server_name,
            ca_file: abs(raw.ca_file),
            cert_file: abs(raw.cert_file),
            key_file: abs(raw.key_file),
            outbox_dir: abs(raw.outbox_dir),
            probe: raw.probe,
            simulated_host: raw.simulated_host.map(abs),
            report_interval: Duration::from_secs(raw.report_interval_secs),
            attempts_interval: Duration::from_secs(raw.attempts_interval_secs),
            probe_timeout: Duration::from_secs(raw.probe_timeout_secs),
            outbox_max_bytes: raw.outbox_max_bytes,
            max_message_bytes: raw.max_message_bytes,
            resend_after: Duration::from_secs(raw.resend_after_secs),
            purge_min_interval: Duration::from_secs(raw.purge_min_interval_secs),
            log_dir: raw.log_dir.map(abs).unwrap_or_else(|| default_log_dir(path)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(enroll: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let text = format!(
            "controller_url = \"https://ctl:7443\"\nca_file = \"ca.pem\"\ncert_file = \"a.pem\"\nkey_file = \"a.key\"\n\
             outbox_dir = \"outbox\"\n\n[enroll]\n{enroll}"
        );
        AgentConfig::parse(&text, &dir.path().join("agent.toml"))
    }

    #[test]
    fn enroll_takes_kerberos_a_join_token_or_both_but_not_neither() {
        let k = parse("service_principal = \"kcdsync/ctl.lab.test\"\n").unwrap();
        let e = k.enroll.unwrap();
        assert_eq!(e.service_principal.as_deref(), Some("kcdsync/ctl.lab.test"));
        assert_eq!(e.join_token_file, None);
        let t = parse("join_token_file = \"join-token.txt\"\n").unwrap();
        let e = t.enroll.unwrap();
        assert_eq!(e.service_principal, None);
        let f = e.join_token_file.unwrap();
        assert!(f.is_absolute() && f.ends_with("join-token.txt"), "{}", f.display());
        let both = parse("service_principal = \"kcdsync/ctl.lab.test\"\njoin_token_file = \"t\"\n").unwrap();
        assert!(both.enroll.unwrap().join_token_file.is_some());
        let e = parse("retry_secs = 5\n").unwrap_err().to_string();
        assert!(e.contains("service_principal") && e.contains("join_token_file"), "{e}");
        assert!(parse("service_principal = \"kcdsync\"\n").is_err());
    }
}
