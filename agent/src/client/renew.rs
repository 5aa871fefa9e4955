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
