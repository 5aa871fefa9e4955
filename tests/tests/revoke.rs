//! Revoking an agent, end to end: a real agent endpoint with real mTLS and a real agent
//! streaming to it; the operator revokes its host; its live streams end within a second with
//! PERMISSION_DENIED saying why and how to undo it; every reconnect is refused and logged;
//! after an unrevoke the agent is back on its own. And the same from the operator's side: the
//! real `kcdsync-controller agents ...` binary.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kcdsync_controller::revocation;
use kcdsync_controller::store::Store;
use kcdsync_proto::v1::*;
use kcdsync_tests::agents::*;
use kcdsync_tests::otlp::{Observed, observe_process};
use kcdsync_tests::*;
use tonic::Streaming;

/// This process's log lines and exported metrics (`kcdsync_tests::otlp::observe_process`).
fn observed() -> &'static Observed {
    observe_process("kcdsync-revoke-test")
}

/// The total of `kcdsync.agents.revoked_refused` for `stage`, as last exported.
fn refused_count(stage: &str) -> f64 {
    observed()
        .otlp
        .last_value("kcdsync.agents.revoked_refused", "stage", stage)
}

/// Reads `inbound` until it ends; the status it ended with.
async fn ending(inbound: &mut Streaming<ControllerMessage>) -> tonic::Status {
    loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(s) => return s,
        }
    }
}

fn assert_says_revoked(s: &tonic::Status, host: &str) {
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    let m = s.message();
    assert!(m.contains(&format!("the agent of {host} is revoked")), "{m}");
    assert!(m.contains("by alice: key leaked"), "who and why: {m}");
    assert!(
        m.contains(&format!("kcdsync-controller agents unrevoke {host}")),
        "how to undo: {m}"
    );
}

