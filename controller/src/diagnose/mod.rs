//! Diagnosis: a pure function of what AD says and what agents report, to
//! findings (each with its evidence and remediation) and to readiness —
//! "will a live migration from A to B, run as this account, authenticate?".
//! No I/O happens here.
//!
//! - `facts`: what diagnosis reads (gathered by `view::Snapshot`);
//! - `host`: one host's account, agent liveness, settings, services, tickets;
//! - `source`: what a source needs in AD to delegate to a destination;
//! - `account`: who is delegated (the migrating account, privileged ones, krbtgt);
//! - `initiator`: what the machine running Move-VM needs when it is not the source.
//!
//! The finding type and its kinds live in `model` (planning raises some too).

mod account;
mod facts;
mod host;
mod initiator;
mod source;

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;

pub use crate::model::{Account, Finding, FindingKind, Privileged, Severity};
pub use facts::{Facts, HostFacts, Policy};
pub use initiator::{Initiator, pick as pick_initiator};

use crate::model::{ATTR_DELEGATE_TO, CIFS, Computer, FindingKind as Kind, spn_key};
use host::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub readiness: Readiness,
    pub blocking: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub summary: String,
}

/// Will a live migration from `source` to `destination`, started by
/// `account` on the source, authenticate?
pub fn check_migration(facts: &Facts, source: &str, destination: &str, account: &Account) -> Verdict {
    check_migration_from(facts, &Initiator::Source, source, destination, account)
}

/// [`check_migration`] with Move-VM run on `initiator`: a machine other
/// than the source must also be allowed to delegate to the source.
pub fn check_migration_from(
    facts: &Facts,
    initiator: &Initiator,
    source: &str,
    destination: &str,
    account: &Account,
) -> Verdict {
    let mut found = Vec::new();
    let src = facts.computer(source);
    let dst = facts.computer(destination);
    for (name, c) in [(source, src), (destination, dst)] {
        if c.is_none() {
            found.push(
                Finding::new(
                    Kind::HostMissingFromAd,
                    Severity::Critical,
                    &[name],
                    "",
                    format!("{name} is not a computer inside the managed scope"),
                )
                .fix("check the name, or widen scope.base_dns", false),
            );
        }
    }
    found.extend([src, dst].into_iter().flatten().filter_map(|c| facts.refusal(c)));
    if let (Some(s), Some(d)) = (src, dst) {
        found.extend(facts.source_findings(s, d));
        found.extend(facts.host_findings(
            s,
            Role {
                source: true,
                destination: false,
            },
        ));
        found.extend(facts.host_findings(
            d,
            Role {
                source: false,
                destination: true,
            },
        ));
    }
    if let Some(s) = src {
        found.extend(initiator::initiator_findings(initiator, s));
    }
    found.extend(facts.account_findings(account));
    found.extend(facts.krbtgt_finding());
    let mut what = format!("{source} -> {destination} as {}", account.name);
    if let Some(i) = initiator.name() {
        what.push_str(&format!(" from {i}"));
    }
    verdict(found, what)
}

/// Ready when no finding is critical; the summary says why not.
fn verdict(found: Vec<Finding>, what: String) -> Verdict {
    let (blocking, warnings): (Vec<Finding>, Vec<Finding>) =
        found.into_iter().partition(|f| f.severity == Severity::Critical);
    let readiness = if blocking.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady
    };
    let summary = match readiness {
        Readiness::Ready => format!("{what}: ready"),
        Readiness::NotReady => format!(
            "{what}: not ready: {}",
            blocking
                .iter()
                .map(|f| f.summary.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    Verdict {
        readiness,
        blocking,
        warnings,
        summary,
    }
}

/// Fleet-wide findings for the configured groups, plus the account-level
/// ones (privileged accounts that can be delegated, a sensitive krbtgt).
pub fn fleet_findings(facts: &Facts) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    let mut seen_hosts: BTreeSet<usize> = BTreeSet::new();
    for g in facts.groups {
        let m = g.resolve(facts.observed, facts.index);
        for h in &m.missing {
            out.push(
                Finding::new(
                    Kind::HostMissingFromAd,
                    Severity::Warning,
                    &[h.as_str()],
                    "",
                    format!(
                        "group `{}` lists {h}, which is not in AD (or not in the managed scope)",
                        g.name
                    ),
                )
                .fix("correct the group's host list or widen scope.base_dns", false),
            );
        }
        for &i in &m.refused {
            let c = &facts.observed.computers[i];
            out.extend(facts.refusal(c).map(|f| f.evidence("group", g.name.clone())));
        }
        let members = m.sorted();
        for &i in &members {
            let c = &facts.observed.computers[i];
            if seen_hosts.insert(i) {
                out.extend(facts.host_findings(
                    c,
                    Role {
                        source: true,
                        destination: true,
                    },
                ));
            }
            for &p in members.iter().filter(|&&p| p != i) {
                out.extend(facts.source_findings(c, &facts.observed.computers[p]));
            }
            out.extend(file_server_findings(c, g));
        }
    }
    out.extend(facts.privileged_findings());
    out.extend(facts.krbtgt_finding());
    // Dangerous delegation edges, whoever wrote them.
    out.extend(crate::exposure::findings(&crate::exposure::exposure(
        &facts.exposure_inputs(),
    )));
    // One finding per id: a pair may come up through two groups.
    let mut ids = HashSet::new();
    out.retain(|f| ids.insert(f.id.clone()));
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.id.cmp(&b.id)));
    out
}

