//! Several controller replicas on one PostgreSQL store (`[replica]`): one leader writes AD, a
//! crashed leader is replaced once its lease expires, a deposed leader is fenced off, and a
//! follower sends write RPCs to the leader. Each test has its own database on the test cluster
//! (`deploy/pg/pg.sh up`) and its own fleet in the lab AD.

use std::time::{Duration, Instant};

use kcdsync_controller::ldap::Ad;
use kcdsync_controller::leader::LEADER_LEASE;
use kcdsync_controller::reconcile::{self, Fence, ReconcileError, RunOptions};
use kcdsync_controller::runtime::{self, Running};
use kcdsync_controller::store::Store;
use kcdsync_proto::v1 as pb;
use kcdsync_tests::agents::*;
use kcdsync_tests::*;

fn replica(db: &PgTestDb, id: &str, advertise: Option<&str>) -> String {
    let advertise = advertise.map(|a| format!("advertise = \"{a}\"\n")).unwrap_or_default();
    format!(
        "[store]\nurl = \"{}\"\n\n[replica]\nid = \"{id}\"\nlease_ttl_secs = 2\n{advertise}",
        db.url
    )
}

/// A replica of the test controller for `fleet`, in enforce mode, on `db`.
async fn start_replica(
    lab: &Lab,
    fleet: &Fleet,
    pki: &Pki,
    db: &PgTestDb,
    names: &[&str],
    id: &str,
    advertise: Option<&str>,
) -> Running {
    runtime::start(controller_config_with(
        lab,
        fleet,
        pki,
        "enforce",
        names,
        &replica(db, id, advertise),
    ))
    .await
    .expect("replica starts")
}

