//! The fleet API (`kcdsync.v1.FleetService`) for orchestrators and kcdctl.
//!
//! Owns: checking each caller's role (`auth`: a bearer token from a file, or
//! a client certificate); answering from the controller's
//! latest view of the fleet (no AD round trip except to look up an account
//! not seen in the last minute); turning write calls into requests to the
//! reconciler, which is the only writer of AD; and the event stream.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use kcdsync_proto::v1 as pb;
use kcdsync_proto::v1::fleet_service_server::FleetService;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::{Request, Response, Status};

use super::auth::Auth;
use super::cache::Bounded;
use super::convert::*;
use super::hosts::HostLookup;
pub(crate) use super::hosts::shown_name;
use super::paging::{keyset, keyset_next, page};
use crate::config::{ApiConfig, Config, Role};
use crate::diagnose;
use crate::ldap::Ad;
use crate::leader::Leadership;
use crate::model::*;
use crate::reconcile::{Approval, Outcome, ReconcileError};
use crate::store::{Store, StoredPlan, now_ms};
use crate::view::View;

/// Accounts looked up for CheckMigration are reused for this long …
const ACCOUNT_TTL: Duration = Duration::from_secs(60);
/// … and at most this many are kept (the least recently used go first).
pub const ACCOUNT_CACHE: usize = 1024;
/// Initiators (CheckMigration's machine that runs Move-VM, read from AD) are
/// reused for this long: long enough to absorb an orchestrator checking every
/// VM of a host in one go, short enough that an operator who just applied the
/// remediation a finding named sees it on the next check …
const INITIATOR_TTL: Duration = Duration::from_secs(10);
/// … and at most this many are kept (a caller may send any name).
pub const INITIATOR_CACHE: usize = 1024;
/// A ReadinessMatrix answers at most this many cells (a group of 100 hosts: 9,900).
pub const MAX_MATRIX_CELLS: usize = 10_000;
/// ApprovePlan and TriggerReconcile wait this long for their reconcile at most (less when the
/// caller's own deadline is shorter), then answer DEADLINE_EXCEEDED while the reconcile goes on.
pub const RECONCILE_WAIT: Duration = Duration::from_secs(60);

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
    accounts: Mutex<Bounded<Option<Account>>>,
    /// The computers AD answered for an initiator's name (none: not found).
    initiators: Mutex<Bounded<Vec<Computer>>>,
    ad: tokio::sync::Mutex<Option<Ad>>,
    pub(crate) auth: Auth,
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
            accounts: Mutex::new(Bounded::new(ACCOUNT_CACHE, ACCOUNT_TTL)),
            initiators: Mutex::new(Bounded::new(INITIATOR_CACHE, INITIATOR_TTL)),
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

    /// Replaces the findings of `kind` in the current view (the per-DC verify's, between
    /// reconciles).
    pub fn publish_findings_of(&self, kind: crate::model::FindingKind, findings: Vec<crate::diagnose::Finding>) {
        let mut v = self.view.write().unwrap();
        *v = Arc::new(v.with_findings_of(kind, findings));
    }

    pub fn publish(&self, view: View) {
        *self.view.write().unwrap() = Arc::new(view);
    }

    pub(crate) fn view(&self) -> Arc<View> {
        self.view.read().unwrap().clone()
    }

    /// The API's own AD connection, connected.
    async fn ad(&self, view: &View) -> Result<tokio::sync::MutexGuard<'_, Option<Ad>>, Status> {
        let mut ad = self.ad.lock().await;
        if ad.is_none() {
            Self::reconnect(&mut ad, view).await?;
        }
        Ok(ad)
    }

    /// Replaces the connection (after a failed read: it may have gone stale).
    async fn reconnect(ad: &mut Option<Ad>, view: &View) -> Result<(), Status> {
        *ad = Some(
            Ad::connect(&view.cfg.ad)
                .await
                .map_err(|e| Status::unavailable(format!("cannot reach AD: {e}")))?,
        );
        Ok(())
    }

    /// The account from the cache, or from AD.
    async fn account(&self, view: &View, name: &str) -> Result<Option<Account>, Status> {
        if name.is_empty() || name.len() > 256 {
            return Err(Status::invalid_argument(
                "account: give the sAMAccountName or UPN of the account that runs Move-VM",
            ));
        }
        let key = name.to_lowercase();
        if let Some(a) = self.accounts.lock().unwrap().get(&key) {
            return Ok(a);
        }
        let mut ad = self.ad(view).await?;
        let result = view
            .snapshot
            .account(&view.cfg, ad.as_ref().expect("connected"), name)
            .await;
        let a = match result {
            Ok(a) => a,
            Err(e) => {
                // The connection may have gone stale: drop it, retry once.
                Self::reconnect(&mut ad, view).await?;
                view.snapshot
                    .account(&view.cfg, ad.as_ref().expect("connected"), name)
                    .await
                    .map_err(|_| Status::unavailable(format!("cannot read account {name} from AD: {e}")))?
            }
        };
        self.accounts.lock().unwrap().insert(key, a.clone());
        Ok(a)
    }

    /// Where Move-VM runs, for CheckMigration: the source when no name was
    /// given or it names the source, a computer of the scope from the view,
    /// else read from AD (cached briefly).
    async fn initiator(
        &self,
        view: &View,
        source: &str,
        name: Option<&crate::model::names::HostName>,
    ) -> Result<diagnose::Initiator, Status> {
        let Some(host) = name else {
            return Ok(diagnose::Initiator::Source);
        };
        let facts = view.snapshot.facts(&view.cfg, now_ms());
        if let Some(i) = facts.initiator_in_scope(host, source) {
            return Ok(i);
        }
        let key = host.to_string();
        let cached = self.initiators.lock().unwrap().get(&key);
        let found = match cached {
            Some(found) => found,
            None => {
                let domain = &view.cfg.ad.domain_dn;
                let mut ad = self.ad(view).await?;
                let found = match ad.as_ref().expect("connected").computers_named(domain, host).await {
                    Ok(found) => found,
                    Err(e) => {
                        Self::reconnect(&mut ad, view).await?;
                        ad.as_ref()
                            .expect("connected")
                            .computers_named(domain, host)
                            .await
                            .map_err(|_| Status::unavailable(format!("cannot read computer {host} from AD: {e}")))?
                    }
                };
                self.initiators.lock().unwrap().insert(key, found.clone());
                found
            }
        };
        Ok(diagnose::pick_initiator(host, found))
    }

    /// Asks the reconciler for a run and waits for it, at most `wait`. Never
    /// waits to queue: a full queue is RESOURCE_EXHAUSTED (nothing queued); a
    /// run that takes longer is DEADLINE_EXCEEDED, and goes on.
    async fn reconcile(&self, trigger: String, approve: Option<Approval>, wait: Duration) -> Result<Outcome, Status> {
        let (reply, rx) = oneshot::channel();
        let plan = approve.as_ref().map(|a| a.plan_id);
        self.requests
            .try_send(ReconcileRequest {
                trigger,
                approve,
                reply,
                traceparent: kcdsync_telemetry::traceparent(&tracing::Span::current()).unwrap_or_default(),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Status::resource_exhausted(
                    "the reconciler has as many requests waiting as it takes; this one was not queued: retry shortly",
                ),
                mpsc::error::TrySendError::Closed(_) => Status::unavailable("the reconciler is shutting down"),
            })?;
        match tokio::time::timeout(wait, rx).await {
            Err(_) => Err(still_running(wait, plan)),
            Ok(r) => r
                .map_err(|_| Status::unavailable("the reconciler stopped"))?
                .map_err(Status::from),
        }
    }
}

