//! The probe of a real Hyper-V host: runs PowerShell and klist (one process
//! per question, each through the runner of [`crate::process`], so each has
//! a timeout) and reads their output with the pure parsers of
//! [`crate::windows::parse`].
//!
//! Nothing here is Windows-only at compile time: on Linux the commands are
//! simply not found (every report step then fails and says so), and the
//! tests drive the same code with fake `powershell`/`klist` shell scripts.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kcdsync_proto::v1::{HostIdentity, HostReport, MigrationAttempt};

use super::{Cursor, HostProbe, LogCheck, ProbeError, check_log};
use crate::process;
use crate::windows::parse::{self, ParseError};
use crate::windows::scripts::{
    self, KLIST_PURGE_ARGS, KLIST_SYSTEM_ARGS, PS_MIGRATION_NETWORKS, PS_OS_DEVICE_GUARD, PS_SERVICES, PS_VMHOST,
};

// Step names, as they appear in `ProbeError`s and `probe_errors`.
const STEP_OS: &str = "PowerShell host identity (Win32_OperatingSystem, Win32_DeviceGuard)";
const STEP_SERVICES: &str = "PowerShell Get-Service vmms,WinRM";
const STEP_VMHOST: &str = "PowerShell Get-VMHost";
const STEP_NETWORKS: &str = "PowerShell Get-VMMigrationNetwork";
const STEP_EVENTS: &str = "PowerShell Get-WinEvent Microsoft-Windows-Hyper-V-VMMS-Admin";
const STEP_KLIST: &str = "klist -li 0x3e7";
const STEP_PURGE: &str = "klist purge -li 0x3e7";

/// The services a Hyper-V host must run for live migration.
const EXPECTED_SERVICES: [&str; 2] = ["vmms", "WinRM"];

pub struct WindowsProbe {
    /// `powershell.exe` (Windows PowerShell 5.1; `pwsh.exe` works too).
    pub powershell: PathBuf,
    /// `klist.exe`.
    pub klist: PathBuf,
    /// Limit for each command; a command still running then is killed.
    pub timeout: Duration,
    /// This host's name in attempt ids (`"<host>:<RecordId>"`) and to tell
    /// the local host from the peer in event messages. [`WindowsProbe::new`]
    /// takes `%COMPUTERNAME%` (the NetBIOS name), which needs no command and
    /// so is the same on every call.
    pub host: String,
}

impl WindowsProbe {
    /// The system's own `powershell.exe` and `klist.exe` under
    /// `%SystemRoot%\System32` (never a PATH lookup: the agent runs as
    /// LocalSystem).
    pub fn new(timeout: Duration) -> WindowsProbe {
        let root = std::env::var_os("SystemRoot")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(r"C:\Windows"));
        let system32 = root.join("System32");
        let host = ["COMPUTERNAME", "HOSTNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(|| "localhost".to_string());
        WindowsProbe {
            powershell: system32.join("WindowsPowerShell").join("v1.0").join("powershell.exe"),
            klist: system32.join("klist.exe"),
            timeout,
            host: host.trim().to_string(),
        }
    }

    /// Runs one command to completion within [`Self::timeout`]; its standard
    /// output (see [`process::Command::run`]). A non-zero exit is
    /// [`ProbeError::Failed`] with what the command said.
    async fn run(&self, program: &Path, args: &[String], step: &str) -> Result<String, ProbeError> {
        process::Command::new(program, self.timeout)
            .args(args)
            .label(step)
            .run()
            .await
            .map(|out| out.stdout)
            .map_err(|e| ProbeError::from_run(step, e))
    }

    async fn powershell(&self, script: &str, step: &str) -> Result<String, ProbeError> {
        self.run(&self.powershell, &scripts::powershell_args(script), step)
            .await
    }

