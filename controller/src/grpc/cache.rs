//! A small bounded cache: at most `cap` entries, each good for `ttl`; when
//! full, expired entries go first, then the least recently used. CheckMigration
//! and ReadinessMatrix take any account name a caller sends, so the account
//! cache must not grow with them. Eviction scans the map (O(cap)), which is
//! noise beside the AD lookup that every insert follows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Bounded<V> {
    cap: usize,
    ttl: Duration,
    entries: HashMap<String, Entry<V>>,
    /// Grows with every use: the smallest `used` is the least recently used.
    clock: u64,
}

struct Entry<V> {
    value: V,
    at: Instant,
    used: u64,
}

impl<V: Clone> Bounded<V> {
    pub fn new(cap: usize, ttl: Duration) -> Bounded<V> {
        Bounded {
            cap: cap.max(1),
            ttl,
            entries: HashMap::new(),
            clock: 0,
        }
    }

    /// The value stored under `key`, if it is still fresh.
    pub fn get(&mut self, key: &str) -> Option<V> {
        self.clock += 1;
        let ttl = self.ttl;
        match self.entries.get_mut(key) {
            Some(e) if e.at.elapsed() < ttl => {
                e.used = self.clock;
                Some(e.value.clone())
            }
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&mut self, key: String, value: V) {
        self.clock += 1;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.cap {
            let ttl = self.ttl;
            self.entries.retain(|_, e| e.at.elapsed() < ttl);
            if self.entries.len() >= self.cap
                && let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        let used = self.clock;
        self.entries.insert(
            key,
            Entry {
                value,
                at: Instant::now(),
                used,
            },
        );
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_never_holds_more_than_its_cap_and_drops_the_least_recently_used() {
        let mut c = Bounded::new(3, Duration::from_secs(60));
        for k in ["a", "b", "c"] {
            c.insert(k.into(), k.to_uppercase());
        }
        assert_eq!(c.get("a").as_deref(), Some("A"), "a is used now: b is the oldest");
        c.insert("d".into(), "D".into());
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("b"), None, "the least recently used went");
        assert_eq!(c.get("a").as_deref(), Some("A"));
        for i in 0..10_000 {
            c.insert(format!("random-{i}"), String::new());
        }
        assert_eq!(c.len(), 3, "a caller sending endless names cannot grow it");
    }

    #[test]
    fn stale_entries_are_not_answered_and_go_first() {
        let mut c = Bounded::new(2, Duration::from_millis(0));
        c.insert("a".into(), 1);
        assert_eq!(c.get("a"), None, "past its ttl");
        assert_eq!(c.len(), 0);
        let mut c = Bounded::new(2, Duration::from_secs(60));
        c.insert("a".into(), 1);
        c.insert("a".into(), 2);
        assert_eq!((c.get("a"), c.len()), (Some(2), 1), "a key is replaced, not duplicated");
    }
}
