//! The per-DC verify: after a write is verified and audited on the DC it was made on, read
//! each written object on every other DC until it shows the change, or the deadline
//! (`ad.replication_deadline_secs`) passes and a `DcNotReplicating` finding names the DC
//! (cleared once the change arrives). A host asks the KDC of its site, so "verified" on one
//! DC is not yet "in effect" for a host whose DC is another.
//!
//! - `discover`: which DCs the domain has (AD's NTDS Settings objects), which the config can
//!   reach (`[[ad.dc]]`), and the ones it cannot (reported, never guessed);
//! - `worker`: one per other DC, one connection, polling with backoff;
//! - `record`: the one task that writes what the workers saw to the store, the
//!   `kcdsync.replication.lag` histogram, the log and the findings.
//!
//! None of it runs in the reconcile loop: [`Replication::watch`] hands the audit rows over
//! without waiting, after the audit is written.
//!
//! It also holds ticket purges back: a host whose agent reported that its tickets come from
//! another DC's KDC is told to purge only once that DC has the change (purging earlier just
//! fetches the old answer again), and until then it has an `AwaitingReplication` finding
//! ("ready once dc2 replicates"). Samba has no rootDSE `replicateSingleObject`
//! (rc 53, checked on 4.17 and 4.22: deploy/lab/README.md), so the workers poll.

mod discover;
mod record;
#[cfg(test)]
mod tests;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcdsync_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};

use crate::config::Config;
use crate::diagnose::Finding;
use crate::grpc::agents::AgentHub;
use crate::grpc::fleet::ApiState;
use crate::ldap::DcInfo;
use crate::store::{AuditRecord, ReplicationRecord, Store};

/// One written object a DC should come to show: the audit row of its write.
#[derive(Debug, Clone)]
pub struct Expected {
    pub record: AuditRecord,
}

/// A purge to send to `host`'s agent once `kdc` has plan `plan_id`'s change to `dn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub host: String,
    pub dn: String,
    pub plan_id: i64,
    /// The DC the host's tickets came from, as its agent reported it (lower case).
    pub kdc: String,
    pub reason: String,
}

/// What a reconcile hands over: its audit rows and the purges that may have to wait.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<AuditRecord>,
    pub purges: Vec<Purge>,
}

/// Objects past the deadline on one DC.
#[derive(Debug, Clone)]
pub struct Overdue {
    pub dc: DcInfo,
    pub waiting: Vec<Expected>,
    pub oldest: Duration,
    /// Why the DC could not be read, when it could not.
    pub last_error: Option<String>,
}

/// What the workers report to the recorder, in order.
#[derive(Debug)]
pub enum Event {
    /// These (plan, object, DC) are awaited from now on, and these purges wait on their DC.
    Expect {
        rows: Vec<ReplicationRecord>,
        held: Vec<(String, Purge)>,
    },
    /// Purges whose KDC kcdsync does not wait on (the DC it wrote to, or one it cannot read).
    PurgeNow(Vec<Purge>),
    Arrived {
        dc: String,
        expected: Expected,
        after: Duration,
    },
    Overdue(Overdue),
    CaughtUp {
        dc: String,
    },
}

/// The current `DcNotReplicating` findings, by DC name; the view shows them beside diagnosis'.
pub type DcFindings = Arc<Mutex<BTreeMap<String, Finding>>>;

/// The current `AwaitingReplication` findings, one per host whose purge waits.
pub type AwaitingFindings = Arc<Mutex<Vec<Finding>>>;

/// The reconcile loop's handle: hands written objects to the watch, never waiting.
#[derive(Clone, Default)]
pub struct Replication {
    batches: Option<mpsc::UnboundedSender<Batch>>,
    pub findings: DcFindings,
    pub awaiting: AwaitingFindings,
}

impl Replication {
    /// Watches where the audit rows' writes arrive, and sends each purge once its KDC has the
    /// change (at once when that is the DC written to or one kcdsync cannot read). Returns at
    /// once, with the purges it did not take: all of them when the watch is not running.
    pub fn watch(&self, batch: Batch) -> Vec<Purge> {
        match &self.batches {
            Some(tx) if !batch.records.is_empty() || !batch.purges.is_empty() => match tx.send(batch) {
                Ok(()) => Vec::new(),
                Err(mpsc::error::SendError(b)) => b.purges,
            },
            Some(_) => Vec::new(),
            None => batch.purges,
        }
    }

    /// The findings to show now.
    pub fn current_findings(&self) -> Vec<Finding> {
        self.findings.lock().unwrap().values().cloned().collect()
    }
}

