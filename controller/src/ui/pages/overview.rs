//! `/ui/`: the fleet at a glance — hosts by readiness per group, findings by
//! kind, agents connected, the last observe, plans waiting, recent changes.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

use axum::extract::State;
use kcdsync_proto::v1 as pb;
use kcdsync_proto::v1::fleet_service_server::FleetService;

use crate::model::Severity;
use crate::ui::html::{self, Nav, esc, q};
use crate::ui::{Page, Ui, Visitor, answer};
use crate::view::View;

/// Not-ready hosts listed by name at most (the rest are counted).
const LISTED: usize = 50;

/// Hosts by readiness, one row per configured group, from the published view (one pass).
struct GroupRow {
    name: String,
    mode: String,
    hosts: usize,
    not_ready: Vec<String>,
}

fn groups(view: &View) -> Vec<GroupRow> {
    let snap = &view.snapshot;
    let blocked: HashSet<String> = view
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Critical)
        .flat_map(|f| f.hosts.iter().map(|h| h.to_lowercase()))
        .collect();
    view.cfg
        .groups
        .iter()
        .map(|g| {
            let m = g.resolve(&snap.observed, &snap.index);
            let mut not_ready: Vec<String> = m
                .computers
                .iter()
                .chain(&m.refused)
                .map(|&i| crate::grpc::fleet::shown_name(view, &snap.observed.computers[i]))
                .filter(|n| blocked.contains(&n.to_lowercase()))
                .collect();
            not_ready.extend(m.missing.iter().map(|h| h.to_string()));
            not_ready.sort();
            GroupRow {
                name: g.name.clone(),
                mode: format!("{:?}", g.mode).to_lowercase(),
                hosts: m.computers.len() + m.refused.len() + m.missing.len(),
                not_ready,
            }
        })
        .collect()
}

pub async fn show(State(ui): State<Ui>, v: Visitor) -> Page {
    let s = v.reader()?;
    let view = ui.api.state.view();
    let rows = groups(&view);
    let pending = answer(
        s,
        ui.api
            .list_plans(Ui::request(
                &s.who,
                pb::ListPlansRequest {
                    state: pb::PlanState::PendingApproval as i32,
                    page_size: 100,
                    page_token: String::new(),
                },
            ))
            .await,
    )?
    .plans;
    let recent = answer(
        s,
        ui.api
            .list_audit(Ui::request(
                &s.who,
                pb::ListAuditRequest {
                    page_size: 10,
                    ..Default::default()
                },
            ))
            .await,
    )?
    .entries;

    let day_ago = crate::store::now_ms() - 24 * 3600 * 1000;
    let changed = match ui.api.state.store.audit_count_since(day_ago).await {
        Ok(n) => n.to_string(),
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: cannot count the day's changes");
            "—".to_owned()
        }
    };
    let agents = ui.api.state.hub.as_ref().map(|h| h.connected_hosts().len());
    let mut b = cards(&rows, pending.len(), agents, &changed, view.snapshot.taken_ms);
    b.push_str(&groups_table(&rows));
    b.push_str(&findings_table(&view));
    b.push_str("<h2>Recent changes to AD</h2>");
    if recent.is_empty() {
        b.push_str("<p class=\"hint\">kcdsync has not changed AD yet.</p>");
    } else {
        b.push_str(&super::audit::table(&recent));
        b.push_str("<p><a href=\"/ui/audit\">The whole audit trail →</a></p>");
    }
    Ok(html::page("Fleet overview", Nav::Overview, Some(s), &b))
}

/// The numbers at the top.
fn cards(rows: &[GroupRow], pending: usize, agents: Option<usize>, changed: &str, taken_ms: i64) -> String {
    let total: usize = rows.iter().map(|r| r.hosts).sum();
    let not_ready: usize = rows.iter().map(|r| r.not_ready.len()).sum();
    let mut b = String::from("<div class=\"cards\">");
    let card = |b: &mut String, n: &str, label: &str, class: &str| {
        let _ = write!(
            b,
            "<div class=\"card {class}\"><div class=\"n\">{n}</div><div class=\"l\">{label}</div></div>"
        );
    };
    card(&mut b, &(total - not_ready).to_string(), "hosts ready", "ready");
    card(
        &mut b,
        &not_ready.to_string(),
        "hosts not ready",
        if not_ready > 0 { "not-ready" } else { "" },
    );
    card(
        &mut b,
        &pending.to_string(),
        "plans waiting for approval",
        if pending == 0 { "" } else { "warning" },
    );
    card(
        &mut b,
        &agents.map_or("—".to_owned(), |n| n.to_string()),
        "agents connected",
        "",
    );
    card(&mut b, changed, "hosts changed in AD in 24 h", "");
    card(&mut b, &esc(&html::when_ms(taken_ms)), "last read of AD", "");
    b.push_str("</div>");

    b
}

/// Hosts by readiness, one row per group (the not-ready ones by name).
fn groups_table(rows: &[GroupRow]) -> String {
    let mut b = String::new();
    b.push_str("<h2>Hosts by group</h2><table class=\"groups\"><tr><th>group</th><th>mode</th><th>hosts</th><th>not ready</th></tr>");
    for r in rows {
        let mut names: Vec<String> = r.not_ready.iter().take(LISTED).map(|n| esc(n)).collect();
        if r.not_ready.len() > LISTED {
            names.push(format!("and {} more", r.not_ready.len() - LISTED));
        }
        let _ = write!(
            b,
            "<tr><td><a href=\"/ui/matrix?group={}\">{}</a></td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            q(&r.name),
            esc(&r.name),
            esc(&r.mode),
            r.hosts,
            if r.not_ready.is_empty() { "ready" } else { "not-ready" },
            if r.not_ready.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    b.push_str("</table>");

    b
}

/// Findings counted by kind, the most severe first.
fn findings_table(view: &View) -> String {
    let mut b = String::new();
    let mut kinds: BTreeMap<(u8, String), usize> = BTreeMap::new();
    for f in &view.findings {
        let rank = match f.severity {
            Severity::Critical => 0,
            Severity::Warning => 1,
            _ => 2,
        };
        *kinds.entry((rank, format!("{:?}", f.kind))).or_default() += 1;
    }
    b.push_str("<h2>Findings by kind</h2>");
    if kinds.is_empty() {
        b.push_str("<p class=\"ready\">No findings.</p>");
    } else {
        b.push_str("<table class=\"findings\"><tr><th>kind</th><th>severity</th><th>count</th></tr>");
        for ((rank, kind), n) in kinds {
            let sev = ["critical", "warning", "info"][rank as usize];
            let _ = write!(
                b,
                "<tr><td>{}</td><td class=\"{sev}\">{sev}</td><td>{n}</td></tr>",
                esc(&kind)
            );
        }
        b.push_str("</table>");
    }

    b
}
