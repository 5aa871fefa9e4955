//! Renewing an agent's certificate over its authenticated stream (`RenewCertificate`).
//!
//! Agents hold short-lived certificates (`agents.cert_lifetime_hours`, a day by default) and ask
//! for a new one at half-life, with a key they just generated. The stream is already bound to a
//! host H by the certificate it connected with; the request is granted only if:
//! - the controller has an issuing CA (`agents.issuing_ca_cert_file` + `issuing_ca_key_file`,
//!   the CA of `agents.client_ca_file`), else FAILED_PRECONDITION saying how to configure one;
//! - H asked no sooner than [`RenewalPolicy::min_interval`] after its previous request on this
//!   controller (RESOURCE_EXHAUSTED): a compromised agent cannot make the CA sign in a loop;
//! - the CSR's signature verifies and its only name is H (`certs::check_csr`); anything else is
//!   PERMISSION_DENIED, logged as a warning, counted and audited;
//! - H is not on the deny-list (`agents revoke`): a revoked host gets no fresh certificate.
//!
//! The certificate lives `cert_lifetime` but never past the CA's own notAfter, and is audited
//! (`audit_events`, kind `agent-certificate-renewed`) before it is handed out: a certificate
//! whose audit could not be written is not sent (UNAVAILABLE; the agent asks again). The agent hub
//! has its ingest writer commit the event with its next batch ([`Renewer::renew_audited`]): a
//! commit of its own per renewal, between the batches on SQLite's one connection, made a storm of
//! renewals (10,000 in a minute, `kcdsync-bench renewal-storm`) wait on the disk and the ingest
//! behind them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tonic::Code;

use crate::certs::{Ca, CsrError, Validity, check_csr};
use crate::store::{AuditRow, EVENT_CERT_REFUSED, EVENT_CERT_RENEWED, EVENT_ENROLLED, Store};

/// `agents.cert_lifetime_hours` when unset.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How often one host may ask, when the caller sets nothing else.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(60);
/// The most a renewed certificate is backdated (clock skew between controller and host).
const MAX_BACKDATE: Duration = Duration::from_secs(5 * 60);

/// What renewal may issue; `Default` issues nothing (no issuing CA).
#[derive(Debug, Clone)]
pub struct RenewalPolicy {
    pub ca: Option<Arc<Ca>>,
    pub lifetime: Duration,
    /// One request per host per this, on each controller.
    pub min_interval: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy {
            ca: None,
            lifetime: DEFAULT_LIFETIME,
            min_interval: DEFAULT_MIN_INTERVAL,
        }
    }
}

/// Why a request was refused; what the agent is told is [`Refusal::message`] with [`Refusal::code`].
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "this controller issues no agent certificates: set agents.issuing_ca_cert_file and \
         agents.issuing_ca_key_file (the CA of agents.client_ca_file, its key mode 600) and restart it; \
         until then re-issue with `kcdsync-controller certs agent --host {0}`"
    )]
    NotConfigured(String),
    #[error(
        "{host} asked for a certificate {ago_secs} s ago; ask again in {wait_secs} s (one request a host every {every_secs} s)"
    )]
    TooSoon {
        host: String,
        ago_secs: u64,
        wait_secs: u64,
        every_secs: u64,
    },
    #[error("{0}")]
    Csr(CsrError),
    #[error("no certificate for a revoked host: {0}")]
    Revoked(String),
    #[error("the issuing CA \"{name}\" expired at {at}: renew the CA, then re-issue the agents' certificates")]
    CaExpired { name: String, at: String },
    #[error("the controller cannot issue right now ({0}); the agent asks again")]
    Unavailable(String),
}

impl Refusal {
    pub fn code(&self) -> Code {
        match self {
            Refusal::NotConfigured(_) | Refusal::CaExpired { .. } => Code::FailedPrecondition,
            Refusal::TooSoon { .. } => Code::ResourceExhausted,
            Refusal::Csr(e) if e.is_overreach() => Code::PermissionDenied,
            Refusal::Csr(_) => Code::InvalidArgument,
            Refusal::Revoked(_) => Code::PermissionDenied,
            Refusal::Unavailable(_) => Code::Unavailable,
        }
    }

