//! The last check before a modify leaves for AD. Planning already keeps
//! dangerous writes out of a plan; this check does not trust that it did.
//! It looks only at the modify itself and at the policy the run was given,
//! so a bug upstream, a stored plan approved long ago, or a hostile value
//! that slipped through planning still cannot reach AD:
//! - a delegation change must be on an object inside the scope that is not
//!   a DC or RODC, may only set protocol transition (0x1000000) and clear
//!   unconstrained delegation (0x80000), and may only add entries of the
//!   managed service classes naming a host the plan delegates to;
//! - marking an account sensitive may only set 0x100000, nothing else.

use std::collections::BTreeSet;

use crate::model::dn::Dn;
use crate::model::identity::PARTIAL_SECRETS_ACCOUNT;
use crate::model::{
    HostChange, NOT_DELEGATED, SERVER_TRUST_ACCOUNT, TRUSTED_FOR_DELEGATION, TRUSTED_TO_AUTH_FOR_DELEGATION,
    is_migration_class, spn_parts,
};

/// What a run may write: its scope, and the names its plan delegates to.
#[derive(Debug, Clone, Default)]
pub struct WritePolicy {
    pub scope: Vec<Dn>,
    /// Lower-case FQDNs and NetBIOS names (`Plan::targets`).
    pub targets: BTreeSet<String>,
}

/// Why the write edge refused a modify. Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused to write {dn}: {why}; nothing was sent to AD")]
pub struct Refused {
    pub dn: String,
    pub why: String,
}

impl WritePolicy {
    /// `Ok` when `change` may be sent as it is.
    pub fn check(&self, change: &HostChange) -> Result<(), Refused> {
        let refuse = |why: String| {
            Err(Refused {
                dn: change.dn.clone(),
                why,
            })
        };
        let before = change.uac_before;
        if before & SERVER_TRUST_ACCOUNT != 0 {
            return refuse("it is a domain controller".into());
        }
        if before & PARTIAL_SECRETS_ACCOUNT != 0 {
            return refuse("it is a read-only domain controller".into());
        }
        let after = change.uac_after.unwrap_or(before);
        let (set, cleared) = (after & !before, before & !after);
        if set == NOT_DELEGATED && cleared == 0 && change.add.is_empty() && change.remove.is_empty() {
            // Marking an account sensitive only takes a right away; the
            // account may live anywhere in the domain.
            return Ok(());
        }
        let Ok(dn) = Dn::parse(&change.dn) else {
            return refuse("its DN does not parse".into());
        };
        if !dn.is_within_any(&self.scope) {
            return refuse("it is outside the managed scope".into());
        }
        if set & !TRUSTED_TO_AUTH_FOR_DELEGATION != 0 {
            return refuse(format!(
                "userAccountControl would gain bits {:#x}; only protocol transition (0x1000000) may be set",
                set & !TRUSTED_TO_AUTH_FOR_DELEGATION
            ));
        }
        if cleared & !TRUSTED_FOR_DELEGATION != 0 {
            return refuse(format!(
                "userAccountControl would lose bits {:#x}; only unconstrained delegation (0x80000) may be cleared",
                cleared & !TRUSTED_FOR_DELEGATION
            ));
        }
        for e in &change.add {
            let ok = spn_parts(e).is_some_and(|(class, host)| {
                is_migration_class(class) && self.targets.contains(&host.to_ascii_lowercase())
            });
            if !ok {
                return refuse(format!(
                    "entry `{e}` is not a migration service class naming a host this plan delegates to"
                ));
            }
        }
        for e in &change.remove {
            if !spn_parts(e).is_some_and(|(class, _)| is_migration_class(class)) {
                return refuse(format!("entry `{e}` is not kcdsync's to remove"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mode, WORKSTATION_TRUST_ACCOUNT};

    const W: u32 = WORKSTATION_TRUST_ACCOUNT;

    fn policy() -> WritePolicy {
        WritePolicy {
            scope: vec![Dn::parse("OU=Hyper-V,DC=lab,DC=test").unwrap()],
            targets: ["hv02.lab.test", "hv02"].iter().map(|s| s.to_string()).collect(),
        }
    }

    fn change(dn: &str, before: u32, after: Option<u32>, add: &[&str]) -> HostChange {
        HostChange {
            host: "x".into(),
            dn: dn.into(),
            groups: vec![],
            mode: Mode::Enforce,
            uac_before: before,
            uac_after: after,
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: vec![],
            entries_before: 0,
        }
    }

    const HV01: &str = "CN=HV01,OU=Hyper-V,DC=lab,DC=test";

    #[test]
    fn the_planned_change_passes() {
        let c = change(
            HV01,
            W | TRUSTED_FOR_DELEGATION,
            Some(W | TRUSTED_TO_AUTH_FOR_DELEGATION),
            &["cifs/hv02.lab.test", "Microsoft Virtual System Migration Service/HV02"],
        );
        assert_eq!(policy().check(&c), Ok(()));
    }

    #[test]
    fn an_entry_naming_the_dc_never_leaves() {
        let c = change(HV01, W, None, &["cifs/dc1.lab.test"]);
        let e = policy().check(&c).unwrap_err();
        assert!(e.to_string().contains("cifs/dc1.lab.test"), "{e}");
        let c = change(HV01, W, None, &["ldap/hv02.lab.test"]);
        assert!(policy().check(&c).is_err(), "another service class to a peer");
    }

    #[test]
    fn unconstrained_delegation_and_other_bits_are_never_set() {
        let c = change(HV01, W, Some(W | TRUSTED_FOR_DELEGATION), &[]);
        assert!(policy().check(&c).unwrap_err().why.contains("0x80000"));
        let c = change(HV01, W | 0x2, Some(W), &[]);
        assert!(
            policy().check(&c).unwrap_err().why.contains("0x2"),
            "enabling a disabled account"
        );
    }

    #[test]
    fn dcs_rodcs_and_objects_outside_the_scope_are_never_written() {
        let dc = change(
            "CN=DC1,OU=Domain Controllers,DC=lab,DC=test",
            SERVER_TRUST_ACCOUNT,
            Some(SERVER_TRUST_ACCOUNT | TRUSTED_TO_AUTH_FOR_DELEGATION),
            &[],
        );
        assert!(policy().check(&dc).unwrap_err().why.contains("domain controller"));
        let rodc = change(HV01, W | PARTIAL_SECRETS_ACCOUNT, None, &["cifs/hv02"]);
        assert!(policy().check(&rodc).unwrap_err().why.contains("read-only"));
        let out = change(
            "CN=HV09,OU=Other,DC=lab,DC=test",
            W,
            Some(W | TRUSTED_TO_AUTH_FOR_DELEGATION),
            &[],
        );
        assert!(
            policy()
                .check(&out)
                .unwrap_err()
                .why
                .contains("outside the managed scope")
        );
    }

    #[test]
    fn marking_an_account_sensitive_is_allowed_anywhere_and_nothing_more() {
        let a = change(
            "CN=admin,CN=Users,DC=lab,DC=test",
            0x200,
            Some(0x200 | NOT_DELEGATED),
            &[],
        );
        assert_eq!(policy().check(&a), Ok(()));
        let more = change(
            "CN=admin,CN=Users,DC=lab,DC=test",
            0x200,
            Some(0x200 | NOT_DELEGATED | TRUSTED_TO_AUTH_FOR_DELEGATION),
            &[],
        );
        assert!(policy().check(&more).is_err());
    }
}
