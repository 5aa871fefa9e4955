//! The edge to Active Directory: one TLS-verified connection (LDAPS or
//! StartTLS, rustls), simple bind, the paged observe search, and the
//! compare-and-swap modify of one host. Nothing here decides *what* to write.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use ldap3::adapters::PagedResults;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::AdConfig;
use crate::dn::Dn;
use crate::model::*;
use crate::plan::{HostChange, Observed};

pub const RC_NO_SUCH_ATTRIBUTE: u32 = 16;
pub const RC_TYPE_OR_VALUE_EXISTS: u32 = 20;
pub const RC_NO_SUCH_OBJECT: u32 = 32;
pub const RC_INVALID_CREDENTIALS: u32 = 49;
pub const RC_INSUFFICIENT_ACCESS: u32 = 50;
pub const RC_BUSY: u32 = 51;
pub const RC_UNAVAILABLE: u32 = 52;

/// How to grant what rc 50 says is missing; shown verbatim to operators.
pub const PRIVILEGE_HELP: &str = "the bind account lacks SeEnableDelegationPrivilege (\"Enable computer and user accounts to be trusted for delegation\"), which AD requires to change msDS-AllowedToDelegateTo and the delegation bits of userAccountControl, or lacks write access to the computer object. Grant the privilege to the bind account (or a group it is in) in the Default Domain Controllers Policy: Computer Configuration > Policies > Windows Settings > Security Settings > Local Policies > User Rights Assignment, then run `gpupdate /force` on the domain controllers; and delegate write access to userAccountControl and msDS-AllowedToDelegateTo on the managed OU";

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("cannot read the CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<ldap3::LdapError>,
    },
    #[error("bind as {dn} refused: invalid credentials (check the password file or variable)")]
    BadCredentials { dn: String },
    #[error("bind as {dn} failed: rc {rc} {text}")]
    Bind { dn: String, rc: u32, text: String },
    #[error("scope base {base} does not exist in AD: fix scope.base_dns")]
    NoSuchBase { base: String },
    #[error("search of {base} failed: rc {rc} {text}")]
    Search { base: String, rc: u32, text: String },
    #[error("{dn}: {PRIVILEGE_HELP} (server said: rc 50 {text})")]
    MissingPrivilege { dn: String, text: String },
    #[error("{dn} changed in AD after it was read (rc {rc}); re-read and re-plan")]
    Conflict { dn: String, rc: u32 },
    #[error("modify of {dn} failed: rc {rc} {text}")]
    Modify { dn: String, rc: u32, text: String },
    #[error("{op} failed: {source}")]
    Protocol {
        op: String,
        #[source]
        source: Box<ldap3::LdapError>,
    },
}

impl LdapError {
    /// The LDAP result code, when the server answered with one.
    pub fn rc(&self) -> Option<u32> {
        match self {
            LdapError::Bind { rc, .. }
            | LdapError::Search { rc, .. }
            | LdapError::Conflict { rc, .. }
            | LdapError::Modify { rc, .. } => Some(*rc),
            LdapError::MissingPrivilege { .. } => Some(RC_INSUFFICIENT_ACCESS),
            LdapError::BadCredentials { .. } => Some(RC_INVALID_CREDENTIALS),
            LdapError::NoSuchBase { .. } => Some(RC_NO_SUCH_OBJECT),
            _ => None,
        }
    }

    /// Worth retrying on the same connection after a pause.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LdapError::Modify {
                rc: RC_BUSY | RC_UNAVAILABLE,
                ..
            }
        ) || matches!(
            self,
            LdapError::Search {
                rc: RC_BUSY | RC_UNAVAILABLE,
                ..
            }
        )
    }
}

fn protocol(op: impl Into<String>) -> impl FnOnce(ldap3::LdapError) -> LdapError {
    let op = op.into();
    move |source| LdapError::Protocol {
        op,
        source: Box::new(source),
    }
}

