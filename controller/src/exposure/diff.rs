//! A plan's security-edge change: the exposure as observed, against the
//! exposure once the plan's modifies are applied to the same observe. What an
//! approver needs to see besides the entries: which edges appear or go, and
//! whether any of them is dangerous.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{Class, Edge, Exposure, Inputs, exposure};
use crate::model::{HostChange, Index, Observed, dn_key, spn_key};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EdgeDiff {
    pub added: Vec<Edge>,
    pub removed: Vec<Edge>,
}

impl EdgeDiff {
    /// An added edge is dangerous: the plan would open it.
    pub fn adds_dangerous(&self) -> bool {
        self.added.iter().any(|e| e.class == Class::Dangerous)
    }
}

/// `observed` with `changes` applied, as verify would read it back.
pub fn apply(observed: &Observed, changes: &[HostChange]) -> Observed {
    let mut after = observed.clone();
    let by_dn: HashMap<String, &HostChange> = changes.iter().map(|c| (dn_key(&c.dn), c)).collect();
    for c in &mut after.computers {
        let Some(ch) = by_dn.get(&dn_key(&c.dn)) else {
            continue;
        };
        let gone: Vec<String> = ch.remove.iter().map(|e| spn_key(e)).collect();
        c.allowed_to_delegate_to.retain(|e| !gone.contains(&spn_key(e)));
        for a in &ch.add {
            if !c.allowed_to_delegate_to.iter().any(|e| spn_key(e) == spn_key(a)) {
                c.allowed_to_delegate_to.push(a.clone());
            }
        }
        if let Some(uac) = ch.uac_after {
            c.uac = uac;
        }
    }
    after
}

/// The edges `changes` would add and remove, judged against the same groups.
/// `suffixes`: the allowed DNS suffixes (the index of the changed observe
/// is built again with them).
pub fn plan_diff(inp: &Inputs, suffixes: &[String], changes: &[HostChange]) -> EdgeDiff {
    plan_diff_from(&exposure(inp), inp, suffixes, changes)
}

/// [`plan_diff`] with the exposure of `inp` already at hand (the view's cached model): only
/// the fleet as the plan would leave it is classified.
pub fn plan_diff_from(before: &Exposure, inp: &Inputs, suffixes: &[String], changes: &[HostChange]) -> EdgeDiff {
    let observed = apply(inp.observed, changes);
    let index = Index::new(&observed, suffixes);
    let after = exposure(&Inputs {
        observed: &observed,
        index: &index,
        ..*inp
    });
    diff(before, &after)
}

/// Edges compare by their ends, how, class and service classes: a change of
/// protocol transition or of classification is one edge gone and one new.
pub fn diff(before: &Exposure, after: &Exposure) -> EdgeDiff {
    let key = |e: &Edge| format!("{}|{}", e.key(), e.services.join(","));
    let old: BTreeMap<String, &Edge> = before.edges.iter().map(|e| (key(e), e)).collect();
    let new: BTreeMap<String, &Edge> = after.edges.iter().map(|e| (key(e), e)).collect();
    EdgeDiff {
        added: new
            .iter()
            .filter(|(k, _)| !old.contains_key(*k))
            .map(|(_, e)| (*e).clone())
            .collect(),
        removed: old
            .iter()
            .filter(|(k, _)| !new.contains_key(*k))
            .map(|(_, e)| (*e).clone())
            .collect(),
    }
}
