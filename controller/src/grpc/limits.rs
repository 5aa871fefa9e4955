//! What one caller can hold on each gRPC endpoint, in one place: connections,
//! TLS handshakes in flight (in all and per peer address), HTTP/2 streams and
//! requests per connection, keepalive, connection age and message sizes. The
//! numbers are documented in README ("Limits").

use std::time::Duration;

/// The caps of one endpoint's listener ([`super::tls::incoming`]).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open TLS connections; one over it is closed at once.
    pub connections: usize,
    /// TLS handshakes in flight; one over it is closed at once.
    pub handshakes: usize,
    /// TLS handshakes in flight from one IP address, so one slow client cannot
    /// take every handshake slot.
    pub handshakes_per_ip: usize,
    /// A handshake not finished by then is dropped.
    pub handshake_timeout: Duration,
}

/// The HTTP/2 settings of one endpoint's server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub conn: ConnLimits,
    pub streams_per_connection: u32,
    pub requests_per_connection: usize,
    /// A connection is asked to close (GOAWAY) after this long, so every
    /// caller re-handshakes (a renewed certificate, a changed CA, a removed
    /// client) …
    pub max_connection_age: Duration,
    /// … and is closed this long after that, even with a stream still open.
    pub max_connection_age_grace: Duration,
}

/// Agents: one long-lived stream each, 10,000 per controller.
pub const AGENTS: ServerLimits = ServerLimits {
    conn: ConnLimits {
        connections: 16_384,
        handshakes: 1_024,
        handshakes_per_ip: 64,
        handshake_timeout: Duration::from_secs(10),
    },
    streams_per_connection: 8,
    requests_per_connection: 8,
    max_connection_age: Duration::from_secs(4 * 3600),
    max_connection_age_grace: Duration::from_secs(60),
};

/// The fleet API: orchestrators, kcdctl, monitoring.
pub const API: ServerLimits = ServerLimits {
    conn: ConnLimits {
        connections: 1_024,
        handshakes: 256,
        handshakes_per_ip: 64,
        handshake_timeout: Duration::from_secs(10),
    },
    streams_per_connection: 100,
    requests_per_connection: 32,
    max_connection_age: Duration::from_secs(2 * 3600),
    max_connection_age_grace: Duration::from_secs(600),
};

/// API requests are names and ids: a larger one is refused before it is read.
pub const API_MAX_REQUEST_BYTES: usize = 64 * 1024;
/// API responses (a page of hosts, a readiness matrix) are refused above this.
pub const API_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A tonic server with `limits` applied (the message sizes go on each service).
pub fn server(limits: &ServerLimits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(limits.streams_per_connection))
        .concurrency_limit_per_connection(limits.requests_per_connection)
        .max_connection_age(limits.max_connection_age)
        .max_connection_age_grace(limits.max_connection_age_grace)
}
