//! The durable outbox: migration attempts wait here, one file each, until
//! the controller acknowledges them. Survives agent and controller restarts,
//! crashes and power cuts; a file is named by the attempt's position, so a
//! resend after a crash carries the same attempt id and the controller
//! stores it once.
//!
//! The rules it keeps:
//! - An attempt is on disk (file and directory entry synced, see
//!   [`durable`]) before the event-log cursor moves past it. A crash between
//!   the two reads the same events again, under the same ids, and an id
//!   already waiting is not stored twice.
//! - A file it cannot read (empty, truncated, garbage) is moved aside and
//!   reported ([`quarantine`]), never fatal: a corrupt cursor means the event
//!   log is read again from its start, which the ids make harmless.
//! - Above `max_bytes` it stops taking attempts: the agent then stops reading
//!   the event log, so the *newest* attempts wait there (not in memory) and
//!   nothing already stored is dropped. See [`Outbox::is_full`].

mod cursor;
// Also the agent's certificate and key files, when they are renewed (`crate::identity`).
pub(crate) mod durable;
mod quarantine;
mod record;

use std::collections::{BTreeMap, HashMap};
use std::fs;
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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_owned(),
        source,
    }
}

impl From<durable::WriteError> for OutboxError {
    fn from(e: durable::WriteError) -> Self {
        OutboxError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

const CURSOR_FILE: &str = "cursor";
const SUFFIX: &str = ".attempt";
/// Problems kept for the reports; more are counted, not listed.
const MAX_PROBLEMS: usize = 20;

/// The default of `outbox_max_bytes`: 64 MiB, some 100,000 typical attempts.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

pub struct Outbox {
    dir: PathBuf,
    /// Position → attempt, oldest first.
    pending: BTreeMap<u64, MigrationAttempt>,
    by_id: HashMap<String, u64>,
    next: u64,
    cursor: Cursor,
    /// Encoded size of the pending attempts.
    bytes: u64,
    max_bytes: u64,
    /// Files moved aside and attempts given up on, as sentences for the
    /// operator (log lines and `HostReport.probe_errors`).
    problems: Vec<String>,
    problems_left_out: usize,
    /// `is_full` when [`Outbox::full_changed`] last looked.
    was_full: bool,
}

impl Outbox {
    /// Opens (creating) the outbox in `dir` and loads what is waiting. Only
    /// an unusable directory is an error: unreadable files are quarantined.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Outbox, OutboxError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut o = Outbox {
            dir: dir.to_owned(),
            pending: BTreeMap::new(),
            by_id: HashMap::new(),
            next: 0,
            cursor: Cursor::default(),
            bytes: 0,
            max_bytes,
            problems: Vec::new(),
            problems_left_out: 0,
            was_full: false,
        };
        let mut earlier = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if quarantine::is_quarantined(&name) {
                earlier.push(name);
            } else if name.ends_with(".tmp") {
                // A write that never completed: the attempt is still in the
                // event log behind the saved cursor and will be read again.
                let _ = fs::remove_file(&path);
            } else if let Some(pos) = name.strip_suffix(SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
                o.load(pos, &path);
            }
        }
        o.load_cursor();
        if !earlier.is_empty() {
            earlier.sort();
            o.problem(format!(
                "outbox {}: {} file(s) quarantined earlier are still there ({}): inspect them, then delete them",
                dir.display(),
                earlier.len(),
                earlier.join(", ")
            ));
        }
        o.next = o.pending.keys().next_back().map_or(0, |p| p + 1);
        Ok(o)
    }

    fn load(&mut self, pos: u64, path: &Path) {
        match fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| record::decode(&b))
        {
            Ok(a) if !self.by_id.contains_key(&a.attempt_id) => {
                self.bytes += a.encoded_len() as u64;
                self.by_id.insert(a.attempt_id.clone(), pos);
                self.pending.insert(pos, a);
            }
            // The same attempt twice (a copy restored by hand): one is enough.
            Ok(_) => {
                let _ = fs::remove_file(path);
            }
            Err(why) => self.quarantine(
                path,
                "corrupt",
                &why,
                "the attempt it held is not sent (the VMMS event log still has its event); inspect the file, \
                 then delete it",
            ),
        }
    }

    fn load_cursor(&mut self) {
        let path = self.dir.join(CURSOR_FILE);
        match fs::read(&path) {
            Ok(bytes) => match cursor::decode(&String::from_utf8_lossy(&bytes)) {
                Ok(c) => self.cursor = c,
                Err(why) => self.quarantine(
                    &path,
                    "corrupt",
                    &why,
                    "the event log is read again from its start (attempts the controller already has keep their \
                     ids and are stored once); delete the quarantined file once the agent runs",
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => self.quarantine(
                &path,
                "corrupt",
                &e.to_string(),
                "the event log is read again from its start",
            ),
        }
    }

    /// Moves `path` aside, logs why and what to do, and keeps the sentence
    /// for the reports.
    fn quarantine(&mut self, path: &Path, tag: &str, why: &str, what_now: &str) {
        let sentence = match quarantine::move_aside(path, tag) {
            Ok(to) => format!(
                "outbox file {} is unusable ({why}): moved to {}; {what_now}",
                path.display(),
                to.display()
            ),
            Err(e) => format!(
                "outbox file {} is unusable ({why}) and could not be moved aside ({e}): it is ignored; {what_now}",
                path.display()
            ),
        };
        tracing::error!(file = %path.display(), "{sentence}");
        self.problem(sentence);
    }

    fn problem(&mut self, sentence: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(sentence);
        } else {
            self.problems_left_out += 1;
        }
    }

    /// What went wrong with the outbox since the agent started, one sentence
    /// each, for `HostReport.probe_errors`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.problems.clone();
        if self.problems_left_out > 0 {
            out.push(format!(
                "outbox: {} more problem(s), see the agent's log",
                self.problems_left_out
            ));
        }
        out
    }

    /// Where the probe's attempt reader stopped.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// At or above `max_bytes`: the agent must not read more attempts until
    /// acks drain it. The cap is checked before a page of the event log is
    /// read, so it may be exceeded by one page (500 events at most).
    pub fn is_full(&self) -> bool {
        self.bytes >= self.max_bytes
    }

    /// `Some(is_full)` when that changed since the last call: one log line
    /// per change, not one per attempts interval.
    pub fn full_changed(&mut self) -> Option<bool> {
        let full = self.is_full();
        (full != self.was_full).then(|| {
            self.was_full = full;
            full
        })
    }

    /// Encoded size of the waiting attempts.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Stores `attempts` durably, then moves the cursor past them. An
    /// attempt already waiting (same id) is not stored twice.
    pub fn push(&mut self, attempts: &[MigrationAttempt], cursor: Cursor) -> Result<(), OutboxError> {
        let mut wrote = false;
        for a in attempts {
            if self.by_id.contains_key(&a.attempt_id) {
                continue;
            }
            let pos = self.next;
            durable::replace(&self.attempt_path(pos), &record::encode(a))?;
            wrote = true;
            self.next += 1;
            self.bytes += a.encoded_len() as u64;
            self.by_id.insert(a.attempt_id.clone(), pos);
            self.pending.insert(pos, a.clone());
        }
        if wrote {
            // The names of the files just written, before the cursor moves.
            durable::sync_dir(&self.dir)?;
        }
        crash_point("outbox-after-attempts");
        if cursor != self.cursor {
            durable::write_atomically(&self.dir.join(CURSOR_FILE), cursor::encode(&cursor).as_bytes())?;
            self.cursor = cursor;
        }
        Ok(())
    }

    /// Drops acknowledged attempts. Unknown ids are ignored (already gone).
    /// The removal is not synced: a file a power cut brings back is only
    /// sent again, and the controller stores it once.
    pub fn ack<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<usize, OutboxError> {
        let mut n = 0;
        for id in ids {
            if let Some(pos) = self.by_id.remove(id) {
                if let Some(a) = self.pending.remove(&pos) {
                    self.bytes -= a.encoded_len() as u64;
                }
                let path = self.attempt_path(pos);
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

    /// Gives up on sending the attempt `id` (the controller cannot take it:
    /// `why`): its file is moved aside and reported, never resent.
    pub fn set_aside(&mut self, id: &str, why: &str) {
        let Some(pos) = self.by_id.remove(id) else { return };
        if let Some(a) = self.pending.remove(&pos) {
            self.bytes -= a.encoded_len() as u64;
        }
        let path = self.attempt_path(pos);
        self.quarantine(
            &path,
            "too-large",
            &format!("attempt {id}: {why}"),
            "it is not sent; raise the controller's agents.max_message_bytes and the agent's max_message_bytes \
             to deliver it, by renaming the file back to its .attempt name",
        );
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

    fn attempt_path(&self, pos: u64) -> PathBuf {
        self.dir.join(format!("{pos:020}{SUFFIX}"))
    }
}

/// The crash test's hook (tests/tests/agents.rs): with
/// `KCDSYNC_AGENT_TEST_CRASH_AT=<point>` the agent says it reached `point` on
/// stderr and waits there for the test to kill it (`kill -9`); it aborts
/// itself after 30 s if nobody does. Unset, it costs one environment lookup.
fn crash_point(point: &str) {
    if std::env::var_os("KCDSYNC_AGENT_TEST_CRASH_AT").is_some_and(|v| v == point) {
        eprintln!("kcdsync-agent: crash point {point} reached");
        std::thread::sleep(std::time::Duration::from_secs(30));
        std::process::abort();
    }
}

#[cfg(test)]
mod tests;
