//! A Hyper-V host described by a TOML file, for the lab, the demo and the
//! tests. Its migration attempts are written to an event log (JSON lines in
//! the state directory) exactly as a real host's land in the VMMS event log.
//!
//! With a `[kerberos]` section, a migration is a real Kerberos check against
//! the KDC: the host's credentials get a TGT into the host's own ticket cache
//! (its "SYSTEM logon session"), then `kvno -U <account> -P cifs/<peer>`
//! performs S4U2Self + S4U2Proxy. Success or failure is the KDC's verdict.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kcdsync_proto::timestamp_from_ms;
use kcdsync_proto::v1::*;
use serde::{Deserialize, Serialize};

use super::kerberos::{self, MitKerberos};
use super::{Cursor, HostProbe, LogCheck, ProbeError, check_log};
use crate::process::RunError;

/// Limit for each Kerberos tool run.
const KERBEROS_TIMEOUT: Duration = Duration::from_secs(20);

/// SEC_E_NO_CREDENTIALS, what a "Kerberos only" host reports.
pub const SEC_E_NO_CREDENTIALS: u32 = 0x8009030E;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedHost {
    pub fqdn: String,
    pub netbios: String,
    #[serde(default = "default_build")]
    pub os_build: u32,
    #[serde(default)]
    pub credential_guard: bool,
    #[serde(default)]
    pub services: Services,
    #[serde(default)]
    pub migration: Migration,
    pub kerberos: Option<Kerberos>,
}

fn default_build() -> u32 {
    20348
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    #[serde(default = "running")]
    pub vmms: String,
    #[serde(default = "running")]
    pub winrm: String,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            vmms: running(),
            winrm: running(),
        }
    }
}

fn running() -> String {
    "running".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// "kerberos" or "credssp".
    #[serde(default = "kerberos")]
    pub authentication: String,
    #[serde(default = "two")]
    pub maximum_migrations: u32,
    /// "tcpip", "compression" or "smb".
    #[serde(default = "compression")]
    pub performance: String,
    #[serde(default)]
    pub use_any_network: bool,
    #[serde(default)]
    pub networks: Vec<String>,
}

impl Default for Migration {
    fn default() -> Self {
        Migration {
            enabled: true,
            authentication: kerberos(),
            maximum_migrations: 2,
            performance: compression(),
            use_any_network: false,
            networks: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn kerberos() -> String {
    "kerberos".into()
}
fn two() -> u32 {
    2
}
fn compression() -> String {
    "compression".into()
}

/// The host's machine credentials, for real S4U checks against a KDC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kerberos {
    pub krb5_config: PathBuf,
    /// `HV01$@LAB.TEST`
    pub principal: String,
    pub keytab: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
}

/// One line of the simulated event log.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    record_id: u64,
    time_ms: i64,
    vm: String,
    peer: String,
    account: String,
    success: bool,
    error_code: u32,
    message: String,
}

pub struct SimulatedProbe {
    host: SimulatedHost,
    state_dir: PathBuf,
    log: Mutex<()>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl SimulatedProbe {
    /// Reads the host file; the event log and ticket cache live in `state_dir`.
    pub fn load(host_file: &Path, state_dir: &Path) -> Result<SimulatedProbe, ProbeError> {
        let text = std::fs::read_to_string(host_file)
            .map_err(|e| ProbeError::Other(format!("cannot read simulated host file {}: {e}", host_file.display())))?;
        let host: SimulatedHost = toml::from_str(&text)
            .map_err(|e| ProbeError::Other(format!("simulated host file {}: {e}", host_file.display())))?;
        Self::new(host, state_dir)
    }

    pub fn new(host: SimulatedHost, state_dir: &Path) -> Result<SimulatedProbe, ProbeError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| ProbeError::Other(format!("cannot create {}: {e}", state_dir.display())))?;
        Ok(SimulatedProbe {
            host,
            state_dir: state_dir.to_owned(),
            log: Mutex::new(()),
        })
    }

    pub fn host(&self) -> &SimulatedHost {
        &self.host
    }

    fn log_path(&self) -> PathBuf {
        self.state_dir.join("vmms-events.jsonl")
    }

