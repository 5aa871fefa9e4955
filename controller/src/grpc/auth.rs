//! Who is calling the fleet API, and with which role: a bearer token from
//! the config (its SHA-256 compared in constant time), or a client
//! certificate whose name is listed in `api.read_clients` / `api.write_clients`.
//! SIGHUP swaps the whole table ([`Auth::reload`]): a revoked token stops
//! working at the next call, without a restart.

use std::sync::{Arc, RwLock};

use tonic::{Request, Status};

use crate::config::{ApiConfig, ApiToken, Role, TokenDigest};

pub struct Auth {
    callers: RwLock<Arc<Callers>>,
}

/// Who may call, as one config load described it.
struct Callers {
    tokens: Vec<ApiToken>,
    read_clients: Vec<String>,
    write_clients: Vec<String>,
}

impl Callers {
    fn new(api: &ApiConfig) -> Callers {
        Callers {
            tokens: api.tokens.clone(),
            read_clients: api.read_clients.clone(),
            write_clients: api.write_clients.clone(),
        }
    }
}

/// A caller whose credential was checked: what the dashboard keeps for a
/// session (never the token itself) and hands to in-process API calls as a
/// request extension.
#[derive(Clone, Debug)]
pub struct Verified {
    pub name: String,
    pub role: Role,
    by: Credential,
}

#[derive(Clone)]
enum Credential {
    /// The SHA-256 of the token, so a reload that removes it ends the session.
    Token(TokenDigest),
    /// The certificate name that matched `read_clients`/`write_clients`.
    Cert(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Token(_) => f.write_str("Token(..)"),
            Credential::Cert(n) => write!(f, "Cert({n})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown bearer token")]
    UnknownToken,
    #[error("unreadable client certificate: {0}")]
    Unreadable(String),
    #[error("the client certificate for {0:?} has no role: add its name to api.read_clients or api.write_clients")]
    NoRole(Vec<String>),
    #[error("this sign-in's token or client name was removed from the configuration: sign in again")]
    Revoked,
}

impl Auth {
    pub fn new(api: &ApiConfig) -> Auth {
        Auth {
            callers: RwLock::new(Arc::new(Callers::new(api))),
        }
    }

    /// Replaces the tokens and client names with `api`'s (SIGHUP).
    pub fn reload(&self, api: &ApiConfig) {
        *self.callers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Callers::new(api));
    }

    /// Who is calling, and with which role.
    fn caller<T>(&self, req: &Request<T>) -> Result<(String, Role), Status> {
        // Set only in-process (the dashboard, for a signed-in session): a
        // remote caller cannot put anything in a request's extensions.
        if let Some(v) = req.extensions().get::<Verified>() {
            return self.recheck(v).map_err(|e| Status::unauthenticated(e.to_string()));
        }
        if let Some(v) = req.metadata().get("authorization") {
            let v = v
                .to_str()
                .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
            let token = v
                .strip_prefix("Bearer ")
                .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))?;
            return self
                .by_token(token)
                .map(|v| (v.name, v.role))
                .map_err(|e| Status::unauthenticated(e.to_string()));
        }
        if let Some(certs) = req.peer_certs().filter(|c| !c.is_empty()) {
            return self
                .by_cert(certs[0].as_ref())
                .map(|v| (v.name, v.role))
                .map_err(|e| match e {
                    AuthError::NoRole(_) => Status::permission_denied(e.to_string()),
                    _ => Status::unauthenticated(e.to_string()),
                });
        }
        Err(Status::unauthenticated(
            "authenticate with `authorization: Bearer <token>` or a client certificate",
        ))
    }

    /// The caller a bearer token names.
    pub fn by_token(&self, token: &str) -> Result<Verified, AuthError> {
        let presented = TokenDigest::of(token);
        let callers = self.callers();
        let t = callers
            .tokens
            .iter()
            .find(|t| t.digest.matches(&presented))
            .ok_or(AuthError::UnknownToken)?;
        Ok(Verified {
            name: format!("token:{}", t.name),
            role: t.role,
            by: Credential::Token(presented),
        })
    }

    /// The caller a client certificate (DER, already verified by TLS against
    /// `api.client_ca_file`) names.
    pub fn by_cert(&self, der: &[u8]) -> Result<Verified, AuthError> {
        let names = crate::certs::peer_host_names(der).map_err(|e| AuthError::Unreadable(e.to_string()))?;
        let callers = self.callers();
        for (clients, role) in [
            (&callers.write_clients, Role::Write),
            (&callers.read_clients, Role::Read),
        ] {
            if let Some(n) = names.iter().find(|n| clients.contains(n)) {
                return Ok(Verified {
                    name: format!("cert:{n}"),
                    role,
                    by: Credential::Cert(n.clone()),
                });
            }
        }
        Err(AuthError::NoRole(names))
    }

    /// `v` as the current table knows it: a token or client name removed by a
    /// reload since `v` was verified is refused, a changed role applies.
    pub fn recheck(&self, v: &Verified) -> Result<(String, Role), AuthError> {
        let callers = self.callers();
        match &v.by {
            Credential::Token(d) => callers
                .tokens
                .iter()
                .find(|t| t.digest.matches(d))
                .map(|t| (format!("token:{}", t.name), t.role))
                .ok_or(AuthError::Revoked),
            Credential::Cert(n) => [
                (&callers.write_clients, Role::Write),
                (&callers.read_clients, Role::Read),
            ]
            .into_iter()
            .find(|(clients, _)| clients.contains(n))
            .map(|(_, role)| (format!("cert:{n}"), role))
            .ok_or(AuthError::Revoked),
        }
    }

    fn callers(&self) -> Arc<Callers> {
        self.callers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The caller's name, if its role allows `what`.
    pub fn require<T>(&self, req: &Request<T>, need: Role, what: &str) -> Result<String, Status> {
        let (who, role) = self.caller(req)?;
        if role < need {
            return Err(Status::permission_denied(format!(
                "{who} has the read role; {what} needs the write role"
            )));
        }
        Ok(who)
    }
}
