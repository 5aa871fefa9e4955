//! The integration harness shared by every end-to-end test and benchmark.
//!
//! `Lab::start()` brings up (or reuses) the real Samba AD DC of
//! deploy/lab/lab.sh on loopback. `FleetSpec` builds an isolated fleet of
//! computer objects in an OU of its own under `OU=Hyper-V`, so tests that run
//! in parallel share one DC without touching each other's objects.
//! `Lab::kvno` asks the KDC itself whether S4U2Self + S4U2Proxy succeeds.

pub mod agents;
pub mod browser;
pub mod enrolling;
pub mod keytabs;
pub mod logs;
pub mod otlp;
pub mod proxy;
pub mod rbcd;
pub mod two_dcs;
pub mod wine;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use kcdsync_agent::probe::kerberos::{self, MitKerberos};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};

pub const T2A4D: u32 = 0x1000000;
pub const WORKSTATION: u32 = 0x1000;
pub const MIGRATION: &str = "Microsoft Virtual System Migration Service";

/// The running lab, as described by `$KCDSYNC_LAB_DIR/lab.env`.
pub struct Lab {
    pub dir: PathBuf,
    env: BTreeMap<String, String>,
}

/// Runs `scenario` as a task on a two-worker runtime whose threads have 16 MiB of stack: the
/// poll frames of a long end-to-end scenario (debug build, many inlined `json!` values) outgrow
/// a test thread's 2 MiB.
pub fn run_with_room<F>(scenario: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(16 * 1024 * 1024)
        .enable_all()
        .build()
        .expect("a test runtime")
        .block_on(async { tokio::spawn(scenario).await.expect("the scenario") })
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The last line of a tool's error text (kvno's refusal, say), for a one-line report.
pub fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or_default()
}

/// A unique-enough token for passwords and names; tests need no CSPRNG.
pub fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

