//! Who is in a migration group: the hosts it lists and the members of its
//! AD group, resolved against one observe. Planning, diagnosis and the API
//! all ask this one resolver, so they can never disagree on membership.

use super::dn::Dn;
use super::names::HostName;
use super::{Index, Observed};

/// A group's members as found in one observe.
#[derive(Debug, Default)]
pub struct Members<'g> {
    /// Indexes into `Observed::computers`, in the order first met, each once:
    /// only computers whose identity checks out (`Index::trusted`).
    pub computers: Vec<usize>,
    /// Members that are not delegation targets (`Index::refusal` says why):
    /// left out of the group, each a finding.
    pub refused: Vec<usize>,
    /// Hosts the group lists that are not computers in the managed scope.
    pub missing: Vec<&'g HostName>,
    /// Members of the group's AD group that are not computers in the scope.
    pub out_of_scope: Vec<String>,
    /// The group names an AD group that does not exist or cannot be read.
    pub ad_group_missing: bool,
}

impl Members<'_> {
    /// The members in the order of `Observed::computers`.
    pub fn sorted(mut self) -> Vec<usize> {
        self.computers.sort_unstable();
        self.computers
    }
}

/// Resolves a group — the `hosts` it lists and its `ad_group` — against
/// `observed` (indexed by `index`).
pub fn resolve<'g>(hosts: &'g [HostName], ad_group: Option<&Dn>, observed: &Observed, index: &Index) -> Members<'g> {
    let mut m = Members::default();
    let add = |m: &mut Members, i: usize| {
        let list = if index.trusted(i) {
            &mut m.computers
        } else {
            &mut m.refused
        };
        if !list.contains(&i) {
            list.push(i);
        }
    };
    for h in hosts {
        match index.find(h) {
            Some(i) => add(&mut m, i),
            None => m.missing.push(h),
        }
    }
    if let Some(adg) = ad_group {
        match observed.ad_groups.get(&adg.normalized()) {
            None => m.ad_group_missing = true,
            Some(dns) => {
                for dn in dns {
                    match index.find_dn(dn) {
                        Some(i) => add(&mut m, i),
                        None => m.out_of_scope.push(dn.clone()),
                    }
                }
            }
        }
    }
    m
}
