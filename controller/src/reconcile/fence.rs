//! Fencing: with several replicas, every AD write and the audit must still
//! hold the leader lease the run started under. An unreachable store counts
//! as a lost lease: writing blind is worse than writing late.

use super::ReconcileError;
use crate::store::Store;

/// The leader lease a write must still hold: (name, holder, epoch) as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lease: String,
    pub holder: String,
    pub epoch: i64,
}

impl Fence {
    /// The fencing check.
    pub async fn holds(&self, store: &Store) -> bool {
        match store.holds_lease(&self.lease, &self.holder, self.epoch).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the leader lease; stepping down");
                false
            }
        }
    }

    /// The error of a run stopped by this fence after `written` AD writes.
    pub fn lost(&self, written: usize) -> ReconcileError {
        ReconcileError::Fenced {
            lease: self.lease.clone(),
            holder: self.holder.clone(),
            epoch: self.epoch,
            written,
        }
    }
}

/// Fails when `fence` is set and no longer held.
pub async fn check(fence: Option<&Fence>, store: &Store, written: usize) -> Result<(), ReconcileError> {
    match fence {
        Some(f) if !f.holds(store).await => Err(f.lost(written)),
        _ => Ok(()),
    }
}
