//! Files the outbox cannot use are moved aside, never deleted and never
//! fatal: renamed to `<name>.<why>-<UTC time>` in the same directory, where
//! an operator can inspect them, and described in one sentence that says what
//! happened and what to do, for the log and the agent's reports.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::calendar::utc_stamp;

/// Marks a quarantined file's name: `<name>.<tag>-<stamp>`.
pub const TAGS: [&str; 2] = ["corrupt", "too-large"];

/// Renames `path` aside as `<name>.<tag>-<now>`; the new path, or the path
/// itself if even the rename failed (the caller then skips the file).
pub fn move_aside(path: &Path, tag: &str) -> Result<PathBuf, std::io::Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut to = path.with_file_name(format!("{name}.{tag}-{}", utc_stamp(secs)));
    let mut n = 1;
    while to.exists() {
        to = path.with_file_name(format!("{name}.{tag}-{}-{n}", utc_stamp(secs)));
        n += 1;
    }
    std::fs::rename(path, &to)?;
    Ok(to)
}

/// Whether `name` is a file quarantined earlier.
pub fn is_quarantined(name: &str) -> bool {
    TAGS.iter().any(|t| name.contains(&format!(".{t}-")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_moved_aside_keeps_its_bytes_under_a_stamped_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor");
        std::fs::write(&path, b"junk").unwrap();
        let first = move_aside(&path, "corrupt").unwrap();
        std::fs::write(&path, b"junk again").unwrap();
        let second = move_aside(&path, "corrupt").unwrap();
        assert_ne!(first, second, "two in the same second do not collide");
        assert_eq!(std::fs::read(&first).unwrap(), b"junk");
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("cursor.corrupt-") && name.ends_with('Z'), "{name}");
        assert!(is_quarantined(&name));
        assert!(!path.exists());
    }
}
