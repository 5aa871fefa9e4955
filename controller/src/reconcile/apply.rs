//! Apply: the writes, with bounded concurrency (modifies pipelined on one
//! connection). A conflict (a concurrent writer) is re-read and re-planned,
//! so the other writer's change is kept, never overwritten; busy/unavailable
//! answers are retried with backoff; a missing SeEnableDelegationPrivilege
//! stops every other write (they would all fail the same way); a lost lease
//! stops the run before its next write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tracing::Instrument;

use super::error::HostError;
use super::{AdClient, Fence, HostFailure, Progress};
use crate::config::Config;
use crate::ldap::{LdapError, WritePolicy};
use crate::model::{Computer, HostChange, Intent, Observed, dn_key};
use crate::plan;
use crate::store::Store;

/// Conflicts (a concurrent writer) are re-read and re-planned this often
/// before the host is given up for this round.
pub const MAX_CONFLICT_RETRIES: u32 = 3;
/// Busy/unavailable answers are retried this often, with backoff.
pub const MAX_TRANSIENT_RETRIES: u32 = 5;

/// Which part of a planned change a write carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Only what adds (the guard lets it through).
    Additive,
    /// Everything, as approved.
    Full,
}

impl Part {
    pub(super) fn of_planned(self, c: &HostChange) -> Option<HostChange> {
        match self {
            Part::Additive => c.additive_part(),
            Part::Full => Some(c.clone()),
        }
    }
}

/// A change, and the object as it was just before it (as written, or as
/// planned from when it has not been written yet).
pub type Written = (HostChange, Computer);

/// Each change with its object as this run read it; an object outside the
/// computer scope (an account) as its change describes it.
pub(super) fn with_before(changes: &[HostChange], observed: &Observed) -> Vec<Written> {
    let before: HashMap<String, &Computer> = observed.computers.iter().map(|c| (dn_key(&c.dn), c)).collect();
    changes
        .iter()
        .map(|c| {
            let b = before
                .get(&dn_key(&c.dn))
                .map_or_else(|| Computer::unread(&c.dn, c.uac_before), |b| (*b).clone());
            (c.clone(), b)
        })
        .collect()
}

/// What one apply did.
pub(super) struct Applied {
    pub written: Vec<Written>,
    /// Sent, but the connection was lost before AD answered: written or not, nobody knows
    /// until the object is read again (on whichever DC the next run writes to).
    pub uncertain: Vec<HostChange>,
    pub failures: Vec<HostFailure>,
    /// An error that stops the run (after what was written is audited).
    pub fatal: Option<LdapError>,
    /// The fence was found lost: nothing more may be written or audited.
    pub fenced: bool,
}

pub(super) struct Apply<'a, A> {
    pub cfg: &'a Config,
    pub ad: &'a A,
    pub observed: &'a Observed,
    /// What the write edge lets through (`ldap::edge`).
    pub policy: &'a WritePolicy,
    pub part: Part,
    /// With an approval: what was approved, by DN; a re-planned change must still match it.
    pub approved: HashMap<String, Intent>,
    pub fence: Option<(&'a Store, &'a Fence)>,
    pub progress: Option<watch::Sender<Progress>>,
    /// The DC the writes go to (its dNSHostName), for the log.
    pub dc: &'a str,
    abort: AtomicBool,
    lost: AtomicBool,
    /// Progress over every `run` of this apply (a run applies one chunk of the work).
    done: AtomicUsize,
    total: usize,
}

impl<'a, A: AdClient> Apply<'a, A> {
    pub fn new(
        cfg: &'a Config,
        ad: &'a A,
        observed: &'a Observed,
        policy: &'a WritePolicy,
        part: Part,
        work: &[Written],
    ) -> Self {
        Apply {
            cfg,
            ad,
            observed,
            policy,
            part,
            approved: work.iter().map(|(c, _)| (dn_key(&c.dn), c.intent())).collect(),
            fence: None,
            progress: None,
            dc: "",
            abort: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            done: AtomicUsize::new(0),
            total: work.len(),
        }
    }

    /// Writes every change of `work` (all of the work given to `new`, or a part of it), at most
    /// `ad.max_in_flight` at once.
    pub async fn run(&self, work: Vec<Written>) -> Applied {
        self.report(self.done.load(Ordering::Relaxed));
        let mut results = futures::stream::iter(work)
            .map(|(c, before)| async move {
                let r = self.one(c.clone(), before).await;
                (c, r)
            })
            .buffer_unordered(self.cfg.ad.max_in_flight);
        let mut out = Applied {
            written: Vec::new(),
            uncertain: Vec::new(),
            failures: Vec::new(),
            fatal: None,
            fenced: false,
        };
        while let Some((planned, result)) = results.next().await {
            self.report(self.done.fetch_add(1, Ordering::Relaxed) + 1);
            match result {
                Ok(Some(w)) => out.written.push(w),
                Ok(None) => {}
                Err(e) => {
                    out.failures.push(HostFailure::new(&planned, &e));
                    if matches!(&e, HostError::Ldap(e) if e.is_unreachable()) {
                        out.uncertain.push(planned.clone());
                    }
                    if let HostError::Ldap(e @ (LdapError::MissingPrivilege { .. } | LdapError::Protocol { .. })) = e {
                        out.fatal.get_or_insert(e);
                    }
                }
            }
        }
        out.fenced = self.lost.load(Ordering::Relaxed);
        out
    }

