//! The exposure model on hand-built observes: each test is one kind of edge
//! a security team asks about.

use super::diff::plan_diff;
use super::sd::rbcd_descriptor;
use super::*;
use crate::config::{FirstGrants, Mode};
use crate::model::fixtures::{computer, delegating, entries_to};

const PT: u32 = WORKSTATION_TRUST_ACCOUNT | TRUSTED_TO_AUTH_FOR_DELEGATION;

fn group(hosts: &[&str], file_servers: &[&str]) -> Group {
    Group {
        name: "g".into(),
        mode: Mode::Enforce,
        hosts: hosts.iter().map(|h| HostName::parse(h).unwrap()).collect(),
        ad_group: None,
        file_servers: file_servers.iter().map(|h| HostName::parse(h).unwrap()).collect(),
        first_grants: FirstGrants::Auto,
    }
}

fn dc() -> Computer {
    let mut dc = computer("DC1", SERVER_TRUST_ACCOUNT, &[]);
    dc.dn = "CN=DC1,OU=Domain Controllers,DC=lab,DC=test".into();
    dc.spns = vec!["HOST/dc1.lab.test".into(), "ldap/dc1.lab.test".into()];
    dc
}

fn elsewhere(name: &str) -> Computer {
    let mut c = computer(name, WORKSTATION_TRUST_ACCOUNT, &[]);
    c.dn = format!("CN={name},OU=Servers,DC=lab,DC=test");
    c.spns = vec![format!("HOST/{}.lab.test", name.to_lowercase())];
    c
}

struct World {
    groups: Vec<Group>,
    observed: Observed,
    outside: Outside,
    privileged: Vec<Privileged>,
}

impl World {
    fn new(computers: Vec<Computer>, groups: Vec<Group>) -> World {
        World {
            groups,
            observed: Observed {
                computers,
                ..Default::default()
            },
            outside: Outside::default(),
            privileged: Vec::new(),
        }
    }

    fn with_outside(mut self, objects: Vec<Computer>) -> World {
        self.outside.objects = objects;
        self
    }

    fn run<T>(&self, f: impl FnOnce(&Inputs) -> T) -> T {
        let index = Index::new(&self.observed, &["lab.test".to_owned()]);
        f(&Inputs {
            groups: &self.groups,
            observed: &self.observed,
            index: &index,
            outside: &self.outside,
            privileged: &self.privileged,
        })
    }

    fn exposure(&self) -> Exposure {
        self.run(exposure)
    }
}

fn edge<'a>(x: &'a Exposure, source: &str, target: &str, class: Class) -> &'a Edge {
    x.edges
        .iter()
        .find(|e| e.source.starts_with(source) && e.target.starts_with(target) && e.class == class)
        .unwrap_or_else(|| panic!("no {class:?} edge {source} -> {target}: {x:#?}"))
}

#[test]
fn a_converged_group_holds_only_required_edges() {
    let w = World::new(
        vec![delegating("HV01", PT, &["HV02"]), delegating("HV02", PT, &["HV01"])],
        vec![group(&["hv01", "hv02"], &[])],
    );
    let x = w.exposure();
    assert_eq!(x.edges.len(), 2, "{x:#?}");
    let e = edge(&x, "hv01", "hv02", Class::Required);
    assert_eq!(e.services, ["cifs", "microsoft virtual system migration service"]);
    assert_eq!(
        e.entries.len(),
        4,
        "FQDN and NetBIOS entries reach one object: one edge"
    );
    assert_eq!(e.via, Via::ProtocolTransition);
    assert!(findings(&x).is_empty());
}

#[test]
fn kerberos_only_is_told_apart_from_protocol_transition() {
    let w = World::new(
        vec![
            delegating("HV01", WORKSTATION_TRUST_ACCOUNT, &["HV02"]),
            delegating("HV02", PT, &["HV01"]),
        ],
        vec![group(&["hv01", "hv02"], &[])],
    );
    let x = w.exposure();
    assert_eq!(edge(&x, "hv01", "hv02", Class::Required).via, Via::KerberosOnly);
    assert!(
        edge(&x, "hv01", "hv02", Class::Required)
            .impersonates()
            .contains("authenticate to the source")
    );
}

#[test]
fn a_peer_that_left_the_group_is_a_stale_excess_edge() {
    let w = World::new(
        vec![
            delegating("HV01", PT, &["HV02", "HV03"]),
            delegating("HV02", PT, &["HV01"]),
            computer("HV03", WORKSTATION_TRUST_ACCOUNT, &[]),
        ],
        vec![group(&["hv01", "hv02"], &[])],
    );
    let x = w.exposure();
    let e = edge(&x, "hv01", "hv03", Class::Excess);
    assert!(
        e.reasons[0].contains("stale peer") && e.reasons[0].contains("in no group"),
        "{e:?}"
    );
    assert!(findings(&x).is_empty(), "excess is not dangerous");
}

