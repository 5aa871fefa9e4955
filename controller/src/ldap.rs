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
        source: ldap3::LdapError,
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
        source: ldap3::LdapError,
    },
}

impl LdapError {
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
    move |source| LdapError::Protocol { op, source }
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
                source,
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
        })
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
