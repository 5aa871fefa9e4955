//! The controller's side of the agent streams (`kcdsync.v1.AgentService`).
//!
//! Owns: binding each stream to the host named in its client certificate,
//! validating what agents send, batching it into the store through one
//! writer task (acks go out only after the write committed), the registry
//! of connected agents through which commands are sent, liveness (last
//! heard from, stale), and turning a reported authentication failure into
//! a reconcile trigger.
//!
//! Sending never waits on an agent: each stream has a bounded queue, a
//! command that finds it full cuts that agent off (it is not reading), and a
//! purge that could not be handed over is recorded in the store and sent
//! again when the agent connects.
//!
//! Revoked hosts (the deny-list in the store, `crate::revocation`) are refused
//! at Hello with PERMISSION_DENIED; every [`revocation::POLL`] the hub re-reads
//! the list and cuts the live streams of hosts revoked meanwhile, on whichever
//! replica revoked them.
//!
//! A stream may ask for a fresh certificate for its own host (`RenewCertificate`);
//! `crate::renewal` decides, and the answer goes back on the stream, which stays open
//! whatever it is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use kcdsync_proto::v1::controller_message::Body as Down;
use kcdsync_proto::v1::*;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::enrollment::{EnrollRefusal, Enrollable, Enroller, Proof as EnrollProof};
use crate::renewal::{Issued, RenewalPolicy, Renewer};
use crate::revocation;
use crate::store::{Revocation, Store};

mod downstream;
mod ingest;

pub use downstream::Downstream;
use downstream::{Cut, not_reading, watch_revocations};
use ingest::{Ingest, MAX_BATCH, writer};

/// HRESULTs that mean "Kerberos delegation did not work" in a migration.
pub const AUTH_FAILURES: [u32; 2] = [0x8009030E, 0x8009030D];

/// Messages queued towards one agent; a command that finds them all still
/// waiting disconnects the agent.
pub const DOWN_QUEUE: usize = 32;
/// How long a revoked agent's connection stays open after its stream was ended, so that the
/// PERMISSION_DENIED saying why reaches it before the connection is closed.
const REVOKED_GRACE: Duration = Duration::from_millis(200);

type Downlink = mpsc::Sender<Result<ControllerMessage, Status>>;

#[derive(Debug, Clone)]
pub struct HubOptions {
    pub heartbeat: Duration,
    /// A host not heard from for this long is stale.
    pub stale_after: Duration,
    pub max_message_bytes: usize,
    /// How long a new stream may take to say Hello.
    pub hello_timeout: Duration,
    /// Whether and how agents' certificates are renewed over their streams.
    pub renewal: RenewalPolicy,
    /// Kerberos enrollment (`[agents.enroll]`); `None`: Enroll answers FAILED_PRECONDITION.
    pub enroll: Option<kcdsync_gss::Acceptor>,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            heartbeat: Duration::from_secs(15),
            stale_after: crate::config::DEFAULT_STALE_AFTER,
            max_message_bytes: 1 << 20,
            hello_timeout: Duration::from_secs(10),
            renewal: RenewalPolicy::default(),
            enroll: None,
        }
    }
}

/// Why the controller should reconcile now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The source host of the failed migration.
    pub host: String,
    /// "attempt:<attempt id>"
    pub reason: String,
    /// When the attempt failed (Unix ms; 0: unknown).
    pub at_ms: i64,
    /// The diagnosis span the reconcile continues (W3C traceparent).
    pub traceparent: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liveness {
    pub connected: bool,
    pub last_seen: Option<Instant>,
    pub stale: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no agent of {0} is connected")]
    NotConnected(String),
    #[error("the agent of {0} did not read its stream ({DOWN_QUEUE} messages were waiting): it was disconnected")]
    NotReading(String),
}

/// The stream a host's commands go to (its newest).
struct Conn {
    id: u64,
    tx: Downlink,
}

/// Every open stream, by id: a host may have more than one (a reconnect before the old
/// connection died, or a second client with the same certificate), and a revocation must
/// end them all, not only the one commands go to.
struct Live {
    host: String,
    /// Set to cut this stream off (both directions).
    cut: watch::Sender<Option<Cut>>,
    /// The connection it came on, closed when the agent is cut off.
    remote: Option<std::net::SocketAddr>,
}

