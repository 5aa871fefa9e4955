//! Harness for the agent ⇄ controller path: a test PKI, a controller agent
//! endpoint on a real socket (port 0) with real mTLS, and simulated agents
//! running the real client loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use kcdsync_agent::client::{self, Settings};
use kcdsync_agent::probe::simulated::{SimulatedHost, SimulatedProbe};
use kcdsync_controller::certs::{Ca, Validity};
use kcdsync_controller::config::AgentsConfig;
use kcdsync_controller::grpc::agents::{self, AgentHub, HubOptions, Trigger};
use kcdsync_controller::grpc::tls;
use kcdsync_controller::renewal::RenewalPolicy;
use kcdsync_controller::store::Store;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A CA with a controller certificate for 127.0.0.1 / localhost, in a temp dir,
/// and a separate CA for fleet API client certificates (`api-ca.pem`): the
/// controller refuses the agents' CA as the API's.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub api_ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("kcdsync test CA").expect("CA");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let (cert, key) = ca
            .issue_server(&["localhost"], &["127.0.0.1".parse().unwrap()], Validity::days(1))
            .expect("server cert");
        std::fs::write(dir.path().join("controller.pem"), cert).unwrap();
        crate::write_private(&dir.path().join("controller.key"), key);
        let api_ca = Ca::new("kcdsync test API clients CA").expect("API CA");
        std::fs::write(dir.path().join("api-ca.pem"), api_ca.cert_pem()).unwrap();
        Pki { dir, ca, api_ca }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Client TLS for an agent holding a certificate for `host`.
    pub fn agent_tls(&self, host: &str) -> ClientTlsConfig {
        let (cert, key) = self.ca.issue_agent(host, Validity::days(1)).expect("agent cert");
        self.client_tls(Some((cert, key)))
    }

    /// The agents' CA again, able to issue (a renewing endpoint's issuing CA).
    pub fn issuing_ca(&self) -> Arc<Ca> {
        Arc::new(Ca::load(self.ca.cert_pem(), &self.ca.key_pem()).expect("the test CA loads"))
    }

    /// Writes a certificate for `host` valid `validity` and its key (mode 0600) into `dir`, as
    /// `certs agent` would: the files an agent that renews reads.
    pub fn agent_files(&self, host: &str, dir: &Path, validity: Validity) -> kcdsync_agent::identity::IdentityFiles {
        let (cert, key) = self.ca.issue_agent(host, validity).expect("agent cert");
        let files = kcdsync_agent::identity::IdentityFiles {
            cert_file: dir.join(format!("{host}.pem")),
            key_file: dir.join(format!("{host}.key")),
        };
        std::fs::write(&files.cert_file, cert).unwrap();
        crate::write_private(&files.key_file, key);
        files
    }

    /// Client TLS trusting this CA, with an optional client identity.
    pub fn client_tls(&self, identity: Option<(String, String)>) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .domain_name("localhost");
        if let Some((c, k)) = identity {
            tls = tls.identity(Identity::from_pem(c, k));
        }
        tls
    }

    fn agents_config(&self, listen: SocketAddr) -> AgentsConfig {
        AgentsConfig {
            listen,
            cert_file: self.path("controller.pem"),
            key_file: self.path("controller.key"),
            client_ca_file: self.path("ca.pem"),
            heartbeat: Duration::from_secs(1),
            stale_after: Duration::from_secs(3),
            max_message_bytes: 1 << 20,
            issuing_ca: None,
            cert_lifetime: Duration::from_secs(24 * 3600),
            enroll: None,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// The controller's agent endpoint, in process, on a real socket.
pub struct AgentEndpoint {
    pub addr: SocketAddr,
    pub hub: AgentHub,
    pub store: Store,
    pub triggers: mpsc::Receiver<Trigger>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl AgentEndpoint {
    /// Serves on `addr` (port 0 for any) with the store at `store_url`.
    pub async fn spawn(pki: &Pki, store_url: &str, addr: SocketAddr) -> Result<AgentEndpoint> {
        Self::spawn_limited(pki, store_url, addr, 1 << 20).await
    }

    /// [`AgentEndpoint::spawn`] with `agents.max_message_bytes` = `max_message_bytes`.
    pub async fn spawn_limited(
        pki: &Pki,
        store_url: &str,
        addr: SocketAddr,
        max_message_bytes: usize,
    ) -> Result<AgentEndpoint> {
        Self::spawn_with(pki, store_url, addr, max_message_bytes, RenewalPolicy::default()).await
    }

    /// [`AgentEndpoint::spawn`] renewing agents' certificates as `renewal` says.
    pub async fn spawn_renewing(
        pki: &Pki,
        store_url: &str,
        addr: SocketAddr,
        renewal: RenewalPolicy,
    ) -> Result<AgentEndpoint> {
        Self::spawn_with(pki, store_url, addr, 1 << 20, renewal).await
    }

    async fn spawn_with(
        pki: &Pki,
        store_url: &str,
        addr: SocketAddr,
        max_message_bytes: usize,
        renewal: RenewalPolicy,
    ) -> Result<AgentEndpoint> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Store::open(store_url).await?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cfg = AgentsConfig {
            max_message_bytes,
            ..pki.agents_config(addr)
        };
        let (tx, triggers) = mpsc::channel(1024);
        let hub = AgentHub::new(
            store.clone(),
            HubOptions {
                heartbeat: cfg.heartbeat,
                stale_after: cfg.stale_after,
                max_message_bytes: cfg.max_message_bytes,
                renewal,
                ..Default::default()
            },
            Some(tx),
        );
        let tls = tls::for_agents(&cfg)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let h = hub.clone();
        let task = tokio::spawn(async move {
            agents::serve(listener, tls, h, async {
                let _ = stopped.await;
            })
            .await
            .expect("agent endpoint");
        });
        Ok(AgentEndpoint {
            addr,
            hub,
            store,
            triggers,
            stop: Some(stop),
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Stops serving and drops every agent stream, like a controller crash.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // The shutdown cuts every agent connection; give it a moment before aborting.
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        self.store.close().await;
    }
}

/// A simulated Hyper-V host running the real agent client loop.
pub struct SimAgent {
    pub probe: Arc<SimulatedProbe>,
    pub outbox: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

pub fn sim_host(fqdn: &str) -> SimulatedHost {
    let netbios = fqdn.split('.').next().unwrap().to_uppercase();
    toml_host(&format!("fqdn = \"{fqdn}\"\nnetbios = \"{netbios}\"\n"))
}

pub fn toml_host(text: &str) -> SimulatedHost {
    toml::from_str(text).expect("simulated host")
}

pub fn settings(url: &str, tls: ClientTlsConfig) -> Settings {
    Settings {
        url: url.to_owned(),
        tls,
        report_interval: Duration::from_millis(500),
        attempts_interval: Duration::from_millis(100),
        heartbeat_interval: Duration::from_secs(1),
        max_backoff: Duration::from_millis(800),
        healthy_after: Duration::from_secs(2),
        resend_after: Duration::from_secs(5),
        // Shorter than the default 10 s: tests that purge again should not wait long.
        purge_min_interval: Duration::from_secs(2),
        max_message_bytes: 1 << 20,
        outbox_max_bytes: 64 << 20,
        certified_name: None,
        identity: None,
        renew_retry: Duration::from_secs(1),
        enroll: None,
    }
}

impl SimAgent {
    /// Starts an agent for `host` whose state (event log, outbox) is in `dir`.
    pub fn start(host: SimulatedHost, dir: &Path, settings: Settings) -> SimAgent {
        let probe = Arc::new(SimulatedProbe::new(host, &dir.join("host")).expect("simulated probe"));
        Self::start_with(probe, dir, settings)
    }

    pub fn start_with(probe: Arc<SimulatedProbe>, dir: &Path, settings: Settings) -> SimAgent {
        let outbox = dir.join("outbox");
        let (stop, rx) = watch::channel(false);
        let p = probe.clone();
        let o = outbox.clone();
        let task = tokio::spawn(async move {
            client::run(settings, p, &o, rx).await.expect("agent loop");
        });
        SimAgent {
            probe,
            outbox,
            stop,
            task,
        }
    }

    /// Attempts waiting in the outbox (files on disk).
    pub fn outbox_depth(&self) -> usize {
        std::fs::read_dir(&self.outbox)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".attempt"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Stops cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Kills the agent mid-flight, like a crash.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tokens the test controller accepts (see `controller_config`).
pub const READ_TOKEN: &str = "read-token-0123456789abcdef";
pub const WRITE_TOKEN: &str = "write-token-0123456789abcdef";

/// A full controller config (agents + API on port 0) for `fleet`, with one
/// group of `members` in `mode`. Files live in the PKI's temp dir. The AD watch
/// is off: these tests are about runs that failures, API calls and the timer
/// start (tests/tests/watch.rs has it on).
pub fn controller_config(
    lab: &crate::Lab,
    fleet: &crate::Fleet,
    pki: &Pki,
    mode: &str,
    members: &[&str],
) -> kcdsync_controller::config::Config {
    controller_config_with(lab, fleet, pki, mode, members, "")
}

/// `controller_config` with `more` TOML sections (e.g. `[store]`, `[replica]`).
pub fn controller_config_with(
    lab: &crate::Lab,
    fleet: &crate::Fleet,
    pki: &Pki,
    mode: &str,
    members: &[&str],
    more: &str,
) -> kcdsync_controller::config::Config {
    write_tokens(
        pki,
        &[("reader", "read", READ_TOKEN), ("orchestrator", "write", WRITE_TOKEN)],
    );
    let extra = format!(
        "[reconcile]\ninterval_secs = 3600\nwatch = false\n\n[agents]\nlisten = \"127.0.0.1:0\"\ncert_file = \"controller.pem\"\nkey_file = \"controller.key\"\nclient_ca_file = \"ca.pem\"\nheartbeat_secs = 1\nstale_after_secs = 5\n\n[api]\nlisten = \"127.0.0.1:0\"\ncert_file = \"controller.pem\"\nkey_file = \"controller.key\"\nclient_ca_file = \"api-ca.pem\"\ntokens_file = \"tokens.toml\"\nwrite_clients = [\"orchestrator.lab.test\"]\nread_clients = [\"reader.lab.test\"]\n{more}\n"
    );
    let text = fleet.config(lab, crate::BindAs::Svc, mode, members, &extra);
    let path = pki.path("kcdsync.toml");
    std::fs::write(&path, text).unwrap();
    kcdsync_controller::config::Config::load(&path).expect("valid controller config")
}

/// Writes the API's `tokens.toml` (mode 0600) with `(name, role, token)` entries.
pub fn write_tokens(pki: &Pki, tokens: &[(&str, &str, &str)]) {
    let text: String = tokens
        .iter()
        .map(|(name, role, token)| format!("[[token]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken = \"{token}\"\n\n"))
        .collect();
    crate::write_private(&pki.path("tokens.toml"), text);
}

/// The fleet API client the tests use: a bearer token (or none) on every call.
pub type FleetClient = kcdsync_proto::v1::fleet_service_client::FleetServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

/// A fleet API client authenticated with `token`.
pub async fn fleet_client(
    pki: &Pki,
    addr: SocketAddr,
    token: Option<&str>,
    identity: Option<(String, String)>,
) -> FleetClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(pki.client_tls(identity))
        .unwrap()
        .connect()
        .await
        .expect("connect to the fleet API");
    kcdsync_proto::v1::fleet_service_client::FleetServiceClient::with_interceptor(
        channel,
        BearerToken(token.map(|t| format!("Bearer {t}").parse().unwrap())),
    )
}

/// Every delegation edge of the exposure (GetExposure's first page, unfiltered).
pub async fn exposure_edges(api: &mut FleetClient) -> Vec<kcdsync_proto::v1::DelegationEdge> {
    api.get_exposure(kcdsync_proto::v1::GetExposureRequest::default())
        .await
        .expect("GetExposure")
        .into_inner()
        .edges
}

/// Polls the exposure (every 20 ms, up to `limit`) until its edges satisfy `holds`; returns them.
pub async fn exposure_until(
    api: &FleetClient,
    limit: Duration,
    what: &str,
    holds: impl Fn(&[kcdsync_proto::v1::DelegationEdge]) -> bool,
) -> Vec<kcdsync_proto::v1::DelegationEdge> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let edges = exposure_edges(&mut api.clone()).await;
        if holds(&edges) {
            return edges;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls CheckMigration with `req` (every 20 ms, up to `limit`) until its readiness is `want`,
/// and returns that answer. (The controller keeps an initiator it read from AD for 10 s.)
pub async fn check_until(
    api: &FleetClient,
    req: kcdsync_proto::v1::CheckMigrationRequest,
    limit: Duration,
    want: kcdsync_proto::v1::Readiness,
) -> kcdsync_proto::v1::CheckMigrationResponse {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let r = api
            .clone()
            .check_migration(req.clone())
            .await
            .expect("CheckMigration")
            .into_inner();
        if r.readiness == want as i32 {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {want:?} from {req:?}; last: {}",
            r.summary
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The plans waiting for approval (the first page).
pub async fn pending_plans(api: &mut FleetClient) -> Vec<kcdsync_proto::v1::Plan> {
    use kcdsync_proto::v1 as pb;
    api.list_plans(pb::ListPlansRequest {
        state: pb::PlanState::PendingApproval as i32,
        ..Default::default()
    })
    .await
    .expect("ListPlans")
    .into_inner()
    .plans
}

#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A simulated host whose migrations are real S4U checks against the lab
/// KDC, with the host's password in `dir`.
pub fn kerberized_probe(lab: &crate::Lab, host: &crate::TestHost, dir: &Path) -> SimulatedProbe {
    std::fs::write(dir.join("pw"), &host.password).unwrap();
    let h = toml_host(&format!(
        "fqdn = \"{}\"\nnetbios = \"{}\"\n[kerberos]\nkrb5_config = \"{}\"\nprincipal = \"{}$@{}\"\npassword_file = \"{}\"\n",
        host.fqdn,
        host.netbios,
        lab.krb5_conf(),
        host.netbios,
        lab.realm(),
        dir.join("pw").display()
    ));
    SimulatedProbe::new(h, &dir.join("host")).expect("simulated probe")
}

/// A PostgreSQL database of one test on the test cluster (`deploy/pg/pg.sh up`): the store's own
/// helper, so the store suite, these tests and kcdsync-bench make theirs one way.
pub use kcdsync_controller::store::testing::PgTestDb;

/// The Hello an agent of `claimed` opens its stream with.
/// The store's audit events of `kind` (the newest 1,000): (host, actor, detail) each.
pub async fn audit_events_of(store: &kcdsync_controller::store::Store, kind: &str) -> Vec<(String, String, String)> {
    store
        .audit_events(None, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| (e.host, e.actor, e.detail))
        .collect()
}

/// The DNS names of the first certificate in the PEM file at `path`.
pub fn cert_file_names(path: &std::path::Path) -> Vec<String> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|d: rustls::pki_types::CertificateDer<'_>| d.to_vec())
        .unwrap();
    kcdsync_controller::certs::peer_host_names(&der).unwrap()
}

pub fn hello_msg(claimed: &str) -> kcdsync_proto::v1::AgentMessage {
    use kcdsync_proto::v1::{AgentMessage, Hello, HostIdentity, agent_message::Body};
    AgentMessage {
        seq: 1,
        body: Some(Body::Hello(Hello {
            identity: Some(HostIdentity {
                fqdn: claimed.into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// An agent stream opened by hand, as an agent of `host` would: Hello sent, Welcome received.
/// Keep the sender alive (dropping it ends the stream from the agent's side).
pub async fn open_stream(
    url: &str,
    tls: ClientTlsConfig,
    host: &str,
) -> Result<
    (
        mpsc::Sender<kcdsync_proto::v1::AgentMessage>,
        tonic::Streaming<kcdsync_proto::v1::ControllerMessage>,
    ),
    tonic::Status,
> {
    open_session(url, tls, host, 4).await
}

/// [`open_stream`] whose sender holds `capacity` messages before `send` waits (the benches'
/// agents keep more in flight). UNAVAILABLE when the connection fails, the endpoint's status
/// when it refuses the Hello, INTERNAL when it answers anything but Welcome.
pub async fn open_session(
    url: &str,
    tls: ClientTlsConfig,
    host: &str,
    capacity: usize,
) -> Result<
    (
        mpsc::Sender<kcdsync_proto::v1::AgentMessage>,
        tonic::Streaming<kcdsync_proto::v1::ControllerMessage>,
    ),
    tonic::Status,
> {
    use kcdsync_proto::v1::{ControllerMessage, agent_service_client::AgentServiceClient, controller_message};
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .and_then(|e| e.tls_config(tls))
        .map_err(|e| tonic::Status::invalid_argument(format!("{url}: {e:?}")))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))?;
    let (tx, rx) = mpsc::channel(capacity);
    tx.send(hello_msg(host))
        .await
        .map_err(|_| tonic::Status::internal("the stream's receiver is gone"))?;
    let mut inbound = AgentServiceClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(ControllerMessage {
            body: Some(controller_message::Body::Welcome(_)),
        }) => Ok((tx, inbound)),
        other => Err(tonic::Status::internal(format!(
            "{host}: expected Welcome, got {other:?}"
        ))),
    }
}
