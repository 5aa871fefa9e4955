//! Reads: the paged observe of the managed scope, one object by DN, and the
//! members of an AD group.

use std::collections::{HashMap, HashSet};

use ldap3::adapters::PagedResults;
use ldap3::{Scope, SearchEntry};

use super::connection::protocol;
use super::{Ad, LdapError, RC_NO_SUCH_OBJECT};
use crate::model::dn::{Dn, dn_key};
use crate::model::names::HostName;
use crate::model::*;

impl Ad {
    /// One paged search per scope base for computer objects (only the
    /// attributes planning needs), plus the members of each AD group.
    pub async fn observe(&self, scope: &[Dn], ad_groups: &[&Dn]) -> Result<Observed, LdapError> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut computers = Vec::new();
        for base in scope {
            for c in self.search_computers(base.as_str(), Scope::Subtree).await? {
                if seen.insert(dn_key(&c.dn)) {
                    computers.push(c);
                }
            }
        }
        let mut groups = HashMap::new();
        for g in ad_groups {
            if let Some(members) = self.group_members(g.as_str()).await? {
                groups.insert(g.normalized(), members);
            }
        }
        Ok(Observed {
            computers,
            ad_groups: groups,
            ..Default::default()
        })
    }

    /// Reads any object's delegation attributes (accounts as well as
    /// computers), by DN.
    pub async fn read_object(&self, dn: &str) -> Result<Option<Computer>, LdapError> {
        self.read_attrs(dn, &COMPUTER_ATTRS).await
    }

    /// Only what a write changes (userAccountControl, msDS-AllowedToDelegateTo) of one
    /// object: what the per-DC verify compares on every other DC, again and again.
    pub async fn read_written(&self, dn: &str) -> Result<Option<Computer>, LdapError> {
        self.read_attrs(dn, &[ATTR_UAC, ATTR_DELEGATE_TO]).await
    }

    async fn read_attrs(&self, dn: &str, attrs: &[&str]) -> Result<Option<Computer>, LdapError> {
        let mut ldap = self.ldap.clone();
        let res = ldap
            .with_timeout(self.cfg.timeout)
            .search(dn, Scope::Base, "(objectClass=*)", attrs.to_vec())
            .await
            .map_err(protocol(format!("read of {dn}")))?;
        crate::metrics::get().ldap_search(res.1.rc, res.0.len());
        if res.1.rc == RC_NO_SUCH_OBJECT {
            return Ok(None);
        }
        let (entries, _) = res.success().map_err(protocol(format!("read of {dn}")))?;
        Ok(entries
            .into_iter()
            .find(|e| !e.is_ref() && !e.is_intermediate())
            .map(|e| computer_from_entry(SearchEntry::construct(e))))
    }

    /// The computers of the domain that answer to `name`: by machine account
    /// (`NAME$`), or for an FQDN also by dNSHostName (which one is meant is
    /// `diagnose::pick_initiator`'s choice). Reads `INITIATOR_ATTRS` only;
    /// the name was validated and is escaped all the same.
    pub async fn computers_named(&self, domain: &Dn, name: &HostName) -> Result<Vec<Computer>, LdapError> {
        let sam = ldap3::ldap_escape(format!("{}$", name.derived_netbios()));
        let filter = match name {
            HostName::Netbios(_) => format!("(&(objectClass=computer)({ATTR_SAM}={sam}))"),
            HostName::Fqdn(f) => format!(
                "(&(objectClass=computer)(|({ATTR_SAM}={sam})({ATTR_DNS_HOST_NAME}={})))",
                ldap3::ldap_escape(f.as_str())
            ),
        };
        Ok(self
            .search_all(domain.as_str(), Scope::Subtree, &filter, &INITIATOR_ATTRS)
            .await?
            .into_iter()
            .map(computer_from_entry)
            .collect())
    }

    /// Reads one computer object again (after a conflict).
    pub async fn read_computer(&self, dn: &str) -> Result<Option<Computer>, LdapError> {
        match self.search_computers(dn, Scope::Base).await {
            Ok(mut v) => Ok(v.pop()),
            Err(LdapError::NoSuchBase { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn search_computers(&self, base: &str, scope: Scope) -> Result<Vec<Computer>, LdapError> {
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.cfg.timeout);
        let mut stream = ldap
            .streaming_search_with(
                PagedResults::new(self.cfg.page_size),
                base,
                scope,
                "(objectClass=computer)",
                COMPUTER_ATTRS.to_vec(),
            )
            .await
            .map_err(protocol(format!("search of {base}")))?;
        let mut out = Vec::new();
        while let Some(entry) = stream.next().await.map_err(protocol(format!("search of {base}")))? {
            // Referrals (e.g. to DomainDnsZones) are not objects of ours.
            if entry.is_ref() || entry.is_intermediate() {
                continue;
            }
            let e = SearchEntry::construct(entry);
            out.push(computer_from_entry(e));
        }
        let res = stream.finish().await;
        crate::metrics::get().ldap_search(res.rc, out.len());
        match res.rc {
            0 => Ok(out),
            RC_NO_SUCH_OBJECT => Err(LdapError::NoSuchBase { base: base.to_owned() }),
            rc => Err(LdapError::Search {
                base: base.to_owned(),
                rc,
                text: res.text,
            }),
        }
    }

    /// Members of a group, following AD's ranged retrieval for groups of
    /// more than 1,500 members. `None` when the group does not exist.
    pub(super) async fn group_members(&self, dn: &str) -> Result<Option<Vec<String>>, LdapError> {
        let mut members = Vec::new();
        let mut attr = "member".to_owned();
        let mut from = 0u64;
        loop {
            let mut ldap = self.ldap.clone();
            let res = ldap
                .with_timeout(self.cfg.timeout)
                .search(dn, Scope::Base, "(objectClass=group)", vec![attr.as_str()])
                .await
                .map_err(protocol(format!("read of group {dn}")))?;
            crate::metrics::get().ldap_search(res.1.rc, res.0.len());
            if res.1.rc == RC_NO_SUCH_OBJECT {
                return Ok(None);
            }
            let (entries, _) = res.success().map_err(protocol(format!("read of group {dn}")))?;
            let Some(entry) = entries.into_iter().find(|e| !e.is_ref() && !e.is_intermediate()) else {
                return Ok(None);
            };
            let e = SearchEntry::construct(entry);
            let mut next = None;
            for (k, v) in e.attrs {
                if k.eq_ignore_ascii_case("member") {
                    members.extend(v);
                } else if let Some(range) = k.to_ascii_lowercase().strip_prefix("member;range=") {
                    members.extend(v);
                    // The server's range is input: the next start must move forward (checked,
                    // so `range=0-18446744073709551615` ends the read instead of overflowing).
                    if let Some((_, end)) = range.split_once('-')
                        && end != "*"
                        && let Some(start) = end.parse::<u64>().ok().and_then(|e| e.checked_add(1))
                        && start > from
                    {
                        next = Some((start, format!("member;range={start}-*")));
                    }
                }
            }
            match next {
                Some((start, a)) => (from, attr) = (start, a),
                None => return Ok(Some(members)),
            }
        }
    }
}

pub(super) fn computer_from_entry(mut e: SearchEntry) -> Computer {
    // Attribute names come back in the server's case; look them up without it.
    let mut attrs: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in e.attrs.drain() {
        attrs.insert(k.to_ascii_lowercase(), v);
    }
    // Binary values land in bin_attrs, unless their bytes happen to be valid
    // UTF-8 (a SID with small sub-authorities can be): read both.
    let mut binary = |name: &str| -> Option<Vec<u8>> {
        let key = name.to_ascii_lowercase();
        let from_bin = e
            .bin_attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&key))
            .and_then(|(_, v)| v.first().cloned());
        from_bin.or_else(|| {
            attrs
                .remove(&key)
                .and_then(|v| v.into_iter().next().map(String::into_bytes))
        })
    };
    let object_sid = binary(ATTR_OBJECT_SID).and_then(|b| crate::exposure::sd::sid_from_bytes(&b).ok().map(|(s, _)| s));
    let rbcd = binary(ATTR_RBCD).unwrap_or_default();
    let mut take = |name: &str| attrs.remove(&name.to_ascii_lowercase()).unwrap_or_default();
    let first = |v: Vec<String>| v.into_iter().next();
    Computer {
        sam_account_name: first(take(ATTR_SAM)).unwrap_or_default(),
        dns_host_name: first(take(ATTR_DNS_HOST_NAME)),
        // AD returns userAccountControl as a signed 32-bit integer.
        uac: first(take(ATTR_UAC))
            .and_then(|s| s.parse::<i64>().ok())
            .map(|v| v as u32)
            .unwrap_or(0),
        allowed_to_delegate_to: take(ATTR_DELEGATE_TO),
        spns: take(ATTR_SPN),
        usn_changed: first(take(ATTR_USN_CHANGED)).and_then(|s| s.parse().ok()).unwrap_or(0),
        object_sid,
        rbcd,
        dn: e.dn,
    }
}
