//! Findings about one host as a migration source or destination: what AD
//! says of its computer account, and what its agent reports (liveness,
//! Hyper-V migration settings, services, SYSTEM tickets).

use kcdsync_proto::v1::{HostReport, MigrationAuthType, MigrationSettings, ServiceState};

use super::Facts;
use crate::model::{
    ACCOUNTDISABLE, ATTR_UAC, Computer, Finding, FindingKind as Kind, Severity, TRUSTED_FOR_DELEGATION,
};

/// A host's role in the migration being judged: what it needs depends on it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Role {
    pub source: bool,
    pub destination: bool,
}

impl Facts<'_> {
    /// Findings about one host, from AD and from its agent.
    pub(super) fn host_findings(&self, c: &Computer, role: Role) -> Vec<Finding> {
        let h = c.display_name();
        let mut out = account_findings(c, &h);
        out.extend(self.liveness_findings(c, &h));
        let Some(r) = self.report(c) else { return out };
        if let Some(m) = &r.migration {
            out.extend(self.migration_findings(r, m, &h, role));
        }
        out.extend(service_findings(r, &h, role));
        out.extend(self.ticket_findings(c, r, &h));
        out
    }

    /// A silent agent, or none at all.
    fn liveness_findings(&self, c: &Computer, h: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        let facts = self.agent(c);
        if let Some(seen) = facts.and_then(|f| f.last_seen_ms)
            && self.now_ms.saturating_sub(seen) > self.policy.stale_after_ms
        {
            out.push(
                Finding::new(
                    Kind::HostStale,
                    Severity::Warning,
                    &[h],
                    "",
                    format!(
                        "the agent on {h} has been silent for {} s",
                        self.now_ms.saturating_sub(seen) / 1000
                    ),
                )
                .evidence("last_seen_ms", seen.to_string())
                .fix(
                    "check that the kcdsync agent service runs on the host and can reach the controller",
                    false,
                ),
            );
        }
        if facts.and_then(|f| f.report.as_ref()).is_none() {
            out.push(
                Finding::new(
                    Kind::NoAgentReport,
                    Severity::Info,
                    &[h],
                    "",
                    format!("no agent report from {h}: judged from AD alone"),
                )
                .fix(
                    "install the kcdsync agent on the host (deploy/windows/install-agent.ps1)",
                    false,
                ),
            );
        }
        out
    }

    /// Hyper-V's migration settings (Get-VMHost).
    fn migration_findings(&self, r: &HostReport, m: &MigrationSettings, h: &str, role: Role) -> Vec<Finding> {
        let mut out = Vec::new();
        if !m.enabled {
            out.push(
                Finding::new(
                    Kind::MigrationDisabled,
                    Severity::Critical,
                    &[h],
                    "",
                    format!("live migration is disabled on {h}"),
                )
                .evidence("VirtualMachineMigrationEnabled", "false")
                .fix(format!("on {h}: Enable-VMMigration"), false),
            );
        }
        if !(role.source && self.policy.require_kerberos && m.authentication_type == MigrationAuthType::Credssp as i32)
        {
            return out;
        }
        out.push(
            Finding::new(
                Kind::MigrationAuthCredssp,
                Severity::Critical,
                &[h],
                "",
                format!("{h} authenticates migrations with CredSSP: a migration started remotely (by an orchestrator) cannot authenticate"),
            )
            .evidence("VirtualMachineMigrationAuthenticationType", "CredSSP")
            .fix(format!("on {h}: Set-VMHost -VirtualMachineMigrationAuthenticationType Kerberos"), false),
        );
        if r.identity.as_ref().is_some_and(|i| i.credential_guard_running) {
            out.push(
                Finding::new(
                    Kind::CredsspWithCredentialGuard,
                    Severity::Critical,
                    &[h],
                    "",
                    format!("{h} runs Credential Guard, which makes CredSSP migration fail even when started on the host"),
                )
                .evidence("SecurityServicesRunning", "1 (Credential Guard)")
                .fix(format!("on {h}: Set-VMHost -VirtualMachineMigrationAuthenticationType Kerberos (kcdsync keeps the delegation right)"), false),
            );
        }
        out
    }

    /// SYSTEM tickets issued before kcdsync last changed the host's delegation
    /// still carry the old rights until they are purged or expire.
    fn ticket_findings(&self, c: &Computer, r: &HostReport, h: &str) -> Option<Finding> {
        let changed = c.fqdn().and_then(|f| self.last_change_ms.get(&f))?;
        let stale: Vec<&str> = r
            .system_tickets
            .iter()
            .filter(|t| {
                t.start_time
                    .as_ref()
                    .is_some_and(|s| kcdsync_proto::ms_from_timestamp(s) < *changed)
            })
            .map(|t| t.server.as_str())
            .collect();
        if stale.is_empty() {
            return None;
        }
        Some(
            Finding::new(
                Kind::TicketsOlderThanDelegationChange,
                Severity::Warning,
                &[h],
                "",
                format!(
                    "{h} holds {} SYSTEM tickets issued before its delegation last changed",
                    stale.len()
                ),
            )
            .evidence("tickets", stale.join(", "))
            .evidence("delegation_changed_ms", changed.to_string())
            .fix(
                format!(
                    "kcdsync asks the agent to run `klist -li 0x3e7 purge` on {h}; or wait for the tickets to expire"
                ),
                true,
            ),
        )
    }
}

/// The computer account itself: disabled, or trusted for unconstrained delegation.
fn account_findings(c: &Computer, h: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    if c.uac & ACCOUNTDISABLE != 0 {
        out.push(
            Finding::new(
                Kind::ComputerAccountDisabled,
                Severity::Critical,
                &[h],
                "",
                format!("the computer account of {h} is disabled"),
            )
            .evidence(ATTR_UAC, format!("0x{:x}", c.uac))
            .fix(
                format!(
                    "enable {} in AD if the host is in service, or remove it from its migration groups",
                    c.dn
                ),
                false,
            ),
        );
    }
    if c.uac & TRUSTED_FOR_DELEGATION != 0 {
        out.push(
            Finding::new(
                Kind::UnconstrainedDelegation,
                Severity::Critical,
                &[h],
                "",
                format!("{h} is trusted for unconstrained delegation: any ticket sent to it can be reused anywhere"),
            )
            .evidence(ATTR_UAC, format!("0x{:x}", c.uac))
            .fix(
                "kcdsync clears TRUSTED_FOR_DELEGATION (0x80000) after approval; constrained delegation replaces it",
                true,
            ),
        );
    }
    out
}

/// VMMS must run on both ends; WinRM on the source (migrations go through it).
fn service_findings(r: &HostReport, h: &str, role: Role) -> Vec<Finding> {
    let mut out = Vec::new();
    for s in &r.services {
        if s.state == ServiceState::Running as i32 || s.state == ServiceState::Unspecified as i32 {
            continue;
        }
        let state = ServiceState::try_from(s.state)
            .map(|s| s.as_str_name())
            .unwrap_or("unknown");
        let (kind, needed) = if s.name.eq_ignore_ascii_case("vmms") {
            (Kind::VmmsStopped, role.source || role.destination)
        } else if s.name.eq_ignore_ascii_case("winrm") {
            (Kind::WinrmStopped, role.source)
        } else {
            continue;
        };
        let sev = if needed { Severity::Critical } else { Severity::Warning };
        out.push(
            Finding::new(kind, sev, &[h], "", format!("service {} on {h} is not running", s.name))
                .evidence(&format!("service {}", s.name), state)
                .fix(format!("on {h}: Start-Service {}", s.name), false),
        );
    }
    out
}
