//! The gRPC edges: the agent endpoint and the fleet API, with what they
//! share — server TLS (built once), wire conversions (each in one place) and
//! the mapping of errors to status codes (one place).
//!
//! - `agents`: AgentService — streams bound to the host in the client
//!   certificate, batched ingest, commands, liveness;
//! - `fleet`: FleetService — answers from the published view, turns writes
//!   into requests to the reconciler;
//! - `auth`: callers of the fleet API and their role;
//! - `validate`: every agent message checked before it is stored (enums, ids, timestamps);
//! - `convert`, `status`, `tls`.

pub mod agents;
pub mod auth;
pub mod convert;
pub mod fleet;
mod status;
pub mod tls;
pub mod validate;
