//! What Samba 4.17's KDC cannot prove and Samba 4.22's can: resource-based constrained
//! delegation (`msDS-AllowedToActOnBehalfOfOtherIdentity`). On the 4.22 lab
//! (deploy/lab/samba422.sh: Debian bookworm-backports' Samba in an isolated root, its own
//! network namespace), a real `serve` reads RBCD descriptors into its exposure model and into
//! CheckMigration's initiator answer, and every verdict is asked of the KDC with S4U2Self +
//! S4U2Proxy from the source's own credentials.
//!
//! Where 4.22's KDC still differs from Windows' (deploy/lab/README.md, "What 4.22's KDC
//! enforces"), kcdsync answers as Windows does and the test prints the lab KDC's answer beside
//! it instead of asserting it: RBCD from a source without protocol transition (Windows grants,
//! 4.22 refuses: "Missing forwardable flag"), and a member of Protected Users (Windows refuses,
//! 4.22 grants).

use std::time::Duration;

use kcdsync_controller::runtime;
use kcdsync_proto::v1 as pb;
use kcdsync_tests::agents::*;
use kcdsync_tests::rbcd::{object_sid, write_rbcd};
use kcdsync_tests::*;
use ldap3::Mod;

/// The exposure's answer to "can `source` act as `user` towards `cifs/target`", and why: an
/// edge to the target (by FQDN) from the source (by FQDN, or by SID for a principal outside the
/// scope), and the user not sensitive.
fn exposure_says(all: &[pb::DelegationEdge], source: &[&str], target: &str, sensitive: bool) -> Option<String> {
    let e = all
        .iter()
        .find(|e| source.contains(&e.source.as_str()) && e.target == target)?;
    let how = format!(
        "{:?} {:?}",
        pb::EdgeClass::try_from(e.class).unwrap(),
        pb::EdgeVia::try_from(e.via).unwrap()
    );
    (!sensitive).then_some(how)
}

#[tokio::test]
async fn rbcd_edges_in_the_exposure_are_the_ones_the_samba_4_22_kdc_grants() {
    let lab = Lab::samba422();
    println!("lab KDC: Samba {}", lab.var("LAB_SAMBA_VERSION"));
    let fleet = FleetSpec::new("t-rbcd", &["RB01", "RB02", "RB03"])
        .uac(WORKSTATION | T2A4D)
        .user("rb-alice", 0)
        .user("rb-bob", 0x100000)
        .create(lab)
        .await
        .unwrap();
    // A computer of another OU, outside the controller's scope; protocol transition, so that
    // 4.22's KDC judges the RBCD grant itself (see the module's comment).
    let outside = FleetSpec::new("t-rbcd-out", &["RBX01"])
        .uac(WORKSTATION | T2A4D)
        .create(lab)
        .await
        .unwrap();
    let (rb01, rb02, rb03, rbx) = (
        fleet.host("RB01"),
        fleet.host("RB02"),
        fleet.host("RB03"),
        outside.host("RBX01"),
    );
    let (rb03_sid, rbx_sid) = (object_sid(lab, &rb03.dn).await, object_sid(lab, &rbx.dn).await);
    // RB02 lets RB03 (in the scope, in no group: stale) and RBX01 (outside) act towards it.
    write_rbcd(lab, &rb02.dn, &[&rb03_sid, &rbx_sid]);

    let pki = Pki::new();
    let running = runtime::start(controller_config(lab, &fleet, &pki, "enforce", &["RB01", "RB02"]))
        .await
        .unwrap();
    running.reconciled(1).await;
    let mut read = fleet_client(&pki, running.api_addr.unwrap(), Some(READ_TOKEN), None).await;
    let mut write = fleet_client(&pki, running.api_addr.unwrap(), Some(WRITE_TOKEN), None).await;
    let all = exposure_edges(&mut read).await;
    let rbcd = |source: &str, class: pb::EdgeClass| {
        all.iter()
            .find(|e| e.source == source && e.target == rb02.fqdn && e.class == class as i32)
            .unwrap_or_else(|| panic!("{class:?} RBCD edge {source} -> RB02 in {all:#?}"))
    };
    assert_eq!(rbcd(&rb03.fqdn, pb::EdgeClass::Excess).via, pb::EdgeVia::Rbcd as i32);
    assert_eq!(rbcd(&rbx_sid, pb::EdgeClass::Dangerous).via, pb::EdgeVia::Rbcd as i32);

    // Every source, target and account: the exposure and the KDC must agree.
    let sources = [
        (rb01, vec![rb01.fqdn.as_str()]),
        (rb03, vec![rb03.fqdn.as_str()]),
        (rbx, vec![rbx_sid.as_str(), rbx.fqdn.as_str()]),
    ];
    let table = |all: &[pb::DelegationEdge]| {
        let mut rows = Vec::new();
        let mut disagreements = Vec::new();
        for (src, names) in &sources {
            for dst in fleet.hosts.iter().filter(|d| d.netbios != src.netbios) {
                for (user, sensitive) in [("rb-alice", false), ("rb-bob", true)] {
                    let ours = exposure_says(all, names, &dst.fqdn, sensitive);
                    let kdc = lab.kvno(src, user, &format!("cifs/{}", dst.fqdn));
                    rows.push(format!(
                        "  {:<5} -> cifs/{:<14} as {:<8}  exposure: {:<24} KDC: {}",
                        src.netbios,
                        dst.fqdn,
                        user,
                        ours.as_deref().unwrap_or("no live edge"),
                        kdc.as_ref()
                            .map_or_else(|e| format!("refused ({})", last_line(e)), |()| "granted".into())
                    ));
                    if ours.is_some() != kdc.is_ok() {
                        disagreements.push(rows.last().unwrap().clone());
                    }
                }
            }
        }
        (rows, disagreements)
    };
    let (rows, disagreements) = table(&all);
    println!("exposure vs the KDC ({} cases):\n{}", rows.len(), rows.join("\n"));
    assert!(
        disagreements.is_empty(),
        "the exposure and the KDC disagree:\n{}",
        disagreements.join("\n")
    );
    let granted = rows.iter().filter(|r| r.contains("KDC: granted")).count();
    assert_eq!(
        granted, 3,
        "RB01 -> RB02 (classic), RB03 and RBX01 -> RB02 (RBCD), as rb-alice"
    );

    // The finding's remediation: the outsider removed from RB02's descriptor. The KDC refuses
    // at once; the exposure drops the dangerous edge, keeps the stale one.
    write_rbcd(lab, &rb02.dn, &[&rb03_sid]);
    lab.kvno(rbx, "rb-alice", &format!("cifs/{}", rb02.fqdn))
        .expect_err("RBX01 may no longer act towards RB02");
    write
        .trigger_reconcile(pb::TriggerReconcileRequest::default())
        .await
        .unwrap();
    let all = exposure_until(
        &read,
        Duration::from_secs(20),
        "the dangerous RBCD edge is gone",
        |all| all.iter().all(|e| e.class != pb::EdgeClass::Dangerous as i32),
    )
    .await;
    let (_, disagreements) = table(&all);
    assert!(
        disagreements.is_empty(),
        "after the remediation:\n{}",
        disagreements.join("\n")
    );
    // And the rest: no descriptor at all.
    write_rbcd(lab, &rb02.dn, &[]);
    write
        .trigger_reconcile(pb::TriggerReconcileRequest::default())
        .await
        .unwrap();
    exposure_until(&read, Duration::from_secs(20), "no RBCD edge is left", |all| {
        all.iter().all(|e| e.via != pb::EdgeVia::Rbcd as i32)
    })
    .await;
    let refused = lab
        .kvno(rb03, "rb-alice", &format!("cifs/{}", rb02.fqdn))
        .expect_err("without the descriptor RB03 may not act towards RB02");
    println!(
        "KDC: RB03 -> cifs/{} without RBCD: refused ({})",
        rb02.fqdn,
        last_line(&refused)
    );
    running.stop().await;
}