/// Whether the per-DC verify started with `a` is the one `b` asks for: the same DCs, reached
/// the same way, with the same deadline. A reload that changes any of this starts the verify
/// again (`runtime::reconciler`); what it awaited and the purges it held are in the store.
pub fn same_setup(a: &Config, b: &Config) -> bool {
    let (a, b) = (&a.ad, &b.ad);
    a.url == b.url
        && a.starttls == b.starttls
        && a.ca_file == b.ca_file
        && a.bind_dn == b.bind_dn
        && a.password.expose() == b.password.expose()
        && a.timeout == b.timeout
        && a.max_in_flight == b.max_in_flight
        && a.domain_dn == b.domain_dn
        && a.dcs == b.dcs
        && a.replication_deadline == b.replication_deadline
}

/// Where the recorder reports to.
pub struct Outputs {
    pub store: Store,
    pub api: Option<Arc<ApiState>>,
    pub events: broadcast::Sender<pb::FleetEvent>,
    /// Where held purges go once their DC has the change.
    pub hub: Option<AgentHub>,
}

/// Starts the watch: discovers the domain's DCs in the background, then one worker per other
/// DC the config can reach, which also gets the writes an earlier run left awaited there. Stops when the returned handle and its clones are dropped.
pub fn start(cfg: Arc<Config>, out: Outputs) -> Replication {
    let (tx, rx) = mpsc::unbounded_channel();
    let (events, recorded) = mpsc::unbounded_channel();
    let findings = DcFindings::default();
    let awaiting = AwaitingFindings::default();
    let store = out.store.clone();
    let recorder = record::Recorder {
        out,
        findings: findings.clone(),
        held: Default::default(),
        awaiting: awaiting.clone(),
    };
    tokio::spawn(recorder.run(recorded));
    tokio::spawn(discover::run(cfg, store, rx, events));
    Replication {
        batches: Some(tx),
        findings,
        awaiting,
    }
}

/// The worker's DC a host's reported KDC is: its dNSHostName, or its first label when the
/// agent saw a short name.
fn dc_of<'a>(kdc: &str, dcs: impl IntoIterator<Item = &'a String>) -> Option<&'a String> {
    dcs.into_iter().find(|dc| {
        dc.eq_ignore_ascii_case(kdc)
            || (!kdc.contains('.') && dc.split('.').next().is_some_and(|l| l.eq_ignore_ascii_case(kdc)))
    })
}

/// Hands every batch to every worker, after recording that it is awaited there.
async fn dispatch(
    mut batches: mpsc::UnboundedReceiver<Batch>,
    workers: Vec<(String, mpsc::UnboundedSender<Expected>)>,
    events: mpsc::UnboundedSender<Event>,
) {
    while let Some(Batch { records: batch, purges }) = batches.recv().await {
        // A purge waits only on a DC a worker reads, for an object this batch wrote on
        // another DC (a host whose KDC is the DC written on has the change already).
        let (mut held, mut now) = (Vec::new(), Vec::new());
        for p in purges {
            let dc = dc_of(&p.kdc, workers.iter().map(|(dc, _)| dc));
            match dc {
                Some(dc)
                    if batch
                        .iter()
                        .any(|r| r.plan_id == p.plan_id && r.dn == p.dn && r.dc != *dc) =>
                {
                    held.push((dc.clone(), p))
                }
                _ => now.push(p),
            }
        }
        if !now.is_empty() {
            let _ = events.send(Event::PurgeNow(now));
        }
        if workers.is_empty() {
            continue;
        }
        // A write is not awaited on the DC it was made on: after a failover
        // (`runtime::failover`) that is one of the DCs with a worker.
        let rows: Vec<ReplicationRecord> = workers
            .iter()
            .flat_map(|(dc, _)| {
                batch
                    .iter()
                    .filter(move |r| r.dc != *dc)
                    .map(move |r| ReplicationRecord {
                        plan_id: r.plan_id,
                        host: r.host.clone(),
                        dn: r.dn.clone(),
                        dc: dc.clone(),
                        written_at_ms: r.time_ms,
                        arrived_at_ms: None,
                    })
            })
            .collect();
        // Sent before the workers get the batch: the recorder stores "awaited" before any
        // arrival.
        if !rows.is_empty() || !held.is_empty() {
            let _ = events.send(Event::Expect { rows, held });
        }
        for (dc, w) in &workers {
            for r in batch.iter().filter(|r| r.dc != *dc) {
                let _ = w.send(Expected { record: r.clone() });
            }
        }
    }
}
