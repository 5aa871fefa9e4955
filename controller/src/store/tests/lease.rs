//! The leader lease: taken, renewed, fenced, taken over.

use super::*;

/// The lease: one holder at a time; renewals keep the epoch; a takeover after expiry bumps
/// it, and the deposed holder's fence check fails from then on.
pub(super) async fn leases_are_taken_renewed_fenced_and_taken_over(db: &TestDb) {
    let s = db.open().await;
    assert_eq!(s.lease("leader").await.unwrap(), None);
    assert!(!s.holds_lease("leader", "a", 1).await.unwrap());
    assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), Some(1));
    // Renewal: same epoch. Another holder cannot take a live lease.
    assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), Some(1));
    assert_eq!(s.acquire_lease("leader", "b", "b:1", 60_000).await.unwrap(), None);
    let l = s.lease("leader").await.unwrap().unwrap();
    assert_eq!((l.holder.as_str(), l.address.as_str(), l.epoch), ("a", "a:1", 1));
    assert!(l.expires_at_ms > now_ms());
    assert!(s.holds_lease("leader", "a", 1).await.unwrap());
    assert!(!s.holds_lease("leader", "a", 2).await.unwrap());
    assert!(!s.holds_lease("leader", "b", 1).await.unwrap());
    // Another lease name is independent.
    assert_eq!(s.acquire_lease("other", "b", "b:1", 60_000).await.unwrap(), Some(1));
    // Expiry: a short lease lapses, and b takes it over at epoch 2.
    assert_eq!(s.acquire_lease("leader", "a", "a:1", 1).await.unwrap(), Some(1));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!s.holds_lease("leader", "a", 1).await.unwrap());
    assert_eq!(s.acquire_lease("leader", "b", "b:1", 60_000).await.unwrap(), Some(2));
    assert!(!s.holds_lease("leader", "a", 1).await.unwrap());
    assert!(s.holds_lease("leader", "b", 2).await.unwrap());
    assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), None);
    // Release by a non-holder does nothing; by the holder, the next taker gets epoch 3.
    s.release_lease("leader", "a").await.unwrap();
    assert!(s.holds_lease("leader", "b", 2).await.unwrap());
    s.release_lease("leader", "b").await.unwrap();
    assert!(!s.holds_lease("leader", "b", 2).await.unwrap());
    assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), Some(3));
    // Two contenders at once on an expired lease: exactly one wins.
    s.release_lease("leader", "a").await.unwrap();
    let (x, y) = tokio::join!(
        s.acquire_lease("leader", "x", "x:1", 60_000),
        s.acquire_lease("leader", "y", "y:1", 60_000)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x.is_some() != y.is_some(), "{x:?} {y:?}");
    assert_eq!(x.or(y), Some(4));
    s.close().await;
}
