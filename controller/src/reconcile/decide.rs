//! Decide: plan, then guard. Pure (but for a span and a counter), so a
//! caller — the CLI's dry run, a test — can stand between deciding and writing.

use crate::config::{Config, Mode};
use crate::model::{HostChange, Index, Observed};
use crate::plan::{self, Guarded, Plan};

/// What should change, and what the guard lets through.
#[derive(Debug, Clone)]
pub struct Decision {
    pub plan: Plan,
    /// Verdict on the enforce-mode changes.
    pub guarded: Guarded,
    /// Changes of groups in observe or plan mode: reported, never written
    /// unless approved.
    pub not_enforced: Vec<HostChange>,
    /// What waits for approval: the guard's held changes, and the changes
    /// of plan-mode groups.
    pub pending: Vec<HostChange>,
    /// Why `pending` waits, in words for the operator.
    pub pending_reasons: Vec<String>,
}

impl Decision {
    pub fn is_noop(&self) -> bool {
        self.plan.is_noop()
    }
}

/// Plans and guards.
pub fn decide(cfg: &Config, observed: &Observed) -> Decision {
    decide_with(cfg, observed, &Index::new(observed, &cfg.dns_suffixes))
}

/// [`decide`] with `observed`'s index already built (serve keeps it between runs).
pub fn decide_with(cfg: &Config, observed: &Observed, index: &Index) -> Decision {
    let span = tracing::info_span!(
        "plan",
        hosts_changed = tracing::field::Empty,
        pending = tracing::field::Empty
    );
    let _entered = span.enter();
    let plan = plan::plan_with(&cfg.groups, &cfg.scope, index, observed);
    span.record("hosts_changed", plan.changes.len());
    crate::metrics::get().drift_detected.add(plan.changes.len() as u64, &[]);
    let (enforce, not_enforced): (Vec<HostChange>, Vec<HostChange>) =
        plan.changes.iter().cloned().partition(|c| c.mode == Mode::Enforce);
    let guarded = plan::guard(&enforce, &cfg.guard, &cfg.groups);
    let planned: Vec<HostChange> = not_enforced.iter().filter(|c| c.mode == Mode::Plan).cloned().collect();
    let mut pending_reasons = guarded.reasons.clone();
    if !planned.is_empty() {
        pending_reasons.push(format!("{} hosts are in plan-mode groups", planned.len()));
    }
    let mut pending = guarded.held.clone();
    pending.extend(planned);
    if cfg.diagnosis.enforce_sensitive {
        let sensitive = plan::sensitive_changes(&observed.privileged, &cfg.diagnosis.migration_accounts);
        if !sensitive.is_empty() {
            pending_reasons.push(format!("marks {} privileged accounts sensitive", sensitive.len()));
        }
        pending.extend(sensitive);
    }
    Decision {
        plan,
        guarded,
        not_enforced,
        pending,
        pending_reasons,
    }
}
