//! Which domain controller serve writes to (issue 14). The preferred DC is `[ad] url`; the
//! others are the `[[ad.dc]]` entries, in config order, reached with the same CA, bind and
//! timeout. The choice is a pure function of the candidates and of when each last failed
//! ([`order`]), so it is unit-tested without a DC; `runtime::connection` does the I/O.
//!
//! - A DC that could not be reached (connect refused or timed out, the connection lost
//!   under a run) is passed over for a hold-down: 30 s after its first failure, doubling
//!   with each failure that follows within 15 minutes of the one before, up to 5 minutes.
//!   That is what keeps a DC that flaps from taking the writes back and losing them again
//!   every run: the longer it keeps failing, the longer it waits.
//! - Every run takes the first DC in config order that is not held down: once the hold of
//!   the preferred DC is over, the next run tries it first again and stays on it if it
//!   answers ("back to the preferred DC at the next run after it answers"). A run never
//!   switches DC halfway: a write cut off mid-run fails the run, and the retry writes on
//!   the next DC (`reconcile` settles the cut-off write, see `reconcile::audit`).
//! - When every DC is held down, they are still tried, the one whose hold ends first first:
//!   a hold-down orders the candidates, it never leaves serve with nowhere to write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::{AdConfig, DcConfig};

/// How long a DC is passed over after a first failure.
pub const FIRST_HOLD: Duration = Duration::from_secs(30);
/// The longest hold-down.
pub const MAX_HOLD: Duration = Duration::from_secs(300);
/// A failure this long after the DC's previous one starts a new streak (the first hold again).
pub const STREAK_WINDOW: Duration = Duration::from_secs(900);

/// One DC serve may write to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The `[[ad.dc]] name` (its dNSHostName); `None` for `[ad] url`, whose DC says its own
    /// name in its rootDSE.
    pub name: Option<String>,
    pub url: String,
    pub starttls: bool,
}

impl Candidate {
    /// How to reach it: `[ad]` with this URL.
    pub fn config(&self, ad: &AdConfig) -> AdConfig {
        AdConfig {
            url: self.url.clone(),
            starttls: self.starttls,
            ..ad.clone()
        }
    }

    /// For logs: its configured name, else its URL.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.url)
    }
}

/// The writer candidates: `[ad] url` first (the preferred DC), then `[[ad.dc]]` in config
/// order. An `[[ad.dc]]` with `[ad]`'s own URL is the preferred DC listed for the per-DC
/// verify, not a second candidate.
pub fn candidates(ad: &AdConfig) -> Vec<Candidate> {
    let preferred = Candidate {
        name: None,
        url: ad.url.clone(),
        starttls: ad.starttls,
    };
    let others = ad.dcs.iter().filter(|d| d.url != ad.url).map(|d: &DcConfig| Candidate {
        name: Some(d.name.clone()),
        url: d.url.clone(),
        starttls: d.starttls,
    });
    std::iter::once(preferred).chain(others).collect()
}

/// The last failure of one DC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub at: Instant,
    /// Failures in a row, each within `STREAK_WINDOW` of the one before (from 1).
    pub streak: u32,
}

impl Failure {
    /// The failure at `now` of a DC whose previous one was `prev`.
    pub fn after(prev: Option<Failure>, now: Instant) -> Failure {
        let streak = match prev {
            Some(p) if now.saturating_duration_since(p.at) < STREAK_WINDOW => p.streak.saturating_add(1),
            _ => 1,
        };
        Failure { at: now, streak }
    }

    /// How long the DC is passed over after this failure.
    pub fn hold(&self) -> Duration {
        let doublings = self.streak.saturating_sub(1).min(8);
        (FIRST_HOLD * (1 << doublings)).min(MAX_HOLD)
    }

    /// When the hold ends.
    pub fn until(&self) -> Instant {
        self.at + self.hold()
    }
}

/// The order to try the candidates in at `now`, by index (`failures[i]` is candidate i's
/// last failure): those not held down in config order, then those held down, the one whose
/// hold ends first first.
pub fn order(failures: &[Option<Failure>], now: Instant) -> Vec<usize> {
    let held = |f: &Option<Failure>| f.is_some_and(|f| now < f.until());
    let mut out: Vec<usize> = (0..failures.len()).filter(|i| !held(&failures[*i])).collect();
    let mut waiting: Vec<usize> = (0..failures.len()).filter(|i| held(&failures[*i])).collect();
    waiting.sort_by_key(|i| failures[*i].map(|f| f.until()));
    out.extend(waiting);
    out
}

/// When each DC last failed, by URL (a reload that keeps a URL keeps its history).
#[derive(Debug, Default)]
pub struct Health {
    failed: HashMap<String, Failure>,
}

impl Health {
    /// `url` could not be reached (or was lost) at `now`; the failure recorded.
    pub fn failed(&mut self, url: &str, now: Instant) -> Failure {
        let f = Failure::after(self.failed.get(url).copied(), now);
        self.failed.insert(url.to_owned(), f);
        f
    }

