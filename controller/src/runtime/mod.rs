//! `serve`: the long-running controller, assembled. The binary and the
//! end-to-end tests both start it from here.
//!
//! - `reconciler`: the loop, the only writer of AD (wait → run → effects);
//! - `scheduler`: what wakes it, with a typed reason;
//! - `policy`: what follows a run (the interval, a back-off, or following);
//! - `observer`: what a run plans from (a full observe, or the last one patched by a
//!   uSNChanged delta read) and the change-notification watch that wakes it;
//! - `connection`: the LDAP connection kept between runs;
//! - `failover`: which DC the runs write to (`[ad] url`, else the next `[[ad.dc]]`);
//! - `queue`: the per-host rate limit (a host written again and again is held back);
//! - `effects`: purge commands, plan and finding events, the published view;
//! - `replication`: the per-DC verify, beside the loop (never in it).
//!
//! Leadership among replicas is `crate::leader`; the listeners are `crate::grpc`.

mod connection;
mod effects;
pub mod failover;
mod handover;
mod observer;
pub mod policy;
mod queue;
mod reconciler;
pub mod replication;
mod scheduler;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use kcdsync_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc, watch};

pub use scheduler::Reason;

/// Connects as `serve`'s first run does: `[ad] url`, else the next `[[ad.dc]]` in config order
/// that answers as the DC it names (one that cannot be reached, or answers as another DC, is
/// passed over, saying why; one that answers but refuses the bind ends the search). For the
/// one-shot CLI: the connection and the DC's dNSHostName, which its audit rows name.
pub async fn connect_writer(
    cfg: &crate::config::AdConfig,
) -> Result<(crate::ldap::Ad, String), crate::ldap::LdapError> {
    let w = connection::Kept::default().take(cfg).await?;
    Ok((w.ad, w.dc))
}

