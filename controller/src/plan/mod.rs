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
//! - `diff`: one host's change;
//! - `guard`: what may be written without approval.

mod diff;
mod guard;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

pub use guard::{Guarded, guard, sensitive_changes};

use crate::config::{Group, Mode};
use crate::model::dn::Dn;
use crate::model::*;
use diff::{Entry, Want, entries_to, entries_to_computer};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "group `{group}` lists `{host}`, which is a domain controller ({dn}); kcdsync never writes domain controllers: remove it from the group"
    )]
    DomainControllerInGroup { group: String, host: String, dn: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Sorted by DN, at most one per host.
    pub changes: Vec<HostChange>,
    /// Planning never fails for these; sorted by kind and host.
    pub findings: Vec<Finding>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Computes the changes that make AD match the configured groups.
pub fn plan(groups: &[Group], scope: &[Dn], observed: &Observed) -> Result<Plan, PlanError> {
    let index = Index::new(observed);
    let mut planner = Planner::new(observed, &index, scope);
    for g in groups {
        planner.group(g)?;
    }
    Ok(planner.finish())
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
        let mut managed_targets = BTreeSet::new();
        for c in &observed.computers {
            if let Some(f) = c.fqdn() {
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
            wants: BTreeMap::new(),
        }
    }

    fn group(&mut self, g: &Group) -> Result<(), PlanError> {
        let members = self.members(g)?;
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
        }
        Ok(())
    }

    /// The group's computers; what cannot be resolved becomes a finding.
    fn members(&mut self, g: &Group) -> Result<Vec<usize>, PlanError> {
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
        for &i in &m.computers {
            let c = &self.observed.computers[i];
            if c.is_domain_controller() {
                return Err(PlanError::DomainControllerInGroup {
                    group: g.name.clone(),
                    host: c.display_name(),
                    dn: c.dn.clone(),
                });
            }
        }
        Ok(m.computers)
    }

    /// The `cifs/` entries for the group's file servers; their names become managed.
    fn file_servers(&mut self, g: &Group) -> Vec<usize> {
        let mut out = Vec::new();
        for fs in &g.file_servers {
            let netbios = self
                .index
                .find(fs)
                .map(|i| self.observed.computers[i].netbios())
                .unwrap_or_else(|| fs.derived_netbios());
            self.managed_targets.insert(fs.as_str().to_owned());
            self.managed_targets.insert(netbios.to_lowercase());
            self.file_server_entries
                .push(entries_to(Some(fs.as_str()), &netbios, &[CIFS]));
            out.push(self.file_server_entries.len() - 1);
        }
        out
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Guard;
    use crate::model::fixtures::{BASE, computer, entries_to};
    use crate::model::names::HostName;

    fn group(name: &str, mode: Mode, hosts: &[&str], file_servers: &[&str]) -> Group {
        Group {
            name: name.into(),
            mode,
            hosts: hosts.iter().map(|h| HostName::parse(h).unwrap()).collect(),
            ad_group: None,
            file_servers: file_servers.iter().map(|h| HostName::parse(h).unwrap()).collect(),
        }
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
            ad_groups: HashMap::new(),
            privileged: Vec::new(),
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
            &observed(vec![hv01, hv02]),
        )
        .unwrap();
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
            &observed(vec![
                converged("HV01", &["HV02", "HV03"]),
                converged("HV02", &["HV01", "HV03"]),
                converged("HV03", &["HV01", "HV02"]),
            ]),
        )
        .unwrap();
        assert!(p.is_noop(), "{p:#?}");
    }

    #[test]
    fn every_peer_gets_four_entries_and_file_servers_two() {
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02", "hv03"], &["fs01.lab.test"])],
            &scope(),
            &observed(vec![
                computer("HV01", 4096, &[]),
                computer("HV02", 4096, &[]),
                computer("HV03", 4096, &[]),
            ]),
        )
        .unwrap();
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
            &observed(vec![hv01, converged("HV02", &["HV01"])]),
        )
        .unwrap();
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
            &observed(vec![hv01, converged("HV02", &["HV01"]), computer("HV03", 4096, &[])]),
        )
        .unwrap();
        assert_eq!(p.changes.len(), 1);
        assert!(p.changes[0].remove.is_empty(), "{:?}", p.changes[0].remove);
    }

    #[test]
    fn entries_to_a_host_that_left_the_group_are_removed_and_held() {
        // HV03 left the group; HV01 and HV02 still point at it.
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &[])],
            &scope(),
            &observed(vec![
                converged("HV01", &["HV02", "HV03"]),
                converged("HV02", &["HV01", "HV03"]),
                converged("HV03", &["HV01", "HV02"]),
            ]),
        )
        .unwrap();
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
            &observed(vec![hv01, converged("HV02", &["HV01"]), computer("HV03", 4096, &[])]),
        )
        .unwrap();
        let c = &p.changes[0];
        assert!(!c.add.is_empty() && !c.remove.is_empty());
        let g = guard(
            &p.changes,
            &Guard {
                max_hosts_per_apply: 50,
            },
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
            &observed(names.iter().map(|n| computer(n, 4096, &[])).collect()),
        )
        .unwrap();
        let g = guard(&p.changes, &Guard { max_hosts_per_apply: 4 });
        assert!(g.auto.is_empty());
        assert_eq!(g.held.len(), 5);
        assert!(g.reasons[0].contains("would change 5 hosts"));
        let g = guard(&p.changes, &Guard { max_hosts_per_apply: 5 });
        assert_eq!((g.auto.len(), g.held.len()), (5, 0));
    }

    #[test]
    fn unconstrained_delegation_is_cleared_only_with_approval_and_never_set() {
        let mut hv01 = converged("HV01", &["HV02"]);
        hv01.uac |= TRUSTED_FOR_DELEGATION;
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &[])],
            &scope(),
            &observed(vec![hv01, converged("HV02", &["HV01"])]),
        )
        .unwrap();
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
        );
        assert!(g.auto.is_empty());
        assert_eq!(g.held.len(), 1);
        for c in plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02"], &[])],
            &scope(),
            &observed(vec![computer("HV01", 4096, &[]), computer("HV02", 4096, &[])]),
        )
        .unwrap()
        .changes
        {
            assert_eq!(c.uac_after.unwrap() & TRUSTED_FOR_DELEGATION, 0);
        }
    }

    #[test]
    fn a_domain_controller_in_a_group_is_an_error() {
        let mut dc = computer("DC1", SERVER_TRUST_ACCOUNT | TRUSTED_FOR_DELEGATION, &[]);
        dc.dn = "CN=DC1,OU=Domain Controllers,DC=lab,DC=test".to_string();
        let e = plan(
            &[group("a", Mode::Enforce, &["hv01", "dc1"], &[])],
            &scope(),
            &observed(vec![computer("HV01", 4096, &[]), dc]),
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::DomainControllerInGroup { .. }));
        assert!(e.to_string().contains("dc1.lab.test"), "{e}");
    }

    #[test]
    fn ungrouped_and_missing_hosts_are_not_planned() {
        let p = plan(
            &[group("a", Mode::Enforce, &["hv01", "hv02", "hv09.lab.test"], &[])],
            &scope(),
            &observed(vec![
                computer("HV01", 4096, &[]),
                computer("HV02", 4096, &[]),
                computer("HV05", 4096, &[]),
            ]),
        )
        .unwrap();
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
        let p = plan(&[g], &scope(), &obs).unwrap();
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
            &observed(vec![
                computer("HV01", 4096, &[]),
                computer("HV02", 4096, &[]),
                computer("HV03", 4096, &[]),
            ]),
        )
        .unwrap();
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
            &observed(vec![computer("HV01", 4096, &[]), hv02]),
        )
        .unwrap();
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
        };
        let b = HostChange {
            dn: "cn=h,dc=X".into(),
            add: vec!["CIFS/B".into(), "cifs/a".into()],
            ..a.clone()
        };
        assert_eq!(a.intent(), b.intent());
    }
}
