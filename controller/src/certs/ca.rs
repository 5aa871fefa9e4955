//! The private CA: creating or loading it, and issuing the controller's
//! server certificate and agents' client certificates from it.

use std::collections::HashSet;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

use super::inspect::parse_der;
use super::names::{normalize_dns_name, normalize_host_fqdn, validate_ca_name};
use super::{CertError, DEFAULT_CA_DAYS, Result};

/// How far `Validity::days` backdates `not_before`, so that a host whose
/// clock is a little behind still accepts a fresh certificate.
const BACKDATE: Duration = Duration::hours(1);

/// The validity window of a certificate to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (tolerates clock skew) until `days` days from now.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - BACKDATE,
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// An explicit window, e.g. one entirely in the past.
    pub fn between(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Validity {
        Validity { not_before, not_after }
    }

    /// A window that ended yesterday (valid the two days before): for tests
    /// that need an expired certificate.
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(3),
            not_after: now - Duration::days(1),
        }
    }

    fn check(&self) -> Result<()> {
        if self.not_after <= self.not_before {
            return Err(CertError::Validity(format!(
                "not_after ({}) must be later than not_before ({})",
                fmt_time(self.not_after),
                fmt_time(self.not_before)
            )));
        }
        Ok(())
    }
}

pub(super) fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// A certificate authority able to issue the controller's server certificate
/// and agents' client certificates. `Send + Sync`: share it behind an `Arc`.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    cert_pem: String,
    subject_raw: Vec<u8>,
    name: String,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("name", &self.name)
            .field("not_after", &self.not_after)
            .field("key", &"[elided]")
            .finish()
    }
}

impl Ca {
    /// A new self-signed CA valid for [`DEFAULT_CA_DAYS`], with a fresh P-256
    /// key; `name` becomes its common name.
    pub fn new(name: &str) -> Result<Ca> {
        Ca::with_validity(name, Validity::days(DEFAULT_CA_DAYS))
    }

    /// A new self-signed CA with an explicit validity window.
    pub fn with_validity(name: &str, validity: Validity) -> Result<Ca> {
        validate_ca_name(name)?;
        validity.check()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        // pathlen 0: this CA signs end-entity certificates only.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        Ca::from_parts(cert.der().to_vec(), cert.pem(), key)
    }

    /// Loads a CA from its certificate and its private key (PEM; the key as
    /// unencrypted PKCS#8, `-----BEGIN PRIVATE KEY-----`). Checks that the
    /// certificate is a CA and that the key is its key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let mut certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes());
        let first = certs
            .next()
            .ok_or_else(|| CertError::Parse("no CERTIFICATE block in the CA certificate PEM".into()))?
            .map_err(|e| CertError::Parse(format!("CA certificate PEM: {e}")))?;
        if certs.next().is_some() {
            return Err(CertError::UnusableCa(
                "the CA certificate file holds more than one certificate; kcdsync expects exactly one self-signed CA"
                    .into(),
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            CertError::UnusableCa(format!(
                "cannot read the CA private key ({e}); it must be an unencrypted PKCS#8 PEM key \
                 (-----BEGIN PRIVATE KEY-----; convert with `openssl pkcs8 -topk8 -nocrypt`)"
            ))
        })?;
        Ca::from_parts(first.to_vec(), cert_pem.to_string(), key)
    }