    fn ccache(&self) -> String {
        format!("FILE:{}", self.state_dir.join("system.ccache").display())
    }

    /// A live migration of `vm` to `peer` started by `account`. With
    /// Kerberos configured the KDC decides; without, `outcome` does.
    pub async fn migrate(&self, vm: &str, peer: &str, account: &str, outcome: Option<bool>) -> MigrationAttempt {
        let verdict = match (&self.host.kerberos, outcome) {
            (_, Some(ok)) => {
                if ok {
                    Ok(())
                } else {
                    Err("scripted failure".to_owned())
                }
            }
            (Some(k), None) => self.s4u(k, peer, account).await,
            (None, None) => Err("no Kerberos credentials configured for this simulated host".to_owned()),
        };
        let (success, error_code, message) = match verdict {
            Ok(()) => (
                true,
                0,
                format!(
                    "The Virtual Machine Management service successfully completed the live migration of virtual machine  '{vm}' with a blackout time of 0.4 seconds."
                ),
            ),
            Err(kdc) => (
                false,
                SEC_E_NO_CREDENTIALS,
                format!(
                    "Virtual machine migration operation for '{vm}' failed at migration source '{}'. Failed to establish a connection with host '{peer}': No credentials are available in the security package (0x8009030E). (lab KDC: {kdc})",
                    self.host.netbios
                ),
            ),
        };
        self.record(vm, peer, account, success, error_code, message)
    }

    fn record(
        &self,
        vm: &str,
        peer: &str,
        account: &str,
        success: bool,
        error_code: u32,
        message: String,
    ) -> MigrationAttempt {
        let _guard = self.log.lock().expect("event log lock");
        let record_id = std::fs::read_to_string(self.log_path())
            .map(|s| s.lines().count() as u64)
            .unwrap_or(0)
            + 1;
        let ev = Event {
            record_id,
            time_ms: now_ms(),
            vm: vm.into(),
            peer: peer.into(),
            account: account.into(),
            success,
            error_code,
            message,
        };
        let line = serde_json::to_string(&ev).expect("event serializes");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("simulated event log is writable");
        writeln!(f, "{line}").expect("append to simulated event log");
        self.to_attempt(&ev, None)
    }

    /// `wevtutil cl`: empties the event log; RecordIds start again at 1.
    pub fn clear_log(&self) {
        let _guard = self.log.lock().expect("event log lock");
        let _ = std::fs::remove_file(self.log_path());
    }

