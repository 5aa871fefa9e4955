//! The one task that turns what the workers saw into the record: the store (per plan, object
//! and DC), the `kcdsync.replication.lag` histogram, a log line, and the `DcNotReplicating`
//! findings (raised and cleared on the event stream and in the API's view at once, not at the
//! next reconcile).

use std::collections::BTreeMap;
use std::sync::Mutex;

use kcdsync_proto::v1 as pb;
use tokio::sync::mpsc;

use super::{DcFindings, Event, Outputs, Overdue, Purge};
use crate::diagnose::{Finding, FindingKind, Severity};
use crate::grpc::convert::{event, finding_to_pb};
use crate::store::{HeldPurge, now_ms};

/// At most this many arrivals are recorded in one commit.
const ARRIVALS_PER_COMMIT: usize = 1000;

/// At most this many waiting objects are named in a finding's evidence.
const EVIDENCE_OBJECTS: usize = 20;

pub(super) struct Recorder {
    pub out: Outputs,
    pub findings: DcFindings,
    /// Purges waiting for (plan, DN, DC) to arrive.
    pub held: Mutex<BTreeMap<(i64, String, String), Vec<Purge>>>,
    /// The `AwaitingReplication` findings last shown.
    pub awaiting: super::AwaitingFindings,
}

impl Recorder {
    pub async fn run(self, mut events: mpsc::UnboundedReceiver<Event>) {
        // Before any event: an arrival the resumed workers read must find its purge held.
        self.reload_held().await;
        while let Some(e) = events.recv().await {
            // Arrivals already queued behind this one are recorded together (one commit), in
            // order with the other events.
            let mut arrived = Vec::new();
            let mut next = Some(e);
            while let Some(e) = next.take() {
                match e {
                    Event::Arrived { dc, expected, .. } => arrived.push((dc, expected)),
                    other => {
                        self.arrived(std::mem::take(&mut arrived)).await;
                        self.handle(other).await;
                    }
                }
                if arrived.len() >= ARRIVALS_PER_COMMIT {
                    self.arrived(std::mem::take(&mut arrived)).await;
                }
                next = events.try_recv().ok();
            }
            self.arrived(arrived).await;
        }
    }

