//! The two-DC lab of `deploy/lab/lab.sh up --dcs 2`: dc1 and dc2 of one domain, replicating
//! both ways, inside a network namespace of their own. Tests in the host namespace reach them
//! through the lab's forwarder on host loopback (`LAB_DCn_LDAPS_URL`, `LAB_DCn_KDC`); see
//! deploy/lab/README.md. Only the tests that need two DCs start it: it costs ~20 s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ldap3::{Ldap, Scope, SearchEntry};

use crate::{ldaps_bind, read_lab_env, repo_root};

/// One of the two DCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dc {
    Dc1,
    Dc2,
}

impl Dc {
    pub fn n(self) -> u8 {
        match self {
            Dc::Dc1 => 1,
            Dc::Dc2 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dc::Dc1 => "dc1",
            Dc::Dc2 => "dc2",
        }
    }
}

/// The running two-DC lab, as described by `$KCDSYNC_LAB2_DIR/lab.env`.
pub struct TwoDcLab {
    pub dir: PathBuf,
    env: BTreeMap<String, String>,
}

impl TwoDcLab {
    /// Starts the two-DC lab once per process; `lab.sh up --dcs 2` takes the lab's lock and
    /// reuses a healthy lab, so test binaries running at once share one.
    pub fn start() -> &'static TwoDcLab {
        static LAB: OnceLock<TwoDcLab> = OnceLock::new();
        LAB.get_or_init(|| TwoDcLab::up().unwrap_or_else(|e| panic!("the two-DC AD lab did not come up: {e:#}")))
    }

    fn up() -> Result<TwoDcLab> {
        let script = repo_root().join("deploy/lab/lab.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(["up", "--dcs", "2"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} up --dcs 2 failed ({}):\n{}\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dir = PathBuf::from(std::env::var("KCDSYNC_LAB2_DIR").unwrap_or_else(|_| "/var/tmp/kcdsync-lab2".into()));
        let env = read_lab_env(&dir.join("lab.env"))?;
        Ok(TwoDcLab { dir, env })
    }

    pub fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("the two-DC lab.env has no {k}"))
    }

    /// `LAB_DCn_<suffix>` of `dc`, e.g. `dc_var(Dc::Dc2, "LDAPS_URL")`.
    pub fn dc_var(&self, dc: Dc, suffix: &str) -> &str {
        self.var(&format!("LAB_DC{}_{suffix}", dc.n()))
    }

    /// LDAPS URL of `dc`, reachable from the host namespace (the lab's forwarder).
    pub fn ldaps_url(&self, dc: Dc) -> &str {
        self.dc_var(dc, "LDAPS_URL")
    }

    /// A krb5.conf naming `dc`'s KDC only: `kvno` with it asks exactly that DC.
    pub fn krb5_conf(&self, dc: Dc) -> &str {
        self.dc_var(dc, "KRB5_CONFIG")
    }

    pub fn base_dn(&self) -> &str {
        self.var("LAB_BASE_DN")
    }

    fn admin_password(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.var("LAB_ADMIN_PASS_FILE"))
            .context("admin password file")?
            .trim()
            .to_owned())
    }

    /// The `[ad]` table of a controller config writing through `dc` as Administrator (the
    /// two-DC lab has no kcdsync-svc account yet; Administrators hold
    /// SeEnableDelegationPrivilege on both DCs), with `extra` keys appended to it.
    pub fn ad_section(&self, dc: Dc, extra: &str) -> String {
        format!(
            "[ad]\nurl = \"{}\"\nca_file = \"{}\"\nbind_dn = \"{}\"\npassword_file = \"{}\"\n{extra}\n",
            self.ldaps_url(dc),
            self.var("LAB_CA"),
            self.var("LAB_ADMIN_DN"),
            self.var("LAB_ADMIN_PASS_FILE"),
        )
    }

    /// Runs `samba-tool drs ARGS` as `dc` sees it (inside the lab's namespace and fence), as
    /// Administrator; its output.
    pub fn drs(&self, dc: Dc, args: &[&str]) -> Result<String> {
        let script = format!(
            "samba-tool drs {} -s \"$LAB_SMB_CONF\" -U \"Administrator%$0\"",
            args.join(" ")
        );
        let out = Command::new(self.dc_var(dc, "EXEC"))
            .args(["sh", "-c", &script, &self.admin_password()?])
            .stdin(Stdio::null())
            .output()
            .context("running samba-tool drs in the lab")?;
        if !out.status.success() {
            bail!(
                "samba-tool drs {} on {} failed: {}{}",
                args.join(" "),
                dc.name(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Switches `dc`'s inbound replication off or back on (the lab's way of making a DC fall
    /// behind while it stays up). Returns a guard that switches it back on when dropped, so a
    /// failing test does not leave the shared lab broken.
    pub fn hold_inbound(&self, dc: Dc) -> Result<InboundHeld<'_>> {
        self.drs(
            dc,
            &[&format!("options {}", dc.name()), "--dsa-option=+DISABLE_INBOUND_REPL"],
        )?;
        Ok(InboundHeld {
            lab: self,
            dc,
            on: true,
        })
    }

    /// Stops `dc`'s samba (`lab.sh stop-dc --dcs 2 N`): its LDAP and KDC are gone, the other DC
    /// runs on. Returns a guard that starts it again when dropped, so a failing test does not
    /// leave the shared lab with one DC.
    pub fn stop_dc(&self, dc: Dc) -> Result<DcStopped<'_>> {
        self.lab_sh(&["stop-dc", "--dcs", "2", &dc.n().to_string()])?;
        Ok(DcStopped {
            lab: self,
            dc,
            stopped: true,
        })
    }

    fn lab_sh(&self, args: &[&str]) -> Result<String> {
        let script = repo_root().join("deploy/lab/lab.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "lab.sh {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `dc` pulls the domain partition from the other DC now (`samba-tool drs replicate`): what
    /// it refused or missed was notified to it then, and is not notified again.
    pub fn pull_domain(&self, dc: Dc) -> Result<()> {
        let from = if dc == Dc::Dc1 { Dc::Dc2 } else { Dc::Dc1 };
        self.drs(
            dc,
            &[&format!("replicate {} {} {}", dc.name(), from.name(), self.base_dn())],
        )?;
        Ok(())
    }

    /// An LDAPS connection to `dc` bound as Administrator (certificate verified).
    pub async fn admin(&self, dc: Dc) -> Result<Ldap> {
        let pw = std::fs::read_to_string(self.var("LAB_ADMIN_PASS_FILE")).context("admin password file")?;
        ldaps_bind(
            self.ldaps_url(dc),
            self.var("LAB_CA"),
            self.var("LAB_ADMIN_DN"),
            pw.trim(),
        )
        .await
        .with_context(|| format!("binding to {} ({})", dc.name(), self.ldaps_url(dc)))
    }
}

/// `dc` stopped until [`DcStopped::start`] or drop.
pub struct DcStopped<'a> {
    lab: &'a TwoDcLab,
    dc: Dc,
    stopped: bool,
}

impl DcStopped<'_> {
    /// Starts the DC again (returns once it answers LDAPS), then pulls the domain partition from
    /// the other DC: what it missed while down was notified to it then, and is not notified
    /// again (without the pull it would wait for the periodic one).
    pub fn start(mut self) -> Result<()> {
        self.stopped = false;
        let lab = self.lab;
        lab.lab_sh(&["start-dc", "--dcs", "2", &self.dc.n().to_string()])?;
        lab.pull_domain(self.dc)
    }
}

impl Drop for DcStopped<'_> {
    fn drop(&mut self) {
        if self.stopped {
            let _ = self.lab.lab_sh(&["start-dc", "--dcs", "2", &self.dc.n().to_string()]);
        }
    }
}

/// `dc`'s inbound replication, off until [`InboundHeld::release`] or drop.
pub struct InboundHeld<'a> {
    lab: &'a TwoDcLab,
    dc: Dc,
    on: bool,
}

