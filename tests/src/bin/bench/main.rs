//! kcdsync-bench: measures the controller against its floor on the real lab.
//!
//! `converge` seeds N hosts in migration groups of 16 (60 delegation values
//! each) in the broken state (entries present, "Kerberos only"), then per
//! round: times one `ldapmodify` of the minimal LDIF that makes the same
//! changes (the floor), resets, times `kcdsync-controller apply`, times a
//! second (no-op) apply and one paged `ldapsearch` of the same attributes.
//! It prints medians and the ratios. Build in release first:
//! `cargo build --release --workspace --bins`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod agents;
mod api;
mod drift;
mod enroll;
mod replication;
mod storm;
mod ui;

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use kcdsync_tests::two_dcs::{Dc, TwoDcLab};
use kcdsync_tests::{Lab, MIGRATION, T2A4D, WORKSTATION};

#[derive(Parser)]
#[command(
    name = "kcdsync-bench",
    about = "Benchmarks kcdsync against its baselines on the lab AD"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Converge N broken hosts vs one ldapmodify; no-op reconcile vs one paged ldapsearch.
    Converge {
        #[arg(long, default_value_t = 2000)]
        hosts: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Members per migration group.
        #[arg(long, default_value_t = 16)]
        group_size: usize,
        /// Leave the seeded OU and the controller config in place (printed) for a closer look.
        #[arg(long)]
        keep: bool,
    },
    /// `serve` running and converged; k random hosts changed out of band with
    /// ldapmodify: commit -> verified repair latency (p50/p99/max), the repair's
    /// cost vs the same writes by one ldapmodify, idle LDAP cost per minute, and a
    /// no-op delta read vs a full read of the scope.
    Drift {
        /// Fleet sizes, measured one after the other in this run.
        #[arg(long, value_delimiter = ',', default_value = "2000")]
        hosts: Vec<usize>,
        /// Hosts changed at once (k), each measured `rounds` times.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        changes: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// How long to watch an idle, converged fleet.
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
        /// The kcdsync-controller binary to measure (default: next to this one), e.g. an
        /// older build for a before/after comparison in one session.
        #[arg(long)]
        controller: Option<PathBuf>,
    },
    /// N agents over mTLS against one controller agent endpoint: memory per
    /// agent, ingest rate, and a real agent's idle RSS.
    Agents {
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        /// Attempt messages each agent sends in the ingest phase.
        #[arg(long, default_value_t = 10)]
        messages: usize,
        /// The kcdsync-agent binary, for the idle RSS figure (default: next to this one).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
        /// Stores to run the ingest against, one after the other in this run.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "sqlite")]
        stores: Vec<agents::StoreKind>,
    },
    /// N agents keep sending attempts, then all renew their certificates over their streams
    /// within --spread-secs: renewal latency p50/p99/max, refusals, and the ingest rate during
    /// the storm vs without renewals (before and after, same run). No AD needed.
    RenewalStorm {
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        /// Length of each ingest-only phase (before and after the storm).
        #[arg(long, default_value_t = 60)]
        phase_secs: u64,
        /// The renewal requests are spread uniformly over this.
        #[arg(long, default_value_t = 60)]
        spread_secs: u64,
        /// Total attempt messages/s the agents offer; 0: each agent sends the next as soon as
        /// the previous is acknowledged (saturates the ingest).
        #[arg(long, default_value_t = 0)]
        ingest_rate: u64,
        /// TLS handshakes in flight while connecting (the endpoint allows 64 per client IP).
        #[arg(long, default_value_t = 64)]
        connect_parallel: usize,
        /// Run the storm against the agent endpoint of this kcdsync-bench binary (an older
        /// build); repeat for several, one after the other (default: this one).
        #[arg(long = "endpoint-exe")]
        endpoint_exes: Vec<PathBuf>,
    },
    /// CheckMigration p99 and ReadinessMatrix latency over the real API with
    /// N hosts known while N agents keep reporting.
    Api {
        #[arg(long, default_value_t = 2000)]
        hosts: usize,
        #[arg(long, default_value_t = 16)]
        group_size: usize,
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// Each agent sends a report this often (ms).
        #[arg(long, default_value_t = 1000)]
        report_every_ms: u64,
    },
    /// The dashboard at N hosts in headless Chromium: first byte and full load of
    /// each page; GetExposure over the fleet next to ListHosts.
    Ui {
        #[arg(long, default_value_t = 2000)]
        hosts: usize,
        #[arg(long, default_value_t = 16)]
        group_size: usize,
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// A no-op reconcile of N hosts with OTLP export on vs off.
    OtelOverhead {
        #[arg(long, default_value_t = 2000)]
        hosts: usize,
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// Two replicas on PostgreSQL; kill -9 the leader N times; takeover times.
    Takeover {
        #[arg(long, default_value_t = 10)]
        kills: usize,
        #[arg(long, default_value_t = 3)]
        ttl_secs: u64,
    },
    /// Two-DC lab: `serve` converges N broken hosts through dc1 and records when each change
    /// reaches dc2; against a plain poll of the same objects on dc2 (raw replication latency),
    /// in the same run.
    Replication {
        #[arg(long, default_value_t = 2000)]
        hosts: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Members per migration group.
        #[arg(long, default_value_t = 16)]
        group_size: usize,
        /// Leave the seeded OU in place (printed).
        #[arg(long)]
        keep: bool,
    },
    /// N agents enrolling by Kerberos at once (lab KDC + `serve` in its own process): time to
    /// all enrolled next to the Kerberos floor (N TGTs + service tickets alone), the controller's
    /// CPU per enrollment and the KDC's share, in the same run.
    Enroll {
        /// Agent counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        agents: Vec<usize>,
        /// Agents asking at the same time (client threads).
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// The controller binary (default: beside this one).
        #[arg(long)]
        controller: Option<PathBuf>,
    },
    /// (internal) Runs no-op reconciles in-process and prints their median (ms).
    #[command(hide = true)]
    OtelChild {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        rounds: usize,
    },
    /// (internal) The agent endpoint child process of `agents`.
    #[command(hide = true)]
    AgentEndpoint {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        store: String,
        /// Renew agents' certificates with `ca.pem` + `ca.key` in `dir`.
        #[arg(long)]
        renew: bool,
    },
}

const OU: &str = "bench";

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Converge {
            hosts,
            rounds,
            group_size,
            keep,
        } => converge(hosts, rounds, group_size, keep),
        Cmd::Drift {
            hosts,
            changes,
            rounds,
            idle_secs,
            controller,
        } => drift::run(drift::Args {
            sizes: hosts,
            changes,
            rounds,
            idle: Duration::from_secs(idle_secs),
            controller: match controller {
                Some(c) => c,
                None => controller_bin()?,
            },
        }),
        Cmd::Agents {
            agents,
            messages,
            agent_bin,
            stores,
        } => {
            let bin = agent_bin.or_else(|| {
                let b = std::env::current_exe().ok()?.parent()?.join("kcdsync-agent");
                b.is_file().then_some(b)
            });
            agents::run(agents, messages, bin, &stores)
        }
        Cmd::RenewalStorm {
            agents,
            phase_secs,
            spread_secs,
            ingest_rate,
            connect_parallel,
            endpoint_exes,
        } => storm::run(storm::Args {
            agents,
            phase_secs,
            spread_secs,
            ingest_rate,
            connect_parallel,
            endpoint_exes,
        }),
        Cmd::AgentEndpoint { dir, store, renew } => agents::endpoint(&dir, &store, renew),
        Cmd::Replication {
            hosts,
            rounds,
            group_size,
            keep,
        } => replication::run(replication::Args {
            hosts,
            rounds,
            group_size,
            keep,
        }),
        Cmd::Enroll {
            agents,
            concurrency,
            controller,
        } => enroll::run(enroll::Args {
            sizes: agents,
            concurrency,
            controller: match controller {
                Some(c) => c,
                None => controller_bin()?,
            },
        }),
        Cmd::OtelOverhead { hosts, rounds } => otel_overhead(hosts, rounds),
        Cmd::OtelChild { config, rounds } => otel_child(&config, rounds),
        Cmd::Takeover { kills, ttl_secs } => takeover(kills, ttl_secs),
        Cmd::Api {
            hosts,
            group_size,
            calls,
            report_every_ms,
        } => api::run(hosts, group_size, calls, Duration::from_millis(report_every_ms)),
        Cmd::Ui {
            hosts,
            group_size,
            rounds,
        } => ui::run(hosts, group_size, rounds),
    }
}

