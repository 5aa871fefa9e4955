//! What serve plans from: a full observe at start, on config reloads, API
//! calls and leadership changes, and at least every
//! `reconcile.full_resync_secs`; otherwise the last one patched by a
//! uSNChanged delta read (`reconcile::incremental`). Change notifications
//! (`ldap::watch`), the interval timer and agents' failure reports all just
//! wake that delta read. The watch is (re)registered after each full read,
//! and as soon as a delta shows an OU or container new in the scope.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::scheduler::Reason;
use crate::config::Config;
use crate::ldap::Ad;
use crate::ldap::watch::{self as notify, Notice, Registration};
use crate::model::{Computer, Index, Observed};
use crate::reconcile::ReconcileError;
use crate::reconcile::incremental::{self, Cache, Refresh};

pub struct Observer {
    cache: Option<Cache>,
    notices: mpsc::Sender<Notice>,
    watching: Option<Watching>,
}

struct Watching {
    regs: Vec<Registration>,
    /// The DC watched: the one the runs read and write (`runtime::failover`).
    url: String,
    _tasks: JoinSet<()>,
    _stop: watch::Sender<bool>,
}

/// What a run learnt of AD; what it plans from is [`Observer::current`].
pub struct Observation {
    /// Nothing kcdsync reads changed since the last run: planning would find what it found.
    pub unchanged: bool,
    /// "full: <why>" or "delta: N hosts".
    pub how: String,
}

impl Observation {
    fn new(unchanged: bool, how: String) -> Observation {
        Observation { unchanged, how }
    }
}

impl Observer {
    pub fn new(notices: mpsc::Sender<Notice>) -> Observer {
        Observer {
            cache: None,
            notices,
            watching: None,
        }
    }

    /// Forgets the cache and stops watching (a follower reads nothing).
    pub fn reset(&mut self) {
        self.cache = None;
        self.watching = None;
    }

    pub async fn observe(
        &mut self,
        cfg: &Arc<Config>,
        ad: &Ad,
        reason: &Reason,
    ) -> Result<Observation, ReconcileError> {
        let full = match (&mut self.cache, reason) {
            (None, _) => Some("first read".to_owned()),
            (Some(_), Reason::Startup | Reason::Config | Reason::Api(_) | Reason::Leadership) => {
                Some(format!("{reason}"))
            }
            (Some(c), _) if c.full_at.elapsed() >= cfg.watch.full_resync => Some("reconcile.full_resync_secs".into()),
            (Some(c), _) => match incremental::refresh(cfg, ad, c).await? {
                Refresh::Unchanged => return Ok(Observation::new(true, "delta: nothing committed".into())),
                Refresh::Patched { dirty, containers } => {
                    if containers {
                        // A one-level watch does not see into a new OU: register it too.
                        self.watch(cfg, ad).await;
                    }
                    let how = format!("delta: {} hosts to look at", dirty.len());
                    return Ok(Observation::new(dirty.is_empty(), how));
                }
                Refresh::Resynced(why) => {
                    self.watch(cfg, ad).await;
                    return Ok(Observation::new(false, format!("full: {why}")));
                }
            },
        };
        let why = full.unwrap_or_default();
        self.cache = Some(incremental::full(cfg, ad).await?);
        self.watch(cfg, ad).await;
        Ok(Observation::new(false, format!("full: {why}")))
    }

    /// Takes in objects read back after this controller's own writes (verify), so the delta
    /// that brings those writes back finds nothing new in them.
    pub fn absorb(&mut self, read: &[Computer]) {
        if let Some(c) = &mut self.cache {
            c.absorb(read);
        }
    }

    /// A copy of the picture of AD to plan from, and its index. Taken only by a run that goes
    /// on to plan (at 10,000 hosts the copy costs ~0.1 s: not for every wake-up).
    pub fn current(&self) -> (Observed, Arc<Index>) {
        match &self.cache {
            Some(c) => (c.observed.clone(), c.index.clone()),
            None => Default::default(),
        }
    }

    /// (Re)registers the notifications when what to watch changed.
    async fn watch(&mut self, cfg: &Arc<Config>, ad: &Ad) {
        if !cfg.watch.enabled {
            self.watching = None;
            return;
        }
        let groups: Vec<_> = cfg.groups.iter().filter_map(|g| g.ad_group.as_ref()).collect();
        let regs = match ad.registrations(&cfg.scope, &groups, cfg.watch.max_registrations).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the containers to watch; the timer's delta read stands in");
                return;
            }
        };
        // Notifications come from the DC the runs read, so a failover moves the watch too:
        // the delta read they wake runs there (its USNs mean nothing on another DC).
        let dc = ad.config();
        if self
            .watching
            .as_ref()
            .is_some_and(|w| w.regs == regs && w.url == dc.url)
        {
            return;
        }
        let (stop, stopped) = watch::channel(false);
        let tasks = notify::spawn(
            dc.clone(),
            regs.clone(),
            cfg.watch.per_connection,
            self.notices.clone(),
            stopped,
        );
        tracing::info!(registrations = regs.len(), url = %dc.url, "watching AD for changes");
        self.watching = Some(Watching {
            url: dc.url.clone(),
            regs,
            _tasks: tasks,
            _stop: stop,
        });
    }
}
