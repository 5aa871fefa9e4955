//! Accounts as read from AD: who runs `Move-VM`, and who is privileged.
//! Whether an account can be delegated decides readiness as much as the
//! hosts do ("sensitive and cannot be delegated", Protected Users).

use serde::Serialize;

/// An account as read from AD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub name: String,
    pub dn: String,
    pub uac: u32,
    /// Member of Protected Users, directly or through nested groups.
    pub protected_users: bool,
}

/// A member of a privileged group and the groups that make it one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileged {
    pub account: Account,
    pub via: Vec<String>,
}
