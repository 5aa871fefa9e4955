//! What the controller knows about AD objects: the userAccountControl bits
//! it reads, computer objects as observed, and SPN handling.

use serde::{Deserialize, Serialize};

pub const ACCOUNTDISABLE: u32 = 0x2;
pub const WORKSTATION_TRUST_ACCOUNT: u32 = 0x1000;
/// Domain controllers: never written.
pub const SERVER_TRUST_ACCOUNT: u32 = 0x2000;
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

/// The attributes one observe reads, and no others.
pub const COMPUTER_ATTRS: [&str; 6] = [
    ATTR_SAM,
    ATTR_DNS_HOST_NAME,
    ATTR_UAC,
    ATTR_DELEGATE_TO,
    ATTR_SPN,
    ATTR_USN_CHANGED,
];

/// Service classes whose entries kcdsync owns (compared lower-case).
pub const MIGRATION_SERVICE: &str = "Microsoft Virtual System Migration Service";
pub const CIFS: &str = "cifs";

/// A computer object as read from AD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Computer {
    pub dn: String,
    /// `HV01$`
    pub sam_account_name: String,
    /// `hv01.lab.test`, when set.
    pub dns_host_name: Option<String>,
    pub uac: u32,
    pub allowed_to_delegate_to: Vec<String>,
    pub spns: Vec<String>,
    pub usn_changed: i64,
}

impl Computer {
    /// NetBIOS name: sAMAccountName without the trailing `$`, upper-cased.
    pub fn netbios(&self) -> String {
        self.sam_account_name.trim_end_matches('$').to_ascii_uppercase()
    }

    /// dNSHostName lower-cased, if the object has one.
    pub fn fqdn(&self) -> Option<String> {
        self.dns_host_name.as_deref().map(str::to_ascii_lowercase)
    }

    /// The name shown to operators: the FQDN, else the NetBIOS name.
    pub fn display_name(&self) -> String {
        self.fqdn().unwrap_or_else(|| self.netbios())
    }

    pub fn is_domain_controller(&self) -> bool {
        self.uac & SERVER_TRUST_ACCOUNT != 0
    }

    pub fn has_spn(&self, spn: &str) -> bool {
        let key = spn_key(spn);
        self.spns.iter().any(|s| spn_key(s) == key)
    }
}

/// SPNs compare case-insensitively in Kerberos; AD's duplicate check on add
/// does not, so every diff goes through this key.
pub fn spn_key(spn: &str) -> String {
    spn.trim().to_lowercase()
}

/// `(service class, host)` of an SPN such as `cifs/hv01.lab.test:445/x`.
pub fn spn_parts(spn: &str) -> Option<(&str, &str)> {
    let (class, rest) = spn.trim().split_once('/')?;
    let host = rest.split([':', '/']).next().unwrap_or_default();
    if class.is_empty() || host.is_empty() {
        return None;
    }
    Some((class, host))
}

/// True for the service classes live migration needs.
pub fn is_migration_class(class: &str) -> bool {
    class.eq_ignore_ascii_case(MIGRATION_SERVICE) || class.eq_ignore_ascii_case(CIFS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spn_parts_split_class_and_host() {
        assert_eq!(spn_parts("cifs/hv01.lab.test"), Some(("cifs", "hv01.lab.test")));
        assert_eq!(
            spn_parts("Microsoft Virtual System Migration Service/HV01"),
            Some(("Microsoft Virtual System Migration Service", "HV01"))
        );
        assert_eq!(
            spn_parts("MSSQLSvc/db01.lab.test:1433"),
            Some(("MSSQLSvc", "db01.lab.test"))
        );
        assert_eq!(spn_parts("nonsense"), None);
        assert_eq!(spn_parts("/host"), None);
    }

    #[test]
    fn spn_keys_ignore_case() {
        assert_eq!(spn_key("CIFS/HV02.LAB.TEST"), spn_key("cifs/hv02.lab.test"));
    }
}
