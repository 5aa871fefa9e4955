//! What can stop a reconcile. When the serve loop tries again is the error
//! policy's business (`runtime::policy`); the gRPC status of each error is
//! decided in one place, `grpc::status`.

use crate::ldap::LdapError;
use crate::store::{PlanChanged, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Ldap(#[from] LdapError),
    #[error(transparent)]
    Store(StoreError),
    #[error("plan {0} does not exist: list plans with `kcdsync-controller plans`")]
    PlanNotFound(i64),
    /// The plan was not (or no longer) in the state this decision needs: someone else
    /// approved, rejected or superseded it first.
    #[error(transparent)]
    PlanDecided(PlanChanged),
    #[error("plan {old} no longer matches AD (the fleet changed since it was made){}; nothing was written", match .new { Some(n) => format!(": review plan {n} and approve it instead"), None => ": nothing is held any more".to_owned() })]
    Superseded { old: i64, new: Option<i64> },
    #[error("this replica no longer holds the leader lease `{lease}` at epoch {epoch} (as {holder}){}: it stopped writing; the current leader reconciles", match .written { 0 => String::new(), n => format!(" after {n} AD writes, which are not audited") })]
    Fenced {
        lease: String,
        holder: String,
        epoch: i64,
        written: usize,
    },
    #[error("this replica is a follower: it does not reconcile; ask the leader")]
    Follower,
    #[error("{} of {} host changes failed (plan {plan_id}); first: {first}", .failed, .total)]
    Partial {
        plan_id: i64,
        failed: usize,
        total: usize,
        first: String,
    },
}

/// A lost plan compare-and-set is the caller's precondition, not a store fault.
impl From<StoreError> for ReconcileError {
    fn from(e: StoreError) -> ReconcileError {
        match e {
            StoreError::PlanChanged(c) => ReconcileError::PlanDecided(c),
            e => ReconcileError::Store(e),
        }
    }
}

/// Why one host was not written; recorded in the outcome and the plan's note.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Ldap(#[from] LdapError),
    #[error("{dn}: the object was deleted while being reconciled")]
    Deleted { dn: String },
    #[error("{dn}: the object changed after approval and the approved change no longer fits; run a new plan")]
    ApprovalNoLongerFits { dn: String },
}
