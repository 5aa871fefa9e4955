//! The LDAP connection `serve` keeps between reconcile runs. A run used to
//! open (TLS handshake, bind) and close its own; for a delta run that reads
//! one rootDSE and a handful of changed objects, that was most of its cost
//! and ~10 ms of the DC's CPU each time. A kept connection is given back
//! only by a run that succeeded; one the server closed, or idle longer than
//! a DC might keep it, is replaced before use, and a run that fails on a
//! reused one is retried once on a fresh one (by the caller, where that is
//! safe: before anything is written).

use std::time::{Duration, Instant};

use crate::config::AdConfig;
use crate::ldap::{Ad, LdapError};

/// Longer idle than this and the connection is replaced rather than trusted: AD closes idle
/// LDAP connections after `MaxConnIdleTime` (900 s by default).
const MAX_IDLE: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Kept {
    conn: Option<(Ad, Instant)>,
}

impl Kept {
    /// The kept connection if it still looks alive, else a new one; `true` when reused.
    pub async fn take(&mut self, cfg: &AdConfig) -> Result<(Ad, bool), LdapError> {
        if let Some((mut ad, used)) = self.conn.take() {
            if !ad.is_closed() && used.elapsed() < MAX_IDLE {
                return Ok((ad, true));
            }
            ad.unbind().await;
        }
        Ok((Ad::connect(cfg).await?, false))
    }

    /// Keeps `ad` for the next run.
    pub fn give_back(&mut self, ad: Ad) {
        self.conn = Some((ad, Instant::now()));
    }

    /// Closes the kept connection: leadership lost (a follower reads nothing), or a reloaded
    /// config (it may name another DC, account or CA).
    pub async fn close(&mut self) {
        if let Some((ad, _)) = self.conn.take() {
            ad.unbind().await;
        }
    }
}
