//! Host names as operators write them in the config: an FQDN
//! (`hv01.contoso.com`) or a NetBIOS name (`HV01`). Anything else — in
//! particular LDAP filter metacharacters — is refused at load time.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{input}` is not a host name: {reason}")]
pub struct NameError {
    input: String,
    reason: &'static str,
}

/// An FQDN (stored lower-case) or a NetBIOS name (stored upper-case).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostName {
    Fqdn(String),
    Netbios(String),
}

impl HostName {
    pub fn parse(input: &str) -> Result<HostName, NameError> {
        let err = |reason| NameError {
            input: input.chars().take(80).collect(),
            reason,
        };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if let Some(bad) = input
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        {
            let _ = bad;
            return Err(err("only letters, digits, '-' and '.' are allowed"));
        }
        if input.contains('.') {
            let fqdn = input.trim_end_matches('.').to_ascii_lowercase();
            if fqdn.len() > 253 {
                return Err(err("an FQDN is at most 253 characters"));
            }
            for label in fqdn.split('.') {
                if label.is_empty() || label.len() > 63 {
                    return Err(err("each DNS label must be 1 to 63 characters"));
                }
                if label.starts_with('-') || label.ends_with('-') {
                    return Err(err("a DNS label may not start or end with '-'"));
                }
            }
            Ok(HostName::Fqdn(fqdn))
        } else {
            if input.len() > 15 {
                return Err(err("a NetBIOS name is at most 15 characters (give the FQDN instead)"));
            }
            Ok(HostName::Netbios(input.to_ascii_uppercase()))
        }
    }

    pub fn is_fqdn(&self) -> bool {
        matches!(self, HostName::Fqdn(_))
    }

    pub fn as_str(&self) -> &str {
        match self {
            HostName::Fqdn(s) | HostName::Netbios(s) => s,
        }
    }

    /// The NetBIOS name Windows derives from a host name: the first label,
    /// upper-cased, cut to 15 characters.
    pub fn derived_netbios(&self) -> String {
        let first = self.as_str().split('.').next().unwrap_or_default();
        first.chars().take(15).collect::<String>().to_ascii_uppercase()
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqdn_and_netbios_are_told_apart_and_normalized() {
        assert_eq!(
            HostName::parse("HV01.Lab.Test.").unwrap(),
            HostName::Fqdn("hv01.lab.test".into())
        );
        assert_eq!(HostName::parse("hv01").unwrap(), HostName::Netbios("HV01".into()));
        assert_eq!(HostName::parse("fs01.lab.test").unwrap().derived_netbios(), "FS01");
    }

    #[test]
    fn hostile_strings_are_refused() {
        for bad in [
            "",
            "hv01)(cn=*",
            "*",
            "hv\\2a",
            "hv01 ",
            "a..b",
            "-a.b",
            "averyveryverylongname",
            "h\u{e9}.lab",
        ] {
            assert!(HostName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
