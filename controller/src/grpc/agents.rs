//! The controller's side of the agent streams (`kcdsync.v1.AgentService`).
//!
//! Owns: binding each stream to the host named in its client certificate,
//! validating what agents send, batching it into the store through one
//! writer task (acks go out only after the write committed), the registry
//! of connected agents through which commands are sent, liveness (last
//! heard from, stale), and turning a reported authentication failure into
//! a reconcile trigger.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use kcdsync_proto::v1::controller_message::Body as Down;
use kcdsync_proto::v1::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::store::{IngestBatch, Store};

/// HRESULTs that mean "Kerberos delegation did not work" in a migration.
pub const AUTH_FAILURES: [u32; 2] = [0x8009030E, 0x8009030D];

/// Messages queued towards one agent.
const DOWN_QUEUE: usize = 32;
/// Items the writer takes per transaction at most.
const MAX_BATCH: usize = 4096;

type Downlink = mpsc::Sender<Result<ControllerMessage, Status>>;

#[derive(Debug, Clone)]
pub struct HubOptions {
    pub heartbeat: Duration,
    /// A host not heard from for this long is stale.
    pub stale_after: Duration,
    pub max_message_bytes: usize,
    /// How long a new stream may take to say Hello.
    pub hello_timeout: Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            heartbeat: Duration::from_secs(15),
            stale_after: crate::config::DEFAULT_STALE_AFTER,
            max_message_bytes: 1 << 20,
            hello_timeout: Duration::from_secs(10),
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
}

enum Ingest {
    Report(String, HostReport),
    Attempts {
        host: String,
        seq: u64,
        attempts: Vec<MigrationAttempt>,
        reply: Downlink,
    },
    Seen(String),
}

struct Conn {
    id: u64,
    tx: Downlink,
}

