//! `[[ad.dc]]` and `ad.replication_deadline_secs`: how to reach the domain's other domain
//! controllers, for the per-DC verify after a write (`runtime::replication`).
//!
//! DCs are discovered from AD (their NTDS Settings objects); the config only says how to
//! reach one by name. A discovered DC without an entry is reported, never guessed at: its
//! dNSHostName may not resolve from the controller (the lab's resolver is deliberately
//! unusable) or may reach something else.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::model::names::HostName;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDc {
    name: String,
    url: String,
    #[serde(default)]
    starttls: bool,
}

/// Microsoft's guidance for a delegation change: "wait up to 15 minutes" for replication.
pub const DEFAULT_REPLICATION_DEADLINE: Duration = Duration::from_secs(15 * 60);

pub(super) fn default_deadline_secs() -> u64 {
    DEFAULT_REPLICATION_DEADLINE.as_secs()
}

/// How to reach one domain controller (same CA, bind account and timeout as `[ad]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcConfig {
    /// The DC's dNSHostName, lower-case: what discovery matches it by.
    pub name: String,
    pub url: String,
    pub starttls: bool,
}

/// Checks an LDAP URL and its StartTLS flag the way `[ad]` does: never a bind in clear.
pub(super) fn check_url(key: &str, url: &str, starttls: bool) -> Result<(), ConfigError> {
    let scheme = url.split("://").next().unwrap_or_default().to_ascii_lowercase();
    match (scheme.as_str(), starttls) {
        ("ldaps", false) | ("ldap", true) => Ok(()),
        ("ldaps", true) => Err(invalid(
            key.replace(".url", ".starttls"),
            "StartTLS is for ldap:// URLs; ldaps:// is already TLS",
        )),
        ("ldap", false) => Err(invalid(
            key,
            format!("`{url}` would send the bind password in clear text: use ldaps:// or set starttls = true"),
        )),
        _ => Err(invalid(
            key,
            format!("`{url}` is not an LDAP URL: use ldaps://dc.example.com or ldap://dc.example.com with starttls"),
        )),
    }
}

pub(super) fn validate_dcs(raw: Vec<RawDc>) -> Result<Vec<DcConfig>, ConfigError> {
    let mut out: Vec<DcConfig> = Vec::new();
    for (i, d) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("ad.dc[{i}].{k}");
        let name = match HostName::parse(d.name.trim()) {
            Ok(HostName::Fqdn(f)) => f,
            Ok(HostName::Netbios(_)) => {
                return Err(invalid(
                    key("name"),
                    format!(
                        "`{}` is a single label: give the DC's dNSHostName, e.g. dc2.contoso.com",
                        d.name
                    ),
                ));
            }
            Err(e) => return Err(invalid(key("name"), e.to_string())),
        };
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(key("name"), format!("`{name}` is listed twice")));
        }
        let url = d.url.trim().to_owned();
        check_url(&key("url"), &url, d.starttls)?;
        out.push(DcConfig {
            name,
            url,
            starttls: d.starttls,
        });
    }
    Ok(out)
}

pub(super) fn validate_deadline(secs: u64) -> Result<Duration, ConfigError> {
    if !(1..=86_400).contains(&secs) {
        return Err(invalid(
            "ad.replication_deadline_secs",
            "must be between 1 and 86400 (Microsoft's guidance for replication is 15 minutes: 900)",
        ));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{AD, err, parse};

    fn with_dc(dc: &str) -> String {
        AD.replace("[scope]", &format!("[[ad.dc]]\n{dc}\n[scope]"))
    }

    #[test]
    fn a_dc_is_named_by_fqdn_and_reached_by_its_url() {
        let c = parse(&with_dc("name = \"DC2.lab.test\"\nurl = \"ldaps://127.0.0.2:16636\"")).unwrap();
        assert_eq!(c.ad.dcs.len(), 1);
        assert_eq!(c.ad.dcs[0].name, "dc2.lab.test");
        assert_eq!(c.ad.replication_deadline.as_secs(), 900);
        assert!(parse(AD).unwrap().ad.dcs.is_empty(), "no [[ad.dc]]: nothing changes");
    }

    #[test]
    fn a_dc_in_clear_text_a_single_label_or_a_duplicate_is_refused() {
        let e = err(&with_dc("name = \"dc2.lab.test\"\nurl = \"ldap://127.0.0.2\""));
        assert!(e.contains("ad.dc[0].url") && e.contains("clear text"), "{e}");
        let e = err(&with_dc("name = \"DC2\"\nurl = \"ldaps://127.0.0.2\""));
        assert!(e.contains("ad.dc[0].name") && e.contains("dNSHostName"), "{e}");
        let two =
            "name = \"dc2.lab.test\"\nurl = \"ldaps://a\"\n[[ad.dc]]\nname = \"dc2.lab.test\"\nurl = \"ldaps://b\"";
        let e = err(&with_dc(two));
        assert!(e.contains("ad.dc[1].name") && e.contains("twice"), "{e}");
        let e = err(&AD.replace("[scope]", "replication_deadline_secs = 0\n[scope]"));
        assert!(e.contains("ad.replication_deadline_secs"), "{e}");
    }
}
