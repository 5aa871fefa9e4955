//! `replication`: how long after a write kcdsync's per-DC verify records it on the other DC,
//! against the raw replication latency measured in the same run.
//!
//! On the two-DC lab, N computers (groups of 16, full mesh, the broken "Kerberos only"
//! state) are seeded in an OU of this run's own through dc1, and awaited on dc2. Per round,
//! `serve` starts in-process (a fresh SQLite store) writing through dc1 and verifying on dc2
//! (`[[ad.dc]]`, a deadline far away), and converges the N hosts; at the same moment a plain
//! poll of the same objects on dc2 starts (its own LDAPS connection, reading
//! userAccountControl in a tight loop, by paged search or by per-object reads, whichever
//! sweeps faster), recording when each object first shows protocol transition.
//!
//! kcdsync's record of each object on dc2 is the store's `replication` row (`arrived_at`,
//! its lag from `written_at`, the audit row: the write verified on dc1); the floor's is its
//! first sight. Compared: per object, how long after dc2 had the change kcdsync recorded it
//! (what the verify adds); and time-to-all, from serve's start to the last object on dc2 vs
//! to kcdsync's last record. A run audits a chunk of hosts at a time (applied and verified on
//! dc1), so raw latency from the audit row is small, and negative where dc2 had a change before
//! its chunk was audited.
//! Then the OU is set back to broken through dc1 and awaited on dc2 for the next round.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use kcdsync_controller::config::Config;
use kcdsync_controller::runtime;
use kcdsync_controller::store::now_ms;
use kcdsync_tests::two_dcs::{Dc, TwoDcLab};
use kcdsync_tests::{T2A4D, WORKSTATION, token};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, Scope, SearchEntry};

use super::{Directory, OnDc, fleet_config_as, ldap_tool, percentile, seed_as};

pub struct Args {
    pub hosts: usize,
    pub rounds: usize,
    pub group_size: usize,
    pub keep: bool,
}

/// How the floor reads dc2.
#[derive(Debug, Clone, Copy)]
enum Sweep {
    /// One paged one-level search of the OU (userAccountControl only).
    Paged,
    /// A base read of each object not seen changed yet, 16 in flight on one connection.
    PerObject,
}

/// Reads in flight of the per-object floor (kcdsync's worker allows 16 too).
const IN_FLIGHT: usize = 16;

/// What one round measured, in ms, per object (sorted) unless said.
struct Round {
    /// Raw: first seen on dc2 by the floor, minus the host's audit row (negative when dc2 had
    /// the change before kcdsync's run wrote its audit).
    raw: Vec<i64>,
    /// kcdsync: recorded on dc2 minus the audit row (`kcdsync.replication.lag`).
    kcdsync: Vec<i64>,
    /// kcdsync's record minus the floor's first sight on dc2, per object: what the verify adds.
    diff: Vec<i64>,
    /// From serve's start to the last object on dc2 (floor) / recorded by kcdsync.
    raw_all: i64,
    kcdsync_all: i64,
    /// serve start -> first audit row; first -> last audit row.
    to_first_audit: i64,
    audit_span: i64,
    /// serve start -> first object on dc2 (floor).
    to_first_on_dc2: i64,
    /// Floor sweeps: how many, and their mean duration (its resolution).
    sweeps: usize,
    sweep_ms: f64,
}

