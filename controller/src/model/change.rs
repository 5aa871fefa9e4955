//! One planned modify of one AD object, and what it means.
//!
//! What a change does is its structure: the userAccountControl bits it sets
//! and clears, the entries it adds and removes. Its kinds ([`ChangeKind`]) are
//! derived from that structure, never stored beside it, so the guard (which
//! matches on kinds) and the words an operator reads can never disagree with
//! what is written.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::computer::spn_key;
use super::dn::dn_key;
use super::{NOT_DELEGATED, TRUSTED_FOR_DELEGATION, TRUSTED_TO_AUTH_FOR_DELEGATION};

/// What the controller may do with a group's drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Report drift only.
    Observe,
    /// Compute plans, never write.
    Plan,
    /// Apply plans within the blast-radius guard.
    Enforce,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Observe => "observe",
            Mode::Plan => "plan",
            Mode::Enforce => "enforce",
        })
    }
}

/// One LDAP modify on one object (a computer, or an account marked sensitive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChange {
    pub host: String,
    pub dn: String,
    /// The migration groups that want it; for an account marked sensitive,
    /// the privileged groups that make it privileged.
    pub groups: Vec<String>,
    pub mode: Mode,
    pub uac_before: u32,
    /// `None` when userAccountControl stays as it is.
    pub uac_after: Option<u32>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
    /// How many `msDS-AllowedToDelegateTo` entries the object had when this
    /// change was planned: none means an addition is its first grant.
    #[serde(default)]
    pub entries_before: usize,
}

/// What one part of a change does. The guard decides by these, so a part
/// that takes something away can never pass as one that only adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Sets "use any authentication protocol" (0x1000000).
    SetProtocolTransition,
    /// Adds delegation entries to the group's peers and file servers.
    AddEntries,
    /// Removes entries to hosts no longer in a shared group.
    RemoveEntries,
    /// Clears unconstrained delegation (0x80000).
    ClearUnconstrained,
    /// Marks a privileged account "sensitive and cannot be delegated".
    MarkSensitive,
}

impl ChangeKind {
    /// Takes a right away (or restricts an account): always waits for approval.
    pub fn takes_away(self) -> bool {
        match self {
            ChangeKind::SetProtocolTransition | ChangeKind::AddEntries => false,
            ChangeKind::RemoveEntries | ChangeKind::ClearUnconstrained | ChangeKind::MarkSensitive => true,
        }
    }
}

/// A kind with the numbers that make it readable: "add 4 delegation entries …".
pub struct Reason<'a> {
    pub kind: ChangeKind,
    change: &'a HostChange,
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.change;
        match self.kind {
            ChangeKind::SetProtocolTransition => write!(f, "set protocol transition (use any authentication protocol)"),
            ChangeKind::AddEntries => write!(f, "add {} delegation entries for group peers", c.add.len()),
            ChangeKind::RemoveEntries => {
                write!(
                    f,
                    "remove {} entries to hosts no longer in a shared group",
                    c.remove.len()
                )
            }
            ChangeKind::ClearUnconstrained => write!(f, "clear unconstrained delegation (0x80000)"),
            ChangeKind::MarkSensitive => write!(
                f,
                "mark sensitive and cannot be delegated (privileged via {})",
                c.groups.join(", ")
            ),
        }
    }
}

impl HostChange {
    fn uac_final(&self) -> u32 {
        self.uac_after.unwrap_or(self.uac_before)
    }

    /// What this change does, in a fixed order.
    pub fn kinds(&self) -> Vec<ChangeKind> {
        let (set, cleared) = (self.uac_final() & !self.uac_before, self.uac_before & !self.uac_final());
        let mut out = Vec::new();
        if set & TRUSTED_TO_AUTH_FOR_DELEGATION != 0 {
            out.push(ChangeKind::SetProtocolTransition);
        }
        if !self.add.is_empty() {
            out.push(ChangeKind::AddEntries);
        }
        if !self.remove.is_empty() {
            out.push(ChangeKind::RemoveEntries);
        }
        if cleared & TRUSTED_FOR_DELEGATION != 0 {
            out.push(ChangeKind::ClearUnconstrained);
        }
        if set & NOT_DELEGATED != 0 {
            out.push(ChangeKind::MarkSensitive);
        }
        out
    }

    /// The kinds in words for operators, the audit and the API.
    pub fn reasons(&self) -> Vec<String> {
        self.kinds()
            .into_iter()
            .map(|kind| Reason { kind, change: self }.to_string())
            .collect()
    }

