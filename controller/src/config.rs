//! The controller's one configuration file (TOML), parsed and validated once
//! at start-up. Every error names the key it is about.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::dn::Dn;
use crate::model::names::HostName;

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

/// What the controller may do with a group's drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Report drift only.
    Observe,
    /// Compute plans, never write.
    Plan,
    /// Apply plans within the blast-radius guard.
    Enforce,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Observe => "observe",
            Mode::Plan => "plan",
            Mode::Enforce => "enforce",
        })
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
struct RawApi {
    listen: String,
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    #[serde(default)]
    read_clients: Vec<String>,
    #[serde(default)]
    write_clients: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    #[serde(default, rename = "token")]
    tokens: Vec<RawToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: Role,
    token: String,
}

/// What an orchestrator or operator may do through the fleet API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Hosts, findings, readiness, plans, audit, watch.
    Read,
    /// Read, plus approve/reject plans and trigger reconciles.
    Write,
}

/// A bearer token; the secret never reaches Debug output.
#[derive(Clone)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    pub secret: Secret,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiToken({}, {:?})", self.name, self.role)
    }
}

/// The fleet API endpoint for orchestrators and kcdctl (`serve` only).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: std::net::SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients may authenticate with a certificate from this CA.
    pub client_ca_file: Option<PathBuf>,
    pub tokens: Vec<ApiToken>,
    /// Certificate names (DNS SANs) with the read / write role.
    pub read_clients: Vec<String>,
    pub write_clients: Vec<String>,
}