    fn report(&self, done: usize) {
        if let Some(p) = &self.progress {
            let _ = p.send(Progress {
                done,
                total: self.total,
            });
        }
    }

    /// Writes one host; see the module doc. Returns `None` when nothing was
    /// left to write (or the run was stopped).
    async fn one(&self, mut change: HostChange, mut before: Computer) -> Result<Option<Written>, HostError> {
        let (mut conflicts, mut transient) = (0, 0);
        loop {
            if self.abort.load(Ordering::Relaxed) || !self.still_leading().await {
                return Ok(None);
            }
            match self.modify(&change).await {
                Ok(()) => return Ok(Some((change, before))),
                Err(LdapError::Conflict { dn, rc }) if conflicts < MAX_CONFLICT_RETRIES => {
                    conflicts += 1;
                    tracing::info!(%dn, rc, "object changed since it was read; re-reading and re-planning");
                    let Some(fresh) = self.ad.read_computer(&dn).await? else {
                        return Err(HostError::Deleted { dn });
                    };
                    before = fresh.clone();
                    match self.replan(&dn, fresh)? {
                        Some(next) => change = next,
                        None => return Ok(None),
                    }
                }
                Err(e) if e.is_transient() && transient < MAX_TRANSIENT_RETRIES => {
                    transient += 1;
                    tokio::time::sleep(Duration::from_millis(100 << transient)).await;
                }
                Err(e @ LdapError::MissingPrivilege { .. }) => {
                    // Every other modify would fail the same way.
                    self.abort.store(true, Ordering::Relaxed);
                    return Err(e.into());
                }
                Err(e) if e.is_unreachable() => {
                    // The connection is gone: nothing more is sent on it, so every host not
                    // yet sent is certainly unwritten. This one may have been written; the
                    // next run (on the next DC, `runtime::failover`) reads it again.
                    self.abort.store(true, Ordering::Relaxed);
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The fencing check before each modify; a lost lease stops every write.
    async fn still_leading(&self) -> bool {
        let Some((store, f)) = self.fence else { return true };
        if f.holds(store).await {
            return true;
        }
        self.lost.store(true, Ordering::Relaxed);
        self.abort.store(true, Ordering::Relaxed);
        false
    }

    async fn modify(&self, change: &HostChange) -> Result<(), LdapError> {
        let span = tracing::info_span!(
            "ldap.modify",
            dn = %change.dn,
            host = %change.host,
            adds = change.add.len(),
            removes = change.remove.len(),
            uac_after = ?change.uac_after,
            ldap.result_code = tracing::field::Empty
        );
        let result = self.ad.modify_host(change, self.policy).instrument(span.clone()).await;
        let rc = result.as_ref().map_or_else(|e| e.rc().unwrap_or(u32::MAX), |_| 0);
        span.record("ldap.result_code", rc);
        crate::metrics::get().ldap("modify", rc);
        if result.is_ok() {
            // One line per accepted modify, naming the DC: what an operator greps for after
            // a failover, and the hook tests/tests/failover.rs cuts the DC on.
            tracing::debug!(dn = %change.dn, host = %change.host, dc = %self.dc, "modify accepted");
        }
        result
    }

    /// The change `dn` needs now that it reads as `fresh`: `None` when it
    /// needs none (the other writer did our work).
    fn replan(&self, dn: &str, fresh: Computer) -> Result<Option<HostChange>, HostError> {
        let key = dn_key(dn);
        let mut observed = self.observed.clone();
        for c in observed.computers.iter_mut().filter(|c| dn_key(&c.dn) == key) {
            *c = fresh.clone();
        }
        let replanned = plan::plan(&self.cfg.groups, &self.cfg.scope, &self.cfg.dns_suffixes, &observed)
            .changes
            .into_iter()
            .find(|c| dn_key(&c.dn) == key);
        let Some(next) = replanned.and_then(|c| self.part.of_planned(&c)) else {
            return Ok(None);
        };
        if self.part == Part::Full && self.approved.get(&key) != Some(&next.intent()) {
            return Err(HostError::ApprovalNoLongerFits { dn: dn.to_owned() });
        }
        Ok(Some(next))
    }
}
