//! The agent's MSI (`deploy/windows/msi`): built here with Debian's wixl from the
//! cross-built `kcdsync-agent.exe`, its tables read back with `msiinfo`, and installed
//! under Wine's `msiexec` in a prefix of the test's own: the exe lands in
//! `C:\Program Files\kcdsync`, `agent.toml` in `C:\ProgramData\kcdsync` holds the
//! controller URL given on the command line, the `kcdsync-agent` service is registered
//! (automatic start, LocalSystem); without `CONTROLLER_URL`, or with a URL that is not
//! https://, the install is refused by its launch conditions and installs nothing;
//! a higher version upgrades it in place; `msiexec /x` removes the service and the exe and
//! keeps the data directory.
//!
//! What Wine cannot show: its icacls.exe is a stub (the data directory's owner and ACL are
//! not set, nor enforced: Wine has no ACL checks on files), its fsutil has no `reparsepoint`
//! (the refusal of a junction as data directory never triggers), its `sc failure` records no failure
//! actions and `sc failureflag` fails (the SCM's restart-on-failure cannot be seen), it
//! runs standard actions at once and deferred custom actions only at InstallFinalize (so
//! under Wine the service is started before agent.toml is written; Windows runs them in
//! sequence order), it writes the service's ImagePath unquoted, and `msiexec /l*v` does
//! not log a failed launch condition's message (the failed condition is read from
//! Wine's msi trace instead; the message is checked in the LaunchCondition table). Wine's
//! services.exe starts the automatic service whenever the prefix's wineserver starts (each
//! msiexec here): with TLS files present the agent keeps running and its exe busy, which
//! made an uninstall under load leave the exe behind; the test removes its placeholder TLS
//! files before upgrading and uninstalling. An uninstall right before a reinstall once
//! made Wine's StartServices fail (not done here).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use kcdsync_tests::repo_root;
use kcdsync_tests::wine::{WINE, WINESERVER, agent_exe, prefix as wine_prefix, wine};

/// `msiinfo export MSI TABLE`: the rows, each a list of columns (the three header lines
/// — names, types, key — dropped).
fn table(msi: &Path, name: &str) -> Vec<Vec<String>> {
    let out = Command::new("msiinfo")
        .arg("export")
        .arg(msi)
        .arg(name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "msiinfo export {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(3)
        .map(|l| l.trim_end_matches('\r').split('\t').map(str::to_owned).collect())
        .collect()
}

/// The row of `rows` whose first column is `key`.
fn row<'a>(rows: &'a [Vec<String>], key: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r[0] == key)
        .unwrap_or_else(|| panic!("no row {key} in {rows:?}"))
}

/// Kills the prefix's wineserver (and the service Wine started) when dropped.
struct Wineserver(PathBuf);

impl Wineserver {
    /// Stops the wineserver now: it writes the registry (system.reg) to disk.
    fn kill(&self) {
        let _ = Command::new(WINESERVER).env("WINEPREFIX", &self.0).arg("-k").status();
        let _ = Command::new(WINESERVER).env("WINEPREFIX", &self.0).arg("-w").status();
    }
}

