//! The controller against a real Samba AD DC and its KDC. Each test builds
//! its own fleet in its own OU; the KDC is the judge of "migration works".

use std::process::Command;

use kcdsync_controller::config::Config;
use kcdsync_controller::ldap::{Ad, LdapError};
use kcdsync_controller::reconcile::{self, Approval, ReconcileError, RunOptions};
use kcdsync_controller::store::Store;
use kcdsync_tests::*;

fn opts() -> RunOptions {
    RunOptions {
        trigger: "test".into(),
        ..Default::default()
    }
}

/// Run options approving `plan_id` as `by`.
fn approving(plan_id: i64, by: &str) -> RunOptions {
    RunOptions {
        approve: Some(Approval { plan_id, by: by.into() }),
        ..opts()
    }
}

async fn open(path: &std::path::Path) -> (Config, Ad, Store) {
    let cfg = Config::load(path).expect("valid config");
    let ad = Ad::connect(&cfg.ad).await.expect("bind to the lab DC");
    let store = Store::open(&cfg.store_url).await.expect("open store");
    (cfg, ad, store)
}

/// The KDC's verdict for every ordered pair, as a printed table.
fn kdc_matrix(lab: &Lab, fleet: &Fleet, user: &str) -> Vec<(String, String, Result<(), String>)> {
    let mut out = Vec::new();
    for src in &fleet.hosts {
        for dst in fleet.hosts.iter().filter(|d| d.netbios != src.netbios) {
            for spn in [format!("cifs/{}", dst.fqdn), format!("cifs/{}", dst.netbios)] {
                let verdict = lab.kvno(src, user, &spn);
                println!(
                    "  {:<8} -> {:<28} as {user}: {}",
                    src.netbios,
                    spn,
                    match &verdict {
                        Ok(()) => "GRANTED".to_owned(),
                        Err(e) => format!("REFUSED ({})", e.lines().last().unwrap_or_default()),
                    }
                );
                out.push((src.netbios.clone(), spn, verdict));
            }
        }
    }
    out
}

#[tokio::test]
async fn migration_fails_with_kerberos_only_then_succeeds_after_reconcile() {
    let lab = Lab::start();
    let names = ["KDC01", "KDC02", "KDC03", "KDC04"];
    let fleet = FleetSpec::new("t-kdc", &names)
        .kerberos_only_mesh()
        .user("kdc-alice", 0)
        .create(lab)
        .await
        .unwrap();

    println!("KDC verdicts before reconcile (entries present, Kerberos only):");
    for (src, spn, v) in kdc_matrix(lab, &fleet, "kdc-alice") {
        let e = v.expect_err(&format!("{src} -> {spn} must be refused while Kerberos only"));
        assert!(
            e.contains("KDC can't fulfill requested option") || e.contains("constrained delegation"),
            "{e}"
        );
    }

    let (_dir, path) = write_config(&fleet.config(lab, BindAs::Svc, "enforce", &names, ""));
    let (cfg, ad, store) = open(&path).await;
    let outcome = reconcile::reconcile(&cfg, &ad, &store, opts())
        .await
        .expect("reconcile");
    assert_eq!(outcome.applied.len(), 4);
    assert!(outcome.pending_plan.is_none());
    for r in &outcome.applied {
        assert_eq!(r.uac_after, WORKSTATION | T2A4D, "{}", r.host);
        assert_eq!(r.uac_before, WORKSTATION);
    }

    println!("KDC verdicts after reconcile:");
    for (src, spn, v) in kdc_matrix(lab, &fleet, "kdc-alice") {
        v.unwrap_or_else(|e| panic!("{src} -> {spn} must be granted after reconcile: {e}"));
    }
}

