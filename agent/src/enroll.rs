//! Enrollment: when the agent has no usable certificate (none yet, or expired) and `[enroll]`
//! is configured, it gets one by proving with Kerberos that it is its host's computer account
//! (`EnrollmentService.Enroll`, see `kcdsync_gss`): a fresh key and CSR naming the host, one
//! Kerberos token for the controller's service principal and a MIC over the CSR. The answer is
//! checked and installed exactly like a renewal's (`crate::identity::install`).
//!
//! A host that cannot reach its KDC enrolls once with a join token instead
//! (`[enroll] join_token_file`, from `kcdsync-controller agents token create HOST`): the token
//! is sent in place of the Kerberos proof and the file deleted once the certificate is
//! installed (the token is spent). With both configured, Kerberos goes first and the token is
//! used only when Kerberos cannot get a ticket here (no KDC reachable, no usable keytab): the
//! token is a single-use fallback, not to be spent while Kerberos works, and when the
//! controller refuses a Kerberos-proven host (not in scope, revoked) it would refuse the same
//! host's token for the same reason.
//!
//! The connection verifies the controller's certificate (`ca_file`, `tls_server_name`) as every
//! connection does; it only presents no client certificate, having none.

use std::path::Path;
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
    #[error("join token file {path}: {message}")]
    TokenFile { path: String, message: String },
    #[error("[enroll] has no join_token_file and no service_principal; nothing to prove this host with")]
    NoProof,
    #[error("the controller enrolled {got}, not {asked}")]
    WrongHost { asked: String, got: String },
    #[error(transparent)]
    Install(identity::IdentityError),
}

impl EnrollError {
    /// Refusals that asking again cannot change until someone acts (the log says what to do);
    /// the agent still asks again, at the longest interval.
    pub fn is_lasting(&self) -> bool {
        matches!(self, EnrollError::TokenFile { .. } | EnrollError::NoProof)
            || matches!(self, EnrollError::Refused(s) if matches!(s.code(),
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

/// The Kerberos proof of this host over `csr`, for the service principal `spn`.
async fn kerberos(e: &EnrollConfig, spn: &str, csr: &[u8]) -> Result<enroll_request::Proof, EnrollError> {
    let (creds, spn, signed) = (e.creds.clone(), spn.to_owned(), csr.to_vec());
    // Asks the KDC: a blocking call, off the runtime's threads.
    let proof = tokio::task::spawn_blocking(move || kcdsync_gss::initiate(&creds, &spn, &signed))
        .await
        .map_err(|j| {
            EnrollError::Kerberos(kcdsync_gss::GssError::Invalid(format!(
                "the Kerberos call did not finish: {j}"
            )))
        })?
        .map_err(EnrollError::Kerberos)?;
    Ok(enroll_request::Proof::Kerberos(KerberosProof {
        token: proof.token,
        csr_mic: proof.mic,
    }))
}

/// The join token in `path`: a file only its owner may read (Unix; on Windows its ACL, which
/// the installer or the operator sets), holding `kcdj_…` on one line.
pub fn read_join_token(path: &Path) -> Result<String, EnrollError> {
    let fail = |message: String| EnrollError::TokenFile {
        path: path.display().to_string(),
        message,
    };
    check_private(path).map_err(fail)?;
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let token = text.trim();
    if !token.starts_with("kcdj_") || token.len() > 256 || token.contains(char::is_whitespace) {
        return Err(fail(
            "does not hold a join token (one line kcdj_…, as `kcdsync-controller agents token create` printed it)"
                .into(),
        ));
    }
    Ok(token.to_owned())
}

/// Refuses a token file group or others may read or write, as the controller refuses its
/// secret files: a token anyone else on the machine can read is already leaked.
#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| e.to_string())?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "is mode {mode:04o} (readable by group/others); run chmod 600 {}",
            path.display()
        ));
    }
    Ok(())
}

/// Windows has no mode bits: the file's ACL (SYSTEM and Administrators) is the operator's.
#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), String> {
    Ok(())
}

/// One enrollment of `host`: the new certificate's lifetime once it is installed.
pub async fn enroll(cfg: &AgentConfig, e: &EnrollConfig, host: &str) -> Result<Lifetime, EnrollError> {
    let request = identity::request(host).map_err(EnrollError::Request)?;
    let csr = request.csr_pem.clone().into_bytes();
    let token_file = e.join_token_file.as_deref().filter(|p| p.exists());
    let by_token = |path: &Path| read_join_token(path).map(enroll_request::Proof::JoinToken);
    let (proof, spent) = match (&e.service_principal, token_file) {
        (Some(spn), None) => (kerberos(e, spn, &csr).await?, None),
        (Some(spn), Some(path)) => match kerberos(e, spn, &csr).await {
            Ok(p) => (p, None),
            Err(EnrollError::Kerberos(k)) => {
                tracing::warn!(
                    %host, error = %k, join_token_file = %path.display(),
                    "Kerberos cannot prove this host's identity: enrolling with the join token instead"
                );
                (by_token(path)?, Some(path))
            }
            Err(other) => return Err(other),
        },
        (None, Some(path)) => (by_token(path)?, Some(path)),
        (None, None) => match &e.join_token_file {
            Some(path) => {
                return Err(EnrollError::TokenFile {
                    path: path.display().to_string(),
                    message: "does not exist (spent already, or not written yet): create a token with \
                              `kcdsync-controller agents token create HOST` and write it there"
                        .into(),
                });
            }
            None => return Err(EnrollError::NoProof),
        },
    };
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
            proof: Some(proof),
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
    let lifetime =
        identity::install(&files, host, &request, &answer.certificate_chain_pem).map_err(EnrollError::Install)?;
    if let Some(path) = spent {
        // The controller spent the token with this enrollment: it can do nothing more.
        match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::info!(%host, join_token_file = %path.display(), "enrolled with the join token: it is spent, file deleted")
            }
            Err(err) => {
                tracing::warn!(%host, join_token_file = %path.display(), error = %err, "enrolled with the join token (spent now), but its file could not be deleted: delete it")
            }
        }
    }
    Ok(lifetime)
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
        tracing::info!(
            %host,
            service_principal = e.service_principal.as_deref().unwrap_or("(none)"),
            join_token_file = e.join_token_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "enrolling: {why}"
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_join_token_file_is_private_and_holds_one_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("join-token.txt");
        let token = format!("kcdj_{}", "ab".repeat(32));
        std::fs::write(&path, format!("{token}\r\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_join_token(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_join_token(&path).unwrap(), token);
        std::fs::write(&path, "password123\n").unwrap();
        let e = read_join_token(&path).unwrap_err();
        assert!(
            e.is_lasting() && e.to_string().contains("does not hold a join token"),
            "{e}"
        );
        assert!(read_join_token(&dir.path().join("missing")).is_err());
    }
}
