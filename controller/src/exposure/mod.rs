//! Exposure: who can impersonate whom, to what, and is it more than live
//! migration needs? A pure function of one observe and the configured groups,
//! as security tools see delegation (BloodHound's AllowedToDelegate edge,
//! PingCastle's delegation checks): a source holding an edge to a target can
//! obtain a ticket to the target *as any account that is not sensitive and
//! not in Protected Users*, and since the service name in the ticket is not
//! protected, to any service on the target, whatever class the entry names.
//!
//! Edges come from two attributes:
//! - `msDS-AllowedToDelegateTo` on the source (classic KCD), grouped by the
//!   object the entry's host names; "Kerberos only" or protocol transition
//!   after the source's 0x1000000 bit;
//! - `msDS-AllowedToActOnBehalfOfOtherIdentity` on the target (RBCD), one edge
//!   per principal its DACL allows (`sd`); RBCD always allows protocol
//!   transition.
//!
//! Each edge is classified:
//! - *required*: the migration topology needs it — the migration service and
//!   `cifs/` to a peer sharing a group with the source, `cifs/` to one of the
//!   source's groups' file servers;
//! - *excess*: not needed, but reaching nothing worse than a managed host — a
//!   stale peer (a computer of the managed scope that shares no group with
//!   the source), a name no object answers to (deleted or renamed), more
//!   service classes than migration needs (an unmanaged entry reaching an
//!   in-scope host), RBCD between managed hosts (kcdsync manages classic KCD,
//!   so RBCD there only duplicates or widens it);
//! - *dangerous*: it reaches a domain controller, a machine in a privileged
//!   group, or a machine outside every group (outside the managed scope and
//!   no group's file server), or an RBCD principal kcdsync cannot name (not a
//!   computer of the scope) can impersonate anyone to a managed host.
//!
//! Dangerous edges become findings ([`findings`]), whoever wrote them.
//! - `sd`: the security-descriptor reader.
//! - `diff`: the security-edge change of a plan.

pub mod diff;
pub mod sd;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::config::Group;
use crate::model::identity::names_of;
use crate::model::names::HostName;
use crate::model::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Classic KCD without protocol transition: only accounts that
    /// authenticated to the source with Kerberos.
    KerberosOnly,
    /// Classic KCD with "use any authentication protocol".
    ProtocolTransition,
    /// Resource-based: always with protocol transition.
    Rbcd,
}

impl Via {
    pub fn describe(self) -> &'static str {
        match self {
            Via::KerberosOnly => "constrained delegation, Kerberos only",
            Via::ProtocolTransition => "constrained delegation with protocol transition",
            Via::Rbcd => "resource-based constrained delegation",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Required,
    Excess,
    Dangerous,
}

/// One delegation edge: `source` may act for others towards `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    /// The source's name (FQDN, else NetBIOS); the SID when an RBCD
    /// principal is not a computer of the scope.
    pub source: String,
    /// Empty when the source is known by SID only.
    pub source_dn: String,
    /// The target's name, or the host an entry names when no object answers to it.
    pub target: String,
    /// Empty when no object answers to the target's name.
    pub target_dn: String,
    /// Service classes named (lower-case, sorted); `*` for RBCD (every service of the target).
    pub services: Vec<String>,
    /// The attribute values behind the edge: entries of msDS-AllowedToDelegateTo,
    /// or the principal's SID in the target's RBCD descriptor.
    pub entries: Vec<String>,
    pub via: Via,
    pub class: Class,
    /// Why it is excess or dangerous; why it is required.
    pub reasons: Vec<String>,
}

impl Edge {
    /// The accounts the source can obtain tickets for, towards the target.
    pub fn impersonates(&self) -> &'static str {
        match self.via {
            Via::KerberosOnly => {
                "accounts that authenticate to the source with Kerberos, unless sensitive or in Protected Users"
            }
            _ => "any account that is not sensitive and not in Protected Users, without its password or ticket",
        }
    }

    /// Stable across reads: source, target, via and class.
    pub fn key(&self) -> String {
        let end = |dn: &str, name: &str| if dn.is_empty() { name.to_lowercase() } else { dn_key(dn) };
        format!(
            "{}|{}|{:?}|{:?}",
            end(&self.source_dn, &self.source),
            end(&self.target_dn, &self.target),
            self.via,
            self.class
        )
    }
}

/// The exposure of the fleet in one observe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Exposure {
    /// Sorted by source, target, class.
    pub edges: Vec<Edge>,
    /// Privileged accounts that every protocol-transition edge can impersonate
    /// (neither sensitive nor in Protected Users), by name.
    pub privileged_impersonable: Vec<String>,
    /// Hosts whose RBCD descriptor could not be read, with why: its edges are unknown.
    pub unreadable: Vec<(String, String)>,
}

