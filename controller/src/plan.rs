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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::config::{Group, Guard, Mode};
use crate::dn::Dn;
use crate::model::*;
use crate::names::HostName;

/// What one observe read from AD.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Computer objects inside the managed scope.
    pub computers: Vec<Computer>,
    /// Members (DNs) of each configured AD group, keyed by the group's
    /// normalized DN. A group that does not exist is absent.
    pub ad_groups: HashMap<String, Vec<String>>,
    /// Privileged accounts, read only when sensitive-account enforcement
    /// is on.
    pub privileged: Vec<crate::diagnose::Privileged>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "group `{group}` lists `{host}`, which is a domain controller ({dn}); kcdsync never writes domain controllers: remove it from the group"
    )]
    DomainControllerInGroup { group: String, host: String, dn: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    HostMissingFromAd,
    HostOutOfScope,
    AdGroupMissing,
    ComputerAccountDisabled,
    PeerSpnNotRegistered,
    UnconstrainedDelegation,
    ProtocolTransitionMissing,
    DelegationEntryMissing,
    StaleDelegationEntry,
}

/// Something an operator should know about; planning never fails for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub host: String,
    pub detail: String,
}

/// One LDAP modify on one computer object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChange {
    pub host: String,
    pub dn: String,
    pub groups: Vec<String>,
    pub mode: Mode,
    pub uac_before: u32,
    /// `None` when userAccountControl stays as it is.
    pub uac_after: Option<u32>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
    pub reasons: Vec<String>,
}

impl HostChange {
    /// Takes something away (entries, or unconstrained delegation) and so
    /// needs approval.
    pub fn is_subtractive(&self) -> bool {
        !self.remove.is_empty() || self.uac_after.is_some_and(|a| self.uac_before & !a != 0)
    }

    /// The part that only adds: entries and the protocol-transition bit.
    pub fn additive_part(&self) -> Option<HostChange> {
        let uac = self.uac_before | (self.uac_after.unwrap_or(self.uac_before) & TRUSTED_TO_AUTH_FOR_DELEGATION);
        let uac_after = (uac != self.uac_before).then_some(uac);
        if self.add.is_empty() && uac_after.is_none() {
            return None;
        }
        Some(HostChange {
            uac_after,
            remove: Vec::new(),
            reasons: self
                .reasons
                .iter()
                .filter(|r| !r.starts_with("remove") && !r.starts_with("clear"))
                .cloned()
                .collect(),
            ..self.clone()
        })
    }

    /// The part that takes away, on top of the additive part.
    fn subtractive_part(&self) -> Option<HostChange> {
        if !self.is_subtractive() {
            return None;
        }
        let base = self
            .additive_part()
            .and_then(|a| a.uac_after)
            .unwrap_or(self.uac_before);
        let after = self.uac_after.unwrap_or(self.uac_before);
        Some(HostChange {
            uac_before: base,
            uac_after: (after != base).then_some(after),
            add: Vec::new(),
            reasons: self
                .reasons
                .iter()
                .filter(|r| r.starts_with("remove") || r.starts_with("clear"))
                .cloned()
                .collect(),
            ..self.clone()
        })
    }

