//! The exposure model on the real lab DC: delegation seeded by hand the way
//! an admin or an attacker would leave it — an entry to the domain
//! controller, a stale peer, an RBCD descriptor on a host — is classified by
//! a real `serve` (GetExposure, ListFindings, the plan's edge diff, kcdctl),
//! and the KDC judges whether the dangerous edge is live, before and after
//! the remediation the finding names.
//!
//! RBCD: Samba 4.17's KDC ignores msDS-AllowedToActOnBehalfOfOtherIdentity
//! (LAB-NOTES), so for RBCD only the reading and classification are proven
//! here; tests/samba422.rs asks Samba 4.22's KDC, which honours it.

use std::collections::HashSet;
use std::time::Duration;

use kcdsync_controller::runtime;
use kcdsync_proto::v1 as pb;
use kcdsync_tests::agents::*;
use kcdsync_tests::rbcd::{object_sid, write_rbcd};
use kcdsync_tests::*;

/// The edge `source -> target` of `class`, if the exposure has one.
fn find<'a>(
    edges: &'a [pb::DelegationEdge],
    source: &str,
    target: &str,
    class: pb::EdgeClass,
) -> Option<&'a pb::DelegationEdge> {
    edges
        .iter()
        .find(|e| e.source == source && e.target == target && e.class == class as i32)
}

