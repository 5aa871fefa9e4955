//! The reconciler loop, serve's only writer of AD (under the writer lease): wait (the scheduler) → run
//! one reconcile under the current leadership → effects → decide the next
//! wait (the interval, or the error policy's backoff).

use std::sync::Arc;
use std::time::Instant;

use kcdsync_proto::v1 as pb;
use tokio::sync::watch;
use tracing::Instrument;

use super::connection::Kept;
use super::effects::Effects;
use super::observer::Observer;
use super::policy::{self, Action};
use super::queue::HostQueue;
use super::replication;
use super::scheduler::{Reason, Scheduler, Wake};
use crate::config::Config;
use crate::grpc::convert::{event, finding_to_pb};
use crate::leader::Leadership;
use crate::reconcile::{self, Approval, Fence, Outcome, ReconcileError, RunOptions};
use crate::store::now_ms;

/// How soon a run that lost its DC is retried when another DC can take the writes.
const FAILOVER_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the next run does, and for whom.
struct Next {
    reason: Reason,
    /// The trace the run continues (an agent's failure, an API call).
    parent: String,
    approve: Option<Approval>,
    reply: Option<tokio::sync::oneshot::Sender<Result<Outcome, ReconcileError>>>,
}

impl Next {
    fn because(reason: Reason) -> Next {
        Next {
            reason,
            parent: String::new(),
            approve: None,
            reply: None,
        }
    }
}

pub struct Reconciler {
    pub count: watch::Sender<u64>,
    pub leadership: Leadership,
    pub cfg: Arc<Config>,
    pub effects: Effects,
    /// Where each run sends its audit rows as it makes them (`runtime::handover`).
    pub audited: tokio::sync::mpsc::UnboundedSender<reconcile::Audited>,
    pub observer: Observer,
    pub ldap: Kept,
    pub queue: HostQueue,
    /// When a host the queue holds back is due.
    pub due: Option<tokio::time::Instant>,
}

impl Reconciler {
    pub async fn run(mut self, mut scheduler: Scheduler) {
        let mut next = Next::because(Reason::Startup);
        let mut failures: u32 = 0;
        if let Ok(last) = self.effects.store.last_change_per_host().await {
            scheduler.changed(last);
        }
        loop {
            if !self.leadership.is_leader() {
                self.observer.reset();
                self.ldap.close().await;
                if let Some(r) = next.reply.take() {
                    let _ = r.send(Err(ReconcileError::Follower));
                }
                let before = self.cfg.clone();
                if !scheduler.follow(&self.leadership, &mut self.cfg).await {
                    break;
                }
                // Reloaded while following: the verify must match the config it now leads with.
                self.follow_dc_config(&before);
                next = Next::because(Reason::Leadership);
            }
            let epoch = self.leadership.epoch();
            let started = (Instant::now(), now_ms());
            let result = self.run_once(&mut next, epoch).await;
            let action = self.settle(&result, &next.reason, started.0, &mut failures);
            if let Ok(o) = &result {
                scheduler.changed(o.applied.iter().map(|a| (a.host.clone(), a.time_ms)));
            }
            if let Some(r) = next.reply.take() {
                let _ = r.send(result);
            }
            self.count.send_modify(|n| *n += 1);
            let wait = match action {
                Action::RequeueAfter(wait) => wait,
                Action::Follow => {
                    failures = 0;
                    next = Next::because(Reason::Leadership);
                    continue;
                }
            };
            scheduler.answered(started.1);
            // A failed run is retried for the same reason: the repair of an AD change that
            // first met a DC restart is still an `ad-change` in the audit, not a `timer`.
            let retry = (failures > 0).then(|| next.reason.clone());
            let wait = match self.due {
                Some(d) => wait.min(d.saturating_duration_since(tokio::time::Instant::now())),
                None => wait,
            };
            next = match scheduler.next(wait, &self.leadership, epoch).await {
                Wake::Timer => Next::because(retry.unwrap_or(Reason::Timer)),
                Wake::Failures { reasons, traceparent } => Next {
                    parent: traceparent,
                    ..Next::because(Reason::Failures(reasons))
                },
                Wake::Request(r) => Next {
                    reason: Reason::Api(r.trigger),
                    parent: r.traceparent,
                    approve: r.approve,
                    reply: Some(r.reply),
                },
                Wake::Reload(c) => {
                    let before = std::mem::replace(&mut self.cfg, Arc::new(*c));
                    self.follow_dc_config(&before);
                    self.ldap.close().await;
                    Next::because(Reason::Config)
                }
                Wake::Leadership => Next::because(Reason::Leadership),
                Wake::Changed => Next::because(Reason::Changed),
                Wake::Stop => break,
            };
        }
        tracing::info!("reconciler stopped");
    }

    /// After a reload that changed the DCs (`[ad]`, `[[ad.dc]]`, the replication deadline), the
    /// per-DC verify starts again with the new config: workers for the DCs it now names, the
    /// writes still awaited and the purges still held resumed from the store. The old one stops
    /// (its handles are dropped here); its findings are cleared on the event stream, and the new
    /// one raises again whatever is still late.
    fn follow_dc_config(&mut self, before: &Config) {
        if replication::same_setup(before, &self.cfg) {
            return;
        }
        tracing::info!("the domain controllers' config changed: the per-DC verify starts again with it");
        let e = &self.effects;
        for f in e.replication.findings.lock().unwrap().values() {
            let _ = e
                .events
                .send(event(pb::fleet_event::Event::FindingCleared(finding_to_pb(f))));
        }
        self.audited = self.effects.start_verify(self.cfg.clone());
    }