    /// What this change means, independent of the exact casing and order
    /// of values: used to check that an approved plan still matches AD.
    pub fn intent(&self) -> Intent {
        let after = self.uac_after.unwrap_or(self.uac_before);
        Intent {
            dn: Dn::parse(&self.dn)
                .map(|d| d.normalized())
                .unwrap_or_else(|_| self.dn.to_lowercase()),
            add: self.add.iter().map(|s| spn_key(s)).collect(),
            remove: self.remove.iter().map(|s| spn_key(s)).collect(),
            set_bits: after & !self.uac_before,
            clear_bits: self.uac_before & !after,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Intent {
    pub dn: String,
    pub add: BTreeSet<String>,
    pub remove: BTreeSet<String>,
    pub set_bits: u32,
    pub clear_bits: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Sorted by DN, at most one per host.
    pub changes: Vec<HostChange>,
    pub findings: Vec<Finding>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Computers of one observe by name and by DN; names compare
/// case-insensitively.
pub struct Index {
    by_fqdn: HashMap<String, usize>,
    by_netbios: HashMap<String, usize>,
    by_dn: HashMap<String, usize>,
}

impl Index {
    pub fn new(observed: &Observed) -> Index {
        let mut ix = Index {
            by_fqdn: HashMap::new(),
            by_netbios: HashMap::new(),
            by_dn: HashMap::new(),
        };
        for (i, c) in observed.computers.iter().enumerate() {
            if let Some(f) = c.fqdn() {
                ix.by_fqdn.insert(f, i);
            }
            ix.by_netbios.insert(c.netbios(), i);
            if let Ok(dn) = Dn::parse(&c.dn) {
                ix.by_dn.insert(dn.normalized(), i);
            }
        }
        ix
    }

    /// The computer an FQDN or NetBIOS name refers to.
    pub fn find(&self, name: &HostName) -> Option<usize> {
        match name {
            HostName::Fqdn(f) => self.by_fqdn.get(f).copied(),
            HostName::Netbios(n) => self.by_netbios.get(n).copied(),
        }
    }

    pub fn find_dn(&self, dn: &str) -> Option<usize> {
        let key = Dn::parse(dn)
            .map(|d| d.normalized())
            .unwrap_or_else(|_| dn.to_lowercase());
        self.by_dn.get(&key).copied()
    }
}

/// A grouped host, resolved against AD: its index in `Observed::computers`.
#[derive(Clone, Copy)]
struct Member<'a> {
    idx: usize,
    computer: &'a Computer,
}

fn desired_entries_for(peer_fqdn: Option<&str>, peer_netbios: &str, classes: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for class in classes {
        if let Some(f) = peer_fqdn {
            out.push(format!("{class}/{f}"));
        }
        out.push(format!("{class}/{peer_netbios}"));
    }
    out
}

fn add_member<'a>(
    g: &Group,
    observed: &'a Observed,
    idx: usize,
    members: &mut Vec<Member<'a>>,
) -> Result<(), PlanError> {
    let c = &observed.computers[idx];
    if c.is_domain_controller() {
        return Err(PlanError::DomainControllerInGroup {
            group: g.name.clone(),
            host: c.display_name(),
            dn: c.dn.clone(),
        });
    }
    if !members.iter().any(|m| m.idx == idx) {
        members.push(Member { idx, computer: c });
    }
    Ok(())
}

/// Computes the changes that make AD match the configured groups.
pub fn plan(groups: &[Group], scope: &[Dn], observed: &Observed) -> Result<Plan, PlanError> {
    let mut findings = Vec::new();

    let index = Index::new(observed);

    // Every name of every computer in scope, plus the file servers: an entry
    // pointing at one of these with a migration service class is ours.
    let mut managed_targets: BTreeSet<String> = BTreeSet::new();
    for c in &observed.computers {
        if let Some(f) = c.fqdn() {
            managed_targets.insert(f);
        }
        managed_targets.insert(c.netbios().to_lowercase());
    }

    // The four entries that delegate to each computer, built once: every
    // peer of a host points at the same list instead of building its own.
    let entries_of: Vec<Vec<(String, String)>> = observed
        .computers
        .iter()
        .map(|c| {
            desired_entries_for(c.fqdn().as_deref(), &c.netbios(), &[MIGRATION_SERVICE, CIFS])
                .into_iter()
                .map(|e| (spn_key(&e), e))
                .collect()
        })
        .collect();
    let mut file_server_entries: Vec<Vec<(String, String)>> = Vec::new();

    // Resolve members: dn -> (member, groups, mode, peers, file servers).
    struct Want<'a> {
        member: Member<'a>,
        groups: Vec<String>,
        mode: Mode,
        peers: BTreeSet<usize>,
        file_servers: Vec<usize>,
    }
    let mut wants: BTreeMap<String, Want> = BTreeMap::new();

    for g in groups {
        let mut members: Vec<Member> = Vec::new();
        for h in &g.hosts {
            match index.find(h) {
                Some(i) => add_member(g, observed, i, &mut members)?,
                None => findings.push(Finding {
                    kind: FindingKind::HostMissingFromAd,
                    host: h.to_string(),
                    detail: format!(
                        "group `{}` lists {h}, but no computer object with that name is in the managed scope ({}); it gets no delegation and its peers get no entries for it",
                        g.name,
                        scope.iter().map(|d| d.as_str()).collect::<Vec<_>>().join("; ")
                    ),
                }),
            }
        }
        if let Some(adg) = &g.ad_group {
            match observed.ad_groups.get(&adg.normalized()) {
                None => findings.push(Finding {
                    kind: FindingKind::AdGroupMissing,
                    host: String::new(),
                    detail: format!("group `{}`: AD group {adg} does not exist or cannot be read", g.name),
                }),
                Some(dns) => {
                    for m in dns {
                        match index.find_dn(m) {
                            Some(i) => add_member(g, observed, i, &mut members)?,
                            None => findings.push(Finding {
                                kind: FindingKind::HostOutOfScope,
                                host: m.clone(),
                                detail: format!(
                                    "AD group {adg} (group `{}`) has member {m}, which is not a computer inside the managed scope; it is left alone",
                                    g.name
                                ),
                            }),
                        }
                    }
                }
            }
        }

        let mut group_file_servers = Vec::new();
        for fs in &g.file_servers {
            let netbios = index
                .find(fs)
                .map(|i| observed.computers[i].netbios())
                .unwrap_or_else(|| fs.derived_netbios());
            managed_targets.insert(fs.as_str().to_owned());
            managed_targets.insert(netbios.to_lowercase());
            file_server_entries.push(
                desired_entries_for(Some(fs.as_str()), &netbios, &[CIFS])
                    .into_iter()
                    .map(|e| (spn_key(&e), e))
                    .collect(),
            );
            group_file_servers.push(file_server_entries.len() - 1);
        }

        for m in &members {
            let c = m.computer;
            if c.uac & ACCOUNTDISABLE != 0 {
                findings.push(Finding {
                    kind: FindingKind::ComputerAccountDisabled,
                    host: c.display_name(),
                    detail: format!("{} is disabled in AD; it cannot take part in migrations", c.dn),
                });
            }
            let want = wants.entry(c.dn.clone()).or_insert_with(|| Want {
                member: *m,
                groups: Vec::new(),
                mode: g.mode,
                peers: BTreeSet::new(),
                file_servers: Vec::new(),
            });
            want.groups.push(g.name.clone());
            // A host in several groups follows the most cautious mode.
            want.mode = want.mode.min(g.mode);
            want.peers
                .extend(members.iter().filter(|p| p.idx != m.idx).map(|p| p.idx));
            want.file_servers.extend(&group_file_servers);
        }

        // A peer that lacks the SPNs cannot be delegated to, whatever the
        // source says.
        for p in &members {
            let mut missing: Vec<String> = entries_of[p.idx]
                .iter()
                .map(|(_, e)| e)
                .filter(|s| !p.computer.has_spn(s))
                .cloned()
                .collect();
            if !missing.is_empty() && members.len() > 1 {
                missing.sort();
                findings.push(Finding {
                    kind: FindingKind::PeerSpnNotRegistered,
                    host: p.computer.display_name(),
                    detail: format!(
                        "{} lacks servicePrincipalName {}; migrations to it cannot use Kerberos until the host registers them (Hyper-V registers the migration SPNs when VMMS starts)",
                        p.computer.display_name(),
                        missing.join(", ")
                    ),
                });
            }
        }
    }

    let mut changes = Vec::new();
    for want in wants.values() {
        let c = want.member.computer;
        let desired: HashMap<&str, &str> = want
            .peers
            .iter()
            .flat_map(|p| &entries_of[*p])
            .chain(want.file_servers.iter().flat_map(|f| &file_server_entries[*f]))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let current: Vec<(String, &String)> = c.allowed_to_delegate_to.iter().map(|s| (spn_key(s), s)).collect();
        let current_keys: HashSet<&str> = current.iter().map(|(k, _)| k.as_str()).collect();
        let mut add: Vec<(&str, &str)> = desired
            .iter()
            .filter(|(k, _)| !current_keys.contains(*k))
            .map(|(k, v)| (*k, *v))
            .collect();
        add.sort_unstable();
        let add: Vec<String> = add.into_iter().map(|(_, v)| v.to_owned()).collect();
        let remove: Vec<String> = current
            .iter()
            .filter(|(k, e)| {
                if desired.contains_key(k.as_str()) {
                    return false;
                }
                let Some((class, host)) = spn_parts(e) else {
                    return false;
                };
                is_migration_class(class) && managed_targets.contains(&host.to_lowercase())
            })
            .map(|(_, e)| (*e).clone())
            .collect();
        let uac_after = (c.uac | TRUSTED_TO_AUTH_FOR_DELEGATION) & !TRUSTED_FOR_DELEGATION;

        let mut reasons = Vec::new();
        if c.uac & TRUSTED_TO_AUTH_FOR_DELEGATION == 0 {
            reasons.push("set protocol transition (use any authentication protocol)".to_owned());
        }
        if !add.is_empty() {
            reasons.push(format!("add {} delegation entries for group peers", add.len()));
        }
        if !remove.is_empty() {
            reasons.push(format!(
                "remove {} entries to hosts no longer in a shared group",
                remove.len()
            ));
        }
        if c.uac & TRUSTED_FOR_DELEGATION != 0 {
            findings.push(Finding {
                kind: FindingKind::UnconstrainedDelegation,
                host: c.display_name(),
                detail: format!(
                    "{} has unconstrained delegation (0x80000); kcdsync clears it after approval",
                    c.dn
                ),
            });
            reasons.push("clear unconstrained delegation (0x80000)".to_owned());
        }
        if reasons.is_empty() {
            continue;
        }
        let mut groups = want.groups.clone();
        groups.sort();
        groups.dedup();
        changes.push(HostChange {
            host: c.display_name(),
            dn: c.dn.clone(),
            groups,
            mode: want.mode,
            uac_before: c.uac,
            uac_after: (uac_after != c.uac).then_some(uac_after),
            add,
            remove,
            reasons,
        });
    }
    findings.sort_by(|a, b| (a.kind, &a.host).cmp(&(b.kind, &b.host)));
    Ok(Plan { changes, findings })
}

/// The guard's verdict on the enforce-mode changes of a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guarded {
    /// Safe to write now.
    pub auto: Vec<HostChange>,
    /// Waiting for approval.
    pub held: Vec<HostChange>,
    /// Why `held` is held, in words for the operator.
    pub reasons: Vec<String>,
}

