//! kcdctl: the operator's CLI over the controller's fleet API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kcdsync_proto::v1 as pb;
use kcdsync_proto::v1::fleet_service_client::FleetServiceClient;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Ask the kcdsync controller about the fleet: which hosts can live-migrate
/// to which, why not, what it plans to change, and what it changed.
///
/// Authenticate with a bearer token (--token-file, one line) or a client
/// certificate (--cert/--key). Read-role callers can look; approving,
/// rejecting and triggering need the write role.
///
/// Examples:
///   kcdctl check hv01.contoso.com hv02.contoso.com --as svc-migrate
///   kcdctl matrix cluster-a --as svc-migrate
///   kcdctl plans --pending && kcdctl approve 42
#[derive(Parser)]
#[command(name = "kcdctl", version, about, long_about)]
struct Cli {
    /// The controller's fleet API.
    #[arg(
        long,
        env = "KCDSYNC_CONTROLLER",
        default_value = "https://127.0.0.1:7444",
        global = true
    )]
    controller: String,
    /// CA that issued the controller's API certificate (PEM).
    #[arg(long, env = "KCDSYNC_CA", global = true)]
    ca: Option<PathBuf>,
    /// Name to verify in the controller's certificate, when the URL holds an IP.
    #[arg(long, env = "KCDSYNC_SERVER_NAME", global = true)]
    server_name: Option<String>,
    /// File holding a bearer token (first line).
    #[arg(long, env = "KCDSYNC_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Client certificate and key (PEM), instead of a token.
    #[arg(long, env = "KCDSYNC_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, env = "KCDSYNC_KEY", global = true)]
    key: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// One-line summary: hosts, ready or not, findings, pending plans.
    Status,
    /// Hosts with their delegation state and readiness.
    Hosts {
        #[arg(long)]
        group: Option<String>,
    },
    /// Findings, most severe first.
    Findings {
        #[arg(long)]
        host: Option<String>,
    },
    /// Can a VM move from SRC to DST when ACCOUNT runs Move-VM?
    Check {
        source: String,
        destination: String,
        #[arg(long = "as", value_name = "ACCOUNT")]
        account: String,
    },
    /// Readiness of every ordered pair of a group, as a grid.
    Matrix {
        group: String,
        #[arg(long = "as", value_name = "ACCOUNT")]
        account: String,
    },
    /// Stored plans (newest first).
    Plans {
        #[arg(long)]
        pending: bool,
    },
    /// Approve a pending plan; the controller applies it if AD still matches.
    Approve { id: String },
    /// Reject a pending plan.
    Reject {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reconcile now.
    Reconcile,
    /// Applied changes, newest first.
    Audit {
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Print fleet events as they happen (Ctrl-C to stop).
    Watch,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        // Exports only when OTEL_EXPORTER_OTLP_ENDPOINT is set; then the
        // controller's handling of this call joins the kcdctl trace.
        let telemetry = kcdsync_telemetry::init("kcdctl", kcdsync_telemetry::LogFormat::Human, "warn");
        let r = run(cli).await;
        telemetry.shutdown();
        r
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

type Client = FleetServiceClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

#[derive(Clone)]
struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        // The client span of this call (see `run`), as W3C traceparent.
        kcdsync_telemetry::inject_metadata(&tracing::Span::current(), req.metadata_mut());
        Ok(req)
    }
}

async fn connect(cli: &Cli) -> Result<Client> {
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &cli.ca {
        tls = tls.ca_certificate(Certificate::from_pem(
            std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?,
        ));
    }
    if let Some(n) = &cli.server_name {
        tls = tls.domain_name(n.clone());
    }
    if let (Some(c), Some(k)) = (&cli.cert, &cli.key) {
        let c = std::fs::read(c).with_context(|| format!("reading {}", c.display()))?;
        let k = std::fs::read(k).with_context(|| format!("reading {}", k.display()))?;
        tls = tls.identity(Identity::from_pem(c, k));
    }
    let token = match &cli.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let t = t.lines().next().unwrap_or_default().trim().to_owned();
            if t.is_empty() {
                bail!("{} is empty", f.display());
            }
            Some(
                format!("Bearer {t}")
                    .parse()
                    .context("the token holds characters a header cannot carry")?,
            )
        }
        None => None,
    };
    let channel = Endpoint::from_shared(cli.controller.clone())
        .with_context(|| format!("`{}` is not a URL", cli.controller))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the controller at {}", cli.controller))?;
    Ok(FleetServiceClient::with_interceptor(channel, Auth(token)))
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn kind(k: i32) -> String {
    pb::FindingKind::try_from(k)
        .map(|k| k.as_str_name().trim_start_matches("FINDING_KIND_").to_lowercase())
        .unwrap_or_else(|_| k.to_string())
}