/// Builds the rustls client config that trusts exactly the given CA file.
pub fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, LdapError> {
    let ca_err = |message: String| LdapError::CaFile {
        path: ca_file.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| ca_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_err("no PEM certificate in it".into()));
    }
    for c in certs {
        roots.add(c).map_err(|e| ca_err(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

/// A bound connection to one domain controller. Clones share the
/// connection; requests from clones are pipelined on it.
#[derive(Clone)]
pub struct Ad {
    ldap: Ldap,
    cfg: Arc<AdConfig>,
}

impl Ad {
    /// Connects with TLS verified against `ad.ca_file` and binds.
    pub async fn connect(cfg: &AdConfig) -> Result<Ad, LdapError> {
        let tls = tls_config(&cfg.ca_file)?;
        let settings = LdapConnSettings::new()
            .set_config(Arc::new(tls))
            .set_starttls(cfg.starttls)
            .set_conn_timeout(cfg.timeout);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &cfg.url)
            .await
            .map_err(|source| LdapError::Connect {
                url: cfg.url.clone(),
                source: Box::new(source),
            })?;
        ldap3::drive!(conn);
        let res = ldap
            .with_timeout(cfg.timeout)
            .simple_bind(cfg.bind_dn.as_str(), cfg.password.expose())
            .await
            .map_err(protocol(format!("bind to {}", cfg.url)))?;
        match res.rc {
            0 => {}
            RC_INVALID_CREDENTIALS => {
                return Err(LdapError::BadCredentials {
                    dn: cfg.bind_dn.to_string(),
                });
            }
            rc => {
                return Err(LdapError::Bind {
                    dn: cfg.bind_dn.to_string(),
                    rc,
                    text: res.text,
                });
            }
        }
        Ok(Ad {
            ldap,
            cfg: Arc::new(cfg.clone()),
        })
    }

    /// One paged search per scope base for computer objects (only the
    /// attributes planning needs), plus the members of each AD group.
    pub async fn observe(&self, scope: &[Dn], ad_groups: &[&Dn]) -> Result<Observed, LdapError> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut computers = Vec::new();
        for base in scope {
            for c in self.search_computers(base.as_str(), Scope::Subtree).await? {
                let key = Dn::parse(&c.dn)
                    .map(|d| d.normalized())
                    .unwrap_or_else(|_| c.dn.to_lowercase());
                if seen.insert(key) {
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
            privileged: Vec::new(),
        })
    }

    /// Reads any object's delegation attributes (accounts as well as
    /// computers), by DN.
    pub async fn read_object(&self, dn: &str) -> Result<Option<Computer>, LdapError> {
        let mut ldap = self.ldap.clone();
        let res = ldap
            .with_timeout(self.cfg.timeout)
            .search(dn, Scope::Base, "(objectClass=*)", COMPUTER_ATTRS.to_vec())
            .await
            .map_err(protocol(format!("read of {dn}")))?;
        if res.1.rc == RC_NO_SUCH_OBJECT {
            return Ok(None);
        }
        let (entries, _) = res.success().map_err(protocol(format!("read of {dn}")))?;
        Ok(entries
            .into_iter()
            .find(|e| !e.is_ref() && !e.is_intermediate())
            .map(|e| computer_from_entry(SearchEntry::construct(e))))
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
    async fn group_members(&self, dn: &str) -> Result<Option<Vec<String>>, LdapError> {
        let mut members = Vec::new();
        let mut attr = "member".to_owned();
        loop {
            let mut ldap = self.ldap.clone();
            let res = ldap
                .with_timeout(self.cfg.timeout)
                .search(dn, Scope::Base, "(objectClass=group)", vec![attr.as_str()])
                .await
                .map_err(protocol(format!("read of group {dn}")))?;
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
                    if let Some((_, end)) = range.split_once('-')
                        && end != "*"
                        && let Ok(end) = end.parse::<u64>()
                    {
                        next = Some(format!("member;range={}-*", end + 1));
                    }
                }
            }
            match next {
                Some(a) => attr = a,
                None => return Ok(Some(members)),
            }
        }
    }

    /// One modify for one host: value-level add/delete of delegation
    /// entries, and userAccountControl as delete-old + add-new so that a
    /// concurrent change fails the modify (rc 16) instead of being lost.
    pub async fn modify_host(&self, change: &HostChange) -> Result<(), LdapError> {
        let mut mods: Vec<Mod<String>> = Vec::new();
        if let Some(after) = change.uac_after {
            mods.push(Mod::Delete(
                ATTR_UAC.into(),
                HashSet::from([change.uac_before.to_string()]),
            ));
            mods.push(Mod::Add(ATTR_UAC.into(), HashSet::from([after.to_string()])));
        }
        if !change.add.is_empty() {
            mods.push(Mod::Add(ATTR_DELEGATE_TO.into(), change.add.iter().cloned().collect()));
        }
        if !change.remove.is_empty() {
            mods.push(Mod::Delete(
                ATTR_DELEGATE_TO.into(),
                change.remove.iter().cloned().collect(),
            ));
        }
        if mods.is_empty() {
            return Ok(());
        }
        let mut ldap = self.ldap.clone();
        let res = ldap
            .with_timeout(self.cfg.timeout)
            .modify(&change.dn, mods)
            .await
            .map_err(protocol(format!("modify of {}", change.dn)))?;
        match res.rc {
            0 => Ok(()),
            RC_NO_SUCH_ATTRIBUTE | RC_TYPE_OR_VALUE_EXISTS => Err(LdapError::Conflict {
                dn: change.dn.clone(),
                rc: res.rc,
            }),
            RC_INSUFFICIENT_ACCESS => Err(LdapError::MissingPrivilege {
                dn: change.dn.clone(),
                text: res.text,
            }),
            rc => Err(LdapError::Modify {
                dn: change.dn.clone(),
                rc,
                text: res.text,
            }),
        }
    }

    pub async fn unbind(mut self) {
        let _ = self.ldap.unbind().await;
    }
}

fn computer_from_entry(mut e: SearchEntry) -> Computer {
    // Attribute names come back in the server's case; look them up without it.
    let mut attrs: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in e.attrs.drain() {
        attrs.insert(k.to_ascii_lowercase(), v);
    }
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
        dn: e.dn,
    }
}

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

