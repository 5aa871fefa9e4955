//! The AD writer lease, in one handle: whether this process may write AD now, the fence its
//! writes carry, and where the writer is (for callers a follower turns away).
//!
//! Every writer holds the lease `reconciler` while it writes: each replica with `[replica]`
//! (one of them wins), a single `serve` without it (so a second writer on the same store is
//! refused, not raced), and the one-shot CLI `apply` for its run ([`hold_for_run`]).
//!
//! The lease loop takes and renews the lease row every third of its TTL; a
//! renewal that fails, times out or finds another holder steps down at once.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, ReplicaConfig, hostname};
use crate::reconcile::Fence;
use crate::report::format_ms;
use crate::store::{Lease, Store, StoreError, now_ms};

/// The name of the lease whose holder is the one AD writer.
pub const LEADER_LEASE: &str = "reconciler";

/// Who takes the writer lease, where its API answers, and for how long.
#[derive(Debug, Clone)]
pub struct Writer {
    pub holder: String,
    pub address: String,
    pub ttl: Duration,
}

impl Writer {
    pub fn replica(r: &ReplicaConfig) -> Writer {
        Writer {
            holder: r.id.clone(),
            address: r.advertise.clone(),
            ttl: r.lease_ttl,
        }
    }

    /// A single `serve` (no `[replica]`): this process, named so the CLI can say who it is.
    pub fn serve(cfg: &Config, api: Option<SocketAddr>) -> Writer {
        Writer {
            holder: format!("serve:{}:{}", hostname(), std::process::id()),
            address: api.map_or_else(|| "(no API)".to_owned(), |a| a.to_string()),
            ttl: cfg.lease_ttl(),
        }
    }

    /// The one-shot CLI `apply`.
    pub fn cli(cfg: &Config) -> Writer {
        Writer {
            holder: format!("cli:{}:{}", hostname(), std::process::id()),
            address: "(no API: a one-shot CLI apply)".to_owned(),
            ttl: cfg.lease_ttl(),
        }
    }
}