struct Inner {
    opts: HubOptions,
    renewer: Renewer,
    enroller: Enroller,
    /// Attempts as they are stored, for the fleet event stream.
    attempts: tokio::sync::broadcast::Sender<(String, MigrationAttempt)>,
    ingest: mpsc::Sender<Ingest>,
    store: Store,
    /// The agent endpoint's connections, to close one that does not read.
    cutoffs: Arc<super::tls::Cutoffs>,
    connected: Mutex<HashMap<String, Conn>>,
    streams: Mutex<HashMap<u64, Live>>,
    /// host -> (command id, recorded at): the undelivered purge sent again on
    /// its last connection, cleared from the store when the agent answers it.
    redelivered: Mutex<HashMap<String, (String, i64)>>,
    last_seen: Mutex<HashMap<String, Instant>>,
    /// host -> the DC its SYSTEM tickets last came from (its reports' "Kdc Called").
    kdcs: Mutex<HashMap<String, String>>,
    next_id: AtomicU64,
}

/// Cheap to clone; every clone is the same hub.
#[derive(Clone)]
pub struct AgentHub {
    inner: Arc<Inner>,
}

impl AgentHub {
    /// Starts the writer task. Triggers from failed attempts go to `triggers`.
    pub fn new(store: Store, opts: HubOptions, triggers: Option<mpsc::Sender<Trigger>>) -> AgentHub {
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        let (attempts, _) = tokio::sync::broadcast::channel(1024);
        tokio::spawn(writer(store.clone(), rx, triggers, attempts.clone()));
        let inner = Arc::new(Inner {
            renewer: Renewer::new(opts.renewal.clone()),
            enroller: Enroller::new(opts.enroll.clone()),
            opts,
            attempts,
            ingest: tx,
            store,
            cutoffs: Arc::default(),
            connected: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            redelivered: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            kdcs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(watch_revocations(Arc::downgrade(&inner)));
        AgentHub { inner }
    }

    /// The tonic service, with the message size limit applied.
    pub fn service(&self) -> AgentServiceServer<AgentHub> {
        AgentServiceServer::new(self.clone())
            .max_decoding_message_size(self.inner.opts.max_message_bytes)
            .max_encoding_message_size(self.inner.opts.max_message_bytes)
    }

    /// Renews certificates as `policy` says from the next request on (SIGHUP).
    pub fn set_renewal(&self, policy: RenewalPolicy) {
        self.inner.renewer.set_policy(policy);
    }

    /// Enrolls with `acceptor` from the next request on, or not at all (SIGHUP).
    pub fn set_enrollment(&self, acceptor: Option<kcdsync_gss::Acceptor>) {
        self.inner.enroller.set_acceptor(acceptor);
    }

    /// Who may enroll, from the latest read of AD.
    pub fn set_enrollable(&self, enrollable: Enrollable) {
        self.inner.enroller.set_directory(enrollable);
    }

    /// Answers an enrollment (`super::enroll`): the host and its new certificate, or why not.
    pub async fn enroll(&self, remote: &str, proof: EnrollProof<'_>) -> Result<(String, Issued), EnrollRefusal> {
        let inner = &self.inner;
        inner.enroller.enroll(&inner.renewer, &inner.store, remote, proof).await
    }

    /// Attempts (host, attempt) as they are committed.
    pub fn subscribe_attempts(&self) -> tokio::sync::broadcast::Receiver<(String, MigrationAttempt)> {
        self.inner.attempts.subscribe()
    }

    pub fn connected_hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.connected.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }

    /// The DC `host`'s SYSTEM tickets last came from, as its agent reported it.
    pub fn kdc_of(&self, host: &str) -> Option<String> {
        self.inner.kdcs.lock().unwrap().get(&host.to_lowercase()).cloned()
    }

    /// Keeps the KDC of the report's newest ticket-granting ticket (any ticket when it has
    /// none): that is the DC the host's next service tickets come from. A report naming no
    /// KDC keeps what an earlier one said.
    fn note_kdc(&self, host: &str, r: &HostReport) {
        let start = |t: &&KerberosTicket| t.start_time.as_ref().map(|s| (s.seconds, s.nanos));
        let named = r.system_tickets.iter().filter(|t| !t.kdc_called.is_empty());
        let tgt = named
            .clone()
            .filter(|t| t.server.starts_with("krbtgt/"))
            .max_by_key(start);
        if let Some(t) = tgt.or_else(|| named.max_by_key(start)) {
            let kdc = t.kdc_called.to_lowercase();
            let mut kdcs = self.inner.kdcs.lock().unwrap();
            if kdcs.get(host) != Some(&kdc) {
                tracing::info!(%host, kdc = %kdc, "the host's tickets come from {kdc}");
                kdcs.insert(host.to_owned(), kdc);
            }
        }
    }

    /// Streams of `host` open now: usually one, more while an old connection of it lingers.
    pub fn open_streams(&self, host: &str) -> usize {
        let host = host.to_lowercase();
        let streams = self.inner.streams.lock().unwrap();
        streams.values().filter(|l| l.host == host).count()
    }

    pub fn liveness(&self, host: &str) -> Liveness {
        let host = host.to_lowercase();
        let connected = self.inner.connected.lock().unwrap().contains_key(&host);
        let last_seen = self.inner.last_seen.lock().unwrap().get(&host).copied();
        let stale = last_seen.is_none_or(|t| t.elapsed() > self.inner.opts.stale_after);
        Liveness {
            connected,
            last_seen,
            stale,
        }
    }

    /// Queues a command for the host's agent; returns the command id. Never
    /// waits: an agent whose queue is full is not reading, and is cut off.
    pub fn command(&self, host: &str, kind: command::Kind, reason: &str) -> Result<String, CommandError> {
        let host = host.to_lowercase();
        let conn = {
            let map = self.inner.connected.lock().unwrap();
            map.get(&host).map(|c| (c.id, c.tx.clone()))
        };
        let (conn, tx) = conn.ok_or_else(|| CommandError::NotConnected(host.clone()))?;
        let id = format!("cmd-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let msg = ControllerMessage {
            body: Some(Down::Command(Command {
                command_id: id.clone(),
                reason: reason.into(),
                kind: Some(kind),
                traceparent: kcdsync_telemetry::traceparent(&tracing::Span::current()).unwrap_or_default(),
            })),
        };
        match tx.try_send(Ok(msg)) {
            Ok(()) => Ok(id),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(CommandError::NotConnected(host)),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.cut_off(&host, conn);
                Err(CommandError::NotReading(host))
            }
        }
    }

