//! Human-readable tables for the CLI. JSON output uses serde directly.

use std::fmt::Write;

use crate::model::HostChange;
use crate::model::{TRUSTED_FOR_DELEGATION, TRUSTED_TO_AUTH_FOR_DELEGATION};
use crate::reconcile::{Decision, Outcome};
use crate::revocation::{AgentDetail, AgentRow};
use crate::store::{AuditRecord, ReplicationRecord, Revocation, StoredPlan};

fn uac_words(uac: u32) -> String {
    let mut w = vec![format!("0x{uac:x}")];
    if uac & TRUSTED_TO_AUTH_FOR_DELEGATION != 0 {
        w.push("any-protocol".into());
    } else {
        w.push("kerberos-only".into());
    }
    if uac & TRUSTED_FOR_DELEGATION != 0 {
        w.push("UNCONSTRAINED".into());
    }
    w.join(" ")
}

fn change_lines(c: &HostChange, held: bool, out: &mut String) {
    let tag = if held { "  [needs approval]" } else { "" };
    if let Some(after) = c.uac_after {
        let _ = writeln!(
            out,
            "    userAccountControl  {}  ->  {}",
            uac_words(c.uac_before),
            uac_words(after)
        );
    }
    for a in &c.add {
        let _ = writeln!(out, "    + {a}");
    }
    for r in &c.remove {
        let _ = writeln!(out, "    - {r}{tag}");
    }
}

/// The dry-run view: one block per host that differs.
pub fn decision(d: &Decision) -> String {
    let mut out = String::new();
    if d.plan.changes.is_empty() {
        out.push_str("No changes: every grouped host matches its desired delegation.\n");
    }
    let held: std::collections::HashSet<&str> = d.pending.iter().map(|c| c.dn.as_str()).collect();
    for c in &d.plan.changes {
        let _ = writeln!(out, "{}  [{}; {}]  {}", c.host, c.groups.join(","), c.mode, c.dn);
        change_lines(c, held.contains(c.dn.as_str()), &mut out);
    }
    if !d.plan.changes.is_empty() {
        let adds: usize = d.plan.changes.iter().map(|c| c.add.len()).sum();
        let removes: usize = d.plan.changes.iter().map(|c| c.remove.len()).sum();
        let uac = d.plan.changes.iter().filter(|c| c.uac_after.is_some()).count();
        let _ = writeln!(
            out,
            "\n{} hosts differ: {uac} userAccountControl changes, {adds} entries to add, {removes} to remove.",
            d.plan.changes.len()
        );
        if !d.not_enforced.is_empty() {
            let _ = writeln!(
                out,
                "{} of them are in observe/plan-mode groups and will not be written.",
                d.not_enforced.len()
            );
        }
        for r in &d.pending_reasons {
            let _ = writeln!(out, "Held for approval: {r}.");
        }
    }
    if !d.plan.findings.is_empty() {
        out.push_str("\nFindings:\n");
        for f in &d.plan.findings {
            let _ = writeln!(out, "  {:?}  {}  {}", f.kind, f.host(), f.summary);
        }
    }
    out
}

pub fn outcome(o: &Outcome) -> String {
    let mut out = String::new();
    match o.plan_id {
        Some(id) => {
            let _ = writeln!(
                out,
                "Plan {id}: wrote {} hosts, verified by reading them back.",
                o.applied.len()
            );
        }
        None => out.push_str("Nothing written.\n"),
    }
    for f in &o.failures {
        let _ = writeln!(out, "FAILED {}: {}", f.host, f.error);
    }
    if let Some(p) = o.pending_plan {
        let _ = writeln!(
            out,
            "Plan {p} waits for approval ({}). Review it with `kcdsync-controller plans --id {p}`, then run `kcdsync-controller apply --approve {p}`.",
            o.gate_reasons.join("; ")
        );
    }
    out
}

pub fn plans(plans: &[StoredPlan]) -> String {
    let mut out = String::from("ID     STATE              TRIGGER        HOSTS  CREATED\n");
    for p in plans {
        let _ = writeln!(
            out,
            "{:<6} {:<18} {:<14} {:<6} {}",
            p.id,
            p.state.as_str(),
            p.trigger,
            p.changes.len(),
            format_ms(p.created_at_ms)
        );
    }
    out
}

pub fn plan_detail(p: &StoredPlan) -> String {
    let mut out = format!(
        "Plan {} ({}), trigger {}, created {}\n",
        p.id,
        p.state,
        p.trigger,
        format_ms(p.created_at_ms)
    );
    for r in &p.gate_reasons {
        let _ = writeln!(out, "Held: {r}");
    }
    if let Some(n) = &p.note {
        let _ = writeln!(out, "Note: {n}");
    }
    for c in &p.changes {
        let _ = writeln!(out, "{}  {}", c.host, c.dn);
        change_lines(c, false, &mut out);
    }
    out
}

