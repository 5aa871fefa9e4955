//! `[replica]`: several controllers on one PostgreSQL store, one of them
//! (the lease holder) writing AD.

use std::time::Duration;

use serde::Deserialize;

use super::{ApiConfig, ConfigError, invalid};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplica {
    id: Option<String>,
    #[serde(default = "default_lease_ttl_secs")]
    lease_ttl_secs: u64,
    advertise: Option<String>,
}

/// The writer lease's TTL without `[replica]` (a single controller, the one-shot CLI), and
/// `replica.lease_ttl_secs`'s default.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

fn default_lease_ttl_secs() -> u64 {
    DEFAULT_LEASE_TTL.as_secs()
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

/// This machine's name, for lease holders.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "kcdsync".into())
}

fn default_replica_id() -> String {
    format!("{}-{}", hostname(), std::process::id())
}

pub(super) fn validate_replica(
    raw: RawReplica,
    store_url: &str,
    api: Option<&ApiConfig>,
) -> Result<ReplicaConfig, ConfigError> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_util::{AD, err, parse};

    #[test]
    fn replicas_need_postgres_and_get_defaults() {
        let g = "\n[[group]]\nname = \"a\"\nmode = \"enforce\"\nhosts = [\"hv01.lab.test\"]\n";
        let e = err(&format!("{AD}\n[replica]\n{g}"));
        assert!(e.contains("`replica`") && e.contains("PostgreSQL"), "{e}");
        let pg = "[store]\nurl = \"postgres://k@db/k?sslmode=verify-full&sslrootcert=pw\"\n";
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
}
