//! Enrollment: an agent with no usable certificate gets one by proving, with Kerberos, that it
//! is its host's computer account (`EnrollmentService.Enroll`, served on the agent endpoint).
//!
//! The request carries a CSR, one GSS-API token for the controller's service principal
//! (`agents.enroll.service_principal`) and a MIC over the CSR (`kcdsync_gss`). It is granted
//! only if, in this order:
//! - the controller enrolls (`[agents.enroll]`), else FAILED_PRECONDITION;
//! - fewer than [`MAX_IN_FLIGHT`] enrollments are being verified (RESOURCE_EXHAUSTED): the
//!   call needs no client certificate, so anyone who reaches the port can make one;
//! - the token verifies against the keytab and the MIC over the CSR with the context's key,
//!   else UNAUTHENTICATED (a replayed token is refused by MIT's replay cache; one with another
//!   CSR fails the MIC);
//! - the client principal is a computer account (`NAME$`) of the service principal's realm,
//!   and that account is a computer of the managed scope that the identity checks trust (its
//!   dNSHostName is its own name in an allowed suffix, it is not a DC or otherwise refused), as
//!   of the controller's last read of AD; else PERMISSION_DENIED naming why, audited;
//! - then exactly what renewal checks (`crate::renewal`): one request per host per minute, the
//!   CSR's only name is that host's FQDN, the host is not revoked; the certificate is audited
//!   (`agent-enrolled`) before it is handed out.
//!
//! The fallback for a host that cannot reach its KDC is a one-time join token bound to the
//! host (`token`, created by `kcdsync-controller agents token create HOST`).
//!
//! Nothing here writes to AD.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;
use tonic::Code;

use crate::model::{Index, Observed};
use crate::renewal::{Issued, Refusal, Renewer, Via};
use crate::store::{EVENT_ENROLL_REFUSED, Store};

pub mod token;

pub use token::TokenProblem;

/// Enrollments verified at once at most; more are refused with RESOURCE_EXHAUSTED (the agents
/// ask again later). Each takes a blocking thread for the keytab read and the replay cache.
pub const MAX_IN_FLIGHT: usize = 32;

/// The computers that may enroll, from the controller's last read of AD: NetBIOS name (upper
/// case) to the FQDN a certificate may name, or why it may not have one.
#[derive(Debug, Default)]
pub struct Enrollable {
    /// When AD was read (ms since the epoch); `None`: not yet.
    read_ms: Option<i64>,
    hosts: HashMap<String, Result<String, String>>,
}

impl Enrollable {
    /// Every computer of the scope with the identity checks' verdict on it.
    pub fn of(observed: &Observed, index: &Index, read_ms: i64) -> Enrollable {
        let hosts = observed
            .computers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let verdict = match (index.refusal(i), c.fqdn()) {
                    (Some(r), _) => Err(r.finding(c).summary),
                    (None, None) => Err(format!("{} has no dNSHostName", c.dn)),
                    (None, Some(fqdn)) => Ok(fqdn),
                };
                (c.netbios(), verdict)
            })
            .collect();
        Enrollable {
            read_ms: Some(read_ms),
            hosts,
        }
    }

    /// The FQDN the computer account `account` (`HV01$`) may have a certificate for.
    fn host_of(&self, principal: &str, account: &str) -> Result<String, EnrollRefusal> {
        let Some(read_ms) = self.read_ms else {
            return Err(EnrollRefusal::NotReadYet);
        };
        let netbios = account.trim_end_matches('$').to_ascii_uppercase();
        match self.hosts.get(&netbios) {
            Some(Ok(fqdn)) => Ok(fqdn.clone()),
            Some(Err(why)) => Err(EnrollRefusal::Untrusted {
                principal: principal.to_owned(),
                why: why.clone(),
            }),
            None => Err(EnrollRefusal::NotInScope {
                principal: principal.to_owned(),
                read_at: crate::certs::fmt_rfc3339(
                    time::OffsetDateTime::from_unix_timestamp(read_ms / 1000)
                        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                ),
            }),
        }
    }
}

