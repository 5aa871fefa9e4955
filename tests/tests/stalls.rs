//! Nothing stalls the controller: an agent that never reads its stream is cut off while
//! reconciles and approvals go on (its purge waits for its next connection), an API call that
//! outlasts its deadline hears so while its reconcile goes on, and clients that never finish a
//! TLS handshake cannot exhaust either port.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kcdsync_controller::grpc::agents::DOWN_QUEUE;
use kcdsync_controller::grpc::limits;
use kcdsync_controller::runtime;
use kcdsync_proto::v1 as pb;
use kcdsync_proto::v1::agent_service_client::AgentServiceClient;
use kcdsync_tests::agents::*;
use kcdsync_tests::*;
use sqlx::Connection;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// One successful migration, which the controller acknowledges.
fn attempts(fqdn: &str, seq: u64) -> pb::AgentMessage {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    pb::AgentMessage {
        seq,
        body: Some(pb::agent_message::Body::Attempts(pb::MigrationAttempts {
            attempts: vec![pb::MigrationAttempt {
                attempt_id: format!("{fqdn}:{seq}"),
                time: Some(prost_types::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: 0,
                }),
                vm_name: "vm-web".into(),
                peer: "peer.lab.test".into(),
                role: pb::MigrationRole::Source as i32,
                success: true,
                ..Default::default()
            }],
        })),
    }
}

/// An agent that says Hello and then reads nothing: its HTTP/2 receive window is zero, so
/// whatever the controller sends it stays queued on the controller's side.
struct DeafAgent {
    uplink: mpsc::Sender<pb::AgentMessage>,
    downlink: tonic::Streaming<pb::ControllerMessage>,
}

async fn deaf_agent(url: &str, tls: ClientTlsConfig, fqdn: &str) -> DeafAgent {
    let channel = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .initial_stream_window_size(0)
        .connect()
        .await
        .expect("connect");
    let (uplink, rx) = mpsc::channel(DOWN_QUEUE + 4);
    uplink.send(hello_msg(fqdn)).await.unwrap();
    let downlink = AgentServiceClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    DeafAgent { uplink, downlink }
}

/// A fleet in `ou` whose hosts all delegate to each other correctly.
async fn healthy_mesh(lab: &Lab, ou: &str, names: &[&str]) -> Fleet {
    FleetSpec::new(ou, names)
        .kerberos_only_mesh()
        .uac(WORKSTATION | T2A4D)
        .create(lab)
        .await
        .unwrap()
}

type Api = pb::fleet_service_client::FleetServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

async fn pending_plans(api: &mut Api) -> Vec<pb::Plan> {
    let state = pb::PlanState::PendingApproval as i32;
    let r = api.list_plans(pb::ListPlansRequest {
        state,
        ..Default::default()
    });
    r.await.unwrap().into_inner().plans
}

/// The deadline of the write calls (the shared lab can be slow).
const DEADLINE: Duration = Duration::from_secs(60);

/// A write call with a deadline the server learns (`grpc-timeout`).
fn with_deadline<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(deadline);
    r
}

