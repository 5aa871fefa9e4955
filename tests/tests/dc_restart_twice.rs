//! The DC restarts twice under `serve`, with nothing changing in between (a
//! quiet night of patching): the second, brief outage must cost seconds, not
//! whatever back-off the first one built up — `serve` watched a healthy DC in
//! between, so it starts its retries over. The DC "restarts" by cutting the
//! [`CutProxy`] between `serve` and the shared Samba; the timer and the full
//! resync are an hour away, so only the watch's return starts the repair.
//! One test per binary: the log capture is a process-global subscriber.

use std::time::{Duration, Instant};

use kcdsync_controller::config::Config;
use kcdsync_controller::runtime;
use kcdsync_tests::agents::eventually;
use kcdsync_tests::logs::Captured;
use kcdsync_tests::proxy::CutProxy;
use kcdsync_tests::*;

const HOUR: &str = "[reconcile]\ninterval_secs = 3600\nfull_resync_secs = 3600\n";
/// What watch.rs logs when a connection's registrations are in place.
const REGISTERED: &str = "change notifications registered";

/// Cuts the proxy for `down`, running `meanwhile` during the outage; restores it and returns
/// how long after the restore the watch was registered again.
async fn outage(
    proxy: &CutProxy,
    logs: &Captured,
    down: Duration,
    meanwhile: impl std::future::Future<Output = ()>,
) -> Duration {
    let registered = logs.count(REGISTERED);
    let cut_at = Instant::now();
    proxy.cut().await;
    meanwhile.await;
    tokio::time::sleep(down.saturating_sub(cut_at.elapsed())).await;
    assert_eq!(logs.count(REGISTERED), registered, "registered while the DC was down");
    proxy.restore();
    let restored_at = Instant::now();
    eventually(Duration::from_secs(90), "the watch registered again", || async move {
        logs.count(REGISTERED) > registered
    })
    .await;
    restored_at.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_brief_outage_is_recovered_in_seconds_whatever_the_first_one_cost() {
    let logs = Captured::install(
        "kcdsync-dc-restart-twice-test",
        "info,kcdsync_controller::ldap::watch=debug",
    );
    let logs = &logs;
    let lab = Lab::start();
    let names = ["DCT01", "DCT02"];
    let fleet = FleetSpec::new("t-dcrestart2", &names)
        .kerberos_only_mesh()
        .uac(WORKSTATION | T2A4D)
        .create(lab)
        .await
        .unwrap();
    let proxy = CutProxy::in_front_of(lab).await.unwrap();
    let text = proxy.reroute(lab, &fleet.config(lab, BindAs::Svc, "enforce", &names, HOUR));
    let (_dir, path) = write_config(&text);
    let running = runtime::start(Config::load(&path).unwrap()).await.unwrap();
    let store = &running.store;
    running.reconciled(1).await;
    eventually(Duration::from_secs(30), "the notifications registered", || async move {
        logs.count(REGISTERED) >= 1
    })
    .await;
    running.reconciled(2).await;

    // First restart: 8 s down, nothing changes. serve's reconnect attempts fail and back off
    // meanwhile; once back, nothing in AD changed, so nothing is written (and no notification
    // comes in to say the connection is healthy again).
    let first = outage(&proxy, logs, Duration::from_secs(8), async {}).await;
    running.reconciled(3).await;
    assert_eq!(store.audit_count().await.unwrap(), 0);
    // The DC then serves for a while, quietly.
    tokio::time::sleep(Duration::from_secs(10)).await;

    // Second restart, a brief one, and someone sets DCT01 back to "Kerberos only" meanwhile.
    let dct01 = fleet.host("DCT01");
    let second = outage(&proxy, logs, Duration::from_millis(1500), async {
        lab.set_uac(&dct01.dn, WORKSTATION).await.unwrap();
    })
    .await;
    eventually(
        Duration::from_secs(60),
        "the drift repaired and audited",
        || async move { store.audit_count().await.unwrap() == 1 },
    )
    .await;
    assert_eq!(lab.read_host(&dct01.dn).await.unwrap().uac, WORKSTATION | T2A4D);
    assert_eq!(store.audit(None, 1).await.unwrap()[0].trigger, "ad-change");
    println!(
        "restore -> re-registered: after 8 s down {} ms, then after 1.5 s down {} ms",
        first.as_millis(),
        second.as_millis()
    );
    // A 1.5 s outage costs the watch's first retries (0.5 s, then 1 s more), not the back-off
    // the first outage built up.
    assert!(
        second < Duration::from_secs(4),
        "re-registered {second:?} after a 1.5 s outage ended"
    );
    running.stop().await;
}
