//! Failover on the two-DC lab (`lab.sh up --dcs 2`, issue 14): `serve` writes to dc1 (`[ad]
//! url`) and knows dc2 (`[[ad.dc]]`). dc1 goes away for serve in the middle of an apply — right
//! after it acknowledged the first host's modify — and serve finishes the job on dc2: every
//! host converges (read back on both DCs, their KDCs grant the delegation), each change is in
//! the audit exactly once with the DC that made it, and no delegation entry is written twice;
//! the log and the metrics (kcdsync.ad.writer, kcdsync.ad.writer_switches, to an in-process
//! OTLP receiver) say where serve writes. Once dc1 answers again, serve stays on dc2 until
//! dc1's hold-down is over, then writes to dc1 again.
//!
//! The shared lab's DCs are never stopped (other tests use them): serve reaches dc1 through a
//! [`CutProxy`], and cutting it is, for this controller, dc1 going down. The cut is made by a
//! log hook, in the logging thread, on the line apply writes when dc1 acknowledged a modify
//! ("modify accepted"): apply is stopped right there, before it sends the next host's
//! modify, so the cut falls exactly "after the first host was written". (A slowed proxy
//! would cut at a time, not at a point of the run; a byte count cannot see through TLS.)
//! Whether dc1 still got the second host's modify — sent while the proxy was closing its
//! sockets — is left to the race: both outcomes must give the same audit, and the test says
//! which one it saw.
//!
//! One test in this binary: the log capture is a process-global subscriber.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kcdsync_agent::probe::kerberos::{self, MitKerberos};
use kcdsync_controller::config::Config;
use kcdsync_controller::runtime;
use kcdsync_controller::store::{AuditRecord, Store};
use kcdsync_tests::agents::eventually;
use kcdsync_tests::logs::Captured;
use kcdsync_tests::otlp::Receiver;
use kcdsync_tests::proxy::CutProxy;
use kcdsync_tests::two_dcs::{Dc, TwoDcLab, read_attr, wait_until};
use kcdsync_tests::{Fleet, FleetSpec, T2A4D, TestHost, delete_subtree, run_with_room, token, write_config};

const DC1: &str = "dc1.lab.test";
const DC2: &str = "dc2.lab.test";
/// What apply logs for every modify a DC acknowledged (reconcile/apply.rs), and what
/// runtime/connection.rs logs when serve moves its writes.
const ACCEPTED: &str = "modify accepted";
const FAILED_OVER: &str = "failed over: writing to dc2.lab.test";
const BACK: &str = "answers again: writing to dc1.lab.test again";
/// runtime/failover.rs: how long a DC that failed once is passed over.
const HOLD: Duration = Duration::from_secs(30);

fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "failover: {line}");
}

