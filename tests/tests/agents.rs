//! Agents and the controller over real sockets and real mTLS: reports
//! arrive, attempts are never lost nor duplicated, impostors are refused,
//! hostile input gets a clear error.

use std::time::Duration;

use kcdsync_agent::probe::HostProbe;
use kcdsync_agent::probe::simulated::SimulatedProbe;
use kcdsync_controller::certs::Validity;
use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::agent_service_client::AgentServiceClient;
use kcdsync_proto::v1::*;
use kcdsync_tests::agents::*;
use kcdsync_tests::sqlite_in;
use tonic::transport::Endpoint;

#[tokio::test]
async fn three_simulated_agents_report_over_mtls_and_are_queryable() {
    let pki = Pki::new();
    let db = tempfile::tempdir().unwrap();
    let ep = AgentEndpoint::spawn(&pki, &sqlite_in(db.path()), "127.0.0.1:0".parse().unwrap())
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
    let ep = AgentEndpoint::spawn(&pki, &sqlite_in(db.path()), "127.0.0.1:0".parse().unwrap())
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

    let ep = AgentEndpoint::spawn(&pki, &sqlite_in(db.path()), addr).await.unwrap();
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
    let ep = AgentEndpoint::spawn(&pki, &sqlite_in(db.path()), "127.0.0.1:0".parse().unwrap())
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
    let ep = AgentEndpoint::spawn(&pki, &sqlite_in(db.path()), "127.0.0.1:0".parse().unwrap())
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
    let ep = AgentEndpoint::spawn(&pki, &sqlite_in(db.path()), "127.0.0.1:0".parse().unwrap())
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

/// A real `kcdsync-agent` process for `host`, its files in `dir`, reporting to `url`.
fn agent_process_config(pki: &Pki, dir: &std::path::Path, host: &str, url: &str) -> std::path::PathBuf {
    let (cert, key) = pki.ca.issue_agent(host, Validity::days(1)).unwrap();
    std::fs::write(dir.join("agent.pem"), cert).unwrap();
    kcdsync_tests::write_private(&dir.join("agent.key"), key);
    let netbios = host.split('.').next().unwrap().to_uppercase();
    std::fs::write(
        dir.join("host.toml"),
        format!("fqdn = \"{host}\"\nnetbios = \"{netbios}\"\n"),
    )
    .unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "controller_url = \"{url}\"\ntls_server_name = \"localhost\"\nca_file = \"{}\"\ncert_file = \"agent.pem\"\n\
             key_file = \"agent.key\"\noutbox_dir = \"outbox\"\nprobe = \"simulated\"\nsimulated_host = \"host.toml\"\n\
             attempts_interval_secs = 1\nreport_interval_secs = 60\n",
            pki.path("ca.pem").display()
        ),
    )
    .unwrap();
    config
}

fn spawn_agent(config: &std::path::Path, crash_at: Option<&str>) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(kcdsync_tests::workspace_bin("kcdsync-agent"));
    cmd.arg("--config")
        .arg(config)
        .arg("run")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(point) = crash_at {
        cmd.env("KCDSYNC_AGENT_TEST_CRASH_AT", point);
    }
    cmd.spawn()
        .expect("spawn kcdsync-agent (cargo build -p kcdsync-agent first)")
}

/// Reads the child's stderr until a line contains `marker`.
async fn wait_for_line(child: &mut tokio::process::Child, marker: &str) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("agent: {line}");
            if line.contains(marker) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the agent never printed `{marker}`");
}

