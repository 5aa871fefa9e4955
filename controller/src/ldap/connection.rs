//! One bound, TLS-verified connection to a domain controller.

use std::path::Path;
use std::sync::Arc;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::{LdapError, RC_INVALID_CREDENTIALS};
use crate::config::AdConfig;

/// Builds the rustls client config that trusts exactly the given CA file.
pub fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, LdapError> {
    let ca_err = |message: String| LdapError::CaFile {
        path: ca_file.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| ca_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_err("no PEM certificate in it".into()));
    }
    for c in certs {
        roots.add(c).map_err(|e| ca_err(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

/// A bound connection to one domain controller. Clones share the
/// connection; requests from clones are pipelined on it.
#[derive(Clone)]
pub struct Ad {
    pub(super) ldap: Ldap,
    pub(super) cfg: Arc<AdConfig>,
}

impl Ad {
    /// Connects with TLS verified against `ad.ca_file` and binds.
    pub async fn connect(cfg: &AdConfig) -> Result<Ad, LdapError> {
        let tls = tls_config(&cfg.ca_file)?;
        let settings = LdapConnSettings::new()
            .set_config(Arc::new(tls))
            .set_starttls(cfg.starttls)
            .set_conn_timeout(cfg.timeout);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &cfg.url)
            .await
            .map_err(|source| LdapError::Connect {
                url: cfg.url.clone(),
                source: Box::new(source),
            })?;
        ldap3::drive!(conn);
        let res = ldap
            .with_timeout(cfg.timeout)
            .simple_bind(cfg.bind_dn.as_str(), cfg.password.expose())
            .await
            .map_err(protocol(format!("bind to {}", cfg.url)))?;
        crate::metrics::get().ldap("bind", res.rc);
        match res.rc {
            0 => {}
            RC_INVALID_CREDENTIALS => {
                return Err(LdapError::BadCredentials {
                    dn: cfg.bind_dn.to_string(),
                });
            }
            rc => {
                return Err(LdapError::Bind {
                    dn: cfg.bind_dn.to_string(),
                    rc,
                    text: res.text,
                });
            }
        }
        Ok(Ad {
            ldap,
            cfg: Arc::new(cfg.clone()),
        })
    }

    /// One rootDSE read, within `ad.timeout`: does the DC still answer on this connection?
    pub async fn ping(&self) -> Result<(), LdapError> {
        self.read_base("", &["1.1"]).await.map(|_| ())
    }

    /// How this connection was made (which DC: `url`).
    pub fn config(&self) -> &AdConfig {
        &self.cfg
    }

    /// The server (or the network) closed this connection.
    pub fn is_closed(&mut self) -> bool {
        self.ldap.is_closed()
    }

    pub async fn unbind(mut self) {
        let _ = self.ldap.unbind().await;
    }
}

pub(super) fn protocol(op: impl Into<String>) -> impl FnOnce(ldap3::LdapError) -> LdapError {
    let op = op.into();
    move |source| LdapError::Protocol {
        op,
        source: Box::new(source),
    }
}