/// What the exposure is computed from: one observe, its index, the objects
/// outside the scope that entries name, and the privileged accounts.
pub struct Inputs<'a> {
    pub groups: &'a [Group],
    pub observed: &'a Observed,
    pub index: &'a Index,
    pub outside: &'a Outside,
    pub privileged: &'a [Privileged],
}

/// Where an edge's other end is.
#[derive(Clone, Copy)]
enum End<'a> {
    /// `Observed::computers[i]`.
    Scope(usize),
    /// An object outside the scope (`Outside::objects` or a claim holder).
    Outside(&'a Computer),
    /// No object answers to this name (or SID).
    Nobody(&'a str),
}

/// The migration topology of the groups: who is whose peer, whose file servers.
struct Topology {
    peers: HashMap<usize, BTreeSet<usize>>,
    /// Members of any group (trusted or refused).
    grouped: HashSet<usize>,
    /// File-server names (lower-case FQDN and NetBIOS) of each member's groups.
    file_servers: HashMap<usize, BTreeSet<String>>,
    /// Every group's file-server names.
    all_file_servers: BTreeSet<String>,
}

fn topology(inp: &Inputs) -> Topology {
    let mut t = Topology {
        peers: HashMap::new(),
        grouped: HashSet::new(),
        file_servers: HashMap::new(),
        all_file_servers: BTreeSet::new(),
    };
    for g in inp.groups {
        let m = g.resolve(inp.observed, inp.index);
        let fs: BTreeSet<String> = g
            .file_servers
            .iter()
            .flat_map(|f| [f.as_str().to_owned(), f.derived_netbios().to_ascii_lowercase()])
            .collect();
        t.all_file_servers.extend(fs.iter().cloned());
        t.grouped.extend(m.refused.iter().copied());
        for &i in &m.computers {
            t.grouped.insert(i);
            t.peers
                .entry(i)
                .or_default()
                .extend(m.computers.iter().filter(|&&p| p != i));
            t.file_servers.entry(i).or_default().extend(fs.iter().cloned());
        }
    }
    t
}

/// The exposure model of one observe.
pub fn exposure(inp: &Inputs) -> Exposure {
    let topo = topology(inp);
    let by_sid: HashMap<&str, usize> = inp
        .observed
        .computers
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.object_sid.as_deref().map(|s| (s, i)))
        .collect();
    let mut out = Exposure::default();
    for (s, c) in inp.observed.computers.iter().enumerate() {
        if !c.allowed_to_delegate_to.is_empty() {
            classic_edges(inp, &topo, s, &mut out.edges);
        }
        if !c.rbcd.is_empty() {
            match sd::dacl_sids(&c.rbcd) {
                Ok(sids) => rbcd_edges(inp, &topo, &by_sid, s, &sids.effective(), &mut out.edges),
                Err(e) => out.unreadable.push((c.display_name(), e.to_string())),
            }
        }
    }
    out.edges
        .sort_by(|a, b| (&a.source, &a.target, a.class, a.via).cmp(&(&b.source, &b.target, b.class, b.via)));
    out.privileged_impersonable = inp
        .privileged
        .iter()
        .filter(|p| p.account.uac & NOT_DELEGATED == 0 && !p.account.protected_users)
        .map(|p| p.account.name.clone())
        .collect();
    out
}

/// `o` answers to `name` (lower-case) for the KDC: an SPN of any class names
/// it (the KDC issues a ticket for `class/name` to that SPN's holder, `cifs/`
/// through `HOST/`).
fn holds_spn_for(o: &Computer, name: &str) -> bool {
    o.spns
        .iter()
        .filter_map(|s| spn_parts(s))
        .any(|(_, h)| h.eq_ignore_ascii_case(name))
}

/// `o` answers to one of `names` (lower-case) by an SPN, its dNSHostName or
/// its NetBIOS name: the objects outside the scope worth reading for the
/// exposure model.
pub fn answers_to_any(o: &Computer, names: &std::collections::HashSet<String>) -> bool {
    o.fqdn().is_some_and(|f| names.contains(&f))
        || names.contains(&o.netbios().to_ascii_lowercase())
        || o.spns
            .iter()
            .filter_map(|s| spn_parts(s))
            .any(|(_, h)| names.contains(&h.to_ascii_lowercase()))
}