    fn from_parts(cert_der: Vec<u8>, cert_pem: String, key: KeyPair) -> Result<Ca> {
        let x509 = parse_der(&cert_der)?;
        let ca = x509
            .basic_constraints()
            .map_err(|e| CertError::Parse(e.to_string()))?
            .map(|bc| bc.value.ca)
            .unwrap_or(false);
        if !ca {
            return Err(CertError::UnusableCa(
                "the certificate is not a CA (basicConstraints CA:TRUE missing)".into(),
            ));
        }
        if let Some(ku) = x509.key_usage().map_err(|e| CertError::Parse(e.to_string()))?
            && !ku.value.key_cert_sign()
        {
            return Err(CertError::UnusableCa(
                "the CA certificate's key usage does not allow keyCertSign".into(),
            ));
        }
        if key.subject_public_key_info() != x509.public_key().raw {
            return Err(CertError::UnusableCa(
                "the private key does not belong to the CA certificate".into(),
            ));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn_from_x509(x509.subject())?;
        // Issued certificates name the CA's own subjectKeyIdentifier as their
        // authorityKeyIdentifier, whichever way the CA computed it.
        params.key_identifier_method = x509
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(KeyIdMethod::PreSpecified(id.0.to_vec())),
                _ => None,
            })
            .unwrap_or(KeyIdMethod::Sha256);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("(no common name)")
            .to_string();
        let not_after = x509.validity().not_after.to_datetime();
        let subject_raw = x509.subject().as_raw().to_vec();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_der,
            cert_pem,
            subject_raw,
            name,
            not_after,
        })
    }

    /// The CA certificate, PEM (what the controller and the agents trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA private key, PKCS#8 PEM. Whoever holds it can mint agent
    /// identities.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA's common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues the controller's server certificate: DNS subjectAltNames for
    /// `names` (validated, lower-cased), IP subjectAltNames for `ips`, EKU
    /// serverAuth. At least one name or address is required. Returns
    /// `(cert_pem, key_pem)`.
    pub fn issue_server(&self, names: &[&str], ips: &[IpAddr], validity: Validity) -> Result<(String, String)> {
        let mut dns = Vec::new();
        for n in names {
            let n = normalize_dns_name(n)?;
            if !dns.contains(&n) {
                dns.push(n);
            }
        }
        let mut addrs: Vec<IpAddr> = Vec::new();
        for ip in ips {
            if !addrs.contains(ip) {
                addrs.push(*ip);
            }
        }
        let cn = match (dns.first(), addrs.first()) {
            (Some(n), _) => n.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => {
                return Err(CertError::InvalidName {
                    input: String::new(),
                    reason: "a server certificate needs at least one DNS name or IP address",
                });
            }
        };
        let mut sans = Vec::with_capacity(dns.len() + addrs.len());
        for n in dns {
            sans.push(SanType::DnsName(n.try_into()?));
        }
        sans.extend(addrs.into_iter().map(SanType::IpAddress));
        let key = KeyPair::generate()?;
        let cert = self.issue_leaf(&cn, sans, ExtendedKeyUsagePurpose::ServerAuth, validity, &key)?;
        Ok((cert, key.serialize_pem()))
    }

    /// Issues an agent's client certificate: subjectAltName DNS = the host's
    /// FQDN lower-cased, CN = the same, EKU clientAuth. Returns
    /// `(cert_pem, key_pem)`. Pass [`Validity::expired`] for an expired one.
    ///
    /// Renewal over the agent stream goes through [`Ca::issue_agent_for_key`] instead, after
    /// `crate::renewal` checked the deny-list: a revoked host gets no fresh certificate.
    pub fn issue_agent(&self, host_fqdn: &str, validity: Validity) -> Result<(String, String)> {
        let host = normalize_host_fqdn(host_fqdn)?;
        let key = KeyPair::generate()?;
        let cert = self.issue_agent_for_key(&host, &key, validity)?;
        Ok((cert, key.serialize_pem()))
    }

    /// Issues an agent's client certificate, as [`Ca::issue_agent`] does, for a public key the
    /// agent keeps the private half of (a renewal's CSR, checked by
    /// [`check_csr`](super::check_csr)). Returns the certificate's PEM.
    pub fn issue_agent_for_key(&self, host_fqdn: &str, key: &impl PublicKeyData, validity: Validity) -> Result<String> {
        let host = normalize_host_fqdn(host_fqdn)?;
        let sans = vec![SanType::DnsName(host.clone().try_into()?)];
        self.issue_leaf(&host, sans, ExtendedKeyUsagePurpose::ClientAuth, validity, key)
    }

    fn issue_leaf(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        validity: Validity,
        key: &impl PublicKeyData,
    ) -> Result<String> {
        validity.check()?;
        if validity.not_after > self.not_after {
            return Err(CertError::Validity(format!(
                "the certificate would outlive its CA: it would end {}, the CA \"{}\" ends {}; \
                 issue it for fewer days or renew the CA",
                fmt_time(validity.not_after),
                self.name,
                fmt_time(self.not_after)
            )));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        // A random serial number: unique per certificate even when an agent asks twice with
        // the same key (rcgen's default derives it from the key).
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(key, &self.issuer)?;
        // The issuer name must be byte-identical to the CA's subject, or no
        // verifier will chain the certificate to the CA.
        let issued = parse_der(cert.der())?;
        if issued.issuer().as_raw() != self.subject_raw.as_slice() {
            return Err(CertError::UnusableCa(
                "this CA's subject name cannot be reproduced exactly (unusual string types or repeated \
                 attributes); create the CA with `kcdsync-controller certs ca`"
                    .into(),
            ));
        }
        Ok(cert.pem())
    }
}

