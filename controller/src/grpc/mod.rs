//! The gRPC edges: the agent endpoint and the fleet API, with what they
//! share — server TLS (built once), wire conversions (each in one place) and
//! the mapping of errors to status codes (one place).
//!
//! - `agents`: AgentService — streams bound to the host in the client
//!   certificate, batched ingest, commands, liveness;
//! - `fleet`: FleetService — answers from the published view, turns writes
//!   into requests to the reconciler;
//! - `exposure`: GetExposure and the security-edge diff of plans;
//! - `hosts`: hosts as ListHosts and GetHost show them;
//! - `auth`: callers of the fleet API and their role;
//! - `validate`: every agent message checked before it is stored (enums, ids, timestamps);
//! - `limits`: what one caller can hold on each endpoint (connections, handshakes, streams, sizes);
//! - `convert`, `status`, `tls`.

pub mod agents;
pub mod auth;
mod cache;
pub mod convert;
pub mod enroll;
mod exposure;
pub mod fleet;
mod hosts;
pub mod limits;
mod paging;
mod status;
pub mod tls;
pub mod validate;
