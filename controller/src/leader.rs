//! Leadership among replicas, in one handle: whether this replica may write
//! AD now, the fence its writes carry, and where the leader is (for callers a
//! follower turns away). Without `[replica]` a controller always leads, at
//! epoch 0 and unfenced.
//!
//! The lease loop takes and renews the lease row every third of its TTL; a
//! renewal that fails, times out or finds another holder steps down at once.

use std::time::Duration;

use tokio::sync::watch;

use crate::config::ReplicaConfig;
use crate::reconcile::Fence;
use crate::store::{Store, now_ms};

/// The name of the lease whose holder is the one AD writer among replicas.
pub const LEADER_LEASE: &str = "reconciler";

#[derive(Clone)]
pub struct Leadership {
    /// This replica's id, with `[replica]`.
    replica: Option<String>,
    /// The epoch of the lease held; `None` as a follower.
    epoch: watch::Receiver<Option<i64>>,
    /// A single controller's epoch never changes; its sender is kept so the
    /// channel stays open for whoever waits on it.
    _fixed: Option<std::sync::Arc<watch::Sender<Option<i64>>>>,
    store: Store,
}

impl Leadership {
    /// A single controller: always the writer, at epoch 0.
    pub fn single(store: Store) -> Leadership {
        let (tx, epoch) = watch::channel(Some(0));
        Leadership {
            replica: None,
            epoch,
            _fixed: Some(std::sync::Arc::new(tx)),
            store,
        }
    }

    /// A replica; `epoch` is published by [`lease_loop`].
    pub fn replica(store: Store, id: String, epoch: watch::Receiver<Option<i64>>) -> Leadership {
        Leadership {
            replica: Some(id),
            epoch,
            _fixed: None,
            store,
        }
    }

    pub fn is_replica(&self) -> bool {
        self.replica.is_some()
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

    /// The fence a write at `epoch` carries (none for a single controller).
    pub fn fence(&self, epoch: Option<i64>) -> Option<Fence> {
        Some(Fence {
            lease: LEADER_LEASE.into(),
            holder: self.replica.clone()?,
            epoch: epoch?,
        })
    }

    /// Where the leader's API is, as far as the store knows.
    pub async fn leader_address(&self) -> Option<String> {
        let lease = self.store.lease(LEADER_LEASE).await.ok().flatten()?;
        (Some(&lease.holder) != self.replica.as_ref() && lease.expires_at_ms >= now_ms()).then_some(lease.address)
    }
}

/// Takes and renews the leader lease, publishing the epoch held (`None` as a
/// follower). On a clean stop a held lease is released.
pub async fn lease_loop(
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
        if *leader.borrow() != epoch {
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
