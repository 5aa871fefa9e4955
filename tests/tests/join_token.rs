//! Enrollment with one-time join tokens on the lab: a real `serve` (in process, SQLite) that
//! enrolls (`EnrollingController`), tokens made by the real `kcdsync-controller agents token`
//! binary on the same store, and real `kcdsync-agent enroll` processes whose `[enroll]` holds no
//! Kerberos credentials at all, only `join_token_file`.
//!
//! - a token created by the CLI enrolls its host (a certificate naming exactly it, audited as
//!   enrolled with that token), and the agent deletes the spent token file;
//! - the same token again, an expired one, a revoked one (`agents token revoke`), one for
//!   another host's name, and a made-up one are refused, with one message for all; a token
//!   used with another host's CSR is not spent by the refusal;
//! - two agents racing with one token: exactly one gets a certificate; an agent started with
//!   only its token enrolls by itself and streams;
//! - Kerberos configured but unable to get a ticket: the agent falls back to its token;
//! - `agents token list` shows every token's state, and no secret is anywhere in the store's
//!   files; the refusals are counted per reason in `kcdsync.agents.enrollments`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use kcdsync_controller::enrollment::token;
use kcdsync_controller::store::{EVENT_ENROLLED, JoinToken, now_ms};
use kcdsync_tests::agents::*;
use kcdsync_tests::enrolling::EnrollingController;
use kcdsync_tests::otlp::{Observed, observe_process};
use kcdsync_tests::{Lab, controller_bin, run_with_room, workspace_bin};

fn observed() -> &'static Observed {
    observe_process("kcdsync-join-token-test")
}

/// What the refusal of any bad token says.
const NOT_VALID: &str = "the join token is not valid";

