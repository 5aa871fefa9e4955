//! The domain's domain controllers, as AD lists them: one NTDS Settings object (class
//! nTDSDSA) per DC under `CN=Sites,CN=Configuration,<domain>`, whose parent is the DC's
//! server object (its `dNSHostName`), two levels below its site.

use ldap3::Scope;

use super::{Ad, LdapError};
use crate::model::dn::{Dn, dn_key};

/// One domain controller of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcInfo {
    /// The server object's dNSHostName, lower-case (what `[[ad.dc]] name` matches).
    pub name: String,
    pub site: String,
    /// The DN of its NTDS Settings object (what a rootDSE's dsServiceName names).
    pub service: String,
}

impl Ad {
    /// Every DC of the domain, read from the configuration partition (readable by any
    /// authenticated account). A DC whose server object has no dNSHostName is left out.
    pub async fn domain_controllers(&self, domain: &Dn) -> Result<Vec<DcInfo>, LdapError> {
        let sites = format!("CN=Sites,CN=Configuration,{}", domain.as_str());
        let servers = self
            .search_all(&sites, Scope::Subtree, "(objectClass=server)", &["dNSHostName"])
            .await?;
        let dsas = self
            .search_all(&sites, Scope::Subtree, "(objectClass=nTDSDSA)", &["1.1"])
            .await?;
        let mut out = Vec::new();
        for dsa in dsas {
            let rdns = split_rdns(&dsa.dn);
            let parent = dn_key(&rdns[1..].join(","));
            let Some(server) = servers.iter().find(|s| dn_key(&s.dn) == parent) else {
                continue;
            };
            let Some(name) = server
                .attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("dNSHostName"))
                .and_then(|(_, v)| v.first())
            else {
                continue;
            };
            // NTDS Settings, <server>, Servers, <site>, Sites, ...
            let site = rdns.get(3).map(|r| rdn_value(r)).unwrap_or_default();
            out.push(DcInfo {
                name: name.trim_end_matches('.').to_ascii_lowercase(),
                site,
                service: dsa.dn,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The dNSHostName of the DC this connection talks to, lower-case, as its rootDSE says:
    /// the name the audit gives the DC a write was sent to.
    pub async fn dns_host_name(&self) -> Result<String, LdapError> {
        let root = self.read_base("", &["dnsHostName"]).await?;
        root.first()
            .and_then(|e| {
                e.attrs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("dnsHostName"))
                    .and_then(|(_, v)| v.first())
            })
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .ok_or_else(|| LdapError::Search {
                base: "rootDSE".into(),
                rc: 0,
                text: "no dnsHostName".into(),
            })
    }

    /// The DN of the NTDS Settings object of the DC this connection talks to.
    pub async fn dc_service(&self) -> Result<String, LdapError> {
        let root = self.read_base("", &["dsServiceName"]).await?;
        root.first()
            .and_then(|e| {
                e.attrs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("dsServiceName"))
                    .and_then(|(_, v)| v.first().cloned())
            })
            .ok_or_else(|| LdapError::Search {
                base: "rootDSE".into(),
                rc: 0,
                text: "no dsServiceName".into(),
            })
    }
}

/// A DN's RDNs, split at the commas that are not escaped.
fn split_rdns(dn: &str) -> Vec<String> {
    let (mut out, mut cur, mut escaped) = (Vec::new(), String::new(), false);
    for ch in dn.chars() {
        match ch {
            ',' if !escaped => out.push(std::mem::take(&mut cur)),
            _ => {
                escaped = ch == '\\' && !escaped;
                cur.push(ch);
            }
        }
    }
    out.push(cur);
    out
}

fn rdn_value(rdn: &str) -> String {
    rdn.split_once('=').map_or(rdn, |(_, v)| v).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ntds_settings_dn_names_its_server_and_site() {
        let dn = "CN=NTDS Settings,CN=DC2,CN=Servers,CN=Branch\\, East,CN=Sites,CN=Configuration,DC=lab,DC=test";
        let rdns = split_rdns(dn);
        assert_eq!(rdns[1], "CN=DC2");
        assert_eq!(rdn_value(&rdns[3]), "Branch\\, East");
        assert_eq!(rdns.len(), 8);
    }
}