    async fn klist(&self, args: &[&str], step: &str) -> Result<String, ProbeError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.run(&self.klist, &args, step).await
    }

    /// One PowerShell step: run, then parse.
    async fn ps_step<T>(
        &self,
        step: &str,
        script: &str,
        parser: fn(&str) -> Result<T, ParseError>,
    ) -> Result<T, ProbeError> {
        let out = self.powershell(script, step).await?;
        parser(&out).map_err(|e| parse_error(step, e))
    }

    /// The host identity step, which also tells whether PowerShell works at all: every
    /// Windows has exactly one Win32_OperatingSystem, so no output means PowerShell is
    /// missing or broken (Wine's powershell.exe is a stub that prints nothing), and the
    /// report says so instead of a puzzling parse error.
    async fn identity_step(&self) -> Result<kcdsync_proto::v1::HostIdentity, ProbeError> {
        let out = self.powershell(PS_OS_DEVICE_GUARD, STEP_OS).await?;
        if out.trim().is_empty() {
            return Err(ProbeError::Failed {
                command: STEP_OS.to_owned(),
                message: format!(
                    "{} ran but printed nothing for Win32_OperatingSystem, which every Windows has: PowerShell is missing or broken on this host (Windows PowerShell 5.1 is needed); the PowerShell parts of this report are empty",
                    self.powershell.display()
                ),
            });
        }
        parse::parse_host_identity(&out).map_err(|e| parse_error(STEP_OS, e))
    }

    /// One page of events from RecordId `from` on.
    async fn events_from(&self, from: u64) -> Result<parse::VmmsEventBatch, ProbeError> {
        let out = self.powershell(&scripts::vmms_events_script(from), STEP_EVENTS).await?;
        parse::parse_vmms_event_batch(&out, &self.host).map_err(|e| parse_error(STEP_EVENTS, e))
    }

    /// The newest record's RecordId; `None` for an empty (or unreadable) log.
    async fn newest_record_id(&self) -> Result<Option<u64>, ProbeError> {
        let out = self.powershell(scripts::PS_VMMS_NEWEST_EVENT, STEP_EVENTS).await?;
        let batch = parse::parse_vmms_event_batch(&out, &self.host).map_err(|e| parse_error(STEP_EVENTS, e))?;
        Ok(batch.max_record_id)
    }

    async fn system_tickets(&self) -> Result<Vec<kcdsync_proto::v1::KerberosTicket>, ProbeError> {
        let out = self.klist(&KLIST_SYSTEM_ARGS, STEP_KLIST).await?;
        parse::parse_klist(&out).map_err(|e| parse_error(STEP_KLIST, e))
    }
}

/// A TimeCreated in Unix ms, as cursors keep it.
fn ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000)
}

fn parse_error(step: &str, e: ParseError) -> ProbeError {
    ProbeError::Parse {
        command: step.to_string(),
        message: e.to_string(),
    }
}

impl HostProbe for WindowsProbe {
    /// Runs the five steps at once; each failing step is one line of
    /// `probe_errors` and leaves its fields unset. If only the migration
    /// networks fail, the settings are still reported (with no networks) and
    /// the error says so.
    async fn report(&self) -> HostReport {
        let (identity, services, vmhost, networks, tickets) = tokio::join!(
            self.identity_step(),
            self.ps_step(STEP_SERVICES, PS_SERVICES, parse::parse_services),
            self.ps_step(STEP_VMHOST, PS_VMHOST, parse::parse_vmhost_info),
            self.ps_step(STEP_NETWORKS, PS_MIGRATION_NETWORKS, parse::parse_migration_networks),
            self.system_tickets(),
        );
        let mut report = HostReport {
            observed_at: Some(SystemTime::now().into()),
            ..Default::default()
        };
        let mut errors = Vec::new();

        report.identity = Some(match identity {
            Ok(mut id) => {
                if id.netbios_name.is_empty() {
                    id.netbios_name = self.host.clone();
                }
                id
            }
            Err(e) => {
                errors.push(e.to_string());
                // Only what is known without the failed step.
                HostIdentity {
                    netbios_name: self.host.clone(),
                    ..Default::default()
                }
            }
        });

        match services {
            Ok(services) => {
                for name in EXPECTED_SERVICES {
                    if !services.iter().any(|s| s.name.eq_ignore_ascii_case(name)) {
                        errors.push(format!("{STEP_SERVICES}: service `{name}` not found on this host"));
                    }
                }
                report.services = services;
            }
            Err(e) => errors.push(e.to_string()),
        }

        match vmhost {
            Ok(info) => {
                let mut settings = info.settings;
                match networks {
                    Ok(n) => settings.networks = n,
                    Err(e) => errors.push(format!("{e} (migration settings reported without networks)")),
                }
                report.migration = Some(settings);
            }
            Err(e) => {
                errors.push(e.to_string());
                if let Err(e) = networks {
                    errors.push(e.to_string());
                }
            }
        }

        match tickets {
            Ok(t) => report.system_tickets = t,
            Err(e) => errors.push(e.to_string()),
        }

        for e in &errors {
            tracing::warn!(error = %e, "probe step failed");
        }
        report.probe_errors = errors;
        report
    }

