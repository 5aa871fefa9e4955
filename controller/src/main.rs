//! kcdsync-controller: the binary over the controller library.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use kcdsync_controller::config::Config;
use kcdsync_controller::ldap::Ad;
use kcdsync_controller::leader::{self, Writer};
use kcdsync_controller::reconcile::{self, Approval, Progress, RunOptions};
use kcdsync_controller::report;
use kcdsync_controller::runtime;
use kcdsync_controller::store::{PlanState, Store, redact_url};

/// Keeps Kerberos constrained delegation for Hyper-V live migration right
/// across a fleet.
///
/// Each grouped host gets "use any authentication protocol" (protocol
/// transition) and, for every peer in its migration groups, the
/// `Microsoft Virtual System Migration Service/` and `cifs/` entries (FQDN
/// and NetBIOS) in msDS-AllowedToDelegateTo; entries to the group's file
/// servers too. Entries kcdsync does not manage are never touched; removals
/// wait for approval.
///
/// Typical use: `plan` to see what would change, `apply` to write the safe
/// part, `apply --approve ID` for what the guard held, `serve` to keep the
/// fleet right.
#[derive(Parser)]
#[command(name = "kcdsync-controller", version, about, long_about)]
struct Cli {
    /// The controller's TOML config (see deploy/controller.example.toml).
    #[arg(
        long,
        short,
        env = "KCDSYNC_CONFIG",
        default_value = "/etc/kcdsync/controller.toml",
        global = true
    )]
    config: PathBuf,
    /// Log line format (logs go to stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config file and print what it manages; contacts nothing.
    CheckConfig,
    /// Dry run: read AD, show per host what would change. Writes nothing.
    Plan {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Reconcile once: write the changes the guard allows for groups in
    /// enforce mode, verify them, and audit them. Removals, clearing
    /// unconstrained delegation, and plans touching more than
    /// guard.max_hosts_per_apply hosts are held as a pending plan.
    ///
    /// Takes the AD write lease in the store for the run: while `serve` (or
    /// another apply) holds it, apply writes nothing and says who holds it.
    Apply {
        /// Approve a pending plan and apply it, if AD still matches it.
        #[arg(long, value_name = "PLAN_ID")]
        approve: Option<i64>,
        /// Who approves (recorded in the audit); defaults to $USER.
        #[arg(long, env = "USER", default_value = "operator")]
        approver: String,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Reject a pending plan; nothing is written.
    Reject {
        plan_id: i64,
        #[arg(long, env = "USER", default_value = "operator")]
        approver: String,
    },
    /// List stored plans, or show one with --id.
    Plans {
        #[arg(long)]
        id: Option<i64>,
        /// Only pending plans.
        #[arg(long)]
        pending: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show the audit trail, newest first: the AD changes kcdsync applied, then agent events
    /// (agents revoked and unrevoked; table output only — `--output json` lists the AD changes).
    Audit {
        /// Only this host (FQDN as shown in plans).
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Create the CAs and the controller's, agents' and API clients' mTLS certificates.
    Certs {
        #[command(subcommand)]
        command: kcdsync_controller::certs::CertsCommand,
    },
    /// The hosts' agents: list them, show one, revoke or unrevoke a host.
    ///
    /// Revoking is how to shut out an agent you no longer trust (a stolen host, a leaked
    /// agent key): every controller sharing this store refuses it, whatever certificate it
    /// holds, until you unrevoke it. Reads and writes only the state store.
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Run continuously: reconcile every reconcile.interval_secs, and at
    /// once on SIGHUP (which also re-reads the config, the API tokens and the
    /// TLS files; secret files must be mode 600).
    Serve,
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// Every host whose agent reported, or that is revoked: when it was last heard from, and
    /// for a revoked one who revoked it, when and why.
    List {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One host's agent: last seen, last report, whether it is revoked, and its history of
    /// revocations and certificate renewals.
    Show {
        /// The host's FQDN (as in its agent certificate), e.g. hv01.contoso.com.
        host: String,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Refuse HOST's agent on every controller sharing this store.
    ///
    /// The host goes on the deny-list in the state store, with who revoked it, when and why,
    /// and an audit event. Every controller replica reading this store then refuses the
    /// agent's streams with PERMISSION_DENIED (the agent's log says it is revoked and how to
    /// undo it), whatever certificate it presents, and closes a stream that is live now
    /// within a second. Each refused attempt is logged with the host and its address and
    /// counted in kcdsync.agents.revoked_refused.
    ///
    /// Nothing is written to AD: the host keeps its delegation (take it out of its group to
    /// remove that). Revoking a host already revoked changes nothing.
    ///
    /// Undo: `kcdsync-controller agents unrevoke HOST`; the agent connects again on its next
    /// retry (at most a minute).
    Revoke {
        /// The host's FQDN (as in its agent certificate), e.g. hv01.contoso.com.
        host: String,
        /// Why (shown in `agents list`, to the refused agent and in the audit); one line, at
        /// most 500 characters.
        #[arg(long, default_value = "")]
        reason: String,
        /// Who revokes (recorded with the revocation and in the audit); defaults to $USER.
        #[arg(long, env = "USER", default_value = "operator")]
        by: String,
    },
    /// Let HOST's agent connect again (lifts `agents revoke`).
    ///
    /// Removes the host from the deny-list, with an audit event; its agent is accepted again
    /// on its next retry. Unrevoking a host that is not revoked changes nothing.
    Unrevoke {
        /// The host's FQDN, e.g. hv01.contoso.com.
        host: String,
        /// Who unrevokes (recorded in the audit); defaults to $USER.
        #[arg(long, env = "USER", default_value = "operator")]
        by: String,
    },
    /// One-time join tokens: how a host that cannot reach its KDC enrolls.
    ///
    /// Agents normally enroll by Kerberos, as their computer account. A host that cannot
    /// (no route to a KDC yet, a broken secure channel) can enroll once with a join token
    /// instead: a secret bound to that one host, spent by its first enrollment, expiring
    /// after --ttl. The store keeps only its SHA-256; creating, revoking and using one are
    /// audited. The host must still be a trusted computer of the managed scope, and the
    /// controller must enroll ([agents.enroll]). See docs/join-tokens.md.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token for HOST and print its secret, once.
    ///
    /// The secret (`kcdj_` and 64 hex digits) is printed to stdout and kept nowhere: put it
    /// in a file only SYSTEM and Administrators may read (Unix: mode 600) on HOST, and name
    /// that file in the agent's config as `[enroll] join_token_file`. The agent enrolls with
    /// it when Kerberos is not configured or fails, and deletes the file once it is spent.
    ///
    /// Example: kcdsync-controller agents token create hv01.contoso.com --ttl 4h
    Create {
        /// The host's FQDN, e.g. hv01.contoso.com: the only name the token can get a
        /// certificate for.
        host: String,
        /// How long the token may be used: 90s, 30m, 1h (default), 2d; at most 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Who creates it (recorded with the token and in the audit); defaults to $USER.
        #[arg(long, env = "USER", default_value = "operator")]
        by: String,
    },
    /// Every join token, newest first (never a secret: the store has none).
    ///
    /// Its id, host, when it was created and by whom, when it expires, and its state: unused,
    /// expired, used (when, from which address) or revoked (when, by whom).
    List {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Revoke an unused join token (by the id `token list` shows).
    ///
    /// It is refused from now on, on every controller sharing this store; audited as
    /// agent-join-token-revoked. A token already used or revoked is left as it is.
    Revoke {
        /// The token's id, e.g. jt-0123456789ab.
        id: String,
        /// Who revokes (recorded in the audit); defaults to $USER.
        #[arg(long, env = "USER", default_value = "operator")]
        by: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let telemetry = kcdsync_telemetry::init(
        "kcdsync-controller",
        match cli.log_format {
            LogFormat::Human => kcdsync_telemetry::LogFormat::Human,
            LogFormat::Json => kcdsync_telemetry::LogFormat::Json,
        },
        // Refused TLS handshakes (no, expired or foreign client certificate)
        // are logged at info by grpc::tls; operators need to see them.
        "info",
    );
    // One crypto provider, chosen explicitly (see STACK.md pitfalls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let code = match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

fn load(path: &std::path::Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("invalid configuration in {}", path.display()))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Certs { command } => kcdsync_controller::certs::run(command),
        Command::CheckConfig => check_config(&cli.config),
        Command::Plan { output } => {
            let cfg = load(&cli.config)?;
            let (ad, _) = connect(&cfg).await?;
            let observed = reconcile::observe(&cfg, &ad).await?;
            let decision = reconcile::decide(&cfg, &observed);
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "changes": decision.plan.changes,
                    "findings": decision.plan.findings,
                    "held": decision.guarded.held,
                    "gate_reasons": decision.guarded.reasons,
                }))?,
                Output::Table => print!("{}", report::decision(&decision)),
            }
            ad.unbind().await;
            Ok(())
        }
        Command::Apply {
            approve,
            approver,
            output,
        } => apply(&cli.config, approve, approver, output).await,
        Command::Reject { plan_id, approver } => {
            let cfg = load(&cli.config)?;
            let store = Store::open(&cfg.store_url).await?;
            reconcile::reject(&store, plan_id, &approver, None).await?;
            println!("Plan {plan_id} rejected; nothing was written.");
            Ok(())
        }
        Command::Plans {
            id,
            pending,
            limit,
            output,
        } => {
            let cfg = load(&cli.config)?;
            let store = Store::open(&cfg.store_url).await?;
            if let Some(id) = id {
                let Some(p) = store.get_plan(id).await? else {
                    bail!("plan {id} does not exist");
                };
                match output {
                    Output::Json => print_json(&p)?,
                    Output::Table => print!("{}", report::plan_detail(&p)),
                }
                return Ok(());
            }
            let plans = store
                .list_plans(pending.then_some(PlanState::PendingApproval), limit)
                .await?;
            match output {
                Output::Json => print_json(&plans)?,
                Output::Table => print!("{}", report::plans(&plans)),
            }
            Ok(())
        }
        Command::Audit { host, limit, output } => {
            let cfg = load(&cli.config)?;
            let store = Store::open(&cfg.store_url).await?;
            let rows = store.audit(host.as_deref(), limit).await?;
            let replication = store.replication_of(&rows).await?;
            match output {
                Output::Json => {
                    let with: Vec<serde_json::Value> = rows
                        .iter()
                        .zip(replication.iter().chain(std::iter::repeat(&Vec::new())))
                        .map(|(r, x)| {
                            let mut v = serde_json::to_value(r).expect("plain data");
                            v["replicated_to"] = serde_json::to_value(x).expect("plain data");
                            v
                        })
                        .collect();
                    print_json(&with)?
                }
                Output::Table => {
                    print!("{}", report::audit(&rows, &replication));
                    let events = store.audit_events(host.as_deref(), limit).await?;
                    if !events.is_empty() {
                        print!("\n{}", report::audit_events(&events));
                    }
                }
            }
            Ok(())
        }
        Command::Agents { command } => agents(&cli.config, command).await,
        Command::Serve => serve(cli.config).await,
    }
}

/// `agents`: the deny-list and what agents reported, in the store only (no AD, no running
/// controller needed: replicas read the list from the store).
async fn agents(path: &std::path::Path, command: AgentsCommand) -> Result<()> {
    use kcdsync_controller::revocation;
    use kcdsync_controller::store::Revoked;
    let cfg = load(path)?;
    let store = Store::open(&cfg.store_url).await?;
    match command {
        AgentsCommand::List { output } => {
            let rows = revocation::agents(&store).await?;
            match output {
                Output::Json => print_json(&rows)?,
                Output::Table => print!("{}", report::agents(&rows)),
            }
        }
        AgentsCommand::Show { host, output } => {
            let Some(a) = revocation::agent(&store, &host).await? else {
                bail!(
                    "no agent of {} has reported to this store, and it was never revoked; `agents list` shows the hosts it knows",
                    revocation::host(&host)?
                );
            };
            match output {
                Output::Json => print_json(&a)?,
                Output::Table => print!("{}", report::agent_detail(&a)),
            }
        }
        AgentsCommand::Revoke { host, reason, by } => {
            match revocation::revoke(&store, &host, &reason, &by)
                .await
                .context("nothing was revoked")?
            {
                Revoked::Now(r) => println!(
                    "{} is revoked ({}). Every controller sharing this store refuses its agent and closes its                      live stream within a second.\nUndo: kcdsync-controller agents unrevoke {}",
                    r.host,
                    report::revoked(&r),
                    r.host
                ),
                Revoked::Already(r) => println!(
                    "{} was already revoked ({}); nothing changed.",
                    r.host,
                    report::revoked(&r)
                ),
            }
        }
        AgentsCommand::Unrevoke { host, by } => {
            match revocation::unrevoke(&store, &host, &by)
                .await
                .context("nothing was unrevoked")?
            {
                Some(r) => println!(
                    "{} is no longer revoked (it was revoked {}). Its agent is accepted again on its next retry.",
                    r.host,
                    report::revoked(&r)
                ),
                None => println!("{} is not revoked; nothing changed.", revocation::host(&host)?),
            }
        }
        AgentsCommand::Token { command } => join_token(&store, command).await?,
    }
    store.close().await;
    Ok(())
}

/// `agents token`: one-time join tokens, in the store only.
async fn join_token(store: &Store, command: TokenCommand) -> Result<()> {
    use kcdsync_controller::enrollment::token;
    use kcdsync_controller::store::TokenRevoked;
    match command {
        TokenCommand::Create { host, ttl, by } => {
            let ttl = token::parse_ttl(&ttl)?;
            let (t, secret) = token::create(store, &host, ttl, &by)
                .await
                .context("no join token was created")?;
            println!("{secret}");
            eprintln!(
                "join token {id} for {host}, usable once until {exp} (UTC).\n\
                 The line above is its secret, shown only now. On {host}, write it to a file readable only by\n\
                 SYSTEM and Administrators (Unix: mode 600) and name that file in the agent's config:\n\
                 \n  [enroll]\n  join_token_file = \"join-token.txt\"\n\n\
                 The agent enrolls with it and deletes the file once it is spent.\n\
                 Revoke it before then with: kcdsync-controller agents token revoke {id}",
                id = t.id,
                host = t.host,
                exp = report::format_ms(t.expires_at_ms),
            );
        }
        TokenCommand::List { output } => {
            let tokens = store.join_tokens().await?;
            match output {
                Output::Json => print_json(&tokens)?,
                Output::Table => print!("{}", token::table(&tokens, kcdsync_controller::store::now_ms())),
            }
        }
        TokenCommand::Revoke { id, by } => match token::revoke(store, &id, &by).await.context("nothing was revoked")? {
            Some(TokenRevoked::Now(t)) => println!(
                "join token {} for {} is revoked: it enrolls nothing from now on.",
                t.id, t.host
            ),
            Some(TokenRevoked::Unchanged(t)) => println!(
                "join token {} for {} is {}; nothing changed.",
                t.id,
                t.host,
                token::state(&t, kcdsync_controller::store::now_ms())
            ),
            None => bail!("no join token {id}: `agents token list` shows them"),
        },
    }
    Ok(())
}

/// A one-shot command's connection: `[ad] url`, else the next `[[ad.dc]]` that answers as the
/// DC it names, as serve chooses; and that DC's name.
async fn connect(cfg: &Config) -> Result<(Ad, String)> {
    runtime::connect_writer(&cfg.ad).await.with_context(|| {
        format!(
            "connecting to AD as {}: [ad] url {}{}",
            cfg.ad.bind_dn,
            cfg.ad.url,
            match cfg.ad.dcs.len() {
                0 => String::new(),
                n => format!(" and the {n} [[ad.dc]] after it"),
            }
        )
    })
}

/// `apply`: one reconcile under the writer lease, so it never runs beside `serve` (or another
/// apply) as a second AD writer; refused, it says who writes instead and writes nothing.
async fn apply(path: &std::path::Path, approve: Option<i64>, approver: String, output: Output) -> Result<()> {
    let cfg = load(path)?;
    let store = Store::open(&cfg.store_url).await?;
    let held = leader::hold_for_run(&store, Writer::cli(&cfg), approve)
        .await
        .with_context(|| format!("taking the AD write lease in {}", redact_url(&cfg.store_url)))?;
    let result = async {
        // The audit names the DC each write went to. A DC lost in the middle of the run fails
        // it (no failover mid-run): the next apply settles what was written and writes the rest.
        let (ad, dc) = connect(&cfg).await?;
        let (tx, rx) = watch::channel(Progress::default());
        let printer = tokio::spawn(show_progress(rx));
        let opts = RunOptions {
            trigger: "cli".into(),
            approve: approve.map(|plan_id| Approval { plan_id, by: approver }),
            progress: Some(tx),
            fence: Some(held.fence.clone()),
            dc,
            // A one-shot apply runs no per-DC verify and has no agents to tell.
            audited: None,
        };
        let result = reconcile::reconcile(&cfg, &ad, &store, opts).await;
        printer.abort();
        ad.unbind().await;
        Ok::<_, anyhow::Error>(result?)
    }
    .await;
    held.release().await;
    let outcome = result?;
    match output {
        Output::Json => print_json(&outcome),
        Output::Table => {
            print!("{}", report::outcome(&outcome));
            Ok(())
        }
    }
}

/// Loads the config and says what it means, without touching AD.
fn check_config(path: &std::path::Path) -> Result<()> {
    let cfg = load(path)?;
    println!("{}: valid", path.display());
    println!("AD: {} as {}", cfg.ad.url, cfg.ad.bind_dn);
    println!(
        "scope: {}",
        cfg.scope.iter().map(|d| d.as_str()).collect::<Vec<_>>().join("; ")
    );
    println!("store: {}", kcdsync_controller::store::redact_url(&cfg.store_url));
    if let Some(a) = &cfg.agents {
        match &a.issuing_ca {
            Some(ca) => println!(
                "agents: {}; certificates renewed over the stream for {} h by \"{}\" (ends {})",
                a.listen,
                a.cert_lifetime.as_secs() / 3600,
                ca.name(),
                kcdsync_controller::certs::fmt_rfc3339(ca.not_after())
            ),
            None => println!(
                "agents: {}; no certificate renewal (agents.issuing_ca_cert_file / issuing_ca_key_file unset)",
                a.listen
            ),
        }
        match &a.enroll {
            Some(e) => println!(
                "agents enroll by Kerberos as {} (keytab {}): computers of the scope that pass the identity checks",
                e.principal,
                e.keytab.display()
            ),
            None => println!("agents do not enroll: their certificates are made by hand ([agents.enroll] unset)"),
        }
    }
    for g in &cfg.groups {
        println!(
            "group {} ({}): {} hosts{}{}",
            g.name,
            g.mode,
            g.hosts.len(),
            g.ad_group
                .as_ref()
                .map(|d| format!(" + members of {d}"))
                .unwrap_or_default(),
            if g.file_servers.is_empty() {
                String::new()
            } else {
                format!(
                    ", file servers {}",
                    g.file_servers.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
                )
            }
        );
    }
    Ok(())
}

/// Prints "applied N/M hosts" at most once a second while an apply runs.
async fn show_progress(mut rx: watch::Receiver<Progress>) {
    let mut last = Instant::now();
    while rx.changed().await.is_ok() {
        let p = *rx.borrow();
        if p.total > 0 && (last.elapsed() >= Duration::from_secs(1) || p.done == p.total) && p.total >= 20 {
            eprintln!("applying: {}/{} hosts", p.done, p.total);
            last = Instant::now();
        }
    }
}

async fn serve(path: PathBuf) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let cfg = load(&path)?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tracing::info!(config = %path.display(), interval_secs = cfg.interval.as_secs(), "serving");
    let running = kcdsync_controller::runtime::start(cfg).await?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let reloaded = match load(&path) {
                    Ok(c) => running.reload(c).await,
                    Err(e) => Err(e),
                };
                match reloaded {
                    Ok(()) => tracing::info!("config, API tokens and TLS files reloaded (listeners keep their addresses)"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "config reload failed; keeping the previous config"),
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping");
    running.stop().await;
    Ok(())
}
