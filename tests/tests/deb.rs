//! The controller's Debian package (`deploy/debian`): built by `build.sh` from the debug
//! binary (twice: the same bytes), read back with `dpkg-deb` (control fields, file list with
//! owners and modes, conffile, maintainer scripts, the unit checked by `systemd-analyze
//! verify`), then installed, configured, upgraded, removed and purged by the real `dpkg` in
//! a throwaway root of the test's own.
//!
//! Without root and without touching the host: `dpkg --root DIR --force-script-chrootless`
//! runs the maintainer scripts on the host with DPKG_ROOT=DIR (they keep every path under
//! it and leave the service manager alone when it is set), inside `fakeroot` (its chowns
//! are recorded in a state file instead of made; `stat` under the same state reads them
//! back), with dpkg's log and HOME in the temp dir. Commands that would change the host
//! (systemctl, adduser, useradd...) are shadowed on PATH by tripwires that record the call
//! and fail: the test asserts none ran.
//!
//! What this cannot show: the unit under a running systemd (not PID 1 here; `systemctl
//! start` with the template config fails in its ExecStartPre, which is the `check-config`
//! run below), the scripts' branches for a real system (DPKG_ROOT unset: adduser where
//! systemd-sysusers is missing, daemon-reload, try-restart on upgrade, stop on remove), and
//! apt's dependency resolution (dpkg runs with --force-depends: the throwaway root has no
//! libc6 package).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use kcdsync_tests::{controller_bin, repo_root, write_private};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const PACKAGE: &str = "kcdsync-controller";

/// What would change the host if a maintainer script ran it outside DPKG_ROOT.
const TRIPWIRES: &[&str] = &[
    "systemctl",
    "deb-systemd-invoke",
    "deb-systemd-helper",
    "invoke-rc.d",
    "service",
    "adduser",
    "addgroup",
    "useradd",
    "groupadd",
    "deluser",
    "delgroup",
    "userdel",
    "groupdel",
];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `c` and returns its stdout; panics with both streams when it fails.
fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `deploy/debian/build.sh` as CI and admins run it: the path of the package it built.
fn build(binary: &Path, version: &str, out_dir: &Path) -> PathBuf {
    let deb = ok(Command::new("bash")
        .arg(repo_root().join("deploy/debian/build.sh"))
        .arg("--binary")
        .arg(binary)
        .args(["--version", version, "--compress", "none"])
        .arg("--out-dir")
        .arg(out_dir));
    let deb = PathBuf::from(deb.trim());
    assert_eq!(
        deb,
        out_dir.join(format!("{PACKAGE}_{version}_amd64.deb")),
        "build.sh named its package otherwise"
    );
    deb
}

