//! One other DC's watch: the written objects it has not shown yet, each read again with its
//! own backoff (200 ms doubling to 5 s) over one connection, a bounded number of reads in
//! flight, each arrival reported as its read returns. What it sees goes to the recorder as
//! [`Event`]s; it never touches the store.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Event, Expected, Overdue};
use crate::ldap::{DcInfo, LdapError};
use crate::model::Computer;
use crate::reconcile::reflected;

/// The first re-read of an object comes this long after the previous one; then twice as long,
/// up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Reads one object on one DC (the real one is `ldap::Ad`; unit tests use a fake).
pub trait DcRead: Send + Sync {
    fn read<'a>(&'a self, dn: &'a str) -> BoxFuture<'a, Result<Option<Computer>, LdapError>>;
}

/// Opens the one connection to the DC (again, after it failed).
pub type Connect = Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn DcRead>, LdapError>> + Send + Sync>;

/// What a worker needs to know, besides its DC.
#[derive(Clone, Copy)]
pub struct Limits {
    pub deadline: Duration,
    pub in_flight: usize,
}

struct Pending {
    expected: Expected,
    /// `dn_key` of its DN, computed once: a chunk of thousands is matched against thousands.
    key: String,
    /// When this write was handed over: its lag is measured from here.
    since: Instant,
    /// Since when the DC has been behind on this object (an older write it never showed, that
    /// this one replaced, counts): the deadline runs from here.
    behind: Instant,
    next: Instant,
    backoff: Duration,
}

pub struct Worker {
    pub dc: DcInfo,
    pub connect: Connect,
    pub limits: Limits,
    pub events: mpsc::UnboundedSender<Event>,
}

impl Worker {
    /// Runs until `jobs` closes (the controller stops).
    pub async fn run(self, mut jobs: mpsc::UnboundedReceiver<Expected>) {
        let mut pending: Vec<Pending> = Vec::new();
        let mut reader: Option<Arc<dyn DcRead>> = None;
        let mut reconnect_at = Instant::now();
        let mut reconnect_backoff = FIRST_BACKOFF;
        let mut last_error: Option<String> = None;
        let mut late = 0;
        loop {
            let now = Instant::now();
            // The next read, or a deadline still ahead (to raise the finding on time).
            let wake = pending
                .iter()
                .map(|p| {
                    let (read, deadline) = (p.next.max(reconnect_at), p.behind + self.limits.deadline);
                    if deadline > now { read.min(deadline) } else { read }
                })
                .min();
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(e) => {
                        self.add(&mut pending, e);
                        // A run hands over a whole chunk at once: take all of it, so one pass
                        // reads it with `in_flight` reads at a time, not one pass per object.
                        while let Ok(e) = jobs.try_recv() {
                            self.add(&mut pending, e);
                        }
                    }
                    None => return,
                },
                _ = sleep_until(wake), if !pending.is_empty() => {}
            }
            if reader.is_none() && !pending.is_empty() && Instant::now() >= reconnect_at {
                match (self.connect)().await {
                    Ok(r) => {
                        reader = Some(r);
                        reconnect_backoff = FIRST_BACKOFF;
                    }
                    Err(e) => {
                        tracing::debug!(dc = %self.dc.name, error = %e, "cannot reach the DC for the per-DC verify");
                        last_error = Some(e.to_string());
                        reconnect_at = Instant::now() + reconnect_backoff;
                        reconnect_backoff = (reconnect_backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            if let Some(r) = &reader
                && let Err(e) = self.poll_due(r, &mut pending).await
            {
                tracing::debug!(dc = %self.dc.name, error = %e, "the per-DC verify's connection failed; reconnecting");
                last_error = Some(e.to_string());
                reader = None;
                reconnect_at = Instant::now() + reconnect_backoff;
            }
            late = self.judge(&pending, late, &last_error, Instant::now());
        }
    }

    /// A newer write to an object still awaited replaces the older one: the DC may receive
    /// both at once and never show the older state, which must not keep the DC "late".
    fn add(&self, pending: &mut Vec<Pending>, e: Expected) {
        let key = crate::model::dn_key(&e.record.dn);
        let now = Instant::now();
        // The clock starts at the audit row (the write verified on its DC), also for a write
        // watched again after a restart.
        let age = Duration::from_millis((crate::store::now_ms() - e.record.time_ms).max(0) as u64);
        let written = now.checked_sub(age).unwrap_or(now);
        let mut behind = written;
        if let Some(i) = pending.iter().position(|p| p.key == key) {
            let old = pending.swap_remove(i);
            behind = old.behind.min(written);
            tracing::debug!(dc = %self.dc.name, dn = %key, plan = old.expected.record.plan_id, by = e.record.plan_id,
                "a newer write replaced one not yet seen on this DC");
        }
        pending.push(Pending {
            key,
            since: written,
            behind,
            next: now,
            backoff: FIRST_BACKOFF,
            expected: e,
        });
    }

    /// Reads every object whose time has come; what shows its change is reported as soon as
    /// its read returns (a pass over thousands of objects takes seconds: the first ones do
    /// not wait for the last) and dropped, the rest wait twice as long. An error stops the
    /// round: the connection is suspect.
    async fn poll_due(&self, reader: &Arc<dyn DcRead>, pending: &mut Vec<Pending>) -> Result<(), LdapError> {
        let now = Instant::now();
        let due: Vec<(usize, String)> = (0..pending.len())
            .filter(|&i| pending[i].next <= now)
            .map(|i| (i, pending[i].expected.record.dn.clone()))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let mut reads = futures::stream::iter(due)
            .map(|(i, dn)| {
                let r = reader.clone();
                async move { (i, r.read(&dn).await) }
            })
            .buffer_unordered(self.limits.in_flight.max(1));
        let mut arrived = Vec::new();
        let mut failed = None;
        while let Some((i, read)) = reads.next().await {
            let p = &mut pending[i];
            match read {
                Ok(Some(now_there)) if reflected(&p.expected.record, &now_there) => {
                    let _ = self.events.send(Event::Arrived {
                        dc: self.dc.name.clone(),
                        expected: p.expected.clone(),
                        after: p.since.elapsed(),
                    });
                    arrived.push(i);
                }
                Ok(_) => {
                    p.next = Instant::now() + p.backoff;
                    p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => failed = Some(e),
            }
        }
        arrived.sort_unstable_by(|a, b| b.cmp(a));
        for i in arrived {
            pending.swap_remove(i);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Reports the objects past the deadline whenever their number changes (the recorder
    /// raises or updates the DC's finding), and that the DC caught up when none is left;
    /// returns the number.
    fn judge(&self, pending: &[Pending], was: usize, last_error: &Option<String>, now: Instant) -> usize {
        let late: Vec<&Pending> = pending
            .iter()
            .filter(|p| now >= p.behind + self.limits.deadline)
            .collect();
        if late.len() == was {
            return was;
        }
        let event = if late.is_empty() {
            Event::CaughtUp {
                dc: self.dc.name.clone(),
            }
        } else {
            Event::Overdue(Overdue {
                dc: self.dc.clone(),
                waiting: late.iter().map(|p| p.expected.clone()).collect(),
                oldest: late.iter().map(|p| p.behind.elapsed()).max().unwrap_or_default(),
                last_error: last_error.clone(),
            })
        };
        let _ = self.events.send(event);
        late.len()
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
