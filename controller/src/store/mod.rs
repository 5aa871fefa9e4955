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
    /// The lease epoch the write was made under; 0 without a lease (a single controller).
    #[serde(default)]
    pub epoch: i64,
}

/// A leader lease as stored: who holds it, where its API answers, under which epoch, until when
/// (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub address: String,
    pub epoch: i64,
    pub expires_at_ms: i64,
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
        .bind(text(trigger))
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
        .bind(decided_by.map(text))
        .bind(now_ms())
        .bind(note.map(text))
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

    pub async fn list_plans(&self, state: Option<PlanState>, max: i64) -> Result<Vec<StoredPlan>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, created_at, state, trigger, changes, gate_reasons, decided_by, note FROM plans WHERE ($1 = '' OR state = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(state.map(PlanState::as_str).unwrap_or(""))
        .bind(limit(max))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(plan_from_row).collect()
    }

    /// Stores finished audit rows in one transaction (imports, tests; the
    /// reconciler goes through intents).
    pub async fn record_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        self.insert_audit(records, "done").await.map(|_| ())
    }

    /// Write-ahead audit: stores `records` (before values, expected after
    /// values) as intents, before their writes; returns their ids in order.
    pub async fn record_intents(&self, records: &[AuditRecord]) -> Result<Vec<i64>, StoreError> {
        self.insert_audit(records, "intent").await
    }

    async fn insert_audit(&self, records: &[AuditRecord], state: &str) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(records.len());
        for r in records {
            let row = sqlx::query(
                "INSERT INTO audit (time, plan_id, host, dn, uac_before, uac_after, delegate_before, delegate_after, reasons, trigger, approved_by, epoch, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
            )
            .bind(r.time_ms)
            .bind(r.plan_id)
            .bind(text(&r.host))
            .bind(text(&r.dn))
            .bind(r.uac_before as i64)
            .bind(r.uac_after as i64)
            .bind(json(&r.delegate_before))
            .bind(json(&r.delegate_after))
            .bind(json(&r.reasons))
            .bind(text(&r.trigger))
            .bind(r.approved_by.as_deref().map(text))
            .bind(r.epoch)
            .bind(state)
            .fetch_one(&mut *tx)
            .await?;
            ids.push(row.try_get::<i64, _>(0)?);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Settles intents: `done` ones get the values read back from AD,
    /// `aborted` ones (never written) leave the audit.
    pub async fn settle_intents(&self, done: &[(i64, AuditRecord)], aborted: &[i64]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, r) in done {
            sqlx::query(
                "UPDATE audit SET state = 'done', time = $1, uac_before = $2, uac_after = $3, delegate_before = $4, delegate_after = $5 WHERE id = $6 AND state = 'intent'",
            )
            .bind(r.time_ms)
            .bind(r.uac_before as i64)
            .bind(r.uac_after as i64)
            .bind(json(&r.delegate_before))
            .bind(json(&r.delegate_after))
            .bind(*id)
            .execute(&mut *tx)
            .await?;
        }
        for id in aborted {
            sqlx::query("UPDATE audit SET state = 'aborted' WHERE id = $1 AND state = 'intent'")
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Intents left by a writer that stopped between its writes and its
    /// audit (a crash, a lost lease), oldest first.
    pub async fn open_intents(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, time, plan_id, host, dn, uac_before, uac_after, delegate_before, delegate_after, reasons, trigger, approved_by, epoch FROM audit WHERE state = 'intent' ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    /// Audit rows, newest first; `host` filters by host name.
    pub async fn audit(&self, host: Option<&str>, max: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, time, plan_id, host, dn, uac_before, uac_after, delegate_before, delegate_after, reasons, trigger, approved_by, epoch FROM audit WHERE state = 'done' AND ($1 = '' OR host = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(text(host.unwrap_or("")))
        .bind(limit(max))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    pub async fn audit_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM audit WHERE state = 'done'")
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
            .bind(text(host))
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
        let rows = sqlx::query("SELECT host, MAX(time) FROM audit WHERE state = 'done' GROUP BY host")
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
    pub async fn attempts(&self, host: Option<&str>, max: i64) -> Result<Vec<StoredAttempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt_id, host, time, vm, peer, success, error_code, message, account FROM attempts WHERE ($1 = '' OR host = $1) ORDER BY time DESC, attempt_id DESC LIMIT $2",
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
    /// (attempt id, host, received at), oldest first.
    pub async fn auth_failures_since(
        &self,
        after_ms: i64,
        codes: &[u32],
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt_id, host, received_at, error_code FROM attempts WHERE success = 0 AND received_at > $1 ORDER BY received_at LIMIT 1000",
        )
        .bind(after_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            if codes.contains(&(r.try_get::<i64, _>(3)? as u32)) {
                out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
            }
        }
        Ok(out)
    }

    pub async fn attempt_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM attempts")
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)?)
    }

    /// Takes or renews the lease `name` for `holder` for `ttl_ms`, in one statement: a new
    /// lease starts at epoch 1; an expired lease is taken over (by anyone, its former holder
    /// included) at epoch + 1; the live holder renews it at the same epoch. Returns the epoch
    /// held, or `None` while another holder's lease is live. Times are this process's clock:
    /// replicas need clocks in step to well under the TTL.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        address: &str,
        ttl_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, address, epoch, expires_at) VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (name) DO UPDATE SET \
               epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_at >= $5 THEN leases.epoch ELSE leases.epoch + 1 END, \
               holder = excluded.holder, address = excluded.address, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $5 \
             RETURNING epoch",
        )
        .bind(text(name))
        .bind(text(holder))
        .bind(text(address))
        .bind(now + ttl_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?)
    }

    /// The lease `name` as stored (live or expired), if it was ever taken.
    pub async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query("SELECT name, holder, address, epoch, expires_at FROM leases WHERE name = $1")
            .bind(text(name))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Lease {
                name: r.try_get(0)?,
                holder: r.try_get(1)?,
                address: r.try_get(2)?,
                epoch: r.try_get(3)?,
                expires_at_ms: r.try_get(4)?,
            })
        })
        .transpose()
    }

    /// Whether `holder` still holds the live lease `name` at `epoch` (the fencing check).
    pub async fn holds_lease(&self, name: &str, holder: &str, epoch: i64) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at >= $4")
                .bind(text(name))
                .bind(text(holder))
                .bind(epoch)
                .bind(now_ms())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    /// Gives the lease up (it expires now), if `holder` holds it; the next taker gets epoch + 1.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE leases SET expires_at = $1 WHERE name = $2 AND holder = $3")
            .bind(now_ms() - 1)
            .bind(text(name))
            .bind(text(holder))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn audit_from_row(r: &sqlx::any::AnyRow) -> Result<AuditRecord, StoreError> {
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
        epoch: r.try_get(12)?,
    })
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
    //! Every store test runs twice: on SQLite (a temp file) and on PostgreSQL (a fresh database
    //! in the cluster `deploy/pg/pg.sh up` starts), through the same `Store` code. The
    //! PostgreSQL variant takes its URLs from KCDSYNC_PG_URL / KCDSYNC_PG_ADMIN_URL, else from
    //! `${KCDSYNC_PG_DIR:-/var/tmp/kcdsync-pg}/pg.env`. Without a reachable server it prints a
    //! skip note and passes, unless KCDSYNC_REQUIRE_PG=1 (CI), where it fails.

    use std::io::Write as _;
    use std::sync::Once;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use kcdsync_proto::v1::{HostIdentity, MigrationRole};
    use sqlx::Connection as _;

    use super::*;
    use crate::config::Mode;

    /// One store test, on both backends: `sqlite::NAME` and `postgres::NAME`.
    macro_rules! store_tests {
        ($($name:ident),+ $(,)?) => {
            mod sqlite {
                $(
                    #[tokio::test]
                    async fn $name() {
                        let db = super::TestDb::sqlite();
                        super::$name(&db).await;
                    }
                )+
            }
            mod postgres {
                $(
                    #[tokio::test]
                    async fn $name() {
                        if let Some(db) = super::TestDb::postgres().await {
                            super::$name(&db).await;
                        }
                    }
                )+
            }
        };
    }

    store_tests!(
        pending_plans_are_found_by_what_they_do,
        plans_round_trip_with_increasing_ids,
        plan_decisions_keep_earlier_values_when_not_given,
        plans_list_newest_first_by_state_and_limit,
        superseding_without_a_plan_to_keep_touches_only_pending_plans,
        audit_rows_round_trip_and_survive_reopen,
        audit_lists_newest_first_by_host_and_limit_and_counts,
        last_change_per_host_is_the_newest_audit_time,
        reports_are_upserted_and_last_seen_moves,
        attempts_are_stored_once_even_when_resent,
        attempts_list_newest_first_by_host_and_limit,
        an_empty_store_answers_empty,
        negative_limits_mean_no_limit,
        nul_characters_in_text_are_replaced,
        two_stores_on_one_database_see_each_other,
        leases_are_taken_renewed_fenced_and_taken_over,
    );

    /// The store of one test: where it lives, and what removes it afterwards.
    struct TestDb {
        url: String,
        postgres: bool,
        _dir: Option<tempfile::TempDir>,
        _pg: Option<PgDatabase>,
    }

    impl TestDb {
        fn sqlite() -> TestDb {
            let dir = tempfile::tempdir().unwrap();
            TestDb {
                url: format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()),
                postgres: false,
                _dir: Some(dir),
                _pg: None,
            }
        }

        /// A fresh database of its own on the test cluster; `None` (after a skip note) when
        /// no server is configured or reachable and KCDSYNC_REQUIRE_PG is not 1.
        async fn postgres() -> Option<TestDb> {
            let required = std::env::var("KCDSYNC_REQUIRE_PG").is_ok_and(|v| v == "1");
            match PgDatabase::create().await {
                Ok((url, pg)) => Some(TestDb {
                    url,
                    postgres: true,
                    _dir: None,
                    _pg: Some(pg),
                }),
                Err(why) if required => panic!(
                    "PostgreSQL store tests required (KCDSYNC_REQUIRE_PG=1) but {why}.\n\
                     Start the test cluster with `deploy/pg/pg.sh up` (as root), then run the \
                     tests again: they read the URLs it writes to \
                     ${{KCDSYNC_PG_DIR:-/var/tmp/kcdsync-pg}}/pg.env."
                ),
                Err(why) => {
                    skip_note(&why);
                    None
                }
            }
        }

        /// Opens (and migrates) the store; may be called again to reopen it.
        async fn open(&self) -> Store {
            Store::open(&self.url)
                .await
                .unwrap_or_else(|e| panic!("opening {}: {e}", redact_url(&self.url)))
        }
    }

    /// Once per test binary, straight to stderr: libtest captures `eprintln!` of passing
    /// tests, so a skip would otherwise go unseen.
    fn skip_note(why: &str) {
        static NOTE: Once = Once::new();
        NOTE.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "\n\
                 ************************************************************************\n\
                 * SKIPPING the PostgreSQL variants of the store tests: {why}.\n\
                 * They pass without checking anything. Run `deploy/pg/pg.sh up` (as root)\n\
                 * to run them; KCDSYNC_REQUIRE_PG=1 turns this skip into a failure.\n\
                 ************************************************************************\n"
            );
        });
    }

    /// A database created for one test on the PostgreSQL test cluster, dropped (with its
    /// connections) when the test ends, also when it panics.
    struct PgDatabase {
        admin_url: String,
        name: String,
    }

    /// (app URL, admin URL): from the environment, else from pg.sh's pg.env.
    fn pg_urls() -> Result<(Option<String>, String), String> {
        let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(admin) = from_env("KCDSYNC_PG_ADMIN_URL") {
            return Ok((from_env("KCDSYNC_PG_URL"), admin));
        }
        let dir = from_env("KCDSYNC_PG_DIR").unwrap_or_else(|| "/var/tmp/kcdsync-pg".into());
        let path = std::path::Path::new(&dir).join("pg.env");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "KCDSYNC_PG_ADMIN_URL is not set and {} cannot be read ({e})",
                path.display()
            )
        })?;
        // Lines as pg.sh writes them: export NAME='VALUE'
        let var = |name: &str| {
            text.lines().find_map(|l| {
                let v = l
                    .trim()
                    .strip_prefix("export ")?
                    .strip_prefix(name)?
                    .strip_prefix('=')?;
                Some(v.trim_matches('\'').to_owned())
            })
        };
        let admin =
            var("KCDSYNC_PG_ADMIN_URL").ok_or_else(|| format!("{} has no KCDSYNC_PG_ADMIN_URL", path.display()))?;
        Ok((var("KCDSYNC_PG_URL"), admin))
    }

    /// `url` with its database name replaced by `db` (query parameters kept).
    fn with_database(url: &str, db: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.split_once('/').map_or(authority, |(a, _)| a);
        match query {
            Some(q) => format!("{scheme}://{authority}/{db}?{q}"),
            None => format!("{scheme}://{authority}/{db}"),
        }
    }

    /// The user name of a `postgres://user:pw@host/db` URL.
    fn url_user(url: &str) -> Option<&str> {
        let rest = url.split_once("://")?.1;
        let userinfo = rest.split_once('@')?.0;
        Some(userinfo.split(':').next().unwrap_or(userinfo)).filter(|u| !u.is_empty())
    }

    impl PgDatabase {
        /// Creates `kcdsync_test_<unique>` as the admin role, owned by the app role when
        /// KCDSYNC_PG_URL names one (so the migrations run with the app's own rights, as in
        /// production), and returns the URL the test's store opens.
        async fn create() -> Result<(String, PgDatabase), String> {
            static SEQ: AtomicU32 = AtomicU32::new(0);
            let (app_url, admin_url) = pg_urls()?;
            install_default_drivers();
            let name = format!(
                "kcdsync_test_{}_{}_{}",
                std::process::id(),
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let mut admin = tokio::time::timeout(Duration::from_secs(10), sqlx::AnyConnection::connect(&admin_url))
                .await
                .map_err(|_| format!("connecting to {} timed out", redact_url(&admin_url)))?
                .map_err(|e| format!("cannot connect to {} ({e})", redact_url(&admin_url)))?;
            let owner = app_url.as_deref().and_then(url_user);
            let sql = match owner {
                Some(o) => format!("CREATE DATABASE {name} OWNER \"{}\"", o.replace('"', "\"\"")),
                None => format!("CREATE DATABASE {name}"),
            };
            // The name is ours (digits only) and the owner is quoted: safe to splice in.
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut admin)
                .await
                .map_err(|e| format!("`{sql}` failed ({e})"))?;
            let _ = admin.close().await;
            let url = with_database(app_url.as_deref().unwrap_or(&admin_url), &name);
            Ok((url, PgDatabase { admin_url, name }))
        }
    }

    impl Drop for PgDatabase {
        fn drop(&mut self) {
            // Drop runs inside the test's runtime (or while a panic unwinds it): do the async
            // work on a thread with a runtime of its own. WITH (FORCE) ends the connections
            // the test's pools still hold.
            let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
            let dropped = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    // A backend the admin may not terminate (an autovacuum worker, on a cluster
                    // where autovacuum is on) fails the drop for a moment: try a few times.
                    let mut last = String::new();
                    for _ in 0..20 {
                        match drop_database(&admin_url, &name).await {
                            Ok(()) => return Ok(()),
                            Err(e) => last = e,
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(last)
                })
            })
            .join();
            let failed = match dropped {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(_) => "panic".to_owned(),
            };
            // Straight to stderr: libtest would swallow eprintln! of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "warning: test database {} not dropped: {failed}",
                self.name
            );
        }
    }

    async fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
        let mut admin = sqlx::AnyConnection::connect(admin_url)
            .await
            .map_err(|e| e.to_string())?;
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let r = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
        let _ = admin.close().await;
        r.map(|_| ()).map_err(|e| e.to_string())
    }

    // ----------------------------------------------------------------------------------------
    // Fixtures
    // ----------------------------------------------------------------------------------------

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

    fn audit_record(plan_id: i64, host: &str, time_ms: i64) -> AuditRecord {
        AuditRecord {
            id: 0,
            time_ms,
            plan_id,
            host: host.into(),
            dn: format!("CN={host},DC=x"),
            uac_before: 4096,
            uac_after: 4096 | 0x1000000,
            delegate_before: vec!["cifs/HV02".into()],
            delegate_after: vec!["cifs/HV02".into(), "cifs/hv02.lab.test".into()],
            reasons: vec!["set protocol transition".into()],
            trigger: "cli".into(),
            approved_by: None,
            epoch: 3,
        }
    }

    fn report(fqdn: &str, build: u32) -> HostReport {
        HostReport {
            observed_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            identity: Some(HostIdentity {
                fqdn: fqdn.into(),
                netbios_name: fqdn.split('.').next().unwrap_or_default().to_uppercase(),
                os_build: build,
                os_caption: "Windows Server".into(),
                credential_guard_running: true,
            }),
            probe_errors: vec!["klist: timed out".into()],
            ..Default::default()
        }
    }

    fn attempt(id: &str, time_ms: Option<i64>, success: bool, message: &str) -> MigrationAttempt {
        MigrationAttempt {
            attempt_id: id.into(),
            time: time_ms.map(|ms| prost_types::Timestamp {
                seconds: ms / 1000,
                nanos: ((ms % 1000) * 1_000_000) as i32 + 999, // sub-ms part is dropped
            }),
            vm_name: format!("vm-{id}"),
            vm_id: "00000000-0000-0000-0000-000000000001".into(),
            peer: "hv02.lab.test".into(),
            role: MigrationRole::Source as i32,
            success,
            event_id: 21502,
            error_code: if success { 0 } else { 0x8009030E },
            message: message.into(),
            account: "LAB\\svc-migrate".into(),
            ..Default::default()
        }
    }

    /// Lets the clock move past the millisecond of the previous write.
    async fn tick() {
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    // ----------------------------------------------------------------------------------------
    // Plans
    // ----------------------------------------------------------------------------------------

    async fn pending_plans_are_found_by_what_they_do(db: &TestDb) {
        let s = db.open().await;
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
        // Only pending plans are found, the newest first.
        assert_eq!(s.find_pending(&[change("CN=HV01,DC=x")]).await.unwrap(), None);
        s.create_plan(PlanState::Applied, "cli", &[change("CN=HV03,DC=x")], &[])
            .await
            .unwrap();
        assert_eq!(s.find_pending(&[change("CN=HV03,DC=x")]).await.unwrap(), None);
        let newer = s
            .create_plan(PlanState::PendingApproval, "api", &[change("CN=HV02,DC=x")], &[])
            .await
            .unwrap();
        assert_eq!(s.find_pending(&[change("CN=HV02,DC=x")]).await.unwrap(), Some(newer));
    }

    async fn plans_round_trip_with_increasing_ids(db: &TestDb) {
        let s = db.open().await;
        let before = now_ms();
        let mut big = change("CN=HV01,DC=x");
        big.uac_before = u32::MAX;
        big.uac_after = Some(0x8100_1000);
        big.add = vec![
            "cifs/hv02.lab.test".into(),
            "Microsoft Virtual System Migration Service/HV02".into(),
        ];
        big.reasons.push("unicode: Überprüfung ✓".into());
        let gate = vec!["removes entries".to_string(), "more than 1 host".to_string()];
        let a = s
            .create_plan(
                PlanState::PendingApproval,
                "agent:hv01",
                &[big.clone(), change("CN=HV02,DC=x")],
                &gate,
            )
            .await
            .unwrap();
        let b = s.create_plan(PlanState::Applied, "timer", &[], &[]).await.unwrap();
        assert!(a > 0 && b > a, "ids {a}, {b}");
        let p = s.get_plan(a).await.unwrap().unwrap();
        assert_eq!(p.id, a);
        assert!(
            p.created_at_ms >= before && p.created_at_ms <= now_ms(),
            "{}",
            p.created_at_ms
        );
        assert_eq!(p.state, PlanState::PendingApproval);
        assert_eq!(p.trigger, "agent:hv01");
        assert_eq!(p.changes, vec![big.clone(), change("CN=HV02,DC=x")]);
        assert_eq!(p.gate_reasons, gate);
        assert_eq!(p.decided_by, None);
        assert_eq!(p.note, None);
        assert_eq!(p.intents(), crate::plan::intents(&[big, change("CN=HV02,DC=x")]));
        let q = s.get_plan(b).await.unwrap().unwrap();
        assert_eq!(
            (q.state, q.changes.len(), q.gate_reasons.len()),
            (PlanState::Applied, 0, 0)
        );
        assert!(s.get_plan(b + 1000).await.unwrap().is_none());
    }

    async fn plan_decisions_keep_earlier_values_when_not_given(db: &TestDb) {
        let s = db.open().await;
        let id = s
            .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV01,DC=x")], &[])
            .await
            .unwrap();
        let other = s
            .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV02,DC=x")], &[])
            .await
            .unwrap();
        s.set_plan_state(id, PlanState::Approved, Some("alice"), Some("change 42"))
            .await
            .unwrap();
        let p = s.get_plan(id).await.unwrap().unwrap();
        assert_eq!(p.state, PlanState::Approved);
        assert_eq!(p.decided_by.as_deref(), Some("alice"));
        assert_eq!(p.note.as_deref(), Some("change 42"));
        // NULL parameters leave what is there (COALESCE).
        s.set_plan_state(id, PlanState::Applied, None, None).await.unwrap();
        let p = s.get_plan(id).await.unwrap().unwrap();
        assert_eq!(p.state, PlanState::Applied);
        assert_eq!(p.decided_by.as_deref(), Some("alice"));
        assert_eq!(p.note.as_deref(), Some("change 42"));
        s.set_plan_state(id, PlanState::Failed, None, Some("rc 16"))
            .await
            .unwrap();
        let p = s.get_plan(id).await.unwrap().unwrap();
        assert_eq!((p.state, p.note.as_deref()), (PlanState::Failed, Some("rc 16")));
        // Only the plan named changed; every state survives the round trip.
        assert_eq!(
            s.get_plan(other).await.unwrap().unwrap().state,
            PlanState::PendingApproval
        );
        for state in [
            PlanState::PendingApproval,
            PlanState::Approved,
            PlanState::Applied,
            PlanState::Rejected,
            PlanState::Superseded,
            PlanState::Failed,
        ] {
            s.set_plan_state(other, state, Some("bob"), None).await.unwrap();
            assert_eq!(s.get_plan(other).await.unwrap().unwrap().state, state);
        }
        // A missing plan is not an error.
        s.set_plan_state(other + 1000, PlanState::Rejected, None, None)
            .await
            .unwrap();
    }

    async fn plans_list_newest_first_by_state_and_limit(db: &TestDb) {
        let s = db.open().await;
        let mut ids = vec![];
        for (i, state) in [
            PlanState::Applied,
            PlanState::PendingApproval,
            PlanState::Applied,
            PlanState::Rejected,
            PlanState::Applied,
        ]
        .into_iter()
        .enumerate()
        {
            let dn = format!("CN=HV{i:02},DC=x");
            ids.push(s.create_plan(state, "cli", &[change(&dn)], &[]).await.unwrap());
        }
        let all: Vec<i64> = s.list_plans(None, 100).await.unwrap().iter().map(|p| p.id).collect();
        assert_eq!(all, ids.iter().rev().copied().collect::<Vec<_>>());
        let applied: Vec<i64> = s
            .list_plans(Some(PlanState::Applied), 100)
            .await
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(applied, vec![ids[4], ids[2], ids[0]]);
        let two: Vec<i64> = s
            .list_plans(Some(PlanState::Applied), 2)
            .await
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(two, vec![ids[4], ids[2]]);
        let pending = s.list_plans(Some(PlanState::PendingApproval), 10).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].changes, vec![change("CN=HV01,DC=x")]);
        assert!(s.list_plans(Some(PlanState::Failed), 10).await.unwrap().is_empty());
        assert_eq!(s.list_plans(None, 1).await.unwrap().len(), 1);
    }

    async fn superseding_without_a_plan_to_keep_touches_only_pending_plans(db: &TestDb) {
        let s = db.open().await;
        let p1 = s
            .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV01,DC=x")], &[])
            .await
            .unwrap();
        let p2 = s
            .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV02,DC=x")], &[])
            .await
            .unwrap();
        let applied = s
            .create_plan(PlanState::Applied, "cli", &[change("CN=HV03,DC=x")], &[])
            .await
            .unwrap();
        assert_eq!(s.supersede_pending(None).await.unwrap(), 2);
        for id in [p1, p2] {
            assert_eq!(s.get_plan(id).await.unwrap().unwrap().state, PlanState::Superseded);
        }
        assert_eq!(s.get_plan(applied).await.unwrap().unwrap().state, PlanState::Applied);
        assert_eq!(s.supersede_pending(None).await.unwrap(), 0);
        // Keeping a plan that is not pending supersedes the pending ones all the same.
        let p3 = s
            .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV04,DC=x")], &[])
            .await
            .unwrap();
        assert_eq!(s.supersede_pending(Some(p3)).await.unwrap(), 0);
        assert_eq!(s.supersede_pending(Some(applied)).await.unwrap(), 1);
        assert_eq!(s.get_plan(p3).await.unwrap().unwrap().state, PlanState::Superseded);
    }

    // ----------------------------------------------------------------------------------------
    // Audit
    // ----------------------------------------------------------------------------------------

    async fn audit_rows_round_trip_and_survive_reopen(db: &TestDb) {
        let s = db.open().await;
        let plan = s
            .create_plan(PlanState::Applied, "cli", &[change("CN=HV01,DC=x")], &[])
            .await
            .unwrap();
        let mut rec = audit_record(plan, "hv01.lab.test", now_ms());
        rec.uac_before = u32::MAX; // beyond i32: stored as BIGINT
        rec.approved_by = Some("alice".into());
        s.record_audit(std::slice::from_ref(&rec)).await.unwrap();
        s.close().await;
        let s = db.open().await;
        let got = s.audit(Some("hv01.lab.test"), 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].id > 0);
        assert_eq!(
            AuditRecord {
                id: 0,
                ..got[0].clone()
            },
            rec
        );
        assert!(s.audit(Some("hv02.lab.test"), 10).await.unwrap().is_empty());
        // An empty apply writes nothing.
        s.record_audit(&[]).await.unwrap();
        assert_eq!(s.audit_count().await.unwrap(), 1);
    }

    async fn audit_lists_newest_first_by_host_and_limit_and_counts(db: &TestDb) {
        let s = db.open().await;
        let plan = s.create_plan(PlanState::Applied, "cli", &[], &[]).await.unwrap();
        let t = now_ms();
        let batch: Vec<AuditRecord> = ["hv01", "hv02", "hv01", "hv03", "hv01"]
            .iter()
            .enumerate()
            .map(|(i, h)| audit_record(plan, &format!("{h}.lab.test"), t + i as i64))
            .collect();
        s.record_audit(&batch[..2]).await.unwrap();
        s.record_audit(&batch[2..]).await.unwrap();
        assert_eq!(s.audit_count().await.unwrap(), 5);
        let all = s.audit(None, 100).await.unwrap();
        assert_eq!(all.len(), 5);
        assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        let times: Vec<i64> = all.iter().map(|r| r.time_ms).collect();
        assert_eq!(times, vec![t + 4, t + 3, t + 2, t + 1, t]);
        let hv01 = s.audit(Some("hv01.lab.test"), 100).await.unwrap();
        assert_eq!(
            hv01.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
            vec![t + 4, t + 2, t]
        );
        assert!(hv01.iter().all(|r| r.host == "hv01.lab.test" && r.plan_id == plan));
        assert_eq!(s.audit(Some("hv01.lab.test"), 2).await.unwrap().len(), 2);
        assert_eq!(s.audit(None, 3).await.unwrap().len(), 3);
        // Host names match exactly.
        assert!(s.audit(Some("HV01.lab.test"), 10).await.unwrap().is_empty());
        assert!(s.audit(Some("hv01"), 10).await.unwrap().is_empty());
        // One apply is one transaction: a row naming no plan (foreign key) fails the whole
        // batch on both backends, and the valid row before it is not kept.
        let bad = [
            audit_record(plan, "hv04.lab.test", t),
            audit_record(plan + 1000, "hv05.lab.test", t),
        ];
        assert!(s.record_audit(&bad).await.is_err());
        assert_eq!(s.audit_count().await.unwrap(), 5);
        assert!(s.audit(Some("hv04.lab.test"), 10).await.unwrap().is_empty());
    }

    async fn last_change_per_host_is_the_newest_audit_time(db: &TestDb) {
        let s = db.open().await;
        let plan = s.create_plan(PlanState::Applied, "cli", &[], &[]).await.unwrap();
        // Times past 2^31 ms (and past i32 seconds): BIGINT all the way through MAX().
        let t = 4_102_444_800_000; // 2100-01-01
        s.record_audit(&[
            audit_record(plan, "hv02.lab.test", t - 50),
            audit_record(plan, "hv01.lab.test", t + 7),
            audit_record(plan, "hv01.lab.test", t - 1000),
            audit_record(plan, "hv02.lab.test", t + 1),
        ])
        .await
        .unwrap();
        // Out of order across applies too: MAX(time), not the latest row.
        s.record_audit(&[audit_record(plan, "hv01.lab.test", t)]).await.unwrap();
        let mut got = s.last_change_per_host().await.unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("hv01.lab.test".to_string(), t + 7),
                ("hv02.lab.test".to_string(), t + 1)
            ]
        );
    }

    // ----------------------------------------------------------------------------------------
    // Agents
    // ----------------------------------------------------------------------------------------

    async fn reports_are_upserted_and_last_seen_moves(db: &TestDb) {
        let s = db.open().await;
        let t0 = now_ms();
        s.ingest(&IngestBatch {
            reports: vec![
                ("hv02.lab.test".into(), report("hv02.lab.test", 17763)),
                ("hv01.lab.test".into(), report("hv01.lab.test", 14393)),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
        let (r1, received1, seen1) = s.latest_report("hv01.lab.test").await.unwrap().unwrap();
        assert_eq!(r1, report("hv01.lab.test", 14393));
        assert!(received1 >= t0 && received1 == seen1, "{t0} {received1} {seen1}");
        assert!(s.latest_report("hv09.lab.test").await.unwrap().is_none());

        // A heartbeat moves last_seen only; one for a host that never reported is ignored.
        tick().await;
        s.ingest(&IngestBatch {
            seen: vec!["hv01.lab.test".into(), "hv09.lab.test".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let (r, received, seen2) = s.latest_report("hv01.lab.test").await.unwrap().unwrap();
        assert_eq!((r, received), (report("hv01.lab.test", 14393), received1));
        assert!(seen2 > seen1, "{seen2} > {seen1}");
        assert!(s.latest_report("hv09.lab.test").await.unwrap().is_none());

        // A new report replaces the old one and moves both times.
        tick().await;
        s.ingest(&IngestBatch {
            reports: vec![("hv01.lab.test".into(), report("hv01.lab.test", 26100))],
            ..Default::default()
        })
        .await
        .unwrap();
        let (r, received3, seen3) = s.latest_report("hv01.lab.test").await.unwrap().unwrap();
        assert_eq!(r, report("hv01.lab.test", 26100));
        assert!(received3 > received1 && seen3 == received3);

        let hosts = s.reporting_hosts().await.unwrap();
        assert_eq!(
            hosts.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
            vec!["hv01.lab.test", "hv02.lab.test"]
        );
        assert_eq!(hosts[0].1, seen3);
        let mut all = s.all_reports().await.unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], ("hv01.lab.test".into(), report("hv01.lab.test", 26100), seen3));
        assert_eq!(all[1].0, "hv02.lab.test");
        assert_eq!(all[1].1, report("hv02.lab.test", 17763));
        // An empty report (zero bytes encoded) is a report too.
        s.ingest(&IngestBatch {
            reports: vec![("hv03.lab.test".into(), HostReport::default())],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(
            s.latest_report("hv03.lab.test").await.unwrap().unwrap().0,
            HostReport::default()
        );
        assert_eq!(s.attempt_count().await.unwrap(), 0);
    }

    async fn attempts_are_stored_once_even_when_resent(db: &TestDb) {
        let s = db.open().await;
        let t = 1_700_000_000_123;
        s.ingest(&IngestBatch {
            attempts: vec![
                (
                    "hv01.lab.test".into(),
                    attempt("a1", Some(t), false, "0x8009030E first"),
                ),
                ("hv01.lab.test".into(), attempt("a2", Some(t + 1), true, "ok")),
                // The same id twice in one batch.
                ("hv01.lab.test".into(), attempt("a2", Some(t + 1), true, "ok again")),
            ],
            seen: vec!["hv01.lab.test".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(s.attempt_count().await.unwrap(), 2);
        // A later batch resends a1 (say the ack was lost) along with a new one.
        s.ingest(&IngestBatch {
            attempts: vec![
                (
                    "hv01.lab.test".into(),
                    attempt("a1", Some(t), false, "0x8009030E resent"),
                ),
                ("hv02.lab.test".into(), attempt("a3", Some(t + 2), false, "other")),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(s.attempt_count().await.unwrap(), 3);
        let got = s.attempts(None, 10).await.unwrap();
        assert_eq!(
            got.iter().map(|a| a.attempt_id.as_str()).collect::<Vec<_>>(),
            vec!["a3", "a2", "a1"]
        );
        let a1 = &got[2];
        assert_eq!(
            a1,
            &StoredAttempt {
                attempt_id: "a1".into(),
                host: "hv01.lab.test".into(),
                time_ms: t,
                vm: "vm-a1".into(),
                peer: "hv02.lab.test".into(),
                success: false,
                error_code: 0x8009030E,
                message: "0x8009030E first".into(),
                account: "LAB\\svc-migrate".into(),
            }
        );
        assert!(got[1].success && got[1].error_code == 0 && got[1].message == "ok");
        // Attempts do not make a host a reporting one.
        assert!(s.reporting_hosts().await.unwrap().is_empty());
    }

    async fn attempts_list_newest_first_by_host_and_limit(db: &TestDb) {
        let s = db.open().await;
        let t = 1_700_000_000_000;
        let before = now_ms();
        s.ingest(&IngestBatch {
            attempts: vec![
                ("hv01.lab.test".into(), attempt("b", Some(t), true, "")),
                // Same time: the attempt id breaks the tie, descending.
                ("hv01.lab.test".into(), attempt("c", Some(t), true, "")),
                ("hv02.lab.test".into(), attempt("a", Some(t + 5), true, "")),
                ("hv01.lab.test".into(), attempt("d", Some(t - 5), false, "")),
                // No time from the agent: stored with the time it arrived.
                ("hv01.lab.test".into(), attempt("e", None, false, "")),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
        let ids = |v: Vec<StoredAttempt>| v.into_iter().map(|a| a.attempt_id).collect::<Vec<_>>();
        assert_eq!(ids(s.attempts(None, 10).await.unwrap()), vec!["e", "a", "c", "b", "d"]);
        assert_eq!(
            ids(s.attempts(Some("hv01.lab.test"), 10).await.unwrap()),
            vec!["e", "c", "b", "d"]
        );
        assert_eq!(ids(s.attempts(Some("hv01.lab.test"), 2).await.unwrap()), vec!["e", "c"]);
        assert_eq!(ids(s.attempts(Some("hv02.lab.test"), 10).await.unwrap()), vec!["a"]);
        assert!(s.attempts(Some("hv03.lab.test"), 10).await.unwrap().is_empty());
        let e = s.attempts(None, 1).await.unwrap().remove(0);
        assert!(e.time_ms >= before && e.time_ms <= now_ms(), "{}", e.time_ms);
        assert_eq!(s.attempt_count().await.unwrap(), 5);
    }

    async fn an_empty_store_answers_empty(db: &TestDb) {
        let s = db.open().await;
        assert!(IngestBatch::default().is_empty());
        s.ingest(&IngestBatch::default()).await.unwrap();
        assert!(s.list_plans(None, 10).await.unwrap().is_empty());
        assert!(s.get_plan(1).await.unwrap().is_none());
        assert_eq!(s.find_pending(&[change("CN=HV01,DC=x")]).await.unwrap(), None);
        assert_eq!(s.supersede_pending(None).await.unwrap(), 0);
        assert!(s.audit(None, 10).await.unwrap().is_empty());
        assert_eq!(s.audit_count().await.unwrap(), 0);
        assert!(s.last_change_per_host().await.unwrap().is_empty());
        assert!(s.latest_report("hv01.lab.test").await.unwrap().is_none());
        assert!(s.all_reports().await.unwrap().is_empty());
        assert!(s.reporting_hosts().await.unwrap().is_empty());
        assert!(s.attempts(None, 10).await.unwrap().is_empty());
        assert_eq!(s.attempt_count().await.unwrap(), 0);
    }

    async fn negative_limits_mean_no_limit(db: &TestDb) {
        let s = db.open().await;
        for i in 0..3 {
            let p = s.create_plan(PlanState::Applied, "cli", &[], &[]).await.unwrap();
            s.record_audit(&[audit_record(p, "hv01.lab.test", now_ms())])
                .await
                .unwrap();
            s.ingest(&IngestBatch {
                attempts: vec![("hv01.lab.test".into(), attempt(&format!("x{i}"), None, true, ""))],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        assert_eq!(s.list_plans(None, -1).await.unwrap().len(), 3);
        assert_eq!(s.list_plans(Some(PlanState::Applied), i64::MIN).await.unwrap().len(), 3);
        assert_eq!(s.audit(None, -1).await.unwrap().len(), 3);
        assert_eq!(s.audit(Some("hv01.lab.test"), -5).await.unwrap().len(), 3);
        assert_eq!(s.attempts(None, -1).await.unwrap().len(), 3);
        assert_eq!(s.list_plans(None, i64::MAX).await.unwrap().len(), 3);
        assert!(s.list_plans(None, 0).await.unwrap().is_empty());
        assert!(s.audit(None, 0).await.unwrap().is_empty());
        assert!(s.attempts(None, 0).await.unwrap().is_empty());
    }

    /// Agents and API callers send arbitrary strings; PostgreSQL refuses U+0000 in TEXT, and a
    /// refused ingest batch would come back forever (its attempts are never acknowledged).
    async fn nul_characters_in_text_are_replaced(db: &TestDb) {
        let s = db.open().await;
        s.ingest(&IngestBatch {
            reports: vec![("hv01.lab.test".into(), report("hv01\0.lab.test", 1))],
            attempts: vec![("hv01.lab.test".into(), {
                let mut a = attempt("n\u{0}1", Some(1_700_000_000_000), false, "bad\0message");
                a.vm_name = "vm\0".into();
                a.peer = "\0".into();
                a.account = "LAB\\\0x".into();
                a
            })],
            seen: vec!["hv01\0.lab.test".into()],
        })
        .await
        .unwrap();
        let got = s.attempts(None, 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attempt_id, "n\u{FFFD}1");
        assert_eq!(got[0].message, "bad\u{FFFD}message");
        assert_eq!(got[0].vm, "vm\u{FFFD}");
        assert_eq!(got[0].peer, "\u{FFFD}");
        assert_eq!(got[0].account, "LAB\\\u{FFFD}x");
        // Inside the protobuf bytes a NUL is just a byte.
        let (r, _, _) = s.latest_report("hv01.lab.test").await.unwrap().unwrap();
        assert_eq!(r, report("hv01\0.lab.test", 1));
        assert!(s.attempts(Some("hv01\0.lab.test"), 10).await.unwrap().is_empty());
        assert!(s.latest_report("hv01\0.lab.test").await.unwrap().is_none());

        let p = s
            .create_plan(PlanState::PendingApproval, "api:\0", &[change("CN=HV\0,DC=x")], &[])
            .await
            .unwrap();
        s.set_plan_state(p, PlanState::Rejected, Some("alice\0"), Some("no\0pe"))
            .await
            .unwrap();
        let plan = s.get_plan(p).await.unwrap().unwrap();
        assert_eq!(plan.trigger, "api:\u{FFFD}");
        assert_eq!(plan.changes, vec![change("CN=HV\0,DC=x")], "JSON escapes NUL itself");
        assert_eq!(plan.decided_by.as_deref(), Some("alice\u{FFFD}"));
        assert_eq!(plan.note.as_deref(), Some("no\u{FFFD}pe"));
        let mut rec = audit_record(p, "hv\u{0}01.lab.test", now_ms());
        rec.trigger = "\0".into();
        rec.approved_by = Some("bob\0".into());
        s.record_audit(&[rec]).await.unwrap();
        let got = s.audit(Some("hv\u{0}01.lab.test"), 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].host, "hv\u{FFFD}01.lab.test");
        assert_eq!(got[0].dn, "CN=hv\u{FFFD}01.lab.test,DC=x");
        assert_eq!(got[0].trigger, "\u{FFFD}");
        assert_eq!(got[0].approved_by.as_deref(), Some("bob\u{FFFD}"));
        assert_eq!(s.last_change_per_host().await.unwrap()[0].0, "hv\u{FFFD}01.lab.test");
    }

    /// Two controllers on one database (what several replicas will do): the second open finds
    /// the schema migrated, concurrent writes get distinct ids, each sees the other's rows,
    /// and an attempt both of them ingest is stored once.
    async fn two_stores_on_one_database_see_each_other(db: &TestDb) {
        // On PostgreSQL both start on the empty database at once: sqlx's migrator holds an
        // advisory lock, so the migrations run once. Its SQLite migrator takes no lock (two
        // processes creating one store file at the same instant fail with "table plans
        // already exists"); SQLite is the single-controller store, so there they start in turn.
        let (a, b) = if db.postgres {
            tokio::join!(db.open(), db.open())
        } else {
            (db.open().await, db.open().await)
        };
        let (ca, cb) = ([change("CN=HV01,DC=x")], [change("CN=HV02,DC=x")]);
        let (pa, pb) = tokio::join!(
            a.create_plan(PlanState::PendingApproval, "a", &ca, &[]),
            b.create_plan(PlanState::PendingApproval, "b", &cb, &[]),
        );
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        assert_ne!(pa, pb);
        assert_eq!(b.get_plan(pa).await.unwrap().unwrap().trigger, "a");
        assert_eq!(a.find_pending(&[change("CN=HV02,DC=x")]).await.unwrap(), Some(pb));
        let batch = |host: &str| IngestBatch {
            reports: vec![(host.to_string(), report(host, 20348))],
            attempts: vec![
                (
                    "hv01.lab.test".to_string(),
                    attempt("shared", Some(1_700_000_000_000), true, ""),
                ),
                (host.to_string(), attempt(host, Some(1_700_000_000_001), true, "")),
            ],
            seen: vec![],
        };
        let (ba, bb) = (batch("hv01.lab.test"), batch("hv02.lab.test"));
        let (ra, rb) = tokio::join!(a.ingest(&ba), b.ingest(&bb));
        ra.unwrap();
        rb.unwrap();
        assert_eq!(a.attempt_count().await.unwrap(), 3);
        assert_eq!(b.reporting_hosts().await.unwrap().len(), 2);
        a.close().await;
        b.close().await;
    }

    /// The lease: one holder at a time; renewals keep the epoch; a takeover after expiry bumps
    /// it, and the deposed holder's fence check fails from then on.
    async fn leases_are_taken_renewed_fenced_and_taken_over(db: &TestDb) {
        let s = db.open().await;
        assert_eq!(s.lease("leader").await.unwrap(), None);
        assert!(!s.holds_lease("leader", "a", 1).await.unwrap());
        assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), Some(1));
        // Renewal: same epoch. Another holder cannot take a live lease.
        assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), Some(1));
        assert_eq!(s.acquire_lease("leader", "b", "b:1", 60_000).await.unwrap(), None);
        let l = s.lease("leader").await.unwrap().unwrap();
        assert_eq!((l.holder.as_str(), l.address.as_str(), l.epoch), ("a", "a:1", 1));
        assert!(l.expires_at_ms > now_ms());
        assert!(s.holds_lease("leader", "a", 1).await.unwrap());
        assert!(!s.holds_lease("leader", "a", 2).await.unwrap());
        assert!(!s.holds_lease("leader", "b", 1).await.unwrap());
        // Another lease name is independent.
        assert_eq!(s.acquire_lease("other", "b", "b:1", 60_000).await.unwrap(), Some(1));
        // Expiry: a short lease lapses, and b takes it over at epoch 2.
        assert_eq!(s.acquire_lease("leader", "a", "a:1", 1).await.unwrap(), Some(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!s.holds_lease("leader", "a", 1).await.unwrap());
        assert_eq!(s.acquire_lease("leader", "b", "b:1", 60_000).await.unwrap(), Some(2));
        assert!(!s.holds_lease("leader", "a", 1).await.unwrap());
        assert!(s.holds_lease("leader", "b", 2).await.unwrap());
        assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), None);
        // Release by a non-holder does nothing; by the holder, the next taker gets epoch 3.
        s.release_lease("leader", "a").await.unwrap();
        assert!(s.holds_lease("leader", "b", 2).await.unwrap());
        s.release_lease("leader", "b").await.unwrap();
        assert!(!s.holds_lease("leader", "b", 2).await.unwrap());
        assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), Some(3));
        // Two contenders at once on an expired lease: exactly one wins.
        s.release_lease("leader", "a").await.unwrap();
        let (x, y) = tokio::join!(
            s.acquire_lease("leader", "x", "x:1", 60_000),
            s.acquire_lease("leader", "y", "y:1", 60_000)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(x.is_some() != y.is_some(), "{x:?} {y:?}");
        assert_eq!(x.or(y), Some(4));
        s.close().await;
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

    #[tokio::test]
    async fn unknown_schemes_are_refused() {
        assert!(matches!(
            Store::open("mysql://u:p@h/db").await,
            Err(StoreError::Scheme(_))
        ));
    }

    #[test]
    fn test_database_urls() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:55432/kcdsync", "t1"),
            "postgres://u:p@127.0.0.1:55432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgresql://h:5432", "t1"), "postgresql://h:5432/t1");
        assert_eq!(url_user("postgres://kcdsync:pw@h/db"), Some("kcdsync"));
        assert_eq!(url_user("postgres://h/db"), None);
    }
}
