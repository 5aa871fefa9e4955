//! Who is calling the fleet API, and with which role: a bearer token from
//! the config (compared in constant time), or a client certificate whose name
//! is listed in `api.read_clients` / `api.write_clients`.

use tonic::{Request, Status};

use crate::config::{ApiConfig, ApiToken, Role};

pub struct Auth {
    tokens: Vec<ApiToken>,
    read_clients: Vec<String>,
    write_clients: Vec<String>,
}

/// Equal-length comparison that does not stop at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn new(api: &ApiConfig) -> Auth {
        Auth {
            tokens: api.tokens.clone(),
            read_clients: api.read_clients.clone(),
            write_clients: api.write_clients.clone(),
        }
    }

    /// Who is calling, and with which role.
    fn caller<T>(&self, req: &Request<T>) -> Result<(String, Role), Status> {
        if let Some(v) = req.metadata().get("authorization") {
            let v = v
                .to_str()
                .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
            let token = v
                .strip_prefix("Bearer ")
                .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))?;
            return self
                .tokens
                .iter()
                .find(|t| same_secret(t.secret.expose().as_bytes(), token.as_bytes()))
                .map(|t| (format!("token:{}", t.name), t.role))
                .ok_or_else(|| Status::unauthenticated("unknown bearer token"));
        }
        if let Some(certs) = req.peer_certs().filter(|c| !c.is_empty()) {
            let names = crate::certs::peer_host_names(certs[0].as_ref())
                .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
            for (clients, role) in [(&self.write_clients, Role::Write), (&self.read_clients, Role::Read)] {
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