impl Lab {
    /// Starts the lab once per process (idempotent across processes too:
    /// `lab.sh up` takes a lock and reuses a healthy lab).
    pub fn start() -> &'static Lab {
        static LAB: OnceLock<Lab> = OnceLock::new();
        LAB.get_or_init(|| Lab::up().unwrap_or_else(|e| panic!("the AD lab did not come up: {e:#}")))
    }

    /// The one-DC lab of Samba 4.22 from Debian's bookworm-backports
    /// (deploy/lab/samba422.sh: an isolated root, its own network namespace, reached through a
    /// forwarder on 127.0.0.1:17xxx), for what Samba 4.17's KDC cannot prove: RBCD. Same domain,
    /// accounts and seed as the shared lab; `LAB_SAMBA_VERSION` says which Samba answered.
    pub fn samba422() -> &'static Lab {
        static LAB: OnceLock<Lab> = OnceLock::new();
        LAB.get_or_init(|| {
            let dir = std::env::var("KCDSYNC_LAB422_DIR").unwrap_or_else(|_| "/var/tmp/kcdsync-lab422".into());
            Lab::up_with("deploy/lab/samba422.sh", PathBuf::from(dir), "host.env").unwrap_or_else(|e| {
                panic!(
                    "the Samba 4.22 lab did not come up: {e:#}\n(its root is built once by \
                     `deploy/lab/samba422.sh root`, which .ci/run and deploy/test.sh run when it is missing)"
                )
            })
        })
    }

    fn up() -> Result<Lab> {
        let dir = std::env::var("KCDSYNC_LAB_DIR").unwrap_or_else(|_| "/var/tmp/kcdsync-lab".into());
        Lab::up_with("deploy/lab/lab.sh", PathBuf::from(dir), "lab.env")
    }

    fn up_with(script: &str, dir: PathBuf, env_file: &str) -> Result<Lab> {
        let script = repo_root().join(script);
        let out = Command::new("bash")
            .arg(&script)
            .arg("up")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} up failed ({}):\n{}\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let env = read_lab_env(&dir.join(env_file))?;
        Ok(Lab { dir, env })
    }

    /// The lab's own script in this worktree (lab.sh, or samba422.sh for the 4.22 lab).
    pub fn script(&self) -> PathBuf {
        repo_root()
            .join("deploy/lab")
            .join(self.env.get("LAB_SCRIPT").map_or("lab.sh", String::as_str))
    }

    /// Runs `args` inside the lab's fence, as the DC sees the world (`lab.sh exec --`): for what
    /// only the DC's own database accepts.
    pub fn exec_on_dc(&self, args: &[&std::ffi::OsStr]) -> std::process::Output {
        Command::new("bash")
            .arg(self.script())
            .args(["exec", "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.script().display()))
    }

    pub fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("lab.env has no {k}"))
    }

    pub fn ca(&self) -> &str {
        self.var("LAB_CA")
    }
    pub fn fleet_ou(&self) -> &str {
        self.var("LAB_FLEET_OU")
    }
    pub fn krb5_conf(&self) -> &str {
        self.var("KRB5_CONFIG")
    }
    pub fn realm(&self) -> &str {
        self.var("LAB_REALM")
    }

    fn admin_password(&self) -> String {
        std::fs::read_to_string(self.var("LAB_ADMIN_PASS_FILE"))
            .expect("admin password file")
            .trim()
            .to_owned()
    }

    /// An LDAPS connection bound as Administrator, for building fixtures
    /// and reading results independently of the code under test.
    pub async fn admin(&self) -> Result<Ldap> {
        ldaps_bind(
            self.var("LAB_LDAPS_URL"),
            self.ca(),
            self.var("LAB_ADMIN_DN"),
            &self.admin_password(),
        )
        .await
    }

    /// The `[ad]` section of a controller config binding as `account`.
    pub fn ad_section(&self, account: BindAs) -> String {
        let (dn, pw) = match account {
            BindAs::Svc => (self.var("LAB_SVC_DN"), self.var("LAB_SVC_PASS_FILE")),
            BindAs::NoPriv => (self.var("LAB_NOPRIV_DN"), self.var("LAB_NOPRIV_PASS_FILE")),
        };
        format!(
            "[ad]\nurl = \"{}\"\nca_file = \"{}\"\nbind_dn = \"{dn}\"\npassword_file = \"{pw}\"\n",
            self.var("LAB_LDAPS_URL"),
            self.ca()
        )
    }

    /// Asks the KDC whether `source` may act for `user` towards `spn`:
    /// S4U2Self then S4U2Proxy, exactly what the source host does for a
    /// live migration. `Ok(())` when the KDC grants it; `Err(message)` with
    /// the KDC's refusal otherwise.
    /// Runs the agent's own Kerberos helper (the simulated probe asks the
    /// KDC the same way), on a thread and runtime of its own: callers are
    /// synchronous code, often inside a `#[tokio::test]` runtime.
    pub fn kvno(&self, source: &TestHost, user: &str, spn: &str) -> std::result::Result<(), String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let krb = MitKerberos {
            krb5_config: self.krb5_conf().into(),
            ccache: format!("FILE:{}", tmp.path().join("cc").display()),
            timeout: std::time::Duration::from_secs(60),
        };
        let principal = format!("{}$@{}", source.netbios, self.realm());
        let verdict = async {
            krb.kinit_password(&principal, &source.password)
                .await
                .map_err(|e| format!("kinit {principal} failed: {}", kerberos::said(&e)))?;
            krb.s4u(user, spn).await.map_err(|e| kerberos::said(&e))
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(verdict)
            })
            .join()
            .map_err(|_| "the kvno thread panicked".to_string())?
        })
    }

    /// Reads a computer object as Administrator (not through the code under test).
    pub async fn read_host(&self, dn: &str) -> Result<HostState> {
        let mut ldap = self.admin().await?;
        let (entries, _) = ldap
            .search(
                dn,
                Scope::Base,
                "(objectClass=*)",
                vec!["userAccountControl", "msDS-AllowedToDelegateTo", "uSNChanged"],
            )
            .await?
            .success()?;
        let e = SearchEntry::construct(entries.into_iter().next().ok_or_else(|| anyhow!("{dn} not found"))?);
        let get = |k: &str| {
            e.attrs
                .iter()
                .find(|(a, _)| a.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let _ = ldap.unbind().await;
        Ok(HostState {
            uac: get("userAccountControl")
                .first()
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0) as u32,
            delegate: get("msDS-AllowedToDelegateTo"),
            usn_changed: get("uSNChanged").first().and_then(|s| s.parse().ok()).unwrap_or(0),
        })
    }

    /// Replaces a host's userAccountControl as Administrator: a concurrent
    /// writer, from the controller's point of view.
    pub async fn set_uac(&self, dn: &str, uac: u32) -> Result<()> {
        let mut ldap = self.admin().await?;
        ldap.modify(
            dn,
            vec![Mod::Replace(
                "userAccountControl",
                HashSet::from([uac.to_string().as_str()]),
            )],
        )
        .await?
        .success()?;
        let _ = ldap.unbind().await;
        Ok(())
    }
}