    /// Asks the host's agent to purge its SYSTEM tickets. A purge it cannot
    /// take now (not connected, or cut off for not reading) is recorded and
    /// sent again when the agent connects.
    pub async fn purge(&self, host: &str, reason: &str) -> Result<String, CommandError> {
        let kind = command::Kind::PurgeSystemTickets(PurgeSystemTickets {});
        let sent = self.command(host, kind, reason);
        if sent.is_err()
            && let Err(e) = self
                .inner
                .store
                .record_undelivered_purge(&host.to_lowercase(), reason)
                .await
        {
            tracing::warn!(%host, error = %e, "could not record an undelivered purge; its tickets renew on expiry");
        }
        sent
    }

    /// Ends connection `id` of `host` (if it is still the current one): its
    /// stream closes with RESOURCE_EXHAUSTED and its reader stops.
    fn cut_off(&self, host: &str, id: u64) {
        if self.forget(host, id) {
            tracing::warn!(%host, queued = DOWN_QUEUE, "agent does not read its stream: disconnected");
            // The stream alone cannot end while the agent reads nothing (its
            // end would queue behind what is already waiting): close the connection.
            self.end_stream(id, Cut::NotReading, Duration::ZERO);
        }
    }

    /// Takes stream `id` out of the command registry if it is `host`'s current one.
    fn forget(&self, host: &str, id: u64) -> bool {
        let mut map = self.inner.connected.lock().unwrap();
        if map.get(host).is_some_and(|c| c.id == id) {
            map.remove(host);
            true
        } else {
            false
        }
    }

