//! Server TLS for both gRPC endpoints, built in one place: the controller's
//! identity, and the CA that client certificates are verified against —
//! required for agents (a stream speaks for the host in its certificate),
//! optional for the fleet API (token callers have no certificate).

use std::path::Path;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::{AgentsConfig, ApiConfig};

fn read(p: &Path) -> Result<Vec<u8>, std::io::Error> {
    std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    client_required: bool,
) -> Result<ServerTlsConfig, std::io::Error> {
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = client_ca {
        tls = tls
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(!client_required);
    }
    Ok(tls)
}

/// The agent endpoint: client certificates required, from the agents' CA.
pub fn for_agents(cfg: &AgentsConfig) -> Result<ServerTlsConfig, std::io::Error> {
    server_tls(&cfg.cert_file, &cfg.key_file, Some(&cfg.client_ca_file), true)
}

/// The fleet API: client certificates from `client_ca_file` accepted, not required.
pub fn for_api(cfg: &ApiConfig) -> Result<ServerTlsConfig, std::io::Error> {
    server_tls(&cfg.cert_file, &cfg.key_file, cfg.client_ca_file.as_deref(), false)
}