    /// A first grant: the host gains protocol transition, or its first
    /// delegation entries. It is a new security edge ("this host may
    /// impersonate users"), so the guard holds it for approval by default.
    pub fn is_first_grant(&self) -> bool {
        let kinds = self.kinds();
        kinds.contains(&ChangeKind::SetProtocolTransition)
            || (self.entries_before == 0 && kinds.contains(&ChangeKind::AddEntries))
    }

    /// Takes something away (entries, or unconstrained delegation) and so
    /// needs approval.
    pub fn is_subtractive(&self) -> bool {
        self.kinds().into_iter().any(ChangeKind::takes_away)
    }

    /// The part that only adds: entries and the protocol-transition bit.
    pub fn additive_part(&self) -> Option<HostChange> {
        let uac = self.uac_before | (self.uac_final() & TRUSTED_TO_AUTH_FOR_DELEGATION);
        let part = HostChange {
            uac_after: (uac != self.uac_before).then_some(uac),
            remove: Vec::new(),
            ..self.clone()
        };
        debug_assert!(!part.is_subtractive());
        (!part.kinds().is_empty()).then_some(part)
    }

    /// The part that takes away, on top of the additive part.
    pub fn subtractive_part(&self) -> Option<HostChange> {
        if !self.is_subtractive() {
            return None;
        }
        let base = self
            .additive_part()
            .and_then(|a| a.uac_after)
            .unwrap_or(self.uac_before);
        let after = self.uac_final();
        Some(HostChange {
            uac_before: base,
            uac_after: (after != base).then_some(after),
            add: Vec::new(),
            ..self.clone()
        })
    }

    /// What of this change `now` (the object read back after writing it) does not show: the
    /// userAccountControl bits it changed that are not as it set them, entries it added that
    /// are missing, entries it removed that are back. `None`: the write is in AD. Only what
    /// the change touched is compared, so another writer's unrelated change (a disabled
    /// account, an SPN) is not taken for a failed write.
    pub fn left_undone(&self, now: &super::Computer) -> Option<HostChange> {
        let touched = self.uac_before ^ self.uac_final();
        let has: BTreeSet<String> = now.allowed_to_delegate_to.iter().map(|e| spn_key(e)).collect();
        let left = HostChange {
            uac_before: now.uac,
            uac_after: ((now.uac ^ self.uac_final()) & touched != 0)
                .then_some((now.uac & !touched) | (self.uac_final() & touched)),
            add: self
                .add
                .iter()
                .filter(|e| !has.contains(&spn_key(e)))
                .cloned()
                .collect(),
            remove: self
                .remove
                .iter()
                .filter(|e| has.contains(&spn_key(e)))
                .cloned()
                .collect(),
            ..self.clone()
        };
        (!left.kinds().is_empty() || left.uac_after.is_some()).then_some(left)
    }

    /// What this change means, independent of the exact casing and order
    /// of values: used to check that an approved plan still matches AD.
    pub fn intent(&self) -> Intent {
        let after = self.uac_final();
        Intent {
            dn: dn_key(&self.dn),
            add: self.add.iter().map(|s| spn_key(s)).collect(),
            remove: self.remove.iter().map(|s| spn_key(s)).collect(),
            set_bits: after & !self.uac_before,
            clear_bits: self.uac_before & !after,
        }
    }

