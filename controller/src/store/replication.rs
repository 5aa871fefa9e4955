//! The per-DC verify's record: when each written object's change reached each other domain
//! controller (`runtime::replication` writes it; the audit shows it).

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, text};

/// One (plan, object, DC): waiting while `arrived_at_ms` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationRecord {
    pub plan_id: i64,
    pub host: String,
    pub dn: String,
    pub dc: String,
    pub written_at_ms: i64,
    pub arrived_at_ms: Option<i64>,
}

impl ReplicationRecord {
    /// How long the change took to reach the DC, once it has.
    pub fn lag_ms(&self) -> Option<i64> {
        self.arrived_at_ms.map(|a| (a - self.written_at_ms).max(0))
    }
}

/// A ticket purge held until `dc` has plan `plan_id`'s change to `dn` (the host's agent said its
/// tickets come from `kdc`, which is `dc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPurge {
    pub plan_id: i64,
    pub host: String,
    pub dn: String,
    pub dc: String,
    pub kdc: String,
    pub reason: String,
    pub written_at_ms: i64,
}

impl Store {
    /// Records that these purges wait on their (plan, object, DC) rows, recorded before by
    /// [`Store::expect_replication`] (whose `written_at` stays; `written_at_ms` here is not
    /// written); a row that has arrived already is left alone.
    pub async fn hold_purges(&self, held: &[HeldPurge]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for h in held {
            sqlx::query(
                "UPDATE replication SET purge_kdc = $1, purge_reason = $2 WHERE plan_id = $3 AND dn = $4 AND dc = $5 AND arrived_at IS NULL",
            )
            .bind(text(&h.kdc))
            .bind(text(&h.reason))
            .bind(h.plan_id)
            .bind(text(&h.dn))
            .bind(text(&h.dc))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// These held purges were sent without their row arriving (too old to be watched again):
    /// no longer held.
    pub async fn purges_sent(&self, held: &[HeldPurge]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for h in held {
            sqlx::query("UPDATE replication SET purge_kdc = NULL, purge_reason = NULL WHERE plan_id = $1 AND dn = $2 AND dc = $3")
                .bind(h.plan_id)
                .bind(text(&h.dn))
                .bind(text(&h.dc))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The purges still held: their row has not arrived. What a restarted (or newly elected)
    /// writer holds again, oldest first.
    pub async fn held_purges(&self) -> Result<Vec<HeldPurge>, StoreError> {
        let rows = sqlx::query(
            "SELECT plan_id, host, dn, dc, purge_kdc, purge_reason, written_at FROM replication WHERE arrived_at IS NULL AND purge_kdc IS NOT NULL ORDER BY written_at, plan_id, dn",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HeldPurge {
                    plan_id: r.try_get(0)?,
                    host: r.try_get(1)?,
                    dn: r.try_get(2)?,
                    dc: r.try_get(3)?,
                    kdc: r.try_get(4)?,
                    reason: r.try_get::<Option<String>, _>(5)?.unwrap_or_default(),
                    written_at_ms: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Records that `rows` are awaited (their `arrived_at_ms` is ignored); a row already
    /// recorded is kept as it is.
    pub async fn expect_replication(&self, rows: &[ReplicationRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO replication (plan_id, host, dn, dc, written_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (plan_id, dn, dc) DO NOTHING",
            )
            .bind(r.plan_id)
            .bind(text(&r.host))
            .bind(text(&r.dn))
            .bind(text(&r.dc))
            .bind(r.written_at_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The change of `plan_id` to `dn` was read on `dc` at `arrived_at_ms`. Only the first
    /// arrival counts; `true` when this call recorded it.
    pub async fn replication_arrived(
        &self,
        plan_id: i64,
        dn: &str,
        dc: &str,
        arrived_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE replication SET arrived_at = $1 WHERE plan_id = $2 AND dn = $3 AND dc = $4 AND arrived_at IS NULL",
        )
        .bind(arrived_at_ms)
        .bind(plan_id)
        .bind(text(dn))
        .bind(text(dc))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// [`Store::replication_arrived`] for many (plan, DN, DC), all read at `arrived_at_ms`, in
    /// one transaction (one commit: the per-DC verify sees thousands of objects arrive at
    /// once). For each, `true` when this call recorded it.
    pub async fn replication_arrived_all(
        &self,
        arrived: &[(i64, &str, &str)],
        arrived_at_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(arrived.len());
        for (plan_id, dn, dc) in arrived {
            let r = sqlx::query(
                "UPDATE replication SET arrived_at = $1 WHERE plan_id = $2 AND dn = $3 AND dc = $4 AND arrived_at IS NULL",
            )
            .bind(arrived_at_ms)
            .bind(*plan_id)
            .bind(text(dn))
            .bind(text(dc))
            .execute(&mut *tx)
            .await?;
            out.push(r.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The writes still awaited on some DC, written since `since_ms`: (the DC, the write's
    /// audit row), oldest first. What a restarted (or newly elected) writer watches again.
    pub async fn awaited_replication(&self, since_ms: i64) -> Result<Vec<(String, super::AuditRecord)>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.id, a.time, a.plan_id, a.host, a.dn, a.uac_before, a.uac_after, a.delegate_before, a.delegate_after, a.reasons, a.trigger, a.approved_by, a.epoch, a.dc, r.dc FROM replication r JOIN audit a ON a.plan_id = r.plan_id AND a.dn = r.dn AND a.state = 'done' WHERE r.arrived_at IS NULL AND r.written_at >= $1 ORDER BY r.written_at, a.id",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(14)?, super::audit::audit_from_row(r)?)))
            .collect()
    }

    /// The records of the writes `rows` audit, in the order of `rows` (each with its DCs).
    pub async fn replication_of(&self, rows: &[super::AuditRecord]) -> Result<Vec<Vec<ReplicationRecord>>, StoreError> {
        let (Some(first), Some(last)) = (
            rows.iter().map(|r| r.plan_id).min(),
            rows.iter().map(|r| r.plan_id).max(),
        ) else {
            return Ok(Vec::new());
        };
        let all = self.replication_of_plans(first, last).await?;
        Ok(rows
            .iter()
            .map(|r| {
                all.iter()
                    .filter(|x| x.plan_id == r.plan_id && x.dn == r.dn)
                    .cloned()
                    .collect()
            })
            .collect())
    }

    /// Every record of the plans from `first` to `last` (an audit page's plans), by plan,
    /// object and DC.
    pub async fn replication_of_plans(&self, first: i64, last: i64) -> Result<Vec<ReplicationRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT plan_id, host, dn, dc, written_at, arrived_at FROM replication WHERE plan_id >= $1 AND plan_id <= $2 ORDER BY plan_id, dn, dc",
        )
        .bind(first)
        .bind(last)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReplicationRecord {
                    plan_id: r.try_get(0)?,
                    host: r.try_get(1)?,
                    dn: r.try_get(2)?,
                    dc: r.try_get(3)?,
                    written_at_ms: r.try_get(4)?,
                    arrived_at_ms: r.try_get(5)?,
                })
            })
            .collect()
    }
}