#[tokio::test]
async fn an_agent_that_never_reads_is_cut_off_while_reconciles_and_approvals_go_on() {
    let lab = Lab::start();
    let fleet = healthy_mesh(lab, "t-stl", &["STL01", "STL02", "STL03"]).await;
    let pki = Pki::new();
    // STL03 is not in the group: removing the entries to it waits for approval.
    let running = runtime::start(controller_config(lab, &fleet, &pki, "enforce", &["STL01", "STL02"]))
        .await
        .unwrap();
    running.reconciled(1).await;
    let hub = running.hub.clone().unwrap();
    let stl01 = fleet.host("STL01");
    let url = format!("https://127.0.0.1:{}", running.agents_addr.unwrap().port());
    let mut deaf = deaf_agent(&url, pki.agent_tls(&stl01.fqdn), &stl01.fqdn).await;
    let h = hub.clone();
    let fqdn = stl01.fqdn.clone();
    eventually(Duration::from_secs(10), "the deaf agent connected", || {
        let (h, fqdn) = (h.clone(), fqdn.clone());
        async move { h.liveness(&fqdn).connected }
    })
    .await;

    // It keeps sending (migrations), and every acknowledgement waits in its queue; a full
    // queue costs acknowledgements only (the agent resends), never a wait.
    for seq in 2..=DOWN_QUEUE as u64 + 1 {
        deaf.uplink.send(attempts(&stl01.fqdn, seq)).await.unwrap();
    }
    let store = running.store.clone();
    eventually(
        Duration::from_secs(20),
        "its attempts stored (and acknowledged)",
        || {
            let store = store.clone();
            async move { store.attempt_count().await.unwrap() == DOWN_QUEUE as i64 }
        },
    )
    .await;
    assert!(hub.liveness(&stl01.fqdn).connected);

    // Drift on STL01: the reconcile repairs it and sends a purge that does not fit.
    let mut api = fleet_client(&pki, running.api_addr.unwrap(), Some(WRITE_TOKEN), None).await;
    lab.set_uac(&stl01.dn, WORKSTATION).await.unwrap();
    let asked = Instant::now();
    let r = api
        .trigger_reconcile(with_deadline(pb::TriggerReconcileRequest::default(), DEADLINE))
        .await
        .expect("reconciled")
        .into_inner();
    assert!(asked.elapsed() < DEADLINE, "answered within its deadline");
    assert_eq!((r.hosts_changed, r.hosts_pending_approval), (1, 1));
    assert!(!hub.liveness(&stl01.fqdn).connected, "cut off for not reading");
    // Its connection is closed: the stream fails even though the agent read nothing.
    let end = tokio::time::timeout(Duration::from_secs(10), deaf.downlink.message())
        .await
        .expect("the controller closed the deaf agent's connection");
    assert!(end.is_err(), "{end:?}");
    let missed = running
        .store
        .undelivered_purge(&stl01.fqdn)
        .await
        .unwrap()
        .expect("the purge it missed is recorded");
    assert!(
        missed
            .reason
            .starts_with(&format!("delegation of {} changed by plan", stl01.fqdn)),
        "{missed:?}"
    );

    // An approval answers within its deadline; its purge to the absent agent is kept too.
    let pending = pending_plans(&mut api).await;
    assert_eq!(pending.len(), 1, "the removals of STL03's entries wait");
    let asked = Instant::now();
    let approved = api
        .approve_plan(with_deadline(
            pb::ApprovePlanRequest {
                id: pending[0].id.clone(),
                comment: String::new(),
            },
            DEADLINE,
        ))
        .await
        .expect("approved")
        .into_inner();
    assert!(asked.elapsed() < DEADLINE);
    assert_eq!(approved.state, pb::PlanState::Applied as i32);
    assert!(
        !lab.read_host(&stl01.dn)
            .await
            .unwrap()
            .delegate
            .iter()
            .any(|e| e.to_lowercase().contains("stl03"))
    );
    let missed = running.store.undelivered_purge(&stl01.fqdn).await.unwrap().unwrap();
    assert!(missed.reason.contains(&format!("plan {}", pending[0].id)), "{missed:?}");

    // A real agent for STL01 connects, gets the purge it missed and answers it.
    let dir = tempfile::tempdir().unwrap();
    let agent = SimAgent::start(
        sim_host(&stl01.fqdn),
        dir.path(),
        settings(&url, pki.agent_tls(&stl01.fqdn)),
    );
    let store = running.store.clone();
    let fqdn = stl01.fqdn.clone();
    eventually(
        Duration::from_secs(20),
        "the missed purge delivered and answered",
        || {
            let (store, fqdn) = (store.clone(), fqdn.clone());
            async move { store.undelivered_purge(&fqdn).await.unwrap().is_none() }
        },
    )
    .await;
    agent.stop().await;
    running.stop().await;
}

