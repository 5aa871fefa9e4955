//! The agent's side of the one long-lived mTLS stream: Hello, periodic
//! reports, attempts from the outbox until acknowledged, heartbeats, and the
//! controller's commands. A broken stream is reconnected with exponential
//! backoff and jitter ([`backoff`]); attempts keep flowing into the durable
//! outbox while the controller is away, go out in messages sized in bytes
//! ([`batch`]), and are resent when unacknowledged ([`resend`]). At half its
//! lifetime the certificate is renewed over the stream ([`renew`]) and the
//! stream reconnected with the new one.

mod backoff;
mod batch;
pub mod purges;
mod renew;
mod resend;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::agent_service_client::AgentServiceClient;
use kcdsync_proto::v1::controller_message::Body as Down;
use kcdsync_proto::v1::{command, *};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::Instrument;

use self::backoff::{Backoff, Progress, made_progress};
use self::purges::{Admit, PurgeLimit};
use self::renew::{Outcome, Renewal};
use self::resend::InFlight;
use crate::config::AgentConfig;
use crate::identity::IdentityFiles;
use crate::outbox::{Outbox, OutboxError};
use crate::probe::HostProbe;

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
    /// The backoff starts over after a session that got an ack or stayed up
    /// this long.
    pub healthy_after: Duration,
    /// An attempt sent and not acknowledged within this is sent again.
    pub resend_after: Duration,
    /// The controller's `agents.max_message_bytes`: no message is larger.
    pub max_message_bytes: usize,
    /// Above this, the agent stops reading the event log (see
    /// [`Outbox::is_full`]).
    pub outbox_max_bytes: u64,
    /// The DNS name this agent's certificate was issued for: the name it says
    /// Hello with when the probe cannot read the host's FQDN (PowerShell
    /// broken or absent), since the controller accepts no other anyway.
    pub certified_name: Option<String>,
    /// At most one ticket purge per this long ([`purges`]).
    pub purge_min_interval: Duration,
    /// The certificate and key files: read again before every connection, and renewed over
    /// the stream at half-life. `None`: the identity in `tls` is used as it is, never renewed.
    pub identity: Option<IdentityFiles>,
    /// The first wait after a renewal was refused or failed (doubling, up to an hour).
    pub renew_retry: Duration,
    /// How to enroll again when the certificate has expired (`[enroll]`); `None`: the
    /// certificate is re-issued by hand.
    pub enroll: Option<Arc<Reenroll>>,
}

/// What enrolling again takes: the config it came from and the host's name.
pub struct Reenroll {
    cfg: AgentConfig,
    enroll: crate::config::EnrollConfig,
    host: String,
}

impl Settings {
    pub fn from_config(cfg: &AgentConfig) -> Result<Settings, ClientError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| ClientError::File {
                path: p.display().to_string(),
                source,
            })
        };
        let files = IdentityFiles {
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
        };
        // Through `identity::load`: a renewal a crash interrupted is finished first.
        let id = crate::identity::load(&files).map_err(|e| ClientError::File {
            path: format!("{} / {}", cfg.cert_file.display(), cfg.key_file.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
        let certified_name = crate::cert::dns_name(&id.cert_pem);
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&cfg.ca_file)?))
            .identity(Identity::from_pem(id.cert_pem, id.key_pem));
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
            healthy_after: Duration::from_secs(30),
            resend_after: cfg.resend_after,
            purge_min_interval: cfg.purge_min_interval,
            max_message_bytes: cfg.max_message_bytes,
            outbox_max_bytes: cfg.outbox_max_bytes,
            certified_name,
            identity: Some(files),
            renew_retry: Duration::from_secs(60),
            enroll: None,
        })
    }

    /// These settings, enrolling `host` again by Kerberos as `e` says when its certificate has
    /// expired (a controller away longer than half a lifetime, a host off for days).
    pub fn enrolling(mut self, cfg: &AgentConfig, e: &crate::config::EnrollConfig, host: &str) -> Settings {
        self.enroll = Some(Arc::new(Reenroll {
            cfg: cfg.clone(),
            enroll: e.clone(),
            host: host.to_owned(),
        }));
        self
    }
}

