//! Renewing the agent's certificate over its stream: due at half-life (read from the
//! certificate file), asked with a fresh key (`RenewCertificate`), installed when the controller
//! answers (`crate::identity::install`), then the stream is reconnected so that the new
//! certificate is the one in use. A refusal or a failure keeps the current certificate and asks
//! again later (doubling waits, at most an hour); half the lifetime is left for that.

use std::time::{Duration, SystemTime};

use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::{CertificateRenewal, RenewCertificate, certificate_renewal};
use tokio::time::Instant;
use tonic::transport::Identity as TlsIdentity;

use super::Settings;
use crate::identity::{self, IdentityFiles, Lifetime, Request};

/// How long the agent waits for the controller's answer before it asks again later.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);
/// The longest wait between two requests after failures.
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// A time as the agent's logs print it (UTC, `YYYYMMDDTHHMMSSZ`).
fn stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    crate::calendar::utc_stamp(secs)
}

/// A request sent, waiting for its answer.
struct Pending {
    seq: u64,
    request: Request,
    sent: Instant,
}

/// The renewal state of one agent, across its streams.
pub(super) struct Renewal {
    files: Option<IdentityFiles>,
    host: Option<String>,
    lifetime: Option<Lifetime>,
    first_retry: Duration,
    next_retry: Duration,
    /// No request before this (after a refusal or a failure).
    not_before: Option<Instant>,
    pending: Option<Pending>,
    /// The notAfter already reported as expired (said once, not at every reconnect).
    told_expired: Option<SystemTime>,
}

/// What an answer from the controller leads to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The new certificate and key are in place: reconnect with them.
    Installed,
    /// Nothing changed (refused, unusable, not ours); asked again later.
    Kept,
}

impl Renewal {
    pub(super) fn new(settings: &Settings) -> Renewal {
        Renewal {
            files: settings.identity.clone(),
            host: settings.certified_name.clone(),
            lifetime: None,
            first_retry: settings.renew_retry,
            next_retry: settings.renew_retry,
            not_before: None,
            pending: None,
            told_expired: None,
        }
    }

