//! What agents send: the latest report per host, migration attempts (stored once per
//! (host, attempt id), the host being the one the stream's certificate is bound to) and when each
//! host was last heard from.

use kcdsync_proto::v1::{HostReport, MigrationAttempt};
use prost::Message;
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, limit, now_ms, text};

/// Failures the poll reads at most at once.
const FAILURE_PAGE: i64 = 1000;

/// What the agents sent since the last write, grouped for one transaction.
#[derive(Debug, Default)]
pub struct IngestBatch {
    pub reports: Vec<(String, HostReport)>,
    /// (host, attempt): the host is always the stream's certificate-bound host, never a field of
    /// the message.
    pub attempts: Vec<(String, MigrationAttempt)>,
    /// Hosts heard from (heartbeats), whose last_seen moves to now.
    pub seen: Vec<String>,
}

/// An audit event written in the transaction of an ingest batch (`Store::ingest_audited`):
/// many events, one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub kind: &'static str,
    pub host: String,
    pub actor: String,
    pub detail: String,
}

impl IngestBatch {
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty() && self.attempts.is_empty() && self.seen.is_empty()
    }
}

/// A migration attempt as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredAttempt {
    pub attempt_id: String,
    pub host: String,
    pub time_ms: i64,
    pub vm: String,
    pub peer: String,
    pub success: bool,
    pub error_code: u32,
    pub message: String,
    pub account: String,
}

impl Store {
    /// Writes what agents sent, in one transaction: the latest report per
    /// host, every attempt once per (host, attempt id) (a resend is a no-op;
    /// the same id from another host is that host's own attempt), and when
    /// each host was last heard from.
    pub async fn ingest(&self, batch: &IngestBatch) -> Result<(), StoreError> {
        self.ingest_audited(batch, &[]).await
    }

    /// [`Store::ingest`] with `audits` written in the same transaction: all or nothing.
    pub async fn ingest_audited(&self, batch: &IngestBatch, audits: &[AuditRow]) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for a in audits {
            super::audit::insert_event(&mut tx, now, a.kind, &a.host, &a.actor, &a.detail).await?;
        }
        for (host, report) in &batch.reports {
            sqlx::query(
                "INSERT INTO host_reports (host, report, received_at, last_seen) VALUES ($1, $2, $3, $3) ON CONFLICT (host) DO UPDATE SET report = excluded.report, received_at = excluded.received_at, last_seen = excluded.last_seen",
            )
            .bind(text(host))
            .bind(report.encode_to_vec())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for (host, a) in &batch.attempts {
            // The hub has refused times out of range; a time that still does not convert
            // (a caller other than the hub) is stored as the arrival time, never wrapped.
            let time = a
                .time
                .as_ref()
                .and_then(kcdsync_proto::checked_ms_from_timestamp)
                .unwrap_or(now);
            sqlx::query(
                "INSERT INTO attempts (attempt_id, host, time, vm, peer, role, success, event_id, error_code, message, account, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (host, attempt_id) DO NOTHING",
            )
            .bind(text(&a.attempt_id))
            .bind(text(host))
            .bind(time)
            .bind(text(&a.vm_name))
            .bind(text(&a.peer))
            .bind(a.role as i64)
            .bind(a.success as i64)
            .bind(a.event_id as i64)
            .bind(a.error_code as i64)
            .bind(text(&a.message))
            .bind(text(&a.account))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for host in &batch.seen {
            sqlx::query("UPDATE host_reports SET last_seen = $1 WHERE host = $2")
                .bind(now)
                .bind(text(host))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The latest report of `host`, with when it arrived and when the host
    /// was last heard from (Unix ms).
    pub async fn latest_report(&self, host: &str) -> Result<Option<(HostReport, i64, i64)>, StoreError> {
        let row = sqlx::query("SELECT report, received_at, last_seen FROM host_reports WHERE host = $1")
            .bind(text(host))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let report = decode_report(host, &r.try_get::<Vec<u8>, _>(0)?)?;
            Ok((report, r.try_get(1)?, r.try_get(2)?))
        })
        .transpose()
    }

    /// Every host's latest report and when it was last heard from.
    pub async fn all_reports(&self) -> Result<Vec<(String, HostReport, i64)>, StoreError> {
        let rows = sqlx::query("SELECT host, report, last_seen FROM host_reports")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let host: String = r.try_get(0)?;
                let report = decode_report(&host, &r.try_get::<Vec<u8>, _>(1)?)?;
                Ok((host, report, r.try_get(2)?))
            })
            .collect()
    }

    /// Hosts that ever reported, with when they were last heard from.
    pub async fn reporting_hosts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT host, last_seen FROM host_reports ORDER BY host")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Attempts, newest first; `host` filters by reporting host.
    pub async fn attempts(&self, host: Option<&str>, max: i64) -> Result<Vec<StoredAttempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt_id, host, time, vm, peer, success, error_code, message, account FROM attempts WHERE ($1 = '' OR host = $1) ORDER BY time DESC, attempt_id DESC, host LIMIT $2",
        )
        .bind(text(host.unwrap_or("")))
        .bind(limit(max))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredAttempt {
                    attempt_id: r.try_get(0)?,
                    host: r.try_get(1)?,
                    time_ms: r.try_get(2)?,
                    vm: r.try_get(3)?,
                    peer: r.try_get(4)?,
                    success: r.try_get::<i64, _>(5)? != 0,
                    error_code: r.try_get::<i64, _>(6)? as u32,
                    message: r.try_get(7)?,
                    account: r.try_get(8)?,
                })
            })
            .collect()
    }

    /// Failed attempts with one of `codes` received after `after_ms`:
    /// (attempt id, host, received at), oldest first, at most 1000. The codes are filtered in
    /// SQL (index `attempts_auth_failures`), so other failures cannot fill the page.
    pub async fn auth_failures_since(
        &self,
        after_ms: i64,
        codes: &[u32],
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        // One indexed range read per code (a handful), merged: a static query, no SQL built
        // from values.
        let mut out = Vec::new();
        for code in codes {
            let rows = sqlx::query(
                "SELECT attempt_id, host, received_at FROM attempts WHERE success = 0 AND error_code = $1 AND received_at > $2 ORDER BY received_at LIMIT $3",
            )
            .bind(*code as i64)
            .bind(after_ms)
            .bind(FAILURE_PAGE)
            .fetch_all(&self.pool)
            .await?;
            for r in &rows {
                out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
            }
        }
        out.sort_by_key(|f: &(String, String, i64)| f.2);
        out.truncate(FAILURE_PAGE as usize);
        Ok(out)
    }

    pub async fn attempt_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM attempts")
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)?)
    }
}

/// A stored report of `host`, decoded.
fn decode_report(host: &str, bytes: &[u8]) -> Result<HostReport, StoreError> {
    HostReport::decode(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("report of {host}"),
        message: e.to_string(),
    })
}
