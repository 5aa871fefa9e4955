//! `enroll`: N agents enrolling by Kerberos at once, against the lab's KDC and a real
//! `kcdsync-controller serve` (its own process, release build), in one run per size:
//!
//! - seed: N computers with passwords (so the KDC has keys for them) in their own OU, one
//!   keytab holding all their keys (the agents' side), and the controller's service account;
//! - floor: the Kerberos part alone — each of the N principals gets a TGT and a service ticket
//!   for the controller's SPN (what `kcdsync_gss::initiate` asks the KDC), same concurrency;
//! - enrollment: each of the N principals initiates again (fresh cache) and calls `Enroll` on its
//!   own TLS connection; RESOURCE_EXHAUSTED (the controller verifies 32 at once) and refused
//!   handshakes are retried after a short wait, as agents do (counted).
//!
//! In both phases a ticket request that found no KDC ("Cannot contact any KDC": the lab's
//! KDC, one Samba process, at times answers no connection when 128 ask at once — it ended
//! whole runs) is asked again after a short wait, as an agent's next attempt would, and counted
//! apart.
//!
//! Reported: time to all enrolled next to the floor, the Enroll call's latency, the
//! controller's CPU per enrollment (/proc of its process), and the KDC's share of the servers'
//! CPU (the samba processes' CPU over samba's plus the controller's, during the enrollment).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kcdsync_controller::certs::{Ca, Validity};
use kcdsync_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use kcdsync_proto::v1::{EnrollRequest, KerberosProof, enroll_request};
use kcdsync_tests::Lab;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::{ldap_tool, percentile};

const PREFIX: &str = "BEN";
const PASSWORD: &str = "Kcd-bench-Enroll-1!";

pub struct Args {
    pub sizes: Vec<usize>,
    pub concurrency: usize,
    pub controller: PathBuf,
}

fn name(i: usize) -> String {
    format!("{PREFIX}{i:05}")
}

