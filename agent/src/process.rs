//! Running an external program, the one way both probes do it: the Windows
//! probe runs powershell.exe and klist.exe, the simulated probe runs MIT
//! kinit/kvno/klist. One place decides how a child is started, fed, bounded
//! and stopped, so a hung or runaway tool can never hang or exhaust the
//! agent, whichever probe runs it.
//!
//! [`Command::run`] gives the child's output only when it exited with
//! success; everything else is a [`RunError`] that keeps what the caller
//! needs to explain it (the status and both outputs of a failed run).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// More standard output than this is refused (a runaway command).
pub const MAX_STDOUT: usize = 16 * 1024 * 1024;
/// Standard error kept for the error message.
pub const MAX_STDERR: usize = 64 * 1024;
/// Characters of a failing command's output quoted in its error.
const MAX_ERROR_TEXT: usize = 600;

/// Why a run gave no output. The `Display` texts are what the probes report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} timed out")]
    Timeout { program: String, after: Duration },
    /// Waiting for the child, reading its output or writing its input failed.
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("printed more than {cap} bytes")]
    TooMuchOutput { cap: usize },
    /// The child exited unsuccessfully; `stderr` is cut to [`MAX_STDERR`].
    #[error("{status}: {}", failure_text(.stdout, .stderr))]
    Failed {
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
}

/// What a failed command said: its error output, or its output when it
/// wrote no error, cut to [`MAX_ERROR_TEXT`] characters.
fn failure_text(stdout: &str, stderr: &str) -> String {
    let said = if stderr.trim().is_empty() {
        stdout.trim()
    } else {
        stderr.trim()
    };
    said.chars().take(MAX_ERROR_TEXT).collect()
}

/// Output of a successful run, decoded by [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// One program to run: arguments, extra environment, optional standard
/// input, and a time limit that covers the whole run.
#[derive(Debug, Clone)]
pub struct Command {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    input: Option<Vec<u8>>,
    timeout: Duration,
    label: String,
}

impl Command {
    pub fn new(program: impl Into<PathBuf>, timeout: Duration) -> Command {
        let program = program.into();
        Command {
            label: program.display().to_string(),
            program,
            args: Vec::new(),
            env: Vec::new(),
            input: None,
            timeout,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Command {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Bytes written to the child's standard input, which is then closed.
    /// Without it standard input is null, so a tool that prompts fails
    /// instead of waiting forever.
    pub fn input(mut self, bytes: impl Into<Vec<u8>>) -> Command {
        self.input = Some(bytes.into());
        self
    }

    /// The name in log lines (default: the program path).
    pub fn label(mut self, label: impl Into<String>) -> Command {
        self.label = label.into();
        self
    }

    /// Runs to completion within the time limit. Output is decoded as UTF-8
    /// with invalid bytes replaced (klist writes the OEM code page) and a BOM
    /// dropped. A child still running at the limit is killed.
    pub async fn run(&self) -> Result<Output, RunError> {
        let started = Instant::now();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(windows)]
        cmd.creation_flags(0x0800_0000); // CREATE_NO_WINDOW: no console flashes on the host.
        let mut child = spawn(&mut cmd).await.map_err(|source| RunError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(RunError::Io {
                what: "no pipes to the child process",
                source: std::io::ErrorKind::BrokenPipe.into(),
            });
        };
        let stdin = child.stdin.take();
        let input = self.input.as_deref();
        let work = async {
            // All at once: a child blocked on a full pipe never finishes.
            tokio::join!(
                write_input(stdin, input),
                read_capped(stdout, MAX_STDOUT),
                read_capped(stderr, MAX_STDERR),
                child.wait()
            )
        };
        let (written, out, err, status) = match tokio::time::timeout(self.timeout, work).await {
            Ok(done) => done,
            Err(_) => {
                // kill_on_drop would do it too; do not wait for the drop.
                let _ = child.start_kill();
                tracing::warn!(
                    step = self.label,
                    secs = self.timeout.as_secs_f64(),
                    "command timed out and was killed"
                );
                return Err(RunError::Timeout {
                    program: self.program.display().to_string(),
                    after: self.timeout,
                });
            }
        };
        let io = |what| move |source| RunError::Io { what, source };
        written.map_err(io("cannot write its input"))?;
        let status = status.map_err(io("cannot wait for the process"))?;
        let (out, out_overflow) = out.map_err(io("cannot read its output"))?;
        let (err, _) = err.map_err(io("cannot read its error output"))?;
        tracing::debug!(
            step = self.label,
            ms = started.elapsed().as_millis() as u64,
            bytes = out.len(),
            "command finished"
        );
        if out_overflow {
            return Err(RunError::TooMuchOutput { cap: MAX_STDOUT });
        }
        let (stdout, stderr) = (decode(&out), decode(&err));
        if !status.success() {
            return Err(RunError::Failed { status, stdout, stderr });
        }
        Ok(Output { stdout, stderr })
    }
}

/// Spawns; on Unix, retries a few times on ETXTBSY ("text file busy"), which
/// a just-written executable gives while another thread's fork still holds
/// it open.
async fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    #[cfg(unix)]
    for tries in 1..=5u64 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(26) => tokio::time::sleep(Duration::from_millis(20 * tries)).await,
            other => return other,
        }
    }
    cmd.spawn()
}

