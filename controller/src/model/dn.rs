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

/// What one attribute value ended with.
enum ValueEnd {
    Rdn,
    Multi,
    Input,
}

impl Dn {
    /// Parses `input` (RFC 4514, as AD writes DNs). Never panics: any string is either a DN or
    /// an error naming it. `\XX` escapes are bytes of UTF-8 (`\c3\a9` is é); escaped bytes
    /// that are not UTF-8 are refused.
    pub fn parse(input: &str) -> Result<Dn, DnError> {
        let err = |reason| DnError {
            input: input.chars().take(300).collect(),
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
            let ty = attribute_type(&mut chars).map_err(err)?;
            let (value, end) = attribute_value(&mut chars).map_err(err)?;
            rdn.push((ty, value.to_lowercase()));
            if let ValueEnd::Multi = end {
                continue;
            }
            rdn.sort();
            rdns.push(std::mem::take(&mut rdn));
            if let ValueEnd::Input = end {
                break;
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

    /// True when `self` lies at or below one of `bases` (the managed scope).
    pub fn is_within_any(&self, bases: &[Dn]) -> bool {
        bases.iter().any(|b| self.is_within(b))
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
                escape_value(v, &mut out);
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

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// The attribute type of an RDN, lower-cased, up to and including its `=`.
fn attribute_type(chars: &mut Chars) -> Result<String, &'static str> {
    let mut ty = String::new();
    while let Some(&c) = chars.peek() {
        if c == '=' {
            break;
        }
        if !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ' ') {
            return Err("an attribute type may hold only letters, digits, '-' and '.'");
        }
        ty.push(c);
        chars.next();
    }
    let ty = ty.trim().to_ascii_lowercase();
    if ty.is_empty() {
        return Err("an RDN has no attribute type (expected e.g. `CN=name`)");
    }
    if !ty.starts_with(|c: char| c.is_ascii_alphabetic()) && !ty.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err("an attribute type must start with a letter");
    }
    if chars.next() != Some('=') {
        return Err("an RDN lacks `=`");
    }
    Ok(ty)
}

/// One attribute value, unescaped, and what ended it. The value is gathered as bytes so that
/// consecutive `\XX` escapes form one UTF-8 character; unescaped spaces at either end are not
/// part of it (RFC 4514), escaped ones are.
fn attribute_value(chars: &mut Chars) -> Result<(String, ValueEnd), &'static str> {
    let mut bytes: Vec<u8> = Vec::new();
    // Length of `bytes` up to its last significant (non-space or escaped) byte.
    let mut significant = 0;
    let mut end = ValueEnd::Input;
    let mut utf8 = [0u8; 4];
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                match chars.next() {
                    None => return Err("it ends in a lone backslash"),
                    Some(n) if n.is_ascii_hexdigit() => {
                        let m = chars.next().and_then(|m| m.to_digit(16));
                        let (Some(hi), Some(lo)) = (n.to_digit(16), m) else {
                            return Err("a \\XX escape needs two hex digits");
                        };
                        bytes.push((hi * 16 + lo) as u8);
                    }
                    Some(n) if ",+\"\\<>;=# ".contains(n) => bytes.push(n as u8),
                    Some(_) => return Err("an escape must be \\ followed by a special character or two hex digits"),
                }
                significant = bytes.len();
            }
            ',' | ';' => {
                end = ValueEnd::Rdn;
                break;
            }
            '+' => {
                end = ValueEnd::Multi;
                break;
            }
            '"' | '<' | '>' | '=' | '\0' => return Err("a value holds an unescaped special character"),
            // Leading blanks (and stray tabs or line ends around a value) are not part of it.
            c if c.is_ascii_whitespace() && bytes.is_empty() => {}
            c => {
                bytes.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                if !c.is_ascii_whitespace() {
                    significant = bytes.len();
                }
            }
        }
    }
    bytes.truncate(significant);
    if bytes.is_empty() {
        return Err("an RDN has an empty value");
    }
    let value = String::from_utf8(bytes).map_err(|_| "its \\XX escapes do not decode as UTF-8")?;
    Ok((value, end))
}

/// Writes an attribute value so that `Dn::parse` reads it back unchanged: specials escaped,
/// a leading `#` or space and a trailing space escaped, control characters as `\XX`.
fn escape_value(v: &str, out: &mut String) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        if c.is_control() && (c as u32) < 0x80 {
            out.push_str(&format!("\\{:02x}", c as u32));
            continue;
        }
        let edge_space = c == ' ' && (i == 0 || i == last);
        if ",+\"\\<>;=".contains(c) || edge_space || (i == 0 && c == '#') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// True when `dn` parses and lies at or below one of `scope`'s bases; a DN
/// that does not parse is never inside.
pub fn in_scope(dn: &str, scope: &[Dn]) -> bool {
    Dn::parse(dn).is_ok_and(|d| d.is_within_any(scope))
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
    fn hex_escapes_are_utf8_bytes() {
        let a = Dn::parse(r"CN=Ren\c3\a9,OU=Users,DC=lab,DC=test").unwrap();
        let b = Dn::parse("CN=René,OU=Users,DC=lab,DC=test").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.normalized(), "cn=rené,ou=users,dc=lab,dc=test");
        // A four-byte character from four escapes, next to a literal one.
        assert_eq!(Dn::parse(r"CN=\f0\9f\94\91ü,DC=x").unwrap().normalized(), "cn=🔑ü,dc=x");
    }

    #[test]
    fn escapes_that_are_not_utf8_name_the_dn() {
        for bad in [r"CN=\c3,DC=x", r"CN=\ff\fe,DC=x", r"CN=a\c3\28,DC=x", r"CN=\a9\c3,DC=x"] {
            let e = Dn::parse(bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("`{bad}` is not a valid distinguished name: its \\XX escapes do not decode as UTF-8")
            );
        }
    }

    #[test]
    fn escaped_edge_spaces_are_kept_and_printed_back() {
        let d = Dn::parse(r"CN=\ a \ ,DC=x").unwrap();
        assert_eq!(d.rdns[0][0].1, " a  ");
        assert_eq!(Dn::parse(&d.normalized()).unwrap(), d);
        let hash = Dn::parse(r"CN=\#1\00,DC=x").unwrap();
        assert_eq!(hash.normalized(), r"cn=\#1\00,dc=x");
        assert_eq!(Dn::parse(&hash.normalized()).unwrap(), hash);
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
            "CN=a\\c",
            "CN=a\\c3\\",
            "CN=\\é1,DC=x",
            "CN=\\1é,DC=x",
            "CN=   ,DC=x",
            "CN=é,DC=x\\",
        ] {
            assert!(Dn::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
