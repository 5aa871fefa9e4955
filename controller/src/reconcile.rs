//! One reconcile: observe → plan → guard → apply → verify → audit.
//!
//! `observe` and `execute` do the I/O; `decide` is pure. They are separate
//! so a caller (or a test) can stand between deciding and writing, and so
//! that the compare-and-swap path can be proven against a real concurrent
//! change.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::{Config, Mode};
use crate::dn::Dn;
use crate::ldap::{Ad, LdapError};
use crate::model::Computer;
use crate::plan::{self, Guarded, HostChange, Intent, Observed, Plan, PlanError};
use crate::store::{AuditRecord, PlanState, Store, StoreError, now_ms};

/// Conflicts (a concurrent writer) are re-read and re-planned this often
/// before the host is given up for this round.
const MAX_CONFLICT_RETRIES: u32 = 3;
/// Busy/unavailable answers are retried this often, with backoff.
const MAX_TRANSIENT_RETRIES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Ldap(#[from] LdapError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("plan {0} does not exist: list plans with `kcdsync-controller plans`")]
    PlanNotFound(i64),
    #[error("plan {id} is {state}, not pending approval: nothing to approve")]
    PlanNotPending { id: i64, state: PlanState },
    #[error("plan {old} no longer matches AD (the fleet changed since it was made){}; nothing was written", match .new { Some(n) => format!(": review plan {n} and approve it instead"), None => ": nothing is held any more".to_owned() })]
    Superseded { old: i64, new: Option<i64> },
    #[error("this replica no longer holds the leader lease `{lease}` at epoch {epoch} (as {holder}){}: it stopped writing; the current leader reconciles", match .written { 0 => String::new(), n => format!(" after {n} AD writes, which are not audited") })]
    Fenced {
        lease: String,
        holder: String,
        epoch: i64,
        written: usize,
    },
    #[error("{} of {} host changes failed (plan {plan_id}); first: {first}", .failed, .total)]
    Partial {
        plan_id: i64,
        failed: usize,
        total: usize,
        first: String,
    },
}

impl ReconcileError {
    /// How long the serve loop waits before trying again.
    pub fn retry_after(&self, attempt: u32) -> Duration {
        let base = match self {
            // Config-shaped problems will not fix themselves quickly.
            ReconcileError::Plan(_) | ReconcileError::Ldap(LdapError::MissingPrivilege { .. }) => 300,
            _ => 5,
        };
        Duration::from_secs((base << attempt.min(6)).min(900))
    }
}

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
}

/// The leader lease a write must still hold: (name, holder, epoch) as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lease: String,
    pub holder: String,
    pub epoch: i64,
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

/// The pure half: what should change, and what the guard lets through.
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

/// What a reconcile did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The plan under which changes were written.
    pub plan_id: Option<i64>,
    /// The plan waiting for approval, if the guard held anything.
    pub pending_plan: Option<i64>,
    pub gate_reasons: Vec<String>,
    pub applied: Vec<AuditRecord>,
    pub failures: Vec<HostFailure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostFailure {
    pub host: String,
    pub dn: String,
    pub error: String,
}

/// Reads the managed scope and the configured AD groups.
#[tracing::instrument(name = "observe", skip_all, fields(entries = tracing::field::Empty))]
pub async fn observe(cfg: &Config, ad: &Ad) -> Result<Observed, LdapError> {
    let groups: Vec<&Dn> = cfg.groups.iter().filter_map(|g| g.ad_group.as_ref()).collect();
    let mut observed = ad.observe(&cfg.scope, &groups).await?;
    if cfg.diagnosis.enforce_sensitive {
        observed.privileged = ad
            .directory(&cfg.ad.domain_dn, &cfg.diagnosis.privileged_groups)
            .await?
            .privileged;
    }
    Ok(observed)
}

/// Plans and guards. Pure.
pub fn decide(cfg: &Config, observed: &Observed) -> Result<Decision, PlanError> {
    let span = tracing::info_span!(
        "plan",
        hosts_changed = tracing::field::Empty,
        pending = tracing::field::Empty
    );
    let _entered = span.enter();
    let plan = plan::plan(&cfg.groups, &cfg.scope, observed)?;
    span.record("hosts_changed", plan.changes.len());
    crate::metrics::get().drift_detected.add(plan.changes.len() as u64, &[]);
    let (enforce, not_enforced): (Vec<HostChange>, Vec<HostChange>) =
        plan.changes.iter().cloned().partition(|c| c.mode == Mode::Enforce);
    let guarded = plan::guard(&enforce, &cfg.guard);
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
    Ok(Decision {
        plan,
        guarded,
        not_enforced,
        pending,
        pending_reasons,
    })
}