fn severity(s: i32) -> &'static str {
    match pb::Severity::try_from(s) {
        Ok(pb::Severity::Critical) => "critical",
        Ok(pb::Severity::Warning) => "warning",
        Ok(pb::Severity::Info) => "info",
        _ => "-",
    }
}

fn readiness(r: i32) -> &'static str {
    match pb::Readiness::try_from(r) {
        Ok(pb::Readiness::Ready) => "ready",
        Ok(pb::Readiness::NotReady) => "NOT READY",
        _ => "unknown",
    }
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn finding_json(f: &pb::Finding) -> Value {
    json!({
        "id": f.id, "kind": kind(f.kind), "severity": severity(f.severity), "hosts": f.hosts,
        "account": f.account, "summary": f.summary, "remediation": f.remediation, "automatic": f.automatic,
        "evidence": f.evidence.iter().map(|e| (e.key.clone(), Value::from(e.value.clone()))).collect::<serde_json::Map<_, _>>(),
    })
}

fn plan_json(p: &pb::Plan) -> Value {
    json!({
        "id": p.id, "state": pb::PlanState::try_from(p.state).map(|s| s.as_str_name().trim_start_matches("PLAN_STATE_").to_lowercase()).unwrap_or_default(),
        "created_at": time(&p.created_at), "trigger": p.trigger, "gate_reasons": p.gate_reasons, "decided_by": p.decided_by,
        "changes": p.changes.iter().map(|c| json!({"host": c.host, "dn": c.dn, "uac_before": c.user_account_control_before,
            "uac_after": c.user_account_control_after, "add": c.add, "remove": c.remove, "reasons": c.reasons})).collect::<Vec<_>>(),
    })
}

fn print(output: Output, json: Value, table: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json).expect("json")),
        Output::Table => print!("{}", table()),
    }
}

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

