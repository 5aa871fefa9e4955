//! Diagnosis: a pure function of what AD says and what agents report, to
//! findings (each with its evidence and remediation) and to readiness —
//! "will a live migration from A to B, run as this account, authenticate?".
//! No I/O happens here.

use std::collections::{BTreeSet, HashMap};

use kcdsync_proto::v1::{HostReport, MigrationAuthType, ServiceState};
use serde::Serialize;

use crate::config::Group;
use crate::model::*;
use crate::names::HostName;
use crate::plan::{Index, Observed};

/// Windows Server 2016, the first build that migrates through WinRM.
pub const WS2016_BUILD: u32 = 14393;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ProtocolTransitionMissing,
    DelegationEntryMissing,
    PeerSpnNotRegistered,
    FileServerEntryMissing,
    UnconstrainedDelegation,
    MigrationAuthCredssp,
    CredsspWithCredentialGuard,
    MigrationDisabled,
    VmmsStopped,
    WinrmStopped,
    TicketsOlderThanDelegationChange,
    AccountSensitive,
    AccountProtectedUsers,
    AccountDisabled,
    PrivilegedAccountDelegatable,
    KrbtgtSensitive,
    HostStale,
    HostMissingFromAd,
    ComputerAccountDisabled,
    NoAgentReport,
}

impl Kind {
    /// The wire enum (`kcdsync.v1.FindingKind`); 0 where the wire has none.
    pub fn to_proto(self) -> i32 {
        use kcdsync_proto::v1::FindingKind as F;
        (match self {
            Kind::ProtocolTransitionMissing => F::ProtocolTransitionMissing,
            Kind::DelegationEntryMissing => F::DelegationEntryMissing,
            Kind::PeerSpnNotRegistered => F::PeerSpnNotRegistered,
            Kind::FileServerEntryMissing => F::FileServerEntryMissing,
            Kind::UnconstrainedDelegation => F::UnconstrainedDelegation,
            Kind::MigrationAuthCredssp => F::MigrationAuthCredssp,
            Kind::CredsspWithCredentialGuard => F::CredsspWithCredentialGuard,
            Kind::MigrationDisabled => F::MigrationDisabled,
            Kind::VmmsStopped => F::VmmsStopped,
            Kind::WinrmStopped => F::WinrmStopped,
            Kind::TicketsOlderThanDelegationChange => F::TicketsOlderThanDelegationChange,
            Kind::AccountSensitive => F::AccountSensitive,
            Kind::AccountProtectedUsers => F::AccountProtectedUsers,
            Kind::AccountDisabled => F::AccountDisabled,
            Kind::PrivilegedAccountDelegatable => F::PrivilegedAccountDelegatable,
            Kind::KrbtgtSensitive => F::KrbtgtSensitive,
            Kind::HostStale => F::HostStale,
            Kind::HostMissingFromAd => F::HostMissingFromAd,
            Kind::ComputerAccountDisabled => F::ComputerAccountDisabled,
            Kind::NoAgentReport => F::Unspecified,
        }) as i32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    /// Migration cannot authenticate, or a security exposure.
    Critical,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable for the same kind, hosts and account.
    pub id: String,
    pub kind: Kind,
    pub severity: Severity,
    pub hosts: Vec<String>,
    pub account: String,
    pub summary: String,
    pub evidence: Vec<(String, String)>,
    /// What kcdsync will do, or what the operator must do.
    pub remediation: String,
    /// kcdsync fixes it itself in enforce mode.
    pub automatic: bool,
}

impl Finding {
    fn new(kind: Kind, severity: Severity, hosts: &[&str], account: &str, summary: String) -> Finding {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        Finding {
            id: format!("{kind:?}:{}:{account}", hosts.join(",")),
            kind,
            severity,
            hosts,
            account: account.to_owned(),
            summary,
            evidence: Vec::new(),
            remediation: String::new(),
            automatic: false,
        }
    }

    fn evidence(mut self, key: &str, value: impl Into<String>) -> Finding {
        self.evidence.push((key.to_owned(), value.into()));
        self
    }

