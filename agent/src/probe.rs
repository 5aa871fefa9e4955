//! How the agent looks at its host. Two implementations: [`windows`] runs
//! PowerShell and klist on a real Hyper-V host; [`simulated`] reads a host
//! described by a file, for the lab, the demo and the tests, and asks a real
//! KDC through [`kerberos`]. Both run their tools with [`crate::process`].

use std::future::Future;

use kcdsync_proto::v1::{HostReport, MigrationAttempt};

use crate::process::RunError;

pub mod kerberos;
pub mod simulated;
pub mod windows;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("`{command}` did not finish within {secs} s")]
    Timeout { command: String, secs: u64 },
    #[error("cannot run `{command}`: {message}")]
    Spawn { command: String, message: String },
    #[error("`{command}` failed: {message}")]
    Failed { command: String, message: String },
    #[error("cannot parse the output of `{command}`: {message}")]
    Parse { command: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl ProbeError {
    /// A failed run of the command named `step`, as the probes report it.
    pub(crate) fn from_run(step: &str, e: RunError) -> ProbeError {
        let command = step.to_string();
        match e {
            RunError::Spawn { .. } => ProbeError::Spawn {
                command,
                message: e.to_string(),
            },
            RunError::Timeout { after, .. } => ProbeError::Timeout {
                command,
                secs: after.as_secs().max(1),
            },
            other => ProbeError::Failed {
                command,
                message: other.to_string(),
            },
        }
    }
}

/// Where the attempt reader stopped; persisted by the agent so a restart
/// neither loses nor re-reads attempts. For Windows, the event RecordId.
pub type Cursor = u64;

pub trait HostProbe: Send + Sync + 'static {
    /// Identity, services, migration settings, SYSTEM tickets. A step that
    /// fails is named in `probe_errors`; its fields stay unset.
    fn report(&self) -> impl Future<Output = HostReport> + Send;

    /// Migration attempts recorded after `since`, oldest first, and the
    /// cursor to pass next time.
    fn attempts(
        &self,
        since: Cursor,
    ) -> impl Future<Output = Result<(Vec<MigrationAttempt>, Cursor), ProbeError>> + Send;

    /// `klist -li 0x3e7 purge`: drops the SYSTEM logon session's tickets so
    /// the next migration asks the KDC again. Returns what the tool said.
    fn purge_system_tickets(&self) -> impl Future<Output = Result<String, ProbeError>> + Send;
}