pub fn run(args: Args) -> Result<()> {
    let n = args.hosts;
    ensure!(
        n >= args.group_size && args.group_size >= 2,
        "need at least one group of 2 or more hosts"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let lab = TwoDcLab::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tag = token()[..4].to_uppercase();
    let prefix = format!("R{tag}");
    let ou = format!("OU=kcdsync-replbench-{tag},{}", lab.base_dn());
    let dc1 = OnDc(lab, Dc::Dc1);
    let (groups, values) = seed_as(&dc1, &ou, n, args.group_size, WORKSTATION, &prefix)?;
    let dns: Vec<String> = (0..n).map(|i| format!("CN={prefix}{i:05},{ou}")).collect();

    let result = rt.block_on(async {
        let t = Instant::now();
        wait_dc2(lab, &ou, n, false).await.context("the seed did not reach dc2")?;
        eprintln!("dc2 has the {n} seeded hosts {:.1} s after the seed", t.elapsed().as_secs_f64());
        let sweep = pick_sweep(lab, &ou, &dns).await?;
        let mut rounds = Vec::new();
        for r in 1..=args.rounds {
            if r > 1 {
                reset(&dc1, lab, &ou, &dns).await?;
            }
            let round = one_round(lab, &ou, &dns, &groups, &prefix, sweep).await?;
            eprintln!(
                "round {r}: after serve started: first audit +{} ms, all on dc2 (floor) +{} ms, all recorded by kcdsync +{} ms; \
                 per object, on dc2 -> recorded: {}",
                round.to_first_audit,
                round.raw_all,
                round.kcdsync_all,
                dist(&round.diff)
            );
            rounds.push(round);
        }
        Ok::<_, anyhow::Error>((sweep, rounds))
    });
    if args.keep {
        println!("kept {ou}");
    } else {
        let _ = ldap_tool(
            &dc1,
            "ldapdelete",
            dc1.admin_dn(),
            dc1.admin_pw_file(),
            &["-r", &ou],
            None,
        );
    }
    let (sweep, rounds) = result?;
    print(&args, groups.len(), values, sweep, &rounds);
    Ok(())
}

/// Sets every host back to "Kerberos only" through dc1 and waits until dc2 shows it.
async fn reset(dc1: &OnDc<'_>, lab: &TwoDcLab, ou: &str, dns: &[String]) -> Result<()> {
    let ldif: String = dns
        .iter()
        .map(|dn| {
            format!(
                "dn: {dn}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: {WORKSTATION}\n-\n\n"
            )
        })
        .collect();
    ldap_tool(dc1, "ldapmodify", dc1.admin_dn(), dc1.admin_pw_file(), &[], Some(&ldif))?;
    let t = Instant::now();
    wait_dc2(lab, ou, dns.len(), false).await?;
    eprintln!(
        "reset: dc2 shows all {} hosts broken again after {:.1} s",
        dns.len(),
        t.elapsed().as_secs_f64()
    );
    // Let dc2 settle (replication's tail, the notification of the last batch).
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// Waits (up to 10 minutes) until dc2 has `n` computers in `ou`, all with protocol
/// transition `on` or all without.
async fn wait_dc2(lab: &TwoDcLab, ou: &str, n: usize, on: bool) -> Result<()> {
    let mut dc2 = lab.admin(Dc::Dc2).await?;
    let t = Instant::now();
    loop {
        let seen = paged(&mut dc2, ou).await?;
        let ok = seen.values().filter(|&&(uac, _)| (uac & T2A4D != 0) == on).count();
        if seen.len() == n && ok == n {
            return Ok(());
        }
        ensure!(
            t.elapsed() < Duration::from_secs(600),
            "dc2 shows {} of {n} computers, {ok} as expected, after 10 minutes",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One paged one-level search of `ou`: every computer's userAccountControl and when its
/// entry came in (Unix ms), by lower-case DN.
async fn paged(ldap: &mut Ldap, ou: &str) -> Result<HashMap<String, (u32, i64)>> {
    let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(1000))];
    let mut stream = ldap
        .streaming_search_with(
            adapters,
            ou,
            Scope::OneLevel,
            "(objectClass=computer)",
            vec!["userAccountControl"],
        )
        .await?;
    let mut out = HashMap::new();
    while let Some(e) = stream.next().await? {
        let at = now_ms();
        let e = SearchEntry::construct(e);
        out.insert(e.dn.to_lowercase(), (uac_of(&e), at));
    }
    stream.finish().await.success()?;
    Ok(out)
}

/// Base reads of `dns`, [`IN_FLIGHT`] at a time: userAccountControl and when it came in.
async fn per_object(ldap: &Ldap, dns: Vec<String>) -> Result<HashMap<String, (u32, i64)>> {
    let ldap = ldap.clone();
    let reads: Vec<Result<(String, u32, i64)>> = futures::stream::iter(dns)
        .map(move |dn| {
            let mut l = ldap.clone();
            async move {
                let (rs, _) = l
                    .search(&dn, Scope::Base, "(objectClass=*)", vec!["userAccountControl"])
                    .await?
                    .success()?;
                let at = now_ms();
                let uac = rs
                    .into_iter()
                    .next()
                    .map(|e| uac_of(&SearchEntry::construct(e)))
                    .unwrap_or(0);
                Ok((dn.to_lowercase(), uac, at))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut out = HashMap::new();
    for r in reads {
        let (dn, uac, at) = r?;
        out.insert(dn, (uac, at));
    }
    Ok(out)
}

fn uac_of(e: &SearchEntry) -> u32 {
    e.attrs
        .iter()
        .find(|(a, _)| a.eq_ignore_ascii_case("userAccountControl"))
        .and_then(|(_, v)| v.first())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Times full sweeps of both kinds on dc2 (median of 3) and picks the faster for the floor.
async fn pick_sweep(lab: &TwoDcLab, ou: &str, dns: &[String]) -> Result<Sweep> {
    let mut dc2 = lab.admin(Dc::Dc2).await?;
    let (mut p, mut o) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let seen = paged(&mut dc2, ou).await?;
        p.push(t.elapsed());
        ensure!(seen.len() == dns.len(), "the paged sweep saw {} objects", seen.len());
        let t = Instant::now();
        let seen = per_object(&dc2, dns.to_vec()).await?;
        o.push(t.elapsed());
        ensure!(
            seen.len() == dns.len(),
            "the per-object sweep saw {} objects",
            seen.len()
        );
    }
    let (p, o) = (super::median(&mut p), super::median(&mut o));
    let pick = if p <= o { Sweep::Paged } else { Sweep::PerObject };
    eprintln!(
        "floor: a full sweep of the {} objects on dc2 takes {:.0} ms by paged search, {:.0} ms by per-object reads ({IN_FLIGHT} in flight): polling {pick:?}",
        dns.len(),
        p.as_secs_f64() * 1e3,
        o.as_secs_f64() * 1e3
    );
    let _ = dc2.unbind().await;
    Ok(pick)
}

/// The floor: polls dc2 until every object of `dns` shows protocol transition; when each
/// first did (Unix ms, by lower-case DN), the number of sweeps and their mean duration.
async fn poll_floor(
    mut dc2: Ldap,
    ou: String,
    dns: Vec<String>,
    how: Sweep,
) -> Result<(HashMap<String, i64>, usize, f64)> {
    let mut first: HashMap<String, i64> = HashMap::new();
    let t = Instant::now();
    let mut sweeps = 0;
    while first.len() < dns.len() {
        ensure!(
            t.elapsed() < Duration::from_secs(900),
            "the floor saw {} of {} changes on dc2 in 15 minutes",
            first.len(),
            dns.len()
        );
        let seen = match how {
            Sweep::Paged => paged(&mut dc2, &ou).await?,
            Sweep::PerObject => {
                let left: Vec<String> = dns
                    .iter()
                    .filter(|d| !first.contains_key(&d.to_lowercase()))
                    .cloned()
                    .collect();
                per_object(&dc2, left).await?
            }
        };
        sweeps += 1;
        for (dn, (uac, at)) in seen {
            if uac & T2A4D != 0 {
                first.entry(dn).or_insert(at);
            }
        }
    }
    let per = t.elapsed().as_secs_f64() * 1e3 / sweeps.max(1) as f64;
    let _ = dc2.unbind().await;
    Ok((first, sweeps, per))
}

async fn one_round(
    lab: &TwoDcLab,
    ou: &str,
    dns: &[String],
    groups: &[Vec<usize>],
    prefix: &str,
    how: Sweep,
) -> Result<Round> {
    let n = dns.len();
    let dc2_name = lab.dc_var(Dc::Dc2, "HOST").to_owned();
    let work = tempfile::tempdir()?;
    let url = format!("sqlite://{}?mode=rwc", work.path().join("kcdsync.db").display());
    let extra = format!(
        "replication_deadline_secs = 3600\n[[ad.dc]]\nname = \"{dc2_name}\"\nurl = \"{}\"",
        lab.ldaps_url(Dc::Dc2)
    );
    let mut cfg = fleet_config_as(
        lab.ad_section(Dc::Dc1, &extra),
        lab.var("LAB_REALM"),
        ou,
        groups,
        n,
        prefix,
    );
    cfg.push_str(&format!(
        "\n[store]\nurl = \"{url}\"\n\n[reconcile]\ninterval_secs = 3600\n"
    ));
    let path = work.path().join("kcdsync.toml");
    std::fs::write(&path, &cfg)?;
    let config = Config::load(&path).with_context(|| format!("loading {}", path.display()))?;

    // Both start at the same moment: the floor's connection is open and bound first. The
    // floor does not poll dc1: tried, sweeping dc1 every 200 ms slowed serve's apply of 200
    // hosts three-fold (Samba serves one request at a time).
    let on2 = lab.admin(Dc::Dc2).await?;
    let started = now_ms();
    let floor = tokio::spawn(poll_floor(on2, ou.to_owned(), dns.to_vec(), how));
    let running = runtime::start(config).await?;

    let t = Instant::now();
    let rows = loop {
        let rows: Vec<_> = running
            .store
            .replication_of_plans(0, i64::MAX)
            .await?
            .into_iter()
            .filter(|r| r.dc == dc2_name)
            .collect();
        if rows.len() >= n && rows.iter().all(|r| r.arrived_at_ms.is_some()) {
            break rows;
        }
        if t.elapsed() > Duration::from_secs(900) {
            let arrived = rows.iter().filter(|r| r.arrived_at_ms.is_some()).count();
            running.stop().await;
            bail!(
                "after 15 minutes kcdsync has {} rows for dc2, {arrived} arrived, of {n}",
                rows.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (on2, sweeps, sweep_ms) = floor.await??;
    running.stop().await;

    ensure!(rows.len() == n, "{} replication rows for {n} hosts", rows.len());
    let first_audit = rows.iter().map(|r| r.written_at_ms).min().unwrap_or(started);
    let last_audit = rows.iter().map(|r| r.written_at_ms).max().unwrap_or(started);
    let mut round = Round {
        raw: Vec::new(),
        kcdsync: Vec::new(),
        diff: Vec::new(),
        raw_all: 0,
        kcdsync_all: 0,
        to_first_audit: first_audit - started,
        audit_span: last_audit - first_audit,
        to_first_on_dc2: on2.values().min().copied().unwrap_or(started) - started,
        sweeps,
        sweep_ms,
    };
    for r in &rows {
        let recorded = r.arrived_at_ms.unwrap_or_default();
        let seen = *on2
            .get(&r.dn.to_lowercase())
            .with_context(|| format!("the floor never saw {} change on dc2", r.dn))?;
        round.raw.push(seen - r.written_at_ms);
        round.kcdsync.push(recorded - r.written_at_ms);
        round.diff.push(recorded - seen);
        round.raw_all = round.raw_all.max(seen - started);
        round.kcdsync_all = round.kcdsync_all.max(recorded - started);
    }
    for v in [&mut round.raw, &mut round.kcdsync, &mut round.diff] {
        v.sort();
    }
    Ok(round)
}

fn pct(k: i64, r: i64) -> String {
    if r <= 0 {
        return "n/a".into();
    }
    format!("{:+.0}%", (k - r) as f64 * 100.0 / r as f64)
}

/// "met" when kcdsync adds less than 10% and less than 500 ms.
fn verdict(k: i64, r: i64) -> &'static str {
    let d = k - r;
    if d < 500 && (d as f64) < 0.1 * r.max(0) as f64 {
        "met"
    } else {
        "MISSED"
    }
}

fn line(what: &str, k: i64, r: i64) -> String {
    format!(
        "    {what:<13} raw {r:>6} ms   kcdsync {k:>6} ms   difference {:>+6} ms ({:>5})   goal < 10% and < 500 ms: {}",
        k - r,
        pct(k, r),
        verdict(k, r)
    )
}

fn dist(v: &[i64]) -> String {
    format!(
        "p50 {} ms, p99 {} ms, max {} ms",
        percentile(v, 0.5),
        percentile(v, 0.99),
        v.last().copied().unwrap_or(0)
    )
}

fn print(args: &Args, groups: usize, values: usize, sweep: Sweep, rounds: &[Round]) {
    println!(
        "replication dc1 -> dc2 of {} hosts ({groups} groups of {}, {values} delegation values), {} rounds: serve \
         writes through dc1 and kcdsync's per-DC verify records each change on dc2; the floor polls \
         userAccountControl of the same objects on dc2 ({sweep:?}, its own connection, started with serve)",
        args.hosts,
        args.group_size,
        rounds.len()
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "  round {}: serve start -> first audit row {} ms (all {} within {} ms), -> first change on dc2 {} ms; floor {} sweeps of {:.0} ms",
            i + 1,
            r.to_first_audit,
            r.kcdsync.len(),
            r.audit_span,
            r.to_first_on_dc2,
            r.sweeps,
            r.sweep_ms
        );
        println!("{}", line("time-to-all", r.kcdsync_all, r.raw_all));
        println!("    per object, from its audit row: raw (on dc2) {}", dist(&r.raw));
        println!("                                    kcdsync      {}", dist(&r.kcdsync));
        println!(
            "    per object, on dc2 -> recorded by kcdsync (what the verify adds): {}, min {} ms",
            dist(&r.diff),
            r.diff.first().copied().unwrap_or(0)
        );
    }
    let med = |f: &dyn Fn(&Round) -> i64| {
        let mut v: Vec<i64> = rounds.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    println!("  median of the {} rounds:", rounds.len());
    println!("{}", line("time-to-all", med(&|r| r.kcdsync_all), med(&|r| r.raw_all)));
    println!(
        "    per object, on dc2 -> recorded by kcdsync: p50 {} ms, p99 {} ms, max {} ms (goal < 500 ms)",
        med(&|r| percentile(&r.diff, 0.5)),
        med(&|r| percentile(&r.diff, 0.99)),
        med(&|r| r.diff.last().copied().unwrap_or(0))
    );
    println!(
        "    per object, from the audit row: kcdsync p50 {} ms, p99 {} ms; raw p50 {} ms, p99 {} ms",
        med(&|r| percentile(&r.kcdsync, 0.5)),
        med(&|r| percentile(&r.kcdsync, 0.99)),
        med(&|r| percentile(&r.raw, 0.5)),
        med(&|r| percentile(&r.raw, 0.99))
    );
}