    fn fix(mut self, remediation: impl Into<String>, automatic: bool) -> Finding {
        self.remediation = remediation.into();
        self.automatic = automatic;
        self
    }
}

/// An account as read from AD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub name: String,
    pub dn: String,
    pub uac: u32,
    /// Member of Protected Users, directly or through nested groups.
    pub protected_users: bool,
}

/// A member of a privileged group and the groups that make it one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileged {
    pub account: Account,
    pub via: Vec<String>,
}

/// What an agent said about its host.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub report: Option<HostReport>,
    pub last_seen_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// Migrations must use Kerberos (constrained delegation), not CredSSP.
    pub require_kerberos: bool,
    /// A host not heard from for this long is stale.
    pub stale_after_ms: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            require_kerberos: true,
            stale_after_ms: 60_000,
        }
    }
}

/// Everything diagnosis looks at, gathered by the I/O edges.
pub struct Facts<'a> {
    pub groups: &'a [Group],
    pub observed: &'a Observed,
    /// `observed` by name and DN.
    pub index: &'a Index,
    /// By FQDN, lower case.
    pub hosts: &'a HashMap<String, HostFacts>,
    pub privileged: &'a [Privileged],
    pub krbtgt_uac: Option<u32>,
    /// When kcdsync last changed each host's delegation (FQDN → Unix ms).
    pub last_change_ms: &'a HashMap<String, i64>,
    pub now_ms: i64,
    pub policy: Policy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub readiness: Readiness,
    pub blocking: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub summary: String,
}

fn ts_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + (t.nanos / 1_000_000) as i64
}

