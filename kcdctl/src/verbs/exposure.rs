//! `exposure`: who can impersonate whom, to what — every delegation edge,
//! classified — and the export of the required (approved) edges that
//! security teams mark as known-good in their own tools.

use anyhow::Result;
use kcdsync_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::{Export, Output};
use crate::client::{Client, status_err};
use crate::output::print;

/// An edge class without its proto prefix (`dangerous`).
pub fn class(c: i32) -> String {
    pb::EdgeClass::try_from(c)
        .map(|c| c.as_str_name().trim_start_matches("EDGE_CLASS_").to_lowercase())
        .unwrap_or_else(|_| c.to_string())
}

pub fn via(v: i32) -> String {
    pb::EdgeVia::try_from(v)
        .map(|v| v.as_str_name().trim_start_matches("EDGE_VIA_").to_lowercase())
        .unwrap_or_else(|_| v.to_string())
}

pub fn edge_json(e: &pb::DelegationEdge) -> Value {
    json!({
        "source": e.source, "source_dn": e.source_dn, "target": e.target, "target_dn": e.target_dn,
        "services": e.services, "entries": e.entries, "via": via(e.via), "class": class(e.class),
        "reasons": e.reasons, "impersonates": e.impersonates,
    })
}

/// Every page of GetExposure for `class` (0: all) and `host` ("" for all);
/// the first page's answer carries the counts.
async fn all_edges(
    c: &mut Client,
    class: i32,
    host: &str,
) -> Result<(Vec<pb::DelegationEdge>, pb::GetExposureResponse)> {
    let mut edges = Vec::new();
    let mut token = String::new();
    let mut first = None;
    loop {
        let r = c
            .get_exposure(pb::GetExposureRequest {
                class,
                host: host.to_owned(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        edges.extend(r.edges.iter().cloned());
        token = r.next_page_token.clone();
        first.get_or_insert(r);
        if token.is_empty() {
            break;
        }
    }
    Ok((edges, first.unwrap_or_default()))
}

pub async fn exposure(c: &mut Client, out: Output, class_filter: Option<String>, host: String) -> Result<()> {
    let class = match class_filter.as_deref() {
        None => 0,
        Some(name) => pb::EdgeClass::from_str_name(&format!("EDGE_CLASS_{}", name.to_uppercase()))
            .map(|c| c as i32)
            .ok_or_else(|| anyhow::anyhow!("--class: one of required, excess, dangerous"))?,
    };
    let (edges, head) = all_edges(c, class, &host).await?;
    let json = json!({
        "edges": edges.iter().map(edge_json).collect::<Vec<_>>(),
        "required": head.required, "excess": head.excess, "dangerous": head.dangerous,
        "privileged_impersonable": head.privileged_impersonable, "unreadable": head.unreadable,
    });
    print(out, json, || table(&edges, &head));
    Ok(())
}

fn table(edges: &[pb::DelegationEdge], head: &pb::GetExposureResponse) -> String {
    let mut s = row(["CLASS", "SOURCE", "TARGET", "VIA", "SERVICES", "WHY"]);
    for e in edges {
        s.push_str(&row([
            &class(e.class),
            &e.source,
            &e.target,
            &via(e.via),
            &e.services.join(","),
            &e.reasons.join("; "),
        ]));
    }
    s.push_str(&format!(
        "\n{} required, {} excess, {} dangerous edges in all.\n",
        head.required, head.excess, head.dangerous
    ));
    if !head.privileged_impersonable.is_empty() {
        s.push_str(&format!(
            "Privileged accounts any protocol-transition edge can impersonate (neither sensitive nor in Protected Users): {}\n",
            head.privileged_impersonable.join(", ")
        ));
    }
    for u in &head.unreadable {
        s.push_str(&format!("RBCD descriptor not readable: {u}\n"));
    }
    s
}

fn row(cells: [&str; 6]) -> String {
    let [class, source, target, via, services, why] = cells;
    format!("{class:<10} {source:<28} {target:<28} {via:<20} {services:<20} {why}\n")
}

/// The required edges, for security tools to mark as known-good.
pub async fn export(c: &mut Client, format: Export, host: String) -> Result<()> {
    let (edges, _) = all_edges(c, pb::EdgeClass::Required as i32, &host).await?;
    match format {
        Export::Json => println!(
            "{}",
            serde_json::to_string_pretty(&Value::from(edges.iter().map(edge_json).collect::<Vec<_>>()))?
        ),
        Export::Csv => print!("{}", csv(&edges)),
    }
    Ok(())
}

/// One header line and one line per edge; every field quoted.
pub fn csv(edges: &[pb::DelegationEdge]) -> String {
    let mut s = String::from("source,source_dn,target,target_dn,via,services,entries\n");
    for e in edges {
        let fields = [
            e.source.clone(),
            e.source_dn.clone(),
            e.target.clone(),
            e.target_dn.clone(),
            via(e.via),
            e.services.join(";"),
            e.entries.join(";"),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        s.push_str(&line.join(","));
        s.push('\n');
    }
    s
}

/// Quoted, inner quotes doubled; a value a spreadsheet would run as a
/// formula (AD values are anyone's input) is prefixed with `'`.
fn csv_field(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_owned()
    };
    format!("\"{}\"", v.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_every_field_and_defuses_formulas() {
        let e = pb::DelegationEdge {
            source: "hv01.lab.test".into(),
            source_dn: "CN=HV01,OU=Hyper-V,DC=lab,DC=test".into(),
            target: "=cmd|' /C calc'!A0".into(),
            services: vec!["cifs".into(), "x\"y".into()],
            via: pb::EdgeVia::ProtocolTransition as i32,
            ..Default::default()
        };
        let text = csv(&[e]);
        let line = text.lines().nth(1).unwrap();
        assert_eq!(
            line,
            "\"hv01.lab.test\",\"CN=HV01,OU=Hyper-V,DC=lab,DC=test\",\"'=cmd|' /C calc'!A0\",\"\",\"protocol_transition\",\"cifs;x\"\"y\",\"\""
        );
    }
}
