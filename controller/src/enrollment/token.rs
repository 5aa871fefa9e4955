//! One-time join tokens: the enrollment fallback for a host that cannot reach its KDC.
//!
//! An operator creates one for a host (`kcdsync-controller agents token create HOST`): a secret
//! of 32 bytes from the OS's CSPRNG (ring's `SystemRandom`), printed once as `kcdj_` and 64 hex
//! digits. The store keeps its SHA-256 only, the host (FQDN, lower case), who created it, when
//! it expires (an hour by default, a week at most) and, once spent, when and from where.
//!
//! An enrollment with a token (`EnrollRequest.join_token`) is granted only if, after what every
//! enrollment checks first (the controller enrolls, not too many at once):
//! - the token is known, unexpired, unused and not revoked, else UNAUTHENTICATED with one
//!   message for all four (a caller learns nothing about which tokens exist; the log and the
//!   `kcdsync.agents.enrollments` result say which: `token_unknown`, `token_expired`,
//!   `token_used`, `token_revoked`, `token_malformed`);
//! - the CSR names exactly the token's host (checked before the token is spent, so a mistake
//!   does not burn it; a CSR for another host is PERMISSION_DENIED and audited);
//! - the token's host is still a trusted computer of the managed scope, as Kerberos enrollment
//!   would find it (`Enrollable`), else PERMISSION_DENIED, audited;
//! - spending it wins: one conditional UPDATE (`used_at IS NULL`) across every replica sharing
//!   the store, so of two callers exactly one goes on (the other is told the token is not
//!   valid);
//! - then `Renewer::certify` as for Kerberos (rate, revocation, CA), audited `agent-enrolled`
//!   naming the token. When nothing could be issued after it was spent (rate limit, revoked
//!   host, CA trouble) the token is given back, so it is spent only by the certificate it
//!   bought.

use std::time::Duration;

use ring::rand::SecureRandom;

use super::{Caller, EnrollRefusal, Enroller};
use crate::renewal::{Issued, Refusal, Renewer, Via};
use crate::store::{JoinToken, Store, StoreError, TokenRevoked, now_ms};

/// What every secret starts with, so one found in a file or a log is recognized.
pub const SECRET_PREFIX: &str = "kcdj_";
/// A token's lifetime when `--ttl` is not given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The longest lifetime: a token is for a host being set up now, not a standing credential.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);
/// The shortest lifetime.
pub const MIN_TTL: Duration = Duration::from_secs(60);

/// Why a token was not accepted: logged and counted, never told to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// Not `kcdj_` and 64 hex digits.
    Malformed,
    Unknown,
    Expired,
    Used,
    Revoked,
}

impl TokenProblem {
    pub fn metric(self) -> &'static str {
        match self {
            TokenProblem::Malformed => "token_malformed",
            TokenProblem::Unknown => "token_unknown",
            TokenProblem::Expired => "token_expired",
            TokenProblem::Used => "token_used",
            TokenProblem::Revoked => "token_revoked",
        }
    }

    fn says(self) -> &'static str {
        match self {
            TokenProblem::Malformed => "not a join token",
            TokenProblem::Unknown => "no such token",
            TokenProblem::Expired => "expired",
            TokenProblem::Used => "already used",
            TokenProblem::Revoked => "revoked",
        }
    }

    /// Why `t` cannot be used at `now_ms`, if it cannot.
    pub fn of(t: &JoinToken, now_ms: i64) -> Option<TokenProblem> {
        if t.revoked_at_ms.is_some() {
            Some(TokenProblem::Revoked)
        } else if t.used_at_ms.is_some() {
            Some(TokenProblem::Used)
        } else if t.expires_at_ms <= now_ms {
            Some(TokenProblem::Expired)
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Host(crate::certs::CertError),
    #[error("--ttl `{0}`: give a number with a unit, e.g. 30m, 1h, 2d (at least 1m, at most 7d)")]
    Ttl(String),
    #[error("who creates or revokes must be named (1 to 128 printable characters; --by or $USER)")]
    By,
    #[error("`{0}` is not a join token id (jt- and 12 hex digits, as `agents token list` shows)")]
    Id(String),
    #[error("the OS's random generator failed: no token was created")]
    Random,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `--ttl`: `90s`, `30m`, `1h`, `7d` (a bare number is seconds), within [`MIN_TTL`]..=[`MAX_TTL`].
pub fn parse_ttl(input: &str) -> Result<Duration, TokenError> {
    let err = || TokenError::Ttl(input.chars().take(40).collect());
    let s = input.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| err())?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(err)?;
    let ttl = Duration::from_secs(secs);
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(err());
    }
    Ok(ttl)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random(n: usize) -> Result<Vec<u8>, TokenError> {
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| TokenError::Random)?;
    Ok(buf)
}

