//! Certificate rotation, end to end: a real agent endpoint with real mTLS and the real agent
//! client loop, its certificate and key in files. An agent whose certificate is short-lived
//! renews it over its stream at half-life, writes the new pair, reconnects with it and keeps
//! reporting once the old one has expired; a stream asking for another host's certificate is
//! refused; a revoked host gets none; and a controller that is away across the half-life loses
//! nothing: the agent renews when it is back and every attempt made meanwhile is stored.

use std::path::Path;
use std::time::Duration;

use kcdsync_agent::identity::{self, IdentityFiles};
use kcdsync_controller::certs::{Validity, serial_hex};
use kcdsync_controller::renewal::RenewalPolicy;
use kcdsync_controller::revocation;
use kcdsync_controller::store::{EVENT_CERT_REFUSED, EVENT_CERT_RENEWED, Store};
use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::*;
use kcdsync_tests::agents::*;
use kcdsync_tests::otlp::{Observed, observe_process};
use kcdsync_tests::{run_with_room, sqlite_in};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tonic::Streaming;

const HV01: &str = "hv01.lab.test";

/// This process's log lines and exported metrics (`kcdsync_tests::otlp::observe_process`).
fn observed() -> &'static Observed {
    observe_process("kcdsync-rotation-test")
}

/// The total of `kcdsync.agents.renewals` with `result`, as last exported.
fn renewals(result: &str) -> f64 {
    observed().otlp.last_value("kcdsync.agents.renewals", "result", result)
}

/// Renewals as a controller configured with the test CA does them, an hour each, and a host
/// may ask again after a second (the tests' agents retry after one).
fn renewing(pki: &Pki) -> RenewalPolicy {
    RenewalPolicy {
        ca: Some(pki.issuing_ca()),
        lifetime: Duration::from_secs(3600),
        min_interval: Duration::from_secs(1),
    }
}

/// The agent endpoint, renewing as [`renewing`] says, its store in `db`, on `addr`.
async fn renewing_endpoint(pki: &Pki, db: &tempfile::TempDir, addr: std::net::SocketAddr) -> AgentEndpoint {
    AgentEndpoint::spawn_renewing(pki, &sqlite_in(db.path()), addr, renewing(pki))
        .await
        .unwrap()
}

/// Valid from a second ago for `secs` seconds: half-life comes quickly.
fn short(secs: i64) -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity::between(now - time::Duration::seconds(1), now + time::Duration::seconds(secs))
}

/// The agent's settings with its certificate and key read from (and renewed into) `files`.
fn renewing_settings(url: &str, pki: &Pki, files: &IdentityFiles) -> kcdsync_agent::client::Settings {
    let id = identity::load(files).unwrap();
    let tls = pki.client_tls(Some((
        String::from_utf8(id.cert_pem).unwrap(),
        String::from_utf8(id.key_pem).unwrap(),
    )));
    kcdsync_agent::client::Settings {
        identity: Some(files.clone()),
        ..settings(url, tls)
    }
}

fn serial(files: &IdentityFiles) -> String {
    serial_hex(&std::fs::read(&files.cert_file).unwrap()).unwrap()
}

async fn renewed_events(store: &Store, host: &str, kind: &str) -> Vec<String> {
    store
        .audit_events(Some(host), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.detail)
        .collect()
}