/// observe + decide + execute.
pub async fn reconcile(cfg: &Config, ad: &Ad, store: &Store, opts: RunOptions) -> Result<Outcome, ReconcileError> {
    let t = std::time::Instant::now();
    let observed = observe(cfg, ad).await?;
    tracing::debug!(
        computers = observed.computers.len(),
        elapsed_ms = t.elapsed().as_millis() as u64,
        "observed"
    );
    let t = std::time::Instant::now();
    let decision = decide(cfg, &observed)?;
    tracing::debug!(
        changes = decision.plan.changes.len(),
        elapsed_ms = t.elapsed().as_millis() as u64,
        "planned"
    );
    execute(cfg, ad, store, &observed, &decision, opts).await
}

/// Which part of a planned change a write carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Only what adds (the guard lets it through).
    Additive,
    /// Everything, as approved.
    Full,
}

impl Part {
    fn of(self, c: &HostChange) -> Option<HostChange> {
        match self {
            Part::Additive => c.additive_part(),
            Part::Full => Some(c.clone()),
        }
    }
}

/// Writes what `decision` allows, verifies it, and audits it.
pub async fn execute(
    cfg: &Config,
    ad: &Ad,
    store: &Store,
    observed: &Observed,
    decision: &Decision,
    opts: RunOptions,
) -> Result<Outcome, ReconcileError> {
    let guarded = &decision.guarded;
    let mut outcome = Outcome {
        plan_id: None,
        pending_plan: None,
        gate_reasons: decision.pending_reasons.clone(),
        applied: Vec::new(),
        failures: Vec::new(),
    };

    if let Some(f) = &opts.fence
        && !still_holds(store, f).await
    {
        return Err(fenced(f, 0));
    }
    settle_open_intents(ad, store).await?;

    // What to write now, and under which plan.
    let (to_apply, part, plan_id, approved_by) = match &opts.approve {
        Some(approval) => {
            let stored = store
                .get_plan(approval.plan_id)
                .await?
                .ok_or(ReconcileError::PlanNotFound(approval.plan_id))?;
            if stored.state != PlanState::PendingApproval {
                return Err(ReconcileError::PlanNotPending {
                    id: stored.id,
                    state: stored.state,
                });
            }
            if stored.intents() != plan::intents(&decision.pending) {
                store
                    .set_plan_state(
                        stored.id,
                        PlanState::Superseded,
                        None,
                        Some("AD changed before approval"),
                    )
                    .await?;
                let new = store_pending(store, decision, &opts.trigger, false).await?;
                return Err(ReconcileError::Superseded { old: stored.id, new });
            }
            store
                .set_plan_state(stored.id, PlanState::Approved, Some(&approval.by), None)
                .await?;
            let dns: BTreeSet<String> = guarded
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
            (full, Part::Full, Some(stored.id), Some(approval.by.clone()))
        }
        None => {
            let pending = store_pending(store, decision, &opts.trigger, true).await?;
            store.supersede_pending(pending).await?;
            outcome.pending_plan = pending;
            (guarded.auto.clone(), Part::Additive, None, None)
        }
    };

    if to_apply.is_empty() {
        return Ok(outcome);
    }
    let plan_id = match plan_id {
        Some(id) => id,
        None => {
            store
                .create_plan(PlanState::Approved, &opts.trigger, &to_apply, &[])
                .await?
        }
    };
    outcome.plan_id = Some(plan_id);

    let before: HashMap<String, &Computer> = observed.computers.iter().map(|c| (dn_key(&c.dn), c)).collect();
    // Write-ahead audit: every write is on record before it happens, so a
    // writer that dies mid-apply leaves intents, not unaudited writes.
    let epoch = opts.fence.as_ref().map_or(0, |f| f.epoch);
    let intents: Vec<AuditRecord> = to_apply
        .iter()
        .map(|c| {
            let b = before.get(&dn_key(&c.dn));
            let delegate_before = b.map(|b| b.allowed_to_delegate_to.clone()).unwrap_or_default();
            let removes: BTreeSet<String> = c.remove.iter().map(|e| crate::model::spn_key(e)).collect();
            let mut delegate_after: Vec<String> = delegate_before
                .iter()
                .filter(|e| !removes.contains(&crate::model::spn_key(e)))
                .cloned()
                .collect();
            delegate_after.extend(c.add.iter().cloned());
            AuditRecord {
                id: 0,
                time_ms: now_ms(),
                plan_id,
                host: c.host.clone(),
                dn: c.dn.clone(),
                uac_before: b.map_or(c.uac_before, |b| b.uac),
                uac_after: c.uac_after.unwrap_or(c.uac_before),
                delegate_before,
                delegate_after,
                reasons: c.reasons.clone(),
                trigger: opts.trigger.clone(),
                approved_by: approved_by.clone(),
                epoch,
            }
        })
        .collect();
    let intent_ids = store.record_intents(&intents).await?;
    let intent_of: HashMap<String, i64> = to_apply
        .iter()
        .zip(&intent_ids)
        .map(|(c, id)| (dn_key(&c.dn), *id))
        .collect();
    let approved_intents: HashMap<String, Intent> = to_apply.iter().map(|c| (dn_key(&c.dn), c.intent())).collect();
    let total = to_apply.len();
    let progress = opts.progress.clone();
    if let Some(p) = &progress {
        let _ = p.send(Progress { done: 0, total });
    }
    let abort = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicBool::new(false));
    let ctx = ApplyCtx {
        cfg,
        ad,
        observed,
        part,
        approved: &approved_intents,
        abort: abort.clone(),
        fence: opts.fence.as_ref().map(|f| (store, f)),
        lost: lost.clone(),
    };
    // Owned items, so the stream's futures name no borrowed iterator item
    // (which would keep the whole reconcile from being spawned).
    let work: Vec<(HostChange, Option<Computer>)> = to_apply
        .iter()
        .map(|c| (c.clone(), before.get(&dn_key(&c.dn)).map(|b| (*b).clone())))
        .collect();
    let ctx = &ctx;
    let mut results = futures::stream::iter(work)
        .map(|(c, start)| async move {
            let r = ctx.apply_one(c.clone(), start).await;
            (c, r)
        })
        .buffer_unordered(cfg.ad.max_in_flight);

    let mut written: Vec<(HostChange, Computer)> = Vec::new();
    let mut fatal: Option<LdapError> = None;
    let mut done = 0;
    while let Some((planned, result)) = results.next().await {
        done += 1;
        if let Some(p) = &progress {
            let _ = p.send(Progress { done, total });
        }
        match result {
            Ok(Some(w)) => written.push(w),
            Ok(None) => {}
            Err(e @ LdapError::MissingPrivilege { .. }) | Err(e @ LdapError::Protocol { .. }) => {
                outcome.failures.push(HostFailure {
                    host: planned.host.clone(),
                    dn: planned.dn.clone(),
                    error: e.to_string(),
                });
                fatal.get_or_insert(e);
            }
            Err(e) => outcome.failures.push(HostFailure {
                host: planned.host.clone(),
                dn: planned.dn.clone(),
                error: e.to_string(),
            }),
        }
    }
    drop(results);
    if let Some(f) = &opts.fence
        && (lost.load(Ordering::Relaxed) || !still_holds(store, f).await)
    {
        // Deposed: the new leader owns AD and the store now; write nothing more.
        return Err(fenced(f, written.len()));
    }

    // Verify: read back what we wrote; the audit records what AD says now.
    let mut records = Vec::new();
    let verify_span = tracing::info_span!("verify", hosts = written.len());
    if !written.is_empty() {
        let after = observe(cfg, ad).instrument(verify_span.clone()).await?;
        let after_by_dn: HashMap<String, &Computer> = after.computers.iter().map(|c| (dn_key(&c.dn), c)).collect();
        let replan = plan::plan(&cfg.groups, &cfg.scope, &after)?;
        let remaining: HashMap<String, &HostChange> = replan.changes.iter().map(|c| (dn_key(&c.dn), c)).collect();
        for (change, before) in &written {
            let key = dn_key(&change.dn);
            // Accounts (sensitive-account enforcement) are outside the
            // computer scope: read them back one by one.
            let read_back;
            let now = match after_by_dn.get(&key) {
                Some(c) => *c,
                None => match ad.read_object(&change.dn).await? {
                    Some(c) => {
                        read_back = c;
                        let want = change.uac_after.unwrap_or(change.uac_before);
                        if read_back.uac & want != want {
                            outcome.failures.push(HostFailure {
                                host: change.host.clone(),
                                dn: change.dn.clone(),
                                error: format!(
                                    "verify: userAccountControl is 0x{:x}, expected 0x{want:x}",
                                    read_back.uac
                                ),
                            });
                        }
                        &read_back
                    }
                    None => {
                        outcome.failures.push(HostFailure {
                            host: change.host.clone(),
                            dn: change.dn.clone(),
                            error: "verify: the object disappeared right after the write".into(),
                        });
                        continue;
                    }
                },
            };
            if let Some(left) = remaining.get(&key).and_then(|c| part.of(c)) {
                outcome.failures.push(HostFailure {
                    host: change.host.clone(),
                    dn: change.dn.clone(),
                    error: format!("verify: AD still differs after the write: {}", left.reasons.join("; ")),
                });
            }
            records.push(AuditRecord {
                id: 0,
                time_ms: now_ms(),
                plan_id,
                host: change.host.clone(),
                dn: change.dn.clone(),
                uac_before: before.uac,
                uac_after: now.uac,
                delegate_before: before.allowed_to_delegate_to.clone(),
                delegate_after: now.allowed_to_delegate_to.clone(),
                reasons: change.reasons.clone(),
                trigger: opts.trigger.clone(),
                approved_by: approved_by.clone(),
                epoch: opts.fence.as_ref().map_or(0, |f| f.epoch),
            });
        }
        if let Some(f) = &opts.fence
            && !still_holds(store, f).await
        {
            return Err(fenced(f, written.len()));
        }
    }
    // Written hosts become audit rows with what AD says now; the rest of the
    // intents were never written.
    let done: Vec<(i64, AuditRecord)> = records
        .iter()
        .filter_map(|r| intent_of.get(&dn_key(&r.dn)).map(|id| (*id, r.clone())))
        .collect();
    let written_dns: BTreeSet<String> = records.iter().map(|r| dn_key(&r.dn)).collect();
    let aborted: Vec<i64> = intent_of
        .iter()
        .filter(|(dn, _)| !written_dns.contains(*dn))
        .map(|(_, id)| *id)
        .collect();
    store
        .settle_intents(&done, &aborted)
        .instrument(tracing::info_span!("audit", rows = records.len(), plan = plan_id))
        .await?;
    crate::metrics::get().drift_repaired.add(records.len() as u64, &[]);
    outcome.applied = records;

    let state = if outcome.failures.is_empty() {
        PlanState::Applied
    } else {
        PlanState::Failed
    };
    let note = outcome.failures.first().map(|f| format!("{}: {}", f.host, f.error));
    store.set_plan_state(plan_id, state, None, note.as_deref()).await?;
    if let Some(e) = fatal {
        return Err(e.into());
    }
    if let Some(first) = outcome.failures.first() {
        return Err(ReconcileError::Partial {
            plan_id,
            failed: outcome.failures.len(),
            total,
            first: format!("{}: {}", first.host, first.error),
        });
    }
    Ok(outcome)
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

