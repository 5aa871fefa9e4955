//! OpenTelemetry end to end: the remediation of a failed migration exports
//! ONE trace — the agent's attempt, the controller's diagnosis, the
//! reconcile with its LDAP modify, the purge command and its execution —
//! to a real OTLP/gRPC receiver; metrics arrive; no secret leaks into spans
//! or logs. One test per binary: the tracing subscriber is process-global.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcdsync_controller::runtime;
use kcdsync_tests::agents::*;
use kcdsync_tests::otlp::{Receiver, SpanRecord};
use kcdsync_tests::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn ancestors<'a>(s: &'a SpanRecord, by_id: &HashMap<&str, &'a SpanRecord>) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut cur = s;
    while let Some(p) = by_id.get(cur.parent_span_id.as_str()) {
        out.push(p.name.as_str());
        cur = p;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remediation_is_one_trace_and_no_secret_leaks() {
    let receiver = Receiver::start().await;
    // SAFETY: set before any other thread of this test binary reads them.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
        std::env::set_var("OTEL_SERVICE_NAME", "kcdsync-otel-test");
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
        std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "300");
    }
    let logs = Captured::default();
    let writer = logs.clone();
    let telemetry = kcdsync_telemetry::init_with_writer(
        "kcdsync-otel-test",
        kcdsync_telemetry::LogFormat::Json,
        "info,kcdsync_controller=debug,kcdsync_agent=debug",
        kcdsync_telemetry::BoxMakeWriter::new(move || writer.clone()),
    );
    assert!(telemetry.exporting());

    let lab = Lab::start();
    let names = ["OTL01", "OTL02"];
    let fleet = FleetSpec::new("t-otl", &names)
        .kerberos_only_mesh()
        .uac(WORKSTATION | T2A4D)
        .user("otl-alice", 0)
        .create(lab)
        .await
        .unwrap();
    let pki = Pki::new();
    let running = runtime::start(controller_config(lab, &fleet, &pki, "enforce", &names))
        .await
        .unwrap();
    running.reconciled(1).await;
    let otl01 = fleet.host("OTL01");
    lab.set_uac(&otl01.dn, WORKSTATION).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(kerberized_probe(lab, otl01, dir.path()));
    let url = format!("https://127.0.0.1:{}", running.agents_addr.unwrap().port());
    let agent = SimAgent::start_with(probe.clone(), dir.path(), settings(&url, pki.agent_tls(&otl01.fqdn)));
    let failed = probe
        .migrate("vm-otel", &fleet.host("OTL02").fqdn, "otl-alice", None)
        .await;
    assert!(!failed.success);

    let store = running.store.clone();
    eventually(Duration::from_secs(30), "AD fixed", || {
        let store = store.clone();
        async move { store.audit_count().await.unwrap() == 1 }
    })
    .await;

    // Wait for the whole story to be exported: the agent executing the purge.
    eventually(Duration::from_secs(30), "the trace reaches the receiver", || {
        let done = receiver.spans().iter().any(|s| s.name == "command");
        async move { done }
    })
    .await;
    agent.stop().await;
    running.stop().await;
    telemetry.shutdown();

    let spans = receiver.spans();
    let attempt = spans
        .iter()
        .find(|s| s.name == "migration_attempt" && s.attr("attempt") == Some(failed.attempt_id.as_str()))
        .expect("the agent's attempt span");
    let trace: Vec<&SpanRecord> = spans.iter().filter(|s| s.trace_id == attempt.trace_id).collect();
    let by_id: HashMap<&str, &SpanRecord> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let find = |name: &str| {
        *trace
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no `{name}` span in the trace: {trace:#?}"))
    };
    println!("the remediation trace {}:", attempt.trace_id);
    for s in &trace {
        println!("  {:<18} <- {:?}", s.name, ancestors(s, &by_id));
    }
    let diagnose = find("diagnose");
    assert_eq!(
        diagnose.parent_span_id, attempt.span_id,
        "diagnosis continues the attempt"
    );
    let reconcile = find("reconcile");
    assert_eq!(
        reconcile.parent_span_id, diagnose.span_id,
        "the reconcile follows the diagnosis"
    );
    assert_eq!(
        reconcile.attr("trigger"),
        Some(format!("attempt:{}", failed.attempt_id).as_str())
    );
    let modify = trace
        .iter()
        .find(|s| s.name == "ldap.modify" && s.attr("dn") == Some(otl01.dn.as_str()))
        .expect("ldap.modify of the host");
    assert!(ancestors(modify, &by_id).contains(&"reconcile"));
    assert_eq!(modify.attr("ldap.result_code"), Some("0"));
    let purge = find("purge_command");
    assert_eq!(purge.parent_span_id, reconcile.span_id);
    let command = find("command");
    assert_eq!(
        command.parent_span_id, purge.span_id,
        "the agent's execution continues the controller's command"
    );
    for name in ["plan", "verify", "audit"] {
        assert!(
            ancestors(find(name), &by_id).contains(&"reconcile"),
            "{name} under reconcile"
        );
    }
    // It read AD first: a full observe, or (serve already holding the scope) the delta read.
    let read = trace
        .iter()
        .find(|s| matches!(s.name.as_str(), "observe" | "delta"))
        .unwrap_or_else(|| panic!("no observe or delta span in the trace: {trace:#?}"));
    assert!(
        ancestors(read, &by_id).contains(&"reconcile"),
        "{} under reconcile",
        read.name
    );
    // gRPC server spans follow the RPC conventions.
    let rpc = spans
        .iter()
        .find(|s| s.attr("rpc.system") == Some("grpc"))
        .expect("a gRPC server span");
    assert_eq!(rpc.attr("rpc.service"), Some("kcdsync.v1.AgentService"));

    // Metrics arrive with the expected names.
    let metrics = receiver.metrics();
    let names: std::collections::BTreeSet<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    println!("metrics: {names:?}");
    for want in [
        "kcdsync.reconcile.duration",
        "kcdsync.ldap.operations",
        "kcdsync.migration.attempts",
        "kcdsync.drift.repaired",
    ] {
        assert!(names.contains(want), "metric {want} missing from {names:?}");
    }
    let failures = metrics
        .iter()
        .filter(|m| {
            m.name == "kcdsync.migration.attempts"
                && m.attributes.iter().any(|(k, v)| k == "error_code" && v == "0x8009030E")
        })
        .map(|m| m.value)
        .fold(0.0, f64::max);
    assert_eq!(failures, 1.0, "one failed attempt with 0x8009030E");

    // No secret anywhere: bind password, API tokens, the host's password.
    let svc_password = std::fs::read_to_string(lab.var("LAB_SVC_PASS_FILE"))
        .unwrap()
        .trim()
        .to_owned();
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logs.contains("reconciled"), "logs were captured");
    assert!(
        logs.lines()
            .any(|l| l.contains("ldap") && l.contains(&attempt.trace_id))
            || logs.contains(&format!("\"trace_id\":\"{}\"", attempt.trace_id)),
        "log lines inside the remediation carry its trace id"
    );
    for secret in [svc_password.as_str(), READ_TOKEN, WRITE_TOKEN, otl01.password.as_str()] {
        assert!(!logs.contains(secret), "a secret is in the logs");
        for s in &spans {
            for (k, v) in &s.attributes {
                assert!(!v.contains(secret), "a secret is in span {} attribute {k}", s.name);
            }
        }
        for m in &metrics {
            assert!(
                !m.attributes.iter().any(|(_, v)| v.contains(secret)),
                "a secret is in metric {}",
                m.name
            );
        }
    }
}
