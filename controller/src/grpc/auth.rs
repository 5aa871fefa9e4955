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
        let callers = self.callers.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(v) = req.metadata().get("authorization") {
            let v = v
                .to_str()
                .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
            let token = v
                .strip_prefix("Bearer ")
                .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))?;
            let presented = TokenDigest::of(token);
            return callers
                .tokens
                .iter()
                .find(|t| t.digest.matches(&presented))
                .map(|t| (format!("token:{}", t.name), t.role))
                .ok_or_else(|| Status::unauthenticated("unknown bearer token"));
        }
        if let Some(certs) = req.peer_certs().filter(|c| !c.is_empty()) {
            let names = crate::certs::peer_host_names(certs[0].as_ref())
                .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
            for (clients, role) in [
                (&callers.write_clients, Role::Write),
                (&callers.read_clients, Role::Read),
            ] {
                if let Some(n) = names.iter().find(|n| clients.contains(n)) {
                    return Ok((format!("cert:{n}"), role));
                }
            }
            return Err(Status::permission_denied(format!(
                "the client certificate for {names:?} has no role: add its name to api.read_clients or api.write_clients"
            )));
        }
        Err(Status::unauthenticated(
            "authenticate with `authorization: Bearer <token>` or a client certificate",
        ))
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
