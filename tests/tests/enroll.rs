//! Enrollment by Kerberos on the lab: a real `serve` (in process) with `[agents.enroll]` and a
//! keytab for its service principal on the lab's service account, and real `kcdsync-agent`
//! processes holding their hosts' keytabs, asking the lab's KDC for tickets. Nothing is handed
//! out by hand: no agent certificate exists before the agents enroll.
//!
//! - a host of the scope enrolls with its keytab (`kcdsync-agent enroll`) and gets a
//!   certificate naming exactly it, from the agents' CA, audited as enrolled by its account;
//! - another host's agent starts with no certificate at all, enrolls by itself and streams; one
//!   whose certificate expired while it was off enrolls again by itself;
//! - refused, with the reason, and nothing written: a host's keytab asking for another host's
//!   name, a user principal, the DC's own principal, a computer outside the scope, a revoked
//!   host; authenticated refusals are audited;
//! - without Kerberos: a garbage token is UNAUTHENTICATED, and a stream without a client
//!   certificate is still refused although the endpoint's TLS now lets it connect.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kcdsync_controller::store::{EVENT_ENROLL_REFUSED, EVENT_ENROLLED, Store};
use kcdsync_proto::v1::agent_service_client::AgentServiceClient;
use kcdsync_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use kcdsync_proto::v1::{EnrollRequest, KerberosProof, enroll_request};
use kcdsync_tests::agents::*;
use kcdsync_tests::enrolling::EnrollingController;
use kcdsync_tests::{FleetSpec, Lab, run_with_room, token, workspace_bin};
use tonic::transport::Endpoint;

/// An agent's directory: its config, keytab and simulated host; no certificate.
struct AgentDir {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl AgentDir {
    /// An agent for `fqdn` that enrolls with `keytab` (and `principal`, when the keytab's
    /// first is not the one to use) at the controller on `port`; `host` overrides the FQDN it
    /// asks a certificate for.
    fn new(
        pki: &Pki,
        port: u16,
        spn: &str,
        fqdn: &str,
        keytab: &Path,
        principal: Option<&str>,
        host: Option<&str>,
    ) -> AgentDir {
        let dir = tempfile::tempdir().unwrap();
        let netbios = fqdn.split('.').next().unwrap().to_uppercase();
        std::fs::write(
            dir.path().join("host.toml"),
            format!("fqdn = \"{fqdn}\"\nnetbios = \"{netbios}\"\n"),
        )
        .unwrap();
        std::fs::copy(keytab, dir.path().join("host.keytab")).unwrap();
        let mut enroll =
            format!("[enroll]\nservice_principal = \"{spn}\"\nkeytab_file = \"host.keytab\"\nretry_secs = 1\n");
        if let Some(p) = principal {
            enroll.push_str(&format!("principal = \"{p}\"\n"));
        }
        if let Some(h) = host {
            enroll.push_str(&format!("host = \"{h}\"\n"));
        }
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "controller_url = \"https://127.0.0.1:{port}\"\ntls_server_name = \"localhost\"\nca_file = \"{}\"\n\
                 cert_file = \"agent.pem\"\nkey_file = \"agent.key\"\noutbox_dir = \"outbox\"\nprobe = \"simulated\"\n\
                 simulated_host = \"host.toml\"\nattempts_interval_secs = 1\nreport_interval_secs = 60\n\n{enroll}",
                pki.path("ca.pem").display()
            ),
        )
        .unwrap();
        AgentDir { dir, config }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("agent.pem")
    }

    fn command(&self, lab: &Lab) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(workspace_bin("kcdsync-agent"));
        cmd.arg("--config")
            .arg(&self.config)
            // The lab's KDC on loopback, and nothing else.
            .env("KRB5_CONFIG", lab.krb5_conf())
            .env_remove("KRB5CCNAME")
            .kill_on_drop(true);
        cmd
    }

    /// `kcdsync-agent run` until the store has a report from `host` (it must enroll first).
    async fn runs_until_reporting(&self, lab: &Lab, store: &Store, host: &str) {
        let mut agent = self
            .command(lab)
            .arg("run")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let s = store.clone();
        eventually(
            Duration::from_secs(30),
            &format!("{host} enrolled and reporting"),
            || {
                let s = s.clone();
                async move { s.reporting_hosts().await.unwrap().iter().any(|(h, _)| h == host) }
            },
        )
        .await;
        agent.kill().await.unwrap();
    }

    /// `kcdsync-agent enroll`: (success, what it printed).
    async fn enroll(&self, lab: &Lab) -> (bool, String) {
        let out = self.command(lab).arg("enroll").output().await.unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    }
}

