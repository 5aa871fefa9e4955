//! Replication-aware verify on the two-DC lab (`lab.sh up --dcs 2`): `serve` writes through
//! dc1 and reads the written objects on dc2 until they show the change. The KDC is the judge:
//! `kvno -U user -P cifs/<peer>` as the source host, against dc2's KDC only, is refused before
//! kcdsync records "replicated to dc2" and granted from the moment it does. A dc2 that does not
//! catch up (its inbound replication held) is named by a DC_NOT_REPLICATING finding after the
//! deadline, which clears once it catches up.
//!
//! A host whose agent reports that its tickets come from dc2 is told to purge them only once
//! dc2 has the change (by then dc2's KDC grants), and until then CheckMigration from it says
//! "ready once dc2.lab.test replicates".
//!
//! The tests use dc2's replication, and some hold it: they run one at a time.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kcdsync_agent::probe::kerberos::{self, MitKerberos};
use kcdsync_controller::config::Config;
use kcdsync_controller::runtime::{self, Running};
use kcdsync_controller::store::Store;
use kcdsync_proto::v1 as pb;
use kcdsync_tests::agents::{
    FleetClient, Pki, WRITE_TOKEN, eventually, fleet_client, open_stream, pending_plans, write_tokens,
};
use kcdsync_tests::otlp::Receiver;
use kcdsync_tests::two_dcs::{Dc, TwoDcLab, read_attr, wait_until};
use kcdsync_tests::{Fleet, FleetSpec, TestHost, controller_bin, delete_subtree, token, write_config};
use tokio::sync::{Mutex, broadcast};

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const DC2_FINDING: &str = "DcNotReplicating:dc2.lab.test";

fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "replication: {line}");
}

/// Two hosts delegating to each other "Kerberos only" (the seed's broken state) and a user,
/// in an OU of this run's own, created through dc1 and waited for on dc2.
async fn fleet(lab: &TwoDcLab) -> (Fleet, String) {
    let tag = &token()[..6];
    let user = format!("rpu{tag}");
    let fleet = FleetSpec::new(
        &format!("kcdsync-repl-{tag}"),
        &[&format!("RP{tag}A"), &format!("RP{tag}B")],
    )
    .kerberos_only_mesh()
    .user(&user, 0)
    .create_in(lab.admin(Dc::Dc1).await.unwrap(), lab.base_dn(), lab.var("LAB_REALM"))
    .await
    .expect("creating the fleet through dc1");
    let mut dc2 = lab.admin(Dc::Dc2).await.unwrap();
    let t = Instant::now();
    for dn in fleet
        .hosts
        .iter()
        .map(|h| &h.dn)
        .chain(fleet.users.iter().map(|u| &u.dn))
    {
        wait_until(&mut dc2, dn, "objectGUID", t, Duration::from_secs(60), |v| v.is_some())
            .await
            .unwrap_or_else(|e| panic!("the fleet did not reach dc2: {e:#}"));
    }
    (fleet, user)
}

/// Does `dc`'s KDC (and no other) let `src` act for `user` towards `cifs/<peer>`?
async fn kdc_grants(lab: &TwoDcLab, dc: Dc, src: &TestHost, user: &str, peer: &TestHost) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let krb = MitKerberos {
        krb5_config: lab.krb5_conf(dc).into(),
        ccache: format!("FILE:{}", tmp.path().join("cc").display()),
        timeout: Duration::from_secs(20),
    };
    let principal = format!("{}$@{}", src.netbios, lab.var("LAB_REALM"));
    krb.kinit_password(&principal, &src.password)
        .await
        .map_err(|e| format!("kinit {principal} at {}: {}", dc.name(), kerberos::said(&e)))?;
    krb.s4u(user, &format!("cifs/{}", peer.fqdn))
        .await
        .map_err(|e| kerberos::said(&e))
}