impl Enrollable {
    /// The FQDN a join token for `fqdn` may have a certificate for: a computer of the scope
    /// whose dNSHostName is `fqdn` and that the identity checks trust, as Kerberos enrollment
    /// would find it by its account (NetBIOS name: the first label, upper case).
    fn host_named(&self, fqdn: &str) -> Result<String, EnrollRefusal> {
        let Some(read_ms) = self.read_ms else {
            return Err(EnrollRefusal::NotReadYet);
        };
        let who = format!("the join token's host {fqdn}");
        if self
            .hosts
            .values()
            .any(|v| v.as_ref().is_ok_and(|f| f.eq_ignore_ascii_case(fqdn)))
        {
            return Ok(fqdn.to_ascii_lowercase());
        }
        let netbios = fqdn.split('.').next().unwrap_or_default().to_ascii_uppercase();
        match self.hosts.get(&netbios) {
            Some(Err(why)) => Err(EnrollRefusal::Untrusted {
                principal: who,
                why: why.clone(),
            }),
            Some(Ok(other)) => Err(EnrollRefusal::Untrusted {
                principal: who,
                why: format!("the computer {netbios} of the scope is {other}, not {fqdn}"),
            }),
            None => Err(EnrollRefusal::NotInScope {
                principal: who,
                read_at: crate::certs::fmt_rfc3339(
                    time::OffsetDateTime::from_unix_timestamp(read_ms / 1000)
                        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                ),
            }),
        }
    }
}

/// Why an enrollment was refused; the agent is told [`EnrollRefusal`]'s text with its code.
#[derive(Debug, thiserror::Error)]
pub enum EnrollRefusal {
    #[error(
        "this controller does not enroll agents: configure [agents.enroll] (keytab_file, service_principal) \
         or issue this host a certificate with `kcdsync-controller certs agent --host <fqdn>`"
    )]
    NotConfigured,
    #[error("too many enrollments at once; ask again shortly")]
    Busy,
    #[error("the Kerberos proof does not verify: {0}")]
    Unauthenticated(String),
    #[error(
        "{principal} is not a computer account (NAME$@{realm}): an agent enrolls as its host, running as SYSTEM \
         (Windows) or with the host's keytab"
    )]
    NotAComputer { principal: String, realm: String },
    #[error("{principal} is not of this controller's realm {realm}")]
    WrongRealm { principal: String, realm: String },
    #[error(
        "{principal} is not a computer in the managed scope (AD as read at {read_at}); a host joined since is \
         found after the next read"
    )]
    NotInScope { principal: String, read_at: String },
    #[error("{principal} may not enroll: {why}")]
    Untrusted { principal: String, why: String },
    #[error("the controller has not read AD yet; ask again shortly")]
    NotReadYet,
    /// The same words whatever the problem, so a caller learns nothing about which tokens
    /// exist; the log and the metric say which.
    #[error(
        "the join token is not valid (unknown, expired, already used or revoked): create a new one with \
         `kcdsync-controller agents token create HOST`"
    )]
    Token(TokenProblem),
    #[error("{0}")]
    Issue(Refusal),
}

impl EnrollRefusal {
    pub fn code(&self) -> Code {
        match self {
            EnrollRefusal::NotConfigured => Code::FailedPrecondition,
            EnrollRefusal::Busy => Code::ResourceExhausted,
            EnrollRefusal::Unauthenticated(_) | EnrollRefusal::Token(_) => Code::Unauthenticated,
            EnrollRefusal::NotAComputer { .. }
            | EnrollRefusal::WrongRealm { .. }
            | EnrollRefusal::NotInScope { .. }
            | EnrollRefusal::Untrusted { .. } => Code::PermissionDenied,
            EnrollRefusal::NotReadYet => Code::Unavailable,
            EnrollRefusal::Issue(r) => r.code(),
        }
    }

    /// The `result` attribute of `kcdsync.agents.enrollments`.
    pub fn metric(&self) -> &'static str {
        match self {
            EnrollRefusal::NotConfigured => "not_configured",
            EnrollRefusal::Busy => "busy",
            EnrollRefusal::Unauthenticated(_) => "unauthenticated",
            EnrollRefusal::NotAComputer { .. } => "not_a_computer",
            EnrollRefusal::WrongRealm { .. } => "wrong_realm",
            EnrollRefusal::NotInScope { .. } => "not_in_scope",
            EnrollRefusal::Untrusted { .. } => "untrusted",
            EnrollRefusal::NotReadYet => "not_read_yet",
            EnrollRefusal::Token(p) => p.metric(),
            EnrollRefusal::Issue(r) => r.metric(),
        }
    }

    /// Refusals of an account Kerberos vouched for are audited: a real account of the domain
    /// asked for a certificate it may not have. Unauthenticated noise is logged and counted.
    fn audited(&self) -> bool {
        matches!(
            self,
            EnrollRefusal::NotAComputer { .. }
                | EnrollRefusal::WrongRealm { .. }
                | EnrollRefusal::NotInScope { .. }
                | EnrollRefusal::Untrusted { .. }
                | EnrollRefusal::Issue(Refusal::Csr(_))
        )
    }
}

