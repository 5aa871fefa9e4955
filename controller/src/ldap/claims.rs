//! What the rest of the domain says about the managed computers' names: the
//! input of the identity checks (`model::identity`). Two reads:
//! - every object, domain-wide, whose dNSHostName or SPNs (`HOST/`, `cifs/`,
//!   the migration service) name one of the names kcdsync would delegate to,
//!   in OR-filters of [`NAMES_PER_SEARCH`] names, a few searches in flight;
//! - which computers of the scope are transitively in a privileged group.
//!
//! Every name is escaped before it reaches a filter: dNSHostName is written
//! by people kcdsync does not trust.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use ldap3::{Scope, ldap_escape};

use super::read::computer_from_entry;
use super::{Ad, LdapError};
use crate::model::dn::{Dn, dn_key};
use crate::model::identity::OWNER_CLASSES;
use crate::model::{ATTR_DNS_HOST_NAME, ATTR_SPN, COMPUTER_ATTRS, Claims, Computer};

/// Names per OR-filter: each name is four clauses.
pub const NAMES_PER_SEARCH: usize = 64;
/// Holder searches in flight at once (they pipeline on the one connection).
const SEARCHES_IN_FLIGHT: usize = 4;
/// LDAP_MATCHING_RULE_IN_CHAIN: transitive group membership.
const IN_CHAIN: &str = "1.2.840.113556.1.4.1941";
/// Groups whose member machines are Tier 0: Domain Admins, Schema Admins,
/// Enterprise Admins, Key Admins, Enterprise Key Admins (relative to the
/// domain SID)...
const PRIVILEGED_RIDS: [&str; 5] = ["512", "518", "519", "526", "527"];
/// ... and BUILTIN\Administrators, Account, Server, Print and Backup Operators.
const PRIVILEGED_BUILTIN: [&str; 5] = [
    "S-1-5-32-544",
    "S-1-5-32-548",
    "S-1-5-32-549",
    "S-1-5-32-550",
    "S-1-5-32-551",
];

impl Ad {
    /// Who holds `names` domain-wide, and which computers in `scope` are
    /// privileged (the well-known groups and `extra`).
    pub async fn claims(&self, domain: &Dn, scope: &[Dn], names: &[String], extra: &[Dn]) -> Result<Claims, LdapError> {
        let filters: Vec<String> = names.chunks(NAMES_PER_SEARCH).map(holder_filter).collect();
        let found: Vec<Vec<Computer>> = futures::stream::iter(filters)
            .map(|f| self.paged(domain.as_str(), f))
            .buffer_unordered(SEARCHES_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut seen = HashSet::new();
        let holders = found
            .into_iter()
            .flatten()
            .filter(|c| seen.insert(dn_key(&c.dn)))
            .collect();
        let groups = self.privileged_groups(domain, extra).await?;
        let mut privileged = Vec::new();
        if !groups.is_empty() {
            let any: String = groups
                .iter()
                .map(|g| format!("(memberOf:{IN_CHAIN}:={})", ldap_escape(g)))
                .collect();
            for base in scope {
                let filter = format!("(&(objectClass=computer)(|{any}))");
                privileged.extend(self.paged(base.as_str(), filter).await?.iter().map(|c| dn_key(&c.dn)));
            }
        }
        Ok(Claims { holders, privileged })
    }

    /// The DNs of the privileged groups that exist in this domain, plus `extra`.
    async fn privileged_groups(&self, domain: &Dn, extra: &[Dn]) -> Result<Vec<String>, LdapError> {
        let mut out: Vec<String> = extra.iter().map(|d| d.as_str().to_owned()).collect();
        let Some(sid) = self.domain_sid(domain).await? else {
            return Ok(out);
        };
        let sids = PRIVILEGED_RIDS
            .iter()
            .map(|rid| format!("{sid}-{rid}"))
            .chain(PRIVILEGED_BUILTIN.iter().map(|s| s.to_string()));
        let filter: String = sids.map(|s| format!("(objectSid={})", ldap_escape(s))).collect();
        let found = self
            .paged(domain.as_str(), format!("(&(objectClass=group)(|{filter}))"))
            .await?;
        out.extend(found.into_iter().map(|c| c.dn));
        Ok(out)
    }

    /// A paged subtree search returning objects with the computer attributes.
    async fn paged(&self, base: &str, filter: String) -> Result<Vec<Computer>, LdapError> {
        let found = self.search_all(base, Scope::Subtree, &filter, &COMPUTER_ATTRS).await?;
        Ok(found.into_iter().map(computer_from_entry).collect())
    }
}

/// `(|(dNSHostName=n)(servicePrincipalName=HOST/n)...)` for each name.
fn holder_filter(names: &[String]) -> String {
    let mut f = String::from("(|");
    for n in names {
        let n = ldap_escape(n);
        if n.contains('.') {
            f.push_str(&format!("({ATTR_DNS_HOST_NAME}={n})"));
        }
        for class in OWNER_CLASSES {
            f.push_str(&format!("({ATTR_SPN}={}/{n})", ldap_escape(class)));
        }
    }
    f.push(')');
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_escaped_in_the_holder_filter() {
        let f = holder_filter(&["hv01.lab.test".into(), "x)(objectClass=*".into()]);
        assert!(f.starts_with("(|(dNSHostName=hv01.lab.test)(servicePrincipalName=HOST/hv01.lab.test)"));
        assert!(f.contains("servicePrincipalName=cifs/x\\29\\28objectClass=\\2a"), "{f}");
        assert!(f.contains("(servicePrincipalName=Microsoft Virtual System Migration Service/hv01.lab.test)"));
        assert_eq!(f.matches('(').count(), f.matches(')').count());
    }
}