fn validate_api(raw: RawApi, base_dir: &Path) -> Result<ApiConfig, ConfigError> {
    let listen = raw.listen.parse().map_err(|_| {
        invalid(
            "api.listen",
            format!("`{}` is not an address:port such as 127.0.0.1:7444", raw.listen),
        )
    })?;
    let file = |key: &str, p: PathBuf| -> Result<PathBuf, ConfigError> {
        let p = resolve(base_dir, p);
        if p.is_file() {
            Ok(p)
        } else {
            Err(invalid(key, format!("{} does not exist or is not a file", p.display())))
        }
    };
    let cert_file = file("api.cert_file", raw.cert_file)?;
    let key_file = file("api.key_file", raw.key_file)?;
    let client_ca_file = raw.client_ca_file.map(|p| file("api.client_ca_file", p)).transpose()?;
    let mut tokens = Vec::new();
    if let Some(p) = raw.tokens_file {
        let p = file("api.tokens_file", p)?;
        let text = std::fs::read_to_string(&p).map_err(|e| ConfigError::Secret {
            key: "api.tokens_file".into(),
            message: format!("{}: {e}", p.display()),
        })?;
        let parsed: RawTokens = toml::from_str(&text).map_err(|e| ConfigError::Secret {
            key: "api.tokens_file".into(),
            // toml's message may quote the offending line: keep only its first line.
            message: format!("{}: {}", p.display(), e.message()),
        })?;
        for (i, t) in parsed.tokens.into_iter().enumerate() {
            if t.token.len() < 16 {
                return Err(ConfigError::Secret {
                    key: "api.tokens_file".into(),
                    message: format!("token[{i}] ({}) is shorter than 16 characters", t.name),
                });
            }
            tokens.push(ApiToken {
                name: t.name,
                role: t.role,
                secret: Secret::new(t.token),
            });
        }
    }
    if tokens.is_empty() && client_ca_file.is_none() {
        return Err(invalid(
            "api.tokens_file",
            "the API needs a way to authenticate callers: set tokens_file and/or client_ca_file",
        ));
    }
    if client_ca_file.is_none() && !(raw.read_clients.is_empty() && raw.write_clients.is_empty()) {
        return Err(invalid(
            "api.client_ca_file",
            "read_clients/write_clients need client_ca_file",
        ));
    }
    let names = |key: &str, v: Vec<String>| -> Result<Vec<String>, ConfigError> {
        v.iter()
            .map(|n| {
                HostName::parse(n)
                    .map(|h| h.as_str().to_lowercase())
                    .map_err(|e| invalid(key, e.to_string()))
            })
            .collect()
    };
    Ok(ApiConfig {
        listen,
        cert_file,
        key_file,
        client_ca_file,
        tokens,
        read_clients: names("api.read_clients", raw.read_clients)?,
        write_clients: names("api.write_clients", raw.write_clients)?,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiagnosis {
    #[serde(default = "yes")]
    require_kerberos: bool,
    #[serde(default)]
    privileged_groups: Vec<String>,
    #[serde(default)]
    enforce_sensitive: bool,
    #[serde(default)]
    migration_accounts: Vec<String>,
}

impl Default for RawDiagnosis {
    fn default() -> Self {
        RawDiagnosis {
            require_kerberos: true,
            privileged_groups: Vec::new(),
            enforce_sensitive: false,
            migration_accounts: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// What diagnosis looks for beyond the defaults.
#[derive(Debug, Clone)]
pub struct DiagnosisConfig {
    /// Migrations must use Kerberos; CredSSP on a source is a finding.
    pub require_kerberos: bool,
    /// Groups whose (transitive) members count as privileged, besides
    /// Domain/Enterprise/Schema Admins and Administrators.
    pub privileged_groups: Vec<Dn>,
    /// Opt-in: mark privileged accounts sensitive. Never the default, and
    /// every such change waits for approval.
    pub enforce_sensitive: bool,
    /// The accounts that run Move-VM (sAMAccountName): never made sensitive.
    pub migration_accounts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgents {
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
}

fn default_heartbeat_secs() -> u64 {
    15
}
/// An agent not heard from for this long is stale (`agents.stale_after_secs`).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAd {
    url: String,
    #[serde(default)]
    starttls: bool,
    ca_file: Option<PathBuf>,
    bind_dn: String,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    #[serde(default = "default_timeout_secs")]
    timeout_secs: u64,
    #[serde(default = "default_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_page_size")]
    page_size: i32,
    /// The domain's root (default: the DC= part of bind_dn).
    domain_dn: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    base_dns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    #[serde(default = "default_max_hosts")]
    max_hosts_per_apply: usize,
}

impl Default for RawGuard {
    fn default() -> Self {
        RawGuard {
            max_hosts_per_apply: default_max_hosts(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplica {
    id: Option<String>,
    #[serde(default = "default_lease_ttl_secs")]
    lease_ttl_secs: u64,
    advertise: Option<String>,
}

fn default_lease_ttl_secs() -> u64 {
    15
}

/// Several controllers on one PostgreSQL store (`[replica]`): only the holder of the leader
/// lease writes AD; the others serve agents and the read API.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's name in the lease (default: hostname + pid).
    pub id: String,
    /// The lease lasts this long unless renewed (every third of it).
    pub lease_ttl: Duration,
    /// The API address followers name as the leader's (default: the API listen address).
    pub advertise: String,
}

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "kcdsync".into());
    format!("{host}-{}", std::process::id())
}

fn validate_replica(raw: RawReplica, store_url: &str, api: Option<&ApiConfig>) -> Result<ReplicaConfig, ConfigError> {
    if !(store_url.starts_with("postgres://") || store_url.starts_with("postgresql://")) {
        return Err(invalid(
            "replica",
            "several replicas need a shared PostgreSQL store: set store.url = \"postgres://...\" (an SQLite store is one controller's own; remove [replica] to run a single controller)",
        ));
    }
    if raw.lease_ttl_secs == 0 {
        return Err(invalid("replica.lease_ttl_secs", "must be at least 1"));
    }
    let id = match raw.id {
        Some(id) if id.trim().is_empty() => return Err(invalid("replica.id", "must not be empty")),
        Some(id) => id,
        None => default_replica_id(),
    };
    let advertise = match raw.advertise {
        Some(a) if a.trim().is_empty() => return Err(invalid("replica.advertise", "must not be empty")),
        Some(a) => a,
        None => api.map(|a| a.listen.to_string()).unwrap_or_else(|| "(no API)".into()),
    };
    Ok(ReplicaConfig {
        id,
        lease_ttl: Duration::from_secs(raw.lease_ttl_secs),
        advertise,
    })
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    #[serde(default = "default_interval_secs")]
    interval_secs: u64,
}

impl Default for RawReconcile {
    fn default() -> Self {
        RawReconcile {
            interval_secs: default_interval_secs(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    mode: Mode,
    #[serde(default)]
    hosts: Vec<String>,
    ad_group: Option<String>,
    #[serde(default)]
    file_servers: Vec<String>,
}

fn default_timeout_secs() -> u64 {
    30
}
fn default_in_flight() -> usize {
    32
}
fn default_page_size() -> i32 {
    500
}
fn default_max_hosts() -> usize {
    50
}
fn default_interval_secs() -> u64 {
    300
}

/// How to reach and authenticate to the domain controller.
#[derive(Clone)]
pub struct AdConfig {
    pub url: String,
    pub starttls: bool,
    /// The CA that issued the DC's certificate; TLS is always verified.
    pub ca_file: PathBuf,
    pub bind_dn: Dn,
    /// Read once at start-up; never printed (see the Debug impl).
    pub password: Secret,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub page_size: i32,
    /// The domain's root, where accounts and groups are looked up.
    pub domain_dn: Dn,
}

impl std::fmt::Debug for AdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdConfig")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("ca_file", &self.ca_file)
            .field("bind_dn", &self.bind_dn)
            .field("password", &self.password)
            .finish()
    }
}

/// A secret that never shows up in Debug output or logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub mode: Mode,
    pub hosts: Vec<HostName>,
    pub ad_group: Option<Dn>,
    pub file_servers: Vec<HostName>,
}

#[derive(Debug, Clone)]
pub struct Guard {
    /// A plan that changes more hosts than this waits for approval.
    pub max_hosts_per_apply: usize,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub ad: AdConfig,
    pub scope: Vec<Dn>,
    pub guard: Guard,
    pub store_url: String,
    pub interval: Duration,
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
    /// When an agent counts as stale: `agents.stale_after_secs`, or the default
    /// when no agent endpoint is configured.
    pub fn stale_after(&self) -> Duration {
        self.agents.as_ref().map_or(DEFAULT_STALE_AFTER, |a| a.stale_after)
    }

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

    if raw.guard.max_hosts_per_apply == 0 {
        return Err(invalid(
            "guard.max_hosts_per_apply",
            "must be at least 1 (every apply would wait for approval)",
        ));
    }
    if raw.reconcile.interval_secs == 0 {
        return Err(invalid("reconcile.interval_secs", "must be at least 1"));
    }

    let mut groups: Vec<Group> = Vec::new();
    for (gi, g) in raw.groups.into_iter().enumerate() {
        let key = |field: &str| format!("group[{gi}].{field}");
        if g.name.trim().is_empty() {
            return Err(invalid(key("name"), "must not be empty"));
        }
        if groups.iter().any(|o| o.name.eq_ignore_ascii_case(&g.name)) {
            return Err(invalid(key("name"), format!("group `{}` is defined twice", g.name)));
        }
        if g.hosts.is_empty() && g.ad_group.is_none() {
            return Err(invalid(
                key("hosts"),
                format!("group `{}` has no members: set `hosts` or `ad_group`", g.name),
            ));
        }
        let mut hosts: Vec<HostName> = Vec::new();
        for (hi, h) in g.hosts.iter().enumerate() {
            let name = HostName::parse(h).map_err(|e| invalid(format!("group[{gi}].hosts[{hi}]"), e.to_string()))?;
            if hosts.contains(&name) {
                return Err(invalid(
                    format!("group[{gi}].hosts[{hi}]"),
                    format!("`{h}` is listed twice"),
                ));
            }
            hosts.push(name);
        }
        let ad_group = g
            .ad_group
            .as_deref()
            .map(Dn::parse)
            .transpose()
            .map_err(|e| invalid(key("ad_group"), e.to_string()))?;
        let mut file_servers = Vec::new();
        for (fi, f) in g.file_servers.iter().enumerate() {
            let name =
                HostName::parse(f).map_err(|e| invalid(format!("group[{gi}].file_servers[{fi}]"), e.to_string()))?;
            if !name.is_fqdn() {
                return Err(invalid(
                    format!("group[{gi}].file_servers[{fi}]"),
                    format!("`{f}`: give the file server's FQDN (e.g. fs01.contoso.com)"),
                ));
            }
            file_servers.push(name);
        }
        groups.push(Group {
            name: g.name,
            mode: g.mode,
            hosts,
            ad_group,
            file_servers,
        });
    }

    let store_url = raw.store.url.unwrap_or_else(|| default_store.to_owned());
    let api = raw.api.map(|a| validate_api(a, base_dir)).transpose()?;
    let replica = raw
        .replica
        .map(|r| validate_replica(r, &store_url, api.as_ref()))
        .transpose()?;
    Ok(Config {
        ad,
        scope,
        guard: Guard {
            max_hosts_per_apply: raw.guard.max_hosts_per_apply,
        },
        store_url,
        interval: Duration::from_secs(raw.reconcile.interval_secs),
        agents: raw.agents.map(|a| validate_agents(a, base_dir)).transpose()?,
        api,
        replica,
        diagnosis: DiagnosisConfig {
            require_kerberos: raw.diagnosis.require_kerberos,
            privileged_groups: raw
                .diagnosis
                .privileged_groups
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    Dn::parse(g).map_err(|e| invalid(format!("diagnosis.privileged_groups[{i}]"), e.to_string()))
                })
                .collect::<Result<_, _>>()?,
            enforce_sensitive: raw.diagnosis.enforce_sensitive,
            migration_accounts: raw
                .diagnosis
                .migration_accounts
                .iter()
                .map(|a| a.to_lowercase())
                .collect(),
        },
        groups,
    })
}

fn validate_agents(raw: RawAgents, base_dir: &Path) -> Result<AgentsConfig, ConfigError> {
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
    let cert_file = files.pop().expect("three files");
    Ok(AgentsConfig {
        listen,
        cert_file,
        key_file,
        client_ca_file,
        heartbeat: Duration::from_secs(raw.heartbeat_secs),
        stale_after: Duration::from_secs(raw.stale_after_secs),
        max_message_bytes: raw.max_message_bytes,
    })
}

fn validate_ad(raw: RawAd, base_dir: &Path) -> Result<AdConfig, ConfigError> {
    let url = raw.url.trim().to_owned();
    let scheme = url.split("://").next().unwrap_or_default().to_ascii_lowercase();
    match (scheme.as_str(), raw.starttls) {
        ("ldaps", false) => {}
        ("ldaps", true) => {
            return Err(invalid(
                "ad.starttls",
                "StartTLS is for ldap:// URLs; ldaps:// is already TLS",
            ));
        }
        ("ldap", true) => {}
        ("ldap", false) => {
            return Err(invalid(
                "ad.url",
                format!("`{url}` would send the bind password in clear text: use ldaps:// or set ad.starttls = true"),
            ));
        }
        _ => {
            return Err(invalid(
                "ad.url",
                format!(
                    "`{url}` is not an LDAP URL: use ldaps://dc.example.com or ldap://dc.example.com with starttls"
                ),
            ));
        }
    }
    let bind_dn = Dn::parse(&raw.bind_dn).map_err(|e| invalid("ad.bind_dn", e.to_string()))?;
    let domain_dn = match &raw.domain_dn {
        Some(d) => Dn::parse(d).map_err(|e| invalid("ad.domain_dn", e.to_string()))?,
        None => {
            let dcs: Vec<&str> = bind_dn
                .as_str()
                .split(',')
                .map(str::trim)
                .filter(|p| p.len() > 3 && p[..3].eq_ignore_ascii_case("dc="))
                .collect();
            if dcs.is_empty() {
                return Err(invalid(
                    "ad.domain_dn",
                    "bind_dn has no DC= part: set ad.domain_dn, e.g. \"DC=contoso,DC=com\"",
                ));
            }
            Dn::parse(&dcs.join(",")).map_err(|e| invalid("ad.domain_dn", e.to_string()))?
        }
    };
    let Some(ca_file) = raw.ca_file.map(|p| resolve(base_dir, p)) else {
        return Err(invalid(
            "ad.ca_file",
            "required: the PEM file of the CA that issued the domain controllers' certificates (TLS is always verified)",
        ));
    };
    if !ca_file.is_file() {
        return Err(invalid(
            "ad.ca_file",
            format!("{} does not exist or is not a file", ca_file.display()),
        ));
    }
    let password = match (raw.password_file, raw.password_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "ad.password_file",
                "set password_file or password_env, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "ad.password_file",
                "the bind password must come from a file (password_file) or an environment variable (password_env)",
            ));
        }
        (Some(p), None) => {
            let p = resolve(base_dir, p);
            let text = std::fs::read_to_string(&p).map_err(|e| ConfigError::Secret {
                key: "ad.password_file".into(),
                message: format!("{}: {e}", p.display()),
            })?;
            // A trailing newline is an editor's, not the password's.
            let pw = text.strip_suffix('\n').unwrap_or(&text);
            let pw = pw.strip_suffix('\r').unwrap_or(pw);
            Secret::new(pw)
        }
        (None, Some(var)) => {
            let pw = std::env::var(&var).map_err(|_| ConfigError::Secret {
                key: "ad.password_env".into(),
                message: format!("environment variable {var} is not set"),
            })?;
            Secret::new(pw)
        }
    };
    if password.expose().is_empty() {
        return Err(ConfigError::Secret {
            key: "ad.password_file".into(),
            message: "the password is empty".into(),
        });
    }
    if raw.timeout_secs == 0 {
        return Err(invalid("ad.timeout_secs", "must be at least 1"));
    }
    if !(1..=1024).contains(&raw.max_in_flight) {
        return Err(invalid("ad.max_in_flight", "must be between 1 and 1024"));
    }
    if !(1..=5000).contains(&raw.page_size) {
        return Err(invalid("ad.page_size", "must be between 1 and 5000"));
    }
    Ok(AdConfig {
        url,
        starttls: raw.starttls,
        ca_file,
        bind_dn,
        password,
        timeout: Duration::from_secs(raw.timeout_secs),
        max_in_flight: raw.max_in_flight,
        page_size: raw.page_size,
        domain_dn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let path = dir.path().join("kcdsync.toml");
        Config::parse(text, &path)
    }

    const AD: &str = r#"
[ad]
url = "ldaps://127.0.0.1"
ca_file = "pw"
bind_dn = "CN=svc,CN=Users,DC=lab,DC=test"
password_file = "pw"
[scope]
base_dns = ["OU=Hyper-V,DC=lab,DC=test"]
"#;

    fn with_group(group: &str) -> String {
        format!("{AD}\n[[group]]\n{group}")
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

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
    fn replicas_need_postgres_and_get_defaults() {
        let g = "\n[[group]]\nname = \"a\"\nmode = \"enforce\"\nhosts = [\"hv01.lab.test\"]\n";
        let e = err(&format!("{AD}\n[replica]\n{g}"));
        assert!(e.contains("`replica`") && e.contains("PostgreSQL"), "{e}");
        let pg = "[store]\nurl = \"postgres://k@db/k\"\n";
        let c = parse(&format!("{AD}\n{pg}[replica]\n{g}")).unwrap();
        let r = c.replica.unwrap();
        assert_eq!(r.lease_ttl, Duration::from_secs(15));
        assert!(r.id.ends_with(&format!("-{}", std::process::id())), "{}", r.id);
        let c = parse(&format!(
            "{AD}\n{pg}[replica]\nid = \"r1\"\nlease_ttl_secs = 2\nadvertise = \"ctl1:7444\"\n{g}"
        ))
        .unwrap();
        let r = c.replica.unwrap();
        assert_eq!(
            (r.id.as_str(), r.lease_ttl.as_secs(), r.advertise.as_str()),
            ("r1", 2, "ctl1:7444")
        );
        let e = err(&format!("{AD}\n{pg}[replica]\nlease_ttl_secs = 0\n{g}"));
        assert!(e.contains("replica.lease_ttl_secs"), "{e}");
        assert!(parse(&format!("{AD}\n{pg}{g}")).unwrap().replica.is_none());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&format!("{AD}\n[guard]\nmax_host = 3\n"));
        assert!(e.contains("unknown field `max_host`"), "{e}");
    }

    #[test]
    fn plaintext_ldap_is_refused() {
        let e = err(&AD.replace("ldaps://", "ldap://"));
        assert!(e.contains("ad.url") && e.contains("clear text"), "{e}");
    }

    #[test]
    fn malformed_dns_point_at_their_key() {
        let e = err(&AD.replace("OU=Hyper-V,DC=lab,DC=test", "OU=Hyper-V,,DC=lab"));
        assert!(e.contains("scope.base_dns[0]"), "{e}");
        let e = err(&with_group("name = \"a\"\nmode = \"plan\"\nad_group = \"not a dn\""));
        assert!(e.contains("group[0].ad_group"), "{e}");
    }

    #[test]
    fn host_names_with_filter_metacharacters_are_refused() {
        for bad in ["hv01)(objectClass=*", "hv*", "hv01\\\\00", "a b", "hv01.lab.test)"] {
            let e = err(&with_group(&format!(
                "name = \"a\"\nmode = \"plan\"\nhosts = [\"{bad}\"]"
            )));
            assert!(e.contains("group[0].hosts[0]"), "{bad}: {e}");
        }
    }

    #[test]
    fn secrets_come_from_a_file_or_env_and_must_exist() {
        let e = err(&AD.replace("password_file = \"pw\"", "password_file = \"missing\""));
        assert!(e.contains("ad.password_file"), "{e}");
        let e = err(&AD.replace("password_file = \"pw\"", "password_env = \"KCDSYNC_TEST_SURELY_UNSET\""));
        assert!(e.contains("KCDSYNC_TEST_SURELY_UNSET is not set"), "{e}");
        let e = err(&AD.replace("password_file = \"pw\"", "password = \"inline\""));
        assert!(e.contains("unknown field `password`"), "{e}");
    }

    #[test]
    fn groups_need_members_and_unique_names() {
        let e = err(&with_group("name = \"a\"\nmode = \"plan\""));
        assert!(e.contains("group[0].hosts") && e.contains("no members"), "{e}");
        let e = err(&format!(
            "{}\n[[group]]\nname = \"A\"\nmode = \"plan\"\nhosts = [\"hv02\"]",
            with_group("name = \"a\"\nmode = \"plan\"\nhosts = [\"hv01\"]")
        ));
        assert!(e.contains("group[1].name"), "{e}");
        let e = err(&with_group("name = \"a\"\nmode = \"apply\"\nhosts = [\"hv01\"]"));
        assert!(e.contains("unknown variant `apply`"), "{e}");
    }

    #[test]
    fn file_servers_need_an_fqdn() {
        let e = err(&with_group(
            "name = \"a\"\nmode = \"plan\"\nhosts = [\"hv01\"]\nfile_servers = [\"FS01\"]",
        ));
        assert!(e.contains("group[0].file_servers[0]"), "{e}");
    }
}