/// The answer to a call whose reconcile outlasted its wait.
fn still_running(wait: Duration, plan: Option<i64>) -> Status {
    let follow = match plan {
        Some(id) => format!("see GetPlan {id} (or `kcdctl plans`) for its outcome"),
        None => "see ListPlans, ListAudit or Watch for its outcome".to_owned(),
    };
    Status::deadline_exceeded(format!(
        "the reconcile did not finish within {:.1}s; it goes on without this call: {follow}",
        wait.as_secs_f64()
    ))
}

/// How long a call may wait for its reconcile: RECONCILE_WAIT, or nine tenths of the
/// caller's own deadline (`grpc-timeout`) when that is shorter, so the caller hears why
/// before its deadline passes.
fn reconcile_wait<T>(req: &Request<T>) -> Duration {
    let caller = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout);
    caller.map_or(RECONCILE_WAIT, |d| (d * 9 / 10).min(RECONCILE_WAIT))
}

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n); `None` if malformed.
fn grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The cells of a readiness matrix over `hosts` hosts, or INVALID_ARGUMENT above the cap.
fn matrix_cells(group: &str, hosts: usize) -> Result<usize, Status> {
    let cells = hosts.saturating_mul(hosts.saturating_sub(1));
    if cells > MAX_MATRIX_CELLS {
        return Err(Status::invalid_argument(format!(
            "group `{group}` has {hosts} hosts: its matrix would have {cells} cells, more than the {MAX_MATRIX_CELLS} a ReadinessMatrix answers; ask CheckMigration for the pairs you need"
        )));
    }
    Ok(cells)
}

