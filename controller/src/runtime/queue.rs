//! Per-host rate limit, as kube-runtime's scheduler keeps one per object: a
//! host kcdsync had to write again soon after its last write (someone, or a
//! script, keeps undoing it) is held back exponentially longer, so one
//! fight over one host cannot become a write storm; the others go on.
//! Duplicated wake-ups collapse before they get here (one delta read answers
//! them all).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::reconcile::Decision;

/// A write within this long of the host's previous one counts as a repeat.
const WINDOW: Duration = Duration::from_secs(60);
const BASE: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct HostQueue {
    hosts: HashMap<String, Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last: Instant,
    strikes: u32,
}

impl Entry {
    fn until(&self) -> Instant {
        let hold = if self.strikes == 0 {
            Duration::ZERO
        } else {
            (BASE * 2u32.saturating_pow(self.strikes - 1)).min(MAX)
        };
        self.last + hold
    }
}

impl HostQueue {
    /// Leaves out of `decision`'s automatic writes the hosts still held back; the earliest
    /// moment one of those is due (the loop wakes then).
    pub fn hold(&self, decision: &mut Decision, now: Instant) -> Option<Instant> {
        let mut due: Option<Instant> = None;
        decision.guarded.auto.retain(|c| match self.hosts.get(&c.host) {
            Some(e) if e.until() > now => {
                tracing::info!(host = %c.host, strikes = e.strikes, "host written again too soon; held back");
                due = Some(due.map_or(e.until(), |d| d.min(e.until())));
                false
            }
            _ => true,
        });
        due
    }

    /// Records the hosts a run wrote.
    pub fn written<'a>(&mut self, hosts: impl IntoIterator<Item = &'a str>, now: Instant) {
        for h in hosts {
            let e = self
                .hosts
                .entry(h.to_owned())
                .or_insert(Entry { last: now, strikes: 0 });
            e.strikes = if now.duration_since(e.last) < WINDOW && e.last != now {
                e.strikes + 1
            } else {
                0
            };
            e.last = now;
        }
        self.hosts.retain(|_, e| now.duration_since(e.last) < WINDOW.max(MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_written_again_and_again_is_held_back_longer_each_time() {
        let mut q = HostQueue::default();
        let t0 = Instant::now();
        q.written(["hv01"], t0);
        assert_eq!(q.hosts["hv01"].until(), t0, "a first write holds nothing back");
        q.written(["hv01"], t0 + Duration::from_secs(2));
        q.written(["hv01"], t0 + Duration::from_secs(4));
        q.written(["hv01"], t0 + Duration::from_secs(8));
        let e = q.hosts["hv01"];
        assert_eq!(e.strikes, 3);
        assert_eq!(e.until(), t0 + Duration::from_secs(8 + 4));
        // Quiet for a while: the next write is a fresh start.
        q.written(["hv01"], t0 + Duration::from_secs(200));
        assert_eq!(q.hosts["hv01"].strikes, 0);
    }
}
