//! When the reconciler runs next, and why: the timer (or the error policy's
//! backoff), migration failures reported by agents (directly, or — on a
//! leader — stored through another replica and found by a poll), API
//! requests, config reloads, a change of leadership, and stop.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::grpc::agents::{AUTH_FAILURES, Trigger};
use crate::grpc::fleet::ReconcileRequest;
use crate::ldap::watch::Notice;
use crate::leader::Leadership;
use crate::store::{Store, now_ms};

/// How often a leader looks for failures stored through other replicas.
const FAILURE_POLL: Duration = Duration::from_secs(2);

/// Why a reconcile runs; recorded with its plan and audit rows as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Startup,
    Timer,
    /// Reported migration failures, as `attempt:<id>`, answered together.
    Failures(Vec<String>),
    /// A caller of the API (its own words: `api`, `api:<who>`).
    Api(String),
    Config,
    Leadership,
    /// AD told us something changed (a change notification).
    Changed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Startup => f.write_str("startup"),
            Reason::Timer => f.write_str("timer"),
            Reason::Failures(r) if r.len() > 3 => write!(f, "{} (+{} more)", r[..3].join(","), r.len() - 3),
            Reason::Failures(r) => f.write_str(&r.join(",")),
            Reason::Api(s) => f.write_str(s),
            Reason::Config => f.write_str("config"),
            Reason::Leadership => f.write_str("leadership"),
            Reason::Changed => f.write_str("ad-change"),
        }
    }
}

/// What woke the reconciler.
pub enum Wake {
    Timer,
    /// Failures, with the trace the reconcile continues (the first one's).
    Failures {
        reasons: Vec<String>,
        traceparent: String,
    },
    Request(ReconcileRequest),
    Reload(Box<Config>),
    Leadership,
    /// Change notifications (collapsed: one delta read answers them all).
    Changed,
    Stop,
}

/// The reconciler's inputs.
pub struct Scheduler {
    pub triggers: mpsc::Receiver<Trigger>,
    pub requests: mpsc::Receiver<ReconcileRequest>,
    pub reloads: mpsc::Receiver<Config>,
    pub stop: watch::Receiver<bool>,
    pub store: Store,
    pub notices: mpsc::Receiver<Notice>,
    /// Per host: when a failure report of it last woke the loop (the debounce).
    woken_for: HashMap<String, Instant>,
    /// Per host: when kcdsync last changed its delegation (Unix ms).
    last_change_ms: HashMap<String, i64>,
    pub debounce: Duration,
    /// Failures stored by other replicas' agents since this moment have not
    /// been answered by a reconcile of ours yet.
    answered_until: i64,
    poll: tokio::time::Interval,
}

impl Scheduler {
    pub fn new(
        triggers: mpsc::Receiver<Trigger>,
        requests: mpsc::Receiver<ReconcileRequest>,
        reloads: mpsc::Receiver<Config>,
        stop: watch::Receiver<bool>,
        store: Store,
        notices: mpsc::Receiver<Notice>,
        debounce: Duration,
    ) -> Scheduler {
        let mut poll = tokio::time::interval(FAILURE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Scheduler {
            triggers,
            requests,
            reloads,
            stop,
            store,
            notices,
            woken_for: HashMap::new(),
            last_change_ms: HashMap::new(),
            debounce,
            answered_until: now_ms(),
            poll,
        }
    }

    /// A run that started at `ms` answered every failure stored before it.
    pub fn answered(&mut self, ms: i64) {
        self.answered_until = self.answered_until.max(ms);
    }

    /// Waits for the next reason to run, at the latest `wait` from now.
    /// `epoch` is the leadership the last run had.
    pub async fn next(&mut self, wait: Duration, leadership: &Leadership, epoch: Option<i64>) -> Wake {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // What woke us is taken out of `select!` first: the branches
            // borrow the receivers, the follow-ups need all of `self`.
            enum Got {
                Wake(Wake),
                Trigger(Trigger),
                Poll,
            }
            let mut leader = leadership.watch();
            let poll = leadership.is_replica() && epoch.is_some();
            let got = tokio::select! {
                _ = leader.wait_for(|l| *l != epoch) => Got::Wake(Wake::Leadership),
                _ = tokio::time::sleep_until(deadline) => Got::Wake(Wake::Timer),
                Some(t) = self.triggers.recv() => Got::Trigger(t),
                Some(_) = self.notices.recv() => {
                    while self.notices.try_recv().is_ok() {}
                    Got::Wake(Wake::Changed)
                }
                // A leader also answers failures that agents reported to a follower.
                _ = self.poll.tick(), if poll => Got::Poll,
                Some(r) = self.requests.recv() => Got::Wake(Wake::Request(r)),
                Some(c) = self.reloads.recv() => Got::Wake(Wake::Reload(Box::new(c))),
                _ = self.stop.wait_for(|v| *v) => Got::Wake(Wake::Stop),
            };
            match got {
                Got::Wake(w) => return w,
                Got::Trigger(t) => {
                    if let Some(w) = self.failures(t) {
                        return w;
                    }
                }
                Got::Poll => {
                    if let Some(w) = self.stored_failures().await {
                        return w;
                    }
                }
            }
        }
    }

