//! Hosts as the fleet API shows them (ListHosts, GetHost): which computers
//! are hosts (members of a configured group), the name each goes by, and a
//! host's groups, findings, agent and readiness.

use kcdsync_proto::timestamp_from_ms;
use kcdsync_proto::v1 as pb;
use tonic::Status;

use super::convert::*;
use super::fleet::FleetApi;
use crate::model::*;
use crate::view::View;

/// The name a computer goes by in answers: its FQDN, or its NetBIOS name when
/// the identity checks refused it (its dNSHostName is exactly what is not trusted).
pub(crate) fn shown_name(view: &View, c: &Computer) -> String {
    let trusted = view
        .snapshot
        .index
        .find_dn(&c.dn)
        .is_some_and(|i| view.snapshot.index.trusted(i));
    if trusted { c.display_name() } else { c.netbios() }
}

/// Each computer's groups and each host's findings, gathered once per call: looking them up
/// per host (every group resolved, every finding scanned, for each of a page's hosts) made
/// ListHosts of 2,000 hosts take 0.44 s.
pub(super) struct HostLookup<'v> {
    /// By the computer's DN as read.
    groups: std::collections::HashMap<&'v str, Vec<&'v crate::config::Group>>,
    /// By the host name findings use.
    findings: std::collections::HashMap<&'v str, Vec<&'v Finding>>,
}

impl<'v> HostLookup<'v> {
    pub(super) fn new(view: &'v View) -> HostLookup<'v> {
        let snap = &view.snapshot;
        let mut groups: std::collections::HashMap<&str, Vec<&crate::config::Group>> = Default::default();
        for g in &view.cfg.groups {
            for i in g.resolve(&snap.observed, &snap.index).sorted() {
                groups
                    .entry(snap.observed.computers[i].dn.as_str())
                    .or_default()
                    .push(g);
            }
        }
        let mut findings: std::collections::HashMap<&str, Vec<&Finding>> = Default::default();
        for f in &view.findings {
            for h in &f.hosts {
                let list = findings.entry(h.as_str()).or_default();
                // A finding naming a host twice is listed once for it.
                if !list.last().is_some_and(|l| std::ptr::eq(*l, f)) {
                    list.push(f);
                }
            }
        }
        HostLookup { groups, findings }
    }
}

impl FleetApi {
    pub(super) fn host(&self, view: &View, lookup: &HostLookup, c: &Computer) -> pb::Host {
        let name = shown_name(view, c);
        let groups: &[&crate::config::Group] = lookup.groups.get(c.dn.as_str()).map_or(&[], Vec::as_slice);
        let findings: Vec<pb::Finding> = lookup
            .findings
            .get(name.as_str())
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|f| finding_to_pb(f))
            .collect();
        let critical = findings.iter().any(|f| f.severity == pb::Severity::Critical as i32);
        let agent = c.fqdn().and_then(|f| view.snapshot.hosts.get(&f));
        let live = self.state.hub.as_ref().map(|h| h.liveness(&name));
        pb::Host {
            name: name.clone(),
            netbios_name: c.netbios(),
            groups: groups.iter().map(|g| g.name.clone()).collect(),
            mode: groups.iter().map(|g| g.mode).min().map_or(0, mode_to_pb),
            delegation: Some(pb::DelegationState {
                dn: c.dn.clone(),
                user_account_control: c.uac,
                protocol_transition: c.uac & TRUSTED_TO_AUTH_FOR_DELEGATION != 0,
                unconstrained: c.uac & TRUSTED_FOR_DELEGATION != 0,
                allowed_to_delegate_to: c.allowed_to_delegate_to.clone(),
                service_principal_names: c.spns.clone(),
                usn_changed: c.usn_changed,
            }),
            last_report: agent.and_then(|a| a.report.clone()),
            last_seen: agent.and_then(|a| a.last_seen_ms).map(timestamp_from_ms),
            agent_connected: live.as_ref().is_some_and(|l| l.connected),
            stale: live.as_ref().is_some_and(|l| l.stale && l.last_seen.is_some()),
            readiness: if critical {
                pb::Readiness::NotReady
            } else {
                pb::Readiness::Ready
            } as i32,
            findings,
        }
    }

    /// Computers shown as hosts: every member of a configured group.
    pub(crate) fn hosts<'v>(&self, view: &'v View, group: &str) -> Result<Vec<&'v Computer>, Status> {
        let groups: Vec<&crate::config::Group> = view
            .cfg
            .groups
            .iter()
            .filter(|g| group.is_empty() || g.name.eq_ignore_ascii_case(group))
            .collect();
        if groups.is_empty() {
            return Err(Status::not_found(format!("no group `{group}` in the configuration")));
        }
        let snap = &view.snapshot;
        let mut idx: Vec<usize> = groups
            .into_iter()
            .flat_map(|g| {
                // Members refused by the identity checks are listed too (as
                // NOT_READY, with their finding): an operator must see them.
                let m = g.resolve(&snap.observed, &snap.index);
                m.computers.into_iter().chain(m.refused)
            })
            .collect();
        idx.sort_unstable();
        idx.dedup();
        let mut out: Vec<&Computer> = idx.into_iter().map(|i| &snap.observed.computers[i]).collect();
        out.sort_by_key(|c| c.display_name());
        Ok(out)
    }
}