/// The object a host name in an entry reaches: a computer of the scope whose
/// name checks out; else, outside the scope, what the KDC would issue the
/// ticket to — the holder of an SPN for the name — or, when nobody holds one,
/// the object of that NetBIOS name or dNSHostName. A dNSHostName alone gets no
/// tickets, and any object's can be copied (an impostor claiming the DC's
/// name must not hide the DC). Of several candidates the Tier-0 one is taken:
/// a classification may overstate, never understate.
fn resolve<'a>(inp: &Inputs<'a>, host: &'a str) -> End<'a> {
    if let Ok(name) = HostName::parse(host)
        && let Some(i) = inp.index.find(&name)
    {
        return End::Scope(i);
    }
    let lower = host.to_ascii_lowercase();
    let outside = || inp.outside.objects.iter().chain(&inp.observed.claims.holders);
    let mut found: Vec<&Computer> = outside().filter(|o| holds_spn_for(o, &lower)).collect();
    if found.is_empty() {
        found = outside()
            .filter(|o| o.netbios().eq_ignore_ascii_case(host) || o.fqdn().as_deref() == Some(lower.as_str()))
            .collect();
    }
    let worst = found.iter().find(|o| tier0(inp, o).is_some()).or(found.first());
    worst.map_or(End::Nobody(host), |o| End::Outside(o))
}

/// The service classes live migration needs towards a peer, and towards a file server.
const PEER_CLASSES: [&str; 2] = ["microsoft virtual system migration service", "cifs"];
const FILE_SERVER_CLASSES: [&str; 1] = ["cifs"];

/// (lower-case service class, entry) of the entries that reach one object.
type Entries<'a> = Vec<(String, &'a str)>;

/// The classic edges of source `s`, grouped by the object each entry reaches.
fn classic_edges(inp: &Inputs, topo: &Topology, s: usize, out: &mut Vec<Edge>) {
    let src = &inp.observed.computers[s];
    let via = if src.uac & TRUSTED_TO_AUTH_FOR_DELEGATION != 0 {
        Via::ProtocolTransition
    } else {
        Via::KerberosOnly
    };
    // By the object reached (its DN key), or by the name nobody answers to.
    let mut by_end: BTreeMap<String, (End, Entries)> = BTreeMap::new();
    for e in &src.allowed_to_delegate_to {
        // Not an SPN: the KDC matches it to nothing, but it is not wanted either.
        let (class, end) = match spn_parts(e) {
            Some((class, host)) => (class.to_ascii_lowercase(), resolve(inp, host)),
            None => (String::new(), End::Nobody(e.as_str())),
        };
        let key = match end {
            End::Scope(i) => dn_key(&inp.observed.computers[i].dn),
            End::Outside(o) => dn_key(&o.dn),
            End::Nobody(n) => format!("?{}", n.to_ascii_lowercase()),
        };
        by_end.entry(key).or_insert((end, Vec::new())).1.push((class, e));
    }
    for (end, entries) in by_end.into_values() {
        let (target, target_dn) = end_names(inp, end);
        let judged = judge_target(inp, topo, s, end);
        let edge = |class: Class, reasons: Vec<String>, keep: &dyn Fn(&str) -> bool| {
            let picked: Vec<&(String, &str)> = entries.iter().filter(|(c, _)| keep(c)).collect();
            (!picked.is_empty()).then(|| Edge {
                source: src.display_name(),
                source_dn: src.dn.clone(),
                target: target.clone(),
                target_dn: target_dn.clone(),
                services: picked
                    .iter()
                    .map(|(c, _)| c.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                entries: picked.iter().map(|(_, e)| e.to_string()).collect(),
                via,
                class,
                reasons,
            })
        };
        match judged {
            Judged::Needed { classes, why } => {
                out.extend(edge(Class::Required, vec![why], &|c| classes.contains(&c)));
                let more = format!(
                    "more service classes than migration needs (it needs only {}); the ticket's service name is not protected, so any of them reaches every service on the target",
                    classes.join(", ")
                );
                out.extend(edge(Class::Excess, vec![more], &|c| !classes.contains(&c)));
            }
            Judged::Not { class, why } => out.extend(edge(class, why, &|_| true)),
        }
    }
}

/// What an edge to a target is, before its service classes are looked at.
enum Judged {
    /// Required for these classes (the rest is excess).
    Needed {
        classes: &'static [&'static str],
        why: String,
    },
    Not {
        class: Class,
        why: Vec<String>,
    },
}

