//! The agent's side of the one long-lived mTLS stream: Hello, periodic
//! reports, attempts from the outbox until acknowledged, heartbeats, and the
//! controller's commands. A broken stream is reconnected with exponential
//! backoff and jitter; attempts keep flowing into the durable outbox while
//! the controller is away.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::agent_service_client::AgentServiceClient;
use kcdsync_proto::v1::controller_message::Body as Down;
use kcdsync_proto::v1::{command, *};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::outbox::{Outbox, OutboxError};
use crate::probe::HostProbe;

/// Attempts per AgentMessage.
const BATCH: usize = 100;
/// Messages the agent may send for the stream to deliver from.
const SEND_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("controller URL {url}: {source}")]
    Url {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to the controller at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the controller refused the stream: {0}")]
    Refused(tonic::Status),
    #[error("the stream to the controller broke: {0}")]
    Stream(tonic::Status),
    #[error("the controller closed the stream")]
    Closed,
    #[error("the controller broke the protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// How to reach the controller and how often to talk.
#[derive(Clone)]
pub struct Settings {
    pub url: String,
    pub tls: ClientTlsConfig,
    pub report_interval: Duration,
    pub attempts_interval: Duration,
    /// Used until the controller's Welcome says otherwise.
    pub heartbeat_interval: Duration,
    pub max_backoff: Duration,
}

impl Settings {
    pub fn from_config(cfg: &AgentConfig) -> Result<Settings, ClientError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| ClientError::File {
                path: p.display().to_string(),
                source,
            })
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&cfg.ca_file)?))
            .identity(Identity::from_pem(read(&cfg.cert_file)?, read(&cfg.key_file)?));
        if let Some(name) = &cfg.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(Settings {
            url: cfg.controller_url.clone(),
            tls,
            report_interval: cfg.report_interval,
            attempts_interval: cfg.attempts_interval,
            heartbeat_interval: Duration::from_secs(15),
            max_backoff: Duration::from_secs(60),
        })
    }
}

/// Exponential backoff with full jitter, reset after a healthy session.
struct Backoff {
    next: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64 ^ std::process::id() as u64)
            .unwrap_or(1);
        Backoff {
            next: Duration::from_millis(500),
            max,
            seed: seed | 1,
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(500);
    }

    fn wait(&mut self) -> Duration {
        // xorshift: enough to keep thousands of agents from reconnecting in step.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let cap = self.next.as_millis() as u64;
        let d = Duration::from_millis(cap / 2 + self.seed % (cap / 2 + 1));
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// Runs until `shutdown` turns true. Errors of one session are logged and
/// retried; only an outbox that cannot be opened is fatal.
pub async fn run<P: HostProbe>(
    settings: Settings,
    probe: Arc<P>,
    outbox_dir: &std::path::Path,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ClientError> {
    let mut outbox = Outbox::open(outbox_dir)?;
    let mut backoff = Backoff::new(settings.max_backoff);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let healthy = match session(&settings, probe.as_ref(), &mut outbox, &mut shutdown).await {
            Ok(()) => return Ok(()),
            Err((e, healthy)) => {
                match &e {
                    ClientError::Refused(s) => {
                        tracing::error!(code = ?s.code(), message = s.message(), "the controller refused this agent")
                    }
                    e => tracing::warn!(error = %e, "session with the controller ended"),
                }
                healthy
            }
        };
        if healthy {
            backoff.reset();
        }
        let wait = backoff.wait();
        tracing::info!(
            retry_in_ms = wait.as_millis() as u64,
            outbox = outbox.len(),
            "reconnecting"
        );
        // Keep collecting attempts while the controller is away.
        let until = tokio::time::Instant::now() + wait;
        loop {
            let step = settings
                .attempts_interval
                .min(until.saturating_duration_since(tokio::time::Instant::now()));
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = shutdown.changed() => return Ok(()),
            }
            if let Err(e) = collect(probe.as_ref(), &mut outbox).await {
                tracing::warn!(error = %e, "could not read migration attempts");
            }
            if tokio::time::Instant::now() >= until {
                break;
            }
        }
    }
}

