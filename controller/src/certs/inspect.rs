//! Reading certificates: the host names a peer's certificate is for, and
//! when a certificate expires. Nothing here verifies a chain.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::names::normalize_dns_name;
use super::{CertError, Result};

pub(super) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Parse(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

/// The host names a (client) certificate is for: its DNS subjectAltNames,
/// lower-cased, without a trailing dot, deduplicated, in certificate order.
/// This is what the controller compares with the host an agent claims (after
/// [`normalize_host_fqdn`](super::normalize_host_fqdn) on the claim). The CN
/// is deliberately ignored; entries that are not plain host names (wildcards,
/// IP-like names, odd characters) are skipped, since they never identify one
/// host. An empty result means the certificate names no host: refuse the peer.
///
/// This does not verify the certificate: rustls' verifier has done that
/// before a handler ever sees it.
pub fn peer_host_names(cert_der: &[u8]) -> Result<Vec<String>> {
    let cert = parse_der(cert_der)?;
    let mut names = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(e.to_string()))?
    {
        for general in &san.value.general_names {
            if let GeneralName::DNSName(n) = general
                && let Ok(n) = normalize_dns_name(n)
                && !names.contains(&n)
            {
                names.push(n);
            }
        }
    }
    Ok(names)
}

/// When a certificate (DER) expires.
pub fn not_after(cert_der: &[u8]) -> Result<OffsetDateTime> {
    Ok(parse_der(cert_der)?.validity().not_after.to_datetime())
}

/// The serial number of the first certificate in `pem`, in hex (as `openssl x509 -serial`
/// prints it).
pub fn serial_hex(pem: &[u8]) -> Result<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| CertError::Parse(e.to_string()))?;
    let cert = parse_der(&der)?;
    Ok(cert.raw_serial().iter().map(|b| format!("{b:02X}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::test_util::{HOST, der};
    use crate::certs::{Ca, Validity};

    #[test]
    fn peer_host_names_returns_the_lowercased_san() {
        let ca = Ca::new("kcdsync test CA").unwrap();
        let (cert, _) = ca.issue_agent("HV01.Contoso.COM.", Validity::days(1)).unwrap();
        assert_eq!(peer_host_names(&der(&cert)).unwrap(), [HOST]);
        let x = parse_der(&der(&cert)).unwrap().subject().to_string();
        assert_eq!(x, format!("CN={HOST}"));
        assert!(peer_host_names(b"not a certificate").is_err());
        // A certificate naming no host: empty, so the controller refuses it.
        assert!(peer_host_names(ca.cert_der()).unwrap().is_empty());
    }
}
