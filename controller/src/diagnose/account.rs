//! Who is delegated: the account that runs `Move-VM` (sensitive, Protected
//! Users, disabled), privileged accounts that can be delegated, and a
//! sensitive krbtgt (a known cause of 0x8009030E).

use super::Facts;
use crate::model::{ACCOUNTDISABLE, ATTR_UAC, Account, Finding, FindingKind as Kind, NOT_DELEGATED, Severity};

impl Facts<'_> {
    pub(super) fn account_findings(&self, account: &Account) -> Vec<Finding> {
        let a = account.name.as_str();
        let mut out = Vec::new();
        if account.uac & NOT_DELEGATED != 0 {
            out.push(
                Finding::new(Kind::AccountSensitive, Severity::Critical, &[], a, format!("{a} is \"sensitive and cannot be delegated\": no host may migrate on its behalf"))
                    .evidence(ATTR_UAC, format!("0x{:x} (0x100000 set)", account.uac))
                    .fix(format!("run migrations as a dedicated, delegatable operator account; keep {a} sensitive if it is privileged"), false),
            );
        }
        if account.protected_users {
            out.push(
                Finding::new(
                    Kind::AccountProtectedUsers,
                    Severity::Critical,
                    &[],
                    a,
                    format!("{a} is in Protected Users, which AD never delegates"),
                )
                .evidence("memberOf", "Protected Users")
                .fix(
                    "run migrations as a dedicated operator account outside Protected Users",
                    false,
                ),
            );
        }
        if account.uac & ACCOUNTDISABLE != 0 {
            out.push(
                Finding::new(
                    Kind::AccountDisabled,
                    Severity::Critical,
                    &[],
                    a,
                    format!("{a} is disabled"),
                )
                .evidence(ATTR_UAC, format!("0x{:x}", account.uac))
                .fix(format!("enable {a} or use another account"), false),
            );
        }
        out
    }

    pub(super) fn krbtgt_finding(&self) -> Option<Finding> {
        let uac = self.krbtgt_uac?;
        (uac & NOT_DELEGATED != 0).then(|| {
            Finding::new(
                Kind::KrbtgtSensitive,
                Severity::Critical,
                &[],
                "krbtgt",
                "krbtgt is marked sensitive: the KDC refuses every delegation (a known cause of 0x8009030E)".into(),
            )
            .evidence(ATTR_UAC, format!("0x{uac:x}"))
            .fix(
                "clear \"Account is sensitive and cannot be delegated\" on krbtgt",
                false,
            )
        })
    }

    /// Privileged accounts that any host trusted for delegation may impersonate.
    pub(super) fn privileged_findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        for p in self.privileged {
            if p.account.uac & NOT_DELEGATED == 0 && !p.account.protected_users && p.account.uac & ACCOUNTDISABLE == 0 {
                out.push(
                    Finding::new(
                        Kind::PrivilegedAccountDelegatable,
                        Severity::Warning,
                        &[],
                        &p.account.name,
                        format!("{} is privileged ({}) but can be delegated by any host trusted for delegation", p.account.name, p.via.join(", ")),
                    )
                    .evidence(ATTR_UAC, format!("0x{:x} (no 0x100000)", p.account.uac))
                    .fix(format!("mark {} \"sensitive and cannot be delegated\" (kcdsync does it only with [diagnosis] enforce_sensitive = true); run migrations as a dedicated operator account", p.account.name), false),
                );
            }
        }
        out
    }
}
