//! The fleet API (`kcdsync.v1.FleetService`) for orchestrators and kcdctl.
//!
//! Owns: authenticating callers (bearer tokens from a file, or client
//! certificates) and their read/write role; answering from the controller's
//! latest view of the fleet (no AD round trip except to look up an account
//! not seen in the last minute); turning write calls into requests to the
//! reconciler, which is the only writer of AD; and the event stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kcdsync_proto::v1 as pb;
use kcdsync_proto::v1::fleet_service_server::FleetService;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tonic::{Request, Response, Status};

use crate::config::{ApiConfig, Config, Mode, Role};
use crate::diagnose::{self, Account, Finding, Readiness, Severity};
use crate::ldap::Ad;
use crate::model::*;
use crate::plan::HostChange;
use crate::reconcile::{Approval, Outcome};
use crate::snapshot::Snapshot;
use crate::store::{AuditRecord, PlanState, Store, StoredPlan, now_ms};

/// Accounts looked up for CheckMigration are reused for this long.
const ACCOUNT_TTL: Duration = Duration::from_secs(60);
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// What the reconciler is asked to do on behalf of an API caller.
#[derive(Debug)]
pub struct ReconcileRequest {
    pub trigger: String,
    /// The caller's span, which the reconcile continues.
    pub traceparent: String,
    pub approve: Option<Approval>,
    pub reply: oneshot::Sender<Result<Outcome, String>>,
}

/// The latest view the API answers from, replaced after every reconcile.
pub struct View {
    pub cfg: Arc<Config>,
    pub snapshot: Snapshot,
    pub findings: Vec<Finding>,
}

impl View {
    pub fn empty(cfg: Arc<Config>) -> View {
        View {
            cfg,
            snapshot: Snapshot::empty(),
            findings: Vec::new(),
        }
    }
}

pub struct ApiState {
    pub store: Store,
    pub hub: Option<crate::agents::AgentHub>,
    pub view: RwLock<Arc<View>>,
    pub requests: mpsc::Sender<ReconcileRequest>,
    pub events: broadcast::Sender<pb::FleetEvent>,
    accounts: Mutex<HashMap<String, (Option<Account>, Instant)>>,
    ad: tokio::sync::Mutex<Option<Ad>>,
    auth: Auth,
    stale_after_ms: i64,
    /// With `[replica]`: this replica's id and the epoch of the leader lease it holds (`None`:
    /// a follower). Without, this controller always writes.
    leadership: Option<(String, watch::Receiver<Option<i64>>)>,
}

