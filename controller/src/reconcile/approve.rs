//! Approval: what a run may write, and under which plan. Shared by the CLI
//! (`apply --approve N`, `reject N`) and the API (ApprovePlan, RejectPlan),
//! which both go through here, so the rules are the same whichever a person uses.
//!
//! Without an approval a run writes what the guard lets through and stores
//! the rest as a pending plan. With one, the stored plan must still match
//! what AD would need now (compared by intent): otherwise it is superseded
//! by a fresh plan and nothing is written.

use std::collections::BTreeSet;

use super::apply::Part;
use super::{Approval, Decision, ReconcileError, RunOptions};
use crate::config::Mode;
use crate::model::{HostChange, intents};
use crate::store::{PlanChanged, PlanState, Store, StoreError, StoredPlan};

/// What a run writes, and under which plan.
pub(super) struct Selection {
    pub changes: Vec<HostChange>,
    pub part: Part,
    /// The approved plan, when the run applies one.
    pub plan_id: Option<i64>,
    pub approved_by: Option<String>,
    /// The plan left waiting for approval, if the guard held anything.
    pub pending_plan: Option<i64>,
}

pub(super) async fn select(store: &Store, decision: &Decision, opts: &RunOptions) -> Result<Selection, ReconcileError> {
    match &opts.approve {
        Some(a) => approved(store, decision, a, &opts.trigger).await,
        None => {
            let pending = store_pending(store, decision, &opts.trigger, true).await?;
            store.supersede_pending(pending).await?;
            Ok(Selection {
                changes: decision.guarded.auto.clone(),
                part: Part::Additive,
                plan_id: None,
                approved_by: None,
                pending_plan: pending,
            })
        }
    }
}

/// A pending plan, or the error that says why it cannot be acted on (as `wanted`). This read
/// only spares a doomed run its work: the compare-and-set that follows decides.
async fn pending_plan(store: &Store, id: i64, wanted: PlanState) -> Result<StoredPlan, ReconcileError> {
    let stored = store.get_plan(id).await?.ok_or(ReconcileError::PlanNotFound(id))?;
    if stored.state != PlanState::PendingApproval {
        return Err(ReconcileError::PlanDecided(PlanChanged {
            id,
            expected: PlanState::PendingApproval,
            wanted,
            found: Some(stored.state),
            by: stored.decided_by,
            at_ms: stored.decided_at_ms,
        }));
    }
    Ok(stored)
}

async fn approved(
    store: &Store,
    decision: &Decision,
    approval: &Approval,
    trigger: &str,
) -> Result<Selection, ReconcileError> {
    let stored = pending_plan(store, approval.plan_id, PlanState::Approved).await?;
    if stored.intents() != intents(&decision.pending) {
        store
            .decide_plan(
                stored.id,
                PlanState::PendingApproval,
                PlanState::Superseded,
                None,
                Some("AD changed before approval"),
            )
            .await?;
        let new = store_pending(store, decision, trigger, false).await?;
        return Err(ReconcileError::Superseded { old: stored.id, new });
    }
    // The claim, before anything is written to AD: a reject that got here first wins, and
    // this run then writes nothing.
    store
        .decide_plan(
            stored.id,
            PlanState::PendingApproval,
            PlanState::Approved,
            Some(&approval.by),
            None,
        )
        .await?;
    Ok(Selection {
        changes: approved_changes(decision),
        part: Part::Full,
        plan_id: Some(stored.id),
        approved_by: Some(approval.by.clone()),
        pending_plan: None,
    })
}

/// The whole change of every host the guard let through or held: an approval
/// covers what was held as well as what was not.
fn approved_changes(decision: &Decision) -> Vec<HostChange> {
    let dns: BTreeSet<String> = decision
        .guarded
        .auto
        .iter()
        .chain(&decision.pending)
        .map(|c| c.intent().dn)
        .collect();
    let mut full: Vec<HostChange> = decision
        .plan
        .changes
        .iter()
        .filter(|c| c.mode != Mode::Observe && dns.contains(&c.intent().dn))
        .cloned()
        .collect();
    // Changes outside the computer plan (sensitive accounts) as held.
    for p in &decision.pending {
        if !full.iter().any(|c| c.intent().dn == p.intent().dn) {
            full.push(p.clone());
        }
    }
    full
}

/// Stores what waits for approval as a pending plan (none when nothing
/// waits); with `reuse`, an identical pending plan is answered instead.
async fn store_pending(
    store: &Store,
    decision: &Decision,
    trigger: &str,
    reuse: bool,
) -> Result<Option<i64>, StoreError> {
    if decision.pending.is_empty() {
        return Ok(None);
    }
    if reuse && let Some(id) = store.find_pending(&decision.pending).await? {
        return Ok(Some(id));
    }
    let id = store
        .create_plan(
            PlanState::PendingApproval,
            trigger,
            &decision.pending,
            &decision.pending_reasons,
        )
        .await?;
    Ok(Some(id))
}

/// Rejects a pending plan: nothing is written, the plan records who and why.
pub async fn reject(store: &Store, id: i64, by: &str, note: Option<&str>) -> Result<StoredPlan, ReconcileError> {
    pending_plan(store, id, PlanState::Rejected).await?;
    store
        .decide_plan(id, PlanState::PendingApproval, PlanState::Rejected, Some(by), note)
        .await?;
    store.get_plan(id).await?.ok_or(ReconcileError::PlanNotFound(id))
}
