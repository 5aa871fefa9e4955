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

/// A plan decision that lost: plan `id` was no longer `expected` when this decider tried to make
/// it `wanted`, because someone else decided first (`found`, by `by`, at `at_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanChanged {
    pub id: i64,
    pub expected: PlanState,
    pub wanted: PlanState,
    /// `None`: the plan does not exist.
    pub found: Option<PlanState>,
    pub by: Option<String>,
    pub at_ms: Option<i64>,
}

impl std::fmt::Display for PlanChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = self.id;
        let Some(found) = self.found else {
            return write!(
                f,
                "plan {id} does not exist: list plans with `kcdsync-controller plans`"
            );
        };
        write!(f, "plan {id} was {}", found.as_str().replace('_', " "))?;
        if let Some(by) = &self.by {
            write!(f, " by {by}")?;
        }
        if let Some(at) = self.at_ms {
            write!(f, " at {}", crate::report::format_ms(at))?;
        }
        match self.wanted {
            PlanState::Approved => f.write_str("; nothing was applied"),
            PlanState::Rejected => write!(f, "; it was not rejected (see `kcdsync-controller plans --id {id}`)"),
            PlanState::Applied | PlanState::Failed => {
                f.write_str(" while this run applied it; the audit has what was written")
            }
            PlanState::PendingApproval | PlanState::Superseded => f.write_str("; nothing was written"),
        }
    }
}

impl std::error::Error for PlanChanged {}

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
    /// When the plan last changed state (Unix ms).
    pub decided_at_ms: Option<i64>,
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

    /// Moves plan `id` from state `from` to `to`, as a compare-and-set: the UPDATE names the
    /// state it expects and its row count says whether it won. Two deciders (an approve and a
    /// reject, two replicas, the CLI and the API) can read the same pending plan; only one of
    /// them moves it, and the other gets [`PlanChanged`] with who decided first — so a
    /// rejected plan can never be approved into AD afterwards. `None` leaves `decided_by` /
    /// `note` as they are.
    pub async fn decide_plan(
        &self,
        id: i64,
        from: PlanState,
        to: PlanState,
        decided_by: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(
            "UPDATE plans SET state = $1, decided_by = COALESCE($2, decided_by), decided_at = $3, note = COALESCE($4, note) WHERE id = $5 AND state = $6",
        )
        .bind(to.as_str())
        .bind(decided_by.map(text))
        .bind(now_ms())
        .bind(note.map(text))
        .bind(id)
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            return Ok(());
        }
        // Lost (or the plan is gone): say who got there first.
        let row = sqlx::query("SELECT state, decided_by, decided_at FROM plans WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let (found, by, at_ms) = match row {
            Some(r) => {
                let state: String = r.try_get(0)?;
                let found = PlanState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                    what: "plan state".into(),
                    message: state.clone(),
                })?;
                (Some(found), r.try_get(1)?, r.try_get(2)?)
            }
            None => (None, None, None),
        };
        Err(StoreError::PlanChanged(PlanChanged {
            id,
            expected: from,
            wanted: to,
            found,
            by,
            at_ms,
        }))
    }

    pub async fn get_plan(&self, id: i64) -> Result<Option<StoredPlan>, StoreError> {
        let row = sqlx::query(
            "SELECT id, created_at, state, trigger, changes, gate_reasons, decided_by, note, decided_at FROM plans WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| plan_from_row(&r)).transpose()
    }

    /// Plans, newest first, at most `max` (negative: all); `state` filters.
    pub async fn list_plans(&self, state: Option<PlanState>, max: i64) -> Result<Vec<StoredPlan>, StoreError> {
        self.plans_page(state, None, max).await
    }

    /// One page of plans, newest first: those with an id below `before` (keyset paging, so a
    /// plan created between two pages neither repeats nor hides one), at most `max`.
    pub async fn plans_page(
        &self,
        state: Option<PlanState>,
        before: Option<i64>,
        max: i64,
    ) -> Result<Vec<StoredPlan>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, created_at, state, trigger, changes, gate_reasons, decided_by, note, decided_at FROM plans WHERE ($1 = '' OR state = $1) AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(state.map(PlanState::as_str).unwrap_or(""))
        .bind(before.unwrap_or(i64::MAX))
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
        decided_at_ms: r.try_get(8)?,
    })
}
