//! Secrets read from the config's files or the environment, kept out of
//! Debug output and logs.

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
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Secret {
            key: key.into(),
            message: format!("{}: {e}", path.display()),
        })?;
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
}
