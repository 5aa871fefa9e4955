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

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::x509::X509Name;

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

/// How far `Validity::days` backdates `not_before`, so that a host whose
/// clock is a little behind still accepts a fresh certificate.
const BACKDATE: Duration = Duration::hours(1);

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

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

fn name_err(input: &str, reason: &'static str) -> CertError {
    CertError::InvalidName {
        input: input.chars().take(80).collect(),
        reason,
    }
}

/// Validates a DNS host name and returns it lower-cased, without a trailing
/// dot. Only ASCII letters, digits, '-' and '.' are accepted; labels are 1 to
/// 63 characters and do not start or end with '-'; wildcards and IP addresses
/// are refused. Single-label names (`localhost`) are accepted.
pub fn normalize_dns_name(input: &str) -> Result<String> {
    if input.is_empty() {
        return Err(name_err(input, "it is empty"));
    }
    if !input.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err(name_err(input, "only letters, digits, '-' and '.' are allowed"));
    }
    let name = input.strip_suffix('.').unwrap_or(input).to_ascii_lowercase();
    if name.parse::<IpAddr>().is_ok() {
        return Err(name_err(
            input,
            "this is an IP address, not a host name (use --ip for addresses)",
        ));
    }
    if name.len() > 253 {
        return Err(name_err(input, "a DNS name is at most 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(name_err(input, "each DNS label must be 1 to 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(name_err(input, "a DNS label may not start or end with '-'"));
        }
    }
    Ok(name)
}

/// Validates an agent's host name: a DNS name as [`normalize_dns_name`]
/// checks it, and an FQDN (at least two labels, e.g. `hv01.contoso.com`) —
/// the computer's dNSHostName, which is what the agent reports as
/// `HostIdentity.fqdn`. Returns it lower-cased. Apply the same function to the
/// host an agent claims before comparing it with [`peer_host_names`].
pub fn normalize_host_fqdn(input: &str) -> Result<String> {
    let name = normalize_dns_name(input)?;
    if !name.contains('.') {
        return Err(name_err(
            input,
            "give the host's FQDN (its dNSHostName, e.g. hv01.contoso.com), not a NetBIOS or short name",
        ));
    }
    Ok(name)
}

