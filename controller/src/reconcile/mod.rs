//! One reconcile: observe → decide (plan + guard) → approve → apply → verify
//! → audit, each step in the file named for it.
//!
//! `reconcile` is a plain async function that returns what happened (or a
//! typed error); it knows nothing of timers or retries — the serve loop
//! (`runtime`) schedules runs and asks its error policy (`runtime::policy`)
//! when to try again. AD is reached through `AdClient`, so the
//! conflict, retry, fencing and verify paths are unit-tested against an
//! in-memory directory and the real SQLite store, besides the lab tests.

mod apply;
mod approve;
mod audit;
mod decide;
mod error;
mod fence;
pub mod incremental;
mod observe;
mod ports;
mod verify;

#[cfg(test)]
mod tests;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

pub use apply::{MAX_CONFLICT_RETRIES, MAX_TRANSIENT_RETRIES};
pub use approve::reject;
pub(crate) use audit::reflected;
pub use decide::{Decision, decide, decide_with};
pub use error::{HostError, ReconcileError};
pub use fence::Fence;
pub use observe::observe;
pub use ports::AdClient;

use crate::config::Config;
use crate::ldap::WritePolicy;
use crate::model::{Computer, HostChange, Observed};
use crate::store::{AuditRecord, PlanState, Store};

/// What a reconcile was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Recorded with the plan and the audit: "cli", "timer", "api", ...
    pub trigger: String,
    /// Approve this pending plan (and apply it, if it still matches AD).
    pub approve: Option<Approval>,
    pub progress: Option<watch::Sender<Progress>>,
    /// With several replicas: the lease this run writes under. Checked before every AD modify
    /// and before the audit; a lost lease aborts the run ([`ReconcileError::Fenced`]).
    pub fence: Option<Fence>,
    /// The DC the run writes to (its dNSHostName), recorded with every audit row.
    pub dc: String,
    /// Gets the audit rows of the run's writes as each chunk is verified and audited, before
    /// the run ends (`serve`: the per-DC verify and the agents' purges start on them at once).
    /// Every row also ends up in [`Outcome::applied`].
    pub audited: Option<mpsc::UnboundedSender<Audited>>,
}

/// Audit rows a run handed over while running (`RunOptions::audited`).
#[derive(Debug)]
pub struct Audited {
    pub rows: Vec<AuditRecord>,
    /// The run's span: what follows these rows (a purge command) is part of the run's trace.
    pub span: tracing::Span,
}

