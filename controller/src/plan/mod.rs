//! Planning: a pure function from desired state (the configured groups) and
//! observed state (what one search of AD returned) to per-host changes and
//! findings. No I/O happens here; this is where most unit tests live.
//!
//! Desired state for a host H in group G: protocol transition
//! (0x1000000) set, unconstrained delegation (0x80000) clear, and
//! msDS-AllowedToDelegateTo holding, for every other member P of G,
//! `Microsoft Virtual System Migration Service/` and `cifs/` for P's FQDN
//! and NetBIOS name, plus `cifs/` for each of G's file servers. Entries
//! kcdsync does not manage (other service classes, targets outside the
//! scope) are never removed.
//!
//! Only hosts whose identity checks out (`model::identity`) are planned for
//! or delegated to: a domain controller, a read-only DC, a privileged
//! machine, or an object whose dNSHostName or SPNs do not match its own name
//! is a finding for its group and is left out, and the group goes on
//! without it. [`Plan::targets`] is the list of names the plan may delegate
//! to; the write edge (`ldap::edge`) checks every modify against it again.
//!
//! - `diff`: one host's change;
//! - `guard`: what may be written without approval.

mod diff;
mod guard;
#[cfg(test)]
mod proptests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

pub use guard::{Guarded, guard, sensitive_changes};

use crate::config::{Group, Mode};
use crate::model::dn::{Dn, in_scope};
use crate::model::identity::{self, names_of};
use crate::model::names::HostName;
use crate::model::*;
use diff::{Entry, Want, entries_to, entries_to_computer};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Sorted by DN, at most one per host.
    pub changes: Vec<HostChange>,
    /// Planning never fails for these; sorted by kind and host.
    pub findings: Vec<Finding>,
    /// The names (lower-case FQDN and NetBIOS) of every host this plan may
    /// delegate to: trusted members and the file servers that checked out.
    pub targets: BTreeSet<String>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Computes the changes that make AD match the configured groups.
/// `suffixes` are the allowed DNS suffixes of a managed host's name.
pub fn plan(groups: &[Group], scope: &[Dn], suffixes: &[String], observed: &Observed) -> Plan {
    plan_with(groups, scope, &Index::new(observed, suffixes), observed)
}

/// [`plan`] with `observed`'s index already built.
pub fn plan_with(groups: &[Group], scope: &[Dn], index: &Index, observed: &Observed) -> Plan {
    let mut planner = Planner::new(observed, index, scope);
    for g in groups {
        planner.group(g);
    }
    planner.finish()
}

/// The state of one planning pass over the groups.
struct Planner<'a> {
    observed: &'a Observed,
    index: &'a Index,
    scope: &'a [Dn],
    findings: Vec<Finding>,
    /// Every name of every computer in scope, plus the file servers: an entry
    /// pointing at one of these with a migration service class is ours.
    managed_targets: BTreeSet<String>,
    /// The four entries that delegate to each computer, built once: every
    /// peer of a host points at the same list instead of building its own.
    entries_of: Vec<Vec<Entry>>,
    file_server_entries: Vec<Vec<Entry>>,
    targets: BTreeSet<String>,
    /// By DN: (computer, groups, mode, peers, file servers).
    wants: BTreeMap<String, Wanted>,
}

struct Wanted {
    idx: usize,
    groups: Vec<String>,
    mode: Mode,
    peers: BTreeSet<usize>,
    file_servers: Vec<usize>,
}

