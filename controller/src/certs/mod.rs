//! Certificates for the agent ↔ controller gRPC channel (mTLS).
//!
//! The controller serves gRPC over TLS and requires a client certificate. An
//! agent's certificate names its host in a DNS subjectAltName (its FQDN,
//! lower-cased; the CN repeats it for humans); the controller binds the
//! agent's stream to that name and refuses a Hello for any other host (see
//! [`peer_host_names`]). One private CA issues both the controller's server
//! certificate and the agents' client certificates.
//!
//! Two layers:
//! - the library ([`Ca`], [`Validity`], [`peer_host_names`], [`not_after`])
//!   works in memory and is what tests and benchmarks use;
//! - [`CertsCommand`] + [`run`] are the `certs` CLI: they write PEM files, the
//!   private keys with mode 0600 from the moment they exist, certificates
//!   0644, and a missing output directory is created 0700. Existing files are
//!   never replaced without `--force`.
//!
//! Keys are ECDSA P-256 (PKCS#8 PEM, `-----BEGIN PRIVATE KEY-----`), which
//! rustls, tonic and Windows all accept.
//!
//! Layout: `names` (which host names a certificate may carry), `ca` (issuing), `csr` (an
//! agent's renewal request, checked),
//! `inspect` (reading certificates), `cli` (the `certs` subcommands) and
//! `files` (writing PEM files safely, loading a CA directory).

mod ca;
mod cli;
mod csr;
mod files;
mod inspect;
mod names;

pub use ca::{Ca, Validity};
pub use cli::{CertsCommand, run};
pub use csr::{CheckedCsr, CsrError, MAX_CSR_BYTES, check_csr};
pub use files::load_ca_dir;
pub use inspect::{not_after, peer_host_names, serial_hex};

/// A time as RFC 3339 (`2027-01-15T08:00:00Z`), as certificate messages print it.
pub fn fmt_rfc3339(t: time::OffsetDateTime) -> String {
    ca::fmt_time(t)
}
pub use names::{normalize_dns_name, normalize_host_fqdn};

/// File names inside a CA directory and an output directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const CONTROLLER_CERT_FILE: &str = "controller.pem";
pub const CONTROLLER_KEY_FILE: &str = "controller.key";

/// Default lifetimes, in days.
pub const DEFAULT_CA_DAYS: u32 = 3650;
pub const DEFAULT_LEAF_DAYS: u32 = 825;
/// Upper bound accepted for `--days` (100 years).
pub const MAX_DAYS: u32 = 36_500;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A host name that cannot go into a certificate (or a file name).
    #[error("{input:?} is not a valid host name: {reason}")]
    InvalidName { input: String, reason: &'static str },
    #[error("invalid CA name {input:?}: {reason}")]
    InvalidCaName { input: String, reason: &'static str },
    #[error("invalid validity: {0}")]
    Validity(String),
    /// The certificate or key given as a CA cannot be used to issue.
    #[error("unusable CA: {0}")]
    UnusableCa(String),
    #[error("cannot parse certificate: {0}")]
    Parse(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

pub type Result<T, E = CertError> = std::result::Result<T, E>;

/// Fixtures shared by the tests of the submodules.
#[cfg(test)]
mod test_util {
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::server::danger::ClientCertVerifier;

    use super::Ca;

    pub(super) const HOST: &str = "hv01.contoso.com";

    pub(super) fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    pub(super) fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(ca.cert_pem())).unwrap();
        Arc::new(roots)
    }

    pub(super) fn client_verifier(ca: &Ca) -> Arc<dyn ClientCertVerifier> {
        WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap()
    }

    pub(super) fn verify_client(ca: &Ca, cert_pem: &str) -> Result<(), rustls::Error> {
        client_verifier(ca)
            .verify_client_cert(&der(cert_pem), &[], UnixTime::now())
            .map(|_| ())
    }

    pub(super) const HOSTILE: &[&str] = &[
        "",
        ".",
        "hv01/../../etc/passwd",
        "../hv01.contoso.com",
        "hv01.contoso.com/x",
        "hv01.contoso.com;rm -rf",
        "hv 01.contoso.com",
        "hv01.contoso.com ",
        "*.contoso.com",
        "hv01..contoso.com",
        ".hv01.contoso.com",
        "-hv01.contoso.com",
        "hv01-.contoso.com",
        "hv01\n.contoso.com",
        "hv01\0.contoso.com",
        "h\u{e9}01.contoso.com",
        "hv01)(cn=*.contoso.com",
        "10.0.0.1",
        "::1",
        "HV01",
    ];
}