/// An agent's directory: config, simulated host, and (written by the test) its token file.
struct AgentDir {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl AgentDir {
    /// An agent for `fqdn` enrolling at the controller on `port` with the token in
    /// `join-token.txt`; `enroll_extra` adds lines to its `[enroll]`.
    fn new(pki: &Pki, port: u16, fqdn: &str, enroll_extra: &str) -> AgentDir {
        let dir = tempfile::tempdir().unwrap();
        let netbios = fqdn.split('.').next().unwrap().to_uppercase();
        std::fs::write(
            dir.path().join("host.toml"),
            format!("fqdn = \"{fqdn}\"\nnetbios = \"{netbios}\"\n"),
        )
        .unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "controller_url = \"https://127.0.0.1:{port}\"\ntls_server_name = \"localhost\"\nca_file = \"{}\"\n\
                 cert_file = \"agent.pem\"\nkey_file = \"agent.key\"\noutbox_dir = \"outbox\"\nprobe = \"simulated\"\n\
                 simulated_host = \"host.toml\"\n\n[enroll]\njoin_token_file = \"join-token.txt\"\nretry_secs = 1\n\
                 {enroll_extra}",
                pki.path("ca.pem").display()
            ),
        )
        .unwrap();
        AgentDir { dir, config }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("agent.pem")
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("join-token.txt")
    }

    /// Writes `secret` as an operator would (a line, mode 600).
    fn give(&self, secret: &str) {
        kcdsync_tests::write_private(&self.token_file(), format!("{secret}\n"));
    }

    /// `kcdsync-agent enroll --force`: (success, what it printed).
    async fn enroll(&self, lab: &Lab) -> (bool, String) {
        let out = tokio::process::Command::new(workspace_bin("kcdsync-agent"))
            .arg("--config")
            .arg(&self.config)
            .args(["enroll", "--force"])
            // The lab's KDC, for the agent that also tries Kerberos; nothing else.
            .env("KRB5_CONFIG", lab.krb5_conf())
            .env_remove("KRB5CCNAME")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    }

    /// Enrolls, asking again while the controller has not read AD yet.
    async fn enroll_once_ad_is_read(&self, lab: &Lab) -> (bool, String) {
        for _ in 0..60 {
            let (ok, said) = self.enroll(lab).await;
            if ok || !said.contains("has not read AD yet") {
                return (ok, said);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("the controller never read AD");
    }
}

/// `kcdsync-controller --config CONFIG args…`, the real binary on the fixture's store.
fn cli(config: &Path, args: &[&str]) -> Output {
    std::process::Command::new(controller_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("USER", "tester")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run kcdsync-controller")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `agents token create HOST …`: (the secret, the token's id).
fn create(config: &Path, host: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["agents", "token", "create", host];
    args.extend_from_slice(extra);
    let o = cli(config, &args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "token create {host}: {out}{err}");
    let secret = out.trim().to_owned();
    assert_eq!(out.lines().count(), 1, "only the secret on stdout: {out}");
    assert!(secret.starts_with("kcdj_") && secret.len() == 69, "{secret}");
    assert!(
        err.contains("join_token_file") && err.contains("mode 600") && err.contains("Administrators"),
        "says what to do with it: {err}"
    );
    let id = err
        .split_whitespace()
        .find(|w| w.starts_with("jt-"))
        .expect("the id")
        .to_owned();
    (secret, id)
}

fn count(result: &str) -> f64 {
    observed()
        .otlp
        .last_value("kcdsync.agents.enrollments", "result", result)
}

#[test]
fn a_join_token_enrolls_its_host_once_and_nothing_else() {
    run_with_room(async {
        // Before the controller starts: its metrics go to this process's receiver.
        observed();
        let lab = Lab::start();
        let hosts = ["JT01", "JT02", "JT03", "JT04", "JT05", "JT06", "JT07"];
        let ctl = EnrollingController::start(lab, "t-jointoken", &hosts).await.unwrap();
        let (pki, store, port) = (&ctl.pki, &ctl.store, ctl.port);
        let config = pki.path("kcdsync.toml");
        let mut secrets = Vec::new();

        // A token from the CLI enrolls its host with no Kerberos at all.
        let (s1, id1) = create(&config, "JT01.lab.test", &["--ttl", "10m"]);
        secrets.push(s1.clone());
        let jt01 = AgentDir::new(pki, port, "jt01.lab.test", "");
        jt01.give(&s1);
        let (ok, said) = jt01.enroll_once_ad_is_read(lab).await;
        assert!(ok && said.contains("enrolled jt01.lab.test"), "{said}");
        assert!(said.contains("join token: it is spent"), "{said}");
        assert!(!jt01.token_file().exists(), "the spent token's file is deleted");
        assert_eq!(cert_file_names(&jt01.cert()), ["jt01.lab.test"]);
        let e = audit_events_of(store, EVENT_ENROLLED).await;
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "jt01.lab.test");
        assert!(e[0].1.starts_with(&format!("join token {id1} at 127.0.0.1:")), "{e:?}");
        assert!(e[0].2.contains(&format!("join token {id1}")), "{e:?}");

        // The same token again: refused.
        jt01.give(&s1);
        let (ok, said) = jt01.enroll(lab).await;
        assert!(!ok && said.contains(NOT_VALID), "{said}");
        assert!(jt01.token_file().exists(), "a refused token's file stays");

        // An expired token (stored as the CLI would, expired a second ago): refused.
        let expired = format!("kcdj_{}", "0e".repeat(32));
        store
            .create_join_token(
                &JoinToken {
                    id: "jt-0000000000e1".into(),
                    host: "jt02.lab.test".into(),
                    created_at_ms: now_ms() - 120_000,
                    expires_at_ms: now_ms() - 1000,
                    created_by: "test".into(),
                    used_at_ms: None,
                    used_from: None,
                    revoked_at_ms: None,
                    revoked_by: None,
                },
                &token::hash(&expired),
            )
            .await
            .unwrap();
        let jt02 = AgentDir::new(pki, port, "jt02.lab.test", "");
        jt02.give(&expired);
        let (ok, said) = jt02.enroll(lab).await;
        assert!(!ok && said.contains(NOT_VALID), "expired: {said}");

        // A made-up token, well formed: refused with the same words.
        jt02.give(&format!("kcdj_{}", "7a".repeat(32)));
        let (ok, said) = jt02.enroll(lab).await;
        assert!(!ok && said.contains(NOT_VALID), "unknown: {said}");

        // JT02's token with a CSR for jt03: refused, audited, and the token is not spent:
        // JT02 then enrolls with it.
        let (s2, id2) = create(&config, "jt02.lab.test", &[]);
        secrets.push(s2.clone());
        let wrong = AgentDir::new(pki, port, "jt03.lab.test", "");
        wrong.give(&s2);
        let (ok, said) = wrong.enroll(lab).await;
        assert!(
            !ok && said.contains("refused to enroll") && said.contains("jt03.lab.test"),
            "{said}"
        );
        assert!(!wrong.cert().exists());
        let refused = store.audit_events(Some("jt02.lab.test"), 10).await.unwrap();
        assert!(
            refused
                .iter()
                .any(|e| e.kind == kcdsync_controller::store::EVENT_ENROLL_REFUSED
                    && e.actor.starts_with(&format!("join token {id2} at "))
                    && e.detail.contains("jt03.lab.test")),
            "a token used for another host's name is audited: {refused:?}"
        );
        jt02.give(&s2);
        let (ok, said) = jt02.enroll(lab).await;
        assert!(ok && said.contains("enrolled jt02.lab.test"), "{said}");
        assert_eq!(cert_file_names(&jt02.cert()), ["jt02.lab.test"]);

        // A revoked token: refused.
        let (s4, id4) = create(&config, "jt04.lab.test", &["--ttl", "2h", "--by", "carol"]);
        secrets.push(s4.clone());
        let o = cli(&config, &["agents", "token", "revoke", &id4]);
        let (out, err) = text(&o);
        assert!(o.status.success() && out.contains("is revoked"), "{out}{err}");
        let jt04 = AgentDir::new(pki, port, "jt04.lab.test", "");
        jt04.give(&s4);
        let (ok, said) = jt04.enroll(lab).await;
        assert!(!ok && said.contains(NOT_VALID), "revoked: {said}");
        assert!(!jt04.cert().exists());

        // Two agents racing with one token: exactly one certificate.
        let (s5, _) = create(&config, "jt05.lab.test", &[]);
        secrets.push(s5.clone());
        let (a, b) = (
            AgentDir::new(pki, port, "jt05.lab.test", ""),
            AgentDir::new(pki, port, "jt05.lab.test", ""),
        );
        a.give(&s5);
        b.give(&s5);
        let ((ok_a, said_a), (ok_b, said_b)) = tokio::join!(a.enroll(lab), b.enroll(lab));
        assert!(ok_a ^ ok_b, "exactly one enrolls:\n{said_a}\n{said_b}");
        let loser = if ok_a { &said_b } else { &said_a };
        assert!(loser.contains(NOT_VALID), "{loser}");
        assert_eq!(a.cert().exists() as u8 + b.cert().exists() as u8, 1);

        // Kerberos configured but unable to get a ticket (no keytab here): the token instead.
        let (s6, id6) = create(&config, "jt06.lab.test", &[]);
        secrets.push(s6.clone());
        let jt06 = AgentDir::new(
            pki,
            port,
            "jt06.lab.test",
            &format!(
                "service_principal = \"{}\"\nkeytab_file = \"missing.keytab\"\n",
                ctl.spn
            ),
        );
        jt06.give(&s6);
        let (ok, said) = jt06.enroll(lab).await;
        assert!(ok && said.contains("enrolled jt06.lab.test"), "{said}");
        assert!(!jt06.token_file().exists());
        assert!(
            audit_events_of(store, EVENT_ENROLLED)
                .await
                .iter()
                .any(|(_, _, d)| d.contains(&id6)),
            "audited as the token's"
        );

        // An agent started with nothing but its token (the service's path): it enrolls, deletes
        // the token file and streams.
        let (s7, _) = create(&config, "jt07.lab.test", &[]);
        secrets.push(s7.clone());
        let jt07 = AgentDir::new(pki, port, "jt07.lab.test", "");
        jt07.give(&s7);
        let mut agent = tokio::process::Command::new(workspace_bin("kcdsync-agent"))
            .arg("--config")
            .arg(&jt07.config)
            .arg("run")
            .env_remove("KRB5CCNAME")
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let s = store.clone();
        eventually(Duration::from_secs(30), "jt07 enrolled and reporting", || {
            let s = s.clone();
            async move {
                s.reporting_hosts()
                    .await
                    .unwrap()
                    .iter()
                    .any(|(h, _)| h == "jt07.lab.test")
            }
        })
        .await;
        assert_eq!(cert_file_names(&jt07.cert()), ["jt07.lab.test"]);
        assert!(!jt07.token_file().exists(), "spent, deleted");
        agent.kill().await.unwrap();

        // The operator's list: every token and its state, never a secret.
        let o = cli(&config, &["agents", "token", "list"]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}{err}");
        println!("{out}");
        for (id, state) in [(&id1, "used"), (&id2, "used"), (&id4, "revoked"), (&id6, "used")] {
            let line = out
                .lines()
                .find(|l| l.contains(id.as_str()))
                .unwrap_or_else(|| panic!("{id}: {out}"));
            assert!(line.contains(state), "{line}");
        }
        assert!(
            out.contains("jt-0000000000e1") && out.contains("expired, unused"),
            "{out}"
        );
        let o = cli(&config, &["agents", "token", "list", "--output", "json"]);
        let json = String::from_utf8_lossy(&o.stdout).into_owned();
        for s in &secrets {
            assert!(!out.contains(&s[5..]) && !json.contains(&s[5..]), "no secret listed");
        }

        // Refusals counted by reason: the replay and the race's loser are two "used" (both made
        // before this point; waited for as exported, which is periodic: a first export may fall
        // between the two).
        eventually(Duration::from_secs(20), "the token refusals exported", || {
            let seen = ["token_expired", "token_unknown", "token_revoked"]
                .map(count)
                .iter()
                .all(|n| *n >= 1.0)
                && count("token_used") >= 2.0;
            async move { seen }
        })
        .await;

        ctl.running.stop().await;
        ctl.store.close().await;
        // Nothing stores a secret: not the database, not its journal.
        for f in std::fs::read_dir(pki.path(".")).unwrap() {
            let f = f.unwrap().path();
            if !f.file_name().unwrap().to_string_lossy().starts_with("kcdsync.db") {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap();
            for s in &secrets {
                let hex = &s.as_bytes()[5..];
                assert!(
                    !bytes.windows(hex.len()).any(|w| w == hex) && !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "{} holds a secret",
                    f.display()
                );
            }
        }
    });
}