#[tokio::test]
async fn a_second_reconcile_writes_nothing() {
    let lab = Lab::start();
    let names = ["NOOP01", "NOOP02", "NOOP03"];
    let fleet = FleetSpec::new("t-noop", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let (_dir, path) = write_config(&fleet.config(lab, BindAs::Svc, "enforce", &names, ""));
    let (cfg, ad, store) = open(&path).await;
    let first = reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap();
    assert_eq!(first.applied.len(), 3);

    let audit_before = store.audit_count().await.unwrap();
    let mut usn_before = Vec::new();
    for h in &fleet.hosts {
        usn_before.push(lab.read_host(&h.dn).await.unwrap().usn_changed);
    }
    let second = reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap();
    assert!(second.plan_id.is_none() && second.applied.is_empty() && second.pending_plan.is_none());
    assert_eq!(
        store.audit_count().await.unwrap(),
        audit_before,
        "a no-op reconcile must not touch the audit"
    );
    for (h, before) in fleet.hosts.iter().zip(usn_before) {
        assert_eq!(
            lab.read_host(&h.dn).await.unwrap().usn_changed,
            before,
            "{} was written by a no-op",
            h.dn
        );
    }
}

#[tokio::test]
async fn unmanaged_entries_survive_and_uppercase_entries_are_not_re_added() {
    let lab = Lab::start();
    let names = ["KEEP01", "KEEP02"];
    let mut spec = FleetSpec::new("t-keep", &names)
        .entry("KEEP01", "HTTP/web01.lab.test")
        .entry("KEEP01", "cifs/files.elsewhere.test");
    let upper: Vec<String> = [
        format!("{MIGRATION}/keep02.lab.test"),
        format!("{MIGRATION}/KEEP02"),
        "cifs/keep02.lab.test".into(),
        "cifs/KEEP02".into(),
    ]
    .iter()
    .map(|e| e.to_uppercase())
    .collect();
    for e in &upper {
        spec = spec.entry("KEEP01", e);
    }
    let fleet = spec.create(lab).await.unwrap();
    let (_dir, path) = write_config(&fleet.config(lab, BindAs::Svc, "enforce", &names, ""));
    let (cfg, ad, store) = open(&path).await;
    reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap();

    let keep01 = lab.read_host(&fleet.host("KEEP01").dn).await.unwrap();
    assert_eq!(keep01.uac, WORKSTATION | T2A4D);
    assert!(
        keep01.delegate.contains(&"HTTP/web01.lab.test".to_owned()),
        "{:?}",
        keep01.delegate
    );
    assert!(
        keep01.delegate.contains(&"cifs/files.elsewhere.test".to_owned()),
        "{:?}",
        keep01.delegate
    );
    let to_keep02: Vec<&String> = keep01
        .delegate
        .iter()
        .filter(|e| e.to_lowercase().contains("keep02"))
        .collect();
    assert_eq!(
        to_keep02.len(),
        4,
        "uppercase entries must not get lowercase twins: {to_keep02:?}"
    );
    for e in &upper {
        assert!(keep01.delegate.contains(e), "{e} was rewritten: {:?}", keep01.delegate);
    }
    let keep02 = lab.read_host(&fleet.host("KEEP02").dn).await.unwrap();
    let mut want = fleet.host("KEEP01").entries();
    want.sort();
    let mut got = keep02.delegate.clone();
    got.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_concurrent_uac_change_between_observe_and_apply_is_not_overwritten() {
    let lab = Lab::start();
    let names = ["CAS01", "CAS02"];
    let fleet = FleetSpec::new("t-cas", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let (_dir, path) = write_config(&fleet.config(lab, BindAs::Svc, "enforce", &names, ""));
    let (cfg, ad, store) = open(&path).await;

    let observed = reconcile::observe(&cfg, &ad).await.unwrap();
    let decision = reconcile::decide(&cfg, &observed);
    assert_eq!(decision.guarded.auto.len(), 2);

    // Someone sets DONT_EXPIRE_PASSWORD on CAS01 after we read it.
    const DONT_EXPIRE_PASSWORD: u32 = 0x10000;
    let cas01 = fleet.host("CAS01");
    lab.set_uac(&cas01.dn, WORKSTATION | DONT_EXPIRE_PASSWORD)
        .await
        .unwrap();

    let outcome = reconcile::execute(&cfg, &ad, &store, &observed, &decision, opts())
        .await
        .unwrap();
    assert_eq!(outcome.applied.len(), 2);
    let now = lab.read_host(&cas01.dn).await.unwrap();
    assert_eq!(
        now.uac,
        WORKSTATION | DONT_EXPIRE_PASSWORD | T2A4D,
        "the concurrent change must survive"
    );
    let rec = outcome.applied.iter().find(|r| r.dn == cas01.dn).unwrap();
    assert_eq!(
        rec.uac_before,
        WORKSTATION | DONT_EXPIRE_PASSWORD,
        "the audit shows the value actually replaced"
    );
}

#[tokio::test]
async fn a_bind_account_without_the_delegation_privilege_gets_a_clear_error_and_nothing_is_written() {
    let lab = Lab::start();
    let names = ["PRIV01", "PRIV02"];
    let fleet = FleetSpec::new("t-priv", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let (_dir, path) = write_config(&fleet.config(lab, BindAs::NoPriv, "enforce", &names, ""));
    let (cfg, ad, store) = open(&path).await;
    let mut before = Vec::new();
    for h in &fleet.hosts {
        before.push(lab.read_host(&h.dn).await.unwrap());
    }

    let err = reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap_err();
    assert!(
        matches!(err, ReconcileError::Ldap(LdapError::MissingPrivilege { .. })),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("SeEnableDelegationPrivilege") && msg.contains("User Rights Assignment"),
        "{msg}"
    );

    for (h, b) in fleet.hosts.iter().zip(before) {
        assert_eq!(lab.read_host(&h.dn).await.unwrap(), b, "{} was written", h.dn);
    }
    assert_eq!(store.audit_count().await.unwrap(), 0);
}

#[tokio::test]
async fn starttls_works_and_a_wrong_ca_is_refused() {
    let lab = Lab::start();
    let names = ["TLS01", "TLS02"];
    let fleet = FleetSpec::new("t-tls", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let text = fleet
        .config(lab, BindAs::Svc, "plan", &names, "")
        .replace(lab.var("LAB_LDAPS_URL"), lab.var("LAB_LDAP_URL"))
        .replace("[ad]\n", "[ad]\nstarttls = true\n");
    let (_dir, path) = write_config(&text);
    let (cfg, ad, _store) = open(&path).await;
    let observed = reconcile::observe(&cfg, &ad).await.unwrap();
    assert_eq!(observed.computers.len(), 2);

    // A CA that did not sign the DC's certificate: the bind must not happen.
    let other = tempfile::tempdir().unwrap();
    let ca = other.path().join("other-ca.pem");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=not the lab CA", "-keyout"])
        .arg(other.path().join("k.pem"))
        .arg("-out")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(status.status.success());
    let mut cfg2 = cfg.clone();
    cfg2.ad.ca_file = ca;
    let err = Ad::connect(&cfg2.ad)
        .await
        .err()
        .expect("an unknown CA must be refused");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn a_host_removed_from_a_group_loses_its_entries_only_after_approval() {
    let lab = Lab::start();
    let names = ["RM01", "RM02", "RM03"];
    let fleet = FleetSpec::new("t-rm", &names)
        .kerberos_only_mesh()
        .uac(WORKSTATION | T2A4D)
        .create(lab)
        .await
        .unwrap();
    // RM03 leaves the group.
    let (_dir, path) = write_config(&fleet.config(lab, BindAs::Svc, "enforce", &["RM01", "RM02"], ""));
    let (cfg, ad, store) = open(&path).await;

    let first = reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap();
    assert!(first.applied.is_empty(), "removals must wait for approval");
    let plan_id = first.pending_plan.expect("a pending plan");
    assert!(
        first
            .gate_reasons
            .iter()
            .any(|r| r.contains("removes 8 delegation entries on 2 hosts")),
        "{:?}",
        first.gate_reasons
    );
    let rm01 = lab.read_host(&fleet.host("RM01").dn).await.unwrap();
    assert!(
        rm01.delegate.iter().any(|e| e.contains("rm03")),
        "nothing may be removed before approval"
    );

    // Asking again does not pile up plans.
    let again = reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap();
    assert_eq!(again.pending_plan, Some(plan_id));

    let approve = approving(plan_id, "alice-operator");
    let done = reconcile::reconcile(&cfg, &ad, &store, approve.clone()).await.unwrap();
    assert_eq!(done.plan_id, Some(plan_id));
    assert_eq!(done.applied.len(), 2);
    assert!(
        done.applied
            .iter()
            .all(|r| r.approved_by.as_deref() == Some("alice-operator"))
    );
    for h in ["RM01", "RM02"] {
        let s = lab.read_host(&fleet.host(h).dn).await.unwrap();
        assert!(
            !s.delegate.iter().any(|e| e.to_lowercase().contains("rm03")),
            "{h}: {:?}",
            s.delegate
        );
        assert_eq!(s.delegate.len(), 4, "{h} keeps its remaining peer: {:?}", s.delegate);
    }
    let rm03 = lab.read_host(&fleet.host("RM03").dn).await.unwrap();
    assert_eq!(rm03.delegate.len(), 8, "a host in no group is not planned for");

    let twice = reconcile::reconcile(&cfg, &ad, &store, approve).await.unwrap_err();
    assert!(matches!(twice, ReconcileError::PlanDecided(_)), "{twice}");
}

#[tokio::test]
async fn an_approval_of_a_plan_the_fleet_outgrew_is_refused() {
    let lab = Lab::start();
    let names = ["OUT01", "OUT02", "OUT03"];
    let fleet = FleetSpec::new("t-out", &names)
        .kerberos_only_mesh()
        .uac(WORKSTATION | T2A4D)
        .create(lab)
        .await
        .unwrap();
    let (_dir, path) = write_config(&fleet.config(lab, BindAs::Svc, "enforce", &["OUT01", "OUT02"], ""));
    let (cfg, ad, store) = open(&path).await;
    let first = reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap();
    let plan_id = first.pending_plan.unwrap();

    // Someone removes one of the held entries by hand before approval.
    let out01 = fleet.host("OUT01");
    let mut l = lab.admin().await.unwrap();
    let entry = format!("cifs/{}", fleet.host("OUT03").fqdn);
    l.modify(
        &out01.dn,
        vec![ldap3::Mod::Delete(
            "msDS-AllowedToDelegateTo",
            std::collections::HashSet::from([entry.as_str()]),
        )],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    let usn = lab.read_host(&out01.dn).await.unwrap().usn_changed;

    let err = reconcile::reconcile(&cfg, &ad, &store, approving(plan_id, "op"))
        .await
        .unwrap_err();
    let ReconcileError::Superseded { old, new } = err else {
        panic!("{err}")
    };
    assert_eq!(old, plan_id);
    assert!(new.is_some_and(|n| n != plan_id));
    assert_eq!(
        lab.read_host(&out01.dn).await.unwrap().usn_changed,
        usn,
        "nothing written"
    );
}

#[tokio::test]
async fn the_blast_radius_guard_holds_large_plans() {
    let lab = Lab::start();
    let names = ["BIG01", "BIG02", "BIG03"];
    let fleet = FleetSpec::new("t-big", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let (_dir, path) = write_config(&fleet.config(
        lab,
        BindAs::Svc,
        "enforce",
        &names,
        "[guard]\nmax_hosts_per_apply = 2\n",
    ));
    let (cfg, ad, store) = open(&path).await;
    let out = reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap();
    assert!(out.applied.is_empty());
    let id = out.pending_plan.unwrap();
    assert!(
        out.gate_reasons[0].contains("would change 3 hosts"),
        "{:?}",
        out.gate_reasons
    );
    for h in &fleet.hosts {
        assert_eq!(lab.read_host(&h.dn).await.unwrap().uac, WORKSTATION);
    }
    let done = reconcile::reconcile(&cfg, &ad, &store, approving(id, "op"))
        .await
        .unwrap();
    assert_eq!(done.applied.len(), 3);
}

#[tokio::test]
async fn observe_and_plan_modes_never_write() {
    let lab = Lab::start();
    let names = ["MODE01", "MODE02"];
    let fleet = FleetSpec::new("t-mode", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    for mode in ["observe", "plan"] {
        let (_dir, path) = write_config(&fleet.config(lab, BindAs::Svc, mode, &names, ""));
        let (cfg, ad, store) = open(&path).await;
        let out = reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap();
        assert!(out.applied.is_empty() && out.plan_id.is_none(), "{mode}");
        // Plan mode proposes (an approval applies it); observe mode only reports.
        assert_eq!(out.pending_plan.is_some(), mode == "plan", "{mode}: {out:?}");
        let d = reconcile::decide(&cfg, &reconcile::observe(&cfg, &ad).await.unwrap());
        assert_eq!(d.not_enforced.len(), 2, "{mode}: drift is still reported");
    }
    for h in &fleet.hosts {
        assert_eq!(lab.read_host(&h.dn).await.unwrap().uac, WORKSTATION);
    }
}

#[tokio::test]
async fn privileged_accounts_are_made_sensitive_only_when_opted_in_and_approved() {
    let lab = Lab::start();
    let names = ["SENS01", "SENS02"];
    let fleet = FleetSpec::new("t-sens", &names)
        .kerberos_only_mesh()
        .uac(WORKSTATION | T2A4D)
        .user("sens-admin", 0)
        .user("sens-operator", 0)
        .create(lab)
        .await
        .unwrap();
    // A privileged group holding both: an admin, and the account that runs migrations.
    let group = format!("CN=t-sens-admins,{}", fleet.ou_dn);
    let mut l = lab.admin().await.unwrap();
    let members: std::collections::HashSet<&str> = fleet.users.iter().map(|u| u.dn.as_str()).collect();
    l.add(
        &group,
        vec![
            ("objectClass", std::collections::HashSet::from(["group"])),
            ("sAMAccountName", std::collections::HashSet::from(["t-sens-admins"])),
            ("member", members),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    let admin_dn = &fleet.users[0].dn;
    let operator_dn = &fleet.users[1].dn;
    let uac = |dn: String| async move { lab.read_host(&dn).await.unwrap().uac };

    // Off by default: the privileged account is only reported.
    let diagnosis = format!("[diagnosis]\nprivileged_groups = [\"{group}\"]\n");
    let (_d1, path) = write_config(&fleet.config(lab, BindAs::Svc, "enforce", &names, &diagnosis));
    let (cfg, ad, store) = open(&path).await;
    let out = reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap();
    assert!(out.pending_plan.is_none() && out.applied.is_empty());
    assert_eq!(uac(admin_dn.clone()).await & 0x100000, 0);

    // Opted in: held for approval; the migration account is never touched.
    // (The lab's bind account may only write below OU=Hyper-V, so the
    // domain's own Administrator is exempted here too.)
    let diagnosis = format!(
        "[diagnosis]\nprivileged_groups = [\"{group}\"]\nenforce_sensitive = true\nmigration_accounts = [\"sens-operator\", \"Administrator\"]\n"
    );
    let (_d2, path) = write_config(&fleet.config(lab, BindAs::Svc, "enforce", &names, &diagnosis));
    let (cfg, ad, store) = open(&path).await;
    let out = reconcile::reconcile(&cfg, &ad, &store, opts()).await.unwrap();
    let plan = out.pending_plan.expect("held for approval");
    assert!(
        out.gate_reasons
            .iter()
            .any(|r| r.contains("marks 1 privileged accounts sensitive")),
        "{:?}",
        out.gate_reasons
    );
    assert_eq!(uac(admin_dn.clone()).await & 0x100000, 0, "nothing before approval");

    let done = reconcile::reconcile(&cfg, &ad, &store, approving(plan, "security-officer"))
        .await
        .unwrap();
    assert_eq!(done.applied.len(), 1);
    assert_eq!(done.applied[0].dn, *admin_dn);
    assert_ne!(uac(admin_dn.clone()).await & 0x100000, 0, "sens-admin is now sensitive");
    assert_eq!(
        uac(operator_dn.clone()).await & 0x100000,
        0,
        "the migration account stays delegatable"
    );
    // And the KDC agrees: migrating on sens-admin's behalf is refused.
    assert!(
        lab.kvno(
            fleet.host("SENS01"),
            "sens-admin",
            &format!("cifs/{}", fleet.host("SENS02").fqdn)
        )
        .is_err()
    );
    assert!(
        lab.kvno(
            fleet.host("SENS01"),
            "sens-operator",
            &format!("cifs/{}", fleet.host("SENS02").fqdn)
        )
        .is_ok()
    );
}

#[tokio::test]
async fn intents_left_by_an_interrupted_writer_are_settled_from_ad() {
    use kcdsync_controller::store::{AuditRecord, PlanState, now_ms};
    let lab = Lab::start();
    let names = ["WAL01", "WAL02"];
    let fleet = FleetSpec::new("t-wal", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let (_dir, path) = write_config(&fleet.config(lab, BindAs::Svc, "enforce", &names, ""));
    let (cfg, ad, store) = open(&path).await;

    // A writer (epoch 1) put both hosts on record, wrote WAL01, then died; its lease lapsed and
    // this run writes under epoch 2. Its intents are older than lease TTL + LDAP timeout, so no
    // write of it can still be on its way.
    use kcdsync_controller::leader::LEADER_LEASE;
    let old = store
        .acquire_lease(LEADER_LEASE, "crashed", "", 60_000)
        .await
        .unwrap()
        .unwrap();
    store.release_lease(LEADER_LEASE, "crashed").await.unwrap();
    let epoch = store
        .acquire_lease(LEADER_LEASE, "test", "", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((old, epoch), (1, 2));
    let long_ago = now_ms() - (cfg.lease_ttl() + cfg.ad.timeout).as_millis() as i64 - 1_000;
    let crashed = store
        .create_plan(PlanState::Approved, "crashed-writer", &[], &[])
        .await
        .unwrap();
    let intent = |h: &TestHost| AuditRecord {
        id: 0,
        time_ms: long_ago,
        plan_id: crashed,
        host: h.fqdn.clone(),
        dn: h.dn.clone(),
        uac_before: WORKSTATION,
        uac_after: WORKSTATION | T2A4D,
        delegate_before: vec![],
        delegate_after: vec![],
        reasons: vec!["set protocol transition".into()],
        trigger: "crashed-writer".into(),
        approved_by: None,
        epoch: old,
        dc: String::new(),
    };
    store
        .record_intents(&[intent(fleet.host("WAL01")), intent(fleet.host("WAL02"))])
        .await
        .unwrap();
    lab.set_uac(&fleet.host("WAL01").dn, WORKSTATION | T2A4D).await.unwrap();
    assert_eq!(store.audit_count().await.unwrap(), 0, "intents are not the audit");

    let fenced = RunOptions {
        fence: Some(reconcile::Fence {
            lease: LEADER_LEASE.into(),
            holder: "test".into(),
            epoch,
        }),
        ..opts()
    };
    let out = reconcile::reconcile(&cfg, &ad, &store, fenced).await.unwrap();
    assert_eq!(out.applied.len(), 1, "only WAL02 still needed a write");
    let audit = store.audit(None, 10).await.unwrap();
    assert_eq!(audit.len(), 2, "one row per AD write: {audit:#?}");
    let wal01 = audit.iter().find(|r| r.dn == fleet.host("WAL01").dn).unwrap();
    assert_eq!(
        (wal01.trigger.as_str(), wal01.plan_id),
        ("crashed-writer", crashed),
        "the interrupted write is audited under its own plan"
    );
    assert_eq!(wal01.uac_after, WORKSTATION | T2A4D);
    let wal02 = audit.iter().find(|r| r.dn == fleet.host("WAL02").dn).unwrap();
    assert_eq!(
        wal02.trigger, "test",
        "the never-written intent was dropped; the new write is audited once"
    );
    assert!(store.open_intents().await.unwrap().is_empty());
}