impl Lab {
    /// Replaces a host's msDS-AllowedToDelegateTo as Administrator.
    pub async fn set_delegation(&self, dn: &str, values: &[String]) -> Result<()> {
        let mut ldap = self.admin().await?;
        let set: HashSet<&str> = values.iter().map(String::as_str).collect();
        ldap.modify(dn, vec![Mod::Replace("msDS-AllowedToDelegateTo", set)])
            .await?
            .success()?;
        let _ = ldap.unbind().await;
        Ok(())
    }
}

/// Reads a lab.env written by deploy/lab/lab.sh (`export K='v'` lines).
pub(crate) fn read_lab_env(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut env = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches("export ").trim();
        if let Some((k, v)) = line.split_once('=') {
            env.insert(k.to_owned(), v.trim_matches(|c| c == '"' || c == '\'').to_owned());
        }
    }
    Ok(env)
}

/// An LDAPS connection to `url`, the server verified against `ca`, bound as `dn`.
pub async fn ldaps_bind(url: &str, ca: &str, dn: &str, password: &str) -> Result<Ldap> {
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        for c in CertificateDer::pem_file_iter(ca)? {
            r.add(c?)?;
        }
        r
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let settings = LdapConnSettings::new().set_config(Arc::new(cfg));
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url).await?;
    ldap3::drive!(conn);
    ldap.simple_bind(dn, password).await?.success()?;
    Ok(ldap)
}

#[derive(Clone, Copy)]
pub enum BindAs {
    /// kcdsync-svc: write access on OU=Hyper-V and SeEnableDelegationPrivilege.
    Svc,
    /// kcdsync-nopriv: the same write access, without the privilege.
    NoPriv,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    pub uac: u32,
    pub delegate: Vec<String>,
    pub usn_changed: i64,
}

#[derive(Debug, Clone)]
pub struct TestHost {
    pub netbios: String,
    pub fqdn: String,
    pub dn: String,
    pub password: String,
}

impl TestHost {
    /// The four entries a peer needs to migrate to this host.
    pub fn entries(&self) -> Vec<String> {
        vec![
            format!("{MIGRATION}/{}", self.fqdn),
            format!("{MIGRATION}/{}", self.netbios),
            format!("cifs/{}", self.fqdn),
            format!("cifs/{}", self.netbios),
        ]
    }
}

/// A user account for S4U tests.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub dn: String,
}

/// A fleet under construction: hosts, their initial delegation, users.
pub struct FleetSpec {
    ou: String,
    hosts: Vec<String>,
    mesh: bool,
    uac: u32,
    extra: Vec<(String, String)>,
    users: Vec<(String, u32)>,
}

/// A fleet built in its own OU.
pub struct Fleet {
    pub ou_dn: String,
    pub hosts: Vec<TestHost>,
    pub users: Vec<TestUser>,
}

impl FleetSpec {
    /// `ou` names the fleet's OU (recreated empty); host names are NetBIOS
    /// names, unique in the domain (use a per-test prefix).
    pub fn new(ou: &str, hosts: &[&str]) -> FleetSpec {
        FleetSpec {
            ou: ou.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            mesh: false,
            uac: WORKSTATION,
            extra: Vec::new(),
            users: Vec::new(),
        }
    }

    /// Every host starts with entries for every peer, "Kerberos only": the
    /// broken state of the problem statement.
    pub fn kerberos_only_mesh(mut self) -> Self {
        self.mesh = true;
        self.uac = WORKSTATION;
        self
    }

