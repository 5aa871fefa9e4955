//! `kcdsync-bench agents`: N lightweight in-process agents over real TLS
//! sockets against one controller agent endpoint running in a child process.
//! Reports the endpoint's memory per connected agent, the sustained ingest
//! rate (messages acknowledged after commit), and the idle RSS of a real
//! `kcdsync-agent` process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use kcdsync_controller::certs::{Ca, Validity};
use kcdsync_controller::config::AgentsConfig;
use kcdsync_controller::grpc::agents::{self, AgentHub, HubOptions};
use kcdsync_controller::grpc::tls;
use kcdsync_controller::renewal::RenewalPolicy;
use kcdsync_controller::store::Store;
use kcdsync_controller::store::testing::PgTestDb;
use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::controller_message::Body as Down;
use kcdsync_proto::v1::*;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The child process: serves the agent endpoint from files in `dir`, prints
/// `listening <addr>`, runs until killed.
/// With `renew`, it renews agents' certificates with the CA in `ca.pem` + `ca.key` (the
/// agents' CA), one request a host a minute as `serve` does by default.
pub fn endpoint(dir: &Path, store_url: &str, renew: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = AgentsConfig {
            listen: "127.0.0.1:0".parse()?,
            cert_file: dir.join("controller.pem"),
            key_file: dir.join("controller.key"),
            client_ca_file: dir.join("ca.pem"),
            heartbeat: Duration::from_secs(30),
            stale_after: Duration::from_secs(120),
            max_message_bytes: 1 << 20,
            issuing_ca: None,
            cert_lifetime: Duration::from_secs(24 * 3600),
            enroll: None,
        };
        let store = Store::open(store_url).await?;
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        println!("listening {}", listener.local_addr()?);
        let renewal = if renew {
            let key = std::fs::read_to_string(dir.join("ca.key")).context("ca.key")?;
            let ca = Ca::load(&std::fs::read_to_string(dir.join("ca.pem"))?, &key)?;
            RenewalPolicy {
                ca: Some(Arc::new(ca)),
                ..Default::default()
            }
        } else {
            RenewalPolicy::default()
        };
        let hub = AgentHub::new(
            store,
            HubOptions {
                heartbeat: cfg.heartbeat,
                stale_after: cfg.stale_after,
                max_message_bytes: cfg.max_message_bytes,
                renewal,
                ..Default::default()
            },
            None,
        );
        agents::serve(listener, tls::for_agents(&cfg)?, hub, std::future::pending()).await?;
        Ok(())
    })
}

/// Starts the `agent-endpoint` child serving from `dir`: its guard (kills it when dropped),
/// its pid and its URL.
pub(crate) fn spawn_endpoint(dir: &Path, store_url: &str, renew: bool) -> Result<(Guard, u32, String)> {
    spawn_endpoint_from(&std::env::current_exe()?, dir, store_url, renew)
}

