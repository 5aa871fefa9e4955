//! The state store: plans and the audit trail. One code path over sqlx's
//! `Any` driver; the schema has one migration set per SQL dialect (SQLite,
//! the embedded default, and PostgreSQL), applied at start-up.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

use kcdsync_proto::v1::{HostReport, MigrationAttempt};
use prost::Message;

use crate::plan::{HostChange, Intent};

/// What the agents sent since the last write, grouped for one transaction.
#[derive(Debug, Default)]
pub struct IngestBatch {
    pub reports: Vec<(String, HostReport)>,
    pub attempts: Vec<(String, MigrationAttempt)>,
    /// Hosts heard from (heartbeats), whose last_seen moves to now.
    pub seen: Vec<String>,
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
    #[error("state store holds a corrupt {what}: {message}")]
    Corrupt { what: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    PendingApproval,
    Approved,
    Applied,
    Rejected,
    Superseded,
    Failed,
}

impl PlanState {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanState::PendingApproval => "pending_approval",
            PlanState::Approved => "approved",
            PlanState::Applied => "applied",
            PlanState::Rejected => "rejected",
            PlanState::Superseded => "superseded",
            PlanState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<PlanState> {
        Some(match s {
            "pending_approval" => PlanState::PendingApproval,
            "approved" => PlanState::Approved,
            "applied" => PlanState::Applied,
            "rejected" => PlanState::Rejected,
            "superseded" => PlanState::Superseded,
            "failed" => PlanState::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for PlanState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StoredPlan {
    pub id: i64,
    pub created_at_ms: i64,
    pub state: PlanState,
    pub trigger: String,
    pub changes: Vec<HostChange>,
    pub gate_reasons: Vec<String>,
    pub decided_by: Option<String>,
    pub note: Option<String>,
}

impl StoredPlan {
    pub fn intents(&self) -> Vec<Intent> {
        crate::plan::intents(&self.changes)
    }
}

/// One applied modify, before and after as read from AD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: i64,
    pub time_ms: i64,
    pub plan_id: i64,
    pub host: String,
    pub dn: String,
    pub uac_before: u32,
    pub uac_after: u32,
    pub delegate_before: Vec<String>,
    pub delegate_after: Vec<String>,
    pub reasons: Vec<String>,
    pub trigger: String,
    pub approved_by: Option<String>,
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

    pub async fn create_plan(
        &self,
        state: PlanState,
        trigger: &str,
        changes: &[HostChange],
        gate_reasons: &[String],
    ) -> Result<i64, StoreError> {
        let digest = json(&crate::plan::intents(changes));
        let row = sqlx::query(
            "INSERT INTO plans (created_at, state, trigger, digest, changes, gate_reasons) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(now_ms())
        .bind(state.as_str())
        .bind(trigger)
        .bind(digest)
        .bind(json(&changes))
        .bind(json(&gate_reasons))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// A pending plan that would make exactly these changes, if one exists.
    pub async fn find_pending(&self, changes: &[HostChange]) -> Result<Option<i64>, StoreError> {
        let digest = json(&crate::plan::intents(changes));
        let row = sqlx::query("SELECT id FROM plans WHERE state = $1 AND digest = $2 ORDER BY id DESC LIMIT 1")
            .bind(PlanState::PendingApproval.as_str())
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?)
    }

    /// Marks every pending plan except `keep` superseded: the fleet has
    /// moved on and only the newest plan describes it.
    pub async fn supersede_pending(&self, keep: Option<i64>) -> Result<u64, StoreError> {
        let r = sqlx::query("UPDATE plans SET state = $1, decided_at = $2 WHERE state = $3 AND id <> $4")
            .bind(PlanState::Superseded.as_str())
            .bind(now_ms())
            .bind(PlanState::PendingApproval.as_str())
            .bind(keep.unwrap_or(-1))
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    pub async fn set_plan_state(
        &self,
        id: i64,
        state: PlanState,
        decided_by: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE plans SET state = $1, decided_by = COALESCE($2, decided_by), decided_at = $3, note = COALESCE($4, note) WHERE id = $5",
        )
        .bind(state.as_str())
        .bind(decided_by)
        .bind(now_ms())
        .bind(note)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_plan(&self, id: i64) -> Result<Option<StoredPlan>, StoreError> {
        let row = sqlx::query(
            "SELECT id, created_at, state, trigger, changes, gate_reasons, decided_by, note FROM plans WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| plan_from_row(&r)).transpose()
    }

    pub async fn list_plans(&self, state: Option<PlanState>, limit: i64) -> Result<Vec<StoredPlan>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, created_at, state, trigger, changes, gate_reasons, decided_by, note FROM plans WHERE ($1 = '' OR state = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(state.map(PlanState::as_str).unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(plan_from_row).collect()
    }

    /// Stores the audit rows of one apply in one transaction.
    pub async fn record_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for r in records {
            sqlx::query(
                "INSERT INTO audit (time, plan_id, host, dn, uac_before, uac_after, delegate_before, delegate_after, reasons, trigger, approved_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(r.time_ms)
            .bind(r.plan_id)
            .bind(&r.host)
            .bind(&r.dn)
            .bind(r.uac_before as i64)
            .bind(r.uac_after as i64)
            .bind(json(&r.delegate_before))
            .bind(json(&r.delegate_after))
            .bind(json(&r.reasons))
            .bind(&r.trigger)
            .bind(r.approved_by.as_deref())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Audit rows, newest first; `host` filters by host name.
    pub async fn audit(&self, host: Option<&str>, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, time, plan_id, host, dn, uac_before, uac_after, delegate_before, delegate_after, reasons, trigger, approved_by FROM audit WHERE ($1 = '' OR host = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(host.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    id: r.try_get(0)?,
                    time_ms: r.try_get(1)?,
                    plan_id: r.try_get(2)?,
                    host: r.try_get(3)?,
                    dn: r.try_get(4)?,
                    uac_before: r.try_get::<i64, _>(5)? as u32,
                    uac_after: r.try_get::<i64, _>(6)? as u32,
                    delegate_before: from_json("audit row", &r.try_get::<String, _>(7)?)?,
                    delegate_after: from_json("audit row", &r.try_get::<String, _>(8)?)?,
                    reasons: from_json("audit row", &r.try_get::<String, _>(9)?)?,
                    trigger: r.try_get(10)?,
                    approved_by: r.try_get(11)?,
                })
            })
            .collect()
    }

    pub async fn audit_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM audit")
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)?)
    }

    /// Writes what agents sent, in one transaction: the latest report per
    /// host, every attempt once (a resend of a stored id is a no-op), and
    /// when each host was last heard from.
    pub async fn ingest(&self, batch: &IngestBatch) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for (host, report) in &batch.reports {
            sqlx::query(
                "INSERT INTO host_reports (host, report, received_at, last_seen) VALUES ($1, $2, $3, $3) ON CONFLICT (host) DO UPDATE SET report = excluded.report, received_at = excluded.received_at, last_seen = excluded.last_seen",
            )
            .bind(host)
            .bind(report.encode_to_vec())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for (host, a) in &batch.attempts {
            let time = a
                .time
                .as_ref()
                .map(|t| t.seconds * 1000 + (t.nanos / 1_000_000) as i64)
                .unwrap_or(now);
            sqlx::query(
                "INSERT INTO attempts (attempt_id, host, time, vm, peer, role, success, event_id, error_code, message, account, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (attempt_id) DO NOTHING",
            )
            .bind(&a.attempt_id)
            .bind(host)
            .bind(time)
            .bind(&a.vm_name)
            .bind(&a.peer)
            .bind(a.role as i64)
            .bind(a.success as i64)
            .bind(a.event_id as i64)
            .bind(a.error_code as i64)
            .bind(&a.message)
            .bind(&a.account)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for host in &batch.seen {
            sqlx::query("UPDATE host_reports SET last_seen = $1 WHERE host = $2")
                .bind(now)
                .bind(host)
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
            .bind(host)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let bytes: Vec<u8> = r.try_get(0)?;
            let report = HostReport::decode(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
                what: format!("report of {host}"),
                message: e.to_string(),
            })?;
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
                let bytes: Vec<u8> = r.try_get(1)?;
                let report = HostReport::decode(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
                    what: format!("report of {host}"),
                    message: e.to_string(),
                })?;
                Ok((host, report, r.try_get(2)?))
            })
            .collect()
    }

    /// When kcdsync last changed each host (host → Unix ms).
    pub async fn last_change_per_host(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT host, MAX(time) FROM audit GROUP BY host")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Hosts that ever reported, with when they were last heard from.
    pub async fn reporting_hosts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT host, last_seen FROM host_reports ORDER BY host")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Attempts, newest first; `host` filters by reporting host.
    pub async fn attempts(&self, host: Option<&str>, limit: i64) -> Result<Vec<StoredAttempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt_id, host, time, vm, peer, success, error_code, message, account FROM attempts WHERE ($1 = '' OR host = $1) ORDER BY time DESC, attempt_id DESC LIMIT $2",
        )
        .bind(host.unwrap_or(""))
        .bind(limit)
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

    pub async fn attempt_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM attempts")
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn plan_from_row(r: &sqlx::any::AnyRow) -> Result<StoredPlan, StoreError> {
    let state: String = r.try_get(2)?;
    Ok(StoredPlan {
        id: r.try_get(0)?,
        created_at_ms: r.try_get(1)?,
        state: PlanState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            what: "plan state".into(),
            message: state.clone(),
        })?,
        trigger: r.try_get(3)?,
        changes: from_json("plan", &r.try_get::<String, _>(4)?)?,
        gate_reasons: from_json("plan", &r.try_get::<String, _>(5)?)?,
        decided_by: r.try_get(6)?,
        note: r.try_get(7)?,
    })
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
mod tests {
    use super::*;
    use crate::config::Mode;

    fn change(dn: &str) -> HostChange {
        HostChange {
            host: "hv01.lab.test".into(),
            dn: dn.into(),
            groups: vec!["a".into()],
            mode: Mode::Enforce,
            uac_before: 4096,
            uac_after: None,
            add: vec![],
            remove: vec!["cifs/hv09.lab.test".into()],
            reasons: vec!["remove 1 entries".into()],
        }
    }

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn pending_plans_are_found_by_what_they_do() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let id = s
            .create_plan(
                PlanState::PendingApproval,
                "cli",
                &[change("CN=HV01,DC=x")],
                &["r".into()],
            )
            .await
            .unwrap();
        assert_eq!(s.find_pending(&[change("cn=hv01,dc=X")]).await.unwrap(), Some(id));
        assert_eq!(s.find_pending(&[change("CN=HV02,DC=x")]).await.unwrap(), None);
        let other = s
            .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV02,DC=x")], &[])
            .await
            .unwrap();
        assert_eq!(s.supersede_pending(Some(other)).await.unwrap(), 1);
        assert_eq!(s.get_plan(id).await.unwrap().unwrap().state, PlanState::Superseded);
        assert_eq!(
            s.get_plan(other).await.unwrap().unwrap().changes,
            vec![change("CN=HV02,DC=x")]
        );
    }

    #[tokio::test]
    async fn audit_rows_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let plan = s
            .create_plan(PlanState::Applied, "cli", &[change("CN=HV01,DC=x")], &[])
            .await
            .unwrap();
        let rec = AuditRecord {
            id: 0,
            time_ms: now_ms(),
            plan_id: plan,
            host: "hv01.lab.test".into(),
            dn: "CN=HV01,DC=x".into(),
            uac_before: 4096,
            uac_after: 4096 | 0x1000000,
            delegate_before: vec!["cifs/HV02".into()],
            delegate_after: vec!["cifs/HV02".into(), "cifs/hv02.lab.test".into()],
            reasons: vec!["set protocol transition".into()],
            trigger: "cli".into(),
            approved_by: None,
        };
        s.record_audit(&[rec.clone()]).await.unwrap();
        s.close().await;
        let s = store(&dir).await;
        let got = s.audit(Some("hv01.lab.test"), 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            AuditRecord {
                id: 0,
                ..got[0].clone()
            },
            rec
        );
        assert!(s.audit(Some("hv02.lab.test"), 10).await.unwrap().is_empty());
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://kcd:hunter2@db:5432/x"),
            "postgres://kcd:***@db:5432/x"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/kcdsync.db"),
            "sqlite:///var/lib/kcdsync.db"
        );
    }
}
