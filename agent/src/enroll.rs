//! Enrollment: when the agent has no usable certificate (none yet, or expired) and `[enroll]`
//! is configured, it gets one by proving with Kerberos that it is its host's computer account
//! (`EnrollmentService.Enroll`, see `kcdsync_gss`): a fresh key and CSR naming the host, one
//! Kerberos token for the controller's service principal and a MIC over the CSR. The answer is
//! checked and installed exactly like a renewal's (`crate::identity::install`).
//!
//! The connection verifies the controller's certificate (`ca_file`, `tls_server_name`) as every
//! connection does; it only presents no client certificate, having none.

use std::time::Duration;

use kcdsync_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use kcdsync_proto::v1::{EnrollRequest, KerberosProof, enroll_request};
use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::config::{AgentConfig, EnrollConfig};
use crate::identity::{self, IdentityFiles, Lifetime};

/// The longest wait between two attempts after failures.
const MAX_RETRY: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("cannot read the controller's CA {path}: {source}")]
    Ca { path: String, source: std::io::Error },
    #[error("cannot make a key and CSR: {0}")]
    Request(identity::IdentityError),
    #[error(
        "Kerberos could not prove this host's identity: {0} (is the host joined and its KDC reachable? does an \
         account hold the controller's service principal?)"
    )]
    Kerberos(kcdsync_gss::GssError),
    #[error("cannot reach the controller at {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("the controller refused to enroll this host: {}", .0.message())]
    Refused(tonic::Status),
    #[error("the controller enrolled {got}, not {asked}")]
    WrongHost { asked: String, got: String },
    #[error(transparent)]
    Install(identity::IdentityError),
}

impl EnrollError {
    /// Refusals that asking again cannot change until someone acts (the log says what to do);
    /// the agent still asks again, at the longest interval.
    pub fn is_lasting(&self) -> bool {
        matches!(self, EnrollError::Refused(s) if matches!(s.code(),
            tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument))
    }
}

/// A time as the agent's logs print it (UTC, `YYYYMMDDTHHMMSSZ`).
pub fn stamp(t: std::time::SystemTime) -> String {
    crate::calendar::utc_stamp(
        t.duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
    )
}

/// Why the agent needs a certificate now, if it does: none on disk (or unreadable), or expired.
pub fn needed(files: &IdentityFiles) -> Option<&'static str> {
    let Ok(id) = identity::load(files) else {
        return Some("it has no certificate");
    };
    match Lifetime::of(&id.cert_pem) {
        None => Some("its certificate cannot be read"),
        Some(l) if l.expired_at(std::time::SystemTime::now()) => Some("its certificate has expired"),
        Some(_) => None,
    }
}

/// One enrollment of `host`: the new certificate's lifetime once it is installed.
pub async fn enroll(cfg: &AgentConfig, e: &EnrollConfig, host: &str) -> Result<Lifetime, EnrollError> {
    let request = identity::request(host).map_err(EnrollError::Request)?;
    let csr = request.csr_pem.clone().into_bytes();
    let (creds, spn, signed) = (e.creds.clone(), e.service_principal.clone(), csr.clone());
    // Asks the KDC: a blocking call, off the runtime's threads.
    let proof = tokio::task::spawn_blocking(move || kcdsync_gss::initiate(&creds, &spn, &signed))
        .await
        .map_err(|j| {
            EnrollError::Kerberos(kcdsync_gss::GssError::Invalid(format!(
                "the Kerberos call did not finish: {j}"
            )))
        })?
        .map_err(EnrollError::Kerberos)?;
    let ca = std::fs::read(&cfg.ca_file).map_err(|source| EnrollError::Ca {
        path: cfg.ca_file.display().to_string(),
        source,
    })?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(name) = &cfg.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    let url = cfg.controller_url.clone();
    let connect_err = |source| EnrollError::Connect {
        url: url.clone(),
        source,
    };
    let channel = Endpoint::from_shared(url.clone())
        .and_then(|ep| ep.tls_config(tls))
        .map_err(connect_err)?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(connect_err)?;
    let answer = EnrollmentServiceClient::new(channel)
        .enroll(EnrollRequest {
            csr,
            proof: Some(enroll_request::Proof::Kerberos(KerberosProof {
                token: proof.token,
                csr_mic: proof.mic,
            })),
        })
        .await
        .map_err(EnrollError::Refused)?
        .into_inner();
    if !answer.host.eq_ignore_ascii_case(host) {
        return Err(EnrollError::WrongHost {
            asked: host.to_owned(),
            got: answer.host,
        });
    }
    let files = IdentityFiles {
        cert_file: cfg.cert_file.clone(),
        key_file: cfg.key_file.clone(),
    };
    identity::install(&files, host, &request, &answer.certificate_chain_pem).map_err(EnrollError::Install)
}

/// Enrolls until the agent has a usable certificate (at once when it has one), waiting between
/// failures (`retry`, doubling, at most ten minutes). `false` when `stop` turned true first.
pub async fn until_enrolled(cfg: &AgentConfig, e: &EnrollConfig, host: &str, stop: &mut watch::Receiver<bool>) -> bool {
    let files = IdentityFiles {
        cert_file: cfg.cert_file.clone(),
        key_file: cfg.key_file.clone(),
    };
    let mut wait = e.retry;
    loop {
        if *stop.borrow() {
            return false;
        }
        let Some(why) = needed(&files) else {
            return true;
        };
        tracing::info!(%host, service_principal = e.service_principal, "enrolling by Kerberos: {why}");
        match enroll(cfg, e, host).await {
            Ok(l) => {
                tracing::info!(
                    %host,
                    not_after = %stamp(l.not_after),
                    "enrolled: certificate installed"
                );
                return true;
            }
            Err(err) => {
                if err.is_lasting() {
                    wait = MAX_RETRY;
                }
                tracing::error!(%host, error = %err, retry_in_secs = wait.as_secs(), "enrollment failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return false,
        }
        wait = (wait * 2).min(MAX_RETRY);
    }
}
