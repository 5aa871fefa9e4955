//! One module per verb group. `run` connects, opens the client span the
//! controller's handling joins (traceparent, see `client::Auth`), and hands
//! the subcommand to its verb.

mod audit;
mod check;
mod exposure;
mod grid;
mod hosts;
mod plans;

use std::process::ExitCode;

use anyhow::Result;
use tracing::Instrument;

use crate::cli::{Cli, Cmd};
use crate::client;
pub use exposure::edge_json;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let method = rpc_method(&cli.command);
    let span = tracing::info_span!(
        "grpc",
        otel.name = %format!("kcdsync.v1.FleetService/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = "kcdsync.v1.FleetService",
        rpc.method = method,
    );
    run_in(cli).instrument(span).await
}

/// The FleetService method a subcommand calls (`status` makes three calls:
/// its span is named after the first).
fn rpc_method(cmd: &Cmd) -> &'static str {
    match cmd {
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
        Cmd::Exposure { .. } => "GetExposure",
        // Answered by main before anything connects.
        Cmd::Completions { .. } => "",
    }
}

async fn run_in(cli: Cli) -> Result<ExitCode> {
    // Connecting inside the span: a failed connect is part of the call's trace.
    let mut c = client::connect(&cli.connection).await?;
    let out = cli.output;
    match cli.command {
        Cmd::Status => hosts::status(&mut c, out).await?,
        Cmd::Hosts { group } => hosts::hosts(&mut c, out, group.as_deref().unwrap_or("")).await?,
        Cmd::Findings { host } => hosts::findings(&mut c, out, host.unwrap_or_default()).await?,
        Cmd::Check {
            source,
            destination,
            account,
            initiator,
        } => return check::check(&mut c, out, source, destination, account, initiator).await,
        Cmd::Matrix { group, account } => check::matrix(&mut c, out, group, account).await?,
        Cmd::Plans { pending } => plans::plans(&mut c, out, pending).await?,
        Cmd::Approve { id } => plans::approve(&mut c, out, id).await?,
        Cmd::Reject { id, comment } => plans::reject(&mut c, out, id, comment).await?,
        Cmd::Reconcile => plans::reconcile(&mut c, out).await?,
        Cmd::Audit { host, limit } => audit::audit(&mut c, out, host.unwrap_or_default(), limit).await?,
        Cmd::Watch => audit::watch(&mut c, out).await?,
        Cmd::Exposure { class, host, export } => match export {
            Some(format) => exposure::export(&mut c, format, host.unwrap_or_default()).await?,
            None => exposure::exposure(&mut c, out, class, host.unwrap_or_default()).await?,
        },
        Cmd::Completions { .. } => unreachable!("main prints completions before connecting"),
    }
    Ok(ExitCode::SUCCESS)
}
