//! The durable outbox: migration attempts wait here, one file each, until
//! the controller acknowledges them. Survives agent and controller restarts;
//! a file is named by the attempt's position and holds its protobuf
//! encoding, so a resend after a crash carries the same attempt id and the
//! controller stores it once.
//!
//! Writes go to a temporary file, are synced, then renamed into place: a
//! crash leaves either the old state or the new one, never half a file.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kcdsync_proto::v1::MigrationAttempt;
use prost::Message;

use crate::probe::Cursor;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("outbox file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_owned(),
        source,
    }
}

const CURSOR_FILE: &str = "cursor";
const SUFFIX: &str = ".attempt";

pub struct Outbox {
    dir: PathBuf,
    /// Position → attempt, oldest first.
    pending: BTreeMap<u64, MigrationAttempt>,
    by_id: HashMap<String, u64>,
    next: u64,
    cursor: Cursor,
}

impl Outbox {
    /// Opens (creating) the outbox in `dir` and loads what is waiting.
    pub fn open(dir: &Path) -> Result<Outbox, OutboxError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut pending = BTreeMap::new();
        let mut by_id = HashMap::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A write that never completed: the attempt is still in the
                // event log behind the saved cursor and will be read again.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(pos) = name.strip_suffix(SUFFIX).and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let bytes = fs::read(&path).map_err(io(&path))?;
            let attempt = MigrationAttempt::decode(bytes.as_slice()).map_err(|e| OutboxError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
            by_id.insert(attempt.attempt_id.clone(), pos);
            pending.insert(pos, attempt);
        }
        let cursor_path = dir.join(CURSOR_FILE);
        let cursor = match fs::read_to_string(&cursor_path) {
            Ok(s) => s.trim().parse().map_err(|_| OutboxError::Corrupt {
                path: cursor_path.clone(),
                message: format!("`{}` is not a number", s.trim()),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&cursor_path)(e)),
        };
        let next = pending.keys().next_back().map_or(0, |p| p + 1);
        Ok(Outbox {
            dir: dir.to_owned(),
            pending,
            by_id,
            next,
            cursor,
        })
    }

    /// Where the probe's attempt reader stopped.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Stores `attempts` durably, then moves the cursor past them. An
    /// attempt already waiting (same id) is not stored twice.
    pub fn push(&mut self, attempts: &[MigrationAttempt], cursor: Cursor) -> Result<(), OutboxError> {
        for a in attempts {
            if self.by_id.contains_key(&a.attempt_id) {
                continue;
            }
            let pos = self.next;
            self.next += 1;
            write_atomically(&self.dir.join(format!("{pos:020}{SUFFIX}")), &a.encode_to_vec())?;
            self.by_id.insert(a.attempt_id.clone(), pos);
            self.pending.insert(pos, a.clone());
        }
        if cursor != self.cursor {
            write_atomically(&self.dir.join(CURSOR_FILE), cursor.to_string().as_bytes())?;
            self.cursor = cursor;
        }
        Ok(())
    }

    /// Drops acknowledged attempts. Unknown ids are ignored (already gone).
    pub fn ack<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<usize, OutboxError> {
        let mut n = 0;
        for id in ids {
            if let Some(pos) = self.by_id.remove(id) {
                self.pending.remove(&pos);
                let path = self.dir.join(format!("{pos:020}{SUFFIX}"));
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path)(e)),
                }
                n += 1;
            }
        }
        Ok(n)
    }

    /// Waiting attempts, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &MigrationAttempt> {
        self.pending.values()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OutboxError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(id: &str) -> MigrationAttempt {
        MigrationAttempt {
            attempt_id: id.into(),
            vm_name: "vm".into(),
            ..Default::default()
        }
    }

    #[test]
    fn attempts_survive_reopen_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path()).unwrap();
        o.push(&[attempt("h:1"), attempt("h:2"), attempt("h:3")], 3).unwrap();
        o.push(&[attempt("h:2")], 3).unwrap();
        assert_eq!(o.len(), 3, "an id already waiting is not stored twice");
        drop(o);

        let mut o = Outbox::open(dir.path()).unwrap();
        assert_eq!(o.cursor(), 3);
        let ids: Vec<&str> = o.pending().map(|a| a.attempt_id.as_str()).collect();
        assert_eq!(ids, ["h:1", "h:2", "h:3"], "oldest first");
        assert_eq!(o.ack(["h:2", "h:unknown"]).unwrap(), 1);
        drop(o);

        let mut o = Outbox::open(dir.path()).unwrap();
        let ids: Vec<&str> = o.pending().map(|a| a.attempt_id.as_str()).collect();
        assert_eq!(ids, ["h:1", "h:3"]);
        o.push(&[attempt("h:4")], 4).unwrap();
        let ids: Vec<&str> = o.pending().map(|a| a.attempt_id.as_str()).collect();
        assert_eq!(ids, ["h:1", "h:3", "h:4"], "new attempts go after the old ones");
    }

    #[test]
    fn half_written_files_are_dropped_and_corrupt_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("00000000000000000007.tmp"), b"partial").unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        assert!(o.is_empty());
        assert!(!dir.path().join("00000000000000000007.tmp").exists());

        fs::write(dir.path().join(format!("{:020}{SUFFIX}", 1)), b"\xff\xff\xff").unwrap();
        let e = Outbox::open(dir.path()).err().unwrap();
        assert!(e.to_string().contains("corrupt"), "{e}");
    }
}