async fn run(cli: Cli) -> Result<()> {
    let method = match &cli.command {
        Cmd::Status | Cmd::Hosts { .. } => "ListHosts",
        Cmd::Findings { .. } => "ListFindings",
        Cmd::Check { .. } => "CheckMigration",
        Cmd::Matrix { .. } => "ReadinessMatrix",
        Cmd::Plans { .. } => "ListPlans",
        Cmd::Approve { .. } => "ApprovePlan",
        Cmd::Reject { .. } => "RejectPlan",
        Cmd::Reconcile => "TriggerReconcile",
        Cmd::Audit { .. } => "ListAudit",
        Cmd::Watch => "Watch",
    };
    let span = tracing::info_span!(
        "grpc",
        otel.name = %format!("kcdsync.v1.FleetService/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = "kcdsync.v1.FleetService",
        rpc.method = method,
    );
    tracing::Instrument::instrument(run_in(cli), span).await
}

async fn run_in(cli: Cli) -> Result<()> {
    let mut c = connect(&cli).await?;
    let out = cli.output;
    match cli.command {
        Cmd::Status => {
            let hosts = all_hosts(&mut c, "").await?;
            let findings = c
                .list_findings(pb::ListFindingsRequest {
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .findings;
            let pending = c
                .list_plans(pb::ListPlansRequest {
                    state: pb::PlanState::PendingApproval as i32,
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .plans;
            let ready = hosts
                .iter()
                .filter(|h| h.readiness == pb::Readiness::Ready as i32)
                .count();
            let critical = findings
                .iter()
                .filter(|f| f.severity == pb::Severity::Critical as i32)
                .count();
            let connected = hosts.iter().filter(|h| h.agent_connected).count();
            print(
                out,
                json!({"hosts": hosts.len(), "ready": ready, "agents_connected": connected, "findings": findings.len(), "critical": critical, "pending_plans": pending.len()}),
                || {
                    format!(
                        "{} hosts: {ready} ready, {} not ready; {connected} agents connected; {} findings ({critical} critical); {} plans pending approval\n",
                        hosts.len(),
                        hosts.len() - ready,
                        findings.len(),
                        pending.len()
                    )
                },
            );
        }
        Cmd::Hosts { group } => {
            let hosts = all_hosts(&mut c, group.as_deref().unwrap_or("")).await?;
            let rows: Vec<Value> = hosts
                .iter()
                .map(|h| {
                    let d = h.delegation.clone().unwrap_or_default();
                    json!({"name": h.name, "netbios": h.netbios_name, "groups": h.groups, "readiness": readiness(h.readiness),
                        "protocol_transition": d.protocol_transition, "unconstrained": d.unconstrained,
                        "delegation_entries": d.allowed_to_delegate_to.len(), "agent_connected": h.agent_connected, "stale": h.stale,
                        "findings": h.findings.iter().map(finding_json).collect::<Vec<_>>()})
                })
                .collect();
            print(out, Value::from(rows), || {
                let mut s = format!(
                    "{:<32} {:<10} {:<13} {:<8} {:<6} {:<9} {}\n",
                    "HOST", "READY", "DELEGATION", "ENTRIES", "AGENT", "FINDINGS", "GROUPS"
                );
                for h in &hosts {
                    let d = h.delegation.clone().unwrap_or_default();
                    let mode = if d.unconstrained {
                        "UNCONSTRAINED"
                    } else if d.protocol_transition {
                        "any-protocol"
                    } else {
                        "kerberos-only"
                    };
                    let agent = if h.agent_connected {
                        "up"
                    } else if h.stale {
                        "stale"
                    } else {
                        "-"
                    };
                    s.push_str(&format!(
                        "{:<32} {:<10} {:<13} {:<8} {:<6} {:<9} {}\n",
                        h.name,
                        readiness(h.readiness),
                        mode,
                        d.allowed_to_delegate_to.len(),
                        agent,
                        h.findings.len(),
                        h.groups.join(",")
                    ));
                }
                s
            });
        }
        Cmd::Findings { host } => {
            let f = c
                .list_findings(pb::ListFindingsRequest {
                    host: host.unwrap_or_default(),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .findings;
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
                    s.push_str(&format!(
                        "    fix: {}{}\n",
                        x.remediation,
                        if x.automatic {
                            " (automatic in enforce mode)"
                        } else {
                            ""
                        }
                    ));
                }
                if f.is_empty() {
                    s.push_str("No findings.\n");
                }
                s
            });
        }
        Cmd::Check {
            source,
            destination,
            account,
        } => {
            let r = c
                .check_migration(pb::CheckMigrationRequest {
                    source,
                    destination,
                    account,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print(
                out,
                json!({"readiness": readiness(r.readiness), "summary": r.summary,
                    "blocking": r.blocking.iter().map(finding_json).collect::<Vec<_>>(),
                    "warnings": r.warnings.iter().map(finding_json).collect::<Vec<_>>()}),
                || {
                    let mut s = format!("{}\n", r.summary);
                    for f in &r.blocking {
                        s.push_str(&format!(
                            "  blocking: {}: {}\n    fix: {}\n",
                            kind(f.kind),
                            f.summary,
                            f.remediation
                        ));
                    }
                    for f in &r.warnings {
                        s.push_str(&format!("  warning: {}: {}\n", kind(f.kind), f.summary));
                    }
                    s
                },
            );
            if r.readiness != pb::Readiness::Ready as i32 {
                // Scripts can branch on the answer.
                std::process::exit(3);
            }
        }
        Cmd::Matrix { group, account } => {
            let r = c
                .readiness_matrix(pb::ReadinessMatrixRequest { group, account })
                .await
                .map_err(status_err)?
                .into_inner();
            print(
                out,
                json!({"hosts": r.hosts, "cells": r.cells.iter().map(|c| json!({"source": c.source, "destination": c.destination,
                    "readiness": readiness(c.readiness), "reasons": c.reasons.iter().map(|k| kind(*k)).collect::<Vec<_>>()})).collect::<Vec<_>>()}),
                || {
                    let short: Vec<String> = r
                        .hosts
                        .iter()
                        .map(|h| h.split('.').next().unwrap_or(h).to_owned())
                        .collect();
                    let w = short.iter().map(String::len).max().unwrap_or(4).max(8);
                    let mut s = format!("{:<w$}", "FROM\\TO");
                    for h in &short {
                        s.push_str(&format!(" {h:<w$}"));
                    }
                    s.push('\n');
                    for (i, src) in r.hosts.iter().enumerate() {
                        s.push_str(&format!("{:<w$}", short[i]));
                        for dst in &r.hosts {
                            let cell = r.cells.iter().find(|c| &c.source == src && &c.destination == dst);
                            let mark = match cell {
                                None => "-",
                                Some(c) if c.readiness == pb::Readiness::Ready as i32 => "ok",
                                Some(_) => "NO",
                            };
                            s.push_str(&format!(" {mark:<w$}"));
                        }
                        s.push('\n');
                    }
                    for c in r.cells.iter().filter(|c| c.readiness != pb::Readiness::Ready as i32) {
                        s.push_str(&format!(
                            "  {} -> {}: {}\n",
                            c.source,
                            c.destination,
                            c.reasons.iter().map(|k| kind(*k)).collect::<Vec<_>>().join(", ")
                        ));
                    }
                    s
                },
            );
        }
        Cmd::Plans { pending } => {
            let state = if pending {
                pb::PlanState::PendingApproval as i32
            } else {
                0
            };
            let plans = c
                .list_plans(pb::ListPlansRequest {
                    state,
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .plans;
            print(
                out,
                Value::from(plans.iter().map(plan_json).collect::<Vec<_>>()),
                || {
                    let mut s = format!(
                        "{:<6} {:<18} {:<24} {:<6} {}\n",
                        "ID", "STATE", "TRIGGER", "HOSTS", "WHY HELD"
                    );
                    for p in &plans {
                        let j = plan_json(p);
                        s.push_str(&format!(
                            "{:<6} {:<18} {:<24} {:<6} {}\n",
                            p.id,
                            j["state"].as_str().unwrap_or_default(),
                            p.trigger.chars().take(24).collect::<String>(),
                            p.changes.len(),
                            p.gate_reasons.join("; ")
                        ));
                    }
                    s
                },
            );
        }
        Cmd::Approve { id } => {
            let p = c
                .approve_plan(pb::ApprovePlanRequest {
                    id,
                    comment: String::new(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print(out, plan_json(&p), || {
                format!(
                    "Plan {} is {}.\n",
                    p.id,
                    plan_json(&p)["state"].as_str().unwrap_or_default()
                )
            });
        }
        Cmd::Reject { id, comment } => {
            let p = c
                .reject_plan(pb::RejectPlanRequest { id, comment })
                .await
                .map_err(status_err)?
                .into_inner();
            print(out, plan_json(&p), || {
                format!("Plan {} rejected; nothing was written.\n", p.id)
            });
        }
        Cmd::Reconcile => {
            let r = c
                .trigger_reconcile(pb::TriggerReconcileRequest::default())
                .await
                .map_err(status_err)?
                .into_inner();
            print(
                out,
                json!({"plan_id": r.plan_id, "hosts_changed": r.hosts_changed, "pending": r.hosts_pending_approval}),
                || {
                    if r.plan_id.is_empty() {
                        "Reconciled: nothing written.\n".to_owned()
                    } else {
                        format!("Reconciled: plan {} changed {} hosts.\n", r.plan_id, r.hosts_changed)
                    }
                },
            );
        }
        Cmd::Audit { host, limit } => {
            let r = c
                .list_audit(pb::ListAuditRequest {
                    host: host.unwrap_or_default(),
                    page_size: limit,
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let rows: Vec<Value> = r
                .entries
                .iter()
                .map(|a| {
                    json!({"id": a.id, "time": time(&a.time), "plan_id": a.plan_id, "host": a.host, "dn": a.dn,
                    "uac_before": a.user_account_control_before, "uac_after": a.user_account_control_after,
                    "delegate_before": a.delegate_before, "delegate_after": a.delegate_after, "reasons": a.reasons,
                    "trigger": a.trigger, "approved_by": a.approved_by})
                })
                .collect();
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
                }
                if r.entries.is_empty() {
                    s.push_str("The audit is empty.\n");
                }
                s
            });
        }
        Cmd::Watch => {
            let mut stream = c.watch(pb::WatchRequest {}).await.map_err(status_err)?.into_inner();
            while let Some(ev) = stream.message().await.map_err(status_err)? {
                use pb::fleet_event::Event;
                let (what, detail) = match &ev.event {
                    Some(Event::FindingRaised(f)) => ("finding_raised", finding_json(f)),
                    Some(Event::FindingCleared(f)) => ("finding_cleared", finding_json(f)),
                    Some(Event::PlanCreated(p)) => ("plan_created", plan_json(p)),
                    Some(Event::PlanApplied(p)) => ("plan_applied", plan_json(p)),
                    Some(Event::AttemptReported(a)) => (
                        "attempt_reported",
                        json!({"attempt_id": a.attempt_id, "vm": a.vm_name, "peer": a.peer, "success": a.success,
                            "error_code": format!("0x{:08X}", a.error_code), "message": a.message}),
                    ),
                    Some(Event::HostStale(h)) => ("host_stale", json!({"host": h})),
                    None => continue,
                };
                match out {
                    Output::Json => println!("{}", json!({"time": time(&ev.time), "event": what, "detail": detail})),
                    Output::Table => println!("{} {what} {}", time(&ev.time), detail),
                }
            }
        }
    }
    Ok(())
}
