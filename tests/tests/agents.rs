//! Agents and the controller over real sockets and real mTLS: reports
//! arrive, attempts are never lost nor duplicated, impostors are refused,
//! hostile input gets a clear error.

use std::time::Duration;

use kcdsync_agent::probe::HostProbe;
use kcdsync_controller::certs::Validity;
use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::agent_service_client::AgentServiceClient;
use kcdsync_proto::v1::*;
use kcdsync_tests::agents::*;
use tonic::transport::Endpoint;

fn sqlite(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}?mode=rwc", dir.path().join("kcdsync.db").display())
}

#[tokio::test]
async fn three_simulated_agents_report_over_mtls_and_are_queryable() {
    let pki = Pki::new();
    let db = tempfile::tempdir().unwrap();
    let ep = AgentEndpoint::spawn(&pki, &sqlite(&db), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let hosts = ["hv01.lab.test", "hv02.lab.test", "hv03.lab.test"];
    let dirs: Vec<_> = hosts.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut agents = Vec::new();
    for (h, d) in hosts.iter().zip(&dirs) {
        let mut host = sim_host(h);
        if *h == "hv03.lab.test" {
            host.services.vmms = "stopped".into();
            host.migration.authentication = "credssp".into();
        }
        agents.push(SimAgent::start(host, d.path(), settings(&ep.url(), pki.agent_tls(h))));
    }
    let store = ep.store.clone();
    eventually(Duration::from_secs(20), "three hosts reported", || {
        let store = store.clone();
        async move { store.reporting_hosts().await.unwrap().len() == 3 }
    })
    .await;
    assert_eq!(ep.hub.connected_hosts(), hosts.to_vec());
    let (report, _, _) = store.latest_report("hv03.lab.test").await.unwrap().unwrap();
    let id = report.identity.unwrap();
    assert_eq!((id.fqdn.as_str(), id.netbios_name.as_str()), ("hv03.lab.test", "HV03"));
    let vmms = report.services.iter().find(|s| s.name == "vmms").unwrap();
    assert_eq!(vmms.state, ServiceState::Stopped as i32);
    assert_eq!(
        report.migration.unwrap().authentication_type,
        MigrationAuthType::Credssp as i32
    );
    assert!(!ep.hub.liveness("hv01.lab.test").stale);

    // A reported authentication failure asks for a reconcile of its source.
    let mut ep = ep;
    agents[0]
        .probe
        .migrate("vm7", "hv02.lab.test", "alice", Some(false))
        .await;
    let t = tokio::time::timeout(Duration::from_secs(10), ep.triggers.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.host, "hv01.lab.test");
    assert_eq!(t.reason, "attempt:hv01.lab.test:1");

    // Commands reach the agent.
    ep.hub
        .command(
            "hv02.lab.test",
            command::Kind::PurgeSystemTickets(PurgeSystemTickets {}),
            "test",
        )
        .unwrap();
    for a in agents {
        a.stop().await;
    }
    let hub = ep.hub.clone();
    eventually(Duration::from_secs(10), "agents disconnected", || {
        let hub = hub.clone();
        async move { hub.connected_hosts().is_empty() }
    })
    .await;
    ep.stop().await;
}

#[tokio::test]
async fn a_thousand_attempts_recorded_during_a_controller_outage_are_stored_exactly_once() {
    let pki = Pki::new();
    let db = tempfile::tempdir().unwrap();
    let ep = AgentEndpoint::spawn(&pki, &sqlite(&db), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = ep.addr;
    let url = ep.url();
    ep.stop().await;

    // The controller is down; the host keeps migrating.
    let dir = tempfile::tempdir().unwrap();
    let agent = SimAgent::start(
        sim_host("hv01.lab.test"),
        dir.path(),
        settings(&url, pki.agent_tls("hv01.lab.test")),
    );
    for i in 0..1000 {
        agent
            .probe
            .migrate(&format!("vm{i}"), "hv02.lab.test", "alice", Some(i % 3 != 0))
            .await;
    }
    eventually(Duration::from_secs(30), "1000 attempts in the outbox", || {
        let n = agent.outbox_depth();
        async move { n == 1000 }
    })
    .await;

    // The agent restarts while the controller is still down: nothing is lost.
    agent.kill().await;
    let agent = SimAgent::start(
        sim_host("hv01.lab.test"),
        dir.path(),
        settings(&url, pki.agent_tls("hv01.lab.test")),
    );

    let ep = AgentEndpoint::spawn(&pki, &sqlite(&db), addr).await.unwrap();
    let store = ep.store.clone();
    eventually(Duration::from_secs(30), "1000 attempts stored", || {
        let store = store.clone();
        async move { store.attempt_count().await.unwrap() >= 1000 }
    })
    .await;
    eventually(Duration::from_secs(10), "outbox drained", || {
        let n = agent.outbox_depth();
        async move { n == 0 }
    })
    .await;
    let stored = store.attempts(Some("hv01.lab.test"), 5000).await.unwrap();
    assert_eq!(stored.len(), 1000);
    let mut ids: Vec<&str> = stored.iter().map(|a| a.attempt_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "no attempt stored twice");
    assert_eq!(stored.iter().filter(|a| !a.success).count(), 334);
    assert!(stored.iter().filter(|a| !a.success).all(|a| a.error_code == 0x8009030E));
    agent.stop().await;
    ep.stop().await;
}

#[tokio::test]
async fn an_agent_restarted_mid_send_loses_and_duplicates_nothing() {
    let pki = Pki::new();
    let db = tempfile::tempdir().unwrap();
    let ep = AgentEndpoint::spawn(&pki, &sqlite(&db), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host("hv05.lab.test");
    let probe = std::sync::Arc::new(
        kcdsync_agent::probe::simulated::SimulatedProbe::new(host.clone(), &dir.path().join("host")).unwrap(),
    );
    for i in 0..1000 {
        probe
            .migrate(&format!("vm{i}"), "hv06.lab.test", "alice", Some(true))
            .await;
    }
    let tls = || pki.agent_tls("hv05.lab.test");
    let agent = SimAgent::start_with(probe.clone(), dir.path(), settings(&ep.url(), tls()));
    let store = ep.store.clone();
    eventually(Duration::from_secs(30), "some attempts stored", || {
        let store = store.clone();
        async move { store.attempt_count().await.unwrap() > 0 }
    })
    .await;
    agent.kill().await;
    let after_kill = store.attempt_count().await.unwrap();

    let agent = SimAgent::start_with(probe, dir.path(), settings(&ep.url(), tls()));
    eventually(Duration::from_secs(30), "all attempts stored and acknowledged", || {
        let store = store.clone();
        let n = agent.outbox_depth();
        async move { store.attempt_count().await.unwrap() == 1000 && n == 0 }
    })
    .await;
    println!("stored before the kill: {after_kill}; after the restart: 1000, outbox empty");
    assert_eq!(store.attempts(None, 5000).await.unwrap().len(), 1000);
    agent.stop().await;
    ep.stop().await;
}

fn hello_msg(claimed: &str) -> AgentMessage {
    AgentMessage {
        seq: 1,
        body: Some(Body::Hello(Hello {
            identity: Some(HostIdentity {
                fqdn: claimed.into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// Opens a raw stream with `tls`, sends `msgs`, and returns what came back
/// until the stream ended (or 5 s passed); an error ends the list.
async fn raw_session(
    url: &str,
    tls: tonic::transport::ClientTlsConfig,
    msgs: Vec<AgentMessage>,
) -> Result<Vec<ControllerMessage>, String> {
    let channel = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)
        .map_err(|e| format!("{e:?}"))?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = AgentServiceClient::new(channel).max_encoding_message_size(16 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), inbound.message()).await {
            Err(_) | Ok(Ok(None)) => return Ok(got),
            Ok(Ok(Some(m))) => got.push(m),
            Ok(Err(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

/// The first answer to a Hello as `claimed`.
async fn hello(url: &str, tls: tonic::transport::ClientTlsConfig, claimed: &str) -> Result<ControllerMessage, String> {
    let channel = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)
        .map_err(|e| format!("{e:?}"))?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello_msg(claimed)).await.unwrap();
    let mut inbound = AgentServiceClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err("closed".into()),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

#[tokio::test]
async fn hostile_messages_get_a_clear_error_and_the_controller_stays_up() {
    let pki = Pki::new();
    let db = tempfile::tempdir().unwrap();
    let ep = AgentEndpoint::spawn(&pki, &sqlite(&db), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = ep.url();
    let host = "hv01.lab.test";

    // 2 MiB in one message, over the 1 MiB limit.
    let huge = AgentMessage {
        seq: 2,
        body: Some(Body::Report(HostReport {
            probe_errors: vec!["x".repeat(2 << 20)],
            ..Default::default()
        })),
    };
    let e = raw_session(&url, pki.agent_tls(host), vec![hello_msg(host), huge])
        .await
        .unwrap_err();
    assert!(
        e.contains("OutOfRange") || e.contains("ResourceExhausted") || e.contains("message length"),
        "{e}"
    );

    // An enum value no Windows build produces.
    let bogus = AgentMessage {
        seq: 2,
        body: Some(Body::Report(HostReport {
            services: vec![ServiceStatus {
                name: "vmms".into(),
                state: 99,
                start_mode: 3,
            }],
            ..Default::default()
        })),
    };
    let e = raw_session(&url, pki.agent_tls(host), vec![hello_msg(host), bogus])
        .await
        .unwrap_err();
    assert!(
        e.contains("InvalidArgument") && e.contains("report.services[0].state = 99"),
        "{e}"
    );

    // A report for another host on a bound stream.
    let other = AgentMessage {
        seq: 2,
        body: Some(Body::Report(HostReport {
            identity: Some(HostIdentity {
                fqdn: "hv02.lab.test".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let e = raw_session(&url, pki.agent_tls(host), vec![hello_msg(host), other])
        .await
        .unwrap_err();
    assert!(e.contains("PermissionDenied"), "{e}");

    // Something other than Hello first.
    let e = raw_session(
        &url,
        pki.agent_tls(host),
        vec![AgentMessage {
            seq: 1,
            body: Some(Body::Heartbeat(Heartbeat::default())),
        }],
    )
    .await
    .unwrap_err();
    assert!(e.contains("must be Hello"), "{e}");

    assert!(ep.store.latest_report("hv02.lab.test").await.unwrap().is_none());
    // Still serving.
    let ok = hello(&url, pki.agent_tls(host), host).await;
    assert!(
        matches!(
            ok,
            Ok(ControllerMessage {
                body: Some(controller_message::Body::Welcome(_))
            })
        ),
        "{ok:?}"
    );
    ep.stop().await;
}

#[tokio::test]
async fn impostors_and_bad_certificates_are_refused() {
    let pki = Pki::new();
    let db = tempfile::tempdir().unwrap();
    let ep = AgentEndpoint::spawn(&pki, &sqlite(&db), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = ep.url();

    let ok = hello(&url, pki.agent_tls("hv01.lab.test"), "hv01.lab.test").await;
    assert!(
        matches!(
            ok,
            Ok(ControllerMessage {
                body: Some(controller_message::Body::Welcome(_))
            })
        ),
        "{ok:?}"
    );

    let e = hello(&url, pki.agent_tls("hv01.lab.test"), "hv02.lab.test")
        .await
        .unwrap_err();
    assert!(
        e.contains("PermissionDenied") && e.contains("not for `hv02.lab.test`"),
        "{e}"
    );

    let e = hello(&url, pki.client_tls(None), "hv01.lab.test").await.unwrap_err();
    println!("no client certificate: {e}");

    let other = kcdsync_controller::certs::Ca::new("another CA").unwrap();
    let e = hello(
        &url,
        pki.client_tls(Some(other.issue_agent("hv01.lab.test", Validity::days(1)).unwrap())),
        "hv01.lab.test",
    )
    .await
    .unwrap_err();
    println!("certificate from another CA: {e}");

    let expired = pki.ca.issue_agent("hv01.lab.test", Validity::expired()).unwrap();
    let e = hello(&url, pki.client_tls(Some(expired)), "hv01.lab.test")
        .await
        .unwrap_err();
    println!("expired certificate: {e}");

    assert!(ep.hub.connected_hosts().iter().all(|h| h == "hv01.lab.test"));
    ep.stop().await;
}

#[tokio::test]
async fn simulated_probe_reports_what_the_host_file_says() {
    let dir = tempfile::tempdir().unwrap();
    let p = kcdsync_agent::probe::simulated::SimulatedProbe::new(sim_host("hv09.lab.test"), dir.path()).unwrap();
    let r = p.report().await;
    assert_eq!(r.identity.unwrap().netbios_name, "HV09");
}

#[tokio::test]
async fn a_simulated_migration_is_the_kdcs_verdict() {
    use kcdsync_controller::{config::Config, ldap::Ad, reconcile, store::Store};
    use kcdsync_tests::{BindAs, FleetSpec, Lab, write_config};
    let lab = Lab::start();
    let names = ["SIM01", "SIM02"];
    let fleet = FleetSpec::new("t-sim", &names)
        .kerberos_only_mesh()
        .user("sim-alice", 0)
        .create(lab)
        .await
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let probe = kerberized_probe(lab, fleet.host("SIM01"), state.path());
    let peer = &fleet.host("SIM02").fqdn;

    let before = probe.migrate("vm1", peer, "sim-alice", None).await;
    assert!(
        !before.success,
        "Kerberos only: the KDC must refuse: {}",
        before.message
    );
    assert_eq!(before.error_code, 0x8009030E);
    assert!(
        before.message.contains("constrained delegation failed"),
        "{}",
        before.message
    );
    let tickets = probe.report().await.system_tickets;
    assert!(
        tickets.iter().any(|t| t.server.starts_with("krbtgt/")),
        "the host holds its TGT: {tickets:?}"
    );

    let (_dir, path) = write_config(&fleet.config(lab, BindAs::Svc, "enforce", &names, ""));
    let cfg = Config::load(&path).unwrap();
    let ad = Ad::connect(&cfg.ad).await.unwrap();
    let store = Store::open(&cfg.store_url).await.unwrap();
    reconcile::reconcile(&cfg, &ad, &store, reconcile::RunOptions::default())
        .await
        .unwrap();

    probe.purge_system_tickets().await.unwrap();
    assert!(probe.report().await.system_tickets.is_empty(), "purged");
    let after = probe.migrate("vm1", peer, "sim-alice", None).await;
    assert!(after.success, "after reconcile the KDC must grant: {}", after.message);
}
