//! The per-host diff: what one computer's delegation should be, against what
//! AD holds. Entries kcdsync does not manage (other service classes, targets
//! outside the scope) are never removed.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::config::Mode;
use crate::model::{
    CIFS, Computer, HostChange, MIGRATION_SERVICE, TRUSTED_FOR_DELEGATION, TRUSTED_TO_AUTH_FOR_DELEGATION,
    is_migration_class, spn_key, spn_parts,
};

/// An entry as (comparison key, value as written).
pub type Entry = (String, String);

/// `class/fqdn` and `class/NETBIOS` for each class: the entries that delegate
/// to one peer.
pub fn entries_to(peer_fqdn: Option<&str>, peer_netbios: &str, classes: &[&str]) -> Vec<Entry> {
    let mut out = Vec::new();
    for class in classes {
        if let Some(f) = peer_fqdn {
            out.push(format!("{class}/{f}"));
        }
        out.push(format!("{class}/{peer_netbios}"));
    }
    out.into_iter().map(|e| (spn_key(&e), e)).collect()
}

/// The four entries that delegate to a computer (both service classes, both names).
pub fn entries_to_computer(c: &Computer) -> Vec<Entry> {
    entries_to(c.fqdn().as_deref(), &c.netbios(), &[MIGRATION_SERVICE, CIFS])
}

/// What one host should have: the union over every group it is in.
pub struct Want<'a> {
    pub computer: &'a Computer,
    pub groups: Vec<String>,
    /// The most cautious mode of its groups.
    pub mode: Mode,
    pub desired: HashMap<&'a str, &'a str>,
}

/// The change that makes `want.computer` match, or `None` when it already does.
/// `managed_targets` are the host names whose migration entries are kcdsync's.
pub fn diff(want: &Want, managed_targets: &BTreeSet<String>) -> Option<HostChange> {
    let c = want.computer;
    let current: Vec<(String, &String)> = c.allowed_to_delegate_to.iter().map(|s| (spn_key(s), s)).collect();
    let current_keys: HashSet<&str> = current.iter().map(|(k, _)| k.as_str()).collect();
    let mut add: Vec<(&str, &str)> = want
        .desired
        .iter()
        .filter(|(k, _)| !current_keys.contains(*k))
        .map(|(k, v)| (*k, *v))
        .collect();
    add.sort_unstable();
    let remove: Vec<String> = current
        .iter()
        .filter(|(k, e)| !want.desired.contains_key(k.as_str()) && is_managed(e, managed_targets))
        .map(|(_, e)| (*e).clone())
        .collect();
    let uac_after = (c.uac | TRUSTED_TO_AUTH_FOR_DELEGATION) & !TRUSTED_FOR_DELEGATION;
    let mut groups = want.groups.clone();
    groups.sort();
    groups.dedup();
    let change = HostChange {
        host: c.display_name(),
        dn: c.dn.clone(),
        groups,
        mode: want.mode,
        uac_before: c.uac,
        uac_after: (uac_after != c.uac).then_some(uac_after),
        add: add.into_iter().map(|(_, v)| v.to_owned()).collect(),
        remove,
        entries_before: c.allowed_to_delegate_to.len(),
    };
    (!change.kinds().is_empty()).then_some(change)
}

/// A migration-class entry pointing at a host kcdsync manages.
fn is_managed(entry: &str, managed_targets: &BTreeSet<String>) -> bool {
    spn_parts(entry)
        .is_some_and(|(class, host)| is_migration_class(class) && managed_targets.contains(&host.to_lowercase()))
}
