//! One module per page; what they share: findings, readiness and edge classes
//! as HTML.

pub mod audit;
pub mod exposure;
pub mod matrix;
pub mod overview;
pub mod plans;

use std::fmt::Write;

use kcdsync_proto::v1 as pb;

use super::html::esc;

/// A finding with its evidence and remediation.
pub fn finding(f: &pb::Finding) -> String {
    let sev = severity_class(f.severity);
    let mut h = format!(
        "<div class=\"finding {sev}\"><strong>{}</strong> <span class=\"hint\">{} · {}</span><br>{}",
        esc(&kind_name(f.kind)),
        esc(&f.hosts.join(", ")),
        sev,
        esc(&f.summary)
    );
    if !f.evidence.is_empty() {
        h.push_str("<dl>");
        for e in &f.evidence {
            let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", esc(&e.key), esc(&e.value));
        }
        h.push_str("</dl>");
    }
    if !f.remediation.is_empty() {
        let who = if f.automatic {
            "kcdsync fixes this in enforce mode"
        } else {
            "to do"
        };
        let _ = write!(h, "<p><em>{who}:</em> {}</p>", esc(&f.remediation));
    }
    h.push_str("</div>");
    h
}

pub fn kind_name(k: i32) -> String {
    pb::FindingKind::try_from(k).map_or_else(
        |_| format!("kind {k}"),
        |k| {
            k.as_str_name()
                .trim_start_matches("FINDING_KIND_")
                .to_lowercase()
                .replace('_', " ")
        },
    )
}

pub fn severity_class(s: i32) -> &'static str {
    match pb::Severity::try_from(s) {
        Ok(pb::Severity::Critical) => "critical",
        Ok(pb::Severity::Warning) => "warning",
        _ => "info",
    }
}

/// The CSS class and word for a readiness.
pub fn readiness(r: i32) -> (&'static str, &'static str) {
    match pb::Readiness::try_from(r) {
        Ok(pb::Readiness::Ready) => ("ready", "ready"),
        Ok(pb::Readiness::NotReady) => ("not-ready", "not ready"),
        _ => ("unknown", "unknown"),
    }
}

/// The CSS class and word for an edge class.
pub fn edge_class(c: i32) -> (&'static str, &'static str) {
    match pb::EdgeClass::try_from(c) {
        Ok(pb::EdgeClass::Required) => ("required", "required"),
        Ok(pb::EdgeClass::Excess) => ("excess", "excess"),
        Ok(pb::EdgeClass::Dangerous) => ("dangerous", "dangerous"),
        _ => ("unknown", "unclassified"),
    }
}

pub fn edge_via(v: i32) -> &'static str {
    match pb::EdgeVia::try_from(v) {
        Ok(pb::EdgeVia::KerberosOnly) => "Kerberos only",
        Ok(pb::EdgeVia::ProtocolTransition) => "protocol transition",
        Ok(pb::EdgeVia::Rbcd) => "RBCD",
        _ => "unknown",
    }
}

/// A table of delegation edges.
pub fn edge_table(edges: &[pb::DelegationEdge]) -> String {
    let mut h = String::from(
        "<table class=\"edges\"><tr><th>class</th><th>from</th><th>to</th><th>via</th><th>services</th>\
         <th>impersonates</th><th>why</th></tr>",
    );
    for e in edges {
        let (class, word) = edge_class(e.class);
        let _ = write!(
            h,
            "<tr class=\"edge {class}\"><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td>\
             <td class=\"mono\">{}</td><td>{}</td><td>{}</td></tr>",
            super::html::badge(class, word),
            esc(&e.source),
            esc(&e.target),
            edge_via(e.via),
            esc(&e.services.join(", ")),
            esc(&e.impersonates),
            esc(&e.reasons.join("; "))
        );
    }
    h.push_str("</table>");
    h
}
