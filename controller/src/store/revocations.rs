//! The agents' deny-list: hosts whose agents every controller sharing this store refuses
//! (grpc/agents reads it at each Hello and polls it to cut live streams). A revocation and
//! its lifting are each written with their audit event in one transaction, so the list never
//! changes without a trace. Hosts are FQDNs, lower-case (the caller validates them:
//! `crate::revocation`).

use serde::Serialize;
use sqlx::Row;

use super::audit::insert_event;
use super::{Store, StoreError, now_ms, text};

/// A host on the deny-list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revocation {
    pub host: String,
    pub revoked_at_ms: i64,
    pub reason: String,
    pub revoked_by: String,
}

/// What `revoke_agent` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The host is on the list from now on.
    Now(Revocation),
    /// It already was (this revocation stands; nothing was written).
    Already(Revocation),
}

/// Audit event kinds of the deny-list.
pub const EVENT_REVOKED: &str = "agent-revoked";
pub const EVENT_UNREVOKED: &str = "agent-unrevoked";

impl Store {
    /// Puts `host` on the deny-list, with its audit event. A host already there keeps its
    /// first revocation (who, when and why stay true) and nothing is written: of two
    /// replicas revoking at once, exactly one writes.
    pub async fn revoke_agent(&self, host: &str, reason: &str, by: &str) -> Result<Revoked, StoreError> {
        loop {
            if let Some(done) = self.try_revoke_agent(host, reason, by).await? {
                return Ok(done);
            }
            // An unrevoke deleted the row between our insert and our read: try again.
        }
    }

    async fn try_revoke_agent(&self, host: &str, reason: &str, by: &str) -> Result<Option<Revoked>, StoreError> {
        let at = now_ms();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO agent_revocations (host, revoked_at, reason, revoked_by) VALUES ($1, $2, $3, $4) ON CONFLICT (host) DO NOTHING",
        )
        .bind(text(host))
        .bind(at)
        .bind(text(reason))
        .bind(text(by))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            let existing = revocation_in(&mut tx, host).await?;
            tx.rollback().await?;
            return Ok(existing.map(Revoked::Already));
        }
        insert_event(&mut tx, at, EVENT_REVOKED, host, by, reason).await?;
        tx.commit().await?;
        Ok(Some(Revoked::Now(Revocation {
            host: text(host),
            revoked_at_ms: at,
            reason: text(reason),
            revoked_by: text(by),
        })))
    }

    /// Takes `host` off the deny-list, with its audit event; the revocation it lifted, or
    /// `None` (nothing written) when the host was not revoked.
    pub async fn unrevoke_agent(&self, host: &str, by: &str) -> Result<Option<Revocation>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row =
            sqlx::query("DELETE FROM agent_revocations WHERE host = $1 RETURNING host, revoked_at, reason, revoked_by")
                .bind(text(host))
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let lifted = revocation_from_row(&row)?;
        let detail = format!("lifts the revocation by {}: {}", lifted.revoked_by, lifted.reason);
        insert_event(&mut tx, now_ms(), EVENT_UNREVOKED, host, by, &detail).await?;
        tx.commit().await?;
        Ok(Some(lifted))
    }

    /// The revocation of `host`, if it is revoked.
    pub async fn agent_revocation(&self, host: &str) -> Result<Option<Revocation>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        revocation_in(&mut conn, host).await
    }

    /// The whole deny-list, by host. It holds only the hosts revoked now (lifting one deletes
    /// its row), so it stays small enough for the agent endpoint to read twice a second.
    pub async fn agent_revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query("SELECT host, revoked_at, reason, revoked_by FROM agent_revocations ORDER BY host")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(revocation_from_row).collect()
    }
}

async fn revocation_in(conn: &mut sqlx::AnyConnection, host: &str) -> Result<Option<Revocation>, StoreError> {
    let row = sqlx::query("SELECT host, revoked_at, reason, revoked_by FROM agent_revocations WHERE host = $1")
        .bind(text(host))
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(revocation_from_row).transpose()
}

fn revocation_from_row(r: &sqlx::any::AnyRow) -> Result<Revocation, StoreError> {
    Ok(Revocation {
        host: r.try_get(0)?,
        revoked_at_ms: r.try_get(1)?,
        reason: r.try_get(2)?,
        revoked_by: r.try_get(3)?,
    })
}