/// The fencing check: an unreachable store counts as a lost lease.
async fn still_holds(store: &Store, f: &Fence) -> bool {
    match store.holds_lease(&f.lease, &f.holder, f.epoch).await {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the leader lease; stepping down");
            false
        }
    }
}

fn fenced(f: &Fence, written: usize) -> ReconcileError {
    ReconcileError::Fenced {
        lease: f.lease.clone(),
        holder: f.holder.clone(),
        epoch: f.epoch,
        written,
    }
}

/// Settles the intents a previous writer left (it died, or lost its lease,
/// between its writes and its audit): an intent whose change AD shows
/// becomes an audit row with the values read now; the others are dropped.
async fn settle_open_intents(ad: &Ad, store: &Store) -> Result<(), ReconcileError> {
    let open = store.open_intents().await?;
    if open.is_empty() {
        return Ok(());
    }
    let (mut done, mut aborted) = (Vec::new(), Vec::new());
    for r in open {
        match ad.read_object(&r.dn).await? {
            Some(now) if reflected(&r, &now) => {
                let id = r.id;
                done.push((
                    id,
                    AuditRecord {
                        uac_after: now.uac,
                        delegate_after: now.allowed_to_delegate_to.clone(),
                        ..r
                    },
                ));
            }
            _ => aborted.push(r.id),
        }
    }
    tracing::warn!(
        written = done.len(),
        not_written = aborted.len(),
        "settled the audit intents of an interrupted writer"
    );
    store.settle_intents(&done, &aborted).await?;
    Ok(())
}