fn outbox_files(outbox: &std::path::Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(outbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn an_agent_killed_between_storing_attempts_and_moving_its_cursor_loses_and_duplicates_nothing() {
    let pki = Pki::new();
    let db = tempfile::tempdir().unwrap();
    let ep = AgentEndpoint::spawn(&pki, &sqlite_in(db.path()), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut received = ep.hub.subscribe_attempts();
    let dir = tempfile::tempdir().unwrap();
    let config = agent_process_config(&pki, dir.path(), "hv01.lab.test", &ep.url());
    let outbox = dir.path().join("outbox");
    // Five migrations in the host's event log before the agent starts (the
    // agent keeps its simulated host under the outbox directory).
    let host = SimulatedProbe::new(sim_host("hv01.lab.test"), &outbox.join("simulated-host")).unwrap();
    for i in 1..=5 {
        host.migrate(&format!("vm{i}"), "hv02.lab.test", "alice", Some(i % 2 == 0))
            .await;
    }

    // The agent stores the five attempts, then is killed with SIGKILL before
    // it moves its event-log cursor.
    let mut agent = spawn_agent(&config, Some("outbox-after-attempts"));
    wait_for_line(&mut agent, "crash point outbox-after-attempts reached").await;
    agent.start_kill().unwrap();
    let status = agent.wait().await.unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    assert_eq!(outbox_files(&outbox, ".attempt").len(), 5, "the attempts were on disk");
    assert!(!outbox.join("cursor").exists(), "the cursor had not moved");
    assert!(
        ep.store.attempts(None, 100).await.unwrap().is_empty(),
        "nothing sent yet"
    );

    // Restarted, it reads the same five records again: same ids, stored once
    // in its outbox, sent once, stored once by the controller.
    let mut agent = spawn_agent(&config, None);
    let store = ep.store.clone();
    eventually(Duration::from_secs(30), "five attempts stored", || {
        let store = store.clone();
        async move { store.attempt_count().await.unwrap() >= 5 }
    })
    .await;
    let o = outbox.clone();
    eventually(Duration::from_secs(10), "outbox drained and cursor moved", || {
        let drained = outbox_files(&o, ".attempt").is_empty()
            && std::fs::read_to_string(o.join("cursor")).is_ok_and(|c| c.contains("record_id=5 "));
        async move { drained }
    })
    .await;
    host.migrate("vm6", "hv02.lab.test", "alice", Some(false)).await;
    eventually(Duration::from_secs(30), "the next attempt stored", || {
        let store = store.clone();
        async move { store.attempt_count().await.unwrap() >= 6 }
    })
    .await;
    agent.start_kill().unwrap();
    let _ = agent.wait().await;

    let mut ids: Vec<String> = store
        .attempts(Some("hv01.lab.test"), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.attempt_id)
        .collect();
    ids.sort();
    let expected: Vec<String> = (1..=6).map(|i| format!("hv01.lab.test:{i}")).collect();
    assert_eq!(ids, expected, "every attempt, under its stable id");
    let mut sent = Vec::new();
    while let Ok((_, a)) = received.try_recv() {
        sent.push(a.attempt_id);
    }
    sent.sort();
    assert_eq!(sent, expected, "each attempt reached the controller exactly once");
    ep.stop().await;
}

#[tokio::test]
async fn messages_the_controller_refuses_as_too_large_are_split_and_an_attempt_too_large_for_any_is_set_aside() {
    let pki = Pki::new();
    let db = tempfile::tempdir().unwrap();
    // The controller takes messages of 16 KiB; the agent believes 1 MiB.
    let ep = AgentEndpoint::spawn_limited(&pki, &sqlite_in(db.path()), "127.0.0.1:0".parse().unwrap(), 16 * 1024)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let probe = std::sync::Arc::new(SimulatedProbe::new(sim_host("hv01.lab.test"), &dir.path().join("host")).unwrap());
    // 100 ordinary attempts (some 35 KiB together) and, second, one whose VM
    // name alone is larger than any message the controller takes.
    probe.migrate("vm0", "hv02.lab.test", "alice", Some(true)).await;
    let giant = probe
        .migrate(&"v".repeat(20_000), "hv02.lab.test", "alice", Some(true))
        .await;
    for i in 1..100 {
        probe
            .migrate(&format!("vm{i}"), "hv02.lab.test", "alice", Some(false))
            .await;
    }
    let agent = SimAgent::start_with(probe, dir.path(), settings(&ep.url(), pki.agent_tls("hv01.lab.test")));

    let store = ep.store.clone();
    eventually(Duration::from_secs(60), "the 100 ordinary attempts stored", || {
        let store = store.clone();
        async move { store.attempt_count().await.unwrap() >= 100 }
    })
    .await;
    eventually(Duration::from_secs(10), "outbox drained", || {
        let n = agent.outbox_depth();
        async move { n == 0 }
    })
    .await;
    let stored = store.attempts(Some("hv01.lab.test"), 500).await.unwrap();
    assert_eq!(stored.len(), 100);
    assert!(stored.iter().all(|a| a.attempt_id != giant.attempt_id));
    let aside = outbox_files(&agent.outbox, "")
        .into_iter()
        .filter(|n| n.contains(".attempt.too-large-"))
        .count();
    assert_eq!(aside, 1, "the giant attempt is moved aside, not resent forever");

    // The host's reports say so.
    eventually(Duration::from_secs(10), "a report naming the attempt set aside", || {
        let store = store.clone();
        let id = giant.attempt_id.clone();
        async move {
            store
                .latest_report("hv01.lab.test")
                .await
                .unwrap()
                .is_some_and(|(r, _, _)| {
                    r.probe_errors
                        .iter()
                        .any(|e| e.contains(&id) && e.contains("too-large"))
                })
        }
    })
    .await;
    agent.stop().await;
    ep.stop().await;
}

/// The simulated host, counting the ticket purges the agent runs on it, and when.
struct CountingPurges {
    host: SimulatedProbe,
    ran: std::sync::Mutex<Vec<std::time::Instant>>,
}

impl HostProbe for CountingPurges {
    async fn report(&self) -> HostReport {
        self.host.report().await
    }

    async fn attempts(
        &self,
        since: &kcdsync_agent::probe::Cursor,
    ) -> Result<(Vec<MigrationAttempt>, kcdsync_agent::probe::Cursor), kcdsync_agent::probe::ProbeError> {
        self.host.attempts(since).await
    }

    async fn purge_system_tickets(&self) -> Result<String, kcdsync_agent::probe::ProbeError> {
        self.ran.lock().unwrap().push(std::time::Instant::now());
        self.host.purge_system_tickets().await
    }
}

#[tokio::test]
async fn a_burst_of_purges_from_the_controller_runs_once_per_interval_on_the_host() {
    let pki = Pki::new();
    let db = tempfile::tempdir().unwrap();
    let ep = AgentEndpoint::spawn(&pki, &sqlite_in(db.path()), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let host = "hv01.lab.test";
    let dir = tempfile::tempdir().unwrap();
    let probe = std::sync::Arc::new(CountingPurges {
        host: SimulatedProbe::new(sim_host(host), &dir.path().join("host")).unwrap(),
        ran: Default::default(),
    });
    let s = settings(&ep.url(), pki.agent_tls(host));
    let interval = s.purge_min_interval;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (p, outbox) = (probe.clone(), dir.path().join("outbox"));
    let agent = tokio::spawn(async move { kcdsync_agent::client::run(s, p, &outbox, rx).await });
    let hub = ep.hub.clone();
    eventually(Duration::from_secs(20), "the agent connected", || {
        let up = hub.connected_hosts().contains(&host.to_owned());
        async move { up }
    })
    .await;

    // Three delegation changes in a row: the host purges at once, then once more when the
    // interval is over, for the two that came within it.
    for plan in 1..=3 {
        hub.purge(host, &format!("delegation changed by plan {plan}"))
            .await
            .unwrap();
    }
    let ran = || probe.ran.lock().unwrap().clone();
    eventually(Duration::from_secs(10), "the first purge ran", || {
        let n = ran().len();
        async move { n >= 1 }
    })
    .await;
    eventually(interval * 3, "the waiting purges ran", || {
        let n = ran().len();
        async move { n >= 2 }
    })
    .await;
    tokio::time::sleep(interval).await;
    let times = ran();
    assert_eq!(times.len(), 2, "three purges asked for, two runs: {times:?}");
    assert!(
        times[1] - times[0] >= interval,
        "the second run came {:?} after the first, within the {interval:?} interval",
        times[1] - times[0]
    );
    let _ = stop.send(true);
    agent.await.unwrap().unwrap();
    ep.stop().await;
}
