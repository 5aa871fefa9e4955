//! Directory content is input, not truth: on the real lab DC, an OU admin
//! who edits a member's computer object cannot steer kcdsync into writing
//! delegation to anything but verified peers. Each test builds its own
//! fleet in its own OU; the KDC judges what a source can still reach.

use std::collections::HashSet;

use kcdsync_controller::config::Config;
use kcdsync_controller::ldap::Ad;
use kcdsync_controller::model::{Finding, FindingKind};
use kcdsync_controller::reconcile::{self, Approval, Outcome, RunOptions};
use kcdsync_controller::store::Store;
use kcdsync_tests::*;
use ldap3::Mod;

fn opts() -> RunOptions {
    RunOptions {
        trigger: "test".into(),
        ..Default::default()
    }
}

async fn open(text: &str) -> (Config, Ad, Store, tempfile::TempDir) {
    let (dir, path) = write_config(text);
    let cfg = Config::load(&path).expect("valid config");
    let ad = Ad::connect(&cfg.ad).await.expect("bind to the lab DC");
    let store = Store::open(&cfg.store_url).await.expect("open store");
    (cfg, ad, store, dir)
}

/// Runs a reconcile, then approves whatever it held and runs again: what
/// kcdsync writes "with or without approval".
async fn reconcile_and_approve_everything(cfg: &Config, ad: &Ad, store: &Store) -> (Outcome, Option<Outcome>) {
    let first = reconcile::reconcile(cfg, ad, store, opts()).await.expect("reconcile");
    let approved = match first.pending_plan {
        Some(plan_id) => Some(
            reconcile::reconcile(
                cfg,
                ad,
                store,
                RunOptions {
                    approve: Some(Approval {
                        plan_id,
                        by: "test".into(),
                    }),
                    ..opts()
                },
            )
            .await
            .expect("approved reconcile"),
        ),
        None => None,
    };
    (first, approved)
}

/// What an OU admin with write access to the object can do: replace some
/// attributes and delete others, as Administrator here.
async fn edit(lab: &Lab, dn: &str, replace: &[(&str, &str)], delete: &[&str]) {
    let mut ldap = lab.admin().await.unwrap();
    let mut mods: Vec<Mod<&str>> = replace
        .iter()
        .map(|(a, v)| Mod::Replace(*a, HashSet::from([*v])))
        .collect();
    mods.extend(delete.iter().map(|a| Mod::Replace(*a, HashSet::new())));
    ldap.modify(dn, mods).await.unwrap().success().unwrap();
    let _ = ldap.unbind().await;
}

async fn findings(cfg: &Config, ad: &Ad) -> Vec<Finding> {
    let observed = reconcile::observe(cfg, ad).await.unwrap();
    reconcile::decide(cfg, &observed).plan.findings
}

/// No entry of any host in the fleet names `name`.
async fn nobody_delegates_to(lab: &Lab, fleet: &Fleet, name: &str) {
    for h in &fleet.hosts {
        let state = lab.read_host(&h.dn).await.unwrap();
        assert!(
            state.delegate.iter().all(|e| !e.to_lowercase().contains(name)),
            "{} delegates to {name}: {:?}",
            h.netbios,
            state.delegate
        );
    }
}

/// The scenario: members listed by NetBIOS name; someone clears
/// AC02's SPNs and points its dNSHostName at the domain controller.
#[tokio::test]
async fn a_dns_host_name_hijack_towards_the_dc_is_never_written() {
    let lab = Lab::start();
    let names = ["TRH01", "TRH02", "TRH03"];
    let fleet = FleetSpec::new("t-hijack", &names)
        .user("trh-alice", 0)
        .create(lab)
        .await
        .unwrap();
    let dc = lab.var("LAB_DC_HOST").to_owned();
    edit(
        lab,
        &fleet.host("TRH02").dn,
        &[("dNSHostName", &dc)],
        &["servicePrincipalName"],
    )
    .await;

    let (cfg, ad, store, _dir) = open(&fleet.guarded_config(lab, &names, "")).await;
    let f = findings(&cfg, &ad).await;
    let hijack = f
        .iter()
        .find(|f| f.kind == FindingKind::HostIdentityConflict)
        .unwrap_or_else(|| panic!("no identity finding: {f:#?}"));
    println!("finding: {}\n  evidence: {:?}", hijack.summary, hijack.evidence);
    assert!(
        hijack.summary.contains("TRH02") && hijack.summary.contains(&dc),
        "{}",
        hijack.summary
    );
    assert!(hijack.evidence.contains(&("attribute".into(), "dNSHostName".into())));

    reconcile_and_approve_everything(&cfg, &ad, &store).await;
    nobody_delegates_to(lab, &fleet, "dc1").await;
    nobody_delegates_to(lab, &fleet, "trh02").await;
    let trh02 = lab.read_host(&fleet.host("TRH02").dn).await.unwrap();
    assert_eq!(trh02.uac, WORKSTATION, "the hijacked object itself is never written");

    // The KDC agrees: TRH01 (which did get its peer TRH03) cannot reach the DC.
    let trh01 = fleet.host("TRH01");
    lab.kvno(trh01, "trh-alice", &format!("cifs/{}", fleet.host("TRH03").fqdn))
        .expect("TRH01 -> TRH03 is granted");
    let refused = lab
        .kvno(trh01, "trh-alice", &format!("cifs/{dc}"))
        .expect_err("TRH01 must not be able to delegate to the DC");
    println!(
        "KDC, TRH01 -> cifs/{dc}: REFUSED ({})",
        refused.lines().last().unwrap_or_default()
    );
}

