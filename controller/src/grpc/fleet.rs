//! The fleet API (`kcdsync.v1.FleetService`) for orchestrators and kcdctl.
//!
//! Owns: checking each caller's role (`auth`: a bearer token from a file, or
//! a client certificate); answering from the controller's
//! latest view of the fleet (no AD round trip except to look up an account
//! not seen in the last minute); turning write calls into requests to the
//! reconciler, which is the only writer of AD; and the event stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kcdsync_proto::timestamp_from_ms;
use kcdsync_proto::v1 as pb;
use kcdsync_proto::v1::fleet_service_server::FleetService;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::{Request, Response, Status};

use super::auth::Auth;
use super::convert::*;
use crate::config::{ApiConfig, Config, Role};
use crate::diagnose;
use crate::ldap::Ad;
use crate::leader::Leadership;
use crate::model::*;
use crate::reconcile::{Approval, Outcome, ReconcileError};
use crate::store::{Store, StoredPlan, now_ms};
use crate::view::View;

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
    pub reply: oneshot::Sender<Result<Outcome, ReconcileError>>,
}

pub struct ApiState {
    pub store: Store,
    pub hub: Option<crate::grpc::agents::AgentHub>,
    pub view: RwLock<Arc<View>>,
    pub requests: mpsc::Sender<ReconcileRequest>,
    pub events: broadcast::Sender<pb::FleetEvent>,
    accounts: Mutex<HashMap<String, (Option<Account>, Instant)>>,
    ad: tokio::sync::Mutex<Option<Ad>>,
    pub(super) auth: Auth,
    leadership: Leadership,
}

impl ApiState {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        hub: Option<crate::grpc::agents::AgentHub>,
        requests: mpsc::Sender<ReconcileRequest>,
        events: broadcast::Sender<pb::FleetEvent>,
        api: &ApiConfig,
        leadership: Leadership,
    ) -> ApiState {
        ApiState {
            store,
            hub,
            view: RwLock::new(Arc::new(View::empty(cfg))),
            requests,
            events,
            accounts: Mutex::new(HashMap::new()),
            ad: tokio::sync::Mutex::new(None),
            auth: Auth::new(api),
            leadership,
        }
    }

    /// Write RPCs run on the leader only: a follower answers FAILED_PRECONDITION naming the
    /// leader's advertised API address, for the caller to retry there.
    async fn require_leader(&self) -> Result<(), Status> {
        if self.leadership.is_leader() {
            return Ok(());
        }
        if !self.leadership.is_replica()
            && let Some(lease) = self.leadership.other_writer().await
        {
            // A single controller waits while a one-shot CLI apply writes.
            return Err(Status::failed_precondition(format!(
                "another writer holds the AD write lease: {}; retry when it is done",
                crate::leader::holder(&lease)
            )));
        }
        let leader = self
            .leadership
            .leader_address()
            .await
            .unwrap_or_else(|| "unknown (no replica holds the lease right now; retry shortly)".to_owned());
        Err(Status::failed_precondition(format!(
            "this replica is a follower; the leader is {leader}"
        )))
    }

    /// Replaces who may call (tokens, client names) with `api`'s: SIGHUP.
    pub fn reload_callers(&self, api: &ApiConfig) {
        self.auth.reload(api);
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
            .map_err(Status::from)
    }
}

/// One page of `items`. The token is the offset this server put in `next_page_token`: digits
/// only, checked arithmetic, so a forged token is INVALID_ARGUMENT and never a panic or a wrap.
/// An offset past the end (the list shrank between pages) is an empty last page.
fn page<T: Clone>(items: &[T], size: u32, token: &str) -> Result<(Vec<T>, String), Status> {
    let start: usize = if token.is_empty() {
        0
    } else {
        Some(token)
            .filter(|t| t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                Status::invalid_argument(
                    "page_token is not one this server issued: pass the previous page's next_page_token, or none to start",
                )
            })?
    };
    let size = match usize::try_from(size).unwrap_or(MAX_PAGE) {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let start = start.min(items.len());
    let end = start.saturating_add(size).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((items[start..end].to_vec(), next))
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
        let facts = view.snapshot.facts(&view.cfg, now_ms());
        // A refused object goes by its NetBIOS name: its dNSHostName is
        // exactly what is not trusted.
        let trusted = view
            .snapshot
            .index
            .find_dn(&c.dn)
            .is_some_and(|i| view.snapshot.index.trusted(i));
        let name = if trusted { c.display_name() } else { c.netbios() };
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
            mode: groups.iter().map(|g| g.mode).min().map_or(0, mode_to_pb),
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
            last_seen: agent.and_then(|a| a.last_seen_ms).map(timestamp_from_ms),
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
        let groups: Vec<&crate::config::Group> = view
            .cfg
            .groups
            .iter()
            .filter(|g| group.is_empty() || g.name.eq_ignore_ascii_case(group))
            .collect();
        if groups.is_empty() {
            return Err(Status::not_found(format!("no group `{group}` in the configuration")));
        }
        let snap = &view.snapshot;
        let mut idx: Vec<usize> = groups
            .into_iter()
            .flat_map(|g| {
                // Members refused by the identity checks are listed too (as
                // NOT_READY, with their finding): an operator must see them.
                let m = g.resolve(&snap.observed, &snap.index);
                m.computers.into_iter().chain(m.refused)
            })
            .collect();
        idx.sort_unstable();
        idx.dedup();
        let mut out: Vec<&Computer> = idx.into_iter().map(|i| &snap.observed.computers[i]).collect();
        out.sort_by_key(|c| c.display_name());
        Ok(out)
    }
}