    /// `msDS-AllowedToDelegateTo` as it will be once `before` gets this change.
    pub fn delegate_after(&self, before: &[String]) -> Vec<String> {
        let removes: BTreeSet<String> = self.remove.iter().map(|e| spn_key(e)).collect();
        let mut after: Vec<String> = before
            .iter()
            .filter(|e| !removes.contains(&spn_key(e)))
            .cloned()
            .collect();
        after.extend(self.add.iter().cloned());
        after
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Intent {
    pub dn: String,
    pub add: BTreeSet<String>,
    pub remove: BTreeSet<String>,
    pub set_bits: u32,
    pub clear_bits: u32,
}

/// The intents of a set of changes, sorted: equal sets mean the same plan.
pub fn intents(changes: &[HostChange]) -> Vec<Intent> {
    let mut v: Vec<Intent> = changes.iter().map(HostChange::intent).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WORKSTATION_TRUST_ACCOUNT;

    #[test]
    fn a_write_read_back_as_made_leaves_nothing_undone_and_a_lost_one_says_what() {
        let pt = WORKSTATION_TRUST_ACCOUNT | TRUSTED_TO_AUTH_FOR_DELEGATION;
        let c = change(
            WORKSTATION_TRUST_ACCOUNT,
            Some(pt),
            &["cifs/hv02.lab.test"],
            &["cifs/old"],
        );
        let read = |uac: u32, entries: &[&str]| crate::model::Computer {
            uac,
            allowed_to_delegate_to: entries.iter().map(|e| e.to_string()).collect(),
            ..crate::model::Computer::unread(&c.dn, uac)
        };
        // As written (casing aside), plus someone else's unrelated change: done.
        let disabled = pt | 0x2;
        assert_eq!(
            c.left_undone(&read(disabled, &["CIFS/HV02.lab.test", "cifs/keep"])),
            None
        );
        // The write did not stay: every part is still to do, in words an operator reads.
        let left = c.left_undone(&read(WORKSTATION_TRUST_ACCOUNT, &["cifs/old"])).unwrap();
        assert_eq!(
            left.kinds(),
            vec![
                ChangeKind::SetProtocolTransition,
                ChangeKind::AddEntries,
                ChangeKind::RemoveEntries
            ]
        );
        assert_eq!(left.add, vec!["cifs/hv02.lab.test"]);
        assert_eq!(left.remove, vec!["cifs/old"]);
    }

    fn change(uac_before: u32, uac_after: Option<u32>, add: &[&str], remove: &[&str]) -> HostChange {
        HostChange {
            host: "hv01.lab.test".into(),
            dn: "CN=HV01,OU=Hyper-V,DC=lab,DC=test".into(),
            groups: vec!["g".into()],
            mode: Mode::Enforce,
            uac_before,
            uac_after,
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
            entries_before: 1,
        }
    }

    #[test]
    fn kinds_follow_the_structure_not_the_words() {
        let w = WORKSTATION_TRUST_ACCOUNT;
        let c = change(
            w | TRUSTED_FOR_DELEGATION,
            Some(w | TRUSTED_TO_AUTH_FOR_DELEGATION),
            &["cifs/hv02"],
            &["cifs/old"],
        );
        assert_eq!(
            c.kinds(),
            vec![
                ChangeKind::SetProtocolTransition,
                ChangeKind::AddEntries,
                ChangeKind::RemoveEntries,
                ChangeKind::ClearUnconstrained
            ]
        );
        assert!(c.is_subtractive());
        let add = c.additive_part().unwrap();
        assert_eq!(
            add.kinds(),
            vec![ChangeKind::SetProtocolTransition, ChangeKind::AddEntries]
        );
        assert_eq!(
            add.uac_after,
            Some(w | TRUSTED_FOR_DELEGATION | TRUSTED_TO_AUTH_FOR_DELEGATION)
        );
        let sub = c.subtractive_part().unwrap();
        assert_eq!(
            sub.kinds(),
            vec![ChangeKind::RemoveEntries, ChangeKind::ClearUnconstrained]
        );
        assert_eq!(
            sub.uac_before,
            w | TRUSTED_FOR_DELEGATION | TRUSTED_TO_AUTH_FOR_DELEGATION
        );
        assert_eq!(sub.uac_after, Some(w | TRUSTED_TO_AUTH_FOR_DELEGATION));
    }

    #[test]
    fn marking_an_account_sensitive_takes_away_and_reads_as_such() {
        let mut c = change(0x200, Some(0x200 | NOT_DELEGATED), &[], &[]);
        c.groups = vec!["Domain Admins".into()];
        assert_eq!(c.kinds(), vec![ChangeKind::MarkSensitive]);
        assert!(c.is_subtractive());
        assert!(c.additive_part().is_none());
        assert_eq!(
            c.reasons(),
            vec!["mark sensitive and cannot be delegated (privileged via Domain Admins)"]
        );
    }

    #[test]
    fn gaining_protocol_transition_or_a_first_entry_is_a_first_grant() {
        let w = WORKSTATION_TRUST_ACCOUNT;
        assert!(change(w, Some(w | TRUSTED_TO_AUTH_FOR_DELEGATION), &[], &[]).is_first_grant());
        let pt = w | TRUSTED_TO_AUTH_FOR_DELEGATION;
        assert!(!change(pt, None, &["cifs/hv02"], &[]).is_first_grant());
        let mut first = change(pt, None, &["cifs/hv02"], &[]);
        first.entries_before = 0;
        assert!(first.is_first_grant());
        assert!(!change(pt, None, &[], &["cifs/old"]).is_first_grant());
    }

    #[test]
    fn an_empty_change_has_no_kind() {
        assert!(change(0x1000, None, &[], &[]).kinds().is_empty());
    }
}
