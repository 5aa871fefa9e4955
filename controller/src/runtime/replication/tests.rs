//! The per-DC verify's orchestration against a fake DC (the lab test, tests/tests/replication.rs,
//! proves it on two real DCs and their KDCs): a change is reported when the other DC shows it,
//! with backoff and bounded reads; a DC behind past the deadline, or unreachable, is overdue
//! until it catches up; the recorder stores it and raises and clears the finding.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::discover::reachable;
use super::record::Recorder;
use super::worker::{Connect, DcRead, Limits, Worker};
use super::*;
use crate::config::DcConfig;
use crate::ldap::LdapError;
use crate::model::Computer;
use crate::store::HeldPurge;

const DN: &str = "CN=HV01,OU=Hyper-V,DC=lab,DC=test";
const T2A4D: u32 = 0x1000000;

/// A DC whose objects change at given times (the tokio clock), counting its reads.
#[derive(Default)]
struct FakeDc {
    /// dn -> (from when, uac) in time order: the last one not in the future is what it shows.
    timeline: Mutex<HashMap<String, Vec<(Instant, u32)>>>,
    reads: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl FakeDc {
    fn shows(&self, dn: &str, uac: u32, from: Instant) {
        self.timeline
            .lock()
            .unwrap()
            .entry(dn.into())
            .or_default()
            .push((from, uac));
    }
}

impl DcRead for FakeDc {
    fn read<'a>(&'a self, dn: &'a str) -> BoxFuture<'a, Result<Option<Computer>, LdapError>> {
        Box::pin(async move {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let now = Instant::now();
            let uac = self
                .timeline
                .lock()
                .unwrap()
                .get(dn)
                .and_then(|t| t.iter().rev().find(|(from, _)| *from <= now).map(|(_, u)| *u));
            Ok(uac.map(|u| Computer::unread(dn, u)))
        })
    }
}

/// Connects to `dc`, or fails until `reachable_from`.
fn connect(dc: Arc<FakeDc>, reachable_from: Instant) -> Connect {
    Arc::new(move || {
        let dc = dc.clone();
        Box::pin(async move {
            if Instant::now() < reachable_from {
                return Err(LdapError::Search {
                    base: "rootDSE".into(),
                    rc: 52,
                    text: "dc2 is down".into(),
                });
            }
            Ok(dc as Arc<dyn DcRead>)
        })
    })
}

fn dc2() -> DcInfo {
    DcInfo {
        name: "dc2.lab.test".into(),
        site: "Default-First-Site-Name".into(),
        service:
            "CN=NTDS Settings,CN=DC2,CN=Servers,CN=Default-First-Site-Name,CN=Sites,CN=Configuration,DC=lab,DC=test"
                .into(),
    }
}

/// The audit row of plan `plan_id` setting protocol transition on `dn`.
fn written(plan_id: i64, dn: &str, before: u32, after: u32) -> Expected {
    Expected {
        record: AuditRecord {
            id: 0,
            time_ms: crate::store::now_ms(),
            plan_id,
            host: format!("{}.lab.test", dn[3..7].to_lowercase()),
            dn: dn.into(),
            uac_before: before,
            uac_after: after,
            delegate_before: vec![],
            delegate_after: vec![],
            reasons: vec![],
            trigger: "test".into(),
            approved_by: None,
            epoch: 0,
            dc: "dc1.lab.test".into(),
        },
    }
}

/// Starts a worker for dc2; its jobs sender and what it reports.
fn worker(
    connect: Connect,
    deadline: Duration,
    in_flight: usize,
) -> (mpsc::UnboundedSender<Expected>, mpsc::UnboundedReceiver<Event>) {
    let (jobs, rx) = mpsc::unbounded_channel();
    let (events, seen) = mpsc::unbounded_channel();
    let w = Worker {
        dc: dc2(),
        connect,
        limits: Limits { deadline, in_flight },
        events,
    };
    tokio::spawn(w.run(rx));
    (jobs, seen)
}

/// `n` hosts that `dc` shows protected from `from`, handed over at once (as a run hands over a
/// chunk) to a worker reading at most `in_flight` at a time: its job sender (kept, or the
/// worker stops) and what it sees.
fn hand_over_many(
    dc: &Arc<FakeDc>,
    n: usize,
    from: Instant,
    in_flight: usize,
) -> (mpsc::UnboundedSender<Expected>, mpsc::UnboundedReceiver<Event>) {
    let dns: Vec<String> = (0..n)
        .map(|i| format!("CN=HV{i:02},OU=Hyper-V,DC=lab,DC=test"))
        .collect();
    for dn in &dns {
        dc.shows(dn, 0x1000 | T2A4D, from);
    }
    let (jobs, seen) = worker(connect(dc.clone(), Instant::now()), Duration::from_secs(900), in_flight);
    for dn in &dns {
        jobs.send(written(6, dn, 0x1000, 0x1000 | T2A4D)).unwrap();
    }
    (jobs, seen)
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(3600), seen.recv())
        .await
        .expect("an event within the hour")
        .expect("the worker runs")
}

