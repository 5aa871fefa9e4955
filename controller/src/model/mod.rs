//! AD as kcdsync reads it, and the changes it plans: the only types that
//! `plan` and `diagnose` share. Nothing here does I/O.
//!
//! - `computer`: a computer object, its names, and the SPN keys every diff uses;
//! - `account`: accounts and privileged-group membership (who may be delegated);
//! - `observed`: one observe of AD (`Observed`), looked up by name and DN (`Index`),
//!   and the accounts that decide delegation (`Directory`);
//! - `change`: one planned modify of one object, with an explicit kind per part,
//!   and its intent (what an approval approves);
//! - `identity`: who a computer is for delegation, cross-checked (the trust model);
//! - `members`: who is in a migration group (the one resolver);
//! - `finding`: the one finding type and its kinds, shared by planning and diagnosis;
//! - `dn`, `names`: validated distinguished names and host names.

mod account;
mod change;
mod computer;
pub mod dn;
mod finding;
#[cfg(test)]
pub mod fixtures;
pub mod identity;
pub mod members;
pub mod names;
mod observed;

pub use account::{Account, Privileged};
pub use change::{ChangeKind, HostChange, Intent, Mode, intents};
pub use computer::{Computer, is_migration_class, spn_key, spn_parts};
pub use dn::dn_key;
pub use finding::{Finding, FindingKind, Severity};
pub use identity::{Claims, Refusal};
pub use observed::{Directory, Index, Observed, Outside};

pub const ACCOUNTDISABLE: u32 = 0x2;
pub const WORKSTATION_TRUST_ACCOUNT: u32 = 0x1000;
/// Domain controllers: never written.
pub const SERVER_TRUST_ACCOUNT: u32 = 0x2000;
/// Read-only domain controllers (PARTIAL_SECRETS_ACCOUNT): never written, never a target.
pub const PARTIAL_SECRETS_ACCOUNT: u32 = 0x4000000;
/// Unconstrained delegation: never wanted on a Hyper-V host, never set.
pub const TRUSTED_FOR_DELEGATION: u32 = 0x80000;
/// "Account is sensitive and cannot be delegated".
pub const NOT_DELEGATED: u32 = 0x100000;
/// "Use any authentication protocol" (protocol transition).
pub const TRUSTED_TO_AUTH_FOR_DELEGATION: u32 = 0x1000000;

pub const ATTR_UAC: &str = "userAccountControl";
pub const ATTR_DELEGATE_TO: &str = "msDS-AllowedToDelegateTo";
pub const ATTR_SPN: &str = "servicePrincipalName";
pub const ATTR_DNS_HOST_NAME: &str = "dNSHostName";
pub const ATTR_SAM: &str = "sAMAccountName";
pub const ATTR_USN_CHANGED: &str = "uSNChanged";
pub const ATTR_OBJECT_SID: &str = "objectSid";
/// Resource-based constrained delegation: a security descriptor on the target.
pub const ATTR_RBCD: &str = "msDS-AllowedToActOnBehalfOfOtherIdentity";

/// The attributes one observe reads, and no others. objectSid and the RBCD
/// descriptor are for the exposure model (`crate::exposure`): planning never
/// reads them.
pub const COMPUTER_ATTRS: [&str; 8] = [
    ATTR_SAM,
    ATTR_DNS_HOST_NAME,
    ATTR_UAC,
    ATTR_DELEGATE_TO,
    ATTR_SPN,
    ATTR_USN_CHANGED,
    ATTR_OBJECT_SID,
    ATTR_RBCD,
];

/// What CheckMigration reads of an initiator (the machine that runs Move-VM,
/// usually outside the scope): its names, whether it may delegate, and the SID
/// an RBCD descriptor on the source would name it by.
pub const INITIATOR_ATTRS: [&str; 5] = [
    ATTR_SAM,
    ATTR_DNS_HOST_NAME,
    ATTR_UAC,
    ATTR_DELEGATE_TO,
    ATTR_OBJECT_SID,
];

/// Service classes whose entries kcdsync owns (compared lower-case).
pub const MIGRATION_SERVICE: &str = "Microsoft Virtual System Migration Service";
pub const CIFS: &str = "cifs";
