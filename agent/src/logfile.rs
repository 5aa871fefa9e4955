//! The agent's log as a Windows service: the SCM discards a service's stderr,
//! so the service writes its log lines to `agent.log` in a directory of its
//! own, rotated by size (`agent.log.1` is the newest old one, up to
//! `agent.log.<keep>`), so a host left alone for a year neither loses the
//! recent lines nor fills its disk. A line is never split across two files:
//! the file rotates before a line that would take it past its size.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Size of one log file before it rotates.
pub const MAX_BYTES: u64 = 10 << 20;
/// Old files kept beside the current one.
pub const KEEP: usize = 5;
const NAME: &str = "agent.log";

struct Rotating {
    dir: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<File>,
    written: u64,
}

impl Rotating {
    fn path(&self, n: usize) -> PathBuf {
        match n {
            0 => self.dir.join(NAME),
            n => self.dir.join(format!("{NAME}.{n}")),
        }
    }

    fn open_current(&mut self) -> io::Result<()> {
        let f = OpenOptions::new().create(true).append(true).open(self.path(0))?;
        self.written = f.metadata()?.len();
        self.file = Some(f);
        Ok(())
    }

    /// agent.log.(keep-1) -> .keep, ..., agent.log -> .1, then a new agent.log. The file is
    /// closed first: Windows does not rename an open file.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let _ = std::fs::remove_file(self.path(self.keep));
        for n in (0..self.keep).rev() {
            let from = self.path(n);
            if from.exists() {
                std::fs::rename(&from, self.path(n + 1))?;
            }
        }
        self.open_current()
    }

    fn write_line(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.written > 0 && self.written + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.open_current()?;
        }
        self.file.as_mut().expect("opened above").write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }
}

/// A handle on the log file; clones write to the same file (one line per `write`, as the
/// tracing formatter writes them).
#[derive(Clone)]
pub struct LogFile(Arc<Mutex<Rotating>>);

impl LogFile {
    /// Opens (creating `dir` when missing) `dir/agent.log` for appending.
    pub fn open(dir: &Path, max_bytes: u64, keep: usize) -> io::Result<LogFile> {
        std::fs::create_dir_all(dir)?;
        let mut r = Rotating {
            dir: dir.to_owned(),
            max_bytes,
            keep: keep.max(1),
            file: None,
            written: 0,
        };
        r.open_current()?;
        Ok(LogFile(Arc::new(Mutex::new(r))))
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        r.write_line(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match r.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_log_rotates_by_size_keeps_the_newest_files_and_never_splits_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::open(dir.path(), 100, 2).unwrap();
        for i in 0..10 {
            // 40-byte lines: two fit in 100 bytes, the third starts a new file.
            log.write_all(format!("line {i:02} {}\n", "x".repeat(31)).as_bytes())
                .unwrap();
        }
        log.flush().unwrap();
        assert_eq!(files(dir.path()), ["agent.log", "agent.log.1", "agent.log.2"]);
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert!(read("agent.log").starts_with("line 08") && read("agent.log").contains("line 09"));
        assert!(read("agent.log.1").starts_with("line 06"));
        assert!(read("agent.log.2").starts_with("line 04"), "older files are gone");
        for n in ["agent.log", "agent.log.1", "agent.log.2"] {
            assert!(read(n).lines().all(|l| l.len() == 39), "whole lines only in {n}");
        }
    }

    #[test]
    fn a_restarted_agent_appends_and_counts_what_the_file_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        LogFile::open(dir.path(), 100, 2)
            .unwrap()
            .write_all(&[b'a'; 80])
            .unwrap();
        let mut again = LogFile::open(dir.path(), 100, 2).unwrap();
        again.write_all(&[b'b'; 30]).unwrap();
        assert_eq!(
            files(dir.path()),
            ["agent.log", "agent.log.1"],
            "80 + 30 > 100: rotated"
        );
        assert_eq!(std::fs::read(dir.path().join("agent.log")).unwrap(), [b'b'; 30]);
    }

    #[test]
    fn a_line_longer_than_the_limit_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::open(dir.path(), 10, 3).unwrap();
        log.write_all(&[b'z'; 25]).unwrap();
        log.write_all(b"short\n").unwrap();
        assert_eq!(std::fs::read(dir.path().join("agent.log.1")).unwrap(), [b'z'; 25]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap(),
            "short\n"
        );
    }
}