impl FleetApi {
    /// A stored plan, or NOT_FOUND.
    async fn stored_plan(&self, id: i64) -> Result<StoredPlan, Status> {
        self.state
            .store
            .get_plan(id)
            .await?
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
        let i = crate::model::names::HostName::parse(&name)
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
        let facts = view.snapshot.facts(&view.cfg, now_ms());
        let v = diagnose::check_migration(&facts, &r.source, &r.destination, &account);
        Ok(Response::new(pb::CheckMigrationResponse {
            readiness: readiness_to_pb(v.readiness),
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
        let facts = view.snapshot.facts(&view.cfg, now_ms());
        let names: Vec<String> = members.iter().map(|c| c.display_name()).collect();

        let mut cells = Vec::new();
        for s in &names {
            for d in names.iter().filter(|d| *d != s) {
                let v = diagnose::check_migration(&facts, s, d, &account);
                let mut reasons: Vec<i32> = v.blocking.iter().map(|f| kind_to_pb(f.kind)).collect();
                reasons.dedup();
                cells.push(pb::MatrixCell {
                    source: s.clone(),
                    destination: d.clone(),
                    readiness: readiness_to_pb(v.readiness),
                    reasons,
                });
            }
        }
        Ok(Response::new(pb::ReadinessMatrixResponse { hosts: names, cells }))
    }

    async fn list_plans(&self, req: Request<pb::ListPlansRequest>) -> Result<Response<pb::ListPlansResponse>, Status> {
        self.state.auth.require(&req, Role::Read, "ListPlans")?;
        let r = req.into_inner();
        let state = plan_filter_from_pb(r.state)?;
        let plans = self.state.store.list_plans(state, 10_000).await?;
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
        let note = (!r.comment.is_empty()).then_some(r.comment.as_str());
        let p = crate::reconcile::reject(&self.state.store, id, &who, note).await?;
        Ok(Response::new(plan_to_pb(&p)))
    }

    async fn trigger_reconcile(
        &self,
        req: Request<pb::TriggerReconcileRequest>,
    ) -> Result<Response<pb::TriggerReconcileResponse>, Status> {
        let who = self.state.auth.require(&req, Role::Write, "TriggerReconcile")?;
        // A caller asking for some hosts must not get a write to all of them.
        if !req.get_ref().hosts.is_empty() {
            return Err(Status::invalid_argument(
                "TriggerReconcile.hosts is not supported yet: a reconcile always covers the whole fleet; send an empty list",
            ));
        }
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
        let rows = self.state.store.audit(host.as_deref(), 100_000).await?;
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

/// Serves the fleet API, the gRPC health service and server reflection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: std::sync::Arc<super::tls::ServerTls>,
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
        .trace_fn(kcdsync_telemetry::grpc_server_span)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(FleetServiceServer::new(api))
        .serve_with_incoming_shutdown(super::tls::incoming(listener, tls), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod page_tests {
    use super::*;

    #[test]
    fn pages_follow_the_tokens_this_server_issues() {
        let items: Vec<u32> = (0..250).collect();
        let (first, next) = page(&items, 0, "").unwrap();
        assert_eq!((first.len(), next.as_str()), (DEFAULT_PAGE, "100"));
        let (last, next) = page(&items, 200, &next).unwrap();
        assert_eq!((last.len(), last[0], next.as_str()), (150, 100, ""));
        let (most, _) = page(&items, u32::MAX, "").unwrap();
        assert_eq!(most.len(), 250, "page_size is capped, never overflowed");
    }

    #[test]
    fn huge_or_forged_page_tokens_are_refused_or_end_the_list() {
        let items: Vec<u32> = (0..10).collect();
        // The largest offset a usize holds: past the end, so an empty last page (no overflow).
        let (none, next) = page(&items, u32::MAX, &usize::MAX.to_string()).unwrap();
        assert!(none.is_empty() && next.is_empty());
        for forged in [
            "-1",
            "+5",
            "1e3",
            " 5",
            "99999999999999999999999",
            "18446744073709551616",
            "abc",
        ] {
            let e = page(&items, 10, forged).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{forged}");
            assert!(
                e.message().starts_with("page_token is not one this server issued"),
                "{forged}: {e:?}"
            );
        }
    }
}