fn validate_ca_name(input: &str) -> Result<()> {
    let err = |reason| CertError::InvalidCaName {
        input: input.chars().take(80).collect(),
        reason,
    };
    if input.trim().is_empty() {
        return Err(err("it is empty"));
    }
    if input.chars().count() > 64 {
        return Err(err("a common name is at most 64 characters"));
    }
    if input.chars().any(char::is_control) {
        return Err(err("control characters are not allowed"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Validity
// ---------------------------------------------------------------------------

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

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

// ---------------------------------------------------------------------------
// CA
// ---------------------------------------------------------------------------

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
        self.issue_leaf(&cn, sans, ExtendedKeyUsagePurpose::ServerAuth, validity)
    }

    /// Issues an agent's client certificate: subjectAltName DNS = the host's
    /// FQDN lower-cased, CN = the same, EKU clientAuth. Returns
    /// `(cert_pem, key_pem)`. Pass [`Validity::expired`] for an expired one.
    pub fn issue_agent(&self, host_fqdn: &str, validity: Validity) -> Result<(String, String)> {
        let host = normalize_host_fqdn(host_fqdn)?;
        let sans = vec![SanType::DnsName(host.clone().try_into()?)];
        self.issue_leaf(&host, sans, ExtendedKeyUsagePurpose::ClientAuth, validity)
    }

    fn issue_leaf(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> Result<(String, String)> {
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
        let key = KeyPair::generate()?;
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
        // The serial number is derived from the fresh public key (rcgen's
        // default), so it is unique per certificate.
        let cert = params.signed_by(&key, &self.issuer)?;
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
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Parse(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
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

// ---------------------------------------------------------------------------
// Reading peer certificates
// ---------------------------------------------------------------------------

/// The host names a (client) certificate is for: its DNS subjectAltNames,
/// lower-cased, without a trailing dot, deduplicated, in certificate order.
/// This is what the controller compares with the host an agent claims (after
/// [`normalize_host_fqdn`] on the claim). The CN is deliberately ignored;
/// entries that are not plain host names (wildcards, IP-like names, odd
/// characters) are skipped, since they never identify one host. An empty
/// result means the certificate names no host: refuse the peer.
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

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

/// Certificate tooling for the mTLS channel between agents and the controller.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a private certificate authority: writes ca.pem and ca.key.
    ///
    /// ca.pem is the CA certificate: the controller trusts agent certificates
    /// issued by it, and every agent verifies the controller with it. ca.key
    /// is its private key (mode 0600): whoever holds it can mint any agent's
    /// identity, so keep it offline or at least off the Hyper-V hosts.
    #[command(after_long_help = "Example:\n  kcdsync-controller certs ca --out-dir /etc/kcdsync/ca")]
    Ca {
        /// Directory to write ca.pem and ca.key to (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Common name of the CA, shown by certificate viewers.
        #[arg(long, default_value = "kcdsync CA")]
        name: String,
        /// Days the CA is valid; the certificates it issues cannot outlive it.
        #[arg(long, default_value_t = DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Replace existing files instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Issue the controller's server certificate (serverAuth): writes controller.pem and controller.key.
    ///
    /// Agents connect to the controller's gRPC endpoint, check this
    /// certificate against ca.pem, and require the name or address they dial
    /// to be one of --name / --ip. Give every DNS name and address agents may
    /// use.
    #[command(
        after_long_help = "Example:\n  kcdsync-controller certs controller --ca-dir /etc/kcdsync/ca \
        --out-dir /etc/kcdsync/tls \\\n      --name kcdsync.contoso.com --name kcdsync01.contoso.com --ip 10.0.0.5"
    )]
    Controller {
        /// Directory holding ca.pem and ca.key (as written by `certs ca`).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Directory to write controller.pem and controller.key to (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// DNS name agents use to reach the controller (repeatable; letters, digits, '-', '.').
        #[arg(long = "name", value_name = "HOST", num_args = 1.., required_unless_present = "ips")]
        names: Vec<String>,
        /// IP address agents use to reach the controller (repeatable).
        #[arg(long = "ip", value_name = "IP", num_args = 1..)]
        ips: Vec<IpAddr>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Replace existing files instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Issue one agent's client certificate (clientAuth): writes <FQDN>.pem and <FQDN>.key.
    ///
    /// The certificate names the host (subjectAltName DNS = the FQDN,
    /// lower-cased). The controller accepts an agent only with a certificate
    /// from its CA, and only for the host named in it: a stream claiming
    /// another host is refused. Copy <FQDN>.pem, <FQDN>.key and ca.pem to
    /// that host only.
    #[command(
        after_long_help = "Example:\n  kcdsync-controller certs agent --ca-dir /etc/kcdsync/ca \
        --out-dir ./agents --host hv01.contoso.com"
    )]
    Agent {
        /// Directory holding ca.pem and ca.key (as written by `certs ca`).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Directory to write the certificate and key to (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The host's FQDN, i.e. its dNSHostName in AD (e.g. hv01.contoso.com); not the NetBIOS name.
        #[arg(long, value_name = "FQDN")]
        host: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Replace existing files instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Issue client certificates for many agents at once: <FQDN>.pem and <FQDN>.key per host.
    ///
    /// Same as `agent` for each --host. Every name and every target file is
    /// checked first: nothing is written unless all of them can be.
    #[command(
        after_long_help = "Example:\n  kcdsync-controller certs agents --ca-dir /etc/kcdsync/ca \
        --out-dir ./agents \\\n      --host hv01.contoso.com hv02.contoso.com hv03.contoso.com"
    )]
    Agents {
        /// Directory holding ca.pem and ca.key (as written by `certs ca`).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Directory to write the certificates and keys to (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The hosts' FQDNs (dNSHostName in AD); repeat --host or list several after it.
        #[arg(long = "host", value_name = "FQDN", num_args = 1.., required = true)]
        hosts: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Replace existing files instead of refusing.
        #[arg(long)]
        force: bool,
    },
}

/// Executes a `certs` command, printing each file it writes.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Ca {
            out_dir,
            name,
            days,
            force,
        } => {
            let (cert_path, key_path) = (out_dir.join(CA_CERT_FILE), out_dir.join(CA_KEY_FILE));
            check_free(&[&cert_path, &key_path], force)?;
            let ca = Ca::with_validity(&name, Validity::days(days))?;
            ensure_dir(&out_dir)?;
            write_key(&key_path, ca.key_pem().as_bytes(), force)?;
            write_cert(&cert_path, ca.cert_pem().as_bytes(), force)?;
            println!("CA \"{}\" valid until {}", ca.name(), fmt_time(ca.not_after()));
            println!(
                "Next: `certs controller --ca-dir {0}` and `certs agent --ca-dir {0}`; keep {1} secret.",
                out_dir.display(),
                key_path.display()
            );
        }
        CertsCommand::Controller {
            ca_dir,
            out_dir,
            names,
            ips,
            days,
            force,
        } => {
            let (cert_path, key_path) = (out_dir.join(CONTROLLER_CERT_FILE), out_dir.join(CONTROLLER_KEY_FILE));
            check_free(&[&cert_path, &key_path], force)?;
            let ca = load_ca_dir(&ca_dir)?;
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let (cert, key) = ca.issue_server(&names, &ips, Validity::days(days))?;
            ensure_dir(&out_dir)?;
            write_key(&key_path, key.as_bytes(), force)?;
            write_cert(&cert_path, cert.as_bytes(), force)?;
            let der = pem_to_der(&cert)?;
            let sans: Vec<String> = peer_host_names(&der)?
                .into_iter()
                .chain(ips.iter().map(|ip| ip.to_string()))
                .collect();
            println!(
                "controller certificate for {} (serverAuth), valid until {}, issued by \"{}\"",
                sans.join(", "),
                fmt_time(not_after(&der)?),
                ca.name()
            );
            println!(
                "Serve agents with {} + {}, trusting client certificates from {}.",
                cert_path.display(),
                key_path.display(),
                ca_dir.join(CA_CERT_FILE).display()
            );
        }
        CertsCommand::Agent {
            ca_dir,
            out_dir,
            host,
            days,
            force,
        } => {
            issue_agents(&ca_dir, &out_dir, &[host], days, force)?;
        }
        CertsCommand::Agents {
            ca_dir,
            out_dir,
            hosts,
            days,
            force,
        } => {
            issue_agents(&ca_dir, &out_dir, &hosts, days, force)?;
        }
    }
    Ok(())
}