/// CheckMigration's initiator: none when empty, else a host name (INVALID_ARGUMENT otherwise).
fn parse_initiator(name: &str) -> Result<Option<crate::model::names::HostName>, Status> {
    if name.is_empty() {
        return Ok(None);
    }
    crate::model::names::HostName::parse(name).map(Some).map_err(|e| {
        Status::invalid_argument(format!(
            "initiator: {e}; give the FQDN or NetBIOS name of the machine that runs Move-VM"
        ))
    })
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
            hosts: {
                let lookup = HostLookup::new(&view);
                slice.iter().map(|c| self.host(&view, &lookup, c)).collect()
            },
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
        let lookup = HostLookup::new(&view);
        Ok(Response::new(self.host(
            &view,
            &lookup,
            &view.snapshot.observed.computers[i],
        )))
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
        // Checked before any I/O: a name that is no host name never reaches AD.
        let initiator = parse_initiator(r.initiator.trim())?;
        let view = self.state.view();
        let account = self
            .state
            .account(&view, &r.account)
            .await?
            .ok_or_else(|| Status::not_found(format!("no account `{}` in AD", r.account)))?;
        let initiator = self.state.initiator(&view, &r.source, initiator.as_ref()).await?;
        let facts = view.snapshot.facts(&view.cfg, now_ms());
        let mut v = diagnose::check_migration_from(&facts, &initiator, &r.source, &r.destination, &account);
        diagnose::awaiting_replication(&mut v, &view.findings, &r.source);
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
        let cells = matrix_cells(&r.group, members.len())?;
        let account = self
            .state
            .account(&view, &r.account)
            .await?
            .ok_or_else(|| Status::not_found(format!("no account `{}` in AD", r.account)))?;
        let facts = view.snapshot.facts(&view.cfg, now_ms());
        let names: Vec<String> = members.iter().map(|c| c.display_name()).collect();

        let mut cells = Vec::with_capacity(cells);
        for s in &names {
            for d in names.iter().filter(|d| *d != s) {
                let mut v = diagnose::check_migration(&facts, s, d, &account);
                diagnose::awaiting_replication(&mut v, &view.findings, s);
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
        let (before, size, fetch) = keyset(r.page_size, &r.page_token)?;
        let mut rows = self.state.store.plans_page(state, before, fetch).await?;
        let next = keyset_next(&mut rows, size, |p| p.id);
        Ok(Response::new(pb::ListPlansResponse {
            plans: rows.iter().map(|p| self.plan_with_edges(p)).collect(),
            next_page_token: next,
        }))
    }

    async fn get_plan(&self, req: Request<pb::GetPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        self.state.auth.require(&req, Role::Read, "GetPlan")?;
        let id = parse_plan_id(&req.into_inner().id)?;
        Ok(Response::new(self.plan_with_edges(&self.stored_plan(id).await?)))
    }

    async fn get_exposure(
        &self,
        req: Request<pb::GetExposureRequest>,
    ) -> Result<Response<pb::GetExposureResponse>, Status> {
        self.get_exposure_rpc(req).await
    }

    async fn approve_plan(&self, req: Request<pb::ApprovePlanRequest>) -> Result<Response<pb::Plan>, Status> {
        let who = self.state.auth.require(&req, Role::Write, "ApprovePlan")?;
        self.state.require_leader().await?;
        let wait = reconcile_wait(&req);
        let id = parse_plan_id(&req.into_inner().id)?;
        self.state
            .reconcile("api".into(), Some(Approval { plan_id: id, by: who }), wait)
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
        let o = self
            .state
            .reconcile(format!("api:{who}"), None, reconcile_wait(&req))
            .await?;
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
        let plan = (!r.plan_id.is_empty()).then(|| parse_plan_id(&r.plan_id)).transpose()?;
        let (before, size, fetch) = keyset(r.page_size, &r.page_token)?;
        let mut rows = self
            .state
            .store
            .audit_page(host.as_deref(), plan, before, fetch)
            .await?;
        let next = keyset_next(&mut rows, size, |a| a.id);
        let replication = self.state.store.replication_of(&rows).await?;
        let mut entries: Vec<pb::AuditEntry> = rows.iter().map(audit_to_pb).collect();
        for (e, r) in entries.iter_mut().zip(&replication) {
            e.replicated_to = replicated_to_pb(r);
        }
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
    // Reflection advertises the services this listener serves (not AgentService, whose
    // descriptor shares the file set), each version its own reflection service.
    let reflection = |own: &str| {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kcdsync_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("kcdsync.v1.FleetService")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name(own)
    };
    // v1alpha beside v1: Python's grpcio-reflection client, Postman and Evans still ask it.
    let reflection_v1alpha = reflection("grpc.reflection.v1alpha.ServerReflection").build_v1alpha()?;
    let reflection = reflection("grpc.reflection.v1.ServerReflection").build_v1()?;
    use super::limits::{API, API_MAX_REQUEST_BYTES, API_MAX_RESPONSE_BYTES};
    let ui = crate::ui::router(api.clone());
    let fleet = FleetServiceServer::new(api)
        .max_decoding_message_size(API_MAX_REQUEST_BYTES)
        .max_encoding_message_size(API_MAX_RESPONSE_BYTES);
    // The dashboard shares the listener: one port, one certificate, the same limits.
    let routes = tonic::service::Routes::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(fleet)
        .clone()
        .routes();
    let routes = tonic::service::Routes::from(routes.into_axum_router().merge(ui));
    super::limits::server(&API)
        .trace_fn(kcdsync_telemetry::server_span)
        .add_routes(routes)
        .serve_with_incoming_shutdown(super::tls::incoming(listener, tls, API.conn, None), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_deadline_shortens_the_wait_for_a_reconcile() {
        let mut req = Request::new(());
        assert_eq!(reconcile_wait(&req), RECONCILE_WAIT, "no deadline: the server's cap");
        req.set_timeout(Duration::from_secs(10));
        assert_eq!(
            reconcile_wait(&req),
            Duration::from_secs(9),
            "answered before the caller gives up"
        );
        req.set_timeout(Duration::from_secs(3600));
        assert_eq!(reconcile_wait(&req), RECONCILE_WAIT, "never longer than the cap");
        for (v, d) in [
            ("2S", Some(2_000)),
            ("150m", Some(150)),
            ("1M", Some(60_000)),
            ("5u", Some(0)),
        ] {
            assert_eq!(grpc_timeout(v).map(|d| d.as_millis() as u64), d, "{v}");
        }
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S", "٣S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_matrix_above_the_cap_is_refused_saying_so() {
        assert_eq!(matrix_cells("g", 100).unwrap(), 9_900);
        assert_eq!(matrix_cells("g", 0).unwrap(), 0);
        let e = matrix_cells("big", 101).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "group `big` has 101 hosts: its matrix would have 10100 cells, more than the 10000 a ReadinessMatrix answers; ask CheckMigration for the pairs you need"
        );
        assert!(matrix_cells("huge", usize::MAX).is_err(), "no overflow");
    }

    #[test]
    fn an_initiator_is_a_host_name_or_nothing() {
        assert_eq!(parse_initiator("").unwrap(), None, "empty: Move-VM runs on the source");
        assert_eq!(
            parse_initiator("GW01.Lab.Test").unwrap().unwrap().as_str(),
            "gw01.lab.test"
        );
        let long = "a".repeat(100_000);
        for bad in ["gw)(cn=*", "*", "GW01$", "gw 01", "a..b", long.as_str()] {
            let e = parse_initiator(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:.20}");
            assert!(e.message().starts_with("initiator: `"), "{}", e.message());
            assert!(e.message().len() < 300, "the input is not echoed in full");
        }
    }

    #[test]
    fn a_reconcile_that_outlasts_its_wait_is_said_to_go_on() {
        let s = still_running(Duration::from_millis(900), Some(7));
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            s.message(),
            "the reconcile did not finish within 0.9s; it goes on without this call: see GetPlan 7 (or `kcdctl plans`) for its outcome"
        );
    }
}