fn field(deb: &Path, name: &str) -> String {
    ok(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim_end()
        .to_owned()
}

/// The throwaway root dpkg installs into, and the fakeroot state that holds its owners.
struct Root {
    dir: PathBuf,
    root: PathBuf,
    state: PathBuf,
    shims: PathBuf,
    tripped: PathBuf,
}

impl Root {
    fn new(dir: &Path) -> Root {
        let root = dir.join("root");
        let admin = root.join("var/lib/dpkg");
        for d in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(admin.join(d)).unwrap();
        }
        std::fs::write(admin.join("status"), "").unwrap();
        let shims = dir.join("shims");
        std::fs::create_dir_all(&shims).unwrap();
        let tripped = dir.join("tripped.log");
        for name in TRIPWIRES {
            let shim = shims.join(name);
            std::fs::write(
                &shim,
                format!("#!/bin/sh\necho \"{name} $*\" >>'{}'\nexit 1\n", tripped.display()),
            )
            .unwrap();
            std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let state = dir.join("fakeroot.state");
        ok(Command::new("fakeroot").arg("-s").arg(&state).arg("true"));
        Root {
            dir: dir.to_owned(),
            root,
            state,
            shims,
            tripped,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// `cmd` under fakeroot with this root's owner state (saved again afterwards when
    /// `save`: a second slower), the tripwires first on PATH, HOME in the temp dir, no
    /// DPKG_ROOT of the caller's.
    fn fakeroot(&self, save: bool, cmd: &[&str]) -> Command {
        let mut c = Command::new("fakeroot");
        c.arg("-i").arg(&self.state);
        if save {
            c.arg("-s").arg(&self.state);
        }
        c.arg("--")
            .args(cmd)
            .env(
                "PATH",
                format!("{}:{}", self.shims.display(), std::env::var("PATH").unwrap_or_default()),
            )
            .env("HOME", &self.dir)
            .env_remove("DPKG_ROOT")
            .env_remove("DPKG_ADMINDIR");
        c
    }

    /// dpkg on this root: scripts run here with DPKG_ROOT, its log in the temp dir, the
    /// root's missing libc6 and systemd overlooked.
    fn dpkg(&self, args: &[&str]) -> Output {
        let root = format!("--root={}", self.root.display());
        let log = format!("--log={}", self.dir.join("dpkg.log").display());
        let mut a = vec![
            "dpkg",
            root.as_str(),
            log.as_str(),
            "--force-script-chrootless",
            "--force-depends",
            "--force-confold",
        ];
        a.extend_from_slice(args);
        let out = self.fakeroot(true, &a).output().unwrap();
        assert!(
            out.status.success(),
            "dpkg {args:?} failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    /// "uid:gid mode" of `p` in the root, as fakeroot recorded it.
    fn owner_mode(&self, p: &str) -> String {
        let path = self.path(p);
        ok(&mut self.fakeroot(false, &["stat", "-c", "%u:%g %a", path.to_str().unwrap()]))
            .trim()
            .to_owned()
    }

    /// The entry of `name` in the root's /etc/passwd or /etc/group, split on ':'.
    fn entries(&self, db: &str, name: &str) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.path(&format!("/etc/{db}")))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
            .filter(|e| e[0] == name)
            .collect()
    }

    /// dpkg's status of the package in the root: "install ok installed", ...
    fn status(&self) -> String {
        let status = std::fs::read_to_string(self.path("/var/lib/dpkg/status")).unwrap();
        status
            .split("\n\n")
            .find(|p| p.starts_with(&format!("Package: {PACKAGE}\n")))
            .map(|p| {
                let s = |k: &str| p.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_default().to_owned();
                format!("{} {}", s("Status: "), s("Version: "))
            })
            .unwrap_or_else(|| "not installed".into())
    }

    /// What the tripwires caught: commands that would have changed the host.
    fn tripped(&self) -> String {
        std::fs::read_to_string(&self.tripped).unwrap_or_default()
    }
}

/// The bytes of one section of an ELF file.
fn section(elf: &Path, name: &str) -> Vec<u8> {
    let out = tempfile::NamedTempFile::new().unwrap();
    ok(Command::new("objcopy")
        .args(["-O", "binary", "--only-section", name])
        .arg(elf)
        .arg(out.path()));
    std::fs::read(out.path()).unwrap()
}

/// Every path under `dir`, relative, directories with a trailing '/'.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                found.push(rel + "/");
                todo.push(path);
            } else {
                found.push(rel);
            }
        }
    }
    found
}

/// The installed binary on a config: exit code, stdout + stderr.
fn check_config(binary: &Path, config: &Path) -> (Option<i32>, String) {
    let out = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("check-config")
        .env_remove("KCDSYNC_CONFIG")
        .output()
        .unwrap();
    (out.status.code(), text(&out.stdout) + &text(&out.stderr))
}

/// The host's own view of the package and the user, to compare after the test.
fn host_state() -> (String, bool) {
    let q = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status} ${Version}", PACKAGE])
        .output()
        .unwrap();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    (text(&q.stdout), passwd.lines().any(|l| l.starts_with("kcdsync:")))
}