fn issue_agents(ca_dir: &Path, out_dir: &Path, hosts: &[String], days: u32, force: bool) -> anyhow::Result<()> {
    let mut fqdns: Vec<String> = Vec::new();
    for h in hosts {
        let fqdn = normalize_host_fqdn(h)?;
        if !fqdns.contains(&fqdn) {
            fqdns.push(fqdn);
        }
    }
    let paths: Vec<(PathBuf, PathBuf)> = fqdns
        .iter()
        .map(|f| (out_dir.join(format!("{f}.pem")), out_dir.join(format!("{f}.key"))))
        .collect();
    let all: Vec<&Path> = paths.iter().flat_map(|(c, k)| [c.as_path(), k.as_path()]).collect();
    check_free(&all, force)?;
    let ca = load_ca_dir(ca_dir)?;
    let validity = Validity::days(days);
    // Issue everything in memory first, so a failure writes nothing.
    let issued: Vec<(String, String)> = fqdns
        .iter()
        .map(|f| ca.issue_agent(f, validity))
        .collect::<Result<_>>()?;
    ensure_dir(out_dir)?;
    for ((fqdn, (cert_path, key_path)), (cert, key)) in fqdns.iter().zip(&paths).zip(&issued) {
        write_key(key_path, key.as_bytes(), force)?;
        write_cert(cert_path, cert.as_bytes(), force)?;
        println!(
            "agent certificate for {fqdn} (clientAuth), valid until {}",
            fmt_time(validity.not_after)
        );
    }
    println!(
        "Copy each host's .pem and .key, and {}, to that host only.",
        ca_dir.join(CA_CERT_FILE).display()
    );
    Ok(())
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_vec())
}