    /// Ends stream `id` with `why`'s status and closes its connection after `grace`.
    fn end_stream(&self, id: u64, why: Cut, grace: Duration) {
        let remote = {
            let streams = self.inner.streams.lock().unwrap();
            let Some(live) = streams.get(&id) else { return };
            live.cut.send_replace(Some(why));
            live.remote
        };
        let Some(peer) = remote else { return };
        if grace.is_zero() {
            self.inner.cutoffs.cut(peer);
        } else {
            let cutoffs = self.inner.cutoffs.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                cutoffs.cut(peer);
            });
        }
    }

    /// Cuts every live stream of a host on `revoked` (the deny-list as just read): each ends
    /// with PERMISSION_DENIED saying so, and its connection is closed a moment later. Returns
    /// how many were cut.
    fn cut_revoked(&self, revoked: &[Revocation]) -> usize {
        if revoked.is_empty() {
            return 0;
        }
        let by_host: HashMap<&str, &Revocation> = revoked.iter().map(|r| (r.host.as_str(), r)).collect();
        let doomed: Vec<(u64, String, String, String)> = {
            let streams = self.inner.streams.lock().unwrap();
            streams
                .iter()
                // Already cut (a previous poll, or not reading): once is enough.
                .filter(|(_, l)| l.cut.borrow().is_none())
                .filter_map(|(id, l)| {
                    let r = by_host.get(l.host.as_str())?;
                    let remote = l.remote.map(|a| a.to_string()).unwrap_or_default();
                    Some((*id, l.host.clone(), remote, revocation::refusal(r)))
                })
                .collect()
        };
        for (id, host, remote, why) in &doomed {
            self.forget(host, *id);
            tracing::warn!(%host, %remote, "agent stream cut: its host was revoked");
            crate::metrics::get()
                .agents_revoked_refused
                .add(1, &[opentelemetry::KeyValue::new("stage", "live")]);
            self.end_stream(*id, Cut::Revoked(why.clone()), REVOKED_GRACE);
        }
        doomed.len()
    }

    /// Sends the purge recorded for `host` while its agent was away.
    async fn redeliver(&self, host: &str) {
        let pending = match self.inner.store.undelivered_purge(host).await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%host, error = %e, "cannot read undelivered purges");
                return;
            }
        };
        let kind = command::Kind::PurgeSystemTickets(PurgeSystemTickets {});
        let reason = format!("{} (not delivered earlier)", pending.reason);
        match self.command(host, kind, &reason) {
            Ok(id) => {
                tracing::info!(%host, command = id, "sent the purge the agent missed");
                let mut map = self.inner.redelivered.lock().unwrap();
                map.insert(host.to_owned(), (id, pending.recorded_at_ms));
            }
            Err(e) => tracing::info!(%host, "{e}; the purge stays recorded"),
        }
    }

    /// The agent answered command `id`: a re-sent purge leaves the store.
    async fn answered(&self, host: &str, id: &str) {
        let recorded = {
            let mut map = self.inner.redelivered.lock().unwrap();
            match map.get(host) {
                Some((sent, at)) if sent == id => {
                    let at = *at;
                    map.remove(host);
                    Some(at)
                }
                _ => None,
            }
        };
        if let Some(at) = recorded
            && let Err(e) = self.inner.store.clear_undelivered_purge(host, at).await
        {
            tracing::warn!(%host, error = %e, "could not clear a delivered purge; it is sent again next time");
        }
    }

    fn seen(&self, host: &str) {
        self.inner
            .last_seen
            .lock()
            .unwrap()
            .insert(host.to_owned(), Instant::now());
    }
}

/// The host names a client certificate speaks for (its DNS SANs).
fn certificate_hosts<T>(req: &Request<T>) -> Result<Vec<String>, Status> {
    let certs = req
        .peer_certs()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    crate::certs::peer_host_names(certs[0].as_ref())
        .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))
}

