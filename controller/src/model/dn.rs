//! Distinguished names (RFC 4514): parsing, the case-insensitive comparison
//! AD uses, and "is this object inside the managed scope".

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{input}` is not a valid distinguished name: {reason}")]
pub struct DnError {
    input: String,
    reason: &'static str,
}

/// A parsed DN. Equality and scope checks use the normalized form
/// (attribute types and values lower-cased, escapes canonical), because AD
/// compares DNs case-insensitively.
#[derive(Clone)]
pub struct Dn {
    original: String,
    /// RDNs from the leaf to the root; each RDN's (type, value) pairs sorted.
    rdns: Vec<Vec<(String, String)>>,
}

impl Dn {
    pub fn parse(input: &str) -> Result<Dn, DnError> {
        let err = |reason| DnError {
            input: input.to_owned(),
            reason,
        };
        if input.trim().is_empty() {
            return Err(err("it is empty"));
        }
        if input.len() > 4096 {
            return Err(err("it is longer than 4096 characters"));
        }
        let mut rdns = Vec::new();
        let mut rdn: Vec<(String, String)> = Vec::new();
        let mut chars = input.chars().peekable();
        loop {
            // attribute type
            let mut ty = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' {
                    break;
                }
                if !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ' ') {
                    return Err(err("an attribute type may hold only letters, digits, '-' and '.'"));
                }
                ty.push(c);
                chars.next();
            }
            let ty = ty.trim().to_ascii_lowercase();
            if ty.is_empty() {
                return Err(err("an RDN has no attribute type (expected e.g. `CN=name`)"));
            }
            if !ty.starts_with(|c: char| c.is_ascii_alphabetic()) && !ty.chars().all(|c| c.is_ascii_digit() || c == '.')
            {
                return Err(err("an attribute type must start with a letter"));
            }
            if chars.next() != Some('=') {
                return Err(err("an RDN lacks `=`"));
            }
            // attribute value
            let mut value = String::new();
            let mut end = None;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        let Some(n) = chars.next() else {
                            return Err(err("it ends in a lone backslash"));
                        };
                        if n.is_ascii_hexdigit() {
                            let Some(m) = chars.next().filter(|m| m.is_ascii_hexdigit()) else {
                                return Err(err("a \\XX escape needs two hex digits"));
                            };
                            let byte = u8::from_str_radix(&format!("{n}{m}"), 16).expect("two hex digits");
                            value.push(char::from(byte));
                        } else if ",+\"\\<>;=# ".contains(n) {
                            value.push(n);
                        } else {
                            return Err(err(
                                "an escape must be \\ followed by a special character or two hex digits",
                            ));
                        }
                    }
                    ',' | ';' => {
                        end = Some(',');
                        break;
                    }
                    '+' => {
                        end = Some('+');
                        break;
                    }
                    '"' | '<' | '>' | '=' | '\0' => {
                        return Err(err("a value holds an unescaped special character"));
                    }
                    c => value.push(c),
                }
            }
            let value = value.trim().to_lowercase();
            if value.is_empty() {
                return Err(err("an RDN has an empty value"));
            }
            rdn.push((ty, value));
            match end {
                Some('+') => continue,
                Some(_) => {
                    rdn.sort();
                    rdns.push(std::mem::take(&mut rdn));
                }
                None => {
                    rdn.sort();
                    rdns.push(std::mem::take(&mut rdn));
                    break;
                }
            }
        }
        Ok(Dn {
            original: input.trim().to_owned(),
            rdns,
        })
    }

    /// The DN as written in the config or returned by the server.
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// True when `self` is `base` or lies below it.
    pub fn is_within(&self, base: &Dn) -> bool {
        self.rdns.len() >= base.rdns.len() && self.rdns[self.rdns.len() - base.rdns.len()..] == base.rdns[..]
    }

    /// The canonical lower-case form, usable as a map key.
    pub fn normalized(&self) -> String {
        let mut out = String::new();
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            for (j, (t, v)) in rdn.iter().enumerate() {
                if j > 0 {
                    out.push('+');
                }
                out.push_str(t);
                out.push('=');
                for c in v.chars() {
                    if ",+\"\\<>;=".contains(c) {
                        out.push('\\');
                    }
                    out.push(c);
                }
            }
        }
        out
    }

    /// The DNS name of a domain DN: its `DC=` values joined by dots,
    /// lower-case (`DC=Contoso,DC=com` -> `contoso.com`).
    pub fn dns_name(&self) -> String {
        let labels: Vec<&str> = self
            .rdns
            .iter()
            .flat_map(|rdn| rdn.iter().filter(|(t, _)| t == "dc").map(|(_, v)| v.as_str()))
            .collect();
        labels.join(".")
    }
}

/// The key a DN read from AD is compared by: its normalized form, or, for a
/// string that does not parse, the string lower-cased (AD's DNs always parse;
/// the fallback only keeps a hostile value from matching anything by accident).
pub fn dn_key(dn: &str) -> String {
    Dn::parse(dn)
        .map(|d| d.normalized())
        .unwrap_or_else(|_| dn.to_lowercase())
}

impl PartialEq for Dn {
    fn eq(&self, other: &Dn) -> bool {
        self.rdns == other.rdns
    }
}
impl Eq for Dn {}

impl fmt::Debug for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dn({})", self.original)
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_case_insensitively_and_ignores_spacing() {
        let a = Dn::parse("CN=HV01,OU=Hyper-V,DC=lab,DC=test").unwrap();
        let b = Dn::parse("cn=hv01, ou=HYPER-V, dc=LAB, dc=test").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.normalized(), "cn=hv01,ou=hyper-v,dc=lab,dc=test");
    }

    #[test]
    fn scope_containment_is_by_whole_rdns() {
        let base = Dn::parse("OU=Hyper-V,DC=lab,DC=test").unwrap();
        assert!(Dn::parse("CN=HV01,OU=Hyper-V,DC=lab,DC=test").unwrap().is_within(&base));
        assert!(base.is_within(&base));
        assert!(
            !Dn::parse("CN=HV01,OU=Not-Hyper-V,DC=lab,DC=test")
                .unwrap()
                .is_within(&base)
        );
        assert!(
            !Dn::parse("CN=DC1,OU=Domain Controllers,DC=lab,DC=test")
                .unwrap()
                .is_within(&base)
        );
        assert!(!Dn::parse("DC=lab,DC=test").unwrap().is_within(&base));
    }

    #[test]
    fn a_domain_dn_names_its_dns_domain() {
        assert_eq!(Dn::parse("DC=Lab,DC=test").unwrap().dns_name(), "lab.test");
        assert_eq!(
            Dn::parse("OU=x,DC=corp,DC=contoso,DC=com").unwrap().dns_name(),
            "corp.contoso.com"
        );
    }

    #[test]
    fn escapes_are_understood() {
        let a = Dn::parse(r"CN=Smith\, John,OU=Users,DC=lab,DC=test").unwrap();
        let b = Dn::parse(r"CN=smith\2c john,OU=Users,DC=lab,DC=test").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rdns.len(), 4);
    }

    #[test]
    fn malformed_dns_are_refused() {
        for bad in [
            "",
            "not a dn",
            "CN=a,,DC=b",
            "CN=,DC=b",
            "=x,DC=b",
            "CN=a\\",
            "CN=a\\zz",
            "CN=a=b",
            "CN=(x)*,DC=b\0",
        ] {
            assert!(Dn::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
