//! Failover before anything is written (issue 14), on the two-DC lab: `[ad] url` refuses
//! connections (a closed port: what a DC whose service is down answers), and the first
//! `[[ad.dc]]` in config order is a URL that reaches another DC than the one it names. serve
//! passes over both — saying why — and writes everything on the next `[[ad.dc]]`, dc2; every
//! audit row says so, and the change reaches dc1 by replication.
//!
//! The one-shot `kcdsync-controller apply` makes the same choice (its real binary, the same
//! config shape).
//!
//! The log capture is a process-global subscriber: only serve's test installs it; the CLI's
//! test reads its process's stderr.

use std::time::{Duration, Instant};

use kcdsync_controller::config::Config;
use kcdsync_controller::runtime;
use kcdsync_controller::store::Store;
use kcdsync_tests::agents::eventually;
use kcdsync_tests::logs::Captured;
use kcdsync_tests::two_dcs::{Dc, TwoDcLab, read_attr, wait_until};
use kcdsync_tests::{Fleet, FleetSpec, T2A4D, controller_bin, delete_subtree, run_with_room, token, write_config};
use ldap3::Ldap;

/// What runtime/connection.rs logs for a DC it cannot use, and when it writes elsewhere.
const PASSED_OVER: &str = "cannot reach this domain controller; passing it over";
const ON_DC2: &str = "the preferred domain controller cannot be reached: writing to dc2.lab.test";

