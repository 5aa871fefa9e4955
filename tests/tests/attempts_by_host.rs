//! A compromised agent cannot touch another host's attempts: over real mTLS streams, attempts
//! are stored under the host the client certificate names, whatever the message says, and an id
//! another host already used is this host's own attempt, not a duplicate of that one.

use std::time::Duration;

use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::agent_service_client::AgentServiceClient;
use kcdsync_proto::v1::controller_message::Body as Down;
use kcdsync_proto::v1::*;
use kcdsync_tests::agents::*;
use tokio::sync::mpsc;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// One stream as `host` (its own certificate, its own Hello) sending `body` after the Hello:
/// the controller's answer, `Ok(ack)` or `Err("Code: message")`.
async fn send_as(url: &str, tls: ClientTlsConfig, host: &str, body: Body) -> Result<Ack, String> {
    let channel = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let (tx, rx) = mpsc::channel(4);
    let hello = Hello {
        identity: Some(HostIdentity {
            fqdn: host.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    tx.send(AgentMessage {
        seq: 1,
        body: Some(Body::Hello(hello)),
    })
    .await
    .unwrap();
    tx.send(AgentMessage {
        seq: 2,
        body: Some(body),
    })
    .await
    .unwrap();
    let mut inbound = AgentServiceClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Err(_) => return Err("no answer within 10 s".into()),
            Ok(Ok(Some(ControllerMessage {
                body: Some(Down::Ack(a)),
            }))) => return Ok(a),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return Err("closed".into()),
            Ok(Err(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

fn attempts(id: &str, message: &str, error_code: u32) -> Body {
    Body::Attempts(MigrationAttempts {
        attempts: vec![MigrationAttempt {
            attempt_id: id.into(),
            time: Some(kcdsync_proto::timestamp_from_ms(
                kcdsync_controller::store::now_ms() - 60_000,
            )),
            vm_name: "vm1".into(),
            peer: "hv-a.lab.test".into(),
            role: MigrationRole::Source as i32,
            success: error_code == 0,
            error_code,
            message: message.into(),
            ..Default::default()
        }],
    })
}

#[tokio::test]
async fn an_agent_sending_another_hosts_attempt_id_stores_only_its_own() {
    let pki = Pki::new();
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", db.path().join("kcdsync.db").display());
    let mut ep = AgentEndpoint::spawn(&pki, &url, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (a, b) = ("hv-a.lab.test", "hv-b.lab.test");
    let id = "hv-b.lab.test:4711";

    // HV-B reports a failed migration.
    let ack = send_as(
        &ep.url(),
        pki.agent_tls(b),
        b,
        attempts(id, "b: 0x8009030E", 0x8009030E),
    )
    .await
    .unwrap();
    assert_eq!(ack.attempt_ids, vec![id]);
    let trigger = tokio::time::timeout(Duration::from_secs(5), ep.triggers.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (trigger.host.as_str(), trigger.reason.as_str()),
        (b, "attempt:hv-b.lab.test:4711")
    );

    // HV-A, with its own certificate, sends the very same id claiming success, twice.
    for _ in 0..2 {
        let ack = send_as(&ep.url(), pki.agent_tls(a), a, attempts(id, "a: forged", 0))
            .await
            .unwrap();
        assert_eq!(ack.attempt_ids, vec![id], "acknowledged as HV-A's own");
    }
    let stored_b = ep.store.attempts(Some(b), 10).await.unwrap();
    assert_eq!(stored_b.len(), 1);
    assert_eq!(
        (
            stored_b[0].message.as_str(),
            stored_b[0].success,
            stored_b[0].error_code
        ),
        ("b: 0x8009030E", false, 0x8009030E),
        "HV-B's attempt is unchanged"
    );
    let stored_a = ep.store.attempts(Some(a), 10).await.unwrap();
    assert_eq!(stored_a.len(), 1, "stored once, as HV-A's");
    assert_eq!(
        (stored_a[0].attempt_id.as_str(), stored_a[0].message.as_str()),
        (id, "a: forged")
    );
    assert_eq!(ep.store.attempt_count().await.unwrap(), 2);

    // A report naming HV-B on HV-A's stream is refused, and nothing is stored for HV-B.
    let forged = Body::Report(HostReport {
        identity: Some(HostIdentity {
            fqdn: b.into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let e = send_as(&ep.url(), pki.agent_tls(a), a, forged).await.unwrap_err();
    assert_eq!(
        e,
        "PermissionDenied: this stream is bound to hv-a.lab.test; it cannot report for another host"
    );
    assert!(ep.store.latest_report(b).await.unwrap().is_none());

    // An attempt time from the far future is refused with what to check; nothing is stored.
    let mut late = attempts("hv-a.lab.test:9", "late", 0);
    if let Body::Attempts(m) = &mut late {
        m.attempts[0].time = Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        });
    }
    let e = send_as(&ep.url(), pki.agent_tls(a), a, late).await.unwrap_err();
    assert!(
        e.starts_with("InvalidArgument: attempts[0].time (seconds 9223372036854775807, nanos 0) is not a timestamp"),
        "{e}"
    );
    assert_eq!(ep.store.attempt_count().await.unwrap(), 2);
    ep.stop().await;
}