/// Why an object is Tier 0, if it is: a DC, an RODC, a privileged machine.
fn tier0(inp: &Inputs, c: &Computer) -> Option<String> {
    if c.is_domain_controller() {
        return Some(format!("{} is a domain controller", c.display_name()));
    }
    if c.uac & PARTIAL_SECRETS_ACCOUNT != 0 {
        return Some(format!("{} is a read-only domain controller", c.display_name()));
    }
    let key = dn_key(&c.dn);
    let privileged = inp.observed.claims.privileged.contains(&key) || inp.outside.privileged.contains(&key);
    privileged.then(|| format!("{} is a member of a privileged group", c.display_name()))
}

fn judge_target(inp: &Inputs, topo: &Topology, s: usize, end: End) -> Judged {
    let dangerous = |why: String| Judged::Not {
        class: Class::Dangerous,
        why: vec![why],
    };
    let excess = |why: String| Judged::Not {
        class: Class::Excess,
        why: vec![why],
    };
    let own_fs = topo.file_servers.get(&s);
    let is_fs =
        |names: &[String], set: Option<&BTreeSet<String>>| names.iter().any(|n| set.is_some_and(|f| f.contains(n)));
    match end {
        End::Scope(t) => {
            let c = &inp.observed.computers[t];
            if let Some(why) = tier0(inp, c) {
                return dangerous(why);
            }
            if let Some(r) = inp.index.refusal(t) {
                // Another object answers to the name too: if that one is Tier 0,
                // the KDC may hand it the ticket.
                let other = match r {
                    Refusal::SpnHeldByOther { owner, .. } | Refusal::DuplicateName { owner, .. } => Some(owner),
                    _ => None,
                };
                if let Some(why) = other.and_then(|dn| by_dn(inp, dn)).and_then(|o| tier0(inp, o)) {
                    return dangerous(format!(
                        "{}'s name is also held by another object: {why}",
                        c.display_name()
                    ));
                }
                return excess(format!(
                    "{} does not check out as a delegation target: {}",
                    c.display_name(),
                    r.finding(c).summary
                ));
            }
            if topo.peers.get(&s).is_some_and(|p| p.contains(&t)) {
                return Judged::Needed {
                    classes: &PEER_CLASSES,
                    why: format!("{} is a migration peer of the source", c.display_name()),
                };
            }
            if is_fs(&names_of(c), own_fs) {
                return Judged::Needed {
                    classes: &FILE_SERVER_CLASSES,
                    why: format!("{} holds VM storage of the source's group", c.display_name()),
                };
            }
            let where_ = if topo.grouped.contains(&t) {
                "shares no group with the source"
            } else {
                "is in the managed scope but in no group"
            };
            excess(format!("stale peer: {} {where_}", c.display_name()))
        }
        End::Outside(o) => {
            if let Some(why) = tier0(inp, o) {
                return dangerous(why);
            }
            let names = names_of(o);
            if is_fs(&names, own_fs) {
                return Judged::Needed {
                    classes: &FILE_SERVER_CLASSES,
                    why: format!("{} holds VM storage of the source's group", o.display_name()),
                };
            }
            if is_fs(&names, Some(&topo.all_file_servers)) {
                return excess(format!("{} is a file server of another group", o.display_name()));
            }
            dangerous(format!(
                "{} ({}) is outside every group: not a Hyper-V host of the managed scope nor a group's file server",
                o.display_name(),
                o.dn
            ))
        }
        End::Nobody(name) => {
            let lower = name.to_ascii_lowercase();
            if own_fs.is_some_and(|f| f.contains(&lower)) {
                return Judged::Needed {
                    classes: &FILE_SERVER_CLASSES,
                    why: format!("{name} is a file server of the source's group"),
                };
            }
            excess(format!(
                "no object in the domain answers to `{name}`: a deleted or renamed host"
            ))
        }
    }
}

/// The object of DN `dn` among everything read (the scope, outside, claim holders).
fn by_dn<'a>(inp: &Inputs<'a>, dn: &str) -> Option<&'a Computer> {
    let key = dn_key(dn);
    inp.observed
        .computers
        .iter()
        .chain(&inp.outside.objects)
        .chain(&inp.observed.claims.holders)
        .find(|o| dn_key(&o.dn) == key)
}

fn end_names(inp: &Inputs, end: End) -> (String, String) {
    match end {
        End::Scope(i) => {
            let c = &inp.observed.computers[i];
            (c.display_name(), c.dn.clone())
        }
        End::Outside(o) => (o.display_name(), o.dn.clone()),
        End::Nobody(n) => (n.to_ascii_lowercase(), String::new()),
    }
}

