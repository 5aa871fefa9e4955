//! What diagnosis reads: AD as observed, what each agent last reported, and
//! when kcdsync last changed each host. Gathered at the I/O edges
//! (`view::Snapshot`); nothing here does I/O.

use std::collections::HashMap;

use kcdsync_proto::v1::HostReport;

use crate::config::{DEFAULT_STALE_AFTER, Group};
use crate::model::names::HostName;
use crate::model::{Computer, Finding, Index, Observed, Outside, Privileged};

/// What an agent said about its host.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub report: Option<HostReport>,
    pub last_seen_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// Migrations must use Kerberos (constrained delegation), not CredSSP.
    pub require_kerberos: bool,
    /// A host not heard from for this long is stale.
    pub stale_after_ms: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            require_kerberos: true,
            stale_after_ms: DEFAULT_STALE_AFTER.as_millis() as i64,
        }
    }
}

/// Everything diagnosis looks at, gathered by the I/O edges.
pub struct Facts<'a> {
    pub groups: &'a [Group],
    pub observed: &'a Observed,
    /// `observed` by name and DN.
    pub index: &'a Index,
    /// By FQDN, lower case.
    pub hosts: &'a HashMap<String, HostFacts>,
    pub privileged: &'a [Privileged],
    /// Objects outside the scope that its delegation entries name.
    pub outside: &'a Outside,
    pub krbtgt_uac: Option<u32>,
    /// When kcdsync last changed each host's delegation (FQDN → Unix ms).
    pub last_change_ms: &'a HashMap<String, i64>,
    pub now_ms: i64,
    pub policy: Policy,
}

impl Facts<'_> {
    /// What the exposure model reads of these facts.
    pub fn exposure_inputs(&self) -> crate::exposure::Inputs<'_> {
        crate::exposure::Inputs {
            groups: self.groups,
            observed: self.observed,
            index: self.index,
            outside: self.outside,
            privileged: self.privileged,
        }
    }

    pub(super) fn computer(&self, name: &str) -> Option<&Computer> {
        HostName::parse(name)
            .ok()
            .and_then(|n| self.index.find(&n))
            .map(|i| &self.observed.computers[i])
    }

    /// The computers of a configured group (hosts and AD group members), in
    /// the order of the observe.
    pub fn members(&self, group: &Group) -> Vec<&Computer> {
        group
            .resolve(self.observed, self.index)
            .sorted()
            .into_iter()
            .map(|i| &self.observed.computers[i])
            .collect()
    }

    /// The finding that says why `c` is not a delegation target, if it is not one.
    pub(super) fn refusal(&self, c: &Computer) -> Option<Finding> {
        let i = self.index.find_dn(&c.dn)?;
        self.index.refusal(i).map(|r| r.finding(c))
    }

    pub(super) fn agent(&self, c: &Computer) -> Option<&HostFacts> {
        c.fqdn().and_then(|f| self.hosts.get(&f))
    }

    pub(super) fn report(&self, c: &Computer) -> Option<&HostReport> {
        self.agent(c).and_then(|f| f.report.as_ref())
    }
}
