//! The one task that turns what the workers saw into the record: the store (per plan, object
//! and DC), the `kcdsync.replication.lag` histogram, a log line, and the `DcNotReplicating`
//! findings (raised and cleared on the event stream and in the API's view at once, not at the
//! next reconcile).

use kcdsync_proto::v1 as pb;
use tokio::sync::mpsc;

use super::{DcFindings, Event, Outputs, Overdue};
use crate::diagnose::{Finding, FindingKind, Severity};
use crate::grpc::convert::{event, finding_to_pb};
use crate::store::now_ms;

/// At most this many waiting objects are named in a finding's evidence.
const EVIDENCE_OBJECTS: usize = 20;

pub(super) struct Recorder {
    pub out: Outputs,
    pub findings: DcFindings,
}

impl Recorder {
    pub async fn run(self, mut events: mpsc::UnboundedReceiver<Event>) {
        while let Some(e) = events.recv().await {
            self.handle(e).await;
        }
    }

    async fn handle(&self, e: Event) {
        match e {
            Event::Expect(rows) => {
                if let Err(e) = self.out.store.expect_replication(&rows).await {
                    tracing::warn!(error = %e, "cannot record the per-DC verify's rows");
                }
            }
            Event::Arrived { dc, expected, .. } => {
                let r = &expected.record;
                let arrived = now_ms();
                let lag = (arrived - r.time_ms).max(0) as f64 / 1000.0;
                crate::metrics::get()
                    .replication_lag
                    .record(lag, &[opentelemetry::KeyValue::new("dc", dc.clone())]);
                tracing::info!(host = %r.host, plan = r.plan_id, dc = %dc, lag_secs = lag,
                    "plan {}'s change to {} replicated to {dc} after {lag:.1} s", r.plan_id, r.host);
                if let Err(e) = self.out.store.replication_arrived(r.plan_id, &r.dn, &dc, arrived).await {
                    tracing::warn!(error = %e, "cannot record the per-DC verify's arrival");
                }
            }
            Event::Overdue(o) => {
                tracing::warn!(dc = %o.dc.name, waiting = o.waiting.len(), oldest_secs = o.oldest.as_secs(),
                    "{} has not received {} of kcdsync's writes within the replication deadline", o.dc.name, o.waiting.len());
                let f = finding(&o);
                let new = self
                    .findings
                    .lock()
                    .unwrap()
                    .insert(o.dc.name.clone(), f.clone())
                    .is_none();
                if new {
                    self.announce(pb::fleet_event::Event::FindingRaised(finding_to_pb(&f)));
                }
                self.republish();
            }
            Event::CaughtUp { dc } => {
                let gone = self.findings.lock().unwrap().remove(&dc);
                if let Some(f) = gone {
                    tracing::info!(dc = %dc, "{dc} caught up with kcdsync's writes");
                    self.announce(pb::fleet_event::Event::FindingCleared(finding_to_pb(&f)));
                    self.republish();
                }
            }
        }
    }

    fn announce(&self, e: pb::fleet_event::Event) {
        let _ = self.out.events.send(event(e));
    }

    fn republish(&self) {
        if let Some(api) = &self.out.api {
            let now: Vec<Finding> = self.findings.lock().unwrap().values().cloned().collect();
            api.publish_findings_of(FindingKind::DcNotReplicating, now);
        }
    }
}

/// The finding naming a DC that is behind: stable id per DC, so raise and clear pair up.
pub(super) fn finding(o: &Overdue) -> Finding {
    let mut hosts: Vec<&str> = o.waiting.iter().map(|e| e.record.host.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts.truncate(EVIDENCE_OBJECTS);
    let mut f = Finding::new(
        FindingKind::DcNotReplicating,
        Severity::Warning,
        &hosts,
        "",
        format!(
            "domain controller {} has not received kcdsync's change to {} object(s) after {} s: hosts whose KDC is {} still get the old delegation",
            o.dc.name,
            o.waiting.len(),
            o.oldest.as_secs(),
            o.dc.name
        ),
    )
    .evidence("dc", o.dc.name.clone())
    .evidence("site", o.dc.site.clone());
    f.id = format!("{:?}:{}", FindingKind::DcNotReplicating, o.dc.name);
    for e in o.waiting.iter().take(EVIDENCE_OBJECTS) {
        f = f.evidence("waiting", format!("{} (plan {})", e.record.dn, e.record.plan_id));
    }
    if let Some(err) = &o.last_error {
        f = f.evidence("last error", err.clone());
    }
    f.fix(
        format!(
            "Check replication towards {0}: `repadmin /showrepl {0}` (Samba: `samba-tool drs showrepl`), and that it is up. kcdsync keeps reading it and clears this finding when the change arrives.",
            o.dc.name
        ),
        false,
    )
}
