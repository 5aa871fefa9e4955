//! Observe: one read of the managed scope and the configured AD groups (and,
//! with sensitive-account enforcement, the privileged accounts).

use super::AdClient;
use crate::config::Config;
use crate::ldap::LdapError;
use crate::model::Observed;
use crate::model::dn::Dn;

/// Reads the managed scope and the configured AD groups.
#[tracing::instrument(name = "observe", skip_all, fields(entries = tracing::field::Empty))]
pub async fn observe(cfg: &Config, ad: &impl AdClient) -> Result<Observed, LdapError> {
    let groups: Vec<&Dn> = cfg.groups.iter().filter_map(|g| g.ad_group.as_ref()).collect();
    let mut observed = ad.observe(&cfg.scope, &groups).await?;
    if cfg.diagnosis.enforce_sensitive {
        observed.privileged = ad
            .directory(&cfg.ad.domain_dn, &cfg.diagnosis.privileged_groups)
            .await?
            .privileged;
    }
    Ok(observed)
}