    /// The `result` attribute of `kcdsync.agents.renewals`.
    pub fn metric(&self) -> &'static str {
        match self {
            Refusal::NotConfigured(_) => "not_configured",
            Refusal::TooSoon { .. } => "too_soon",
            Refusal::Csr(e) if e.is_overreach() => "wrong_name",
            Refusal::Csr(_) => "bad_csr",
            Refusal::Revoked(_) => "revoked",
            Refusal::CaExpired { .. } => "ca_expired",
            Refusal::Unavailable(_) => "unavailable",
        }
    }
}

/// Writes an issued certificate's audit event in a commit of its own (enrollment, and renewal
/// outside the agent hub, which batches them with its ingest instead).
pub async fn record(store: &Store, row: AuditRow) -> Result<(), String> {
    store
        .record_audit_event(row.kind, &row.host, &row.actor, &row.detail)
        .await
        .map_err(|e| e.to_string())
}

/// How a host came to ask: what its audit event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via<'a> {
    /// Over its stream, authenticated by its current certificate.
    Renewal,
    /// By enrollment, authenticated as its computer account by Kerberos (`crate::enrollment`).
    Enrollment,
    /// By enrollment with the one-time join token of this id (`crate::enrollment::token`).
    JoinToken(&'a str),
}

impl Via<'_> {
    fn event(self) -> &'static str {
        match self {
            Via::Renewal => EVENT_CERT_RENEWED,
            Via::Enrollment | Via::JoinToken(_) => EVENT_ENROLLED,
        }
    }

    fn says(self) -> String {
        match self {
            Via::Renewal => "renewed over the agent's stream".to_owned(),
            Via::Enrollment => "enrolled as its computer account by Kerberos".to_owned(),
            Via::JoinToken(id) => format!("enrolled with the one-time join token {id}"),
        }
    }
}

/// A certificate issued by renewal or enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub chain_pem: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// Whether a certificate issued at `now` ends with its CA rather than after `lifetime`. Asked of
/// the same `now` the validity was computed from: comparing the issued end with a later clock
/// reading said so of every certificate.
fn cut_short_by_ca(now: OffsetDateTime, lifetime: Duration, ca_not_after: OffsetDateTime) -> bool {
    ca_not_after < now + lifetime
}

/// The validity of a renewed certificate issued at `now`: `lifetime` from now, never past the
/// CA's `ca_not_after`, backdated a tenth of the lifetime (at most five minutes) for hosts whose
/// clock is a little behind. `None` when the CA has expired.
pub fn renewal_validity(now: OffsetDateTime, lifetime: Duration, ca_not_after: OffsetDateTime) -> Option<Validity> {
    let backdate = (lifetime / 10).min(MAX_BACKDATE);
    let not_after = (now + lifetime).min(ca_not_after);
    if not_after <= now {
        return None;
    }
    Some(Validity::between(now - backdate, not_after))
}

/// The renewals of one controller (its agent endpoint): the policy and when each host last asked.
pub struct Renewer {
    /// Swapped by SIGHUP ([`Renewer::set_policy`]); a request uses the one current when it came.
    policy: RwLock<RenewalPolicy>,
    last: Mutex<HashMap<String, Instant>>,
}