use crate::config::Config;
use crate::grpc::agents::{self, AgentHub, HubOptions, Trigger};
use crate::grpc::convert::event;
use crate::grpc::fleet::{self, ApiState, FleetApi, ReconcileRequest};
use crate::grpc::tls::{self, ServerTls};
use crate::leader::{self, Leadership, Writer};
use crate::store::Store;
use effects::Effects;
use reconciler::Reconciler;
use scheduler::Scheduler;

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
    pub leadership: Leadership,
    /// The listeners' TLS, swapped by [`Running::reload`].
    agents_tls: Option<Arc<ServerTls>>,
    api_tls: Option<Arc<ServerTls>>,
    reload: mpsc::Sender<Config>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    lease_task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// What SIGHUP does with the freshly loaded config: the listeners' TLS
    /// files (certificate, key, client CA) apply to the next connection, the
    /// API tokens and client names to the next call, the agents' issuing CA and
    /// certificate lifetime to the next renewal, and the rest (groups,
    /// modes, guard, AD) from the next reconcile on. All or nothing: when a
    /// TLS file cannot be loaded, nothing changes. Listeners keep their
    /// addresses; adding or removing `[agents]` / `[api]` needs a restart.
    pub async fn reload(&self, cfg: Config) -> anyhow::Result<()> {
        let agents = match (&self.agents_tls, &cfg.agents) {
            (Some(_), Some(a)) => Some(tls::for_agents(a).context("reloading the agent endpoint's TLS files")?),
            _ => None,
        };
        let api = match (&self.api_tls, &cfg.api) {
            (Some(_), Some(a)) => Some(tls::for_api(a).context("reloading the API's TLS files")?),
            _ => None,
        };
        if let (Some(now), Some(next)) = (&self.agents_tls, &agents) {
            now.replace(next);
        }
        if let (Some(now), Some(next)) = (&self.api_tls, &api) {
            now.replace(next);
        }
        if let (Some(state), Some(a)) = (&self.api, &cfg.api) {
            state.reload_callers(a);
        }
        if let (Some(hub), Some(a)) = (&self.hub, &cfg.agents) {
            hub.set_renewal(renewal_policy(a));
            hub.set_enrollment(a.enroll.clone());
        }
        if self.agents_tls.is_some() != cfg.agents.is_some() || self.api_tls.is_some() != cfg.api.is_some() {
            tracing::warn!("[agents] or [api] was added or removed: that takes a restart");
        }
        let _ = self.reload.send(cfg).await;
        Ok(())
    }

    /// Waits until `n` reconciles have finished in total.
    pub async fn reconciled(&self, n: u64) {
        let mut rx = self.reconciles.clone();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Waits until this process holds the writer lease (at once for a single controller whose
    /// store has no other writer); the epoch.
    pub async fn leading(&self) -> i64 {
        let mut rx = self.leadership.watch();
        let e = rx.wait_for(|e| e.is_some()).await.map(|e| *e);
        e.ok().flatten().unwrap_or(0)
    }

    pub fn is_leader(&self) -> bool {
        self.leadership.is_leader()
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

/// Resolves when `stop` turns true.
async fn on_stop(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// How the agent endpoint renews certificates, as `[agents]` says (at start and on SIGHUP).
fn renewal_policy(a: &crate::config::AgentsConfig) -> crate::renewal::RenewalPolicy {
    crate::renewal::RenewalPolicy {
        ca: a.issuing_ca.clone(),
        lifetime: a.cert_lifetime,
        ..Default::default()
    }
}

/// Binds the agent endpoint and starts serving it.
async fn start_agents(
    cfg: &Config,
    store: &Store,
    events: &broadcast::Sender<pb::FleetEvent>,
    triggers: mpsc::Sender<Trigger>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(Option<AgentHub>, Option<SocketAddr>, Option<Arc<ServerTls>>)> {
    let Some(a) = &cfg.agents else {
        return Ok((None, None, None));
    };
    let tls = tls::for_agents(a).context("loading the agent endpoint's TLS files")?;
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
            renewal: renewal_policy(a),
            enroll: a.enroll.clone(),
            ..Default::default()
        },
        Some(triggers),
    );
    let (h, shutdown, served) = (hub.clone(), on_stop(stop.clone()), tls.clone());
    tokio::spawn(async move {
        if let Err(e) = agents::serve(listener, served, h, shutdown).await {
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
    Ok((Some(hub), Some(addr), Some(tls)))
}

/// Binds the fleet API and starts serving it.
async fn start_api(
    cfg: &Arc<Config>,
    state: impl FnOnce(&crate::config::ApiConfig) -> ApiState,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(Option<Arc<ApiState>>, Option<SocketAddr>, Option<Arc<ServerTls>>)> {
    let Some(a) = &cfg.api else {
        return Ok((None, None, None));
    };
    let tls = tls::for_api(a).context("loading the API's TLS files")?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listening for the fleet API on {}", a.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(state(a));
    let api = FleetApi { state: state.clone() };
    let (shutdown, served) = (on_stop(stop.clone()), tls.clone());
    tokio::spawn(async move {
        if let Err(e) = fleet::serve(listener, served, api, shutdown).await {
            tracing::error!(error = %e, "the fleet API stopped");
        }
    });
    tracing::info!(listen = %addr, "serving the fleet API");
    Ok((Some(state), Some(addr), Some(tls)))
}

/// Binds the listeners (port 0 is fine) and starts the loop.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let store = Store::open(&cfg.store_url).await?;
    let (events, _) = broadcast::channel(4096);
    let (stop, stop_rx) = watch::channel(false);
    let (trigger_tx, triggers) = mpsc::channel::<Trigger>(1024);
    let (hub, agents_addr, agents_tls) = start_agents(&cfg, &store, &events, trigger_tx, &stop_rx).await?;

    let (req_tx, requests) = mpsc::channel::<ReconcileRequest>(64);
    let cfg = Arc::new(cfg);
    // Every serve writes AD under the lease: a replica competes for it; a single controller
    // holds it too, so a one-shot CLI apply on the same store is refused, not raced.
    let mut writer = match &cfg.replica {
        Some(r) => Writer::replica(r),
        None => Writer::serve(&cfg, None),
    };
    let (leader_tx, leader_rx) = watch::channel(None);
    let leadership = Leadership::lease(store.clone(), writer.holder.clone(), cfg.replica.is_some(), leader_rx);
    let (api_state, api_addr, api_tls) = start_api(
        &cfg,
        |a| {
            ApiState::new(
                cfg.clone(),
                store.clone(),
                hub.clone(),
                req_tx,
                events.clone(),
                a,
                leadership.clone(),
            )
        },
        &stop_rx,
    )
    .await?;

    // Started once the API is bound: a default advertise address of port 0 names the real port.
    match (&cfg.replica, &cfg.api, api_addr) {
        (Some(r), Some(a), Some(bound)) if r.advertise == a.listen.to_string() => writer.address = bound.to_string(),
        (None, _, Some(bound)) => writer.address = bound.to_string(),
        _ => {}
    }
    if cfg.replica.is_none() {
        // A single controller's first run writes at once, unless a CLI apply holds the lease.
        let ttl_ms = writer.ttl.as_millis() as i64;
        match store
            .acquire_lease(leader::LEADER_LEASE, &writer.holder, &writer.address, ttl_ms)
            .await
        {
            Ok(Some(e)) => {
                tracing::info!(holder = %writer.holder, epoch = e, "holding the AD write lease");
                leader_tx.send_replace(Some(e));
            }
            Ok(None) => tracing::warn!("another writer holds the AD write lease; waiting for it"),
            Err(e) => tracing::warn!(error = %e, "cannot take the AD write lease; retrying"),
        }
    }
    let lease_task = Some(tokio::spawn(leader::lease_loop(
        store.clone(),
        writer,
        leader_tx,
        stop_rx.clone(),
    )));
    let (reload, reloads) = mpsc::channel(4);
    let (count, reconciles) = watch::channel(0u64);
    // Change notifications wake the loop; a full queue already holds a wake-up.
    let (notice_tx, notices) = mpsc::channel(256);
    let debounce = cfg.watch.failure_debounce;
    let mut effects = Effects::new(store.clone(), hub.clone(), api_state.clone(), events.clone());
    let audited = effects.start_verify(cfg.clone());
    let reconciler = Reconciler {
        count,
        audited,
        leadership: leadership.clone(),
        cfg,
        effects,
        observer: observer::Observer::new(notice_tx),
        ldap: connection::Kept::default(),
        queue: queue::HostQueue::default(),
        due: None,
    };
    let scheduler = Scheduler::new(triggers, requests, reloads, stop_rx, store.clone(), notices, debounce);
    let task = tokio::spawn(reconciler.run(scheduler));
    Ok(Running {
        agents_addr,
        api_addr,
        hub,
        store,
        api: api_state,
        events,
        reconciles,
        leadership,
        agents_tls,
        api_tls,
        reload,
        stop,
        task,
        lease_task,
    })
}