/// A controller config writing through dc1, verifying on dc2 within `deadline_secs`.
fn config(lab: &TwoDcLab, fleet: &Fleet, deadline_secs: u64) -> String {
    let dc2 = format!(
        "replication_deadline_secs = {deadline_secs}\n[[ad.dc]]\nname = \"{}\"\nurl = \"{}\"",
        lab.dc_var(Dc::Dc2, "HOST"),
        lab.ldaps_url(Dc::Dc2)
    );
    let hosts: Vec<String> = fleet.hosts.iter().map(|h| format!("\"{}\"", h.fqdn)).collect();
    format!(
        "{}[scope]\nbase_dns = [\"{}\"]\n[reconcile]\ninterval_secs = 3600\n[[group]]\nname = \"g\"\nmode = \"enforce\"\nfirst_grants = \"auto\"\nhosts = [{}]\n",
        lab.ad_section(Dc::Dc1, &dc2),
        fleet.ou_dn,
        hosts.join(", ")
    )
}

/// Waits for the startup reconcile's audit row of `dn` (its write verified on dc1); its plan
/// and time.
async fn written(store: &Store, dn: &str) -> (i64, i64) {
    let t = Instant::now();
    loop {
        let rows = store.audit(None, 100).await.unwrap();
        if let Some(r) = rows.iter().find(|r| r.dn.eq_ignore_ascii_case(dn)) {
            return (r.plan_id, r.time_ms);
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "serve wrote nothing to {dn} in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// When kcdsync recorded the write of plan `plan` to `dn` on dc2 (Unix ms), if it has.
async fn recorded_on_dc2(store: &Store, plan: i64, dn: &str) -> Option<i64> {
    let rows = store.replication_of_plans(plan, plan).await.unwrap();
    rows.iter()
        .find(|r| r.dn.eq_ignore_ascii_case(dn) && r.dc == "dc2.lab.test")
        .and_then(|r| r.arrived_at_ms)
}

/// Asks dc2's KDC again and again until kcdsync has recorded the write on dc2 and the KDC
/// grants it. Every answer given after kcdsync recorded it must be a grant: kcdsync never
/// claims replication before the KDC acts on it. Returns (the first grant, the record), in
/// ms after `since_ms`, and the refusals seen before the first grant. A refusal to an ask that
/// began after kcdsync's record fails the test: the KDC is asked every 25 ms, so a record made
/// before dc2 acts on the change is caught however long one ask takes on a loaded machine.
async fn race_record_and_kdc(
    lab: &TwoDcLab,
    store: &Store,
    (plan, since_ms): (i64, i64),
    (src, peer, user): (&TestHost, &TestHost, &str),
) -> (i64, i64, usize) {
    let (mut granted_at, mut refusals) = (None, 0);
    let t = Instant::now();
    loop {
        let recorded = recorded_on_dc2(store, plan, &src.dn).await;
        let asked = kcdsync_controller::store::now_ms();
        let verdict = kdc_grants(lab, Dc::Dc2, src, user, peer).await;
        let now = kcdsync_controller::store::now_ms();
        match (&verdict, recorded) {
            (Ok(()), _) => {
                granted_at.get_or_insert(now);
            }
            (Err(why), Some(at)) => panic!(
                "kcdsync recorded plan {plan} on dc2 at +{} ms, yet dc2's KDC still refuses: {why}",
                at - since_ms
            ),
            (Err(why), None) => {
                // The store is read again: a record made while this ask was on its way does
                // not excuse a refusal to an ask that began after it.
                if let Some(at) = recorded_on_dc2(store, plan, &src.dn).await {
                    assert!(
                        at > asked,
                        "kcdsync recorded plan {plan} on dc2 at +{} ms; dc2's KDC refused an ask made after that (+{} ms): {why}",
                        at - since_ms,
                        asked - since_ms
                    );
                }
                assert!(
                    why.contains("constrained delegation failed") || why.contains("can't fulfill"),
                    "{why}"
                );
                refusals += 1;
            }
        }
        if let (Some(g), Some(r)) = (granted_at, recorded) {
            return (g - since_ms, r - since_ms, refusals);
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "after 90 s: dc2's KDC granted at {granted_at:?}, kcdsync recorded dc2 at {recorded:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `kcdsync-controller audit` on the store serve used.
fn audit_output(config: &std::path::Path) -> String {
    let out = std::process::Command::new(controller_bin())
        .args(["audit", "--config"])
        .arg(config)
        .output()
        .expect("running kcdsync-controller audit");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn next_finding_event(events: &mut broadcast::Receiver<pb::FleetEvent>, id: &str, raised: bool) -> pb::Finding {
    let wait = async {
        loop {
            match events.recv().await.expect("the event stream").event {
                Some(pb::fleet_event::Event::FindingRaised(f)) if raised && f.id == id => return f,
                Some(pb::fleet_event::Event::FindingCleared(f)) if !raised && f.id == id => return f,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(90), wait)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no finding {} {id} within 90 s",
                if raised { "raised" } else { "cleared" }
            )
        })
}

/// This process's metrics go to an in-process OTLP receiver, set up once by whichever test
/// comes first (the controller's instruments are process-wide, created on first use). The
/// receiver and the exporter run on a runtime of their own that outlives each test's.
/// Called holding ONE_AT_A_TIME before anything else, so no other thread reads the
/// environment while it is set.
fn export_metrics() -> &'static Receiver {
    struct Exported {
        _rt: tokio::runtime::Runtime,
        receiver: Receiver,
        _telemetry: kcdsync_telemetry::Telemetry,
    }
    static EXPORT: OnceLock<Exported> = OnceLock::new();
    let e = EXPORT.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("the exporter's runtime");
            let (receiver, telemetry) = rt.block_on(async {
                let receiver = Receiver::start().await;
                // SAFETY: the other test waits for ONE_AT_A_TIME; nothing else reads the
                // environment yet.
                unsafe {
                    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
                    std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "300");
                }
                let t =
                    kcdsync_telemetry::init("kcdsync-replication-test", kcdsync_telemetry::LogFormat::Human, "warn");
                (receiver, t)
            });
            assert!(telemetry.exporting());
            Exported {
                _rt: rt,
                receiver,
                _telemetry: telemetry,
            }
        })
        .join()
        .expect("setting up the OTLP receiver")
    });
    &e.receiver
}