impl Renewer {
    pub fn new(policy: RenewalPolicy) -> Renewer {
        Renewer {
            policy: RwLock::new(policy),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// From the next request on, renew as `policy` says (a reloaded config: another issuing
    /// CA, lifetime, or none).
    pub fn set_policy(&self, policy: RenewalPolicy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    fn policy(&self) -> RenewalPolicy {
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Answers `host`'s request (the host its stream is bound to, from its certificate) for a
    /// certificate for the key in `csr`; logs, counts and audits what it decided.
    pub async fn renew(&self, store: &Store, host: &str, remote: &str, csr: &[u8]) -> Result<Issued, Refusal> {
        self.renew_audited(store, host, remote, csr, |row| record(store, row))
            .await
    }

    /// [`Renewer::renew`] with the audit event of an issued certificate written by `audit`,
    /// which returns once it is committed (the agent hub hands it to its ingest writer, so that
    /// a storm of renewals shares commits with the ingest instead of one commit each).
    pub async fn renew_audited<A, F>(
        &self,
        store: &Store,
        host: &str,
        remote: &str,
        csr: &[u8],
        audit: A,
    ) -> Result<Issued, Refusal>
    where
        A: FnOnce(AuditRow) -> F,
        F: Future<Output = Result<(), String>>,
    {
        let actor = format!("agent at {remote}");
        let result = self.certify(store, host, &actor, csr, Via::Renewal, audit).await;
        let outcome = match &result {
            Ok(_) => "issued",
            Err(r) => r.metric(),
        };
        crate::metrics::get()
            .agent_renewals
            .add(1, &[opentelemetry::KeyValue::new("result", outcome)]);
        match &result {
            Ok(issued) => tracing::info!(
                %host, %remote, serial = issued.serial,
                not_after = %crate::certs::fmt_rfc3339(issued.not_after),
                "agent certificate renewed"
            ),
            Err(r @ (Refusal::Csr(CsrError::Names { .. }) | Refusal::Revoked(_))) => {
                tracing::warn!(%host, %remote, reason = %r, "agent certificate renewal refused");
                // Asking for another host's name is an attack or a bug worth a trace beside the
                // revocations: audited (a revoked host is audited already by its revocation).
                if matches!(r, Refusal::Csr(_))
                    && let Err(e) = store
                        .record_audit_event(EVENT_CERT_REFUSED, host, &actor, &r.to_string())
                        .await
                {
                    tracing::error!(%host, error = %e, "could not audit a refused renewal");
                }
            }
            Err(r) => tracing::info!(%host, %remote, reason = %r, "agent certificate renewal refused"),
        }
        result
    }

    /// Issues `host` a certificate for the key in `csr` if the policy allows it (see the module
    /// documentation), its audit event (kind as `via` says) written by `audit` before it is
    /// returned; `host` is already authenticated by the caller (the stream's certificate, or
    /// enrollment's Kerberos proof).
    pub async fn certify<A, F>(
        &self,
        store: &Store,
        host: &str,
        actor: &str,
        csr: &[u8],
        via: Via<'_>,
        audit: A,
    ) -> Result<Issued, Refusal>
    where
        A: FnOnce(AuditRow) -> F,
        F: Future<Output = Result<(), String>>,
    {
        let policy = self.policy();
        let Some(ca) = &policy.ca else {
            return Err(Refusal::NotConfigured(host.to_owned()));
        };
        self.take_slot(host, policy.min_interval)?;
        let checked = check_csr(csr, host).map_err(Refusal::Csr)?;
        match store.agent_revocation(host).await {
            Ok(None) => {}
            Ok(Some(r)) => return Err(Refusal::Revoked(crate::revocation::refusal(&r))),
            // Fail closed: a host whose revocation cannot be read gets nothing.
            Err(e) => return Err(Refusal::Unavailable(format!("cannot read the revocation list: {e}"))),
        }
        let now = OffsetDateTime::now_utc();
        let validity = renewal_validity(now, policy.lifetime, ca.not_after()).ok_or_else(|| Refusal::CaExpired {
            name: ca.name().to_owned(),
            at: crate::certs::fmt_rfc3339(ca.not_after()),
        })?;
        if cut_short_by_ca(now, policy.lifetime, ca.not_after()) {
            tracing::warn!(
                ca = ca.name(), %host,
                ca_not_after = %crate::certs::fmt_rfc3339(ca.not_after()),
                "the issuing CA ends before a full certificate lifetime: renewed certificates end with it; renew the CA"
            );
        }
        let pem = ca
            .issue_agent_for_key(host, checked.public_key(), validity)
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let serial = crate::certs::serial_hex(pem.as_bytes()).map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let detail = format!(
            "certificate serial {serial} issued by \"{}\" until {} ({})",
            ca.name(),
            crate::certs::fmt_rfc3339(validity.not_after),
            via.says()
        );
        audit(AuditRow {
            kind: via.event(),
            host: host.to_owned(),
            actor: actor.to_owned(),
            detail,
        })
        .await
        .map_err(|e| Refusal::Unavailable(format!("cannot write the audit event: {e}")))?;
        Ok(Issued {
            chain_pem: pem,
            serial,
            not_after: validity.not_after,
        })
    }

    /// One request per host per `min_interval`: taken whatever the request turns out to be, so
    /// that bad requests in a loop cost the CA nothing either.
    fn take_slot(&self, host: &str, every: Duration) -> Result<(), Refusal> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(prev) = last.get(host) {
            let ago = now.duration_since(*prev);
            if ago < every {
                return Err(Refusal::TooSoon {
                    host: host.to_owned(),
                    ago_secs: ago.as_secs(),
                    wait_secs: (every - ago).as_secs().max(1),
                    every_secs: every.as_secs(),
                });
            }
        }
        // Forget hosts whose slot is free again, so the map stays as small as the busy set.
        last.retain(|_, t| now.duration_since(*t) < every);
        last.insert(host.to_owned(), now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};
    use time::macros::datetime;

    use super::*;

    const HOST: &str = "hv01.lab.test";

    fn csr(names: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let store = Store::open(&url).await.unwrap();
        (dir, store)
    }

    fn renewer(ca: Option<Ca>, min_interval: Duration) -> Renewer {
        Renewer::new(RenewalPolicy {
            ca: ca.map(Arc::new),
            lifetime: Duration::from_secs(3600),
            min_interval,
        })
    }

    #[test]
    fn the_lifetime_is_clamped_to_the_cas_end() {
        let now = datetime!(2027-01-01 00:00 UTC);
        let day = Duration::from_secs(86_400);
        let v = renewal_validity(now, day, datetime!(2030-01-01 00:00 UTC)).unwrap();
        assert_eq!(v.not_after, datetime!(2027-01-02 00:00 UTC));
        assert_eq!(
            v.not_before,
            now - time::Duration::minutes(5),
            "backdated five minutes at most"
        );
        // The CA ends in an hour: so does the certificate.
        let v = renewal_validity(now, day, datetime!(2027-01-01 01:00 UTC)).unwrap();
        assert_eq!(v.not_after, datetime!(2027-01-01 01:00 UTC));
        // A short lifetime is backdated a tenth of it, so its half-life stays where it belongs.
        let v = renewal_validity(now, Duration::from_secs(60), datetime!(2030-01-01 00:00 UTC)).unwrap();
        assert_eq!(v.not_before, now - time::Duration::seconds(6));
        // An expired CA issues nothing.
        assert_eq!(renewal_validity(now, day, now), None);
    }

    #[test]
    fn only_a_ca_ending_within_the_lifetime_cuts_a_certificate_short() {
        let now = datetime!(2026-06-01 12:00 UTC);
        let day = Duration::from_secs(86_400);
        assert!(!cut_short_by_ca(now, day, datetime!(2036-12-01 00:00 UTC)));
        assert!(!cut_short_by_ca(now, day, datetime!(2026-06-02 12:00 UTC)));
        assert!(cut_short_by_ca(now, day, datetime!(2026-06-02 11:59:59 UTC)));
        assert_eq!(renewal_validity(now, day, datetime!(2026-01-01 00:00 UTC)), None);
    }

    #[tokio::test]
    async fn a_renewed_certificate_names_the_host_has_a_fresh_serial_and_is_audited() {
        let (_dir, store) = store().await;
        let ca = Ca::new("kcdsync test CA").unwrap();
        let (old, _) = ca.issue_agent(HOST, Validity::days(1)).unwrap();
        let r = renewer(Some(Ca::load(ca.cert_pem(), &ca.key_pem()).unwrap()), Duration::ZERO);
        let issued = r.renew(&store, HOST, "test", &csr(&[HOST])).await.unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(issued.chain_pem.as_bytes())
            .map(|d: rustls::pki_types::CertificateDer<'_>| d.to_vec())
            .unwrap();
        assert_eq!(crate::certs::peer_host_names(&der).unwrap(), [HOST]);
        assert_ne!(issued.serial, crate::certs::serial_hex(old.as_bytes()).unwrap());
        let lifetime = issued.not_after - OffsetDateTime::now_utc();
        assert!(lifetime <= time::Duration::hours(1) && lifetime > time::Duration::minutes(59));
        let events = store.audit_events(Some(HOST), 10).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EVENT_CERT_RENEWED);
        assert!(events[0].detail.contains(&issued.serial), "{}", events[0].detail);
        assert_eq!(events[0].actor, "agent at test", "who asked: the stream's address");
    }

    #[tokio::test]
    async fn a_revoked_host_gets_no_certificate() {
        let (_dir, store) = store().await;
        let r = renewer(Some(Ca::new("kcdsync test CA").unwrap()), Duration::ZERO);
        crate::revocation::revoke(&store, HOST, "disk stolen", "alice")
            .await
            .unwrap();
        let e = r.renew(&store, HOST, "test", &csr(&[HOST])).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.to_string().contains("revoked"), "{e}");
        assert!(e.to_string().contains("agents unrevoke hv01.lab.test"), "{e}");
        // Only the revocation is in the audit: nothing was issued.
        let kinds: Vec<String> = store
            .audit_events(Some(HOST), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["agent-revoked"]);
    }

    #[tokio::test]
    async fn a_request_for_another_name_is_refused_and_audited() {
        let (_dir, store) = store().await;
        let r = renewer(Some(Ca::new("kcdsync test CA").unwrap()), Duration::ZERO);
        let e = r
            .renew(&store, HOST, "test", &csr(&["hv02.lab.test"]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert_eq!(e.metric(), "wrong_name");
        let e = r
            .renew(&store, HOST, "test", &csr(&[HOST, "hv02.lab.test"]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let events = store.audit_events(Some(HOST), 10).await.unwrap();
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.kind == EVENT_CERT_REFUSED));
        assert!(events[1].detail.contains("hv02.lab.test"), "{}", events[1].detail);
    }

    #[tokio::test]
    async fn without_an_issuing_ca_the_answer_says_how_to_configure_one() {
        let (_dir, store) = store().await;
        let r = renewer(None, Duration::ZERO);
        let e = r.renew(&store, HOST, "test", &csr(&[HOST])).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        let m = e.to_string();
        assert!(
            m.contains("agents.issuing_ca_cert_file") && m.contains("agents.issuing_ca_key_file"),
            "{m}"
        );
        assert!(m.contains("certs agent --host hv01.lab.test"), "{m}");
        // A reloaded config with an issuing CA applies to the next request.
        r.set_policy(RenewalPolicy {
            ca: Some(Arc::new(Ca::new("kcdsync test CA").unwrap())),
            lifetime: Duration::from_secs(3600),
            min_interval: Duration::ZERO,
        });
        r.renew(&store, HOST, "test", &csr(&[HOST])).await.unwrap();
    }

    #[tokio::test]
    async fn a_host_asking_again_within_the_interval_is_told_when_to_come_back() {
        let (_dir, store) = store().await;
        let r = renewer(Some(Ca::new("kcdsync test CA").unwrap()), Duration::from_secs(60));
        r.renew(&store, HOST, "test", &csr(&[HOST])).await.unwrap();
        let e = r.renew(&store, HOST, "test", &csr(&[HOST])).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.to_string().contains("ask again in"), "{e}");
        // Another host has a slot of its own.
        r.renew(&store, "hv02.lab.test", "test", &csr(&["hv02.lab.test"]))
            .await
            .unwrap();
    }
}
