//! `kcdsync-bench renewal-storm`: N in-process agents over real mTLS sockets, each holding its
//! `Session` stream to an agent endpoint in a child process (the `agents` bench's endpoint, with
//! an issuing CA: `agent-endpoint --renew`, SQLite store in a temp dir, no AD), keep sending
//! attempts; then every agent renews its certificate (`RenewCertificate` with a fresh CSR),
//! the N requests spread uniformly over `--spread-secs`, while the ingest goes on.
//!
//! Phases, one run: warm-up; `before` (ingest only, `--phase-secs`); `storm` (ingest + the
//! renewals, `--spread-secs`); the tail until every renewal is answered; `after` (ingest only,
//! `--phase-secs`). The ingest rate of the storm is compared with those of `before` and
//! `after`, measured on the same endpoint in the same run (its store grows all along: `after`
//! says how much of a difference is the store's growth).
//!
//! The load: each agent sends one attempt message and waits for its ack before the next
//! (`--ingest-rate 0`, the default: the endpoint's ingest saturated by N messages in flight), or
//! paces itself to a total of `--ingest-rate` messages/s (still one in flight at most).
//! Renewal latency is from the moment the request is handed to the agent's stream to the
//! moment its `CertificateRenewal` is read. The agents' first certificates are issued with one
//! fresh key each by the CA (as `certs agent` would) and the CSRs are made (a fresh P-256 key
//! each, `kcdsync_agent::identity::request`, what the agent does) before the endpoint sees any
//! load, so the bench's own CPU in the phases is TLS, HTTP/2 and protobuf only.
//!
//! Both processes share the machine: the controller's CPU (its `/proc/<pid>/stat`, utime +
//! stime of the child process) and the bench's own (`/proc/self/stat`) are reported per phase.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kcdsync_controller::certs::{Ca, Validity};
use kcdsync_proto::v1::agent_message::Body;
use kcdsync_proto::v1::certificate_renewal::Result as Answer;
use kcdsync_proto::v1::controller_message::Body as Down;
use kcdsync_proto::v1::*;
use tokio::sync::{Notify, mpsc};

pub struct Args {
    pub agents: usize,
    pub phase_secs: u64,
    pub spread_secs: u64,
    /// Total attempt messages/s offered; 0: as fast as acks come back.
    pub ingest_rate: u64,
    /// TLS handshakes in flight while connecting (the endpoint takes 64 per client IP).
    pub connect_parallel: usize,
    /// kcdsync-bench binaries whose `agent-endpoint` to run the storm against, one after the
    /// other (an older build first, for a before/after); empty: this one.
    pub endpoint_exes: Vec<PathBuf>,
}

/// Why a renewal was refused (a gRPC code and the message; -1: the answer was unusable), or
/// `None`: a certificate was issued.
type Refused = Option<(i32, String)>;

/// The seq of every RenewCertificate (attempts use 2, 3, ...).
const RENEW_SEQ: u64 = 1 << 40;

struct Shared {
    base: Instant,
    acks: AtomicU64,
    /// Per agent: when its request was handed to its stream (ns since `base`, 0: not yet).
    sent_ns: Vec<AtomicU64>,
    sent: AtomicU64,
    answered: AtomicU64,
    answers: Mutex<Vec<(Duration, Refused)>>,
    /// Streams that ended (the endpoint cut them or the connection died).
    ended: AtomicU64,
    end_reasons: Mutex<Vec<String>>,
    ack_timeouts: AtomicU64,
    /// Per ack: when it was read (ns since `base`) and its attempt's latency (µs since sent).
    ack_lat: Mutex<Vec<(u64, u32)>>,
    stop: AtomicBool,
}