/// Four hosts with no delegation at all, "Kerberos only", and a user, in an OU of this run's
/// own, created through dc1 and waited for on dc2. Each host needs protocol transition and
/// twelve entries (four per peer): both attributes change.
async fn fleet(lab: &TwoDcLab) -> (Fleet, String) {
    let tag = &token()[..6];
    let user = format!("fou{tag}");
    let names: Vec<String> = ["A", "B", "C", "D"].iter().map(|x| format!("FO{tag}{x}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fleet = FleetSpec::new(&format!("kcdsync-failover-{tag}"), &refs)
        .user(&user, 0)
        .create_in(lab.admin(Dc::Dc1).await.unwrap(), lab.base_dn(), lab.var("LAB_REALM"))
        .await
        .expect("creating the fleet through dc1");
    let mut dc2 = lab.admin(Dc::Dc2).await.unwrap();
    let t = Instant::now();
    for dn in fleet
        .hosts
        .iter()
        .map(|h| &h.dn)
        .chain(fleet.users.iter().map(|u| &u.dn))
    {
        wait_until(&mut dc2, dn, "objectGUID", t, Duration::from_secs(60), |v| v.is_some())
            .await
            .unwrap_or_else(|e| panic!("the fleet did not reach dc2: {e:#}"));
    }
    (fleet, user)
}

/// serve writing to dc1 through `proxy`, dc2 listed as `[[ad.dc]]`; one modify at a time (so
/// "after the first host" is a point of the run), a timer every 2 s (what brings serve back
/// to dc1 once its hold is over).
fn config(lab: &TwoDcLab, fleet: &Fleet, proxy: SocketAddr) -> String {
    let ad = lab
        .ad_section(Dc::Dc1, "max_in_flight = 1")
        .replace(lab.ldaps_url(Dc::Dc1), &format!("ldaps://{proxy}"));
    let hosts: Vec<String> = fleet.hosts.iter().map(|h| format!("\"{}\"", h.fqdn)).collect();
    format!(
        "{ad}[[ad.dc]]\nname = \"{}\"\nurl = \"{}\"\n[scope]\nbase_dns = [\"{}\"]\n[reconcile]\ninterval_secs = 2\n[[group]]\nname = \"g\"\nmode = \"enforce\"\nfirst_grants = \"auto\"\nhosts = [{}]\n",
        lab.dc_var(Dc::Dc2, "HOST"),
        lab.ldaps_url(Dc::Dc2),
        fleet.ou_dn,
        hosts.join(", ")
    )
}

/// Does `dc`'s KDC (and no other) let `src` act for `user` towards `cifs/<peer>`?
async fn kdc_grants(lab: &TwoDcLab, dc: Dc, src: &TestHost, user: &str, peer: &TestHost) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let krb = MitKerberos {
        krb5_config: lab.krb5_conf(dc).into(),
        ccache: format!("FILE:{}", tmp.path().join("cc").display()),
        timeout: Duration::from_secs(20),
    };
    let principal = format!("{}$@{}", src.netbios, lab.var("LAB_REALM"));
    krb.kinit_password(&principal, &src.password)
        .await
        .map_err(|e| format!("kinit {principal} at {}: {}", dc.name(), kerberos::said(&e)))?;
    krb.s4u(user, &format!("cifs/{}", peer.fqdn))
        .await
        .map_err(|e| kerberos::said(&e))
}

/// The entries `host` must end with: four for each peer.
fn expected_entries(fleet: &Fleet, host: &TestHost) -> BTreeSet<String> {
    fleet
        .hosts
        .iter()
        .filter(|p| p.dn != host.dn)
        .flat_map(|p| p.entries())
        .map(|e| e.to_lowercase())
        .collect()
}

/// `host` on `dc` shows protocol transition and exactly its entries, none twice (compared
/// case-insensitively, as Kerberos does; Samba's duplicate check on add is case-sensitive).
async fn converged_on(lab: &TwoDcLab, dc: Dc, fleet: &Fleet, host: &TestHost) -> Result<(), String> {
    let mut ldap = lab.admin(dc).await.map_err(|e| format!("{e:#}"))?;
    let uac: u32 = read_attr(&mut ldap, &host.dn, "userAccountControl")
        .await
        .map_err(|e| format!("{e:#}"))?
        .and_then(|v| v.first().and_then(|u| u.parse().ok()))
        .unwrap_or(0);
    let entries = read_attr(&mut ldap, &host.dn, "msDS-AllowedToDelegateTo")
        .await
        .map_err(|e| format!("{e:#}"))?
        .unwrap_or_default();
    let _ = ldap.unbind().await;
    let set: BTreeSet<String> = entries.iter().map(|e| e.to_lowercase()).collect();
    if set.len() != entries.len() {
        return Err(format!(
            "{} on {}: an entry is there twice: {entries:?}",
            host.netbios,
            dc.name()
        ));
    }
    if uac & T2A4D == 0 || set != expected_entries(fleet, host) {
        return Err(format!(
            "{} on {}: uac {uac:#x}, {} entries",
            host.netbios,
            dc.name(),
            entries.len()
        ));
    }
    Ok(())
}

/// `text` without its terminal colour codes (the log's field names are styled).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The host names `dc` acknowledged a modify for, from apply's log lines.
fn acknowledged_by(logs: &Captured, dc: &str) -> BTreeSet<String> {
    plain(&logs.text())
        .lines()
        .filter(|l| l.contains(ACCEPTED) && l.contains(&format!("dc={dc}")))
        .filter_map(|l| l.split("host=").nth(1))
        .map(|h| h.split_whitespace().next().unwrap_or_default().to_owned())
        .collect()
}

async fn audit_rows(store: &Store) -> Vec<AuditRecord> {
    store.audit(None, 1000).await.unwrap()
}

/// Has the receiver got a point of `name` with these attributes and at least `value`?
fn exported(receiver: &Receiver, name: &str, attrs: &[(&str, &str)], value: f64) -> bool {
    receiver.metrics().iter().any(|m| {
        m.name == name
            && m.value >= value
            && attrs
                .iter()
                .all(|(k, v)| m.attributes.iter().any(|(mk, mv)| mk == k && mv == v))
    })
}

#[test]
fn when_dc1_goes_away_mid_apply_serve_finishes_on_dc2_audits_each_change_once_and_comes_back_to_dc1() {
    // Metrics go to an in-process OTLP receiver, on a runtime of its own that outlives the
    // scenario's; the telemetry reads where to export from the environment when the log
    // capture installs it, so the variables are set first (nothing else runs yet).
    let (otlp_rt, receiver) = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the OTLP receiver's runtime");
        let receiver = rt.block_on(Receiver::start());
        (rt, Arc::new(receiver))
    })
    .join()
    .expect("starting the OTLP receiver");
    // SAFETY: no other thread of this process reads the environment yet.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
        std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "300");
    }
    // The exporter runs on the receiver's runtime.
    let logs = {
        let _on = otlp_rt.enter();
        Captured::install(
            "kcdsync-failover-test",
            "info,kcdsync_controller::reconcile::apply=debug",
        )
    };
    run_with_room(scenario(logs, receiver));
    drop(otlp_rt);
}