#[tokio::test]
async fn seeded_excess_and_dangerous_edges_are_classified_and_the_kdc_agrees() {
    let lab = Lab::start();
    let names = ["EXP01", "EXP02", "EXP03"];
    let fleet = FleetSpec::new("t-exposure", &names)
        .uac(WORKSTATION | T2A4D)
        .user("exp-alice", 0)
        .create(lab)
        .await
        .unwrap();
    let (exp01, exp02, exp03) = (fleet.host("EXP01"), fleet.host("EXP02"), fleet.host("EXP03"));
    let dc = lab.var("LAB_DC_HOST").to_owned();
    // EXP01: its peer EXP02, a stale peer EXP03 (in the scope, in no group),
    // and the domain controller.
    let mut seeded = exp02.entries();
    seeded.extend(exp03.entries());
    seeded.push(format!("cifs/{dc}"));
    lab.set_delegation(&exp01.dn, &seeded).await.unwrap();
    lab.set_delegation(&exp02.dn, &exp01.entries()).await.unwrap();
    lab.set_uac(&exp03.dn, WORKSTATION).await.unwrap();
    // RBCD on EXP02: the stale EXP03, and an account that is no computer of the scope.
    let exp03_sid = object_sid(lab, &exp03.dn).await;
    let stranger = lab.var("LAB_NOPRIV_SID").to_owned();
    write_rbcd(lab, &exp02.dn, &[&exp03_sid, &stranger]);

    // The KDC: EXP01 can act as anyone towards the DC, and towards the stale peer.
    lab.kvno(exp01, "exp-alice", &format!("cifs/{dc}"))
        .expect("the seeded edge to the DC is live");
    lab.kvno(exp01, "exp-alice", &format!("cifs/{}", exp03.fqdn))
        .expect("the stale edge is live");
    println!("KDC: EXP01 -> cifs/{dc} as exp-alice: GRANTED (the dangerous edge is live)");

    let pki = Pki::new();
    let running = runtime::start(controller_config(lab, &fleet, &pki, "enforce", &["EXP01", "EXP02"]))
        .await
        .unwrap();
    running.reconciled(1).await;
    let addr = running.api_addr.unwrap();
    let mut read = fleet_client(&pki, addr, Some(READ_TOKEN), None).await;

    let all = exposure_edges(&mut read).await;
    for e in &all {
        println!(
            "{:<10} {:<16} -> {:<16} {:<22} {:?}",
            format!("{:?}", pb::EdgeClass::try_from(e.class).unwrap()),
            e.source,
            e.target,
            format!("{:?}", pb::EdgeVia::try_from(e.via).unwrap()),
            e.reasons
        );
    }
    let required = find(&all, &exp01.fqdn, &exp02.fqdn, pb::EdgeClass::Required).expect("EXP01 -> EXP02 is required");
    assert_eq!(required.via, pb::EdgeVia::ProtocolTransition as i32);
    assert_eq!(required.entries.len(), 4);
    let to_dc = find(&all, &exp01.fqdn, &dc, pb::EdgeClass::Dangerous).expect("EXP01 -> DC is dangerous");
    assert!(to_dc.target_dn.contains("OU=Domain Controllers"), "{to_dc:?}");
    assert!(to_dc.reasons[0].contains("domain controller"), "{to_dc:?}");
    let stale = find(&all, &exp01.fqdn, &exp03.fqdn, pb::EdgeClass::Excess).expect("EXP01 -> EXP03 is excess");
    assert!(stale.reasons[0].contains("stale peer"), "{stale:?}");
    let rbcd_stale = find(&all, &exp03.fqdn, &exp02.fqdn, pb::EdgeClass::Excess).expect("RBCD EXP03 -> EXP02");
    assert_eq!(
        rbcd_stale.via,
        pb::EdgeVia::Rbcd as i32,
        "its SID was mapped to EXP03 by objectSid"
    );
    let rbcd_stranger =
        find(&all, &stranger, &exp02.fqdn, pb::EdgeClass::Dangerous).expect("RBCD from a principal outside the scope");
    assert_eq!(rbcd_stranger.via, pb::EdgeVia::Rbcd as i32);
    assert_eq!(all.len(), 6, "required both ways, DC, stale, two RBCD: {all:#?}");

    // Paged like the other lists: one edge a page, every edge once, in the same order.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let r = read
            .get_exposure(pb::GetExposureRequest {
                page_size: 1,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.required, r.excess, r.dangerous),
            (2, 2, 2),
            "counts cover every edge"
        );
        paged.extend(r.edges);
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, all);
    let head = read
        .get_exposure(pb::GetExposureRequest {
            class: pb::EdgeClass::Dangerous as i32,
            host: "EXP02".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        head.edges.len(),
        1,
        "dangerous edges from or to EXP02: the stranger's RBCD"
    );
    println!(
        "privileged accounts every protocol-transition edge can impersonate: {:?}",
        head.privileged_impersonable
    );
    let mut nobody = fleet_client(&pki, addr, None, None).await;
    let e = nobody
        .get_exposure(pb::GetExposureRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // The dangerous edges are findings, with evidence and a remediation.
    let findings = read
        .list_findings(pb::ListFindingsRequest {
            kind: pb::FindingKind::DangerousDelegation as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .findings;
    let f = findings
        .iter()
        .find(|f| f.hosts == [exp01.fqdn.clone(), dc.clone()])
        .unwrap_or_else(|| panic!("no finding for EXP01 -> DC: {findings:#?}"));
    assert!(f.evidence.iter().any(|e| e.value == format!("cifs/{dc}")), "{f:?}");
    println!("finding: {}\n  remediation: {}", f.summary, f.remediation);
    assert!(
        findings
            .iter()
            .any(|f| f.hosts == [stranger.clone(), exp02.fqdn.clone()])
    );

    // The startup plan removes the stale peer's entries and waits for approval; its edge diff says so.
    let pending = pending_plans(&mut read).await;
    assert_eq!(pending.len(), 1, "{pending:#?}");
    let d = pending[0]
        .edge_diff
        .clone()
        .expect("a pending plan shows its edge diff");
    assert!(d.added.is_empty() && !d.adds_dangerous, "{d:#?}");
    assert_eq!(
        d.removed
            .iter()
            .map(|e| (e.target.as_str(), e.class))
            .collect::<Vec<_>>(),
        [(exp03.fqdn.as_str(), pb::EdgeClass::Excess as i32)]
    );

    // kcdctl: the table, and the export of the approved edges only.
    std::fs::write(pki.path("read.token"), format!("{READ_TOKEN}\n")).unwrap();
    let kcdctl = |args: &[&str]| {
        tokio::process::Command::new(workspace_bin("kcdctl"))
            .args(["--controller", &format!("https://127.0.0.1:{}", addr.port())])
            .arg("--ca")
            .arg(pki.path("ca.pem"))
            .arg("--token-file")
            .arg(pki.path("read.token"))
            .args(args)
            .output()
    };
    let out = kcdctl(&["exposure", "--class", "dangerous"]).await.unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        table.contains(&dc) && table.contains("2 required, 2 excess, 2 dangerous"),
        "{table}"
    );
    assert!(
        !table.contains("stale peer"),
        "--class dangerous shows no excess edge:\n{table}"
    );
    let out = kcdctl(&["exposure", "--export", "csv"]).await.unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    println!("export:\n{csv}");
    assert_eq!(csv.lines().count(), 3, "a header and the two required edges: {csv}");
    assert!(!csv.contains(&dc) && !csv.contains(&exp03.fqdn.to_string()), "{csv}");
    let out = kcdctl(&["--output", "json", "exposure"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dangerous"], 2);

    // Approving removes the stale edge (kcdsync's own remediation) ...
    let mut write = fleet_client(&pki, addr, Some(WRITE_TOKEN), None).await;
    write
        .approve_plan(pb::ApprovePlanRequest {
            id: pending[0].id.clone(),
            comment: String::new(),
        })
        .await
        .unwrap();
    // ... but never the entry to the DC, which kcdsync does not manage: the
    // finding's remediation is the operator's, done here as Administrator.
    let after: HashSet<String> = lab.read_host(&exp01.dn).await.unwrap().delegate.into_iter().collect();
    assert!(after.contains(&format!("cifs/{dc}")), "{after:?}");
    lab.set_delegation(&exp01.dn, &exp02.entries()).await.unwrap();
    write
        .trigger_reconcile(pb::TriggerReconcileRequest::default())
        .await
        .unwrap();
    exposure_until(
        &read,
        Duration::from_secs(10),
        "the exposure shows the remediation",
        |now| {
            now.iter().all(|e| e.target != dc)
                && !now
                    .iter()
                    .any(|e| e.target == exp03.fqdn && e.via != pb::EdgeVia::Rbcd as i32)
        },
    )
    .await;
    let refused = lab
        .kvno(exp01, "exp-alice", &format!("cifs/{dc}"))
        .expect_err("after the remediation, EXP01 cannot act towards the DC");
    println!(
        "KDC: EXP01 -> cifs/{dc} after the remediation: REFUSED ({})",
        refused.lines().last().unwrap_or_default()
    );
    lab.kvno(exp01, "exp-alice", &format!("cifs/{}", exp02.fqdn))
        .expect("the required edge still works");
    // What the lab's KDC does with the RBCD edge: Samba 4.17 ignores RBCD, so
    // this is printed, not asserted (a Windows KDC would grant it).
    let rbcd = lab.kvno(exp03, "exp-alice", &format!("cifs/{}", exp02.fqdn));
    println!(
        "KDC (Samba 4.17): EXP03 -> cifs/{} over RBCD: {:?}",
        exp02.fqdn,
        rbcd.map_err(|e| e.lines().last().unwrap_or_default().to_owned())
    );
    running.stop().await;
}

/// gRPC server reflection v1alpha (what Python's grpcio-reflection, Postman
/// and Evans ask) answers beside v1, over the real TLS listener of `serve`.
#[tokio::test]
async fn reflection_v1alpha_lists_the_services_over_tls() {
    use tonic_reflection::pb::{v1, v1alpha};
    let lab = Lab::start();
    let fleet = FleetSpec::new("t-reflect", &["RFL01", "RFL02"])
        .create(lab)
        .await
        .unwrap();
    let pki = Pki::new();
    let running = runtime::start(controller_config(lab, &fleet, &pki, "observe", &["RFL01", "RFL02"]))
        .await
        .unwrap();
    let addr = running.api_addr.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(pki.client_tls(None))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let ask = |m: v1alpha::server_reflection_request::MessageRequest| {
        tokio_stream::iter([v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        }])
    };
    let mut replies = alpha
        .server_reflection_info(ask(v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )))
        .await
        .expect("v1alpha is served")
        .into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) = reply.message_response
    else {
        panic!("not a service list: {reply:?}");
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    println!("v1alpha services: {services:?}");
    for s in [
        "kcdsync.v1.FleetService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.iter().any(|x| x == s), "{s} missing from {services:?}");
    }
    assert!(
        !services.iter().any(|x| x == "kcdsync.v1.AgentService"),
        "the agent service is not served on the API listener: {services:?}"
    );
    // The descriptor it serves holds the new RPC.
    let mut replies = alpha
        .server_reflection_info(ask(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol("kcdsync.v1.FleetService".into()),
        ))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(fd)) = reply.message_response
    else {
        panic!("not a descriptor: {reply:?}");
    };
    assert!(
        fd.file_descriptor_proto
            .iter()
            .any(|b| b.windows(b"GetExposure".len()).any(|w| w == b"GetExposure")),
        "the FleetService descriptor names GetExposure"
    );

    // v1 still answers.
    let mut v1c = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let mut replies = v1c
        .server_reflection_info(tokio_stream::iter([v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        }]))
        .await
        .expect("v1 is served")
        .into_inner();
    let reply = replies.message().await.unwrap().expect("one reply");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = reply.message_response
    else {
        panic!("not a service list: {reply:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "grpc.reflection.v1.ServerReflection"),
        "{list:?}"
    );
    running.stop().await;
}
