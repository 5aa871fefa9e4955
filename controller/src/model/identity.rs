//! Who a computer is, for delegation: the object's own word, cross-checked.
//!
//! A computer's `dNSHostName` and `servicePrincipalName` can be written by
//! people with far less privilege than kcdsync (OU admins, the object's
//! owner, helpdesk). Left unchecked, a member whose dNSHostName says
//! `dc1.contoso.com` would have every peer delegate to the domain controller.
//! So a computer is a delegation target (and a delegating source) only when:
//! - its dNSHostName is `<sAMAccountName without $>.<suffix>`, with the
//!   suffix in the allowed list;
//! - no other object in the domain has that dNSHostName, or holds an SPN
//!   (`HOST/`, `cifs/`, the migration service) for either of its names —
//!   the KDC would issue tickets for that name to the other object;
//! - it is not a domain controller, a read-only DC, or a member of a
//!   privileged group.
//!
//! Anything else is a [`Refusal`]: a finding that names the object, the
//! attribute and the conflicting owner, and the host is left out of the plan.

use std::collections::{HashMap, HashSet};

use super::computer::{Computer, spn_key, spn_parts};
use super::dn::dn_key;
use super::finding::{Finding, FindingKind, Severity};
use super::names::HostName;
use super::{ATTR_DNS_HOST_NAME, ATTR_SPN, ATTR_UAC, CIFS, MIGRATION_SERVICE, Observed};

pub use super::PARTIAL_SECRETS_ACCOUNT;
/// The service classes whose tickets a name's owner receives: `cifs/` maps to
/// `HOST/` in AD (sPNMappings), and the migration service is what we delegate to.
pub const OWNER_CLASSES: [&str; 3] = ["HOST", CIFS, MIGRATION_SERVICE];

/// Why a computer is not a delegation target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoDnsHostName,
    /// dNSHostName is not `<sAMAccountName>.<suffix>` for an allowed suffix;
    /// `owner` is the object whose name it is, if one answers to it.
    NameMismatch {
        dns_host_name: String,
        expected: Vec<String>,
        owner: Option<String>,
    },
    /// Another object with the same name, or a domain controller or
    /// privileged machine, claims the same dNSHostName: the name does not
    /// tell them apart. (Any other object whose own name differs cannot take
    /// a name away: it is refused itself, by `NameMismatch`.)
    DuplicateName {
        dns_host_name: String,
        owner: String,
    },
    /// Another object holds an SPN for one of this computer's names.
    SpnHeldByOther {
        spn: String,
        owner: String,
    },
    DomainController,
    ReadOnlyDomainController,
    /// Member of a privileged group (Tier 0): never delegated to or from.
    Privileged,
    /// Its names are not valid host names (so they could not be searched
    /// for safely, nor written as SPNs).
    InvalidName {
        value: String,
    },
}

impl Refusal {
    /// The object's name itself does not check out (as opposed to a
    /// conflict with another object, or a role that is never a target).
    pub fn is_about_the_name(&self) -> bool {
        matches!(
            self,
            Refusal::NoDnsHostName | Refusal::NameMismatch { .. } | Refusal::InvalidName { .. }
        )
    }