pub fn name(i: usize) -> String {
    format!("BCH{i:05}")
}

/// The DC the OpenLDAP tools and the seed talk to, and its domain's admin: the one-DC lab, or
/// one DC of the two-DC lab ([`OnDc`]).
pub trait Directory {
    fn ldaps_url(&self) -> &str;
    fn ca_file(&self) -> &str;
    fn admin_dn(&self) -> &str;
    fn admin_pw_file(&self) -> &str;
    /// The Kerberos realm (the DNS domain, upper case).
    fn realm_name(&self) -> &str;
}

impl Directory for Lab {
    fn ldaps_url(&self) -> &str {
        self.var("LAB_LDAPS_URL")
    }
    fn ca_file(&self) -> &str {
        self.ca()
    }
    fn admin_dn(&self) -> &str {
        self.var("LAB_ADMIN_DN")
    }
    fn admin_pw_file(&self) -> &str {
        self.var("LAB_ADMIN_PASS_FILE")
    }
    fn realm_name(&self) -> &str {
        self.realm()
    }
}

/// One DC of the two-DC lab.
pub struct OnDc<'a>(pub &'a TwoDcLab, pub Dc);

impl Directory for OnDc<'_> {
    fn ldaps_url(&self) -> &str {
        self.0.ldaps_url(self.1)
    }
    fn ca_file(&self) -> &str {
        self.0.var("LAB_CA")
    }
    fn admin_dn(&self) -> &str {
        self.0.var("LAB_ADMIN_DN")
    }
    fn admin_pw_file(&self) -> &str {
        self.0.var("LAB_ADMIN_PASS_FILE")
    }
    fn realm_name(&self) -> &str {
        self.0.var("LAB_REALM")
    }
}