impl Drop for Wineserver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `msiexec /i MSI /qn PROPS /l*v LOG` under Wine, with Wine's msi trace in `trace`: the
/// exit code, the log and the trace.
/// The installed agent's own check of the installed agent.toml.
fn check_config(prefix: &Path, installed: &Path) -> std::process::Output {
    wine(prefix)
        .arg(installed)
        .args(["--config", r"C:\ProgramData\kcdsync\agent.toml", "check-config"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn msiexec(prefix: &Path, dir: &Path, msi: &Path, props: &[&str], name: &str) -> (i32, String, String) {
    let log = dir.join(format!("{name}.log"));
    let trace = dir.join(format!("{name}.trace"));
    let status = wine(prefix)
        .env("WINEDEBUG", "-all,trace+msi")
        .arg("msiexec")
        .arg("/i")
        .arg(msi)
        .arg("/qn")
        .args(props)
        .arg("/l*v")
        .arg(&log)
        .stderr(std::fs::File::create(&trace).unwrap())
        .status()
        .unwrap();
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).replace('\0', "");
    (status.code().unwrap_or(-1), read(&log), read(&trace))
}

#[test]
fn the_agent_msi_registers_the_service_and_writes_its_config() {
    let Some(exe) = agent_exe() else {
        eprintln!(
            "notice: the MSI test is skipped: the cross-built kcdsync-agent.exe is missing \
             (`cargo build -p kcdsync-agent --target x86_64-pc-windows-gnu`; deploy/test.sh does)"
        );
        return;
    };
    for tool in [
        "/usr/bin/wixl",
        "/usr/bin/msiinfo",
        WINE,
        "/usr/bin/x86_64-w64-mingw32-gcc",
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install wixl msitools wine64 gcc-mingw-w64-x86-64 (.ci/run does)"
        );
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    // KCDSYNC_KEEP_MSI_TEST=1 keeps the MSI, the logs, the traces and the prefix.
    let _tmp = if std::env::var_os("KCDSYNC_KEEP_MSI_TEST").is_some() {
        eprintln!("KCDSYNC_KEEP_MSI_TEST: keeping {}", tmp.keep().display());
        None
    } else {
        Some(tmp)
    };
    let msi = dir.join("kcdsync-agent.msi");

    // Built by the script CI and admins use.
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/windows/msi/build.sh"))
        .arg(&exe)
        .arg("0.1.0")
        .arg(&msi)
        .output()
        .unwrap();
    assert!(
        out.status.success() && msi.is_file(),
        "build.sh failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // --- The tables. ---
    let tables = Command::new("msiinfo").arg("tables").arg(&msi).output().unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    for t in [
        "ServiceInstall",
        "ServiceControl",
        "LaunchCondition",
        "CustomAction",
        "CreateFolder",
        "File",
        "Directory",
    ] {
        assert!(tables.lines().any(|l| l == t), "no {t} table in the MSI: {tables}");
    }
    // Directory, DefaultDir parent: the exe in ProgramFiles64Folder\kcdsync, the data in
    // CommonAppDataFolder\kcdsync.
    let dirs = table(&msi, "Directory");
    assert_eq!(row(&dirs, "INSTALLDIR")[1..], ["ProgramFiles64Folder", "kcdsync"]);
    assert_eq!(row(&dirs, "DATADIR")[1..], ["CommonAppDataFolder", "kcdsync"]);
    assert_eq!(row(&dirs, "TLSDIR")[1..], ["DATADIR", "tls"]);
    assert_eq!(row(&dirs, "OUTBOXDIR")[1..], ["DATADIR", "outbox"]);
    let files = table(&msi, "File");
    let file = row(&files, "AgentExe");
    assert_eq!(file[1..3], ["AgentExe", "kcdsync-agent.exe"]);
    assert_eq!(file[3], std::fs::metadata(&exe).unwrap().len().to_string());
    let components = table(&msi, "Component");
    let comp = row(&components, "AgentExe");
    assert_eq!(comp[2], "INSTALLDIR");
    // 256: a 64-bit component (its registry and System32 are the 64-bit ones).
    assert_eq!(comp[3], "256");
    let create = table(&msi, "CreateFolder");
    for d in ["DATADIR", "TLSDIR", "OUTBOXDIR"] {
        assert!(create.iter().any(|r| r[0] == d), "{d} is not created: {create:?}");
    }
    // ServiceInstall: name, display name, own process (16), automatic start (2), error
    // control normal (1), LocalSystem, the service command line, in the exe's component.
    let services = table(&msi, "ServiceInstall");
    assert_eq!(services.len(), 1, "{services:?}");
    let svc = &services[0];
    assert_eq!(svc[1..6], ["kcdsync-agent", "kcdsync agent", "16", "2", "1"]);
    assert_eq!(svc[8], "LocalSystem");
    assert_eq!(svc[10], "service --config \"[DATADIR]agent.toml\"");
    assert_eq!(svc[11], "AgentExe");
    // ServiceControl: start on install (1), stop on install (2, for upgrades) and on
    // uninstall (32), delete on uninstall (128); wait.
    let controls = table(&msi, "ServiceControl");
    assert_eq!(controls.len(), 1, "{controls:?}");
    assert_eq!(controls[0][1..], ["kcdsync-agent", "163", "", "1", "AgentExe"]);
    // The required property, with a message that says how.
    let conditions = table(&msi, "LaunchCondition");
    let required = row(&conditions, "Installed OR CONTROLLER_URL");
    assert!(
        required[1].starts_with("CONTROLLER_URL is required")
            && required[1].contains("msiexec /i kcdsync-agent.msi CONTROLLER_URL=https://"),
        "{required:?}"
    );
    assert!(
        conditions.iter().any(|c| c[0] == "Privileged"),
        "no condition requires administrator rights: {conditions:?}"
    );
    assert!(
        conditions
            .iter()
            .any(|c| c[0].contains("CONTROLLER_URL << \"https://\"") && c[0].contains("CONTROLLER_URL >< \"&\"")),
        "no condition checks the URL's scheme and characters: {conditions:?}"
    );
    // The custom actions standing in for what wixl lacks: deferred (0x400), not
    // impersonated (0x800), exe named by a property (50).
    let actions = table(&msi, "CustomAction");
    let protect = row(&actions, "KcdsyncProtectDataDir");
    assert_eq!(protect[1].parse::<u32>().unwrap() & 0xc3f, 0xc00 | 50, "{protect:?}");
    assert_eq!(protect[2], "KCDSYNC_ICACLS");
    assert!(
        protect[3].contains("/inheritance:r /grant:r *S-1-5-18:(OI)(CI)F *S-1-5-32-544:(OI)(CI)F"),
        "{protect:?}"
    );
    assert_eq!(row(&actions, "KcdsyncSetIcacls")[3], "[System64Folder]icacls.exe");
    let owner = row(&actions, "KcdsyncOwnDataDir");
    assert_eq!(owner[1].parse::<u32>().unwrap() & 0xc3f, 0xc00 | 50, "{owner:?}");
    assert!(owner[3].contains("/setowner *S-1-5-32-544 /T"), "{owner:?}");
    let reparse = row(&actions, "KcdsyncRefuseReparsePoint");
    assert_eq!(reparse[1].parse::<u32>().unwrap() & 0xc3f, 0xc00 | 50, "{reparse:?}");
    assert!(
        reparse[3].contains("fsutil reparsepoint query \"[DATADIR].\""),
        "{reparse:?}"
    );
    let failure = row(&actions, "KcdsyncServiceFailure");
    assert_eq!(failure[1].parse::<u32>().unwrap() & 0xc3f, 0xc00 | 50, "{failure:?}");
    assert_eq!(
        failure[3],
        "failure kcdsync-agent reset= 86400 actions= restart/10000/restart/30000/restart/60000"
    );
    let write = row(&actions, "KcdsyncWriteConfig");
    assert_eq!(write[1].parse::<u32>().unwrap() & 0xc3f, 0xc00 | 50, "{write:?}");
    assert!(
        write[3].contains("echo controller_url = '[CONTROLLER_URL]'"),
        "{write:?}"
    );
    // Deferred actions run inside the script: between InstallInitialize and InstallFinalize,
    // the data directory protected before agent.toml is written, the failure actions set
    // after the service is installed and before it is started.
    let seq: std::collections::HashMap<String, i64> = table(&msi, "InstallExecuteSequence")
        .into_iter()
        .map(|r| (r[0].clone(), r[2].parse().unwrap()))
        .collect();
    let at = |a: &str| *seq.get(a).unwrap_or_else(|| panic!("{a} is not sequenced: {seq:?}"));
    assert!(at("InstallInitialize") < at("CreateFolders"));
    assert!(at("CreateFolders") < at("KcdsyncRefuseReparsePoint"));
    assert!(at("KcdsyncRefuseReparsePoint") < at("KcdsyncOwnDataDir"));
    assert!(at("KcdsyncOwnDataDir") < at("KcdsyncResetDataDir"));
    assert!(at("KcdsyncResetDataDir") < at("KcdsyncProtectDataDir"));
    assert!(at("KcdsyncProtectDataDir") < at("KcdsyncWriteConfig"));
    assert!(at("InstallServices") < at("KcdsyncServiceFailure"));
    assert!(at("KcdsyncServiceFailure") < at("StartServices"));
    assert!(at("StartServices") < at("InstallFinalize"));
    assert!(at("KcdsyncSetIcacls") > at("CostFinalize") && at("KcdsyncSetIcacls") < at("InstallInitialize"));
    assert!(at("RemoveExistingProducts") < at("InstallInitialize"));
    let tables_done = started.elapsed();

    // --- Under Wine's msiexec. ---
    let prefix = wine_prefix(&dir);
    let server = Wineserver(prefix.clone());
    let program_files = prefix.join("drive_c/Program Files/kcdsync");
    let data = prefix.join("drive_c/ProgramData/kcdsync");

    // Refused without CONTROLLER_URL: 1603 (fatal error), the launch condition false,
    // nothing installed.
    let (code, log, trace) = msiexec(&prefix, &dir, &msi, &[], "no-url");
    assert_eq!(
        code & 0xff,
        1603 & 0xff,
        "msiexec without CONTROLLER_URL exited {code}; its log:\n{log}"
    );
    assert!(
        trace.contains("0 <- L\"Installed OR CONTROLLER_URL\""),
        "the CONTROLLER_URL launch condition was not the one that failed; log:\n{log}"
    );
    assert!(
        log.contains("LaunchConditions. Return value 0") && !log.contains("InstallFiles"),
        "the install did not stop at LaunchConditions:\n{log}"
    );
    assert!(
        !program_files.exists() && !data.exists(),
        "a refused install left files"
    );

    // Refused with a URL that is not https://.
    let (code, log, trace) = msiexec(&prefix, &dir, &msi, &["CONTROLLER_URL=http://127.0.0.1:7443"], "http");
    assert_eq!(
        code & 0xff,
        1603 & 0xff,
        "msiexec with an http:// URL exited {code}; its log:\n{log}"
    );
    assert!(
        trace.contains("0 <- L\"Installed OR NOT CONTROLLER_URL OR (CONTROLLER_URL << \\\"https://\\\""),
        "the URL check was not the condition that failed; log:\n{log}"
    );
    assert!(
        !program_files.exists() && !data.exists(),
        "a refused install left files"
    );

    // Installed.
    let (code, log, _) = msiexec(
        &prefix,
        &dir,
        &msi,
        &["CONTROLLER_URL=https://127.0.0.1:7443", "TLS_SERVER_NAME=localhost"],
        "install",
    );
    assert_eq!(code, 0, "msiexec /i exited {code}; its log:\n{log}");
    let installed = program_files.join("kcdsync-agent.exe");
    assert_eq!(
        std::fs::read(&installed).unwrap_or_default(),
        std::fs::read(&exe).unwrap(),
        "{} is not the built exe; log:\n{log}",
        installed.display()
    );
    for d in ["tls", "outbox"] {
        assert!(data.join(d).is_dir(), "{} was not created", data.join(d).display());
    }
    let toml_text = std::fs::read_to_string(data.join("agent.toml"))
        .unwrap_or_else(|e| panic!("no agent.toml in {}: {e}; log:\n{log}", data.display()));
    let config: toml::Table = toml::from_str(&toml_text).unwrap_or_else(|e| panic!("agent.toml: {e}\n{toml_text}"));
    let s = |k: &str| config.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    assert_eq!(s("controller_url"), "https://127.0.0.1:7443", "{toml_text}");
    assert_eq!(s("tls_server_name"), "localhost", "{toml_text}");
    assert_eq!(s("ca_file"), r"C:\ProgramData\kcdsync\tls\ca.pem", "{toml_text}");
    assert_eq!(s("cert_file"), r"C:\ProgramData\kcdsync\tls\agent.pem", "{toml_text}");
    assert_eq!(s("key_file"), r"C:\ProgramData\kcdsync\tls\agent.key", "{toml_text}");
    assert_eq!(s("outbox_dir"), r"C:\ProgramData\kcdsync\outbox", "{toml_text}");
    assert_eq!(s("probe"), "windows", "{toml_text}");
    // The agent itself accepts it, as the admin would check it once the TLS files are in
    // place (placeholders here: check-config reads the config, not the PEM files).
    for f in ["ca.pem", "agent.pem", "agent.key"] {
        std::fs::write(data.join("tls").join(f), "placeholder").unwrap();
    }
    let check = check_config(&prefix, &installed);
    assert!(
        check.status.success(),
        "kcdsync-agent.exe check-config refused the written agent.toml:\n{toml_text}\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // The service, in Wine's registry (written to system.reg when the wineserver stops).
    server.kill();
    let reg = std::fs::read_to_string(prefix.join("system.reg")).unwrap();
    let key = reg
        .split("\n[")
        .find(|k| k.starts_with("System\\\\CurrentControlSet\\\\Services\\\\kcdsync-agent]"))
        .unwrap_or_else(|| panic!("no kcdsync-agent service in the registry; log:\n{log}"));
    assert!(key.contains("\n\"Start\"=dword:00000002"), "{key}");
    assert!(key.contains("\n\"ObjectName\"=\"LocalSystem\""), "{key}");
    assert!(key.contains("\n\"Type\"=dword:00000010"), "{key}");
    assert!(
        key.contains(r#"kcdsync\\kcdsync-agent.exe service --config \"C:\\ProgramData\\kcdsync\\agent.toml\"""#),
        "{key}"
    );

    // The placeholders go first: Wine's services.exe starts the automatic service whenever
    // the prefix's wineserver starts, and an agent that passed its config check keeps the
    // exe busy (retrying the controller) while an upgrade or an uninstall replaces it.
    for f in ["ca.pem", "agent.pem", "agent.key"] {
        std::fs::remove_file(data.join("tls").join(f)).unwrap();
    }

    // Upgraded in place by a higher version (MajorUpgrade: the old product is removed
    // first, before this one's services are installed), agent.toml rewritten.
    let msi2 = dir.join("kcdsync-agent-0.1.1.msi");
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/windows/msi/build.sh"))
        .arg(&exe)
        .arg("0.1.1")
        .arg(&msi2)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build.sh 0.1.1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, log, _) = msiexec(
        &prefix,
        &dir,
        &msi2,
        &["CONTROLLER_URL=https://kcdsync.lab.test:7443"],
        "upgrade",
    );
    assert_eq!(code, 0, "the upgrade exited {code}; its log:\n{log}");
    let toml_text = std::fs::read_to_string(data.join("agent.toml")).unwrap();
    assert!(
        toml_text.contains("controller_url = 'https://kcdsync.lab.test:7443'")
            && !toml_text.contains("tls_server_name"),
        "the upgrade did not rewrite agent.toml:\n{toml_text}"
    );
    assert!(installed.is_file(), "the upgrade removed the exe; log:\n{log}");
    server.kill();
    let reg = std::fs::read_to_string(prefix.join("system.reg")).unwrap();
    assert!(
        reg.contains("System\\\\CurrentControlSet\\\\Services\\\\kcdsync-agent]"),
        "the service is gone after the upgrade; log:\n{log}"
    );
    // One product installed, the new one.
    assert!(
        reg.contains("\"DisplayVersion\"=\"0.1.1\"") && !reg.contains("\"DisplayVersion\"=\"0.1.0\""),
        "after the upgrade, 0.1.0 is still registered or 0.1.1 is not"
    );

    // Uninstalled: the service and the binary go, the data directory (configuration, key,
    // outbox) stays.
    let status = wine(&prefix)
        .arg("msiexec")
        .arg("/x")
        .arg(&msi2)
        .arg("/qn")
        .arg("/l*v")
        .arg(dir.join("uninstall.log"))
        .status()
        .unwrap();
    let ulog = String::from_utf8_lossy(&std::fs::read(dir.join("uninstall.log")).unwrap_or_default()).replace('\0', "");
    assert!(status.success(), "msiexec /x failed ({status}); its log:\n{ulog}");
    server.kill();
    let reg = std::fs::read_to_string(prefix.join("system.reg")).unwrap();
    assert!(
        !reg.contains("System\\\\CurrentControlSet\\\\Services\\\\kcdsync-agent]"),
        "the service is still registered after uninstall; log:\n{ulog}"
    );
    assert!(
        !installed.exists(),
        "the exe is still there after uninstall; log:\n{ulog}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("agent.toml")).unwrap_or_default(),
        toml_text,
        "agent.toml was not kept"
    );

    // Installed again for agents that enroll by Kerberos: ENROLL_SPN adds the [enroll] table,
    // and the agent accepts the config without any certificate file (it makes them itself).
    let (code, log, trace) = msiexec(
        &prefix,
        &dir,
        &msi2,
        &[
            "CONTROLLER_URL=https://kcdsync.lab.test:7443",
            "ENROLL_SPN=kcdsync/bad name",
        ],
        "bad-spn",
    );
    assert_eq!(
        code & 0xff,
        1603 & 0xff,
        "a bad ENROLL_SPN was installed ({code}); log:\n{log}"
    );
    assert!(
        trace.contains("0 <- L\"Installed OR NOT ENROLL_SPN"),
        "the ENROLL_SPN check did not fail; log:\n{log}"
    );
    let (code, log, _) = msiexec(
        &prefix,
        &dir,
        &msi2,
        &[
            "CONTROLLER_URL=https://kcdsync.lab.test:7443",
            "ENROLL_SPN=kcdsync/kcdsync.lab.test",
        ],
        "enroll",
    );
    assert_eq!(code, 0, "msiexec /i with ENROLL_SPN exited {code}; its log:\n{log}");
    // The controller's CA is the one file an enrolling agent needs (distributed beside the
    // MSI); no certificate or key.
    for f in ["agent.pem", "agent.key"] {
        assert!(!data.join("tls").join(f).exists(), "{f} left from before");
    }
    std::fs::write(data.join("tls").join("ca.pem"), "placeholder").unwrap();
    let toml_text = std::fs::read_to_string(data.join("agent.toml")).unwrap();
    let config: toml::Table = toml::from_str(&toml_text).unwrap_or_else(|e| panic!("agent.toml: {e}\n{toml_text}"));
    assert_eq!(
        config
            .get("enroll")
            .and_then(|e| e.get("service_principal"))
            .and_then(|v| v.as_str()),
        Some("kcdsync/kcdsync.lab.test"),
        "{toml_text}"
    );
    let check = check_config(&prefix, &installed);
    assert!(
        check.status.success(),
        "check-config refused the enrolling agent.toml (no certificate files):\n{toml_text}\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    server.kill();

    println!(
        "MSI checked in {tables_done:?}, installed under Wine in {:?} in all",
        started.elapsed()
    );
}