/// Attempts waiting for an ack (a no-op without a metrics exporter).
fn outbox_gauge() -> &'static opentelemetry::metrics::Gauge<u64> {
    static G: std::sync::OnceLock<opentelemetry::metrics::Gauge<u64>> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        kcdsync_telemetry::meter()
            .u64_gauge("kcdsync.agent.outbox.depth")
            .with_description("migration attempts waiting for the controller's ack")
            .build()
    })
}

/// Reads new attempts from the host into the outbox.
async fn collect<P: HostProbe>(probe: &P, outbox: &mut Outbox) -> Result<usize, String> {
    let (mut attempts, cursor) = probe.attempts(outbox.cursor()).await.map_err(|e| e.to_string())?;
    // Each attempt starts a trace that the controller's diagnosis continues.
    for a in &mut attempts {
        let span = tracing::info_span!(
            "migration_attempt",
            attempt = %a.attempt_id,
            vm = %a.vm_name,
            peer = %a.peer,
            success = a.success,
            error_code = %format!("0x{:08X}", a.error_code)
        );
        if let Some(tp) = kcdsync_telemetry::traceparent(&span) {
            a.traceparent = tp;
        }
    }
    outbox.push(&attempts, cursor).map_err(|e| e.to_string())?;
    Ok(attempts.len())
}

struct Sender {
    tx: mpsc::Sender<AgentMessage>,
    seq: u64,
}

impl Sender {
    async fn send(&mut self, body: Body) -> Result<(), ClientError> {
        self.seq += 1;
        self.tx
            .send(AgentMessage {
                seq: self.seq,
                body: Some(body),
            })
            .await
            .map_err(|_| ClientError::Closed)
    }
}

async fn connect(settings: &Settings) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(settings.url.clone())
        .and_then(|e| e.tls_config(settings.tls.clone()))
        .map_err(|source| ClientError::Url {
            url: settings.url.clone(),
            source,
        })?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    endpoint.connect().await.map_err(|source| ClientError::Connect {
        url: settings.url.clone(),
        source,
    })
}

