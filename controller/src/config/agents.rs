//! `[agents]`: the mTLS gRPC endpoint agents connect to, and how long an
//! agent may stay silent before the controller calls its host stale.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
}
