//! CheckMigration against the KDC: for every ordered pair of a 4-host group
//! and a normal, a sensitive and a disabled account, kcdsync's readiness
//! verdict must match what the KDC does with S4U2Self + S4U2Proxy.

use kcdsync_controller::config::Config;
use kcdsync_controller::diagnose::{self, Readiness};
use kcdsync_controller::ldap::Ad;
use kcdsync_controller::store::{Store, now_ms};
use kcdsync_controller::view::Snapshot;
use kcdsync_tests::*;

#[tokio::test]
async fn check_migration_agrees_with_the_kdc_for_every_pair_and_account() {
    let lab = Lab::start();
    let names = ["RDY01", "RDY02", "RDY03", "RDY04"];
    let fleet = FleetSpec::new("t-rdy", &names)
        .kerberos_only_mesh()
        .uac(WORKSTATION | T2A4D)
        .user("rdy-normal", 0)
        .user("rdy-sensitive", 0x100000)
        .user("rdy-disabled", 0x2)
        .create(lab)
        .await
        .unwrap();
    // RDY02: entries to every peer, but "Kerberos only".
    lab.set_uac(&fleet.host("RDY02").dn, WORKSTATION).await.unwrap();
    // RDY03: protocol transition, but entries to RDY01 only.
    lab.set_delegation(&fleet.host("RDY03").dn, &fleet.host("RDY01").entries())
        .await
        .unwrap();

    let (_dir, path) = write_config(&fleet.config(lab, BindAs::Svc, "observe", &names, ""));
    let cfg = Config::load(&path).unwrap();
    let ad = Ad::connect(&cfg.ad).await.unwrap();
    let store = Store::open(&cfg.store_url).await.unwrap();
    let snap = Snapshot::gather(&cfg, &ad, &store, None).await.unwrap();
    let facts = snap.facts(&cfg, now_ms());

    let mut rows = Vec::new();
    let mut disagreements = Vec::new();
    for user in ["rdy-normal", "rdy-sensitive", "rdy-disabled"] {
        let account = snap.account(&cfg, &ad, user).await.unwrap().expect("account in AD");
        for src in &fleet.hosts {
            for dst in fleet.hosts.iter().filter(|d| d.netbios != src.netbios) {
                let ours = diagnose::check_migration(&facts, &src.fqdn, &dst.fqdn, &account);
                let kdc = lab.kvno(src, user, &format!("cifs/{}", dst.fqdn));
                let why = ours
                    .blocking
                    .iter()
                    .map(|f| format!("{:?}", f.kind))
                    .collect::<Vec<_>>()
                    .join(",");
                rows.push(format!(
                    "  {:<6} -> {:<6} as {:<13}  kcdsync: {:<9} KDC: {:<8} {}",
                    src.netbios,
                    dst.netbios,
                    user,
                    if ours.readiness == Readiness::Ready {
                        "ready"
                    } else {
                        "not ready"
                    },
                    if kdc.is_ok() { "granted" } else { "refused" },
                    why
                ));
                if (ours.readiness == Readiness::Ready) != kdc.is_ok() {
                    disagreements.push(format!(
                        "{} -> {} as {user}: kcdsync {:?}, KDC {:?}",
                        src.netbios, dst.netbios, ours.readiness, kdc
                    ));
                }
            }
        }
    }
    println!("CheckMigration vs the KDC ({} cases):\n{}", rows.len(), rows.join("\n"));
    assert_eq!(rows.len(), 36);
    assert!(
        disagreements.is_empty(),
        "kcdsync and the KDC disagree:\n{}",
        disagreements.join("\n")
    );
    let ready = rows.iter().filter(|r| r.contains("kcdsync: ready")).count();
    assert!(
        ready > 0 && ready < 36,
        "the fleet must have both ready and not-ready pairs"
    );

    // Who is delegated: the lab's Administrator is privileged and not sensitive.
    let admin = snap
        .directory
        .privileged
        .iter()
        .find(|p| p.account.name == "Administrator")
        .expect("Administrator is privileged");
    assert!(admin.via.iter().any(|g| g == "Domain Admins"), "{:?}", admin.via);
    assert!(
        diagnose::fleet_findings(&facts)
            .iter()
            .any(|f| f.kind == diagnose::FindingKind::PrivilegedAccountDelegatable && f.account == "Administrator")
    );
    assert!(
        snap.directory.krbtgt_uac.is_some_and(|u| u & 0x2 != 0),
        "krbtgt is read (and disabled, as always)"
    );
    assert!(
        snap.directory
            .protected_users_dn
            .as_deref()
            .is_some_and(|d| d.starts_with("CN=Protected Users"))
    );

    // An unknown or hostile account name is not found, not an LDAP error.
    assert!(
        snap.account(&cfg, &ad, "nobody)(objectClass=*")
            .await
            .unwrap()
            .is_none()
    );
    assert!(snap.account(&cfg, &ad, "*").await.unwrap().is_none());
}