#[test]
fn a_revoked_agent_is_cut_within_a_second_refused_while_revoked_and_back_after_unrevoke() {
    run_with_room(async {
        let logs = &observed().logs;
        let pki = Pki::new();
        let db = tempfile::tempdir().unwrap();
        let ep = AgentEndpoint::spawn(&pki, &sqlite_in(db.path()), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let (host, other) = ("hv01.lab.test", "hv02.lab.test");

        // A real agent streams for hv01, another for hv02; and a second stream of hv01 opened
        // by hand (a lingering old connection, or a copy of its key): revoking must end both.
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let agent = SimAgent::start(sim_host(host), dirs[0].path(), settings(&ep.url(), pki.agent_tls(host)));
        let bystander = SimAgent::start(
            sim_host(other),
            dirs[1].path(),
            settings(&ep.url(), pki.agent_tls(other)),
        );
        let (store, hub) = (ep.store.clone(), ep.hub.clone());
        eventually(Duration::from_secs(20), "both agents reported", || {
            let store = store.clone();
            async move { store.reporting_hosts().await.unwrap().len() == 2 }
        })
        .await;
        let (_keep, mut second) = open_stream(&ep.url(), pki.agent_tls(host), host).await.unwrap();
        assert_eq!(hub.open_streams(host), 2);

        // The operator revokes hv01 (what `agents revoke` does, on the same store).
        let revoked_at = Instant::now();
        revocation::revoke(&store, host, "key leaked", "alice").await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), ending(&mut second))
            .await
            .expect("the live stream of a revoked host ends");
        let elapsed = revoked_at.elapsed();
        assert_says_revoked(&ended, host);
        assert!(elapsed < Duration::from_secs(1), "cut after {elapsed:?}");
        // The agent's own stream ended too, in the same second.
        let h = hub.clone();
        eventually(
            Duration::from_secs(1).saturating_sub(revoked_at.elapsed()),
            "no stream of hv01 is left",
            || {
                let n = h.open_streams(host);
                async move { n == 0 }
            },
        )
        .await;
        println!(
            "revoked -> live stream ended: {elapsed:?}; all streams of {host} gone: {:?}",
            revoked_at.elapsed()
        );
        let cuts = logs
            .text()
            .lines()
            .filter(|l| l.contains("agent stream cut: its host was revoked") && l.contains(host))
            .count();
        assert_eq!(cuts, 2, "{}", logs.text());

        // Reconnecting is refused, saying why and how to undo; the real agent keeps trying
        // (its backoff is at most 0.8 s here) and never gets in; every refusal is logged.
        let refused = open_stream(&ep.url(), pki.agent_tls(host), host).await.unwrap_err();
        assert_says_revoked(&refused, host);
        let watch_until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < watch_until {
            assert_eq!(hub.open_streams(host), 0, "a revoked host got a stream");
            assert!(!hub.connected_hosts().contains(&host.to_owned()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refusals: Vec<String> = logs
            .text()
            .lines()
            .filter(|l| l.contains("agent refused: its host is revoked") && l.contains(host))
            .map(str::to_owned)
            .collect();
        assert!(
            refusals.len() >= 2,
            "the hand-made attempt and the agent's retries: {refusals:?}"
        );
        assert!(
            refusals.iter().all(|l| l.contains("127.0.0.1:")),
            "each names the host and its address: {refusals:?}"
        );
        // The agent's own log says why it is refused and how to undo it.
        let agent_said = logs
            .text()
            .lines()
            .filter(|l| l.contains("the controller refused this agent") && l.contains("is revoked"))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        assert!(
            agent_said
                .iter()
                .any(|l| l.contains(&format!("agents unrevoke {host}"))),
            "{}",
            logs.text()
        );
        // hv02 never noticed.
        assert_eq!(hub.open_streams(other), 1);
        assert!(!hub.liveness(other).stale);

        // Each refusal and each cut is counted (by stage), as an operator's dashboard sees it.
        let logged = refusals.len() as f64;
        eventually(
            Duration::from_secs(5),
            "the refusals and cuts exported as metrics",
            || {
                let (hello, live) = (refused_count("hello"), refused_count("live"));
                async move { hello >= logged && live >= 2.0 }
            },
        )
        .await;
        println!(
            "kcdsync.agents.revoked_refused: hello {}, live {}",
            refused_count("hello"),
            refused_count("live")
        );

        // Unrevoked, the agent is back on its next retry and reports again.
        revocation::unrevoke(&store, host, "bob").await.unwrap();
        let unrevoked_ms = kcdsync_controller::store::now_ms();
        let (store2, h) = (store.clone(), hub.clone());
        eventually(
            Duration::from_secs(10),
            "hv01's agent connected and reporting again",
            || {
                let (store, connected) = (store2.clone(), h.connected_hosts().contains(&host.to_owned()));
                async move {
                    connected
                        && store
                            .latest_report(host)
                            .await
                            .unwrap()
                            .is_some_and(|(_, received, _)| received > unrevoked_ms)
                }
            },
        )
        .await;

        // The audit says who did what.
        let events = store.audit_events(Some(host), 10).await.unwrap();
        let kinds: Vec<(&str, &str)> = events.iter().map(|e| (e.kind.as_str(), e.actor.as_str())).collect();
        assert_eq!(kinds, [("agent-unrevoked", "bob"), ("agent-revoked", "alice")]);

        agent.stop().await;
        bystander.stop().await;
        ep.stop().await;
    });
}

/// A hub on another replica (a second endpoint on the same PostgreSQL store) cuts a stream of
/// a host revoked through the first: the deny-list lives in the store, not in one process.
#[test]
fn a_revocation_through_one_replica_cuts_the_stream_on_another() {
    observed();
    run_with_room(async {
        let Some(pg) = PgTestDb::create() else { return };
        let pki = Pki::new();
        let a = AgentEndpoint::spawn(&pki, &pg.url, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let b = AgentEndpoint::spawn(&pki, &pg.url, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let host = "hv07.lab.test";
        let (_keep, mut on_b) = open_stream(&b.url(), pki.agent_tls(host), host).await.unwrap();
        let revoked_at = Instant::now();
        revocation::revoke(&a.store, host, "key leaked", "alice").await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), ending(&mut on_b))
            .await
            .expect("the other replica cuts the stream");
        let elapsed = revoked_at.elapsed();
        assert_says_revoked(&ended, host);
        assert!(elapsed < Duration::from_secs(1), "cut after {elapsed:?}");
        let refused = open_stream(&b.url(), pki.agent_tls(host), host).await.unwrap_err();
        assert_says_revoked(&refused, host);
        a.stop().await;
        b.stop().await;
    });
}

fn controller(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(controller_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        // The receiver is this process's; the binary exports nothing here.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run kcdsync-controller")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn revoke_list_show_and_unrevoke_from_the_command_line() {
    // Not for its output: the environment is set before this test runs any process.
    observed();
    let lab = Lab::start();
    // The agents commands read only the store; the config must still be valid.
    let (_dir, path) = write_config(&format!(
        "{}\n[scope]\nbase_dns = [\"{}\"]\n\n[[group]]\nname = \"g\"\nmode = \"observe\"\nhosts = [\"hv01\", \"hv02\"]\n",
        lab.ad_section(BindAs::Svc),
        lab.fleet_ou()
    ));
    let cfg = kcdsync_controller::config::Config::load(&path).unwrap();
    // hv02's agent has reported (hv01's never did).
    let store = Store::open(&cfg.store_url).await.unwrap();
    store
        .ingest(&kcdsync_controller::store::IngestBatch {
            reports: vec![(
                "hv02.lab.test".into(),
                HostReport {
                    identity: Some(HostIdentity {
                        fqdn: "hv02.lab.test".into(),
                        os_caption: "Windows Server 2022".into(),
                        os_build: 20348,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )],
            ..Default::default()
        })
        .await
        .unwrap();
    store.close().await;

    // The help teaches what revoke does and how to undo it.
    let help = controller(&path, &["agents", "revoke", "--help"]);
    let text = stdout(&help);
    for needed in [
        "PERMISSION_DENIED",
        "within a second",
        "every controller",
        "agents unrevoke HOST",
    ] {
        assert!(text.contains(needed), "`{needed}` missing from:\n{text}");
    }

    // Bad input: a clear error, exit 1, nothing revoked.
    let long = "x".repeat(501);
    for (args, expect) in [
        (vec!["agents", "revoke", "HV01"], "give the host's FQDN"),
        (vec!["agents", "revoke", "hv01)(cn=*.lab.test"], "only letters, digits"),
        (
            vec!["agents", "revoke", "hv01.lab.test", "--reason", &long],
            "at most 500",
        ),
        (
            vec!["agents", "revoke", "hv01.lab.test", "--reason", "a\nb"],
            "on one line",
        ),
        (
            vec!["agents", "revoke", "hv01.lab.test", "--by", " "],
            "who revokes must be named",
        ),
    ] {
        let out = controller(&path, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(expect) && err.contains("nothing was revoked"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let list = controller(&path, &["agents", "list"]);
    assert!(!stdout(&list).contains("REVOKED"), "{}", stdout(&list));

    let out = controller(
        &path,
        &[
            "agents",
            "revoke",
            "HV01.Lab.Test",
            "--reason",
            "disk stolen",
            "--by",
            "alice",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("hv01.lab.test is revoked") && said.contains("agents unrevoke hv01.lab.test"),
        "{said}"
    );
    let again = controller(&path, &["agents", "revoke", "hv01.lab.test", "--by", "bob"]);
    assert!(
        stdout(&again).contains("already revoked") && stdout(&again).contains("by alice: disk stolen"),
        "{}",
        stdout(&again)
    );

    let list = stdout(&controller(&path, &["agents", "list"]));
    println!("{list}");
    let line = |h: &str| list.lines().find(|l| l.starts_with(h)).unwrap_or_default().to_owned();
    assert!(line("hv01.lab.test").contains("never"), "{list}");
    assert!(line("hv01.lab.test").contains("REVOKED since") && line("hv01.lab.test").contains("by alice: disk stolen"));
    assert!(line("hv02.lab.test").contains("allowed"), "{list}");
    let json: serde_json::Value =
        serde_json::from_slice(&controller(&path, &["agents", "list", "--output", "json"]).stdout).unwrap();
    assert_eq!(json[0]["host"], "hv01.lab.test");
    assert_eq!(json[0]["revoked"]["revoked_by"], "alice");
    assert_eq!(json[1]["revoked"], serde_json::Value::Null);

    let show = stdout(&controller(&path, &["agents", "show", "hv01.lab.test"]));
    println!("{show}");
    assert!(
        show.contains("REVOKED since") && show.contains("agent-revoked  by alice: disk stolen"),
        "{show}"
    );
    let show = stdout(&controller(&path, &["agents", "show", "hv02.lab.test"]));
    assert!(
        show.contains("allowed") && show.contains("Windows Server 2022 (build 20348)"),
        "{show}"
    );
    // The audit trail shows it after the AD changes (none here).
    let audit = stdout(&controller(&path, &["audit"]));
    assert!(
        audit.contains("Agent events (newest first):")
            && audit.contains("agent-revoked  hv01.lab.test  by alice: disk stolen"),
        "{audit}"
    );
    let unknown = controller(&path, &["agents", "show", "hv09.lab.test"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no agent of hv09.lab.test"),
        "{}",
        stderr(&unknown)
    );

    let out = controller(&path, &["agents", "unrevoke", "hv01.lab.test", "--by", "carol"]);
    assert!(
        out.status.success() && stdout(&out).contains("no longer revoked"),
        "{}",
        stderr(&out)
    );
    let out = controller(&path, &["agents", "unrevoke", "hv01.lab.test"]);
    assert!(
        stdout(&out).contains("is not revoked; nothing changed"),
        "{}",
        stdout(&out)
    );
    let show = stdout(&controller(&path, &["agents", "show", "hv01.lab.test"]));
    assert!(
        show.contains("state:      allowed") && show.contains("agent-unrevoked  by carol"),
        "{show}"
    );
}