pub fn run(args: Args) -> Result<()> {
    let lab = Lab::start();
    // The Kerberos library reads KRB5_CONFIG once per context: set before any thread starts.
    // SAFETY: nothing else runs yet in this process.
    unsafe { std::env::set_var("KRB5_CONFIG", lab.krb5_conf()) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(args.concurrency.max(8))
        .build()?;
    let mut reports = Vec::new();
    for &n in &args.sizes {
        let r = one_size(lab, &rt, &args, n)?;
        // Each size's row as soon as it is measured: a later size may fail.
        eprintln!("{}\n{}", Report::header(), r.line());
        reports.push(r);
    }
    println!("\n{}", Report::header());
    for r in &reports {
        println!("{}", r.line());
    }
    Ok(())
}

struct Report {
    n: usize,
    floor: Duration,
    all: Duration,
    retries: usize,
    kdc_retries: usize,
    kdc_retries_floor: usize,
    rpc_p50: i64,
    rpc_p99: i64,
    controller_cpu: Duration,
    samba_cpu: Duration,
}

impl Report {
    fn header() -> String {
        "| agents | floor: N TGT + service ticket (mean of before and after) | all enrolled | ratio | Enroll call p50/p99 ms | retries | KDC not reached, asked again (floor / enrollment) | controller CPU / enrollment | KDC share of server CPU |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |".into()
    }

    fn line(&self) -> String {
        let share = self.samba_cpu.as_secs_f64() / (self.samba_cpu + self.controller_cpu).as_secs_f64().max(1e-9);
        format!(
            "| {} | {:.2} s | {:.2} s | {:.2} | {}/{} | {} | {} / {} | {:.2} ms | {:.0} % |",
            self.n,
            self.floor.as_secs_f64(),
            self.all.as_secs_f64(),
            self.all.as_secs_f64() / self.floor.as_secs_f64().max(1e-9),
            self.rpc_p50,
            self.rpc_p99,
            self.retries,
            self.kdc_retries_floor,
            self.kdc_retries,
            self.controller_cpu.as_secs_f64() * 1000.0 / self.n as f64,
            share * 100.0
        )
    }
}

fn one_size(lab: &Lab, rt: &tokio::runtime::Runtime, args: &Args, n: usize) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let ou = format!("OU=bench-enroll,{}", lab.fleet_ou());
    // One more than measured: the first enrollment waits for the controller's first read.
    seed(lab, &ou, n + 1)?;
    let spn = format!("kcdsync/bench-{}.lab.test", &kcdsync_tests::token()[..6]);
    let service = rt.block_on(lab.account_with_keytab(
        &ou,
        &format!("ben-svc-{}", &kcdsync_tests::token()[..6]),
        Some(&spn),
        &dir.path().join("controller.keytab"),
    ))?;
    let t = Instant::now();
    let keytab = dir.path().join("agents.keytab");
    agents_keytab(lab, n + 1, &keytab)?;
    eprintln!("keytab of {} principals in {:.1} s", n + 1, t.elapsed().as_secs_f64());

    // The controller: serve in its own process, observe mode, enrollment on.
    let ca = Ca::new("kcdsync bench CA")?;
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem())?;
    kcdsync_tests::write_private(&dir.path().join("ca.key"), ca.key_pem());
    let (c, k) = ca.issue_server(&["localhost"], &["127.0.0.1".parse()?], Validity::days(1))?;
    std::fs::write(dir.path().join("controller.pem"), c)?;
    kcdsync_tests::write_private(&dir.path().join("controller.key"), k);
    let port = free_port()?;
    let cfg = format!(
        "{}\n[scope]\nbase_dns = [\"{ou}\"]\n\n[reconcile]\ninterval_secs = 3600\nwatch = false\n\n\
         [agents]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"controller.pem\"\nkey_file = \"controller.key\"\n\
         client_ca_file = \"ca.pem\"\nissuing_ca_cert_file = \"ca.pem\"\nissuing_ca_key_file = \"ca.key\"\n\n\
         [agents.enroll]\nkeytab_file = \"controller.keytab\"\nservice_principal = \"{service}\"\n\n\
         [[group]]\nname = \"g\"\nmode = \"observe\"\nhosts = [\"{}\"]\n",
        lab.ad_section(kcdsync_tests::BindAs::Svc),
        name(0).to_lowercase()
    );
    let cfg_path = dir.path().join("kcdsync.toml");
    std::fs::write(&cfg_path, cfg)?;
    let log = dir.path().join("serve.log");
    let mut serve = Command::new(&args.controller)
        .arg("--config")
        .arg(&cfg_path)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .env("KRB5RCACHEDIR", dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.path().join("serve.err"))?)
        .spawn()
        .with_context(|| format!("starting {}", args.controller.display()))?;
    let pid = serve.id();
    let result = rt.block_on(measure(lab, dir.path(), port, &spn, &keytab, n, args.concurrency, pid));
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = serve.wait();
    let _ = ldap_tool(
        lab,
        "ldapdelete",
        lab.var("LAB_ADMIN_DN"),
        lab.var("LAB_ADMIN_PASS_FILE"),
        &["-r", &ou],
        None,
    );
    if result.is_err() {
        eprintln!(
            "serve's stderr:\n{}",
            std::fs::read_to_string(dir.path().join("serve.err")).unwrap_or_default()
        );
    }
    result
}

