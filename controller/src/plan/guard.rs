//! The blast-radius guard: what may be written without a person's approval.
//! It decides by the kind of each part of a change (`ChangeKind`), never by
//! the words that describe it.

use crate::config::{Guard, Mode};
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
        })
        .collect();
    out.sort_by(|a, b| a.dn.cmp(&b.dn));
    out
}
