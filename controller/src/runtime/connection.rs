//! The LDAP connection `serve` keeps between reconcile runs, and which DC it goes to. A run
//! used to open (TLS handshake, bind) and close its own; for a delta run that reads one
//! rootDSE and a handful of changed objects, that was most of its cost and ~10 ms of the
//! DC's CPU each time. A kept connection is given back only by a run that succeeded; one
//! the server closed, or idle longer than a DC might keep it, is replaced before use, and a
//! run that fails on a reused one is retried once on a fresh one (by the caller, where that
//! is safe: before anything is written).
//!
//! The DC is chosen by `runtime::failover`: `[ad] url` unless it is held down after failing,
//! then the next `[[ad.dc]]`. A DC that cannot be reached here, or that a run loses
//! ([`Kept::lost`]), is held down; a kept connection to a fallback DC is dropped as soon as
//! the preferred one is due to be tried again.

use std::time::{Duration, Instant};

use opentelemetry::KeyValue;

use super::failover::{self, Candidate, Health};
use crate::config::AdConfig;
use crate::ldap::{Ad, LdapError};

/// Longer idle than this and the connection is replaced rather than trusted: AD closes idle
/// LDAP connections after `MaxConnIdleTime` (900 s by default).
const MAX_IDLE: Duration = Duration::from_secs(600);

/// A bound connection to the DC a run writes to.
pub struct Writer {
    pub ad: Ad,
    /// The DC's dNSHostName, from its rootDSE: what the log, the audit and the metric name.
    pub dc: String,
    /// The URL it was reached at (what the failover history is keyed by).
    pub url: String,
    /// A kept connection, not a new one.
    pub reused: bool,
}

#[derive(Default)]
pub struct Kept {
    conn: Option<(Writer, Instant)>,
    health: Health,
    /// The DC the last connection went to, to say so when it changes.
    last_dc: Option<String>,
}

impl Kept {
    /// The kept connection if it still looks alive and its DC is still the one to use, else
    /// a new one to the first DC that answers (`runtime::failover`).
    pub async fn take(&mut self, cfg: &AdConfig) -> Result<Writer, LdapError> {
        let candidates = failover::candidates(cfg);
        let order = self.health.order(&candidates, Instant::now());
        if let Some((mut w, used)) = self.conn.take() {
            if w.url == candidates[order[0]].url && !w.ad.is_closed() && used.elapsed() < MAX_IDLE {
                w.reused = true;
                return Ok(w);
            }
            w.ad.unbind().await;
        }
        self.connect(cfg, &candidates, &order).await
    }

    /// A new connection, never the kept one (it was found dead under a read).
    pub async fn fresh(&mut self, cfg: &AdConfig) -> Result<Writer, LdapError> {
        self.close().await;
        self.take(cfg).await
    }

    /// Keeps `w` for the next run.
    pub fn give_back(&mut self, w: Writer) {
        self.conn = Some((w, Instant::now()));
    }

    /// A run lost its connection to `w`'s DC (or could not reach it): it is held down, so the
    /// retry writes on the next DC.
    pub async fn lost(&mut self, w: Writer, error: &LdapError) {
        let f = self.health.failed(&w.url, Instant::now());
        tracing::warn!(
            dc = %w.dc,
            url = %w.url,
            hold_secs = f.hold().as_secs(),
            error = %error,
            "lost the domain controller under a run; the next run writes on the next one"
        );
        w.ad.unbind().await;
    }

    /// Some DC is not held down: a run that just lost its DC (held down from then) has
    /// somewhere else to write at once.
    pub fn can_fail_over(&self, cfg: &AdConfig) -> bool {
        self.health.any_ready(&failover::candidates(cfg), Instant::now())
    }

    /// Closes the kept connection: leadership lost (a follower reads nothing), or a reloaded
    /// config (it may name another DC, account or CA).
    pub async fn close(&mut self) {
        if let Some((w, _)) = self.conn.take() {
            w.ad.unbind().await;
        }
    }

    /// Tries the candidates in `order`; a DC that cannot be reached is held down and the next
    /// one tried. A DC that answers but refuses (the bind, say) fails the run: that is no
    /// outage another DC would fix.
    async fn connect(
        &mut self,
        cfg: &AdConfig,
        candidates: &[Candidate],
        order: &[usize],
    ) -> Result<Writer, LdapError> {
        let mut last = None;
        for (n, &i) in order.iter().enumerate() {
            let c = &candidates[i];
            match open(cfg, c).await {
                Ok(w) => {
                    self.now_writing(&w, candidates, i);
                    return Ok(w);
                }
                Err(e) if e.is_unreachable() || matches!(e, LdapError::WrongDc { .. }) => {
                    let f = self.health.failed(&c.url, Instant::now());
                    let next = order.get(n + 1).map(|j| candidates[*j].label()).unwrap_or("none left");
                    tracing::warn!(
                        dc = c.label(),
                        url = %c.url,
                        error = %e,
                        hold_secs = f.hold().as_secs(),
                        next = next,
                        "cannot reach this domain controller; passing it over"
                    );
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("[ad] url is always a candidate"))
    }

    /// Says (log, metric) which DC writes from now on, when it changed.
    fn now_writing(&mut self, w: &Writer, candidates: &[Candidate], index: usize) {
        let m = crate::metrics::get();
        m.set_gauge("kcdsync.ad.writer", [(w.dc.clone(), 1)]);
        let Some(before) = self.last_dc.replace(w.dc.clone()) else {
            if index == 0 {
                tracing::info!(dc = %w.dc, url = %w.url, "writing to {}", w.dc);
            } else {
                tracing::warn!(dc = %w.dc, url = %w.url, preferred = %candidates[0].url, "the preferred domain controller cannot be reached: writing to {} until it answers again", w.dc);
            }
            return;
        };
        if before == w.dc {
            return;
        }
        m.writer_switches.add(
            1,
            &[KeyValue::new("from", before.clone()), KeyValue::new("to", w.dc.clone())],
        );
        if index == 0 {
            tracing::info!(dc = %w.dc, from = %before, "the preferred domain controller answers again: writing to {} again", w.dc);
        } else {
            tracing::warn!(dc = %w.dc, url = %w.url, from = %before, "failed over: writing to {} (was {}) until the preferred domain controller answers again", w.dc, before);
        }
    }
}

/// Connects to `c` with `[ad]`'s CA, bind and timeout, and learns the DC's name. A `[[ad.dc]]`
/// URL must reach the DC it names: writes audited as made on dc2 must have been made there.
async fn open(cfg: &AdConfig, c: &Candidate) -> Result<Writer, LdapError> {
    let ad = Ad::connect(&c.config(cfg)).await?;
    let dc = match ad.dns_host_name().await {
        Ok(dc) => dc,
        Err(e) => {
            ad.unbind().await;
            return Err(e);
        }
    };
    if let Some(expected) = c.name.as_ref().filter(|n| **n != dc) {
        ad.unbind().await;
        return Err(LdapError::WrongDc {
            url: c.url.clone(),
            expected: expected.clone(),
            found: dc,
        });
    }
    Ok(Writer {
        ad,
        dc,
        url: c.url.clone(),
        reused: false,
    })
}