/// Applies the blast-radius guard: anything that takes away waits for
/// approval, and so does everything when more hosts would change than the
/// guard allows.
pub fn guard(changes: &[HostChange], guard: &Guard) -> Guarded {
    let additive: Vec<HostChange> = changes.iter().filter_map(HostChange::additive_part).collect();
    let subtractive: Vec<HostChange> = changes.iter().filter_map(HostChange::subtractive_part).collect();
    let mut out = Guarded::default();
    if additive.len() > guard.max_hosts_per_apply {
        out.reasons.push(format!(
            "would change {} hosts, more than guard.max_hosts_per_apply = {}",
            additive.len(),
            guard.max_hosts_per_apply
        ));
        out.held = changes.to_vec();
    } else {
        out.auto = additive;
        out.held = subtractive;
    }
    let removals: usize = changes.iter().map(|c| c.remove.len()).sum();
    if removals > 0 {
        let hosts = changes.iter().filter(|c| !c.remove.is_empty()).count();
        out.reasons
            .push(format!("removes {removals} delegation entries on {hosts} hosts"));
    }
    let cleared = changes
        .iter()
        .filter(|c| {
            c.uac_before & TRUSTED_FOR_DELEGATION != 0 && c.uac_after.is_some_and(|a| a & TRUSTED_FOR_DELEGATION == 0)
        })
        .count();
    if cleared > 0 {
        out.reasons
            .push(format!("clears unconstrained delegation on {cleared} hosts"));
    }
    out
}

