//! `store.url`: how the controller reaches its state store. The store holds
//! plans, approvals and the leader lease, so a PostgreSQL connection that can
//! be read or altered on the way decides what is written to AD: off the
//! machine it must be TLS with the server's certificate verified against a
//! CA the operator names (`sslmode=verify-full&sslrootcert=...`). A Unix
//! socket or a loopback address never leaves the machine and may be plain.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::{ConfigError, invalid};

/// Checks the transport of a PostgreSQL `url` (SQLite and other schemes
/// pass: the store refuses an unknown scheme itself).
pub(super) fn check_store_url(url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok(());
    }
    // sqlx reads the URL as it will when connecting (PGHOST, PGSSLMODE... included).
    let opts =
        PgConnectOptions::from_str(url).map_err(|e| invalid("store.url", format!("not a PostgreSQL URL: {e}")))?;
    if opts.get_socket().is_some() || kcdsync_telemetry::is_loopback_host(opts.get_host()) {
        return Ok(());
    }
    let verified = matches!(opts.get_ssl_mode(), PgSslMode::VerifyFull);
    if verified && has_root_cert(url) {
        return Ok(());
    }
    Err(invalid(
        "store.url",
        format!(
            "PostgreSQL at {} is not on this machine: the connection must verify the server, add \
             `sslmode=verify-full&sslrootcert=/path/to/ca.pem` to the URL (plain or unverified TLS is allowed only for a Unix socket or loopback)",
            opts.get_host()
        ),
    ))
}

/// Whether the URL or the environment names a root certificate: without one
/// `verify-full` would trust whatever roots the TLS library ships.
fn has_root_cert(url: &str) -> bool {
    let in_url = url.split_once('?').is_some_and(|(_, q)| {
        q.split('&').any(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            matches!(k, "sslrootcert" | "ssl-root-cert" | "ssl-ca") && !v.is_empty()
        })
    });
    in_url || std::env::var("PGSSLROOTCERT").is_ok_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::check_store_url;

    #[test]
    fn loopback_and_unix_sockets_may_be_plain() {
        for ok in [
            "sqlite:///var/lib/kcdsync/kcdsync.db?mode=rwc",
            "postgres://kcdsync:pw@127.0.0.1:5432/kcdsync",
            "postgres://kcdsync@localhost/kcdsync",
            "postgresql://kcdsync@[::1]:5432/kcdsync",
            "postgres://kcdsync@%2Fvar%2Frun%2Fpostgresql/kcdsync",
            "postgres:///kcdsync?host=/var/run/postgresql",
        ] {
            check_store_url(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn a_remote_server_needs_verify_full_and_a_root_certificate() {
        check_store_url("postgres://k@db.corp/k?sslmode=verify-full&sslrootcert=/etc/kcdsync/pg-ca.pem").unwrap();
        for bad in [
            "postgres://k@db.corp/k",
            "postgres://k@10.0.0.5:5432/k?sslmode=require",
            "postgres://k@db.corp/k?sslmode=verify-ca&sslrootcert=/etc/kcdsync/pg-ca.pem",
            "postgres://k@db.corp/k?sslmode=verify-full",
        ] {
            let e = check_store_url(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("config key `store.url`: PostgreSQL at ")
                    && e.contains("add `sslmode=verify-full&sslrootcert=/path/to/ca.pem` to the URL"),
                "{bad}: {e}"
            );
        }
    }
}
