//! Writes that survive a crash or a power cut: the new bytes go to a
//! temporary file, are synced, then renamed over the old name, and the rename
//! itself is made durable (a directory sync; on Windows a write-through
//! rename). A crash leaves either the old file or the new one, never half of
//! one, and once [`write_atomically`] (or [`replace`]s then [`sync_dir`])
//! returns, the new one is on disk — which is what lets the event-log cursor
//! move past it.

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
    replace(path, bytes)?;
    sync_dir(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

/// Replaces `path` with `bytes`: the file's data is on disk, its name only
/// once [`sync_dir`] returns (so a page of attempts costs one directory sync,
/// not one each).
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
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
    rename(&tmp, path)
}

/// Makes the renames done in `dir` durable: without it, a power cut can
/// bring the old names back after the cursor has moved past the attempts.
#[cfg(not(windows))]
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

/// Windows cannot open a directory to flush it; each rename was written
/// through instead (see [`rename`]).
#[cfg(windows)]
pub fn sync_dir(_dir: &Path) -> Result<(), WriteError> {
    Ok(())
}

#[cfg(not(windows))]
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), WriteError> {
    fs::rename(from, to).map_err(at(to))
}

/// `MOVEFILE_WRITE_THROUGH`: `MoveFileExW` returns only once the move is
/// flushed to disk, which is what a directory sync does elsewhere.
#[cfg(windows)]
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), WriteError> {
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
