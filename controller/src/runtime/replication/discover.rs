//! Which DCs to verify on: the domain's DCs as AD lists them, minus the one kcdsync writes
//! to, each reached at the URL `[[ad.dc]]` gives for its name. A DC without one is reported
//! with the line to add; an `[[ad.dc]]` that is no DC of the domain is reported too. A URL
//! is trusted only once the DC behind it says it is that DC (its dsServiceName).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::worker::{Connect, DcRead, Limits, MAX_BACKOFF, Worker};
use super::{Event, Expected, dispatch};
use crate::config::{Config, DcConfig};
use crate::ldap::{Ad, DcInfo, LdapError};
use crate::model::{Computer, dn_key};
use crate::store::{Store, now_ms};

/// Reads in flight per DC at most (one connection; the DC answers them in turn).
const READS_IN_FLIGHT: usize = 16;

impl DcRead for Ad {
    fn read<'a>(&'a self, dn: &'a str) -> BoxFuture<'a, Result<Option<Computer>, LdapError>> {
        Box::pin(self.read_written(dn))
    }
}

/// Discovers the DCs (retrying while `[[ad.dc]]` names some), starts their workers, then
/// dispatches batches to them until the controller stops.
pub(super) async fn run(
    cfg: Arc<Config>,
    store: Store,
    batches: mpsc::UnboundedReceiver<super::Batch>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut backoff = Duration::from_secs(1);
    let (dcs, me) = loop {
        match discover(&cfg).await {
            Ok(found) => break found,
            // A single-DC setup (no [[ad.dc]]) sees no new error: the verify is just off.
            Err(e) if cfg.ad.dcs.is_empty() => {
                tracing::debug!(error = %e, "cannot list the domain's DCs; per-DC verify off");
                return dispatch(batches, Vec::new(), events).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_secs = backoff.as_secs(), "cannot list the domain's DCs for the per-DC verify; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF * 60);
            }
        }
    };
    let mut workers = Vec::new();
    // The DC behind `[ad] url` too: a write is never awaited on the DC that made it, so this
    // worker has nothing to do (and opens no connection) until serve fails over and writes
    // elsewhere (`runtime::failover`); then it watches those writes arrive here.
    let preferred = dcs.iter().find(|d| dn_key(&d.service) == dn_key(&me)).map(|d| {
        let reach = DcConfig {
            name: d.name.clone(),
            url: cfg.ad.url.clone(),
            starttls: cfg.ad.starttls,
        };
        (d.clone(), reach)
    });
    for (dc, reach) in reachable(&cfg.ad.dcs, &dcs, &me).into_iter().chain(preferred) {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            connect: connector(&cfg, &reach, &dc),
            limits: Limits {
                deadline: cfg.ad.replication_deadline,
                in_flight: READS_IN_FLIGHT.min(cfg.ad.max_in_flight),
            },
            events: events.clone(),
            dc: dc.clone(),
        };
        if dn_key(&dc.service) == dn_key(&me) {
            tracing::debug!(dc = %dc.name, url = %reach.url, "writes made on another DC (after a failover) are verified on this one");
        } else {
            tracing::info!(dc = %dc.name, site = %dc.site, url = %reach.url, "verifying writes on this DC too");
        }
        tokio::spawn(worker.run(rx));
        workers.push((dc.name, tx));
    }
    resume(&store, &workers).await;
    dispatch(batches, workers, events).await;
}

/// How far back a write still awaited on a DC is watched again after a restart.
pub(super) const RESUME_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);

/// Hands the workers what an earlier run of the controller (or a deposed leader) left
/// awaited: a restart must not forget a DC that is behind.
async fn resume(store: &Store, workers: &[(String, mpsc::UnboundedSender<Expected>)]) {
    if workers.is_empty() {
        return;
    }
    let since = now_ms() - RESUME_HORIZON.as_millis() as i64;
    match store.awaited_replication(since).await {
        Ok(awaited) => {
            for (dc, record) in awaited {
                if let Some((_, w)) = workers.iter().find(|(name, _)| *name == dc) {
                    let _ = w.send(Expected { record });
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the writes still awaited on other DCs; they are not watched again")
        }
    }
}

/// The domain's DCs, and the NTDS Settings DN of the one `[ad]` reaches.
async fn discover(cfg: &Config) -> Result<(Vec<DcInfo>, String), LdapError> {
    let ad = Ad::connect(&cfg.ad).await?;
    let found = async {
        let me = ad.dc_service().await?;
        let dcs = ad.domain_controllers(&cfg.ad.domain_dn).await?;
        Ok((dcs, me))
    }
    .await;
    ad.unbind().await;
    found
}

/// The other DCs paired with how to reach them; logs the ones kcdsync cannot reach and the
/// `[[ad.dc]]` entries that name no DC.
pub(super) fn reachable(configured: &[DcConfig], dcs: &[DcInfo], me: &str) -> Vec<(DcInfo, DcConfig)> {
    let mut out = Vec::new();
    for dc in dcs.iter().filter(|d| dn_key(&d.service) != dn_key(me)) {
        match configured.iter().find(|c| c.name == dc.name) {
            Some(c) => out.push((dc.clone(), c.clone())),
            None => tracing::warn!(
                dc = %dc.name,
                site = %dc.site,
                "domain controller {} (site {}) is not verified after writes: kcdsync has no URL for it. Add to the config: [[ad.dc]] name = \"{}\" url = \"ldaps://...\"",
                dc.name, dc.site, dc.name
            ),
        }
    }
    for c in configured.iter().filter(|c| !dcs.iter().any(|d| d.name == c.name)) {
        let known: Vec<&str> = dcs.iter().map(|d| d.name.as_str()).collect();
        tracing::warn!(
            dc = %c.name,
            "[[ad.dc]] name = \"{}\" is not a domain controller of this domain (AD lists: {}); it is ignored",
            c.name,
            known.join(", ")
        );
    }
    out
}

/// Connects to `reach` with `[ad]`'s CA, bind and timeout, and accepts the connection only
/// when the DC behind it is `dc`: a URL that reaches another DC (the write DC, say) would
/// report a change "replicated" that is not.
fn connector(cfg: &Config, reach: &DcConfig, dc: &DcInfo) -> Connect {
    let ad_cfg = cfg.ad.for_dc(reach);
    let expected = dc.service.clone();
    Arc::new(move || {
        let (ad_cfg, expected) = (ad_cfg.clone(), expected.clone());
        Box::pin(async move {
            let ad = Ad::connect(&ad_cfg).await?;
            let found = ad.dc_service().await?;
            if dn_key(&found) != dn_key(&expected) {
                ad.unbind().await;
                return Err(LdapError::WrongDc {
                    url: ad_cfg.url.clone(),
                    expected,
                    found,
                });
            }
            Ok(Arc::new(ad) as Arc<dyn DcRead>)
        })
    })
}
