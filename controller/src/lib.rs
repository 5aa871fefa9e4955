//! kcdsync controller library: the binaries are thin layers over it.
//!
//! Reconcile is observe (ldap) → plan (pure) → guard (pure) → apply (ldap)
//! → verify (ldap) → audit (store). I/O stays in `ldap` and `store`.

pub mod agents;
pub mod api;
pub mod certs;
pub mod config;
pub mod diagnose;
pub mod dn;
pub mod ldap;
pub mod metrics;
pub mod model;
pub mod names;
pub mod plan;
pub mod reconcile;
pub mod report;
pub mod server;
pub mod snapshot;
pub mod store;
