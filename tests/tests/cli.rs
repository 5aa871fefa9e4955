//! The `kcdsync-controller` binary as an operator runs it: bad input gets a
//! clear error naming what to fix, and nothing is written to AD; a one-shot
//! `apply` never runs beside `serve` as a second AD writer.

use std::process::{Command, Output};

use kcdsync_controller::leader::LEADER_LEASE;
use kcdsync_controller::runtime;
use kcdsync_controller::store::{Store, now_ms};
use kcdsync_tests::agents::*;
use kcdsync_tests::*;

fn controller(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(controller_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kcdsync-controller")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn bad_configs_get_a_clear_error_and_no_ldap_write() {
    let lab = Lab::start();
    let names = ["BAD01", "BAD02"];
    let fleet = FleetSpec::new("t-bad", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    let good = fleet.config(lab, BindAs::Svc, "enforce", &names, "");
    let mut before = Vec::new();
    for h in &fleet.hosts {
        before.push(lab.read_host(&h.dn).await.unwrap());
    }

    let base_dn = lab.var("LAB_BASE_DN");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            good.replace("[scope]\n", "[scope]\nbase_dn_typo = 1\n"),
            "unknown field `base_dn_typo`",
        ),
        (
            "malformed DN",
            good.replace(&fleet.ou_dn, "OU=t-bad,,OU=Hyper-V"),
            "scope.base_dns[0]",
        ),
        (
            "filter metacharacters",
            good.replace("\"bad02\"", "\"bad02)(objectClass=*\""),
            "group[0].hosts[1]",
        ),
        ("wildcard host", good.replace("\"bad02\"", "\"*\""), "group[0].hosts[1]"),
        ("plaintext LDAP", good.replace("ldaps://", "ldap://"), "clear text"),
    ];
    for (what, text, expect) in cases {
        let (_dir, path) = write_config(&text);
        let out = controller(&path, &["apply"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(expect), "{what}: expected `{expect}` in: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    for (h, b) in fleet.hosts.iter().zip(&before) {
        assert_eq!(&lab.read_host(&h.dn).await.unwrap(), b, "{} was written", h.dn);
    }

    // A domain controller in a group (the scope is the whole domain, so the
    // DC is visible) is a finding for that group, not an error; the group's
    // plan goes on without it.
    let with_dc = good
        .replace(
            &format!("base_dns = [\"{}\"]", fleet.ou_dn),
            &format!("base_dns = [\"{base_dn}\"]"),
        )
        .replace("\"bad02\"", "\"bad02\", \"dc1\"");
    let (_dir, path) = write_config(&with_dc);
    let out = controller(&path, &["plan"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(text.contains("domain controller"), "{text}");

    // A scope base that does not exist is named, not silently empty.
    let (_dir, path) = write_config(&good.replace("OU=t-bad,", "OU=t-nonexistent,"));
    let err = stderr(&controller(&path, &["plan"]));
    assert!(
        err.contains("does not exist") && err.contains("scope.base_dns"),
        "{err}"
    );
}

#[tokio::test]
async fn plan_apply_approve_from_the_command_line() {
    let lab = Lab::start();
    let names = ["CLI01", "CLI02", "CLI03"];
    let fleet = FleetSpec::new("t-cli", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    // CLI03 is not in the group: its peers' entries to it must go, after approval.
    let (_dir, path) = write_config(&fleet.config(lab, BindAs::Svc, "enforce", &["CLI01", "CLI02"], ""));

    let plan = controller(&path, &["plan", "--output", "json"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(v["changes"].as_array().unwrap().len(), 2);
    assert_eq!(
        lab.read_host(&fleet.host("CLI01").dn).await.unwrap().uac,
        WORKSTATION,
        "plan is a dry run"
    );

    let table = controller(&path, &["plan"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("cli01.lab.test") && text.contains("kerberos-only  ->") && text.contains("[needs approval]"),
        "{text}"
    );

    let apply = controller(&path, &["apply", "--output", "json"]);
    assert!(apply.status.success(), "{}", stderr(&apply));
    let v: serde_json::Value = serde_json::from_slice(&apply.stdout).unwrap();
    assert_eq!(
        v["applied"].as_array().unwrap().len(),
        2,
        "protocol transition goes through"
    );
    let pending = v["pending_plan"].as_i64().expect("removals are held");
    let s = lab.read_host(&fleet.host("CLI01").dn).await.unwrap();
    assert_eq!(s.uac, WORKSTATION | T2A4D);
    assert_eq!(s.delegate.len(), 8);

    let approve = controller(
        &path,
        &["apply", "--approve", &pending.to_string(), "--approver", "bob"],
    );
    assert!(approve.status.success(), "{}", stderr(&approve));
    let s = lab.read_host(&fleet.host("CLI01").dn).await.unwrap();
    assert_eq!(s.delegate.len(), 4, "{:?}", s.delegate);

    let audit = controller(&path, &["audit", "--output", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4, "two hosts, twice");
    assert!(rows.iter().any(|r| r["approved_by"] == "bob"));

    let plans = controller(&path, &["plans"]);
    let text = String::from_utf8_lossy(&plans.stdout);
    assert!(text.contains("applied"), "{text}");

    let again = controller(&path, &["apply", "--approve", &pending.to_string()]);
    assert_eq!(again.status.code(), Some(1));
    let again = stderr(&again);
    assert!(
        again.contains(&format!("plan {pending} was applied by bob at ")) && again.contains("nothing was applied"),
        "{again}"
    );
}

/// `serve` holds the AD write lease while it runs, so `apply` on the same store is refused
/// (saying who writes and what to do instead) and writes nothing; once serve stops, `apply`
/// takes the lease and writes under its own epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_apply_is_refused_while_serve_holds_the_write_lease() {
    let lab = Lab::start();
    let names = ["OWR01", "OWR02"];
    let fleet = FleetSpec::new("t-onewriter", &names)
        .kerberos_only_mesh()
        .create(lab)
        .await
        .unwrap();
    // serve observes only (it writes nothing itself); the CLI would enforce, on the same store.
    let pki = Pki::new();
    let serve_cfg = controller_config_with(lab, &fleet, &pki, "observe", &names, "");
    let store_url = serve_cfg.store_url.clone();
    let cli_text = fleet.config(
        lab,
        BindAs::Svc,
        "enforce",
        &names,
        &format!("[store]\nurl = \"{store_url}\"\n"),
    );
    let (_dir, cli_path) = write_config(&cli_text);

    let serve = runtime::start(serve_cfg).await.unwrap();
    let epoch = serve.leading().await;
    serve.reconciled(1).await;
    let api = serve.api_addr.unwrap();

    // Refused, whether plain or approving, with who holds the lease and what to do instead.
    let refused = controller(&cli_path, &["apply"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let err = stderr(&refused);
    println!("{err}");
    assert!(
        err.contains("another writer holds the AD write lease: serve `serve:")
            && err.contains(&format!("at {api} until "))
            && err.contains(&format!(
                "(epoch {epoch}); stop it, or let it reconcile: kcdctl reconcile"
            )),
        "{err}"
    );
    let refused = controller(&cli_path, &["apply", "--approve", "7"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("stop it, or approve the plan through it: kcdctl approve 7"),
        "{}",
        stderr(&refused)
    );
    for h in &fleet.hosts {
        assert_eq!(lab.read_host(&h.dn).await.unwrap().uac, WORKSTATION, "AD unchanged");
    }
    // A dry run needs no lease.
    let plan = controller(&cli_path, &["plan"]);
    assert!(plan.status.success(), "{}", stderr(&plan));

    let store = Store::open(&store_url).await.unwrap();
    assert_eq!(store.audit_count().await.unwrap(), 0, "nothing audited");
    let lease = store.lease(LEADER_LEASE).await.unwrap().unwrap();
    assert!(lease.holder.starts_with("serve:") && lease.expires_at_ms > now_ms());

    // serve stops (releasing the lease): the CLI writes, under the next epoch, and lets go.
    serve.stop().await;
    let apply = controller(&cli_path, &["apply", "--output", "json"]);
    assert!(apply.status.success(), "{}", stderr(&apply));
    for h in &fleet.hosts {
        assert_eq!(lab.read_host(&h.dn).await.unwrap().uac, WORKSTATION | T2A4D);
    }
    let audit = store.audit(None, 10).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert!(audit.iter().all(|r| r.epoch == epoch + 1), "{audit:?}");
    let lease = store.lease(LEADER_LEASE).await.unwrap().unwrap();
    assert!(lease.holder.starts_with("cli:"), "{lease:?}");
    assert!(lease.expires_at_ms < now_ms(), "the CLI released the lease: {lease:?}");
    store.close().await;
}
