//! `drift`: how fast a running `kcdsync-controller serve` repairs out-of-band
//! changes, and what watching AD costs the DC.
//!
//! Per fleet size: N converged hosts are seeded (groups of 16, full mesh,
//! protocol transition on) and `serve` is started on them (its real binary,
//! a SQLite store, change notifications on, the interval timer at its
//! default). Then, per round, k random hosts lose protocol transition in one
//! `ldapmodify` (the out-of-band change); the latency of each is the time
//! from that `ldapmodify`'s return (every change committed) to the audit row
//! of its repair (written after the read-back that verified it). The floor
//! of the repair is the same k compare-and-swap modifies done by one
//! `ldapmodify` on k identical computers outside the scope, in the same
//! round. What `serve` asked of AD comes from its own OTLP metrics
//! (`kcdsync.ldap.operations`, `kcdsync.ldap.entries`), exported every
//! 500 ms to an in-process receiver; the duration of its reconcile runs from
//! its `reconcile` spans.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kcdsync_controller::config::Config;
use kcdsync_controller::ldap::Ad;
use kcdsync_controller::store::{Store, now_ms};
use kcdsync_tests::otlp::Receiver;
use kcdsync_tests::{Lab, T2A4D, WORKSTATION};

use super::{fleet_config, ldap_tool, name, percentile, seed, seed_as, timed};

/// Name prefix of the floor's computers (outside the scope).
const FLOOR: &str = "BFL";

pub struct Args {
    pub sizes: Vec<usize>,
    pub changes: Vec<usize>,
    pub rounds: usize,
    pub idle: Duration,
    pub controller: PathBuf,
}

/// What one size measured.
struct Report {
    n: usize,
    by_k: Vec<(usize, KReport)>,
    idle: Ops,
    idle_secs: f64,
    cursor_read: Duration,
    delta_noop: Duration,
    full_read: Duration,
    ldapsearch: Duration,
}

struct KReport {
    latencies_ms: Vec<i64>,
    floor: Duration,
    repair: Duration,
    ops: Ops,
}

/// LDAP work `serve` reported (differences of its cumulative counters).
#[derive(Debug, Default, Clone, Copy)]
struct Ops {
    searches: f64,
    entries: f64,
    modifies: f64,
    binds: f64,
}

pub fn run(args: Args) -> Result<()> {
    let lab = Lab::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let receiver = rt.block_on(Receiver::start());
    let mut reports = Vec::new();
    for &n in &args.sizes {
        reports.push(one_size(lab, &rt, &receiver, &args, n)?);
    }
    print(&args, &reports);
    Ok(())
}

