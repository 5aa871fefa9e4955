//! The agent's own certificate and key as files, and their renewal: when the certificate is
//! due (half its life gone), a fresh key and its CSR; the certificate the controller returns,
//! checked; and both written so that a crash at any moment leaves a pair that works.
//!
//! How the pair is replaced (`install`): the new key and the new certificate are first written
//! beside the old ones (`<key_file>.new`, `<cert_file>.new`, the key private from the moment it
//! exists) and synced; then the key is renamed over the old key, the certificate over the old
//! certificate, and the renames are made durable (a directory sync; on Windows write-through
//! renames). A crash between the two renames leaves the new key beside the old certificate:
//! [`load`] sees that they do not match, finds the new certificate still waiting in
//! `<cert_file>.new`, and finishes the renewal. The old files stay in place until the new ones
//! are complete on disk.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::outbox::durable;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot write {path}: {source} (to renew its certificate the agent must be able to write the \
         directories of its cert_file and key_file)"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make a key or CSR: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate the controller returned is unusable: {0}")]
    Returned(String),
}

impl From<durable::WriteError> for IdentityError {
    fn from(e: durable::WriteError) -> Self {
        IdentityError::Write {
            path: e.path,
            source: e.source,
        }
    }
}

/// Where the agent's certificate and key live (`cert_file`, `key_file` of its config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The certificate and key as read, PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// When a certificate is valid, from its notBefore to its notAfter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Lifetime {
    /// The first certificate of `pem`'s.
    pub fn of(pem: &[u8]) -> Option<Lifetime> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
        let cert = pem.parse_x509().ok()?;
        let v = cert.validity();
        let at = |t: &x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
            } else {
                SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
            }
        };
        Some(Lifetime {
            not_before: at(&v.not_before)?,
            not_after: at(&v.not_after)?,
        })
    }

    /// Half-life: when the agent asks for the next certificate. Half the lifetime is left for
    /// the controller to be away (an outage shorter than that costs nothing).
    pub fn renew_at(&self) -> SystemTime {
        let life = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + life / 2
    }

    pub fn expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The public key (SubjectPublicKeyInfo, DER) of a PEM key; `None` for a key rcgen cannot read
/// (the agent then leaves the pair to TLS to judge).
fn key_spki(key_pem: &[u8]) -> Option<Vec<u8>> {
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::from_pem(std::str::from_utf8(key_pem).ok()?).ok()?;
    Some(key.subject_public_key_info())
}

/// The SubjectPublicKeyInfo (DER) of the first certificate of `pem`.
fn cert_spki(pem: &[u8]) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.public_key().raw.to_vec())
}

/// Whether the key is the certificate's; `true` when either cannot be read (TLS will say).
fn pair_matches(cert_pem: &[u8], key_pem: &[u8]) -> bool {
    match (cert_spki(cert_pem), key_spki(key_pem)) {
        (Some(c), Some(k)) => c == k,
        _ => true,
    }
}

/// Reads the certificate and key, finishing a renewal a crash interrupted (see the module
/// documentation) and removing what an earlier one left behind.
pub fn load(files: &IdentityFiles) -> Result<Identity, IdentityError> {
    let key_pem = read(&files.key_file)?;
    let mut cert_pem = read(&files.cert_file)?;
    let (new_cert, new_key) = (sibling(&files.cert_file, ".new"), sibling(&files.key_file, ".new"));
    if !pair_matches(&cert_pem, &key_pem)
        && let Ok(waiting) = fs::read(&new_cert)
        && cert_spki(&waiting).is_some()
        && pair_matches(&waiting, &key_pem)
    {
        tracing::warn!(
            cert = %files.cert_file.display(),
            "finishing a certificate renewal that was interrupted after the new key was in place"
        );
        durable::rename(&new_cert, &files.cert_file)?;
        durable::sync_dir(parent(&files.cert_file))?;
        cert_pem = waiting;
    }
    // Anything still waiting belongs to a renewal that never got as far as the key: stale.
    for stale in [new_cert, new_key] {
        let _ = fs::remove_file(stale);
    }
    Ok(Identity { cert_pem, key_pem })
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A fresh key and the CSR asking a certificate for `host` with it (PEM).
pub struct Request {
    pub csr_pem: String,
    pub key_pem: String,
}

/// A new P-256 key and a CSR naming `host` (its only subjectAltName, what the controller grants).
pub fn request(host: &str) -> Result<Request, IdentityError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host.to_owned());
    let csr = params.serialize_request(&key)?;
    Ok(Request {
        csr_pem: csr.pem()?,
        key_pem: key.serialize_pem(),
    })
}