/// Waits until exactly one of `rs` leads; its index.
async fn one_leader(rs: &[&Running]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaders: Vec<usize> = (0..rs.len()).filter(|i| rs[*i].is_leader()).collect();
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "no single leader after 10 s: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_replicas_writes_and_a_crashed_leader_is_replaced() {
    let Some(db) = PgTestDb::create() else { return };
    let lab = Lab::start();
    let names = ["REP01", "REP02"];
    let fleet = FleetSpec::new("t-rep", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let pki = Pki::new();
    let a = start_replica(lab, &fleet, &pki, &db, &names, "rep-a", None).await;
    let b = start_replica(lab, &fleet, &pki, &db, &names, "rep-b", None).await;
    let first = one_leader(&[&a, &b]).await;
    let (leader, follower) = if first == 0 { (a, b) } else { (b, a) };
    let e1 = leader.leading().await;

    // The leader converges the broken fleet; the follower writes nothing.
    let store = leader.store.clone();
    eventually(Duration::from_secs(30), "both hosts fixed and audited", || {
        let store = store.clone();
        async move { store.audit_count().await.unwrap() == 2 }
    })
    .await;
    for h in &fleet.hosts {
        assert_eq!(lab.read_host(&h.dn).await.unwrap().uac, WORKSTATION | T2A4D);
    }
    assert!(!follower.is_leader());
    assert_eq!(*follower.reconciles.borrow(), 0, "a follower never reconciles");
    let lease = follower.store.lease(LEADER_LEASE).await.unwrap().unwrap();
    assert_eq!(lease.epoch, e1);
    assert_eq!(
        lease.address,
        leader.api_addr.unwrap().to_string(),
        "the advertised address is the bound one"
    );

    // The leader crashes without releasing its lease: the follower takes over once it expires.
    let t0 = Instant::now();
    leader.crash().await;
    let e2 = tokio::time::timeout(Duration::from_secs(10), follower.leading())
        .await
        .expect("the follower takes over within 10 s");
    let takeover = t0.elapsed();
    println!(
        "takeover after a leader crash: {} ms (lease TTL 2 s, renewals every 667 ms)",
        takeover.as_millis()
    );
    assert!(e2 > e1, "a takeover bumps the epoch: {e1} -> {e2}");

    // A new drift (after the new leader's first reconcile, which finds nothing to do) is
    // repaired by the new leader.
    follower.reconciled(1).await;
    assert_eq!(follower.store.audit_count().await.unwrap(), 2, "nothing written twice");
    let rep01 = fleet.host("REP01");
    lab.set_uac(&rep01.dn, WORKSTATION).await.unwrap();
    let mut api = fleet_client(&pki, follower.api_addr.unwrap(), Some(WRITE_TOKEN), None).await;
    let r = api
        .trigger_reconcile(pb::TriggerReconcileRequest::default())
        .await
        .expect("the new leader accepts write RPCs")
        .into_inner();
    assert_eq!(r.hosts_changed, 1);
    assert_eq!(lab.read_host(&rep01.dn).await.unwrap().uac, WORKSTATION | T2A4D);

    // Every AD write audited exactly once, under increasing epochs.
    let mut audit = follower.store.audit(None, 100).await.unwrap();
    audit.reverse();
    let rows: Vec<(String, i64)> = audit.iter().map(|r| (r.host.clone(), r.epoch)).collect();
    let mut first_two: Vec<&str> = rows[..2].iter().map(|(h, _)| h.as_str()).collect();
    first_two.sort();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        first_two,
        [fleet.host("REP01").fqdn.as_str(), fleet.host("REP02").fqdn.as_str()]
    );
    assert!(rows[..2].iter().all(|(_, e)| *e == e1), "{rows:?}");
    assert_eq!(rows[2], (rep01.fqdn.clone(), e2));
    follower.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_write_ad_or_the_audit() {
    let Some(db) = PgTestDb::create() else { return };
    let lab = Lab::start();
    let names = ["DEP01", "DEP02"];
    let fleet = FleetSpec::new("t-dep", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let pki = Pki::new();
    let cfg = controller_config_with(lab, &fleet, &pki, "enforce", &names, &replica(&db, "dep-old", None));
    let store = Store::open(&cfg.store_url).await.unwrap();
    let ad = Ad::connect(&cfg.ad).await.unwrap();

    // "old" leads, decides, and stalls (a GC pause, a slow network) past its lease ...
    let old = store
        .acquire_lease(LEADER_LEASE, "dep-old", "old:7444", 300)
        .await
        .unwrap()
        .unwrap();
    let observed = reconcile::observe(&cfg, &ad).await.unwrap();
    let decision = reconcile::decide(&cfg, &observed);
    assert_eq!(decision.guarded.auto.len(), 2, "both hosts need a write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // ... while "new" takes the expired lease behind its back.
    let new = store
        .acquire_lease(LEADER_LEASE, "dep-new", "new:7444", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new, old + 1);

    let before: Vec<u32> = futures::future::join_all(fleet.hosts.iter().map(|h| lab.read_host(&h.dn)))
        .await
        .into_iter()
        .map(|h| h.unwrap().uac)
        .collect();
    let stale = RunOptions {
        trigger: "test".into(),
        fence: Some(Fence {
            lease: LEADER_LEASE.into(),
            holder: "dep-old".into(),
            epoch: old,
        }),
        ..Default::default()
    };
    let err = reconcile::execute(&cfg, &ad, &store, &observed, &decision, stale)
        .await
        .expect_err("a stale fence must not write");
    assert!(
        matches!(err, ReconcileError::Fenced { epoch, .. } if epoch == old),
        "{err}"
    );
    println!("deposed leader: {err}");
    for (h, uac) in fleet.hosts.iter().zip(&before) {
        assert_eq!(lab.read_host(&h.dn).await.unwrap().uac, *uac, "AD unchanged");
        assert_eq!(*uac, WORKSTATION);
    }
    assert_eq!(store.audit_count().await.unwrap(), 0, "audit unchanged");

    // The current holder's fence passes, and its epoch is in the audit.
    let current = RunOptions {
        trigger: "test".into(),
        fence: Some(Fence {
            lease: LEADER_LEASE.into(),
            holder: "dep-new".into(),
            epoch: new,
        }),
        ..Default::default()
    };
    let done = reconcile::execute(&cfg, &ad, &store, &observed, &decision, current)
        .await
        .unwrap();
    assert_eq!(done.applied.len(), 2);
    let audit = store.audit(None, 10).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert!(audit.iter().all(|r| r.epoch == new), "{audit:?}");
    ad.unbind().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_write_rpcs_with_the_leaders_address() {
    let Some(db) = PgTestDb::create() else { return };
    let lab = Lab::start();
    let names = ["FOL01", "FOL02"];
    let fleet = FleetSpec::new("t-fol", &names)
        .kerberos_only_mesh()
        .uac(WORKSTATION | T2A4D)
        .create(lab)
        .await
        .unwrap();
    let pki = Pki::new();
    let leader = start_replica(lab, &fleet, &pki, &db, &names, "fol-a", Some("ctl-a.lab.test:7444")).await;
    leader.leading().await;
    let follower = start_replica(lab, &fleet, &pki, &db, &names, "fol-b", None).await;
    // Give the follower's lease task a few rounds: it must stay a follower.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(leader.is_leader() && !follower.is_leader());

    let mut api = fleet_client(&pki, follower.api_addr.unwrap(), Some(WRITE_TOKEN), None).await;
    let want = "this replica is a follower; the leader is ctl-a.lab.test:7444";
    let e = api
        .trigger_reconcile(pb::TriggerReconcileRequest::default())
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::FailedPrecondition, want));
    let e = api
        .approve_plan(pb::ApprovePlanRequest {
            id: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::FailedPrecondition, want));
    let e = api
        .reject_plan(pb::RejectPlanRequest {
            id: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::FailedPrecondition, want));
    // Reads work on a follower.
    api.list_plans(pb::ListPlansRequest::default())
        .await
        .expect("a follower serves reads");
    // The leader takes write RPCs.
    let mut lead = fleet_client(&pki, leader.api_addr.unwrap(), Some(WRITE_TOKEN), None).await;
    lead.trigger_reconcile(pb::TriggerReconcileRequest::default())
        .await
        .expect("the leader accepts write RPCs");
    follower.stop().await;
    leader.stop().await;
}

/// Hosts of the OU whose userAccountControl has protocol transition.
async fn fixed_hosts(lab: &Lab, ou: &str) -> usize {
    let mut l = lab.admin().await.unwrap();
    let (entries, _) = l
        .search(
            ou,
            ldap3::Scope::Subtree,
            "(&(objectClass=computer)(userAccountControl:1.2.840.113556.1.4.803:=16777216))",
            vec!["1.1"],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let _ = l.unbind().await;
    entries.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_process_mid_apply_loses_and_repeats_no_ad_write() {
    let Some(db) = PgTestDb::create() else { return };
    let lab = Lab::start();
    const N: usize = 120;
    let names: Vec<String> = (1..=N).map(|i| format!("KIL{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fleet = FleetSpec::new("t-kill", &refs).create(lab).await.unwrap();
    // Groups of two; one modify at a time so the apply is long enough to interrupt. The new
    // leader settles the killed one's intents only after lease TTL + LDAP timeout, so the
    // timeout is short here.
    let mut groups = String::new();
    for (i, pair) in fleet.hosts.chunks(2).enumerate() {
        let hosts: Vec<String> = pair.iter().map(|h| format!("\"{}\"", h.fqdn)).collect();
        groups.push_str(&format!(
            "\n[[group]]\nname = \"k{i:03}\"\nmode = \"enforce\"\nfirst_grants = \"auto\"\nhosts = [{}]\n",
            hosts.join(", ")
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = |id: &str| {
        let text = format!(
            "{}max_in_flight = 1\ntimeout_secs = 10\n\n[scope]\nbase_dns = [\"{}\"]\n\n[guard]\nmax_hosts_per_apply = {N}\n\n[reconcile]\ninterval_secs = 3600\n\n[store]\nurl = \"{}\"\n\n[replica]\nid = \"{id}\"\nlease_ttl_secs = 3\n{groups}",
            lab.ad_section(BindAs::Svc),
            fleet.ou_dn,
            db.url
        );
        let path = dir.path().join(format!("{id}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let spawn = |id: &str| {
        tokio::process::Command::new(controller_bin())
            .arg("--config")
            .arg(config(id))
            .arg("serve")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let store = Store::open(&db.url).await.unwrap();
    let mut a = spawn("replica-a");
    let mut b = spawn("replica-b");

    // Kill -9 whichever leads, once its apply is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (leader, epoch, fixed_at_kill) = loop {
        assert!(Instant::now() < deadline, "no apply started");
        if let Some(l) = store.lease(LEADER_LEASE).await.unwrap() {
            let fixed = fixed_hosts(lab, &fleet.ou_dn).await;
            if fixed > 0 && fixed < N {
                let victim = if l.holder == "replica-a" { &mut a } else { &mut b };
                victim.start_kill().unwrap(); // SIGKILL
                break (l.holder, l.epoch, fixed);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let killed = Instant::now();
    let takeover = loop {
        let l = store.lease(LEADER_LEASE).await.unwrap();
        if l.as_ref().is_some_and(|l| l.holder != leader) {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "no takeover within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eventually(
        Duration::from_secs(60),
        "the new leader converged the fleet",
        || async { fixed_hosts(lab, &fleet.ou_dn).await == N && store.open_intents().await.unwrap().is_empty() },
    )
    .await;
    println!(
        "killed {leader} (epoch {epoch}) with {fixed_at_kill}/{N} hosts written; takeover after {} ms",
        takeover.as_millis()
    );

    // Every AD write is in the audit exactly once, and the two writers never overlap.
    let audit = store.audit(None, 10 * N as i64).await.unwrap();
    let mut dns: Vec<&str> = audit.iter().map(|r| r.dn.as_str()).collect();
    dns.sort();
    dns.dedup();
    assert_eq!((audit.len(), dns.len()), (N, N), "one audit row per host");
    let old: Vec<_> = audit.iter().filter(|r| r.epoch == epoch).collect();
    let new: Vec<_> = audit.iter().filter(|r| r.epoch > epoch).collect();
    assert_eq!(old.len() + new.len(), N);
    assert!(
        old.len() >= fixed_at_kill,
        "the killed leader's writes are audited under its epoch"
    );
    assert!(!new.is_empty());
    let last_old = old.iter().map(|r| r.time_ms).max().unwrap();
    let first_new = new.iter().map(|r| r.time_ms).min().unwrap();
    assert!(last_old < first_new, "the writers never overlapped");
    let _ = a.start_kill();
    let _ = b.start_kill();
    let _ = a.wait().await;
    let _ = b.wait().await;
    store.close().await;
}

/// A TCP proxy on loopback that can cut every connection through it, as a
/// network loss between a replica and PostgreSQL does.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let generation = std::sync::Arc::new(tx);
        let (u, g) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { port, up, generation }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_postgresql_steps_down_and_recovers() {
    let Some(db) = PgTestDb::create() else { return };
    let lab = Lab::start();
    let names = ["NET01", "NET02"];
    let fleet = FleetSpec::new("t-net", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    // The replica reaches PostgreSQL only through the proxy.
    let (host_port, rest) = db.url.split_once('@').unwrap().1.split_once('/').unwrap();
    let target: std::net::SocketAddr = host_port.parse().unwrap();
    let proxy = Proxy::start(target).await;
    let via_proxy = db.url.replace(host_port, &format!("127.0.0.1:{}", proxy.port));
    assert!(via_proxy.ends_with(rest));
    let pki = Pki::new();
    let more = format!("[store]\nurl = \"{via_proxy}\"\n\n[replica]\nid = \"net-a\"\nlease_ttl_secs = 2\n");
    let a = runtime::start(controller_config_with(lab, &fleet, &pki, "enforce", &names, &more))
        .await
        .unwrap();
    a.leading().await;
    let store = Store::open(&db.url).await.unwrap();
    eventually(Duration::from_secs(30), "the fleet converged", || async {
        store.audit_count().await.unwrap() == 2
    })
    .await;

    // PostgreSQL becomes unreachable: the leader steps down and stops writing.
    proxy.cut();
    let t = Instant::now();
    eventually(Duration::from_secs(10), "the leader stepped down", || async {
        !a.is_leader()
    })
    .await;
    println!("stepped down {} ms after losing PostgreSQL", t.elapsed().as_millis());
    let net01 = fleet.host("NET01");
    lab.set_uac(&net01.dn, WORKSTATION).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        lab.read_host(&net01.dn).await.unwrap().uac,
        WORKSTATION,
        "no write without the lease"
    );

    // PostgreSQL returns: the replica leads again and repairs the drift.
    proxy.restore();
    tokio::time::timeout(Duration::from_secs(15), a.leading())
        .await
        .expect("leads again");
    eventually(Duration::from_secs(30), "the drift is repaired and audited", || async {
        lab.read_host(&net01.dn).await.unwrap().uac == WORKSTATION | T2A4D && store.audit_count().await.unwrap() == 3
    })
    .await;
    a.stop().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_connected_to_a_follower_keep_reporting() {
    let Some(db) = PgTestDb::create() else { return };
    let lab = Lab::start();
    let names = ["FOL01", "FOL02"];
    let fleet = FleetSpec::new("t-fol", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let pki = Pki::new();
    let a = start_replica(lab, &fleet, &pki, &db, &names, "fol-a", None).await;
    let b = start_replica(lab, &fleet, &pki, &db, &names, "fol-b", None).await;
    let first = one_leader(&[&a, &b]).await;
    let follower = if first == 0 { &b } else { &a };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{}", follower.agents_addr.unwrap().port());
    let host = fleet.host("FOL01");
    let agent = SimAgent::start(
        sim_host(&host.fqdn),
        dir.path(),
        settings(&url, pki.agent_tls(&host.fqdn)),
    );
    for i in 0..100 {
        agent
            .probe
            .migrate(&format!("vm{i}"), &fleet.host("FOL02").fqdn, "alice", Some(true))
            .await;
    }
    let store = follower.store.clone();
    eventually(
        Duration::from_secs(30),
        "100 attempts stored through the follower",
        || async {
            store.attempt_count().await.unwrap() == 100 && store.latest_report(&host.fqdn).await.unwrap().is_some()
        },
    )
    .await;
    assert!(!follower.is_leader());
    agent.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_reported_to_a_follower_is_repaired_by_the_leader() {
    let Some(db) = PgTestDb::create() else { return };
    let lab = Lab::start();
    let names = ["FWD01", "FWD02"];
    let fleet = FleetSpec::new("t-fwd", &names)
        .kerberos_only_mesh()
        .uac(WORKSTATION | T2A4D)
        .user("fwd-alice", 0)
        .create(lab)
        .await
        .unwrap();
    let pki = Pki::new();
    let a = start_replica(lab, &fleet, &pki, &db, &names, "fwd-a", None).await;
    let b = start_replica(lab, &fleet, &pki, &db, &names, "fwd-b", None).await;
    let first = one_leader(&[&a, &b]).await;
    let (leader, follower) = if first == 0 { (&a, &b) } else { (&b, &a) };
    leader.reconciled(1).await;

    // FWD01 drifts; its agent, connected to the follower, sees the failure.
    let fwd01 = fleet.host("FWD01");
    lab.set_uac(&fwd01.dn, WORKSTATION).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let probe = std::sync::Arc::new(kerberized_probe(lab, fwd01, dir.path()));
    let url = format!("https://127.0.0.1:{}", follower.agents_addr.unwrap().port());
    let agent = SimAgent::start_with(probe.clone(), dir.path(), settings(&url, pki.agent_tls(&fwd01.fqdn)));
    let failed = probe.migrate("vm1", &fleet.host("FWD02").fqdn, "fwd-alice", None).await;
    assert!(!failed.success);
    let t = Instant::now();

    let store = leader.store.clone();
    eventually(Duration::from_secs(20), "the leader repaired the host", || async {
        store
            .audit(None, 10)
            .await
            .unwrap()
            .iter()
            .any(|r| r.trigger.contains(&format!("attempt:{}", failed.attempt_id)))
    })
    .await;
    println!(
        "failure reported to the follower -> repaired by the leader in {} ms",
        t.elapsed().as_millis()
    );
    assert_eq!(lab.read_host(&fwd01.dn).await.unwrap().uac, WORKSTATION | T2A4D);
    assert!(!follower.is_leader());
    agent.stop().await;
    a.stop().await;
    b.stop().await;
}