    /// The whole event log, oldest first.
    fn events(&self) -> Result<Vec<Event>, ProbeError> {
        let text = match std::fs::read_to_string(self.log_path()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ProbeError::Other(format!("{}: {e}", self.log_path().display()))),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).map_err(|e| ProbeError::Parse {
                    command: self.log_path().display().to_string(),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    fn to_attempt(&self, ev: &Event, generation: Option<i64>) -> MigrationAttempt {
        MigrationAttempt {
            attempt_id: super::attempt_id(&self.host.fqdn, generation, ev.record_id),
            time: Some(timestamp_from_ms(ev.time_ms)),
            vm_name: ev.vm.clone(),
            vm_id: String::new(),
            peer: ev.peer.clone(),
            role: MigrationRole::Source as i32,
            success: ev.success,
            event_id: if ev.success { 20415 } else { 21024 },
            error_code: ev.error_code,
            message: ev.message.clone(),
            account: ev.account.clone(),
            traceparent: String::new(),
        }
    }

    /// The MIT tools on the host's ticket cache (its "SYSTEM logon session").
    fn kerberos(&self, k: &Kerberos) -> MitKerberos {
        MitKerberos {
            krb5_config: k.krb5_config.clone(),
            ccache: self.ccache(),
            timeout: KERBEROS_TIMEOUT,
        }
    }

    /// S4U2Self + S4U2Proxy as the host, through the host's ticket cache;
    /// `Err` with the last line the failing tool printed.
    async fn s4u(&self, k: &Kerberos, peer: &str, account: &str) -> Result<(), String> {
        let krb = self.kerberos(k);
        let last_line = |e: RunError| kerberos::said(&e).lines().last().unwrap_or_default().to_owned();
        if !krb.has_tickets().await {
            let r = match (&k.keytab, &k.password_file) {
                (Some(kt), _) => krb.kinit_keytab(&k.principal, kt).await.map_err(last_line),
                (None, Some(pw)) => {
                    let pw = std::fs::read_to_string(pw).map_err(|e| format!("password file: {e}"))?;
                    krb.kinit_password(&k.principal, pw.trim()).await.map_err(last_line)
                }
                (None, None) => Err("the [kerberos] section needs keytab or password_file".into()),
            };
            r.map_err(|e| format!("kinit {} ({}): {e}", k.principal, krb.ccache))?;
        }
        let spn = format!("cifs/{}", peer.to_lowercase());
        krb.s4u(account, &spn).await.map_err(last_line)
    }

    fn service(name: &str, state: &str) -> ServiceStatus {
        let state = match state.to_ascii_lowercase().as_str() {
            "running" => ServiceState::Running,
            "stopped" => ServiceState::Stopped,
            "paused" => ServiceState::Paused,
            _ => ServiceState::Unspecified,
        };
        ServiceStatus {
            name: name.into(),
            state: state as i32,
            start_mode: StartMode::Automatic as i32,
        }
    }
}

impl HostProbe for SimulatedProbe {
    async fn report(&self) -> HostReport {
        let h = &self.host;
        let m = &h.migration;
        let mut probe_errors = Vec::new();
        let auth = match m.authentication.to_ascii_lowercase().as_str() {
            "kerberos" => MigrationAuthType::Kerberos,
            "credssp" => MigrationAuthType::Credssp,
            other => {
                probe_errors.push(format!("migration.authentication `{other}` is not kerberos or credssp"));
                MigrationAuthType::Unspecified
            }
        };
        let perf = match m.performance.to_ascii_lowercase().as_str() {
            "tcpip" => MigrationPerformance::Tcpip,
            "compression" => MigrationPerformance::Compression,
            "smb" => MigrationPerformance::Smb,
            _ => MigrationPerformance::Unspecified,
        };
        let system_tickets = match &h.kerberos {
            Some(k) => self.kerberos(k).tickets().await.unwrap_or_default(),
            None => Vec::new(),
        };
        HostReport {
            observed_at: Some(timestamp_from_ms(now_ms())),
            identity: Some(HostIdentity {
                fqdn: h.fqdn.to_lowercase(),
                netbios_name: h.netbios.to_uppercase(),
                os_build: h.os_build,
                os_caption: format!("Simulated Windows Server (build {})", h.os_build),
                credential_guard_running: h.credential_guard,
            }),
            services: vec![
                Self::service("vmms", &h.services.vmms),
                Self::service("WinRM", &h.services.winrm),
            ],
            migration: Some(MigrationSettings {
                enabled: m.enabled,
                authentication_type: auth as i32,
                maximum_migrations: m.maximum_migrations,
                performance_option: perf as i32,
                use_any_network: m.use_any_network,
                networks: m
                    .networks
                    .iter()
                    .map(|s| MigrationNetwork {
                        subnet: s.clone(),
                        priority: None,
                    })
                    .collect(),
                maximum_storage_migrations: 2,
            }),
            system_tickets,
            probe_errors,
        }
    }

    async fn attempts(&self, since: &Cursor) -> Result<(Vec<MigrationAttempt>, Cursor), ProbeError> {
        let events = self.events()?;
        let first = events
            .iter()
            .find(|e| e.record_id >= since.record_id)
            .map(|e| (e.record_id, Some(e.time_ms)));
        let newest = events.last().map(|e| e.record_id);
        let since = match check_log(since, first, newest) {
            LogCheck::Cleared => {
                tracing::warn!(
                    log = %self.log_path().display(),
                    cursor = since.record_id,
                    "the simulated event log was cleared: reading it again from its start"
                );
                Cursor {
                    log_generation: Some(super::now_ms()),
                    ..Cursor::default()
                }
            }
            LogCheck::Continues | LogCheck::Wrapped => since.clone(),
        };
        let mut next = since.clone();
        let mut out = Vec::new();
        for ev in events.iter().filter(|e| e.record_id > since.record_id) {
            next.record_id = ev.record_id;
            next.record_time_ms = Some(ev.time_ms);
            out.push(self.to_attempt(ev, since.log_generation));
        }
        Ok((out, next))
    }

    async fn purge_system_tickets(&self) -> Result<String, ProbeError> {
        match &self.host.kerberos {
            Some(k) => {
                let _ = self.kerberos(k).destroy().await;
                Ok("Deleting all tickets:\n\tTicket(s) purged!".into())
            }
            None => Ok("no tickets (simulated host without Kerberos)".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> SimulatedHost {
        toml::from_str("fqdn = \"hv01.lab.test\"\nnetbios = \"HV01\"\n").unwrap()
    }

    #[tokio::test]
    async fn attempts_are_read_after_the_cursor_with_stable_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = SimulatedProbe::new(host(), dir.path()).unwrap();
        p.migrate("vm1", "hv02.lab.test", "alice", Some(false)).await;
        p.migrate("vm2", "hv02.lab.test", "alice", Some(true)).await;
        let (all, c) = p.attempts(&Cursor::default()).await.unwrap();
        assert_eq!(c.record_id, 2);
        assert_eq!(all[0].attempt_id, "hv01.lab.test:1");
        assert_eq!(all[0].error_code, SEC_E_NO_CREDENTIALS);
        assert!(
            all[0]
                .message
                .contains("No credentials are available in the security package (0x8009030E)")
        );
        assert!(all[1].success);
        let (rest, c2) = p.attempts(&Cursor::at(1)).await.unwrap();
        assert_eq!((rest.len(), c2.record_id), (1, 2));
        let (none, c3) = p.attempts(&c).await.unwrap();
        assert!(none.is_empty() && c3 == c);
    }

    #[tokio::test]
    async fn a_cleared_log_is_read_again_under_new_attempt_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = SimulatedProbe::new(host(), dir.path()).unwrap();
        for vm in ["vm1", "vm2", "vm3"] {
            p.migrate(vm, "hv02.lab.test", "alice", Some(true)).await;
        }
        let (before, cursor) = p.attempts(&Cursor::default()).await.unwrap();
        assert_eq!(cursor.record_id, 3);

        // Cleared, then one migration: RecordIds restart below the cursor.
        p.clear_log();
        p.migrate("vm4", "hv02.lab.test", "alice", Some(false)).await;
        let (after, cursor) = p.attempts(&cursor).await.unwrap();
        assert_eq!(after.len(), 1, "the new log's record 1 is read, not skipped");
        assert_eq!(after[0].vm_name, "vm4");
        assert_eq!(cursor.record_id, 1);
        let generation = cursor.log_generation.expect("a new log generation");
        assert_ne!(after[0].attempt_id, before[0].attempt_id);
        assert_eq!(after[0].attempt_id, format!("hv01.lab.test:g{generation}:1"));

        // Cleared again and refilled past the old cursor: RecordId 1 is
        // another record (another time), so still a clear.
        p.clear_log();
        std::thread::sleep(Duration::from_millis(5));
        for vm in ["vm5", "vm6"] {
            p.migrate(vm, "hv02.lab.test", "alice", Some(true)).await;
        }
        let (again, next) = p.attempts(&cursor).await.unwrap();
        let names: Vec<&str> = again.iter().map(|a| a.vm_name.as_str()).collect();
        assert_eq!(names, ["vm5", "vm6"]);
        assert_ne!(next.log_generation, Some(generation));

        // Read on from there: nothing new, same cursor, same ids.
        let (none, same) = p.attempts(&next).await.unwrap();
        assert!(none.is_empty());
        assert_eq!(same, next);
    }

    #[tokio::test]
    async fn reports_follow_the_host_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = host();
        h.services.vmms = "stopped".into();
        h.migration.authentication = "credssp".into();
        let r = SimulatedProbe::new(h, dir.path()).unwrap().report().await;
        assert_eq!(r.identity.unwrap().fqdn, "hv01.lab.test");
        assert_eq!(r.services[0].state, ServiceState::Stopped as i32);
        assert_eq!(
            r.migration.unwrap().authentication_type,
            MigrationAuthType::Credssp as i32
        );
        assert!(toml::from_str::<SimulatedHost>("fqdn = \"a\"\nnetbios = \"A\"\nbogus = 1\n").is_err());
    }
}
