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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Highest RecordId read (0: nothing read yet).
    pub record_id: u64,
    /// TimeCreated (Unix ms) of that record. A cleared log reuses RecordIds;
    /// a record at the cursor with another time is another record.
    pub record_time_ms: Option<i64>,
    /// Set once the log was seen cleared: the agent's clock (Unix ms) at that
    /// moment. It is part of attempt ids, so the RecordIds a cleared log
    /// hands out again never name an attempt the controller already stored.
    pub log_generation: Option<i64>,
}

impl Cursor {
    pub fn at(record_id: u64) -> Cursor {
        Cursor {
            record_id,
            ..Default::default()
        }
    }
}

/// The id of the attempt recorded as `record_id` in the event log of
/// `generation`: `"<host>:<RecordId>"` for a log never seen cleared (the ids
/// agents always sent), `"<host>:g<generation>:<RecordId>"` after a clear.
pub fn attempt_id(host: &str, generation: Option<i64>, record_id: u64) -> String {
    match generation {
        None => format!("{host}:{record_id}"),
        Some(g) => format!("{host}:g{g}:{record_id}"),
    }
}

/// What the event log says about a saved cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogCheck {
    /// The record at the cursor is still there (or nothing says otherwise):
    /// read on after it.
    Continues,
    /// RecordIds restarted below the cursor: the log was cleared. Read it
    /// again from the start under a new generation.
    Cleared,
    /// The record at the cursor was overwritten by newer ones (a full,
    /// circular log): what lay between is gone; read on.
    Wrapped,
}

/// Decides whether the log was cleared, from the first record at or after
/// `saved.record_id` (its RecordId and time) and, only when there is none,
/// the newest record of the log. Pure, so every case has a unit test.
///
/// Nothing at or after the cursor is a clear only if the log holds an older
/// record: an empty or unreadable log proves nothing, and a false "cleared"
/// would resend the whole log under new ids.
pub fn check_log(saved: &Cursor, first: Option<(u64, Option<i64>)>, newest: Option<u64>) -> LogCheck {
    if saved.record_id == 0 {
        return LogCheck::Continues;
    }
    match first {
        Some((id, time)) if id == saved.record_id => match (saved.record_time_ms, time) {
            (Some(a), Some(b)) if a != b => LogCheck::Cleared,
            _ => LogCheck::Continues,
        },
        Some((id, _)) if id > saved.record_id => LogCheck::Wrapped,
        Some(_) => LogCheck::Cleared,
        None => match newest {
            Some(n) if n < saved.record_id => LogCheck::Cleared,
            _ => LogCheck::Continues,
        },
    }
}

/// The agent's clock in Unix ms (a new log generation).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub trait HostProbe: Send + Sync + 'static {
    /// Identity, services, migration settings, SYSTEM tickets. A step that
    /// fails is named in `probe_errors`; its fields stay unset.
    fn report(&self) -> impl Future<Output = HostReport> + Send;

    /// Migration attempts recorded after `since`, oldest first, and the
    /// cursor to pass next time. A log cleared since `since` (see
    /// [`check_log`]) is read again from its start under a new
    /// `log_generation`.
    fn attempts(
        &self,
        since: &Cursor,
    ) -> impl Future<Output = Result<(Vec<MigrationAttempt>, Cursor), ProbeError>> + Send;

    /// `klist -li 0x3e7 purge`: drops the SYSTEM logon session's tickets so
    /// the next migration asks the KDC again. Returns what the tool said.
    fn purge_system_tickets(&self) -> impl Future<Output = Result<String, ProbeError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(record_id: u64, time: i64) -> Cursor {
        Cursor {
            record_id,
            record_time_ms: Some(time),
            log_generation: None,
        }
    }

    #[test]
    fn the_record_at_the_cursor_with_its_time_means_the_log_goes_on() {
        assert_eq!(
            check_log(&saved(40, 1000), Some((40, Some(1000))), None),
            LogCheck::Continues
        );
        assert_eq!(
            check_log(&Cursor::at(40), Some((40, Some(5))), None),
            LogCheck::Continues
        );
        assert_eq!(check_log(&Cursor::default(), None, Some(3)), LogCheck::Continues);
    }

    #[test]
    fn record_ids_restarting_below_the_cursor_mean_the_log_was_cleared() {
        // Cleared, then fewer records than the cursor written since.
        assert_eq!(check_log(&saved(40, 1000), None, Some(3)), LogCheck::Cleared);
        // Cleared, then more: RecordId 40 exists again but is another record.
        assert_eq!(
            check_log(&saved(40, 1000), Some((40, Some(9000))), None),
            LogCheck::Cleared
        );
    }

    #[test]
    fn an_empty_or_unreadable_log_is_not_taken_for_a_clear() {
        assert_eq!(check_log(&saved(40, 1000), None, None), LogCheck::Continues);
    }

    #[test]
    fn a_log_that_overwrote_the_cursor_record_wrapped() {
        assert_eq!(
            check_log(&saved(40, 1000), Some((47, Some(2000))), None),
            LogCheck::Wrapped
        );
    }

    #[test]
    fn attempt_ids_change_with_the_log_generation() {
        assert_eq!(attempt_id("HV01", None, 7), "HV01:7");
        assert_eq!(attempt_id("HV01", Some(1_700_000_000_000), 7), "HV01:g1700000000000:7");
    }
}
