//! Callers of the fleet API are input: the real `kcdsync-controller serve`
//! process re-reads its tokens and TLS files on SIGHUP (a revoked token stops
//! working without a restart, new connections get the new certificate), and
//! an agent's certificate is no API credential.

use std::time::Duration;

use kcdsync_controller::certs::{Ca, Validity};
use kcdsync_proto::v1 as pb;
use kcdsync_tests::agents::*;
use kcdsync_tests::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const NEW_TOKEN: &str = "rotated-token-0123456789abcdef";

/// `list_hosts` through a fresh connection with `tls` and `token`: the code, or Ok.
async fn list_hosts(port: u16, tls: ClientTlsConfig, token: Option<&str>) -> Result<(), String> {
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut c = pb::fleet_service_client::FleetServiceClient::new(channel);
    let mut req = tonic::Request::new(pb::ListHostsRequest::default());
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    c.list_hosts(req)
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost")
}

/// A port free right now, for a controller process whose address the test must know.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn sighup_revokes_a_token_and_rotates_the_certificate_without_a_restart() {
    let lab = Lab::start();
    let names = ["HUP01", "HUP02"];
    let fleet = FleetSpec::new("t-hup", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let pki = Pki::new();
    controller_config(lab, &fleet, &pki, "plan", &names);
    let port = free_port();
    let config = pki.path("kcdsync.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[api]\nlisten = \"127.0.0.1:0\"",
        &format!("[api]\nlisten = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&config, text).unwrap();
    let mut serve = tokio::process::Command::new(controller_bin())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start kcdsync-controller serve");
    let pid = serve.id().unwrap().to_string();
    let hup = || {
        let pid = pid.clone();
        async move {
            let ok = tokio::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .await
                .unwrap();
            assert!(ok.success(), "kill -HUP {pid}");
        }
    };

    eventually(Duration::from_secs(30), "the API answers the read token", || {
        let tls = pki.client_tls(None);
        async move { list_hosts(port, tls, Some(READ_TOKEN)).await.is_ok() }
    })
    .await;

    // The operator revokes the reader's token and adds a new one, then sends SIGHUP.
    write_tokens(
        &pki,
        &[("orchestrator", "write", WRITE_TOKEN), ("rotated", "read", NEW_TOKEN)],
    );
    hup().await;
    eventually(Duration::from_secs(10), "the revoked token is refused", || {
        let tls = pki.client_tls(None);
        async move { list_hosts(port, tls, Some(READ_TOKEN)).await.is_err() }
    })
    .await;
    assert_eq!(
        list_hosts(port, pki.client_tls(None), Some(READ_TOKEN)).await,
        Err("Unauthenticated: unknown bearer token".into())
    );
    assert_eq!(list_hosts(port, pki.client_tls(None), Some(NEW_TOKEN)).await, Ok(()));

    // A token file others can read is refused at reload, and the tokens in force stay.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let tokens = pki.path("tokens.toml");
        write_tokens(&pki, &[("reader", "read", READ_TOKEN)]);
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
        hup().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(list_hosts(port, pki.client_tls(None), Some(NEW_TOKEN)).await, Ok(()));
        assert!(list_hosts(port, pki.client_tls(None), Some(READ_TOKEN)).await.is_err());
        write_tokens(&pki, &[("rotated", "read", NEW_TOKEN)]);
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // The certificate is re-issued by another CA: new connections get the new one.
    let rotated = Ca::new("kcdsync rotated CA").unwrap();
    let (cert, key) = rotated
        .issue_server(&["localhost"], &["127.0.0.1".parse().unwrap()], Validity::days(1))
        .unwrap();
    std::fs::write(pki.path("controller.pem"), cert).unwrap();
    write_private(&pki.path("controller.key"), key);
    hup().await;
    eventually(
        Duration::from_secs(10),
        "new connections present the new certificate",
        || {
            let tls = trusting(&rotated);
            async move { list_hosts(port, tls, Some(NEW_TOKEN)).await.is_ok() }
        },
    )
    .await;
    let old = list_hosts(port, pki.client_tls(None), Some(NEW_TOKEN))
        .await
        .unwrap_err();
    assert!(old.starts_with("connect:"), "the old CA no longer verifies: {old}");

    serve.kill().await.unwrap();
}

#[tokio::test]
async fn an_agent_certificate_is_no_api_credential() {
    let lab = Lab::start();
    let names = ["ACA01", "ACA02"];
    let fleet = FleetSpec::new("t-aca", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let pki = Pki::new();
    let running = kcdsync_controller::runtime::start(controller_config(lab, &fleet, &pki, "plan", &names))
        .await
        .unwrap();
    let port = running.api_addr.unwrap().port();
    // "reader.lab.test" is in api.read_clients; from the API clients' CA it reads ...
    let (c, k) = pki.api_ca.issue_agent("reader.lab.test", Validity::days(1)).unwrap();
    let api_client = pki.client_tls(None).identity(Identity::from_pem(c, k));
    assert_eq!(list_hosts(port, api_client, None).await, Ok(()));
    // ... from the agents' CA the same name is refused during the handshake.
    let (c, k) = pki.ca.issue_agent("reader.lab.test", Validity::days(1)).unwrap();
    let agent_cert = pki.client_tls(None).identity(Identity::from_pem(c, k));
    let e = list_hosts(port, agent_cert, None).await.unwrap_err();
    assert!(
        !e.starts_with("PermissionDenied") && !e.starts_with("Unauthenticated"),
        "refused by TLS, before any role check: {e}"
    );
    running.stop().await;
}
