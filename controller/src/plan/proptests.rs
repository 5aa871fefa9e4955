//! Properties of plan + guard over arbitrary directories and configs: what
//! an OU admin can write into AD (names, SPNs, bits, entries, group members)
//! never steers a plan into a dangerous write.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::{guard, plan};
use crate::config::{FirstGrants, Group, Guard, Mode};
use crate::ldap::WritePolicy;
use crate::model::dn::{Dn, dn_key};
use crate::model::fixtures::{BASE, computer, entries_to};
use crate::model::identity::PARTIAL_SECRETS_ACCOUNT;
use crate::model::names::HostName;
use crate::model::*;

const NAMES: [&str; 6] = ["HV01", "HV02", "HV03", "HV04", "AC02", "DC1"];

/// One computer as an adversary may have left it.
#[derive(Debug, Clone)]
struct Spec {
    name: usize,
    /// 0 own name, 1 another member's, 2 the DC's, 3 a foreign suffix, 4 none.
    dns: u8,
    uac: u32,
    /// Entries to these NAMES.
    entries: Vec<usize>,
    spns: bool,
    outside_scope: bool,
    privileged: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    let uac = prop_oneof![
        Just(WORKSTATION_TRUST_ACCOUNT),
        Just(WORKSTATION_TRUST_ACCOUNT | TRUSTED_TO_AUTH_FOR_DELEGATION),
        Just(WORKSTATION_TRUST_ACCOUNT | TRUSTED_FOR_DELEGATION),
        Just(WORKSTATION_TRUST_ACCOUNT | ACCOUNTDISABLE),
        Just(SERVER_TRUST_ACCOUNT | TRUSTED_FOR_DELEGATION),
        Just(WORKSTATION_TRUST_ACCOUNT | PARTIAL_SECRETS_ACCOUNT),
    ];
    (
        0..NAMES.len(),
        0u8..5,
        uac,
        prop::collection::vec(0..NAMES.len(), 0..4),
        any::<bool>(),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(name, dns, uac, entries, spns, outside_scope, privileged)| Spec {
            name,
            dns,
            uac,
            entries,
            spns,
            outside_scope,
            privileged,
        })
}

fn build(specs: &[Spec]) -> Observed {
    let mut o = Observed::default();
    let mut seen = BTreeSet::new();
    for s in specs {
        // sAMAccountName is unique in a domain.
        if !seen.insert(s.name) {
            continue;
        }
        let name = NAMES[s.name];
        let entries: Vec<String> = s.entries.iter().flat_map(|&e| entries_to(NAMES[e])).collect();
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let mut c = computer(name, s.uac, &refs);
        c.dns_host_name = match s.dns {
            0 => c.dns_host_name,
            1 => Some(format!("{}.lab.test", NAMES[(s.name + 1) % NAMES.len()].to_lowercase())),
            2 => Some("dc1.lab.test".into()),
            3 => Some(format!("{}.evil.test", name.to_lowercase())),
            _ => None,
        };
        if !s.spns {
            c.spns.clear();
        }
        if s.outside_scope {
            c.dn = format!("CN={name},OU=Elsewhere,DC=lab,DC=test");
        }
        if s.privileged {
            o.claims.privileged.push(dn_key(&c.dn));
        }
        o.computers.push(c);
    }
    // The real DC, outside the scope, holding its own SPNs.
    let mut dc = computer("DC1", SERVER_TRUST_ACCOUNT | TRUSTED_FOR_DELEGATION, &[]);
    dc.dn = "CN=DC1,OU=Domain Controllers,DC=lab,DC=test".into();
    dc.spns = vec!["HOST/dc1.lab.test".into(), "HOST/DC1".into()];
    o.claims.holders.push(dc);
    o
}

fn groups() -> impl Strategy<Value = Vec<Group>> {
    let group = (
        prop::collection::vec((0..NAMES.len(), any::<bool>()), 1..6),
        prop_oneof![Just(Mode::Enforce), Just(Mode::Plan)],
        any::<bool>(),
        prop::collection::vec(prop_oneof![Just("fs01.lab.test"), Just("dc1.lab.test")], 0..2),
    );
    prop::collection::vec(group, 1..3).prop_map(|gs| {
        gs.into_iter()
            .enumerate()
            .map(|(i, (hosts, mode, auto, fs))| {
                let mut names: Vec<HostName> = Vec::new();
                for (h, fqdn) in hosts {
                    let n = if fqdn {
                        format!("{}.lab.test", NAMES[h].to_lowercase())
                    } else {
                        NAMES[h].to_owned()
                    };
                    let n = HostName::parse(&n).unwrap();
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                Group {
                    name: format!("g{i}"),
                    mode,
                    hosts: names,
                    ad_group: None,
                    file_servers: fs.iter().map(|f| HostName::parse(f).unwrap()).collect(),
                    first_grants: if auto { FirstGrants::Auto } else { FirstGrants::Approve },
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_plan_is_ever_dangerous(specs in prop::collection::vec(spec(), 1..8), groups in groups()) {
        let observed = build(&specs);
        let scope = vec![Dn::parse(BASE).unwrap()];
        let suffixes = vec!["lab.test".to_owned()];
        let p = plan(&groups, &scope, &suffixes, &observed);
        let dangerous: BTreeSet<String> = observed
            .computers
            .iter()
            .chain(&observed.claims.holders)
            .filter(|c| {
                c.uac & (SERVER_TRUST_ACCOUNT | PARTIAL_SECRETS_ACCOUNT) != 0
                    || observed.claims.privileged.contains(&dn_key(&c.dn))
            })
            .flat_map(|c| [c.netbios().to_lowercase(), c.fqdn().unwrap_or_default()])
            .collect();
        let policy = WritePolicy { scope: scope.clone(), targets: p.targets.clone() };
        for c in &p.changes {
            let after = c.uac_after.unwrap_or(c.uac_before);
            prop_assert_eq!((after & !c.uac_before) & TRUSTED_FOR_DELEGATION, 0, "sets unconstrained delegation: {:?}", c);
            prop_assert!(Dn::parse(&c.dn).unwrap().is_within(&scope[0]), "outside the scope: {:?}", c);
            prop_assert_eq!(c.uac_before & (SERVER_TRUST_ACCOUNT | PARTIAL_SECRETS_ACCOUNT), 0, "writes a DC/RODC: {:?}", c);
            prop_assert!(!observed.claims.privileged.contains(&dn_key(&c.dn)), "writes a privileged machine: {:?}", c);
            for e in &c.add {
                let (_, host) = spn_parts(e).unwrap();
                prop_assert!(!dangerous.contains(&host.to_lowercase()), "delegates to {}: {:?}", host, c);
                prop_assert!(host != "dc1.lab.test" && !host.eq_ignore_ascii_case("dc1"), "delegates to the DC: {:?}", c);
            }
            prop_assert_eq!(policy.check(c), Ok(()), "the write edge disagrees with the planner");
        }
        let enforce: Vec<HostChange> = p.changes.iter().filter(|c| c.mode == Mode::Enforce).cloned().collect();
        let g = guard(&enforce, &Guard { max_hosts_per_apply: 50 }, &groups);
        for c in &g.auto {
            let opted_out = c.groups.iter().all(|n| groups.iter().any(|g| &g.name == n && g.first_grants == FirstGrants::Auto));
            prop_assert!(!c.is_first_grant() || opted_out, "a first grant went through without approval: {:?}", c);
        }
    }
}