/// Writes `input` and closes standard input (dropping it sends EOF).
async fn write_input(stdin: Option<tokio::process::ChildStdin>, input: Option<&[u8]>) -> std::io::Result<()> {
    match (stdin, input) {
        (Some(mut stdin), Some(bytes)) => stdin.write_all(bytes).await,
        _ => Ok(()),
    }
}

/// Reads to the end, keeping at most `cap` bytes (the rest is drained so the
/// child never blocks on a full pipe); `true` when something was dropped.
async fn read_capped<R: AsyncRead + Unpin>(mut r: R, cap: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut overflow = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, overflow));
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        overflow |= n > room;
    }
}

/// UTF-8 with invalid bytes replaced, without a leading BOM (PowerShell may
/// write one).
fn decode(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.strip_prefix('\u{feff}').unwrap_or(&s).to_string()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        Command::new("/bin/sh", Duration::from_secs(10)).args(["-c", script])
    }

    #[tokio::test]
    async fn output_input_and_environment() {
        let out = sh("read line; printf '\\357\\273\\277%s|%s' \"$line\" \"$KCD_X\"; echo oops >&2")
            .env("KCD_X", "y")
            .input("secret\n")
            .run()
            .await
            .unwrap();
        assert_eq!(out.stdout, "secret|y", "BOM dropped");
        assert_eq!(out.stderr, "oops\n");
    }

    #[tokio::test]
    async fn a_failure_keeps_status_and_what_was_said() {
        let e = sh("echo out; echo err >&2; exit 3").run().await.unwrap_err();
        let RunError::Failed { status, stdout, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!((status.code(), stdout.as_str()), (Some(3), "out\n"));
        assert!(e.to_string().ends_with(": err"), "{e}");
        let e = sh("echo only-out; exit 1").run().await.unwrap_err();
        assert!(e.to_string().ends_with(": only-out"), "{e}");
    }

    #[tokio::test]
    async fn missing_program_and_timeout() {
        let e = Command::new("/nonexistent/tool", Duration::from_secs(5))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(e, RunError::Spawn { .. }), "{e}");
        assert!(e.to_string().starts_with("/nonexistent/tool: "), "{e}");
        let e = Command::new("/bin/sh", Duration::from_millis(200))
            .args(["-c", "exec sleep 30"])
            .run()
            .await
            .unwrap_err();
        assert!(matches!(e, RunError::Timeout { .. }), "{e}");
        assert_eq!(e.to_string(), "/bin/sh timed out");
    }
}
