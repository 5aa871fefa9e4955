//! Attempts sent on this stream and not yet acknowledged, with when they were
//! sent: one the controller has not acknowledged within the resend timeout
//! (a message lost in a controller's restart of its writer, an ack lost) is
//! sent again on the same stream, not only after a reconnect. Resending is
//! safe: the controller stores an attempt id once per host.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct InFlight {
    sent: HashMap<String, Instant>,
}

impl InFlight {
    pub fn contains(&self, id: &str) -> bool {
        self.sent.contains_key(id)
    }

    pub fn sent(&mut self, id: String, at: Instant) {
        self.sent.insert(id, at);
    }

    pub fn acked(&mut self, id: &str) {
        self.sent.remove(id);
    }

    /// Forgets the attempts sent `after` or longer before `now`, so they
    /// go out again; how many.
    pub fn expire(&mut self, now: Instant, after: Duration) -> usize {
        let before = self.sent.len();
        self.sent.retain(|_, at| now.saturating_duration_since(*at) < after);
        before - self.sent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unacknowledged_attempt_is_due_again_after_the_timeout() {
        let t0 = Instant::now();
        let after = Duration::from_secs(30);
        let mut f = InFlight::default();
        f.sent("h:1".into(), t0);
        f.sent("h:2".into(), t0 + Duration::from_secs(20));
        assert_eq!(f.expire(t0 + Duration::from_secs(29), after), 0, "not yet");
        assert_eq!(f.expire(t0 + Duration::from_secs(30), after), 1);
        assert!(!f.contains("h:1"), "h:1 goes out again");
        assert!(f.contains("h:2"), "h:2 was sent later");
    }

    #[test]
    fn an_acknowledged_attempt_is_never_resent() {
        let t0 = Instant::now();
        let mut f = InFlight::default();
        f.sent("h:1".into(), t0);
        f.acked("h:1");
        assert_eq!(f.expire(t0 + Duration::from_secs(3600), Duration::from_secs(30)), 0);
        assert!(!f.contains("h:1"));
    }
}
