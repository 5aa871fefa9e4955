//! How the OTLP exporters may reach their collector. Spans and metrics name
//! hosts, accounts and AD objects, so they leave the machine only over TLS:
//! `https://` with the CA from `OTEL_EXPORTER_OTLP_CERTIFICATE` (or the
//! per-signal variant; this build trusts no system roots). Plain `http://`
//! is for a collector on loopback, or anywhere with the explicit opt-in
//! `KCDSYNC_OTLP_ALLOW_PLAINTEXT=1`.

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig};

/// The opt-in for plain http to a collector that is not on loopback.
pub const ALLOW_PLAINTEXT: &str = "KCDSYNC_OTLP_ALLOW_PLAINTEXT";

/// True for `localhost`, 127.0.0.0/8 and ::1 (brackets allowed): names whose
/// traffic never leaves the machine. Shared by every "plain text only on
/// loopback" rule (kcdctl, OTLP, the PostgreSQL store).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What the exporter for one signal should do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Plain,
    Tls { ca_file: PathBuf },
}

/// The rule, without the environment: `endpoint` as configured, the CA file
/// if one is set, and whether plain text was explicitly allowed.
pub(crate) fn decide(endpoint: &str, ca_file: Option<&str>, allow_plaintext: bool) -> Result<Transport, String> {
    let uri: http::Uri = endpoint
        .trim()
        .parse()
        .map_err(|e| format!("OTLP endpoint `{endpoint}` is not a URL: {e}"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") => match ca_file.filter(|f| !f.trim().is_empty()) {
            Some(f) => Ok(Transport::Tls { ca_file: f.into() }),
            None => Err(format!(
                "OTLP endpoint {endpoint} is https but no CA is set: set OTEL_EXPORTER_OTLP_CERTIFICATE to the PEM file of the CA that issued the collector's certificate"
            )),
        },
        Some("http") if is_loopback_host(host) || allow_plaintext => Ok(Transport::Plain),
        Some("http") => Err(format!(
            "refusing OTLP over plain http to {endpoint}: spans and metrics would cross the network in clear; \
             use https:// with OTEL_EXPORTER_OTLP_CERTIFICATE=<CA file>, or set {ALLOW_PLAINTEXT}=1 to accept that"
        )),
        _ => Err(format!(
            "OTLP endpoint `{endpoint}` must start with https:// (or http:// on loopback)"
        )),
    }
}

/// The TLS settings for `signal`'s exporter (`TRACES`, `METRICS`), from the
/// standard environment variables; `None` for plain text.
pub(crate) fn client_tls(signal: &str) -> Result<Option<ClientTlsConfig>, String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let endpoint = var(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .unwrap_or_default();
    let ca = var(&format!("OTEL_EXPORTER_OTLP_{signal}_CERTIFICATE")).or_else(|| var("OTEL_EXPORTER_OTLP_CERTIFICATE"));
    let allow = var(ALLOW_PLAINTEXT).is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    match decide(&endpoint, ca.as_deref(), allow)? {
        Transport::Plain => Ok(None),
        Transport::Tls { ca_file } => {
            let pem = std::fs::read(&ca_file)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE {}: {e}", ca_file.display()))?;
            Ok(Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_localhost_127_8_and_ipv6_one() {
        for h in ["localhost", "LOCALHOST", "127.0.0.1", "127.3.2.1", "::1", "[::1]"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "10.0.0.1",
            "otel.corp",
            "localhost.corp",
            "0.0.0.0",
            "[::]",
            "128.0.0.1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn plain_http_goes_to_loopback_or_nowhere_without_the_opt_in() {
        assert_eq!(decide("http://127.0.0.1:4317", None, false), Ok(Transport::Plain));
        assert_eq!(decide("http://[::1]:4317", None, false), Ok(Transport::Plain));
        assert_eq!(
            decide("http://otel.corp:4317", None, false),
            Err("refusing OTLP over plain http to http://otel.corp:4317: spans and metrics would cross the network in clear; \
                 use https:// with OTEL_EXPORTER_OTLP_CERTIFICATE=<CA file>, or set KCDSYNC_OTLP_ALLOW_PLAINTEXT=1 to accept that"
                .into())
        );
        assert_eq!(decide("http://otel.corp:4317", None, true), Ok(Transport::Plain));
    }

    #[test]
    fn https_needs_a_ca_file() {
        assert_eq!(
            decide("https://otel.corp:4317", Some("/etc/kcdsync/otel-ca.pem"), false),
            Ok(Transport::Tls {
                ca_file: "/etc/kcdsync/otel-ca.pem".into()
            })
        );
        let e = decide("https://otel.corp:4317", None, true).unwrap_err();
        assert!(e.contains("set OTEL_EXPORTER_OTLP_CERTIFICATE"), "{e}");
        let e = decide("otel.corp:4317", None, true).unwrap_err();
        assert!(e.contains("must start with https://"), "{e}");
    }
}
