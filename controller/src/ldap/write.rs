//! The one write: a compare-and-swap modify of one host.

use std::collections::HashSet;

use ldap3::Mod;

use super::connection::protocol;
use super::edge::WritePolicy;
use super::{Ad, LdapError, RC_INSUFFICIENT_ACCESS, RC_NO_SUCH_ATTRIBUTE, RC_TYPE_OR_VALUE_EXISTS};
use crate::model::{ATTR_DELEGATE_TO, ATTR_UAC, HostChange};

impl Ad {
    /// One modify for one host: value-level add/delete of delegation
    /// entries, and userAccountControl as delete-old + add-new so that a
    /// concurrent change fails the modify (rc 16) instead of being lost.
    /// This is the one function that sends a modify: `policy` checks it
    /// first (`edge`), whatever planning decided.
    pub async fn modify_host(&self, change: &HostChange, policy: &WritePolicy) -> Result<(), LdapError> {
        policy.check(change)?;
        let mut mods: Vec<Mod<String>> = Vec::new();
        if let Some(after) = change.uac_after {
            mods.push(Mod::Delete(
                ATTR_UAC.into(),
                HashSet::from([change.uac_before.to_string()]),
            ));
            mods.push(Mod::Add(ATTR_UAC.into(), HashSet::from([after.to_string()])));
        }
        if !change.add.is_empty() {
            mods.push(Mod::Add(ATTR_DELEGATE_TO.into(), change.add.iter().cloned().collect()));
        }
        if !change.remove.is_empty() {
            mods.push(Mod::Delete(
                ATTR_DELEGATE_TO.into(),
                change.remove.iter().cloned().collect(),
            ));
        }
        if mods.is_empty() {
            return Ok(());
        }
        let mut ldap = self.ldap.clone();
        let res = ldap
            .with_timeout(self.cfg.timeout)
            .modify(&change.dn, mods)
            .await
            .map_err(protocol(format!("modify of {}", change.dn)))?;
        match res.rc {
            0 => Ok(()),
            RC_NO_SUCH_ATTRIBUTE | RC_TYPE_OR_VALUE_EXISTS => Err(LdapError::Conflict {
                dn: change.dn.clone(),
                rc: res.rc,
            }),
            RC_INSUFFICIENT_ACCESS => Err(LdapError::MissingPrivilege {
                dn: change.dn.clone(),
                text: res.text,
            }),
            rc => Err(LdapError::Modify {
                dn: change.dn.clone(),
                rc,
                text: res.text,
            }),
        }
    }
}
