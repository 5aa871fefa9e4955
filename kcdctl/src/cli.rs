//! The command line: global connection and output flags, and one subcommand
//! per fleet API call. Only clap types live here, so `--help` can be read
//! (and reviewed) in one place; the verbs in `verbs/` act on them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    /// Table for people, JSON for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Cmd,
}

/// Where the controller is and how to prove who we are (see `client`).
#[derive(Args)]
pub struct Connection {
    /// The controller's fleet API (https://; http:// only to loopback).
    #[arg(
        long,
        env = "KCDSYNC_CONTROLLER",
        default_value = "https://127.0.0.1:7444",
        global = true
    )]
    pub controller: String,
    /// CA that issued the controller's API certificate (PEM).
    #[arg(long, env = "KCDSYNC_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Name to verify in the controller's certificate, when the URL holds an IP.
    #[arg(long, env = "KCDSYNC_SERVER_NAME", global = true)]
    pub server_name: Option<String>,
    /// File holding a bearer token (first line).
    #[arg(long, env = "KCDSYNC_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Client certificate and key (PEM), instead of a token.
    #[arg(long, env = "KCDSYNC_CERT", global = true, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert (PEM).
    #[arg(long, env = "KCDSYNC_KEY", global = true)]
    pub key: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// Formats of the approved-edges export.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Export {
    Csv,
    Json,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// One-line summary: hosts, ready or not, findings, pending plans.
    Status,
    /// Hosts with their delegation state and readiness.
    Hosts {
        /// Only the hosts of this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Findings, most severe first.
    Findings {
        /// Only the findings that involve this host.
        #[arg(long)]
        host: Option<String>,
    },
    /// Can a VM move from SRC to DST when ACCOUNT runs Move-VM?
    ///
    /// Exits 0 when ready, 3 when not (the reasons are printed), 1 when it cannot ask.
    ///
    /// Where Move-VM runs matters. Run on SRC itself, SRC's delegation to DST
    /// decides. Run from another machine (a management gateway, an admin
    /// workstation, an orchestrator's server: `Move-VM -ComputerName SRC ...`),
    /// that machine must also be allowed to delegate ACCOUNT to SRC: name it
    /// with --initiator, and the check says what it lacks and what to set.
    ///
    /// Examples:
    ///   kcdctl check hv01.contoso.com hv02.contoso.com --as svc-migrate
    ///   kcdctl check hv01 hv02 --as svc-migrate --initiator gw01.contoso.com
    #[command(verbatim_doc_comment)]
    Check {
        /// The host the VM runs on (SRC).
        source: String,
        /// The host it should move to (DST).
        destination: String,
        /// sAMAccountName or UPN of the account that runs Move-VM.
        #[arg(long = "as", value_name = "ACCOUNT")]
        account: String,
        /// The machine Move-VM runs on, when it is not SRC (FQDN or NetBIOS name).
        ///
        /// It needs classic delegation to SRC's cifs/ and migration service
        /// (with "use any authentication protocol": remoting from it goes
        /// through WinRM), or RBCD on SRC naming it. kcdsync only explains:
        /// it does not write delegation for machines it does not manage.
        #[arg(long, value_name = "HOST")]
        initiator: Option<String>,
    },
    /// Readiness of every ordered pair of a group, as a grid.
    ///
    /// Rows are sources, columns destinations: ✓ ready, ✗ not ready, · the
    /// same host (long names are numbered, with a legend). Below the grid,
    /// each reason that blocks, with the pairs it blocks. Colour only on a
    /// terminal without NO_COLOR; --output json for scripts.
    Matrix {
        group: String,
        /// sAMAccountName or UPN of the account that runs Move-VM.
        #[arg(long = "as", value_name = "ACCOUNT")]
        account: String,
    },
    /// Stored plans (newest first).
    Plans {
        /// Only the plans waiting for approval.
        #[arg(long)]
        pending: bool,
    },
    /// Approve a pending plan; the controller applies it if AD still matches.
    Approve { id: String },
    /// Reject a pending plan.
    Reject {
        id: String,
        /// Why, stored with the decision.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reconcile now: always the whole fleet (the API refuses a host list).
    Reconcile,
    /// Applied changes, newest first.
    Audit {
        /// Only the changes to this host.
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Print fleet events as they happen (Ctrl-C to stop).
    Watch,
    /// Print a shell completion script (contacts nobody).
    ///
    /// Examples:
    ///   kcdctl completions bash > /etc/bash_completion.d/kcdctl
    ///   kcdctl completions zsh > "${fpath[1]}/_kcdctl"
    ///   kcdctl completions powershell >> $PROFILE
    #[command(verbatim_doc_comment)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Who can impersonate whom, to what: every delegation edge (classic KCD
    /// and RBCD), classified required, excess or dangerous.
    ///
    /// --export prints only the required edges, as CSV or JSON, for security
    /// tools to mark as known-good.
    Exposure {
        /// Only edges of this class: required, excess or dangerous.
        #[arg(long)]
        class: Option<String>,
        /// Only edges from or to this host (FQDN or NetBIOS name).
        #[arg(long)]
        host: Option<String>,
        /// Print the required (approved) edges in this format instead of the table.
        #[arg(long, value_enum, conflicts_with = "class")]
        export: Option<Export>,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_flags_hold_together_and_completions_offer_every_subcommand() {
        Cli::command().debug_assert();
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::PowerShell] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kcdctl", &mut out);
            let script = String::from_utf8(out).unwrap();
            for sub in Cli::command().get_subcommands() {
                assert!(script.contains(sub.get_name()), "{shell}: no {}", sub.get_name());
            }
            assert!(script.contains("--token-file"), "{shell}: global flags are offered too");
        }
    }
}
