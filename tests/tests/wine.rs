//! The cross-built Windows agent (`kcdsync-agent.exe`) really runs: under
//! Wine (Debian's wine64), it reads its config from a Windows path, connects
//! over mTLS to a real controller agent endpoint on loopback, reports (its probe saying that
//! PowerShell is missing, as it is under Wine), answers the controller's
//! purge command, and reconnects on its own after the controller restarts.
//!
//! What Wine cannot show: PowerShell, klist, the VMMS event log and the
//! service control manager do not exist there, so the probe's parsing, the
//! attempts from the event log and the Windows service path are proven by
//! their unit tests against recorded Windows output (WINDOWS-FACTS), not here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kcdsync_controller::certs::Validity;
use kcdsync_controller::store::Store;
use kcdsync_proto::v1::HostReport;
use kcdsync_tests::agents::*;
use kcdsync_tests::logs::Captured;
use kcdsync_tests::wine::{WINESERVER, prefix as wine_prefix, wine};
use kcdsync_tests::*;

/// The agent as `deploy/test.sh` cross-builds it.
fn agent_exe() -> PathBuf {
    wine::agent_exe().unwrap_or_else(|| {
        panic!("the Windows agent is missing: `cargo build -p kcdsync-agent --target x86_64-pc-windows-gnu` (deploy/test.sh does)")
    })
}

/// The agent process under Wine, killed with its wineserver when dropped.
struct WineAgent {
    child: Child,
    prefix: PathBuf,
    /// Where its stdout (`agent.log`) and stderr (`agent.err`) go.
    logs: PathBuf,
}

impl WineAgent {
    /// `kcdsync-agent.exe --config C:\kcdsync\agent.toml run` in `prefix`, logging into `logs`.
    fn run(prefix: &Path, logs: &Path) -> WineAgent {
        let child = wine(prefix)
            .arg(agent_exe())
            .args(["--config", "C:\\kcdsync\\agent.toml", "run"])
            .stdout(std::fs::File::create(logs.join("agent.log")).unwrap())
            .stderr(std::fs::File::create(logs.join("agent.err")).unwrap())
            .spawn()
            .unwrap();
        WineAgent {
            child,
            prefix: prefix.to_owned(),
            logs: logs.to_owned(),
        }
    }

    /// What it has printed so far, stdout then stderr.
    fn log(&self) -> String {
        std::fs::read_to_string(self.logs.join("agent.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.logs.join("agent.err")).unwrap_or_default()
    }
}

impl Drop for WineAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(WINESERVER)
            .env("WINEPREFIX", &self.prefix)
            .arg("-k")
            .status();
    }
}

