//! `[api]`: the fleet API endpoint for orchestrators and kcdctl, and who may
//! call it (bearer tokens from `tokens_file`, client certificates, roles).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::secret::{check_private, read_private};
use super::{AgentsConfig, ConfigError, invalid, resolve};
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

/// A bearer token as the controller keeps it: its name, role and SHA-256
/// digest. The token itself is dropped once hashed, so it cannot reach Debug
/// output, logs or a core dump.
#[derive(Clone)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    pub digest: TokenDigest,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiToken({}, {:?})", self.name, self.role)
    }
}

/// The SHA-256 of a bearer token. No `PartialEq`: the only comparison is
/// [`TokenDigest::matches`], which takes the same time whatever the bytes.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> TokenDigest {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        TokenDigest(out)
    }

    /// Compares in constant time. Both sides are fixed-size digests, so
    /// neither the length of a presented token nor the position of its first
    /// wrong byte shows in the response time; a fold over every byte (no early
    /// exit) keeps a caller from guessing a token byte by byte from timing.
    pub fn matches(&self, other: &TokenDigest) -> bool {
        self.0.iter().zip(&other.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
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

#[cfg(test)]
impl ApiConfig {
    /// An API config with these (name, role, token) callers, for unit tests.
    pub fn for_tests(tokens: &[(&str, Role, &str)]) -> ApiConfig {
        ApiConfig {
            listen: "127.0.0.1:0".parse().expect("literal"),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: None,
            tokens: tokens
                .iter()
                .map(|(name, role, token)| ApiToken {
                    name: (*name).to_owned(),
                    role: *role,
                    digest: TokenDigest::of(token),
                })
                .collect(),
            read_clients: Vec::new(),
            write_clients: Vec::new(),
        }
    }
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
    check_private("api.key_file", &key_file)?;
    let client_ca_file = raw.client_ca_file.map(|p| file("api.client_ca_file", p)).transpose()?;
    let tokens = match raw.tokens_file {
        Some(p) => load_tokens(&file("api.tokens_file", p)?)?,
        None => Vec::new(),
    };
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

/// Reads `api.tokens_file` (private to its owner) and keeps each token's digest.
fn load_tokens(p: &Path) -> Result<Vec<ApiToken>, ConfigError> {
    let text = read_private("api.tokens_file", p)?;
    let parsed: RawTokens = toml::from_str(&text).map_err(|e| ConfigError::Secret {
        key: "api.tokens_file".into(),
        // toml's message may quote the offending line: keep only its first line.
        message: format!("{}: {}", p.display(), e.message()),
    })?;
    let mut tokens = Vec::new();
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
            digest: TokenDigest::of(&t.token),
        });
    }
    Ok(tokens)
}

/// Refuses an API client CA that shares a certificate with the agents' CA:
/// every agent certificate (one per Hyper-V host, so the easiest to steal)
/// would then verify as an API client, and its host name could be listed in
/// `api.write_clients`. Compared by certificate content, so a copy of the
/// agents' ca.pem under another path is caught too.
pub(super) fn check_separate_cas(api: &ApiConfig, agents: &AgentsConfig) -> Result<(), ConfigError> {
    let Some(api_ca) = &api.client_ca_file else {
        return Ok(());
    };
    let (a, b) = (ca_certs(api_ca), ca_certs(&agents.client_ca_file));
    if a.iter().any(|c| b.contains(c)) {
        return Err(invalid(
            "api.client_ca_file",
            format!(
                "{} holds the agents' CA (agents.client_ca_file {}): an agent certificate would authenticate as an API caller; \
                 issue API client certificates from a separate CA (kcdsync-controller certs ca --out-dir DIR, then certs client --ca-dir DIR)",
                api_ca.display(),
                agents.client_ca_file.display()
            ),
        ));
    }
    Ok(())
}

/// The certificates in a PEM file (DER), or the file's bytes when it holds
/// none, so two identical unparsable files still count as the same CA.
fn ca_certs(p: &Path) -> Vec<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(p).unwrap_or_default();
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(|c| c.ok().map(|c| c.to_vec()))
        .collect();
    if certs.is_empty() { vec![bytes] } else { certs }
}

#[cfg(test)]
mod tests {
    use super::TokenDigest;
    use crate::certs::Ca;
    use crate::config::test_util::{err, parse, with_group};

    #[test]
    fn tokens_match_by_digest_only_when_equal() {
        let t = TokenDigest::of("write-token-0123456789abcdef");
        assert!(t.matches(&TokenDigest::of("write-token-0123456789abcdef")));
        assert!(!t.matches(&TokenDigest::of("write-token-0123456789abcdeF")));
        assert!(!t.matches(&TokenDigest::of("write-token-0123456789abcde")));
        assert!(!t.matches(&TokenDigest::of("")));
    }

    fn api(extra: &str) -> String {
        with_group(&format!(
            "name = \"a\"\nmode = \"plan\"\nhosts = [\"hv01\"]\n\n[api]\nlisten = \"127.0.0.1:0\"\ncert_file = \"pw\"\nkey_file = \"pw\"\n{extra}"
        ))
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_token_file_is_refused_a_private_one_loads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(
            &tokens,
            "[[token]]\nname = \"ops\"\nrole = \"read\"\ntoken = \"0123456789abcdef0123\"\n",
        )
        .unwrap();
        let text = api(&format!("tokens_file = \"{}\"\n", tokens.display()));
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            err(&text),
            format!(
                "config key `api.tokens_file`: cannot read the secret: {0} is mode 0644 (readable by group/others); run chmod 600 {0}",
                tokens.display()
            )
        );
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&text).unwrap();
        let t = &c.api.unwrap().tokens;
        assert_eq!((t[0].name.as_str(), t.len()), ("ops", 1));
        assert!(t[0].digest.matches(&TokenDigest::of("0123456789abcdef0123")));
    }

    #[test]
    fn the_agents_ca_cannot_be_the_api_client_ca_even_as_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (agents_ca, api_ca) = (Ca::new("agents CA").unwrap(), Ca::new("API clients CA").unwrap());
        let write = |name: &str, pem: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).unwrap();
            p.display().to_string()
        };
        let agents_pem = write("ca.pem", agents_ca.cert_pem());
        let copy = write("copy-of-ca.pem", &format!("# the same CA\n{}", agents_ca.cert_pem()));
        let separate = write("api-ca.pem", api_ca.cert_pem());
        let config = |api_client_ca: &str| {
            format!(
                "{}client_ca_file = \"{api_client_ca}\"\n[agents]\nlisten = \"127.0.0.1:0\"\ncert_file = \"pw\"\nkey_file = \"pw\"\nclient_ca_file = \"{agents_pem}\"\n",
                api("")
            )
        };
        for same in [&agents_pem, &copy] {
            assert_eq!(
                err(&config(same)),
                format!(
                    "config key `api.client_ca_file`: {same} holds the agents' CA (agents.client_ca_file {agents_pem}): \
                     an agent certificate would authenticate as an API caller; issue API client certificates from a \
                     separate CA (kcdsync-controller certs ca --out-dir DIR, then certs client --ca-dir DIR)"
                )
            );
        }
        parse(&config(&separate)).expect("a separate API client CA is accepted");
    }
}