/// One stream. Returns Ok on shutdown; on error, whether the session got as
/// far as a Welcome (so the backoff can start over).
async fn session<P: HostProbe>(
    settings: &Settings,
    probe: &P,
    outbox: &mut Outbox,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), (ClientError, bool)> {
    let channel = connect(settings).await.map_err(|e| (e, false))?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let mut out = Sender { tx, seq: 0 };

    let report = probe.report().await;
    let identity = report.identity.clone().unwrap_or_default();
    out.send(Body::Hello(Hello {
        identity: Some(identity.clone()),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        outbox_depth: outbox.len() as u32,
    }))
    .await
    .map_err(|e| (e, false))?;
    // The client span of the stream, per the RPC conventions; it ends with
    // the session. Attempts start traces of their own, not children of it.
    let span = tracing::info_span!(
        "grpc",
        otel.name = "kcdsync.v1.AgentService/Session",
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = "kcdsync.v1.AgentService",
        rpc.method = "Session",
    );
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    kcdsync_telemetry::inject_metadata(&span, request.metadata_mut());
    let mut inbound = client
        .session(request)
        .await
        .map_err(|s| (ClientError::Refused(s), false))?
        .into_inner();
    let welcome = match inbound.message().await {
        Ok(Some(ControllerMessage {
            body: Some(Down::Welcome(w)),
        })) => w,
        Ok(Some(_)) => {
            return Err((
                ClientError::Protocol("the first message was not a Welcome".into()),
                false,
            ));
        }
        Ok(None) => return Err((ClientError::Closed, false)),
        Err(s) => return Err((ClientError::Refused(s), false)),
    };
    tracing::info!(host = %welcome.host, "connected to the controller");
    let heartbeat = welcome
        .heartbeat_interval
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(settings.heartbeat_interval);
    let ok = |r: Result<(), ClientError>| r.map_err(|e| (e, true));

    ok(out.send(Body::Report(report)).await)?;
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut report_tick = tokio::time::interval(settings.report_interval);
    let mut attempts_tick = tokio::time::interval(settings.attempts_interval);
    let mut heartbeat_tick = tokio::time::interval(heartbeat);
    for t in [&mut report_tick, &mut attempts_tick, &mut heartbeat_tick] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t.reset();
    }
    // Whatever waited in the outbox goes first.
    ok(send_pending(&mut out, outbox, &mut in_flight).await)?;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = report_tick.tick() => {
                let report = probe.report().instrument(tracing::info_span!("probe")).await;
                ok(out.send(Body::Report(report)).await)?
            }
            _ = attempts_tick.tick() => {
                if let Err(e) = collect(probe, outbox).await {
                    tracing::warn!(error = %e, "could not read migration attempts");
                }
                ok(send_pending(&mut out, outbox, &mut in_flight).await)?;
            }
            _ = heartbeat_tick.tick() => {
                outbox_gauge().record(outbox.len() as u64, &[]);
                ok(out.send(Body::Heartbeat(Heartbeat { outbox_depth: outbox.len() as u32 })).await)?
            }
            msg = inbound.message() => match msg {
                Ok(Some(ControllerMessage { body: Some(Down::Ack(ack)) })) => {
                    for id in &ack.attempt_ids {
                        in_flight.remove(id);
                    }
                    outbox.ack(ack.attempt_ids.iter().map(String::as_str)).map_err(|e| (e.into(), true))?;
                }
                Ok(Some(ControllerMessage { body: Some(Down::Command(cmd)) })) => {
                    let result = execute(probe, &cmd).await;
                    if matches!(cmd.kind, Some(command::Kind::Reprobe(_))) {
                        ok(out.send(Body::Report(probe.report().await)).await)?;
                    }
                    ok(out.send(Body::CommandResult(result)).await)?;
                }
                Ok(Some(_)) => tracing::debug!("ignoring an unexpected message from the controller"),
                Ok(None) => return Err((ClientError::Closed, true)),
                Err(s) => return Err((ClientError::Stream(s), true)),
            },
        }
    }
}

async fn send_pending(out: &mut Sender, outbox: &Outbox, in_flight: &mut HashSet<String>) -> Result<(), ClientError> {
    let fresh: Vec<MigrationAttempt> = outbox
        .pending()
        .filter(|a| !in_flight.contains(&a.attempt_id))
        .cloned()
        .collect();
    for chunk in fresh.chunks(BATCH) {
        in_flight.extend(chunk.iter().map(|a| a.attempt_id.clone()));
        out.send(Body::Attempts(MigrationAttempts {
            attempts: chunk.to_vec(),
        }))
        .await?;
    }
    Ok(())
}

async fn execute<P: HostProbe>(probe: &P, cmd: &Command) -> CommandResult {
    let span = tracing::info_span!("command", command = %cmd.command_id, reason = %cmd.reason);
    kcdsync_telemetry::set_parent(&span, &cmd.traceparent);
    execute_in(probe, cmd).instrument(span).await
}

async fn execute_in<P: HostProbe>(probe: &P, cmd: &Command) -> CommandResult {
    let (ok, message) = match &cmd.kind {
        Some(command::Kind::PurgeSystemTickets(_)) => {
            tracing::info!(reason = %cmd.reason, "purging the SYSTEM logon session's Kerberos tickets");
            match probe.purge_system_tickets().await {
                Ok(m) => (true, m),
                Err(e) => (false, e.to_string()),
            }
        }
        Some(command::Kind::Reprobe(_)) => (true, "report sent".into()),
        None => (false, "unknown command (newer controller?)".into()),
    };
    CommandResult {
        command_id: cmd.command_id.clone(),
        ok,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(8));
        let waits: Vec<Duration> = (0..8).map(|_| b.wait()).collect();
        assert!(waits[0] >= Duration::from_millis(250) && waits[0] <= Duration::from_millis(500));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(8)));
        assert!(waits[7] >= Duration::from_secs(4), "{waits:?}");
        b.reset();
        assert!(b.wait() <= Duration::from_millis(500));
    }
}
