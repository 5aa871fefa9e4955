//! Computers as unit tests need them: in the lab's OU, with the migration
//! SPNs registered, delegating to exactly what a test says.

use super::{CIFS, Computer, MIGRATION_SERVICE};

pub const BASE: &str = "OU=Hyper-V,DC=lab,DC=test";

/// The four entries that delegate to `peer` (a NetBIOS name such as `HV02`):
/// both service classes, FQDN then NetBIOS name.
pub fn entries_to(peer: &str) -> Vec<String> {
    let lower = peer.to_lowercase();
    [MIGRATION_SERVICE, CIFS]
        .iter()
        .flat_map(|c| [format!("{c}/{lower}.lab.test"), format!("{c}/{peer}")])
        .collect()
}

/// `name` (NetBIOS) with userAccountControl `uac`, delegating to `delegate`.
pub fn computer(name: &str, uac: u32, delegate: &[&str]) -> Computer {
    Computer {
        dn: format!("CN={name},{BASE}"),
        sam_account_name: format!("{name}$"),
        dns_host_name: Some(format!("{}.lab.test", name.to_lowercase())),
        uac,
        allowed_to_delegate_to: delegate.iter().map(|s| s.to_string()).collect(),
        spns: entries_to(name),
        usn_changed: 1,
        object_sid: None,
        rbcd: Vec::new(),
    }
}

/// `name` delegating to every entry of each of `peers`.
pub fn delegating(name: &str, uac: u32, peers: &[&str]) -> Computer {
    let entries: Vec<String> = peers.iter().flat_map(|p| entries_to(p)).collect();
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    computer(name, uac, &refs)
}