#[derive(Debug, Clone)]
pub struct Approval {
    pub plan_id: i64,
    pub by: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// What a reconcile did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// The plan under which changes were written.
    pub plan_id: Option<i64>,
    /// The plan waiting for approval, if the guard held anything.
    pub pending_plan: Option<i64>,
    pub gate_reasons: Vec<String>,
    /// The audit rows this run wrote; with them, those of writes an earlier run of this writer
    /// made on a DC it then lost, settled by this run (`audit::settle_cut_off`).
    pub applied: Vec<AuditRecord>,
    pub failures: Vec<HostFailure>,
    /// The written objects as verify read them back: with the observe, what AD holds now
    /// (the loop patches its picture of AD with them instead of reading it again).
    #[serde(skip)]
    pub after: Vec<Computer>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostFailure {
    pub host: String,
    pub dn: String,
    pub error: String,
}

impl HostFailure {
    fn new(change: &HostChange, error: impl std::fmt::Display) -> HostFailure {
        HostFailure {
            host: change.host.clone(),
            dn: change.dn.clone(),
            error: error.to_string(),
        }
    }
}

/// observe + decide + execute.
pub async fn reconcile(
    cfg: &Config,
    ad: &impl AdClient,
    store: &Store,
    opts: RunOptions,
) -> Result<Outcome, ReconcileError> {
    let t = std::time::Instant::now();
    let observed = observe(cfg, ad).await?;
    tracing::debug!(
        computers = observed.computers.len(),
        elapsed_ms = t.elapsed().as_millis() as u64,
        "observed"
    );
    let t = std::time::Instant::now();
    let decision = decide(cfg, &observed);
    tracing::debug!(
        changes = decision.plan.changes.len(),
        elapsed_ms = t.elapsed().as_millis() as u64,
        "planned"
    );
    execute(cfg, ad, store, &observed, &decision, opts).await
}

/// Writes what `decision` allows (approve → apply), verifies it, and audits it.
pub async fn execute(
    cfg: &Config,
    ad: &impl AdClient,
    store: &Store,
    observed: &Observed,
    decision: &Decision,
    opts: RunOptions,
) -> Result<Outcome, ReconcileError> {
    let fence = opts.fence.as_ref();
    fence::check(fence, store, 0).await?;
    settle_before_writing(cfg, ad, store, fence).await?;

    let selection = approve::select(store, decision, &opts).await?;
    let mut outcome = Outcome {
        plan_id: None,
        pending_plan: selection.pending_plan,
        gate_reasons: decision.pending_reasons.clone(),
        applied: Vec::new(),
        failures: Vec::new(),
        after: Vec::new(),
    };
    let epoch = fence.map_or(0, |f| f.epoch);
    let to_apply = &selection.changes;
    if to_apply.is_empty() {
        outcome.applied = audit::settle_cut_off(ad, store, epoch, None, &[]).await?;
        return Ok(outcome);
    }
    let plan_id = match selection.plan_id {
        Some(id) => id,
        None => {
            store
                .create_plan(PlanState::Approved, &opts.trigger, to_apply, &[])
                .await?
        }
    };
    outcome.plan_id = Some(plan_id);
    let ctx = audit::Context {
        plan_id,
        trigger: &opts.trigger,
        approved_by: selection.approved_by.as_deref(),
        epoch,
        dc: &opts.dc,
    };
    let work = apply::with_before(to_apply, observed);
    let intents = audit::record_intents(store, &ctx, &work).await?;

    let policy = WritePolicy {
        scope: cfg.scope.clone(),
        targets: decision.plan.targets.clone(),
    };
    let mut apply = apply::Apply::new(cfg, ad, observed, &policy, selection.part, &work);
    apply.fence = fence.map(|f| (store, f));
    apply.progress = opts.progress.clone();
    apply.dc = &opts.dc;
    // Applied, verified and audited a chunk at a time: each chunk's audit rows go to
    // `opts.audited` (the per-DC verify, the purges) as soon as they exist, not at the end of
    // a run that may last minutes. A chunk is several times the writes in flight, so the
    // pipeline drains rarely.
    let chunk = (cfg.ad.max_in_flight * 4).max(MIN_CHUNK);
    let mut rest = work;
    let mut fatal = None;
    let mut written = 0;
    while !rest.is_empty() && fatal.is_none() {
        let tail = rest.split_off(chunk.min(rest.len()));
        let this = std::mem::replace(&mut rest, tail);
        let dns: Vec<String> = this.iter().map(|(c, _)| c.dn.clone()).collect();
        let applied = apply.run(this).await;
        outcome.failures.extend(applied.failures);
        written += applied.written.len();
        if let Some(f) = fence
            && (applied.fenced || !f.holds(store).await)
        {
            // Deposed: the new leader owns AD and the store now; write nothing more.
            return Err(f.lost(written));
        }
        fatal = match applied.fatal {
            Some(lost) if lost.is_unreachable() => {
                let open = (&applied.written[..], &applied.uncertain[..]);
                return cut_off(store, &ctx, &intents, open, lost, to_apply.len()).await;
            }
            other => other,
        };
        let verified = verify::verify(ad, cfg.ad.max_in_flight, applied.written, &mut outcome.failures).await?;
        outcome.after.extend(verified.iter().map(|(_, _, now)| now.clone()));
        if !verified.is_empty() {
            fence::check(fence, store, written).await?;
        }
        let rows = audit::settle(store, &ctx, &intents.of(&dns), &verified).await?;
        hand_over(&opts, &rows);
        outcome.applied.extend(rows);
    }
    if !rest.is_empty() {
        // Stopped by an error every other write would meet too: the rest was never sent.
        let unsent: Vec<String> = rest.iter().map(|(c, _)| c.dn.clone()).collect();
        store.settle_intents(&[], &intents.of(&unsent).ids()).await?;
    }
    let audited: Vec<String> = outcome.applied.iter().map(|r| r.dn.clone()).collect();
    let made_by_the_lost_dc = audit::settle_cut_off(ad, store, epoch, Some(plan_id), &audited).await?;
    hand_over(&opts, &made_by_the_lost_dc);
    outcome.applied.extend(made_by_the_lost_dc);
    crate::metrics::get()
        .drift_repaired
        .add(outcome.applied.len() as u64, &[]);
    finish(store, plan_id, outcome, fatal, to_apply.len()).await
}

/// The smallest chunk a run audits at once.
const MIN_CHUNK: usize = 32;

/// Audit rows, to whoever follows the run's writes (`RunOptions::audited`).
fn hand_over(opts: &RunOptions, rows: &[AuditRecord]) {
    if let Some(tx) = &opts.audited
        && !rows.is_empty()
    {
        let _ = tx.send(Audited {
            rows: rows.to_vec(),
            span: tracing::Span::current(),
        });
    }
}

/// Settles what earlier writers left open before this run writes anything: a write of theirs
/// that may still be on its way waits out its grace (at most the lease TTL + the LDAP timeout)
/// rather than meet ours on the same objects.
async fn settle_before_writing(
    cfg: &Config,
    ad: &impl AdClient,
    store: &Store,
    fence: Option<&Fence>,
) -> Result<(), ReconcileError> {
    let epoch = fence.map_or(0, |f| f.epoch);
    let grace = cfg.lease_ttl() + cfg.ad.timeout;
    while let Some(wait) = audit::settle_open_intents(ad, store, epoch, grace).await? {
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            "an earlier writer's audit intents are too recent to settle (it may still be writing); waiting"
        );
        tokio::time::sleep(wait).await;
        fence::check(fence, store, 0).await?;
    }
    Ok(())
}

