//! `serve` watching AD: an out-of-band change is repaired (or, for a removal,
//! proposed for approval) through the one plan/guard/apply/verify/audit path,
//! woken by AD's change notification — the interval timer and the full resync
//! are set to an hour, so nothing else can have started the run.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kcdsync_controller::config::Config;
use kcdsync_controller::ldap::Ad;
use kcdsync_controller::ldap::watch::{Registration, next_change};
use kcdsync_controller::model::dn::Dn;
use kcdsync_controller::runtime;
use kcdsync_controller::store::PlanState;
use kcdsync_tests::agents::eventually;
use kcdsync_tests::*;
use ldap3::Mod;

const HOUR: &str = "[reconcile]\ninterval_secs = 3600\nfull_resync_secs = 3600\n";

async fn set_members(lab: &Lab, group: &str, members: &[&str]) {
    let mut ldap = lab.admin().await.unwrap();
    let set: HashSet<&str> = members.iter().copied().collect();
    ldap.modify(group, vec![Mod::Replace("member", set)])
        .await
        .unwrap()
        .success()
        .unwrap();
    let _ = ldap.unbind().await;
}

#[tokio::test]
async fn out_of_band_changes_are_repaired_without_waiting_for_the_timer() {
    let lab = Lab::start();
    let names = ["WAT01", "WAT02", "WAT03"];
    let fleet = FleetSpec::new("t-watch", &names)
        .kerberos_only_mesh()
        .uac(WORKSTATION | T2A4D)
        .create(lab)
        .await
        .unwrap();
    // The migration group is an AD group holding the three hosts.
    let group = format!("CN=wat-hyperv,{}", fleet.ou_dn);
    let mut ldap = lab.admin().await.unwrap();
    let members: Vec<&str> = fleet.hosts.iter().map(|h| h.dn.as_str()).collect();
    ldap.add(
        &group,
        vec![
            ("objectClass", HashSet::from(["group"])),
            ("sAMAccountName", HashSet::from(["wat-hyperv"])),
            ("member", members.iter().copied().collect()),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    let _ = ldap.unbind().await;
    let text = format!(
        "{}\n[scope]\nbase_dns = [\"{}\"]\n\n{HOUR}\n[[group]]\nname = \"g\"\nmode = \"enforce\"\nfirst_grants = \"auto\"\nad_group = \"{group}\"\n",
        lab.ad_section(BindAs::Svc),
        fleet.ou_dn
    );
    let (_dir, path) = write_config(&text);
    let running = runtime::start(Config::load(&path).unwrap()).await.unwrap();
    running.reconciled(1).await;
    assert_eq!(
        running.store.audit_count().await.unwrap(),
        0,
        "a healthy fleet needs no write"
    );
    // Let the watch register (it starts after the first full read).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. Someone sets WAT01 back to "Kerberos only".
    let wat01 = fleet.host("WAT01");
    let t = Instant::now();
    lab.set_uac(&wat01.dn, WORKSTATION).await.unwrap();
    let store = running.store.clone();
    eventually(Duration::from_secs(60), "the UAC flip repaired and audited", || {
        let store = store.clone();
        async move { store.audit_count().await.unwrap() == 1 }
    })
    .await;
    let uac_ms = t.elapsed().as_millis();
    assert_eq!(lab.read_host(&wat01.dn).await.unwrap().uac, WORKSTATION | T2A4D);
    let audit = running.store.audit(None, 10).await.unwrap();
    assert_eq!(audit[0].host, wat01.fqdn);
    assert_eq!(
        audit[0].uac_after,
        WORKSTATION | T2A4D,
        "the audit records what AD says after"
    );
    assert_eq!(
        audit[0].trigger, "ad-change",
        "the watch started the run, not the timer"
    );

    // 2. Someone deletes one of WAT02's delegation entries.
    let wat02 = fleet.host("WAT02");
    let before = lab.read_host(&wat02.dn).await.unwrap().delegate;
    let fewer: Vec<String> = before.iter().skip(1).cloned().collect();
    let t = Instant::now();
    lab.set_delegation(&wat02.dn, &fewer).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "the deleted entry restored and audited",
        || {
            let store = store.clone();
            async move { store.audit_count().await.unwrap() == 2 }
        },
    )
    .await;
    let entry_ms = t.elapsed().as_millis();
    let now: HashSet<String> = lab.read_host(&wat02.dn).await.unwrap().delegate.into_iter().collect();
    assert_eq!(now, before.into_iter().collect::<HashSet<_>>());
    assert_eq!(running.store.audit(None, 1).await.unwrap()[0].trigger, "ad-change");

    // 3. WAT03 leaves the AD group: its peers' entries for it are removals, which the guard
    // holds for approval — a pending plan, proposed as soon as AD says so; nothing written.
    let wat03 = fleet.host("WAT03");
    let t = Instant::now();
    set_members(lab, &group, &[wat01.dn.as_str(), wat02.dn.as_str()]).await;
    eventually(Duration::from_secs(60), "a pending plan removing WAT03", || {
        let store = store.clone();
        let fqdn = wat03.fqdn.clone();
        async move {
            store
                .list_plans(Some(PlanState::PendingApproval), 10)
                .await
                .unwrap()
                .iter()
                .any(|p| {
                    p.trigger == "ad-change" && p.changes.iter().any(|c| c.remove.iter().any(|r| r.contains(&fqdn)))
                })
        }
    })
    .await;
    let group_ms = t.elapsed().as_millis();
    assert_eq!(
        running.store.audit_count().await.unwrap(),
        2,
        "removals wait for approval"
    );
    println!(
        "change -> verified + audited repair: UAC flip {uac_ms} ms, deleted entry {entry_ms} ms; group removal -> pending plan {group_ms} ms"
    );
    running.stop().await;
}

#[tokio::test]
async fn notifications_fire_for_the_watched_container_and_the_delta_has_the_change() {
    let lab = Lab::start();
    let fleet = FleetSpec::new("t-notify", &["NOT01"]).create(lab).await.unwrap();
    let (_dir, path) = write_config(&format!(
        "{}\n[scope]\nbase_dns = [\"{}\"]\n[[group]]\nname = \"g\"\nmode = \"observe\"\nhosts = [\"not01\"]\n",
        lab.ad_section(BindAs::Svc),
        fleet.ou_dn
    ));
    let cfg = Config::load(&path).unwrap();
    let ad = Ad::connect(&cfg.ad).await.unwrap();
    let scope = [Dn::parse(&fleet.ou_dn).unwrap()];
    let regs = ad.registrations(&scope, &[], 100).await.unwrap();
    assert_eq!(
        regs,
        vec![Registration {
            base: fleet.ou_dn.clone(),
            one_level: true
        }]
    );
    // The cursor: which DC, and how far its USNs go.
    let c1 = ad.cursor().await.unwrap();
    assert!(c1.dc.service.starts_with("CN=NTDS Settings,"), "{:?}", c1.dc);
    assert_eq!(c1.dc.invocation_id.len(), 32, "a GUID, hex");

    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(ad.notify(&regs[0]).await.unwrap());
    }
    // Not asserted: LAB-NOTES reports rc 11 for a 6th registration on one connection; this
    // client did not get that answer within 15 s (docs/ad-watch.md), so the watcher keeps to
    // reconcile.notifications_per_connection (default 5) on its own.
    let not01 = fleet.host("NOT01");
    lab.set_uac(&not01.dn, WORKSTATION | T2A4D).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), next_change(&mut streams[0], &regs[0].base))
        .await
        .expect("a notification within 10 s")
        .unwrap();
    assert_eq!(seen.to_lowercase(), not01.dn.to_lowercase());
    // The delta from the old cursor has the change; the USN moved on.
    let changes = ad.changes_since(&cfg.ad.domain_dn, c1.usn + 1).await.unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c.object.dn.eq_ignore_ascii_case(&not01.dn) && c.object.uac == WORKSTATION | T2A4D)
    );
    assert!(ad.cursor().await.unwrap().usn > c1.usn);
    ad.unbind().await;
}