    /// kcdsync changed these hosts' delegation at `ms`: failures reported from before are
    /// answered already.
    pub fn changed(&mut self, hosts: impl IntoIterator<Item = (String, i64)>) {
        for (h, ms) in hosts {
            let e = self.last_change_ms.entry(h).or_insert(ms);
            *e = (*e).max(ms);
        }
    }

    /// One reconcile answers every failure queued so far. Per host, a failure within the
    /// debounce of the last one that woke the loop, or older than kcdsync's last change of
    /// that host's delegation, wakes nothing: an agent retrying a failing migration must not
    /// become a reconcile storm.
    fn failures(&mut self, first: Trigger) -> Option<Wake> {
        let traceparent = first.traceparent.clone();
        let mut reasons = Vec::new();
        let now = Instant::now();
        let mut next = Some(first);
        while let Some(t) = next {
            let stale = self
                .last_change_ms
                .get(&t.host)
                .is_some_and(|&c| t.at_ms != 0 && t.at_ms < c);
            let recent = self
                .woken_for
                .get(&t.host)
                .is_some_and(|&w| now.duration_since(w) < self.debounce);
            if stale || recent {
                tracing::debug!(host = %t.host, reason = %t.reason, stale, recent, "failure report debounced");
            } else {
                self.woken_for.insert(t.host.clone(), now);
                reasons.push(t.reason);
            }
            next = self.triggers.try_recv().ok();
        }
        let debounce = self.debounce;
        self.woken_for.retain(|_, w| now.duration_since(*w) < debounce);
        (!reasons.is_empty()).then_some(Wake::Failures { reasons, traceparent })
    }

    async fn stored_failures(&mut self) -> Option<Wake> {
        match self
            .store
            .auth_failures_since(self.answered_until, &AUTH_FAILURES)
            .await
        {
            Ok(found) if !found.is_empty() => {
                self.answered_until = found.iter().map(|f| f.2).max().unwrap_or(self.answered_until);
                Some(Wake::Failures {
                    reasons: found.into_iter().map(|(id, _, _)| format!("attempt:{id}")).collect(),
                    traceparent: String::new(),
                })
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read reported failures");
                None
            }
        }
    }

    /// A follower reconciles nothing: it waits for the lease, answering
    /// write requests with where the leader is. `false`: stop.
    pub async fn follow(&mut self, leadership: &Leadership, cfg: &mut std::sync::Arc<Config>) -> bool {
        tracing::info!("follower: waiting for the leader lease");
        let mut leader = leadership.watch();
        loop {
            tokio::select! {
                r = leader.wait_for(|e| e.is_some()) => return r.is_ok(),
                Some(_) = self.triggers.recv() => {}
                Some(_) = self.notices.recv() => {}
                Some(r) = self.requests.recv() => {
                    let _ = r.reply.send(Err(crate::reconcile::ReconcileError::Follower));
                }
                Some(c) = self.reloads.recv() => *cfg = std::sync::Arc::new(c),
                _ = self.stop.wait_for(|v| *v) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_the_audit_records_them() {
        assert_eq!(Reason::Startup.to_string(), "startup");
        assert_eq!(Reason::Api("api:token:ops".into()).to_string(), "api:token:ops");
        let attempts = |n: usize| Reason::Failures((1..=n).map(|i| format!("attempt:{i}")).collect());
        assert_eq!(attempts(2).to_string(), "attempt:1,attempt:2");
        // One reconcile answers a burst of failures; the trigger names the first three.
        assert_eq!(attempts(5).to_string(), "attempt:1,attempt:2,attempt:3 (+2 more)");
    }
}