    /// The purges an earlier run (this process before a restart, or another replica) held and
    /// did not send: held again, to go out when their DC has the change. One written before the
    /// workers' resume horizon goes out now: no worker will read its object again.
    async fn reload_held(&self) {
        let held = match self.out.store.held_purges().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the purges an earlier run held; they go out when their hosts' tickets expire");
                return;
            }
        };
        if held.is_empty() {
            return;
        }
        let horizon = now_ms() - super::discover::RESUME_HORIZON.as_millis() as i64;
        let (late, again): (Vec<HeldPurge>, Vec<HeldPurge>) = held.into_iter().partition(|h| h.written_at_ms < horizon);
        let purge = |h: &HeldPurge| Purge {
            host: h.host.clone(),
            dn: h.dn.clone(),
            plan_id: h.plan_id,
            kdc: h.kdc.clone(),
            reason: h.reason.clone(),
        };
        {
            let mut map = self.held.lock().unwrap();
            for h in &again {
                tracing::info!(host = %h.host, plan = h.plan_id, dc = %h.dc,
                    "{}'s purge, held by an earlier run, still waits until {} has plan {}'s change", h.host, h.dc, h.plan_id);
                map.entry((h.plan_id, h.dn.clone(), h.dc.clone()))
                    .or_default()
                    .push(purge(h));
            }
        }
        self.republish_awaiting();
        for h in &late {
            self.purge(&purge(h)).await;
        }
        if let Err(e) = self.out.store.purges_sent(&late).await {
            tracing::warn!(error = %e, "cannot record that the held purges past the resume horizon were sent");
        }
    }

    /// Records arrivals read on their DC: the lag histogram, a log line each, the store (one
    /// commit), and the purges that waited for them.
    async fn arrived(&self, arrived: Vec<(String, super::Expected)>) {
        if arrived.is_empty() {
            return;
        }
        let at = now_ms();
        for (dc, expected) in &arrived {
            let r = &expected.record;
            let lag = (at - r.time_ms).max(0) as f64 / 1000.0;
            crate::metrics::get()
                .replication_lag
                .record(lag, &[opentelemetry::KeyValue::new("dc", dc.clone())]);
            tracing::info!(host = %r.host, plan = r.plan_id, dc = %dc, lag_secs = lag,
                "plan {}'s change to {} replicated to {dc} after {lag:.1} s", r.plan_id, r.host);
        }
        let keys: Vec<(i64, &str, &str)> = arrived
            .iter()
            .map(|(dc, e)| (e.record.plan_id, e.record.dn.as_str(), dc.as_str()))
            .collect();
        if let Err(e) = self.out.store.replication_arrived_all(&keys, at).await {
            tracing::warn!(error = %e, "cannot record the per-DC verify's arrivals");
        }
        for (dc, expected) in arrived {
            let r = &expected.record;
            let released = self.held.lock().unwrap().remove(&(r.plan_id, r.dn.clone(), dc));
            if let Some(purges) = released {
                self.republish_awaiting();
                for p in purges {
                    self.purge(&p).await;
                }
            }
        }
    }

    async fn handle(&self, e: Event) {
        match e {
            Event::Expect { rows, held } => {
                if let Err(e) = self.out.store.expect_replication(&rows).await {
                    tracing::warn!(error = %e, "cannot record the per-DC verify's rows");
                }
                if !held.is_empty() {
                    // In the store too: a restart (or the next leader) holds them again.
                    let rows: Vec<HeldPurge> = held
                        .iter()
                        .map(|(dc, p)| HeldPurge {
                            plan_id: p.plan_id,
                            host: p.host.clone(),
                            dn: p.dn.clone(),
                            dc: dc.clone(),
                            kdc: p.kdc.clone(),
                            reason: p.reason.clone(),
                            written_at_ms: 0,
                        })
                        .collect();
                    if let Err(e) = self.out.store.hold_purges(&rows).await {
                        tracing::warn!(error = %e, "cannot record the held purges: a restart before their DC catches up forgets them");
                    }
                    let mut map = self.held.lock().unwrap();
                    for (dc, p) in held {
                        tracing::info!(host = %p.host, plan = p.plan_id, dc = %dc,
                            "{}'s tickets come from {dc}: its purge waits until {dc} has plan {}'s change", p.host, p.plan_id);
                        map.entry((p.plan_id, p.dn.clone(), dc)).or_default().push(p);
                    }
                    drop(map);
                    self.republish_awaiting();
                }
            }
            Event::PurgeNow(purges) => {
                for p in purges {
                    self.purge(&p).await;
                }
            }
            Event::Arrived { dc, expected, .. } => self.arrived(vec![(dc, expected)]).await,
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

    /// Tells the host's agent to drop its SYSTEM tickets; one that is away gets it on
    /// reconnect (the hub records it), so this never waits on the agent.
    async fn purge(&self, p: &Purge) {
        let Some(hub) = &self.out.hub else { return };
        let span = tracing::info_span!("purge_command", host = %p.host, plan = p.plan_id);
        match tracing::Instrument::instrument(hub.purge(&p.host, &p.reason), span).await {
            Ok(id) => {
                tracing::info!(host = %p.host, command = id, kdc = %p.kdc, "asked the agent to purge SYSTEM tickets")
            }
            Err(e) => tracing::info!(host = %p.host, "{e}; the purge is sent when the agent connects"),
        }
    }

    /// The `AwaitingReplication` findings: one per host whose purge waits, shown at once.
    fn republish_awaiting(&self) {
        let mut by_host: BTreeMap<String, (String, Vec<i64>)> = BTreeMap::new();
        for ((plan, _, dc), purges) in self.held.lock().unwrap().iter() {
            for p in purges {
                let e = by_host
                    .entry(p.host.clone())
                    .or_insert_with(|| (dc.clone(), Vec::new()));
                e.1.push(*plan);
            }
        }
        let now: Vec<Finding> = by_host
            .iter()
            .map(|(host, (dc, plans))| awaiting(host, dc, plans))
            .collect();
        let before: Vec<Finding> = std::mem::take(&mut *self.awaiting.lock().unwrap());
        for f in now.iter().filter(|f| !before.iter().any(|b| b.id == f.id)) {
            self.announce(pb::fleet_event::Event::FindingRaised(finding_to_pb(f)));
        }
        for f in before.iter().filter(|b| !now.iter().any(|f| f.id == b.id)) {
            self.announce(pb::fleet_event::Event::FindingCleared(finding_to_pb(f)));
        }
        *self.awaiting.lock().unwrap() = now.clone();
        if let Some(api) = &self.out.api {
            api.publish_findings_of(FindingKind::AwaitingReplication, now);
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

/// A host whose tickets come from a DC that does not have kcdsync's change yet: its migrations
/// are refused by that KDC until it does, and its purge waits for it.
pub(super) fn awaiting(host: &str, dc: &str, plans: &[i64]) -> Finding {
    let plans: Vec<String> = plans.iter().map(|p| p.to_string()).collect();
    let mut f = Finding::new(
        FindingKind::AwaitingReplication,
        Severity::Critical,
        &[host],
        "",
        format!(
            "ready once {dc} replicates: {host} gets its tickets from {dc}, which does not have plan {}'s change yet; kcdsync tells {host} to purge its tickets when it does",
            plans.join(", ")
        ),
    )
    .evidence("kdc", dc.to_owned())
    .evidence("plans", plans.join(", "));
    f.id = format!("{:?}:{host}", FindingKind::AwaitingReplication);
    f.fix(
        format!(
            "Nothing to do unless it lasts: replication to {dc} normally takes seconds to 15 minutes (a DcNotReplicating finding names {dc} past the deadline). To use it sooner, force replication (`repadmin /syncall {dc}`; Samba: `samba-tool drs replicate`)."
        ),
        false,
    )
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