/// Opt-in enforcement: mark every privileged account "sensitive and cannot
/// be delegated", except the accounts that run migrations (they must stay
/// delegatable) and accounts already protected. Each change only sets
/// NOT_DELEGATED and always waits for approval.
pub fn sensitive_changes(privileged: &[crate::diagnose::Privileged], migration_accounts: &[String]) -> Vec<HostChange> {
    let mut out: Vec<HostChange> = privileged
        .iter()
        .filter(|p| {
            let a = &p.account;
            a.uac & NOT_DELEGATED == 0
                && !a.protected_users
                && a.uac & ACCOUNTDISABLE == 0
                && !migration_accounts.iter().any(|m| m.eq_ignore_ascii_case(&a.name))
        })
        .map(|p| HostChange {
            host: p.account.name.clone(),
            dn: p.account.dn.clone(),
            groups: p.via.clone(),
            mode: Mode::Enforce,
            uac_before: p.account.uac,
            uac_after: Some(p.account.uac | NOT_DELEGATED),
            add: Vec::new(),
            remove: Vec::new(),
            reasons: vec![format!(
                "mark sensitive and cannot be delegated (privileged via {})",
                p.via.join(", ")
            )],
        })
        .collect();
    out.sort_by(|a, b| a.dn.cmp(&b.dn));
    out
}

