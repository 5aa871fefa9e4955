//! Revoking an agent: what an operator's `agents revoke HOST` means, checked before anything
//! is written. The deny-list itself is in the store (`store::revocations`), so every replica
//! sharing it refuses the host; the agent endpoint (grpc/agents) refuses a revoked host's
//! Hello with PERMISSION_DENIED and cuts a live stream within [`POLL`] plus a moment.
//!
//! A revocation is by host, not by certificate: whatever certificate the host holds (or is
//! issued later), its agent is refused until an operator runs `agents unrevoke HOST`.
//!
//! Also the operator's view of agents beside it (`agents list`, `agents show`): which hosts
//! reported, when last, and which are revoked, by whom, when and why.

use std::time::Duration;

use serde::Serialize;

use crate::certs::CertError;
use crate::store::{
    AuditEvent, EVENT_CERT_REFUSED, EVENT_CERT_RENEWED, EVENT_ENROLL_REFUSED, EVENT_ENROLLED, EVENT_JOIN_TOKEN_CREATED,
    EVENT_JOIN_TOKEN_REVOKED, EVENT_REVOKED, EVENT_UNREVOKED, Revocation, Revoked, Store, StoreError,
};

/// The longest reason kept (characters): enough to say why and name a ticket.
pub const MAX_REASON_CHARS: usize = 500;
/// The longest operator name kept (characters).
pub const MAX_BY_CHARS: usize = 128;
/// Certificate events (renewed, refused) `agents show` lists: the newest.
pub const SHOWN_CERTIFICATE_EVENTS: i64 = 10;
/// How often the agent endpoint re-reads the deny-list to cut live streams of hosts revoked
/// meanwhile (on any replica): a revoked host's stream ends within this plus a moment.
pub const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("{0}")]
    Host(CertError),
    #[error("the reason is {0} characters long; at most {MAX_REASON_CHARS} are kept: shorten it")]
    ReasonTooLong(usize),
    #[error("the reason holds a control character (newline, tab, ...): give it on one line")]
    ReasonControl,
    #[error("who revokes must be named (1 to {MAX_BY_CHARS} printable characters; --by or $USER)")]
    By,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The host as the deny-list keys it: an FQDN spelt as agent certificates carry it
/// (lower-case, no trailing dot; the same check issues them), so a revocation and the name a
/// stream is bound to compare equal.
pub fn host(input: &str) -> Result<String, RevocationError> {
    crate::certs::normalize_host_fqdn(input).map_err(RevocationError::Host)
}

/// A reason fit for tables and log lines: one line, bounded.
pub fn reason(input: &str) -> Result<String, RevocationError> {
    let input = input.trim();
    let n = input.chars().count();
    if n > MAX_REASON_CHARS {
        return Err(RevocationError::ReasonTooLong(n));
    }
    if input.chars().any(char::is_control) {
        return Err(RevocationError::ReasonControl);
    }
    Ok(input.to_owned())
}

fn by(input: &str) -> Result<String, RevocationError> {
    let input = input.trim();
    if input.is_empty() || input.chars().count() > MAX_BY_CHARS || input.chars().any(char::is_control) {
        return Err(RevocationError::By);
    }
    Ok(input.to_owned())
}

/// Revokes `host_input`'s agent: checks everything first, then writes the revocation and its
/// audit event together (or nothing).
pub async fn revoke(
    store: &Store,
    host_input: &str,
    reason_input: &str,
    by_input: &str,
) -> Result<Revoked, RevocationError> {
    let (host, reason, by) = (host(host_input)?, reason(reason_input)?, by(by_input)?);
    Ok(store.revoke_agent(&host, &reason, &by).await?)
}

/// Lifts the revocation of `host_input`; the one lifted, or `None` if it was not revoked.
pub async fn unrevoke(store: &Store, host_input: &str, by_input: &str) -> Result<Option<Revocation>, RevocationError> {
    let (host, by) = (host(host_input)?, by(by_input)?);
    Ok(store.unrevoke_agent(&host, &by).await?)
}

/// One row of `agents list`: a host that reported, or is revoked, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRow {
    pub host: String,
    /// When the controller last heard from its agent (Unix ms); `None`: never.
    pub last_seen_ms: Option<i64>,
    pub revoked: Option<Revocation>,
}

/// `agents show HOST`: the row, what its last report said, and its revocation history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentDetail {
    #[serde(flatten)]
    pub row: AgentRow,
    /// When its last report arrived (Unix ms).
    pub last_report_ms: Option<i64>,
    pub os_caption: Option<String>,
    pub os_build: Option<u32>,
    /// Revocations and their lifting (the last 100), and the newest certificates renewed and
    /// refused ([`SHOWN_CERTIFICATE_EVENTS`]), newest first.
    pub history: Vec<AuditEvent>,
}

/// Every host that reported or is revoked, by host.
pub async fn agents(store: &Store) -> Result<Vec<AgentRow>, StoreError> {
    let mut rows: std::collections::BTreeMap<String, AgentRow> = store
        .reporting_hosts()
        .await?
        .into_iter()
        .map(|(host, seen)| {
            let row = AgentRow {
                host: host.clone(),
                last_seen_ms: Some(seen),
                revoked: None,
            };
            (host, row)
        })
        .collect();
    for r in store.agent_revocations().await? {
        let host = r.host.clone();
        rows.entry(host.clone())
            .or_insert_with(|| AgentRow {
                host,
                last_seen_ms: None,
                revoked: None,
            })
            .revoked = Some(r);
    }
    Ok(rows.into_values().collect())
}

