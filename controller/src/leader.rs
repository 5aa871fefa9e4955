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
use tokio::time::Instant;

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

/// How one attempt to renew the writer lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// The store says this process holds it, at this epoch.
    Held(i64),
    /// The store says another writer holds it.
    Taken,
    /// No answer: the store failed or was slower than a third of the TTL.
    Failed,
}

/// What this process holds after a renewal attempt sent at `sent`: the epoch it publishes, and
/// until when the lease is surely its own by this process's clock (`sent` + TTL: the store
/// dates the lease no earlier than that). A failed renewal keeps a lease that has not lapsed:
/// stepping down at the first slow answer would stop the work for nothing — what protects AD
/// is the fence every write checks in the store, not this flag.
fn after_renewal(
    renewal: Renewal,
    held: Option<(i64, Instant)>,
    sent: Instant,
    now: Instant,
    ttl: Duration,
) -> Option<(i64, Instant)> {
    match renewal {
        Renewal::Held(e) => Some((e, sent + ttl)),
        Renewal::Taken => None,
        Renewal::Failed => held.filter(|(_, until)| now < *until),
    }
}

/// Takes and renews the writer lease as `w`, publishing the epoch held (`None` while another
/// holds it). On a clean stop a held lease is released.
pub async fn lease_loop(store: Store, w: Writer, leader: watch::Sender<Option<i64>>, mut stop: watch::Receiver<bool>) {
    let ttl_ms = w.ttl.as_millis() as i64;
    let every = (w.ttl / 3).max(Duration::from_millis(100));
    let mut held: Option<(i64, Instant)> = None;
    loop {
        let sent = Instant::now();
        let got = tokio::time::timeout(every, store.acquire_lease(LEADER_LEASE, &w.holder, &w.address, ttl_ms)).await;
        let renewal = match got {
            Ok(Ok(Some(e))) => Renewal::Held(e),
            Ok(Ok(None)) => Renewal::Taken,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot renew the writer lease");
                Renewal::Failed
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = every.as_millis() as u64,
                    "renewing the writer lease timed out"
                );
                Renewal::Failed
            }
        };
        held = after_renewal(renewal, held, sent, Instant::now(), w.ttl);
        let epoch = held.map(|(e, _)| e);
        if *leader.borrow() != epoch {
            match epoch {
                Some(e) => tracing::info!(holder = %w.holder, epoch = e, "leading: this process writes AD"),
                None => {
                    tracing::warn!(holder = %w.holder, "following: another writer holds the AD write lease, or this one's lapsed")
                }
            }
            leader.send_replace(epoch);
        }
        // Kept through a failed renewal: try again soon, so the flag outlives the lease by at
        // most one more attempt.
        let pause = if renewal == Renewal::Failed && held.is_some() {
            every / 4
        } else {
            every
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(15);

    #[test]
    fn a_renewal_the_store_grants_holds_the_lease_for_a_ttl_from_when_it_was_sent() {
        let sent = Instant::now();
        let now = sent + Duration::from_secs(2);
        assert_eq!(
            after_renewal(Renewal::Held(7), None, sent, now, TTL),
            Some((7, sent + TTL))
        );
    }

    #[test]
    fn one_slow_or_failed_renewal_keeps_a_lease_that_has_not_lapsed() {
        let t0 = Instant::now();
        let held = after_renewal(Renewal::Held(7), None, t0, t0, TTL);
        // The next renewal, sent a third of the TTL later, times out after another third.
        let slow = after_renewal(Renewal::Failed, held, t0 + TTL / 3, t0 + TTL * 2 / 3, TTL);
        assert_eq!(
            slow,
            Some((7, t0 + TTL)),
            "still leading, the lease still ends at t0 + TTL"
        );
        // A second failure, past the lease's end: step down.
        let lapsed = after_renewal(Renewal::Failed, slow, t0 + TTL * 2 / 3, t0 + TTL, TTL);
        assert_eq!(lapsed, None);
        // Renewed after the hiccup: a fresh TTL from that renewal.
        let again = after_renewal(Renewal::Held(7), slow, t0 + TTL * 2 / 3, t0 + TTL * 2 / 3, TTL);
        assert_eq!(again, Some((7, t0 + TTL * 2 / 3 + TTL)));
    }

    #[test]
    fn another_writer_holding_the_lease_means_stepping_down_at_once() {
        let t0 = Instant::now();
        let held = after_renewal(Renewal::Held(7), None, t0, t0, TTL);
        assert_eq!(
            after_renewal(Renewal::Taken, held, t0 + TTL / 3, t0 + TTL / 3, TTL),
            None
        );
        // And a follower whose renewal fails stays a follower.
        assert_eq!(after_renewal(Renewal::Failed, None, t0, t0, TTL), None);
    }
}
