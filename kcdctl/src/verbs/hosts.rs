//! `status`, `hosts`, `findings`: what the fleet looks like now.

use anyhow::Result;
use kcdsync_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::Output;
use crate::client::{Client, status_err};
use crate::output::{finding_json, kind, print, readiness, severity};
use crate::verbs::plans;

pub async fn status(c: &mut Client, out: Output) -> Result<()> {
    let hosts = all_hosts(c, "").await?;
    let findings = list_findings(c, String::new()).await?;
    let pending = plans::list(c, pb::PlanState::PendingApproval as i32, 1000).await?;
    let ready = hosts
        .iter()
        .filter(|h| h.readiness == pb::Readiness::Ready as i32)
        .count();
    let critical = findings
        .iter()
        .filter(|f| f.severity == pb::Severity::Critical as i32)
        .count();
    let connected = hosts.iter().filter(|h| h.agent_connected).count();
    let json = json!({"hosts": hosts.len(), "ready": ready, "agents_connected": connected,
        "findings": findings.len(), "critical": critical, "pending_plans": pending.len()});
    print(out, json, || {
        format!(
            "{} hosts: {ready} ready, {} not ready; {connected} agents connected; {} findings ({critical} critical); \
             {} plans pending approval\n",
            hosts.len(),
            hosts.len() - ready,
            findings.len(),
            pending.len()
        )
    });
    Ok(())
}

pub async fn hosts(c: &mut Client, out: Output, group: &str) -> Result<()> {
    let hosts = all_hosts(c, group).await?;
    let rows: Vec<Value> = hosts.iter().map(host_json).collect();
    print(out, Value::from(rows), || {
        let mut s = host_row(["HOST", "READY", "DELEGATION", "ENTRIES", "AGENT", "FINDINGS", "GROUPS"]);
        for h in &hosts {
            let d = h.delegation.clone().unwrap_or_default();
            s.push_str(&host_row([
                &h.name,
                readiness(h.readiness),
                delegation_mode(&d),
                &d.allowed_to_delegate_to.len().to_string(),
                agent_state(h),
                &h.findings.len().to_string(),
                &h.groups.join(","),
            ]));
        }
        s
    });
    Ok(())
}

pub async fn findings(c: &mut Client, out: Output, host: String) -> Result<()> {
    let f = list_findings(c, host).await?;
    print(out, Value::from(f.iter().map(finding_json).collect::<Vec<_>>()), || {
        let mut s = String::new();
        for x in &f {
            s.push_str(&format!(
                "[{}] {} ({}): {}\n",
                severity(x.severity),
                kind(x.kind),
                x.hosts.join(" -> "),
                x.summary
            ));
            for e in &x.evidence {
                s.push_str(&format!("    {}: {}\n", e.key, e.value));
            }
            let automatic = if x.automatic {
                " (automatic in enforce mode)"
            } else {
                ""
            };
            s.push_str(&format!("    fix: {}{automatic}\n", x.remediation));
        }
        if f.is_empty() {
            s.push_str("No findings.\n");
        }
        s
    });
    Ok(())
}

/// Every host of `group` (all hosts when empty), following pages.
async fn all_hosts(c: &mut Client, group: &str) -> Result<Vec<pb::Host>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_hosts(pb::ListHostsRequest {
                group: group.into(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        out.extend(r.hosts);
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        token = r.next_page_token;
    }
}

/// The first page (up to 1000) of findings, about `host` or all when empty.
async fn list_findings(c: &mut Client, host: String) -> Result<Vec<pb::Finding>> {
    let r = c
        .list_findings(pb::ListFindingsRequest {
            host,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .map_err(status_err)?;
    Ok(r.into_inner().findings)
}

fn host_json(h: &pb::Host) -> Value {
    let d = h.delegation.clone().unwrap_or_default();
    json!({"name": h.name, "netbios": h.netbios_name, "groups": h.groups, "readiness": readiness(h.readiness),
        "protocol_transition": d.protocol_transition, "unconstrained": d.unconstrained,
        "delegation_entries": d.allowed_to_delegate_to.len(), "agent_connected": h.agent_connected, "stale": h.stale,
        "findings": h.findings.iter().map(finding_json).collect::<Vec<_>>()})
}

/// One line of the `hosts` table; the header uses it too, so columns align.
fn host_row(cells: [&str; 7]) -> String {
    let [name, ready, mode, entries, agent, findings, groups] = cells;
    format!("{name:<32} {ready:<10} {mode:<13} {entries:<8} {agent:<6} {findings:<9} {groups}\n")
}

fn delegation_mode(d: &pb::DelegationState) -> &'static str {
    if d.unconstrained {
        "UNCONSTRAINED"
    } else if d.protocol_transition {
        "any-protocol"
    } else {
        "kerberos-only"
    }
}

fn agent_state(h: &pb::Host) -> &'static str {
    if h.agent_connected {
        "up"
    } else if h.stale {
        "stale"
    } else {
        "-"
    }
}
