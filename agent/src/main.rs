//! kcdsync-agent: the binary over the agent library.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use kcdsync_agent::client::{self, Settings};
use kcdsync_agent::config::{AgentConfig, ProbeKind};
use kcdsync_agent::probe::HostProbe;
use kcdsync_agent::probe::simulated::SimulatedProbe;

/// Reports a Hyper-V host's live-migration state to the kcdsync controller.
///
/// The agent opens one mTLS gRPC stream to the controller and reports the
/// host's identity, VMMS/WinRM state, migration settings, SYSTEM Kerberos
/// tickets, and every live-migration attempt from the VMMS event log.
/// Attempts wait in a durable outbox until the controller acknowledges
/// them. The controller may ask it to purge the SYSTEM tickets
/// (`klist -li 0x3e7 purge`) after a delegation change.
#[derive(Parser)]
#[command(name = "kcdsync-agent", version, about, long_about)]
struct Cli {
    /// The agent's TOML config.
    #[arg(long, short, env = "KCDSYNC_AGENT_CONFIG", default_value = default_config(), global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

fn default_config() -> &'static str {
    if cfg!(windows) {
        r"C:\ProgramData\kcdsync\agent.toml"
    } else {
        "/etc/kcdsync/agent.toml"
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run in the foreground until Ctrl-C / SIGTERM.
    Run,
    /// Run as the Windows service `kcdsync-agent` (what the service
    /// control manager starts; see deploy/windows/install-agent.ps1).
    #[cfg(windows)]
    Service,
    /// Validate the config file; contacts nothing.
    CheckConfig,
    /// Print one report as JSON, as the controller would receive it.
    Probe,
    /// Enroll now ([enroll] in the config): prove to the controller by Kerberos that this
    /// agent is its host's computer account, or with the one-time join token in
    /// join_token_file (used when Kerberos is not configured or cannot get a ticket; the file
    /// is deleted once the token is spent), and write the certificate and key it issues into
    /// cert_file and key_file. One attempt; exit 1 with the controller's reason when refused.
    /// `run` enrolls by itself when it has no usable certificate: use this to check a new
    /// host's setup, or with --force to replace a certificate that still works.
    Enroll {
        /// Enroll even when the current certificate is still valid.
        #[arg(long)]
        force: bool,
    },
    /// Simulated hosts only: perform a live migration (with Kerberos
    /// configured, a real S4U2Self + S4U2Proxy check against the KDC) and
    /// record it in the host's event log, where the running agent picks it up.
    Migrate {
        #[arg(long)]
        vm: String,
        /// Destination host FQDN.
        #[arg(long)]
        peer: String,
        /// The account that runs Move-VM.
        #[arg(long = "as")]
        account: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One crypto provider, chosen explicitly (see STACK.md pitfalls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    #[cfg(windows)]
    if matches!(cli.command, Cmd::Service) {
        // The service dispatcher blocks this thread; the agent runs inside it.
        let config = cli.config.clone();
        let r = kcdsync_agent::service::run_as_service(move |stop| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            // The SCM discards stderr: the log goes to a rotating file (logfile.rs), in the
            // config's log_dir, or beside the config when it cannot be read (to say why).
            let log_dir = kcdsync_agent::config::AgentConfig::load(&config)
                .map(|c| c.log_dir)
                .unwrap_or_else(|_| kcdsync_agent::config::default_log_dir(&config));
            let log = kcdsync_agent::logfile::LogFile::open(
                &log_dir,
                kcdsync_agent::logfile::MAX_BYTES,
                kcdsync_agent::logfile::KEEP,
            )
            .with_context(|| format!("cannot open the service log in {}", log_dir.display()))?;
            rt.block_on(async {
                let telemetry = kcdsync_telemetry::init_with_writer(
                    "kcdsync-agent",
                    kcdsync_telemetry::LogFormat::Plain,
                    "info",
                    kcdsync_telemetry::BoxMakeWriter::new(move || log.clone()),
                );
                let r = run_agent(&config, stop).await;
                if let Err(e) = &r {
                    tracing::error!("the agent stopped: {e:#}");
                }
                telemetry.shutdown();
                r
            })
        });
        return match r {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        let telemetry = kcdsync_telemetry::init("kcdsync-agent", kcdsync_telemetry::LogFormat::Human, "info");
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

fn simulated(cfg: &AgentConfig) -> Result<SimulatedProbe> {
    let host = cfg.simulated_host.as_ref().context("simulated_host is not set")?;
    Ok(SimulatedProbe::load(host, &cfg.outbox_dir.join("simulated-host"))?)
}

async fn run(cli: Cli) -> Result<()> {
    let cfg =
        AgentConfig::load(&cli.config).with_context(|| format!("invalid configuration in {}", cli.config.display()))?;
    match cli.command {
        Cmd::CheckConfig => {
            println!(
                "{}: valid ({:?} probe, controller {})",
                cli.config.display(),
                cfg.probe,
                cfg.controller_url
            );
            Ok(())
        }
        Cmd::Probe => {
            let report = match cfg.probe {
                ProbeKind::Simulated => simulated(&cfg)?.report().await,
                ProbeKind::Windows => windows_probe(&cfg).report().await,
            };
            println!("{report:#?}");
            Ok(())
        }
        Cmd::Enroll { force } => {
            let e = cfg.enroll.as_ref().with_context(|| {
                format!(
                    "{} has no [enroll] section: add one with service_principal = \"kcdsync/<controller host>\" \
                     (Kerberos) or join_token_file = \"join-token.txt\" (a one-time token)",
                    cli.config.display()
                )
            })?;
            let host = match cfg.probe {
                ProbeKind::Simulated => enroll_host(&cli.config, e, &simulated(&cfg)?).await?,
                ProbeKind::Windows => enroll_host(&cli.config, e, &windows_probe(&cfg)).await?,
            };
            let files = kcdsync_agent::identity::IdentityFiles {
                cert_file: cfg.cert_file.clone(),
                key_file: cfg.key_file.clone(),
            };
            if !force && kcdsync_agent::enroll::needed(&files).is_none() {
                println!(
                    "{} holds a valid certificate: nothing to do (--force enrolls anyway)",
                    cfg.cert_file.display()
                );
                return Ok(());
            }
            let token_before = e.join_token_file.as_ref().filter(|p| p.exists());
            let l = kcdsync_agent::enroll::enroll(&cfg, e, &host)
                .await
                .with_context(|| format!("enrolling {host}"))?;
            println!(
                "enrolled {host}: certificate in {} until {} (UTC), key in {}",
                cfg.cert_file.display(),
                kcdsync_agent::enroll::stamp(l.not_after),
                cfg.key_file.display()
            );
            if let Some(p) = token_before.filter(|p| !p.exists()) {
                println!("enrolled with the join token: it is spent, {} deleted", p.display());
            }
            Ok(())
        }
        Cmd::Migrate { vm, peer, account } => {
            anyhow::ensure!(
                cfg.probe == ProbeKind::Simulated,
                "migrate works on simulated hosts only"
            );
            let a = simulated(&cfg)?.migrate(&vm, &peer, &account, None).await;
            println!("{}: {}", if a.success { "succeeded" } else { "FAILED" }, a.message);
            Ok(())
        }
        Cmd::Run => {
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                wait_for_stop().await;
                let _ = tx.send(true);
            });
            run_agent(&cli.config, rx).await
        }
        #[cfg(windows)]
        Cmd::Service => unreachable!("handled before the runtime starts"),
    }
}

/// Runs the agent until `stop` turns true.
async fn run_agent(config: &std::path::Path, stop: watch::Receiver<bool>) -> Result<()> {
    let cfg = AgentConfig::load(config).with_context(|| format!("invalid configuration in {}", config.display()))?;
    match cfg.probe {
        ProbeKind::Simulated => run_with(config, &cfg, Arc::new(simulated(&cfg)?), stop).await,
        ProbeKind::Windows => run_with(config, &cfg, Arc::new(windows_probe(&cfg)), stop).await,
    }
}

/// The FQDN to enroll: `enroll.host`, else the one the probe reads (the computer's dNSHostName).
async fn enroll_host<P: HostProbe>(
    config: &std::path::Path,
    e: &kcdsync_agent::config::EnrollConfig,
    probe: &P,
) -> Result<String> {
    if let Some(h) = &e.host {
        return Ok(h.clone());
    }
    let fqdn = probe.report().await.identity.map(|i| i.fqdn).unwrap_or_default();
    anyhow::ensure!(
        !fqdn.is_empty(),
        "enrollment needs this host's FQDN and the probe could not read it: set enroll.host in {}",
        config.display()
    );
    Ok(fqdn.to_ascii_lowercase())
}

/// Enrolls first when `[enroll]` says so and the agent has no usable certificate, then runs.
async fn run_with<P: HostProbe>(
    config: &std::path::Path,
    cfg: &AgentConfig,
    probe: Arc<P>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut settings = None;
    if let Some(e) = &cfg.enroll {
        let host = enroll_host(config, e, probe.as_ref()).await?;
        if !kcdsync_agent::enroll::until_enrolled(cfg, e, &host, &mut stop).await {
            return Ok(());
        }
        settings = Some(Settings::from_config(cfg)?.enrolling(cfg, e, &host));
    }
    let settings = match settings {
        Some(s) => s,
        None => Settings::from_config(cfg)?,
    };
    client::run(settings, probe, &cfg.outbox_dir, stop).await?;
    Ok(())
}

fn windows_probe(cfg: &AgentConfig) -> kcdsync_agent::probe::windows::WindowsProbe {
    kcdsync_agent::probe::windows::WindowsProbe::new(cfg.probe_timeout)
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