struct Inner {
    opts: HubOptions,
    /// Attempts as they are stored, for the fleet event stream.
    attempts: tokio::sync::broadcast::Sender<(String, MigrationAttempt)>,
    ingest: mpsc::Sender<Ingest>,
    connected: Mutex<HashMap<String, Conn>>,
    last_seen: Mutex<HashMap<String, Instant>>,
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
        tokio::spawn(writer(store, rx, triggers, attempts.clone()));
        AgentHub {
            inner: Arc::new(Inner {
                opts,
                attempts,
                ingest: tx,
                connected: Mutex::new(HashMap::new()),
                last_seen: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The tonic service, with the message size limit applied.
    pub fn service(&self) -> AgentServiceServer<AgentHub> {
        AgentServiceServer::new(self.clone())
            .max_decoding_message_size(self.inner.opts.max_message_bytes)
            .max_encoding_message_size(self.inner.opts.max_message_bytes)
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

    /// Sends a command to the host's agent; returns the command id.
    pub async fn command(&self, host: &str, kind: command::Kind, reason: &str) -> Result<String, CommandError> {
        let host = host.to_lowercase();
        let tx = {
            let map = self.inner.connected.lock().unwrap();
            map.get(&host).map(|c| c.tx.clone())
        };
        let tx = tx.ok_or_else(|| CommandError::NotConnected(host.clone()))?;
        let id = format!("cmd-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let msg = ControllerMessage {
            body: Some(Down::Command(Command {
                command_id: id.clone(),
                reason: reason.into(),
                kind: Some(kind),
                traceparent: kcdsync_telemetry::traceparent(&tracing::Span::current()).unwrap_or_default(),
            })),
        };
        tx.send(Ok(msg)).await.map_err(|_| CommandError::NotConnected(host))?;
        Ok(id)
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
    type SessionStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn session(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let names = certificate_hosts(&req)?;
        let remote = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
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
        self.inner
            .connected
            .lock()
            .unwrap()
            .insert(host.clone(), Conn { id, tx: tx.clone() });
        self.seen(&host);
        let _ = self.inner.ingest.send(Ingest::Seen(host.clone())).await;
        tracing::info!(%host, %remote, version = hello.agent_version, outbox = hello.outbox_depth, "agent connected");

        let hub = self.clone();
        tokio::spawn(async move {
            let end = hub.pump(&host, &mut inbound, &tx).await;
            {
                let mut map = hub.inner.connected.lock().unwrap();
                if map.get(&host).is_some_and(|c| c.id == id) {
                    map.remove(&host);
                }
            }
            match end {
                Ok(()) => tracing::info!(%host, "agent disconnected"),
                Err(s) => {
                    tracing::warn!(%host, code = ?s.code(), message = s.message(), "agent stream ended with an error");
                    let _ = tx.send(Err(s)).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl AgentHub {
    /// Reads one agent's messages until the stream ends.
    async fn pump(&self, host: &str, inbound: &mut Streaming<AgentMessage>, tx: &Downlink) -> Result<(), Status> {
        while let Some(msg) = inbound.message().await? {
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

/// The one writer: batches whatever is queued into one transaction, then
/// acknowledges the attempts it stored.
async fn writer(
    store: Store,
    mut rx: mpsc::Receiver<Ingest>,
    triggers: Option<mpsc::Sender<Trigger>>,
    events: tokio::sync::broadcast::Sender<(String, MigrationAttempt)>,
) {
    let mut items = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut items, MAX_BATCH).await > 0 {
        let mut batch = IngestBatch::default();
        let mut acks: Vec<(Downlink, u64, Vec<String>)> = Vec::new();
        let mut failed: Vec<Trigger> = Vec::new();
        for item in items.drain(..) {
            match item {
                Ingest::Report(h, r) => batch.reports.push((h, r)),
                Ingest::Seen(h) => batch.seen.push(h),
                Ingest::Attempts {
                    host,
                    seq,
                    attempts,
                    reply,
                } => {
                    acks.push((reply, seq, attempts.iter().map(|a| a.attempt_id.clone()).collect()));
                    for a in attempts {
                        crate::metrics::get().attempts.add(
                            1,
                            &[
                                opentelemetry::KeyValue::new("result", if a.success { "success" } else { "failure" }),
                                opentelemetry::KeyValue::new("error_code", format!("0x{:08X}", a.error_code)),
                            ],
                        );
                        if !a.success && AUTH_FAILURES.contains(&a.error_code) {
                            // The diagnosis continues the agent's trace of the attempt.
                            let span = tracing::info_span!(
                                "diagnose",
                                host = %host,
                                attempt = %a.attempt_id,
                                error_code = %format!("0x{:08X}", a.error_code),
                                verdict = "authentication failure: reconcile the source host"
                            );
                            kcdsync_telemetry::set_parent(&span, &a.traceparent);
                            failed.push(Trigger {
                                host: host.clone(),
                                reason: format!("attempt:{}", a.attempt_id),
                                at_ms: a
                                    .time
                                    .as_ref()
                                    .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
                                traceparent: kcdsync_telemetry::traceparent(&span).unwrap_or_default(),
                            });
                        }
                        batch.attempts.push((host.clone(), a));
                    }
                }
            }
        }
        batch.seen.sort();
        batch.seen.dedup();
        if let Err(e) = store.ingest(&batch).await {
            // No ack: the agents keep the attempts and send them again.
            tracing::error!(error = %e, "could not store agent reports; they will be resent");
            continue;
        }
        if events.receiver_count() > 0 {
            for (host, a) in &batch.attempts {
                let _ = events.send((host.clone(), a.clone()));
            }
        }
        for (reply, seq, ids) in acks {
            // A full or closed downlink loses only the ack: the agent resends
            // and the store ignores the duplicate.
            let _ = reply.try_send(Ok(ControllerMessage {
                body: Some(Down::Ack(Ack { seq, attempt_ids: ids })),
            }));
        }
        if let Some(t) = &triggers {
            for f in failed {
                tracing::info!(host = %f.host, reason = %f.reason, "authentication failure reported: reconcile requested");
                let _ = t.try_send(f);
            }
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
    tonic::transport::Server::builder()
        .trace_fn(kcdsync_telemetry::grpc_server_span)
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(hub.service())
        .serve_with_incoming_shutdown(super::tls::incoming(listener, tls), shutdown)
        .await
}
