//! Wine for the Windows build's tests (tests/wine.rs runs the agent, tests/msi.rs installs its
//! MSI): Debian's wine64, a prefix of each test's own, and the cross-built agent.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::repo_root;

pub const WINE: &str = "/usr/lib/wine/wine64";
pub const WINESERVER: &str = "/usr/lib/wine/wineserver64";
pub const MINGW: &str = "x86_64-w64-mingw32-gcc";

/// The agent as `deploy/test.sh` cross-builds it, when it has been built.
pub fn agent_exe() -> Option<PathBuf> {
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| repo_root().join("target"), PathBuf::from);
    let exe = target.join("x86_64-pc-windows-gnu/debug/kcdsync-agent.exe");
    exe.exists().then_some(exe)
}

/// A Wine prefix in `dir`, with the ProcessPrng shim Wine 8 lacks.
pub fn prefix(dir: &Path) -> PathBuf {
    for tool in [WINE, "/usr/bin/x86_64-w64-mingw32-gcc"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install wine64 gcc-mingw-w64-x86-64 (.ci/run does)"
        );
    }
    let prefix = dir.join("prefix");
    // wineboot's exit status says nothing useful (it reports the missing 32-bit half of a
    // wine64-only install as a failure): the prefix is judged by its system32.
    let _ = wine(&prefix).arg("wineboot").arg("--init").status().unwrap();
    // wineboot may return before the prefix is complete: wait for its wineserver to finish.
    let _ = Command::new(WINESERVER).env("WINEPREFIX", &prefix).arg("-w").status();
    let system32 = prefix.join("drive_c/windows/system32");
    assert!(
        system32.join("kernel32.dll").is_file(),
        "wineboot --init left no complete prefix in {}",
        prefix.display()
    );
    let ok = Command::new(MINGW)
        .args(["-shared", "-O2", "-o"])
        .arg(system32.join("bcryptprimitives.dll"))
        .arg(repo_root().join("deploy/windows/wine/bcryptprimitives.c"))
        .arg("-ladvapi32")
        .status()
        .unwrap()
        .success();
    assert!(ok, "building the bcryptprimitives shim failed");
    prefix
}

/// `wine64` in `prefix`, quiet, without a display.
pub fn wine(prefix: &Path) -> Command {
    let mut c = Command::new(WINE);
    c.env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        // No Mono/Gecko installers, no display: a console program needs neither.
        .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
        .env_remove("DISPLAY")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}
