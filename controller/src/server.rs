//! `serve`: the long-running controller. Owns the reconciler loop (the only
//! writer of AD), the agent endpoint, the fleet API, and the fleet event
//! stream. The binary and the end-to-end tests both start it from here.
//!
//! The loop reconciles on a timer, when an agent reports an authentication
//! failure, when the API asks (trigger, approval), and on a config reload.
//! After each reconcile it tells the agents of changed hosts to purge their
//! SYSTEM tickets and publishes a fresh view (findings, readiness) to the API.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kcdsync_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::Instrument;

use crate::agents::{self, AgentHub, HubOptions, Trigger};
use crate::api::{self, ApiState, FleetApi, ReconcileRequest, View};
use crate::config::Config;
use crate::config::ReplicaConfig;
use crate::diagnose;
use crate::ldap::Ad;
use crate::reconcile::{self, Approval, Fence, Outcome, ReconcileError, RunOptions};
use crate::snapshot::Snapshot;
use crate::store::{Store, now_ms};

/// A running controller.
pub struct Running {
    pub agents_addr: Option<SocketAddr>,
    pub api_addr: Option<SocketAddr>,
    pub hub: Option<AgentHub>,
    pub store: Store,
    pub api: Option<Arc<ApiState>>,
    pub events: broadcast::Sender<pb::FleetEvent>,
    /// Counts finished reconciles (successful or not).
    pub reconciles: watch::Receiver<u64>,
    /// The epoch of the leader lease this replica holds; `None` as a follower. Without
    /// `[replica]` always `Some(0)`: a single controller is always the writer.
    pub leader: watch::Receiver<Option<i64>>,
    reload: mpsc::Sender<Config>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    lease_task: Option<tokio::task::JoinHandle<()>>,
}

/// The name of the lease whose holder is the one AD writer among replicas.
pub const LEADER_LEASE: &str = "reconciler";

impl Running {
    /// Replaces the config (groups, modes, guard, AD) from the next
    /// reconcile on; listeners stay where they are.
    pub async fn reload(&self, cfg: Config) {
        let _ = self.reload.send(cfg).await;
    }

    /// Waits until `n` reconciles have finished in total.
    pub async fn reconciled(&self, n: u64) {
        let mut rx = self.reconciles.clone();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Waits until this replica is the leader (at once without `[replica]`); the epoch.
    pub async fn leading(&self) -> i64 {
        let mut rx = self.leader.clone();
        let e = rx.wait_for(|e| e.is_some()).await.map(|e| *e);
        e.ok().flatten().unwrap_or(0)
    }

    pub fn is_leader(&self) -> bool {
        self.leader.borrow().is_some()
    }

    /// Stops cleanly: the loop finishes, and a held lease is released so a follower takes over
    /// at once.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Some(t) = self.lease_task {
            let _ = t.await;
        }
        self.store.close().await;
    }

    /// Simulates a crash (for tests): the loop and the lease task are aborted where they are,
    /// the lease is not released (others wait for it to expire), and the listeners close.
    pub async fn crash(self) {
        self.task.abort();
        if let Some(t) = &self.lease_task {
            t.abort();
        }
        let _ = self.task.await;
        if let Some(t) = self.lease_task {
            let _ = t.await;
        }
        let _ = self.stop.send(true);
        self.store.close().await;
    }
}

fn event(e: pb::fleet_event::Event) -> pb::FleetEvent {
    pb::FleetEvent {
        time: Some(prost_types::Timestamp {
            seconds: now_ms() / 1000,
            nanos: ((now_ms() % 1000) * 1_000_000) as i32,
        }),
        event: Some(e),
    }
}

