//! The agent's own certificate, as far as the agent needs to read it: the DNS
//! name it was issued for.

/// The first DNS name in the subjectAltName of the first certificate in `pem`;
/// `None` when there is none or the PEM does not parse (TLS will say why).
pub fn dns_name(pem: &[u8]) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_a_certificate_was_issued_for_is_read_and_garbage_is_none() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["HV01.lab.test".to_owned()]).unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        assert_eq!(dns_name(pem.as_bytes()).as_deref(), Some("hv01.lab.test"));
        assert_eq!(dns_name(b"not a certificate"), None);
        assert_eq!(dns_name(b""), None);
    }
}
