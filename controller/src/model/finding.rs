//! The one finding type: something an operator should know, with its
//! evidence and remediation. Planning raises the findings it meets while
//! resolving groups; diagnosis raises the rest. The kind list is the only one:
//! `grpc::convert` maps it to the wire enum in one `match`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
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
    HostOutOfScope,
    AdGroupMissing,
    NoAgentReport,
    /// A computer's dNSHostName or SPNs do not check out (the trust model).
    HostIdentityConflict,
    /// A domain controller, read-only DC or privileged machine in a group.
    NotADelegationTarget,
    /// A delegation edge reaches a domain controller, a privileged machine
    /// or a machine outside every group (`crate::exposure`).
    DangerousDelegation,
    /// Move-VM runs on another machine than the source, and that machine may
    /// not delegate to the source (`diagnose::initiator`).
    InitiatorCannotDelegate,
    /// A write kcdsync verified on the DC it wrote to has not reached another DC within
    /// `ad.replication_deadline_secs` (`runtime::replication`).
    DcNotReplicating,
    /// A host's tickets come from a DC that does not have kcdsync's change yet: ready once it
    /// replicates; its purge waits (`runtime::replication`).
    AwaitingReplication,
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
    pub kind: FindingKind,
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
    pub fn new(kind: FindingKind, severity: Severity, hosts: &[&str], account: &str, summary: String) -> Finding {
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

    pub fn evidence(mut self, key: &str, value: impl Into<String>) -> Finding {
        self.evidence.push((key.to_owned(), value.into()));
        self
    }

    pub fn fix(mut self, remediation: impl Into<String>, automatic: bool) -> Finding {
        self.remediation = remediation.into();
        self.automatic = automatic;
        self
    }

    /// The first host named, or "" for account-level findings.
    pub fn host(&self) -> &str {
        self.hosts.first().map_or("", String::as_str)
    }
}
