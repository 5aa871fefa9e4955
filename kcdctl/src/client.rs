//! The connection to the controller's fleet API: TLS (the controller's CA,
//! an optional server name, an optional client certificate), a bearer token
//! from a file, and the W3C traceparent of the current client span on every
//! call.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kcdsync_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cli::Connection;

pub type Client = FleetServiceClient<InterceptedService<Channel, Auth>>;

/// Adds the caller's credentials and trace context to each request.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        // The client span of this call (see `verbs::run`), as W3C traceparent.
        kcdsync_telemetry::inject_metadata(&tracing::Span::current(), req.metadata_mut());
        Ok(req)
    }
}

pub async fn connect(conn: &Connection) -> Result<Client> {
    refuse_plaintext(&conn.controller)?;
    let tls = tls_config(conn)?;
    let token = match &conn.token_file {
        Some(f) => Some(bearer(f)?),
        None => None,
    };
    let channel = Endpoint::from_shared(conn.controller.clone())
        .with_context(|| format!("`{}` is not a URL", conn.controller))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the controller at {}", conn.controller))?;
    Ok(FleetServiceClient::with_interceptor(channel, Auth(token)))
}

/// Refuses `http://` to anything but loopback, before a byte is sent: the
/// bearer token (or the answers) would cross the network in clear.
fn refuse_plaintext(url: &str) -> Result<()> {
    let uri: tonic::codegen::http::Uri = url.parse().with_context(|| format!("`{url}` is not a URL"))?;
    if uri.scheme_str() == Some("http") && !kcdsync_telemetry::is_loopback_host(uri.host().unwrap_or_default()) {
        bail!("refusing {url}: the bearer token would cross the network in clear; use https://");
    }
    Ok(())
}

fn tls_config(conn: &Connection) -> Result<ClientTlsConfig> {
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &conn.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let Some(n) = &conn.server_name {
        tls = tls.domain_name(n.clone());
    }
    // clap makes --cert require --key; a lone --key is ignored.
    if let (Some(c), Some(k)) = (&conn.cert, &conn.key) {
        tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
    }
    Ok(tls)
}

/// The `authorization` value for the token on the first line of `file`.
fn bearer(file: &std::path::Path) -> Result<MetadataValue<Ascii>> {
    let t = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let t = t.lines().next().unwrap_or_default().trim();
    if t.is_empty() {
        bail!("{} is empty", file.display());
    }
    format!("Bearer {t}")
        .parse()
        .context("the token holds characters a header cannot carry")
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A gRPC error as the operator sees it: the code's name, then the
/// controller's message (which names what to fix).
pub fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

#[cfg(test)]
mod tests {
    use super::refuse_plaintext;

    #[test]
    fn http_is_refused_for_a_remote_controller_only() {
        let e = refuse_plaintext("http://ctl.corp:7443").unwrap_err().to_string();
        assert_eq!(
            e,
            "refusing http://ctl.corp:7443: the bearer token would cross the network in clear; use https://"
        );
        assert!(refuse_plaintext("http://10.0.0.5:7444").is_err());
        for ok in [
            "https://ctl.corp:7443",
            "http://127.0.0.1:7444",
            "http://localhost:7444",
            "http://[::1]:7444",
        ] {
            refuse_plaintext(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }
}