    /// One traced run; losing the lease cancels it at once (the fence stops
    /// any write that would slip through before).
    async fn run_once(&mut self, next: &mut Next, epoch: Option<i64>) -> Result<Outcome, ReconcileError> {
        let trigger = next.reason.to_string();
        let span = tracing::info_span!(
            "reconcile",
            trigger = %trigger,
            trace_id = tracing::field::Empty,
            hosts_changed = tracing::field::Empty
        );
        kcdsync_telemetry::set_parent(&span, &next.parent);
        span.record("trace_id", kcdsync_telemetry::trace_id(&span));
        let approve = next.approve.take();
        let result = match self.leadership.fence(epoch) {
            Some(f) => {
                let mut leader = self.leadership.watch();
                let lost = f.lost(0);
                tokio::select! {
                    r = self.once(&next.reason, approve, Some(f)).instrument(span.clone()) => r,
                    _ = leader.wait_for(|l| *l != epoch) => Err(lost),
                }
            }
            None => self.once(&next.reason, approve, None).instrument(span.clone()).await,
        };
        if let Ok(o) = &result {
            span.record("hosts_changed", o.applied.len());
        }
        result
    }

    /// Logs and measures a finished run; what the loop does next.
    fn settle(
        &self,
        result: &Result<Outcome, ReconcileError>,
        reason: &Reason,
        started: Instant,
        failures: &mut u32,
    ) -> Action {
        let m = crate::metrics::get();
        m.reconcile_duration.record(
            started.elapsed().as_secs_f64(),
            &[opentelemetry::KeyValue::new(
                "result",
                if result.is_ok() { "ok" } else { "error" },
            )],
        );
        if let Some(hub) = &self.effects.hub {
            m.set_gauge(
                "kcdsync.agents.connected",
                [(String::new(), hub.connected_hosts().len() as u64)],
            );
        }
        match result {
            Ok(o) => {
                *failures = 0;
                tracing::info!(
                    trigger = %reason,
                    written = o.applied.len(),
                    pending_plan = o.pending_plan,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reconciled"
                );
                policy::after_success(self.cfg.interval)
            }
            Err(e) => {
                *failures += 1;
                let mut next = policy::error_policy(e, *failures);
                if let ReconcileError::Ldap(lost) = e
                    && lost.is_unreachable()
                    && self.ldap.can_fail_over(&self.cfg.ad)
                {
                    // Another DC is there and not held down: write on it now, not after the
                    // back-off (the DC just lost is held down: the retry will not pick it).
                    next = Action::RequeueAfter(FAILOVER_RETRY);
                }
                tracing::error!(trigger = %reason, error = %e, next = ?next, "reconcile failed");
                next
            }
        }
    }

    /// One reconcile, then the effects. Planned from the observer's current picture of AD; a
    /// delta that changed nothing kcdsync reads (and no host due, no approval, no failure to
    /// answer) ends the run there: nothing to plan, write, or republish.
    async fn once(
        &mut self,
        reason: &Reason,
        approve: Option<Approval>,
        fence: Option<Fence>,
    ) -> Result<Outcome, ReconcileError> {
        let cfg = self.cfg.clone();
        let mut w = self.ldap.take(&cfg.ad).await?;
        let seen = match self.observer.observe(&cfg, &w.ad, reason).await {
            // Nothing is written yet: a kept connection the DC dropped (a restart, an idle
            // timeout) costs one reconnect, not a failed run and the error policy's backoff.
            // A DC that is down is passed over by the reconnect (`runtime::failover`).
            Err(ReconcileError::Ldap(e)) if w.reused && e.is_connection_lost() => {
                tracing::info!(error = %e, dc = %w.dc, "the kept LDAP connection is gone; reconnecting");
                w = self.ldap.fresh(&cfg.ad).await?;
                self.observer.observe(&cfg, &w.ad, reason).await
            }
            r => r,
        };
        let ad = &w.ad;
        let result = async {
            let seen = seen?;
            tracing::debug!(how = %seen.how, "observed");
            let now = tokio::time::Instant::now();
            let due = self.due.is_some_and(|d| d <= now);
            if seen.unchanged && approve.is_none() && !due && !matches!(reason, Reason::Failures(_)) {
                return Ok(None);
            }
            let (observed, index) = self.observer.current();
            let mut decision = reconcile::decide_with(&cfg, &observed, &index);
            self.due = self
                .queue
                .hold(&mut decision, now.into_std())
                .map(tokio::time::Instant::from_std);
            let opts = RunOptions {
                trigger: reason.to_string(),
                approve,
                progress: None,
                fence,
                dc: w.dc.clone(),
                audited: Some(self.audited.clone()),
            };
            let outcome = reconcile::execute(&cfg, ad, &self.effects.store, &observed, &decision, opts).await?;
            Ok::<_, ReconcileError>(Some((observed, index, outcome)))
        }
        .await;
        let (mut observed, index, outcome) = match result {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.ldap.give_back(w);
                return Ok(Outcome::default());
            }
            Err(e) => {
                match &e {
                    // The DC went away under the run: the retry writes on the next one.
                    ReconcileError::Ldap(lost) if lost.is_unreachable() => self.ldap.lost(w, lost).await,
                    _ => w.ad.unbind().await,
                }
                return Err(e);
            }
        };
        self.queue.written(
            outcome.applied.iter().map(|a| a.host.as_str()),
            std::time::Instant::now(),
        );
        // What verify read back is AD now: the next delta finds these objects as they are
        // here and does not plan them again, and the view is built without a re-read.
        self.observer.absorb(&outcome.after);
        observed.update_computers(&outcome.after);
        self.effects.after(&cfg, ad, (observed, index), &outcome).await;
        self.ldap.give_back(w);
        Ok(outcome)
    }
}