impl InboundHeld<'_> {
    /// Inbound replication on again; then pulls the domain partition from the other DC at once
    /// (the change notification dc2 refused while it was off is not sent again: without this,
    /// the change would wait for the periodic pull).
    pub fn release(mut self) -> Result<()> {
        self.on = false;
        let lab = self.lab;
        lab.drs(
            self.dc,
            &[
                &format!("options {}", self.dc.name()),
                "--dsa-option=-DISABLE_INBOUND_REPL",
            ],
        )?;
        lab.pull_domain(self.dc)
    }
}

impl Drop for InboundHeld<'_> {
    fn drop(&mut self) {
        if self.on {
            let _ = self.lab.drs(
                self.dc,
                &[
                    &format!("options {}", self.dc.name()),
                    "--dsa-option=-DISABLE_INBOUND_REPL",
                ],
            );
        }
    }
}

/// Values of `attr` on `dn`, or `None` when the object does not exist (yet).
pub async fn read_attr(ldap: &mut Ldap, dn: &str, attr: &str) -> Result<Option<Vec<String>>> {
    let res = ldap.search(dn, Scope::Base, "(objectClass=*)", vec![attr]).await?;
    if res.1.rc == 32 {
        return Ok(None);
    }
    let (entries, _) = res.success()?;
    Ok(entries.into_iter().next().map(|e| {
        SearchEntry::construct(e)
            .attrs
            .into_iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(attr))
            .map(|(_, v)| v)
            .unwrap_or_default()
    }))
}

/// Polls `dn` on `ldap` (one open connection, every 20 ms) until `ok` holds for its `attr`
/// values (`None`: no such object), and returns how long that took from `since`. Fails after
/// `deadline` with the last value seen.
pub async fn wait_until(
    ldap: &mut Ldap,
    dn: &str,
    attr: &str,
    since: Instant,
    deadline: Duration,
    ok: impl Fn(Option<&[String]>) -> bool,
) -> Result<Duration> {
    loop {
        let seen = read_attr(ldap, dn, attr).await?;
        if ok(seen.as_deref()) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > deadline {
            bail!(
                "{dn} {attr}: still {seen:?} after {:.1} s",
                since.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