/// A loopback port nothing listens on (bound, then let go).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Two "Kerberos only" hosts made through dc1 in an OU of their own, waited for on dc2; and a
/// connection to dc2.
async fn fleet_on_both_dcs(lab: &TwoDcLab, prefix: &str, ou: &str) -> (Fleet, Ldap) {
    let tag = &token()[..6];
    let names: Vec<String> = ["A", "B"].iter().map(|x| format!("{prefix}{tag}{x}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fleet = FleetSpec::new(&format!("{ou}-{tag}"), &refs)
        .kerberos_only_mesh()
        .create_in(lab.admin(Dc::Dc1).await.unwrap(), lab.base_dn(), lab.var("LAB_REALM"))
        .await
        .expect("creating the fleet through dc1");
    let mut dc2 = lab.admin(Dc::Dc2).await.unwrap();
    let t = Instant::now();
    for h in &fleet.hosts {
        wait_until(&mut dc2, &h.dn, "objectGUID", t, Duration::from_secs(60), |v| {
            v.is_some()
        })
        .await
        .unwrap_or_else(|e| panic!("the fleet did not reach dc2: {e:#}"));
    }
    (fleet, dc2)
}

#[test]
fn when_ad_url_refuses_connections_serve_writes_everything_on_the_next_dc_that_is_the_one_it_names() {
    let logs = Captured::install("kcdsync-failover-start-test", "info");
    run_with_room(scenario(logs));
}

async fn scenario(logs: Captured) {
    let lab = TwoDcLab::start();
    let (fleet, mut dc2) = fleet_on_both_dcs(lab, "FS", "kcdsync-failover-start").await;

    // [ad] url: refused. [[ad.dc]] #1: dc1's real URL, named as dc3 (a typo'd config): refused
    // by kcdsync, since writes audited as dc3's would be dc1's. #2: dc2.
    let refused = format!("ldaps://127.0.0.1:{}", closed_port());
    let ad = lab.ad_section(Dc::Dc1, "").replace(lab.ldaps_url(Dc::Dc1), &refused);
    let hosts: Vec<String> = fleet.hosts.iter().map(|h| format!("\"{}\"", h.fqdn)).collect();
    let text = format!(
        "{ad}[[ad.dc]]\nname = \"dc3.lab.test\"\nurl = \"{}\"\n[[ad.dc]]\nname = \"{}\"\nurl = \"{}\"\n\
         [scope]\nbase_dns = [\"{}\"]\n[reconcile]\ninterval_secs = 3600\n\
         [[group]]\nname = \"g\"\nmode = \"enforce\"\nfirst_grants = \"auto\"\nhosts = [{}]\n",
        lab.ldaps_url(Dc::Dc1),
        lab.dc_var(Dc::Dc2, "HOST"),
        lab.ldaps_url(Dc::Dc2),
        fleet.ou_dn,
        hosts.join(", ")
    );
    let (_dir, path) = write_config(&text);
    let running = runtime::start(Config::load(&path).unwrap()).await.unwrap();
    let store = &running.store;

    // The startup run writes both hosts, on dc2.
    eventually(Duration::from_secs(60), "both hosts audited", || async move {
        store.audit_count().await.unwrap() == 2
    })
    .await;
    for r in store.audit(None, 10).await.unwrap() {
        assert_eq!(r.dc, "dc2.lab.test", "{}: written on {:?}", r.host, r.dc);
        assert_eq!(
            r.trigger, "startup",
            "the first run wrote it: no failed run came before"
        );
    }
    let text = logs.text();
    // Both, in the first run (a run more than their 30 s hold later would try them again: a
    // loaded machine may get there).
    let first_run = text.find("reconciled").unwrap_or(text.len());
    assert_eq!(
        text[..first_run].matches(PASSED_OVER).count(),
        2,
        "[ad] url and the mis-named [[ad.dc]]:\n{text}"
    );
    assert!(text.contains(&refused), "the refused URL is named:\n{text}");
    assert!(
        text.contains("answers as dc1.lab.test, not as the DC it is configured for (dc3.lab.test)"),
        "the mis-named URL is explained:\n{text}"
    );
    assert!(logs.count(ON_DC2) >= 1, "{text}");

    // Written on dc2, replicated to dc1.
    let mut dc1 = lab.admin(Dc::Dc1).await.unwrap();
    for h in &fleet.hosts {
        for (dc, ldap) in [("dc2", &mut dc2), ("dc1", &mut dc1)] {
            let t = Instant::now();
            wait_until(ldap, &h.dn, "userAccountControl", t, Duration::from_secs(30), |v| {
                v.and_then(|v| v.first()?.parse::<u32>().ok())
                    .is_some_and(|u| u & T2A4D != 0)
            })
            .await
            .unwrap_or_else(|e| panic!("{} on {dc}: {e:#}", h.netbios));
        }
        let entries = read_attr(&mut dc1, &h.dn, "msDS-AllowedToDelegateTo").await.unwrap();
        assert_eq!(
            entries.map(|e| e.len()),
            Some(4),
            "{}: the mesh's entries, untouched",
            h.netbios
        );
    }

    running.stop().await;
    delete_subtree(&mut dc1, &fleet.ou_dn).await.unwrap();
}

#[test]
fn when_ad_url_refuses_connections_cli_apply_writes_on_the_next_dc_and_audits_it_there() {
    run_with_room(cli_scenario());
}

async fn cli_scenario() {
    let lab = TwoDcLab::start();
    let (fleet, mut dc2) = fleet_on_both_dcs(lab, "FC", "kcdsync-failover-cli").await;

    let refused = format!("ldaps://127.0.0.1:{}", closed_port());
    let ad = lab.ad_section(Dc::Dc1, "").replace(lab.ldaps_url(Dc::Dc1), &refused);
    let hosts: Vec<String> = fleet.hosts.iter().map(|h| format!("\"{}\"", h.fqdn)).collect();
    let text = format!(
        "{ad}[[ad.dc]]\nname = \"{}\"\nurl = \"{}\"\n[scope]\nbase_dns = [\"{}\"]\n\
         [[group]]\nname = \"g\"\nmode = \"enforce\"\nfirst_grants = \"auto\"\nhosts = [{}]\n",
        lab.dc_var(Dc::Dc2, "HOST"),
        lab.ldaps_url(Dc::Dc2),
        fleet.ou_dn,
        hosts.join(", ")
    );
    let (_dir, path) = write_config(&text);
    let out = std::process::Command::new(controller_bin())
        .arg("--config")
        .arg(&path)
        .args(["apply", "--output", "json"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kcdsync-controller apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "apply failed:\n{stderr}");
    assert!(
        stderr.contains(PASSED_OVER) && stderr.contains(&refused),
        "the refused [ad] url is passed over, named:\n{stderr}"
    );
    assert!(stderr.contains(ON_DC2), "{stderr}");

    // Audited as written on dc2, by the CLI's run.
    let store = Store::open(&Config::load(&path).unwrap().store_url).await.unwrap();
    let rows = store.audit(None, 10).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for r in &rows {
        assert_eq!(r.dc, "dc2.lab.test", "{}: written on {:?}", r.host, r.dc);
        assert_eq!(r.trigger, "cli");
    }
    for h in &fleet.hosts {
        let uac = read_attr(&mut dc2, &h.dn, "userAccountControl").await.unwrap();
        let uac = uac.and_then(|v| v.first()?.parse::<u32>().ok()).unwrap_or(0);
        assert_ne!(uac & T2A4D, 0, "{} on dc2: uac {uac:#x}", h.netbios);
    }

    let mut dc1 = lab.admin(Dc::Dc1).await.unwrap();
    delete_subtree(&mut dc1, &fleet.ou_dn).await.unwrap();
}
