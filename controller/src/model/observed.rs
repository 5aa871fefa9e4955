//! One observe of AD, and the lookups every consumer of it needs.

use std::collections::HashMap;

use super::account::Privileged;
use super::computer::Computer;
use super::dn::dn_key;
use super::names::HostName;

/// What one observe read from AD.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Computer objects inside the managed scope.
    pub computers: Vec<Computer>,
    /// Members (DNs) of each configured AD group, keyed by the group's
    /// normalized DN. A group that does not exist is absent.
    pub ad_groups: HashMap<String, Vec<String>>,
    /// Privileged accounts, read only when sensitive-account enforcement
    /// is on.
    pub privileged: Vec<Privileged>,
}

/// Accounts and groups that decide who may be delegated, read once per
/// reconcile.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub privileged: Vec<Privileged>,
    pub krbtgt_uac: Option<u32>,
    pub protected_users_dn: Option<String>,
}

/// Computers of one observe by name and by DN; names compare
/// case-insensitively.
pub struct Index {
    by_fqdn: HashMap<String, usize>,
    by_netbios: HashMap<String, usize>,
    by_dn: HashMap<String, usize>,
}

impl Index {
    pub fn new(observed: &Observed) -> Index {
        let mut ix = Index {
            by_fqdn: HashMap::new(),
            by_netbios: HashMap::new(),
            by_dn: HashMap::new(),
        };
        for (i, c) in observed.computers.iter().enumerate() {
            if let Some(f) = c.fqdn() {
                ix.by_fqdn.insert(f, i);
            }
            ix.by_netbios.insert(c.netbios(), i);
            ix.by_dn.insert(dn_key(&c.dn), i);
        }
        ix
    }

    /// The computer an FQDN or NetBIOS name refers to.
    pub fn find(&self, name: &HostName) -> Option<usize> {
        match name {
            HostName::Fqdn(f) => self.by_fqdn.get(f).copied(),
            HostName::Netbios(n) => self.by_netbios.get(n).copied(),
        }
    }

    pub fn find_dn(&self, dn: &str) -> Option<usize> {
        self.by_dn.get(&dn_key(dn)).copied()
    }
}