/// N computers (`BEN00000$`…) with one password, their dNSHostName their own name.
fn seed(lab: &Lab, ou: &str, n: usize) -> Result<()> {
    let (admin, pw) = (lab.var("LAB_ADMIN_DN"), lab.var("LAB_ADMIN_PASS_FILE"));
    let _ = ldap_tool(lab, "ldapdelete", admin, pw, &["-r", ou], None);
    let domain = lab.realm().to_lowercase();
    let b64 = base64_utf16_quoted(PASSWORD);
    let mut ldif = format!("dn: {ou}\nobjectClass: organizationalUnit\nou: bench-enroll\n\n");
    for i in 0..n {
        let nb = name(i);
        ldif.push_str(&format!(
            "dn: CN={nb},{ou}\nobjectClass: computer\nsAMAccountName: {nb}$\ndNSHostName: {}.{domain}\n\
             userAccountControl: 4096\nunicodePwd:: {b64}\n\n",
            nb.to_lowercase()
        ));
    }
    let t = Instant::now();
    ldap_tool(lab, "ldapadd", admin, pw, &[], Some(&ldif))?;
    eprintln!("seeded {n} computers in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// unicodePwd's value: the quoted password in UTF-16LE, base64 for LDIF.
fn base64_utf16_quoted(pw: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = format!("\"{pw}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let v = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(v >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One keytab with every seeded principal's AES-256 key (one ktutil session).
fn agents_keytab(lab: &Lab, n: usize, path: &Path) -> Result<()> {
    let realm = lab.realm();
    let domain = realm.to_lowercase();
    let mut script = String::new();
    for i in 0..n {
        let nb = name(i);
        script.push_str(&format!(
            "addent -password -p {nb}$@{realm} -k 1 -e aes256-cts-hmac-sha1-96 -s {realm}host{}.{domain}\n{PASSWORD}\n",
            nb.to_lowercase()
        ));
    }
    script.push_str(&format!("wkt {}\nquit\n", path.display()));
    let mut child = Command::new("ktutil")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(script.as_bytes())?;
    child.wait()?;
    ensure!(path.is_file(), "ktutil wrote no {}", path.display());
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU time (user + system) of process `pid` so far.
fn cpu_of(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis((ticks(14) + ticks(15)) * 10)
}

/// CPU time of every samba process (the KDC is one of samba's tasks).
fn samba_cpu() -> Duration {
    let mut total = Duration::ZERO;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "samba" || comm.starts_with("samba") {
                total += cpu_of(pid);
            }
        }
    }
    total
}

fn creds(i: usize, realm: &str, keytab: &Path, round: &str) -> kcdsync_gss::ClientCreds {
    kcdsync_gss::ClientCreds {
        principal: Some(format!("{}$@{realm}", name(i))),
        keytab: Some(keytab.to_owned()),
        // A cache per principal, round and size: every ask goes to the KDC (a TGT cached for a
        // previous size's account of the same name is "revoked": the account was re-created).
        ccache: Some(format!("MEMORY:bench-{round}-{i}")),
    }
}

fn csr(i: usize) -> Result<Vec<u8>> {
    let host = format!("{}.lab.test", name(i).to_lowercase());
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(vec![host])?;
    Ok(params.serialize_request(&key)?.pem()?.into_bytes())
}

/// The proof of principal `i` for `csr` (blocking: it asks the KDC).
/// A KDC that could not be reached is asked again (at most 20 times, 100 ms apart), counted in
/// `kdc_retries`.
async fn initiate(
    creds: kcdsync_gss::ClientCreds,
    spn: String,
    csr: Vec<u8>,
    kdc_retries: Arc<AtomicUsize>,
) -> Result<kcdsync_gss::Proof> {
    let mut attempt = 0;
    loop {
        let (c, s, r) = (creds.clone(), spn.clone(), csr.clone());
        match tokio::task::spawn_blocking(move || kcdsync_gss::initiate(&c, &s, &r)).await? {
            Ok(proof) => return Ok(proof),
            Err(e) if attempt < 20 && e.to_string().contains("Cannot contact any KDC") => {
                attempt += 1;
                kdc_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    lab: &Lab,
    dir: &Path,
    port: u16,
    spn: &str,
    keytab: &Path,
    n: usize,
    concurrency: usize,
    pid: u32,
) -> Result<Report> {
    let realm = lab.realm().to_owned();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(dir.join("ca.pem"))?))
        .domain_name("localhost");
    let url = format!("https://127.0.0.1:{port}");
    // CSRs are made before the clock starts: the agents' CPU is not the servers'.
    let csrs: Vec<Vec<u8>> = (0..=n).map(csr).collect::<Result<_>>()?;

    // Host 0 enrolls first, as soon as the controller has read AD (not measured).
    let first = Instant::now();
    loop {
        let proof = initiate(
            creds(0, &realm, keytab, &format!("warm{n}")),
            spn.to_owned(),
            csrs[0].clone(),
            Arc::new(AtomicUsize::new(0)),
        )
        .await?;
        match enroll(&url, &tls, csrs[0].clone(), proof).await {
            Ok(()) => break,
            Err(e) if first.elapsed() < Duration::from_secs(120) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = e;
            }
            Err(e) => bail!("the first enrollment never succeeded: {e}"),
        }
    }
    eprintln!("controller ready after {:.1} s", first.elapsed().as_secs_f64());

    // Floor: the Kerberos part alone, before and after the enrollment (the mean is quoted:
    // the first pass also warms the KDC's and the keytab's caches).
    let kdc_retries_floor = Arc::new(AtomicUsize::new(0));
    let floor_before = floor(
        &realm,
        keytab,
        spn,
        &csrs,
        (n, concurrency),
        &format!("floor1-{n}"),
        &kdc_retries_floor,
    )
    .await?;
    eprintln!("floor: {n} TGT + service ticket in {:.2} s", floor_before.as_secs_f64());
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));

    // Enrollment: all N at once (within `concurrency` client threads).
    let (cpu0, samba0) = (cpu_of(pid), samba_cpu());
    let retries = Arc::new(AtomicUsize::new(0));
    let kdc_retries = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, csr) in csrs.iter().enumerate().take(n + 1).skip(1) {
        let (sem, spn, csr) = (sem.clone(), spn.to_owned(), csr.clone());
        let (url, tls, retries, kdc) = (url.clone(), tls.clone(), retries.clone(), kdc_retries.clone());
        let c = creds(i, &realm, keytab, &format!("enroll{n}"));
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            let proof = initiate(c, spn, csr.clone(), kdc).await?;
            loop {
                let sent = Instant::now();
                match enroll(&url, &tls, csr.clone(), proof.clone()).await {
                    Ok(()) => return Ok::<i64, anyhow::Error>(sent.elapsed().as_millis() as i64),
                    Err(Refused::Retry) => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20 + (i % 50) as u64)).await;
                    }
                    Err(Refused::Final(e)) => bail!("{} refused: {e}", name(i)),
                }
            }
        }));
    }
    let mut rpc = Vec::with_capacity(n);
    for task in tasks {
        rpc.push(task.await??);
    }
    let all = t.elapsed();
    let (cpu1, samba1) = (cpu_of(pid), samba_cpu());
    let floor_after = floor(
        &realm,
        keytab,
        spn,
        &csrs,
        (n, concurrency),
        &format!("floor2-{n}"),
        &kdc_retries_floor,
    )
    .await?;
    eprintln!(
        "enrolled in {:.2} s; floor again {:.2} s",
        all.as_secs_f64(),
        floor_after.as_secs_f64()
    );
    let floor = (floor_before + floor_after) / 2;
    rpc.sort();
    Ok(Report {
        n,
        floor,
        all,
        retries: retries.load(Ordering::Relaxed),
        kdc_retries: kdc_retries.load(Ordering::Relaxed),
        kdc_retries_floor: kdc_retries_floor.load(Ordering::Relaxed),
        rpc_p50: percentile(&rpc, 0.5),
        rpc_p99: percentile(&rpc, 0.99),
        controller_cpu: cpu1.saturating_sub(cpu0),
        samba_cpu: samba1.saturating_sub(samba0),
    })
}

