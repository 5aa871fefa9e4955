//! Plans: what a reconcile would change, stored for approval and for the record.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, StoreError, from_json, json, limit, now_ms, text};
use crate::model::{HostChange, Intent};

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
        crate::model::intents(&self.changes)
    }
}

impl Store {
    pub async fn create_plan(
        &self,
        state: PlanState,
        trigger: &str,
        changes: &[HostChange],
        gate_reasons: &[String],
    ) -> Result<i64, StoreError> {
        let digest = json(&crate::model::intents(changes));
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
        let digest = json(&crate::model::intents(changes));
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