/// The run lost its DC mid-apply: nothing can be verified on a connection that is gone.
/// Intents of hosts never sent are settled as not written; those written (AD said so) or
/// sent without an answer stay open, and the next run resolves them from what the DC it
/// writes to shows, after its own writes (`audit::settle_cut_off`): one audit row per
/// change, whichever DC made it. The plan is failed; the error is the lost connection, which
/// the serve loop answers by writing on the next DC (`runtime::failover`).
async fn cut_off(
    store: &Store,
    ctx: &audit::Context<'_>,
    intents: &audit::Intents,
    (written, uncertain): (&[apply::Written], &[HostChange]),
    lost: crate::ldap::LdapError,
    total: usize,
) -> Result<Outcome, ReconcileError> {
    let open: Vec<&str> = written
        .iter()
        .map(|(c, _)| c.dn.as_str())
        .chain(uncertain.iter().map(|c| c.dn.as_str()))
        .collect();
    let unsent = intents.all_but(&open);
    store.settle_intents(&[], &unsent).await?;
    tracing::warn!(
        dc = %ctx.dc,
        written = written.len(),
        unanswered = uncertain.len(),
        not_sent = unsent.len(),
        error = %lost,
        "lost the domain controller mid-apply: what it acknowledged or never answered is read again and settled by the next run"
    );
    let first = format!("{} of {total} hosts left unverified: {lost}", open.len());
    store
        .decide_plan(ctx.plan_id, PlanState::Approved, PlanState::Failed, None, Some(&first))
        .await?;
    Err(ReconcileError::Ldap(lost))
}

/// Records how the plan ended, and turns failures into the run's error.
async fn finish(
    store: &Store,
    plan_id: i64,
    outcome: Outcome,
    fatal: Option<crate::ldap::LdapError>,
    total: usize,
) -> Result<Outcome, ReconcileError> {
    let state = if outcome.failures.is_empty() {
        PlanState::Applied
    } else {
        PlanState::Failed
    };
    let first = outcome.failures.first().map(|f| format!("{}: {}", f.host, f.error));
    store
        .decide_plan(plan_id, PlanState::Approved, state, None, first.as_deref())
        .await?;
    if let Some(e) = fatal {
        return Err(e.into());
    }
    match first {
        Some(first) => Err(ReconcileError::Partial {
            plan_id,
            failed: outcome.failures.len(),
            total,
            first,
        }),
        None => Ok(outcome),
    }
}
