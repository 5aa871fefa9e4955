//! Who may be delegated, as AD says: privileged accounts (the well-known
//! admin groups, transitively), Protected Users, krbtgt, and the account that
//! runs Move-VM. Names are escaped before they reach a filter.

use std::collections::{BTreeMap, HashSet};

use ldap3::adapters::PagedResults;
use ldap3::{Scope, SearchEntry};

use super::connection::protocol;
use super::{Ad, LdapError, RC_NO_SUCH_OBJECT};
use crate::model::dn::Dn;
use crate::model::{ATTR_SAM, ATTR_UAC, Account, Directory, Privileged};

/// `S-1-5-21-...` from the binary objectSid.
pub fn sid_to_string(b: &[u8]) -> Option<String> {
    if b.len() < 8 {
        return None;
    }
    let count = b[1] as usize;
    if b.len() != 8 + 4 * count {
        return None;
    }
    let authority = b[2..8].iter().fold(0u64, |acc, x| (acc << 8) | *x as u64);
    let mut s = format!("S-{}-{authority}", b[0]);
    for i in 0..count {
        let o = 8 + 4 * i;
        s.push_str(&format!(
            "-{}",
            u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
        ));
    }
    Some(s)
}

/// Well-known privileged groups: Domain Admins, Schema Admins, Enterprise
/// Admins (relative to the domain SID) and BUILTIN\Administrators.
const PRIVILEGED_RIDS: [&str; 3] = ["512", "518", "519"];
const BUILTIN_ADMINISTRATORS: &str = "S-1-5-32-544";
/// Protected Users, relative to the domain SID.
const PROTECTED_USERS_RID: &str = "525";
/// LDAP_MATCHING_RULE_IN_CHAIN: transitive group membership.
const IN_CHAIN: &str = "1.2.840.113556.1.4.1941";

impl Ad {
    /// Every entry a search finds, read in pages of `ad.page_size`: AD answers an unpaged search
    /// with at most MaxPageSize (1,000) entries and rc 4 sizeLimitExceeded, so a domain-wide
    /// search (members of Protected Users or of an admin group) must page to see them all.
    /// Samba 4.17 does not enforce the limit (an unpaged search of 1,501 Protected Users members
    /// returned all of them on the lab) but pages the same way.
    pub(super) async fn search_all(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<SearchEntry>, LdapError> {
        self.search_all_with(base, scope, filter, attrs, Vec::new()).await
    }

    /// [`Ad::search_all`] with request controls besides paging (e.g. show-deleted).
    pub(super) async fn search_all_with(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        controls: Vec<ldap3::controls::RawControl>,
    ) -> Result<Vec<SearchEntry>, LdapError> {
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.cfg.timeout);
        if !controls.is_empty() {
            ldap.with_controls(controls);
        }
        let what = || format!("search of {base}");
        let mut stream = ldap
            .streaming_search_with(
                PagedResults::new(self.cfg.page_size),
                base,
                scope,
                filter,
                attrs.to_vec(),
            )
            .await
            .map_err(protocol(what()))?;
        let mut out = Vec::new();
        while let Some(entry) = stream.next().await.map_err(protocol(what()))? {
            if !entry.is_ref() && !entry.is_intermediate() {
                out.push(SearchEntry::construct(entry));
            }
        }
        let res = stream.finish().await;
        crate::metrics::get().ldap_search(res.rc, out.len());
        match res.rc {
            0 => Ok(out),
            RC_NO_SUCH_OBJECT => Ok(Vec::new()),
            rc => Err(LdapError::Search {
                base: base.to_owned(),
                rc,
                text: res.text,
            }),
        }
    }

    pub async fn domain_sid(&self, domain: &Dn) -> Result<Option<String>, LdapError> {
        let e = self
            .search_all(domain.as_str(), Scope::Base, "(objectClass=*)", &["objectSid"])
            .await?;
        Ok(e.first()
            .and_then(|e| e.bin_attrs.get("objectSid").or_else(|| e.bin_attrs.get("objectsid")))
            .and_then(|v| v.first())
            .and_then(|b| sid_to_string(b)))
    }

    async fn dn_of_sid(&self, domain: &Dn, sid: &str) -> Result<Option<String>, LdapError> {
        let filter = format!("(objectSid={})", ldap3::ldap_escape(sid));
        Ok(self
            .search_all(domain.as_str(), Scope::Subtree, &filter, &["1.1"])
            .await?
            .into_iter()
            .next()
            .map(|e| e.dn))
    }

