//! `/ui/audit`: every change kcdsync made to AD, newest first, filtered by
//! host or plan, paged by the API's keyset token.

use std::fmt::Write;

use axum::extract::{RawQuery, State};
use kcdsync_proto::v1 as pb;
use kcdsync_proto::v1::fleet_service_server::FleetService;

use crate::ui::html::{self, Nav, esc, q};
use crate::ui::{Form, Page, Ui, Visitor, answer};

const PAGE: u32 = 50;

/// Audit entries as a table (also the overview's "recent changes").
pub fn table(entries: &[pb::AuditEntry]) -> String {
    let mut h = String::from(
        "<table class=\"audit\"><tr><th>time</th><th>host</th><th>plan</th><th>trigger</th><th>userAccountControl</th>\
         <th>delegation after</th><th>why</th><th>approved by</th><th>written on</th></tr>",
    );
    for e in entries {
        let uac = if e.user_account_control_before == e.user_account_control_after {
            format!("0x{:x}", e.user_account_control_after)
        } else {
            format!(
                "0x{:x} → 0x{:x}",
                e.user_account_control_before, e.user_account_control_after
            )
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"mono\"><a href=\"/ui/audit?host={}\">{}</a></td><td><a href=\"/ui/plans/{}\">{}</a></td>\
             <td><code>{}</code></td><td class=\"mono\">{uac}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            html::when(e.time.as_ref()),
            q(&e.host),
            esc(&e.host),
            q(&e.plan_id),
            esc(&e.plan_id),
            esc(&e.trigger),
            e.delegate_after.len(),
            esc(&e.reasons.join("; ")),
            esc(&e.approved_by),
            esc(&e.written_on)
        );
    }
    h.push_str("</table>");
    h
}

pub async fn show(State(ui): State<Ui>, v: Visitor, RawQuery(query): RawQuery) -> Page {
    let s = v.reader()?;
    let f = Form::query(query.as_deref());
    let (host, plan, page) = (
        f.text("host").unwrap_or(""),
        f.text("plan").unwrap_or(""),
        f.text("page").unwrap_or(""),
    );
    let r = answer(
        s,
        ui.api
            .list_audit(Ui::request(
                &s.who,
                pb::ListAuditRequest {
                    host: host.to_owned(),
                    plan_id: plan.to_owned(),
                    page_size: PAGE,
                    page_token: page.to_owned(),
                },
            ))
            .await,
    )?;
    let mut b = format!(
        "<form method=\"get\" action=\"/ui/audit\" class=\"filters\"><label>host <input name=\"host\" value=\"{}\"></label>\
         <label>plan <input name=\"plan\" value=\"{}\" size=\"6\"></label><button type=\"submit\">Filter</button> \
         <a href=\"/ui/audit\">clear</a></form>",
        esc(host),
        esc(plan)
    );
    if r.entries.is_empty() {
        b.push_str("<p class=\"hint\">No changes match.</p>");
    } else {
        b.push_str(&table(&r.entries));
    }
    if !r.next_page_token.is_empty() {
        let _ = write!(
            b,
            "<p class=\"pager\"><a href=\"/ui/audit?host={}&amp;plan={}&amp;page={}\">Older →</a></p>",
            q(host),
            q(plan),
            q(&r.next_page_token)
        );
    }
    Ok(html::page("Audit trail", Nav::Audit, Some(s), &b))
}
