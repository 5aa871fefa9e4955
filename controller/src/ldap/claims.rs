//! What the rest of the domain says about the managed computers' names: the
//! input of the identity checks (`model::identity`). Two reads, measured on
//! the lab before choosing them (2,000 hosts, Samba 4.17):
//! - every object in the domain that has an SPN or a dNSHostName, with only
//!   the four attributes the checks need, in one paged search (1.9 s), kept
//!   when it answers to one of the names kcdsync would delegate to. OR-filters
//!   of the names themselves cost 1.4 s per 64 names on Samba (16 s at 2,000
//!   hosts), and `memberOf` is not indexed there;
//! - the privileged groups (by SID), the groups nested in them (one
//!   `LDAP_MATCHING_RULE_IN_CHAIN` search of groups, 0.05 s), and their
//!   `member` values (ranged retrieval): a computer in the scope that is a
//!   member is privileged.
//!
//! Both change rarely and are read at most every [`CLAIMS_TTL`] per
//! connection: the objects in the scope are read fresh by every observe, so
//! a member's own edits (its dNSHostName, its SPNs, its bits) are always seen
//! at once; what may be up to `CLAIMS_TTL` old is an SPN added to an object
//! *outside* the scope, or a new member of a privileged group. The write edge
//! re-checks every modify against the object as just read.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ldap3::{Scope, ldap_escape};

use super::read::computer_from_entry;
use super::{Ad, LdapError};
use crate::model::dn::{Dn, dn_key, in_scope};
use crate::model::identity::answers_to;
use crate::model::{ATTR_DNS_HOST_NAME, ATTR_SAM, ATTR_SPN, ATTR_UAC, Claims, Computer, Outside};

/// How long one read of the domain's claims serves (see the module doc).
pub const CLAIMS_TTL: Duration = Duration::from_secs(300);
/// LDAP_MATCHING_RULE_IN_CHAIN: transitive group membership.
const IN_CHAIN: &str = "1.2.840.113556.1.4.1941";
/// The attributes the identity checks read of a holder.
const HOLDER_ATTRS: [&str; 4] = [ATTR_SAM, ATTR_DNS_HOST_NAME, ATTR_UAC, ATTR_SPN];
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

/// The domain-wide part of the claims, as last read.
struct DomainClaims {
    read_at: Instant,
    /// Every object with an SPN or a dNSHostName.
    objects: Vec<Computer>,
    /// DN keys of every member of a privileged group.
    members: HashSet<String>,
}

/// By domain; shared, so a cache hit filters in place instead of copying
/// the domain's objects.
static CACHE: OnceLock<Mutex<HashMap<String, Arc<DomainClaims>>>> = OnceLock::new();

impl Ad {
    /// Who in the domain answers to `names`, and which computers in `scope`
    /// are privileged (the well-known groups and `extra`).
    pub async fn claims(&self, domain: &Dn, scope: &[Dn], names: &[String], extra: &[Dn]) -> Result<Claims, LdapError> {
        let domain_claims = self.domain_claims(domain, extra).await?;
        let names: HashSet<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        // Objects in the scope are read fresh by the observe itself.
        let holders = domain_claims
            .objects
            .iter()
            .filter(|o| !in_scope(&o.dn, scope) && answers_to(o, &names))
            .cloned()
            .collect();
        let privileged = domain_claims
            .members
            .iter()
            .filter(|m| in_scope(m, scope))
            .cloned()
            .collect();
        Ok(Claims { holders, privileged })
    }

    /// The objects outside `scope` that answer to `names` (hosts that
    /// delegation entries in the scope name), and which of them are
    /// privileged: for the exposure model. From the same cached read as
    /// [`Ad::claims`], so it costs no LDAP round trip while that is fresh.
    pub async fn outside(
        &self,
        domain: &Dn,
        scope: &[Dn],
        names: &[String],
        extra: &[Dn],
    ) -> Result<Outside, LdapError> {
        if names.is_empty() {
            return Ok(Outside::default());
        }
        let domain_claims = self.domain_claims(domain, extra).await?;
        let names: HashSet<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        let objects: Vec<Computer> = domain_claims
            .objects
            .iter()
            .filter(|o| !in_scope(&o.dn, scope) && crate::exposure::answers_to_any(o, &names))
            .cloned()
            .collect();
        let privileged = objects
            .iter()
            .map(|o| dn_key(&o.dn))
            .filter(|k| domain_claims.members.contains(k))
            .collect();
        Ok(Outside { objects, privileged })
    }

    /// Every object with an SPN or a dNSHostName, and the DN keys of every
    /// member of a privileged group: from the cache when younger than
    /// [`CLAIMS_TTL`].
    async fn domain_claims(&self, domain: &Dn, extra: &[Dn]) -> Result<Arc<DomainClaims>, LdapError> {
        let cache = CACHE.get_or_init(Default::default);
        let extra_key: Vec<String> = extra.iter().map(Dn::normalized).collect();
        let key = format!("{}|{}|{}", self.cfg.url, domain.normalized(), extra_key.join(";"));
        if let Some(c) = cache.lock().unwrap().get(&key)
            && c.read_at.elapsed() < CLAIMS_TTL
        {
            return Ok(c.clone());
        }
        let filter = format!("(|({ATTR_SPN}=*)({ATTR_DNS_HOST_NAME}=*))");
        let objects: Vec<Computer> = self
            .search_all(domain.as_str(), Scope::Subtree, &filter, &HOLDER_ATTRS)
            .await?
            .into_iter()
            .map(computer_from_entry)
            .collect();
        let fresh = Arc::new(DomainClaims {
            read_at: Instant::now(),
            objects,
            members: self.privileged_members(domain, extra).await?,
        });
        cache.lock().unwrap().insert(key, fresh.clone());
        Ok(fresh)
    }

    /// DN keys of every member (transitively) of the privileged groups that
    /// exist in this domain, plus `extra`.
    async fn privileged_members(&self, domain: &Dn, extra: &[Dn]) -> Result<HashSet<String>, LdapError> {
        let mut groups: Vec<String> = extra.iter().map(|d| d.as_str().to_owned()).collect();
        if let Some(sid) = self.domain_sid(domain).await? {
            let sids = PRIVILEGED_RIDS
                .iter()
                .map(|rid| format!("{sid}-{rid}"))
                .chain(PRIVILEGED_BUILTIN.iter().map(|s| s.to_string()));
            let filter: String = sids.map(|s| format!("(objectSid={})", ldap_escape(s))).collect();
            let found = self
                .search_all(
                    domain.as_str(),
                    Scope::Subtree,
                    &format!("(&(objectClass=group)(|{filter}))"),
                    &["1.1"],
                )
                .await?;
            groups.extend(found.into_iter().map(|e| e.dn));
        }
        if groups.is_empty() {
            return Ok(HashSet::new());
        }
        let any: String = groups
            .iter()
            .map(|g| format!("(memberOf:{IN_CHAIN}:={})", ldap_escape(g)))
            .collect();
        let nested = self
            .search_all(
                domain.as_str(),
                Scope::Subtree,
                &format!("(&(objectClass=group)(|{any}))"),
                &["1.1"],
            )
            .await?;
        groups.extend(nested.into_iter().map(|e| e.dn));
        let mut members = HashSet::new();
        for g in &groups {
            members.extend(
                self.group_members(g)
                    .await?
                    .unwrap_or_default()
                    .iter()
                    .map(|m| dn_key(m)),
            );
        }
        Ok(members)
    }
}
