//! The error policy, kept apart from reconciling (as kube-runtime keeps its
//! `error_policy` apart from `reconcile`): after a run, what the loop does
//! next. A run that succeeded waits for the interval (or an earlier trigger);
//! a failed one backs off, longer for problems shaped like configuration,
//! which will not fix themselves in seconds; a deposed replica does not wait
//! at all: it goes back to following.

use std::time::Duration;

use crate::ldap::LdapError;
use crate::reconcile::ReconcileError;

/// What the loop does after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run again after this long, or as soon as something wakes the loop.
    RequeueAfter(Duration),
    /// This replica lost the lease mid-run: follow, without backing off.
    Follow,
}

/// The longest back-off between failed runs.
const MAX_BACKOFF: Duration = Duration::from_secs(900);

/// After a successful run: the configured interval.
pub fn after_success(interval: Duration) -> Action {
    Action::RequeueAfter(interval)
}

/// After the `failures`-th failed run in a row (from 1).
pub fn error_policy(e: &ReconcileError, failures: u32) -> Action {
    let base = match e {
        ReconcileError::Fenced { .. } => return Action::Follow,
        ReconcileError::Ldap(LdapError::MissingPrivilege { .. }) => 300,
        _ => 5,
    };
    let exp = failures.saturating_sub(1).min(6);
    Action::RequeueAfter(Duration::from_secs(base << exp).min(MAX_BACKOFF))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(a: Action) -> u64 {
        match a {
            Action::RequeueAfter(d) => d.as_secs(),
            Action::Follow => panic!("follows"),
        }
    }

    #[test]
    fn transient_failures_back_off_exponentially_to_a_cap() {
        let e = ReconcileError::PlanNotFound(1);
        let waits: Vec<u64> = (1..=9).map(|n| wait(error_policy(&e, n))).collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 320, 320, 320]);
    }

    #[test]
    fn configuration_shaped_failures_wait_longer() {
        let e = ReconcileError::Ldap(LdapError::MissingPrivilege {
            dn: "CN=HV01".into(),
            text: "00002098: SeEnableDelegationPrivilege".into(),
        });
        assert_eq!(wait(error_policy(&e, 1)), 300);
        assert_eq!(wait(error_policy(&e, 2)), 600);
        assert_eq!(wait(error_policy(&e, 5)), 900);
    }

    #[test]
    fn a_deposed_replica_follows_at_once() {
        let e = ReconcileError::Fenced {
            lease: "reconciler".into(),
            holder: "a".into(),
            epoch: 2,
            written: 1,
        };
        assert_eq!(error_policy(&e, 1), Action::Follow);
    }
}
