//! `[diagnosis]`: what diagnosis checks beyond its defaults (privileged
//! groups, migration accounts, opt-in sensitive marking).

use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::model::dn::Dn;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiagnosis {
    #[serde(default = "yes")]
    require_kerberos: bool,
    #[serde(default)]
    privileged_groups: Vec<String>,
    #[serde(default)]
    enforce_sensitive: bool,
    #[serde(default)]
    migration_accounts: Vec<String>,
}

impl Default for RawDiagnosis {
    fn default() -> Self {
        RawDiagnosis {
            require_kerberos: true,
            privileged_groups: Vec::new(),
            enforce_sensitive: false,
            migration_accounts: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// What diagnosis looks for beyond the defaults.
#[derive(Debug, Clone)]
pub struct DiagnosisConfig {
    /// Migrations must use Kerberos; CredSSP on a source is a finding.
    pub require_kerberos: bool,
    /// Groups whose (transitive) members count as privileged, besides
    /// Domain/Enterprise/Schema Admins and Administrators.
    pub privileged_groups: Vec<Dn>,
    /// Opt-in: mark privileged accounts sensitive. Never the default, and
    /// every such change waits for approval.
    pub enforce_sensitive: bool,
    /// The accounts that run Move-VM (sAMAccountName): never made sensitive.
    pub migration_accounts: Vec<String>,
}

pub(super) fn validate_diagnosis(raw: RawDiagnosis) -> Result<DiagnosisConfig, ConfigError> {
    Ok(DiagnosisConfig {
        require_kerberos: raw.require_kerberos,
        privileged_groups: raw
            .privileged_groups
            .iter()
            .enumerate()
            .map(|(i, g)| Dn::parse(g).map_err(|e| invalid(format!("diagnosis.privileged_groups[{i}]"), e.to_string())))
            .collect::<Result<_, _>>()?,
        enforce_sensitive: raw.enforce_sensitive,
        migration_accounts: raw.migration_accounts.iter().map(|a| a.to_lowercase()).collect(),
    })
}