/// Accounts and groups that decide who may be delegated, read once per
/// reconcile.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub privileged: Vec<crate::diagnose::Privileged>,
    pub krbtgt_uac: Option<u32>,
    pub protected_users_dn: Option<String>,
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
    async fn search_all(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<SearchEntry>, LdapError> {
        let mut ldap = self.ldap.clone();
        let res = ldap
            .with_timeout(self.cfg.timeout)
            .search(base, scope, filter, attrs.to_vec())
            .await
            .map_err(protocol(format!("search of {base}")))?;
        match res.1.rc {
            0 => Ok(res
                .0
                .into_iter()
                .filter(|e| !e.is_ref() && !e.is_intermediate())
                .map(SearchEntry::construct)
                .collect()),
            RC_NO_SUCH_OBJECT => Ok(Vec::new()),
            rc => Err(LdapError::Search {
                base: base.to_owned(),
                rc,
                text: res.1.text,
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

    fn account_from(e: &SearchEntry, protected: bool) -> crate::diagnose::Account {
        let get = |k: &str| {
            e.attrs
                .iter()
                .find(|(a, _)| a.eq_ignore_ascii_case(k))
                .and_then(|(_, v)| v.first().cloned())
                .unwrap_or_default()
        };
        crate::diagnose::Account {
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
        let protected: std::collections::HashSet<String> = match &dir.protected_users_dn {
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
        let mut by_dn: std::collections::BTreeMap<String, crate::diagnose::Privileged> = Default::default();
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
                let p = by_dn.entry(key.clone()).or_insert_with(|| crate::diagnose::Privileged {
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
    ) -> Result<Option<crate::diagnose::Account>, LdapError> {
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
