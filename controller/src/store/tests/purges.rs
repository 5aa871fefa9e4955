//! Purges an agent did not receive: recorded once per host, cleared only by the answer to the
//! purge that was sent.

use super::*;

pub(super) async fn an_undelivered_purge_waits_per_host_until_its_answer(db: &TestDb) {
    let s = db.open().await;
    assert_eq!(s.undelivered_purge("hv01.lab.test").await.unwrap(), None);
    s.record_undelivered_purge("hv01.lab.test", "plan 1").await.unwrap();
    let first = s.undelivered_purge("hv01.lab.test").await.unwrap().expect("recorded");
    assert_eq!(first.reason, "plan 1");
    assert_eq!(s.undelivered_purge("hv02.lab.test").await.unwrap(), None, "per host");
    // A newer purge replaces the older one: an answer to the older one leaves it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.record_undelivered_purge("hv01.lab.test", "plan 2").await.unwrap();
    let second = s
        .undelivered_purge("hv01.lab.test")
        .await
        .unwrap()
        .expect("still there");
    assert_eq!(second.reason, "plan 2");
    assert!(
        !s.clear_undelivered_purge("hv01.lab.test", first.recorded_at_ms)
            .await
            .unwrap()
    );
    assert!(s.undelivered_purge("hv01.lab.test").await.unwrap().is_some());
    assert!(
        s.clear_undelivered_purge("hv01.lab.test", second.recorded_at_ms)
            .await
            .unwrap()
    );
    assert_eq!(s.undelivered_purge("hv01.lab.test").await.unwrap(), None);
}
