//! `/ui/matrix`: the readiness matrix of one group for one account, as a
//! coloured grid; `/ui/check`: one cell — the blocking findings with their
//! evidence and remediation.

use std::fmt::Write;

use axum::extract::{RawQuery, State};
use kcdsync_proto::v1 as pb;
use kcdsync_proto::v1::fleet_service_server::FleetService;

use super::{finding, kind_name, readiness};
use crate::ui::html::{self, Nav, esc, q};
use crate::ui::{Form, Page, Ui, Visitor, answer};

/// The group and account pickers (GET, so a matrix has a URL to share).
fn pickers(groups: &[String], group: Option<&str>, account: Option<&str>) -> String {
    let mut h = String::from(
        "<form method=\"get\" action=\"/ui/matrix\" class=\"filters\"><label>group <select name=\"group\">",
    );
    for g in groups {
        let sel = if Some(g.as_str()) == group { " selected" } else { "" };
        let _ = write!(h, "<option value=\"{0}\"{sel}>{0}</option>", esc(g));
    }
    let _ = write!(
        h,
        "</select></label><label>as account <input name=\"account\" value=\"{}\" placeholder=\"sAMAccountName or UPN\" required></label>\
         <button type=\"submit\">Show</button></form>",
        esc(account.unwrap_or(""))
    );
    h
}

pub async fn show(State(ui): State<Ui>, v: Visitor, RawQuery(query): RawQuery) -> Page {
    let s = v.reader()?;
    let form = Form::query(query.as_deref());
    let groups: Vec<String> = ui.api.state.view().cfg.groups.iter().map(|g| g.name.clone()).collect();
    let group = form.text("group").or(groups.first().map(String::as_str));
    let account = form.text("account");
    let mut b = pickers(&groups, group, account);
    let (Some(group), Some(account)) = (group, account) else {
        b.push_str("<p class=\"hint\">Pick a group and the account that runs <code>Move-VM</code> (the user whose ticket is delegated).</p>");
        return Ok(html::page("Readiness matrix", Nav::Matrix, Some(s), &b));
    };
    let m = answer(
        s,
        ui.api
            .readiness_matrix(Ui::request(
                &s.who,
                pb::ReadinessMatrixRequest {
                    group: group.to_owned(),
                    account: account.to_owned(),
                },
            ))
            .await,
    )?;
    b.push_str(&grid(&m, account));
    Ok(html::page("Readiness matrix", Nav::Matrix, Some(s), &b))
}

/// Rows are sources, columns destinations; each cell links to its check.
fn grid(m: &pb::ReadinessMatrixResponse, account: &str) -> String {
    let (ready, blocked) = m.cells.iter().fold((0, 0), |(r, b), c| match readiness(c.readiness).0 {
        "ready" => (r + 1, b),
        _ => (r, b + 1),
    });
    let mut h = format!(
        "<p>{} hosts, {} pairs: <span class=\"ready\">{ready} ready</span>, <span class=\"not-ready\">{blocked} not ready</span>. \
         Rows migrate to columns; click a cell for why.</p><table class=\"matrix\"><tr><th>source ↓ / destination →</th>",
        m.hosts.len(),
        m.cells.len()
    );
    for d in &m.hosts {
        let _ = write!(h, "<th class=\"d\">{}</th>", esc(short(d)));
    }
    h.push_str("</tr>");
    let mut cells = m.cells.iter();
    for src in &m.hosts {
        let _ = write!(h, "<tr><th>{}</th>", esc(short(src)));
        for dst in &m.hosts {
            if src == dst {
                h.push_str("<td class=\"self\"></td>");
                continue;
            }
            // Cells come source-major, skipping the diagonal; look the pair up
            // rather than trust the order.
            let cell = cells
                .next()
                .filter(|c| &c.source == src && &c.destination == dst)
                .or_else(|| m.cells.iter().find(|c| &c.source == src && &c.destination == dst));
            let Some(c) = cell else {
                h.push_str("<td class=\"cell-unknown\"></td>");
                continue;
            };
            let (class, word) = readiness(c.readiness);
            let why: Vec<String> = c.reasons.iter().map(|k| kind_name(*k)).collect();
            let title = if why.is_empty() {
                word.to_owned()
            } else {
                format!("{word}: {}", why.join(", "))
            };
            let _ = write!(
                h,
                "<td class=\"cell-{class}\" data-source=\"{}\" data-destination=\"{}\"><a href=\"/ui/check?source={}&amp;destination={}&amp;account={}\" title=\"{} → {}: {}\">{}</a></td>",
                esc(src),
                esc(dst),
                q(src),
                q(dst),
                q(account),
                esc(src),
                esc(dst),
                esc(&title),
                if class == "ready" { "✓" } else { "✗" }
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}

/// The host's first label: matrices are read by host name.
fn short(fqdn: &str) -> &str {
    fqdn.split('.').next().unwrap_or(fqdn)
}

pub async fn check(State(ui): State<Ui>, v: Visitor, RawQuery(query): RawQuery) -> Page {
    let s = v.reader()?;
    let form = Form::query(query.as_deref());
    let (Some(src), Some(dst), Some(account)) = (form.text("source"), form.text("destination"), form.text("account"))
    else {
        return Err(html::error(
            axum::http::StatusCode::BAD_REQUEST,
            Some(s),
            "a check needs source, destination and account (open it from the readiness matrix)",
        ));
    };
    let initiator = form.text("initiator").unwrap_or("");
    let r = answer(
        s,
        ui.api
            .check_migration(Ui::request(
                &s.who,
                pb::CheckMigrationRequest {
                    source: src.to_owned(),
                    destination: dst.to_owned(),
                    account: account.to_owned(),
                    initiator: initiator.to_owned(),
                },
            ))
            .await,
    )?;
    let (class, word) = readiness(r.readiness);
    let mut b = format!(
        "<p class=\"verdict\">{} <span class=\"mono\">{}</span> → <span class=\"mono\">{}</span> as <span class=\"mono\">{}</span></p><p>{}</p>",
        html::badge(class, word),
        esc(src),
        esc(dst),
        esc(account),
        esc(&r.summary)
    );
    // Move-VM run from another machine (a management gateway) needs that machine's delegation too.
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/ui/check\" class=\"filters\"><input type=\"hidden\" name=\"source\" value=\"{}\">\
         <input type=\"hidden\" name=\"destination\" value=\"{}\"><input type=\"hidden\" name=\"account\" value=\"{}\">\
         <label>Move-VM runs on <input name=\"initiator\" value=\"{}\" placeholder=\"the source (default)\"></label>\
         <button type=\"submit\">Check again</button></form>",
        esc(src),
        esc(dst),
        esc(account),
        esc(initiator)
    );
    if !r.blocking.is_empty() {
        b.push_str("<h2>Blocking</h2>");
        b.extend(r.blocking.iter().map(finding));
    }
    if !r.warnings.is_empty() {
        b.push_str("<h2>Warnings</h2>");
        b.extend(r.warnings.iter().map(finding));
    }
    Ok(html::page("Can this migration authenticate?", Nav::Matrix, Some(s), &b))
}
