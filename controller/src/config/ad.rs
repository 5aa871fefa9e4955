//! `[ad]`: how to reach and bind to a domain controller. Plain LDAP is
//! refused unless StartTLS protects the bind, and TLS is always verified.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::dcs::{DcConfig, RawDc, check_url, default_deadline_secs, validate_dcs, validate_deadline};
use super::{ConfigError, Secret, invalid, resolve};
use crate::model::dn::Dn;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAd {
    url: String,
    #[serde(default)]
    starttls: bool,
    ca_file: Option<PathBuf>,
    bind_dn: String,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    #[serde(default = "default_timeout_secs")]
    timeout_secs: u64,
    #[serde(default = "default_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_page_size")]
    page_size: i32,
    /// The domain's root (default: the DC= part of bind_dn).
    domain_dn: Option<String>,
    /// How to reach the domain's other DCs by name (`[[ad.dc]]`).
    #[serde(default)]
    dc: Vec<RawDc>,
    #[serde(default = "default_deadline_secs")]
    replication_deadline_secs: u64,
}

fn default_timeout_secs() -> u64 {
    30
}
fn default_in_flight() -> usize {
    32
}
fn default_page_size() -> i32 {
    500
}

/// How to reach and authenticate to the domain controller.
#[derive(Clone)]
pub struct AdConfig {
    pub url: String,
    pub starttls: bool,
    /// The CA that issued the DC's certificate; TLS is always verified.
    pub ca_file: PathBuf,
    pub bind_dn: Dn,
    /// Read once at start-up; never printed (see the Debug impl).
    pub password: Secret,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub page_size: i32,
    /// The domain's root, where accounts and groups are looked up.
    pub domain_dn: Dn,
    /// The other DCs, by name (`[[ad.dc]]`): where the per-DC verify reads.
    pub dcs: Vec<DcConfig>,
    /// How long a write may take to reach every other DC before a finding names the DC.
    pub replication_deadline: std::time::Duration,
}

impl AdConfig {
    /// The same bind, CA and limits, towards another DC.
    pub fn for_dc(&self, dc: &DcConfig) -> AdConfig {
        AdConfig {
            url: dc.url.clone(),
            starttls: dc.starttls,
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for AdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdConfig")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("ca_file", &self.ca_file)
            .field("bind_dn", &self.bind_dn)
            .field("password", &self.password)
            .finish()
    }
}

pub(super) fn validate_ad(raw: RawAd, base_dir: &Path) -> Result<AdConfig, ConfigError> {
    let url = raw.url.trim().to_owned();
    check_url("ad.url", &url, raw.starttls)?;
    let bind_dn = Dn::parse(&raw.bind_dn).map_err(|e| invalid("ad.bind_dn", e.to_string()))?;
    let domain_dn = match &raw.domain_dn {
        Some(d) => Dn::parse(d).map_err(|e| invalid("ad.domain_dn", e.to_string()))?,
        None => {
            let dcs: Vec<&str> = bind_dn
                .as_str()
                .split(',')
                .map(str::trim)
                .filter(|p| p.len() > 3 && p[..3].eq_ignore_ascii_case("dc="))
                .collect();
            if dcs.is_empty() {
                return Err(invalid(
                    "ad.domain_dn",
                    "bind_dn has no DC= part: set ad.domain_dn, e.g. \"DC=contoso,DC=com\"",
                ));
            }
            Dn::parse(&dcs.join(",")).map_err(|e| invalid("ad.domain_dn", e.to_string()))?
        }
    };
    let Some(ca_file) = raw.ca_file.map(|p| resolve(base_dir, p)) else {
        return Err(invalid(
            "ad.ca_file",
            "required: the PEM file of the CA that issued the domain controllers' certificates (TLS is always verified)",
        ));
    };
    if !ca_file.is_file() {
        return Err(invalid(
            "ad.ca_file",
            format!("{} does not exist or is not a file", ca_file.display()),
        ));
    }
    let password = match (raw.password_file, raw.password_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "ad.password_file",
                "set password_file or password_env, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "ad.password_file",
                "the bind password must come from a file (password_file) or an environment variable (password_env)",
            ));
        }
        (Some(p), None) => Secret::from_file("ad.password_file", &resolve(base_dir, p))?,
        (None, Some(var)) => Secret::from_env("ad.password_env", &var)?,
    };
    if password.expose().is_empty() {
        return Err(ConfigError::Secret {
            key: "ad.password_file".into(),
            message: "the password is empty".into(),
        });
    }
    if raw.timeout_secs == 0 {
        return Err(invalid("ad.timeout_secs", "must be at least 1"));
    }
    if !(1..=1024).contains(&raw.max_in_flight) {
        return Err(invalid("ad.max_in_flight", "must be between 1 and 1024"));
    }
    if !(1..=5000).contains(&raw.page_size) {
        return Err(invalid("ad.page_size", "must be between 1 and 5000"));
    }
    Ok(AdConfig {
        url,
        starttls: raw.starttls,
        ca_file,
        bind_dn,
        password,
        timeout: Duration::from_secs(raw.timeout_secs),
        max_in_flight: raw.max_in_flight,
        page_size: raw.page_size,
        domain_dn,
        dcs: validate_dcs(raw.dc)?,
        replication_deadline: validate_deadline(raw.replication_deadline_secs)?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{AD, err};

    #[test]
    fn plaintext_ldap_is_refused() {
        let e = err(&AD.replace("ldaps://", "ldap://"));
        assert!(e.contains("ad.url") && e.contains("clear text"), "{e}");
    }
}
