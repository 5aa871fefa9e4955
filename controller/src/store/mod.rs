//! The state store: one `Store` over sqlx's `Any` driver, so one code path serves SQLite (the
//! embedded default) and PostgreSQL (by URL; what replicas share). The schema has one migration
//! set per dialect, applied at start-up. The methods live by job: `plans`, `audit` (write-ahead
//! intents included, and the events that are not AD modifies), `ingest` (what agents send),
//! `purges` (ticket purges an agent has not received yet), `revocations` (the agents'
//! deny-list), `join_tokens` (one-time enrollment tokens), `replication` (when a write reached each other DC) and `lease` (the leader
//! lease).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, install_default_drivers};

mod audit;
mod ingest;
mod join_tokens;
mod lease;
mod plans;
mod purges;
mod replication;
mod revocations;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use audit::{
    AuditEvent, AuditRecord, EVENT_CERT_REFUSED, EVENT_CERT_RENEWED, EVENT_ENROLL_REFUSED, EVENT_ENROLLED,
};
pub use ingest::{AuditRow, IngestBatch, StoredAttempt};
pub use join_tokens::{EVENT_JOIN_TOKEN_CREATED, EVENT_JOIN_TOKEN_REVOKED, JoinToken, TokenRevoked};
pub use lease::Lease;
pub use plans::{PlanChanged, PlanState, StoredPlan};
pub use purges::UndeliveredPurge;
pub use replication::{HeldPurge, ReplicationRecord};
pub use revocations::{EVENT_REVOKED, EVENT_UNREVOKED, Revocation, Revoked};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store URL `{0}` is not supported: use sqlite://PATH or postgres://...")]
    Scheme(String),
    #[error("cannot open the state store {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the state store {url}: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("state store: {0}")]
    Query(#[from] sqlx::Error),
    /// A compare-and-set on a plan's state lost: someone decided first.
    #[error(transparent)]
    PlanChanged(PlanChanged),
    #[error("state store holds a corrupt {what}: {message}")]
    Corrupt { what: String, message: String },
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

/// A TEXT value as both dialects store it. PostgreSQL refuses U+0000 in TEXT ("invalid byte
/// sequence for encoding UTF8: 0x00") where SQLite keeps it, and these strings come from agents
/// and API callers: one refused NUL would fail a whole ingest batch, whose attempts then come
/// back forever. So NUL becomes U+FFFD on both. (JSON columns need nothing: serde_json escapes
/// it as \u0000.)
fn text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// A LIMIT both dialects accept: negative means no limit, as SQLite reads it (PostgreSQL
/// refuses a negative LIMIT; the CLI's `--limit` takes any i64).
fn limit(n: i64) -> i64 {
    if n < 0 { i64::MAX } else { n }
}

fn from_json<T: for<'de> Deserialize<'de>>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        message: e.to_string(),
    })
}

impl Store {
    /// Opens (creating if needed) and migrates the store at `url`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let scheme = url.split(':').next().unwrap_or_default();
        let migrator = match scheme {
            "sqlite" => sqlx::migrate!("./migrations/sqlite"),
            "postgres" | "postgresql" => sqlx::migrate!("./migrations/postgres"),
            _ => return Err(StoreError::Scheme(url.to_owned())),
        };
        let open_err = |source| StoreError::Open {
            url: redact_url(url),
            source,
        };
        // SQLite serializes writers anyway; one connection avoids
        // "database is locked" between our own connections.
        let max = if scheme == "sqlite" { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .connect(url)
            .await
            .map_err(open_err)?;
        migrator.run(&pool).await.map_err(|source| StoreError::Migrate {
            url: redact_url(url),
            source,
        })?;
        Ok(Store { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A store URL fit for logs: any password in it is replaced.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
    {
        let user = userinfo.split(':').next().unwrap_or_default();
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

#[cfg(test)]
mod tests;