/// Runs an OpenLDAP client tool bound as `dn`; `input` is LDIF, passed as a
/// file (a pipe would deadlock against the tool's own output).
pub fn ldap_tool(
    lab: &impl Directory,
    tool: &str,
    dn: &str,
    pw_file: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String> {
    let file = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new(tool);
    cmd.args(["-x", "-H", lab.ldaps_url(), "-D", dn, "-y", pw_file])
        .args(args)
        .env("LDAPTLS_CACERT", lab.ca_file())
        .env("LDAPTLS_REQCERT", "demand")
        .stdin(Stdio::null());
    if let Some(i) = input {
        std::fs::write(file.path(), i)?;
        cmd.arg("-f").arg(file.path());
    }
    let out = cmd.output().with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed(), v))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The `p` quantile (0..=1) of `sorted`, nearest rank; 0 when empty.
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn highest_usn(lab: &Lab) -> Result<i64> {
    let out = ldap_tool(
        lab,
        "ldapsearch",
        lab.var("LAB_ADMIN_DN"),
        lab.var("LAB_ADMIN_PASS_FILE"),
        &["-LLL", "-s", "base", "-b", "", "highestCommittedUSN"],
        None,
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("highestCommittedUSN: "))
        .and_then(|v| v.trim().parse().ok())
        .context("rootDSE has no highestCommittedUSN")
}

