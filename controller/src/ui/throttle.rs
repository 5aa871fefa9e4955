//! Sign-in attempts per client address: after [`MAX_FAILURES`] wrong tokens
//! within [`WINDOW`], that address is refused (429) until the window ends.
//! Tokens are long random secrets, so this is not what keeps them safe; it
//! keeps a scanner from turning the sign-in form into a token oracle, and
//! makes one in the audit log's view (every refusal is logged).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(300);
/// Addresses tracked at most; the oldest window goes first.
const MAX_TRACKED: usize = 10_000;

#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Throttle {
    /// `Err(wait)` while `ip` has used up its failures.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let t = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match t.get(&ip) {
            Some(&(since, n)) if n >= MAX_FAILURES && now.duration_since(since) < WINDOW => {
                Err(WINDOW - now.duration_since(since))
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut t = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() >= MAX_TRACKED && !t.contains_key(&ip) {
            t.retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
            if t.len() >= MAX_TRACKED
                && let Some(oldest) = t.iter().min_by_key(|(_, (since, _))| *since).map(|(k, _)| *k)
            {
                t.remove(&oldest);
            }
        }
        let e = t.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let t = Throttle::default();
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let now = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(t.check(a, now).is_ok());
            t.failed(a, now);
        }
        let wait = t.check(a, now + Duration::from_secs(60)).unwrap_err();
        assert_eq!(wait, WINDOW - Duration::from_secs(60));
        assert!(t.check(b, now).is_ok(), "another address is not affected");
        assert!(t.check(a, now + WINDOW).is_ok(), "the window ended");
        t.failed(a, now + WINDOW);
        assert!(t.check(a, now + WINDOW).is_ok(), "a new window starts at one failure");
    }

    #[test]
    fn a_success_clears_the_count() {
        let t = Throttle::default();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            t.failed(a, now);
        }
        t.succeeded(a);
        t.failed(a, now);
        assert!(t.check(a, now).is_ok());
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            t.failed(IpAddr::from(i.to_be_bytes()), now + Duration::from_millis(u64::from(i)));
        }
        assert!(t.failures.lock().unwrap().len() <= MAX_TRACKED);
    }
}