/// Binds the listeners (port 0 is fine) and starts the loop.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let store = Store::open(&cfg.store_url).await?;
    let (events, _) = broadcast::channel(4096);
    let (stop, stop_rx) = watch::channel(false);
    let (trigger_tx, triggers) = mpsc::channel::<Trigger>(1024);

    let (hub, agents_addr) = match &cfg.agents {
        Some(a) => {
            let tls = agents::server_tls(a).context("loading the agent endpoint's TLS files")?;
            let listener = tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("listening for agents on {}", a.listen))?;
            let addr = listener.local_addr()?;
            let hub = AgentHub::new(
                store.clone(),
                HubOptions {
                    heartbeat: a.heartbeat,
                    stale_after: a.stale_after,
                    max_message_bytes: a.max_message_bytes,
                    ..Default::default()
                },
                Some(trigger_tx),
            );
            let h = hub.clone();
            let mut s = stop_rx.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = s.wait_for(|v| *v).await;
                };
                if let Err(e) = agents::serve(listener, tls, h, shutdown).await {
                    tracing::error!(error = %e, "the agent endpoint stopped");
                }
            });
            // Attempts go out on the fleet event stream as they are stored.
            let mut attempts = hub.subscribe_attempts();
            let ev = events.clone();
            tokio::spawn(async move {
                while let Ok((_, a)) = attempts.recv().await {
                    let _ = ev.send(event(pb::fleet_event::Event::AttemptReported(a)));
                }
            });
            tracing::info!(listen = %addr, "serving agents (mTLS)");
            (Some(hub), Some(addr))
        }
        None => (None, None),
    };

    let (req_tx, requests) = mpsc::channel::<ReconcileRequest>(64);
    let cfg = Arc::new(cfg);
    let (leader_tx, leader_rx) = watch::channel(if cfg.replica.is_some() { None } else { Some(0) });

    let (api_state, api_addr) = match &cfg.api {
        Some(a) => {
            let tls = api::server_tls(a).context("loading the API's TLS files")?;
            let listener = tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("listening for the fleet API on {}", a.listen))?;
            let addr = listener.local_addr()?;
            let mut state = ApiState::new(cfg.clone(), store.clone(), hub.clone(), req_tx, events.clone(), a);
            if let Some(r) = &cfg.replica {
                state = state.with_leadership(r.id.clone(), leader_rx.clone());
            }
            let state = Arc::new(state);
            let fleet = FleetApi { state: state.clone() };
            let mut s = stop_rx.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = s.wait_for(|v| *v).await;
                };
                if let Err(e) = api::serve(listener, tls, fleet, shutdown).await {
                    tracing::error!(error = %e, "the fleet API stopped");
                }
            });
            tracing::info!(listen = %addr, "serving the fleet API");
            (Some(state), Some(addr))
        }
        None => (None, None),
    };

    // Started once the API is bound: a default advertise address of port 0 names the real port.
    let lease_task = cfg.replica.clone().map(|mut r| {
        if let (Some(a), Some(bound)) = (&cfg.api, api_addr)
            && r.advertise == a.listen.to_string()
        {
            r.advertise = bound.to_string();
        }
        tokio::spawn(lease_loop(store.clone(), r, leader_tx, stop_rx.clone()))
    });
    let (reload, reloads) = mpsc::channel(4);
    let (count, reconciles) = watch::channel(0u64);
    let lp = Loop {
        count,
        leader: leader_rx.clone(),
        cfg,
        store: store.clone(),
        hub: hub.clone(),
        api: api_state.clone(),
        events: events.clone(),
        findings: BTreeMap::new(),
    };
    let task = tokio::spawn(lp.run(triggers, requests, reloads, stop_rx));
    Ok(Running {
        agents_addr,
        api_addr,
        hub,
        store,
        api: api_state,
        events,
        reconciles,
        leader: leader_rx,
        reload,
        stop,
        task,
        lease_task,
    })
}

/// Takes and renews the leader lease every third of its TTL, publishing the epoch held (`None`
/// as a follower). A renewal that fails, times out or finds another holder steps down at once.
/// On a clean stop a held lease is released.
async fn lease_loop(
    store: Store,
    r: ReplicaConfig,
    leader: watch::Sender<Option<i64>>,
    mut stop: watch::Receiver<bool>,
) {
    let ttl_ms = r.lease_ttl.as_millis() as i64;
    let every = (r.lease_ttl / 3).max(Duration::from_millis(100));
    loop {
        let got = tokio::time::timeout(every, store.acquire_lease(LEADER_LEASE, &r.id, &r.advertise, ttl_ms)).await;
        let epoch = match got {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot renew the leader lease");
                None
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = every.as_millis() as u64,
                    "renewing the leader lease timed out"
                );
                None
            }
        };
        let before = *leader.borrow();
        if before != epoch {
            match epoch {
                Some(e) => tracing::info!(replica = %r.id, epoch = e, "leading: this replica writes AD"),
                None => tracing::warn!(replica = %r.id, "following: another replica holds the leader lease"),
            }
            leader.send_replace(epoch);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|v| *v) => break,
        }
    }
    if leader.borrow().is_some() {
        leader.send_replace(None);
        if let Err(e) = store.release_lease(LEADER_LEASE, &r.id).await {
            tracing::warn!(error = %e, "could not release the leader lease; it expires by itself");
        }
    }
}