/// Checks what the controller returned for `request` (a certificate for its key, naming `host`,
/// valid now) and puts it and the key in place of the old pair; the new certificate's lifetime.
pub fn install(
    files: &IdentityFiles,
    host: &str,
    request: &Request,
    chain_pem: &str,
) -> Result<Lifetime, IdentityError> {
    let returned = |m: &str| IdentityError::Returned(m.to_owned());
    let chain = chain_pem.as_bytes();
    if cert_spki(chain).is_none() {
        return Err(returned("it is not a PEM certificate"));
    }
    if !pair_matches(chain, request.key_pem.as_bytes()) {
        return Err(returned("it is not for the key this agent sent"));
    }
    if crate::cert::dns_name(chain).as_deref() != Some(host) {
        return Err(returned(&format!("it does not name {host}")));
    }
    let lifetime = Lifetime::of(chain).ok_or_else(|| returned("its validity cannot be read"))?;
    if lifetime.expired_at(SystemTime::now()) {
        return Err(returned("it has already expired (is this host's clock right?)"));
    }
    let (new_cert, new_key) = (sibling(&files.cert_file, ".new"), sibling(&files.key_file, ".new"));
    write_new(&new_key, request.key_pem.as_bytes(), true)?;
    write_new(&new_cert, chain, false)?;
    durable::sync_dir(parent(&files.key_file))?;
    durable::sync_dir(parent(&files.cert_file))?;
    // From here a crash is recovered by `load`: the new certificate is on disk.
    durable::rename(&new_key, &files.key_file)?;
    durable::rename(&new_cert, &files.cert_file)?;
    durable::sync_dir(parent(&files.key_file))?;
    durable::sync_dir(parent(&files.cert_file))?;
    Ok(lifetime)
}