/// Loads `ca.pem` + `ca.key` from a CA directory (as `certs ca` writes it).
/// Warns on stderr when the key is readable by group or others.
pub fn load_ca_dir(dir: &Path) -> anyhow::Result<Ca> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let cert = fs::read_to_string(&cert_path).with_context(|| {
        format!(
            "reading the CA certificate {} (create one with `certs ca`)",
            cert_path.display()
        )
    })?;
    let key = fs::read_to_string(&key_path).with_context(|| format!("reading the CA key {}", key_path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(&key_path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} is readable by others (mode {:o}); run `chmod 600 {}`",
                key_path.display(),
                meta.permissions().mode() & 0o777,
                key_path.display()
            );
        }
    }
    Ca::load(&cert, &key).with_context(|| format!("loading the CA from {}", dir.display()))
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// Refuses up front, before anything is written, if a target exists and
/// `--force` was not given.
fn check_free(paths: &[&Path], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    let existing: Vec<String> = paths
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        anyhow::bail!("refusing to overwrite {}; pass --force to replace", existing.join(", "));
    }
    Ok(())
}

fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))
}

fn write_key(path: &Path, contents: &[u8], force: bool) -> anyhow::Result<()> {
    write_file(path, contents, 0o600, force)?;
    println!("wrote {} (private key, mode 0600)", path.display());
    Ok(())
}

fn write_cert(path: &Path, contents: &[u8], force: bool) -> anyhow::Result<()> {
    write_file(path, contents, 0o644, force)?;
    println!("wrote {} (certificate, mode 0644)", path.display());
    Ok(())
}