    fn account_from(e: &SearchEntry, protected: bool) -> Account {
        let get = |k: &str| {
            e.attrs
                .iter()
                .find(|(a, _)| a.eq_ignore_ascii_case(k))
                .and_then(|(_, v)| v.first().cloned())
                .unwrap_or_default()
        };
        Account {
            name: get(ATTR_SAM),
            dn: e.dn.clone(),
            uac: get(ATTR_UAC).parse::<i64>().map(|v| v as u32).unwrap_or(0),
            protected_users: protected,
        }
    }

    /// Privileged accounts (transitive members of the well-known admin
    /// groups and of `extra`), krbtgt, and Protected Users.
    pub async fn directory(&self, domain: &Dn, extra: &[Dn]) -> Result<Directory, LdapError> {
        let mut dir = Directory::default();
        let Some(sid) = self.domain_sid(domain).await? else {
            return Ok(dir);
        };
        dir.protected_users_dn = self.dn_of_sid(domain, &format!("{sid}-{PROTECTED_USERS_RID}")).await?;
        let protected: HashSet<String> = match &dir.protected_users_dn {
            Some(pu) => self
                .search_all(
                    domain.as_str(),
                    Scope::Subtree,
                    &format!("(memberOf:{IN_CHAIN}:={})", ldap3::ldap_escape(pu)),
                    &["1.1"],
                )
                .await?
                .into_iter()
                .map(|e| e.dn.to_lowercase())
                .collect(),
            None => Default::default(),
        };
        let mut groups: Vec<(String, String)> = Vec::new();
        for rid in PRIVILEGED_RIDS {
            if let Some(dn) = self.dn_of_sid(domain, &format!("{sid}-{rid}")).await? {
                groups.push((dn.clone(), dn));
            }
        }
        if let Some(dn) = self.dn_of_sid(domain, BUILTIN_ADMINISTRATORS).await? {
            groups.push((dn.clone(), dn));
        }
        for g in extra {
            groups.push((g.to_string(), g.to_string()));
        }
        let mut by_dn: BTreeMap<String, Privileged> = Default::default();
        for (label, dn) in groups {
            let cn = label
                .split(',')
                .next()
                .unwrap_or(&label)
                .trim_start_matches("CN=")
                .trim_start_matches("cn=")
                .to_owned();
            let filter = format!(
                "(&(objectClass=user)(memberOf:{IN_CHAIN}:={}))",
                ldap3::ldap_escape(&dn)
            );
            for e in self
                .search_all(domain.as_str(), Scope::Subtree, &filter, &[ATTR_SAM, ATTR_UAC])
                .await?
            {
                let key = e.dn.to_lowercase();
                let p = by_dn.entry(key.clone()).or_insert_with(|| Privileged {
                    account: Self::account_from(&e, protected.contains(&key)),
                    via: Vec::new(),
                });
                p.via.push(cn.clone());
            }
        }
        dir.privileged = by_dn.into_values().collect();
        dir.krbtgt_uac = self
            .search_all(
                domain.as_str(),
                Scope::Subtree,
                "(&(objectClass=user)(sAMAccountName=krbtgt))",
                &[ATTR_UAC],
            )
            .await?
            .first()
            .map(|e| Self::account_from(e, false).uac);
        Ok(dir)
    }

    /// The account that runs Move-VM, by sAMAccountName, `DOMAIN\name` or
    /// UPN. The name is escaped: filter metacharacters match nothing.
    pub async fn read_account(
        &self,
        domain: &Dn,
        protected_users_dn: Option<&str>,
        name: &str,
    ) -> Result<Option<Account>, LdapError> {
        let short = name.rsplit('\\').next().unwrap_or(name);
        let e = ldap3::ldap_escape(short);
        let filter = format!("(&(objectClass=user)(|(sAMAccountName={e})(userPrincipalName={e})))");
        let Some(entry) = self
            .search_all(domain.as_str(), Scope::Subtree, &filter, &[ATTR_SAM, ATTR_UAC])
            .await?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let protected = match protected_users_dn {
            Some(pu) => !self
                .search_all(
                    &entry.dn,
                    Scope::Base,
                    &format!("(memberOf:{IN_CHAIN}:={})", ldap3::ldap_escape(pu)),
                    &["1.1"],
                )
                .await?
                .is_empty(),
            None => false,
        };
        Ok(Some(Self::account_from(&entry, protected)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_format_like_windows() {
        let b = [
            1u8, 4, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0, 0x31, 0xd4, 0x2b, 0xf5, 0x33, 0x9b, 0xc7, 0xb5, 0x5d, 0x04, 0x00,
            0x00,
        ];
        assert_eq!(sid_to_string(&b).unwrap(), "S-1-5-21-4113290289-3049757491-1117");
        assert_eq!(
            sid_to_string(&[1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 0x02, 0, 0]).unwrap(),
            "S-1-5-32-544"
        );
        assert_eq!(sid_to_string(&[1, 4, 0]), None);
    }
}
