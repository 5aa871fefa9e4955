//! Verify: read back what was written. The audit records what AD says after
//! the write, not what kcdsync meant to write; a host whose object still
//! differs from the plan is a failure of the run.
//!
//! Only the written objects are read again (pipelined on the run's
//! connection): the rest of the fleet is as observed, and re-reading the
//! whole scope after every write made a one-host repair cost a full paged
//! search. The written hosts are then planned again amid the observed fleet,
//! exactly as the run planned them.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use tracing::Instrument;

use super::apply::{Part, Written};
use super::{AdClient, HostFailure, ReconcileError};
use crate::config::Config;
use crate::model::{Computer, HostChange, Observed, dn_key};
use crate::plan;

/// A written change, the object before, and the object as read back.
pub type Verified = (HostChange, Computer, Computer);

/// Read-backs in flight at once (one connection; AD answers them in turn).
const READS_IN_FLIGHT: usize = 32;

/// Reads every written object back; what does not match becomes a failure.
pub async fn verify(
    cfg: &Config,
    ad: &impl AdClient,
    observed: &Observed,
    part: Part,
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
        .buffered(READS_IN_FLIGHT.min(cfg.ad.max_in_flight.max(1)))
        .try_collect()
        .instrument(span)
        .await?;

    // The fleet as it is now: the observe, with the written computers as read back.
    let mut after = observed.clone();
    let read: Vec<Computer> = reads.iter().flatten().cloned().collect();
    after.update_computers(&read);
    let known: HashSet<String> = observed.computers.iter().map(|c| dn_key(&c.dn)).collect();
    let replan = plan::plan(&cfg.groups, &cfg.scope, &cfg.dns_suffixes, &after);
    let remaining: HashMap<String, HostChange> = replan.changes.into_iter().map(|c| (dn_key(&c.dn), c)).collect();

    let mut out = Vec::new();
    for ((change, before), now) in written.into_iter().zip(reads) {
        let key = dn_key(&change.dn);
        let Some(now) = now else {
            failures.push(HostFailure::new(
                &change,
                "verify: the object disappeared right after the write",
            ));
            continue;
        };
        if !known.contains(&key) {
            // An account (sensitive-account enforcement), outside the computer scope: only
            // its userAccountControl was written.
            let want = change.uac_after.unwrap_or(change.uac_before);
            if now.uac & want != want {
                let got = format!("verify: userAccountControl is 0x{:x}, expected 0x{want:x}", now.uac);
                failures.push(HostFailure::new(&change, got));
            }
        } else if let Some(left) = remaining.get(&key).and_then(|c| part.of_planned(c)) {
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
