//! Resource-based constrained delegation fixtures: a computer's
//! `msDS-AllowedToActOnBehalfOfOtherIdentity`, written the only way Samba takes it.

use ldap3::{Scope, SearchEntry};

use kcdsync_controller::exposure::sd;

use crate::Lab;

/// objectSid of `dn`, read as Administrator.
pub async fn object_sid(lab: &Lab, dn: &str) -> String {
    let mut ldap = lab.admin().await.unwrap();
    let (entries, _) = ldap
        .search(dn, Scope::Base, "(objectClass=*)", vec!["objectSid"])
        .await
        .unwrap()
        .success()
        .unwrap();
    let e = SearchEntry::construct(entries.into_iter().next().expect("the object"));
    let raw = e
        .bin_attrs
        .get("objectSid")
        .and_then(|v| v.first().cloned())
        .or_else(|| {
            e.attrs
                .get("objectSid")
                .and_then(|v| v.first())
                .map(|s| s.clone().into_bytes())
        })
        .expect("objectSid");
    let _ = ldap.unbind().await;
    sd::sid_from_bytes(&raw).unwrap().0
}

/// Writes an RBCD descriptor allowing `sids` on `dn` (none: the attribute is removed). Over
/// LDAP, Samba (4.17 and 4.22) refuses this attribute even to Administrator (rc 19 "can only be
/// modified as system"), so it goes through `ldbmodify` on the DC's own database, inside the
/// lab's fence — what `samba-tool delegation add-principal` does.
pub fn write_rbcd(lab: &Lab, dn: &str, sids: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let ldif = dir.path().join("rbcd.ldif");
    let change = if sids.is_empty() {
        "delete: msDS-AllowedToActOnBehalfOfOtherIdentity\n".to_owned()
    } else {
        let blob = dir.path().join("sd.bin");
        std::fs::write(&blob, sd::rbcd_descriptor(sids).unwrap()).unwrap();
        format!(
            "replace: msDS-AllowedToActOnBehalfOfOtherIdentity\nmsDS-AllowedToActOnBehalfOfOtherIdentity:< file://{}\n",
            blob.display()
        )
    };
    std::fs::write(&ldif, format!("dn: {dn}\nchangetype: modify\n{change}")).unwrap();
    let sam = lab.dir.join("private/sam.ldb");
    let out = lab.exec_on_dc(&["ldbmodify".as_ref(), "-H".as_ref(), sam.as_os_str(), ldif.as_os_str()]);
    assert!(
        out.status.success(),
        "ldbmodify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