    /// The finding for `c`: the object, the attribute, the conflicting owner.
    pub fn finding(&self, c: &Computer) -> Finding {
        let host = c.netbios();
        let (kind, attr, what, owner) = match self {
            Refusal::NoDnsHostName => (
                FindingKind::HostIdentityConflict,
                ATTR_DNS_HOST_NAME,
                "has no dNSHostName".to_owned(),
                None,
            ),
            Refusal::NameMismatch {
                dns_host_name,
                expected,
                owner,
            } => (
                FindingKind::HostIdentityConflict,
                ATTR_DNS_HOST_NAME,
                format!(
                    "has dNSHostName `{dns_host_name}`, which is not its sAMAccountName `{}` in an allowed DNS suffix (expected {}){}",
                    c.sam_account_name,
                    expected.join(" or "),
                    owner
                        .as_ref()
                        .map(|o| format!("; that name belongs to {o}"))
                        .unwrap_or_default()
                ),
                owner.as_deref(),
            ),
            Refusal::DuplicateName { dns_host_name, owner } => (
                FindingKind::HostIdentityConflict,
                ATTR_DNS_HOST_NAME,
                format!("has dNSHostName `{dns_host_name}`, which {owner} also has"),
                Some(owner.as_str()),
            ),
            Refusal::SpnHeldByOther { spn, owner } => (
                FindingKind::HostIdentityConflict,
                ATTR_SPN,
                format!("would be delegated to as `{spn}`, but that servicePrincipalName is registered on {owner}"),
                Some(owner.as_str()),
            ),
            Refusal::InvalidName { value } => (
                FindingKind::HostIdentityConflict,
                ATTR_DNS_HOST_NAME,
                format!("has a name that is not a valid host name: `{value}`"),
                None,
            ),
            Refusal::DomainController => (
                FindingKind::NotADelegationTarget,
                ATTR_UAC,
                "is a domain controller (SERVER_TRUST_ACCOUNT 0x2000)".to_owned(),
                None,
            ),
            Refusal::ReadOnlyDomainController => (
                FindingKind::NotADelegationTarget,
                ATTR_UAC,
                "is a read-only domain controller (PARTIAL_SECRETS_ACCOUNT 0x4000000)".to_owned(),
                None,
            ),
            Refusal::Privileged => (
                FindingKind::NotADelegationTarget,
                "memberOf",
                "is a member of a privileged group".to_owned(),
                None,
            ),
        };
        let mut f = Finding::new(
            kind,
            Severity::Critical,
            &[&host],
            "",
            format!(
                "{} ({}) {what}; kcdsync neither delegates to it nor from it",
                host, c.dn
            ),
        )
        .evidence("object", c.dn.clone())
        .evidence("attribute", attr);
        if let Some(o) = owner {
            f = f.evidence("conflicting owner", o);
        }
        let remediation = match kind {
            FindingKind::NotADelegationTarget => {
                "remove it from the migration group; kcdsync never writes or targets domain controllers or privileged machines"
            }
            _ => {
                "check who changed the object (its dNSHostName must be <sAMAccountName>.<domain suffix>, unique, and no other object may hold its SPNs); correct it, or list the suffix in scope.dns_suffixes if it is legitimate"
            }
        };
        f.fix(remediation, false)
    }
}

/// What the domain says about one observe's computers, beyond the
/// computers themselves: read by `ldap::read` and the fake directory alike.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// Every object in the domain whose dNSHostName or SPNs name one of the
    /// observed computers' names (the computers themselves included).
    pub holders: Vec<Computer>,
    /// DN keys of observed computers that are (transitively) in a
    /// privileged group.
    pub privileged: Vec<String>,
}

/// The host an SPN names when its class is one whose tickets that host's
/// owner receives ([`OWNER_CLASSES`]); `None` for any other SPN.
pub fn owner_spn_host(spn: &str) -> Option<&str> {
    spn_parts(spn)
        .filter(|(class, _)| OWNER_CLASSES.iter().any(|c| c.eq_ignore_ascii_case(class)))
        .map(|(_, host)| host)
}

/// `o` answers to one of `names` (lower-case): its dNSHostName, or an
/// [`OWNER_CLASSES`] SPN of it, names one.
pub fn answers_to(o: &Computer, names: &HashSet<String>) -> bool {
    o.fqdn().is_some_and(|f| names.contains(&f))
        || o.spns
            .iter()
            .filter_map(|s| owner_spn_host(s))
            .any(|h| names.contains(&h.to_ascii_lowercase()))
}

/// The names kcdsync would delegate to for `c`: its dNSHostName and NetBIOS
/// name, both lower-case. These are the names looked up domain-wide.
pub fn names_of(c: &Computer) -> Vec<String> {
    let mut v = vec![c.netbios().to_ascii_lowercase()];
    if let Some(f) = c.fqdn() {
        v.push(f);
    }
    v
}