/// 16 random bytes: the top bit clear (a positive INTEGER, at most 20 octets: RFC 5280), the
/// next one set (no leading zero byte for DER to drop, so every serial has the same length).
fn random_serial() -> Result<rcgen::SerialNumber> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CertError::UnusableCa("the system's random number generator failed".into()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

/// Rebuilds the CA's subject as rcgen needs it to name the issuer.
fn dn_from_x509(name: &X509Name<'_>) -> Result<DistinguishedName> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let unsupported =
        |what: &str| CertError::UnusableCa(format!("the CA subject name has {what}, which is not supported"));
    let mut dn = DistinguishedName::new();
    let mut seen = HashSet::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(unsupported("a multi-valued RDN"));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| unsupported("an oversized OID"))?
            .collect();
        if !seen.insert(oid.clone()) {
            return Err(unsupported("a repeated attribute"));
        }
        let value = attr.attr_value();
        let data = value.data;
        let text = || std::str::from_utf8(data).map_err(|_| unsupported("an attribute that is not valid text"));
        let bad_string = |_| unsupported("an attribute with an invalid string");
        let dn_value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_string()),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().map_err(bad_string)?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(bad_string)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(bad_string)?),
            Tag::BmpString => {
                DnValue::BmpString(rcgen::string::BmpString::from_utf16be(data.to_vec()).map_err(CertError::Rcgen)?)
            }
            Tag::UniversalString => DnValue::UniversalString(
                rcgen::string::UniversalString::from_utf32be(data.to_vec()).map_err(CertError::Rcgen)?,
            ),
            _ => return Err(unsupported("an attribute of an unusual string type")),
        };
        dn.push(DnType::from_oid(&oid), dn_value);
    }
    Ok(dn)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::CertificateError;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{PrivateKeyDer, ServerName, UnixTime};
    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::certs::test_util::{HOST, client_verifier, der, provider, roots, verify_client};
    use crate::certs::{not_after, peer_host_names};

    #[test]
    fn ca_issues_server_and_agent_certificates() {
        let ca = Ca::new("kcdsync test CA").unwrap();
        assert_eq!(ca.name(), "kcdsync test CA");
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));

        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (cert, key) = ca
            .issue_server(&["KCDSYNC.contoso.com", "localhost"], &[ip], Validity::days(30))
            .unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let server_der = der(&cert);
        let x = parse_der(&server_der).unwrap();
        assert_eq!(
            x.issuer().as_raw(),
            parse_der(ca.cert_der()).unwrap().subject().as_raw()
        );
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!x.is_ca());
        let san = x.subject_alternative_name().unwrap().unwrap().value;
        assert!(san.general_names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        assert_eq!(
            peer_host_names(&server_der).unwrap(),
            ["kcdsync.contoso.com", "localhost"]
        );

        let (cert, key) = ca.issue_agent(HOST, Validity::days(30)).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let agent_der = der(&cert);
        let x = parse_der(&agent_der).unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let cn: Vec<&str> = x.subject().iter_common_name().map(|c| c.as_str().unwrap()).collect();
        assert_eq!(cn, [HOST]);
        let days_left = (not_after(&agent_der).unwrap() - OffsetDateTime::now_utc()).whole_days();
        assert!((29..=30).contains(&days_left), "{days_left}");
    }

    #[test]
    fn verifier_accepts_agent_certificate_from_the_ca() {
        let ca = Ca::new("kcdsync test CA").unwrap();
        let (cert, _) = ca.issue_agent(HOST, Validity::days(30)).unwrap();
        verify_client(&ca, &cert).unwrap();
    }

    #[test]
    fn verifier_rejects_expired_agent_certificate() {
        let ca = Ca::new("kcdsync test CA").unwrap();
        let (cert, _) = ca.issue_agent(HOST, Validity::expired()).unwrap();
        let err = verify_client(&ca, &cert).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn verifier_rejects_certificate_from_another_ca() {
        let ca = Ca::new("kcdsync test CA").unwrap();
        // Same name, different key: must still be refused.
        let rogue = Ca::new("kcdsync test CA").unwrap();
        let (cert, _) = rogue.issue_agent(HOST, Validity::days(30)).unwrap();
        let err = verify_client(&ca, &cert).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn verifier_rejects_server_certificate_used_as_client_certificate() {
        let ca = Ca::new("kcdsync test CA").unwrap();
        let (cert, _) = ca.issue_server(&[HOST], &[], Validity::days(30)).unwrap();
        let err = verify_client(&ca, &cert).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn server_certificate_verifies_for_its_names_and_addresses_only() {
        let ca = Ca::new("kcdsync test CA").unwrap();
        let (cert, _) = ca
            .issue_server(
                &["kcdsync.contoso.com"],
                &["10.0.0.5".parse().unwrap()],
                Validity::days(30),
            )
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&ca), provider())
            .build()
            .unwrap();
        let check = |name: &str| {
            let name = ServerName::try_from(name.to_string()).unwrap();
            verifier.verify_server_cert(&der(&cert), &[], &name, &[], UnixTime::now())
        };
        check("kcdsync.contoso.com").unwrap();
        check("10.0.0.5").unwrap();
        assert!(check("other.contoso.com").is_err());
        assert!(check("10.0.0.6").is_err());
    }

    /// A full TLS 1.3 handshake in memory with the issued files: the
    /// controller side sees the agent's certificate and reads the host from it.
    #[test]
    fn mtls_handshake_binds_the_agent_host() {
        let ca = Ca::load(
            Ca::new("kcdsync test CA").unwrap().cert_pem(),
            &Ca::new("x").unwrap().key_pem(),
        );
        assert!(ca.is_err(), "a key from another CA must be refused");

        let ca = Ca::new("kcdsync test CA").unwrap();
        let (server_cert, server_key) = ca
            .issue_server(&["kcdsync.contoso.com"], &[], Validity::days(30))
            .unwrap();
        let (agent_cert, agent_key) = ca.issue_agent(HOST, Validity::days(30)).unwrap();
        let key = |pem: &str| PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();

        let server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(client_verifier(&ca))
            .with_single_cert(vec![der(&server_cert)], key(&server_key))
            .unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&ca))
            .with_client_auth_cert(vec![der(&agent_cert)], key(&agent_key))
            .unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        let name = ServerName::try_from("kcdsync.contoso.com").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();

        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().unwrap();
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!server.is_handshaking() && !client.is_handshaking());
        let peer = server.peer_certificates().expect("client certificate");
        assert_eq!(peer_host_names(&peer[0]).unwrap(), [HOST]);
    }

    #[test]
    fn loaded_ca_issues_certificates_the_original_trusts() {
        let ca = Ca::new("kcdsync test CA").unwrap();
        let loaded = Ca::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.name(), ca.name());
        assert_eq!(loaded.cert_der(), ca.cert_der());
        let (cert, _) = loaded.issue_agent(HOST, Validity::days(30)).unwrap();
        verify_client(&ca, &cert).unwrap();
        // The authorityKeyIdentifier names the CA's subjectKeyIdentifier.
        let issued = der(&cert);
        let aki = parse_der(&issued)
            .unwrap()
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0.to_vec()),
                _ => None,
            })
            .unwrap();
        let ski = parse_der(ca.cert_der())
            .unwrap()
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, ski);
    }

    #[test]
    fn load_refuses_non_ca_mismatched_key_and_garbage() {
        let ca = Ca::new("kcdsync test CA").unwrap();
        let (cert, key) = ca.issue_agent(HOST, Validity::days(30)).unwrap();
        assert!(matches!(Ca::load(&cert, &key), Err(CertError::UnusableCa(_))));
        let other = Ca::new("other").unwrap();
        assert!(matches!(
            Ca::load(ca.cert_pem(), &other.key_pem()),
            Err(CertError::UnusableCa(_))
        ));
        assert!(Ca::load("nonsense", &ca.key_pem()).is_err());
        assert!(Ca::load(ca.cert_pem(), "nonsense").is_err());
        let two = format!("{}{}", ca.cert_pem(), other.cert_pem());
        assert!(matches!(Ca::load(&two, &ca.key_pem()), Err(CertError::UnusableCa(_))));
    }

    #[test]
    fn validity_is_checked() {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::with_validity(
            "short CA",
            Validity::between(now - Duration::hours(1), now + Duration::days(10)),
        )
        .unwrap();
        assert!(matches!(
            ca.issue_agent(HOST, Validity::days(30)),
            Err(CertError::Validity(_))
        ));
        assert!(matches!(
            ca.issue_agent(HOST, Validity::between(now, now - Duration::days(1))),
            Err(CertError::Validity(_))
        ));
        ca.issue_agent(HOST, Validity::days(5)).unwrap();
        assert!(Ca::new("").is_err());
        assert!(Ca::new("bad\nname").is_err());
    }

    #[test]
    fn ca_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Ca>();
    }
}
