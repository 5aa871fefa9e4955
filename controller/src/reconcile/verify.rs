//! Verify: read back what was written. The audit records what AD says after
//! the write, not what kcdsync meant to write; a host whose object does not
//! show the write is a failure of the run.
//!
//! Only the written objects are read again (pipelined on the run's
//! connection), and each is compared with the change written to it: re-reading
//! the whole scope and planning the fleet again after every write made a
//! one-host repair cost a full paged search and two plans of the fleet.

use futures::{StreamExt, TryStreamExt};
use tracing::Instrument;

use super::apply::Written;
use super::{AdClient, HostFailure, ReconcileError};
use crate::model::{Computer, HostChange};

/// A written change, the object before, and the object as read back.
pub type Verified = (HostChange, Computer, Computer);

/// Read-backs in flight at once (one connection; AD answers them in turn).
const READS_IN_FLIGHT: usize = 32;

/// Reads every written object back; what does not show its write becomes a failure.
pub async fn verify(
    ad: &impl AdClient,
    in_flight: usize,
    written: Vec<Written>,
    failures: &mut Vec<HostFailure>,
) -> Result<Vec<Verified>, ReconcileError> {
    if written.is_empty() {
        return Ok(Vec::new());
    }
    let span = tracing::info_span!("verify", hosts = written.len());
    let dns: Vec<String> = written.iter().map(|(c, _)| c.dn.clone()).collect();
    let reads: Vec<Option<Computer>> = futures::stream::iter(dns)
        .map(|dn| async move { ad.read_object(&dn).await })
        .buffered(READS_IN_FLIGHT.min(in_flight.max(1)))
        .try_collect()
        .instrument(span)
        .await?;
    let mut out = Vec::new();
    for ((change, before), now) in written.into_iter().zip(reads) {
        let Some(now) = now else {
            failures.push(HostFailure::new(
                &change,
                "verify: the object disappeared right after the write",
            ));
            continue;
        };
        if let Some(left) = change.left_undone(&now) {
            let differs = format!(
                "verify: AD still differs after the write: {}",
                left.reasons().join("; ")
            );
            failures.push(HostFailure::new(&change, differs));
        }
        out.push((change, before, now));
    }
    Ok(out)
}