    /// The order to try `candidates` in at `now`.
    pub fn order(&self, candidates: &[Candidate], now: Instant) -> Vec<usize> {
        let failures: Vec<Option<Failure>> = candidates.iter().map(|c| self.failed.get(&c.url).copied()).collect();
        order(&failures, now)
    }

    /// Some candidate is not held down at `now`: after losing a DC (held down from then), a
    /// retry at once has somewhere to write.
    pub fn any_ready(&self, candidates: &[Candidate], now: Instant) -> bool {
        candidates
            .iter()
            .any(|c| self.failed.get(&c.url).is_none_or(|f| now >= f.until()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn failed(at: Instant, streak: u32) -> Option<Failure> {
        Some(Failure { at, streak })
    }

    #[test]
    fn a_healthy_preferred_dc_is_always_first() {
        let now = Instant::now();
        assert_eq!(order(&[None, None, None], now), vec![0, 1, 2]);
        // A fallback that failed long ago changes nothing either.
        assert_eq!(order(&[None, failed(now - S(3600), 1), None], now), vec![0, 1, 2]);
    }

    #[test]
    fn a_dc_that_just_failed_is_passed_over_for_the_next_in_config_order() {
        let now = Instant::now();
        assert_eq!(order(&[failed(now, 1), None, None], now), vec![1, 2, 0]);
        // The next one down too: the third DC writes.
        assert_eq!(order(&[failed(now, 1), failed(now, 1), None], now), vec![2, 0, 1]);
    }

    #[test]
    fn the_preferred_dc_is_taken_back_at_the_first_run_after_its_hold() {
        let t0 = Instant::now();
        let f = failed(t0, 1);
        assert_eq!(order(&[f, None], t0 + S(29)), vec![1, 0], "still held");
        assert_eq!(order(&[f, None], t0 + S(30)), vec![0, 1], "tried first again");
    }

    #[test]
    fn a_dc_that_keeps_failing_waits_longer_each_time_up_to_five_minutes() {
        let t0 = Instant::now();
        let mut f = Failure::after(None, t0);
        let mut holds = vec![f.hold().as_secs()];
        for n in 1..8 {
            // It answered after its hold, then failed again soon after: a flapping DC.
            f = Failure::after(Some(f), f.until() + S(n));
            holds.push(f.hold().as_secs());
        }
        assert_eq!(holds, vec![30, 60, 120, 240, 300, 300, 300, 300]);
        // Quiet for longer than the streak window: its next failure is a first one again.
        let later = Failure::after(Some(f), f.at + STREAK_WINDOW);
        assert_eq!((later.streak, later.hold()), (1, FIRST_HOLD));
    }

    #[test]
    fn when_every_dc_is_held_the_one_released_first_is_tried_first() {
        let now = Instant::now();
        let order = order(&[failed(now, 3), failed(now - S(20), 1), failed(now, 1)], now);
        // Holds end at +120 s, +10 s and +30 s.
        assert_eq!(order, vec![1, 2, 0]);
    }

    #[test]
    fn health_keys_failures_by_url_and_sees_another_dc_to_retry_on() {
        let now = Instant::now();
        let c = |url: &str| Candidate {
            name: None,
            url: url.into(),
            starttls: false,
        };
        let cands = [c("ldaps://dc1"), c("ldaps://dc2")];
        let mut h = Health::default();
        assert!(h.any_ready(&cands, now));
        assert_eq!(h.failed("ldaps://dc1", now).streak, 1);
        assert_eq!(h.order(&cands, now), vec![1, 0]);
        assert!(h.any_ready(&cands, now), "dc2 is there to retry on");
        h.failed("ldaps://dc2", now);
        assert!(!h.any_ready(&cands, now), "dc2 is held too");
        assert!(h.any_ready(&cands, now + FIRST_HOLD), "until dc1's hold is over");
        assert_eq!(h.failed("ldaps://dc1", now + S(1)).streak, 2);
    }

    #[test]
    fn candidates_are_ad_url_then_the_other_dcs_in_config_order() {
        let cfg = crate::config::test_util::parse(&crate::config::test_util::AD.replace(
            "[scope]",
            "[[ad.dc]]\nname = \"dc3.lab.test\"\nurl = \"ldaps://127.0.0.3\"\n[[ad.dc]]\nname = \"dc2.lab.test\"\nurl = \"ldaps://127.0.0.2\"\n[scope]",
        ))
        .unwrap();
        let cands = candidates(&cfg.ad);
        let got: Vec<(Option<&str>, &str)> = cands.iter().map(|c| (c.name.as_deref(), c.url.as_str())).collect();
        assert_eq!(got[0].0, None, "[ad] url first: {got:?}");
        assert_eq!(got[0].1, cfg.ad.url);
        assert_eq!(
            &got[1..],
            &[
                (Some("dc3.lab.test"), "ldaps://127.0.0.3"),
                (Some("dc2.lab.test"), "ldaps://127.0.0.2")
            ]
        );
    }
}
