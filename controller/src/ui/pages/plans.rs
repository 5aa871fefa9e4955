//! `/ui/plans`: plans waiting for approval and recent ones; `/ui/plans/{id}`:
//! the host-by-host diff and the security-edge diff, with approve and reject
//! for the write role. Approving goes through ApprovePlan: the reconciler
//! applies the plan only if AD still matches it.

use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use kcdsync_proto::v1 as pb;
use kcdsync_proto::v1::fleet_service_server::FleetService;

use super::edge_table;
use crate::config::Role;
use crate::ui::html::{self, Nav, esc};
use crate::ui::session::Session;
use crate::ui::{Form, Page, Ui, Visitor, answer};

/// How long an approval waits for its reconcile before the page says it goes on.
const APPROVE_WAIT: &str = "30S";

fn state_name(s: i32) -> String {
    pb::PlanState::try_from(s).map_or_else(
        |_| "unknown".to_owned(),
        |s| {
            s.as_str_name()
                .trim_start_matches("PLAN_STATE_")
                .to_lowercase()
                .replace('_', " ")
        },
    )
}

fn rows(plans: &[pb::Plan]) -> String {
    let mut h = String::from(
        "<table class=\"plans\"><tr><th>plan</th><th>state</th><th>created</th><th>trigger</th><th>hosts</th><th>why held</th></tr>",
    );
    for p in plans {
        let danger = p.edge_diff.as_ref().is_some_and(|d| d.adds_dangerous);
        let _ = write!(
            h,
            "<tr><td><a href=\"/ui/plans/{0}\">{0}</a></td><td>{1}{2}</td><td>{3}</td><td>{4}</td><td>{5}</td><td>{6}</td></tr>",
            esc(&p.id),
            esc(&state_name(p.state)),
            if danger {
                " ".to_owned() + &html::badge("dangerous", "adds a dangerous edge")
            } else {
                String::new()
            },
            html::when(p.created_at.as_ref()),
            esc(&p.trigger),
            p.changes.len(),
            esc(&p.gate_reasons.join("; "))
        );
    }
    h.push_str("</table>");
    h
}

pub async fn list(State(ui): State<Ui>, v: Visitor) -> Page {
    let s = v.reader()?;
    let mut b = String::new();
    for (title, state, size) in [
        ("Waiting for approval", pb::PlanState::PendingApproval, 100),
        ("Recent plans", pb::PlanState::Unspecified, 25),
    ] {
        let plans = answer(
            s,
            ui.api
                .list_plans(Ui::request(
                    &s.who,
                    pb::ListPlansRequest {
                        state: state as i32,
                        page_size: size,
                        page_token: String::new(),
                    },
                ))
                .await,
        )?
        .plans;
        let _ = write!(b, "<h2>{title}</h2>");
        if plans.is_empty() {
            b.push_str("<p class=\"hint\">None.</p>");
        } else {
            b.push_str(&rows(&plans));
        }
    }
    Ok(html::page("Plans", Nav::Plans, Some(s), &b))
}

pub async fn show(State(ui): State<Ui>, v: Visitor, Path(id): Path<String>) -> Page {
    let s = v.reader()?;
    let p = answer(s, ui.api.get_plan(Ui::request(&s.who, pb::GetPlanRequest { id })).await)?;
    Ok(html::page(
        &format!("Plan {}", p.id),
        Nav::Plans,
        Some(s),
        &detail(&p, s),
    ))
}

