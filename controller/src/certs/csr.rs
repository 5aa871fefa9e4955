//! An agent's certificate signing request (PKCS#10), as renewal over the stream receives it:
//! parsed, its signature verified (the agent holds the key it asks a certificate for), and the
//! names it asks for compared with the one host its stream is bound to. Nothing else the CSR
//! asks for is used: the CA decides the lifetime, key usage and subject ([`Ca::issue_agent_for_key`](super::Ca::issue_agent_for_key)).

use rcgen::{CertificateSigningRequestParams, PublicKeyData, SanType};
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;

use super::names::normalize_dns_name;

/// The largest CSR read (bytes): a P-256 or RSA-4096 request with one name is far below it.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("the CSR is {0} bytes; at most {MAX_CSR_BYTES} are read")]
    TooLarge(usize),
    #[error("the CSR cannot be read: {0}")]
    Unreadable(String),
    #[error("the CSR's signature does not verify with the key it carries")]
    Signature,
    /// The names asked for are not exactly the stream's host.
    #[error(
        "the CSR asks for {asked:?}; only [\"{host}\"] may be asked for (the host this request is authenticated \
         as: its stream's certificate, or its computer account when enrolling)"
    )]
    Names { host: String, asked: Vec<String> },
}

impl CsrError {
    /// Whether this refusal is a stream asking for more than it speaks for (logged as a warning
    /// and counted apart), rather than a malformed request.
    pub fn is_overreach(&self) -> bool {
        matches!(self, CsrError::Names { .. })
    }
}

/// A CSR whose signature verified and whose only name is the host's.
pub struct CheckedCsr {
    params: CertificateSigningRequestParams,
}

impl CheckedCsr {
    /// The public key to certify.
    pub fn public_key(&self) -> &impl PublicKeyData {
        &self.params.public_key
    }
}

/// Checks `csr` (PEM or DER) from a stream bound to `host` (already normalised, as
/// `peer_host_names` returns it): readable, signed by the key it carries, and asking for
/// exactly one name, a DNS name equal to `host`. Any other name (another host, a second name,
/// an IP address, an e-mail address, a URI) refuses the whole request.
pub fn check_csr(csr: &[u8], host: &str) -> Result<CheckedCsr, CsrError> {
    if csr.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(csr.len()));
    }
    let der = if csr.starts_with(b"-----BEGIN") {
        CertificateSigningRequestDer::from_pem_slice(csr)
            .map_err(|e| CsrError::Unreadable(format!("not a PEM CERTIFICATE REQUEST: {e}")))?
    } else {
        CertificateSigningRequestDer::from(csr.to_vec())
    };
    let params = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => CsrError::Signature,
        rcgen::Error::UnsupportedExtension => {
            CsrError::Unreadable("it requests an extension kcdsync does not issue (only subjectAltName is read)".into())
        }
        other => CsrError::Unreadable(other.to_string()),
    })?;
    let asked: Vec<String> = params
        .params
        .subject_alt_names
        .iter()
        .map(|san| match san {
            SanType::DnsName(n) => normalize_dns_name(n.as_str()).unwrap_or_else(|_| n.as_str().to_owned()),
            SanType::IpAddress(ip) => format!("IP:{ip}"),
            SanType::Rfc822Name(m) => format!("email:{}", m.as_str()),
            SanType::URI(u) => format!("URI:{}", u.as_str()),
            SanType::OtherName(_) => "otherName".to_owned(),
            _ => "(another kind of name)".to_owned(),
        })
        .collect();
    let only_host = matches!(params.params.subject_alt_names.as_slice(), [SanType::DnsName(_)]) && asked == [host];
    if !only_host {
        return Err(CsrError::Names {
            host: host.to_owned(),
            asked,
        });
    }
    Ok(CheckedCsr { params })
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};

    use super::*;
    use crate::certs::test_util::HOST;

    fn csr(names: &[&str]) -> (Vec<u8>, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let req = params.serialize_request(&key).unwrap();
        (req.der().to_vec(), req.pem().unwrap())
    }

    #[test]
    fn a_csr_for_exactly_the_streams_host_is_accepted_in_der_and_pem() {
        let (der, pem) = csr(&[HOST]);
        check_csr(&der, HOST).unwrap();
        check_csr(pem.as_bytes(), HOST).unwrap();
        // Spelling is the certificate's: case and a trailing dot do not make another name.
        check_csr(&csr(&["HV01.Contoso.com."]).0, HOST).unwrap();
    }

    #[test]
    fn a_csr_for_another_host_is_refused_naming_what_it_asked() {
        let e = check_csr(&csr(&["hv02.contoso.com"]).0, HOST).err().unwrap();
        assert!(e.is_overreach());
        assert_eq!(
            e.to_string(),
            "the CSR asks for [\"hv02.contoso.com\"]; only [\"hv01.contoso.com\"] may be asked for (the host this request is authenticated as: its stream's certificate, or its computer account when enrolling)"
        );
    }

    #[test]
    fn an_extra_name_beside_the_host_is_refused() {
        for names in [
            &[HOST, "hv02.contoso.com"][..],
            &[HOST, HOST],
            &[HOST, "10.0.0.1"],
            &[HOST, "*.contoso.com"],
            &[],
        ] {
            let e = check_csr(&csr(names).0, HOST).err().unwrap();
            assert!(e.is_overreach(), "{names:?}: {e}");
        }
    }

    #[test]
    fn a_csr_whose_signature_does_not_verify_is_refused() {
        let (mut der, _) = csr(&[HOST]);
        // The signature is the last bytes of the request: flip one bit of it.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert_eq!(check_csr(&der, HOST).err(), Some(CsrError::Signature));
    }

    #[test]
    fn garbage_and_oversized_input_is_refused_without_panicking() {
        for bad in [&b""[..], b"not a csr", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"] {
            assert!(matches!(check_csr(bad, HOST), Err(CsrError::Unreadable(_))), "{bad:?}");
        }
        let big = vec![0u8; MAX_CSR_BYTES + 1];
        assert_eq!(check_csr(&big, HOST).err(), Some(CsrError::TooLarge(MAX_CSR_BYTES + 1)));
    }
}