#[derive(Debug)]
enum Refused {
    /// Busy, or the connection was refused (handshake slots full): asked again.
    Retry,
    Final(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Retry => write!(f, "retry"),
            Refused::Final(e) => write!(f, "{e}"),
        }
    }
}

/// One `Enroll` on a connection of its own, as an agent makes it. The same token is sent
/// again on a retry only when the controller never verified it (busy, or no connection).
async fn enroll(url: &str, tls: &ClientTlsConfig, csr: Vec<u8>, proof: kcdsync_gss::Proof) -> Result<(), Refused> {
    let channel = match Endpoint::from_shared(url.to_owned())
        .and_then(|e| e.tls_config(tls.clone()))
        .map_err(|e| Refused::Final(e.to_string()))?
        .connect()
        .await
    {
        Ok(c) => c,
        Err(_) => return Err(Refused::Retry),
    };
    let r = EnrollmentServiceClient::new(channel)
        .enroll(EnrollRequest {
            csr,
            proof: Some(enroll_request::Proof::Kerberos(KerberosProof {
                token: proof.token,
                csr_mic: proof.mic,
            })),
        })
        .await;
    match r {
        Ok(_) => Ok(()),
        // Busy: refused before the token was looked at, so the same one may be sent again (a
        // token the controller verified would be a replay).
        Err(s) if s.code() == tonic::Code::ResourceExhausted => Err(Refused::Retry),
        Err(s) => Err(Refused::Final(format!("{:?}: {}", s.code(), s.message()))),
    }
}

/// The Kerberos part alone: N principals each get a TGT and a service ticket, `concurrency` at
/// a time, fresh caches named for `round`.
async fn floor(
    realm: &str,
    keytab: &Path,
    spn: &str,
    csrs: &[Vec<u8>],
    (n, concurrency): (usize, usize),
    round: &str,
    kdc_retries: &Arc<AtomicUsize>,
) -> Result<Duration> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, csr) in csrs.iter().enumerate().take(n + 1).skip(1) {
        let (sem, spn, csr) = (sem.clone(), spn.to_owned(), csr.clone());
        let (c, kdc) = (creds(i, realm, keytab, round), kdc_retries.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            initiate(c, spn, csr, kdc).await.map(drop)
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(t.elapsed())
}
