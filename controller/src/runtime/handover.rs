//! What follows each audited chunk of a run, as soon as its audit rows exist (not at the end of
//! the run): the per-DC verify starts watching the other DCs for the changes, and the agents of
//! the changed hosts are told to purge their SYSTEM tickets — at once, or, when a host's agent
//! reported that its tickets come from another DC, once that DC has the change (purging earlier
//! would only fetch the old answer again from that KDC).

use tokio::sync::mpsc;
use tracing::Instrument;

use super::replication::{Batch, Purge, Replication};
use crate::grpc::agents::AgentHub;
use crate::reconcile::Audited;
use crate::store::AuditRecord;

pub struct Handover {
    pub hub: Option<AgentHub>,
    pub replication: Replication,
}

impl Handover {
    /// Runs the handover on its own task; a run sends its audit rows into the returned sender
    /// (`RunOptions::audited`). The task ends when every sender is dropped.
    pub fn start(self) -> mpsc::UnboundedSender<Audited> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Audited>();
        tokio::spawn(async move {
            while let Some(Audited { rows, span }) = rx.recv().await {
                // In the run's span: a purge command is part of the remediation's trace.
                self.rows(rows).instrument(span).await;
            }
        });
        tx
    }

    async fn rows(&self, records: Vec<AuditRecord>) {
        let mut now = Vec::new();
        let mut purges = Vec::new();
        if let Some(hub) = &self.hub {
            for r in &records {
                let p = Purge {
                    host: r.host.clone(),
                    dn: r.dn.clone(),
                    plan_id: r.plan_id,
                    kdc: hub.kdc_of(&r.host).unwrap_or_default(),
                    reason: format!("delegation of {} changed by plan {}", r.host, r.plan_id),
                };
                if p.kdc.is_empty() { now.push(p) } else { purges.push(p) }
            }
        }
        // Those the per-DC verify does not take (it is not running) go out now too.
        now.extend(self.replication.watch(Batch { records, purges }));
        let Some(hub) = &self.hub else { return };
        for p in now {
            let span = tracing::info_span!("purge_command", host = %p.host, plan = p.plan_id);
            // Never waits on the agent: one that is away or not reading gets it on reconnect.
            match hub.purge(&p.host, &p.reason).instrument(span).await {
                Ok(id) => tracing::info!(host = %p.host, command = id, "asked the agent to purge SYSTEM tickets"),
                Err(e) => tracing::info!(host = %p.host, "{e}; the purge is sent when the agent connects"),
            }
        }
    }
}
