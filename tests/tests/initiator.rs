//! CheckMigration when Move-VM runs on another machine than the source: a
//! management gateway, in an OU of its own outside the controller's scope and
//! every group. The pair is converged by a real `serve`; the gateway is not,
//! and kcdsync must say so — and what to set — where the KDC refuses the
//! gateway's S4U2Self + S4U2Proxy to the source, and say ready once the KDC
//! grants it after the remediation the finding names.

use std::time::Duration;

use kcdsync_controller::runtime;
use kcdsync_proto::v1 as pb;
use kcdsync_tests::agents::*;
use kcdsync_tests::*;

type Client = pb::fleet_service_client::FleetServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

fn request(account: &str, initiator: &str) -> pb::CheckMigrationRequest {
    pb::CheckMigrationRequest {
        source: "ini01.lab.test".into(),
        destination: "INI02".into(),
        account: account.into(),
        initiator: initiator.into(),
    }
}

async fn check(c: &mut Client, account: &str, initiator: &str) -> Result<pb::CheckMigrationResponse, tonic::Status> {
    c.check_migration(request(account, initiator))
        .await
        .map(tonic::Response::into_inner)
}

fn kinds(fs: &[pb::Finding]) -> Vec<pb::FindingKind> {
    fs.iter().map(|f| pb::FindingKind::try_from(f.kind).unwrap()).collect()
}

fn evidence<'a>(f: &'a pb::Finding, key: &str) -> &'a str {
    f.evidence
        .iter()
        .find(|e| e.key == key)
        .map_or("", |e| e.value.as_str())
}

async fn until(c: &Client, initiator: &str, want: pb::Readiness) -> pb::CheckMigrationResponse {
    check_until(c, request("ini-alice", initiator), Duration::from_secs(20), want).await
}

