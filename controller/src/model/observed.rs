//! One observe of AD, and the lookups every consumer of it needs.

use std::collections::HashMap;

use super::account::Privileged;
use super::computer::Computer;
use super::dn::dn_key;
use super::identity::{self, Claims, Refusal};
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
    /// What the rest of the domain says about these computers' names, and
    /// which of them are privileged: the input of `identity::verify`.
    pub claims: Claims,
}

impl Observed {
    /// Takes in newer reads of known computers (a delta read, verify's read-back): each
    /// replaces the computer, and the claim holder, with the same DN. Unknown DNs are left
    /// out: a computer new to the scope takes a full read.
    pub fn update_computers(&mut self, read: &[Computer]) {
        if read.is_empty() {
            return;
        }
        let by_dn: HashMap<String, &Computer> = read.iter().map(|c| (dn_key(&c.dn), c)).collect();
        for c in self.computers.iter_mut().chain(self.claims.holders.iter_mut()) {
            if let Some(new) = by_dn.get(&dn_key(&c.dn)) {
                *c = (*new).clone();
            }
        }
    }
}

/// Objects outside the managed scope that delegation entries inside it name
/// (a domain controller, a SQL server, a workstation): the exposure model
/// classifies edges to them, and nothing else reads them.
#[derive(Debug, Clone, Default)]
pub struct Outside {
    pub objects: Vec<Computer>,
    /// DN keys of those that are (transitively) in a privileged group.
    pub privileged: Vec<String>,
}

/// Accounts and groups that decide who may be delegated, read once per
/// reconcile.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub privileged: Vec<Privileged>,
    pub krbtgt_uac: Option<u32>,
    pub protected_users_dn: Option<String>,
}

/// Computers of one observe by name and by DN, each with its identity
/// verdict (`identity::verify`); names compare case-insensitively.
#[derive(Debug, Default)]
pub struct Index {
    /// Only computers whose dNSHostName is their own name in an allowed
    /// suffix: a name an object merely claims never finds it.
    by_fqdn: HashMap<String, usize>,
    by_netbios: HashMap<String, usize>,
    by_dn: HashMap<String, usize>,
    refusals: Vec<Option<Refusal>>,
    suffixes: Vec<String>,
}

impl Index {
    /// `suffixes`: the allowed DNS suffixes (lower-case).
    pub fn new(observed: &Observed, suffixes: &[String]) -> Index {
        let refusals = identity::verify(observed, suffixes);
        let mut ix = Index {
            by_fqdn: HashMap::new(),
            by_netbios: HashMap::new(),
            by_dn: HashMap::new(),
            refusals,
            suffixes: suffixes.to_vec(),
        };
        for (i, c) in observed.computers.iter().enumerate() {
            if let Some(f) = c.fqdn()
                && ix.name_checks_out(i)
            {
                ix.by_fqdn.insert(f, i);
            }
            ix.by_netbios.insert(c.netbios(), i);
            ix.by_dn.insert(dn_key(&c.dn), i);
        }
        ix
    }

    /// The computer an FQDN or NetBIOS name refers to. An FQDN in an allowed
    /// suffix whose object has another dNSHostName is found by its NetBIOS
    /// name (sAMAccountName is unique), so its refusal can be reported.
    pub fn find(&self, name: &HostName) -> Option<usize> {
        match name {
            HostName::Fqdn(f) => self.by_fqdn.get(f).copied().or_else(|| {
                let (_, suffix) = f.split_once('.')?;
                self.suffixes
                    .iter()
                    .any(|s| s == suffix)
                    .then(|| self.by_netbios.get(&name.derived_netbios()).copied())
                    .flatten()
            }),
            HostName::Netbios(n) => self.by_netbios.get(n).copied(),
        }
    }

    pub fn find_dn(&self, dn: &str) -> Option<usize> {
        self.by_dn.get(&dn_key(dn)).copied()
    }

    /// Why computer `i` is not a delegation target; `None` when it is one.
    pub fn refusal(&self, i: usize) -> Option<&Refusal> {
        self.refusals.get(i).and_then(Option::as_ref)
    }

    /// Computer `i`'s dNSHostName is its own name (it may still be refused
    /// for a conflict with another object, or for its role).
    pub fn name_checks_out(&self, i: usize) -> bool {
        !self.refusal(i).is_some_and(Refusal::is_about_the_name)
    }

    /// A trusted delegation target or source.
    pub fn trusted(&self, i: usize) -> bool {
        self.refusal(i).is_none()
    }
}
