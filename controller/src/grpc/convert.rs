//! Conversions between the controller's types and the `kcdsync.v1` wire
//! types, each in one place: the finding kinds (one `match`, so a new kind
//! does not compile until it has a wire value), severities, plans, changes,
//! audit rows, readiness, modes, timestamps and fleet events.

use kcdsync_proto::timestamp_from_ms;
use kcdsync_proto::v1 as pb;

use crate::config::Mode;
use crate::diagnose::Readiness;
use crate::model::{Finding, FindingKind, HostChange, Severity};
use crate::store::{AuditRecord, PlanState, ReplicationRecord, StoredPlan, now_ms};

pub fn kind_to_pb(k: FindingKind) -> i32 {
    use pb::FindingKind as F;
    (match k {
        FindingKind::ProtocolTransitionMissing => F::ProtocolTransitionMissing,
        FindingKind::DelegationEntryMissing => F::DelegationEntryMissing,
        FindingKind::PeerSpnNotRegistered => F::PeerSpnNotRegistered,
        FindingKind::FileServerEntryMissing => F::FileServerEntryMissing,
        FindingKind::UnconstrainedDelegation => F::UnconstrainedDelegation,
        FindingKind::MigrationAuthCredssp => F::MigrationAuthCredssp,
        FindingKind::CredsspWithCredentialGuard => F::CredsspWithCredentialGuard,
        FindingKind::MigrationDisabled => F::MigrationDisabled,
        FindingKind::VmmsStopped => F::VmmsStopped,
        FindingKind::WinrmStopped => F::WinrmStopped,
        FindingKind::TicketsOlderThanDelegationChange => F::TicketsOlderThanDelegationChange,
        FindingKind::AccountSensitive => F::AccountSensitive,
        FindingKind::AccountProtectedUsers => F::AccountProtectedUsers,
        FindingKind::AccountDisabled => F::AccountDisabled,
        FindingKind::PrivilegedAccountDelegatable => F::PrivilegedAccountDelegatable,
        FindingKind::KrbtgtSensitive => F::KrbtgtSensitive,
        FindingKind::HostStale => F::HostStale,
        FindingKind::HostMissingFromAd => F::HostMissingFromAd,
        FindingKind::ComputerAccountDisabled => F::ComputerAccountDisabled,
        FindingKind::HostOutOfScope => F::HostOutOfScope,
        FindingKind::AdGroupMissing => F::AdGroupMissing,
        FindingKind::HostIdentityConflict => F::HostIdentityConflict,
        FindingKind::NotADelegationTarget => F::NotADelegationTarget,
        FindingKind::DangerousDelegation => F::DangerousDelegation,
        FindingKind::NoAgentReport => F::NoAgentReport,
        FindingKind::InitiatorCannotDelegate => F::InitiatorCannotDelegate,
        FindingKind::DcNotReplicating => F::DcNotReplicating,
        FindingKind::AwaitingReplication => F::AwaitingReplication,
    }) as i32
}

pub fn severity_to_pb(s: Severity) -> i32 {
    (match s {
        Severity::Info => pb::Severity::Info,
        Severity::Warning => pb::Severity::Warning,
        Severity::Critical => pb::Severity::Critical,
    }) as i32
}