fn detail(p: &pb::Plan, s: &Session) -> String {
    let mut b = format!(
        "<p>{} · created {} · trigger <code>{}</code>{}</p>",
        html::badge("info", &state_name(p.state)),
        html::when(p.created_at.as_ref()),
        esc(&p.trigger),
        if p.decided_by.is_empty() {
            String::new()
        } else {
            format!(
                " · decided by {} at {}",
                esc(&p.decided_by),
                html::when(p.decided_at.as_ref())
            )
        }
    );
    if !p.gate_reasons.is_empty() {
        let _ = write!(
            b,
            "<p>Held for approval because: {}</p>",
            esc(&p.gate_reasons.join("; "))
        );
    }
    b.push_str("<h2>Changes, host by host</h2><table class=\"changes\"><tr><th>host</th><th>userAccountControl</th><th>msDS-AllowedToDelegateTo</th><th>why</th></tr>");
    for c in &p.changes {
        let uac = match c.user_account_control_after {
            Some(after) => format!("0x{:x} → 0x{after:x}", c.user_account_control_before),
            None => format!("0x{:x} (unchanged)", c.user_account_control_before),
        };
        let mut spns = String::new();
        for a in &c.add {
            let _ = write!(spns, "<div class=\"diff-add mono\">+ {}</div>", esc(a));
        }
        for r in &c.remove {
            let _ = write!(spns, "<div class=\"diff-remove mono\">− {}</div>", esc(r));
        }
        let _ = write!(
            b,
            "<tr><td class=\"mono\">{}</td><td class=\"mono\">{uac}</td><td>{spns}</td><td>{}</td></tr>",
            esc(&c.host),
            esc(&c.reasons.join("; "))
        );
    }
    b.push_str("</table>");
    if let Some(d) = &p.edge_diff {
        b.push_str("<h2>Security edges</h2>");
        if d.adds_dangerous {
            b.push_str("<p class=\"error\">This plan adds a dangerous delegation edge.</p>");
        }
        for (title, edges) in [("Added", &d.added), ("Removed", &d.removed)] {
            let _ = write!(b, "<h3>{title} ({})</h3>", edges.len());
            if !edges.is_empty() {
                b.push_str(&edge_table(edges));
            }
        }
    }
    if p.state == pb::PlanState::PendingApproval as i32 {
        if s.who.role >= Role::Write {
            let _ = write!(
                b,
                "<h2>Decide</h2><form method=\"post\" action=\"/ui/plans/{0}/approve\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{1}\"><button type=\"submit\" class=\"approve\" id=\"approve\">Approve and apply</button></form>\
                 <form method=\"post\" action=\"/ui/plans/{0}/reject\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{1}\"><input name=\"comment\" placeholder=\"why (optional)\" maxlength=\"256\">\
                 <button type=\"submit\" class=\"reject\" id=\"reject\">Reject</button></form>",
                esc(&p.id),
                esc(&s.csrf)
            );
        } else {
            b.push_str("<p class=\"hint\">Approving or rejecting needs the write role.</p>");
        }
    }
    b
}

pub async fn approve(State(ui): State<Ui>, v: Visitor, Path(id): Path<String>, body: Bytes) -> Page {
    let form = Form::parse(&body);
    let s = v.changer(&form, Role::Write, "approving a plan")?;
    let mut req = Ui::request(
        &s.who,
        pb::ApprovePlanRequest {
            id: id.clone(),
            comment: String::new(),
        },
    );
    req.metadata_mut()
        .insert("grpc-timeout", APPROVE_WAIT.parse().expect("static"));
    answer(s, ui.api.approve_plan(req).await)?;
    Ok(decided(&id))
}

pub async fn reject(State(ui): State<Ui>, v: Visitor, Path(id): Path<String>, body: Bytes) -> Page {
    let form = Form::parse(&body);
    let s = v.changer(&form, Role::Write, "rejecting a plan")?;
    let comment = form.text("comment").unwrap_or("").to_owned();
    if form.get("comment").is_some_and(|c| c.chars().count() > 256) {
        return Err(html::error(
            StatusCode::BAD_REQUEST,
            Some(s),
            "the comment is longer than 256 characters",
        ));
    }
    let request = Ui::request(
        &s.who,
        pb::RejectPlanRequest {
            id: id.clone(),
            comment,
        },
    );
    answer(s, ui.api.reject_plan(request).await)?;
    Ok(decided(&id))
}

/// After a decision, the plan's page (POST, then redirect, then GET).
fn decided(id: &str) -> Response {
    let to = format!("/ui/plans/{}", crate::ui::html::q(id));
    let mut r = Redirect::to(&to).into_response();
    html::secure_headers(r.headers_mut());
    r
}
