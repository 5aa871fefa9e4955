//! kcdsync agent library: the `kcdsync-agent` binary is a thin layer over it.
//!
//! The agent observes one Hyper-V host through a [`probe::HostProbe`],
//! keeps migration attempts in a durable [`outbox::Outbox`] until the
//! controller acknowledges them, and talks to the controller over one mTLS
//! gRPC stream. External tools (PowerShell, klist, kinit, kvno) are run
//! only through [`process`].

mod calendar;
pub mod cert;
pub mod client;
pub mod config;
pub mod enroll;
pub mod identity;
pub mod logfile;
pub mod outbox;
pub mod probe;
pub mod process;
#[cfg(windows)]
pub mod service;
pub mod windows;