/// The proof an enrollment request carries, with its CSR.
pub enum Proof<'a> {
    /// A GSS-API token for the controller's service principal and its MIC over the CSR.
    Kerberos {
        csr: &'a [u8],
        token: &'a [u8],
        mic: &'a [u8],
    },
    /// A one-time join token's secret (`token`).
    JoinToken { csr: &'a [u8], secret: &'a str },
}

/// Who asked, as far as the proof says: what logs and refusal audits name.
#[derive(Default)]
struct Caller {
    /// The principal, or the join token (`join token jt-…`).
    name: Option<String>,
    /// The audit event's host: the principal, or the join token's host.
    audit_host: Option<String>,
}

/// Enrollment on one controller: its service principal and the directory of who may enroll.
pub struct Enroller {
    /// Swapped by SIGHUP.
    acceptor: RwLock<Option<kcdsync_gss::Acceptor>>,
    directory: RwLock<Arc<Enrollable>>,
    in_flight: Arc<Semaphore>,
}

impl Enroller {
    pub fn new(acceptor: Option<kcdsync_gss::Acceptor>) -> Enroller {
        Enroller {
            acceptor: RwLock::new(acceptor),
            directory: RwLock::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    pub fn set_acceptor(&self, acceptor: Option<kcdsync_gss::Acceptor>) {
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
    }

    /// Who may enroll from now on (after each read of AD).
    pub fn set_directory(&self, directory: Enrollable) {
        *self.directory.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(directory);
    }

    fn directory(&self) -> Arc<Enrollable> {
        self.directory.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Answers an enrollment from `remote`; logs, counts and audits what it decided. The host
    /// the certificate names, and the certificate.
    pub async fn enroll(
        &self,
        renewer: &Renewer,
        store: &Store,
        remote: &str,
        proof: Proof<'_>,
    ) -> Result<(String, Issued), EnrollRefusal> {
        let mut who = Caller::default();
        let result = match proof {
            Proof::Kerberos { csr, token, mic } => {
                self.decide(renewer, store, remote, csr, token, mic, &mut who.name)
                    .await
            }
            Proof::JoinToken { csr, secret } => self.decide_token(renewer, store, remote, csr, secret, &mut who).await,
        };
        let outcome = match &result {
            Ok(_) => "issued",
            Err(r) => r.metric(),
        };
        crate::metrics::get()
            .agent_enrollments
            .add(1, &[opentelemetry::KeyValue::new("result", outcome)]);
        let principal = who.name.as_deref().unwrap_or("(unauthenticated)");
        let audit_host = who.audit_host.as_deref().unwrap_or(principal);
        match &result {
            Ok((host, issued)) => tracing::info!(
                %host, %principal, %remote, serial = issued.serial,
                not_after = %crate::certs::fmt_rfc3339(issued.not_after),
                "agent enrolled"
            ),
            Err(r) if r.audited() => {
                tracing::warn!(%principal, %remote, reason = %r, "agent enrollment refused");
                let actor = format!("{principal} at {remote}");
                if let Err(e) = store
                    .record_audit_event(EVENT_ENROLL_REFUSED, audit_host, &actor, &r.to_string())
                    .await
                {
                    tracing::error!(%principal, error = %e, "could not audit a refused enrollment");
                }
            }
            Err(r) => tracing::info!(%principal, %remote, reason = %r, "agent enrollment refused"),
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        renewer: &Renewer,
        store: &Store,
        remote: &str,
        csr_in: &[u8],
        token: &[u8],
        mic: &[u8],
        who: &mut Option<String>,
    ) -> Result<(String, Issued), EnrollRefusal> {
        let acceptor = self
            .acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(EnrollRefusal::NotConfigured)?;
        let _permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| EnrollRefusal::Busy)?;
        let (csr, token, mic) = (csr_in.to_vec(), token.to_vec(), mic.to_vec());
        let realm = kcdsync_gss::split_principal(&acceptor.principal)
            .map(|(_, r)| r.to_owned())
            .unwrap_or_default();
        // MIT GSS-API reads the keytab and writes its replay cache: a blocking thread.
        let client = tokio::task::spawn_blocking(move || acceptor.accept(&token, &csr, &mic))
            .await
            .map_err(|e| EnrollRefusal::Unauthenticated(format!("the check did not finish: {e}")))?
            .map_err(|e| EnrollRefusal::Unauthenticated(e.to_string()))?;
        *who = Some(client.principal.clone());
        let account = computer_account(&client.principal, &realm)?;
        let host = self.directory().host_of(&client.principal, account)?;
        let actor = format!("{} at {remote}", client.principal);
        let issued = renewer
            .certify(store, &host, &actor, csr_in, Via::Enrollment, |row| {
                crate::renewal::record(store, row)
            })
            .await
            .map_err(EnrollRefusal::Issue)?;
        Ok((host, issued))
    }
}

/// `HV01$` of `HV01$@LAB.TEST` when the realm is ours and the name a computer account's (one
/// component ending in `$`: no user, no service principal such as `host/hv01`).
fn computer_account<'a>(principal: &'a str, realm: &str) -> Result<&'a str, EnrollRefusal> {
    let (name, their_realm) = kcdsync_gss::split_principal(principal).ok_or_else(|| EnrollRefusal::NotAComputer {
        principal: principal.to_owned(),
        realm: realm.to_owned(),
    })?;
    if !their_realm.eq_ignore_ascii_case(realm) {
        return Err(EnrollRefusal::WrongRealm {
            principal: principal.to_owned(),
            realm: realm.to_owned(),
        });
    }
    let netbios = name.strip_suffix('$').unwrap_or_default();
    if netbios.is_empty() || name.contains('/') || crate::model::names::HostName::parse(netbios).is_err() {
        return Err(EnrollRefusal::NotAComputer {
            principal: principal.to_owned(),
            realm: realm.to_owned(),
        });
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_computer_accounts_of_our_realm_may_enroll() {
        assert_eq!(computer_account("HV01$@LAB.TEST", "LAB.TEST").unwrap(), "HV01$");
        assert_eq!(computer_account("hv01$@lab.test", "LAB.TEST").unwrap(), "hv01$");
        for (p, code) in [
            ("alice@LAB.TEST", "not_a_computer"),
            ("host/hv01.lab.test@LAB.TEST", "not_a_computer"),
            ("$@LAB.TEST", "not_a_computer"),
            ("a b$@LAB.TEST", "not_a_computer"),
            ("HV01$@OTHER.TEST", "wrong_realm"),
            ("HV01$", "not_a_computer"),
        ] {
            assert_eq!(computer_account(p, "LAB.TEST").unwrap_err().metric(), code, "{p}");
        }
    }

    #[test]
    fn before_the_first_read_of_ad_nobody_is_refused_for_good() {
        let d = Enrollable::default();
        let e = d.host_of("HV01$@LAB.TEST", "HV01$").unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
    }

    #[test]
    fn the_directory_answers_by_netbios_name_with_the_identity_verdict() {
        let d = Enrollable {
            read_ms: Some(0),
            hosts: HashMap::from([
                ("HV01".to_owned(), Ok("hv01.lab.test".to_owned())),
                ("HV02".to_owned(), Err("HV02 claims dc1.lab.test".to_owned())),
            ]),
        };
        assert_eq!(d.host_of("hv01$@LAB.TEST", "hv01$").unwrap(), "hv01.lab.test");
        let e = d.host_of("HV02$@LAB.TEST", "HV02$").unwrap_err();
        assert_eq!((e.code(), e.metric()), (Code::PermissionDenied, "untrusted"));
        assert!(e.to_string().contains("claims dc1.lab.test"), "{e}");
        let e = d.host_of("HV03$@LAB.TEST", "HV03$").unwrap_err();
        assert_eq!(e.metric(), "not_in_scope");
        assert!(e.to_string().contains("1970-01-01T00:00:00Z"), "{e}");
    }

    #[test]
    fn a_join_tokens_host_is_found_by_its_fqdn_as_kerberos_would_find_its_account() {
        let d = Enrollable {
            read_ms: Some(0),
            hosts: HashMap::from([
                ("HV01".to_owned(), Ok("hv01.lab.test".to_owned())),
                ("HV02".to_owned(), Err("HV02 claims dc1.lab.test".to_owned())),
                ("HV04".to_owned(), Ok("hv04.other.test".to_owned())),
            ]),
        };
        assert_eq!(d.host_named("hv01.lab.test").unwrap(), "hv01.lab.test");
        assert_eq!(d.host_named("HV01.Lab.Test").unwrap(), "hv01.lab.test");
        let e = d.host_named("hv02.lab.test").unwrap_err();
        assert_eq!((e.code(), e.metric()), (Code::PermissionDenied, "untrusted"));
        let e = d.host_named("hv04.lab.test").unwrap_err();
        assert_eq!(e.metric(), "untrusted", "HV04 of the scope is another name: {e}");
        assert_eq!(d.host_named("hv03.lab.test").unwrap_err().metric(), "not_in_scope");
        assert_eq!(
            Enrollable::default().host_named("hv01.lab.test").unwrap_err().code(),
            Code::Unavailable
        );
    }
}