/// The same hijack, with the members coming from an AD group that also
/// holds the domain controller itself: a finding for that group, not a halt.
#[tokio::test]
async fn a_hijack_through_an_ad_group_source_is_never_written() {
    let lab = Lab::start();
    let names = ["TRG01", "TRG02", "TRG03"];
    let fleet = FleetSpec::new("t-hijack-group", &names).create(lab).await.unwrap();
    let group_dn = format!("CN=trg-hosts,{}", fleet.ou_dn);
    let dc = lab.var("LAB_DC_HOST").to_owned();
    let dc_dn = format!(
        "CN={},OU=Domain Controllers,{}",
        dc.split('.').next().unwrap().to_uppercase(),
        lab.var("LAB_BASE_DN")
    );
    let mut ldap = lab.admin().await.unwrap();
    let mut members: HashSet<&str> = fleet.hosts.iter().map(|h| h.dn.as_str()).collect();
    members.insert(&dc_dn);
    ldap.add(
        &group_dn,
        vec![
            ("objectClass", HashSet::from(["group"])),
            ("sAMAccountName", HashSet::from(["trg-hosts"])),
            ("member", members),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    let _ = ldap.unbind().await;
    edit(
        lab,
        &fleet.host("TRG02").dn,
        &[("dNSHostName", &dc)],
        &["servicePrincipalName"],
    )
    .await;

    let (cfg, ad, store, _dir) = open(&fleet.guarded_config(lab, &[], &format!("ad_group = \"{group_dn}\"\n"))).await;
    let f = findings(&cfg, &ad).await;
    assert!(
        f.iter()
            .any(|f| f.kind == FindingKind::HostIdentityConflict && f.summary.contains("TRG02")),
        "{f:#?}"
    );
    let dc_finding = f
        .iter()
        .find(|f| f.summary.contains(&dc_dn))
        .unwrap_or_else(|| panic!("no finding names the DC in the group: {f:#?}"));
    println!("finding: {}", dc_finding.summary);
    reconcile_and_approve_everything(&cfg, &ad, &store).await;
    nobody_delegates_to(lab, &fleet, "dc1").await;
    let trg01 = lab.read_host(&fleet.host("TRG01").dn).await.unwrap();
    assert!(
        trg01
            .delegate
            .iter()
            .any(|e| e.eq_ignore_ascii_case("cifs/trg03.lab.test")),
        "the rest of the group still converges: {:?}",
        trg01.delegate
    );
}

/// TRC03's dNSHostName is set to TRC01's (its SPNs cleared in the same
/// modify: Samba, like AD, refuses a dNSHostName whose derived SPNs another
/// object holds): the impostor gets nothing, and nobody gets an entry for
/// it; TRC01 keeps its name.
#[tokio::test]
async fn a_dns_host_name_copied_from_another_member_gives_the_impostor_nothing() {
    let lab = Lab::start();
    let names = ["TRC01", "TRC02", "TRC03"];
    let fleet = FleetSpec::new("t-copy", &names).create(lab).await.unwrap();
    let trc01 = fleet.host("TRC01").fqdn.clone();
    edit(
        lab,
        &fleet.host("TRC03").dn,
        &[("dNSHostName", &trc01)],
        &["servicePrincipalName"],
    )
    .await;

    let (cfg, ad, store, _dir) = open(&fleet.guarded_config(lab, &names, "")).await;
    let f = findings(&cfg, &ad).await;
    let imp = f
        .iter()
        .find(|f| f.kind == FindingKind::HostIdentityConflict)
        .unwrap_or_else(|| panic!("{f:#?}"));
    println!("finding: {}\n  evidence: {:?}", imp.summary, imp.evidence);
    assert!(imp.summary.contains("TRC03"), "{}", imp.summary);
    reconcile_and_approve_everything(&cfg, &ad, &store).await;
    let t3 = lab.read_host(&fleet.host("TRC03").dn).await.unwrap();
    assert!(
        t3.delegate.is_empty() && t3.uac == WORKSTATION,
        "the impostor is never written: {t3:?}"
    );
    nobody_delegates_to(lab, &fleet, "trc03").await;
    let t2 = lab.read_host(&fleet.host("TRC02").dn).await.unwrap();
    assert!(
        t2.delegate
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&format!("cifs/{trc01}"))),
        "TRC01 keeps its name: {:?}",
        t2.delegate
    );
}

