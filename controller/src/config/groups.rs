//! `[[group]]` (which hosts the controller manages, and in which [`Mode`])
//! and `[guard]` (the blast-radius limit on one apply).

use serde::Deserialize;

use super::{ConfigError, invalid};
pub use crate::model::Mode;
use crate::model::dn::Dn;
use crate::model::members::{self, Members};
use crate::model::names::HostName;
use crate::model::{Index, Observed};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    name: String,
    mode: Mode,
    #[serde(default)]
    hosts: Vec<String>,
    ad_group: Option<String>,
    #[serde(default)]
    file_servers: Vec<String>,
    #[serde(default)]
    first_grants: FirstGrants,
}

/// What the guard does with a host that would gain protocol transition or
/// its first delegation entry (a new member, a pre-created computer object
/// for a configured name, a new member of the AD group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirstGrants {
    /// Held for approval (the default): a first grant is a new security edge.
    #[default]
    Approve,
    /// Applied within the guard like any other additive change.
    Auto,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub mode: Mode,
    pub hosts: Vec<HostName>,
    pub ad_group: Option<Dn>,
    pub file_servers: Vec<HostName>,
    pub first_grants: FirstGrants,
}

impl Group {
    /// The group's members as found in one observe.
    pub fn resolve<'g>(&'g self, observed: &Observed, index: &Index) -> Members<'g> {
        members::resolve(&self.hosts, self.ad_group.as_ref(), observed, index)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGuard {
    #[serde(default = "default_max_hosts")]
    max_hosts_per_apply: usize,
}

impl Default for RawGuard {
    fn default() -> Self {
        RawGuard {
            max_hosts_per_apply: default_max_hosts(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Guard {
    /// A plan that changes more hosts than this waits for approval.
    pub max_hosts_per_apply: usize,
}

fn default_max_hosts() -> usize {
    50
}

pub(super) fn validate_guard(raw: RawGuard) -> Result<Guard, ConfigError> {
    if raw.max_hosts_per_apply == 0 {
        return Err(invalid(
            "guard.max_hosts_per_apply",
            "must be at least 1 (every apply would wait for approval)",
        ));
    }
    Ok(Guard {
        max_hosts_per_apply: raw.max_hosts_per_apply,
    })
}

pub(super) fn validate_groups(raw: Vec<RawGroup>) -> Result<Vec<Group>, ConfigError> {
    let mut groups: Vec<Group> = Vec::new();
    for (gi, g) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("group[{gi}].{field}");
        if g.name.trim().is_empty() {
            return Err(invalid(key("name"), "must not be empty"));
        }
        if groups.iter().any(|o| o.name.eq_ignore_ascii_case(&g.name)) {
            return Err(invalid(key("name"), format!("group `{}` is defined twice", g.name)));
        }
        if g.hosts.is_empty() && g.ad_group.is_none() {
            return Err(invalid(
                key("hosts"),
                format!("group `{}` has no members: set `hosts` or `ad_group`", g.name),
            ));
        }
        let mut hosts: Vec<HostName> = Vec::new();
        for (hi, h) in g.hosts.iter().enumerate() {
            let name = HostName::parse(h).map_err(|e| invalid(format!("group[{gi}].hosts[{hi}]"), e.to_string()))?;
            if hosts.contains(&name) {
                return Err(invalid(
                    format!("group[{gi}].hosts[{hi}]"),
                    format!("`{h}` is listed twice"),
                ));
            }
            hosts.push(name);
        }
        let ad_group = g
            .ad_group
            .as_deref()
            .map(Dn::parse)
            .transpose()
            .map_err(|e| invalid(key("ad_group"), e.to_string()))?;
        let mut file_servers = Vec::new();
        for (fi, f) in g.file_servers.iter().enumerate() {
            let name =
                HostName::parse(f).map_err(|e| invalid(format!("group[{gi}].file_servers[{fi}]"), e.to_string()))?;
            if !name.is_fqdn() {
                return Err(invalid(
                    format!("group[{gi}].file_servers[{fi}]"),
                    format!("`{f}`: give the file server's FQDN (e.g. fs01.contoso.com)"),
                ));
            }
            file_servers.push(name);
        }
        groups.push(Group {
            name: g.name,
            mode: g.mode,
            hosts,
            ad_group,
            file_servers,
            first_grants: g.first_grants,
        });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{err, with_group};

    #[test]
    fn host_names_with_filter_metacharacters_are_refused() {
        for bad in ["hv01)(objectClass=*", "hv*", "hv01\\\\00", "a b", "hv01.lab.test)"] {
            let e = err(&with_group(&format!(
                "name = \"a\"\nmode = \"plan\"\nhosts = [\"{bad}\"]"
            )));
            assert!(e.contains("group[0].hosts[0]"), "{bad}: {e}");
        }
    }

    #[test]
    fn groups_need_members_and_unique_names() {
        let e = err(&with_group("name = \"a\"\nmode = \"plan\""));
        assert!(e.contains("group[0].hosts") && e.contains("no members"), "{e}");
        let e = err(&format!(
            "{}\n[[group]]\nname = \"A\"\nmode = \"plan\"\nhosts = [\"hv02\"]",
            with_group("name = \"a\"\nmode = \"plan\"\nhosts = [\"hv01\"]")
        ));
        assert!(e.contains("group[1].name"), "{e}");
        let e = err(&with_group("name = \"a\"\nmode = \"apply\"\nhosts = [\"hv01\"]"));
        assert!(e.contains("unknown variant `apply`"), "{e}");
    }

    #[test]
    fn file_servers_need_an_fqdn() {
        let e = err(&with_group(
            "name = \"a\"\nmode = \"plan\"\nhosts = [\"hv01\"]\nfile_servers = [\"FS01\"]",
        ));
        assert!(e.contains("group[0].file_servers[0]"), "{e}");
    }
}
