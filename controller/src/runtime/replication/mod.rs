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
//! without waiting, after the audit is written. Samba has no rootDSE `replicateSingleObject`
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
use crate::grpc::fleet::ApiState;
use crate::ldap::DcInfo;
use crate::store::{AuditRecord, ReplicationRecord, Store};

/// One written object a DC should come to show: the audit row of its write.
#[derive(Debug, Clone)]
pub struct Expected {
    pub record: AuditRecord,
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
    /// These (plan, object, DC) are awaited from now on.
    Expect(Vec<ReplicationRecord>),
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

/// The reconcile loop's handle: hands written objects to the watch, never waiting.
#[derive(Clone, Default)]
pub struct Replication {
    batches: Option<mpsc::UnboundedSender<Vec<AuditRecord>>>,
    pub findings: DcFindings,
}

impl Replication {
    /// Watches where the audit rows' writes arrive. Returns at once.
    pub fn watch(&self, applied: &[AuditRecord]) {
        if let (Some(tx), false) = (&self.batches, applied.is_empty()) {
            let _ = tx.send(applied.to_vec());
        }
    }

    /// The findings to show now.
    pub fn current_findings(&self) -> Vec<Finding> {
        self.findings.lock().unwrap().values().cloned().collect()
    }
}

/// Where the recorder reports to.
pub struct Outputs {
    pub store: Store,
    pub api: Option<Arc<ApiState>>,
    pub events: broadcast::Sender<pb::FleetEvent>,
}

/// Starts the watch: discovers the domain's DCs in the background, then one worker per other
/// DC the config can reach, which also gets the writes an earlier run left awaited there. Stops when the returned handle and its clones are dropped.
pub fn start(cfg: Arc<Config>, out: Outputs) -> Replication {
    let (tx, rx) = mpsc::unbounded_channel();
    let (events, recorded) = mpsc::unbounded_channel();
    let findings = DcFindings::default();
    let store = out.store.clone();
    let recorder = record::Recorder {
        out,
        findings: findings.clone(),
    };
    tokio::spawn(recorder.run(recorded));
    tokio::spawn(discover::run(cfg, store, rx, events));
    Replication {
        batches: Some(tx),
        findings,
    }
}

/// Hands every batch to every worker, after recording that it is awaited there.
async fn dispatch(
    mut batches: mpsc::UnboundedReceiver<Vec<AuditRecord>>,
    workers: Vec<(String, mpsc::UnboundedSender<Expected>)>,
    events: mpsc::UnboundedSender<Event>,
) {
    while let Some(batch) = batches.recv().await {
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
        if !rows.is_empty() {
            let _ = events.send(Event::Expect(rows));
        }
        for (dc, w) in &workers {
            for r in batch.iter().filter(|r| r.dc != *dc) {
                let _ = w.send(Expected { record: r.clone() });
            }
        }
    }
}