#[tonic::async_trait]
impl AgentService for AgentHub {
    type SessionStream = Downstream;

    async fn session(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let names = certificate_hosts(&req)?;
        let peer = req.remote_addr();
        let remote = peer.map(|a| a.to_string()).unwrap_or_default();
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(self.inner.opts.hello_timeout, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no Hello within the time limit")),
            Ok(Err(s)) => return Err(s),
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before Hello")),
            Ok(Ok(Some(AgentMessage {
                body: Some(Body::Hello(h)),
                ..
            }))) => h,
            Ok(Ok(Some(_))) => return Err(Status::failed_precondition("the first message must be Hello")),
        };
        let claimed = hello
            .identity
            .as_ref()
            .map(|i| i.fqdn.to_lowercase())
            .unwrap_or_default();
        if claimed.is_empty() || !names.contains(&claimed) {
            tracing::warn!(%remote, certificate = ?names, claimed, "agent refused: its certificate is not for the host it claims");
            return Err(Status::permission_denied(format!(
                "this certificate is for {names:?}, not for `{claimed}`: issue the agent a certificate for its own FQDN"
            )));
        }
        let host = claimed;
        // Certificate renewal over the stream asks this same deny-list before it issues
        // anything (`crate::renewal`): a revoked host gets no fresh certificate.
        match self.inner.store.agent_revocation(&host).await {
            Ok(None) => {}
            Ok(Some(r)) => {
                tracing::warn!(%host, %remote, revoked_by = r.revoked_by, "agent refused: its host is revoked");
                crate::metrics::get()
                    .agents_revoked_refused
                    .add(1, &[opentelemetry::KeyValue::new("stage", "hello")]);
                return Err(Status::permission_denied(revocation::refusal(&r)));
            }
            Err(e) => {
                // Fail closed: a host this controller cannot check is not let in.
                tracing::error!(%host, %remote, error = %e, "agent refused: cannot read the revocation list");
                return Err(Status::unavailable(
                    "the controller cannot read its agent revocation list right now; the agent retries",
                ));
            }
        }
        let (tx, rx) = mpsc::channel(DOWN_QUEUE);
        let welcome = ControllerMessage {
            body: Some(Down::Welcome(Welcome {
                host: host.clone(),
                heartbeat_interval: prost_types::Duration::try_from(self.inner.opts.heartbeat).ok(),
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (cut, cut_rx) = watch::channel(None);
        let down = Downstream::new(rx, cut_rx.clone());
        self.inner.streams.lock().unwrap().insert(
            id,
            Live {
                host: host.clone(),
                cut,
                remote: peer,
            },
        );
        self.inner
            .connected
            .lock()
            .unwrap()
            .insert(host.clone(), Conn { id, tx: tx.clone() });
        self.seen(&host);
        let _ = self.inner.ingest.send(Ingest::Seen(host.clone())).await;
        tracing::info!(%host, %remote, version = hello.agent_version, outbox = hello.outbox_depth, "agent connected");
        self.redeliver(&host).await;

        let hub = self.clone();
        tokio::spawn(async move {
            let end = hub.pump(&host, &remote, &mut inbound, &tx, cut_rx).await;
            hub.forget(&host, id);
            hub.inner.streams.lock().unwrap().remove(&id);
            match end {
                Ok(()) => tracing::info!(%host, "agent disconnected"),
                Err(s) => {
                    tracing::warn!(%host, code = ?s.code(), message = s.message(), "agent stream ended with an error");
                    // Never waits: an agent that does not read gets no final word.
                    let _ = tx.try_send(Err(s));
                }
            }
        });
        Ok(Response::new(down))
    }
}

impl AgentHub {
    /// Reads one agent's messages until the stream ends.
    async fn pump(
        &self,
        host: &str,
        remote: &str,
        inbound: &mut Streaming<AgentMessage>,
        tx: &Downlink,
        mut cut: watch::Receiver<Option<Cut>>,
    ) -> Result<(), Status> {
        loop {
            let msg = tokio::select! {
                m = inbound.message() => m?,
                Ok(c) = cut.wait_for(|c| c.is_some()) => {
                    return Err(c.as_ref().map_or_else(not_reading, Cut::status));
                }
            };
            let Some(msg) = msg else { break };
            super::validate::validate(&msg, crate::store::now_ms())?;
            self.seen(host);
            let item = match msg.body {
                Some(Body::Report(r)) => {
                    let reported = r.identity.as_ref().map(|i| i.fqdn.to_lowercase());
                    if reported.as_deref().is_some_and(|f| f != host) {
                        return Err(Status::permission_denied(format!(
                            "this stream is bound to {host}; it cannot report for another host"
                        )));
                    }
                    self.note_kdc(host, &r);
                    Ingest::Report(host.to_owned(), r)
                }
                Some(Body::Attempts(a)) => Ingest::Attempts {
                    host: host.to_owned(),
                    seq: msg.seq,
                    attempts: a.attempts,
                    reply: tx.clone(),
                },
                Some(Body::Heartbeat(_)) => Ingest::Seen(host.to_owned()),
                Some(Body::CommandResult(r)) => {
                    tracing::info!(%host, command = r.command_id, ok = r.ok, message = r.message, "command result");
                    self.answered(host, &r.command_id).await;
                    continue;
                }
                Some(Body::RenewCertificate(r)) => {
                    let reply = self.renewal(host, remote, msg.seq, &r.csr).await;
                    // Never waits: an agent that does not read gets no certificate, and asks again.
                    let _ = tx.try_send(Ok(reply));
                    continue;
                }
                Some(Body::Hello(_)) => return Err(Status::failed_precondition("Hello was already received")),
                None => continue,
            };
            if self.inner.ingest.send(item).await.is_err() {
                return Err(Status::unavailable("the controller is shutting down"));
            }
        }
        Ok(())
    }
}

impl AgentHub {
    /// The answer to `host`'s RenewCertificate (message `seq`): the new certificate, or why not.
    async fn renewal(&self, host: &str, remote: &str, seq: u64, csr: &[u8]) -> ControllerMessage {
        use certificate_renewal::Result as Answer;
        let ingest = &self.inner.ingest;
        // The audit event goes through the ingest writer: one commit for it and whatever else
        // is queued, not a commit of its own between the batches.
        let audit = |row| async move {
            let (done, committed) = oneshot::channel();
            ingest
                .send(Ingest::Audit { row, done })
                .await
                .map_err(|_| "the controller is shutting down".to_owned())?;
            committed
                .await
                .map_err(|_| "the controller is shutting down".to_owned())?
        };
        let renewed = self
            .inner
            .renewer
            .renew_audited(&self.inner.store, host, remote, csr, audit)
            .await;
        let result = match renewed {
            Ok(issued) => Answer::CertificateChainPem(issued.chain_pem),
            Err(refusal) => Answer::Refused(RenewalRefused {
                code: refusal.code() as i32,
                message: refusal.to_string(),
            }),
        };
        ControllerMessage {
            body: Some(Down::CertificateRenewal(CertificateRenewal {
                seq,
                result: Some(result),
            })),
        }
    }
}

/// Serves the agent endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: std::sync::Arc<super::tls::ServerTls>,
    hub: AgentHub,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // An agent's stream never ends on its own, so a graceful shutdown would wait for it (and
    // the connection task outlives an aborted server): at shutdown every agent connection is
    // cut, and the agents reconnect to whichever controller serves next.
    let cutoffs = hub.inner.cutoffs.clone();
    let shutdown = async move {
        shutdown.await;
        let n = cutoffs.cut_all();
        tracing::info!(agents = n, "agent endpoint stopping: agent connections closed");
    };
    super::limits::server(&super::limits::AGENTS)
        .trace_fn(kcdsync_telemetry::grpc_server_span)
        .add_service(hub.service())
        .add_service(super::enroll::service(&hub))
        .serve_with_incoming_shutdown(
            super::tls::incoming(
                listener,
                tls,
                super::limits::AGENTS.conn,
                Some(hub.inner.cutoffs.clone()),
            ),
            shutdown,
        )
        .await
}