fn one_size(lab: &Lab, rt: &tokio::runtime::Runtime, receiver: &Receiver, args: &Args, n: usize) -> Result<Report> {
    let ou = format!("OU=bench-drift,{}", lab.fleet_ou());
    let floor_ou = format!("OU=bench-drift-floor,{}", lab.fleet_ou());
    let kmax = args.changes.iter().copied().max().unwrap_or(1);
    ensure!(kmax <= n, "cannot change {kmax} of {n} hosts");
    let (groups, _) = seed(lab, &ou, n, 16, WORKSTATION | T2A4D)?;
    seed_as(lab, &floor_ou, kmax, 16, WORKSTATION | T2A4D, FLOOR)?;

    let work = tempfile::tempdir()?;
    let db = work.path().join("kcdsync.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let mut cfg = fleet_config(lab, &ou, &groups, n);
    cfg.push_str(&format!("\n[store]\nurl = \"{url}\"\n"));
    let cfg_path = work.path().join("kcdsync.toml");
    std::fs::write(&cfg_path, &cfg)?;
    let log = work.path().join("serve.log");

    let mut serve = Serve::start(&args.controller, &cfg_path, &log, &receiver.endpoint())?;
    let t = Instant::now();
    serve.wait_for("watching AD for changes", Duration::from_secs(900))?;
    eprintln!(
        "[{n}] serve observed {n} hosts and is watching after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The registrations' own wake-ups settle.
    std::thread::sleep(Duration::from_secs(3));
    let store = rt.block_on(Store::open(&url))?;
    let admin = (lab.var("LAB_ADMIN_DN"), lab.var("LAB_ADMIN_PASS_FILE"));
    let svc = (lab.var("LAB_SVC_DN"), lab.var("LAB_SVC_PASS_FILE"));

    let mut rng = Lcg::new();
    let mut floor_on = true;
    let mut by_k = Vec::new();
    for &k in &args.changes {
        let mut kr = KReport {
            latencies_ms: Vec::new(),
            floor: Duration::ZERO,
            repair: Duration::ZERO,
            ops: Ops::default(),
        };
        let (mut floors, mut repairs, mut ops) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..args.rounds {
            // The floor: the repair's writes, by one ldapmodify, on computers outside the scope.
            let (from, to) = if floor_on {
                (WORKSTATION | T2A4D, WORKSTATION)
            } else {
                (WORKSTATION, WORKSTATION | T2A4D)
            };
            floor_on = !floor_on;
            let floor_dns: Vec<String> = (0..k).map(|i| format!("CN={FLOOR}{i:05},{floor_ou}")).collect();
            let (t, _) = timed(|| {
                ldap_tool(
                    lab,
                    "ldapmodify",
                    svc.0,
                    svc.1,
                    &[],
                    Some(&cas_ldif(&floor_dns, from, to)),
                )
            })?;
            floors.push(t);
            std::thread::sleep(Duration::from_millis(1500));

            let hosts = rng.pick(k, n);
            let dns: Vec<String> = hosts.iter().map(|&i| format!("CN={},{ou}", name(i))).collect();
            let names: HashSet<String> = hosts.iter().map(|&i| name(i).to_lowercase()).collect();
            let before = counters(receiver);
            let t_start = now_ms();
            ldap_tool(
                lab,
                "ldapmodify",
                admin.0,
                admin.1,
                &[],
                Some(&cas_ldif(&dns, WORKSTATION | T2A4D, WORKSTATION)),
            )?;
            let t_end = now_ms();
            let repaired = rt.block_on(wait_repaired(&store, &names, t_start, Duration::from_secs(120)));
            let repaired = match repaired {
                Ok(r) => r,
                Err(e) => {
                    serve.dump_tail();
                    return Err(e);
                }
            };
            kr.latencies_ms.extend(repaired.values().map(|&at| at - t_end));
            // Its own writes come back as a notification: let that run finish, then read the
            // counters once more exported.
            std::thread::sleep(Duration::from_millis(2000));
            let after = counters(receiver);
            ops.push(after.minus(&before));
            let runs = reconcile_runs(receiver, t_start);
            repairs.push(runs.iter().filter(|r| r.1 > 0).map(|r| r.0).sum::<Duration>());
            eprintln!(
                "[{n}] k={k} round {}: where the time went: {}",
                r + 1,
                breakdown(receiver, t_start)
            );
            eprintln!(
                "[{n}] k={k} round {}: max latency {} ms, floor {:.0} ms, repair runs {:?}",
                r + 1,
                repaired.values().map(|&at| at - t_end).max().unwrap_or(0),
                t.as_secs_f64() * 1e3,
                runs.iter()
                    .map(|(d, w)| format!("{:.0} ms/{w} written", d.as_secs_f64() * 1e3))
                    .collect::<Vec<_>>()
            );
        }
        kr.floor = super::median(&mut floors);
        kr.repair = super::median(&mut repairs);
        kr.ops = median_ops(&ops);
        by_k.push((k, kr));
    }

    // Idle: nothing changes; what does watching cost per minute?
    let before = counters(receiver);
    let t = Instant::now();
    std::thread::sleep(args.idle);
    let idle_secs = t.elapsed().as_secs_f64();
    let idle = counters(receiver).minus(&before);
    serve.stop();

    // A no-op delta read next to a full read of the scope, in-process, one connection.
    let config = Config::load(&cfg_path)?;
    let (cursor_read, delta_noop, full_read) = rt.block_on(async {
        let ad = Ad::connect(&config.ad).await?;
        let (mut cursors, mut deltas, mut fulls) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..7 {
            // What serve's wake-up costs when nothing was committed: the cursor alone.
            let t = Instant::now();
            let cur = ad.cursor().await?;
            cursors.push(t.elapsed());
            // When something was committed: the cursor and the uSNChanged search.
            let t = Instant::now();
            let cur2 = ad.cursor().await?;
            let changes = ad
                .changes_since(&config.ad.domain_dn, cur2.usn.max(cur.usn) + 1)
                .await?;
            deltas.push(t.elapsed());
            ensure!(
                changes.is_empty(),
                "the no-op delta read found {} changes",
                changes.len()
            );
        }
        for _ in 0..3 {
            let t = Instant::now();
            let o = ad.observe(&config.scope, &[]).await?;
            fulls.push(t.elapsed());
            ensure!(
                o.computers.len() >= n,
                "the full read found {} hosts",
                o.computers.len()
            );
        }
        ad.unbind().await;
        Ok::<_, anyhow::Error>((
            super::median(&mut cursors),
            super::median(&mut deltas),
            super::median(&mut fulls),
        ))
    })?;
    let mut searches = Vec::new();
    for _ in 0..3 {
        let args = [
            "-LLL",
            "-E",
            "pr=500/noprompt",
            "-b",
            &ou,
            "(objectClass=computer)",
            "sAMAccountName",
            "dNSHostName",
            "userAccountControl",
            "msDS-AllowedToDelegateTo",
            "servicePrincipalName",
            "uSNChanged",
        ];
        let (t, _) = timed(|| ldap_tool(lab, "ldapsearch", svc.0, svc.1, &args, None))?;
        searches.push(t);
    }
    let ldapsearch = super::median(&mut searches);
    for o in [&ou, &floor_ou] {
        let _ = ldap_tool(lab, "ldapdelete", admin.0, admin.1, &["-r", o], None);
    }
    Ok(Report {
        n,
        by_k,
        idle,
        idle_secs,
        cursor_read,
        delta_noop,
        full_read,
        ldapsearch,
    })
}

/// The compare-and-swap modify kcdsync makes (delete the old userAccountControl, add the new).
fn cas_ldif(dns: &[String], from: u32, to: u32) -> String {
    dns.iter()
        .map(|dn| {
            format!(
                "dn: {dn}\nchangetype: modify\ndelete: userAccountControl\nuserAccountControl: {from}\n-\nadd: userAccountControl\nuserAccountControl: {to}\n-\n\n"
            )
        })
        .collect()
}

/// Waits until every host of `names` has an audit row written at or after `since`; when.
async fn wait_repaired(
    store: &Store,
    names: &HashSet<String>,
    since: i64,
    timeout: Duration,
) -> Result<HashMap<String, i64>> {
    let deadline = Instant::now() + timeout;
    let mut found: HashMap<String, i64> = HashMap::new();
    loop {
        for r in store.audit_page(None, None, None, names.len() as i64 * 2 + 50).await? {
            let host = r.host.split('.').next().unwrap_or_default().to_lowercase();
            if r.time_ms >= since && names.contains(&host) {
                let at = found.entry(host).or_insert(r.time_ms);
                *at = (*at).min(r.time_ms);
            }
        }
        if found.len() == names.len() {
            return Ok(found);
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = names.iter().filter(|h| !found.contains_key(*h)).take(5).collect();
            bail!(
                "{} of {} hosts not repaired within {timeout:?}, e.g. {missing:?}",
                names.len() - found.len(),
                names.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The serve reconcile runs that started since `since_ms`: (duration, hosts written).
fn reconcile_runs(receiver: &Receiver, since_ms: i64) -> Vec<(Duration, usize)> {
    let since = since_ms as u64 * 1_000_000;
    let mut runs: Vec<(u64, Duration, usize)> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.name == "reconcile" && s.start_ns >= since)
        .map(|s| {
            let written = s.attr("hosts_changed").and_then(|v| v.parse().ok()).unwrap_or(0);
            (
                s.start_ns,
                Duration::from_nanos(s.end_ns.saturating_sub(s.start_ns)),
                written,
            )
        })
        .collect();
    runs.sort_by_key(|r| r.0);
    runs.into_iter().map(|(_, d, w)| (d, w)).collect()
}

/// Serve's spans since `since_ms`, by name: count and total time (where a run's time goes).
fn breakdown(receiver: &Receiver, since_ms: i64) -> String {
    let since = since_ms as u64 * 1_000_000;
    let mut by: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for s in receiver.spans().into_iter().filter(|s| s.start_ns >= since) {
        let e = by.entry(s.name).or_default();
        e.0 += 1;
        e.1 += s.end_ns.saturating_sub(s.start_ns) as f64 / 1e6;
    }
    by.iter()
        .map(|(n, (c, ms))| format!("{n} {c}x {ms:.0} ms"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The latest exported value of serve's LDAP counters, after waiting for a fresh export.
fn counters(receiver: &Receiver) -> Ops {
    std::thread::sleep(Duration::from_millis(1200));
    let mut last: BTreeMap<(String, Vec<(String, String)>), f64> = BTreeMap::new();
    for m in receiver.metrics() {
        if m.name.starts_with("kcdsync.ldap.") {
            last.insert((m.name.clone(), m.attributes.clone()), m.value);
        }
    }
    let mut ops = Ops::default();
    for ((name, attrs), v) in last {
        let op = attrs.iter().find(|(k, _)| k == "operation").map(|(_, v)| v.as_str());
        match (name.as_str(), op) {
            ("kcdsync.ldap.entries", _) => ops.entries += v,
            ("kcdsync.ldap.operations", Some("search")) => ops.searches += v,
            ("kcdsync.ldap.operations", Some("modify")) => ops.modifies += v,
            ("kcdsync.ldap.operations", Some("bind")) => ops.binds += v,
            _ => {}
        }
    }
    ops
}

impl Ops {
    fn minus(&self, o: &Ops) -> Ops {
        Ops {
            searches: self.searches - o.searches,
            entries: self.entries - o.entries,
            modifies: self.modifies - o.modifies,
            binds: self.binds - o.binds,
        }
    }
}

fn median_ops(v: &[Ops]) -> Ops {
    let med = |f: fn(&Ops) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x.get(x.len() / 2).copied().unwrap_or(0.0)
    };
    Ops {
        searches: med(|o| o.searches),
        entries: med(|o| o.entries),
        modifies: med(|o| o.modifies),
        binds: med(|o| o.binds),
    }
}

/// `kcdsync-controller serve` as a child process, its log in a file.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    fn start(bin: &Path, cfg: &Path, log: &Path, otlp: &str) -> Result<Serve> {
        let file = std::fs::File::create(log)?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(cfg)
            .arg("serve")
            .env("RUST_LOG", "info")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
            .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        Ok(Serve {
            child,
            log: log.to_owned(),
        })
    }

    fn wait_for(&mut self, line: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::read_to_string(&self.log).unwrap_or_default().contains(line) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                self.dump_tail();
                bail!("serve exited ({status}) before logging {line:?}");
            }
            ensure!(
                Instant::now() < deadline,
                "serve did not log {line:?} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn dump_tail(&self) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("--- serve log (last 40 lines) ---");
        for l in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{l}");
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small deterministic generator: the bench needs spread, not secrecy.
struct Lcg(u64);

impl Lcg {
    fn new() -> Lcg {
        Lcg(now_ms() as u64 | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    /// `k` distinct numbers below `n`.
    fn pick(&mut self, k: usize, n: usize) -> Vec<usize> {
        let mut seen = HashSet::new();
        while seen.len() < k {
            seen.insert(self.next() as usize % n);
        }
        seen.into_iter().collect()
    }
}

fn print(args: &Args, reports: &[Report]) {
    println!(
        "drift repair by `{}` serve (change notifications on), {} rounds per k:",
        args.controller.display(),
        args.rounds
    );
    for r in reports {
        println!("  {} hosts:", r.n);
        for (k, kr) in &r.by_k {
            let mut l = kr.latencies_ms.clone();
            l.sort();
            println!(
                "    k={k:<4} commit -> verified repair: p50 {} ms, p99 {} ms, max {} ms (n={}; goal p99 < 2000)",
                percentile(&l, 0.5),
                percentile(&l, 0.99),
                l.last().copied().unwrap_or(0),
                l.len()
            );
            println!(
                "           repair runs {:.0} ms vs the same {k} writes by one ldapmodify {:.0} ms: ratio {:.2} (goal <= 1.2); per round {} searches, {} entries, {} modifies, {} binds",
                kr.repair.as_secs_f64() * 1e3,
                kr.floor.as_secs_f64() * 1e3,
                kr.repair.as_secs_f64() / kr.floor.as_secs_f64(),
                kr.ops.searches,
                kr.ops.entries,
                kr.ops.modifies,
                kr.ops.binds
            );
        }
        let per_min = 60.0 / r.idle_secs;
        println!(
            "    idle: {:.1} searches/min, {:.1} entries/min, {:.1} binds/min over {:.0} s",
            r.idle.searches * per_min,
            r.idle.entries * per_min,
            r.idle.binds * per_min,
            r.idle_secs
        );
        println!(
            "    no-op wake-up (nothing committed: the cursor read) {:.1} ms; delta read finding nothing (cursor + domain-wide uSNChanged search) {:.1} ms; vs full read of the scope {:.0} ms (one paged ldapsearch process {:.0} ms; goal < 50 ms)",
            r.cursor_read.as_secs_f64() * 1e3,
            r.delta_noop.as_secs_f64() * 1e3,
            r.full_read.as_secs_f64() * 1e3,
            r.ldapsearch.as_secs_f64() * 1e3
        );
    }
}