impl ApiState {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        hub: Option<crate::agents::AgentHub>,
        requests: mpsc::Sender<ReconcileRequest>,
        events: broadcast::Sender<pb::FleetEvent>,
        api: &ApiConfig,
    ) -> ApiState {
        let stale_after_ms = cfg.agents.as_ref().map_or(60_000, |a| a.stale_after.as_millis() as i64);
        ApiState {
            store,
            hub,
            view: RwLock::new(Arc::new(View::empty(cfg))),
            requests,
            events,
            accounts: Mutex::new(HashMap::new()),
            ad: tokio::sync::Mutex::new(None),
            auth: Auth {
                tokens: api.tokens.clone(),
                read_clients: api.read_clients.clone(),
                write_clients: api.write_clients.clone(),
            },
            stale_after_ms,
            leadership: None,
        }
    }

    /// Makes write RPCs depend on holding the leader lease (`[replica]`).
    pub fn with_leadership(mut self, id: String, leader: watch::Receiver<Option<i64>>) -> ApiState {
        self.leadership = Some((id, leader));
        self
    }

    /// Write RPCs run on the leader only: a follower answers FAILED_PRECONDITION naming the
    /// leader's advertised API address, for the caller to retry there.
    async fn require_leader(&self) -> Result<(), Status> {
        let Some((id, leader)) = &self.leadership else {
            return Ok(());
        };
        if leader.borrow().is_some() {
            return Ok(());
        }
        let lease = self.store.lease(crate::server::LEADER_LEASE).await.ok().flatten();
        let leader = match lease {
            Some(l) if l.holder != *id && l.expires_at_ms >= crate::store::now_ms() => l.address,
            _ => "unknown (no replica holds the lease right now; retry shortly)".to_owned(),
        };
        Err(Status::failed_precondition(format!(
            "this replica is a follower; the leader is {leader}"
        )))
    }

    pub fn publish(&self, view: View) {
        *self.view.write().unwrap() = Arc::new(view);
    }

    fn view(&self) -> Arc<View> {
        self.view.read().unwrap().clone()
    }

    /// The account from the cache, or from AD.
    async fn account(&self, view: &View, name: &str) -> Result<Option<Account>, Status> {
        if name.is_empty() || name.len() > 256 {
            return Err(Status::invalid_argument(
                "account: give the sAMAccountName or UPN of the account that runs Move-VM",
            ));
        }
        let key = name.to_lowercase();
        if let Some((a, at)) = self.accounts.lock().unwrap().get(&key)
            && at.elapsed() < ACCOUNT_TTL
        {
            return Ok(a.clone());
        }
        let mut ad = self.ad.lock().await;
        if ad.is_none() {
            *ad = Some(
                Ad::connect(&view.cfg.ad)
                    .await
                    .map_err(|e| Status::unavailable(format!("cannot reach AD: {e}")))?,
            );
        }
        let result = view
            .snapshot
            .account(&view.cfg, ad.as_ref().expect("connected"), name)
            .await;
        let a = match result {
            Ok(a) => a,
            Err(e) => {
                // The connection may have gone stale: drop it, retry once.
                *ad = Some(
                    Ad::connect(&view.cfg.ad)
                        .await
                        .map_err(|e| Status::unavailable(format!("cannot reach AD: {e}")))?,
                );
                view.snapshot
                    .account(&view.cfg, ad.as_ref().expect("connected"), name)
                    .await
                    .map_err(|_| Status::unavailable(format!("cannot read account {name} from AD: {e}")))?
            }
        };
        self.accounts.lock().unwrap().insert(key, (a.clone(), Instant::now()));
        Ok(a)
    }

    async fn reconcile(&self, trigger: String, approve: Option<Approval>) -> Result<Outcome, Status> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(ReconcileRequest {
                trigger,
                approve,
                reply,
                traceparent: kcdsync_telemetry::traceparent(&tracing::Span::current()).unwrap_or_default(),
            })
            .await
            .map_err(|_| Status::unavailable("the reconciler is shutting down"))?;
        rx.await
            .map_err(|_| Status::unavailable("the reconciler stopped"))?
            .map_err(|e| {
                if e.contains("not pending approval")
                    || e.contains("no longer matches AD")
                    || e.contains("this replica is a follower")
                    || e.contains("no longer holds the leader lease")
                {
                    Status::failed_precondition(e)
                } else if e.contains("does not exist") {
                    Status::not_found(e)
                } else {
                    Status::internal(e)
                }
            })
    }
}

struct Auth {
    tokens: Vec<crate::config::ApiToken>,
    read_clients: Vec<String>,
    write_clients: Vec<String>,
}

/// Equal-length comparison that does not stop at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Who is calling, and with which role.
    fn caller<T>(&self, req: &Request<T>) -> Result<(String, Role), Status> {
        if let Some(v) = req.metadata().get("authorization") {
            let v = v
                .to_str()
                .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
            let token = v
                .strip_prefix("Bearer ")
                .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))?;
            return self
                .tokens
                .iter()
                .find(|t| same_secret(t.secret.expose().as_bytes(), token.as_bytes()))
                .map(|t| (format!("token:{}", t.name), t.role))
                .ok_or_else(|| Status::unauthenticated("unknown bearer token"));
        }
        if let Some(certs) = req.peer_certs().filter(|c| !c.is_empty()) {
            let names = crate::certs::peer_host_names(certs[0].as_ref())
                .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
            for n in &names {
                if self.write_clients.contains(n) {
                    return Ok((format!("cert:{n}"), Role::Write));
                }
            }
            for n in &names {
                if self.read_clients.contains(n) {
                    return Ok((format!("cert:{n}"), Role::Read));
                }
            }
            return Err(Status::permission_denied(format!(
                "the client certificate for {names:?} has no role: add its name to api.read_clients or api.write_clients"
            )));
        }
        Err(Status::unauthenticated(
            "authenticate with `authorization: Bearer <token>` or a client certificate",
        ))
    }

    fn require<T>(&self, req: &Request<T>, need: Role, what: &str) -> Result<String, Status> {
        let (who, role) = self.caller(req)?;
        if role < need {
            return Err(Status::permission_denied(format!(
                "{who} has the read role; {what} needs the write role"
            )));
        }
        Ok(who)
    }
}

