//! The controller's one configuration file (TOML), parsed and validated once
//! at start-up. Every error names the key it is about.
//!
//! One submodule per table: `ad`, `agents`, `api`, `diagnosis`, `groups`
//! (with `[guard]`), `replica`; `secret` reads passwords. Each pairs the
//! table as written (`Raw*`, `deny_unknown_fields`) with its validated form; `store` checks
//! the store URL's transport.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::dn::Dn;

mod ad;
mod agents;
mod api;
mod dcs;
mod diagnosis;
mod groups;
mod replica;
mod secret;
mod store;
mod watch;

pub use ad::AdConfig;
pub use agents::{AgentsConfig, DEFAULT_STALE_AFTER};
pub use api::{ApiConfig, ApiToken, Role, TokenDigest};
pub use dcs::{DEFAULT_REPLICATION_DEADLINE, DcConfig};
pub use diagnosis::DiagnosisConfig;
pub use groups::{FirstGrants, Group, Guard, Mode};
pub use replica::{DEFAULT_LEASE_TTL, ReplicaConfig, hostname};
pub use secret::Secret;
pub use watch::{AD_NOTIFICATIONS_PER_CONN, WatchConfig};

use ad::{RawAd, validate_ad};
use agents::{RawAgents, validate_agents};
use api::{RawApi, validate_api};
use diagnosis::{RawDiagnosis, validate_diagnosis};
use groups::{RawGroup, RawGuard, validate_groups, validate_guard};
use replica::{RawReplica, validate_replica};
use watch::{RawReconcile, validate_reconcile};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("config key `{key}`: cannot read the secret: {message}")]
    Secret { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The file as written; [`Config`] is the validated form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    ad: RawAd,
    scope: RawScope,
    #[serde(default)]
    guard: RawGuard,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    reconcile: RawReconcile,
    agents: Option<RawAgents>,
    #[serde(default)]
    diagnosis: RawDiagnosis,
    api: Option<RawApi>,
    replica: Option<RawReplica>,
    #[serde(default, rename = "group")]
    groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    base_dns: Vec<String>,
    /// The DNS suffixes a managed computer's dNSHostName may have (default:
    /// the domain's DNS name, from ad.domain_dn).
    dns_suffixes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub ad: AdConfig,
    pub scope: Vec<Dn>,
    /// Lower-case DNS suffixes a managed computer's dNSHostName may have:
    /// `<sAMAccountName>.<suffix>` (see `model::identity`).
    pub dns_suffixes: Vec<String>,
    pub guard: Guard,
    pub store_url: String,
    /// How often the timer wakes the (delta) reconcile.
    pub interval: Duration,
    pub watch: WatchConfig,
    pub agents: Option<AgentsConfig>,
    pub api: Option<ApiConfig>,
    /// `None`: a single controller, always the writer.
    pub replica: Option<ReplicaConfig>,
    pub diagnosis: DiagnosisConfig,
    pub groups: Vec<Group>,
}

/// The store used when the config names none: an SQLite file next to the
/// config file, so a first run needs no database server.
pub fn default_store_url(config_path: &Path) -> String {
    let dir = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    format!("sqlite://{}?mode=rwc", dir.join("kcdsync.db").display())
}

impl Config {
    /// Reads, parses and validates `path`. Secrets are read here, once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        validate(raw, base_dir, &default_store_url(path))
    }

    /// The writer lease's TTL: `replica.lease_ttl_secs`, or [`DEFAULT_LEASE_TTL`] for a single
    /// controller and the one-shot CLI.
    pub fn lease_ttl(&self) -> Duration {
        self.replica.as_ref().map_or(DEFAULT_LEASE_TTL, |r| r.lease_ttl)
    }

    /// How long a host may go without a heartbeat before it is stale:
    /// `agents.stale_after_secs`, or [`DEFAULT_STALE_AFTER`] without `[agents]`.
    pub fn stale_after(&self) -> Duration {
        self.agents.as_ref().map_or(DEFAULT_STALE_AFTER, |a| a.stale_after)
    }
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