/// Runs until `shutdown` turns true. Errors of one session are logged and
/// retried; only an outbox that cannot be opened is fatal.
pub async fn run<P: HostProbe>(
    mut settings: Settings,
    probe: Arc<P>,
    outbox_dir: &std::path::Path,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ClientError> {
    let mut outbox = Outbox::open(outbox_dir, settings.outbox_max_bytes)?;
    // Catch the cursor up first: after a crash between storing attempts and
    // moving the cursor, the attempts read again still find their copies
    // waiting and are not stored twice. Once acked and gone, they would be
    // stored and sent again (the controller would store them once, but why
    // send them twice).
    if let Err(e) = collect(probe.as_ref(), &mut outbox).await {
        tracing::warn!(error = %e, "could not read migration attempts");
    }
    let mut backoff = Backoff::new(settings.max_backoff);
    let mut message_limit = settings.max_message_bytes;
    // A reconnect resets neither the purge budget nor the renewal's schedule.
    let mut across = Across {
        purges: PurgeLimit::new(settings.purge_min_interval),
        renewal: Renewal::new(&settings),
    };
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        if let Some(again) = settings.enroll.clone()
            && let Some(files) = &settings.identity
            && crate::enroll::needed(files).is_some()
            && !crate::enroll::until_enrolled(&again.cfg, &again.enroll, &again.host, &mut shutdown).await
        {
            return Ok(());
        }
        across.renewal.reload(&mut settings);
        let mut tracker = Tracker::default();
        let ended = session(
            &settings,
            probe.as_ref(),
            &mut outbox,
            &mut shutdown,
            message_limit,
            &mut tracker,
            &mut across,
        )
        .await;
        across.renewal.stream_ended();
        match &ended {
            Ok(End::Shutdown) => return Ok(()),
            Ok(End::Renewed) => {
                // At once, so the new certificate is the one in use; nothing to back off from.
                backoff.reset();
                continue;
            }
            Err(ClientError::Refused(s)) => {
                tracing::error!(code = ?s.code(), message = s.message(), "the controller refused this agent")
            }
            Err(e) => tracing::warn!(error = %e, "session with the controller ended"),
        }
        if let Err(ClientError::Stream(s) | ClientError::Refused(s)) = &ended
            && batch::refused_as_too_large(s)
        {
            message_limit = batch::shrink(message_limit);
            tracing::warn!(
                message_limit,
                "the controller refused a message as too large: attempts now go in messages of at most \
                 {message_limit} bytes; check that max_message_bytes matches the controller's \
                 agents.max_message_bytes"
            );
        }
        if made_progress(tracker.progress(), settings.healthy_after) {
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

/// What a session achieved, for the backoff.
#[derive(Default)]
struct Tracker {
    welcomed: Option<Instant>,
    acked: usize,
}

impl Tracker {
    fn progress(&self) -> Progress {
        Progress {
            acked: self.acked,
            connected_for: self.welcomed.map_or(Duration::ZERO, |t| t.elapsed()),
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

/// 1 while the outbox is at its size cap and the event log is not read.
fn outbox_full_gauge() -> &'static opentelemetry::metrics::Gauge<u64> {
    static G: std::sync::OnceLock<opentelemetry::metrics::Gauge<u64>> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        kcdsync_telemetry::meter()
            .u64_gauge("kcdsync.agent.outbox.full")
            .with_description("1 while the outbox is at outbox_max_bytes and new attempts wait in the event log")
            .build()
    })
}

/// What to say while the outbox is at its cap.
fn full_sentence(outbox: &Outbox) -> String {
    format!(
        "outbox full ({} bytes, outbox_max_bytes = {}): new migration attempts wait in the VMMS event log until \
         the controller acknowledges older ones (they are lost only if the event log overwrites them first); \
         check the connection to the controller",
        outbox.bytes(),
        outbox.max_bytes()
    )
}

/// Reads new attempts from the host into the outbox; none while it is full.
async fn collect<P: HostProbe>(probe: &P, outbox: &mut Outbox) -> Result<usize, String> {
    match outbox.full_changed() {
        Some(true) => tracing::warn!("{}", full_sentence(outbox)),
        Some(false) => tracing::info!(
            bytes = outbox.bytes(),
            "outbox below its cap again: reading the event log"
        ),
        None => {}
    }
    outbox_full_gauge().record(u64::from(outbox.is_full()), &[]);
    if outbox.is_full() {
        return Ok(0);
    }
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

/// The host's report with the outbox's problems added to `probe_errors`,
/// where the controller shows what went wrong on a host.
/// A report without an FQDN (the probe could not read it: PowerShell broken or absent) claims
/// the name the agent's certificate was issued for, the only one the controller accepts from
/// this agent anyway. Whether it did.
fn fill_fqdn(report: &mut HostReport, settings: &Settings) -> bool {
    let Some(name) = &settings.certified_name else {
        return false;
    };
    let identity = report.identity.get_or_insert_with(Default::default);
    if !identity.fqdn.is_empty() {
        return false;
    }
    identity.fqdn = name.clone();
    true
}

/// A report as sent: the outbox's problems added, its FQDN filled in (see [`fill_fqdn`]).
fn outgoing(mut report: HostReport, outbox: &Outbox, settings: &Settings) -> HostReport {
    fill_fqdn(&mut report, settings);
    with_outbox_problems(report, outbox)
}

fn with_outbox_problems(mut report: HostReport, outbox: &Outbox) -> HostReport {
    report.probe_errors.extend(outbox.problems());
    if outbox.is_full() {
        report.probe_errors.push(full_sentence(outbox));
    }
    report
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

/// The stream as the Welcome left it.
struct Stream {
    out: Sender,
    inbound: tonic::Streaming<ControllerMessage>,
    heartbeat: Duration,
}

/// Connects, says Hello, waits for the Welcome.
async fn open_stream<P: HostProbe>(
    settings: &Settings,
    probe: &P,
    outbox: &Outbox,
) -> Result<(Stream, HostReport), ClientError> {
    let channel = connect(settings).await?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let mut out = Sender { tx, seq: 0 };

    let report = probe.report().await;
    let mut report = report;
    if fill_fqdn(&mut report, settings) {
        tracing::warn!(
            certified = ?settings.certified_name,
            "the probe could not read this host's FQDN (see the report's probe errors); reporting as the name this agent's certificate was issued for"
        );
    }
    let identity = report.identity.clone().unwrap_or_default();
    out.send(Body::Hello(Hello {
        identity: Some(identity),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        outbox_depth: outbox.len() as u32,
    }))
    .await?;
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
        .map_err(ClientError::Refused)?
        .into_inner();
    let welcome = match inbound.message().await {
        Ok(Some(ControllerMessage {
            body: Some(Down::Welcome(w)),
        })) => w,
        Ok(Some(_)) => return Err(ClientError::Protocol("the first message was not a Welcome".into())),
        Ok(None) => return Err(ClientError::Closed),
        Err(s) => return Err(ClientError::Refused(s)),
    };
    tracing::info!(host = %welcome.host, "connected to the controller");
    let heartbeat = welcome
        .heartbeat_interval
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(settings.heartbeat_interval);
    Ok((
        Stream {
            out,
            inbound,
            heartbeat,
        },
        report,
    ))
}

/// Why a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Shutdown,
    /// A renewed certificate is in place: connect again with it.
    Renewed,
}

/// Sleeps until `at`; forever without one.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What outlives one stream.
struct Across {
    purges: PurgeLimit,
    renewal: Renewal,
}

/// One stream, until shutdown, a renewed certificate, or an error; `tracker`
/// records the progress it made, for the backoff.
async fn session<P: HostProbe>(
    settings: &Settings,
    probe: &P,
    outbox: &mut Outbox,
    shutdown: &mut watch::Receiver<bool>,
    message_limit: usize,
    tracker: &mut Tracker,
    across: &mut Across,
) -> Result<End, ClientError> {
    let Across { purges, renewal } = across;
    let (stream, report) = open_stream(settings, probe, outbox).await?;
    tracker.welcomed = Some(Instant::now());
    let Stream {
        mut out,
        mut inbound,
        heartbeat,
    } = stream;
    out.send(Body::Report(outgoing(report, outbox, settings))).await?;
    let mut in_flight = InFlight::default();
    let mut report_tick = tokio::time::interval(settings.report_interval);
    let mut attempts_tick = tokio::time::interval(settings.attempts_interval);
    let mut heartbeat_tick = tokio::time::interval(heartbeat);
    for t in [&mut report_tick, &mut attempts_tick, &mut heartbeat_tick] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t.reset();
    }
    // Whatever waited in the outbox goes first.
    send_pending(&mut out, outbox, &mut in_flight, message_limit).await?;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(End::Shutdown),
            _ = until(purges.due().map(tokio::time::Instant::from_std)) => {
                // One run answers every purge that waited for it.
                let waiting = purges.take(Instant::now());
                if let Some(first) = waiting.first() {
                    let result = execute(probe, first).await;
                    for c in &waiting {
                        let answer = CommandResult { command_id: c.command_id.clone(), ..result.clone() };
                        out.send(Body::CommandResult(answer)).await?;
                    }
                }
            }
            _ = until(renewal.due()) => {
                if let Some((body, request)) = renewal.start() {
                    out.send(body).await?;
                    renewal.sent(out.seq, request);
                }
            }
            _ = until(renewal.answer_deadline()) => renewal.timed_out(),
            _ = report_tick.tick() => {
                let report = probe.report().instrument(tracing::info_span!("probe")).await;
                out.send(Body::Report(outgoing(report, outbox, settings))).await?
            }
            _ = attempts_tick.tick() => {
                if let Err(e) = collect(probe, outbox).await {
                    tracing::warn!(error = %e, "could not read migration attempts");
                }
                let due = in_flight.expire(Instant::now(), settings.resend_after);
                if due > 0 {
                    tracing::info!(attempts = due, "resending attempts the controller has not acknowledged");
                }
                send_pending(&mut out, outbox, &mut in_flight, message_limit).await?;
            }
            _ = heartbeat_tick.tick() => {
                outbox_gauge().record(outbox.len() as u64, &[]);
                out.send(Body::Heartbeat(Heartbeat { outbox_depth: outbox.len() as u32 })).await?
            }
            msg = inbound.message() => match msg {
                Ok(Some(ControllerMessage { body: Some(Down::Ack(ack)) })) => {
                    for id in &ack.attempt_ids {
                        in_flight.acked(id);
                    }
                    tracker.acked += outbox.ack(ack.attempt_ids.iter().map(String::as_str))?;
                }
                Ok(Some(ControllerMessage { body: Some(Down::Command(cmd)) }))
                    if matches!(cmd.kind, Some(command::Kind::PurgeSystemTickets(_))) =>
                {
                    match purges.offer(&cmd, Instant::now()) {
                        Admit::Now => {
                            let result = execute(probe, &cmd).await;
                            purges.ran(Instant::now());
                            out.send(Body::CommandResult(result)).await?;
                        }
                        Admit::Later(due) => tracing::info!(
                            command = %cmd.command_id,
                            wait_ms = due.saturating_duration_since(Instant::now()).as_millis() as u64,
                            "a ticket purge ran less than {} s ago: this one runs when that interval is over",
                            settings.purge_min_interval.as_secs()
                        ),
                        Admit::AlreadyWaiting => {}
                    }
                }
                Ok(Some(ControllerMessage { body: Some(Down::CertificateRenewal(answer)) })) => {
                    if renewal.answer(answer) == Outcome::Installed {
                        return Ok(End::Renewed);
                    }
                }
                Ok(Some(ControllerMessage { body: Some(Down::Command(cmd)) })) => {
                    let result = execute(probe, &cmd).await;
                    if matches!(cmd.kind, Some(command::Kind::Reprobe(_))) {
                        let report = probe.report().await;
                        out.send(Body::Report(outgoing(report, outbox, settings))).await?;
                    }
                    out.send(Body::CommandResult(result)).await?;
                }
                Ok(Some(_)) => tracing::debug!("ignoring an unexpected message from the controller"),
                Ok(None) => return Err(ClientError::Closed),
                Err(s) => return Err(ClientError::Stream(s)),
            },
        }
    }
}

/// Sends the waiting attempts not in flight, in messages of at most `limit`
/// bytes; an attempt no message can hold is set aside, never sent.
async fn send_pending(
    out: &mut Sender,
    outbox: &mut Outbox,
    in_flight: &mut InFlight,
    limit: usize,
) -> Result<(), ClientError> {
    let (messages, too_large) = batch::batches(outbox.pending().filter(|a| !in_flight.contains(&a.attempt_id)), limit);
    for id in too_large {
        outbox.set_aside(&id, &format!("larger than a message may be ({limit} bytes)"));
    }
    let now = Instant::now();
    for attempts in messages {
        for a in &attempts {
            in_flight.sent(a.attempt_id.clone(), now);
        }
        out.send(Body::Attempts(MigrationAttempts { attempts })).await?;
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::probe::{Cursor, ProbeError};

    /// A host whose event log always has one new attempt, counting reads.
    #[derive(Default)]
    struct Busy {
        reads: AtomicUsize,
    }

    impl HostProbe for Busy {
        async fn report(&self) -> HostReport {
            HostReport::default()
        }

        async fn attempts(&self, since: &Cursor) -> Result<(Vec<MigrationAttempt>, Cursor), ProbeError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let next = Cursor::at(since.record_id + 1);
            let a = MigrationAttempt {
                attempt_id: format!("hv01:{}", next.record_id),
                message: "x".repeat(600 << 10),
                ..Default::default()
            };
            Ok((vec![a], next))
        }

        async fn purge_system_tickets(&self) -> Result<String, ProbeError> {
            Ok(String::new())
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_event_log_is_not_read_and_the_reports_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        let host = Busy::default();
        // Two attempts of 600 KiB fill a 1 MiB outbox.
        for _ in 0..4 {
            collect(&host, &mut outbox).await.unwrap();
        }
        assert_eq!(host.reads.load(Ordering::SeqCst), 2, "no read once full");
        assert_eq!(outbox.len(), 2, "what was stored is kept: the newest wait in the log");
        assert_eq!(
            outbox.cursor(),
            &Cursor::at(2),
            "the cursor stays before what was not read"
        );
        let report = with_outbox_problems(HostReport::default(), &outbox);
        assert!(
            report
                .probe_errors
                .iter()
                .any(|e| e.contains("outbox full") && e.contains("outbox_max_bytes")),
            "{:?}",
            report.probe_errors
        );

        // An ack drains it below the cap: reading resumes where it stopped.
        outbox.ack(["hv01:1"]).unwrap();
        collect(&host, &mut outbox).await.unwrap();
        assert_eq!(host.reads.load(Ordering::SeqCst), 3);
        assert_eq!(outbox.cursor(), &Cursor::at(3));
    }
}