#[tokio::test]
async fn a_call_that_outlasts_its_deadline_hears_so_and_its_reconcile_goes_on() {
    let lab = Lab::start();
    let names = ["DLN01", "DLN02"];
    let fleet = healthy_mesh(lab, "t-dln", &names).await;
    let pki = Pki::new();
    let cfg = controller_config(lab, &fleet, &pki, "enforce", &names);
    let store_url = cfg.store_url.clone();
    let running = runtime::start(cfg).await.unwrap();
    running.reconciled(1).await;
    let dln01 = fleet.host("DLN01");
    lab.set_uac(&dln01.dn, WORKSTATION).await.unwrap();

    // Someone holds the state store's write lock: the reconcile waits for it.
    let mut blocker = sqlx::sqlite::SqliteConnection::connect(&store_url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut blocker).await.unwrap();
    let mut api = fleet_client(&pki, running.api_addr.unwrap(), Some(WRITE_TOKEN), None).await;
    let asked = Instant::now();
    let e = api
        .trigger_reconcile(with_deadline(
            pb::TriggerReconcileRequest::default(),
            Duration::from_secs(1),
        ))
        .await
        .expect_err("the reconcile cannot finish in time");
    assert!(asked.elapsed() < Duration::from_secs(5), "{:?}", asked.elapsed());
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(
        e.message()
            .starts_with("the reconcile did not finish within 0.9s; it goes on without this call"),
        "{}",
        e.message()
    );
    assert!(
        lab.read_host(&dln01.dn).await.unwrap().uac & T2A4D == 0,
        "not written yet"
    );

    // The lock goes; the reconcile finishes on its own.
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    drop(blocker);
    let store = running.store.clone();
    eventually(Duration::from_secs(60), "the reconcile went on and wrote", || {
        let store = store.clone();
        async move { store.audit_count().await.unwrap() == 1 }
    })
    .await;
    assert_eq!(lab.read_host(&dln01.dn).await.unwrap().uac, WORKSTATION | T2A4D);
    running.stop().await;
}

/// Opens `n` TCP connections to `addr` that never start a handshake.
async fn silent_connections(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    v
}

/// Splits `conns` into how many the server closes within `within` (reads end or fail) and
/// those still open.
async fn closed_within(conns: Vec<tokio::net::TcpStream>, within: Duration) -> (usize, Vec<tokio::net::TcpStream>) {
    let reads = conns.into_iter().map(|mut c| async move {
        let mut b = [0u8; 16];
        let closed = matches!(
            tokio::time::timeout(within, c.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
        (closed, c)
    });
    let all = futures::future::join_all(reads).await;
    let closed = all.iter().filter(|(c, _)| *c).count();
    (closed, all.into_iter().filter(|(c, _)| !c).map(|(_, s)| s).collect())
}

/// A client from another loopback address (127.0.0.2), as a different caller would be.
async fn other_client(addr: SocketAddr, tls: ClientTlsConfig) -> tonic::transport::Channel {
    Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("another client still connects")
}

#[tokio::test]
async fn clients_that_never_finish_a_handshake_cannot_exhaust_either_port() {
    let lab = Lab::start();
    let fleet = FleetSpec::new("t-shk", &["SHK01"]).create(lab).await.unwrap();
    let pki = Pki::new();
    let running = runtime::start(controller_config(lab, &fleet, &pki, "observe", &["SHK01"]))
        .await
        .unwrap();
    running.reconciled(1).await;
    let (agents, api) = (running.agents_addr.unwrap(), running.api_addr.unwrap());

    // One client opens more silent connections than one address may hold in handshake.
    let extra = 8;
    let slow_agents = silent_connections(agents, limits::AGENTS.conn.handshakes_per_ip + extra).await;
    let slow_api = silent_connections(api, limits::API.conn.handshakes_per_ip + extra).await;
    let started = Instant::now();
    let ((a, slow_agents), (b, slow_api)) = tokio::join!(
        closed_within(slow_agents, Duration::from_secs(2)),
        closed_within(slow_api, Duration::from_secs(2))
    );
    assert_eq!(
        (a, b),
        (extra, extra),
        "the ones over the per-address cap are closed at once"
    );

    // Meanwhile another caller is served on both ports.
    let shk01 = &fleet.host("SHK01").fqdn;
    let channel = other_client(agents, pki.agent_tls(shk01)).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello_msg(shk01)).await.unwrap();
    let mut down = AgentServiceClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("an agent is served")
        .into_inner();
    let welcome = down.message().await.unwrap().unwrap();
    assert!(matches!(welcome.body, Some(pb::controller_message::Body::Welcome(_))));
    let channel = other_client(api, pki.client_tls(None)).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the API is served");
    assert!(
        started.elapsed() < limits::AGENTS.conn.handshake_timeout,
        "served while the slow ones wait"
    );

    // The silent ones are dropped once the handshake timeout passes.
    let left = limits::AGENTS.conn.handshake_timeout + Duration::from_secs(5);
    let ((a, _), (b, _)) = tokio::join!(closed_within(slow_agents, left), closed_within(slow_api, left));
    assert_eq!(
        (a, b),
        (
            limits::AGENTS.conn.handshakes_per_ip,
            limits::API.conn.handshakes_per_ip
        ),
        "every silent connection is closed after the handshake timeout"
    );
    drop(tx);
    running.stop().await;
}