async fn attempts_of(store: &Store, host: &str) -> usize {
    store.attempts(Some(host), -1).await.unwrap().len()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn an_agent_renews_at_half_life_reconnects_with_the_new_certificate_and_keeps_reporting() {
    run_with_room(async {
        let _ = observed();
        let pki = Pki::new();
        let db = tempfile::tempdir().unwrap();
        let ep = renewing_endpoint(&pki, &db, "127.0.0.1:0".parse().unwrap()).await;
        let addr = ep.addr;
        let dir = tempfile::tempdir().unwrap();
        // Issued by hand for 8 seconds: the agent asks for the next one after about 4.
        let files = pki.agent_files(HV01, dir.path(), short(8));
        let first = serial(&files);
        let old_cert = std::fs::read(&files.cert_file).unwrap();
        let old_key = std::fs::read(&files.key_file).unwrap();
        let agent = SimAgent::start(sim_host(HV01), dir.path(), renewing_settings(&ep.url(), &pki, &files));
        let store = ep.store.clone();
        eventually(Duration::from_secs(10), "hv01 reported", || {
            let store = store.clone();
            async move { !store.reporting_hosts().await.unwrap().is_empty() }
        })
        .await;

        let f = files.clone();
        eventually(
            Duration::from_secs(15),
            "the certificate file holds a renewed certificate",
            || {
                let renewed = serial(&f) != first;
                async move { renewed }
            },
        )
        .await;
        let second = serial(&files);
        println!("renewed: serial {first} -> {second}");
        assert_eq!(cert_file_names(&files.cert_file), [HV01], "the same name, and only it");
        let lifetime = identity::Lifetime::of(&std::fs::read(&files.cert_file).unwrap()).unwrap();
        let left = lifetime.not_after.duration_since(std::time::SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
            "{left:?}"
        );
        #[cfg(unix)]
        assert_eq!(mode(&files.key_file), 0o600, "the new key is private");
        let loaded = identity::load(&files).unwrap();
        assert_ne!(loaded.cert_pem, old_cert);
        let events = renewed_events(&store, HV01, EVENT_CERT_RENEWED).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].contains(&second), "the audit names the serial: {}", events[0]);

        // The old certificate expires; the agent is still there and reports what happens.
        let h = ep.hub.clone();
        eventually(
            Duration::from_secs(10),
            "hv01 connected again after its renewal",
            || {
                let n = h.open_streams(HV01);
                async move { n == 1 }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(9)).await;
        // A fresh connection proves which certificate is in use: the old one no longer gets in.
        ep.stop().await;
        let ep = renewing_endpoint(&pki, &db, addr).await;
        let old = pki.client_tls(Some((
            String::from_utf8(old_cert).unwrap(),
            String::from_utf8(old_key).unwrap(),
        )));
        assert!(
            open_stream(&ep.url(), old, HV01).await.is_err(),
            "the first certificate has expired: whoever gets in now holds the renewed one"
        );
        let store = ep.store.clone();
        agent.probe.migrate("vm1", "hv02.lab.test", "alice", Some(true)).await;
        eventually(
            Duration::from_secs(15),
            "the attempt made after the old certificate expired is stored",
            || {
                let store = store.clone();
                async move { attempts_of(&store, HV01).await == 1 }
            },
        )
        .await;
        assert_eq!(
            serial(&files),
            second,
            "no second renewal: the new certificate is far from half-life"
        );
        agent.stop().await;
        ep.stop().await;
    });
}

fn renew_request(seq: u64, csr_pem: &str) -> AgentMessage {
    AgentMessage {
        seq,
        body: Some(Body::RenewCertificate(RenewCertificate {
            csr: csr_pem.as_bytes().to_vec(),
        })),
    }
}

/// The next answer to a renewal on `inbound` (acks skipped), or the status the stream ended with.
async fn next_renewal(inbound: &mut Streaming<ControllerMessage>) -> Result<CertificateRenewal, tonic::Status> {
    loop {
        match inbound.message().await? {
            Some(ControllerMessage {
                body: Some(controller_message::Body::CertificateRenewal(r)),
            }) => return Ok(r),
            Some(_) => continue,
            None => return Err(tonic::Status::cancelled("the stream ended")),
        }
    }
}

fn refused(r: &CertificateRenewal) -> Option<&RenewalRefused> {
    match &r.result {
        Some(certificate_renewal::Result::Refused(x)) => Some(x),
        _ => None,
    }
}

