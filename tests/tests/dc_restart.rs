//! The DC restarted under `serve`: it reconnects, re-registers its change
//! notifications, and repairs the drift made while it was disconnected.
//!
//! The shared Samba cannot be restarted (other tests use it), so `serve`
//! reaches the DC through a [`CutProxy`]: cutting it is, for this controller,
//! the DC going away (every connection closed, new ones turned away). The
//! drift is written straight to the DC meanwhile, so no notification can reach
//! `serve`. The interval timer and the full resync are an hour away: only the
//! watch coming back can start the repair. One test per binary: the log
//! capture is a process-global tracing subscriber.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kcdsync_controller::config::Config;
use kcdsync_controller::runtime;
use kcdsync_tests::agents::eventually;
use kcdsync_tests::logs::Captured;
use kcdsync_tests::proxy::CutProxy;
use kcdsync_tests::*;

const HOUR: &str = "[reconcile]\ninterval_secs = 3600\nfull_resync_secs = 3600\n";
/// What watch.rs logs when a connection's registrations are in place, and when one is lost.
const REGISTERED: &str = "change notifications registered";
const INTERRUPTED: &str = "change notifications interrupted; reconnecting";

/// serve's log lines, as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_dc_comes_back_serve_reconnects_reregisters_and_repairs_what_it_missed() {
    let logs = Captured::install("kcdsync-dc-restart-test", "info,kcdsync_controller::ldap::watch=debug");
    let lab = Lab::start();
    let names = ["DCR01", "DCR02", "DCR03"];
    let fleet = FleetSpec::new("t-dcrestart", &names)
        .kerberos_only_mesh()
        .uac(WORKSTATION | T2A4D)
        .create(lab)
        .await
        .unwrap();

    // serve talks to the DC only through the proxy.
    let proxy = CutProxy::in_front_of(lab).await.unwrap();
    let text = proxy.reroute(lab, &fleet.config(lab, BindAs::Svc, "enforce", &names, HOUR));
    let (_dir, path) = write_config(&text);
    let running = runtime::start(Config::load(&path).unwrap()).await.unwrap();
    // The checks below borrow these from `eventually`'s closures.
    let (store, logs) = (&running.store, &logs);

    // Converged and watching: the startup run writes nothing, the watch registers after it, and
    // its "registered" wakes one delta read (run 2) — let that finish before the DC goes away.
    running.reconciled(1).await;
    assert_eq!(store.audit_count().await.unwrap(), 0, "a healthy fleet needs no write");
    eventually(Duration::from_secs(30), "the notifications registered", || async move {
        logs.count(REGISTERED) >= 1
    })
    .await;
    running.reconciled(2).await;
    assert_eq!(store.audit_count().await.unwrap(), 0);

    // The DC goes down for serve. Its notification connection must notice at once.
    proxy.cut().await;
    let cut_at = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the watch noticed the lost connection",
        || async move { logs.count(INTERRUPTED) >= 1 },
    )
    .await;

    // While serve cannot see it, someone sets DCR01 back to "Kerberos only" and deletes one of
    // DCR02's delegation entries.
    let (dcr01, dcr02, dcr03) = (fleet.host("DCR01"), fleet.host("DCR02"), fleet.host("DCR03"));
    lab.set_uac(&dcr01.dn, WORKSTATION).await.unwrap();
    let entries: HashSet<String> = lab.read_host(&dcr02.dn).await.unwrap().delegate.into_iter().collect();
    let fewer: Vec<String> = entries.iter().skip(1).cloned().collect();
    lab.set_delegation(&dcr02.dn, &fewer).await.unwrap();

    // A few seconds down: serve's reconnect attempts fail meanwhile, and nothing gets repaired.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(cut_at.elapsed())).await;
    assert_eq!(
        store.audit_count().await.unwrap(),
        0,
        "nothing can be repaired while the DC is down"
    );
    assert_eq!(lab.read_host(&dcr01.dn).await.unwrap().uac, WORKSTATION);
    let registered_before = logs.count(REGISTERED);

    // The DC is back: serve reconnects, re-registers, and the delta read finds both changes.
    proxy.restore();
    let restored_at = Instant::now();
    eventually(
        Duration::from_secs(60),
        "both drifts repaired and audited",
        || async move { store.audit_count().await.unwrap() == 2 },
    )
    .await;
    let repair_ms = restored_at.elapsed().as_millis();

    // Verified: AD itself says so (read as Administrator, straight from the DC).
    assert_eq!(lab.read_host(&dcr01.dn).await.unwrap().uac, WORKSTATION | T2A4D);
    let now: HashSet<String> = lab.read_host(&dcr02.dn).await.unwrap().delegate.into_iter().collect();
    assert_eq!(now, entries, "the deleted entry is back, nothing else changed");
    // Audited, and started by AD's news, not by the timer.
    let audit = store.audit(None, 10).await.unwrap();
    let hosts: HashSet<&str> = audit.iter().map(|a| a.host.as_str()).collect();
    assert_eq!(hosts, HashSet::from([dcr01.fqdn.as_str(), dcr02.fqdn.as_str()]));
    for a in &audit {
        assert_eq!(a.trigger, "ad-change", "{}: the watch's return started the run", a.host);
    }
    assert!(
        logs.count(REGISTERED) > registered_before,
        "the watch re-registered after the DC came back:\n{}",
        logs.text()
    );

    // The notifications flow again: a change made now is repaired as it happens.
    let t = Instant::now();
    lab.set_uac(&dcr03.dn, WORKSTATION).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "a new drift repaired after the restart",
        || async move { store.audit_count().await.unwrap() == 3 },
    )
    .await;
    let next_ms = t.elapsed().as_millis();
    assert_eq!(lab.read_host(&dcr03.dn).await.unwrap().uac, WORKSTATION | T2A4D);
    assert_eq!(store.audit(None, 1).await.unwrap()[0].trigger, "ad-change");

    println!(
        "DC down {} ms; restore -> both drifts verified + audited {repair_ms} ms; next drift after the restart repaired in {next_ms} ms; watch interruptions logged: {}",
        restored_at.duration_since(cut_at).as_millis(),
        logs.count(INTERRUPTED)
    );
    running.stop().await;
}
