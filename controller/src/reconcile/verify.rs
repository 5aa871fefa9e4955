//! Verify: read back what was written. The audit records what AD says after
//! the write, not what kcdsync meant to write; a host whose object still
//! differs from the plan is a failure of the run.

use std::collections::HashMap;

use tracing::Instrument;

use super::apply::{Part, Written};
use super::{AdClient, HostFailure, ReconcileError, observe};
use crate::config::Config;
use crate::model::{Computer, HostChange, dn_key};
use crate::plan;

/// A written change, the object before, and the object as read back.
pub type Verified = (HostChange, Computer, Computer);

/// Reads every written object back; what does not match becomes a failure.
pub async fn verify(
    cfg: &Config,
    ad: &impl AdClient,
    part: Part,
    written: Vec<Written>,
    failures: &mut Vec<HostFailure>,
) -> Result<Vec<Verified>, ReconcileError> {
    if written.is_empty() {
        return Ok(Vec::new());
    }
    let span = tracing::info_span!("verify", hosts = written.len());
    let after = observe(cfg, ad).instrument(span).await?;
    let replan = plan::plan(&cfg.groups, &cfg.scope, &cfg.dns_suffixes, &after);
    let mut now_by_dn: HashMap<String, Computer> = after.computers.into_iter().map(|c| (dn_key(&c.dn), c)).collect();
    let remaining: HashMap<String, HostChange> = replan.changes.into_iter().map(|c| (dn_key(&c.dn), c)).collect();
    let mut out = Vec::new();
    for (change, before) in written {
        let key = dn_key(&change.dn);
        let now = match now_by_dn.remove(&key) {
            Some(c) => c,
            // Accounts (sensitive-account enforcement) are outside the
            // computer scope: read them back one by one.
            None => match read_back_account(ad, &change, failures).await? {
                Some(c) => c,
                None => continue,
            },
        };
        if let Some(left) = remaining.get(&key).and_then(|c| part.of_planned(c)) {
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

async fn read_back_account(
    ad: &impl AdClient,
    change: &HostChange,
    failures: &mut Vec<HostFailure>,
) -> Result<Option<Computer>, ReconcileError> {
    let Some(c) = ad.read_object(&change.dn).await? else {
        failures.push(HostFailure::new(
            change,
            "verify: the object disappeared right after the write",
        ));
        return Ok(None);
    };
    let want = change.uac_after.unwrap_or(change.uac_before);
    if c.uac & want != want {
        let got = format!("verify: userAccountControl is 0x{:x}, expected 0x{want:x}", c.uac);
        failures.push(HostFailure::new(change, got));
    }
    Ok(Some(c))
}