fn ts(ms: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

fn page<T: Clone>(items: &[T], size: u32, token: &str) -> Result<(Vec<T>, String), Status> {
    let start: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| Status::invalid_argument("page_token is not one this server gave out"))?
    };
    let size = match size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let end = (start + size).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((items.get(start..end).unwrap_or_default().to_vec(), next))
}

pub fn finding_to_pb(f: &Finding) -> pb::Finding {
    pb::Finding {
        id: f.id.clone(),
        kind: f.kind.to_proto(),
        severity: match f.severity {
            Severity::Info => pb::Severity::Info,
            Severity::Warning => pb::Severity::Warning,
            Severity::Critical => pb::Severity::Critical,
        } as i32,
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

fn change_to_pb(c: &HostChange) -> pb::HostChange {
    pb::HostChange {
        host: c.host.clone(),
        dn: c.dn.clone(),
        user_account_control_before: c.uac_before,
        user_account_control_after: c.uac_after,
        add: c.add.clone(),
        remove: c.remove.clone(),
        reasons: c.reasons.clone(),
    }
}

pub fn plan_to_pb(p: &StoredPlan) -> pb::Plan {
    pb::Plan {
        id: p.id.to_string(),
        state: match p.state {
            PlanState::PendingApproval => pb::PlanState::PendingApproval,
            PlanState::Approved => pb::PlanState::Approved,
            PlanState::Applied => pb::PlanState::Applied,
            PlanState::Rejected => pb::PlanState::Rejected,
            PlanState::Superseded => pb::PlanState::Superseded,
            PlanState::Failed => pb::PlanState::Failed,
        } as i32,
        created_at: ts(p.created_at_ms),
        trigger: p.trigger.clone(),
        changes: p.changes.iter().map(change_to_pb).collect(),
        gate_reasons: p.gate_reasons.clone(),
        decided_by: p.decided_by.clone().unwrap_or_default(),
        decided_at: None,
    }
}

fn audit_to_pb(r: &AuditRecord) -> pb::AuditEntry {
    pb::AuditEntry {
        id: r.id,
        time: ts(r.time_ms),
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
    }
}

fn readiness_pb(r: Readiness) -> i32 {
    let r = match r {
        Readiness::Ready => pb::Readiness::Ready,
        Readiness::NotReady => pb::Readiness::NotReady,
    };
    r as i32
}

fn mode_pb(m: Mode) -> i32 {
    let m = match m {
        Mode::Observe => pb::Mode::Observe,
        Mode::Plan => pb::Mode::Plan,
        Mode::Enforce => pb::Mode::Enforce,
    };
    m as i32
}

fn parse_plan_id(id: &str) -> Result<i64, Status> {
    id.trim()
        .parse()
        .map_err(|_| Status::invalid_argument(format!("`{id}` is not a plan id (a number, see ListPlans)")))
}

/// The FleetService over shared state.
#[derive(Clone)]
pub struct FleetApi {
    pub state: Arc<ApiState>,
}

impl FleetApi {
    fn host(&self, view: &View, c: &Computer) -> pb::Host {
        let facts = view.snapshot.facts(&view.cfg, self.state.stale_after_ms, now_ms());
        let name = c.display_name();
        let groups: Vec<&crate::config::Group> = view
            .cfg
            .groups
            .iter()
            .filter(|g| facts.members(g).iter().any(|m| m.dn == c.dn))
            .collect();
        let findings: Vec<pb::Finding> = view
            .findings
            .iter()
            .filter(|f| f.hosts.contains(&name))
            .map(finding_to_pb)
            .collect();
        let critical = findings.iter().any(|f| f.severity == pb::Severity::Critical as i32);
        let agent = c.fqdn().and_then(|f| view.snapshot.hosts.get(&f));
        let live = self.state.hub.as_ref().map(|h| h.liveness(&name));
        pb::Host {
            name: name.clone(),
            netbios_name: c.netbios(),
            groups: groups.iter().map(|g| g.name.clone()).collect(),
            mode: groups.iter().map(|g| g.mode).min().map_or(0, mode_pb),
            delegation: Some(pb::DelegationState {
                dn: c.dn.clone(),
                user_account_control: c.uac,
                protocol_transition: c.uac & TRUSTED_TO_AUTH_FOR_DELEGATION != 0,
                unconstrained: c.uac & TRUSTED_FOR_DELEGATION != 0,
                allowed_to_delegate_to: c.allowed_to_delegate_to.clone(),
                service_principal_names: c.spns.clone(),
                usn_changed: c.usn_changed,
            }),
            last_report: agent.and_then(|a| a.report.clone()),
            last_seen: agent.and_then(|a| a.last_seen_ms).and_then(ts),
            agent_connected: live.as_ref().is_some_and(|l| l.connected),
            stale: live.as_ref().is_some_and(|l| l.stale && l.last_seen.is_some()),
            readiness: if critical {
                pb::Readiness::NotReady
            } else {
                pb::Readiness::Ready
            } as i32,
            findings,
        }
    }

    /// Computers shown as hosts: every member of a configured group.
    fn hosts<'v>(&self, view: &'v View, group: &str) -> Result<Vec<&'v Computer>, Status> {
        let facts = view.snapshot.facts(&view.cfg, self.state.stale_after_ms, now_ms());
        let groups: Vec<&crate::config::Group> = view
            .cfg
            .groups
            .iter()
            .filter(|g| group.is_empty() || g.name.eq_ignore_ascii_case(group))
            .collect();
        if groups.is_empty() {
            return Err(Status::not_found(format!("no group `{group}` in the configuration")));
        }
        let mut out: Vec<&Computer> = Vec::new();
        for g in groups {
            for c in facts.members(g) {
                if !out.iter().any(|o| o.dn == c.dn) {
                    // Re-borrow from the view, not from `facts`.
                    if let Some(i) = view.snapshot.index.find_dn(&c.dn) {
                        out.push(&view.snapshot.observed.computers[i]);
                    }
                }
            }
        }
        out.sort_by_key(|c| c.display_name());
        Ok(out)
    }
}