/// AD shows the change an intent describes.
fn reflected(intent: &AuditRecord, now: &Computer) -> bool {
    let set = intent.uac_after & !intent.uac_before;
    let cleared = intent.uac_before & !intent.uac_after;
    if now.uac & set != set || now.uac & cleared != 0 {
        return false;
    }
    let keys = |v: &[String]| v.iter().map(|e| crate::model::spn_key(e)).collect::<BTreeSet<String>>();
    let (before, after, current) = (
        keys(&intent.delegate_before),
        keys(&intent.delegate_after),
        keys(&now.allowed_to_delegate_to),
    );
    after.difference(&before).all(|e| current.contains(e)) && before.difference(&after).all(|e| !current.contains(e))
}

fn dn_key(dn: &str) -> String {
    Dn::parse(dn)
        .map(|d| d.normalized())
        .unwrap_or_else(|_| dn.to_lowercase())
}

struct ApplyCtx<'a> {
    cfg: &'a Config,
    ad: &'a Ad,
    observed: &'a Observed,
    part: Part,
    approved: &'a HashMap<String, Intent>,
    abort: Arc<AtomicBool>,
    /// The lease every modify must still hold, and whether it was found lost.
    fence: Option<(&'a Store, &'a Fence)>,
    lost: Arc<AtomicBool>,
}