/// Writes a new file, synced; a key (`private`) is mode 0600 on Unix from the moment it exists
/// (on Windows it takes the ACL of its directory, which the installer restricts).
fn write_new(path: &Path, bytes: &[u8], private: bool) -> Result<(), IdentityError> {
    let err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    // A file left by an interrupted renewal would keep its mode: start from nothing.
    let _ = fs::remove_file(path);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let written = (|| {
        let mut f = opts.open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(path);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;

    const HOST: &str = "hv01.lab.test";

    /// A CA that signs whatever key it is given, for `secs` seconds from now.
    struct TestCa {
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        fn new() -> TestCa {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            TestCa {
                issuer: Issuer::new(params, key),
            }
        }

        fn sign(&self, name: &str, key_pem: &str, secs: i64) -> String {
            let key = KeyPair::from_pem(key_pem).unwrap();
            let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::seconds(1);
            params.not_after = now + time::Duration::seconds(secs);
            params.signed_by(&key, &self.issuer).unwrap().pem()
        }
    }

    fn files(dir: &Path) -> IdentityFiles {
        IdentityFiles {
            cert_file: dir.join("hv01.lab.test.pem"),
            key_file: dir.join("hv01.lab.test.key"),
        }
    }

    /// An installed pair, as `certs agent` would have written it.
    fn installed(ca: &TestCa, dir: &Path) -> (IdentityFiles, Request) {
        let f = files(dir);
        let first = request(HOST).unwrap();
        fs::write(&f.key_file, &first.key_pem).unwrap();
        fs::write(&f.cert_file, ca.sign(HOST, &first.key_pem, 3600)).unwrap();
        (f, first)
    }

    #[test]
    fn half_life_is_halfway_between_not_before_and_not_after() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let l = Lifetime {
            not_before: t0,
            not_after: t0 + Duration::from_secs(86_400),
        };
        assert_eq!(l.renew_at(), t0 + Duration::from_secs(43_200));
        assert!(!l.expired_at(t0));
        assert!(l.expired_at(t0 + Duration::from_secs(86_400)));
        let ca = TestCa::new();
        let key = request(HOST).unwrap().key_pem;
        let l = Lifetime::of(ca.sign(HOST, &key, 60).as_bytes()).unwrap();
        let life = l.not_after.duration_since(l.not_before).unwrap();
        assert_eq!(life, Duration::from_secs(61));
        assert_eq!(Lifetime::of(b"garbage"), None);
    }

    #[test]
    fn a_request_names_only_the_host_and_is_signed_by_its_fresh_key() {
        let a = request(HOST).unwrap();
        let b = request(HOST).unwrap();
        assert_ne!(a.key_pem, b.key_pem, "a fresh key each time");
        let der = x509_parser::pem::parse_x509_pem(a.csr_pem.as_bytes())
            .unwrap()
            .1
            .contents;
        let (_, csr) =
            <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(
                &der,
            )
            .unwrap();
        let names: Vec<String> = csr
            .requested_extensions()
            .unwrap()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => {
                    Some(san.general_names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                }
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(names, [format!("DNSName({HOST})")]);
        assert_eq!(
            csr.certification_request_info.subject_pki.raw,
            key_spki(a.key_pem.as_bytes()).unwrap()
        );
    }

    #[test]
    fn install_replaces_the_pair_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (f, _) = installed(&ca, dir.path());
        let next = request(HOST).unwrap();
        let cert = ca.sign(HOST, &next.key_pem, 7200);
        let life = install(&f, HOST, &next, &cert).unwrap();
        assert!(life.not_after > SystemTime::now() + Duration::from_secs(7000));
        let now = load(&f).unwrap();
        assert_eq!(now.key_pem, next.key_pem.as_bytes());
        assert_eq!(now.cert_pem, cert.as_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&f.key_file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "no temporary files left: {left:?}");
    }

    #[test]
    fn a_returned_certificate_for_another_key_name_or_already_expired_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (f, first) = installed(&ca, dir.path());
        let before = (fs::read(&f.cert_file).unwrap(), fs::read(&f.key_file).unwrap());
        let next = request(HOST).unwrap();
        let other_key = request(HOST).unwrap().key_pem;
        for (bad, why) in [
            (ca.sign(HOST, &other_key, 3600), "not for the key"),
            (ca.sign("hv02.lab.test", &next.key_pem, 3600), "does not name"),
            (ca.sign(HOST, &next.key_pem, -10), "already expired"),
            ("garbage".to_owned(), "not a PEM certificate"),
        ] {
            let e = install(&f, HOST, &next, &bad).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        assert_eq!(
            (fs::read(&f.cert_file).unwrap(), fs::read(&f.key_file).unwrap()),
            before
        );
        assert_eq!(load(&f).unwrap().key_pem, first.key_pem.as_bytes());
    }

    #[test]
    fn a_crash_between_the_two_renames_is_finished_at_the_next_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (f, _) = installed(&ca, dir.path());
        // What install leaves if it stops right after the key's rename.
        let next = request(HOST).unwrap();
        let cert = ca.sign(HOST, &next.key_pem, 3600);
        fs::write(&f.key_file, &next.key_pem).unwrap();
        fs::write(sibling(&f.cert_file, ".new"), &cert).unwrap();
        let loaded = load(&f).unwrap();
        assert_eq!(loaded.cert_pem, cert.as_bytes());
        assert_eq!(fs::read(&f.cert_file).unwrap(), cert.as_bytes());
        assert!(!sibling(&f.cert_file, ".new").exists());
    }

    #[test]
    fn a_crash_before_the_key_moved_keeps_the_old_pair_and_drops_the_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (f, first) = installed(&ca, dir.path());
        let next = request(HOST).unwrap();
        fs::write(sibling(&f.key_file, ".new"), &next.key_pem).unwrap();
        fs::write(sibling(&f.cert_file, ".new"), ca.sign(HOST, &next.key_pem, 3600)).unwrap();
        let loaded = load(&f).unwrap();
        assert_eq!(loaded.key_pem, first.key_pem.as_bytes());
        assert!(!sibling(&f.key_file, ".new").exists());
        assert!(!sibling(&f.cert_file, ".new").exists());
    }
}