struct Loop {
    count: watch::Sender<u64>,
    leader: watch::Receiver<Option<i64>>,
    cfg: Arc<Config>,
    store: Store,
    hub: Option<AgentHub>,
    api: Option<Arc<ApiState>>,
    events: broadcast::Sender<pb::FleetEvent>,
    /// Findings of the last view, by id, to tell raised from cleared.
    findings: BTreeMap<String, diagnose::Finding>,
}

/// How often a leader looks for failures stored through other replicas.
const FAILURE_POLL: Duration = Duration::from_secs(2);

enum Wake {
    Timer,
    /// Time to look for failures stored through other replicas.
    Poll,
    Trigger(Vec<Trigger>),
    Request(ReconcileRequest),
    Reload(Box<Config>),
    Leadership,
    Stop,
}

const FOLLOWER: &str = "this replica is a follower: it does not reconcile; ask the leader";

impl Loop {
    async fn run(
        mut self,
        mut triggers: mpsc::Receiver<Trigger>,
        mut requests: mpsc::Receiver<ReconcileRequest>,
        mut reloads: mpsc::Receiver<Config>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut trigger = "startup".to_owned();
        let mut parent = String::new();
        let mut approve: Option<Approval> = None;
        let mut reply: Option<tokio::sync::oneshot::Sender<Result<Outcome, String>>> = None;
        let mut failures: u32 = 0;
        // Failures stored by other replicas' agents since this moment have
        // not been answered by a reconcile of ours yet.
        let mut answered_until = now_ms();
        let mut poll = tokio::time::interval(FAILURE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A follower reconciles nothing: it waits for the lease, answering write requests
            // with where the leader is.
            if self.cfg.replica.is_some() && self.leader.borrow().is_none() {
                tracing::info!("follower: waiting for the leader lease");
                if let Some(r) = reply.take() {
                    let _ = r.send(Err(FOLLOWER.into()));
                }
                let mut leader = self.leader.clone();
                loop {
                    tokio::select! {
                        r = leader.wait_for(|e| e.is_some()) => {
                            if r.is_err() {
                                return;
                            }
                            break;
                        }
                        Some(_) = triggers.recv() => {}
                        Some(r) = requests.recv() => {
                            let _ = r.reply.send(Err(FOLLOWER.into()));
                        }
                        Some(c) = reloads.recv() => self.cfg = Arc::new(c),
                        _ = stop.wait_for(|v| *v) => {
                            tracing::info!("reconciler stopped");
                            return;
                        }
                    }
                }
                trigger = "leadership".into();
                approve = None;
            }
            let epoch = *self.leader.borrow();
            let fence = match (&self.cfg.replica, epoch) {
                (Some(r), Some(e)) => Some(Fence {
                    lease: LEADER_LEASE.into(),
                    holder: r.id.clone(),
                    epoch: e,
                }),
                _ => None,
            };
            let started = Instant::now();
            let started_ms = now_ms();
            let span = tracing::info_span!(
                "reconcile",
                trigger = %trigger,
                trace_id = tracing::field::Empty,
                hosts_changed = tracing::field::Empty
            );
            kcdsync_telemetry::set_parent(&span, &parent);
            span.record("trace_id", kcdsync_telemetry::trace_id(&span));
            let result = if let Some(f) = fence {
                // Losing the lease cancels the run at once; the fence stops any write that
                // would slip through before.
                let mut leader = self.leader.clone();
                let e = f.epoch;
                tokio::select! {
                    r = self.once(&trigger, approve.take(), Some(f)).instrument(span.clone()) => r,
                    _ = leader.wait_for(|l| *l != Some(e)) => Err(anyhow::anyhow!(ReconcileError::Fenced {
                        lease: LEADER_LEASE.into(),
                        holder: self.cfg.replica.as_ref().map(|r| r.id.clone()).unwrap_or_default(),
                        epoch: e,
                        written: 0,
                    })),
                }
            } else {
                self.once(&trigger, approve.take(), None).instrument(span.clone()).await
            };
            if let Ok(o) = &result {
                span.record("hosts_changed", o.applied.len());
            }
            let m = crate::metrics::get();
            m.reconcile_duration.record(
                started.elapsed().as_secs_f64(),
                &[opentelemetry::KeyValue::new(
                    "result",
                    if result.is_ok() { "ok" } else { "error" },
                )],
            );
            if let Some(hub) = &self.hub {
                m.set_gauge(
                    "kcdsync.agents.connected",
                    [(String::new(), hub.connected_hosts().len() as u64)],
                );
            }
            parent.clear();
            let fenced = matches!(
                result.as_ref().err().and_then(|e| e.downcast_ref::<ReconcileError>()),
                Some(ReconcileError::Fenced { .. })
            );
            let wait = match &result {
                Ok(o) => {
                    failures = 0;
                    tracing::info!(
                        trigger,
                        written = o.applied.len(),
                        pending_plan = o.pending_plan,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "reconciled"
                    );
                    self.cfg.interval
                }
                Err(e) => {
                    failures += 1;
                    let wait = match e.downcast_ref::<ReconcileError>() {
                        Some(r) => r.retry_after(failures - 1),
                        None => Duration::from_secs(5 << (failures - 1).min(6)),
                    };
                    tracing::error!(trigger, error = %format!("{e:#}"), retry_in_secs = wait.as_secs(), "reconcile failed");
                    wait
                }
            };
            if let Some(r) = reply.take() {
                let _ = r.send(result.map_err(|e| format!("{e:#}")));
            }
            self.count.send_modify(|n| *n += 1);
            if fenced {
                // Deposed mid-run: back to following, no backoff.
                failures = 0;
                continue;
            }
            answered_until = answered_until.max(started_ms);
            let deadline = tokio::time::Instant::now() + wait;
            let wake = loop {
                let mut leader = self.leader.clone();
                let w = tokio::select! {
                    _ = leader.wait_for(|l| *l != epoch), if self.cfg.replica.is_some() => Wake::Leadership,
                    _ = tokio::time::sleep_until(deadline) => Wake::Timer,
                    Some(t) = triggers.recv() => {
                        let mut all = vec![t];
                        while let Ok(more) = triggers.try_recv() {
                            all.push(more);
                        }
                        Wake::Trigger(all)
                    }
                    // A leader also answers failures that agents reported to a follower.
                    _ = poll.tick(), if self.cfg.replica.is_some() && epoch.is_some() => Wake::Poll,
                    Some(r) = requests.recv() => Wake::Request(r),
                    Some(c) = reloads.recv() => Wake::Reload(Box::new(c)),
                    _ = stop.wait_for(|v| *v) => Wake::Stop,
                };
                if !matches!(w, Wake::Poll) {
                    break w;
                }
                match self
                    .store
                    .auth_failures_since(answered_until, &agents::AUTH_FAILURES)
                    .await
                {
                    Ok(found) if !found.is_empty() => {
                        answered_until = found.iter().map(|f| f.2).max().unwrap_or(answered_until);
                        break Wake::Trigger(
                            found
                                .into_iter()
                                .map(|(id, host, _)| Trigger {
                                    host,
                                    reason: format!("attempt:{id}"),
                                    traceparent: String::new(),
                                })
                                .collect(),
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read reported failures"),
                }
            };
            match wake {
                Wake::Timer => trigger = "timer".into(),
                Wake::Trigger(all) => {
                    // The reconcile continues the trace of the first failure.
                    parent = all[0].traceparent.clone();
                    // One reconcile answers every failure queued so far.
                    let reasons: Vec<&str> = all.iter().map(|t| t.reason.as_str()).collect();
                    trigger = if reasons.len() > 3 {
                        format!("{} (+{} more)", reasons[..3].join(","), reasons.len() - 3)
                    } else {
                        reasons.join(",")
                    };
                }
                Wake::Request(r) => {
                    parent = r.traceparent;
                    trigger = r.trigger;
                    approve = r.approve;
                    reply = Some(r.reply);
                }
                Wake::Reload(c) => {
                    self.cfg = Arc::new(*c);
                    trigger = "config".into();
                }
                Wake::Leadership => trigger = "leadership".into(),
                Wake::Poll => unreachable!("polls end in a trigger or keep waiting"),
                Wake::Stop => break,
            }
        }
        tracing::info!("reconciler stopped");
    }

    /// One reconcile, then the follow-ups: purge commands, a fresh view,
    /// events.
    async fn once(
        &mut self,
        trigger: &str,
        approve: Option<Approval>,
        fence: Option<Fence>,
    ) -> anyhow::Result<Outcome> {
        let cfg = self.cfg.clone();
        let ad = Ad::connect(&cfg.ad)
            .await
            .with_context(|| format!("connecting to AD at {}", cfg.ad.url))?;
        let result = async {
            let observed = reconcile::observe(&cfg, &ad).await.map_err(ReconcileError::from)?;
            let decision = reconcile::decide(&cfg, &observed).map_err(ReconcileError::from)?;
            let opts = RunOptions {
                trigger: trigger.to_owned(),
                approve,
                progress: None,
                fence,
            };
            let outcome = reconcile::execute(&cfg, &ad, &self.store, &observed, &decision, opts).await?;
            Ok::<_, ReconcileError>((observed, outcome))
        }
        .await;
        let (observed, outcome) = match result {
            Ok(r) => r,
            Err(e) => {
                ad.unbind().await;
                return Err(e.into());
            }
        };
        self.after(&cfg, &ad, observed, &outcome).await;
        ad.unbind().await;
        Ok(outcome)
    }

    async fn after(&mut self, cfg: &Arc<Config>, ad: &Ad, observed: crate::plan::Observed, o: &Outcome) {
        // Changed hosts drop their SYSTEM tickets, so the next migration
        // asks the KDC again instead of waiting for the tickets to expire.
        if let (Some(hub), Some(plan)) = (&self.hub, o.plan_id) {
            for r in &o.applied {
                let reason = format!("delegation of {} changed by plan {plan}", r.host);
                let kind = pb::command::Kind::PurgeSystemTickets(pb::PurgeSystemTickets {});
                let span = tracing::info_span!("purge_command", host = %r.host, plan = plan);
                match hub.command(&r.host, kind, &reason).instrument(span).await {
                    Ok(id) => tracing::info!(host = %r.host, command = id, "asked the agent to purge SYSTEM tickets"),
                    Err(e) => tracing::info!(host = %r.host, "{e}; its tickets renew on expiry"),
                }
            }
        }
        for (id, applied) in [(o.plan_id, true), (o.pending_plan, false)] {
            let Some(id) = id else { continue };
            if let Ok(Some(p)) = self.store.get_plan(id).await {
                let pbp = api::plan_to_pb(&p);
                let e = if applied {
                    pb::fleet_event::Event::PlanApplied(pbp)
                } else {
                    pb::fleet_event::Event::PlanCreated(pbp)
                };
                let _ = self.events.send(event(e));
            }
        }
        if self.api.is_none() && self.events.receiver_count() == 0 {
            return;
        }
        // What the writes changed must be read again for the view.
        let observed = if o.applied.is_empty() { Some(observed) } else { None };
        let snapshot = match Snapshot::gather(cfg, ad, &self.store, observed).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not refresh the fleet view; the API keeps the previous one");
                return;
            }
        };
        let stale_ms = cfg.agents.as_ref().map_or(60_000, |a| a.stale_after.as_millis() as i64);
        let findings = diagnose::fleet_findings(&snapshot.facts(cfg, stale_ms, now_ms()));
        let now: BTreeMap<String, diagnose::Finding> = findings.iter().map(|f| (f.id.clone(), f.clone())).collect();
        let before: HashSet<&String> = self.findings.keys().collect();
        for (id, f) in &now {
            if !before.contains(id) {
                let _ = self
                    .events
                    .send(event(pb::fleet_event::Event::FindingRaised(api::finding_to_pb(f))));
            }
        }
        for (id, f) in &self.findings {
            if !now.contains_key(id) {
                let _ = self
                    .events
                    .send(event(pb::fleet_event::Event::FindingCleared(api::finding_to_pb(f))));
            }
        }
        self.findings = now;
        let m = crate::metrics::get();
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for f in &findings {
            *by_kind.entry(format!("{:?}", f.kind)).or_default() += 1;
        }
        m.set_gauge("kcdsync.findings", by_kind);
        let facts = snapshot.facts(cfg, stale_ms, now_ms());
        let (mut ready, mut not_ready) = (0u64, 0u64);
        for g in &cfg.groups {
            for c in facts.members(g) {
                let name = c.display_name();
                if findings
                    .iter()
                    .any(|f| f.severity == diagnose::Severity::Critical && f.hosts.contains(&name))
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
        if let Some(api) = &self.api {
            api.publish(View {
                cfg: cfg.clone(),
                snapshot,
                findings,
            });
        }
    }
}