impl<'a> Planner<'a> {
    fn new(observed: &'a Observed, index: &'a Index, scope: &'a [Dn]) -> Planner<'a> {
        // A name an object merely claims (a dNSHostName that is not its own)
        // does not make entries to that name ours.
        let mut managed_targets = BTreeSet::new();
        for (i, c) in observed.computers.iter().enumerate() {
            if let Some(f) = c.fqdn()
                && index.name_checks_out(i)
            {
                managed_targets.insert(f);
            }
            managed_targets.insert(c.netbios().to_lowercase());
        }
        Planner {
            observed,
            index,
            scope,
            findings: Vec::new(),
            managed_targets,
            entries_of: observed.computers.iter().map(entries_to_computer).collect(),
            file_server_entries: Vec::new(),
            targets: BTreeSet::new(),
            wants: BTreeMap::new(),
        }
    }

    fn group(&mut self, g: &Group) {
        let members = self.members(g);
        let file_servers = self.file_servers(g);
        for &m in &members {
            let c = &self.observed.computers[m];
            if c.uac & ACCOUNTDISABLE != 0 {
                self.findings.push(Finding::new(
                    FindingKind::ComputerAccountDisabled,
                    Severity::Critical,
                    &[&c.display_name()],
                    "",
                    format!("{} is disabled in AD; it cannot take part in migrations", c.dn),
                ));
            }
            let want = self.wants.entry(c.dn.clone()).or_insert_with(|| Wanted {
                idx: m,
                groups: Vec::new(),
                mode: g.mode,
                peers: BTreeSet::new(),
                file_servers: Vec::new(),
            });
            want.groups.push(g.name.clone());
            // A host in several groups follows the most cautious mode.
            want.mode = want.mode.min(g.mode);
            want.peers.extend(members.iter().filter(|&&p| p != m));
            want.file_servers.extend(&file_servers);
        }
        if members.len() > 1 {
            self.peer_spn_findings(&members);
            for &m in &members {
                let c = &self.observed.computers[m];
                self.targets.extend(names_of(c));
            }
        }
    }

    /// The group's trusted computers; what cannot be resolved, and every
    /// member that is not a delegation target, becomes a finding.
    fn members(&mut self, g: &Group) -> Vec<usize> {
        let m = g.resolve(self.observed, self.index);
        for h in &m.missing {
            self.findings.push(Finding::new(
                FindingKind::HostMissingFromAd,
                Severity::Warning,
                &[h.as_str()],
                "",
                format!(
                    "group `{}` lists {h}, but no computer object with that name is in the managed scope ({}); it gets no delegation and its peers get no entries for it",
                    g.name,
                    self.scope.iter().map(|d| d.as_str()).collect::<Vec<_>>().join("; ")
                ),
            ));
        }
        if let Some(adg) = g.ad_group.as_ref().filter(|_| m.ad_group_missing) {
            self.findings.push(Finding::new(
                FindingKind::AdGroupMissing,
                Severity::Warning,
                &[],
                "",
                format!("group `{}`: AD group {adg} does not exist or cannot be read", g.name),
            ));
        }
        for dn in &m.out_of_scope {
            self.findings.push(Finding::new(
                FindingKind::HostOutOfScope,
                Severity::Info,
                &[dn],
                "",
                format!(
                    "AD group {} (group `{}`) has member {dn}, which is not a computer inside the managed scope; it is left alone",
                    g.ad_group.as_ref().map(|d| d.as_str()).unwrap_or_default(),
                    g.name
                ),
            ));
        }
        for &i in &m.refused {
            if let Some(r) = self.index.refusal(i) {
                let c = &self.observed.computers[i];
                self.findings.push(r.finding(c).evidence("group", g.name.clone()));
            }
        }
        // Observe reads only the scope; a computer from anywhere else is
        // never planned for, whoever handed it over.
        let (inside, outside): (Vec<usize>, Vec<usize>) = m
            .computers
            .into_iter()
            .partition(|&i| in_scope(&self.observed.computers[i].dn, self.scope));
        for i in outside {
            let dn = &self.observed.computers[i].dn;
            self.findings.push(Finding::new(
                FindingKind::HostOutOfScope,
                Severity::Warning,
                &[dn],
                "",
                format!(
                    "group `{}`: {dn} is outside the managed scope; it is left alone",
                    g.name
                ),
            ));
        }
        inside
    }

    /// The `cifs/` entries for the group's file servers; their names become
    /// managed. A file server whose name is held by a domain controller, a
    /// read-only DC, a privileged machine or by two objects is a finding and
    /// gets no entries.
    fn file_servers(&mut self, g: &Group) -> Vec<usize> {
        let mut out = Vec::new();
        for fs in &g.file_servers {
            let owners = identity::owners_of(self.observed, fs.as_str());
            self.managed_targets.insert(fs.as_str().to_owned());
            if let Some(f) = self.file_server_refusal(g, fs, &owners) {
                self.findings.push(f);
                continue;
            }
            let netbios = owners
                .first()
                .map(|o| o.netbios())
                .unwrap_or_else(|| fs.derived_netbios());
            self.managed_targets.insert(netbios.to_lowercase());
            self.targets.insert(fs.as_str().to_owned());
            self.targets.insert(netbios.to_lowercase());
            self.file_server_entries
                .push(entries_to(Some(fs.as_str()), &netbios, &[CIFS]));
            out.push(self.file_server_entries.len() - 1);
        }
        out
    }

    fn file_server_refusal(&self, g: &Group, fs: &HostName, owners: &[&Computer]) -> Option<Finding> {
        let privileged = |o: &Computer| self.observed.claims.privileged.contains(&dn_key(&o.dn));
        let (kind, what) = if let Some(o) = owners.iter().find(|o| o.is_dc_or_rodc() || privileged(o)) {
            (
                FindingKind::NotADelegationTarget,
                format!("is served by {}, a domain controller or privileged machine", o.dn),
            )
        } else if owners.len() > 1 {
            (
                FindingKind::HostIdentityConflict,
                format!(
                    "is claimed by {} objects ({}): its tickets would go to either",
                    owners.len(),
                    owners.iter().map(|o| o.dn.as_str()).collect::<Vec<_>>().join("; ")
                ),
            )
        } else {
            return None;
        };
        Some(
            Finding::new(
                kind,
                Severity::Critical,
                &[fs.as_str()],
                "",
                format!(
                    "file server {fs} of group `{}` {what}; kcdsync does not delegate to it",
                    g.name
                ),
            )
            .evidence("group", g.name.clone())
            .evidence("attribute", ATTR_SPN)
            .fix(
                "correct the group's file_servers, or the SPNs of the objects named",
                false,
            ),
        )
    }

    /// A peer that lacks the SPNs cannot be delegated to, whatever the
    /// source says.
    fn peer_spn_findings(&mut self, members: &[usize]) {
        for &p in members {
            let c = &self.observed.computers[p];
            let mut missing: Vec<String> = self.entries_of[p]
                .iter()
                .map(|(_, e)| e)
                .filter(|s| !c.has_spn(s))
                .cloned()
                .collect();
            if missing.is_empty() {
                continue;
            }
            missing.sort();
            self.findings.push(Finding::new(
                FindingKind::PeerSpnNotRegistered,
                Severity::Critical,
                &[&c.display_name()],
                "",
                format!(
                    "{} lacks servicePrincipalName {}; migrations to it cannot use Kerberos until the host registers them (Hyper-V registers the migration SPNs when VMMS starts)",
                    c.display_name(),
                    missing.join(", ")
                ),
            ));
        }
    }

    fn finish(mut self) -> Plan {
        let mut changes = Vec::new();
        for w in self.wants.values() {
            let c = &self.observed.computers[w.idx];
            let desired: HashMap<&str, &str> = w
                .peers
                .iter()
                .flat_map(|p| &self.entries_of[*p])
                .chain(w.file_servers.iter().flat_map(|f| &self.file_server_entries[*f]))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if c.uac & TRUSTED_FOR_DELEGATION != 0 {
                self.findings.push(Finding::new(
                    FindingKind::UnconstrainedDelegation,
                    Severity::Critical,
                    &[&c.display_name()],
                    "",
                    format!(
                        "{} has unconstrained delegation (0x80000); kcdsync clears it after approval",
                        c.dn
                    ),
                ));
            }
            let want = Want {
                computer: c,
                groups: w.groups.clone(),
                mode: w.mode,
                desired,
            };
            changes.extend(diff::diff(&want, &self.managed_targets));
        }
        self.findings
            .sort_by(|a, b| (a.kind, a.host()).cmp(&(b.kind, b.host())));
        Plan {
            changes,
            findings: self.findings,
            targets: self.targets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FirstGrants, Guard};
    use crate::model::fixtures::{BASE, computer, entries_to};
    use crate::model::names::HostName;

    fn group(name: &str, mode: Mode, hosts: &[&str], file_servers: &[&str]) -> Group {
        Group {
            name: name.into(),
            mode,
            hosts: hosts.iter().map(|h| HostName::parse(h).unwrap()).collect(),
            ad_group: None,
            file_servers: file_servers.iter().map(|h| HostName::parse(h).unwrap()).collect(),
            first_grants: FirstGrants::Auto,
        }
    }

    /// Group `a`, opted out of holding first grants: the guard tests below
    /// are about the other rules.
    fn opted_out() -> Vec<Group> {
        vec![group("a", Mode::Enforce, &[], &[])]
    }

    fn sfx() -> Vec<String> {
        vec!["lab.test".to_owned()]
    }

    fn scope() -> Vec<Dn> {
        vec![Dn::parse(BASE).unwrap()]
    }

    fn converged(name: &str, peers: &[&str]) -> Computer {
        let all: Vec<String> = peers.iter().flat_map(|p| entries_to(p)).collect();
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        computer(name, WORKSTATION_TRUST_ACCOUNT | TRUSTED_TO_AUTH_FOR_DELEGATION, &refs)
    }

    fn observed(computers: Vec<Computer>) -> Observed {
        Observed {
            computers,
            ..Default::default()
        }
    }

    #[test]
    fn kerberos_only_hosts_get_protocol_transition_and_nothing_else() {
        // The seed's broken state: entries present, "Kerberos only".
        let mut hv01 = converged("HV01", &["HV02"]);
        hv01.uac = WORKSTATION_TRUST_ACCOUNT;
        let hv02 = converged("HV02", &["HV01"]);
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &[])],
            &scope(),
            &sfx(),
            &observed(vec![hv01, hv02]),
        );
        assert_eq!(p.changes.len(), 1);
        let c = &p.changes[0];
        assert_eq!(c.host, "hv01.lab.test");
        assert_eq!(
            c.uac_after,
            Some(WORKSTATION_TRUST_ACCOUNT | TRUSTED_TO_AUTH_FOR_DELEGATION)
        );
        assert!(c.add.is_empty() && c.remove.is_empty());
        assert!(!c.is_subtractive());
    }

    #[test]
    fn a_converged_fleet_plans_nothing() {
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01.lab.test", "HV02", "hv03"], &[])],
            &scope(),
            &sfx(),
            &observed(vec![
                converged("HV01", &["HV02", "HV03"]),
                converged("HV02", &["HV01", "HV03"]),
                converged("HV03", &["HV01", "HV02"]),
            ]),
        );
        assert!(p.is_noop(), "{p:#?}");
    }

    #[test]
    fn every_peer_gets_four_entries_and_file_servers_two() {
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02", "hv03"], &["fs01.lab.test"])],
            &scope(),
            &sfx(),
            &observed(vec![
                computer("HV01", 4096, &[]),
                computer("HV02", 4096, &[]),
                computer("HV03", 4096, &[]),
            ]),
        );
        assert_eq!(p.changes.len(), 3);
        let hv01 = &p.changes[0];
        let mut want: Vec<String> = entries_to("HV02").into_iter().chain(entries_to("HV03")).collect();
        want.push("cifs/fs01.lab.test".into());
        want.push("cifs/FS01".into());
        let mut got = hv01.add.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert!(
            !hv01.add.iter().any(|e| e.to_lowercase().contains("hv01")),
            "no entry to itself"
        );
    }

    #[test]
    fn spns_compare_case_insensitively() {
        let upper: Vec<String> = entries_to("HV02").iter().map(|e| e.to_uppercase()).collect();
        let refs: Vec<&str> = upper.iter().map(String::as_str).collect();
        let hv01 = computer(
            "HV01",
            WORKSTATION_TRUST_ACCOUNT | TRUSTED_TO_AUTH_FOR_DELEGATION,
            &refs,
        );
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &[])],
            &scope(),
            &sfx(),
            &observed(vec![hv01, converged("HV02", &["HV01"])]),
        );
        assert!(p.is_noop(), "uppercase existing entries must not be re-added: {p:#?}");
    }

    #[test]
    fn unmanaged_entries_survive() {
        let mut entries = entries_to("HV02");
        entries.push("HTTP/web01.lab.test".into());
        entries.push("cifs/elsewhere.other.test".into()); // target outside scope
        entries.push("MSSQLSvc/hv03.lab.test:1433".into()); // other class, scoped target
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let hv01 = computer("HV01", 4096, &refs);
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &[])],
            &scope(),
            &sfx(),
            &observed(vec![hv01, converged("HV02", &["HV01"]), computer("HV03", 4096, &[])]),
        );
        assert_eq!(p.changes.len(), 1);
        assert!(p.changes[0].remove.is_empty(), "{:?}", p.changes[0].remove);
    }

    #[test]
    fn entries_to_a_host_that_left_the_group_are_removed_and_held() {
        // HV03 left the group; HV01 and HV02 still point at it.
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &[])],
            &scope(),
            &sfx(),
            &observed(vec![
                converged("HV01", &["HV02", "HV03"]),
                converged("HV02", &["HV01", "HV03"]),
                converged("HV03", &["HV01", "HV02"]),
            ]),
        );
        assert_eq!(p.changes.len(), 2, "HV03 is in no group and is not planned for: {p:#?}");
        for c in &p.changes {
            let mut r = c.remove.clone();
            r.sort();
            let mut want = entries_to("HV03");
            want.sort();
            assert_eq!(r, want);
        }
        let g = guard(
            &p.changes,
            &Guard {
                max_hosts_per_apply: 50,
            },
            &opted_out(),
        );
        assert!(g.auto.is_empty());
        assert_eq!(g.held.len(), 2);
        assert!(
            g.reasons
                .iter()
                .any(|r| r.contains("removes 8 delegation entries on 2 hosts")),
            "{:?}",
            g.reasons
        );
    }

    #[test]
    fn the_guard_splits_additions_from_removals() {
        let mut hv01 = converged("HV01", &["HV03"]);
        hv01.uac = 4096;
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &[])],
            &scope(),
            &sfx(),
            &observed(vec![hv01, converged("HV02", &["HV01"]), computer("HV03", 4096, &[])]),
        );
        let c = &p.changes[0];
        assert!(!c.add.is_empty() && !c.remove.is_empty());
        let g = guard(
            &p.changes,
            &Guard {
                max_hosts_per_apply: 50,
            },
            &opted_out(),
        );
        assert_eq!(g.auto.len(), 1);
        assert_eq!(g.auto[0].add, c.add);
        assert!(g.auto[0].remove.is_empty());
        assert_eq!(g.auto[0].uac_after, Some(4096 | TRUSTED_TO_AUTH_FOR_DELEGATION));
        assert_eq!(g.held.len(), 1);
        assert!(g.held[0].add.is_empty());
        assert_eq!(g.held[0].remove, c.remove);
        assert_eq!(g.held[0].uac_before, 4096 | TRUSTED_TO_AUTH_FOR_DELEGATION);
        assert_eq!(g.held[0].uac_after, None);
    }

    #[test]
    fn too_many_hosts_wait_for_approval() {
        let names: Vec<String> = (1..=5).map(|i| format!("HV0{i}")).collect();
        let hosts: Vec<&str> = names.iter().map(String::as_str).collect();
        let p = plan(
            &[group("a", Mode::Enforce, &hosts, &[])],
            &scope(),
            &sfx(),
            &observed(names.iter().map(|n| computer(n, 4096, &[])).collect()),
        );
        let g = guard(&p.changes, &Guard { max_hosts_per_apply: 4 }, &opted_out());
        assert!(g.auto.is_empty());
        assert_eq!(g.held.len(), 5);
        assert!(g.reasons[0].contains("would change 5 hosts"));
        let g = guard(&p.changes, &Guard { max_hosts_per_apply: 5 }, &opted_out());
        assert_eq!((g.auto.len(), g.held.len()), (5, 0));
    }

    #[test]
    fn unconstrained_delegation_is_cleared_only_with_approval_and_never_set() {
        let mut hv01 = converged("HV01", &["HV02"]);
        hv01.uac |= TRUSTED_FOR_DELEGATION;
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &[])],
            &scope(),
            &sfx(),
            &observed(vec![hv01, converged("HV02", &["HV01"])]),
        );
        let c = &p.changes[0];
        assert_eq!(c.uac_after.unwrap() & TRUSTED_FOR_DELEGATION, 0);
        assert!(
            p.findings
                .iter()
                .any(|f| f.kind == FindingKind::UnconstrainedDelegation)
        );
        let g = guard(
            &p.changes,
            &Guard {
                max_hosts_per_apply: 50,
            },
            &opted_out(),
        );
        assert!(g.auto.is_empty());
        assert_eq!(g.held.len(), 1);
        for c in plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &[])],
            &scope(),
            &sfx(),
            &observed(vec![computer("HV01", 4096, &[]), computer("HV02", 4096, &[])]),
        )
        .changes
        {
            assert_eq!(c.uac_after.unwrap() & TRUSTED_FOR_DELEGATION, 0);
        }
    }

    #[test]
    fn a_domain_controller_in_a_group_is_a_finding_and_the_group_goes_on() {
        let mut dc = computer("DC1", SERVER_TRUST_ACCOUNT | TRUSTED_FOR_DELEGATION, &[]);
        dc.dn = "CN=DC1,OU=Domain Controllers,DC=lab,DC=test".to_string();
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "dc1", "hv02"], &[])],
            &scope(),
            &sfx(),
            &observed(vec![computer("HV01", 4096, &[]), dc, computer("HV02", 4096, &[])]),
        );
        let f = p
            .findings
            .iter()
            .find(|f| f.kind == FindingKind::NotADelegationTarget)
            .expect("a finding for the DC");
        assert!(
            f.summary.contains("DC1") && f.summary.contains("domain controller"),
            "{}",
            f.summary
        );
        assert_eq!(p.changes.len(), 2, "HV01 and HV02 still get each other: {p:#?}");
        for c in &p.changes {
            assert!(!c.dn.contains("DC1"));
            assert!(c.add.iter().all(|e| !e.to_lowercase().contains("dc1")), "{:?}", c.add);
        }
        assert!(!p.targets.contains("dc1.lab.test") && !p.targets.contains("dc1"));
    }

    /// The scenario: members listed by NetBIOS name; someone with
    /// write access to AC02 clears its SPNs and points its dNSHostName at
    /// the domain controller.
    #[test]
    fn a_dns_host_name_pointing_at_the_dc_gets_no_entries_anywhere() {
        let mut ac02 = computer("AC02", 4096, &[]);
        ac02.dns_host_name = Some("dc1.lab.test".into());
        ac02.spns.clear();
        let mut dc = computer("DC1", SERVER_TRUST_ACCOUNT, &[]);
        dc.dn = "CN=DC1,OU=Domain Controllers,DC=lab,DC=test".to_string();
        dc.spns = vec!["HOST/dc1.lab.test".into(), "HOST/DC1".into()];
        let mut obs = observed(vec![computer("AC01", 4096, &[]), ac02, computer("AC03", 4096, &[])]);
        obs.claims.holders = vec![dc];
        let p = plan(
            &[group("a", Mode::Enforce, &["AC01", "AC02", "AC03"], &[])],
            &scope(),
            &sfx(),
            &obs,
        );
        for c in &p.changes {
            assert!(
                c.add
                    .iter()
                    .all(|e| !e.to_lowercase().contains("dc1") && !e.to_lowercase().contains("ac02")),
                "{:?}",
                c.add
            );
            assert!(!c.dn.contains("AC02"));
        }
        let f = p
            .findings
            .iter()
            .find(|f| f.kind == FindingKind::HostIdentityConflict)
            .expect("an identity finding");
        assert!(f.summary.contains("AC02"), "{}", f.summary);
        assert!(
            f.evidence.contains(&("attribute".into(), "dNSHostName".into())),
            "{:?}",
            f.evidence
        );
        assert!(
            f.evidence
                .iter()
                .any(|(k, v)| k == "conflicting owner" && v.contains("DC1")),
            "{:?}",
            f.evidence
        );
    }

    #[test]
    fn a_file_server_name_held_by_a_dc_gets_no_entries() {
        let mut dc = computer("DC1", SERVER_TRUST_ACCOUNT, &[]);
        dc.dn = "CN=DC1,OU=Domain Controllers,DC=lab,DC=test".to_string();
        dc.spns = vec!["HOST/dc1.lab.test".into()];
        let mut obs = observed(vec![computer("HV01", 4096, &[]), computer("HV02", 4096, &[])]);
        obs.claims.holders = vec![dc];
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &["dc1.lab.test"])],
            &scope(),
            &sfx(),
            &obs,
        );
        assert!(p.changes.iter().all(|c| c.add.iter().all(|e| !e.contains("dc1"))));
        assert!(
            p.findings
                .iter()
                .any(|f| f.kind == FindingKind::NotADelegationTarget && f.host() == "dc1.lab.test")
        );
    }

    #[test]
    fn first_grants_wait_for_approval_unless_the_group_opts_out() {
        let mut g = group("a", Mode::Enforce, &["hv01", "hv02", "hv03"], &[]);
        g.first_grants = FirstGrants::Approve;
        // HV01 and HV02 are converged with each other; HV03 is a new member
        // (a pre-created computer object): it would gain protocol transition
        // and its first entries, the others gain entries to it.
        let obs = observed(vec![
            converged("HV01", &["HV02"]),
            converged("HV02", &["HV01"]),
            computer("HV03", 4096, &[]),
        ]);
        let p = plan(std::slice::from_ref(&g), &scope(), &sfx(), &obs);
        let gd = guard(
            &p.changes,
            &Guard {
                max_hosts_per_apply: 50,
            },
            std::slice::from_ref(&g),
        );
        assert_eq!(
            gd.held.iter().map(|c| c.host.as_str()).collect::<Vec<_>>(),
            ["hv03.lab.test"]
        );
        assert_eq!(gd.auto.len(), 2, "the existing members' additions go through");
        assert!(gd.reasons[0].contains("first delegation entries"), "{:?}", gd.reasons);
        g.first_grants = FirstGrants::Auto;
        let gd = guard(
            &p.changes,
            &Guard {
                max_hosts_per_apply: 50,
            },
            std::slice::from_ref(&g),
        );
        assert_eq!((gd.auto.len(), gd.held.len()), (3, 0));
    }

    #[test]
    fn ungrouped_and_missing_hosts_are_not_planned() {
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02", "hv09.lab.test"], &[])],
            &scope(),
            &sfx(),
            &observed(vec![
                computer("HV01", 4096, &[]),
                computer("HV02", 4096, &[]),
                computer("HV05", 4096, &[]),
            ]),
        );
        assert_eq!(p.changes.len(), 2);
        assert!(
            p.changes
                .iter()
                .all(|c| !c.add.iter().any(|e| e.to_lowercase().contains("hv09")))
        );
        assert!(
            p.findings
                .iter()
                .any(|f| f.kind == FindingKind::HostMissingFromAd && f.host() == "hv09.lab.test")
        );
    }

    #[test]
    fn ad_group_membership_adds_members_and_flags_outsiders() {
        let mut g = group("a", Mode::Enforce, &["hv01"], &[]);
        g.ad_group = Some(Dn::parse("CN=HV-Cluster,OU=Groups,DC=lab,DC=test").unwrap());
        let mut obs = observed(vec![computer("HV01", 4096, &[]), computer("HV02", 4096, &[])]);
        obs.ad_groups.insert(
            g.ad_group.as_ref().unwrap().normalized(),
            vec![format!("cn=hv02,{BASE}"), "CN=OUTSIDER,OU=Other,DC=lab,DC=test".into()],
        );
        let p = plan(&[g], &scope(), &sfx(), &obs);
        assert_eq!(p.changes.len(), 2);
        assert!(p.findings.iter().any(|f| f.kind == FindingKind::HostOutOfScope));
    }

    #[test]
    fn a_host_in_two_groups_gets_the_union_and_the_most_cautious_mode() {
        let p = plan(
            &[
                group("a", Mode::Enforce, &["hv01", "hv02"], &[]),
                group("b", Mode::Plan, &["hv01", "hv03"], &[]),
            ],
            &scope(),
            &sfx(),
            &observed(vec![
                computer("HV01", 4096, &[]),
                computer("HV02", 4096, &[]),
                computer("HV03", 4096, &[]),
            ]),
        );
        let hv01 = p.changes.iter().find(|c| c.host == "hv01.lab.test").unwrap();
        assert_eq!(hv01.add.len(), 8);
        assert_eq!(hv01.mode, Mode::Plan);
        assert_eq!(hv01.groups, vec!["a", "b"]);
        assert_eq!(
            p.changes.iter().find(|c| c.host == "hv02.lab.test").unwrap().mode,
            Mode::Enforce
        );
    }

    #[test]
    fn missing_peer_spns_are_reported() {
        let mut hv02 = computer("HV02", 4096, &[]);
        hv02.spns.retain(|s| !s.starts_with(MIGRATION_SERVICE));
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &[])],
            &scope(),
            &sfx(),
            &observed(vec![computer("HV01", 4096, &[]), hv02]),
        );
        assert!(
            p.findings
                .iter()
                .any(|f| f.kind == FindingKind::PeerSpnNotRegistered && f.host() == "hv02.lab.test")
        );
    }

    #[test]
    fn sensitive_enforcement_skips_the_migration_account_and_protected_ones() {
        use crate::model::{Account, Privileged};
        let p = |name: &str, uac: u32, protected_users: bool| Privileged {
            account: Account {
                name: name.into(),
                dn: format!("CN={name},CN=Users,DC=lab,DC=test"),
                uac,
                protected_users,
            },
            via: vec!["Domain Admins".into()],
        };
        let all = [
            p("admin1", 0x200, false),
            p("svc-migrate", 0x200, false),
            p("already", 0x200 | NOT_DELEGATED, false),
            p("protected", 0x200, true),
            p("disabled", 0x202, false),
        ];
        let c = sensitive_changes(&all, &["SVC-MIGRATE".into()]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].host, "admin1");
        assert_eq!(c[0].uac_after, Some(0x200 | NOT_DELEGATED));
        assert!(c[0].add.is_empty() && c[0].remove.is_empty());
    }

    #[test]
    fn intents_ignore_case_and_order() {
        let a = HostChange {
            host: "h".into(),
            dn: "CN=H,DC=x".into(),
            groups: vec![],
            mode: Mode::Enforce,
            uac_before: 4096,
            uac_after: None,
            add: vec!["cifs/A".into(), "cifs/b".into()],
            remove: vec![],
            entries_before: 0,
        };
        let b = HostChange {
            dn: "cn=h,dc=X".into(),
            add: vec!["CIFS/B".into(), "cifs/a".into()],
            ..a.clone()
        };
        assert_eq!(a.intent(), b.intent());
    }
}
