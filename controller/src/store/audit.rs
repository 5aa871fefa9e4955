//! The audit trail: one row per applied modify, written ahead as an intent and settled after
//! the write, so a writer that stops in between leaves a trace.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, StoreError, from_json, json, limit, text};

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
    /// The domain controller the write was sent to (its dNSHostName); empty in rows older than
    /// failover (`runtime::failover`), and for imports.
    #[serde(default)]
    pub dc: String,
}

impl Store {
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
                "INSERT INTO audit (time, plan_id, host, dn, uac_before, uac_after, delegate_before, delegate_after, reasons, trigger, approved_by, epoch, state, dc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
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
            .bind(text(&r.dc))
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
            "SELECT id, time, plan_id, host, dn, uac_before, uac_after, delegate_before, delegate_after, reasons, trigger, approved_by, epoch, dc FROM audit WHERE state = 'intent' ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    /// Audit rows, newest first; `host` filters by host name.
    pub async fn audit(&self, host: Option<&str>, max: i64) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit_page(host, None, None, max).await
    }

    /// One page of the audit, newest first: rows with an id below `before` (keyset paging),
    /// at most `max`; `host` and `plan` filter.
    pub async fn audit_page(
        &self,
        host: Option<&str>,
        plan: Option<i64>,
        before: Option<i64>,
        max: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, time, plan_id, host, dn, uac_before, uac_after, delegate_before, delegate_after, reasons, trigger, approved_by, epoch, dc FROM audit WHERE state = 'done' AND ($1 = '' OR host = $1) AND ($2 < 0 OR plan_id = $2) AND id < $3 ORDER BY id DESC LIMIT $4",
        )
        .bind(text(host.unwrap_or("")))
        .bind(plan.unwrap_or(-1))
        .bind(before.unwrap_or(i64::MAX))
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

    /// Hosts changed (audit rows written) since `since_ms`: the dashboard's "changes in 24 h".
    pub async fn audit_count_since(&self, since_ms: i64) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM audit WHERE state = 'done' AND time >= $1")
                .bind(since_ms)
                .fetch_one(&self.pool)
                .await?
                .try_get::<i64, _>(0)?,
        )
    }

    /// When kcdsync last changed each host (host → Unix ms).
    pub async fn last_change_per_host(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT host, MAX(time) FROM audit WHERE state = 'done' GROUP BY host")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }
}

pub(super) fn audit_from_row(r: &sqlx::any::AnyRow) -> Result<AuditRecord, StoreError> {
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
        dc: r.try_get(13)?,
    })
}

/// An audit event that is not an AD modify (an agent revoked or unrevoked, its certificate renewed): who did what to
/// which host, and why. Kept apart from the modify rows above, which date each host's last
/// delegation change for the diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: i64,
    pub time_ms: i64,
    /// `agent-revoked`, `agent-unrevoked`, `agent-certificate-renewed`, `agent-certificate-refused`,
    /// `agent-enrolled`, `agent-enrollment-refused`.
    pub kind: String,
    pub host: String,
    pub actor: String,
    pub detail: String,
}

/// Audit event kinds of certificate renewal over the agent stream (`crate::renewal`).
pub const EVENT_CERT_RENEWED: &str = "agent-certificate-renewed";
pub const EVENT_CERT_REFUSED: &str = "agent-certificate-refused";
/// … and of enrollment (`crate::enrollment`): a certificate issued to a host that proved by
/// Kerberos that it is its computer account, and an authenticated account refused.
pub const EVENT_ENROLLED: &str = "agent-enrolled";
pub const EVENT_ENROLL_REFUSED: &str = "agent-enrollment-refused";

/// Inserts one audit event on `conn` (in the caller's transaction, when it has one).
pub(super) async fn insert_event(
    conn: &mut sqlx::AnyConnection,
    at: i64,
    kind: &str,
    host: &str,
    actor: &str,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit_events (time, kind, host, actor, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(at)
        .bind(kind)
        .bind(text(host))
        .bind(text(actor))
        .bind(text(detail))
        .execute(conn)
        .await?;
    Ok(())
}

impl Store {
    /// Records an audit event on its own (the deny-list writes its events in the transaction
    /// of its change instead).
    pub async fn record_audit_event(
        &self,
        kind: &str,
        host: &str,
        actor: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_event(&mut conn, super::now_ms(), kind, host, actor, detail).await
    }

    /// Audit events, newest first; `host` filters by host name.
    pub async fn audit_events(&self, host: Option<&str>, max: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, time, kind, host, actor, detail FROM audit_events WHERE ($1 = '' OR host = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(text(host.unwrap_or("")))
        .bind(limit(max))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The newest `max` audit events of `host` of one of `kinds`, newest first: a host's
    /// revocations stay in view however many certificate renewals (two a day) came after them.
    pub async fn audit_events_of(&self, host: &str, kinds: &[&str], max: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let mut events = Vec::new();
        for kind in kinds {
            let rows = sqlx::query(
                "SELECT id, time, kind, host, actor, detail FROM audit_events WHERE host = $1 AND kind = $2 ORDER BY id DESC LIMIT $3",
            )
            .bind(text(host))
            .bind(*kind)
            .bind(limit(max))
            .fetch_all(&self.pool)
            .await?;
            for r in &rows {
                events.push(event_from_row(r)?);
            }
        }
        events.sort_by_key(|e| std::cmp::Reverse(e.id));
        if max >= 0 {
            events.truncate(usize::try_from(max).unwrap_or(usize::MAX));
        }
        Ok(events)
    }
}

fn event_from_row(r: &sqlx::any::AnyRow) -> Result<AuditEvent, StoreError> {
    Ok(AuditEvent {
        id: r.try_get(0)?,
        time_ms: r.try_get(1)?,
        kind: r.try_get(2)?,
        host: r.try_get(3)?,
        actor: r.try_get(4)?,
        detail: r.try_get(5)?,
    })
}
