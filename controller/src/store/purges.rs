//! Ticket purges that could not be handed to a host's agent (it was not connected, or it was
//! cut off for not reading its stream). One row per host: a purge is idempotent, so the newest
//! reason stands for all of them. The agent's next connection gets it again; its answer clears
//! the row (only the row it answered, so a purge recorded meanwhile stays).

use sqlx::Row;

use super::{Store, StoreError, now_ms, text};

/// A purge waiting for its host's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndeliveredPurge {
    pub reason: String,
    /// When it was (last) recorded, Unix ms: the version that `clear_undelivered_purge` names.
    pub recorded_at_ms: i64,
}

impl Store {
    /// Records that `host`'s agent did not get a purge, replacing any older one.
    pub async fn record_undelivered_purge(&self, host: &str, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO undelivered_purges (host, reason, recorded_at) VALUES ($1, $2, $3) ON CONFLICT (host) DO UPDATE SET reason = excluded.reason, recorded_at = excluded.recorded_at",
        )
        .bind(text(host))
        .bind(text(reason))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The purge waiting for `host`'s agent, if any.
    pub async fn undelivered_purge(&self, host: &str) -> Result<Option<UndeliveredPurge>, StoreError> {
        let row = sqlx::query("SELECT reason, recorded_at FROM undelivered_purges WHERE host = $1")
            .bind(text(host))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(UndeliveredPurge {
                reason: r.try_get(0)?,
                recorded_at_ms: r.try_get(1)?,
            })
        })
        .transpose()
    }

    /// The agent answered the purge recorded at `recorded_at_ms`: removes it, unless a newer
    /// one replaced it meanwhile. `true` when a row was removed.
    pub async fn clear_undelivered_purge(&self, host: &str, recorded_at_ms: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM undelivered_purges WHERE host = $1 AND recorded_at = $2")
            .bind(text(host))
            .bind(recorded_at_ms)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