/// Verifies every observed computer; `None` for a trusted one. `suffixes`
/// are the allowed DNS suffixes, lower-case.
pub fn verify(observed: &Observed, suffixes: &[String]) -> Vec<Option<Refusal>> {
    let privileged: HashSet<&str> = observed.claims.privileged.iter().map(String::as_str).collect();
    // name (lower-case) -> every object that answers to it.
    let mut dns_owners: Owners = HashMap::new();
    let mut spn_owners: Owners = HashMap::new();
    let all = observed.computers.iter().chain(observed.claims.holders.iter());
    for o in all {
        if let Some(f) = o.fqdn() {
            push_once(dns_owners.entry(f).or_default(), o, &privileged);
        }
        for s in o.spns.iter().filter(|s| owner_spn_host(s).is_some()) {
            push_once(spn_owners.entry(spn_key(s)).or_default(), o, &privileged);
        }
    }
    observed
        .computers
        .iter()
        .map(|c| {
            let key = dn_key(&c.dn);
            refusal(
                c,
                &key,
                suffixes,
                &dns_owners,
                &spn_owners,
                privileged.contains(key.as_str()),
            )
        })
        .collect()
}

/// An object that answers to a name.
struct Owner<'a> {
    key: String,
    dn: &'a str,
    netbios: String,
    /// A DC, RODC or privileged machine.
    tier0: bool,
}

type Owners<'a> = HashMap<String, Vec<Owner<'a>>>;

fn push_once<'a>(v: &mut Vec<Owner<'a>>, o: &'a Computer, privileged: &HashSet<&str>) {
    let key = dn_key(&o.dn);
    if !v.iter().any(|x| x.key == key) {
        v.push(Owner {
            tier0: o.is_dc_or_rodc() || privileged.contains(key.as_str()),
            key,
            dn: &o.dn,
            netbios: o.netbios(),
        });
    }
}

fn refusal(
    c: &Computer,
    key: &str,
    suffixes: &[String],
    dns_owners: &Owners,
    spn_owners: &Owners,
    privileged: bool,
) -> Option<Refusal> {
    if c.is_domain_controller() {
        return Some(Refusal::DomainController);
    }
    if c.uac & PARTIAL_SECRETS_ACCOUNT != 0 {
        return Some(Refusal::ReadOnlyDomainController);
    }
    if privileged {
        return Some(Refusal::Privileged);
    }
    let netbios = c.netbios();
    if HostName::parse(&netbios).is_err() {
        return Some(Refusal::InvalidName {
            value: c.sam_account_name.clone(),
        });
    }
    let Some(fqdn) = c.fqdn() else {
        return Some(Refusal::NoDnsHostName);
    };
    if !matches!(HostName::parse(&fqdn), Ok(HostName::Fqdn(_))) {
        return Some(Refusal::InvalidName { value: fqdn });
    }
    let expected: Vec<String> = suffixes
        .iter()
        .map(|s| format!("{}.{s}", netbios.to_ascii_lowercase()))
        .collect();
    let other = |owners: Option<&Vec<Owner>>| {
        owners.and_then(|v| {
            v.iter()
                .find(|o| o.key != key)
                .map(|o| (o.dn.to_owned(), o.netbios.clone()))
        })
    };
    if !is_own_name(&fqdn, &netbios, suffixes) {
        return Some(Refusal::NameMismatch {
            dns_host_name: c.dns_host_name.clone().unwrap_or_default(),
            expected,
            owner: other(dns_owners.get(&fqdn)).map(|(dn, _)| dn),
        });
    }
    if let Some((owner, _)) = dns_owners
        .get(&fqdn)
        .and_then(|v| v.iter().find(|o| o.key != key && (o.netbios == netbios || o.tier0)))
        .map(|o| (o.dn.to_owned(), ()))
    {
        return Some(Refusal::DuplicateName {
            dns_host_name: fqdn,
            owner,
        });
    }
    for name in [fqdn.as_str(), &netbios.to_ascii_lowercase()] {
        for class in OWNER_CLASSES {
            let spn = format!("{class}/{name}");
            if let Some((owner, _)) = other(spn_owners.get(&spn_key(&spn))) {
                return Some(Refusal::SpnHeldByOther { spn, owner });
            }
        }
    }
    None
}

