//! Writes that survive a crash or a power cut: the new bytes go to a
//! temporary file, are synced, then renamed over the old name, and the rename
//! itself is made durable before the call returns. A crash leaves either the
//! old file or the new one, never half of one, and once this returns the new
//! one is on disk — which is what lets the event-log cursor move past it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A failed step, naming the file it failed on.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.to_owned(),
        source,
    }
}

/// Replaces `path` with `bytes`, durably.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = fs::File::create(&tmp).map_err(at(&tmp))?;
        f.write_all(bytes).map_err(at(&tmp))?;
        f.sync_all().map_err(at(&tmp))
    })();
    if let Err(e) = written {
        // A full disk leaves a partial file: give its space back now.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    rename_durably(&tmp, path)
}

/// Renames `from` to `to` (replacing it) and returns only once the rename is
/// on disk.
#[cfg(not(windows))]
pub fn rename_durably(from: &Path, to: &Path) -> Result<(), WriteError> {
    fs::rename(from, to).map_err(at(to))?;
    // A rename lives in the directory: without syncing it, a power cut can
    // bring the old name back after the cursor has moved past the attempt.
    let dir = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

/// Renames `from` to `to` (replacing it) and returns only once the rename is
/// on disk: Windows cannot open a directory to flush it, but
/// `MOVEFILE_WRITE_THROUGH` makes `MoveFileExW` return only after the move
/// is flushed.
#[cfg(windows)]
pub fn rename_durably(from: &Path, to: &Path) -> Result<(), WriteError> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Storage::FileSystem::{MOVEFILE_REPLACE_EXISTING, MOVEFILE_WRITE_THROUGH, MoveFileExW};

    let wide = |p: &Path| -> Vec<u16> { p.as_os_str().encode_wide().chain(std::iter::once(0)).collect() };
    let (f, t) = (wide(from), wide(to));
    // SAFETY: both are NUL-terminated UTF-16 strings that outlive the call.
    let ok = unsafe {
        MoveFileExW(
            f.as_ptr(),
            t.as_ptr(),
            MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH,
        )
    };
    if ok == 0 {
        return Err(WriteError {
            path: to.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!dir.path().join("cursor.tmp").exists());
    }

    #[test]
    fn a_failed_write_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_atomically(&dir.path().join("missing").join("cursor"), b"x").unwrap_err();
        assert!(e.path.ends_with("missing/cursor.tmp"), "{}", e.path.display());
    }
}