    /// One page of VMMS-Admin events after `since` (at most
    /// [`scripts::VMMS_EVENTS_PAGE`]); the new cursor is the highest RecordId
    /// read, migration-related or not, so unrelated events are not re-read.
    /// A log cleared since `since` is read again from its start, under a new
    /// generation.
    async fn attempts(&self, since: &Cursor) -> Result<(Vec<MigrationAttempt>, Cursor), ProbeError> {
        let batch = self.events_from(since.record_id).await?;
        let first = batch
            .first_from(since.record_id)
            .map(|(id, t)| (*id, t.as_ref().map(ms)));
        let newest = match (&first, since.record_id) {
            (None, 1..) => self.newest_record_id().await?,
            _ => None,
        };
        let (since, batch) = match check_log(since, first, newest) {
            LogCheck::Cleared => {
                tracing::warn!(
                    cursor = since.record_id,
                    newest = ?newest,
                    "the VMMS-Admin event log was cleared: reading it again from its start"
                );
                let fresh = Cursor {
                    log_generation: Some(super::now_ms()),
                    ..Cursor::default()
                };
                (fresh, self.events_from(0).await?)
            }
            LogCheck::Wrapped => {
                tracing::warn!(
                    cursor = since.record_id,
                    "the VMMS-Admin event log overwrote records the agent had not read yet (log full)"
                );
                (since.clone(), batch)
            }
            LogCheck::Continues => (since.clone(), batch),
        };
        let next = match batch.max_record_id {
            Some(m) if m > since.record_id => Cursor {
                record_id: m,
                record_time_ms: batch.time_of(m).map(ms),
                log_generation: since.log_generation,
            },
            _ => since.clone(),
        };
        let attempts = batch
            .attempts
            .into_iter()
            .filter(|(id, _)| *id > since.record_id)
            .map(|(id, mut a)| {
                a.attempt_id = super::attempt_id(&self.host, since.log_generation, id);
                a
            })
            .collect();
        Ok((attempts, next))
    }

    async fn purge_system_tickets(&self) -> Result<String, ProbeError> {
        let out = self.klist(&KLIST_PURGE_ARGS, STEP_PURGE).await?;
        let said = out.trim().to_string();
        if said.to_ascii_lowercase().contains("klist failed") {
            return Err(ProbeError::Failed {
                command: STEP_PURGE.to_string(),
                message: said,
            });
        }
        Ok(said)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use kcdsync_proto::v1::{MigrationAuthType, MigrationRole, ServiceState};

    use super::*;
    use crate::process::MAX_STDOUT;
    use std::time::Instant;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../fixtures/windows/", $name))
        };
    }

    /// A temp dir holding fake `powershell` and `klist` shell scripts and
    /// the outputs they print.
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn file(&self, name: &str, content: impl AsRef<[u8]>) -> &Self {
            std::fs::write(self.path(name), content).unwrap();
            self
        }

        fn tool(&self, name: &str, body: &str) -> PathBuf {
            let p = self.path(name);
            let script = format!("#!/bin/sh\nD='{}'\n{body}\n", self.dir.path().display());
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        }

        /// A fake powershell that checks the fixed arguments and prints the
        /// file named after the cmdlet in the script (`$6`).
        fn powershell(&self) -> PathBuf {
            self.tool(
                "powershell",
                r#"[ "$1 $2 $3 $4 $5" = "-NoProfile -NonInteractive -ExecutionPolicy Bypass -Command" ] || { echo "bad args: $*" >&2; exit 4; }
[ $# -eq 6 ] || { echo "expected 6 arguments, got $#" >&2; exit 4; }
case "$6" in
  *Win32_OperatingSystem*) f=os ;;
  *Get-Service*) f=services ;;
  *Get-VMHost*) f=vmhost ;;
  *Get-VMMigrationNetwork*) f=networks ;;
  *Get-WinEvent*) printf '%s' "$6" > "$D/events.script"; f=events ;;
  *) echo "unexpected script: $6" >&2; exit 3 ;;