    /// Reads the certificate and key files again (before every connection), so the stream
    /// uses what is on disk: a renewed pair, or one an operator re-issued by hand.
    pub(super) fn reload(&mut self, settings: &mut Settings) {
        let Some(files) = &self.files else { return };
        let id = match identity::load(files) {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "cannot read this agent's certificate or key; connecting with what was read before");
                return;
            }
        };
        let lifetime = Lifetime::of(&id.cert_pem);
        if lifetime != self.lifetime {
            // Another certificate: its own schedule, from a clean slate.
            self.next_retry = self.first_retry;
            self.not_before = None;
            self.pending = None;
        }
        self.lifetime = lifetime;
        if let Some(name) = crate::cert::dns_name(&id.cert_pem) {
            settings.certified_name = Some(name.clone());
            self.host = Some(name);
        }
        settings.tls = settings
            .tls
            .clone()
            .identity(TlsIdentity::from_pem(id.cert_pem, id.key_pem));
        if let Some(l) = lifetime
            && l.expired_at(SystemTime::now())
            && self.told_expired != Some(l.not_after)
        {
            self.told_expired = Some(l.not_after);
            tracing::error!(
                cert = %files.cert_file.display(),
                expired = %stamp(l.not_after),
                "this agent's certificate has expired: the controller refuses it and it cannot be renewed over the \
                 stream any more. Re-enroll: on the controller, re-issue it with `kcdsync-controller certs agent \
                 --ca-dir <CA dir> --out-dir <dir> --host {}` and copy the .pem and .key over {} and {} (enrollment \
                 with the host's Kerberos identity is not built yet); the agent uses them at its next reconnect",
                self.host.as_deref().unwrap_or("<this host's FQDN>"),
                files.cert_file.display(),
                files.key_file.display(),
            );
        }
    }

    /// When the next request is due; `None` while one waits for its answer, without files, or
    /// once the certificate has expired (the controller would not accept the stream anyway).
    pub(super) fn due(&self) -> Option<Instant> {
        if self.files.is_none() || self.host.is_none() || self.pending.is_some() {
            return None;
        }
        let lifetime = self.lifetime?;
        let now = SystemTime::now();
        if lifetime.expired_at(now) {
            return None;
        }
        let at = Instant::now() + lifetime.renew_at().duration_since(now).unwrap_or_default();
        Some(self.not_before.map_or(at, |nb| nb.max(at)))
    }

    /// When the request waiting for its answer is given up on.
    pub(super) fn answer_deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.sent + ANSWER_WITHIN)
    }

    /// The request to send now (a fresh key), or `None` if one cannot be made (then asked again
    /// later). Call [`Renewal::sent`] with the message's seq once it is sent.
    pub(super) fn start(&mut self) -> Option<(Body, Request)> {
        let host = self.host.clone()?;
        match identity::request(&host) {
            Ok(request) => {
                let body = Body::RenewCertificate(RenewCertificate {
                    csr: request.csr_pem.clone().into_bytes(),
                });
                Some((body, request))
            }
            Err(e) => {
                self.failed(&format!("{e}"));
                None
            }
        }
    }

    pub(super) fn sent(&mut self, seq: u64, request: Request) {
        tracing::info!(
            host = self.host.as_deref().unwrap_or_default(),
            not_after = %self.lifetime.map(|l| stamp(l.not_after)).unwrap_or_default(),
            "half of this agent's certificate lifetime has passed: asking the controller for a new one"
        );
        self.pending = Some(Pending {
            seq,
            request,
            sent: Instant::now(),
        });
    }

    /// The answer did not come in time (an older controller ignores the request).
    pub(super) fn timed_out(&mut self) {
        if self.pending.take().is_some() {
            self.failed(&format!(
                "no answer from the controller within {} s (an older controller does not renew)",
                ANSWER_WITHIN.as_secs()
            ));
        }
    }

    /// The stream ended: a request on it will not be answered.
    pub(super) fn stream_ended(&mut self) {
        self.pending = None;
    }

    /// The controller's answer.
    pub(super) fn answer(&mut self, answer: CertificateRenewal) -> Outcome {
        let Some(pending) = self.pending.take_if(|p| p.seq == answer.seq) else {
            tracing::debug!(
                seq = answer.seq,
                "ignoring a certificate renewal answer to no request of this stream"
            );
            return Outcome::Kept;
        };
        let (Some(files), Some(host)) = (&self.files, &self.host) else {
            return Outcome::Kept;
        };
        match answer.result {
            Some(certificate_renewal::Result::CertificateChainPem(chain)) => {
                match identity::install(files, host, &pending.request, &chain) {
                    Ok(l) => {
                        tracing::info!(
                            cert = %files.cert_file.display(),
                            not_after = %stamp(l.not_after),
                            "certificate renewed and written with its new key: reconnecting with it"
                        );
                        Outcome::Installed
                    }
                    Err(e) => {
                        self.failed(&format!("{e}; the current certificate stays in use"));
                        Outcome::Kept
                    }
                }
            }
            Some(certificate_renewal::Result::Refused(r)) => {
                let code = tonic::Code::from(r.code);
                let wait = self.schedule_retry();
                // Refusals that need an operator are errors; the others pass on their own.
                if matches!(code, tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition) {
                    tracing::error!(
                        ?code,
                        reason = r.message,
                        retry_in_s = wait.as_secs(),
                        "the controller refused to renew this agent's certificate; the current one stays in use"
                    );
                } else {
                    tracing::warn!(
                        ?code,
                        reason = r.message,
                        retry_in_s = wait.as_secs(),
                        "the controller did not renew this agent's certificate now; the current one stays in use"
                    );
                }
                Outcome::Kept
            }
            None => {
                self.failed("the controller's answer held neither a certificate nor a refusal");
                Outcome::Kept
            }
        }
    }

    fn failed(&mut self, why: &str) {
        let wait = self.schedule_retry();
        tracing::warn!(
            reason = why,
            retry_in_s = wait.as_secs(),
            "certificate renewal failed; the current certificate stays in use"
        );
    }

    fn schedule_retry(&mut self) -> Duration {
        let wait = self.next_retry;
        self.not_before = Some(Instant::now() + wait);
        self.next_retry = (self.next_retry * 2).min(MAX_RETRY).max(self.first_retry);
        wait
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, IsCa, Issuer, KeyPair};
    use tonic::transport::ClientTlsConfig;

    use super::*;

    const HOST: &str = "hv01.lab.test";

    fn settings(files: &IdentityFiles) -> Settings {
        Settings {
            url: "https://127.0.0.1:1".into(),
            tls: ClientTlsConfig::new(),
            report_interval: Duration::from_secs(60),
            attempts_interval: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(15),
            max_backoff: Duration::from_secs(60),
            healthy_after: Duration::from_secs(30),
            resend_after: Duration::from_secs(30),
            max_message_bytes: 1 << 20,
            outbox_max_bytes: 64 << 20,
            certified_name: None,
            identity: Some(files.clone()),
            renew_retry: Duration::from_secs(60),
            enroll: None,
            purge_min_interval: Duration::from_secs(10),
        }
    }

    /// Writes a pair for `HOST` valid from `from` to `to` seconds from now.
    fn pair(dir: &std::path::Path, from: i64, to: i64) -> IdentityFiles {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![HOST.to_owned()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::seconds(from);
        params.not_after = now + time::Duration::seconds(to);
        let files = IdentityFiles {
            cert_file: dir.join("agent.pem"),
            key_file: dir.join("agent.key"),
        };
        std::fs::write(&files.cert_file, params.signed_by(&key, &issuer).unwrap().pem()).unwrap();
        std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
        files
    }

    fn secs_until(at: Instant) -> u64 {
        at.saturating_duration_since(Instant::now()).as_secs()
    }

    #[tokio::test]
    async fn a_renewal_is_due_at_half_life_read_from_the_certificate_file() {
        let dir = tempfile::tempdir().unwrap();
        // Issued 10 minutes ago for 2 hours: half-life in 50 minutes.
        let files = pair(dir.path(), -600, 6600);
        let mut s = settings(&files);
        let mut r = Renewal::new(&s);
        assert_eq!(r.due(), None, "nothing is known before the files are read");
        r.reload(&mut s);
        assert_eq!(
            s.certified_name.as_deref(),
            Some(HOST),
            "the name comes from the certificate"
        );
        let due = secs_until(r.due().unwrap());
        assert!((2990..=3000).contains(&due), "{due}");
    }

    #[tokio::test]
    async fn past_half_life_it_is_due_now_and_not_again_while_the_answer_is_awaited() {
        let dir = tempfile::tempdir().unwrap();
        let files = pair(dir.path(), -600, 300);
        let mut s = settings(&files);
        let mut r = Renewal::new(&s);
        r.reload(&mut s);
        assert!(r.due().unwrap() <= Instant::now());
        let (body, request) = r.start().unwrap();
        let Body::RenewCertificate(req) = body else { panic!() };
        assert!(
            String::from_utf8(req.csr)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        r.sent(7, request);
        assert_eq!(r.due(), None);
        assert!(r.answer_deadline().is_some());
        // An answer to another request changes nothing.
        let stray = CertificateRenewal { seq: 6, result: None };
        assert_eq!(r.answer(stray), Outcome::Kept);
        assert!(r.answer_deadline().is_some());
    }

    #[tokio::test]
    async fn a_refusal_keeps_the_certificate_and_asks_again_after_doubling_waits() {
        let dir = tempfile::tempdir().unwrap();
        let files = pair(dir.path(), -600, 300);
        let before = std::fs::read(&files.cert_file).unwrap();
        let mut s = settings(&files);
        let mut r = Renewal::new(&s);
        r.reload(&mut s);
        let mut waits = Vec::new();
        for seq in 1..=3 {
            let (_, request) = r.start().unwrap();
            r.sent(seq, request);
            let refusal = CertificateRenewal {
                seq,
                result: Some(certificate_renewal::Result::Refused(
                    kcdsync_proto::v1::RenewalRefused {
                        code: tonic::Code::Unavailable as i32,
                        message: "try later".into(),
                    },
                )),
            };
            assert_eq!(r.answer(refusal), Outcome::Kept);
            waits.push(secs_until(r.due().unwrap()));
        }
        assert!(
            (59..=60).contains(&waits[0]) && (119..=120).contains(&waits[1]) && (239..=240).contains(&waits[2]),
            "{waits:?}"
        );
        assert_eq!(std::fs::read(&files.cert_file).unwrap(), before);
        // No answer at all counts the same.
        let (_, request) = r.start().unwrap();
        r.sent(9, request);
        r.timed_out();
        assert!((479..=480).contains(&secs_until(r.due().unwrap())));
    }

    #[tokio::test]
    async fn an_expired_certificate_is_not_renewed_over_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let files = pair(dir.path(), -7200, -60);
        let mut s = settings(&files);
        let mut r = Renewal::new(&s);
        r.reload(&mut s);
        assert_eq!(r.due(), None, "it must be re-issued by hand (see the log)");
        assert!(r.told_expired.is_some(), "and the log said so, once");
    }

    #[tokio::test]
    async fn without_files_nothing_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let files = pair(dir.path(), -600, 300);
        let mut s = Settings {
            identity: None,
            ..settings(&files)
        };
        let mut r = Renewal::new(&s);
        r.reload(&mut s);
        assert_eq!(r.due(), None);
    }
}
