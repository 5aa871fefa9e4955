//! `plans`, `approve`, `reject`, `reconcile`: what the controller means to
//! change in AD, and the operator's say over it (approving, rejecting and
//! triggering need the write role).

use anyhow::Result;
use kcdsync_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::Output;
use crate::client::{Client, status_err};
use crate::output::{plan_json, plan_state, print};

pub async fn plans(c: &mut Client, out: Output, pending: bool) -> Result<()> {
    // 0 (unspecified) asks for every state.
    let state = if pending {
        pb::PlanState::PendingApproval as i32
    } else {
        0
    };
    let plans = list(c, state, 100).await?;
    print(
        out,
        Value::from(plans.iter().map(plan_json).collect::<Vec<_>>()),
        || {
            let mut s = plan_row(["ID", "STATE", "TRIGGER", "HOSTS", "EDGES", "WHY HELD"]);
            for p in &plans {
                s.push_str(&plan_row([
                    &p.id,
                    &plan_state(p.state),
                    &p.trigger.chars().take(24).collect::<String>(),
                    &p.changes.len().to_string(),
                    &edge_summary(p.edge_diff.as_ref()),
                    &p.gate_reasons.join("; "),
                ]));
            }
            s
        },
    );
    Ok(())
}

pub async fn approve(c: &mut Client, out: Output, id: String) -> Result<()> {
    let p = c
        .approve_plan(pb::ApprovePlanRequest {
            id,
            comment: String::new(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    print(out, plan_json(&p), || {
        format!("Plan {} is {}.\n", p.id, plan_state(p.state))
    });
    Ok(())
}

pub async fn reject(c: &mut Client, out: Output, id: String, comment: String) -> Result<()> {
    let p = c
        .reject_plan(pb::RejectPlanRequest { id, comment })
        .await
        .map_err(status_err)?
        .into_inner();
    print(out, plan_json(&p), || {
        format!("Plan {} rejected; nothing was written.\n", p.id)
    });
    Ok(())
}

pub async fn reconcile(c: &mut Client, out: Output) -> Result<()> {
    let r = c
        .trigger_reconcile(pb::TriggerReconcileRequest::default())
        .await
        .map_err(status_err)?
        .into_inner();
    let json = json!({"plan_id": r.plan_id, "hosts_changed": r.hosts_changed, "pending": r.hosts_pending_approval});
    print(out, json, || {
        if r.plan_id.is_empty() {
            "Reconciled: nothing written.\n".to_owned()
        } else {
            format!("Reconciled: plan {} changed {} hosts.\n", r.plan_id, r.hosts_changed)
        }
    });
    Ok(())
}

/// The first page of stored plans in `state` (0 for all), newest first.
pub(super) async fn list(c: &mut Client, state: i32, page_size: u32) -> Result<Vec<pb::Plan>> {
    let r = c
        .list_plans(pb::ListPlansRequest {
            state,
            page_size,
            ..Default::default()
        })
        .await
        .map_err(status_err)?;
    Ok(r.into_inner().plans)
}

/// One line of the `plans` table; the header uses it too, so columns align.
fn plan_row(cells: [&str; 6]) -> String {
    let [id, state, trigger, hosts, edges, why] = cells;
    format!("{id:<6} {state:<18} {trigger:<24} {hosts:<6} {edges:<16} {why}\n")
}

/// A plan's security-edge change in a few characters: `+2 -1 DANGEROUS`;
/// `-` when the controller sent none (the plan is no longer pending).
fn edge_summary(d: Option<&pb::EdgeDiff>) -> String {
    match d {
        None => "-".to_owned(),
        Some(d) => format!(
            "+{} -{}{}",
            d.added.len(),
            d.removed.len(),
            if d.adds_dangerous { " DANGEROUS" } else { "" }
        ),
    }
}
