//! Ticket purges, at most one per `purge_min_interval`. A purge makes every
//! next Kerberos use of the SYSTEM session ask the KDC again; a controller that
//! sends them in a loop (a bug, a replayed stream, a compromised controller)
//! must not turn that into a KDC storm from 500 hosts. A purge asked for within
//! the interval is not dropped — the change behind it must still take effect —
//! it waits until the interval has passed, and every purge asked for meanwhile
//! is answered by that one run (tickets fetched after it are fresh for all).

use std::time::{Duration, Instant};

use kcdsync_proto::v1::Command;

pub struct PurgeLimit {
    min_interval: Duration,
    last: Option<Instant>,
    /// Purges asked for within the interval, answered by the next run.
    waiting: Vec<Command>,
}

/// What to do with a purge that was just asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Run it now.
    Now,
    /// It waits until this instant (another purge ran less than the interval ago).
    Later(Instant),
    /// The same command is already waiting (sent again after a reconnect).
    AlreadyWaiting,
}

impl PurgeLimit {
    pub fn new(min_interval: Duration) -> PurgeLimit {
        PurgeLimit {
            min_interval,
            last: None,
            waiting: Vec::new(),
        }
    }

    pub fn offer(&mut self, cmd: &Command, now: Instant) -> Admit {
        if self.waiting.iter().any(|w| w.command_id == cmd.command_id) {
            return Admit::AlreadyWaiting;
        }
        match self.due_after_last() {
            Some(due) if due > now => {
                self.waiting.push(cmd.clone());
                Admit::Later(due)
            }
            _ if !self.waiting.is_empty() => {
                // The interval is over but the waiting ones have not run yet: join them.
                self.waiting.push(cmd.clone());
                Admit::Later(now)
            }
            _ => Admit::Now,
        }
    }

    /// When the waiting purges are to run, if any wait.
    pub fn due(&self) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        Some(self.due_after_last().unwrap_or_else(Instant::now))
    }

    /// The purges one run now answers; the run is counted from `now`.
    pub fn take(&mut self, now: Instant) -> Vec<Command> {
        self.last = Some(now);
        std::mem::take(&mut self.waiting)
    }

    /// A purge ran now.
    pub fn ran(&mut self, now: Instant) {
        self.last = Some(now);
    }

    fn due_after_last(&self) -> Option<Instant> {
        self.last.map(|t| t + self.min_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purge(id: &str) -> Command {
        Command {
            command_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn purges_in_a_burst_run_once_per_interval_and_none_is_dropped() {
        let t0 = Instant::now();
        let ten = Duration::from_secs(10);
        let mut limit = PurgeLimit::new(ten);
        assert_eq!(limit.offer(&purge("a"), t0), Admit::Now);
        limit.ran(t0);
        assert_eq!(limit.due(), None);

        // A burst within the interval waits for its end; a resent one is not queued twice.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(limit.offer(&purge("b"), t1), Admit::Later(t0 + ten));
        assert_eq!(limit.offer(&purge("c"), t1), Admit::Later(t0 + ten));
        assert_eq!(limit.offer(&purge("b"), t1), Admit::AlreadyWaiting);
        assert_eq!(limit.due(), Some(t0 + ten));

        // One run answers both, and the next interval counts from it.
        let run = t0 + ten;
        let answered: Vec<String> = limit.take(run).into_iter().map(|c| c.command_id).collect();
        assert_eq!(answered, ["b", "c"]);
        assert_eq!(limit.due(), None);
        assert_eq!(
            limit.offer(&purge("d"), run + Duration::from_secs(2)),
            Admit::Later(run + ten)
        );
        limit.take(run + ten);

        // After a quiet interval, the next one runs at once.
        assert_eq!(limit.offer(&purge("e"), run + ten + ten), Admit::Now);
    }
}
