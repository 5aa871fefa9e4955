//! One AD writer per store: `serve` holds the write lease while it runs, so the one-shot CLI
//! `apply` on the same store is refused (saying who writes and what to do instead) and writes
//! nothing; once serve stops, the CLI takes the lease and writes under its own epoch.

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