/// `host`'s report once one newer than `after` (Unix ms) is stored; the agent's log in the
/// failure, which is where a Windows agent says why it did not report.
async fn report_after(
    store: &Store,
    host: &str,
    after: i64,
    limit: Duration,
    agent_log: impl Fn() -> String,
) -> (HostReport, i64) {
    let t = Instant::now();
    loop {
        let reports = store.all_reports().await.unwrap();
        if let Some((_, r, seen)) = reports.into_iter().find(|(n, _, seen)| n == host && *seen > after) {
            return (r, seen);
        }
        assert!(
            t.elapsed() < limit,
            "no report from the Windows agent newer than {after} within {limit:?}; its log:\n{}",
            agent_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn the_windows_agent_runs_under_wine_against_a_real_controller() {
    run_with_room(scenario())
}

async fn scenario() {
    let logs = Captured::install("kcdsync-wine-test", "info");
    let host = "wine01.lab.test".to_owned();
    let pki = Pki::new();
    // The controller's agent endpoint: a real mTLS gRPC server and SQLite store, restarted
    // below on the same address and store.
    let db = tempfile::tempdir().unwrap();
    let store_url = sqlite_in(db.path());
    let endpoint = AgentEndpoint::spawn(&pki, &store_url, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = endpoint.addr.port();

    // The agent's files where an installer would put them, named by Windows paths.
    let dir = tempfile::tempdir().unwrap();
    let prefix = wine_prefix(dir.path());
    let home = prefix.join("drive_c/kcdsync");
    std::fs::create_dir_all(&home).unwrap();
    let (cert, key) = pki.ca.issue_agent(&host, Validity::days(1)).unwrap();
    std::fs::write(home.join("agent.pem"), cert).unwrap();
    std::fs::write(home.join("agent.key"), key).unwrap();
    std::fs::copy(pki.path("ca.pem"), home.join("ca.pem")).unwrap();
    std::fs::write(
        home.join("agent.toml"),
        format!(
            "controller_url = \"https://127.0.0.1:{port}\"\ntls_server_name = \"localhost\"\nca_file = 'C:\\kcdsync\\ca.pem'\ncert_file = 'C:\\kcdsync\\agent.pem'\nkey_file = 'C:\\kcdsync\\agent.key'\noutbox_dir = 'C:\\kcdsync\\outbox'\nreport_interval_secs = 1\nprobe_timeout_secs = 10\n"
        ),
    )
    .unwrap();
    let agent = WineAgent::run(&prefix, dir.path());
    let agent_log = || agent.log();

    // It connects and reports, and says why its report is thin.
    let store = endpoint.store.clone();
    let (report, _) = report_after(&store, &host, 0, Duration::from_secs(120), &agent_log).await;
    let errors = report.probe_errors.join("\n");
    assert!(
        errors.contains("powershell.exe ran but printed nothing for Win32_OperatingSystem")
            && errors.contains("PowerShell is missing or broken on this host"),
        "the report says PowerShell is missing:\n{errors}\nagent log:\n{}",
        agent_log()
    );

    // It answers a command.
    let hub = endpoint.hub.clone();
    let id = hub.purge(&host, "wine test").await.unwrap();
    eventually(Duration::from_secs(30), "the agent's answer to the purge", || {
        // The human log format colours `key=value`: look for the words.
        let (logs, id) = (&logs, id.clone());
        async move {
            logs.text()
                .lines()
                .any(|l| l.contains("command result") && l.contains(&id))
        }
    })
    .await;

    // The controller restarts (same address, same store): the agent notices at once and comes
    // back on its own.
    endpoint.stop().await;
    // Read while no endpoint runs: nothing can report in between.
    let offline = Store::open(&store_url).await.unwrap();
    let (_, seen_before) = report_after(&offline, &host, 0, Duration::ZERO, &agent_log).await;
    offline.close().await;
    let endpoint = AgentEndpoint::spawn(&pki, &store_url, format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    report_after(&endpoint.store, &host, seen_before, Duration::from_secs(60), &agent_log).await;
    println!("agent log under Wine:\n{}", agent_log());
    endpoint.stop().await;
}

#[test]
fn the_windows_agent_renews_its_certificate_under_wine() {
    run_with_room(renewal_scenario())
}

/// The Windows agent's half of rotation: with a 30-second certificate it asks for a new one at
/// half-life, writes the key and the certificate over the old ones through Windows' own
/// write-through renames, and after the first certificate's end a restarted controller still
/// lets it in.
async fn renewal_scenario() {
    use kcdsync_controller::certs::serial_hex;
    use kcdsync_controller::renewal::RenewalPolicy;

    let host = "wine02.lab.test";
    let pki = Pki::new();
    let renewing = || RenewalPolicy {
        ca: Some(pki.issuing_ca()),
        lifetime: Duration::from_secs(3600),
        min_interval: Duration::from_secs(1),
    };
    let db = tempfile::tempdir().unwrap();
    let store_url = sqlite_in(db.path());
    let endpoint = AgentEndpoint::spawn_renewing(&pki, &store_url, "127.0.0.1:0".parse().unwrap(), renewing())
        .await
        .unwrap();
    let port = endpoint.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let prefix = wine_prefix(dir.path());
    let home = prefix.join("drive_c/kcdsync");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::copy(pki.path("ca.pem"), home.join("ca.pem")).unwrap();
    std::fs::write(
        home.join("agent.toml"),
        format!(
            "controller_url = \"https://127.0.0.1:{port}\"\ntls_server_name = \"localhost\"\nca_file = 'C:\\kcdsync\\ca.pem'\ncert_file = 'C:\\kcdsync\\agent.pem'\nkey_file = 'C:\\kcdsync\\agent.key'\noutbox_dir = 'C:\\kcdsync\\outbox'\nreport_interval_secs = 1\nprobe_timeout_secs = 10\n"
        ),
    )
    .unwrap();
    // Issued last, once Wine is ready: valid 30 seconds, so half-life comes after 15.
    let now = time::OffsetDateTime::now_utc();
    let expires = Instant::now() + Duration::from_secs(30);
    let (cert, key) = pki
        .ca
        .issue_agent(
            host,
            Validity::between(now - time::Duration::seconds(1), now + time::Duration::seconds(30)),
        )
        .unwrap();
    std::fs::write(home.join("agent.pem"), &cert).unwrap();
    std::fs::write(home.join("agent.key"), key).unwrap();
    let first = serial_hex(cert.as_bytes()).unwrap();
    let agent = WineAgent::run(&prefix, dir.path());
    let agent_log = || agent.log();

    let cert_file = home.join("agent.pem");
    let t = Instant::now();
    loop {
        let now = std::fs::read(&cert_file).ok().and_then(|pem| serial_hex(&pem).ok());
        if now.as_ref().is_some_and(|s| *s != first) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "the Windows agent did not renew its certificate; its log:\n{}",
            agent_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cert_file_names(&cert_file), [host]);
    let leftovers: Vec<String> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".new"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Past the first certificate's end, a restarted controller lets the agent in: it holds the
    // renewed one.
    tokio::time::sleep(expires.saturating_duration_since(Instant::now()) + Duration::from_secs(1)).await;
    endpoint.stop().await;
    let offline = Store::open(&store_url).await.unwrap();
    let (_, seen_before) = report_after(&offline, host, 0, Duration::ZERO, &agent_log).await;
    offline.close().await;
    let endpoint = AgentEndpoint::spawn_renewing(
        &pki,
        &store_url,
        format!("127.0.0.1:{port}").parse().unwrap(),
        renewing(),
    )
    .await
    .unwrap();
    report_after(&endpoint.store, host, seen_before, Duration::from_secs(60), &agent_log).await;
    println!("agent log under Wine:\n{}", agent_log());
    endpoint.stop().await;
}

/// The Windows agent enrolls through SSPI: under Wine, whose Kerberos security package runs on
/// MIT Kerberos with the credential cache of the Unix session (here a TGT of the host's computer
/// account, `kinit -k`), as SYSTEM's is on Windows. The agent's code path is the Windows one —
/// AcquireCredentialsHandleW, InitializeSecurityContextW and MakeSignature of the "Kerberos"
/// package — and the controller's MIT acceptor verifies the token and the MIC it made.
#[test]
fn the_windows_agent_enrolls_by_kerberos_through_sspi_under_wine() {
    run_with_room(enrollment_scenario())
}

#[test]
fn the_windows_agent_enrolls_with_a_join_token_under_wine() {
    run_with_room(join_token_scenario())
}

/// No Kerberos at all: `[enroll]` holds only `join_token_file`; the Windows agent enrolls with
/// the token and deletes its file.
async fn join_token_scenario() {
    let lab = Lab::start();
    let ctl = kcdsync_tests::enrolling::EnrollingController::start(lab, "t-wine-jtok", &["WJT01"])
        .await
        .unwrap();
    let host = "wjt01.lab.test";
    let (token, secret) = kcdsync_controller::enrollment::token::create(
        &ctl.store,
        host,
        kcdsync_controller::enrollment::token::DEFAULT_TTL,
        "test",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = wine_prefix(dir.path());
    let home = prefix.join("drive_c/kcdsync");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::copy(ctl.pki.path("ca.pem"), home.join("ca.pem")).unwrap();
    kcdsync_tests::write_private(&home.join("join-token.txt"), format!("{secret}\r\n"));
    std::fs::write(
        home.join("agent.toml"),
        format!(
            "controller_url = \"https://127.0.0.1:{}\"\ntls_server_name = \"localhost\"\nca_file = 'C:\\kcdsync\\ca.pem'\ncert_file = 'C:\\kcdsync\\agent.pem'\nkey_file = 'C:\\kcdsync\\agent.key'\noutbox_dir = 'C:\\kcdsync\\outbox'\n\n[enroll]\njoin_token_file = 'C:\\kcdsync\\join-token.txt'\nhost = \"{host}\"\n",
            ctl.port
        ),
    )
    .unwrap();
    let mut said = String::new();
    let mut ok = false;
    for _ in 0..10 {
        let out = wine(&prefix)
            .arg(agent_exe())
            .args(["--config", "C:\\kcdsync\\agent.toml", "enroll"])
            .env_remove("KRB5CCNAME")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ok = out.status.success();
        if ok || !said.contains("has not read AD yet") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let _ = Command::new(WINESERVER).env("WINEPREFIX", &prefix).arg("-k").status();
    println!("kcdsync-agent.exe enroll with a join token under Wine:\n{said}");
    assert!(ok && said.contains("enrolled wjt01.lab.test"), "{said}");
    assert!(
        !home.join("join-token.txt").exists(),
        "the spent token's file is deleted"
    );
    assert_eq!(cert_file_names(&home.join("agent.pem")), vec![host]);
    let events = ctl.store.audit_events(Some(host), 10).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == kcdsync_controller::store::EVENT_ENROLLED
                && e.detail.contains(&format!("join token {}", token.id))),
        "{events:?}"
    );
    ctl.running.stop().await;
}

async fn enrollment_scenario() {
    let lab = Lab::start();
    let ctl = kcdsync_tests::enrolling::EnrollingController::start(lab, "t-wine-enroll", &["WENR01"])
        .await
        .unwrap();
    let host = "wenr01.lab.test";
    let dir = tempfile::tempdir().unwrap();
    // The host's TGT, as the machine account's logon session holds it on Windows.
    let ccache = dir.path().join("ccache");
    let kinit = Command::new("kinit")
        .args(["-k", "-t"])
        .arg(ctl.keytab("WENR01"))
        .arg(format!("WENR01$@{}", lab.realm()))
        .env("KRB5_CONFIG", lab.krb5_conf())
        .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
        .output()
        .unwrap();
    assert!(
        kinit.status.success(),
        "kinit: {}",
        String::from_utf8_lossy(&kinit.stderr)
    );

    let prefix = wine_prefix(dir.path());
    let home = prefix.join("drive_c/kcdsync");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::copy(ctl.pki.path("ca.pem"), home.join("ca.pem")).unwrap();
    // No certificate, no keytab: the host name (PowerShell is missing under Wine) and the
    // controller's service principal are all it is told.
    std::fs::write(
        home.join("agent.toml"),
        format!(
            "controller_url = \"https://127.0.0.1:{}\"\ntls_server_name = \"localhost\"\nca_file = 'C:\\kcdsync\\ca.pem'\ncert_file = 'C:\\kcdsync\\agent.pem'\nkey_file = 'C:\\kcdsync\\agent.key'\noutbox_dir = 'C:\\kcdsync\\outbox'\n\n[enroll]\nservice_principal = \"{}\"\nhost = \"{host}\"\n",
            ctl.port, ctl.spn
        ),
    )
    .unwrap();
    let out = wine(&prefix)
        .arg(agent_exe())
        .args(["--config", "C:\\kcdsync\\agent.toml", "enroll"])
        .env("KRB5_CONFIG", lab.krb5_conf())
        .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let _ = Command::new(WINESERVER).env("WINEPREFIX", &prefix).arg("-k").status();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("kcdsync-agent.exe enroll under Wine:\n{said}");
    assert!(
        out.status.success() && said.contains("enrolled wenr01.lab.test"),
        "{said}"
    );
    assert_eq!(cert_file_names(&home.join("agent.pem")), vec![host]);
    let events = ctl.store.audit_events(Some(host), 10).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == kcdsync_controller::store::EVENT_ENROLLED && e.actor.starts_with("WENR01$@LAB.TEST")),
        "{events:?}"
    );
    ctl.running.stop().await;
}