/// A new secret: [`SECRET_PREFIX`] and 32 random bytes in hex.
fn new_secret() -> Result<String, TokenError> {
    Ok(format!("{SECRET_PREFIX}{}", hex(&random(32)?)))
}

/// A new public id: `jt-` and 6 random bytes in hex.
fn new_id() -> Result<String, TokenError> {
    Ok(format!("jt-{}", hex(&random(6)?)))
}

/// What the store keeps of a secret: its SHA-256, hex.
pub fn hash(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Whether `s` has a secret's shape (so garbage is refused without a store read).
pub fn well_formed(s: &str) -> bool {
    s.strip_prefix(SECRET_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

fn by(input: &str) -> Result<String, TokenError> {
    let input = input.trim();
    if input.is_empty() || input.chars().count() > 128 || input.chars().any(char::is_control) {
        return Err(TokenError::By);
    }
    Ok(input.to_owned())
}

fn id(input: &str) -> Result<String, TokenError> {
    let s = input.trim();
    let ok = s
        .strip_prefix("jt-")
        .is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(TokenError::Id(input.chars().take(40).collect()));
    }
    Ok(s.to_ascii_lowercase())
}

/// Creates a token for `host_input` living `ttl`, audited: the token as stored, and its secret
/// (shown once, kept nowhere).
pub async fn create(
    store: &Store,
    host_input: &str,
    ttl: Duration,
    by_input: &str,
) -> Result<(JoinToken, String), TokenError> {
    let host = crate::certs::normalize_host_fqdn(host_input).map_err(TokenError::Host)?;
    let by = by(by_input)?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(TokenError::Ttl(format!("{}s", ttl.as_secs())));
    }
    let secret = new_secret()?;
    let now = now_ms();
    let token = JoinToken {
        id: new_id()?,
        host,
        created_at_ms: now,
        expires_at_ms: now + ttl.as_millis() as i64,
        created_by: by,
        used_at_ms: None,
        used_from: None,
        revoked_at_ms: None,
        revoked_by: None,
    };
    store.create_join_token(&token, &hash(&secret)).await?;
    Ok((token, secret))
}

/// Revokes token `id_input`; `None` when there is no such token.
pub async fn revoke(store: &Store, id_input: &str, by_input: &str) -> Result<Option<TokenRevoked>, TokenError> {
    let (id, by) = (id(id_input)?, by(by_input)?);
    Ok(store.revoke_join_token(&id, &by).await?)
}

/// A token's state for `agents token list`.
pub fn state(t: &JoinToken, now_ms: i64) -> String {
    match (t.revoked_at_ms, t.used_at_ms) {
        (Some(at), _) => format!(
            "revoked {} by {}",
            crate::report::format_ms(at),
            t.revoked_by.as_deref().unwrap_or("?")
        ),
        (None, Some(at)) => format!(
            "used {} from {}",
            crate::report::format_ms(at),
            t.used_from.as_deref().unwrap_or("?")
        ),
        (None, None) if t.expires_at_ms <= now_ms => "expired, unused".to_owned(),
        (None, None) => "unused".to_owned(),
    }
}

/// `agents token list` as a table (never a secret: the store has none).
pub fn table(tokens: &[JoinToken], now_ms: i64) -> String {
    use std::fmt::Write;
    if tokens.is_empty() {
        return "no join tokens (create one with `kcdsync-controller agents token create HOST`)\n".to_owned();
    }
    let mut out = format!(
        "{:<15}  {:<30}  {:<24}  {:<24}  {:<12}  STATE\n",
        "ID", "HOST", "CREATED", "EXPIRES", "BY"
    );
    for t in tokens {
        let _ = writeln!(
            out,
            "{:<15}  {:<30}  {:<24}  {:<24}  {:<12}  {}",
            t.id,
            t.host,
            crate::report::format_ms(t.created_at_ms),
            crate::report::format_ms(t.expires_at_ms),
            t.created_by,
            state(t, now_ms)
        );
    }
    out
}

impl Enroller {
    /// The join token path of [`Enroller::enroll`] (see the module documentation).
    pub(super) async fn decide_token(
        &self,
        renewer: &Renewer,
        store: &Store,
        remote: &str,
        csr: &[u8],
        secret: &str,
        who: &mut Caller,
    ) -> Result<(String, Issued), EnrollRefusal> {
        // Enrollment on at all: [agents.enroll] set (the endpoint takes callers without a
        // certificate only then).
        if self.acceptor.read().unwrap_or_else(|e| e.into_inner()).is_none() {
            return Err(EnrollRefusal::NotConfigured);
        }
        let _permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| EnrollRefusal::Busy)?;
        let refuse = |p: TokenProblem, who: &Caller| {
            let token = who.name.as_deref().unwrap_or("(unknown)");
            // A real token used again, late or after its revocation is worth a warning (a
            // copy, a replay); garbage is the noise of anyone who reaches the port.
            if matches!(p, TokenProblem::Malformed | TokenProblem::Unknown) {
                tracing::info!(token, %remote, problem = p.says(), "join token refused");
            } else {
                tracing::warn!(token, %remote, problem = p.says(), "join token refused");
            }
            EnrollRefusal::Token(p)
        };
        if !well_formed(secret) {
            return Err(refuse(TokenProblem::Malformed, who));
        }
        let unavailable =
            |e: StoreError| EnrollRefusal::Issue(Refusal::Unavailable(format!("cannot read join tokens: {e}")));
        let Some(token) = store.join_token_by_hash(&hash(secret)).await.map_err(unavailable)? else {
            return Err(refuse(TokenProblem::Unknown, who));
        };
        who.name = Some(format!("join token {}", token.id));
        who.audit_host = Some(token.host.clone());
        let now = now_ms();
        if let Some(p) = TokenProblem::of(&token, now) {
            return Err(refuse(p, who));
        }
        // A CSR for another name must not burn the token; it is audited as a refusal.
        crate::certs::check_csr(csr, &token.host).map_err(|e| EnrollRefusal::Issue(Refusal::Csr(e)))?;
        let host = self.directory().host_named(&token.host)?;
        if !store
            .consume_join_token(&token.id, now, remote)
            .await
            .map_err(unavailable)?
        {
            // Another caller spent it first (or it was revoked or expired meanwhile).
            return Err(refuse(TokenProblem::Used, who));
        }
        let actor = format!("join token {} at {remote}", token.id);
        match renewer
            .certify(store, &host, &actor, csr, Via::JoinToken(&token.id), |row| {
                crate::renewal::record(store, row)
            })
            .await
        {
            Ok(issued) => Ok((host, issued)),
            Err(r) => {
                match store.release_join_token(&token.id, now, remote).await {
                    Ok(_) => {
                        tracing::info!(token = token.id, %host, "nothing issued: the join token may be used again")
                    }
                    Err(e) => {
                        tracing::error!(token = token.id, %host, error = %e, "nothing issued, and the join token could not be given back")
                    }
                }
                Err(EnrollRefusal::Issue(r))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_have_a_unit_and_bounds() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("7d").unwrap(), MAX_TTL);
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        for bad in [
            "",
            "h",
            "8d",
            "59s",
            "1w",
            "-1h",
            "1.5h",
            "99999999999999999999d",
            "1 h",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_prefixed_random_and_only_their_hash_is_kept() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(well_formed(&a) && a.starts_with("kcdj_") && a.len() == 5 + 64, "{a}");
        assert_eq!(hash(&a).len(), 64);
        assert!(!hash(&a).contains(&a[5..]));
        assert_eq!(
            hash("kcdj_"),
            hex(ring::digest::digest(&ring::digest::SHA256, b"kcdj_").as_ref())
        );
        for bad in [
            "",
            "kcdj_",
            "kcdj_xyz",
            &a[..a.len() - 1],
            &a.to_uppercase(),
            &a.replace("kcdj_", "kcdx_"),
        ] {
            assert!(!well_formed(bad), "{bad:?}");
        }
        let id = new_id().unwrap();
        assert_eq!(super::id(&id).unwrap(), id);
        assert!(super::id("jt-1").is_err() && super::id("1; DROP").is_err());
    }

    #[test]
    fn a_token_is_usable_only_unused_unrevoked_and_unexpired() {
        let t = JoinToken {
            id: "jt-000000000001".into(),
            host: "hv01.lab.test".into(),
            created_at_ms: 0,
            expires_at_ms: 1000,
            created_by: "alice".into(),
            used_at_ms: None,
            used_from: None,
            revoked_at_ms: None,
            revoked_by: None,
        };
        assert_eq!(TokenProblem::of(&t, 999), None);
        assert_eq!(TokenProblem::of(&t, 1000), Some(TokenProblem::Expired));
        let used = JoinToken {
            used_at_ms: Some(5),
            ..t.clone()
        };
        assert_eq!(TokenProblem::of(&used, 10), Some(TokenProblem::Used));
        let revoked = JoinToken {
            revoked_at_ms: Some(5),
            ..t.clone()
        };
        assert_eq!(TokenProblem::of(&revoked, 10), Some(TokenProblem::Revoked));
        // The caller is told the same thing whatever the problem.
        let said: std::collections::HashSet<String> = [
            TokenProblem::Unknown,
            TokenProblem::Expired,
            TokenProblem::Used,
            TokenProblem::Revoked,
            TokenProblem::Malformed,
        ]
        .into_iter()
        .map(|p| {
            let r = EnrollRefusal::Token(p);
            assert_eq!(r.code(), tonic::Code::Unauthenticated);
            r.to_string()
        })
        .collect();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(state(&t, 2000).contains("expired"));
    }

    #[tokio::test]
    async fn a_token_is_spent_exactly_once_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
        let (t, secret) = create(&store, "HV01.Lab.Test", DEFAULT_TTL, "alice").await.unwrap();
        assert_eq!(t.host, "hv01.lab.test");
        let found = store.join_token_by_hash(&hash(&secret)).await.unwrap().unwrap();
        assert_eq!(found, t);
        let now = now_ms();
        let (a, b) = tokio::join!(
            store.consume_join_token(&t.id, now, "a"),
            store.consume_join_token(&t.id, now, "b")
        );
        assert!(a.unwrap() ^ b.unwrap(), "exactly one wins");
        assert!(!store.consume_join_token(&t.id, now, "c").await.unwrap());
        // A used token cannot be revoked any more; an unused one can, once.
        assert!(matches!(
            revoke(&store, &t.id, "bob").await.unwrap(),
            Some(TokenRevoked::Unchanged(_))
        ));
        let (u, _) = create(&store, "hv02.lab.test", DEFAULT_TTL, "alice").await.unwrap();
        assert!(matches!(
            revoke(&store, &u.id, "bob").await.unwrap(),
            Some(TokenRevoked::Now(_))
        ));
        assert!(!store.consume_join_token(&u.id, now_ms(), "a").await.unwrap());
        assert_eq!(revoke(&store, "jt-000000000000", "bob").await.unwrap(), None);
        let kinds: Vec<String> = store
            .audit_events(None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "agent-join-token-revoked",
                "agent-join-token-created",
                "agent-join-token-created"
            ]
        );
        store.close().await;
        let bytes = std::fs::read(&path).unwrap();
        let hex_part = &secret.as_bytes()[5..];
        assert!(
            !bytes.windows(hex_part.len()).any(|w| w == hex_part),
            "the secret is not in the database file"
        );
    }
}