/// `fqdn` is the name of the account `netbios`: its first label is the
/// NetBIOS name (Windows cuts a longer host name to 15 characters for the
/// NetBIOS name) and the rest an allowed suffix.
fn is_own_name(fqdn: &str, netbios: &str, suffixes: &[String]) -> bool {
    let Some((first, suffix)) = fqdn.split_once('.') else {
        return false;
    };
    let first_matches = if netbios.len() < 15 {
        first.eq_ignore_ascii_case(netbios)
    } else {
        first.get(..15).is_some_and(|f| f.eq_ignore_ascii_case(netbios))
    };
    first_matches && suffixes.iter().any(|s| s == suffix)
}

/// The owners of the SPNs a configured file server's name is reached by:
/// the objects that would receive tickets for `cifs/<name>`.
pub fn owners_of<'a>(observed: &'a Observed, name: &str) -> Vec<&'a Computer> {
    let mut out: Vec<&Computer> = Vec::new();
    for o in observed.computers.iter().chain(observed.claims.holders.iter()) {
        let holds = o
            .spns
            .iter()
            .filter_map(|s| owner_spn_host(s))
            .any(|h| h.eq_ignore_ascii_case(name));
        if holds && !out.iter().any(|x| dn_key(&x.dn) == dn_key(&o.dn)) {
            out.push(o);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::computer;
    use crate::model::{SERVER_TRUST_ACCOUNT, WORKSTATION_TRUST_ACCOUNT};

    fn suffixes() -> Vec<String> {
        vec!["lab.test".to_owned()]
    }

    fn observed(computers: Vec<Computer>, holders: Vec<Computer>) -> Observed {
        Observed {
            computers,
            claims: Claims {
                holders,
                privileged: Vec::new(),
            },
            ..Default::default()
        }
    }

    fn dc() -> Computer {
        let mut dc = computer("DC1", SERVER_TRUST_ACCOUNT, &[]);
        dc.dn = "CN=DC1,OU=Domain Controllers,DC=lab,DC=test".into();
        dc.spns = vec!["HOST/dc1.lab.test".into(), "HOST/DC1".into()];
        dc
    }

    #[test]
    fn a_host_named_after_itself_is_trusted() {
        let o = observed(vec![computer("HV01", WORKSTATION_TRUST_ACCOUNT, &[])], vec![]);
        assert_eq!(verify(&o, &suffixes()), vec![None]);
    }

    #[test]
    fn a_dns_host_name_pointing_at_the_dc_is_refused_naming_the_attribute() {
        let mut ac02 = computer("AC02", WORKSTATION_TRUST_ACCOUNT, &[]);
        ac02.dns_host_name = Some("dc1.lab.test".into());
        ac02.spns.clear();
        let o = observed(vec![ac02.clone()], vec![dc()]);
        let v = verify(&o, &suffixes());
        assert!(matches!(&v[0], Some(Refusal::NameMismatch { dns_host_name, .. }) if dns_host_name == "dc1.lab.test"));
        let f = v[0].as_ref().unwrap().finding(&ac02);
        assert_eq!(f.kind, FindingKind::HostIdentityConflict);
        assert!(
            f.summary.contains("AC02") && f.summary.contains("dc1.lab.test"),
            "{}",
            f.summary
        );
        assert!(f.evidence.contains(&("attribute".into(), "dNSHostName".into())));
    }

    #[test]
    fn a_long_host_name_matches_its_15_character_netbios_name() {
        let sfx = suffixes();
        assert!(is_own_name("verylonghostname01.lab.test", "VERYLONGHOSTNAM", &sfx));
        assert!(is_own_name("hv01.lab.test", "HV01", &sfx));
        assert!(!is_own_name("hv011.lab.test", "HV01", &sfx));
        assert!(!is_own_name("hv01.lab.test.evil", "HV01", &sfx));
        assert!(!is_own_name("hv01", "HV01", &sfx));
    }

    #[test]
    fn a_suffix_outside_the_allowed_list_is_refused() {
        let mut hv = computer("HV01", WORKSTATION_TRUST_ACCOUNT, &[]);
        hv.dns_host_name = Some("hv01.evil.test".into());
        let v = verify(&observed(vec![hv], vec![]), &suffixes());
        assert!(matches!(v[0], Some(Refusal::NameMismatch { .. })));
        let mut hv = computer("HV01", WORKSTATION_TRUST_ACCOUNT, &[]);
        hv.dns_host_name = Some("hv01.evil.test".into());
        let v = verify(&observed(vec![hv], vec![]), &["evil.test".into()]);
        assert_eq!(v, vec![None], "a listed suffix is allowed");
    }

    #[test]
    fn an_spn_of_the_host_held_elsewhere_names_the_owner() {
        let hv = computer("HV01", WORKSTATION_TRUST_ACCOUNT, &[]);
        let mut svc = computer("SVC", WORKSTATION_TRUST_ACCOUNT, &[]);
        svc.dn = "CN=svc,OU=Elsewhere,DC=lab,DC=test".into();
        svc.spns = vec!["CIFS/HV01.lab.test".into()];
        let v = verify(&observed(vec![hv], vec![svc]), &suffixes());
        assert_eq!(
            v[0],
            Some(Refusal::SpnHeldByOther {
                spn: "HOST/hv01.lab.test".replace("HOST", "cifs"),
                owner: "CN=svc,OU=Elsewhere,DC=lab,DC=test".into()
            })
        );
    }

    #[test]
    fn a_copied_dns_host_name_refuses_the_impostor_and_names_the_owner() {
        let hv01 = computer("HV01", WORKSTATION_TRUST_ACCOUNT, &[]);
        let mut imp = computer("AC03", WORKSTATION_TRUST_ACCOUNT, &[]);
        imp.dns_host_name = Some("hv01.lab.test".into());
        let v = verify(&observed(vec![hv01.clone(), imp], vec![]), &suffixes());
        assert!(
            matches!(&v[1], Some(Refusal::NameMismatch { owner: Some(o), .. }) if *o == hv01.dn),
            "the impostor: {:?}",
            v[1]
        );
        assert_eq!(v[0], None, "the name's owner keeps it: the impostor's own name differs");
    }

    #[test]
    fn two_objects_with_the_same_name_and_dns_host_name_are_ambiguous() {
        let hv01 = computer("HV01", WORKSTATION_TRUST_ACCOUNT, &[]);
        // A user object `HV01` (no `$`) that claims the host's dNSHostName.
        let mut user = computer("HV01", 0x200, &[]);
        user.dn = "CN=HV01 user,OU=People,DC=lab,DC=test".into();
        user.sam_account_name = "HV01".into();
        user.spns.clear();
        let v = verify(&observed(vec![hv01], vec![user]), &suffixes());
        assert!(
            matches!(&v[0], Some(Refusal::DuplicateName { owner, .. }) if owner.contains("People")),
            "{v:?}"
        );
    }

    #[test]
    fn dcs_rodcs_and_privileged_machines_are_never_targets() {
        let rodc = computer("RODC1", WORKSTATION_TRUST_ACCOUNT | PARTIAL_SECRETS_ACCOUNT, &[]);
        let admin = computer("PAW01", WORKSTATION_TRUST_ACCOUNT, &[]);
        let mut o = observed(vec![dc(), rodc, admin.clone()], vec![]);
        o.claims.privileged = vec![dn_key(&admin.dn)];
        let v = verify(&o, &suffixes());
        assert_eq!(
            v,
            vec![
                Some(Refusal::DomainController),
                Some(Refusal::ReadOnlyDomainController),
                Some(Refusal::Privileged)
            ]
        );
    }

    #[test]
    fn file_server_owners_are_found_by_spn() {
        let o = observed(vec![], vec![dc()]);
        let owners = owners_of(&o, "dc1.lab.test");
        assert_eq!(owners.len(), 1);
        assert!(owners[0].is_domain_controller());
        assert!(owners_of(&o, "fs01.lab.test").is_empty());
    }
}