    /// Starting userAccountControl of every host.
    pub fn uac(mut self, uac: u32) -> Self {
        self.uac = uac;
        self
    }

    /// One more starting msDS-AllowedToDelegateTo value on `host`.
    pub fn entry(mut self, host: &str, value: &str) -> Self {
        self.extra.push((host.into(), value.into()));
        self
    }

    /// A user (sAMAccountName `name`) with extra userAccountControl bits
    /// (0 for a normal enabled user, 0x100000 sensitive, 0x2 disabled).
    pub fn user(mut self, name: &str, extra_uac: u32) -> Self {
        self.users.push((name.into(), extra_uac));
        self
    }

    pub async fn create(self, lab: &Lab) -> Result<Fleet> {
        self.create_in(lab.admin().await?, lab.fleet_ou(), lab.realm()).await
    }

    /// Builds the fleet in `OU=<ou>,<parent>` over `ldap` (an administrator's connection to
    /// any lab's DC, e.g. the two-DC lab's dc1), in `realm`.
    pub async fn create_in(self, mut ldap: Ldap, parent: &str, realm: &str) -> Result<Fleet> {
        let ou_dn = format!("OU={},{parent}", self.ou);
        delete_subtree(&mut ldap, &ou_dn).await?;
        ldap.add(
            &ou_dn,
            vec![
                ("objectClass", HashSet::from(["organizationalUnit"])),
                ("ou", HashSet::from([self.ou.as_str()])),
            ],
        )
        .await?
        .success()
        .with_context(|| format!("creating {ou_dn}"))?;

        let domain = realm.to_lowercase();
        let hosts: Vec<TestHost> = self
            .hosts
            .iter()
            .map(|n| {
                let netbios = n.to_uppercase();
                TestHost {
                    fqdn: format!("{}.{domain}", n.to_lowercase()),
                    dn: format!("CN={netbios},{ou_dn}"),
                    netbios,
                    password: format!("Kcd-{}-Aa1!", token()),
                }
            })
            .collect();
        for h in &hosts {
            let mut delegate: Vec<String> = Vec::new();
            if self.mesh {
                for p in hosts.iter().filter(|p| p.netbios != h.netbios) {
                    delegate.extend(p.entries());
                }
            }
            for (host, v) in &self.extra {
                if host.eq_ignore_ascii_case(&h.netbios) {
                    delegate.push(v.clone());
                }
            }
            let spns = vec![
                format!("HOST/{}", h.fqdn),
                format!("HOST/{}", h.netbios),
                format!("cifs/{}", h.fqdn),
                format!("cifs/{}", h.netbios),
                format!("{MIGRATION}/{}", h.fqdn),
                format!("{MIGRATION}/{}", h.netbios),
            ];
            let mut attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> = vec![
                (b"objectClass".to_vec(), HashSet::from([b"computer".to_vec()])),
                (
                    b"sAMAccountName".to_vec(),
                    HashSet::from([format!("{}$", h.netbios).into_bytes()]),
                ),
                (b"dNSHostName".to_vec(), HashSet::from([h.fqdn.clone().into_bytes()])),
                (
                    b"userAccountControl".to_vec(),
                    HashSet::from([self.uac.to_string().into_bytes()]),
                ),
                (
                    b"servicePrincipalName".to_vec(),
                    spns.into_iter().map(String::into_bytes).collect(),
                ),
                (b"unicodePwd".to_vec(), HashSet::from([unicode_pwd(&h.password)])),
            ];
            if !delegate.is_empty() {
                attrs.push((
                    b"msDS-AllowedToDelegateTo".to_vec(),
                    delegate.into_iter().map(String::into_bytes).collect(),
                ));
            }
            ldap.add(&h.dn, attrs)
                .await?
                .success()
                .with_context(|| format!("creating {}", h.dn))?;
        }
        let mut users = Vec::new();
        for (name, extra) in &self.users {
            let dn = format!("CN={name},{ou_dn}");
            let pw = format!("Kcd-{}-Aa1!", token());
            let attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> = vec![
                (b"objectClass".to_vec(), HashSet::from([b"user".to_vec()])),
                (b"sAMAccountName".to_vec(), HashSet::from([name.clone().into_bytes()])),
                (
                    b"userPrincipalName".to_vec(),
                    HashSet::from([format!("{name}@{domain}").into_bytes()]),
                ),
                (b"unicodePwd".to_vec(), HashSet::from([unicode_pwd(&pw)])),
                (
                    b"userAccountControl".to_vec(),
                    HashSet::from([(0x200 | extra).to_string().into_bytes()]),
                ),
            ];
            ldap.add(&dn, attrs)
                .await?
                .success()
                .with_context(|| format!("creating {dn}"))?;
            users.push(TestUser { name: name.clone(), dn });
        }
        let _ = ldap.unbind().await;
        Ok(Fleet { ou_dn, hosts, users })
    }
}

