//! When to reconnect: exponential backoff with full jitter, reset only after
//! real progress. A controller that accepts the stream and then drops it
//! (overloaded, refusing a message, crashing on it) would otherwise be
//! reconnected to every half second by every agent.

use std::time::Duration;

/// The first wait, and the wait after progress.
const FIRST: Duration = Duration::from_millis(500);

/// What one session achieved before it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Attempts the controller acknowledged.
    pub acked: usize,
    /// How long the stream was up after the controller's Welcome (zero
    /// without one).
    pub connected_for: Duration,
}

/// Whether the backoff starts over after a session: only if the controller
/// acknowledged something, or the stream stayed up `healthy_after`. A
/// connect, even a Welcome, is not progress.
pub fn made_progress(p: Progress, healthy_after: Duration) -> bool {
    p.acked > 0 || p.connected_for >= healthy_after
}

pub struct Backoff {
    next: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64 ^ std::process::id() as u64)
            .unwrap_or(1);
        Backoff {
            next: FIRST,
            max,
            seed: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.next = FIRST;
    }

    pub fn wait(&mut self) -> Duration {
        // xorshift: enough to keep thousands of agents from reconnecting in step.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let cap = self.next.as_millis() as u64;
        let d = Duration::from_millis(cap / 2 + self.seed % (cap / 2 + 1));
        self.next = (self.next * 2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTHY: Duration = Duration::from_secs(30);

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(8));
        let waits: Vec<Duration> = (0..8).map(|_| b.wait()).collect();
        assert!(waits[0] >= Duration::from_millis(250) && waits[0] <= Duration::from_millis(500));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(8)));
        assert!(waits[7] >= Duration::from_secs(4), "{waits:?}");
        b.reset();
        assert!(b.wait() <= Duration::from_millis(500));
    }

    #[test]
    fn a_welcome_alone_is_not_progress() {
        let welcomed_then_dropped = Progress {
            acked: 0,
            connected_for: Duration::from_millis(40),
        };
        assert!(!made_progress(welcomed_then_dropped, HEALTHY));
        assert!(!made_progress(Progress::default(), HEALTHY), "no Welcome at all");
    }

    #[test]
    fn an_ack_or_a_long_enough_session_is_progress() {
        let acked = Progress {
            acked: 1,
            connected_for: Duration::from_millis(40),
        };
        assert!(made_progress(acked, HEALTHY));
        let stayed = Progress {
            acked: 0,
            connected_for: HEALTHY,
        };
        assert!(made_progress(stayed, HEALTHY));
    }
}