/// Why a one-shot run may not write.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("another writer holds the AD write lease: {}; {}", holder(.lease), hint(.lease, .approve))]
    Held { lease: Lease, approve: Option<i64> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who holds `lease`, where, until when — as an operator needs it.
pub fn holder(lease: &Lease) -> String {
    let who = if lease.holder.starts_with("cli:") {
        format!("the one-shot CLI apply `{}`", lease.holder)
    } else {
        format!("serve `{}` at {}", lease.holder, lease.address)
    };
    format!("{who} until {} (epoch {})", format_ms(lease.expires_at_ms), lease.epoch)
}

fn hint(lease: &Lease, approve: &Option<i64>) -> String {
    match approve {
        _ if lease.holder.starts_with("cli:") => "wait for it to finish, then run this again".to_owned(),
        Some(id) => format!("stop it, or approve the plan through it: kcdctl approve {id}"),
        None => "stop it, or let it reconcile: kcdctl reconcile".to_owned(),
    }
}

/// The writer lease held for one run of the one-shot CLI: renewed while the run lasts, released
/// by [`HeldForRun::release`] (or expiring after its TTL if the process dies).
pub struct HeldForRun {
    pub fence: Fence,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Takes the writer lease for one run as `w`, or says who holds it (`approve`: the plan the
/// run was to approve, for the hint).
pub async fn hold_for_run(store: &Store, w: Writer, approve: Option<i64>) -> Result<HeldForRun, LeaseError> {
    let ttl_ms = w.ttl.as_millis() as i64;
    let epoch = match store.acquire_lease(LEADER_LEASE, &w.holder, &w.address, ttl_ms).await? {
        Some(e) => e,
        // Refused: say who holds it (if it lapsed in between, the next run gets it).
        None => {
            let lease = store.lease(LEADER_LEASE).await?.unwrap_or_else(|| Lease {
                name: LEADER_LEASE.into(),
                holder: "(unknown)".into(),
                address: "(unknown)".into(),
                epoch: 0,
                expires_at_ms: now_ms(),
            });
            return Err(LeaseError::Held { lease, approve });
        }
    };
    let fence = Fence {
        lease: LEADER_LEASE.into(),
        holder: w.holder.clone(),
        epoch,
    };
    let (tx, _) = watch::channel(Some(epoch));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(lease_loop(store.clone(), w, tx, stop_rx));
    Ok(HeldForRun { fence, stop, task })
}

impl HeldForRun {
    /// Stops renewing and gives the lease up, so `serve` (or the next run) takes it at once.
    pub async fn release(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[derive(Clone)]
pub struct Leadership {
    /// The lease holder this process writes as; `None`: an unfenced writer (see [`single`]).
    ///
    /// [`single`]: Leadership::single
    holder: Option<String>,
    /// Several replicas share the store (`[replica]`).
    replica: bool,
    /// The epoch of the lease held; `None` while another holds it.
    epoch: watch::Receiver<Option<i64>>,
    /// An unfenced writer's epoch never changes; its sender is kept so the
    /// channel stays open for whoever waits on it.
    _fixed: Option<std::sync::Arc<watch::Sender<Option<i64>>>>,
    store: Store,
}

impl Leadership {
    /// Always the writer, at epoch 0 and unfenced: for tests and tools that own their store.
    /// `serve` always writes under the lease ([`Leadership::lease`]).
    pub fn single(store: Store) -> Leadership {
        let (tx, epoch) = watch::channel(Some(0));
        Leadership {
            holder: None,
            replica: false,
            epoch,
            _fixed: Some(std::sync::Arc::new(tx)),
            store,
        }
    }

    /// A writer under the lease as `holder` (a replica when `replica`); `epoch` is published by
    /// [`lease_loop`].
    pub fn lease(store: Store, holder: String, replica: bool, epoch: watch::Receiver<Option<i64>>) -> Leadership {
        Leadership {
            holder: Some(holder),
            replica,
            epoch,
            _fixed: None,
            store,
        }
    }

    pub fn is_replica(&self) -> bool {
        self.replica
    }

    pub fn is_leader(&self) -> bool {
        self.epoch.borrow().is_some()
    }

    pub fn epoch(&self) -> Option<i64> {
        *self.epoch.borrow()
    }

    /// Follows the epoch as it changes.
    pub fn watch(&self) -> watch::Receiver<Option<i64>> {
        self.epoch.clone()
    }

    /// The fence a write at `epoch` carries (none for an unfenced writer).
    pub fn fence(&self, epoch: Option<i64>) -> Option<Fence> {
        Some(Fence {
            lease: LEADER_LEASE.into(),
            holder: self.holder.clone()?,
            epoch: epoch?,
        })
    }

    /// The live lease of another writer, as far as the store knows.
    pub async fn other_writer(&self) -> Option<Lease> {
        let lease = self.store.lease(LEADER_LEASE).await.ok().flatten()?;
        (Some(&lease.holder) != self.holder.as_ref() && lease.expires_at_ms >= now_ms()).then_some(lease)
    }

    /// Where the leader's API is, as far as the store knows.
    pub async fn leader_address(&self) -> Option<String> {
        self.other_writer().await.map(|l| l.address)
    }
}

/// Takes and renews the writer lease as `w`, publishing the epoch held (`None` while another
/// holds it). On a clean stop a held lease is released.
pub async fn lease_loop(store: Store, w: Writer, leader: watch::Sender<Option<i64>>, mut stop: watch::Receiver<bool>) {
    let ttl_ms = w.ttl.as_millis() as i64;
    let every = (w.ttl / 3).max(Duration::from_millis(100));
    loop {
        let got = tokio::time::timeout(every, store.acquire_lease(LEADER_LEASE, &w.holder, &w.address, ttl_ms)).await;
        let epoch = match got {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot renew the writer lease");
                None
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = every.as_millis() as u64,
                    "renewing the writer lease timed out"
                );
                None
            }
        };
        if *leader.borrow() != epoch {
            match epoch {
                Some(e) => tracing::info!(holder = %w.holder, epoch = e, "leading: this process writes AD"),
                None => tracing::warn!(holder = %w.holder, "following: another writer holds the AD write lease"),
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
        if let Err(e) = store.release_lease(LEADER_LEASE, &w.holder).await {
            tracing::warn!(error = %e, "could not release the writer lease; it expires by itself");
        }
    }
}