#[test]
fn hosts_enroll_as_their_computer_accounts_and_nobody_else_gets_a_certificate() {
    run_with_room(async {
        let lab = Lab::start();
        let hosts = ["ENR01", "ENR02", "ENR03", "ENR04", "ENR05"];
        let ctl = EnrollingController::start(lab, "t-enroll", &hosts).await.unwrap();
        let (pki, spn, store, port) = (&ctl.pki, ctl.spn.as_str(), &ctl.store, ctl.port);
        // Same domain, same kind of object, but in an OU the controller does not manage.
        let outside = FleetSpec::new("t-enroll-out", &["ENRX01"]).create(lab).await.unwrap();
        let keytab = |name: &str| pki.path(&format!("{name}.keytab"));
        let tag = &token()[..6];
        let user = lab
            .account_with_keytab(&ctl.fleet.ou_dn, &format!("enr-usr-{tag}"), None, &keytab("user"))
            .await
            .unwrap();
        lab.host_keytab(outside.host("ENRX01"), &keytab("ENRX01")).unwrap();
        lab.dc_keytab(&keytab("dc")).unwrap();

        // ENR01 enrolls with its keytab; until the controller's first read of AD it is told to
        // ask again.
        let enr01 = AgentDir::new(pki, port, spn, "enr01.lab.test", &keytab("ENR01"), None, None);
        let mut said = String::new();
        for _ in 0..60 {
            let (ok, s) = enr01.enroll(lab).await;
            said = s;
            if ok || !said.contains("has not read AD yet") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(said.contains("enrolled enr01.lab.test"), "{said}");
        assert_eq!(cert_file_names(&enr01.cert()), vec!["enr01.lab.test"]);
        let enrolled = audit_events_of(store, EVENT_ENROLLED).await;
        assert_eq!(enrolled.len(), 1, "{enrolled:?}");
        assert_eq!(enrolled[0].0, "enr01.lab.test");
        assert!(
            enrolled[0].1.starts_with("ENR01$@LAB.TEST at 127.0.0.1:"),
            "{enrolled:?}"
        );
        // With a valid certificate there is nothing to do.
        let (ok, said) = enr01.enroll(lab).await;
        assert!(ok && said.contains("nothing to do"), "{said}");

        // ENR02's agent starts with nothing but its keytab: it enrolls and streams.
        let enr02 = AgentDir::new(pki, port, spn, "enr02.lab.test", &keytab("ENR02"), None, None);
        enr02.runs_until_reporting(lab, store, "enr02.lab.test").await;
        assert_eq!(cert_file_names(&enr02.cert()), vec!["enr02.lab.test"]);

        // ENR05's certificate expired while the host was off: the agent enrolls again on its own
        // (it could no longer renew over a stream) and streams with the new one.
        let enr05 = AgentDir::new(pki, port, spn, "enr05.lab.test", &keytab("ENR05"), None, None);
        let now = time::OffsetDateTime::now_utc();
        let (old, key) = pki
            .ca
            .issue_agent(
                "enr05.lab.test",
                kcdsync_controller::certs::Validity::between(
                    now - time::Duration::hours(2),
                    now - time::Duration::hours(1),
                ),
            )
            .unwrap();
        std::fs::write(enr05.cert(), &old).unwrap();
        kcdsync_tests::write_private(&enr05.dir.path().join("agent.key"), key);
        enr05.runs_until_reporting(lab, store, "enr05.lab.test").await;
        assert_ne!(
            std::fs::read(enr05.cert()).unwrap(),
            old.into_bytes(),
            "a new certificate"
        );

        // Refusals: each says why, and no certificate is written.
        kcdsync_controller::revocation::revoke(store, "enr04.lab.test", "lost in transit", "test")
            .await
            .unwrap();
        let dc_principal = format!(
            "{}$@{}",
            lab.var("LAB_DC_HOST").split('.').next().unwrap().to_uppercase(),
            lab.realm()
        );
        let cases: Vec<(&str, AgentDir, &str)> = vec![
            (
                "ENR03's keytab asking for enr02's name",
                AgentDir::new(
                    pki,
                    port,
                    spn,
                    "enr03.lab.test",
                    &keytab("ENR03"),
                    None,
                    Some("enr02.lab.test"),
                ),
                "enr02.lab.test",
            ),
            (
                "a user principal",
                AgentDir::new(pki, port, spn, "enr09.lab.test", &keytab("user"), Some(&user), None),
                "is not a computer account",
            ),
            (
                "the DC's own principal",
                AgentDir::new(pki, port, spn, "dc1.lab.test", &keytab("dc"), Some(&dc_principal), None),
                "is not a computer in the managed scope",
            ),
            (
                "a computer outside the scope",
                AgentDir::new(pki, port, spn, "enrx01.lab.test", &keytab("ENRX01"), None, None),
                "is not a computer in the managed scope",
            ),
            (
                "a revoked host",
                AgentDir::new(pki, port, spn, "enr04.lab.test", &keytab("ENR04"), None, None),
                "revoked",
            ),
        ];
        for (what, agent, expect) in &cases {
            let (ok, said) = agent.enroll(lab).await;
            println!("{what}: {}", said.trim());
            assert!(!ok, "{what} must be refused: {said}");
            assert!(
                said.contains("refused to enroll") && said.contains(expect),
                "{what}: {said}"
            );
            assert!(!agent.cert().exists(), "{what}: no certificate written");
        }
        let refused = audit_events_of(store, EVENT_ENROLL_REFUSED).await;
        for who in ["ENR03$@LAB.TEST", &user, &dc_principal, "ENRX01$@LAB.TEST"] {
            assert!(
                refused
                    .iter()
                    .any(|(host, actor, _)| host == who && actor.starts_with(who)),
                "{who} audited as refused: {refused:?}"
            );
        }
        assert_eq!(
            audit_events_of(store, EVENT_ENROLLED).await.len(),
            3,
            "ENR01, ENR02 and ENR05 only"
        );

        // Without Kerberos at all.
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(pki.client_tls(None))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let e = EnrollmentServiceClient::new(channel.clone())
            .enroll(EnrollRequest {
                csr: b"not a csr".to_vec(),
                proof: Some(enroll_request::Proof::Kerberos(KerberosProof {
                    token: b"\x60\x03\x06\x01\x00".to_vec(),
                    csr_mic: b"x".to_vec(),
                })),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(hello_msg("enr01.lab.test")).await.unwrap();
        let e = AgentServiceClient::new(channel)
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("a client certificate is required"), "{e:?}");

        ctl.running.stop().await;
    });
}