/// A computer object created in advance for a configured name is a first
/// grant: held for approval, while the converged members go on.
#[tokio::test]
async fn a_pre_created_computer_for_a_configured_name_waits_for_approval() {
    let lab = Lab::start();
    let names = ["TRP01", "TRP02", "TRP03"];
    let fleet = FleetSpec::new("t-precreated", &names).create(lab).await.unwrap();
    // TRP01 and TRP02 are converged with each other; TRP03 is new.
    for (h, peer) in [("TRP01", "TRP02"), ("TRP02", "TRP01")] {
        lab.set_delegation(&fleet.host(h).dn, &fleet.host(peer).entries())
            .await
            .unwrap();
        lab.set_uac(&fleet.host(h).dn, WORKSTATION | T2A4D).await.unwrap();
    }
    let (cfg, ad, store, _dir) = open(&fleet.guarded_config(lab, &names, "")).await;
    let out = reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap();
    let pending = out.pending_plan.expect("TRP03 is held");
    assert!(
        out.gate_reasons.iter().any(|r| r.contains("first delegation entries")),
        "{:?}",
        out.gate_reasons
    );
    let trp03 = lab.read_host(&fleet.host("TRP03").dn).await.unwrap();
    assert_eq!(
        (trp03.uac, trp03.delegate.len()),
        (WORKSTATION, 0),
        "nothing before approval"
    );
    let plan = store.get_plan(pending).await.unwrap().unwrap();
    assert_eq!(
        plan.changes.iter().map(|c| c.host.as_str()).collect::<Vec<_>>(),
        [fleet.host("TRP03").fqdn.as_str()]
    );

    reconcile::reconcile(
        &cfg,
        &ad,
        &store,
        RunOptions {
            approve: Some(Approval {
                plan_id: pending,
                by: "test".into(),
            }),
            ..opts()
        },
    )
    .await
    .unwrap();
    let trp03 = lab.read_host(&fleet.host("TRP03").dn).await.unwrap();
    assert_eq!(trp03.uac, WORKSTATION | T2A4D, "granted once approved");
}

/// An object flagged as a read-only DC (PARTIAL_SECRETS_ACCOUNT) in a
/// group: a finding, never written, never delegated to.
#[tokio::test]
async fn an_rodc_flagged_member_is_a_finding_and_never_written() {
    let lab = Lab::start();
    let names = ["TRR01", "TRR02", "TRR03"];
    let fleet = FleetSpec::new("t-rodc", &names).create(lab).await.unwrap();
    const PARTIAL_SECRETS_ACCOUNT: u32 = 0x4000000;
    let rodc = fleet.host("TRR02");
    if let Err(e) = lab.set_uac(&rodc.dn, WORKSTATION | PARTIAL_SECRETS_ACCOUNT).await {
        panic!("the lab DC refused to flag {} as an RODC: {e}", rodc.dn);
    }
    let (cfg, ad, store, _dir) = open(&fleet.guarded_config(lab, &names, "")).await;
    let f = findings(&cfg, &ad).await;
    let finding = f
        .iter()
        .find(|f| f.kind == FindingKind::NotADelegationTarget)
        .unwrap_or_else(|| panic!("{f:#?}"));
    println!("finding: {}", finding.summary);
    assert!(finding.summary.contains("TRR02") && finding.summary.contains("read-only"));
    reconcile_and_approve_everything(&cfg, &ad, &store).await;
    let after = lab.read_host(&rodc.dn).await.unwrap();
    assert_eq!(after.uac, WORKSTATION | PARTIAL_SECRETS_ACCOUNT);
    assert!(after.delegate.is_empty());
    nobody_delegates_to(lab, &fleet, "trr02").await;
}
