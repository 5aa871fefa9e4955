//! How answers are shown: `print` picks a table for people or pretty JSON for
//! scripts, and the helpers below turn proto enums, timestamps, findings and
//! plans into the words and JSON shapes every verb shares.

use kcdsync_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::Output;

/// Prints `json` or the table; the table is only built when it is shown.
pub fn print(output: Output, json: Value, table: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json).expect("json")),
        Output::Table => print!("{}", table()),
    }
}

/// Whether tables may use ANSI colour: only on a terminal, and not when
/// NO_COLOR is set to anything but "" (https://no-color.org).
pub fn colour(stdout_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// [`colour`] for this process's stdout and environment.
pub fn stdout_colour() -> bool {
    use std::io::IsTerminal;
    colour(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

/// A finding kind without its proto prefix (`protocol_transition_missing`);
/// the number when this kcdctl does not know the kind yet.
pub fn kind(k: i32) -> String {
    pb::FindingKind::try_from(k)
        .map(|k| k.as_str_name().trim_start_matches("FINDING_KIND_").to_lowercase())
        .unwrap_or_else(|_| k.to_string())
}

pub fn severity(s: i32) -> &'static str {
    match pb::Severity::try_from(s) {
        Ok(pb::Severity::Critical) => "critical",
        Ok(pb::Severity::Warning) => "warning",
        Ok(pb::Severity::Info) => "info",
        _ => "-",
    }
}

pub fn readiness(r: i32) -> &'static str {
    match pb::Readiness::try_from(r) {
        Ok(pb::Readiness::Ready) => "ready",
        Ok(pb::Readiness::NotReady) => "NOT READY",
        _ => "unknown",
    }
}

/// A plan state without its proto prefix (`pending_approval`); empty when unknown.
pub fn plan_state(s: i32) -> String {
    pb::PlanState::try_from(s)
        .map(|s| s.as_str_name().trim_start_matches("PLAN_STATE_").to_lowercase())
        .unwrap_or_default()
}

/// RFC 3339, or empty when the controller sent no time.
pub fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

pub fn finding_json(f: &pb::Finding) -> Value {
    let evidence: serde_json::Map<_, _> = f
        .evidence
        .iter()
        .map(|e| (e.key.clone(), Value::from(e.value.clone())))
        .collect();
    json!({
        "id": f.id, "kind": kind(f.kind), "severity": severity(f.severity), "hosts": f.hosts,
        "account": f.account, "summary": f.summary, "remediation": f.remediation, "automatic": f.automatic,
        "evidence": evidence,
    })
}

pub fn plan_json(p: &pb::Plan) -> Value {
    let changes: Vec<Value> = p
        .changes
        .iter()
        .map(|c| {
            json!({"host": c.host, "dn": c.dn, "uac_before": c.user_account_control_before,
                "uac_after": c.user_account_control_after, "add": c.add, "remove": c.remove, "reasons": c.reasons})
        })
        .collect();
    let edges = p.edge_diff.as_ref().map(|d| {
        let list = |v: &[pb::DelegationEdge]| v.iter().map(crate::verbs::edge_json).collect::<Vec<_>>();
        json!({"added": list(&d.added), "removed": list(&d.removed), "adds_dangerous": d.adds_dangerous})
    });
    json!({
        "id": p.id, "state": plan_state(p.state), "created_at": time(&p.created_at), "trigger": p.trigger,
        "gate_reasons": p.gate_reasons, "decided_by": p.decided_by, "changes": changes, "edge_diff": edges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_and_never_under_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "piped or redirected: plain text");
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(
            colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR does not count (no-color.org)"
        );
    }
}
