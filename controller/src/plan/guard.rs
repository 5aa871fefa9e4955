//! The blast-radius guard: what may be written without a person's approval.
//! It decides by the kind of each part of a change (`ChangeKind`), never by
//! the words that describe it.

use crate::config::{FirstGrants, Group, Guard, Mode};
use crate::model::{ACCOUNTDISABLE, ChangeKind, HostChange, NOT_DELEGATED, Privileged};

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
/// approval; so does a first grant (a host gaining protocol transition or its
/// first delegation entries) unless every group of the host opted out with
/// `first_grants = "auto"`; and so does everything when more hosts would
/// change than the guard allows.
pub fn guard(changes: &[HostChange], guard: &Guard, groups: &[Group]) -> Guarded {
    let auto_first = |c: &HostChange| {
        !c.groups.is_empty()
            && c.groups.iter().all(|name| {
                groups
                    .iter()
                    .any(|g| g.name == *name && g.first_grants == FirstGrants::Auto)
            })
    };
    let (first, rest): (Vec<&HostChange>, Vec<&HostChange>) =
        changes.iter().partition(|c| c.is_first_grant() && !auto_first(c));
    let additive: Vec<HostChange> = rest.iter().filter_map(|c| c.additive_part()).collect();
    let subtractive: Vec<HostChange> = rest.iter().filter_map(|c| c.subtractive_part()).collect();
    let mut out = Guarded::default();
    if !first.is_empty() {
        out.reasons.push(format!(
            "{} hosts would gain protocol transition or their first delegation entries ({}): a first grant waits for approval (first_grants = \"auto\" on a group opts out)",
            first.len(),
            first.iter().take(5).map(|c| c.host.as_str()).collect::<Vec<_>>().join(", ")
                + if first.len() > 5 { ", ..." } else { "" }
        ));
    }
    if additive.len() > guard.max_hosts_per_apply {
        out.reasons.push(format!(
            "would change {} hosts, more than guard.max_hosts_per_apply = {}",
            additive.len(),
            guard.max_hosts_per_apply
        ));
        out.held = changes.to_vec();
    } else {
        out.auto = additive;
        out.held = first.into_iter().cloned().collect();
        out.held.extend(subtractive);
    }
    let with = |kind: ChangeKind| changes.iter().filter(move |c| c.kinds().contains(&kind));
    let removals: usize = with(ChangeKind::RemoveEntries).map(|c| c.remove.len()).sum();
    if removals > 0 {
        let hosts = with(ChangeKind::RemoveEntries).count();
        out.reasons
            .push(format!("removes {removals} delegation entries on {hosts} hosts"));
    }
    let cleared = with(ChangeKind::ClearUnconstrained).count();
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
pub fn sensitive_changes(privileged: &[Privileged], migration_accounts: &[String]) -> Vec<HostChange> {
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
            entries_before: 0,
        })
        .collect();
    out.sort_by(|a, b| a.dn.cmp(&b.dn));
    out
}