fn request(account: &str, initiator: &str) -> pb::CheckMigrationRequest {
    pb::CheckMigrationRequest {
        source: "rbi01.lab.test".into(),
        destination: "RBI02".into(),
        account: account.into(),
        initiator: initiator.into(),
    }
}

async fn check(c: &mut FleetClient, account: &str, initiator: &str) -> pb::CheckMigrationResponse {
    c.check_migration(request(account, initiator))
        .await
        .unwrap()
        .into_inner()
}

async fn until(c: &FleetClient, account: &str, initiator: &str, want: pb::Readiness) -> pb::CheckMigrationResponse {
    check_until(c, request(account, initiator), Duration::from_secs(30), want).await
}

#[tokio::test]
async fn a_gateway_granted_by_rbcd_on_the_source_is_ready_when_the_samba_4_22_kdc_grants_it() {
    let lab = Lab::samba422();
    println!("lab KDC: Samba {}", lab.var("LAB_SAMBA_VERSION"));
    let names = ["RBI01", "RBI02"];
    let fleet = FleetSpec::new("t-rbcd-ini", &names)
        .uac(WORKSTATION | T2A4D)
        .user("rbi-alice", 0)
        .user("rbi-dave", 0)
        .create(lab)
        .await
        .unwrap();
    // Two gateways outside the scope, no classic delegation: RBIGW with protocol transition,
    // RBIGW2 without.
    let gws = FleetSpec::new("t-rbcd-gw", &["RBIGW"])
        .uac(WORKSTATION | T2A4D)
        .create(lab)
        .await
        .unwrap();
    let gws2 = FleetSpec::new("t-rbcd-gw2", &["RBIGW2"]).create(lab).await.unwrap();
    let (src, gw, gw2) = (fleet.host("RBI01"), gws.host("RBIGW"), gws2.host("RBIGW2"));
    let to_source = format!("cifs/{}", src.fqdn);

    let pki = Pki::new();
    let running = runtime::start(controller_config(lab, &fleet, &pki, "enforce", &names))
        .await
        .unwrap();
    running.reconciled(1).await;
    let read = fleet_client(&pki, running.api_addr.unwrap(), Some(READ_TOKEN), None).await;
    let mut write = fleet_client(&pki, running.api_addr.unwrap(), Some(WRITE_TOKEN), None).await;
    lab.kvno(src, "rbi-alice", &format!("cifs/{}", fleet.host("RBI02").fqdn))
        .expect("the controller converged the pair");

    // No RBCD yet: the gateway cannot, and the KDC agrees.
    let r = check(&mut read.clone(), "rbi-alice", "RBIGW").await;
    assert_eq!(r.readiness, pb::Readiness::NotReady as i32, "{}", r.summary);
    let f = &r.blocking[0];
    assert_eq!(f.kind, pb::FindingKind::InitiatorCannotDelegate as i32, "{f:#?}");
    assert!(
        f.remediation
            .contains("Set-ADComputer RBI01 -PrincipalsAllowedToDelegateToAccount 'RBIGW$'"),
        "{}",
        f.remediation
    );
    let refused = lab
        .kvno(gw, "rbi-alice", &to_source)
        .expect_err("no delegation, no grant");
    println!("KDC: RBIGW -> {to_source}, no RBCD: refused ({})", last_line(&refused));

    // That remediation (what Set-ADComputer -PrincipalsAllowedToDelegateToAccount writes).
    let (gw_sid, gw2_sid) = (object_sid(lab, &gw.dn).await, object_sid(lab, &gw2.dn).await);
    write_rbcd(lab, &src.dn, &[&gw_sid, &gw2_sid]);
    // The tests' serve runs without the change-notification watch (`controller_config`), so a
    // reconcile is asked for. (Samba 4.22 does notify a write made on its database, like this
    // one, 4-5 s later, against ~15 ms for an LDAP write: deploy/lab/README.md.)
    write
        .trigger_reconcile(pb::TriggerReconcileRequest::default())
        .await
        .unwrap();
    let r = until(&read, "rbi-alice", "RBIGW", pb::Readiness::Ready).await;
    println!("{}", r.summary);
    lab.kvno(gw, "rbi-alice", &to_source)
        .expect("the KDC agrees: RBCD on the source lets the gateway act towards it");
    println!("KDC: RBIGW -> {to_source} over RBCD: granted");

    // Known lab divergence 1: a gateway without protocol transition. Windows grants S4U2Proxy
    // over RBCD with the non-forwardable S4U2Self ticket; 4.22's Heimdal checks forwardable
    // first. kcdsync answers as Windows does.
    let r = until(&read, "rbi-alice", "RBIGW2", pb::Readiness::Ready).await;
    let lab_kdc = lab.kvno(gw2, "rbi-alice", &to_source);
    println!(
        "RBIGW2 (no 0x1000000) over RBCD: kcdsync ready ({}); lab KDC {} (Windows grants)",
        r.summary,
        lab_kdc.map_or_else(|e| format!("refused: {}", last_line(&e)), |()| "granted".into())
    );

    // Known lab divergence 2: Protected Users. kcdsync says not ready, as Windows does; 4.22's
    // KDC still issues a forwardable S4U2Self ticket for a member.
    let mut admin = lab.admin().await.unwrap();
    let dave = fleet.users.iter().find(|u| u.name == "rbi-dave").unwrap().dn.clone();
    admin
        .modify(
            &format!("CN=Protected Users,CN=Users,{}", lab.var("LAB_BASE_DN")),
            vec![Mod::Add("member", [dave.as_str()].into())],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    // Membership of Protected Users is read with the directory, at a reconcile.
    write
        .trigger_reconcile(pb::TriggerReconcileRequest::default())
        .await
        .unwrap();
    let r = until(&read, "rbi-dave", "RBIGW", pb::Readiness::NotReady).await;
    assert!(
        r.blocking
            .iter()
            .any(|f| f.kind == pb::FindingKind::AccountProtectedUsers as i32),
        "{:#?}",
        r.blocking
    );
    let lab_kdc = lab.kvno(gw, "rbi-dave", &to_source);
    println!(
        "rbi-dave (Protected Users): kcdsync not ready; lab KDC {} (Windows refuses)",
        lab_kdc.map_or_else(|e| format!("refused: {}", last_line(&e)), |()| "granted".into())
    );
    admin
        .modify(
            &format!("CN=Protected Users,CN=Users,{}", lab.var("LAB_BASE_DN")),
            vec![Mod::Delete("member", [dave.as_str()].into())],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let _ = admin.unbind().await;

    // The grant withdrawn: not ready again, and the KDC refuses at once.
    write_rbcd(lab, &src.dn, &[]);
    write
        .trigger_reconcile(pb::TriggerReconcileRequest::default())
        .await
        .unwrap();
    let r = until(&read, "rbi-alice", "RBIGW", pb::Readiness::NotReady).await;
    assert_eq!(r.blocking[0].kind, pb::FindingKind::InitiatorCannotDelegate as i32);
    lab.kvno(gw, "rbi-alice", &to_source)
        .expect_err("the KDC agrees: without RBCD the gateway may not act towards the source");
    running.stop().await;
}
