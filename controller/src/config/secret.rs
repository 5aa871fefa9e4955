//! Secrets read from the config's files or the environment, kept out of
//! Debug output and logs; files holding secrets must be private to their owner.

use std::path::Path;

use super::ConfigError;

/// A secret that never shows up in Debug output or logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret from a file; `key` names the setting in errors.
    pub(super) fn from_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
        let text = read_private(key, path)?;
        // A trailing newline is an editor's, not the password's.
        let pw = text.strip_suffix('\n').unwrap_or(&text);
        let pw = pw.strip_suffix('\r').unwrap_or(pw);
        Ok(Secret::new(pw))
    }

    /// Reads a secret from the environment variable `var`.
    pub(super) fn from_env(key: &str, var: &str) -> Result<Secret, ConfigError> {
        let pw = std::env::var(var).map_err(|_| ConfigError::Secret {
            key: key.into(),
            message: format!("environment variable {var} is not set"),
        })?;
        Ok(Secret::new(pw))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a file that holds a secret (password, tokens, private key), after
/// [`check_private`].
pub(crate) fn read_private(key: &str, path: &Path) -> Result<String, ConfigError> {
    check_private(key, path)?;
    std::fs::read_to_string(path).map_err(|e| ConfigError::Secret {
        key: key.into(),
        message: format!("{}: {e}", path.display()),
    })
}

/// Refuses a secret file that group or others may read or write: a secret
/// anyone else on the machine can read is already leaked, and one they can
/// write lets them choose the controller's credentials. Checked on every load
/// (start-up and SIGHUP), so a file loosened later is caught at the next reload.
#[cfg(unix)]
pub(crate) fn check_private(key: &str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::Secret {
        key: key.into(),
        message: format!("{}: {e}", path.display()),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::Secret {
            key: key.into(),
            message: format!(
                "{} is mode {mode:04o} (readable by group/others); run chmod 600 {}",
                path.display(),
                path.display()
            ),
        });
    }
    Ok(())
}

/// Windows has no mode bits: access is the file's ACL, which the installer sets.
#[cfg(not(unix))]
pub(crate) fn check_private(_key: &str, _path: &Path) -> Result<(), ConfigError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{AD, err};

    #[test]
    fn secrets_come_from_a_file_or_env_and_must_exist() {
        let e = err(&AD.replace("password_file = \"pw\"", "password_file = \"missing\""));
        assert!(e.contains("ad.password_file"), "{e}");
        let e = err(&AD.replace("password_file = \"pw\"", "password_env = \"KCDSYNC_TEST_SURELY_UNSET\""));
        assert!(e.contains("KCDSYNC_TEST_SURELY_UNSET is not set"), "{e}");
        let e = err(&AD.replace("password_file = \"pw\"", "password = \"inline\""));
        assert!(e.contains("unknown field `password`"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_others_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        for (mode, shown) in [(0o644, "0644"), (0o640, "0640"), (0o602, "0602")] {
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = super::Secret::from_file("ad.password_file", &pw)
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!(
                    "config key `ad.password_file`: cannot read the secret: {0} is mode {shown} (readable by group/others); run chmod 600 {0}",
                    pw.display()
                )
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
            let s = super::Secret::from_file("ad.password_file", &pw).unwrap();
            assert_eq!(s.expose(), "s3cret");
        }
    }
}