#[test]
fn the_controller_deb_installs_unstarted_and_purges_its_state() {
    for tool in ["dpkg-deb", "dpkg", "dpkg-shlibdeps", "fakeroot", "systemd-sysusers"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is missing: apt-get install dpkg-dev fakeroot systemd (.ci/run does)"
        );
    }
    let started = Instant::now();
    let host_before = host_state();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    // KCDSYNC_KEEP_DEB_TEST=1 keeps the packages, the root and dpkg's log.
    let _tmp = if std::env::var_os("KCDSYNC_KEEP_DEB_TEST").is_some() {
        eprintln!("KCDSYNC_KEEP_DEB_TEST: keeping {}", tmp.keep().display());
        None
    } else {
        Some(tmp)
    };
    let binary = controller_bin();

    // --- Built twice from the same inputs: the same bytes. ---
    let deb = build(&binary, VERSION, &dir.join("out"));
    let again = build(&binary, VERSION, &dir.join("again"));
    assert!(
        std::fs::read(&deb).unwrap() == std::fs::read(&again).unwrap(),
        "two builds of the same binary and version differ: the package is not reproducible"
    );
    let built = started.elapsed();

    // --- The control fields. ---
    assert_eq!(field(&deb, "Package"), PACKAGE);
    assert_eq!(field(&deb, "Version"), VERSION);
    assert_eq!(field(&deb, "Architecture"), "amd64");
    assert_eq!(field(&deb, "Section"), "admin");
    assert_eq!(field(&deb, "Priority"), "optional");
    assert_eq!(field(&deb, "Maintainer"), "kcdsync <dev@kcdsync.invalid>");
    let depends = field(&deb, "Depends");
    let depends: Vec<&str> = depends.split(", ").collect();
    assert!(
        depends.iter().any(|d| d.starts_with("libc6 (>= ")),
        "Depends has no versioned libc6: {depends:?}"
    );
    assert!(
        depends.contains(&"systemd-sysusers | adduser"),
        "Depends lacks what postinst creates the user with: {depends:?}"
    );
    // libgssapi-krb5-2 exactly when the binary links MIT's GSS-API (kcdsync-gss, enrollment).
    let ldd = ok(Command::new("ldd").arg(&binary));
    assert_eq!(
        ldd.contains("libgssapi_krb5"),
        depends.iter().any(|d| d.starts_with("libgssapi-krb5-2")),
        "Depends {depends:?} disagrees with ldd:\n{ldd}"
    );
    let description = field(&deb, "Description");
    assert!(
        description.contains("0x8009030E")
            && description.contains("protocol transition")
            && description.contains("README.Debian"),
        "the description does not say what the package is for and where to start:\n{description}"
    );

    // --- The files: exactly these, owned by root in the archive (postinst hands two
    //     directories and the conffile to kcdsync), the private ones 0750/0640. ---
    let contents = ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let listed: BTreeSet<String> = contents
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", f[0], f[1], f[5])
        })
        .collect();
    let expected: BTreeSet<String> = [
        "drwxr-xr-x root/root ./",
        "drwxr-xr-x root/root ./etc/",
        "drwxr-x--- root/root ./etc/kcdsync/",
        "-rw-r----- root/root ./etc/kcdsync/controller.toml",
        "drwxr-xr-x root/root ./lib/",
        "drwxr-xr-x root/root ./lib/systemd/",
        "drwxr-xr-x root/root ./lib/systemd/system/",
        "-rw-r--r-- root/root ./lib/systemd/system/kcdsync-controller.service",
        "drwxr-xr-x root/root ./usr/",
        "drwxr-xr-x root/root ./usr/bin/",
        "-rwxr-xr-x root/root ./usr/bin/kcdsync-controller",
        "drwxr-xr-x root/root ./usr/lib/",
        "drwxr-xr-x root/root ./usr/lib/sysusers.d/",
        "-rw-r--r-- root/root ./usr/lib/sysusers.d/kcdsync-controller.conf",
        "drwxr-xr-x root/root ./usr/share/",
        "drwxr-xr-x root/root ./usr/share/doc/",
        "drwxr-xr-x root/root ./usr/share/doc/kcdsync-controller/",
        "-rw-r--r-- root/root ./usr/share/doc/kcdsync-controller/README.Debian",
        "-rw-r--r-- root/root ./usr/share/doc/kcdsync-controller/README.md",
        "-rw-r--r-- root/root ./usr/share/doc/kcdsync-controller/changelog.Debian.gz",
        "-rw-r--r-- root/root ./usr/share/doc/kcdsync-controller/copyright",
        "drwxr-xr-x root/root ./var/",
        "drwxr-xr-x root/root ./var/lib/",
        "drwxr-x--- root/root ./var/lib/kcdsync/",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(
        listed.difference(&expected).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "unexpected in the package:\n{contents}"
    );
    assert_eq!(
        expected.difference(&listed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "missing from the package:\n{contents}"
    );
    // Installed-Size: what the files take, in KiB (directories count a little).
    let bytes: u64 = contents
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap().parse::<u64>().unwrap())
        .sum();
    let installed_kib: u64 = field(&deb, "Installed-Size").parse().unwrap();
    assert!(
        (bytes / 1024..bytes / 1024 + 256).contains(&installed_kib),
        "Installed-Size {installed_kib} KiB for {bytes} bytes of files"
    );

    // --- The control archive: the conffile, the scripts (valid sh, executable). ---
    let control = dir.join("control");
    ok(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&control));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/kcdsync/controller.toml\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755, "{script} is mode {mode:o}");
        ok(Command::new("sh").arg("-n").arg(&path));
        let body = std::fs::read_to_string(&path).unwrap();
        assert!(
            body.starts_with("#!/bin/sh\n") && body.contains("\nset -e\n"),
            "{script}"
        );
    }
    assert!(
        !control.join("preinst").exists(),
        "a preinst appeared: the test does not cover it"
    );

    // --- The unit: deploy/systemd's, with the package's paths, and systemd accepts it. ---
    let extracted = dir.join("extracted");
    ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted));
    let unit = std::fs::read_to_string(extracted.join("lib/systemd/system/kcdsync-controller.service")).unwrap();
    let source = std::fs::read_to_string(repo_root().join("deploy/systemd/kcdsync-controller.service")).unwrap();
    assert_eq!(
        unit,
        source
            .replace("/usr/local/bin/", "/usr/bin/")
            .replace("/usr/share/doc/kcdsync/", "/usr/share/doc/kcdsync-controller/"),
        "the packaged unit is not deploy/systemd's with /usr/bin paths"
    );
    for line in [
        "User=kcdsync",
        "Group=kcdsync",
        "ExecStartPre=/usr/bin/kcdsync-controller check-config",
        "ExecStart=/usr/bin/kcdsync-controller serve --log-format json",
        "Environment=KCDSYNC_CONFIG=/etc/kcdsync/controller.toml",
        "StateDirectory=kcdsync",
        "StateDirectoryMode=0750",
        "ConfigurationDirectory=kcdsync",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "UMask=0077",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}:\n{unit}");
    }
    assert_eq!(
        std::fs::read_to_string(extracted.join("usr/lib/sysusers.d/kcdsync-controller.conf"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        ["u kcdsync - \"kcdsync controller\" /var/lib/kcdsync"]
    );
    if Path::new("/usr/bin/systemd-analyze").exists() {
        // verify checks that ExecStart's binary exists: the copy it reads names the
        // extracted one (the package's /usr/bin is not the host's).
        let copy = dir.join("verify/kcdsync-controller.service");
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        let extracted_bin = extracted.join("usr/bin/kcdsync-controller");
        std::fs::write(
            &copy,
            unit.replace("/usr/bin/kcdsync-controller", extracted_bin.to_str().unwrap()),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    } else {
        println!("systemd-analyze is missing: the unit is not verified by systemd");
    }

    // --- Installed into the throwaway root. ---
    let root = Root::new(&dir);
    root.dpkg(&["--install", deb.to_str().unwrap()]);
    assert_eq!(root.status(), format!("install ok installed {VERSION}"));
    let user = root.entries("passwd", "kcdsync");
    assert_eq!(user.len(), 1, "kcdsync in the root's passwd: {user:?}");
    let (uid, gid) = (user[0][2].clone(), user[0][3].clone());
    assert!(
        uid.parse::<u32>().unwrap() < 1000,
        "kcdsync is no system user: {user:?}"
    );
    assert_eq!(user[0][5..], ["/var/lib/kcdsync", "/usr/sbin/nologin"]);
    assert_eq!(root.entries("group", "kcdsync")[0][2], gid);
    assert_eq!(root.owner_mode("/var/lib/kcdsync"), format!("{uid}:{gid} 750"));
    assert_eq!(root.owner_mode("/etc/kcdsync"), format!("0:{gid} 750"));
    assert_eq!(root.owner_mode("/etc/kcdsync/controller.toml"), format!("0:{gid} 640"));
    assert_eq!(root.owner_mode("/usr/bin/kcdsync-controller"), "0:0 755");
    let installed = root.path("/usr/bin/kcdsync-controller");
    // The binary built, its debug sections (line tables) compressed: the same code.
    assert_eq!(
        section(&installed, ".text"),
        section(&binary, ".text"),
        "the installed binary's code is not the built one's"
    );
    let sections = ok(Command::new("readelf").args(["-S", "-W"]).arg(&installed));
    let debug_line = sections
        .lines()
        .find(|l| l.contains(" .debug_line "))
        .unwrap_or_else(|| panic!("the installed binary has no line tables:\n{sections}"));
    assert!(
        debug_line
            .split_whitespace()
            .rev()
            .nth(3)
            .is_some_and(|flags| flags.contains('C')),
        "the installed binary's line tables are not compressed: {debug_line}"
    );
    // The package's md5sums match what was installed (dpkg --verify reads them).
    let verify = root.dpkg(&["--verify", PACKAGE]);
    assert_eq!(text(&verify.stdout), "", "dpkg --verify after install");
    // Nothing started or enabled: no unit symlink anywhere in the root.
    assert!(
        !root.path("/etc/systemd/system").exists(),
        "the install enabled the service"
    );

    // --- The template refuses to start, saying which file and line to edit. ---
    let conffile = root.path("/etc/kcdsync/controller.toml");
    let (code, said) = check_config(&installed, &conffile);
    assert_eq!(code, Some(1), "check-config on the shipped template:\n{said}");
    assert!(
        said.contains(&format!("invalid configuration in {}", conffile.display()))
            && said.contains("edit_this_file_first")
            && said.contains("edit them, then delete this line")
            && !said.contains("panicked"),
        "check-config on the shipped template does not say what to edit:\n{said}"
    );

    // --- The admin configures it: the examples edited (here: paths into the root), the
    //     line deleted, the files it names put in place; then it is valid, its store in
    //     the state directory. ---
    let etc = root.path("/etc/kcdsync");
    ok(Command::new(&installed).args(["certs", "ca", "--out-dir"]).arg(&etc));
    ok(Command::new(&installed)
        .args(["certs", "controller", "--name", "kcdsync.contoso.com", "--ca-dir"])
        .arg(&etc)
        .arg("--out-dir")
        .arg(&etc));
    std::fs::copy(etc.join("ca.pem"), etc.join("ad-ca.pem")).unwrap();
    write_private(&etc.join("bind.pass"), "s3cret");
    write_private(
        &etc.join("api-tokens.toml"),
        "[[token]]\nname = \"scvmm\"\nrole = \"write\"\ntoken = \"0123456789abcdef0123456789abcdef\"\n",
    );
    let template = std::fs::read_to_string(&conffile).unwrap();
    let edited: String = template
        .lines()
        .filter(|l| !l.starts_with("edit_this_file_first"))
        .map(|l| {
            l.replace("/etc/kcdsync/", &format!("{}/", etc.display())).replace(
                "/var/lib/kcdsync/",
                &format!("{}/", root.path("/var/lib/kcdsync").display()),
            ) + "\n"
        })
        .collect();
    std::fs::write(&conffile, &edited).unwrap();
    let (code, said) = check_config(&installed, &conffile);
    assert_eq!(code, Some(0), "check-config on the edited template:\n{said}");
    assert!(
        said.contains(&format!(
            "store: sqlite://{}/kcdsync.db",
            root.path("/var/lib/kcdsync").display()
        )),
        "the template's store is not in the state directory:\n{said}"
    );
    // The store, as serve would have left it.
    std::fs::write(root.path("/var/lib/kcdsync/kcdsync.db"), "plans and audit").unwrap();

    // --- Upgraded: the edited config, its owner and the store are kept. ---
    let newer = format!("{VERSION}+1");
    let deb2 = build(&binary, &newer, &dir.join("out"));
    root.dpkg(&["--install", deb2.to_str().unwrap()]);
    assert_eq!(root.status(), format!("install ok installed {newer}"));
    assert_eq!(std::fs::read_to_string(&conffile).unwrap(), edited);
    assert_eq!(root.owner_mode("/etc/kcdsync/controller.toml"), format!("0:{gid} 640"));
    assert_eq!(root.owner_mode("/var/lib/kcdsync"), format!("{uid}:{gid} 750"));
    assert!(root.path("/var/lib/kcdsync/kcdsync.db").is_file());
    assert_eq!(
        root.entries("passwd", "kcdsync"),
        user,
        "the upgrade changed or duplicated the user"
    );
    let log = std::fs::read_to_string(dir.join("dpkg.log")).unwrap();
    assert!(
        log.contains(&format!("configure {PACKAGE}:amd64 {newer} {VERSION}")),
        "postinst was not told the version it upgrades from:\n{log}"
    );

    // --- Removed: the binary and the unit go; config, store and user stay. ---
    root.dpkg(&["--remove", PACKAGE]);
    assert_eq!(root.status(), format!("deinstall ok config-files {newer}"));
    assert!(!installed.exists() && !root.path("/lib/systemd/system/kcdsync-controller.service").exists());
    assert_eq!(std::fs::read_to_string(&conffile).unwrap(), edited);
    assert!(root.path("/var/lib/kcdsync/kcdsync.db").is_file());
    assert_eq!(root.entries("passwd", "kcdsync"), user);

    // --- Purged: the store, the config and the admin's enablement go; the secrets the admin
    //     put in /etc/kcdsync and the user stay. ---
    let wants = root.path("/etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/lib/systemd/system/kcdsync-controller.service",
        wants.join("kcdsync-controller.service"),
    )
    .unwrap();
    let purge = root.dpkg(&["--purge", PACKAGE]);
    assert_eq!(root.status(), "not installed");
    assert!(!root.path("/var/lib/kcdsync").exists(), "purge left the store");
    assert!(!conffile.exists(), "purge left controller.toml");
    assert!(
        std::fs::symlink_metadata(wants.join("kcdsync-controller.service")).is_err(),
        "purge left the enablement symlink"
    );
    for secret in ["bind.pass", "ca.key", "controller.key", "api-tokens.toml"] {
        assert!(etc.join(secret).is_file(), "purge removed the admin's {secret}");
    }
    assert!(
        text(&purge.stderr).contains("/etc/kcdsync' not empty so not removed"),
        "dpkg did not say it kept /etc/kcdsync:\n{}",
        text(&purge.stderr)
    );
    assert_eq!(root.entries("passwd", "kcdsync"), user);
    // Nothing else is left: what dpkg tracks goes with it, and the scripts made no file of
    // their own but the user's entries.
    let left: BTreeSet<String> = files_under(&root.root)
        .into_iter()
        // dpkg's own database.
        .filter(|p| !p.starts_with("var/lib/dpkg/"))
        .collect();
    let expected: BTreeSet<String> = [
        "etc/",
        "etc/.pwd.lock",
        "etc/group",
        "etc/gshadow",
        "etc/passwd",
        "etc/shadow",
        "etc/kcdsync/",
        "etc/kcdsync/ad-ca.pem",
        "etc/kcdsync/api-tokens.toml",
        "etc/kcdsync/bind.pass",
        "etc/kcdsync/ca.key",
        "etc/kcdsync/ca.pem",
        "etc/kcdsync/controller.key",
        "etc/kcdsync/controller.pem",
        // Made by the test, as `systemctl enable` would.
        "etc/systemd/",
        "etc/systemd/system/",
        "etc/systemd/system/multi-user.target.wants/",
        "var/",
        "var/lib/",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(left, expected, "after purge the root holds other files than expected");

    // --- And the host was left alone. ---
    assert_eq!(
        root.tripped(),
        "",
        "a maintainer script ran a command that changes the host"
    );
    assert_eq!(host_state(), host_before, "the host's package or user changed");
    println!(
        "built twice in {built:?}; inspected, installed, upgraded, removed and purged in {:?} in all",
        started.elapsed()
    );
}
