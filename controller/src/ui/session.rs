//! Dashboard sessions: who signed in (a [`Verified`] caller, never the token
//! itself), the session's CSRF token, and when it expires. A session is a
//! random 256-bit id in an HttpOnly, Secure, SameSite=Strict `__Host-` cookie;
//! the table keys it by its SHA-256, so the map holds nothing a browser could
//! replay. Sessions live in this process only: a restart or another replica
//! asks to sign in again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use crate::grpc::auth::Verified;

/// The cookie's name. `__Host-` makes the browser refuse it unless it is
/// Secure, has Path=/ and no Domain: no other host or path can plant one.
pub const COOKIE: &str = "__Host-kcdsync";
/// A session unused this long ends …
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// … and any session ends this long after sign-in.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the least recently used goes first.
pub const MAX_SESSIONS: usize = 4096;

pub struct Sessions {
    table: Mutex<HashMap<[u8; 32], Session>>,
    rng: SystemRandom,
}

#[derive(Clone)]
pub struct Session {
    pub who: Verified,
    /// Sent back in every form of this session; a POST without it is refused.
    pub csrf: String,
    created: Instant,
    used: Instant,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            table: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        }
    }
}

impl Sessions {
    /// A new session for `who`: the cookie value to set.
    pub fn start(&self, who: Verified) -> String {
        let id = self.random_hex();
        let now = Instant::now();
        let session = Session {
            who,
            csrf: self.random_hex(),
            created: now,
            used: now,
        };
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|_, s| s.live(now));
        if t.len() >= MAX_SESSIONS
            && let Some(oldest) = t.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| *k)
        {
            t.remove(&oldest);
        }
        t.insert(key(&id), session);
        id
    }

    /// The live session a cookie value names (its last use is now).
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(id);
        let s = t.get_mut(&k)?;
        if !s.live(now) {
            t.remove(&k);
            return None;
        }
        s.used = now;
        Some(s.clone())
    }

    pub fn end(&self, id: &str) {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).remove(&key(id));
    }

    fn random_hex(&self) -> String {
        let mut b = [0u8; 32];
        // SystemRandom fails only when the OS has no randomness at all.
        self.rng.fill(&mut b).expect("the OS random number generator failed");
        hex(&b)
    }
}

impl Session {
    fn live(&self, now: Instant) -> bool {
        now.duration_since(self.used) < IDLE && now.duration_since(self.created) < MAX_AGE
    }

    /// Whether a form's token is this session's (in constant time).
    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        let Some(p) = presented else { return false };
        let (a, b) = (p.as_bytes(), self.csrf.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

fn key(id: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The `Set-Cookie` value that starts a session (no Max-Age: it ends with the
/// browser, or at [`IDLE`]/[`MAX_AGE`] on the server, whichever comes first).
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that removes it.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The session id in the request's `Cookie` headers (HTTP/2 may split them).
pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, v)| *k == COOKIE && v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiConfig, Role};
    use crate::grpc::auth::Auth;

    fn someone(role: Role) -> Verified {
        let api = ApiConfig::for_tests(&[("ops", role, "s3cret-token")]);
        Auth::new(&api).by_token("s3cret-token").unwrap()
    }

    #[test]
    fn a_session_is_found_by_its_cookie_only() {
        let s = Sessions::default();
        let id = s.start(someone(Role::Read));
        assert_eq!(id.len(), 64);
        let got = s.get(&id).expect("live");
        assert_eq!(got.who.name, "token:ops");
        assert!(s.get(&"0".repeat(64)).is_none());
        s.end(&id);
        assert!(s.get(&id).is_none(), "signed out");
    }

    #[test]
    fn the_csrf_token_must_be_this_sessions() {
        let s = Sessions::default();
        let a = s.get(&s.start(someone(Role::Write))).unwrap();
        let b = s.get(&s.start(someone(Role::Write))).unwrap();
        assert_ne!(a.csrf, b.csrf);
        assert!(a.csrf_ok(Some(&a.csrf)));
        assert!(!a.csrf_ok(Some(&b.csrf)), "another session's token");
        assert!(!a.csrf_ok(None));
        assert!(!a.csrf_ok(Some("")));
        assert!(!a.csrf_ok(Some(&a.csrf[..63])));
    }

    #[test]
    fn the_table_never_holds_more_than_its_cap() {
        let s = Sessions::default();
        let first = s.start(someone(Role::Read));
        for _ in 0..MAX_SESSIONS {
            s.start(someone(Role::Read));
        }
        assert!(s.table.lock().unwrap().len() <= MAX_SESSIONS);
        assert!(s.get(&first).is_none(), "the least recently used went first");
    }

    #[test]
    fn only_a_well_formed_session_cookie_is_read() {
        let id = "ab".repeat(32);
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "theme=dark".parse().unwrap());
        h.append("cookie", format!("other=1; {COOKIE}={id}").parse().unwrap());
        assert_eq!(from_headers(&h), Some(id));
        for bad in [
            format!("{COOKIE}=short"),
            format!("{COOKIE}={}", "zz".repeat(32)),
            format!("x{COOKIE}={}", "ab".repeat(32)),
        ] {
            let mut h = axum::http::HeaderMap::new();
            h.insert("cookie", bad.parse().unwrap());
            assert_eq!(from_headers(&h), None, "{bad}");
        }
    }
}
