//! Kerberos proof of a host's identity, for agent enrollment.
//!
//! An agent running as SYSTEM on HV01 *is* the computer account `HV01$` in AD. To enroll it
//! asks the KDC for a ticket to the controller's service principal (e.g.
//! `kcdsync/ctl.contoso.com`) and sends the controller one GSS-API context token (the Kerberos
//! AP-REQ) and a MIC — a signature with the ticket's session key — over its certificate
//! request. The controller accepts the token with its keytab, which names the client
//! principal, and verifies the MIC: the certificate request is then bound to that principal,
//! so a captured token is worth nothing with any other key (and MIT's replay cache refuses it
//! a second time on the same controller anyway).
//!
//! One round trip, no mutual authentication: the agent has already authenticated the
//! controller by its TLS certificate, and the controller's answer is a certificate the agent
//! checks against its own key.
//!
//! - Unix: MIT Kerberos' GSS-API (`libgssapi_krb5`), the initiator from a client keytab or a
//!   credential cache, the acceptor from a keytab. Credentials are acquired per call from a
//!   credential store, so a rotated keytab is used from the next enrollment on and nothing
//!   process-wide (no `KRB5_KTNAME`) is touched.
//! - Windows: SSPI's Kerberos package with the credentials of the logon session (the machine
//!   account for SYSTEM); only the initiator.

#[cfg(unix)]
mod mit;
#[cfg(windows)]
mod sspi;

use std::path::PathBuf;

/// Why Kerberos said no, with what GSS-API / SSPI said.
#[derive(Debug, thiserror::Error)]
pub enum GssError {
    #[error("{call} failed: {message}")]
    Call { call: &'static str, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl GssError {
    pub(crate) fn invalid(msg: impl Into<String>) -> GssError {
        GssError::Invalid(msg.into())
    }
}

/// Where the initiator's credentials come from.
#[derive(Debug, Clone, Default)]
pub struct ClientCreds {
    /// The principal to authenticate as (`HV01$` or `HV01$@LAB.TEST`); `None`: the credential
    /// cache's, or the keytab's first. Unix only: SSPI uses the logon session's.
    pub principal: Option<String>,
    /// A keytab holding the principal's keys (MIT's `client_keytab`); Unix only.
    pub keytab: Option<PathBuf>,
    /// A credential cache (`FILE:/…`, `MEMORY:…`); `None`: with a keytab, a fresh in-memory
    /// one per initiation, destroyed after it; without, the default. Unix only.
    pub ccache: Option<String>,
}

/// What an initiator sends: the context token and its MIC over the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub token: Vec<u8>,
    pub mic: Vec<u8>,
}

/// Authenticates to `service` (an SPN, `kcdsync/ctl.lab.test`; its realm the client's default
/// unless written `…@REALM`) and signs `message` with the new context's key. Blocks (it asks
/// the KDC): call it from a blocking thread.
pub fn initiate(creds: &ClientCreds, service: &str, message: &[u8]) -> Result<Proof, GssError> {
    check_principal("the service principal", service)?;
    if let Some(p) = &creds.principal {
        check_principal("the client principal", p)?;
    }
    #[cfg(unix)]
    {
        mit::initiate(creds, service, message)
    }
    #[cfg(windows)]
    {
        sspi::initiate(service, message)
    }
}

/// The acceptor's side: a keytab with the service principal's keys.
#[derive(Debug, Clone)]
pub struct Acceptor {
    /// `kcdsync/ctl.lab.test@LAB.TEST`: tokens for any other principal in the keytab are refused.
    pub principal: String,
    pub keytab: PathBuf,
}

/// Who a verified token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// As Kerberos names it, `HV01$@LAB.TEST`.
    pub principal: String,
}

impl Acceptor {
    /// Checks that the keytab is readable and holds keys for the principal, by acquiring the
    /// acceptor's credentials once.
    #[cfg(unix)]
    pub fn check(&self) -> Result<(), GssError> {
        check_principal("the service principal", &self.principal)?;
        mit::check_acceptor(self)
    }

    /// Verifies `token` (one initial context token, Kerberos or SPNEGO-wrapped Kerberos, for
    /// this principal) and `mic` over `message`; the client it authenticates.
    #[cfg(unix)]
    pub fn accept(&self, token: &[u8], message: &[u8], mic: &[u8]) -> Result<Client, GssError> {
        if token.is_empty() || token.len() > MAX_TOKEN {
            return Err(GssError::invalid(format!(
                "the Kerberos token is {} bytes; expected 1..={MAX_TOKEN}",
                token.len()
            )));
        }
        if mic.is_empty() || mic.len() > MAX_MIC {
            return Err(GssError::invalid(format!(
                "the signature is {} bytes; expected 1..={MAX_MIC}",
                mic.len()
            )));
        }
        mit::accept(self, token, message, mic)
    }
}

/// An AP-REQ with a PAC is a few kilobytes; AD's own limit on a token (MaxTokenSize) is 48 KiB.
pub const MAX_TOKEN: usize = 64 * 1024;
/// An RFC 4121 MIC is 16 bytes of header and at most a 20-byte checksum.
pub const MAX_MIC: usize = 256;

/// A principal name as configured: printable, no spaces or quotes, bounded.
fn check_principal(what: &str, p: &str) -> Result<(), GssError> {
    let ok = !p.is_empty()
        && p.len() <= 256
        && p.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
        && p.matches('@').count() <= 1
        && !p.starts_with('@')
        && !p.ends_with('@');
    if ok {
        Ok(())
    } else {
        Err(GssError::invalid(format!(
            "{what} {p:?} is not a Kerberos principal name (e.g. kcdsync/ctl.contoso.com or HV01$@CONTOSO.COM)"
        )))
    }
}

/// Splits `HV01$@LAB.TEST` into (`HV01$`, `LAB.TEST`).
pub fn split_principal(p: &str) -> Option<(&str, &str)> {
    let (name, realm) = p.rsplit_once('@')?;
    (!name.is_empty() && !realm.is_empty()).then_some((name, realm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_are_checked_before_any_library_sees_them() {
        assert!(check_principal("x", "kcdsync/ctl.lab.test").is_ok());
        assert!(check_principal("x", "HV01$@LAB.TEST").is_ok());
        for bad in [
            "",
            "a b",
            "a@b@c",
            "@LAB.TEST",
            "x@",
            "quo\"te",
            "back\\slash",
            "tab\there",
        ] {
            assert!(check_principal("x", bad).is_err(), "{bad:?}");
        }
        assert!(check_principal("x", &"a".repeat(257)).is_err());
    }

    #[test]
    fn a_principal_splits_at_its_last_at_sign() {
        assert_eq!(split_principal("HV01$@LAB.TEST"), Some(("HV01$", "LAB.TEST")));
        assert_eq!(split_principal("HV01$"), None);
        assert_eq!(split_principal("@LAB.TEST"), None);
    }
}
