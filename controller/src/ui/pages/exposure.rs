//! `/ui/exposure`: who can impersonate whom, to what — the counts by class,
//! a graph of the page's edges (hosts as nodes, dangerous edges thick and
//! red), and the edges as a table, filtered by class or host.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::{RawQuery, State};
use kcdsync_proto::v1 as pb;
use kcdsync_proto::v1::fleet_service_server::FleetService;

use super::{edge_class, edge_table};
use crate::ui::html::{self, Nav, esc, q};
use crate::ui::{Form, Page, Ui, Visitor, answer};

const PAGE: u32 = 200;

pub async fn show(State(ui): State<Ui>, v: Visitor, RawQuery(query): RawQuery) -> Page {
    let s = v.reader()?;
    let f = Form::query(query.as_deref());
    let class = match f.get("class").unwrap_or("") {
        "required" => pb::EdgeClass::Required,
        "excess" => pb::EdgeClass::Excess,
        "dangerous" => pb::EdgeClass::Dangerous,
        _ => pb::EdgeClass::Unspecified,
    };
    let (host, page) = (f.text("host").unwrap_or(""), f.text("page").unwrap_or(""));
    let r = answer(
        s,
        ui.api
            .get_exposure(Ui::request(
                &s.who,
                pb::GetExposureRequest {
                    class: class as i32,
                    host: host.to_owned(),
                    page_size: PAGE,
                    page_token: page.to_owned(),
                },
            ))
            .await,
    )?;
    let mut b = String::from("<div class=\"cards\">");
    for (n, word, class) in [
        (r.required, "required", "ready"),
        (r.excess, "excess", "excess"),
        (r.dangerous, "dangerous", "dangerous"),
    ] {
        let _ = write!(
            b,
            "<a class=\"card {class}\" href=\"/ui/exposure?class={word}\"><div class=\"n\">{n}</div><div class=\"l\">{word} edges</div></a>"
        );
    }
    b.push_str("</div>");
    if !r.privileged_impersonable.is_empty() {
        let _ = write!(
            b,
            "<p class=\"error\">Privileged accounts every protocol-transition edge can impersonate (neither sensitive nor in Protected Users): {}</p>",
            esc(&r.privileged_impersonable.join(", "))
        );
    }
    if !r.unreadable.is_empty() {
        let _ = write!(
            b,
            "<p class=\"warning\">RBCD descriptors that could not be read: {}</p>",
            esc(&r.unreadable.join("; "))
        );
    }
    let sel = |c: pb::EdgeClass| if c == class { " selected" } else { "" };
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/ui/exposure\" class=\"filters\"><label>class <select name=\"class\">\
         <option value=\"\">all</option><option{} value=\"required\">required</option><option{} value=\"excess\">excess</option>\
         <option{} value=\"dangerous\">dangerous</option></select></label><label>host <input name=\"host\" value=\"{}\"></label>\
         <button type=\"submit\">Filter</button></form>",
        sel(pb::EdgeClass::Required),
        sel(pb::EdgeClass::Excess),
        sel(pb::EdgeClass::Dangerous),
        esc(host)
    );
    if r.edges.is_empty() {
        b.push_str("<p class=\"hint\">No delegation edges match.</p>");
    } else {
        b.push_str(&graph(&r.edges));
        b.push_str(&edge_table(&r.edges));
    }
    if !r.next_page_token.is_empty() {
        let _ = write!(
            b,
            "<p class=\"pager\"><a href=\"/ui/exposure?class={}&amp;host={}&amp;page={}\">Next {PAGE} edges →</a></p>",
            q(f.get("class").unwrap_or("")),
            q(host),
            q(&r.next_page_token)
        );
    }
    Ok(html::page("Delegation exposure", Nav::Exposure, Some(s), &b))
}

/// Hosts on a circle, one line per edge; dangerous edges drawn last (on top).
fn graph(edges: &[pb::DelegationEdge]) -> String {
    let mut nodes: BTreeMap<&str, usize> = BTreeMap::new();
    for e in edges {
        for n in [e.source.as_str(), e.target.as_str()] {
            let next = nodes.len();
            nodes.entry(n).or_insert(next);
        }
    }
    let n = nodes.len().max(1) as f64;
    let radius = (120.0 + n * 9.0).min(520.0);
    let size = 2.0 * radius + 260.0;
    let c = size / 2.0;
    let at = |i: usize| {
        let a = i as f64 / n * std::f64::consts::TAU - std::f64::consts::FRAC_PI_2;
        (c + radius * a.cos(), c + radius * a.sin())
    };
    let mut h = format!(
        "<svg class=\"graph\" viewBox=\"0 0 {size:.0} {size:.0}\" width=\"{size:.0}\" height=\"{size:.0}\" role=\"img\" aria-label=\"delegation edges\">"
    );
    h.push_str("<defs>");
    for class in ["required", "excess", "dangerous", "unknown"] {
        let _ = write!(
            h,
            "<marker id=\"arrow-{class}\" class=\"edge-{class}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\"/></marker>"
        );
    }
    h.push_str("</defs>");
    let mut sorted: Vec<&pb::DelegationEdge> = edges.iter().collect();
    sorted.sort_by_key(|e| e.class);
    for e in sorted {
        let ((x1, y1), (x2, y2)) = (at(nodes[e.source.as_str()]), at(nodes[e.target.as_str()]));
        // Each direction drawn a little to its own right, so A→B and B→A are two lines,
        // and ended at the target circle's edge, so the arrowhead shows.
        let (dx, dy) = (x2 - x1, y2 - y1);
        let len = (dx * dx + dy * dy).sqrt().max(1.0);
        let (ux, uy) = (dx / len, dy / len);
        let (ox, oy) = (-uy * 3.0, ux * 3.0);
        let (x1, y1, x2, y2) = (
            x1 + ox + ux * 6.0,
            y1 + oy + uy * 6.0,
            x2 + ox - ux * 7.0,
            y2 + oy - uy * 7.0,
        );
        let (class, word) = edge_class(e.class);
        let _ = write!(
            h,
            "<line class=\"edge-{class}\" marker-end=\"url(#arrow-{class})\" x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\"><title>{} → {} ({word})</title></line>",
            esc(&e.source),
            esc(&e.target)
        );
    }
    let dangerous_targets: std::collections::HashSet<&str> = edges
        .iter()
        .filter(|e| e.class == pb::EdgeClass::Dangerous as i32)
        .map(|e| e.target.as_str())
        .collect();
    for (name, &i) in &nodes {
        let (x, y) = at(i);
        let class = if dangerous_targets.contains(name) {
            "node node-dc"
        } else {
            "node"
        };
        let label = name.split('.').next().unwrap_or(name);
        let _ = write!(
            h,
            "<g><circle class=\"{class}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\"><title>{}</title></circle>\
             <text class=\"label\" x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            esc(name),
            x + 7.0,
            y + 3.0,
            esc(label)
        );
    }
    h.push_str("</svg>");
    h
}