/// A member that may not delegate to its group's file servers cannot move
/// VMs stored on their SMB shares.
fn file_server_findings(c: &Computer, g: &crate::config::Group) -> Vec<Finding> {
    let have: BTreeSet<String> = c.allowed_to_delegate_to.iter().map(|e| spn_key(e)).collect();
    let mut out = Vec::new();
    for fs in &g.file_servers {
        let want = format!("{CIFS}/{}", fs.as_str());
        if have.contains(&spn_key(&want)) {
            continue;
        }
        let h = c.display_name();
        out.push(
            Finding::new(
                Kind::FileServerEntryMissing,
                Severity::Critical,
                &[&h, fs.as_str()],
                "",
                format!("{h} may not delegate to file server {fs}: VMs on its SMB shares cannot move"),
            )
            .evidence(ATTR_DELEGATE_TO, format!("missing {want}"))
            .fix(
                "kcdsync adds the cifs/ entries for the group's file servers in enforce mode",
                true,
            ),
        );
    }
    out
}

/// A source whose KDC does not have kcdsync's last change yet (an `AwaitingReplication`
/// finding of the per-DC verify) is not ready now, whatever AD on the written DC says: that
/// KDC refuses until it replicates. The answer says so instead of "ready".
pub fn awaiting_replication(v: &mut Verdict, findings: &[Finding], source: &str) {
    let names = |h: &str| {
        h.eq_ignore_ascii_case(source)
            || (!source.contains('.') && h.split('.').next().is_some_and(|l| l.eq_ignore_ascii_case(source)))
    };
    let Some(f) = findings
        .iter()
        .find(|f| f.kind == FindingKind::AwaitingReplication && f.hosts.iter().any(|h| names(h)))
    else {
        return;
    };
    v.summary = if v.readiness == Readiness::Ready {
        f.summary.clone()
    } else {
        format!("{}; and {}", v.summary, f.summary)
    };
    v.readiness = Readiness::NotReady;
    v.blocking.push(f.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_whose_kdc_has_not_replicated_is_ready_only_once_it_has() {
        let ready = || Verdict {
            readiness: Readiness::Ready,
            blocking: vec![],
            warnings: vec![],
            summary: "ready".into(),
        };
        let waiting = Finding::new(
            FindingKind::AwaitingReplication,
            Severity::Critical,
            &["hv01.contoso.com"],
            "",
            "ready once dc2.contoso.com replicates: …".into(),
        );
        for source in ["hv01.contoso.com", "HV01"] {
            let mut v = ready();
            awaiting_replication(&mut v, std::slice::from_ref(&waiting), source);
            assert_eq!(v.readiness, Readiness::NotReady, "{source}");
            assert!(
                v.summary.starts_with("ready once dc2.contoso.com replicates"),
                "{}",
                v.summary
            );
            assert_eq!(v.blocking, vec![waiting.clone()]);
        }
        // Another host's wait, or none, changes nothing.
        for source in ["hv02.contoso.com", "HV0"] {
            let mut v = ready();
            awaiting_replication(&mut v, std::slice::from_ref(&waiting), source);
            assert_eq!(v, ready(), "{source}");
        }
    }
    use crate::config::Group;
    use crate::config::Mode;
    use crate::model::fixtures::{self, delegating};
    use crate::model::names::HostName;
    use crate::model::*;
    use kcdsync_proto::v1::{HostIdentity, KerberosTicket, MigrationSettings, ServiceStatus, StartMode};
    use kcdsync_proto::v1::{HostReport, MigrationAuthType, ServiceState};
    use std::collections::HashMap;

    const GOOD: u32 = WORKSTATION_TRUST_ACCOUNT | TRUSTED_TO_AUTH_FOR_DELEGATION;

    fn alice() -> Account {
        Account {
            name: "alice".into(),
            dn: "CN=alice,CN=Users,DC=lab,DC=test".into(),
            uac: 0x200,
            protected_users: false,
        }
    }

    fn report(build: u32) -> HostReport {
        HostReport {
            identity: Some(HostIdentity {
                os_build: build,
                ..Default::default()
            }),
            services: vec![
                ServiceStatus {
                    name: "vmms".into(),
                    state: ServiceState::Running as i32,
                    start_mode: StartMode::Automatic as i32,
                },
                ServiceStatus {
                    name: "WinRM".into(),
                    state: ServiceState::Running as i32,
                    start_mode: StartMode::Automatic as i32,
                },
            ],
            migration: Some(MigrationSettings {
                enabled: true,
                authentication_type: MigrationAuthType::Kerberos as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    struct World {
        observed: Observed,
        index: Index,
        hosts: HashMap<String, HostFacts>,
        privileged: Vec<Privileged>,
        outside: Outside,
        krbtgt: Option<u32>,
        changes: HashMap<String, i64>,
        groups: Vec<Group>,
    }

    impl World {
        fn new(computers: Vec<Computer>) -> World {
            let names: Vec<String> = computers.iter().map(|c| c.netbios()).collect();
            let observed = Observed {
                computers,
                ..Default::default()
            };
            World {
                index: Index::new(&observed, &["lab.test".to_owned()]),
                observed,
                hosts: HashMap::new(),
                privileged: Vec::new(),
                outside: Outside::default(),
                krbtgt: Some(0x202),
                changes: HashMap::new(),
                groups: vec![Group {
                    name: "g".into(),
                    mode: Mode::Enforce,
                    hosts: names.iter().map(|n| HostName::parse(n).unwrap()).collect(),
                    ad_group: None,
                    file_servers: Vec::new(),
                    first_grants: Default::default(),
                }],
            }
        }

        fn with_report(mut self, host: &str, r: HostReport) -> World {
            self.hosts.insert(
                host.into(),
                HostFacts {
                    report: Some(r),
                    last_seen_ms: Some(1_000_000),
                },
            );
            self
        }

        fn facts(&self) -> Facts<'_> {
            Facts {
                groups: &self.groups,
                observed: &self.observed,
                index: &self.index,
                hosts: &self.hosts,
                privileged: &self.privileged,
                outside: &self.outside,
                krbtgt_uac: self.krbtgt,
                last_change_ms: &self.changes,
                now_ms: 1_000_000,
                policy: Policy::default(),
            }
        }
    }

    fn kinds(v: &Verdict) -> Vec<FindingKind> {
        v.blocking.iter().map(|f| f.kind).collect()
    }

    #[test]
    fn a_converged_pair_is_ready() {
        let w = World::new(vec![
            delegating("HV01", GOOD, &["HV02"]),
            delegating("HV02", GOOD, &["HV01"]),
        ]);
        let v = check_migration(&w.facts(), "hv01.lab.test", "hv02.lab.test", &alice());
        assert_eq!(v.readiness, Readiness::Ready, "{v:#?}");
        assert!(v.warnings.iter().all(|f| f.kind == FindingKind::NoAgentReport));
        assert!(
            fleet_findings(&w.facts())
                .iter()
                .all(|f| f.severity != Severity::Critical)
        );
    }

    #[test]
    fn an_initiator_other_than_the_source_must_delegate_to_it_too() {
        let w = World::new(vec![
            delegating("HV01", GOOD, &["HV02"]),
            delegating("HV02", GOOD, &["HV01"]),
        ]);
        let f = w.facts();
        // GW01 is outside the scope: the API read it from AD.
        let mut gw01 = delegating("GW01", WORKSTATION_TRUST_ACCOUNT, &[]);
        gw01.dn = "CN=GW01,OU=Admin,DC=lab,DC=test".into();
        let from_gw = Initiator::Computer(Box::new(gw01.clone()));
        let v = check_migration_from(&f, &from_gw, "hv01", "hv02", &alice());
        assert_eq!(kinds(&v), vec![FindingKind::InitiatorCannotDelegate]);
        assert!(
            v.summary
                .starts_with("hv01 -> hv02 as alice from gw01.lab.test: not ready: gw01.lab.test runs Move-VM"),
            "{}",
            v.summary
        );

        // Who is delegated still matters: the account's own findings come as well.
        let sensitive = Account {
            uac: 0x200 | NOT_DELEGATED,
            ..alice()
        };
        let v = check_migration_from(&f, &from_gw, "hv01", "hv02", &sensitive);
        assert_eq!(
            kinds(&v),
            vec![FindingKind::InitiatorCannotDelegate, FindingKind::AccountSensitive]
        );

        gw01.uac |= TRUSTED_TO_AUTH_FOR_DELEGATION;
        gw01.allowed_to_delegate_to = fixtures::entries_to("HV01");
        let v = check_migration_from(&f, &Initiator::Computer(Box::new(gw01)), "hv01", "hv02", &alice());
        assert_eq!(v.readiness, Readiness::Ready, "{v:#?}");

        // The source named as initiator, by either name: the check is the plain one.
        for name in ["HV01", "hv01.lab.test"] {
            let i = f.initiator_in_scope(&HostName::parse(name).unwrap(), "hv01.lab.test");
            assert_eq!(i, Some(Initiator::Source), "{name}");
        }
        // A peer of the scope as initiator (a pull migration run on the
        // destination) is judged from the view, with its own delegation.
        let hv02 = f.initiator_in_scope(&HostName::parse("hv02").unwrap(), "hv01").unwrap();
        assert_eq!(
            check_migration_from(&f, &hv02, "hv01", "hv02", &alice()).readiness,
            Readiness::Ready
        );
        assert_eq!(
            f.initiator_in_scope(&HostName::parse("gw01").unwrap(), "hv01"),
            None,
            "AD must be asked"
        );
        let v = check_migration_from(&f, &Initiator::Missing("GW09".into()), "hv01", "hv02", &alice());
        assert_eq!(kinds(&v), vec![FindingKind::HostMissingFromAd]);
    }

    #[test]
    fn kerberos_only_is_the_seeds_failure() {
        let w = World::new(vec![
            delegating("HV01", WORKSTATION_TRUST_ACCOUNT, &["HV02"]),
            delegating("HV02", GOOD, &["HV01"]),
        ])
        .with_report("hv01.lab.test", report(17763));
        let v = check_migration(&w.facts(), "hv01.lab.test", "hv02.lab.test", &alice());
        assert_eq!(kinds(&v), vec![FindingKind::ProtocolTransitionMissing]);
        assert!(v.blocking[0].automatic);
        assert!(
            v.blocking[0]
                .evidence
                .iter()
                .any(|(k, v)| k == "os_build" && v == "17763")
        );
        // The other direction is fine.
        assert_eq!(
            check_migration(&w.facts(), "hv02", "hv01", &alice()).readiness,
            Readiness::Ready
        );
    }

    #[test]
    fn missing_entries_block_by_fqdn_and_warn_by_netbios() {
        let mut hv01 = delegating("HV01", GOOD, &[]);
        hv01.allowed_to_delegate_to = vec![
            format!("{MIGRATION_SERVICE}/hv02.lab.test"),
            "CIFS/HV02.LAB.TEST".into(),
        ];
        let w = World::new(vec![hv01, delegating("HV02", GOOD, &["HV01"])]);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert_eq!(v.readiness, Readiness::Ready, "FQDN entries present (any case): {v:#?}");
        let nb = v
            .warnings
            .iter()
            .find(|f| f.kind == FindingKind::DelegationEntryMissing)
            .unwrap();
        assert!(nb.evidence[0].1.contains("cifs/HV02"));

        let mut hv01 = delegating("HV01", GOOD, &[]);
        hv01.allowed_to_delegate_to = vec!["cifs/HV02".into()];
        let w = World::new(vec![hv01, delegating("HV02", GOOD, &["HV01"])]);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert_eq!(kinds(&v), vec![FindingKind::DelegationEntryMissing]);
        assert!(v.blocking[0].evidence[0].1.contains("cifs/hv02.lab.test"));
    }

    #[test]
    fn a_destination_without_spns_cannot_be_delegated_to() {
        let mut hv02 = delegating("HV02", GOOD, &["HV01"]);
        hv02.spns.clear();
        let w = World::new(vec![delegating("HV01", GOOD, &["HV02"]), hv02]);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert_eq!(kinds(&v), vec![FindingKind::PeerSpnNotRegistered]);
        assert!(!v.blocking[0].automatic);
    }

    #[test]
    fn unconstrained_delegation_and_disabled_computers_are_critical() {
        let w = World::new(vec![
            delegating("HV01", GOOD | TRUSTED_FOR_DELEGATION, &["HV02"]),
            delegating("HV02", GOOD | ACCOUNTDISABLE, &["HV01"]),
        ]);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        let k = kinds(&v);
        assert!(
            k.contains(&FindingKind::UnconstrainedDelegation) && k.contains(&FindingKind::ComputerAccountDisabled),
            "{k:?}"
        );
        let w = World::new(vec![
            delegating("HV01", GOOD, &["HV02"]),
            delegating("HV02", GOOD, &["HV01"]),
        ]);
        assert!(kinds(&check_migration(&w.facts(), "hv01", "hv02", &alice())).is_empty());
    }

    #[test]
    fn who_is_delegated_matters() {
        let w = World::new(vec![
            delegating("HV01", GOOD, &["HV02"]),
            delegating("HV02", GOOD, &["HV01"]),
        ]);
        let f = w.facts();
        let sensitive = Account {
            uac: 0x200 | NOT_DELEGATED,
            ..alice()
        };
        assert_eq!(
            kinds(&check_migration(&f, "hv01", "hv02", &sensitive)),
            vec![FindingKind::AccountSensitive]
        );
        let protected = Account {
            protected_users: true,
            ..alice()
        };
        assert_eq!(
            kinds(&check_migration(&f, "hv01", "hv02", &protected)),
            vec![FindingKind::AccountProtectedUsers]
        );
        let disabled = Account { uac: 0x202, ..alice() };
        assert_eq!(
            kinds(&check_migration(&f, "hv01", "hv02", &disabled)),
            vec![FindingKind::AccountDisabled]
        );
        assert!(kinds(&check_migration(&f, "hv01", "hv02", &alice())).is_empty());
    }

    #[test]
    fn a_sensitive_krbtgt_blocks_everything() {
        let mut w = World::new(vec![
            delegating("HV01", GOOD, &["HV02"]),
            delegating("HV02", GOOD, &["HV01"]),
        ]);
        w.krbtgt = Some(0x202 | NOT_DELEGATED);
        assert_eq!(
            kinds(&check_migration(&w.facts(), "hv01", "hv02", &alice())),
            vec![FindingKind::KrbtgtSensitive]
        );
        assert!(
            fleet_findings(&w.facts())
                .iter()
                .any(|f| f.kind == FindingKind::KrbtgtSensitive)
        );
    }

    #[test]
    fn unknown_hosts_are_named() {
        let w = World::new(vec![delegating("HV01", GOOD, &["HV02"])]);
        let v = check_migration(&w.facts(), "hv01", "hv99.lab.test", &alice());
        assert_eq!(kinds(&v), vec![FindingKind::HostMissingFromAd]);
        assert_eq!(v.blocking[0].hosts, vec!["hv99.lab.test"]);
        let v = check_migration(&w.facts(), "hv01)(cn=*", "hv01", &alice());
        assert_eq!(v.readiness, Readiness::NotReady, "hostile names are simply not found");
    }

    #[test]
    fn agent_reported_settings_are_diagnosed() {
        let base = || {
            World::new(vec![
                delegating("HV01", GOOD, &["HV02"]),
                delegating("HV02", GOOD, &["HV01"]),
            ])
        };
        let mut credssp = report(26100);
        credssp.migration.as_mut().unwrap().authentication_type = MigrationAuthType::Credssp as i32;
        credssp.identity.as_mut().unwrap().credential_guard_running = true;
        let v = check_migration(
            &base().with_report("hv01.lab.test", credssp.clone()).facts(),
            "hv01",
            "hv02",
            &alice(),
        );
        assert_eq!(
            kinds(&v),
            vec![
                FindingKind::MigrationAuthCredssp,
                FindingKind::CredsspWithCredentialGuard
            ]
        );
        // CredSSP on the destination does not matter for this direction.
        let v = check_migration(
            &base().with_report("hv02.lab.test", credssp).facts(),
            "hv01",
            "hv02",
            &alice(),
        );
        assert!(kinds(&v).is_empty(), "{v:#?}");

        let mut disabled = report(20348);
        disabled.migration.as_mut().unwrap().enabled = false;
        let v = check_migration(
            &base().with_report("hv02.lab.test", disabled).facts(),
            "hv01",
            "hv02",
            &alice(),
        );
        assert_eq!(kinds(&v), vec![FindingKind::MigrationDisabled]);

        let mut vmms = report(20348);
        vmms.services[0].state = ServiceState::Stopped as i32;
        let v = check_migration(
            &base().with_report("hv02.lab.test", vmms).facts(),
            "hv01",
            "hv02",
            &alice(),
        );
        assert_eq!(kinds(&v), vec![FindingKind::VmmsStopped]);

        let mut winrm = report(20348);
        winrm.services[1].state = ServiceState::Stopped as i32;
        let w = base()
            .with_report("hv01.lab.test", winrm.clone())
            .with_report("hv02.lab.test", winrm);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert_eq!(
            kinds(&v),
            vec![FindingKind::WinrmStopped],
            "only the source's WinRM blocks"
        );
        assert!(
            v.warnings
                .iter()
                .any(|f| f.kind == FindingKind::WinrmStopped && f.hosts == vec!["hv02.lab.test"])
        );
    }

    #[test]
    fn stale_agents_and_old_tickets_are_warnings() {
        let mut r = report(20348);
        r.system_tickets = vec![KerberosTicket {
            server: "cifs/hv02.lab.test@LAB.TEST".into(),
            start_time: Some(prost_types::Timestamp { seconds: 100, nanos: 0 }),
            ..Default::default()
        }];
        let mut w = World::new(vec![
            delegating("HV01", GOOD, &["HV02"]),
            delegating("HV02", GOOD, &["HV01"]),
        ])
        .with_report("hv01.lab.test", r);
        w.changes.insert("hv01.lab.test".into(), 200_000);
        w.hosts.get_mut("hv01.lab.test").unwrap().last_seen_ms = Some(1_000_000 - 120_000);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert_eq!(v.readiness, Readiness::Ready);
        let k: Vec<FindingKind> = v.warnings.iter().map(|f| f.kind).collect();
        assert!(
            k.contains(&FindingKind::TicketsOlderThanDelegationChange) && k.contains(&FindingKind::HostStale),
            "{k:?}"
        );
        w.changes.insert("hv01.lab.test".into(), 50_000);
        w.hosts.get_mut("hv01.lab.test").unwrap().last_seen_ms = Some(1_000_000);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert!(!v.warnings.iter().any(|f| matches!(
            f.kind,
            FindingKind::TicketsOlderThanDelegationChange | FindingKind::HostStale
        )));
    }

    #[test]
    fn privileged_accounts_that_can_be_delegated_are_flagged() {
        let mut w = World::new(vec![
            delegating("HV01", GOOD, &["HV02"]),
            delegating("HV02", GOOD, &["HV01"]),
        ]);
        let admin = |uac, protected_users| Privileged {
            account: Account {
                name: "Administrator".into(),
                dn: "CN=Administrator,CN=Users,DC=lab,DC=test".into(),
                uac,
                protected_users,
            },
            via: vec!["Domain Admins".into()],
        };
        w.privileged = vec![admin(0x200, false)];
        let f = fleet_findings(&w.facts());
        let p = f
            .iter()
            .find(|f| f.kind == FindingKind::PrivilegedAccountDelegatable)
            .unwrap();
        assert!(p.summary.contains("Domain Admins") && !p.automatic);
        for safe in [
            admin(0x200 | NOT_DELEGATED, false),
            admin(0x200, true),
            admin(0x202, false),
        ] {
            w.privileged = vec![safe];
            assert!(
                !fleet_findings(&w.facts())
                    .iter()
                    .any(|f| f.kind == FindingKind::PrivilegedAccountDelegatable)
            );
        }
    }

    #[test]
    fn fleet_findings_cover_groups_and_file_servers() {
        let mut w = World::new(vec![
            delegating("HV01", WORKSTATION_TRUST_ACCOUNT, &["HV02"]),
            delegating("HV02", GOOD, &[]),
        ]);
        w.groups[0].file_servers = vec![HostName::parse("fs01.lab.test").unwrap()];
        w.groups[0].hosts.push(HostName::parse("hv09.lab.test").unwrap());
        let f = fleet_findings(&w.facts());
        let k: BTreeSet<Kind> = f.iter().map(|f| f.kind).collect();
        for want in [
            FindingKind::ProtocolTransitionMissing,
            FindingKind::DelegationEntryMissing,
            FindingKind::FileServerEntryMissing,
            FindingKind::HostMissingFromAd,
        ] {
            assert!(k.contains(&want), "{want:?} missing from {k:?}");
        }
        assert_eq!(f[0].severity, Severity::Critical, "most severe first");
        let ids: BTreeSet<&str> = f.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids.len(), f.len(), "ids are unique");
    }
}