/// Writes a file that has `mode` from the moment it exists. Without `force`
/// the file must not exist (create_new, so a race cannot clobber it either).
/// With `force` the content goes to a fresh sibling file that is then renamed
/// over the target: an existing file's looser mode is never inherited, and
/// readers see the old or the new file, never half of one.
fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    let target = if force {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("target has no file name")?;
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        tmp
    } else {
        path.to_path_buf()
    };
    let result = (|| -> std::io::Result<()> {
        let mut file = open_new(&target, mode)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            anyhow::bail!("refusing to overwrite {}; pass --force to replace", path.display())
        }
        Err(e) => {
            let _ = fs::remove_file(&target);
            Err(e).with_context(|| format!("writing {}", target.display()))
        }
        Ok(()) if force => {
            if let Err(e) = fs::rename(&target, path) {
                let _ = fs::remove_file(&target);
                return Err(e).with_context(|| format!("replacing {}", path.display()));
            }
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

#[cfg(unix)]
fn open_new(path: &Path, mode: u32) -> std::io::Result<fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have narrowed the mode; set exactly what was asked
    // (never wider than `mode`, so keys stay 0600).
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(file)
}

#[cfg(not(unix))]
fn open_new(path: &Path, _mode: u32) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clap::{CommandFactory, Parser};
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{PrivateKeyDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::server::danger::ClientCertVerifier;
    use rustls::{CertificateError, RootCertStore};

    use super::*;

    const HOST: &str = "hv01.contoso.com";

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(ca.cert_pem())).unwrap();
        Arc::new(roots)
    }

    fn client_verifier(ca: &Ca) -> Arc<dyn ClientCertVerifier> {
        WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap()
    }

    fn verify_client(ca: &Ca, cert_pem: &str) -> Result<(), rustls::Error> {
        client_verifier(ca)
            .verify_client_cert(&der(cert_pem), &[], UnixTime::now())
            .map(|_| ())
    }

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

    const HOSTILE: &[&str] = &[
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

    #[test]
    fn hostile_host_names_are_refused() {
        let ca = Ca::new("kcdsync test CA").unwrap();
        let long_label = format!("{}.contoso.com", "a".repeat(64));
        let long_name = format!("{}.com", ["abcdefghij"; 25].join("."));
        for bad in HOSTILE.iter().copied().chain([long_label.as_str(), long_name.as_str()]) {
            assert!(
                matches!(
                    ca.issue_agent(bad, Validity::days(1)),
                    Err(CertError::InvalidName { .. })
                ),
                "{bad:?}"
            );
            assert!(normalize_host_fqdn(bad).is_err(), "{bad:?}");
        }
        assert!(ca.issue_server(&["kcdsync/x"], &[], Validity::days(1)).is_err());
        assert!(ca.issue_server(&["10.0.0.1"], &[], Validity::days(1)).is_err());
        assert!(ca.issue_server(&[], &[], Validity::days(1)).is_err());
        // Single-label names are fine for the controller, not for agents.
        ca.issue_server(&["localhost"], &[], Validity::days(1)).unwrap();
        assert_eq!(normalize_host_fqdn("HV01.lab.test.").unwrap(), "hv01.lab.test");
    }

    #[test]
    fn hostile_host_names_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        run(CertsCommand::Ca {
            out_dir: ca_dir.clone(),
            name: "kcdsync CA".into(),
            days: 30,
            force: false,
        })
        .unwrap();
        let out = dir.path().join("agents");
        for bad in HOSTILE {
            let err = run(CertsCommand::Agents {
                ca_dir: ca_dir.clone(),
                out_dir: out.clone(),
                hosts: vec![HOST.into(), bad.to_string()],
                days: 1,
                force: true,
            })
            .unwrap_err();
            assert!(err.to_string().contains("not a valid host name"), "{bad:?}: {err}");
        }
        assert!(!out.exists());
        assert!(!dir.path().join("etc").exists());
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn cli_writes_keys_0600_certificates_0644_directories_0700() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("pki/ca");
        let out = dir.path().join("pki/tls");
        run(CertsCommand::Ca {
            out_dir: ca_dir.clone(),
            name: "kcdsync CA".into(),
            days: 30,
            force: false,
        })
        .unwrap();
        run(CertsCommand::Controller {
            ca_dir: ca_dir.clone(),
            out_dir: out.clone(),
            names: vec!["kcdsync.contoso.com".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            days: 10,
            force: false,
        })
        .unwrap();
        run(CertsCommand::Agent {
            ca_dir: ca_dir.clone(),
            out_dir: out.clone(),
            host: "HV01.Contoso.com".into(),
            days: 10,
            force: false,
        })
        .unwrap();
        run(CertsCommand::Agents {
            ca_dir: ca_dir.clone(),
            out_dir: out.clone(),
            hosts: vec![
                "hv02.contoso.com".into(),
                "hv03.contoso.com".into(),
                "HV02.contoso.com".into(),
            ],
            days: 10,
            force: false,
        })
        .unwrap();

        assert_eq!(mode(&ca_dir), 0o700);
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
        assert_eq!(mode(&ca_dir.join("ca.pem")), 0o644);
        for stem in ["controller", "hv01.contoso.com", "hv02.contoso.com", "hv03.contoso.com"] {
            assert_eq!(mode(&out.join(format!("{stem}.key"))), 0o600, "{stem}");
            assert_eq!(mode(&out.join(format!("{stem}.pem"))), 0o644, "{stem}");
        }
        let mut files: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files.len(), 8, "{files:?}");

        // The files are usable: the loaded CA trusts the agent certificate.
        let ca = load_ca_dir(&ca_dir).unwrap();
        let agent = fs::read_to_string(out.join("hv01.contoso.com.pem")).unwrap();
        verify_client(&ca, &agent).unwrap();
        assert_eq!(peer_host_names(&der(&agent)).unwrap(), [HOST]);
        let key = fs::read_to_string(out.join("hv01.contoso.com.key")).unwrap();
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    }

    #[test]
    fn existing_files_are_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca_cmd = |force| CertsCommand::Ca {
            out_dir: ca_dir.clone(),
            name: "kcdsync CA".into(),
            days: 30,
            force,
        };
        run(ca_cmd(false)).unwrap();
        let before = fs::read(ca_dir.join("ca.pem")).unwrap();
        let err = run(ca_cmd(false)).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(fs::read(ca_dir.join("ca.pem")).unwrap(), before);

        // One existing agent file blocks the whole batch.
        let out = dir.path().join("agents");
        let agents = |force| CertsCommand::Agents {
            ca_dir: ca_dir.clone(),
            out_dir: out.clone(),
            hosts: vec!["hv01.contoso.com".into(), "hv02.contoso.com".into()],
            days: 10,
            force,
        };
        fs::create_dir(&out).unwrap();
        fs::write(out.join("hv02.contoso.com.key"), "keep me").unwrap();
        let err = run(agents(false)).unwrap_err();
        assert!(err.to_string().contains("hv02.contoso.com.key"), "{err}");
        assert!(!out.join("hv01.contoso.com.pem").exists());
        assert_eq!(fs::read_to_string(out.join("hv02.contoso.com.key")).unwrap(), "keep me");

        // --force replaces, and a replaced key does not keep a looser mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(out.join("hv02.contoso.com.key"), fs::Permissions::from_mode(0o644)).unwrap();
        }
        run(agents(true)).unwrap();
        assert_ne!(fs::read_to_string(out.join("hv02.contoso.com.key")).unwrap(), "keep me");
        #[cfg(unix)]
        assert_eq!(mode(&out.join("hv02.contoso.com.key")), 0o600);
        run(ca_cmd(true)).unwrap();
        assert_ne!(fs::read(ca_dir.join("ca.pem")).unwrap(), before);
        // No temporary files left behind.
        assert!(
            fs::read_dir(&out)
                .unwrap()
                .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.'))
        );
    }

    #[derive(clap::Parser)]
    struct TestCli {
        #[command(subcommand)]
        cmd: CertsCommand,
    }

    #[test]
    fn cli_parses() {
        TestCli::command().debug_assert();
        let cli = TestCli::try_parse_from([
            "t",
            "controller",
            "--ca-dir",
            "ca",
            "--out-dir",
            "o",
            "--name",
            "a.lab",
            "b.lab",
            "--ip",
            "10.0.0.1",
        ])
        .unwrap();
        let CertsCommand::Controller {
            names,
            ips,
            days,
            force,
            ..
        } = cli.cmd
        else {
            panic!()
        };
        assert_eq!(names, ["a.lab", "b.lab"]);
        assert_eq!(ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!((days, force), (DEFAULT_LEAF_DAYS, false));
        // --ip alone is enough; neither is not.
        TestCli::try_parse_from(["t", "controller", "--ca-dir", "c", "--out-dir", "o", "--ip", "::1"]).unwrap();
        assert!(TestCli::try_parse_from(["t", "controller", "--ca-dir", "c", "--out-dir", "o"]).is_err());
        let cli = TestCli::try_parse_from(["t", "ca", "--out-dir", "o"]).unwrap();
        let CertsCommand::Ca { name, days, .. } = cli.cmd else {
            panic!()
        };
        assert_eq!((name.as_str(), days), ("kcdsync CA", DEFAULT_CA_DAYS));
        assert!(TestCli::try_parse_from(["t", "ca", "--out-dir", "o", "--days", "0"]).is_err());
        let cli = TestCli::try_parse_from([
            "t",
            "agents",
            "--ca-dir",
            "c",
            "--out-dir",
            "o",
            "--host",
            "a.lab",
            "--host",
            "b.lab",
            "c.lab",
        ])
        .unwrap();
        let CertsCommand::Agents { hosts, .. } = cli.cmd else {
            panic!()
        };
        assert_eq!(hosts, ["a.lab", "b.lab", "c.lab"]);
    }

    #[test]
    fn help_teaches() {
        let mut cmd = TestCli::command();
        for (sub, needles) in [
            ("ca", &["ca.pem", "ca.key", "0600", "Example:"][..]),
            ("controller", &["serverAuth", "--name", "--ip", "Example:"][..]),
            ("agent", &["dNSHostName", "another host is refused", "Example:"][..]),
            ("agents", &["nothing is written", "Example:"][..]),
        ] {
            let help = cmd.find_subcommand_mut(sub).unwrap().render_long_help().to_string();
            println!("==== {sub}\n{help}");
            for n in needles {
                assert!(help.contains(n), "{sub}: {n:?} missing from\n{help}");
            }
        }
    }

    #[test]
    fn ca_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Ca>();
    }
}