/// The audit, newest first; `replication[i]` says where `rows[i]`'s write has been seen
/// besides the DC it was made on (empty: no other DC is read).
pub fn audit(rows: &[AuditRecord], replication: &[Vec<ReplicationRecord>]) -> String {
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            out,
            "#{} {}  plan {}  {}  ({})",
            r.id,
            format_ms(r.time_ms),
            r.plan_id,
            r.host,
            r.trigger
        );
        if r.uac_before != r.uac_after {
            let _ = writeln!(
                out,
                "    userAccountControl  {}  ->  {}",
                uac_words(r.uac_before),
                uac_words(r.uac_after)
            );
        }
        let before: std::collections::BTreeSet<String> = r.delegate_before.iter().map(|s| s.to_lowercase()).collect();
        let after: std::collections::BTreeSet<String> = r.delegate_after.iter().map(|s| s.to_lowercase()).collect();
        for a in r.delegate_after.iter().filter(|s| !before.contains(&s.to_lowercase())) {
            let _ = writeln!(out, "    + {a}");
        }
        for d in r.delegate_before.iter().filter(|s| !after.contains(&s.to_lowercase())) {
            let _ = writeln!(out, "    - {d}");
        }
        if let Some(by) = &r.approved_by {
            let _ = writeln!(out, "    approved by {by}");
        }
        if !r.dc.is_empty() {
            let _ = writeln!(out, "    written on {}", r.dc);
        }
        for x in replication.get(i).into_iter().flatten() {
            let _ = writeln!(out, "    {}", replicated(x));
        }
    }
    if rows.is_empty() {
        out.push_str("The audit is empty.\n");
    }
    out
}

/// "since 2026-12-04T10:00:00Z by alice: key leaked"
pub fn revoked(r: &Revocation) -> String {
    let why = if r.reason.is_empty() {
        " (no reason given)".to_owned()
    } else {
        format!(": {}", r.reason)
    };
    format!("since {} by {}{why}", format_ms(r.revoked_at_ms), r.revoked_by)
}

/// `agents list`: one line per host, revoked ones marked with who, when and why.
pub fn agents(rows: &[AgentRow]) -> String {
    if rows.is_empty() {
        return "No agent has reported and none is revoked.\n".into();
    }
    let width = rows.iter().map(|r| r.host.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  {:<24}  STATE\n", "HOST", "LAST SEEN");
    for r in rows {
        let seen = r.last_seen_ms.map_or_else(|| "never".to_owned(), format_ms);
        let state = r
            .revoked
            .as_ref()
            .map_or_else(|| "allowed".to_owned(), |x| format!("REVOKED {}", revoked(x)));
        let _ = writeln!(out, "{:<width$}  {:<24}  {state}", r.host, seen);
    }
    out
}

/// `agents show HOST`.
pub fn agent_detail(a: &AgentDetail) -> String {
    let r = &a.row;
    let mut out = format!("Agent of {}\n", r.host);
    match &r.revoked {
        Some(x) => {
            let _ = writeln!(out, "  state:      REVOKED {}", revoked(x));
            let _ = writeln!(
                out,
                "              refused by every controller sharing this store; undo: kcdsync-controller agents unrevoke {}",
                r.host
            );
        }
        None => out.push_str("  state:      allowed\n"),
    }
    let seen = r.last_seen_ms.map_or_else(|| "never".to_owned(), format_ms);
    let _ = writeln!(out, "  last seen:  {seen}");
    if let Some(at) = a.last_report_ms {
        let _ = writeln!(out, "  last report: {}", format_ms(at));
    }
    if let (Some(caption), Some(build)) = (&a.os_caption, a.os_build) {
        let _ = writeln!(out, "  os:         {caption} (build {build})");
    }
    if !a.history.is_empty() {
        out.push_str("  history (newest first):\n");
        for e in &a.history {
            let _ = writeln!(out, "    {}", event_line(e, false));
        }
    }
    out
}

/// The audit trail's events that are not AD changes (agents revoked and unrevoked), newest
/// first, after the AD changes in `kcdsync-controller audit`.
pub fn audit_events(events: &[crate::store::AuditEvent]) -> String {
    let mut out = String::from("Agent events (newest first):\n");
    for e in events {
        let _ = writeln!(out, "  {}", event_line(e, true));
    }
    out
}

fn event_line(e: &crate::store::AuditEvent, with_host: bool) -> String {
    format!(
        "{}  {}  {}by {}{}",
        format_ms(e.time_ms),
        e.kind,
        if with_host {
            format!("{}  ", e.host)
        } else {
            String::new()
        },
        e.actor,
        if e.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", e.detail)
        }
    )
}

/// "replicated to dc2.lab.test after 3.1 s", or that it has not been seen there.
pub fn replicated(x: &ReplicationRecord) -> String {
    match x.lag_ms() {
        Some(ms) => format!("replicated to {} after {:.1} s", x.dc, ms as f64 / 1000.0),
        None => format!("not seen on {} yet", x.dc),
    }
}

pub fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}
