//! Observe: one read of the managed scope and the configured AD groups, what
//! the rest of the domain says about those computers' names (the identity
//! checks' input), and, with sensitive-account enforcement, the privileged
//! accounts.

use std::collections::BTreeSet;

use super::AdClient;
use crate::config::Config;
use crate::ldap::LdapError;
use crate::model::dn::Dn;
use crate::model::{Observed, identity};

/// Reads the managed scope and the configured AD groups.
#[tracing::instrument(name = "observe", skip_all, fields(entries = tracing::field::Empty))]
pub async fn observe(cfg: &Config, ad: &impl AdClient) -> Result<Observed, LdapError> {
    let groups: Vec<&Dn> = cfg.groups.iter().filter_map(|g| g.ad_group.as_ref()).collect();
    let mut observed = ad.observe(&cfg.scope, &groups).await?;
    read_context(cfg, ad, &mut observed).await?;
    Ok(observed)
}

/// What the rest of the domain says about the observed computers: the claims on their names
/// and, with sensitive-account enforcement, the privileged accounts. A delta read that sees
/// such things change reads them again through here.
pub(super) async fn read_context(cfg: &Config, ad: &impl AdClient, observed: &mut Observed) -> Result<(), LdapError> {
    observed.claims = ad
        .claims(
            &cfg.ad.domain_dn,
            &cfg.scope,
            &names_to_check(cfg, observed),
            &cfg.diagnosis.privileged_groups,
        )
        .await?;
    if cfg.diagnosis.enforce_sensitive {
        observed.privileged = ad
            .directory(&cfg.ad.domain_dn, &cfg.diagnosis.privileged_groups)
            .await?
            .privileged;
    }
    Ok(())
}

/// Every name kcdsync could delegate to: each observed computer's
/// dNSHostName and NetBIOS name, and each file server's names.
pub(super) fn names_to_check(cfg: &Config, observed: &Observed) -> Vec<String> {
    let mut names: BTreeSet<String> = observed.computers.iter().flat_map(identity::names_of).collect();
    for fs in cfg.groups.iter().flat_map(|g| &g.file_servers) {
        names.insert(fs.as_str().to_owned());
        names.insert(fs.derived_netbios().to_ascii_lowercase());
    }
    names.into_iter().collect()
}