#[tokio::test]
async fn a_gateway_must_delegate_to_the_source_and_the_kdc_agrees() {
    let lab = Lab::start();
    let names = ["INI01", "INI02"];
    let fleet = FleetSpec::new("t-initiator", &names)
        .user("ini-alice", 0)
        .user("ini-sensitive", 0x100000)
        .create(lab)
        .await
        .unwrap();
    let outside = FleetSpec::new("t-initiator-gw", &["INIGW"]).create(lab).await.unwrap();
    let (src, dst, gw) = (fleet.host("INI01"), fleet.host("INI02"), outside.host("INIGW"));
    let to_source = format!("cifs/{}", src.fqdn);

    let pki = Pki::new();
    let running = runtime::start(controller_config(lab, &fleet, &pki, "enforce", &names))
        .await
        .unwrap();
    running.reconciled(1).await;
    let addr = running.api_addr.unwrap();
    let mut read = fleet_client(&pki, addr, Some(READ_TOKEN), None).await;
    lab.kvno(src, "ini-alice", &format!("cifs/{}", dst.fqdn))
        .expect("the controller converged the pair");

    // Run on the source (no initiator, or the source by either name): unchanged.
    let plain = check(&mut read, "ini-alice", "").await.unwrap();
    assert_eq!(plain.readiness, pb::Readiness::Ready as i32, "{}", plain.summary);
    for same in ["INI01", "ini01.lab.test"] {
        let r = check(&mut read, "ini-alice", same).await.unwrap();
        assert_eq!((r.readiness, &r.blocking), (plain.readiness, &plain.blocking), "{same}");
        assert_eq!(r.summary, plain.summary, "{same}: no initiator in the answer");
    }
    // Run on the destination (a pull): a converged peer delegates to the source already.
    let pull = check(&mut read, "ini-alice", "INI02").await.unwrap();
    assert_eq!(pull.readiness, pb::Readiness::Ready as i32, "{}", pull.summary);
    lab.kvno(dst, "ini-alice", &to_source)
        .expect("the KDC agrees: the destination may act towards the source");

    // Run on the gateway, which has no delegation at all.
    let r = check(&mut read, "ini-alice", "INIGW").await.unwrap();
    println!("{}", r.summary);
    assert_eq!(r.readiness, pb::Readiness::NotReady as i32);
    assert_eq!(kinds(&r.blocking), [pb::FindingKind::InitiatorCannotDelegate]);
    let f = &r.blocking[0];
    assert_eq!(f.hosts, [gw.fqdn.clone(), src.fqdn.clone()]);
    let missing = evidence(f, "msDS-AllowedToDelegateTo of INIGW");
    for e in src.entries() {
        assert!(missing.contains(&e), "{e} is not named missing: {missing}");
    }
    assert!(
        evidence(f, "userAccountControl of INIGW").contains("no 0x1000000"),
        "{f:#?}"
    );
    assert_eq!(
        evidence(f, "msDS-AllowedToActOnBehalfOfOtherIdentity"),
        "unset on ini01.lab.test"
    );
    println!("  fix: {}", f.remediation);
    assert!(
        f.remediation
            .contains("Set-ADComputer INIGW -Add @{'msDS-AllowedToDelegateTo'=")
    );
    assert!(
        f.remediation
            .contains("Set-ADAccountControl 'INIGW$' -TrustedToAuthForDelegation $true")
    );
    assert!(
        f.remediation
            .contains("Set-ADComputer INI01 -PrincipalsAllowedToDelegateToAccount 'INIGW$'")
    );
    assert!(!f.automatic, "kcdsync does not write the gateway");
    let refused = lab
        .kvno(gw, "ini-alice", &to_source)
        .expect_err("the KDC agrees: the gateway may not act towards the source");
    println!("KDC: INIGW -> {to_source}: REFUSED ({})", last_line(&refused));

    // kcdctl says the same, in its exit code too.
    std::fs::write(pki.path("read.token"), format!("{READ_TOKEN}\n")).unwrap();
    let kcdctl = |args: &[&str]| {
        tokio::process::Command::new(workspace_bin("kcdctl"))
            .args(["--controller", &format!("https://127.0.0.1:{}", addr.port())])
            .arg("--ca")
            .arg(pki.path("ca.pem"))
            .arg("--token-file")
            .arg(pki.path("read.token"))
            .args(["check", "ini01", "ini02", "--as", "ini-alice"])
            .args(args)
            .output()
    };
    let out = kcdctl(&["--initiator", "INIGW"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("initiator_cannot_delegate")
            && text.contains("msDS-AllowedToDelegateTo of INIGW: missing ")
            && text.contains("Set-ADComputer INIGW"),
        "{text}"
    );

    // Half the remediation: the entries, still "Kerberos only" (asked by FQDN).
    lab.set_delegation(&gw.dn, &src.entries()).await.unwrap();
    let r = check(&mut read, "ini-alice", &gw.fqdn).await.unwrap();
    assert_eq!(kinds(&r.blocking), [pb::FindingKind::InitiatorCannotDelegate]);
    assert_eq!(evidence(&r.blocking[0], "msDS-AllowedToDelegateTo of INIGW"), "");
    assert!(evidence(&r.blocking[0], "userAccountControl of INIGW").contains("no 0x1000000"));
    let refused = lab
        .kvno(gw, "ini-alice", &to_source)
        .expect_err("the KDC agrees: entries without protocol transition do not do");
    println!(
        "KDC: INIGW (Kerberos only) -> {to_source}: REFUSED ({})",
        last_line(&refused)
    );

    // The rest: protocol transition. Ready, and the KDC grants it.
    lab.set_uac(&gw.dn, WORKSTATION | T2A4D).await.unwrap();
    let r = until(&read, "INIGW", pb::Readiness::Ready).await;
    println!("{}", r.summary);
    assert!(
        r.summary.ends_with(": ready") && r.summary.contains("from inigw.lab.test"),
        "{}",
        r.summary
    );
    lab.kvno(gw, "ini-alice", &to_source)
        .expect("the KDC agrees: the gateway may act towards the source now");
    println!("KDC: INIGW -> {to_source}: GRANTED");
    // Asked by FQDN too, once the read of the "Kerberos only" gateway above has aged out.
    until(&read, &gw.fqdn, pb::Readiness::Ready).await;
    let out = kcdctl(&["--initiator", "inigw.lab.test"]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // Who is delegated still counts from the gateway, as from the source.
    let r = check(&mut read, "ini-sensitive", "INIGW").await.unwrap();
    assert_eq!(kinds(&r.blocking), [pb::FindingKind::AccountSensitive]);
    lab.kvno(gw, "ini-sensitive", &to_source)
        .expect_err("the KDC agrees: a sensitive account is not delegated");

    // No such computer: not ready, saying so.
    let r = check(&mut read, "ini-alice", "INIGHOST").await.unwrap();
    assert_eq!(kinds(&r.blocking), [pb::FindingKind::HostMissingFromAd]);
    assert_eq!(r.blocking[0].summary, "initiator: no computer `INIGHOST` in AD");

    // Hostile names never reach AD.
    let long = "a".repeat(300);
    for bad in ["gw)(cn=*", "*", "INIGW$", "gw 01", long.as_str(), "ini\u{e9}gw"] {
        let e = check(&mut read, "ini-alice", bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(e.message().starts_with("initiator: "), "{}", e.message());
    }
    running.stop().await;
}