impl FleetApi {
    /// A stored plan, or NOT_FOUND.
    async fn stored_plan(&self, id: i64) -> Result<crate::store::StoredPlan, Status> {
        self.state
            .store
            .get_plan(id)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("no plan {id}")))
    }
}

#[tonic::async_trait]
impl FleetService for FleetApi {
    async fn list_hosts(&self, req: Request<pb::ListHostsRequest>) -> Result<Response<pb::ListHostsResponse>, Status> {
        self.state.auth.require(&req, Role::Read, "ListHosts")?;
        let r = req.into_inner();
        let view = self.state.view();
        let all = self.hosts(&view, &r.group)?;
        let (slice, next) = page(&all, r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListHostsResponse {
            hosts: slice.iter().map(|c| self.host(&view, c)).collect(),
            next_page_token: next,
        }))
    }

    async fn get_host(&self, req: Request<pb::GetHostRequest>) -> Result<Response<pb::Host>, Status> {
        self.state.auth.require(&req, Role::Read, "GetHost")?;
        let name = req.into_inner().name;
        let view = self.state.view();
        let i = crate::names::HostName::parse(&name)
            .ok()
            .and_then(|n| view.snapshot.index.find(&n))
            .ok_or_else(|| Status::not_found(format!("no computer `{name}` in the managed scope")))?;
        Ok(Response::new(self.host(&view, &view.snapshot.observed.computers[i])))
    }

    async fn list_findings(
        &self,
        req: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        self.state.auth.require(&req, Role::Read, "ListFindings")?;
        let r = req.into_inner();
        let view = self.state.view();
        let host = r.host.to_lowercase();
        let all: Vec<pb::Finding> = view
            .findings
            .iter()
            .map(finding_to_pb)
            .filter(|f| host.is_empty() || f.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)))
            .filter(|f| r.kind == 0 || f.kind == r.kind)
            .filter(|f| f.severity >= r.min_severity)
            .collect();
        let (findings, next) = page(&all, r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListFindingsResponse {
            findings,
            next_page_token: next,
        }))
    }

    async fn check_migration(
        &self,
        req: Request<pb::CheckMigrationRequest>,
    ) -> Result<Response<pb::CheckMigrationResponse>, Status> {
        self.state.auth.require(&req, Role::Read, "CheckMigration")?;
        let r = req.into_inner();
        if r.source.is_empty() || r.destination.is_empty() {
            return Err(Status::invalid_argument(
                "source and destination are required (FQDN or NetBIOS name)",
            ));
        }
        let view = self.state.view();
        let account = self
            .state
            .account(&view, &r.account)
            .await?
            .ok_or_else(|| Status::not_found(format!("no account `{}` in AD", r.account)))?;
        let facts = view.snapshot.facts(&view.cfg, self.state.stale_after_ms, now_ms());
        let v = diagnose::check_migration(&facts, &r.source, &r.destination, &account);
        Ok(Response::new(pb::CheckMigrationResponse {
            readiness: readiness_pb(v.readiness),
            blocking: v.blocking.iter().map(finding_to_pb).collect(),
            warnings: v.warnings.iter().map(finding_to_pb).collect(),
            summary: v.summary,
        }))
    }

    async fn readiness_matrix(
        &self,
        req: Request<pb::ReadinessMatrixRequest>,
    ) -> Result<Response<pb::ReadinessMatrixResponse>, Status> {
        self.state.auth.require(&req, Role::Read, "ReadinessMatrix")?;
        let r = req.into_inner();
        if r.group.is_empty() {
            return Err(Status::invalid_argument("group is required"));
        }
        let view = self.state.view();
        let members = self.hosts(&view, &r.group)?;
        let account = self
            .state
            .account(&view, &r.account)
            .await?
            .ok_or_else(|| Status::not_found(format!("no account `{}` in AD", r.account)))?;
        let facts = view.snapshot.facts(&view.cfg, self.state.stale_after_ms, now_ms());
        let names: Vec<String> = members.iter().map(|c| c.display_name()).collect();

        let mut cells = Vec::new();
        for s in &names {
            for d in names.iter().filter(|d| *d != s) {
                let v = diagnose::check_migration(&facts, s, d, &account);
                let mut reasons: Vec<i32> = v.blocking.iter().map(|f| f.kind.to_proto()).collect();
                reasons.dedup();
                cells.push(pb::MatrixCell {
                    source: s.clone(),
                    destination: d.clone(),
                    readiness: readiness_pb(v.readiness),
                    reasons,
                });
            }
        }
        Ok(Response::new(pb::ReadinessMatrixResponse { hosts: names, cells }))
    }

    async fn list_plans(&self, req: Request<pb::ListPlansRequest>) -> Result<Response<pb::ListPlansResponse>, Status> {
        self.state.auth.require(&req, Role::Read, "ListPlans")?;
        let r = req.into_inner();
        let state = match pb::PlanState::try_from(r.state) {
            Ok(pb::PlanState::PendingApproval) => Some(PlanState::PendingApproval),
            Ok(pb::PlanState::Applied) => Some(PlanState::Applied),
            Ok(pb::PlanState::Unspecified) => None,
            _ => {
                return Err(Status::invalid_argument(
                    "state: filter by PENDING_APPROVAL, APPLIED or leave it unset",
                ));
            }
        };
        let plans = self
            .state
            .store
            .list_plans(state, 10_000)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let all: Vec<pb::Plan> = plans.iter().map(plan_to_pb).collect();
        let (plans, next) = page(&all, r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListPlansResponse {
            plans,
            next_page_token: next,
        }))
    }

    async fn get_plan(&self, req: Request<pb::GetPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        self.state.auth.require(&req, Role::Read, "GetPlan")?;
        let id = parse_plan_id(&req.into_inner().id)?;
        Ok(Response::new(plan_to_pb(&self.stored_plan(id).await?)))
    }

    async fn approve_plan(&self, req: Request<pb::ApprovePlanRequest>) -> Result<Response<pb::Plan>, Status> {
        let who = self.state.auth.require(&req, Role::Write, "ApprovePlan")?;
        self.state.require_leader().await?;
        let id = parse_plan_id(&req.into_inner().id)?;
        self.state
            .reconcile("api".into(), Some(Approval { plan_id: id, by: who }))
            .await?;
        Ok(Response::new(plan_to_pb(&self.stored_plan(id).await?)))
    }

    async fn reject_plan(&self, req: Request<pb::RejectPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        let who = self.state.auth.require(&req, Role::Write, "RejectPlan")?;
        self.state.require_leader().await?;
        let r = req.into_inner();
        let id = parse_plan_id(&r.id)?;
        let store = &self.state.store;
        let p = self.stored_plan(id).await?;
        if p.state != PlanState::PendingApproval {
            return Err(Status::failed_precondition(format!(
                "plan {id} is {}, not pending approval",
                p.state
            )));
        }
        let note = (!r.comment.is_empty()).then_some(r.comment.as_str());
        store
            .set_plan_state(id, PlanState::Rejected, Some(&who), note)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(plan_to_pb(&self.stored_plan(id).await?)))
    }

    async fn trigger_reconcile(
        &self,
        req: Request<pb::TriggerReconcileRequest>,
    ) -> Result<Response<pb::TriggerReconcileResponse>, Status> {
        let who = self.state.auth.require(&req, Role::Write, "TriggerReconcile")?;
        self.state.require_leader().await?;
        let o = self.state.reconcile(format!("api:{who}"), None).await?;
        Ok(Response::new(pb::TriggerReconcileResponse {
            plan_id: o.plan_id.map(|p| p.to_string()).unwrap_or_default(),
            hosts_changed: o.applied.len() as u32,
            hosts_pending_approval: o.pending_plan.map_or(0, |_| 1),
        }))
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.state.auth.require(&req, Role::Read, "ListAudit")?;
        let r = req.into_inner();
        let host = (!r.host.is_empty()).then(|| r.host.to_lowercase());
        let rows = self
            .state
            .store
            .audit(host.as_deref(), 100_000)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let all: Vec<pb::AuditEntry> = rows
            .iter()
            .filter(|a| r.plan_id.is_empty() || a.plan_id.to_string() == r.plan_id)
            .map(audit_to_pb)
            .collect();
        let (entries, next) = page(&all, r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListAuditResponse {
            entries,
            next_page_token: next,
        }))
    }

    type WatchStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::FleetEvent, Status>> + Send>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.state.auth.require(&req, Role::Read, "Watch")?;
        let mut rx = self.state.events.subscribe();
        let (tx, out) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let item = match rx.recv().await {
                    Ok(ev) => Ok(ev),
                    Err(broadcast::error::RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                        "this watcher fell {n} events behind and was cut off: re-read ListPlans/ListAudit, then Watch again"
                    ))),
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let end = item.is_err();
                // A failed send means the watcher is gone.
                if tx.send(item).await.is_err() || end {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            out,
        ))))
    }
}

/// TLS for the API: the controller's identity; client certificates from
/// `client_ca_file` are accepted but optional (token callers have none).
pub fn server_tls(cfg: &ApiConfig) -> Result<tonic::transport::ServerTlsConfig, std::io::Error> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(&cfg.cert_file)?, read(&cfg.key_file)?));
    if let Some(ca) = &cfg.client_ca_file {
        tls = tls
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(tls)
}

/// Serves the fleet API, the gRPC health service and server reflection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: tonic::transport::ServerTlsConfig,
    api: FleetApi,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use kcdsync_proto::v1::fleet_service_server::FleetServiceServer;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FleetServiceServer<FleetApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kcdsync_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .trace_fn(kcdsync_telemetry::grpc_server_span)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(FleetServiceServer::new(api))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