#[test]
fn an_entry_to_the_domain_controller_is_dangerous_and_a_finding() {
    let mut hv01 = delegating("HV01", PT, &["HV02"]);
    hv01.allowed_to_delegate_to.push("cifs/dc1.lab.test".into());
    let w = World::new(
        vec![hv01, delegating("HV02", PT, &["HV01"])],
        vec![group(&["hv01", "hv02"], &[])],
    )
    .with_outside(vec![dc()]);
    let x = w.exposure();
    let e = edge(&x, "hv01", "dc1", Class::Dangerous);
    assert!(e.reasons[0].contains("is a domain controller"), "{e:?}");
    assert_eq!(e.target_dn, dc().dn);
    let f = findings(&x);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(
        (f[0].kind, f[0].severity),
        (FindingKind::DangerousDelegation, Severity::Critical)
    );
    assert_eq!(f[0].hosts, ["hv01.lab.test", "dc1.lab.test"]);
    assert!(f[0].evidence.contains(&("values".into(), "cifs/dc1.lab.test".into())));
    assert!(f[0].remediation.contains("remove cifs/dc1.lab.test from hv01.lab.test"));
    assert!(!f[0].automatic, "kcdsync never removes entries outside its scope");
}

#[test]
fn a_machine_outside_every_group_is_dangerous_a_group_file_server_is_required() {
    let mut hv01 = delegating("HV01", PT, &["HV02"]);
    hv01.allowed_to_delegate_to.extend([
        "MSSQLSvc/sql01.lab.test:1433".to_owned(),
        "cifs/fs01.lab.test".to_owned(),
        "cifs/FS01".to_owned(),
    ]);
    let w = World::new(
        vec![hv01, delegating("HV02", PT, &["HV01"])],
        vec![group(&["hv01", "hv02"], &["fs01.lab.test"])],
    )
    .with_outside(vec![elsewhere("SQL01"), elsewhere("FS01")]);
    let x = w.exposure();
    let sql = edge(&x, "hv01", "sql01", Class::Dangerous);
    assert!(sql.reasons[0].contains("outside every group"), "{sql:?}");
    assert_eq!(sql.services, ["mssqlsvc"]);
    let fs = edge(&x, "hv01", "fs01", Class::Required);
    assert_eq!(fs.entries.len(), 2);
}

#[test]
fn a_name_nobody_answers_to_is_a_deleted_or_renamed_host() {
    let mut hv01 = delegating("HV01", PT, &["HV02"]);
    hv01.allowed_to_delegate_to.push("cifs/gone01.lab.test".into());
    let w = World::new(
        vec![hv01, delegating("HV02", PT, &["HV01"])],
        vec![group(&["hv01", "hv02"], &[])],
    );
    let x = w.exposure();
    let e = edge(&x, "hv01", "gone01", Class::Excess);
    assert!(e.reasons[0].contains("deleted or renamed"), "{e:?}");
    assert!(e.target_dn.is_empty());
}

#[test]
fn more_service_classes_than_migration_needs_split_off_as_excess() {
    let mut hv01 = delegating("HV01", PT, &["HV02"]);
    hv01.allowed_to_delegate_to.push("HTTP/hv02.lab.test".into());
    let w = World::new(
        vec![hv01, delegating("HV02", PT, &["HV01"])],
        vec![group(&["hv01", "hv02"], &[])],
    );
    let x = w.exposure();
    assert_eq!(edge(&x, "hv01", "hv02", Class::Required).entries.len(), 4);
    let more = edge(&x, "hv01", "hv02", Class::Excess);
    assert_eq!(more.services, ["http"]);
    assert!(more.reasons[0].contains("more service classes"));
}

#[test]
fn a_privileged_machine_in_scope_is_a_dangerous_target() {
    let hv01 = delegating("HV01", PT, &["PAW01"]);
    let paw = computer("PAW01", WORKSTATION_TRUST_ACCOUNT, &[]);
    let mut w = World::new(vec![hv01, paw.clone()], vec![group(&["hv01"], &[])]);
    w.observed.claims.privileged = vec![dn_key(&paw.dn)];
    let x = w.exposure();
    assert!(edge(&x, "hv01", "paw01", Class::Dangerous).reasons[0].contains("privileged group"));
}

#[test]
fn rbcd_edges_come_from_the_targets_descriptor() {
    let mut hv01 = delegating("HV01", PT, &["HV02"]);
    hv01.object_sid = Some("S-1-5-21-1-2-3-1101".into());
    let mut hv02 = delegating("HV02", PT, &["HV01"]);
    // HV01 (a peer) and a principal kcdsync cannot name may delegate to HV02.
    hv02.rbcd = rbcd_descriptor(&["S-1-5-21-1-2-3-1101", "S-1-5-21-1-2-3-4242"]).unwrap();
    let mut hv03 = computer("HV03", WORKSTATION_TRUST_ACCOUNT, &[]);
    hv03.rbcd = vec![1, 0, 4, 0x80, 0xff];
    let w = World::new(vec![hv01, hv02, hv03], vec![group(&["hv01", "hv02"], &[])]);
    let x = w.exposure();
    let peer = edge(&x, "hv01", "hv02", Class::Excess);
    assert_eq!((peer.via, peer.services.as_slice()), (Via::Rbcd, &["*".to_owned()][..]));
    let unknown = edge(&x, "S-1-5-21-1-2-3-4242", "hv02", Class::Dangerous);
    assert!(unknown.source_dn.is_empty() && unknown.reasons[0].contains("not a computer of the managed scope"));
    assert_eq!(x.unreadable.len(), 1, "HV03's descriptor is cut short");
    let f = findings(&x);
    assert!(
        f.iter()
            .any(|f| f.severity == Severity::Critical && f.evidence.contains(&("attribute".into(), ATTR_RBCD.into())))
    );
    assert!(
        f.iter()
            .any(|f| f.severity == Severity::Warning && f.hosts == ["hv03.lab.test"])
    );
}

