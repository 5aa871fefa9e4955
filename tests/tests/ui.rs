//! The dashboard in a real browser (headless Chromium through ChromeDriver)
//! against a real `serve` on the lab: sign-in, the readiness matrix's colours
//! (the KDC agrees with them), the read role's limits, CSRF, an approval that
//! writes AD, and a live update in another window. Screenshots of each page
//! go to `target/tmp/ui-screenshots/`.

use std::path::Path;
use std::time::Duration;

use kcdsync_controller::runtime;
use kcdsync_tests::agents::*;
use kcdsync_tests::browser::{Browser, Driver, spki_pin};
use kcdsync_tests::*;
use serde_json::json;

const GREEN: &str = "rgb(26, 127, 55)";
const RED: &str = "rgb(207, 34, 46)";

async fn sign_in(b: &Browser<'_>, base: &str, token: &str) {
    b.goto(&format!("{base}/ui/login")).await.unwrap();
    b.type_into("#token", token).await.unwrap();
    b.click_to_navigate("button[value=token]").await.unwrap();
}

/// The background colour of every matrix cell.
async fn cell_colours(b: &Browser<'_>) -> Vec<String> {
    let v = b
        .js(
            "return Array.from(document.querySelectorAll('table.matrix td[data-source] a')).map(a => getComputedStyle(a).backgroundColor)",
            json!([]),
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// POSTs a form from inside the page, as a forged or stripped request would: the status.
async fn post_status(b: &Browser<'_>, path: &str, csrf: Option<&str>) -> u64 {
    let v = b
        .js(
            "const [path, csrf] = arguments; const body = new URLSearchParams(); if (csrf) body.set('csrf', csrf);\
             return fetch(path, {method: 'POST', body, redirect: 'manual'}).then(r => r.status)",
            json!([path, csrf]),
        )
        .await
        .unwrap();
    v.as_u64().unwrap()
}

/// This window's CSRF token, read from its sign-out form.
async fn csrf(b: &Browser<'_>) -> String {
    b.js(
        "return document.querySelector('header input[name=csrf]').value",
        json!([]),
    )
    .await
    .unwrap()
    .as_str()
    .unwrap()
    .to_owned()
}

#[test]
fn an_operator_reads_the_fleet_and_approves_a_plan_in_a_real_browser() {
    run_with_room(scenario())
}

async fn scenario() {
    let lab = Lab::start();
    let names = ["UI01", "UI02", "UI03"];
    let fleet = FleetSpec::new("t-ui", &names)
        .kerberos_only_mesh()
        .user("ui-alice", 0)
        .user("ui-bob", 0x100000)
        .create(lab)
        .await
        .unwrap();
    let pki = Pki::new();
    // UI03 is not in the group: removing the entries that reach it waits for approval.
    let running = runtime::start(controller_config(lab, &fleet, &pki, "enforce", &["UI01", "UI02"]))
        .await
        .unwrap();
    running.reconciled(1).await;
    let addr = running.api_addr.unwrap();
    let base = format!("https://127.0.0.1:{}", addr.port());
    let mut api = fleet_client(&pki, addr, Some(READ_TOKEN), None).await;
    let pending = pending_plans(&mut api).await;
    assert_eq!(pending.len(), 1, "the removals of UI03's entries wait");
    let plan = pending[0].id.clone();
    let (ui01, ui02, ui03) = (fleet.host("UI01"), fleet.host("UI02"), fleet.host("UI03"));
    let reaches_ui03 = |entries: &[String]| entries.iter().any(|e| e.to_lowercase().contains("/ui03"));
    assert!(reaches_ui03(&lab.read_host(&ui01.dn).await.unwrap().delegate));

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let pin = spki_pin(&pki.path("controller.pem")).unwrap();
    let driver = Driver::start().await.unwrap();
    let writer = driver.browser(&pin).await.unwrap();

    // Not signed in: a page leads to the sign-in form; a wrong token is refused there.
    writer.goto(&format!("{base}/ui/plans")).await.unwrap();
    assert!(writer.url().await.unwrap().ends_with("/ui/login"));
    sign_in(&writer, &base, "not-a-real-token-at-all").await;
    assert_eq!(writer.text("p.error").await.unwrap(), "unknown bearer token");
    writer.screenshot(&shots, "0-sign-in").await.unwrap();
    sign_in(&writer, &base, WRITE_TOKEN).await;
    assert_eq!(writer.url().await.unwrap(), format!("{base}/ui/"));
    assert_eq!(
        writer.js("return document.cookie", json!([])).await.unwrap(),
        json!(""),
        "the session cookie is HttpOnly: no script sees it"
    );
    assert_eq!(writer.text("header .who").await.unwrap(), "token:orchestrator (write)");
    assert_eq!(writer.text(".card.warning .n").await.unwrap(), "1", "one plan waits");
    writer.screenshot(&shots, "1-overview").await.unwrap();

    // The matrix: green where the KDC lets the migration authenticate, red where it refuses.
    writer
        .goto(&format!("{base}/ui/matrix?group=g&account=ui-alice"))
        .await
        .unwrap();
    assert_eq!(cell_colours(&writer).await, [GREEN, GREEN]);
    lab.kvno(ui01, "ui-alice", &format!("cifs/{}", ui02.fqdn))
        .expect("the KDC agrees: ready");
    writer.screenshot(&shots, "2-matrix-ready").await.unwrap();
    writer
        .goto(&format!("{base}/ui/matrix?group=g&account=ui-bob"))
        .await
        .unwrap();
    assert_eq!(cell_colours(&writer).await, [RED, RED]);
    assert!(
        lab.kvno(ui01, "ui-bob", &format!("cifs/{}", ui02.fqdn)).is_err(),
        "the KDC agrees: a sensitive account cannot be delegated"
    );
    writer.screenshot(&shots, "3-matrix-blocked").await.unwrap();
    // A red cell says why, with evidence and what to do.
    writer.click_to_navigate("td.cell-not-ready a").await.unwrap();
    assert!(writer.url().await.unwrap().contains("/ui/check?"));
    assert!(
        writer
            .text(".finding.critical")
            .await
            .unwrap()
            .contains("account sensitive")
    );
    writer.screenshot(&shots, "4-check").await.unwrap();
    // Move-VM run from a management machine: its own delegation is checked too.
    writer.type_into("input[name=initiator]", "nogw01").await.unwrap();
    writer.click_to_navigate("form.filters button").await.unwrap();
    assert!(writer.url().await.unwrap().contains("initiator=nogw01"));
    let main = writer.text("main").await.unwrap();
    assert!(
        main.to_lowercase().contains("initiator: no computer `nogw01` in ad"),
        "{main}"
    );

    // The read role: sees the plan, no approve button, and its forged POST is refused.
    let reader = driver.browser(&pin).await.unwrap();
    sign_in(&reader, &base, READ_TOKEN).await;
    reader.goto(&format!("{base}/ui/plans/{plan}")).await.unwrap();
    assert_eq!(reader.count("#approve").await.unwrap(), 0);
    let token = csrf(&reader).await;
    assert_eq!(
        post_status(&reader, &format!("/ui/plans/{plan}/approve"), Some(&token)).await,
        403
    );
    // The write role without its CSRF token, or with the reader's: refused too.
    writer.goto(&format!("{base}/ui/plans/{plan}")).await.unwrap();
    assert_eq!(
        post_status(&writer, &format!("/ui/plans/{plan}/approve"), None).await,
        403
    );
    assert_eq!(
        post_status(&writer, &format!("/ui/plans/{plan}/approve"), Some(&token)).await,
        403
    );
    assert!(
        reaches_ui03(&lab.read_host(&ui01.dn).await.unwrap().delegate),
        "nothing written"
    );

    // The reader watches the plans page while the writer approves.
    reader.goto(&format!("{base}/ui/plans")).await.unwrap();
    reader
        .wait_for(
            "live updates connected",
            Duration::from_secs(10),
            "return document.getElementById('live').classList.contains('on')",
        )
        .await
        .unwrap();
    assert_eq!(reader.count("main table.plans").await.unwrap(), 2, "waiting + recent");
    writer.goto(&format!("{base}/ui/plans/{plan}")).await.unwrap();
    assert!(
        !writer.text("main").await.unwrap().contains("adds a dangerous"),
        "removals only"
    );
    writer.screenshot(&shots, "5-plan").await.unwrap();
    writer.click_to_navigate("#approve").await.unwrap();
    assert_eq!(writer.url().await.unwrap(), format!("{base}/ui/plans/{plan}"));
    assert!(writer.text("main p").await.unwrap().starts_with("applied"));
    // Applied: AD itself says so.
    for h in [ui01, ui02] {
        assert!(
            !reaches_ui03(&lab.read_host(&h.dn).await.unwrap().delegate),
            "{}",
            h.fqdn
        );
    }
    let _ = ui03;
    // … and the reader's page showed it without a reload.
    reader
        .wait_for(
            "the reader's page updated live",
            Duration::from_secs(10),
            "return document.body.dataset.refreshed !== undefined && document.querySelector('main h2 + p.hint') !== null",
        )
        .await
        .unwrap();
    reader.screenshot(&shots, "6-plans-live").await.unwrap();

    writer.goto(&format!("{base}/ui/audit?plan={plan}")).await.unwrap();
    assert_eq!(
        writer.count("table.audit tr").await.unwrap(),
        3,
        "a header and the two hosts written"
    );
    writer.screenshot(&shots, "7-audit").await.unwrap();
    writer.goto(&format!("{base}/ui/exposure")).await.unwrap();
    // The edges to UI03 went with the entries; UI03's own entries to the group (kcdsync does
    // not manage a host in no group) remain, as excess.
    let edges = writer
        .js(
            "return Array.from(document.querySelectorAll('table.edges tr.edge')).map(r => r.cells[1].innerText + ' -> ' + r.cells[2].innerText + ' ' + r.cells[0].innerText)",
            json!([]),
        )
        .await
        .unwrap();
    let mut edges: Vec<String> = serde_json::from_value(edges).unwrap();
    edges.sort();
    assert_eq!(
        edges,
        [
            "ui01.lab.test -> ui02.lab.test required",
            "ui02.lab.test -> ui01.lab.test required",
            "ui03.lab.test -> ui01.lab.test excess",
            "ui03.lab.test -> ui02.lab.test excess",
        ]
    );
    assert_eq!(writer.count("svg.graph line").await.unwrap(), 4);
    writer.screenshot(&shots, "8-exposure").await.unwrap();

    // Signing out ends the session: the next page asks to sign in again.
    writer.click_to_navigate("header button").await.unwrap();
    writer.goto(&format!("{base}/ui/")).await.unwrap();
    assert!(writer.url().await.unwrap().ends_with("/ui/login"));

    // Guessing tokens: after ten wrong ones from an address, even the right one is refused there
    // for a while.
    for _ in 0..10 {
        sign_in(&writer, &base, "guess-guess-guess-guess").await;
    }
    sign_in(&writer, &base, WRITE_TOKEN).await;
    assert!(writer.url().await.unwrap().ends_with("/ui/login"));
    assert!(
        writer
            .text("p.error")
            .await
            .unwrap()
            .starts_with("too many wrong sign-ins from this address")
    );

    reader.close().await.unwrap();
    writer.close().await.unwrap();
    running.stop().await;
}