pub fn finding_to_pb(f: &Finding) -> pb::Finding {
    pb::Finding {
        id: f.id.clone(),
        kind: kind_to_pb(f.kind),
        severity: severity_to_pb(f.severity),
        hosts: f.hosts.clone(),
        account: f.account.clone(),
        summary: f.summary.clone(),
        evidence: f
            .evidence
            .iter()
            .map(|(k, v)| pb::Evidence {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        remediation: f.remediation.clone(),
        automatic: f.automatic,
        raised_at: None,
    }
}

pub fn change_to_pb(c: &HostChange) -> pb::HostChange {
    pb::HostChange {
        host: c.host.clone(),
        dn: c.dn.clone(),
        user_account_control_before: c.uac_before,
        user_account_control_after: c.uac_after,
        add: c.add.clone(),
        remove: c.remove.clone(),
        reasons: c.reasons(),
    }
}

pub fn plan_state_to_pb(s: PlanState) -> i32 {
    (match s {
        PlanState::PendingApproval => pb::PlanState::PendingApproval,
        PlanState::Approved => pb::PlanState::Approved,
        PlanState::Applied => pb::PlanState::Applied,
        PlanState::Rejected => pb::PlanState::Rejected,
        PlanState::Superseded => pb::PlanState::Superseded,
        PlanState::Failed => pb::PlanState::Failed,
    }) as i32
}

pub fn plan_to_pb(p: &StoredPlan) -> pb::Plan {
    pb::Plan {
        id: p.id.to_string(),
        state: plan_state_to_pb(p.state),
        created_at: Some(timestamp_from_ms(p.created_at_ms)),
        trigger: p.trigger.clone(),
        changes: p.changes.iter().map(change_to_pb).collect(),
        gate_reasons: p.gate_reasons.clone(),
        decided_by: p.decided_by.clone().unwrap_or_default(),
        decided_at: None,
        // Needs the current view: `FleetApi::plan_with_edges` fills it.
        edge_diff: None,
    }
}

pub fn audit_to_pb(r: &AuditRecord) -> pb::AuditEntry {
    pb::AuditEntry {
        id: r.id,
        time: Some(timestamp_from_ms(r.time_ms)),
        plan_id: r.plan_id.to_string(),
        host: r.host.clone(),
        dn: r.dn.clone(),
        user_account_control_before: r.uac_before,
        user_account_control_after: r.uac_after,
        delegate_before: r.delegate_before.clone(),
        delegate_after: r.delegate_after.clone(),
        reasons: r.reasons.clone(),
        trigger: r.trigger.clone(),
        approved_by: r.approved_by.clone().unwrap_or_default(),
        replicated_to: Vec::new(),
        written_on: r.dc.clone(),
    }
}

/// Where an audited write has been seen besides the DC it was made on.
pub fn replicated_to_pb(rows: &[ReplicationRecord]) -> Vec<pb::ReplicatedTo> {
    rows.iter()
        .map(|r| pb::ReplicatedTo {
            dc: r.dc.clone(),
            arrived: r.arrived_at_ms.map(timestamp_from_ms),
            lag_seconds: r.lag_ms().unwrap_or(0) as f64 / 1000.0,
        })
        .collect()
}

pub fn readiness_to_pb(r: Readiness) -> i32 {
    (match r {
        Readiness::Ready => pb::Readiness::Ready,
        Readiness::NotReady => pb::Readiness::NotReady,
    }) as i32
}

pub fn mode_to_pb(m: Mode) -> i32 {
    (match m {
        Mode::Observe => pb::Mode::Observe,
        Mode::Plan => pb::Mode::Plan,
        Mode::Enforce => pb::Mode::Enforce,
    }) as i32
}

/// A plan state a caller may filter ListPlans by (`None`: any).
pub fn plan_filter_from_pb(state: i32) -> Result<Option<PlanState>, tonic::Status> {
    match pb::PlanState::try_from(state) {
        Ok(pb::PlanState::PendingApproval) => Ok(Some(PlanState::PendingApproval)),
        Ok(pb::PlanState::Applied) => Ok(Some(PlanState::Applied)),
        Ok(pb::PlanState::Unspecified) => Ok(None),
        _ => Err(tonic::Status::invalid_argument(
            "state: filter by PENDING_APPROVAL, APPLIED or leave it unset",
        )),
    }
}

/// A fleet event stamped now.
pub fn event(e: pb::fleet_event::Event) -> pb::FleetEvent {
    pb::FleetEvent {
        time: Some(timestamp_from_ms(now_ms())),
        event: Some(e),
    }
}
