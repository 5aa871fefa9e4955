//! A computer object as read from AD, and SPN handling: SPNs compare
//! case-insensitively in Kerberos, so every diff goes through `spn_key`.

use serde::{Deserialize, Serialize};

use super::{CIFS, MIGRATION_SERVICE, PARTIAL_SECRETS_ACCOUNT, SERVER_TRUST_ACCOUNT};

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
    /// objectSid as `S-1-5-21-…`: how an RBCD descriptor names this computer.
    #[serde(default)]
    pub object_sid: Option<String>,
    /// msDS-AllowedToActOnBehalfOfOtherIdentity, raw (a security
    /// descriptor: who may delegate *to* this computer); empty when unset.
    /// Parsed by `exposure::sd`, never here.
    #[serde(default)]
    pub rbcd: Vec<u8>,
}

impl Computer {
    /// An object written without having been read in this run (an account
    /// outside the computer scope): all kcdsync knows of it is what it planned from.
    pub fn unread(dn: &str, uac: u32) -> Computer {
        Computer {
            dn: dn.to_owned(),
            sam_account_name: String::new(),
            dns_host_name: None,
            uac,
            allowed_to_delegate_to: Vec::new(),
            spns: Vec::new(),
            usn_changed: 0,
            object_sid: None,
            rbcd: Vec::new(),
        }
    }

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

    /// A domain controller or a read-only DC: never written, never a target.
    pub fn is_dc_or_rodc(&self) -> bool {
        self.uac & (SERVER_TRUST_ACCOUNT | PARTIAL_SECRETS_ACCOUNT) != 0
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