#[tokio::test(start_paused = true)]
async fn a_change_is_reported_when_the_other_dc_shows_it_polled_with_backoff() {
    let dc = Arc::new(FakeDc::default());
    let t0 = Instant::now();
    dc.shows(DN, 0x1000, t0);
    dc.shows(DN, 0x1000 | T2A4D, t0 + Duration::from_secs(3));
    let (jobs, mut seen) = worker(connect(dc.clone(), t0), Duration::from_secs(900), 16);
    jobs.send(written(1, DN, 0x1000, 0x1000 | T2A4D)).unwrap();

    let Event::Arrived {
        dc: name,
        expected,
        after,
    } = next(&mut seen).await
    else {
        panic!("expected an arrival");
    };
    assert_eq!((name.as_str(), expected.record.plan_id), ("dc2.lab.test", 1));
    // Reads at 0, 0.2, 0.6, 1.4, 3.0 s (+5 ms each): seen at the first read after 3 s.
    assert!(
        after >= Duration::from_secs(3) && after < Duration::from_millis(3200),
        "{after:?}"
    );
    assert_eq!(dc.reads.load(Ordering::SeqCst), 5, "200 ms doubling");
    // Nothing else: no overdue, no more reads of an object that arrived.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(seen.try_recv().is_err());
    assert_eq!(dc.reads.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn a_dc_behind_past_the_deadline_is_overdue_until_it_catches_up() {
    let dc = Arc::new(FakeDc::default());
    let t0 = Instant::now();
    dc.shows(DN, 0x1000, t0);
    dc.shows(DN, 0x1000 | T2A4D, t0 + Duration::from_secs(40));
    let (jobs, mut seen) = worker(connect(dc.clone(), t0), Duration::from_secs(10), 16);
    jobs.send(written(2, DN, 0x1000, 0x1000 | T2A4D)).unwrap();

    let Event::Overdue(o) = next(&mut seen).await else {
        panic!("expected the DC to be overdue first");
    };
    // The deadline counts from the audit row's wall-clock time, which goes on while the
    // paused test clock does not: on a loaded machine it comes up to a second early here.
    let raised = t0.elapsed().as_secs();
    assert!(
        (9..=10).contains(&raised),
        "raised at the deadline, not at the next read: {raised} s"
    );
    assert_eq!((o.dc.name.as_str(), o.waiting.len()), ("dc2.lab.test", 1));
    assert!(o.last_error.is_none());
    // Polled at most every 5 s after that: seen within 5 s of arriving.
    assert!(matches!(next(&mut seen).await, Event::Arrived { .. }));
    assert!((40..=45).contains(&t0.elapsed().as_secs()), "{:?}", t0.elapsed());
    assert!(matches!(next(&mut seen).await, Event::CaughtUp { dc } if dc == "dc2.lab.test"));
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_dc_is_overdue_with_the_reason_and_read_once_it_is_back() {
    let dc = Arc::new(FakeDc::default());
    let t0 = Instant::now();
    dc.shows(DN, 0x1000 | T2A4D, t0);
    let (jobs, mut seen) = worker(
        connect(dc.clone(), t0 + Duration::from_secs(30)),
        Duration::from_secs(5),
        16,
    );
    jobs.send(written(3, DN, 0x1000, 0x1000 | T2A4D)).unwrap();

    let Event::Overdue(o) = next(&mut seen).await else {
        panic!("expected overdue");
    };
    assert!(
        o.last_error.as_deref().unwrap_or_default().contains("dc2 is down"),
        "{o:?}"
    );
    assert!(matches!(next(&mut seen).await, Event::Arrived { .. }));
    assert!((30..=36).contains(&t0.elapsed().as_secs()), "{:?}", t0.elapsed());
    assert!(matches!(next(&mut seen).await, Event::CaughtUp { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_newer_write_replaces_one_the_dc_never_showed() {
    let dc = Arc::new(FakeDc::default());
    let t0 = Instant::now();
    dc.shows(DN, 0x1000, t0);
    // dc2 receives both writes at once, at 8 s: it never shows the first one's state alone.
    dc.shows(DN, 0x1000 | T2A4D, t0 + Duration::from_secs(8));
    let (jobs, mut seen) = worker(connect(dc.clone(), t0), Duration::from_secs(60), 16);
    jobs.send(written(4, DN, 0x1000, 0x1000 | 0x80000)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    jobs.send(written(5, DN, 0x1000 | 0x80000, 0x1000 | T2A4D)).unwrap();

    let Event::Arrived { expected, .. } = next(&mut seen).await else {
        panic!("expected an arrival");
    };
    assert_eq!(expected.record.plan_id, 5);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(seen.try_recv().is_err(), "plan 4 must not keep dc2 overdue");
}

#[tokio::test(start_paused = true)]
async fn reads_in_flight_stay_within_the_bound() {
    let dc = Arc::new(FakeDc::default());
    let t0 = Instant::now();
    let (_jobs, mut seen) = hand_over_many(&dc, 50, t0 + Duration::from_secs(1), 4);
    for _ in 0..50 {
        assert!(matches!(next(&mut seen).await, Event::Arrived { .. }));
    }
    assert!(dc.max_in_flight.load(Ordering::SeqCst) <= 4);
}

/// A run hands over a chunk of rows at once; the worker takes the whole chunk before reading,
/// so one pass reads it `in_flight` at a time (one pass per object took 64 reads in a row:
/// with a busy DC, the verify fell seconds behind a long run).
#[tokio::test(start_paused = true)]
async fn a_chunk_handed_over_at_once_is_read_in_one_pass() {
    let dc = Arc::new(FakeDc::default());
    let t0 = Instant::now();
    let (_jobs, mut seen) = hand_over_many(&dc, 64, t0, 16);
    for _ in 0..64 {
        assert!(matches!(next(&mut seen).await, Event::Arrived { .. }));
    }
    assert_eq!(dc.max_in_flight.load(Ordering::SeqCst), 16);
    assert_eq!(dc.reads.load(Ordering::SeqCst), 64, "each object read once");
    // 4 rounds of 16 reads of 5 ms, not 64 reads in a row.
    assert!(t0.elapsed() < Duration::from_millis(100), "{:?}", t0.elapsed());
}

#[test]
fn a_dc_without_a_url_is_not_guessed_and_the_write_dc_is_not_verified_against_itself() {
    let me = "CN=NTDS Settings,CN=DC1,CN=Servers,CN=Default-First-Site-Name,CN=Sites,CN=Configuration,DC=lab,DC=test";
    let dc1 = DcInfo {
        name: "dc1.lab.test".into(),
        site: "Default-First-Site-Name".into(),
        service: me.into(),
    };
    let dc3 = DcInfo {
        name: "dc3.lab.test".into(),
        ..dc2()
    };
    let configured = [
        DcConfig {
            name: "dc1.lab.test".into(),
            url: "ldaps://127.0.0.1".into(),
            starttls: false,
        },
        DcConfig {
            name: "dc2.lab.test".into(),
            url: "ldaps://127.0.0.2".into(),
            starttls: false,
        },
    ];
    let r = reachable(&configured, &[dc1, dc2(), dc3], me);
    let names: Vec<&str> = r.iter().map(|(d, _)| d.name.as_str()).collect();
    assert_eq!(names, ["dc2.lab.test"]);
    assert_eq!(r[0].1.url, "ldaps://127.0.0.2");
}

/// The recorder, on the real SQLite store: awaited rows, the arrival, and the DC's finding
/// raised once and cleared on the event stream.
#[tokio::test]
async fn the_recorder_stores_arrivals_and_raises_and_clears_the_dcs_finding() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let (recorder, mut fleet) = recorder_on(&store);
    let (findings, awaiting) = (recorder.findings.clone(), recorder.awaiting.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let done = tokio::spawn(recorder.run(rx));
    let w = written(7, DN, 0x1000, 0x1000 | T2A4D);
    let row = ReplicationRecord {
        plan_id: 7,
        host: w.record.host.clone(),
        dn: DN.into(),
        dc: "dc2.lab.test".into(),
        written_at_ms: w.record.time_ms,
        arrived_at_ms: None,
    };
    let overdue = || {
        Event::Overdue(Overdue {
            dc: dc2(),
            waiting: vec![w.clone()],
            oldest: Duration::from_secs(900),
            last_error: None,
        })
    };
    // The host's tickets come from dc2: its purge waits there, and so does its readiness.
    let purge = super::Purge {
        host: w.record.host.clone(),
        dn: DN.into(),
        plan_id: 7,
        kdc: "dc2.lab.test".into(),
        reason: "delegation changed by plan 7".into(),
    };
    tx.send(Event::Expect {
        rows: vec![row],
        held: vec![("dc2.lab.test".into(), purge)],
    })
    .unwrap();
    tx.send(overdue()).unwrap();
    tx.send(overdue()).unwrap();
    tx.send(Event::Arrived {
        dc: "dc2.lab.test".into(),
        expected: w.clone(),
        after: Duration::from_secs(901),
    })
    .unwrap();
    tx.send(Event::CaughtUp {
        dc: "dc2.lab.test".into(),
    })
    .unwrap();
    drop(tx);
    done.await.unwrap();

    let rows = store.replication_of_plans(7, 7).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].arrived_at_ms.is_some(), "{rows:?}");
    let waiting = fleet.try_recv().unwrap().event.unwrap();
    let pb::fleet_event::Event::FindingRaised(a) = waiting else {
        panic!("{waiting:?}");
    };
    assert_eq!(a.kind, pb::FindingKind::AwaitingReplication as i32);
    assert!(
        a.summary.starts_with("ready once dc2.lab.test replicates"),
        "{}",
        a.summary
    );
    let raised = fleet.try_recv().unwrap().event.unwrap();
    let pb::fleet_event::Event::FindingRaised(f) = raised else {
        panic!("{raised:?}");
    };
    assert_eq!(f.id, "DcNotReplicating:dc2.lab.test");
    assert!(f.summary.contains("dc2.lab.test"), "{}", f.summary);
    assert_eq!(f.kind, pb::FindingKind::DcNotReplicating as i32);
    // The change arrives on dc2: the host's wait ends (its purge goes out), then dc2 catches up.
    let ended = fleet.try_recv().unwrap().event.unwrap();
    assert!(
        matches!(ended, pb::fleet_event::Event::FindingCleared(ref c) if c.id == a.id),
        "{ended:?}"
    );
    assert!(awaiting.lock().unwrap().is_empty());
    let cleared = fleet.try_recv().unwrap().event.unwrap();
    assert!(
        matches!(cleared, pb::fleet_event::Event::FindingCleared(c) if c.id == f.id),
        "raised once, then cleared"
    );
    assert!(fleet.try_recv().is_err());
    assert!(findings.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_write_watched_again_after_a_restart_keeps_its_deadline() {
    let dc = Arc::new(FakeDc::default());
    let t0 = Instant::now();
    dc.shows(DN, 0x1000, t0);
    let (jobs, mut seen) = worker(connect(dc.clone(), t0), Duration::from_secs(10), 16);
    // Audited 20 s ago by the previous run, never seen on dc2: overdue at once, not in 10 s.
    let mut resumed = written(8, DN, 0x1000, 0x1000 | T2A4D);
    resumed.record.time_ms -= 20_000;
    jobs.send(resumed).unwrap();
    let Event::Overdue(o) = next(&mut seen).await else {
        panic!("expected overdue");
    };
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(o.oldest >= Duration::from_secs(20), "{:?}", o.oldest);
}

#[test]
fn a_reported_kdc_is_matched_to_the_dc_by_its_name_or_first_label() {
    let dcs = ["dc2.lab.test".to_owned(), "dc3.lab.test".to_owned()];
    assert_eq!(super::dc_of("dc2.lab.test", &dcs), Some(&dcs[0]));
    assert_eq!(super::dc_of("DC3.LAB.TEST", &dcs), Some(&dcs[1]));
    assert_eq!(
        super::dc_of("dc3", &dcs),
        Some(&dcs[1]),
        "a short name as klist may print it"
    );
    assert_eq!(
        super::dc_of("dc1.lab.test", &dcs),
        None,
        "the DC written to, or one not read"
    );
    assert_eq!(super::dc_of("dc2.other.test", &dcs), None);
}

#[tokio::test(start_paused = true)]
async fn a_pass_reports_each_arrival_as_its_read_returns_not_after_the_last() {
    let dc = Arc::new(FakeDc::default());
    // One read at a time, 5 ms each: the pass takes 250 ms.
    let (_jobs, mut seen) = hand_over_many(&dc, 50, Instant::now(), 1);
    let Event::Arrived { after, .. } = next(&mut seen).await else {
        panic!("expected an arrival");
    };
    assert!(
        after < Duration::from_millis(50),
        "the first arrival waited for the pass: {after:?}"
    );
    for _ in 1..50 {
        assert!(matches!(next(&mut seen).await, Event::Arrived { .. }));
    }
    assert_eq!(dc.reads.load(Ordering::SeqCst), 50);
}

#[tokio::test]
async fn the_recorder_records_arrivals_queued_together_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let (recorder, _fleet) = recorder_on(&store);
    let (tx, rx) = mpsc::unbounded_channel();
    let writes: Vec<Expected> = (0..1500)
        .map(|i| {
            written(
                9,
                &format!("CN=HV{i:04},OU=Hyper-V,DC=lab,DC=test"),
                0x1000,
                0x1000 | T2A4D,
            )
        })
        .collect();
    let rows = writes
        .iter()
        .map(|w| ReplicationRecord {
            plan_id: 9,
            host: w.record.host.clone(),
            dn: w.record.dn.clone(),
            dc: "dc2.lab.test".into(),
            written_at_ms: w.record.time_ms,
            arrived_at_ms: None,
        })
        .collect();
    tx.send(Event::Expect { rows, held: vec![] }).unwrap();
    for w in &writes {
        tx.send(Event::Arrived {
            dc: "dc2.lab.test".into(),
            expected: w.clone(),
            after: Duration::from_millis(10),
        })
        .unwrap();
    }
    drop(tx);
    recorder.run(rx).await;
    let recorded = store.replication_of_plans(9, 9).await.unwrap();
    assert_eq!(recorded.len(), 1500);
    assert!(
        recorded.iter().all(|r| r.arrived_at_ms.is_some()),
        "every arrival recorded"
    );
    // More than ARRIVALS_PER_COMMIT queued: two commits, each with one time.
    let mut times: Vec<i64> = recorded.iter().filter_map(|r| r.arrived_at_ms).collect();
    times.sort();
    times.dedup();
    assert!(times.len() <= 2, "{} distinct arrival times", times.len());
}

/// A recorder on `store`, as `start` makes one, with the fleet events it announces.
fn recorder_on(store: &Store) -> (Recorder, broadcast::Receiver<pb::FleetEvent>) {
    let (events, fleet) = broadcast::channel(16);
    let recorder = Recorder {
        out: Outputs {
            store: store.clone(),
            api: None,
            events,
            hub: None,
        },
        findings: DcFindings::default(),
        held: Default::default(),
        awaiting: super::AwaitingFindings::default(),
    };
    (recorder, fleet)
}

/// A purge held when the controller stops is held again by the next run (the process
/// restarted, or the replica elected after it) — from the store, not from memory — and goes
/// out when its DC has the change. One too old to be watched again goes out at once, once.
#[tokio::test]
async fn a_held_purge_survives_a_restart_and_waits_for_its_dc() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let w = written(7, DN, 0x1000, 0x1000 | T2A4D);
    let purge = super::Purge {
        host: w.record.host.clone(),
        dn: DN.into(),
        plan_id: 7,
        kdc: "dc2.lab.test".into(),
        reason: "delegation changed by plan 7".into(),
    };
    let row = |plan_id: i64, written_at_ms: i64| ReplicationRecord {
        plan_id,
        host: w.record.host.clone(),
        dn: DN.into(),
        dc: "dc2.lab.test".into(),
        written_at_ms,
        arrived_at_ms: None,
    };

    // The first run holds the purge, then stops before dc2 has the change.
    let (first, _) = recorder_on(&store);
    let (tx, rx) = mpsc::unbounded_channel();
    let done = tokio::spawn(first.run(rx));
    tx.send(Event::Expect {
        rows: vec![row(7, w.record.time_ms)],
        held: vec![("dc2.lab.test".into(), purge.clone())],
    })
    .unwrap();
    drop(tx);
    done.await.unwrap();
    let held = store.held_purges().await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (
            held[0].plan_id,
            held[0].dc.as_str(),
            held[0].kdc.as_str(),
            held[0].reason.as_str()
        ),
        (7, "dc2.lab.test", "dc2.lab.test", "delegation changed by plan 7")
    );

    // The next run: the host waits again before anything arrives, and its wait ends with the
    // arrival (the purge goes out); nothing is held after.
    let (next, mut fleet) = recorder_on(&store);
    let (tx, rx) = mpsc::unbounded_channel();
    let done = tokio::spawn(next.run(rx));
    tx.send(Event::Arrived {
        dc: "dc2.lab.test".into(),
        expected: w.clone(),
        after: Duration::from_secs(30),
    })
    .unwrap();
    drop(tx);
    done.await.unwrap();
    let raised = fleet.try_recv().unwrap().event.unwrap();
    let pb::fleet_event::Event::FindingRaised(a) = raised else {
        panic!("{raised:?}");
    };
    assert_eq!(a.kind, pb::FindingKind::AwaitingReplication as i32);
    let ended = fleet.try_recv().unwrap().event.unwrap();
    assert!(
        matches!(ended, pb::fleet_event::Event::FindingCleared(ref c) if c.id == a.id),
        "{ended:?}"
    );
    assert!(store.held_purges().await.unwrap().is_empty());

    // Held by a run eight days ago: past the workers' resume horizon, so sent at start
    // (no wait shown) and not held again by the run after.
    let old = crate::store::now_ms() - 8 * 24 * 3600 * 1000;
    store.expect_replication(&[row(6, old)]).await.unwrap();
    store
        .hold_purges(&[HeldPurge {
            plan_id: 6,
            host: purge.host.clone(),
            dn: DN.into(),
            dc: "dc2.lab.test".into(),
            kdc: "dc2.lab.test".into(),
            reason: "delegation changed by plan 6".into(),
            written_at_ms: old,
        }])
        .await
        .unwrap();
    let (late, mut fleet) = recorder_on(&store);
    let (tx, rx) = mpsc::unbounded_channel();
    drop(tx);
    late.run(rx).await;
    assert!(fleet.try_recv().is_err(), "no wait shown for a purge sent at once");
    assert!(store.held_purges().await.unwrap().is_empty());
}

/// What restarts the per-DC verify on a reload: a change of the DCs or of how they are
/// reached; not a change of the groups.
#[test]
fn a_reload_restarts_the_verify_only_when_the_dcs_change() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(
        dir.path().join("pw"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let cfg = |ad_extra: &str, hosts: &str| {
        let text = format!(
            "[ad]\nurl = \"ldaps://127.0.0.1\"\nca_file = \"pw\"\nbind_dn = \"CN=svc,CN=Users,DC=lab,DC=test\"\npassword_file = \"pw\"\n{ad_extra}\n[scope]\nbase_dns = [\"OU=Hyper-V,DC=lab,DC=test\"]\n[[group]]\nname = \"g\"\nmode = \"enforce\"\nhosts = [{hosts}]\n"
        );
        Config::parse(&text, &dir.path().join("kcdsync.toml")).unwrap()
    };
    let dc2 = "[[ad.dc]]\nname = \"dc2.lab.test\"\nurl = \"ldaps://127.0.0.2\"";
    let base = cfg("", "\"HV01\", \"HV02\"");
    assert!(super::same_setup(&base, &cfg("", "\"HV01\", \"HV03\"")), "groups only");
    assert!(!super::same_setup(&base, &cfg(dc2, "\"HV01\", \"HV02\"")), "a DC added");
    assert!(!super::same_setup(
        &base,
        &cfg("replication_deadline_secs = 60", "\"HV01\", \"HV02\"")
    ));
}