/// The RBCD edges towards target `t`: one per principal its descriptor allows.
/// `by_sid`: the computers of the scope by objectSid.
fn rbcd_edges(
    inp: &Inputs,
    topo: &Topology,
    by_sid: &HashMap<&str, usize>,
    t: usize,
    sids: &[String],
    out: &mut Vec<Edge>,
) {
    let tgt = &inp.observed.computers[t];
    for sid in sids {
        let source = by_sid.get(sid.as_str()).copied();
        let (class, why) = if let Some(why) = tier0(inp, tgt) {
            (Class::Dangerous, why)
        } else {
            match source {
                None => (
                    Class::Dangerous,
                    format!(
                        "{sid} is not a computer of the managed scope, and can impersonate any account to {}",
                        tgt.display_name()
                    ),
                ),
                Some(s) if topo.peers.get(&s).is_some_and(|p| p.contains(&t)) => (
                    Class::Excess,
                    "RBCD between migration peers: kcdsync manages their classic delegation; this one adds every service of the target".to_owned(),
                ),
                Some(s) => (
                    Class::Excess,
                    format!(
                        "stale: {} shares no group with {}",
                        inp.observed.computers[s].display_name(),
                        tgt.display_name()
                    ),
                ),
            }
        };
        let src = source.map(|s| &inp.observed.computers[s]);
        out.push(Edge {
            source: src.map_or_else(|| sid.clone(), Computer::display_name),
            source_dn: src.map(|c| c.dn.clone()).unwrap_or_default(),
            target: tgt.display_name(),
            target_dn: tgt.dn.clone(),
            services: vec!["*".to_owned()],
            entries: vec![sid.clone()],
            via: Via::Rbcd,
            class,
            reasons: vec![why],
        });
    }
}

/// Every dangerous edge as a finding, with its evidence and remediation.
pub fn findings(exposure: &Exposure) -> Vec<Finding> {
    let mut out: Vec<Finding> = exposure
        .edges
        .iter()
        .filter(|e| e.class == Class::Dangerous)
        .map(edge_finding)
        .collect();
    for (host, why) in &exposure.unreadable {
        out.push(
            Finding::new(
                FindingKind::DangerousDelegation,
                Severity::Warning,
                &[host],
                "",
                format!("{host}'s {ATTR_RBCD} cannot be read ({why}): who may delegate to it is unknown"),
            )
            .evidence("attribute", ATTR_RBCD)
            .fix("inspect the descriptor (Get-ADComputer -Properties PrincipalsAllowedToDelegateToAccount) and rewrite it", false),
        );
    }
    out
}

fn edge_finding(e: &Edge) -> Finding {
    let (attr, on, fix) = match e.via {
        Via::Rbcd => (
            ATTR_RBCD,
            e.target.as_str(),
            format!(
                "remove {} from {}'s {ATTR_RBCD} (Set-ADComputer {} -PrincipalsAllowedToDelegateToAccount with the principals that should stay); kcdsync does not write RBCD",
                e.source, e.target, e.target
            ),
        ),
        _ => (
            ATTR_DELEGATE_TO,
            e.source.as_str(),
            format!(
                "remove {} from {}'s {ATTR_DELEGATE_TO} (Set-ADComputer {} -Remove @{{'{ATTR_DELEGATE_TO}'=...}}); kcdsync never removes entries to targets outside its scope",
                e.entries.join(", "),
                e.source,
                e.source
            ),
        ),
    };
    let mut f = Finding::new(
        FindingKind::DangerousDelegation,
        Severity::Critical,
        &[&e.source, &e.target],
        "",
        format!(
            "{} can obtain tickets to {} as {} ({}): {}",
            e.source,
            e.target,
            e.impersonates(),
            e.via.describe(),
            e.reasons.join("; ")
        ),
    )
    .evidence("attribute", attr)
    .evidence("on", on)
    .evidence("values", e.entries.join(", "));
    if !e.target_dn.is_empty() {
        f = f.evidence("target", e.target_dn.clone());
    }
    // A pair can hold a classic and an RBCD edge: one finding each.
    f.id = format!("{}:{:?}", f.id, e.via);
    f.fix(fix, false)
}

/// Host names that entries in the scope name and no computer of the scope
/// answers to: what the I/O edge looks up outside the scope (`Outside`).
pub fn names_outside(observed: &Observed, index: &Index) -> Vec<String> {
    let mut out = BTreeSet::new();
    for c in &observed.computers {
        for e in &c.allowed_to_delegate_to {
            if let Some((_, host)) = spn_parts(e) {
                let found = HostName::parse(host).ok().and_then(|n| index.find(&n));
                if found.is_none() {
                    out.insert(host.to_ascii_lowercase());
                }
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests;
