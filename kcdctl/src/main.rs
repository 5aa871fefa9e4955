//! kcdctl: the operator's CLI over the controller's fleet API.
//!
//! `cli` holds the flags, `client` the connection, `output` the printing,
//! and `verbs/` one module per group of subcommands. Exit codes: 0 done,
//! 1 error (printed on stderr), 3 `check` answered "not ready", 2 bad usage
//! (clap).

mod cli;
mod client;
mod output;
mod verbs;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let cli::Cmd::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut cli::Cli::command(), "kcdctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        // Exports only when OTEL_EXPORTER_OTLP_ENDPOINT is set; then the
        // controller's handling of this call joins the kcdctl trace.
        let telemetry = kcdsync_telemetry::init("kcdctl", kcdsync_telemetry::LogFormat::Human, "warn");
        let r = verbs::run(cli).await;
        telemetry.shutdown();
        r
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