/// utime + stime of `pid` (or `self`) in seconds.
fn cpu_secs(pid: &str, tck: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "(comm) ", field 3 (state) is f[0]: utime (14) is f[11], stime (15) f[12].
    Ok((f[11].parse::<f64>()? + f[12].parse::<f64>()?) / tck)
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A deterministic shuffle of 0..n (xorshift64*), for the order agents renew in.
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let j = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// A phase's figures: acks and CPU over its window.
struct Window {
    /// ns since `Shared::base`.
    from_ns: u64,
    to_ns: u64,
    secs: f64,
    acks: u64,
    ctl_cpu: f64,
    bench_cpu: f64,
}

impl Window {
    fn rate(&self) -> f64 {
        self.acks as f64 / self.secs
    }
}

struct Meter {
    pid: String,
    tck: f64,
}

struct Mark {
    t: Instant,
    acks: u64,
    ctl: f64,
    me: f64,
}

impl Meter {
    fn mark(&self, sh: &Shared) -> Result<Mark> {
        Ok(Mark {
            t: Instant::now(),
            acks: sh.acks.load(Ordering::Relaxed),
            ctl: cpu_secs(&self.pid, self.tck)?,
            me: cpu_secs("self", self.tck)?,
        })
    }
    fn since(&self, a: &Mark, sh: &Shared) -> Result<Window> {
        let b = self.mark(sh)?;
        Ok(Window {
            from_ns: (a.t - sh.base).as_nanos() as u64,
            to_ns: (b.t - sh.base).as_nanos() as u64,
            secs: (b.t - a.t).as_secs_f64(),
            acks: b.acks - a.acks,
            ctl_cpu: b.ctl - a.ctl,
            bench_cpu: b.me - a.me,
        })
    }
}

pub fn run(args: Args) -> Result<()> {
    let exes = if args.endpoint_exes.is_empty() {
        vec![std::env::current_exe()?]
    } else {
        args.endpoint_exes.clone()
    };
    let mut summaries = Vec::new();
    for (k, exe) in exes.iter().enumerate() {
        if k > 0 {
            println!();
        }
        println!("endpoint: {}", exe.display());
        summaries.push((exe.clone(), run_one(&args, exe)?));
    }
    if summaries.len() > 1 {
        println!();
        println!("summary, one run, endpoints in this order:");
        for (exe, s) in &summaries {
            println!("  {}: {s}", exe.display());
        }
    }
    Ok(())
}

fn run_one(args: &Args, exe: &Path) -> Result<String> {
    let n = args.agents;
    ensure!(n > 0, "--agents 0");
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let ca = Ca::new("kcdsync bench CA")?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    kcdsync_tests::write_private(&dir.join("ca.key"), ca.key_pem());
    let (c, k) = ca.issue_server(&["localhost"], &["127.0.0.1".parse()?], Validity::days(1))?;
    std::fs::write(dir.join("controller.pem"), c)?;
    std::fs::write(dir.join("controller.key"), k)?;
    let store_url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    let (_guard, pid, url) = crate::agents::spawn_endpoint_from(exe, dir, &store_url, true)?;
    eprintln!("agent endpoint: pid {pid}, {url}");
    let meter = Meter {
        pid: pid.to_string(),
        tck: clk_tck(),
    };

    eprintln!("issuing {n} agent certificates (a fresh P-256 key each) ...");
    let t = Instant::now();
    let hosts: Vec<String> = (0..n).map(|i| format!("hv{i:05}.bench.test")).collect();
    let idents: Vec<(String, String)> = hosts
        .iter()
        .map(|h| ca.issue_agent(h, Validity::days(1)).expect("agent cert"))
        .collect();
    let certs_s = t.elapsed().as_secs_f64();
    eprintln!("  {certs_s:.1} s");
    eprintln!("making {n} CSRs (a fresh P-256 key each, as the agent does) ...");
    let t = Instant::now();
    let csrs: Vec<Vec<u8>> = hosts
        .iter()
        .map(|h| {
            kcdsync_agent::identity::request(h)
                .map(|r| r.csr_pem.into_bytes())
                .expect("CSR")
        })
        .collect();
    let csrs_s = t.elapsed().as_secs_f64();
    eprintln!("  {csrs_s:.1} s");

    let sh = Arc::new(Shared {
        base: Instant::now(),
        acks: AtomicU64::new(0),
        sent_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        answers: Mutex::new(Vec::with_capacity(n)),
        ended: AtomicU64::new(0),
        end_reasons: Mutex::new(Vec::new()),
        ack_timeouts: AtomicU64::new(0),
        ack_lat: Mutex::new(Vec::with_capacity(1 << 20)),
        stop: AtomicBool::new(false),
    });

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_idle = crate::agents::rss_kib(pid)?;
        eprintln!("connecting {n} agents (TLS + Hello/Welcome) ...");
        let t = Instant::now();
        let ca_pem = ca.cert_pem().to_owned();
        let idents = Arc::new(idents);
        let hosts = Arc::new(hosts);
        let sem = Arc::new(tokio::sync::Semaphore::new(args.connect_parallel.max(1)));
        let mut joins = Vec::with_capacity(n);
        for i in 0..n {
            let (idents, hosts, url, ca_pem, sh, sem) = (
                idents.clone(),
                hosts.clone(),
                url.clone(),
                ca_pem.clone(),
                sh.clone(),
                sem.clone(),
            );
            joins.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.unwrap();
                let (cert, key) = &idents[i];
                connect(&url, &ca_pem, i, &hosts[i], cert, key, sh).await
            }));
        }
        let mut links = Vec::with_capacity(n);
        let mut failed = Vec::new();
        for j in joins {
            match j.await? {
                Ok(l) => links.push(l),
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        let connect_s = t.elapsed().as_secs_f64();
        if !failed.is_empty() {
            bail!(
                "{} of {n} agents could not connect (first: {}); try a smaller --agents",
                failed.len(),
                failed[0]
            );
        }
        eprintln!("  {connect_s:.1} s");
        let rss_connected = crate::agents::rss_kib(pid)?;

        // The ingest load: one attempt in flight per agent.
        let pace = (args.ingest_rate > 0).then(|| Duration::from_secs_f64(n as f64 / args.ingest_rate as f64));
        let mut loads = Vec::with_capacity(n);
        for (i, (tx, acked)) in links.iter().enumerate() {
            let (tx, acked, sh, host) = (tx.clone(), acked.clone(), sh.clone(), hosts[i].clone());
            loads.push(tokio::spawn(async move {
                let start = tokio::time::Instant::now() + pace.map_or(Duration::ZERO, |p| p.mul_f64(i as f64 / n as f64));
                tokio::time::sleep_until(start).await;
                let mut next = start;
                let mut m: u64 = 0;
                while !sh.stop.load(Ordering::Relaxed) {
                    let msg = crate::agents::attempt_msg(&host, m);
                    let sent = Instant::now();
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                    m += 1;
                    if tokio::time::timeout(Duration::from_secs(30), acked.notified())
                        .await
                        .is_err()
                    {
                        sh.ack_timeouts.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let at = sh.base.elapsed().as_nanos() as u64;
                        let lat = sent.elapsed().as_micros() as u32;
                        sh.ack_lat.lock().unwrap().push((at, lat));
                    }
                    if let Some(p) = pace {
                        next += p;
                        tokio::time::sleep_until(next).await;
                    }
                }
            }));
        }

        // A line every 5 s on stderr: the ingest rate, renewals, the controller's CPU.
        let ticker = {
            let sh = sh.clone();
            let meter = Meter {
                pid: meter.pid.clone(),
                tck: meter.tck,
            };
            tokio::spawn(async move {
                let Ok(mut prev) = meter.mark(&sh) else { return };
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let Ok(w) = meter.since(&prev, &sh) else { return };
                    eprintln!(
                        "  t={:>6.1}s ingest {:>7.0}/s  renewals sent {:>6} answered {:>6}  controller CPU {:>4.0}%  bench CPU {:>4.0}%  streams ended {}",
                        sh.base.elapsed().as_secs_f64(),
                        w.rate(),
                        sh.sent.load(Ordering::Relaxed),
                        sh.answered.load(Ordering::Relaxed),
                        w.ctl_cpu / w.secs * 100.0,
                        w.bench_cpu / w.secs * 100.0,
                        sh.ended.load(Ordering::Relaxed),
                    );
                    let Ok(m) = meter.mark(&sh) else { return };
                    prev = m;
                }
            })
        };

        let phase = Duration::from_secs(args.phase_secs);
        eprintln!("warm-up 10 s ...");
        tokio::time::sleep(Duration::from_secs(10)).await;
        eprintln!("before: ingest only, {} s ...", args.phase_secs);
        let m = meter.mark(&sh)?;
        tokio::time::sleep(phase).await;
        let before = meter.since(&m, &sh)?;

        eprintln!(
            "storm: {n} renewals spread over {} s, ingest going on ...",
            args.spread_secs
        );
        let spread = Duration::from_secs(args.spread_secs);
        let order = shuffled(n);
        let m = meter.mark(&sh)?;
        let t0 = tokio::time::Instant::now();
        for (k, &i) in order.iter().enumerate() {
            tokio::time::sleep_until(t0 + spread.mul_f64((k as f64 + 0.5) / n as f64)).await;
            let tx = links[i].0.clone();
            let csr = csrs[i].clone();
            let sh = sh.clone();
            // Its own task: one agent's full stream queue never holds up the others' requests.
            tokio::spawn(async move {
                sh.sent_ns[i].store(sh.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                sh.sent.fetch_add(1, Ordering::Relaxed);
                let _ = tx
                    .send(AgentMessage {
                        seq: RENEW_SEQ,
                        body: Some(Body::RenewCertificate(RenewCertificate { csr })),
                    })
                    .await;
            });
        }
        tokio::time::sleep_until(t0 + spread).await;
        let storm = meter.since(&m, &sh)?;

        let m = meter.mark(&sh)?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while sh.answered.load(Ordering::Relaxed) < n as u64 {
            if Instant::now() > deadline || sh.ended.load(Ordering::Relaxed) as usize >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let tail = meter.since(&m, &sh)?;

        eprintln!("after: ingest only, {} s ...", args.phase_secs);
        let m = meter.mark(&sh)?;
        tokio::time::sleep(phase).await;
        let after = meter.since(&m, &sh)?;
        let rss_end = crate::agents::rss_kib(pid)?;

        sh.stop.store(true, Ordering::Relaxed);
        ticker.abort();
        for l in &loads {
            l.abort();
        }
        drop(links);
        Ok::<_, anyhow::Error>(Report {
            connect_s,
            rss_idle,
            rss_connected,
            rss_end,
            before,
            storm,
            tail,
            after,
        })
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(print_report(args, &sh, certs_s, csrs_s, &report))
}

struct Report {
    connect_s: f64,
    rss_idle: u64,
    rss_connected: u64,
    rss_end: u64,
    before: Window,
    storm: Window,
    tail: Window,
    after: Window,
}

fn code_name(c: i32) -> String {
    format!("{:?}", tonic::Code::from_i32(c))
}

/// Prints the run's figures; returns them in one line.
fn print_report(args: &Args, sh: &Shared, certs_s: f64, csrs_s: f64, r: &Report) -> String {
    let n = args.agents;
    let answers = sh.answers.lock().unwrap();
    let mut issued: Vec<Duration> = answers.iter().filter(|a| a.1.is_none()).map(|a| a.0).collect();
    let mut all: Vec<Duration> = answers.iter().map(|a| a.0).collect();
    let mut refused: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for (_, why) in answers.iter() {
        if let Some((code, msg)) = why {
            let e = refused.entry(code_name(*code)).or_insert((0, msg.clone()));
            e.0 += 1;
        }
    }
    let load = if args.ingest_rate == 0 {
        "one attempt message in flight per agent (saturating)".to_owned()
    } else {
        format!(
            "{} attempt messages/s offered, one in flight per agent at most",
            args.ingest_rate
        )
    };
    println!(
        "renewal-storm benchmark: {n} agents, one controller agent endpoint (child process, issuing CA, store SQLite), mTLS over loopback"
    );
    println!(
        "  setup: {n} first certificates {certs_s:.1} s, {n} CSRs {csrs_s:.1} s (bench process, before any load); connect + Hello/Welcome {:.1} s; endpoint RSS {:.0} MiB idle, {:.0} MiB connected, {:.0} MiB at the end",
        r.connect_s,
        r.rss_idle as f64 / 1024.0,
        r.rss_connected as f64 / 1024.0,
        r.rss_end as f64 / 1024.0
    );
    println!("  ingest load: {load}");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut summary = String::new();
    if all.is_empty() {
        println!("  renewals: {} sent, none answered", sh.sent.load(Ordering::Relaxed));
    } else {
        let pct = crate::api::pct;
        let (p50, p99, max) = (pct(&mut all, 0.5), pct(&mut all, 0.99), *all.iter().max().unwrap());
        println!(
            "  renewals: {} sent over {} s ({:.0}/s), {} answered: {} issued, {} refused{}",
            sh.sent.load(Ordering::Relaxed),
            args.spread_secs,
            n as f64 / args.spread_secs as f64,
            all.len(),
            issued.len(),
            all.len() - issued.len(),
            if all.len() < n {
                format!(", {} unanswered", n - all.len())
            } else {
                String::new()
            }
        );
        println!(
            "  renewal latency (request handed to the stream -> CertificateRenewal read), all answers: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(p50),
            ms(p99),
            ms(max)
        );
        summary = format!(
            "renewals {} issued of {n}, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; ",
            issued.len(),
            ms(p50),
            ms(p99),
            ms(max)
        );
        if !issued.is_empty() && issued.len() < all.len() {
            println!(
                "    issued only: p50 {:.1} ms, p99 {:.1} ms",
                ms(pct(&mut issued, 0.5)),
                ms(pct(&mut issued, 0.99))
            );
        }
        for (code, (count, msg)) in &refused {
            println!("    refused {code}: {count} (e.g. \"{msg}\")");
        }
    }
    let acks = sh.ack_lat.lock().unwrap();
    let line = |name: &str, w: &Window| {
        let mut lat: Vec<i64> = acks
            .iter()
            .filter(|(at, _)| (w.from_ns..w.to_ns).contains(at))
            .map(|&(_, l)| i64::from(l))
            .collect();
        lat.sort_unstable();
        println!(
            "  {name:<7} {:>6.1} s: {:>9} acks -> {:>7.0} attempt messages/s acknowledged after commit (send -> ack p50 {:.0} ms, p99 {:.0} ms); controller CPU {:>5.1} s ({:>3.0}% of one core), bench CPU {:>5.1} s ({:>3.0}%)",
            w.secs,
            w.acks,
            w.rate(),
            crate::percentile(&lat, 0.5) as f64 / 1e3,
            crate::percentile(&lat, 0.99) as f64 / 1e3,
            w.ctl_cpu,
            w.ctl_cpu / w.secs * 100.0,
            w.bench_cpu,
            w.bench_cpu / w.secs * 100.0
        )
    };
    line("before", &r.before);
    line("storm", &r.storm);
    line("tail", &r.tail);
    line("after", &r.after);
    let floor = (r.before.rate() + r.after.rate()) / 2.0;
    println!(
        "  ingest during the storm / without renewals: {:.3} of before, {:.3} of after, {:.3} of their mean ({:.0}/s)",
        r.storm.rate() / r.before.rate(),
        r.storm.rate() / r.after.rate(),
        r.storm.rate() / floor,
        floor
    );
    let extra = r.storm.ctl_cpu - r.before.ctl_cpu * r.storm.secs / r.before.secs;
    println!(
        "  controller CPU (child's /proc/<pid>/stat utime+stime): storm {:.1} s vs before {:.1} s over the same length -> {:+.1} s for {} renewals ({:.2} ms each, ingest included)",
        r.storm.ctl_cpu,
        r.before.ctl_cpu * r.storm.secs / r.before.secs,
        extra,
        sh.sent.load(Ordering::Relaxed),
        extra * 1e3 / n as f64
    );
    summary.push_str(&format!(
        "ingest before {:.0}/s, storm {:.0}/s, after {:.0}/s -> storm/before {:.3}, storm/after {:.3}",
        r.before.rate(),
        r.storm.rate(),
        r.after.rate(),
        r.storm.rate() / r.before.rate(),
        r.storm.rate() / r.after.rate()
    ));
    let ended = sh.ended.load(Ordering::Relaxed);
    let to = sh.ack_timeouts.load(Ordering::Relaxed);
    if ended > 0 || to > 0 {
        println!(
            "  streams ended during the run: {ended} (first: {:?}); acks waited for over 30 s: {to}",
            sh.end_reasons.lock().unwrap().first()
        );
    }
    summary
}

/// One agent: connects with its certificate, says Hello, waits for Welcome. Returns its stream's
/// sender and what its reader notifies on each ack.
async fn connect(
    url: &str,
    ca_pem: &str,
    i: usize,
    host: &str,
    cert: &str,
    key: &str,
    sh: Arc<Shared>,
) -> Result<(mpsc::Sender<AgentMessage>, Arc<Notify>)> {
    let (tx, mut inbound) = super::agents::session(url, ca_pem, host, cert, key).await?;
    let acked = Arc::new(Notify::new());
    let a = acked.clone();
    tokio::spawn(async move {
        let end = loop {
            match inbound.message().await {
                Ok(Some(m)) => match m.body {
                    Some(Down::Ack(ack)) => {
                        sh.acks.fetch_add(ack.attempt_ids.len() as u64, Ordering::Relaxed);
                        a.notify_one();
                    }
                    Some(Down::CertificateRenewal(r)) => {
                        let now = sh.base.elapsed().as_nanos() as u64;
                        let lat = Duration::from_nanos(now.saturating_sub(sh.sent_ns[i].load(Ordering::Relaxed)));
                        let why = match r.result {
                            Some(Answer::CertificateChainPem(pem)) if pem.starts_with("-----BEGIN CERTIFICATE") => None,
                            Some(Answer::CertificateChainPem(_)) => Some((-1, "not a PEM certificate".to_owned())),
                            Some(Answer::Refused(why)) => Some((why.code, why.message)),
                            None => Some((-1, "an empty answer".to_owned())),
                        };
                        sh.answers.lock().unwrap().push((lat, why));
                        sh.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                },
                Ok(None) => break "the endpoint ended the stream".to_owned(),
                Err(s) => break format!("{:?}: {}", s.code(), s.message()),
            }
        };
        if !sh.stop.load(Ordering::Relaxed) {
            sh.ended.fetch_add(1, Ordering::Relaxed);
            sh.end_reasons.lock().unwrap().push(end);
        }
    });
    Ok((tx, acked))
}
