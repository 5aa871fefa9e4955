//! `audit` and `watch`: what the controller changed, and what happens in the
//! fleet as it happens.

use anyhow::Result;
use kcdsync_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::Output;
use crate::client::{Client, status_err};
use crate::output::{finding_json, plan_json, print, time};

pub async fn audit(c: &mut Client, out: Output, host: String, limit: u32) -> Result<()> {
    let r = c
        .list_audit(pb::ListAuditRequest {
            host,
            page_size: limit,
            ..Default::default()
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let rows: Vec<Value> = r.entries.iter().map(audit_json).collect();
    print(out, Value::from(rows), || {
        let mut s = String::new();
        for a in &r.entries {
            s.push_str(&format!(
                "#{} {} plan {} {} ({}): {}\n",
                a.id,
                time(&a.time),
                a.plan_id,
                a.host,
                a.trigger,
                a.reasons.join("; ")
            ));
            if !a.written_on.is_empty() {
                s.push_str(&format!("    written on {}\n", a.written_on));
            }
            for x in &a.replicated_to {
                match &x.arrived {
                    Some(_) => s.push_str(&format!("    replicated to {} after {:.1} s\n", x.dc, x.lag_seconds)),
                    None => s.push_str(&format!("    not seen on {} yet\n", x.dc)),
                }
            }
        }
        if r.entries.is_empty() {
            s.push_str("The audit is empty.\n");
        }
        s
    });
    Ok(())
}

/// Streams events until the controller ends the stream or Ctrl-C; one line
/// per event in either output (JSON lines for scripts).
pub async fn watch(c: &mut Client, out: Output) -> Result<()> {
    let mut stream = c.watch(pb::WatchRequest {}).await.map_err(status_err)?.into_inner();
    while let Some(ev) = stream.message().await.map_err(status_err)? {
        // No body: an event newer than this kcdctl (prost drops unknown variants).
        let Some((what, detail)) = event_json(&ev) else {
            continue;
        };
        match out {
            Output::Json => println!("{}", json!({"time": time(&ev.time), "event": what, "detail": detail})),
            Output::Table => println!("{} {what} {}", time(&ev.time), detail),
        }
    }
    Ok(())
}

fn audit_json(a: &pb::AuditEntry) -> Value {
    json!({"id": a.id, "time": time(&a.time), "plan_id": a.plan_id, "host": a.host, "dn": a.dn,
        "uac_before": a.user_account_control_before, "uac_after": a.user_account_control_after,
        "delegate_before": a.delegate_before, "delegate_after": a.delegate_after, "reasons": a.reasons,
        "trigger": a.trigger, "approved_by": a.approved_by, "written_on": a.written_on,
        "replicated_to": a.replicated_to.iter().map(|x| json!({"dc": x.dc,
            "arrived": x.arrived.as_ref().map(|_| time(&x.arrived)), "lag_seconds": x.arrived.as_ref().map(|_| x.lag_seconds)})).collect::<Vec<_>>()})
}

/// The event's name and its detail as JSON.
fn event_json(ev: &pb::FleetEvent) -> Option<(&'static str, Value)> {
    use pb::fleet_event::Event;
    Some(match ev.event.as_ref()? {
        Event::FindingRaised(f) => ("finding_raised", finding_json(f)),
        Event::FindingCleared(f) => ("finding_cleared", finding_json(f)),
        Event::PlanCreated(p) => ("plan_created", plan_json(p)),
        Event::PlanApplied(p) => ("plan_applied", plan_json(p)),
        Event::AttemptReported(a) => (
            "attempt_reported",
            json!({"attempt_id": a.attempt_id, "vm": a.vm_name, "peer": a.peer, "success": a.success,
                "error_code": format!("0x{:08X}", a.error_code), "message": a.message}),
        ),
        Event::HostStale(h) => ("host_stale", json!({"host": h})),
    })
}
