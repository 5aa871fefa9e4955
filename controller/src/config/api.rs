//! `[api]`: the fleet API endpoint for orchestrators and kcdctl, and who may
//! call it (bearer tokens from `tokens_file`, client certificates, roles).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, Secret, invalid, resolve};
use crate::model::names::HostName;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    listen: String,
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    #[serde(default)]
    read_clients: Vec<String>,
    #[serde(default)]
    write_clients: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    #[serde(default, rename = "token")]
    tokens: Vec<RawToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: Role,
    token: String,
}

/// What an orchestrator or operator may do through the fleet API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Hosts, findings, readiness, plans, audit, watch.
    Read,
    /// Read, plus approve/reject plans and trigger reconciles.
    Write,
}

/// A bearer token; the secret never reaches Debug output.
#[derive(Clone)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    pub secret: Secret,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiToken({}, {:?})", self.name, self.role)
    }
}

/// The fleet API endpoint for orchestrators and kcdctl (`serve` only).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: std::net::SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients may authenticate with a certificate from this CA.
    pub client_ca_file: Option<PathBuf>,
    pub tokens: Vec<ApiToken>,
    /// Certificate names (DNS SANs) with the read / write role.
    pub read_clients: Vec<String>,
    pub write_clients: Vec<String>,
}

pub(super) fn validate_api(raw: RawApi, base_dir: &Path) -> Result<ApiConfig, ConfigError> {
    let listen = raw.listen.parse().map_err(|_| {
        invalid(
            "api.listen",
            format!("`{}` is not an address:port such as 127.0.0.1:7444", raw.listen),
        )
    })?;
    let file = |key: &str, p: PathBuf| -> Result<PathBuf, ConfigError> {
        let p = resolve(base_dir, p);
        if p.is_file() {
            Ok(p)
        } else {
            Err(invalid(key, format!("{} does not exist or is not a file", p.display())))
        }
    };
    let cert_file = file("api.cert_file", raw.cert_file)?;
    let key_file = file("api.key_file", raw.key_file)?;
    let client_ca_file = raw.client_ca_file.map(|p| file("api.client_ca_file", p)).transpose()?;
    let mut tokens = Vec::new();
    if let Some(p) = raw.tokens_file {
        let p = file("api.tokens_file", p)?;
        let text = std::fs::read_to_string(&p).map_err(|e| ConfigError::Secret {
            key: "api.tokens_file".into(),
            message: format!("{}: {e}", p.display()),
        })?;
        let parsed: RawTokens = toml::from_str(&text).map_err(|e| ConfigError::Secret {
            key: "api.tokens_file".into(),
            // toml's message may quote the offending line: keep only its first line.
            message: format!("{}: {}", p.display(), e.message()),
        })?;
        for (i, t) in parsed.tokens.into_iter().enumerate() {
            if t.token.len() < 16 {
                return Err(ConfigError::Secret {
                    key: "api.tokens_file".into(),
                    message: format!("token[{i}] ({}) is shorter than 16 characters", t.name),
                });
            }
            tokens.push(ApiToken {
                name: t.name,
                role: t.role,
                secret: Secret::new(t.token),
            });
        }
    }
    if tokens.is_empty() && client_ca_file.is_none() {
        return Err(invalid(
            "api.tokens_file",
            "the API needs a way to authenticate callers: set tokens_file and/or client_ca_file",
        ));
    }
    if client_ca_file.is_none() && !(raw.read_clients.is_empty() && raw.write_clients.is_empty()) {
        return Err(invalid(
            "api.client_ca_file",
            "read_clients/write_clients need client_ca_file",
        ));
    }
    let names = |key: &str, v: Vec<String>| -> Result<Vec<String>, ConfigError> {
        v.iter()
            .map(|n| {
                HostName::parse(n)
                    .map(|h| h.as_str().to_lowercase())
                    .map_err(|e| invalid(key, e.to_string()))
            })
            .collect()
    };
    Ok(ApiConfig {
        listen,
        cert_file,
        key_file,
        client_ca_file,
        tokens,
        read_clients: names("api.read_clients", raw.read_clients)?,
        write_clients: names("api.write_clients", raw.write_clients)?,
    })
}