impl ApplyCtx<'_> {
    /// Writes one host. On a conflict, re-reads the object and re-plans it,
    /// so a concurrent change is kept, never overwritten. Returns the
    /// change written and the object as it was just before, or `None` when
    /// nothing was left to write.
    async fn apply_one(
        &self,
        mut change: HostChange,
        mut before: Option<Computer>,
    ) -> Result<Option<(HostChange, Computer)>, LdapError> {
        let mut conflicts = 0;
        let mut transient = 0;
        loop {
            if self.abort.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if let Some((store, f)) = self.fence
                && !still_holds(store, f).await
            {
                self.lost.store(true, Ordering::Relaxed);
                self.abort.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            let span = tracing::info_span!(
                "ldap.modify",
                dn = %change.dn,
                host = %change.host,
                adds = change.add.len(),
                removes = change.remove.len(),
                uac_after = ?change.uac_after,
                ldap.result_code = tracing::field::Empty
            );
            let result = self.ad.modify_host(&change).instrument(span.clone()).await;
            let rc = result.as_ref().map_or_else(|e| e.rc().unwrap_or(u32::MAX), |_| 0);
            span.record("ldap.result_code", rc);
            crate::metrics::get().ldap("modify", rc);
            match result {
                Ok(()) => {
                    let before = before.unwrap_or_else(|| Computer {
                        dn: change.dn.clone(),
                        sam_account_name: String::new(),
                        dns_host_name: None,
                        uac: change.uac_before,
                        allowed_to_delegate_to: Vec::new(),
                        spns: Vec::new(),
                        usn_changed: 0,
                    });
                    return Ok(Some((change, before)));
                }
                Err(LdapError::Conflict { dn, rc }) if conflicts < MAX_CONFLICT_RETRIES => {
                    conflicts += 1;
                    tracing::info!(%dn, rc, "object changed since it was read; re-reading and re-planning");
                    let Some(fresh) = self.ad.read_computer(&dn).await? else {
                        return Err(LdapError::Modify {
                            dn,
                            rc: crate::ldap::RC_NO_SUCH_OBJECT,
                            text: "the object was deleted while being reconciled".into(),
                        });
                    };
                    let mut observed = self.observed.clone();
                    let key = dn_key(&dn);
                    for c in observed.computers.iter_mut() {
                        if dn_key(&c.dn) == key {
                            *c = fresh.clone();
                        }
                    }
                    before = Some(fresh);
                    let replanned = plan::plan(&self.cfg.groups, &self.cfg.scope, &observed)
                        .ok()
                        .and_then(|p| p.changes.into_iter().find(|c| dn_key(&c.dn) == key));
                    let Some(next) = replanned.and_then(|c| self.part.of(&c)) else {
                        return Ok(None);
                    };
                    if self.part == Part::Full && self.approved.get(&key) != Some(&next.intent()) {
                        return Err(LdapError::Modify {
                            dn,
                            rc,
                            text: "the object changed after approval and the approved change no longer fits; run a new plan".into(),
                        });
                    }
                    change = next;
                }
                Err(e) if e.is_transient() && transient < MAX_TRANSIENT_RETRIES => {
                    transient += 1;
                    tokio::time::sleep(Duration::from_millis(100 << transient)).await;
                }
                Err(e @ LdapError::MissingPrivilege { .. }) => {
                    // Every other modify would fail the same way.
                    self.abort.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
}