impl Fleet {
    pub fn host(&self, netbios: &str) -> &TestHost {
        self.hosts
            .iter()
            .find(|h| h.netbios.eq_ignore_ascii_case(netbios))
            .expect("host in fleet")
    }

    /// A controller config managing exactly this fleet's OU, with one group
    /// holding `members` in `mode`. The group opts out of holding first
    /// grants for approval (`first_grants = "auto"`): most lab tests are
    /// about what gets written; the trust tests use [`Fleet::guarded_config`].
    pub fn config(&self, lab: &Lab, bind: BindAs, mode: &str, members: &[&str], extra: &str) -> String {
        self.group_config(lab, bind, mode, members, extra, "first_grants = \"auto\"\n")
    }

    /// As [`Fleet::config`], with the guard's defaults: a first grant (a host
    /// gaining protocol transition or its first delegation entry) waits for
    /// approval. `group_extra` goes into the `[[group]]` table.
    pub fn guarded_config(&self, lab: &Lab, members: &[&str], group_extra: &str) -> String {
        self.group_config(lab, BindAs::Svc, "enforce", members, "", group_extra)
    }

    fn group_config(
        &self,
        lab: &Lab,
        bind: BindAs,
        mode: &str,
        members: &[&str],
        extra: &str,
        group_extra: &str,
    ) -> String {
        let hosts: Vec<String> = members.iter().map(|m| format!("\"{}\"", m.to_lowercase())).collect();
        format!(
            "{}\n[scope]\nbase_dns = [\"{}\"]\n\n{extra}\n\n[[group]]\nname = \"g\"\nmode = \"{mode}\"\n{group_extra}hosts = [{}]\n",
            lab.ad_section(bind),
            self.ou_dn,
            hosts.join(", ")
        )
    }
}

/// unicodePwd wants the quoted password in UTF-16LE.
pub(crate) fn unicode_pwd(pw: &str) -> Vec<u8> {
    format!("\"{pw}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

/// Deletes `dn` and everything below it (nothing when it does not exist).
pub async fn delete_subtree(ldap: &mut Ldap, dn: &str) -> Result<()> {
    let res = ldap.search(dn, Scope::Subtree, "(objectClass=*)", vec!["1.1"]).await?;
    if res.1.rc == 32 {
        return Ok(());
    }
    let (entries, _) = res.success()?;
    let mut dns: Vec<String> = entries.into_iter().map(|e| SearchEntry::construct(e).dn).collect();
    // Children before parents.
    dns.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for d in dns {
        ldap.delete(&d)
            .await?
            .success()
            .with_context(|| format!("deleting {d}"))?;
    }
    Ok(())
}

/// Writes a secret (token file, private key) private to its owner, as the
/// controller requires (it refuses group/other mode bits).
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(contents.as_ref()).expect("write secret");
}

/// The URL of a SQLite store, `kcdsync.db` in `dir`, created on first use.
pub fn sqlite_in(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("kcdsync.db").display())
}

/// Writes `text` as a config file in a fresh temp dir (which also holds the
/// SQLite store by default) and returns both.
pub fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kcdsync.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

/// A binary of the workspace, built before the tests run (README's test
/// command builds them).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

pub fn controller_bin() -> PathBuf {
    workspace_bin("kcdsync-controller")
}
