//! kcdsync controller library: the binaries are thin layers over it.
//!
//! A reconcile is observe → plan → guard → apply → verify → audit:
//! `reconcile/observe.rs`, `plan/` (with `plan/guard.rs`), `reconcile/apply.rs`,
//! `reconcile/verify.rs`, `reconcile/audit.rs`. The pure core is `model` (AD as
//! read, changes, findings), `plan` and `diagnose`; I/O stays at the edges:
//! `ldap` (AD), `store` (SQLite/PostgreSQL), `grpc` (agents and the fleet API).
//! `runtime` runs reconciles continuously (scheduler, effects), under the
//! leadership of `leader`; `view` is what the API answers from (gathered by `view::Snapshot`).

pub mod certs;
pub mod config;
pub mod diagnose;
pub mod enrollment;
pub mod exposure;
pub mod grpc;
pub mod ldap;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod reconcile;
pub mod renewal;
pub mod report;
pub mod revocation;
pub mod runtime;
pub mod store;
pub mod ui;
pub mod view;