/// How many `kcdsync.replication.lag` values for `dc` the receiver has got so far (the
/// histogram's cumulative count).
fn lag_count(receiver: &Receiver, dc: &str) -> f64 {
    receiver
        .metrics()
        .iter()
        .filter(|m| m.name == "kcdsync.replication.lag" && m.attributes.iter().any(|(k, v)| k == "dc" && v == dc))
        .map(|m| m.value)
        .fold(0.0, f64::max)
}

/// Waits up to 10 s for the count to reach `want`; the count then.
async fn lag_count_reaches(receiver: &Receiver, dc: &str, want: f64) -> f64 {
    let t = Instant::now();
    while lag_count(receiver, dc) < want && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lag_count(receiver, dc)
}

async fn cleanup(lab: &TwoDcLab, running: Running, fleet: &Fleet) {
    running.stop().await;
    let mut dc1 = lab.admin(Dc::Dc1).await.unwrap();
    delete_subtree(&mut dc1, &fleet.ou_dn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dc2_is_recorded_as_replicated_only_once_its_kdc_grants_the_change() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let receiver = export_metrics();
    let lab = TwoDcLab::start();
    let (fleet, user) = fleet(lab).await;
    let (src, peer) = (&fleet.hosts[0], &fleet.hosts[1]);
    assert!(
        kdc_grants(lab, Dc::Dc2, src, &user, peer).await.is_err(),
        "Kerberos-only: refused before kcdsync runs"
    );

    // The other test may have recorded lags already (exported every 300 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lags_before = lag_count(receiver, "dc2.lab.test");

    let (_dir, path) = write_config(&config(lab, &fleet, 900));
    let running = runtime::start(Config::load(&path).unwrap()).await.unwrap();
    let (plan, written_ms) = written(&running.store, &src.dn).await;
    // Right after the write: dc1's KDC grants it; dc2's (asked at once) may not have it yet.
    let right_after = kdc_grants(lab, Dc::Dc2, src, &user, peer).await;
    kdc_grants(lab, Dc::Dc1, src, &user, peer)
        .await
        .unwrap_or_else(|e| panic!("dc1's KDC, where kcdsync wrote: {e}"));

    let (granted, recorded, refusals) =
        race_record_and_kdc(lab, &running.store, (plan, written_ms), (src, peer, &user)).await;
    report(&format!(
        "dc2's KDC right after the write: {}; first granted +{granted} ms ({refusals} refusals before); kcdsync recorded dc2 +{recorded} ms after the audit",
        match &right_after {
            Ok(()) => "already granted (replication beat the first kvno)".to_owned(),
            Err(_) => "refused".to_owned(),
        }
    ));
    // Never claimed before the KDC grants: every ask begun after the record was a grant
    // (checked in race_record_and_kdc, whatever one ask costs on a loaded machine).

    // One lag measured per written host, by DC.
    assert_eq!(
        lag_count_reaches(receiver, "dc2.lab.test", lags_before + 2.0).await,
        lags_before + 2.0,
        "kcdsync.replication.lag{{dc=dc2.lab.test}}: one value per written host"
    );

    cleanup(lab, running, &fleet).await;
    let audit = audit_output(&path);
    assert!(
        audit
            .lines()
            .any(|l| l.trim_start().starts_with("replicated to dc2.lab.test after ")),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dc_that_does_not_catch_up_is_named_by_a_finding_until_it_does() {
    let _serial = ONE_AT_A_TIME.lock().await;
    export_metrics();
    let lab = TwoDcLab::start();
    let (fleet, user) = fleet(lab).await;
    let (src, peer) = (&fleet.hosts[0], &fleet.hosts[1]);

    let held = lab.hold_inbound(Dc::Dc2).expect("holding dc2's inbound replication");
    let (_dir, path) = write_config(&config(lab, &fleet, 5));
    let running = runtime::start(Config::load(&path).unwrap()).await.unwrap();
    let mut events = running.events.subscribe();
    let (plan, written_ms) = written(&running.store, &src.dn).await;

    // dc1 has the change, dc2 does not, and kcdsync does not say it does.
    kdc_grants(lab, Dc::Dc1, src, &user, peer)
        .await
        .unwrap_or_else(|e| panic!("dc1's KDC, where kcdsync wrote: {e}"));
    let refused = kdc_grants(lab, Dc::Dc2, src, &user, peer).await;
    assert!(
        refused.is_err(),
        "dc2's KDC granted while its inbound replication is off"
    );
    assert_eq!(recorded_on_dc2(&running.store, plan, &src.dn).await, None);

    let raised = next_finding_event(&mut events, DC2_FINDING, true).await;
    let raised_after = kcdsync_controller::store::now_ms() - written_ms;
    assert_eq!(raised.kind, pb::FindingKind::DcNotReplicating as i32);
    assert!(raised.summary.contains("dc2.lab.test"), "{}", raised.summary);
    assert!(raised.hosts.contains(&src.fqdn), "{:?}", raised.hosts);
    assert!(
        raised_after >= 5_000,
        "raised {raised_after} ms after the write, before the deadline"
    );
    assert_eq!(recorded_on_dc2(&running.store, plan, &src.dn).await, None);
    let mut dc2 = lab.admin(Dc::Dc2).await.unwrap();
    assert_eq!(
        read_attr(&mut dc2, &src.dn, "userAccountControl").await.unwrap(),
        Some(vec!["4096".to_owned()]),
        "dc2 still has the old value"
    );

    let released = Instant::now();
    held.release().expect("dc2's inbound replication back on");
    let (granted, recorded, refusals) =
        race_record_and_kdc(lab, &running.store, (plan, written_ms), (src, peer, &user)).await;
    next_finding_event(&mut events, DC2_FINDING, false).await;
    report(&format!(
        "finding raised +{raised_after} ms after the write (deadline 5 s); after release ({:.1} s ago) dc2's KDC first granted +{granted} ms, kcdsync recorded dc2 +{recorded} ms ({refusals} refusals before); finding cleared",
        released.elapsed().as_secs_f64()
    ));
    cleanup(lab, running, &fleet).await;
}

/// serve with an agent endpoint and the fleet API (tokens, certificates in `pki`), the group in
/// `plan` mode: nothing is written until the test approves, after the agent has reported.
fn config_with_agents(lab: &TwoDcLab, fleet: &Fleet, pki: &Pki, deadline_secs: u64) -> String {
    write_tokens(pki, &[("orchestrator", "write", WRITE_TOKEN)]);
    let p = |f: &str| pki.path(f).display().to_string();
    let agents = format!(
        "[agents]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nheartbeat_secs = 1\n\n[api]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\ntokens_file = \"{}\"\n",
        p("controller.pem"),
        p("controller.key"),
        p("ca.pem"),
        p("controller.pem"),
        p("controller.key"),
        p("api-ca.pem"),
        p("tokens.toml"),
    );
    config(lab, fleet, deadline_secs).replace("mode = \"enforce\"", "mode = \"plan\"") + "\n" + &agents
}

/// What a Windows agent of `host` sends once its SYSTEM session holds a TGT from `kdc`
/// (`klist -li 0x3e7` prints it as "Kdc Called: dc2.lab.test").
fn report_with_tgt_from(host: &TestHost, realm: &str, kdc: &str) -> pb::AgentMessage {
    let now = kcdsync_controller::store::now_ms();
    let ts = |ms: i64| Some(kcdsync_proto::timestamp_from_ms(ms));
    pb::AgentMessage {
        seq: 2,
        body: Some(pb::agent_message::Body::Report(pb::HostReport {
            observed_at: ts(now),
            identity: Some(pb::HostIdentity {
                fqdn: host.fqdn.clone(),
                ..Default::default()
            }),
            system_tickets: vec![pb::KerberosTicket {
                client: format!("{}$ @ {realm}", host.netbios),
                server: format!("krbtgt/{realm} @ {realm}"),
                start_time: ts(now - 60_000),
                end_time: ts(now + 10 * 3600 * 1000),
                kdc_called: kdc.into(),
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

/// The next purge command on `inbound`, or `None` when `within` passes without one.
async fn next_purge(inbound: &mut tonic::Streaming<pb::ControllerMessage>, within: Duration) -> Option<pb::Command> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = tokio::time::timeout_at(deadline, inbound.message()).await.ok()?;
        let m = m.expect("the agent stream failed").expect("the agent stream ended");
        if let Some(pb::controller_message::Body::Command(c)) = m.body
            && matches!(c.kind, Some(pb::command::Kind::PurgeSystemTickets(_)))
        {
            return Some(c);
        }
    }
}

/// The source's agent stream, after it reported that its SYSTEM tickets come from dc2's KDC and
/// the hub knows it.
async fn agent_with_tgt_from_dc2(
    running: &Running,
    pki: &Pki,
    src: &TestHost,
    realm: &str,
) -> (
    tokio::sync::mpsc::Sender<pb::AgentMessage>,
    tonic::Streaming<pb::ControllerMessage>,
) {
    let agents_url = format!("https://127.0.0.1:{}", running.agents_addr.unwrap().port());
    let (uplink, inbound) = open_stream(&agents_url, pki.agent_tls(&src.fqdn), &src.fqdn)
        .await
        .expect("the source's agent stream");
    uplink
        .send(report_with_tgt_from(src, realm, "dc2.lab.test"))
        .await
        .unwrap();
    let hub = running.hub.clone().unwrap();
    eventually(Duration::from_secs(10), "the hub knows the source's KDC", || {
        let kdc = hub.kdc_of(&src.fqdn);
        async move { kdc.as_deref() == Some("dc2.lab.test") }
    })
    .await;
    (uplink, inbound)
}

/// Approves the plan serve holds (`plan` mode), once it exists.
async fn approve_the_plan(api: &mut FleetClient) {
    let t = Instant::now();
    let pending = loop {
        let p = pending_plans(api).await;
        if !p.is_empty() {
            break p;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no pending plan in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    api.approve_plan(pb::ApprovePlanRequest {
        id: pending[0].id.clone(),
        comment: String::new(),
    })
    .await
    .expect("ApprovePlan");
}

/// Waits (90 s at most) for the source's purge of plan `plan` once dc2 is back: when it comes,
/// dc2's KDC must grant and kcdsync must have recorded dc2 already. Returns when the purge came
/// and when kcdsync recorded dc2 (Unix ms).
async fn purged_once_dc2_has_it(
    lab: &TwoDcLab,
    store: &Store,
    inbound: &mut tonic::Streaming<pb::ControllerMessage>,
    plan: i64,
    (src, peer, user): (&TestHost, &TestHost, &str),
) -> (i64, i64) {
    let purge = next_purge(inbound, Duration::from_secs(90))
        .await
        .expect("no purge within 90 s of dc2 being back");
    let purged_ms = kcdsync_controller::store::now_ms();
    assert!(purge.reason.contains(&format!("plan {plan}")), "{}", purge.reason);
    kdc_grants(lab, Dc::Dc2, src, user, peer)
        .await
        .unwrap_or_else(|e| panic!("the purge went out, yet dc2's KDC refuses: {e}"));
    let arrived = recorded_on_dc2(store, plan, &src.dn)
        .await
        .expect("purged before kcdsync recorded dc2 has the change");
    assert!(arrived <= purged_ms);
    (purged_ms, arrived)
}

async fn check(api: &mut FleetClient, src: &TestHost, peer: &TestHost, user: &str) -> pb::CheckMigrationResponse {
    api.check_migration(pb::CheckMigrationRequest {
        source: src.fqdn.clone(),
        destination: peer.fqdn.clone(),
        account: user.to_owned(),
        ..Default::default()
    })
    .await
    .expect("CheckMigration")
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_kdc_is_behind_is_told_to_purge_only_once_that_kdc_grants() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // First, whichever test runs first: the controller's instruments bind to the exporter
    // installed before their first use, for the whole process.
    export_metrics();
    let lab = TwoDcLab::start();
    let (fleet, user) = fleet(lab).await;
    let (src, peer) = (&fleet.hosts[0], &fleet.hosts[1]);
    let realm = lab.var("LAB_REALM").to_owned();
    let pki = Pki::new();
    let (_dir, path) = write_config(&config_with_agents(lab, &fleet, &pki, 600));
    let running = runtime::start(Config::load(&path).unwrap()).await.unwrap();
    let mut api = fleet_client(&pki, running.api_addr.unwrap(), Some(WRITE_TOKEN), None).await;

    // The source's agent reports that its tickets come from dc2's KDC.
    let (uplink, mut inbound) = agent_with_tgt_from_dc2(&running, &pki, src, &realm).await;

    // dc2 falls behind; the operator approves the plan, which kcdsync writes through dc1.
    let held = lab.hold_inbound(Dc::Dc2).expect("holding dc2's inbound replication");
    approve_the_plan(&mut api).await;
    let (plan, written_ms) = written(&running.store, &src.dn).await;
    kdc_grants(lab, Dc::Dc1, src, &user, peer)
        .await
        .unwrap_or_else(|e| panic!("dc1's KDC, where kcdsync wrote: {e}"));

    // While dc2 lacks the change its KDC refuses, the source is not told to purge (it would
    // only fetch the refusal again), and readiness says what it waits for.
    let early = next_purge(&mut inbound, Duration::from_secs(3)).await;
    assert!(early.is_none(), "purged while dc2 lacks the change: {early:?}");
    let refused = kdc_grants(lab, Dc::Dc2, src, &user, peer).await;
    assert!(
        refused.is_err(),
        "dc2's KDC granted while its inbound replication is off"
    );
    let v = check(&mut api, src, peer, &user).await;
    assert_eq!(v.readiness, pb::Readiness::NotReady as i32, "{v:?}");
    assert!(
        v.summary.starts_with("ready once dc2.lab.test replicates"),
        "{}",
        v.summary
    );
    assert!(
        v.blocking
            .iter()
            .any(|f| f.kind == pb::FindingKind::AwaitingReplication as i32),
        "{v:?}"
    );
    // The matrix (and the dashboard's, drawn from it) says the same for that cell only.
    let cells = api
        .readiness_matrix(pb::ReadinessMatrixRequest {
            group: "g".into(),
            account: user.clone(),
        })
        .await
        .expect("ReadinessMatrix")
        .into_inner()
        .cells;
    let from_src = cells
        .iter()
        .find(|c| c.source.eq_ignore_ascii_case(&src.fqdn) || c.source.eq_ignore_ascii_case(&src.netbios))
        .unwrap_or_else(|| panic!("no cell from the source: {cells:?}"));
    assert_eq!(from_src.readiness, pb::Readiness::NotReady as i32, "{from_src:?}");
    assert!(
        from_src
            .reasons
            .contains(&(pb::FindingKind::AwaitingReplication as i32)),
        "{from_src:?}"
    );
    let from_peer = cells
        .iter()
        .find(|c| c.destination.eq_ignore_ascii_case(&src.fqdn) || c.destination.eq_ignore_ascii_case(&src.netbios));
    assert!(
        from_peer.is_some_and(|c| !c.reasons.contains(&(pb::FindingKind::AwaitingReplication as i32))),
        "the peer's KDC wait is not the source's: {from_peer:?}"
    );

    // dc2 catches up: the purge goes out, and by then dc2's KDC grants.
    held.release().expect("dc2's inbound replication back on");
    let (purged_ms, arrived) =
        purged_once_dc2_has_it(lab, &running.store, &mut inbound, plan, (src, peer, &user)).await;
    let v = check(&mut api, src, peer, &user).await;
    assert_eq!(v.readiness, pb::Readiness::Ready as i32, "{v:?}");
    report(&format!(
        "purge held {:.1} s after the write, sent {} ms after kcdsync recorded dc2",
        (purged_ms - written_ms) as f64 / 1000.0,
        purged_ms - arrived
    ));
    drop(uplink);
    cleanup(lab, running, &fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_dc_is_named_and_its_hosts_purges_wait_until_it_is_back_with_the_change() {
    let _serial = ONE_AT_A_TIME.lock().await;
    export_metrics();
    let lab = TwoDcLab::start();
    let (fleet, user) = fleet(lab).await;
    let (src, peer) = (&fleet.hosts[0], &fleet.hosts[1]);
    let realm = lab.var("LAB_REALM").to_owned();
    let pki = Pki::new();
    let (_dir, path) = write_config(&config_with_agents(lab, &fleet, &pki, 5));
    let running = runtime::start(Config::load(&path).unwrap()).await.unwrap();
    let mut events = running.events.subscribe();
    let mut api = fleet_client(&pki, running.api_addr.unwrap(), Some(WRITE_TOKEN), None).await;

    // The source's agent reports that its tickets come from dc2's KDC.
    let (uplink, mut inbound) = agent_with_tgt_from_dc2(&running, &pki, src, &realm).await;

    // dc2 goes down (its samba stopped: no LDAP, no KDC); the plan is approved and written
    // through dc1.
    let stopped = lab.stop_dc(Dc::Dc2).expect("stopping dc2");
    approve_the_plan(&mut api).await;
    let (plan, written_ms) = written(&running.store, &src.dn).await;
    kdc_grants(lab, Dc::Dc1, src, &user, peer)
        .await
        .unwrap_or_else(|e| panic!("dc1's KDC, where kcdsync wrote: {e}"));

    // Past the deadline the finding names dc2; the source is not told to purge meanwhile.
    let raised = next_finding_event(&mut events, DC2_FINDING, true).await;
    let raised_after = kcdsync_controller::store::now_ms() - written_ms;
    assert_eq!(raised.kind, pb::FindingKind::DcNotReplicating as i32);
    assert!(raised.summary.contains("dc2.lab.test"), "{}", raised.summary);
    assert!(raised.hosts.contains(&src.fqdn), "{:?}", raised.hosts);
    let early = next_purge(&mut inbound, Duration::from_secs(2)).await;
    assert!(early.is_none(), "purged while dc2 is down: {early:?}");
    assert_eq!(recorded_on_dc2(&running.store, plan, &src.dn).await, None);
    let v = check(&mut api, src, peer, &user).await;
    assert_eq!(v.readiness, pb::Readiness::NotReady as i32, "{v:?}");
    assert!(
        v.summary.starts_with("ready once dc2.lab.test replicates"),
        "{}",
        v.summary
    );

    // dc2 is back and pulls what it missed: the purge goes out, dc2's KDC grants by then, and
    // the finding clears.
    let back_ms = kcdsync_controller::store::now_ms();
    stopped.start().expect("dc2 started again and replicated");
    let (purged_ms, arrived) =
        purged_once_dc2_has_it(lab, &running.store, &mut inbound, plan, (src, peer, &user)).await;
    next_finding_event(&mut events, DC2_FINDING, false).await;
    report(&format!(
        "dc2 stopped: finding raised +{raised_after} ms after the write (deadline 5 s); purge {:.1} s after dc2's start began (start, pull, read), {} ms after kcdsync recorded dc2; finding cleared",
        (purged_ms - back_ms) as f64 / 1000.0,
        purged_ms - arrived
    ));
    drop(uplink);
    cleanup(lab, running, &fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dc_added_by_a_reload_is_verified_from_the_next_write_on() {
    let _serial = ONE_AT_A_TIME.lock().await;
    export_metrics();
    let lab = TwoDcLab::start();
    let (fleet, _user) = fleet(lab).await;
    let src = &fleet.hosts[0];
    // serve starts knowing dc1 only: its writes are verified on dc1 and nowhere else.
    let with_dc2 = config(lab, &fleet, 900);
    let dc2_block = format!(
        "[[ad.dc]]\nname = \"{}\"\nurl = \"{}\"",
        lab.dc_var(Dc::Dc2, "HOST"),
        lab.ldaps_url(Dc::Dc2)
    );
    assert!(with_dc2.contains(&dc2_block), "{with_dc2}");
    let (_dir, path) = write_config(&with_dc2.replace(&dc2_block, ""));
    let running = runtime::start(Config::load(&path).unwrap()).await.unwrap();
    let (first, _) = written(&running.store, &src.dn).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        running.store.replication_of_plans(first, first).await.unwrap(),
        [],
        "no DC to verify on yet"
    );

    // The operator adds dc2 and reloads (SIGHUP does exactly this); then AD drifts on src.
    std::fs::write(&path, &with_dc2).unwrap();
    running.reload(Config::load(&path).unwrap()).await.unwrap();
    running.reconciled(2).await;
    let mut dc1 = lab.admin(Dc::Dc1).await.unwrap();
    dc1.modify(
        &src.dn,
        vec![ldap3::Mod::Replace("userAccountControl", ["4096"].into())],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    let t = Instant::now();
    let second = loop {
        let rows = running.store.audit(None, 100).await.unwrap();
        if let Some(r) = rows
            .iter()
            .find(|r| r.dn.eq_ignore_ascii_case(&src.dn) && r.plan_id > first)
        {
            break r.plan_id;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the drift was not repaired in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eventually(Duration::from_secs(60), "the repair recorded on dc2", || {
        let store = running.store.clone();
        let dn = src.dn.clone();
        async move { recorded_on_dc2(&store, second, &dn).await.is_some() }
    })
    .await;
    report(&format!(
        "dc2 added by a reload: plan {second}'s repair recorded on dc2 {:.1} s after the drift",
        t.elapsed().as_secs_f64()
    ));
    cleanup(lab, running, &fleet).await;
}
