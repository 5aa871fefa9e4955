//! The delta read: what changed in the domain since a USN, on one domain
//! controller. USNs are per DC (LAB-NOTES: one object had 6242 on DC1 and
//! 5994 on DC2), so a cursor is only meaningful together with the identity of
//! the DC it came from: `dsServiceName` (which DC) and the `invocationId` of
//! its NTDS Settings object (which incarnation of its database: a DC restored
//! from backup gets a new one). Measured on Samba 4.17: docs/ad-watch.md.

use ldap3::Scope;
use ldap3::controls::RawControl;

use super::connection::protocol;
use super::read::computer_from_entry;
use super::{Ad, LdapError};
use crate::model::dn::Dn;
use crate::model::{ATTR_USN_CHANGED, COMPUTER_ATTRS, Computer};

/// LDAP_SERVER_SHOW_DELETED_OID: tombstones are returned too, so a deleted
/// computer shows up in the delta (under CN=Deleted Objects, with
/// `isDeleted` and `lastKnownParent`).
pub const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";

/// Which DC, and which incarnation of its database, a USN belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcIdentity {
    /// rootDSE `dsServiceName`: the DN of the DC's NTDS Settings object.
    pub service: String,
    /// That object's `invocationId`, hex.
    pub invocation_id: String,
}

/// Where a delta read starts: everything up to `usn` on `dc` has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub dc: DcIdentity,
    /// rootDSE `highestCommittedUSN` when the read started.
    pub usn: i64,
}

/// One object that changed (or was deleted) since the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The object's delegation attributes (sAMAccountName, dNSHostName, SPNs, ...), whatever
    /// its class.
    pub object: Computer,
    /// objectClass values, lower-case.
    pub classes: Vec<String>,
    /// A tombstone (`isDeleted: TRUE`).
    pub deleted: bool,
    /// Where a tombstone lived before it was deleted.
    pub last_parent: Option<String>,
}

impl Change {
    pub fn is(&self, class: &str) -> bool {
        self.classes.iter().any(|c| c.eq_ignore_ascii_case(class))
    }
}

const ATTR_DS_SERVICE: &str = "dsServiceName";
const ATTR_HIGHEST_USN: &str = "highestCommittedUSN";
const ATTR_INVOCATION_ID: &str = "invocationId";

impl Ad {
    /// The DC this connection reads from and its highest committed USN. Read before a delta
    /// (or a full read): whatever commits meanwhile is read again next time, never missed.
    pub async fn cursor(&self) -> Result<Cursor, LdapError> {
        let root = self.read_base("", &[ATTR_DS_SERVICE, ATTR_HIGHEST_USN]).await?;
        let first = |e: &ldap3::SearchEntry, a: &str| {
            e.attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(a))
                .and_then(|(_, v)| v.first().cloned())
        };
        let bad = |text: &str| LdapError::Search {
            base: "rootDSE".into(),
            rc: 0,
            text: text.to_owned(),
        };
        let e = root.first().ok_or_else(|| bad("no rootDSE"))?;
        let service = first(e, ATTR_DS_SERVICE).ok_or_else(|| bad("no dsServiceName"))?;
        let usn = first(e, ATTR_HIGHEST_USN)
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| bad("no highestCommittedUSN"))?;
        let ntds = self.read_base(&service, &[ATTR_INVOCATION_ID]).await?;
        let e = ntds
            .first()
            .ok_or_else(|| bad("the DC's NTDS Settings object cannot be read"))?;
        // A GUID is binary; ldap3 files it under attrs when its bytes happen to be UTF-8.
        let bytes = e
            .bin_attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(ATTR_INVOCATION_ID))
            .and_then(|(_, v)| v.first().cloned())
            .or_else(|| first(e, ATTR_INVOCATION_ID).map(String::into_bytes))
            .ok_or_else(|| bad("no invocationId on the DC's NTDS Settings object"))?;
        let invocation_id = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Cursor {
            dc: DcIdentity { service, invocation_id },
            usn,
        })
    }

    /// One unpaged base read (the rootDSE takes no paging control).
    pub(super) async fn read_base(&self, dn: &str, attrs: &[&str]) -> Result<Vec<ldap3::SearchEntry>, LdapError> {
        let mut ldap = self.ldap.clone();
        let res = ldap
            .with_timeout(self.cfg.timeout)
            .search(dn, Scope::Base, "(objectClass=*)", attrs.to_vec())
            .await
            .map_err(protocol(format!("read of {dn:?}")))?;
        crate::metrics::get().ldap_search(res.1.rc, res.0.len());
        let (entries, _) = res.success().map_err(protocol(format!("read of {dn:?}")))?;
        Ok(entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(ldap3::SearchEntry::construct)
            .collect())
    }

    /// Every object of the domain (tombstones included) whose uSNChanged is at least `from`,
    /// with only the attributes the planner and the identity checks read.
    pub async fn changes_since(&self, domain: &Dn, from: i64) -> Result<Vec<Change>, LdapError> {
        let mut attrs = COMPUTER_ATTRS.to_vec();
        attrs.extend(["objectClass", "isDeleted", "lastKnownParent"]);
        let show_deleted = RawControl {
            ctype: SHOW_DELETED_OID.into(),
            crit: true,
            val: None,
        };
        let filter = format!("({ATTR_USN_CHANGED}>={from})");
        let found = self
            .search_all_with(domain.as_str(), Scope::Subtree, &filter, &attrs, vec![show_deleted])
            .await?;
        Ok(found.into_iter().map(change_from_entry).collect())
    }
}

fn change_from_entry(mut e: ldap3::SearchEntry) -> Change {
    let mut take = |a: &str| {
        let key = e.attrs.keys().find(|k| k.eq_ignore_ascii_case(a)).cloned();
        key.and_then(|k| e.attrs.remove(&k)).unwrap_or_default()
    };
    let classes = take("objectClass")
        .into_iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let deleted = take("isDeleted").iter().any(|v| v.eq_ignore_ascii_case("TRUE"));
    let last_parent = take("lastKnownParent").into_iter().next();
    Change {
        object: computer_from_entry(e),
        classes,
        deleted,
        last_parent,
    }
}
