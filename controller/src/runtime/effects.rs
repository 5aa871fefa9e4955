//! What follows a reconcile: plan events go out, and a fresh view — findings,
//! readiness, metrics — is published to the API and the event stream. (The
//! agents' purges and the per-DC verify start earlier, per audited chunk of
//! the run: `runtime::handover`.)

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kcdsync_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};

use crate::config::Config;
use crate::diagnose::{self, Finding, Severity};
use crate::grpc::agents::AgentHub;
use crate::grpc::convert::{event, finding_to_pb, plan_to_pb};
use crate::grpc::fleet::ApiState;
use crate::ldap::Ad;
use crate::model::{Index, Observed};
use crate::reconcile::Outcome;
use crate::store::{Store, now_ms};
use crate::view::{Snapshot, View};

use super::handover::Handover;
use super::replication::{self, Replication};
use crate::reconcile::Audited;

pub struct Effects {
    pub store: Store,
    pub hub: Option<AgentHub>,
    pub api: Option<Arc<ApiState>>,
    pub events: broadcast::Sender<pb::FleetEvent>,
    /// Findings of the last view, by id, to tell raised from cleared.
    findings: BTreeMap<String, Finding>,
    /// The per-DC verify, whose findings (`DcNotReplicating`, raised and cleared by it) and
    /// waits (`AwaitingReplication`) are shown in the view.
    pub replication: Replication,
}

impl Effects {
    pub fn new(
        store: Store,
        hub: Option<AgentHub>,
        api: Option<Arc<ApiState>>,
        events: broadcast::Sender<pb::FleetEvent>,
    ) -> Effects {
        Effects {
            store,
            hub,
            api,
            events,
            findings: BTreeMap::new(),
            replication: Replication::default(),
        }
    }

    /// Starts the per-DC verify for `cfg` (replacing one started before, which stops once its
    /// handles are dropped) and the handover that feeds it; returns where a run sends its audit
    /// rows (`RunOptions::audited`).
    pub fn start_verify(&mut self, cfg: Arc<Config>) -> mpsc::UnboundedSender<Audited> {
        self.replication = replication::start(
            cfg,
            replication::Outputs {
                store: self.store.clone(),
                api: self.api.clone(),
                events: self.events.clone(),
                hub: self.hub.clone(),
            },
        );
        Handover {
            hub: self.hub.clone(),
            replication: self.replication.clone(),
        }
        .start()
    }

    pub async fn after(&mut self, cfg: &Arc<Config>, ad: &Ad, observed: (Observed, Arc<Index>), o: &Outcome) {
        if let Some(hub) = &self.hub {
            // Who may enroll follows every read of AD, like delegation does.
            hub.set_enrollable(crate::enrollment::Enrollable::of(&observed.0, &observed.1, now_ms()));
        }
        // The purges and the per-DC verify of `o.applied` were handed over as the run
        // audited them (`runtime::handover`).
        self.plan_events(o).await;
        if self.api.is_none() && self.events.receiver_count() == 0 {
            return;
        }
        // `observed` already holds the written objects as verify read them back.
        let snapshot = match Snapshot::gather(cfg, ad, &self.store, Some(observed)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not refresh the fleet view; the API keeps the previous one");
                return;
            }
        };
        let mut findings = diagnose::fleet_findings(&snapshot.facts(cfg, now_ms()));
        self.finding_events(&findings);
        // Announced by the per-DC verify when they change; shown here with the rest.
        findings.extend(self.replication.findings.lock().unwrap().values().cloned());
        findings.extend(self.replication.awaiting.lock().unwrap().iter().cloned());
        self.metrics(cfg, &snapshot, &findings);
        if let Some(api) = &self.api {
            api.publish(View::new(cfg.clone(), snapshot, findings));
        }
    }

    async fn plan_events(&self, o: &Outcome) {
        for (id, applied) in [(o.plan_id, true), (o.pending_plan, false)] {
            let Some(id) = id else { continue };
            if let Ok(Some(p)) = self.store.get_plan(id).await {
                let pbp = plan_to_pb(&p);
                let e = if applied {
                    pb::fleet_event::Event::PlanApplied(pbp)
                } else {
                    pb::fleet_event::Event::PlanCreated(pbp)
                };
                let _ = self.events.send(event(e));
            }
        }
    }

    fn finding_events(&mut self, findings: &[Finding]) {
        let now: BTreeMap<String, Finding> = findings.iter().map(|f| (f.id.clone(), f.clone())).collect();
        let before: HashSet<&String> = self.findings.keys().collect();
        for (id, f) in &now {
            if !before.contains(id) {
                let _ = self
                    .events
                    .send(event(pb::fleet_event::Event::FindingRaised(finding_to_pb(f))));
            }
        }
        for (id, f) in &self.findings {
            if !now.contains_key(id) {
                let _ = self
                    .events
                    .send(event(pb::fleet_event::Event::FindingCleared(finding_to_pb(f))));
            }
        }
        self.findings = now;
    }

    fn metrics(&self, cfg: &Config, snapshot: &Snapshot, findings: &[Finding]) {
        let m = crate::metrics::get();
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for f in findings {
            *by_kind.entry(format!("{:?}", f.kind)).or_default() += 1;
        }
        m.set_gauge("kcdsync.findings", by_kind);
        let facts = snapshot.facts(cfg, now_ms());
        let (mut ready, mut not_ready) = (0u64, 0u64);
        for g in &cfg.groups {
            for c in facts.members(g) {
                let name = c.display_name();
                if findings
                    .iter()
                    .any(|f| f.severity == Severity::Critical && f.hosts.contains(&name))
                {
                    not_ready += 1;
                } else {
                    ready += 1;
                }
            }
        }
        m.set_gauge(
            "kcdsync.hosts",
            [("ready".to_owned(), ready), ("not_ready".to_owned(), not_ready)],
        );
    }
}