#[test]
fn privileged_accounts_without_protection_are_named() {
    let account = |name: &str, uac: u32, protected_users: bool| Privileged {
        account: Account {
            name: name.into(),
            dn: format!("CN={name},CN=Users,DC=lab,DC=test"),
            uac,
            protected_users,
        },
        via: vec!["Domain Admins".into()],
    };
    let mut w = World::new(vec![], vec![]);
    w.privileged = vec![
        account("admin1", 0x200, false),
        account("admin2", 0x200 | NOT_DELEGATED, false),
        account("admin3", 0x200, true),
    ];
    assert_eq!(w.exposure().privileged_impersonable, ["admin1"]);
}

#[test]
fn a_plan_shows_the_edges_it_removes_and_any_dangerous_one_it_adds() {
    let w = World::new(
        vec![
            delegating("HV01", PT, &["HV02", "HV03"]),
            delegating("HV02", PT, &["HV01"]),
            computer("HV03", WORKSTATION_TRUST_ACCOUNT, &[]),
        ],
        vec![group(&["hv01", "hv02"], &[])],
    )
    .with_outside(vec![dc()]);
    let change = |add: Vec<String>, remove: Vec<String>| HostChange {
        host: "hv01.lab.test".into(),
        dn: computer("HV01", 0, &[]).dn,
        groups: vec!["g".into()],
        mode: Mode::Enforce,
        uac_before: PT,
        uac_after: None,
        add,
        remove,
        entries_before: 8,
    };
    let d = w.run(|inp| plan_diff(inp, &["lab.test".to_owned()], &[change(vec![], entries_to("HV03"))]));
    assert!(d.added.is_empty(), "{d:#?}");
    assert_eq!(d.removed.len(), 1);
    assert_eq!(
        (d.removed[0].class, d.removed[0].target.as_str()),
        (Class::Excess, "hv03.lab.test")
    );
    assert!(!d.adds_dangerous());

    let d = w.run(|inp| {
        plan_diff(
            inp,
            &["lab.test".to_owned()],
            &[change(vec!["cifs/dc1.lab.test".into()], vec![])],
        )
    });
    assert!(d.adds_dangerous(), "{d:#?}");
}

#[test]
fn names_outside_are_the_targets_no_scoped_computer_answers_to() {
    let mut hv01 = delegating("HV01", PT, &["HV02"]);
    hv01.allowed_to_delegate_to.push("cifs/DC1.lab.test".into());
    let observed = Observed {
        computers: vec![hv01, computer("HV02", PT, &[])],
        ..Default::default()
    };
    let index = Index::new(&observed, &["lab.test".to_owned()]);
    assert_eq!(names_outside(&observed, &index), ["dc1.lab.test"]);
}

#[test]
fn an_impostor_claiming_the_dcs_name_does_not_hide_the_dc() {
    // An object elsewhere whose dNSHostName was pointed at the DC (the
    // hijack of tests/tests/trust.rs): the KDC issues cifs/dc1 tickets to
    // the SPN's holder, the DC, so the edge is the DC's.
    let mut impostor = elsewhere("TRH02");
    impostor.dns_host_name = Some("dc1.lab.test".into());
    impostor.spns.clear();
    let mut hv01 = delegating("HV01", PT, &[]);
    hv01.allowed_to_delegate_to = vec!["cifs/dc1.lab.test".into()];
    let w = World::new(vec![hv01], vec![group(&["hv01"], &[])]).with_outside(vec![impostor, dc()]);
    let x = w.exposure();
    let e = edge(&x, "hv01", "dc1", Class::Dangerous);
    assert_eq!(e.target_dn, dc().dn, "{e:?}");
    assert!(e.reasons[0].contains("domain controller"));
}

#[test]
fn a_peer_whose_spn_the_dc_also_holds_is_a_dangerous_target() {
    // The DC holds cifs/hv02.lab.test too: a ticket for that name may be the DC's.
    let mut dc = dc();
    dc.spns.push("cifs/hv02.lab.test".into());
    let mut w = World::new(
        vec![delegating("HV01", PT, &["HV02"]), delegating("HV02", PT, &["HV01"])],
        vec![group(&["hv01", "hv02"], &[])],
    );
    w.observed.claims.holders = vec![dc];
    let x = w.exposure();
    let e = edge(&x, "hv01", "hv02", Class::Dangerous);
    assert!(
        e.reasons[0].contains("also held by another object: dc1.lab.test is a domain controller"),
        "{e:?}"
    );
}