#[test]
fn a_stream_for_hv01_asking_for_an_hv02_certificate_is_refused_and_stays_open() {
    run_with_room(async {
        let _ = observed();
        let pki = Pki::new();
        let db = tempfile::tempdir().unwrap();
        let ep = renewing_endpoint(&pki, &db, "127.0.0.1:0".parse().unwrap()).await;
        let (tx, mut inbound) = open_stream(&ep.url(), pki.agent_tls(HV01), HV01)
            .await
            .expect("a stream");

        let for_hv02 = identity::request("hv02.lab.test").unwrap();
        tx.send(renew_request(2, &for_hv02.csr_pem)).await.unwrap();
        let answer = next_renewal(&mut inbound).await.unwrap();
        assert_eq!(answer.seq, 2, "the answer names the request");
        let why = refused(&answer).expect("refused");
        assert_eq!(tonic::Code::from(why.code), tonic::Code::PermissionDenied, "{why:?}");
        assert!(
            why.message.contains("hv02.lab.test") && why.message.contains(HV01),
            "{}",
            why.message
        );
        let audited = renewed_events(&ep.store, HV01, EVENT_CERT_REFUSED).await;
        assert_eq!(audited.len(), 1, "{audited:?}");
        let logged = observed()
            .logs
            .text()
            .lines()
            .filter(|l| l.contains("agent certificate renewal refused") && l.contains("hv02.lab.test"))
            .count();
        assert_eq!(logged, 1, "{}", observed().logs.text());
        assert!(renewed_events(&ep.store, HV01, EVENT_CERT_RENEWED).await.is_empty());

        // The stream goes on, and a request for its own name a second later is granted.
        assert_eq!(ep.hub.open_streams(HV01), 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let own = identity::request(HV01).unwrap();
        tx.send(renew_request(3, &own.csr_pem)).await.unwrap();
        let answer = next_renewal(&mut inbound).await.unwrap();
        let Some(certificate_renewal::Result::CertificateChainPem(chain)) = answer.result else {
            panic!("expected a certificate, got {answer:?}");
        };
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles {
            cert_file: dir.path().join("c.pem"),
            key_file: dir.path().join("c.key"),
        };
        std::fs::write(&files.cert_file, &chain).unwrap();
        assert_eq!(cert_file_names(&files.cert_file), [HV01]);
        // The test CA outlives the lifetime by years: nothing to warn an operator about (every
        // issuance used to warn that the CA "ends before a full certificate lifetime").
        let cut_short = observed()
            .logs
            .text()
            .lines()
            .filter(|l| l.contains("ends before a full certificate lifetime"))
            .count();
        assert_eq!(cut_short, 0, "{}", observed().logs.text());
        // Asked again at once: too soon.
        let again = identity::request(HV01).unwrap();
        tx.send(renew_request(4, &again.csr_pem)).await.unwrap();
        let answer = next_renewal(&mut inbound).await.unwrap();
        let why = refused(&answer).expect("refused");
        assert_eq!(tonic::Code::from(why.code), tonic::Code::ResourceExhausted, "{why:?}");
        // Each answer is counted by its result, as an operator's dashboard sees it.
        eventually(Duration::from_secs(5), "the renewals exported as metrics", || {
            let counted = [renewals("wrong_name"), renewals("issued"), renewals("too_soon")];
            async move { counted.iter().all(|n| *n >= 1.0) }
        })
        .await;
        drop(tx);
        ep.stop().await;
    });
}

#[test]
fn a_controller_without_an_issuing_ca_says_how_to_configure_one() {
    run_with_room(async {
        let _ = observed();
        let pki = Pki::new();
        let db = tempfile::tempdir().unwrap();
        let ep = AgentEndpoint::spawn(&pki, &sqlite_in(db.path()), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let (tx, mut inbound) = open_stream(&ep.url(), pki.agent_tls(HV01), HV01)
            .await
            .expect("a stream");
        tx.send(renew_request(2, &identity::request(HV01).unwrap().csr_pem))
            .await
            .unwrap();
        let answer = next_renewal(&mut inbound).await.unwrap();
        let why = refused(&answer).expect("refused");
        assert_eq!(tonic::Code::from(why.code), tonic::Code::FailedPrecondition);
        assert!(why.message.contains("agents.issuing_ca_cert_file"), "{}", why.message);
        drop(tx);
        ep.stop().await;
    });
}

#[test]
fn a_revoked_host_cannot_renew() {
    run_with_room(async {
        let _ = observed();
        let pki = Pki::new();
        let db = tempfile::tempdir().unwrap();
        let ep = renewing_endpoint(&pki, &db, "127.0.0.1:0".parse().unwrap()).await;
        let (tx, mut inbound) = open_stream(&ep.url(), pki.agent_tls(HV01), HV01)
            .await
            .expect("a stream");
        revocation::revoke(&ep.store, HV01, "key leaked", "alice")
            .await
            .unwrap();
        // Asked at once, before the endpoint's next look at the deny-list cuts the stream: the
        // renewal reads the deny-list itself. Either way, no certificate comes back.
        tx.send(renew_request(2, &identity::request(HV01).unwrap().csr_pem))
            .await
            .unwrap();
        let status = match next_renewal(&mut inbound).await {
            Ok(answer) => {
                let why = refused(&answer).unwrap_or_else(|| panic!("a revoked host got {answer:?}"));
                tonic::Status::new(tonic::Code::from(why.code), why.message.clone())
            }
            Err(ended) => ended,
        };
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("revoked"), "{}", status.message());
        assert!(renewed_events(&ep.store, HV01, EVENT_CERT_RENEWED).await.is_empty());

        // A real agent of the revoked host, its certificate past half-life, keeps it.
        let dir = tempfile::tempdir().unwrap();
        let files = pki.agent_files(HV01, dir.path(), short(4));
        let first = serial(&files);
        let agent = SimAgent::start(sim_host(HV01), dir.path(), renewing_settings(&ep.url(), &pki, &files));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(serial(&files), first);
        assert!(renewed_events(&ep.store, HV01, EVENT_CERT_RENEWED).await.is_empty());
        agent.stop().await;
        drop(tx);
        ep.stop().await;
    });
}

#[test]
fn renewal_across_a_controller_restart_succeeds_and_no_report_is_lost() {
    run_with_room(async {
        let _ = observed();
        let pki = Pki::new();
        let db = tempfile::tempdir().unwrap();
        let ep = renewing_endpoint(&pki, &db, "127.0.0.1:0".parse().unwrap()).await;
        let addr = ep.addr;
        let dir = tempfile::tempdir().unwrap();
        // Half-life after 10 s; the controller is away from about 1 s to 12 s.
        let files = pki.agent_files(HV01, dir.path(), short(20));
        let first = serial(&files);
        let agent = SimAgent::start(sim_host(HV01), dir.path(), renewing_settings(&ep.url(), &pki, &files));
        let store = ep.store.clone();
        agent.probe.migrate("vm0", "hv02.lab.test", "alice", Some(true)).await;
        eventually(Duration::from_secs(10), "the first attempt is stored", || {
            let store = store.clone();
            async move { attempts_of(&store, HV01).await == 1 }
        })
        .await;
        ep.stop().await;

        // While the controller is away, migrations go on and the certificate passes half-life.
        for i in 1..=5 {
            agent
                .probe
                .migrate(&format!("vm{i}"), "hv02.lab.test", "alice", Some(i % 2 == 0))
                .await;
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(
            serial(&files),
            first,
            "nothing to renew with while the controller is away"
        );
        assert!(agent.outbox_depth() >= 5, "the attempts wait in the outbox");

        let ep = renewing_endpoint(&pki, &db, addr).await;
        let store = ep.store.clone();
        let f = files.clone();
        eventually(
            Duration::from_secs(15),
            "the certificate is renewed once the controller is back",
            || {
                let renewed = serial(&f) != first;
                async move { renewed }
            },
        )
        .await;
        eventually(
            Duration::from_secs(15),
            "every attempt made during the outage is stored",
            || {
                let store = store.clone();
                async move { attempts_of(&store, HV01).await == 6 }
            },
        )
        .await;
        assert_eq!(cert_file_names(&files.cert_file), [HV01]);
        assert_eq!(renewed_events(&store, HV01, EVENT_CERT_RENEWED).await.len(), 1);
        eventually(Duration::from_secs(5), "the outbox is empty", || {
            let n = agent.outbox_depth();
            async move { n == 0 }
        })
        .await;
        // After the first certificate's end the agent still gets in (with the renewed one).
        tokio::time::sleep(Duration::from_secs(9)).await;
        ep.stop().await;
        let ep = renewing_endpoint(&pki, &db, addr).await;
        let store = ep.store.clone();
        agent.probe.migrate("vm6", "hv02.lab.test", "alice", Some(true)).await;
        eventually(
            Duration::from_secs(15),
            "an attempt after the first certificate expired is stored",
            || {
                let store = store.clone();
                async move { attempts_of(&store, HV01).await == 7 }
            },
        )
        .await;
        agent.stop().await;
        ep.stop().await;
    });
}

/// A real `kcdsync-agent` process for HV01 whose certificate and key (`agent.pem`,
/// `agent.key`, valid `validity`) are in `dir`, reporting to `url`.
fn agent_process(pki: &Pki, dir: &Path, url: &str, validity: Validity) -> (tokio::process::Child, IdentityFiles) {
    let files = pki.agent_files(HV01, dir, validity);
    std::fs::write(
        dir.join("host.toml"),
        format!("fqdn = \"{HV01}\"\nnetbios = \"HV01\"\n"),
    )
    .unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "controller_url = \"{url}\"\ntls_server_name = \"localhost\"\nca_file = \"{}\"\ncert_file = \"{}\"\n\
             key_file = \"{}\"\noutbox_dir = \"outbox\"\nprobe = \"simulated\"\nsimulated_host = \"host.toml\"\n\
             attempts_interval_secs = 1\nreport_interval_secs = 60\n",
            pki.path("ca.pem").display(),
            files.cert_file.display(),
            files.key_file.display(),
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(kcdsync_tests::workspace_bin("kcdsync-agent"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kcdsync-agent (cargo build -p kcdsync-agent first)");
    (child, files)
}

/// Every line the child writes (stdout and stderr), as it comes.
fn lines_of(child: &mut tokio::process::Child) -> mpsc::UnboundedReceiver<String> {
    use tokio::io::AsyncBufReadExt;
    let (tx, rx) = mpsc::unbounded_channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for reader in [
        Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(err),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("agent: {line}");
                let _ = tx.send(line);
            }
        });
    }
    rx
}

/// Reads `lines` until one contains `marker`; that line.
async fn line_with(lines: &mut mpsc::UnboundedReceiver<String>, marker: &str, within: Duration) -> String {
    tokio::time::timeout(within, async {
        while let Some(line) = lines.recv().await {
            if line.contains(marker) {
                return line;
            }
        }
        panic!("the agent's output ended before `{marker}`");
    })
    .await
    .unwrap_or_else(|_| panic!("the agent never printed `{marker}` within {within:?}"))
}

#[test]
fn a_real_agent_process_renews_its_files_and_one_whose_certificate_expired_says_how_to_re_enroll() {
    run_with_room(async {
        let _ = observed();
        let pki = Pki::new();
        let db = tempfile::tempdir().unwrap();
        let ep = renewing_endpoint(&pki, &db, "127.0.0.1:0".parse().unwrap()).await;
        let addr = ep.addr;
        let dir = tempfile::tempdir().unwrap();
        let (mut child, files) = agent_process(&pki, dir.path(), &ep.url(), short(8));
        let first = serial(&files);
        let mut lines = lines_of(&mut child);
        line_with(
            &mut lines,
            "asking the controller for a new one",
            Duration::from_secs(15),
        )
        .await;
        line_with(
            &mut lines,
            "certificate renewed and written with its new key",
            Duration::from_secs(10),
        )
        .await;
        assert_ne!(serial(&files), first);
        assert_eq!(cert_file_names(&files.cert_file), [HV01]);
        #[cfg(unix)]
        assert_eq!(mode(&files.key_file), 0o600);

        // Past the first certificate's end, a restarted controller lets the process in again.
        tokio::time::sleep(Duration::from_secs(8)).await;
        ep.stop().await;
        let ep = renewing_endpoint(&pki, &db, addr).await;
        let h = ep.hub.clone();
        eventually(Duration::from_secs(15), "the agent process streams again", || {
            let n = h.open_streams(HV01);
            async move { n == 1 }
        })
        .await;
        child.kill().await.unwrap();

        // A process whose certificate expired before it started cannot renew: it says what to do.
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let (mut child, _) = agent_process(
            &pki,
            dir.path(),
            &ep.url(),
            Validity::between(now - time::Duration::hours(2), now - time::Duration::minutes(1)),
        );
        let mut lines = lines_of(&mut child);
        let said = line_with(&mut lines, "certificate has expired", Duration::from_secs(15)).await;
        assert!(
            said.contains("kcdsync-controller certs agent") && said.contains(&format!("--host {HV01}")),
            "{said}"
        );
        assert!(said.contains("not built yet"), "{said}");
        child.kill().await.unwrap();
        ep.stop().await;
    });
}