fn validate(raw: RawConfig, base_dir: &Path, default_store: &str) -> Result<Config, ConfigError> {
    let ad = validate_ad(raw.ad, base_dir)?;

    if raw.scope.base_dns.is_empty() {
        return Err(invalid(
            "scope.base_dns",
            "list at least one base DN to manage, e.g. \"OU=Hyper-V,DC=contoso,DC=com\"",
        ));
    }
    let mut scope = Vec::new();
    for (i, s) in raw.scope.base_dns.iter().enumerate() {
        let dn = Dn::parse(s).map_err(|e| invalid(format!("scope.base_dns[{i}]"), e.to_string()))?;
        scope.push(dn);
    }
    let dns_suffixes = validate_suffixes(raw.scope.dns_suffixes, &ad.domain_dn)?;

    let guard = validate_guard(raw.guard)?;
    let (interval, watch) = validate_reconcile(&raw.reconcile)?;
    let groups = validate_groups(raw.groups)?;

    let store_url = raw.store.url.unwrap_or_else(|| default_store.to_owned());
    store::check_store_url(&store_url)?;
    let api = raw.api.map(|a| validate_api(a, base_dir)).transpose()?;
    let replica = raw
        .replica
        .map(|r| validate_replica(r, &store_url, api.as_ref()))
        .transpose()?;
    let agents = raw.agents.map(|a| validate_agents(a, base_dir)).transpose()?;
    if let (Some(api), Some(agents)) = (&api, &agents) {
        api::check_separate_cas(api, agents)?;
    }
    let diagnosis = validate_diagnosis(raw.diagnosis)?;
    Ok(Config {
        ad,
        scope,
        dns_suffixes,
        guard,
        store_url,
        interval,
        watch,
        agents,
        api,
        replica,
        diagnosis,
        groups,
    })
}

/// `scope.dns_suffixes`, or the domain's DNS name (`DC=contoso,DC=com` ->
/// `contoso.com`).
fn validate_suffixes(raw: Option<Vec<String>>, domain: &Dn) -> Result<Vec<String>, ConfigError> {
    use crate::model::names::HostName;
    let Some(list) = raw else {
        return Ok(vec![domain.dns_name()]);
    };
    if list.is_empty() {
        return Err(invalid(
            "scope.dns_suffixes",
            format!(
                "must list at least one suffix (omit it to allow only the domain's, {})",
                domain.dns_name()
            ),
        ));
    }
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let key = format!("scope.dns_suffixes[{i}]");
        match HostName::parse(s) {
            Ok(HostName::Fqdn(f)) if !out.contains(&f) => out.push(f),
            Ok(HostName::Fqdn(_)) => return Err(invalid(key, format!("`{s}` is listed twice"))),
            Ok(HostName::Netbios(_)) => {
                return Err(invalid(
                    key,
                    format!("`{s}` is a single label: give a DNS suffix such as contoso.com"),
                ));
            }
            Err(e) => return Err(invalid(key, e.to_string())),
        }
    }
    Ok(out)
}

/// Fixtures shared by the tests of the submodules.
#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        // The one fixture file also stands in for private keys: private to its owner.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path().join("pw"), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let path = dir.path().join("kcdsync.toml");
        Config::parse(text, &path)
    }

    pub(crate) const AD: &str = r#"
[ad]
url = "ldaps://127.0.0.1"
ca_file = "pw"
bind_dn = "CN=svc,CN=Users,DC=lab,DC=test"
password_file = "pw"
[scope]
base_dns = ["OU=Hyper-V,DC=lab,DC=test"]
"#;

    pub(super) fn with_group(group: &str) -> String {
        format!("{AD}\n[[group]]\n{group}")
    }

    pub(super) fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{AD, err, parse, with_group};
    use super::*;

    #[test]
    fn a_minimal_config_gets_safe_defaults() {
        let c = parse(&with_group(
            "name = \"a\"\nmode = \"enforce\"\nhosts = [\"hv01.lab.test\", \"HV02\"]",
        ))
        .unwrap();
        assert_eq!(c.guard.max_hosts_per_apply, 50);
        assert!(c.store_url.starts_with("sqlite://"));
        assert_eq!(c.ad.password.expose(), "s3cret");
        assert_eq!(c.groups[0].hosts.len(), 2);
        assert_eq!(c.ad.domain_dn, Dn::parse("DC=lab,DC=test").unwrap());
        assert!(c.diagnosis.require_kerberos && !c.diagnosis.enforce_sensitive);
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the password must never reach Debug output"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&format!("{AD}\n[guard]\nmax_host = 3\n"));
        assert!(e.contains("unknown field `max_host`"), "{e}");
    }

    #[test]
    fn malformed_dns_point_at_their_key() {
        let e = err(&AD.replace("OU=Hyper-V,DC=lab,DC=test", "OU=Hyper-V,,DC=lab"));
        assert!(e.contains("scope.base_dns[0]"), "{e}");
        let e = err(&with_group("name = \"a\"\nmode = \"plan\"\nad_group = \"not a dn\""));
        assert!(e.contains("group[0].ad_group"), "{e}");
    }
}