esac
[ -x "$D/$f.sh" ] && exec "$D/$f.sh"
cat "$D/$f.out""#,
            )
        }

        fn klist(&self) -> PathBuf {
            self.tool(
                "klist",
                r#"case "$*" in
  "-li 0x3e7") [ -x "$D/klist.sh" ] && exec "$D/klist.sh"; cat "$D/klist.out" ;;
  "purge -li 0x3e7") cat "$D/purge.out" ;;
  *) echo "bad klist args: $*" >&2; exit 5 ;;
esac"#,
            )
        }

        fn probe(&self, timeout: Duration) -> WindowsProbe {
            WindowsProbe {
                powershell: self.powershell(),
                klist: self.klist(),
                timeout,
                host: "HV01".into(),
            }
        }

        /// All outputs of a healthy host.
        fn healthy(&self) -> &Self {
            self.file("os.out", fixture!("os_ps51_ws2022.json"))
                .file("services.out", fixture!("services_ps51.json"))
                .file("vmhost.out", fixture!("vmhost_ps51.json"))
                .file("networks.out", fixture!("migration_networks_many_ps51.json"))
                .file("events.out", fixture!("events_ps51_array.json"))
                .file("klist.out", fixture!("klist_system_hv01.txt"))
                .file("purge.out", fixture!("klist_purge_s13.txt"))
        }
    }

    #[tokio::test]
    async fn report_runs_every_step_through_the_commands() {
        let fake = Fake::new();
        fake.healthy();
        let r = fake.probe(Duration::from_secs(20)).report().await;
        assert!(r.probe_errors.is_empty(), "{:?}", r.probe_errors);
        assert!(r.observed_at.unwrap().seconds > 1_700_000_000);
        let id = r.identity.unwrap();
        assert_eq!(
            (id.fqdn.as_str(), id.netbios_name.as_str(), id.os_build),
            ("hv01.contoso.com", "HV01", 20348)
        );
        assert_eq!(r.services.len(), 2);
        assert!(r.services.iter().all(|s| s.state() == ServiceState::Running));
        let m = r.migration.unwrap();
        assert_eq!(m.authentication_type(), MigrationAuthType::Kerberos);
        assert_eq!(m.networks.len(), 2);
        assert_eq!(r.system_tickets.len(), 3);
    }

    #[tokio::test]
    async fn failed_steps_are_named_and_the_rest_is_reported() {
        let fake = Fake::new();
        fake.healthy()
            .file("services.out", fixture!("services_single_ps7.json")) // vmms only
            .file("vmhost.out", "{ \"VirtualMachineMigrationEnabled\": \"garbled")
            .file("klist.out", fixture!("klist_failed_s16.txt"));
        fake.tool(
            "networks.sh",
            "echo 'Get-VMMigrationNetwork : Hyper-V is not installed' >&2; exit 1",
        );
        fake.tool("klist.sh", "cat \"$D/klist.out\"; exit 1");
        let r = fake.probe(Duration::from_secs(20)).report().await;
        let errs = r.probe_errors.join("\n");
        assert_eq!(r.probe_errors.len(), 4, "{errs}");
        assert!(errs.contains("service `WinRM` not found"), "{errs}");
        assert!(
            errs.contains("cannot parse the output of `PowerShell Get-VMHost`: not valid JSON"),
            "{errs}"
        );
        assert!(
            errs.contains("`PowerShell Get-VMMigrationNetwork` failed") && errs.contains("Hyper-V is not installed"),
            "{errs}"
        );
        assert!(
            errs.contains("`klist -li 0x3e7` failed") && errs.contains("0x8009030e"),
            "{errs}"
        );
        assert!(r.migration.is_none());
        assert!(r.system_tickets.is_empty());
        assert_eq!(r.services.len(), 1);
        assert_eq!(r.identity.unwrap().os_build, 20348);
    }

    #[tokio::test]
    async fn klist_output_in_the_oem_code_page_still_parses() {
        let fake = Fake::new();
        // "démarrage" and "clé" as CP850 bytes (0x82), not UTF-8.
        let cp850: Vec<u8> = fixture!("klist_fr_s15.txt")
            .replace('é', "\u{1}")
            .bytes()
            .map(|b| if b == 1 { 0x82 } else { b })
            .collect();
        fake.healthy().file("klist.out", cp850);
        let r = fake.probe(Duration::from_secs(20)).report().await;
        assert!(r.probe_errors.is_empty(), "{:?}", r.probe_errors);
        assert_eq!(r.system_tickets.len(), 1);
        assert_eq!(r.system_tickets[0].ticket_flags, 0x50a0_0000);
    }

    #[tokio::test]
    async fn attempts_pass_the_cursor_and_return_the_highest_record_id() {
        let fake = Fake::new();
        fake.healthy();
        let probe = fake.probe(Duration::from_secs(20));
        let (attempts, cursor) = probe.attempts(&Cursor::at(4700)).await.unwrap();
        let script = std::fs::read_to_string(fake.path("events.script")).unwrap();
        assert!(script.contains("*[System[EventRecordID>=4700]]"), "{script}");
        assert_eq!(cursor.record_id, 4714);
        assert!(cursor.record_time_ms.is_some(), "the cursor keeps its record's time");
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].attempt_id, "HV01:4712");
        assert_eq!(attempts[0].error_code, 0x8009_030D);
        assert_eq!(attempts[0].role(), MigrationRole::Source);
        assert_eq!(attempts[1].peer, "HV02");

        // Records at or below the cursor are never returned again.
        let (attempts, next) = probe.attempts(&Cursor::at(4712)).await.unwrap();
        assert_eq!((attempts.len(), next.record_id), (1, 4714));
        let (attempts, next) = probe.attempts(&cursor).await.unwrap();
        assert_eq!((attempts.len(), &next), (0, &cursor), "nothing new: the cursor stays");

        // An empty page and an empty log: a quiet log, not a cleared one.
        fake.file("events.out", fixture!("events_empty.txt"));
        let (attempts, next) = probe.attempts(&cursor).await.unwrap();
        assert!(attempts.is_empty());
        assert_eq!(next, cursor, "no event: the cursor stays");

        fake.file("events.out", "[{\"RecordId\": \"x\"}]");
        let e = probe.attempts(&cursor).await.unwrap_err();
        assert!(matches!(e, ProbeError::Parse { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_cleared_event_log_is_read_again_with_new_attempt_ids() {
        let fake = Fake::new();
        fake.healthy();
        let probe = fake.probe(Duration::from_secs(20));
        // The agent had read up to RecordId 9000; the log now holds 4712-4714
        // only: RecordIds restarted below the cursor.
        let saved = Cursor {
            record_id: 9000,
            record_time_ms: Some(1_600_000_000_000),
            log_generation: None,
        };
        let (attempts, cursor) = probe.attempts(&saved).await.unwrap();
        let script = std::fs::read_to_string(fake.path("events.script")).unwrap();
        assert!(
            script.contains("*[System[EventRecordID>=0]]"),
            "read from the start: {script}"
        );
        let generation = cursor.log_generation.expect("a new log generation");
        assert_eq!(cursor.record_id, 4714);
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].attempt_id, format!("HV01:g{generation}:4712"));

        // The record at the cursor with another time: cleared and refilled.
        let moved = Cursor {
            record_time_ms: cursor.record_time_ms.map(|t| t - 1),
            ..cursor.clone()
        };
        let (again, next) = probe.attempts(&moved).await.unwrap();
        assert_eq!(again.len(), 2);
        assert_ne!(next.log_generation, None);
    }

    #[tokio::test]
    async fn purge_returns_what_klist_said() {
        let fake = Fake::new();
        fake.healthy();
        let probe = fake.probe(Duration::from_secs(20));
        let said = probe.purge_system_tickets().await.unwrap();
        assert!(said.contains("Ticket(s) purged!"), "{said}");
        fake.file("purge.out", fixture!("klist_failed_s16.txt"));
        assert!(matches!(
            probe.purge_system_tickets().await,
            Err(ProbeError::Failed { .. })
        ));
    }

    #[tokio::test]
    async fn a_hung_command_times_out_and_is_killed() {
        let fake = Fake::new();
        fake.healthy();
        fake.tool("events.sh", "echo $$ > \"$D/events.pid\"; exec sleep 30");
        let probe = fake.probe(Duration::from_secs(1));
        let started = Instant::now();
        let e = probe.attempts(&Cursor::default()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(
            matches!(&e, ProbeError::Timeout { command, .. } if command.contains("Get-WinEvent")),
            "{e}"
        );
        let pid: u32 = std::fs::read_to_string(fake.path("events.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed: gone, or a zombie waiting to be reaped.
        let mut gone = false;
        for _ in 0..50 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => gone = true,
                Ok(stat) => {
                    gone = stat
                        .rsplit(')')
                        .next()
                        .is_some_and(|rest| rest.trim_start().starts_with('Z'))
                }
            }
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "pid {pid} still running");

        // In report(), a timeout is one probe error among working steps
        // (a wider limit: the other steps must finish within it).
        fake.tool("vmhost.sh", "exec sleep 30");
        let r = fake.probe(Duration::from_secs(3)).report().await;
        assert_eq!(r.probe_errors.len(), 1, "{:?}", r.probe_errors);
        assert!(
            r.probe_errors[0].contains("`PowerShell Get-VMHost` did not finish"),
            "{:?}",
            r.probe_errors
        );
        assert!(r.migration.is_none());
        assert_eq!(r.system_tickets.len(), 3);
    }

    #[tokio::test]
    async fn runaway_output_is_refused() {
        let fake = Fake::new();
        fake.healthy();
        fake.tool("events.sh", &format!("head -c {} /dev/zero", MAX_STDOUT + 1));
        let e = fake
            .probe(Duration::from_secs(20))
            .attempts(&Cursor::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ProbeError::Failed { message, .. } if message.contains("more than")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn missing_tools_fail_every_step_without_panicking() {
        let probe = WindowsProbe {
            powershell: "/nonexistent/powershell.exe".into(),
            klist: "/nonexistent/klist.exe".into(),
            timeout: Duration::from_secs(5),
            host: "HV01".into(),
        };
        let r = probe.report().await;
        assert_eq!(r.probe_errors.len(), 5, "{:?}", r.probe_errors);
        assert!(
            r.probe_errors.iter().all(|e| e.starts_with("cannot run")),
            "{:?}",
            r.probe_errors
        );
        assert_eq!(r.identity.unwrap().netbios_name, "HV01");
        assert!(matches!(
            probe.attempts(&Cursor::default()).await,
            Err(ProbeError::Spawn { .. })
        ));
        assert!(matches!(
            probe.purge_system_tickets().await,
            Err(ProbeError::Spawn { .. })
        ));
    }

    #[test]
    fn default_paths_are_under_system32() {
        let p = WindowsProbe::new(Duration::from_secs(30));
        assert!(
            p.powershell.ends_with("System32/WindowsPowerShell/v1.0/powershell.exe")
                || p.powershell
                    .to_string_lossy()
                    .ends_with(r"System32\WindowsPowerShell\v1.0\powershell.exe")
        );
        assert!(p.klist.to_string_lossy().contains("System32"));
        assert!(!p.host.is_empty());
        assert_eq!(p.timeout, Duration::from_secs(30));
    }
}