/// What the store knows about `host_input`'s agent; `None` if it never reported, is not
/// revoked and never was.
pub async fn agent(store: &Store, host_input: &str) -> Result<Option<AgentDetail>, RevocationError> {
    let host = host(host_input)?;
    let report = store.latest_report(&host).await?;
    let revoked = store.agent_revocation(&host).await?;
    // Every revocation (the last 100), and only the last few certificates: renewals come twice
    // a day and would push the revocations out of a plain "newest 100".
    let mut history = store
        .audit_events_of(&host, &[EVENT_REVOKED, EVENT_UNREVOKED], 100)
        .await?;
    history.extend(
        store
            .audit_events_of(
                &host,
                &[
                    EVENT_CERT_RENEWED,
                    EVENT_CERT_REFUSED,
                    EVENT_ENROLLED,
                    EVENT_ENROLL_REFUSED,
                    EVENT_JOIN_TOKEN_CREATED,
                    EVENT_JOIN_TOKEN_REVOKED,
                ],
                SHOWN_CERTIFICATE_EVENTS,
            )
            .await?,
    );
    history.sort_by_key(|e| std::cmp::Reverse(e.id));
    if report.is_none() && revoked.is_none() && history.is_empty() {
        return Ok(None);
    }
    let identity = report.as_ref().and_then(|(r, _, _)| r.identity.clone());
    Ok(Some(AgentDetail {
        row: AgentRow {
            host,
            last_seen_ms: report.as_ref().map(|(_, _, seen)| *seen),
            revoked,
        },
        last_report_ms: report.as_ref().map(|(_, at, _)| *at),
        os_caption: identity.as_ref().map(|i| i.os_caption.clone()),
        os_build: identity.as_ref().map(|i| i.os_build),
        history,
    }))
}

/// What a revoked agent is told (PERMISSION_DENIED), and the operator reads in its log.
pub fn refusal(r: &Revocation) -> String {
    format!(
        "the agent of {host} is revoked (since {at} by {by}{why}): this controller and every replica refuse it; \
         to let it connect again, run `kcdsync-controller agents unrevoke {host}`",
        host = r.host,
        at = crate::report::format_ms(r.revoked_at_ms),
        by = r.revoked_by,
        why = if r.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", r.reason)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_an_fqdn_lower_case() {
        assert_eq!(host("HV01.Lab.Test.").unwrap(), "hv01.lab.test");
        let e = host("HV01").unwrap_err().to_string();
        assert!(e.contains("give the host's FQDN"), "{e}");
        for bad in [
            "",
            "hv01)(cn=*",
            "*",
            "hv 01.lab.test",
            "a..b",
            "-a.lab.test",
            "127.0.0.1",
        ] {
            assert!(host(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}.lab.test", "a".repeat(300));
        assert!(
            host(&long).unwrap_err().to_string().len() < 200,
            "the input is not echoed in full"
        );
    }

    #[test]
    fn a_reason_is_one_bounded_line() {
        assert_eq!(reason("  key leaked ").unwrap(), "key leaked");
        assert_eq!(reason("").unwrap(), "");
        assert_eq!(reason(&"é".repeat(MAX_REASON_CHARS)).unwrap().chars().count(), 500);
        assert_eq!(
            reason(&"x".repeat(501)).unwrap_err().to_string(),
            "the reason is 501 characters long; at most 500 are kept: shorten it"
        );
        assert!(matches!(reason("a\nb"), Err(RevocationError::ReasonControl)));
        assert!(matches!(reason("a\u{1b}[31m"), Err(RevocationError::ReasonControl)));
    }

    #[test]
    fn who_revokes_is_named() {
        assert_eq!(by(" alice ").unwrap(), "alice");
        for bad in ["", "  ", "a\nb"] {
            assert!(matches!(by(bad), Err(RevocationError::By)), "{bad:?}");
        }
        assert!(by(&"a".repeat(129)).is_err());
    }

    #[tokio::test]
    async fn agents_show_keeps_the_revocations_in_view_after_many_renewals() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let store = Store::open(&url).await.unwrap();
        let host = "hv01.lab.test";
        revoke(&store, host, "key leaked", "alice").await.unwrap();
        unrevoke(&store, host, "bob").await.unwrap();
        // Two renewals a day for two months: more than the newest 100 events.
        for i in 0..120 {
            store
                .record_audit_event(
                    EVENT_CERT_RENEWED,
                    host,
                    "agent at 10.0.0.1:50000",
                    &format!("serial {i}"),
                )
                .await
                .unwrap();
        }
        let shown = agent(&store, host).await.unwrap().unwrap();
        let kinds: Vec<&str> = shown.history.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == EVENT_CERT_RENEWED).count(), 10);
        assert_eq!(
            &kinds[10..],
            [EVENT_UNREVOKED, EVENT_REVOKED],
            "newest first: {kinds:?}"
        );
        assert_eq!(shown.history[0].detail, "serial 119");
    }

    #[test]
    fn the_refusal_says_who_when_why_and_how_to_undo() {
        let r = Revocation {
            host: "hv01.lab.test".into(),
            revoked_at_ms: 1_800_000_000_000,
            reason: "stolen disk".into(),
            revoked_by: "alice".into(),
        };
        assert_eq!(
            refusal(&r),
            "the agent of hv01.lab.test is revoked (since 2027-01-15T08:00:00Z by alice: stolen disk): this \
             controller and every replica refuse it; to let it connect again, run \
             `kcdsync-controller agents unrevoke hv01.lab.test`"
        );
    }
}
