//! `kcdsync-bench ui`: the dashboard at N hosts in headless Chromium — time to
//! first byte and full load of each page from the browser's own navigation
//! timing — and GetExposure over the whole fleet next to ListHosts of the same
//! fleet, in the same run, over the real gRPC API.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kcdsync_controller::runtime;
use kcdsync_proto::v1 as pb;
use kcdsync_tests::agents::{Pki, READ_TOKEN, WRITE_TOKEN, fleet_client, write_tokens};
use kcdsync_tests::browser::{Driver, spki_pin};
use kcdsync_tests::{FleetSpec, Lab, T2A4D, WORKSTATION};
use serde_json::json;

use crate::api::pct;

pub fn run(n: usize, group_size: usize, rounds: usize) -> Result<()> {
    let lab = Lab::start();
    let ou_dn = format!("OU=bench-ui,{}", lab.fleet_ou());
    let (groups, _) = crate::seed(lab, &ou_dn, n, group_size, WORKSTATION | T2A4D)?;
    let pki = Pki::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 * 1024 * 1024)
        .build()?;
    rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _users = FleetSpec::new("bench-ui-users", &["BUIU01"]).user("bench-op", 0).create(lab).await?;
        let mut text = crate::fleet_config(lab, &ou_dn, &groups, n);
        write_tokens(&pki, &[("reader", "read", READ_TOKEN), ("operator", "write", WRITE_TOKEN)]);
        text = text.replace(
            "\n[scope]",
            "\n[reconcile]\ninterval_secs = 3600\n\n[api]\nlisten = \"127.0.0.1:0\"\ncert_file = \"controller.pem\"\nkey_file = \"controller.key\"\ntokens_file = \"tokens.toml\"\n\n[scope]",
        );
        std::fs::write(pki.path("kcdsync.toml"), text)?;
        let running = runtime::start(kcdsync_controller::config::Config::load(&pki.path("kcdsync.toml"))?).await?;
        running.reconciled(1).await;
        let addr = running.api_addr.context("api")?;
        let base = format!("https://127.0.0.1:{}", addr.port());

        // The API: every page of GetExposure vs every page of ListHosts (1,000 per page).
        let mut api = fleet_client(&pki, addr, Some(READ_TOKEN), None).await;
        let (mut exposure, mut hosts, mut edges) = (Vec::new(), Vec::new(), 0);
        for _ in 0..rounds {
            let t = Instant::now();
            let (mut token, mut count) = (String::new(), 0);
            loop {
                let r = api
                    .get_exposure(pb::GetExposureRequest { page_size: 1000, page_token: token, ..Default::default() })
                    .await?
                    .into_inner();
                count += r.edges.len();
                token = r.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            exposure.push(t.elapsed());
            edges = count;
            let t = Instant::now();
            let (mut token, mut count) = (String::new(), 0);
            loop {
                let r = api
                    .list_hosts(pb::ListHostsRequest { page_size: 1000, page_token: token, ..Default::default() })
                    .await?
                    .into_inner();
                count += r.hosts.len();
                token = r.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            hosts.push(t.elapsed());
            ensure!(count == n, "ListHosts listed {count} of {n} hosts");
        }

        // The browser: signed in once, then each page `rounds` times.
        let driver = Driver::start().await?;
        let b = driver.browser(&spki_pin(&pki.path("controller.pem"))?).await?;
        b.goto(&format!("{base}/ui/login")).await?;
        b.type_into("#token", WRITE_TOKEN).await?;
        b.click_to_navigate("button[value=token]").await?;
        ensure!(b.url().await?.ends_with("/ui/"), "signed in");
        let pages = [
            ("overview", "/ui/".to_owned()),
            ("matrix (16 hosts)", "/ui/matrix?group=g0000&account=bench-op".to_owned()),
            ("exposure (first 200 edges)", "/ui/exposure".to_owned()),
            ("plans", "/ui/plans".to_owned()),
            ("audit", "/ui/audit".to_owned()),
        ];
        println!("ui benchmark: {n} hosts in groups of {group_size}, {rounds} rounds, release controller in-process, headless Chromium");
        for (name, path) in &pages {
            let (mut ttfb, mut load, mut bytes) = (Vec::new(), Vec::new(), 0u64);
            for _ in 0..rounds {
                b.goto(&format!("{base}{path}")).await?;
                let t = b
                    .js(
                        "const n = performance.getEntriesByType('navigation')[0]; return [n.responseStart - n.requestStart, n.loadEventEnd - n.startTime, n.transferSize]",
                        json!([]),
                    )
                    .await?;
                let ms = |i: usize| Duration::from_secs_f64(t[i].as_f64().unwrap_or(0.0) / 1e3);
                ttfb.push(ms(0));
                load.push(ms(1));
                bytes = t[2].as_u64().unwrap_or(0);
            }
            println!(
                "  {name:<28} first byte p50 {:>7.1} ms  full load p50 {:>7.1} ms (max {:>7.1})  {:>7} bytes",
                pct(&mut ttfb, 0.5).as_secs_f64() * 1e3,
                pct(&mut load, 0.5).as_secs_f64() * 1e3,
                pct(&mut load, 1.0).as_secs_f64() * 1e3,
                bytes
            );
        }
        println!(
            "  GetExposure, all {edges} edges (pages of 1,000): p50 {:.1} ms; ListHosts, all {n} hosts (pages of 1,000): p50 {:.1} ms",
            pct(&mut exposure, 0.5).as_secs_f64() * 1e3,
            pct(&mut hosts, 0.5).as_secs_f64() * 1e3
        );
        b.close().await?;
        running.stop().await;
        Ok::<_, anyhow::Error>(())
    })?;
    let admin = (lab.var("LAB_ADMIN_DN"), lab.var("LAB_ADMIN_PASS_FILE"));
    let _ = crate::ldap_tool(lab, "ldapdelete", admin.0, admin.1, &["-r", &ou_dn], None);
    Ok(())
}