/// [`spawn_endpoint`] with the `agent-endpoint` of another kcdsync-bench binary `exe` (an
/// older build, for a before/after in one run).
pub(crate) fn spawn_endpoint_from(
    exe: &Path,
    dir: &Path,
    store_url: &str,
    renew: bool,
) -> Result<(Guard, u32, String)> {
    let mut cmd = Command::new(exe);
    cmd.args(["agent-endpoint", "--dir"])
        .arg(dir)
        .args(["--store", store_url])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped());
    if renew {
        cmd.arg("--renew");
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let guard = Guard(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .context("endpoint did not start")?
        .to_owned();
    Ok((guard, pid, format!("https://{addr}")))
}

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

pub(crate) struct Guard(pub(crate) Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The store the endpoint writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Sqlite,
    /// A fresh database on the deploy/pg/pg.sh cluster.
    Postgres,
}

pub fn run(n: usize, messages: usize, agent_bin: Option<PathBuf>, stores: &[StoreKind]) -> Result<()> {
    let mut agent_bin = agent_bin;
    for (i, kind) in stores.iter().enumerate() {
        if i > 0 {
            println!();
        }
        run_one(n, messages, agent_bin.take(), *kind)?;
    }
    Ok(())
}

fn run_one(n: usize, messages: usize, agent_bin: Option<PathBuf>, kind: StoreKind) -> Result<()> {
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let ca = Ca::new("kcdsync bench CA")?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    let (c, k) = ca.issue_server(&["localhost"], &["127.0.0.1".parse()?], Validity::days(1))?;
    std::fs::write(dir.join("controller.pem"), c)?;
    std::fs::write(dir.join("controller.key"), k)?;

    // Declared before the endpoint's guard, so dropped after it: the endpoint is gone by then.
    let pg = match kind {
        StoreKind::Sqlite => None,
        StoreKind::Postgres => {
            Some(PgTestDb::try_create().map_err(|e| anyhow!("no PostgreSQL ({e}): run deploy/pg/pg.sh up"))?)
        }
    };
    let store_url = match &pg {
        None => format!("sqlite://{}?mode=rwc", dir.join("bench.db").display()),
        Some(db) => db.url.clone(),
    };
    let (_guard, pid, url) = spawn_endpoint(dir, &store_url, false)?;

    eprintln!("issuing {n} agent certificates ...");
    let t = Instant::now();
    let idents: Vec<(String, String, String)> = (0..n)
        .map(|i| {
            let host = format!("hv{i:05}.bench.test");
            let (c, k) = ca.issue_agent(&host, Validity::days(1)).expect("agent cert");
            (host, c, k)
        })
        .collect();
    eprintln!("  {:.1} s", t.elapsed().as_secs_f64());

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::thread::sleep(Duration::from_millis(500));
        let base = rss_kib(pid)?;
        let acks = Arc::new(AtomicU64::new(0));
        let ca_pem = ca.cert_pem().to_owned();
        eprintln!("connecting {n} agents (TLS + Hello/Welcome) ...");
        let t = Instant::now();
        let idents = Arc::new(idents);
        let (conn_tx, mut conn_rx) = mpsc::channel::<Result<mpsc::Sender<AgentMessage>>>(n.max(1));
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        for i in 0..n {
            let (idents, url, ca_pem, acks, conn_tx, sem) = (
                idents.clone(),
                url.clone(),
                ca_pem.clone(),
                acks.clone(),
                conn_tx.clone(),
                sem.clone(),
            );
            tokio::spawn(async move {
                let permit = sem.acquire_owned().await.unwrap();
                let (host, cert, key) = &idents[i];
                let r = connect(&url, &ca_pem, host, cert, key, acks).await;
                drop(permit);
                let _ = conn_tx.send(r).await;
            });
        }
        drop(conn_tx);
        let mut senders = Vec::with_capacity(n);
        while let Some(r) = conn_rx.recv().await {
            senders.push(r?);
        }
        let connect_s = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let connected = rss_kib(pid)?;
        let per_agent = (connected.saturating_sub(base)) as f64 * 1024.0 / n as f64;

        eprintln!("ingest: {n} agents x {messages} messages ...");
        let before = acks.load(Ordering::Relaxed);
        let t = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for (i, tx) in senders.iter().enumerate() {
            let tx = tx.clone();
            let host = idents[i].0.clone();
            tasks.push(tokio::spawn(async move {
                for m in 0..messages {
                    let msg = attempt_msg(&host, m as u64);
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let want = before + (n * messages) as u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        while acks.load(Ordering::Relaxed) < want {
            ensure!(
                Instant::now() < deadline,
                "only {} of {} acks",
                acks.load(Ordering::Relaxed) - before,
                n * messages
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ingest_s = t.elapsed().as_secs_f64();
        let rate = (n * messages) as f64 / ingest_s;
        let peak = rss_kib(pid)?;
        Ok::<_, anyhow::Error>((connect_s, base, connected, per_agent, ingest_s, rate, peak, senders))
    })?;
    let (connect_s, base, connected, per_agent, ingest_s, rate, peak, senders) = result;

    let agent_rss = agent_bin.map(|bin| idle_agent_rss(&bin, dir, &ca, &url));
    drop(senders);
    rt.shutdown_timeout(Duration::from_secs(1));

    println!("agents benchmark: {n} agents, one controller agent endpoint, mTLS over loopback, store {kind:?}");
    println!("  connect + Hello/Welcome of all agents: {connect_s:.1} s");
    println!(
        "  endpoint RSS: {:.1} MiB idle, {:.1} MiB with {n} agents -> {:.1} KiB per connected agent (goal <= 64 KiB)",
        base as f64 / 1024.0,
        connected as f64 / 1024.0,
        per_agent / 1024.0
    );
    println!(
        "  ingest: {} attempt messages acknowledged after commit in {ingest_s:.2} s -> {rate:.0} messages/s (goal >= 20,000); RSS then {:.1} MiB",
        n * messages,
        peak as f64 / 1024.0
    );
    match agent_rss {
        Some(Ok(r)) => println!(
            "  kcdsync-agent (simulated probe) idle RSS: {:.1} MiB (goal <= 12 MiB)",
            r as f64 / 1024.0
        ),
        Some(Err(e)) => println!("  kcdsync-agent idle RSS: not measured: {e:#}"),
        None if kind == StoreKind::Sqlite => {
            println!("  kcdsync-agent idle RSS: not measured (no kcdsync-agent binary; pass --agent-bin)")
        }
        None => {}
    }
    Ok(())
}

/// `host`'s `m`-th message: one successful migration (stream seq `m` + 2, after the Hello).
pub fn attempt_msg(host: &str, m: u64) -> AgentMessage {
    let a = MigrationAttempt {
        attempt_id: format!("{host}:{m}"),
        vm_name: format!("vm{m}"),
        peer: "hv00000.bench.test".into(),
        role: MigrationRole::Source as i32,
        success: true,
        event_id: 20415,
        ..Default::default()
    };
    AgentMessage {
        seq: m + 2,
        body: Some(Body::Attempts(MigrationAttempts { attempts: vec![a] })),
    }
}

/// One bench agent's session with the agent endpoint (its certificate, 16 messages queued at
/// most before `send` waits), after Hello and Welcome.
pub(super) async fn session(
    url: &str,
    ca_pem: &str,
    host: &str,
    cert: &str,
    key: &str,
) -> Result<(mpsc::Sender<AgentMessage>, tonic::Streaming<ControllerMessage>)> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    kcdsync_tests::agents::open_session(url, tls, host, 16)
        .await
        .map_err(|s| anyhow!("{host}: {:?}: {}", s.code(), s.message()))
}

async fn connect(
    url: &str,
    ca_pem: &str,
    host: &str,
    cert: &str,
    key: &str,
    acks: Arc<AtomicU64>,
) -> Result<mpsc::Sender<AgentMessage>> {
    let (tx, mut inbound) = session(url, ca_pem, host, cert, key).await?;
    tokio::spawn(async move {
        while let Ok(Some(m)) = inbound.message().await {
            if let Some(Down::Ack(a)) = m.body {
                acks.fetch_add(a.attempt_ids.len() as u64, Ordering::Relaxed);
            }
        }
    });
    Ok(tx)
}

/// Starts the real agent binary with a simulated host against the endpoint
/// and reads its RSS once it has settled.
fn idle_agent_rss(bin: &Path, dir: &Path, ca: &Ca, url: &str) -> Result<u64> {
    let host = "idle.bench.test";
    let (c, k) = ca.issue_agent(host, Validity::days(1))?;
    std::fs::write(dir.join("agent.pem"), c)?;
    std::fs::write(dir.join("agent.key"), k)?;
    std::fs::write(
        dir.join("host.toml"),
        format!("fqdn = \"{host}\"\nnetbios = \"IDLE\"\n"),
    )?;
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "controller_url = \"{url}\"\ntls_server_name = \"localhost\"\nca_file = \"ca.pem\"\ncert_file = \"agent.pem\"\nkey_file = \"agent.key\"\noutbox_dir = \"outbox\"\nprobe = \"simulated\"\nsimulated_host = \"host.toml\"\nreport_interval_secs = 5\nattempts_interval_secs = 1\n"
        ),
    )?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .arg("run")
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    let mut g = Guard(child);
    std::thread::sleep(Duration::from_secs(8));
    if let Some(status) = g.0.try_wait()? {
        bail!("{} exited ({status}) instead of running", bin.display());
    }
    rss_kib(pid)
}