impl Facts<'_> {
    fn computer(&self, name: &str) -> Option<&Computer> {
        HostName::parse(name)
            .ok()
            .and_then(|n| self.index.find(&n))
            .map(|i| &self.observed.computers[i])
    }

    /// The computers of a configured group (hosts and AD group members).
    pub fn members(&self, group: &Group) -> Vec<&Computer> {
        let mut idx: Vec<usize> = group.hosts.iter().filter_map(|h| self.index.find(h)).collect();
        if let Some(adg) = &group.ad_group
            && let Some(dns) = self.observed.ad_groups.get(&adg.normalized())
        {
            idx.extend(dns.iter().filter_map(|d| self.index.find_dn(d)));
        }
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| &self.observed.computers[i]).collect()
    }

    fn agent(&self, c: &Computer) -> Option<&HostFacts> {
        c.fqdn().and_then(|f| self.hosts.get(&f))
    }

    /// Findings about one host as a migration source or destination, from
    /// AD and from its agent.
    fn host_findings(&self, c: &Computer, as_source: bool, as_destination: bool) -> Vec<Finding> {
        let h = c.display_name();
        let mut out = Vec::new();
        if c.uac & ACCOUNTDISABLE != 0 {
            out.push(
                Finding::new(
                    Kind::ComputerAccountDisabled,
                    Severity::Critical,
                    &[&h],
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
                    &[&h],
                    "",
                    format!("{h} is trusted for unconstrained delegation: any ticket sent to it can be reused anywhere"),
                )
                .evidence(ATTR_UAC, format!("0x{:x}", c.uac))
                .fix("kcdsync clears TRUSTED_FOR_DELEGATION (0x80000) after approval; constrained delegation replaces it", true),
            );
        }
        let facts = self.agent(c);
        let report = facts.and_then(|f| f.report.as_ref());
        match facts.and_then(|f| f.last_seen_ms) {
            Some(seen) if self.now_ms - seen > self.policy.stale_after_ms => out.push(
                Finding::new(
                    Kind::HostStale,
                    Severity::Warning,
                    &[&h],
                    "",
                    format!("the agent on {h} has been silent for {} s", (self.now_ms - seen) / 1000),
                )
                .evidence("last_seen_ms", seen.to_string())
                .fix(
                    "check that the kcdsync agent service runs on the host and can reach the controller",
                    false,
                ),
            ),
            _ => {}
        }
        if report.is_none() {
            out.push(
                Finding::new(
                    Kind::NoAgentReport,
                    Severity::Info,
                    &[&h],
                    "",
                    format!("no agent report from {h}: judged from AD alone"),
                )
                .fix(
                    "install the kcdsync agent on the host (deploy/windows/install-agent.ps1)",
                    false,
                ),
            );
        }
        let Some(r) = report else { return out };

        if let Some(m) = &r.migration {
            if !m.enabled {
                out.push(
                    Finding::new(
                        Kind::MigrationDisabled,
                        Severity::Critical,
                        &[&h],
                        "",
                        format!("live migration is disabled on {h}"),
                    )
                    .evidence("VirtualMachineMigrationEnabled", "false")
                    .fix(format!("on {h}: Enable-VMMigration"), false),
                );
            }
            if as_source && self.policy.require_kerberos && m.authentication_type == MigrationAuthType::Credssp as i32 {
                let cg = r.identity.as_ref().is_some_and(|i| i.credential_guard_running);
                out.push(
                    Finding::new(
                        Kind::MigrationAuthCredssp,
                        Severity::Critical,
                        &[&h],
                        "",
                        format!("{h} authenticates migrations with CredSSP: a migration started remotely (by an orchestrator) cannot authenticate"),
                    )
                    .evidence("VirtualMachineMigrationAuthenticationType", "CredSSP")
                    .fix(format!("on {h}: Set-VMHost -VirtualMachineMigrationAuthenticationType Kerberos"), false),
                );
                if cg {
                    out.push(
                        Finding::new(
                            Kind::CredsspWithCredentialGuard,
                            Severity::Critical,
                            &[&h],
                            "",
                            format!("{h} runs Credential Guard, which makes CredSSP migration fail even when started on the host"),
                        )
                        .evidence("SecurityServicesRunning", "1 (Credential Guard)")
                        .fix(format!("on {h}: Set-VMHost -VirtualMachineMigrationAuthenticationType Kerberos (kcdsync keeps the delegation right)"), false),
                    );
                }
            }
        }
        for s in &r.services {
            if s.state == ServiceState::Running as i32 || s.state == ServiceState::Unspecified as i32 {
                continue;
            }
            let state = ServiceState::try_from(s.state)
                .map(|s| s.as_str_name())
                .unwrap_or("unknown");
            let (kind, needed) = if s.name.eq_ignore_ascii_case("vmms") {
                (Kind::VmmsStopped, as_source || as_destination)
            } else if s.name.eq_ignore_ascii_case("winrm") {
                (Kind::WinrmStopped, as_source)
            } else {
                continue;
            };
            let sev = if needed { Severity::Critical } else { Severity::Warning };
            out.push(
                Finding::new(
                    kind,
                    sev,
                    &[&h],
                    "",
                    format!("service {} on {h} is not running", s.name),
                )
                .evidence(&format!("service {}", s.name), state)
                .fix(format!("on {h}: Start-Service {}", s.name), false),
            );
        }
        if let Some(changed) = c.fqdn().and_then(|f| self.last_change_ms.get(&f)) {
            let stale: Vec<&str> = r
                .system_tickets
                .iter()
                .filter(|t| t.start_time.as_ref().is_some_and(|s| ts_ms(s) < *changed))
                .map(|t| t.server.as_str())
                .collect();
            if !stale.is_empty() {
                out.push(
                    Finding::new(
                        Kind::TicketsOlderThanDelegationChange,
                        Severity::Warning,
                        &[&h],
                        "",
                        format!("{h} holds {} SYSTEM tickets issued before its delegation last changed", stale.len()),
                    )
                    .evidence("tickets", stale.join(", "))
                    .evidence("delegation_changed_ms", changed.to_string())
                    .fix(format!("kcdsync asks the agent to run `klist -li 0x3e7 purge` on {h}; or wait for the tickets to expire"), true),
                );
            }
        }
        out
    }

    /// What the source needs in AD to delegate to `dst`.
    fn source_findings(&self, src: &Computer, dst: &Computer) -> Vec<Finding> {
        let (s, d) = (src.display_name(), dst.display_name());
        let mut out = Vec::new();
        if src.uac & TRUSTED_TO_AUTH_FOR_DELEGATION == 0 {
            let build = self
                .agent(src)
                .and_then(|f| f.report.as_ref())
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
        let have: BTreeSet<String> = src.allowed_to_delegate_to.iter().map(|e| spn_key(e)).collect();
        let dfqdn = dst.fqdn();
        let dnb = dst.netbios();
        let mut missing_required = Vec::new();
        let mut missing_netbios = Vec::new();
        for class in [MIGRATION_SERVICE, CIFS] {
            if let Some(f) = &dfqdn {
                let e = format!("{class}/{f}");
                if !have.contains(&spn_key(&e)) {
                    missing_required.push(e);
                }
            }
            let e = format!("{class}/{dnb}");
            if !have.contains(&spn_key(&e)) {
                if dfqdn.is_some() {
                    missing_netbios.push(e);
                } else {
                    missing_required.push(e);
                }
            }
        }
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

    fn account_findings(&self, account: &Account) -> Vec<Finding> {
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

    fn krbtgt_finding(&self) -> Option<Finding> {
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
}

/// Will a live migration from `source` to `destination`, started by
/// `account`, authenticate?
pub fn check_migration(facts: &Facts, source: &str, destination: &str, account: &Account) -> Verdict {
    let mut found = Vec::new();
    let src = facts.computer(source);
    let dst = facts.computer(destination);
    for (name, c) in [(source, src), (destination, dst)] {
        if c.is_none() {
            found.push(
                Finding::new(
                    Kind::HostMissingFromAd,
                    Severity::Critical,
                    &[name],
                    "",
                    format!("{name} is not a computer inside the managed scope"),
                )
                .fix("check the name, or widen scope.base_dns", false),
            );
        }
    }
    if let (Some(s), Some(d)) = (src, dst) {
        found.extend(facts.source_findings(s, d));
        found.extend(facts.host_findings(s, true, false));
        found.extend(facts.host_findings(d, false, true));
    }
    found.extend(facts.account_findings(account));
    found.extend(facts.krbtgt_finding());
    let (blocking, warnings): (Vec<Finding>, Vec<Finding>) =
        found.into_iter().partition(|f| f.severity == Severity::Critical);
    let readiness = if blocking.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady
    };
    let summary = match readiness {
        Readiness::Ready => format!("{source} -> {destination} as {}: ready", account.name),
        Readiness::NotReady => format!(
            "{source} -> {destination} as {}: not ready: {}",
            account.name,
            blocking
                .iter()
                .map(|f| f.summary.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    Verdict {
        readiness,
        blocking,
        warnings,
        summary,
    }
}

/// Fleet-wide findings for the configured groups, plus the account-level
/// ones (privileged accounts that can be delegated, a sensitive krbtgt).
pub fn fleet_findings(facts: &Facts) -> Vec<Finding> {
    let index = facts.index;
    let mut out: Vec<Finding> = Vec::new();
    let mut seen_hosts: BTreeSet<usize> = BTreeSet::new();
    for g in facts.groups {
        let mut members = Vec::new();
        for h in &g.hosts {
            match index.find(h) {
                Some(i) => members.push(i),
                None => out.push(
                    Finding::new(
                        Kind::HostMissingFromAd,
                        Severity::Warning,
                        &[h.as_str()],
                        "",
                        format!(
                            "group `{}` lists {h}, which is not in AD (or not in the managed scope)",
                            g.name
                        ),
                    )
                    .fix("correct the group's host list or widen scope.base_dns", false),
                ),
            }
        }
        if let Some(adg) = &g.ad_group
            && let Some(dns) = facts.observed.ad_groups.get(&adg.normalized())
        {
            members.extend(dns.iter().filter_map(|d| index.find_dn(d)));
        }
        members.sort_unstable();
        members.dedup();
        for &i in &members {
            let c = &facts.observed.computers[i];
            if seen_hosts.insert(i) {
                out.extend(facts.host_findings(c, true, true));
            }
            for &p in members.iter().filter(|&&p| p != i) {
                out.extend(facts.source_findings(c, &facts.observed.computers[p]));
            }
            for fs in &g.file_servers {
                let have: BTreeSet<String> = c.allowed_to_delegate_to.iter().map(|e| spn_key(e)).collect();
                let want = format!("{CIFS}/{}", fs.as_str());
                if !have.contains(&spn_key(&want)) {
                    let h = c.display_name();
                    out.push(
                        Finding::new(
                            Kind::FileServerEntryMissing,
                            Severity::Critical,
                            &[&h, fs.as_str()],
                            "",
                            format!("{h} may not delegate to file server {fs}: VMs on its SMB shares cannot move"),
                        )
                        .evidence(ATTR_DELEGATE_TO, format!("missing {want}"))
                        .fix(
                            "kcdsync adds the cifs/ entries for the group's file servers in enforce mode",
                            true,
                        ),
                    );
                }
            }
        }
    }
    for p in facts.privileged {
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
    out.extend(facts.krbtgt_finding());
    // One finding per id: a pair may come up through two groups.
    let mut ids = std::collections::HashSet::new();
    out.retain(|f| ids.insert(f.id.clone()));
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.id.cmp(&b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use kcdsync_proto::v1::{HostIdentity, KerberosTicket, MigrationSettings, ServiceStatus, StartMode};

    const BASE: &str = "OU=Hyper-V,DC=lab,DC=test";

    fn computer(name: &str, uac: u32, peers: &[&str]) -> Computer {
        let lower = name.to_lowercase();
        let mut delegate = Vec::new();
        for p in peers {
            let pl = p.to_lowercase();
            for class in [MIGRATION_SERVICE, CIFS] {
                delegate.push(format!("{class}/{pl}.lab.test"));
                delegate.push(format!("{class}/{p}"));
            }
        }
        Computer {
            dn: format!("CN={name},{BASE}"),
            sam_account_name: format!("{name}$"),
            dns_host_name: Some(format!("{lower}.lab.test")),
            uac,
            allowed_to_delegate_to: delegate,
            spns: [MIGRATION_SERVICE, CIFS]
                .iter()
                .flat_map(|c| [format!("{c}/{lower}.lab.test"), format!("{c}/{name}")])
                .collect(),
            usn_changed: 1,
        }
    }

    const GOOD: u32 = WORKSTATION_TRUST_ACCOUNT | TRUSTED_TO_AUTH_FOR_DELEGATION;

    fn alice() -> Account {
        Account {
            name: "alice".into(),
            dn: "CN=alice,CN=Users,DC=lab,DC=test".into(),
            uac: 0x200,
            protected_users: false,
        }
    }

    fn report(build: u32) -> HostReport {
        HostReport {
            identity: Some(HostIdentity {
                os_build: build,
                ..Default::default()
            }),
            services: vec![
                ServiceStatus {
                    name: "vmms".into(),
                    state: ServiceState::Running as i32,
                    start_mode: StartMode::Automatic as i32,
                },
                ServiceStatus {
                    name: "WinRM".into(),
                    state: ServiceState::Running as i32,
                    start_mode: StartMode::Automatic as i32,
                },
            ],
            migration: Some(MigrationSettings {
                enabled: true,
                authentication_type: MigrationAuthType::Kerberos as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    struct World {
        observed: Observed,
        index: Index,
        hosts: HashMap<String, HostFacts>,
        privileged: Vec<Privileged>,
        krbtgt: Option<u32>,
        changes: HashMap<String, i64>,
        groups: Vec<Group>,
    }

    impl World {
        fn new(computers: Vec<Computer>) -> World {
            let names: Vec<String> = computers.iter().map(|c| c.netbios()).collect();
            let observed = Observed {
                computers,
                ad_groups: HashMap::new(),
                privileged: Vec::new(),
            };
            World {
                index: Index::new(&observed),
                observed,
                hosts: HashMap::new(),
                privileged: Vec::new(),
                krbtgt: Some(0x202),
                changes: HashMap::new(),
                groups: vec![Group {
                    name: "g".into(),
                    mode: Mode::Enforce,
                    hosts: names.iter().map(|n| HostName::parse(n).unwrap()).collect(),
                    ad_group: None,
                    file_servers: Vec::new(),
                }],
            }
        }

        fn with_report(mut self, host: &str, r: HostReport) -> World {
            self.hosts.insert(
                host.into(),
                HostFacts {
                    report: Some(r),
                    last_seen_ms: Some(1_000_000),
                },
            );
            self
        }

        fn facts(&self) -> Facts<'_> {
            Facts {
                groups: &self.groups,
                observed: &self.observed,
                index: &self.index,
                hosts: &self.hosts,
                privileged: &self.privileged,
                krbtgt_uac: self.krbtgt,
                last_change_ms: &self.changes,
                now_ms: 1_000_000,
                policy: Policy::default(),
            }
        }
    }

    fn kinds(v: &Verdict) -> Vec<Kind> {
        v.blocking.iter().map(|f| f.kind).collect()
    }

    #[test]
    fn a_converged_pair_is_ready() {
        let w = World::new(vec![
            computer("HV01", GOOD, &["HV02"]),
            computer("HV02", GOOD, &["HV01"]),
        ]);
        let v = check_migration(&w.facts(), "hv01.lab.test", "hv02.lab.test", &alice());
        assert_eq!(v.readiness, Readiness::Ready, "{v:#?}");
        assert!(v.warnings.iter().all(|f| f.kind == Kind::NoAgentReport));
        assert!(
            fleet_findings(&w.facts())
                .iter()
                .all(|f| f.severity != Severity::Critical)
        );
    }

    #[test]
    fn kerberos_only_is_the_seeds_failure() {
        let w = World::new(vec![
            computer("HV01", WORKSTATION_TRUST_ACCOUNT, &["HV02"]),
            computer("HV02", GOOD, &["HV01"]),
        ])
        .with_report("hv01.lab.test", report(17763));
        let v = check_migration(&w.facts(), "hv01.lab.test", "hv02.lab.test", &alice());
        assert_eq!(kinds(&v), vec![Kind::ProtocolTransitionMissing]);
        assert!(v.blocking[0].automatic);
        assert!(
            v.blocking[0]
                .evidence
                .iter()
                .any(|(k, v)| k == "os_build" && v == "17763")
        );
        // The other direction is fine.
        assert_eq!(
            check_migration(&w.facts(), "hv02", "hv01", &alice()).readiness,
            Readiness::Ready
        );
    }

    #[test]
    fn missing_entries_block_by_fqdn_and_warn_by_netbios() {
        let mut hv01 = computer("HV01", GOOD, &[]);
        hv01.allowed_to_delegate_to = vec![
            format!("{MIGRATION_SERVICE}/hv02.lab.test"),
            "CIFS/HV02.LAB.TEST".into(),
        ];
        let w = World::new(vec![hv01, computer("HV02", GOOD, &["HV01"])]);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert_eq!(v.readiness, Readiness::Ready, "FQDN entries present (any case): {v:#?}");
        let nb = v
            .warnings
            .iter()
            .find(|f| f.kind == Kind::DelegationEntryMissing)
            .unwrap();
        assert!(nb.evidence[0].1.contains("cifs/HV02"));

        let mut hv01 = computer("HV01", GOOD, &[]);
        hv01.allowed_to_delegate_to = vec!["cifs/HV02".into()];
        let w = World::new(vec![hv01, computer("HV02", GOOD, &["HV01"])]);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert_eq!(kinds(&v), vec![Kind::DelegationEntryMissing]);
        assert!(v.blocking[0].evidence[0].1.contains("cifs/hv02.lab.test"));
    }

    #[test]
    fn a_destination_without_spns_cannot_be_delegated_to() {
        let mut hv02 = computer("HV02", GOOD, &["HV01"]);
        hv02.spns.clear();
        let w = World::new(vec![computer("HV01", GOOD, &["HV02"]), hv02]);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert_eq!(kinds(&v), vec![Kind::PeerSpnNotRegistered]);
        assert!(!v.blocking[0].automatic);
    }

    #[test]
    fn unconstrained_delegation_and_disabled_computers_are_critical() {
        let w = World::new(vec![
            computer("HV01", GOOD | TRUSTED_FOR_DELEGATION, &["HV02"]),
            computer("HV02", GOOD | ACCOUNTDISABLE, &["HV01"]),
        ]);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        let k = kinds(&v);
        assert!(
            k.contains(&Kind::UnconstrainedDelegation) && k.contains(&Kind::ComputerAccountDisabled),
            "{k:?}"
        );
        let w = World::new(vec![
            computer("HV01", GOOD, &["HV02"]),
            computer("HV02", GOOD, &["HV01"]),
        ]);
        assert!(kinds(&check_migration(&w.facts(), "hv01", "hv02", &alice())).is_empty());
    }

    #[test]
    fn who_is_delegated_matters() {
        let w = World::new(vec![
            computer("HV01", GOOD, &["HV02"]),
            computer("HV02", GOOD, &["HV01"]),
        ]);
        let f = w.facts();
        let sensitive = Account {
            uac: 0x200 | NOT_DELEGATED,
            ..alice()
        };
        assert_eq!(
            kinds(&check_migration(&f, "hv01", "hv02", &sensitive)),
            vec![Kind::AccountSensitive]
        );
        let protected = Account {
            protected_users: true,
            ..alice()
        };
        assert_eq!(
            kinds(&check_migration(&f, "hv01", "hv02", &protected)),
            vec![Kind::AccountProtectedUsers]
        );
        let disabled = Account { uac: 0x202, ..alice() };
        assert_eq!(
            kinds(&check_migration(&f, "hv01", "hv02", &disabled)),
            vec![Kind::AccountDisabled]
        );
        assert!(kinds(&check_migration(&f, "hv01", "hv02", &alice())).is_empty());
    }

    #[test]
    fn a_sensitive_krbtgt_blocks_everything() {
        let mut w = World::new(vec![
            computer("HV01", GOOD, &["HV02"]),
            computer("HV02", GOOD, &["HV01"]),
        ]);
        w.krbtgt = Some(0x202 | NOT_DELEGATED);
        assert_eq!(
            kinds(&check_migration(&w.facts(), "hv01", "hv02", &alice())),
            vec![Kind::KrbtgtSensitive]
        );
        assert!(
            fleet_findings(&w.facts())
                .iter()
                .any(|f| f.kind == Kind::KrbtgtSensitive)
        );
    }

    #[test]
    fn unknown_hosts_are_named() {
        let w = World::new(vec![computer("HV01", GOOD, &["HV02"])]);
        let v = check_migration(&w.facts(), "hv01", "hv99.lab.test", &alice());
        assert_eq!(kinds(&v), vec![Kind::HostMissingFromAd]);
        assert_eq!(v.blocking[0].hosts, vec!["hv99.lab.test"]);
        let v = check_migration(&w.facts(), "hv01)(cn=*", "hv01", &alice());
        assert_eq!(v.readiness, Readiness::NotReady, "hostile names are simply not found");
    }

    #[test]
    fn agent_reported_settings_are_diagnosed() {
        let base = || {
            World::new(vec![
                computer("HV01", GOOD, &["HV02"]),
                computer("HV02", GOOD, &["HV01"]),
            ])
        };
        let mut credssp = report(26100);
        credssp.migration.as_mut().unwrap().authentication_type = MigrationAuthType::Credssp as i32;
        credssp.identity.as_mut().unwrap().credential_guard_running = true;
        let v = check_migration(
            &base().with_report("hv01.lab.test", credssp.clone()).facts(),
            "hv01",
            "hv02",
            &alice(),
        );
        assert_eq!(
            kinds(&v),
            vec![Kind::MigrationAuthCredssp, Kind::CredsspWithCredentialGuard]
        );
        // CredSSP on the destination does not matter for this direction.
        let v = check_migration(
            &base().with_report("hv02.lab.test", credssp).facts(),
            "hv01",
            "hv02",
            &alice(),
        );
        assert!(kinds(&v).is_empty(), "{v:#?}");

        let mut disabled = report(20348);
        disabled.migration.as_mut().unwrap().enabled = false;
        let v = check_migration(
            &base().with_report("hv02.lab.test", disabled).facts(),
            "hv01",
            "hv02",
            &alice(),
        );
        assert_eq!(kinds(&v), vec![Kind::MigrationDisabled]);

        let mut vmms = report(20348);
        vmms.services[0].state = ServiceState::Stopped as i32;
        let v = check_migration(
            &base().with_report("hv02.lab.test", vmms).facts(),
            "hv01",
            "hv02",
            &alice(),
        );
        assert_eq!(kinds(&v), vec![Kind::VmmsStopped]);

        let mut winrm = report(20348);
        winrm.services[1].state = ServiceState::Stopped as i32;
        let w = base()
            .with_report("hv01.lab.test", winrm.clone())
            .with_report("hv02.lab.test", winrm);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert_eq!(kinds(&v), vec![Kind::WinrmStopped], "only the source's WinRM blocks");
        assert!(
            v.warnings
                .iter()
                .any(|f| f.kind == Kind::WinrmStopped && f.hosts == vec!["hv02.lab.test"])
        );
    }

    #[test]
    fn stale_agents_and_old_tickets_are_warnings() {
        let mut r = report(20348);
        r.system_tickets = vec![KerberosTicket {
            server: "cifs/hv02.lab.test@LAB.TEST".into(),
            start_time: Some(prost_types::Timestamp { seconds: 100, nanos: 0 }),
            ..Default::default()
        }];
        let mut w = World::new(vec![
            computer("HV01", GOOD, &["HV02"]),
            computer("HV02", GOOD, &["HV01"]),
        ])
        .with_report("hv01.lab.test", r);
        w.changes.insert("hv01.lab.test".into(), 200_000);
        w.hosts.get_mut("hv01.lab.test").unwrap().last_seen_ms = Some(1_000_000 - 120_000);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert_eq!(v.readiness, Readiness::Ready);
        let k: Vec<Kind> = v.warnings.iter().map(|f| f.kind).collect();
        assert!(
            k.contains(&Kind::TicketsOlderThanDelegationChange) && k.contains(&Kind::HostStale),
            "{k:?}"
        );
        w.changes.insert("hv01.lab.test".into(), 50_000);
        w.hosts.get_mut("hv01.lab.test").unwrap().last_seen_ms = Some(1_000_000);
        let v = check_migration(&w.facts(), "hv01", "hv02", &alice());
        assert!(
            !v.warnings
                .iter()
                .any(|f| matches!(f.kind, Kind::TicketsOlderThanDelegationChange | Kind::HostStale))
        );
    }

    #[test]
    fn privileged_accounts_that_can_be_delegated_are_flagged() {
        let mut w = World::new(vec![
            computer("HV01", GOOD, &["HV02"]),
            computer("HV02", GOOD, &["HV01"]),
        ]);
        let admin = |uac, protected_users| Privileged {
            account: Account {
                name: "Administrator".into(),
                dn: "CN=Administrator,CN=Users,DC=lab,DC=test".into(),
                uac,
                protected_users,
            },
            via: vec!["Domain Admins".into()],
        };
        w.privileged = vec![admin(0x200, false)];
        let f = fleet_findings(&w.facts());
        let p = f.iter().find(|f| f.kind == Kind::PrivilegedAccountDelegatable).unwrap();
        assert!(p.summary.contains("Domain Admins") && !p.automatic);
        for safe in [
            admin(0x200 | NOT_DELEGATED, false),
            admin(0x200, true),
            admin(0x202, false),
        ] {
            w.privileged = vec![safe];
            assert!(
                !fleet_findings(&w.facts())
                    .iter()
                    .any(|f| f.kind == Kind::PrivilegedAccountDelegatable)
            );
        }
    }

    #[test]
    fn fleet_findings_cover_groups_and_file_servers() {
        let mut w = World::new(vec![
            computer("HV01", WORKSTATION_TRUST_ACCOUNT, &["HV02"]),
            computer("HV02", GOOD, &[]),
        ]);
        w.groups[0].file_servers = vec![HostName::parse("fs01.lab.test").unwrap()];
        w.groups[0].hosts.push(HostName::parse("hv09.lab.test").unwrap());
        let f = fleet_findings(&w.facts());
        let k: BTreeSet<Kind> = f.iter().map(|f| f.kind).collect();
        for want in [
            Kind::ProtocolTransitionMissing,
            Kind::DelegationEntryMissing,
            Kind::FileServerEntryMissing,
            Kind::HostMissingFromAd,
        ] {
            assert!(k.contains(&want), "{want:?} missing from {k:?}");
        }
        assert_eq!(f[0].severity, Severity::Critical, "most severe first");
        let ids: BTreeSet<&str> = f.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids.len(), f.len(), "ids are unique");
    }
}
