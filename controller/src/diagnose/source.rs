//! What a migration source needs in AD to delegate to its destination:
//! protocol transition (the seed's 0x8009030E), the delegation entries, and
//! the destination's SPNs.

use std::collections::BTreeSet;

use super::Facts;
use crate::model::{
    ATTR_DELEGATE_TO, ATTR_SPN, ATTR_UAC, CIFS, Computer, Finding, FindingKind as Kind, MIGRATION_SERVICE, Severity,
    TRUSTED_TO_AUTH_FOR_DELEGATION, spn_key,
};

impl Facts<'_> {
    /// What the source needs in AD to delegate to `dst`.
    pub(super) fn source_findings(&self, src: &Computer, dst: &Computer) -> Vec<Finding> {
        let (s, d) = (src.display_name(), dst.display_name());
        let mut out = Vec::new();
        if src.uac & TRUSTED_TO_AUTH_FOR_DELEGATION == 0 {
            let build = self
                .report(src)
                .and_then(|r| r.identity.as_ref())
                .map(|i| i.os_build)
                .unwrap_or(0);
            let mut f = Finding::new(
                Kind::ProtocolTransitionMissing,
                Severity::Critical,
                &[&s],
                "",
                format!(
                    "{s} delegates with \"Kerberos only\": since Windows Server 2016 migrations go through WinRM and fail with 0x8009030E"
                ),
            )
            .evidence(ATTR_UAC, format!("0x{:x} (no 0x1000000)", src.uac))
            .fix("kcdsync sets \"use any authentication protocol\" (0x1000000) in enforce mode", true);
            if build > 0 {
                f = f.evidence("os_build", build.to_string());
            }
            out.push(f);
        }
        let (missing_required, missing_netbios) = missing_entries(&src.allowed_to_delegate_to, dst);
        let dfqdn = dst.fqdn();
        let dnb = dst.netbios();
        if !missing_required.is_empty() {
            out.push(
                Finding::new(
                    Kind::DelegationEntryMissing,
                    Severity::Critical,
                    &[&s, &d],
                    "",
                    format!("{s} may not delegate to {d}"),
                )
                .evidence(ATTR_DELEGATE_TO, format!("missing {}", missing_required.join(", ")))
                .fix(
                    format!("kcdsync adds the entries when {s} and {d} share a migration group in enforce mode"),
                    true,
                ),
            );
        }
        if !missing_netbios.is_empty() {
            out.push(
                Finding::new(
                    Kind::DelegationEntryMissing,
                    Severity::Warning,
                    &[&s, &d],
                    "",
                    format!("{s} may not delegate to {d} by its NetBIOS name: migrations addressed to `{dnb}` fail"),
                )
                .evidence(ATTR_DELEGATE_TO, format!("missing {}", missing_netbios.join(", ")))
                .fix(
                    format!("kcdsync adds the entries when {s} and {d} share a migration group in enforce mode"),
                    true,
                ),
            );
        }
        let missing_spns: Vec<String> = [MIGRATION_SERVICE, CIFS]
            .iter()
            .filter_map(|class| dfqdn.as_ref().map(|f| format!("{class}/{f}")))
            .filter(|e| !dst.has_spn(e))
            .collect();
        if !missing_spns.is_empty() {
            out.push(
                Finding::new(
                    Kind::PeerSpnNotRegistered,
                    Severity::Critical,
                    &[&d],
                    "",
                    format!("{d} has not registered the SPNs migrations to it need"),
                )
                .evidence(ATTR_SPN, format!("missing {}", missing_spns.join(", ")))
                .fix(format!("on {d}: restart VMMS (it registers the migration SPNs) or `setspn -S` them for the computer account"), false),
            );
        }
        out
    }
}

/// The entries `have` (an msDS-AllowedToDelegateTo) lacks to delegate to
/// `target`'s migration services: first those every migration needs (by its
/// FQDN, or by its NetBIOS name when it has none), then those only migrations
/// addressed to its NetBIOS name need.
pub(super) fn missing_entries(have: &[String], target: &Computer) -> (Vec<String>, Vec<String>) {
    let have: BTreeSet<String> = have.iter().map(|e| spn_key(e)).collect();
    let fqdn = target.fqdn();
    let netbios = target.netbios();
    let mut required = Vec::new();
    let mut by_netbios = Vec::new();
    for class in [MIGRATION_SERVICE, CIFS] {
        if let Some(f) = &fqdn {
            let e = format!("{class}/{f}");
            if !have.contains(&spn_key(&e)) {
                required.push(e);
            }
        }
        let e = format!("{class}/{netbios}");
        if !have.contains(&spn_key(&e)) {
            if fqdn.is_some() {
                by_netbios.push(e);
            } else {
                required.push(e);
            }
        }
    }
    (required, by_netbios)
}