/// The intents of a set of changes, sorted: equal sets mean the same plan.
pub fn intents(changes: &[HostChange]) -> Vec<Intent> {
    let mut v: Vec<Intent> = changes.iter().map(HostChange::intent).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "OU=Hyper-V,DC=lab,DC=test";

    fn computer(name: &str, uac: u32, delegate: &[&str]) -> Computer {
        let lower = name.to_lowercase();
        Computer {
            dn: format!("CN={name},{BASE}"),
            sam_account_name: format!("{name}$"),
            dns_host_name: Some(format!("{lower}.lab.test")),
            uac,
            allowed_to_delegate_to: delegate.iter().map(|s| s.to_string()).collect(),
            spns: vec![
                format!("{MIGRATION_SERVICE}/{lower}.lab.test"),
                format!("{MIGRATION_SERVICE}/{name}"),
                format!("cifs/{lower}.lab.test"),
                format!("cifs/{name}"),
            ],
            usn_changed: 1,
        }
    }

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

    fn entries_to(peer: &str) -> Vec<String> {
        let lower = peer.to_lowercase();
        vec![
            format!("{MIGRATION_SERVICE}/{lower}.lab.test"),
            format!("{MIGRATION_SERVICE}/{peer}"),
            format!("cifs/{lower}.lab.test"),
            format!("cifs/{peer}"),
        ]
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
                .any(|f| f.kind == FindingKind::HostMissingFromAd && f.host == "hv09.lab.test")
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
                .any(|f| f.kind == FindingKind::PeerSpnNotRegistered && f.host == "hv02.lab.test")
        );
    }

    #[test]
    fn sensitive_enforcement_skips_the_migration_account_and_protected_ones() {
        use crate::diagnose::{Account, Privileged};
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
            reasons: vec![],
        };
        let b = HostChange {
            dn: "cn=h,dc=X".into(),
            add: vec!["CIFS/B".into(), "cifs/a".into()],
            ..a.clone()
        };
        assert_eq!(a.intent(), b.intent());
    }
}