fn converge(n: usize, rounds: usize, group_size: usize, keep: bool) -> Result<()> {
    ensure!(
        n >= group_size && group_size >= 2,
        "need at least one group of 2 or more hosts"
    );
    let lab = Lab::start();
    let ou_dn = format!("OU={OU},{}", lab.fleet_ou());
    let (admin, admin_pw) = (lab.var("LAB_ADMIN_DN"), lab.var("LAB_ADMIN_PASS_FILE"));
    let (svc, svc_pw) = (lab.var("LAB_SVC_DN"), lab.var("LAB_SVC_PASS_FILE"));

    let (groups, values) = seed(lab, &ou_dn, n, group_size, WORKSTATION)?;

    // The floor: the minimal LDIF making the same change, one ldapmodify.
    let mut minimal = String::new();
    let mut reset = String::new();
    for i in 0..n {
        let dn = format!("CN={},{ou_dn}", name(i));
        minimal.push_str(&format!(
            "dn: {dn}\nchangetype: modify\ndelete: userAccountControl\nuserAccountControl: {WORKSTATION}\n-\nadd: userAccountControl\nuserAccountControl: {}\n-\n\n",
            WORKSTATION | T2A4D
        ));
        reset.push_str(&format!(
            "dn: {dn}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: {WORKSTATION}\n-\n\n"
        ));
    }

    let work = tempfile::tempdir()?;
    let cfg = fleet_config(lab, &ou_dn, &groups, n);
    let cfg_path = work.path().join("kcdsync.toml");
    std::fs::write(&cfg_path, cfg)?;
    let bin = controller_bin()?;
    let apply = |path: &Path| -> Result<serde_json::Value> {
        let out = Command::new(&bin)
            .args(["--config"])
            .arg(path)
            .args(["apply", "--output", "json"])
            .env("RUST_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!(
                "kcdsync-controller apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };

    let attrs = [
        "sAMAccountName",
        "dNSHostName",
        "userAccountControl",
        "msDS-AllowedToDelegateTo",
        "servicePrincipalName",
        "uSNChanged",
    ];
    let (mut floor, mut conv, mut noop, mut search) = (vec![], vec![], vec![], vec![]);
    for r in 1..=rounds {
        ldap_tool(lab, "ldapmodify", admin, admin_pw, &[], Some(&reset))?;
        let (t, _) = timed(|| ldap_tool(lab, "ldapmodify", svc, svc_pw, &[], Some(&minimal)))?;
        floor.push(t);

        ldap_tool(lab, "ldapmodify", admin, admin_pw, &[], Some(&reset))?;
        let (t, v) = timed(|| apply(&cfg_path))?;
        let written = v["applied"].as_array().map(Vec::len).unwrap_or(0);
        ensure!(
            written == n,
            "round {r}: the controller wrote {written} hosts, expected {n}"
        );
        conv.push(t);

        let usn = highest_usn(lab)?;
        let (t, v) = timed(|| apply(&cfg_path))?;
        ensure!(
            v["applied"].as_array().is_some_and(Vec::is_empty),
            "round {r}: the no-op apply wrote something"
        );
        ensure!(
            highest_usn(lab)? == usn,
            "round {r}: the no-op apply changed AD (highestCommittedUSN moved)"
        );
        noop.push(t);

        let mut args = vec!["-LLL", "-E", "pr=500/noprompt", "-b", &ou_dn, "(objectClass=computer)"];
        args.extend(attrs);
        let (t, out) = timed(|| ldap_tool(lab, "ldapsearch", svc, svc_pw, &args, None))?;
        ensure!(
            out.matches("\ndn: ").count() + 1 >= n,
            "round {r}: ldapsearch returned too few entries"
        );
        search.push(t);
        eprintln!(
            "round {r}: ldapmodify {:.2} s, converge {:.2} s, no-op {:.3} s, ldapsearch {:.3} s",
            floor[r - 1].as_secs_f64(),
            conv[r - 1].as_secs_f64(),
            noop[r - 1].as_secs_f64(),
            search[r - 1].as_secs_f64()
        );
    }
    let (f, c, o, s) = (
        median(&mut floor),
        median(&mut conv),
        median(&mut noop),
        median(&mut search),
    );
    println!(
        "converge {n} hosts ({} groups of {group_size}, {values} delegation values), median of {rounds} rounds:",
        groups.len()
    );
    println!(
        "  kcdsync-controller apply  {:>8.3} s   vs one ldapmodify {:>8.3} s   ratio {:.2} (target <= 1.30)",
        c.as_secs_f64(),
        f.as_secs_f64(),
        c.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "  no-op reconcile           {:>8.3} s   vs one paged ldapsearch {:>8.3} s   ratio {:.2} (target <= 1.50), 0 writes",
        o.as_secs_f64(),
        s.as_secs_f64(),
        o.as_secs_f64() / s.as_secs_f64()
    );
    if keep {
        let kept = work.keep();
        println!("kept {ou_dn} and the config {}", kept.join("kcdsync.toml").display());
    } else {
        let _ = ldap_tool(lab, "ldapdelete", admin, admin_pw, &["-r", &ou_dn], None);
    }
    Ok(())
}

/// Seeds `n` computers under `ou_dn` (recreated) in groups of `group_size`,
/// every host delegating to all its group peers, with userAccountControl
/// `uac`. Returns the groups (host indexes) and the number of values.
pub fn seed(lab: &Lab, ou_dn: &str, n: usize, group_size: usize, uac: u32) -> Result<(Vec<Vec<usize>>, usize)> {
    seed_as(lab, ou_dn, n, group_size, uac, "BCH")
}

/// [`seed`] with another name prefix (SPNs are unique domain-wide: two seeded OUs need two).
pub fn seed_as(
    lab: &impl Directory,
    ou_dn: &str,
    n: usize,
    group_size: usize,
    uac: u32,
    prefix: &str,
) -> Result<(Vec<Vec<usize>>, usize)> {
    let name = |i: usize| format!("{prefix}{i:05}");
    let domain = lab.realm_name().to_lowercase();
    let (admin, admin_pw) = (lab.admin_dn(), lab.admin_pw_file());
    // Seed: N computers, groups of `group_size`, full mesh, userAccountControl as given.
    eprintln!("seeding {n} hosts in groups of {group_size} under {ou_dn} ...");
    let _ = ldap_tool(lab, "ldapdelete", admin, admin_pw, &["-r", ou_dn], None);
    let ou_name = ou_dn.split(',').next().unwrap_or_default().trim_start_matches("OU=");
    let mut ldif = format!("dn: {ou_dn}\nobjectClass: organizationalUnit\nou: {ou_name}\n\n");
    let groups: Vec<Vec<usize>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(group_size)
        .map(|c| c.to_vec())
        .collect();
    let mut values = 0;
    for g in &groups {
        for &i in g {
            let nb = name(i);
            let fqdn = format!("{}.{domain}", nb.to_lowercase());
            ldif.push_str(&format!(
                "dn: CN={nb},{ou_dn}\nobjectClass: computer\nsAMAccountName: {nb}$\ndNSHostName: {fqdn}\nuserAccountControl: {uac}\n"
            ));
            for spn in [
                format!("cifs/{fqdn}"),
                format!("cifs/{nb}"),
                format!("{MIGRATION}/{fqdn}"),
                format!("{MIGRATION}/{nb}"),
            ] {
                ldif.push_str(&format!("servicePrincipalName: {spn}\n"));
            }
            for &p in g.iter().filter(|&&p| p != i) {
                let pnb = name(p);
                let pf = format!("{}.{domain}", pnb.to_lowercase());
                for e in [
                    format!("{MIGRATION}/{pf}"),
                    format!("{MIGRATION}/{pnb}"),
                    format!("cifs/{pf}"),
                    format!("cifs/{pnb}"),
                ] {
                    ldif.push_str(&format!("msDS-AllowedToDelegateTo: {e}\n"));
                    values += 1;
                }
            }
            ldif.push('\n');
        }
    }
    let (t, _) = timed(|| ldap_tool(lab, "ldapadd", admin, admin_pw, &[], Some(&ldif)))?;
    eprintln!(
        "seeded in {:.1} s ({} delegation values, {:.0} per host)",
        t.as_secs_f64(),
        values,
        values as f64 / n as f64
    );

    Ok((groups, values))
}

/// A controller config for the seeded fleet: every group, enforce, a guard
/// wide enough for all hosts.
pub fn fleet_config(lab: &Lab, ou_dn: &str, groups: &[Vec<usize>], n: usize) -> String {
    fleet_config_as(
        lab.ad_section(kcdsync_tests::BindAs::Svc),
        lab.realm(),
        ou_dn,
        groups,
        n,
        "BCH",
    )
}

/// [`fleet_config`] with its `[ad]` table given, for hosts seeded by [`seed_as`] with `prefix`.
pub fn fleet_config_as(
    ad_section: String,
    realm: &str,
    ou_dn: &str,
    groups: &[Vec<usize>],
    n: usize,
    prefix: &str,
) -> String {
    let domain = realm.to_lowercase();
    let mut cfg = ad_section;
    cfg.push_str(&format!(
        "\n[scope]\nbase_dns = [\"{ou_dn}\"]\n\n[guard]\nmax_hosts_per_apply = {n}\n"
    ));
    for (gi, g) in groups.iter().enumerate() {
        let hosts: Vec<String> = g
            .iter()
            .map(|&i| format!("\"{prefix}{i:05}.{domain}\"").to_lowercase())
            .collect();
        cfg.push_str(&format!(
            "\n[[group]]\nname = \"g{gi:04}\"\nmode = \"enforce\"\nfirst_grants = \"auto\"\nhosts = [{}]\n",
            hosts.join(", ")
        ));
    }
    cfg
}

fn controller_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?.join("kcdsync-controller");
    ensure!(
        bin.is_file(),
        "{} is missing: run `cargo build --release --workspace --bins`",
        bin.display()
    );
    Ok(bin)
}

/// `otel-overhead`: a no-op reconcile of N hosts with OTLP export on (to an
/// in-process receiver on loopback) vs off, alternating, in one run.
fn otel_overhead(n: usize, rounds: usize) -> Result<()> {
    let lab = Lab::start();
    let ou_dn = format!("OU=bench-otel,{}", lab.fleet_ou());
    let (groups, _) = seed(lab, &ou_dn, n, 16, WORKSTATION | T2A4D)?;
    let work = tempfile::tempdir()?;
    let cfg_path = work.path().join("kcdsync.toml");
    std::fs::write(&cfg_path, fleet_config(lab, &ou_dn, &groups, n))?;
    let bin = controller_bin()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let receiver = rt.block_on(kcdsync_tests::otlp::Receiver::start());
    let apply = |export: bool| -> Result<Duration> {
        let mut cmd = Command::new(&bin);
        cmd.args(["--config"])
            .arg(&cfg_path)
            .args(["apply", "--output", "json"])
            .env("RUST_LOG", "warn");
        if export {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
        } else {
            cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
        let t = Instant::now();
        let out = cmd.output()?;
        let d = t.elapsed();
        ensure!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(v["applied"].as_array().is_some_and(Vec::is_empty), "not a no-op");
        Ok(d)
    };
    apply(false)?; // warm the store and caches
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate the order so drift in the DC's state hits both alike.
        if r % 2 == 0 {
            off.push(apply(false)?);
            on.push(apply(true)?);
        } else {
            on.push(apply(true)?);
            off.push(apply(false)?);
        }
    }
    let spans = receiver.spans().len();
    ensure!(spans > 0, "the exporter sent no spans");
    let (off_m, on_m) = (median(&mut off), median(&mut on));

    // The reconcile itself, as `serve` runs it: many reconciles in one
    // process, export in the background.
    let exe = std::env::current_exe()?;
    let child = |export: bool| -> Result<f64> {
        let mut cmd = Command::new(&exe);
        cmd.args(["otel-child", "--config"])
            .arg(&cfg_path)
            .args(["--rounds", &rounds.to_string()])
            .env("RUST_LOG", "warn");
        if export {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
        } else {
            cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "otel-child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    let (mut c_off, mut c_on) = (Vec::new(), Vec::new());
    for r in 0..4 {
        if r % 2 == 0 {
            c_off.push(child(false)?);
            c_on.push(child(true)?);
        } else {
            c_on.push(child(true)?);
            c_off.push(child(false)?);
        }
    }
    c_off.sort_by(f64::total_cmp);
    c_on.sort_by(f64::total_cmp);
    let (co, cn) = (c_off[c_off.len() / 2], c_on[c_on.len() / 2]);
    println!("OTLP overhead, no-op reconcile of {n} hosts, export on vs off, alternating, one run:");
    println!(
        "  in a long-running controller ({} reconciles per process, 4 processes each): {co:.1} ms off, {cn:.1} ms on -> {:+.1}% (goal <= 5%)",
        rounds,
        (cn / co - 1.0) * 100.0
    );
    println!(
        "  one-shot `kcdsync-controller apply` process (incl. exporter connect and final flush): {:.3} s off, {:.3} s on -> {:+.1}%; {} spans received",
        off_m.as_secs_f64(),
        on_m.as_secs_f64(),
        (on_m.as_secs_f64() / off_m.as_secs_f64() - 1.0) * 100.0,
        receiver.spans().len()
    );
    let admin = (lab.var("LAB_ADMIN_DN"), lab.var("LAB_ADMIN_PASS_FILE"));
    let _ = ldap_tool(lab, "ldapdelete", admin.0, admin.1, &["-r", &ou_dn], None);
    Ok(())
}

fn otel_child(config: &Path, rounds: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let telemetry = kcdsync_telemetry::init("kcdsync-bench", kcdsync_telemetry::LogFormat::Human, "warn");
        let cfg = kcdsync_controller::config::Config::load(config)?;
        let ad = kcdsync_controller::ldap::Ad::connect(&cfg.ad).await?;
        let store = kcdsync_controller::store::Store::open(&cfg.store_url).await?;
        let mut times = Vec::new();
        for i in 0..rounds + 1 {
            let span = tracing::info_span!("reconcile", round = i);
            let t = Instant::now();
            let o = tracing::Instrument::instrument(
                kcdsync_controller::reconcile::reconcile(&cfg, &ad, &store, Default::default()),
                span,
            )
            .await?;
            ensure!(o.applied.is_empty(), "not a no-op");
            if i > 0 {
                times.push(t.elapsed());
            }
        }
        println!("{:.3}", median(&mut times).as_secs_f64() * 1e3);
        telemetry.shutdown();
        Ok(())
    })
}

/// `takeover`: two `kcdsync-controller serve` replicas on one PostgreSQL
/// store; kill -9 the leader `kills` times and measure how long until the
/// other holds the lease.
fn takeover(kills: usize, ttl_secs: u64) -> Result<()> {
    use kcdsync_controller::leader::LEADER_LEASE;
    let lab = Lab::start();
    let db = kcdsync_tests::agents::PgTestDb::create().context("no PostgreSQL: run deploy/pg/pg.sh up")?;
    let fleet_ou = format!("OU=bench-takeover,{}", lab.fleet_ou());
    let (groups, _) = seed(lab, &fleet_ou, 2, 2, WORKSTATION | T2A4D)?;
    let work = tempfile::tempdir()?;
    let base = fleet_config(lab, &fleet_ou, &groups, 2);
    let config = |id: &str| -> Result<PathBuf> {
        let text = base.replace(
            "\n[scope]",
            &format!(
                "\n[store]\nurl = \"{}\"\n\n[replica]\nid = \"{id}\"\nlease_ttl_secs = {ttl_secs}\n\n[scope]",
                db.url
            ),
        );
        let p = work.path().join(format!("{id}.toml"));
        std::fs::write(&p, text)?;
        Ok(p)
    };
    let bin = controller_bin()?;
    let spawn = |id: &str| -> Result<std::process::Child> {
        Ok(Command::new(&bin)
            .arg("--config")
            .arg(config(id)?)
            .arg("serve")
            .env("RUST_LOG", "error")
            .spawn()?)
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let store = rt.block_on(kcdsync_controller::store::Store::open(&db.url))?;
    let lease = || rt.block_on(store.lease(LEADER_LEASE));
    let mut replicas: Vec<(String, std::process::Child)> =
        vec![("r0".into(), spawn("r0")?), ("r1".into(), spawn("r1")?)];
    let mut times = Vec::new();
    for k in 0..kills {
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            ensure!(Instant::now() < deadline, "no leader");
            if let Some(l) = lease()?
                && l.expires_at_ms > kcdsync_controller::store::now_ms()
                && replicas.iter().any(|(id, _)| *id == l.holder)
            {
                break l.holder;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let i = replicas
            .iter()
            .position(|(id, _)| *id == leader)
            .expect("leader is ours");
        let (_, mut child) = replicas.remove(i);
        child.kill()?; // SIGKILL
        let killed = Instant::now();
        let _ = child.wait();
        loop {
            ensure!(killed.elapsed() < Duration::from_secs(30), "no takeover");
            if lease()?.is_some_and(|l| l.holder != leader && l.expires_at_ms > kcdsync_controller::store::now_ms()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        times.push(killed.elapsed());
        eprintln!(
            "kill {}: {} -> takeover after {} ms",
            k + 1,
            leader,
            killed.elapsed().as_millis()
        );
        // A fresh replica joins, so there are always two.
        let id = format!("r{}", k + 2);
        replicas.push((id.clone(), spawn(&id)?));
    }
    for (_, mut c) in replicas {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut ms: Vec<u128> = times.iter().map(|d| d.as_millis()).collect();
    ms.sort();
    println!(
        "takeover after kill -9 of the leader, {kills} kills, lease TTL {ttl_secs} s (renewal every TTL/3): min {} ms, median {} ms, max {} ms; all: {:?}",
        ms[0],
        ms[ms.len() / 2],
        ms[ms.len() - 1],
        ms
    );
    let admin = (lab.var("LAB_ADMIN_DN"), lab.var("LAB_ADMIN_PASS_FILE"));
    let _ = ldap_tool(lab, "ldapdelete", admin.0, admin.1, &["-r", &fleet_ou], None);
    Ok(())
}