async fn scenario(logs: Captured, receiver: Arc<Receiver>) {
    let lab = TwoDcLab::start();
    let (fleet, user) = fleet(lab).await;
    let dc1: SocketAddr = lab
        .ldaps_url(Dc::Dc1)
        .strip_prefix("ldaps://")
        .and_then(|a| a.parse().ok())
        .expect("dc1's LDAPS URL is ldaps://<ip>:<port>");
    let proxy = CutProxy::start(dc1).await.unwrap();

    // dc1 goes away right after it acknowledged the first modify of serve's first run.
    let cut_at: Arc<OnceLock<Instant>> = Arc::default();
    let (cut, at) = (proxy.cutter(), cut_at.clone());
    logs.when_logged(ACCEPTED, move || {
        cut();
        let _ = at.set(Instant::now());
    });
    let (_dir, path) = write_config(&config(lab, &fleet, proxy.addr()));
    let running = runtime::start(Config::load(&path).unwrap()).await.unwrap();
    let (store, logs) = (&running.store, &logs);

    // Converged on dc2: one audit row per host, nothing left open.
    let hosts = fleet.hosts.len();
    eventually(
        Duration::from_secs(90),
        "every host audited once, no intent open",
        || async move { audit_rows(store).await.len() >= hosts && store.open_intents().await.unwrap().is_empty() },
    )
    .await;
    let cut_at = *cut_at.get().expect("the cut happened");
    let failed_over_ms = cut_at.elapsed().as_millis();
    let r = &receiver;
    eventually(Duration::from_secs(10), "the failover in the metrics", || async move {
        exported(r, "kcdsync.ad.writer_switches", &[("from", DC1), ("to", DC2)], 1.0)
            && exported(r, "kcdsync.ad.writer", &[("dc", DC2)], 1.0)
    })
    .await;
    assert!(
        logs.count(FAILED_OVER) >= 1,
        "serve said it failed over:\n{}",
        logs.text()
    );

    // Exactly one row per host, each naming the DC that made the change.
    let rows = audit_rows(store).await;
    let by_host: BTreeMap<&str, Vec<&AuditRecord>> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        m.entry(r.host.as_str()).or_insert_with(Vec::new).push(r);
        m
    });
    assert_eq!(by_host.len(), hosts, "every host in the audit: {rows:#?}");
    for (host, rs) in &by_host {
        assert_eq!(rs.len(), 1, "{host} is in the audit once, not {}: {rs:#?}", rs.len());
        let r = rs[0];
        assert!(r.dc == DC1 || r.dc == DC2, "{host}: written on {:?}", r.dc);
        assert!(r.uac_after & T2A4D != 0 && r.uac_before & T2A4D == 0, "{host}: {r:#?}");
        assert_eq!(r.delegate_before.len(), 0, "{host}: {r:#?}");
        assert_eq!(r.delegate_after.len(), 12, "{host}: {r:#?}");
    }
    // dc1 took one modify before the cut (maybe a second, sent as the proxy closed: that one
    // was never answered). Every other host can only have been written by dc2.
    // The hook cut before the second modify was issued, but the proxy closes its sockets on
    // its own tasks: that modify may still have slipped through and been answered.
    let acked = acknowledged_by(logs, DC1);
    assert!(
        (1..=2).contains(&acked.len()),
        "dc1 acknowledged the modify the cut followed (and at most the next): {acked:?}"
    );
    let on_dc1: Vec<&str> = rows.iter().filter(|r| r.dc == DC1).map(|r| r.host.as_str()).collect();
    let on_dc2 = rows.len() - on_dc1.len();
    assert!(
        on_dc1.len() <= 2 && on_dc2 >= hosts - 2,
        "at most the acknowledged and the unanswered write are dc1's: {on_dc1:?}"
    );
    let unanswered: Vec<&&str> = on_dc1.iter().filter(|h| !acked.contains(**h)).collect();
    assert!(unanswered.len() <= 1, "{unanswered:?}");
    // The first run's plan failed with the lost connection; the retry's was applied on dc2.
    let plans: BTreeSet<i64> = rows.iter().map(|r| r.plan_id).collect();
    assert!(plans.len() <= 2, "{plans:?}");

    // The per-DC verify: dc1's writes are awaited on dc2 (and arrive), dc2's own are not
    // awaited on dc2 (a write is never "replicated" to the DC that made it) but on dc1 (seen
    // there once serve can reach dc1 again, below).
    let rows_ref = &rows;
    eventually(Duration::from_secs(60), "dc1's writes seen on dc2", || async move {
        let seen = store.replication_of(rows_ref).await.unwrap();
        rows_ref
            .iter()
            .zip(&seen)
            .all(|(r, xs)| r.dc != DC1 || xs.iter().any(|x| x.dc == DC2 && x.arrived_at_ms.is_some()))
    })
    .await;
    for (r, xs) in rows.iter().zip(store.replication_of(&rows).await.unwrap()) {
        if r.dc == DC2 {
            assert!(
                xs.iter().all(|x| x.dc != DC2),
                "{}: awaited on the DC that made it: {xs:?}",
                r.host
            );
        }
    }

    // Both DCs converge (dc2 by its own writes, dc1 by replication; the lab's dc1 was never
    // down, only serve's path to it), with no entry twice on either.
    let t = Instant::now();
    for host in &fleet.hosts {
        for dc in [Dc::Dc2, Dc::Dc1] {
            loop {
                match converged_on(lab, dc, &fleet, host).await {
                    Ok(()) => break,
                    Err(why) if t.elapsed() < Duration::from_secs(60) => {
                        let _ = why;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(why) => panic!("not converged after 60 s: {why}"),
                }
            }
        }
    }
    let replicated_ms = t.elapsed().as_millis();

    // The KDCs agree: each DC's own KDC lets the first host act for the user towards each peer.
    let src = &fleet.hosts[0];
    for dc in [Dc::Dc2, Dc::Dc1] {
        for peer in &fleet.hosts[1..] {
            kdc_grants(lab, dc, src, &user, peer).await.unwrap_or_else(|why| {
                panic!(
                    "{}'s KDC refuses {} -> cifs/{} for {user}: {why}",
                    dc.name(),
                    src.netbios,
                    peer.fqdn
                )
            });
        }
    }

    // dc1 answers again. Runs every 2 s keep writing on dc2 until dc1's hold is over (no
    // flapping back at the first answer), then take dc1 back.
    proxy.restore();
    let restored_at = Instant::now();
    eventually(Duration::from_secs(90), "serve back on dc1", || async move {
        logs.count(BACK) >= 1
    })
    .await;
    let (back_after, back_since_restore) = (cut_at.elapsed(), restored_at.elapsed());
    eventually(Duration::from_secs(10), "the way back in the metrics", || async move {
        exported(r, "kcdsync.ad.writer_switches", &[("from", DC2), ("to", DC1)], 1.0)
    })
    .await;
    assert!(
        back_after >= HOLD,
        "serve went back to dc1 {:.1} s after losing it, within its {} s hold:\n{}",
        back_after.as_secs_f64(),
        HOLD.as_secs(),
        plain(&logs.text())
    );

    // dc2's writes were awaited on dc1 while serve could not reach it; now they are seen there.
    eventually(Duration::from_secs(60), "dc2's writes recorded on dc1", || async move {
        let seen = store.replication_of(rows_ref).await.unwrap();
        rows_ref
            .iter()
            .zip(&seen)
            .all(|(r, xs)| r.dc != DC2 || xs.iter().any(|x| x.dc == DC1 && x.arrived_at_ms.is_some()))
    })
    .await;

    // Writes go to dc1 again: a drift made on dc1 is repaired there and audited as dc1's.
    let drifted = &fleet.hosts[1];
    let mut admin = lab.admin(Dc::Dc1).await.unwrap();
    let uac: u32 = read_attr(&mut admin, &drifted.dn, "userAccountControl")
        .await
        .unwrap()
        .and_then(|v| v.first().and_then(|u| u.parse().ok()))
        .unwrap();
    let kerberos_only = (uac & !T2A4D).to_string();
    admin
        .modify(
            &drifted.dn,
            vec![ldap3::Mod::Replace(
                "userAccountControl",
                std::collections::HashSet::from([kerberos_only.as_str()]),
            )],
        )
        .await
        .and_then(|r| r.success())
        .unwrap();
    let before = rows.len();
    eventually(
        Duration::from_secs(60),
        "the drift repaired and audited",
        || async move { audit_rows(store).await.len() > before },
    )
    .await;
    let repair = audit_rows(store).await;
    assert_eq!(repair.len(), before + 1, "{repair:#?}");
    assert_eq!(repair[0].host, drifted.fqdn);
    assert_eq!(repair[0].dc, DC1, "the repair was written on dc1: {:#?}", repair[0]);
    converged_on(lab, Dc::Dc1, &fleet, drifted).await.unwrap();

    report(&format!(
        "cut after dc1 acknowledged {acked:?}; {} of {hosts} changes audited as dc1's ({on_dc1:?}), {on_dc2} as dc2's; \
         converged and audited {failed_over_ms} ms after the cut; both DCs showed it {replicated_ms} ms later; \
         back on dc1 {:.1} s after the cut ({:.1} s after dc1 answered again)",
        on_dc1.len(),
        back_after.as_secs_f64(),
        back_since_restore.as_secs_f64(),
    ));
    running.stop().await;
    delete_subtree(&mut admin, &fleet.ou_dn).await.unwrap();
}
