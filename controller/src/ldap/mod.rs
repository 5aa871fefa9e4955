//! The edge to Active Directory: one TLS-verified connection (LDAPS or
//! StartTLS, rustls), simple bind, the paged observe search, and the
//! compare-and-swap modify of one host. Nothing here decides *what* to write.
//!
//! - `connection`: TLS, bind, the `Ad` handle (clones pipeline on one connection);
//! - `read`: observe (paged), one object, group members (ranged retrieval);
//! - `directory`: privileged accounts, Protected Users, krbtgt, the account
//!   that runs Move-VM;
//! - `claims`: who else in the domain answers to the managed hosts' names,
//!   and which of them are privileged (the identity checks' input);
//! - `dcs`: the domain's domain controllers (for the per-DC verify);
//! - `delta`: the DC's identity and USN (the cursor), and what changed since it;
//! - `watch`: change notifications, the delta read's wake-up;
//! - `edge`: the last check of every modify, against the run's policy;
//! - `write`: the one modify per host.

mod claims;
mod connection;
mod dcs;
mod delta;
mod directory;
mod edge;
mod read;
pub mod watch;
mod write;

pub use connection::{Ad, tls_config};
pub use dcs::DcInfo;
pub use delta::{Change, Cursor, DcIdentity};
pub use directory::sid_to_string;
pub use edge::{Refused, WritePolicy};

pub const RC_NO_SUCH_ATTRIBUTE: u32 = 16;
pub const RC_TYPE_OR_VALUE_EXISTS: u32 = 20;
pub const RC_NO_SUCH_OBJECT: u32 = 32;
pub const RC_INVALID_CREDENTIALS: u32 = 49;
pub const RC_INSUFFICIENT_ACCESS: u32 = 50;
pub const RC_BUSY: u32 = 51;
pub const RC_UNAVAILABLE: u32 = 52;

/// How to grant what rc 50 says is missing; shown verbatim to operators.
pub const PRIVILEGE_HELP: &str = "the bind account lacks SeEnableDelegationPrivilege (\"Enable computer and user accounts to be trusted for delegation\"), which AD requires to change msDS-AllowedToDelegateTo and the delegation bits of userAccountControl, or lacks write access to the computer object. Grant the privilege to the bind account (or a group it is in) in the Default Domain Controllers Policy: Computer Configuration > Policies > Windows Settings > Security Settings > Local Policies > User Rights Assignment, then run `gpupdate /force` on the domain controllers; and delegate write access to userAccountControl and msDS-AllowedToDelegateTo on the managed OU";

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("cannot read the CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<ldap3::LdapError>,
    },
    #[error("bind as {dn} refused: invalid credentials (check the password file or variable)")]
    BadCredentials { dn: String },
    #[error("bind as {dn} failed: rc {rc} {text}")]
    Bind { dn: String, rc: u32, text: String },
    #[error("scope base {base} does not exist in AD: fix scope.base_dns")]
    NoSuchBase { base: String },
    #[error("search of {base} failed: rc {rc} {text}")]
    Search { base: String, rc: u32, text: String },
    #[error("{dn}: {PRIVILEGE_HELP} (server said: rc 50 {text})")]
    MissingPrivilege { dn: String, text: String },
    #[error(transparent)]
    Refused(#[from] edge::Refused),
    #[error("{dn} changed in AD after it was read (rc {rc}); re-read and re-plan")]
    Conflict { dn: String, rc: u32 },
    #[error("modify of {dn} failed: rc {rc} {text}")]
    Modify { dn: String, rc: u32, text: String },
    #[error("{url} answers as {found}, not as the DC it is configured for ({expected}): fix its [[ad.dc]] url")]
    WrongDc {
        url: String,
        expected: String,
        found: String,
    },
    #[error("{op} failed: {source}")]
    Protocol {
        op: String,
        #[source]
        source: Box<ldap3::LdapError>,
    },
}

impl LdapError {
    /// The LDAP result code, when the server answered with one.
    pub fn rc(&self) -> Option<u32> {
        match self {
            LdapError::Bind { rc, .. }
            | LdapError::Search { rc, .. }
            | LdapError::Conflict { rc, .. }
            | LdapError::Modify { rc, .. } => Some(*rc),
            LdapError::MissingPrivilege { .. } => Some(RC_INSUFFICIENT_ACCESS),
            LdapError::BadCredentials { .. } => Some(RC_INVALID_CREDENTIALS),
            LdapError::NoSuchBase { .. } => Some(RC_NO_SUCH_OBJECT),
            _ => None,
        }
    }

    /// The connection failed under the request (closed, reset, timed out): worth one retry
    /// on a new connection.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, LdapError::Protocol { .. })
    }

    /// The DC could not be reached, or stopped answering: the connection was refused, timed
    /// out, failed its TLS handshake, or was lost under a request. What makes serve write on
    /// the next DC (`runtime::failover`); an answer from the DC (a refused bind, an rc) does not.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, LdapError::Connect { .. } | LdapError::Protocol { .. })
    }

    /// Worth retrying on the same connection after a pause.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LdapError::Modify {
                rc: RC_BUSY | RC_UNAVAILABLE,
                ..
            }
        ) || matches!(
            self,
            LdapError::Search {
                rc: RC_BUSY | RC_UNAVAILABLE,
                ..
            }
        )
    }
}
