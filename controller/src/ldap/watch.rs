//! Change notifications (LDAP_SERVER_NOTIFICATION_OID), the delta read's
//! wake-up. Their rules (MS-ADTS 3.1.1.3.4.6; measured on Samba 4.17 in
//! docs/ad-watch.md): scope base or one-level (subtree only at a naming
//! context's root), filter `(objectClass=*)`, at most 5 per connection by
//! default (the 6th is answered rc 11 adminLimitExceeded), and nothing for a
//! delete or a move out of the watched container. So a notification is only
//! ever a hint: what changed is what the uSNChanged delta read says, and the
//! timer wakes that read too.
//!
//! Each connection carries up to `per_connection` registrations; a connection
//! that fails is reconnected with backoff, re-registers, and says so (the
//! consumer then reads the delta from its cursor: what changed while nobody
//! listened is in it). The back-off starts over once a connection has been
//! healthy for a while, so each DC restart is recovered as fast as the first.

use std::time::{Duration, Instant};

use ldap3::controls::RawControl;
use ldap3::{Scope, SearchStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::{Ad, LdapError};
use crate::config::AdConfig;
use crate::model::dn::Dn;

pub const NOTIFICATION_OID: &str = "1.2.840.113556.1.4.528";
pub const RC_ADMIN_LIMIT_EXCEEDED: u32 = 11;
/// The first wait after a connection is lost; it doubles while reconnecting fails.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// A DC back from a long outage is watched again within this long (plus jitter); nothing
/// is lost meanwhile (the delta read from the cursor covers the gap), but every second here
/// is a second of drift left standing. A failed connect costs the DC next to nothing.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often an idle watch connection checks that the DC still answers (one rootDSE read).
const PROBE: Duration = Duration::from_secs(60);
/// A connection that held its registrations this long was healthy (see `connection`).
const HEALTHY: Duration = Duration::from_secs(5);

/// One notification search.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Registration {
    pub base: String,
    /// Base (an object, e.g. an AD group) or one-level (a container's children).
    pub one_level: bool,
}

/// What the watcher tells the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// This object changed (or was added or renamed under a watched container).
    Changed(String),
    /// A connection (re)registered: whatever changed while it was down is in the delta.
    Registered,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Ldap(#[from] LdapError),
    #[error("notification on {base} refused: rc {rc} {text}")]
    Refused { base: String, rc: u32, text: String },
    #[error("notification on {base} failed: {source}")]
    Protocol {
        base: String,
        #[source]
        source: Box<ldap3::LdapError>,
    },
}

impl WatchError {
    /// The server refused because the connection holds too many notifications.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            WatchError::Refused {
                rc: RC_ADMIN_LIMIT_EXCEEDED,
                ..
            }
        )
    }
}

type Stream = SearchStream<'static, &'static str, Vec<&'static str>>;

impl Ad {
    /// What to register for `scope` and the AD groups: one-level on every base and every
    /// container below it (one-level works everywhere; subtree only at a naming context's
    /// root), base on every AD group. At most `max`, bases and groups first; the rest are
    /// left to the timer's delta read (a warning says so).
    pub async fn registrations(
        &self,
        scope: &[Dn],
        groups: &[&Dn],
        max: usize,
    ) -> Result<Vec<Registration>, LdapError> {
        let mut out: Vec<Registration> = Vec::new();
        let mut push = |base: String, one_level: bool| {
            let r = Registration { base, one_level };
            if !out.contains(&r) {
                out.push(r);
            }
        };
        for b in scope {
            push(b.as_str().to_owned(), true);
        }
        for g in groups {
            push(g.as_str().to_owned(), false);
        }
        for b in scope {
            let filter = "(|(objectClass=organizationalUnit)(objectClass=container))";
            for e in self.search_all(b.as_str(), Scope::Subtree, filter, &["1.1"]).await? {
                push(e.dn, true);
            }
        }
        if out.len() > max {
            tracing::warn!(
                containers = out.len(),
                max,
                "more containers than reconcile.max_notifications: changes in the rest are found by the timer's delta read"
            );
            out.truncate(max);
        }
        Ok(out)
    }

    /// Registers one notification search on this connection. The first answer comes with the
    /// first change, or at once with an error (e.g. the 6th on a connection).
    pub async fn notify(&self, r: &Registration) -> Result<Stream, WatchError> {
        let mut ldap = self.ldap.clone();
        let control = RawControl {
            ctype: NOTIFICATION_OID.into(),
            crit: true,
            val: None,
        };
        let scope = if r.one_level { Scope::OneLevel } else { Scope::Base };
        crate::metrics::get().ldap("notify", 0);
        ldap.with_controls(vec![control])
            .streaming_search(&r.base, scope, "(objectClass=*)", vec!["1.1"])
            .await
            .map_err(|source| WatchError::Protocol {
                base: r.base.clone(),
                source: Box::new(source),
            })
    }
}

/// The next change one registration reports; an error when it ends (refused, or the
/// connection is gone).
pub async fn next_change(stream: &mut Stream, base: &str) -> Result<String, WatchError> {
    loop {
        match stream.next().await {
            Ok(Some(e)) if e.is_ref() || e.is_intermediate() => continue,
            Ok(Some(e)) => {
                crate::metrics::get().ldap_entries.add(1, &[]);
                return Ok(ldap3::SearchEntry::construct(e).dn);
            }
            Ok(None) => {
                let res = stream.finish().await;
                return Err(WatchError::Refused {
                    base: base.to_owned(),
                    rc: res.rc,
                    text: res.text,
                });
            }
            Err(source) => {
                return Err(WatchError::Protocol {
                    base: base.to_owned(),
                    source: Box::new(source),
                });
            }
        }
    }
}

/// Watches `regs`, `per_connection` to a connection, until `stop`; each connection runs on its
/// own and is reconnected with backoff.
pub fn spawn(
    ad: AdConfig,
    regs: Vec<Registration>,
    per_connection: usize,
    notices: mpsc::Sender<Notice>,
    stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for chunk in regs.chunks(per_connection.max(1)) {
        set.spawn(connection(ad.clone(), chunk.to_vec(), notices.clone(), stop.clone()));
    }
    set
}

async fn connection(
    ad: AdConfig,
    regs: Vec<Registration>,
    notices: mpsc::Sender<Notice>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut registered = None;
        let ended = tokio::select! {
            e = watch_once(&ad, &regs, &notices, &mut registered) => e,
            _ = stop.wait_for(|s| *s) => return,
        };
        // A connection that stayed registered for a while was healthy: its loss (a DC restart)
        // is retried from the first wait, not from where an earlier outage left the back-off —
        // else a DC restarted twice in a quiet night goes unwatched for up to MAX_BACKOFF after
        // its second, brief restart (tests/tests/dc_restart_twice.rs). One lost sooner (a
        // registration refused at once, a DC that flaps) keeps backing off.
        if registered.is_some_and(|at: Instant| at.elapsed() >= HEALTHY) {
            backoff = FIRST_BACKOFF;
        }
        tracing::warn!(error = %ended, retry_in_ms = backoff.as_millis() as u64, "change notifications interrupted; reconnecting");
        // Jitter, so many controllers (or connections) do not reconnect in step.
        let jitter = Duration::from_millis(u64::from(std::process::id() % 250));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: connect, register (noting when in `registered`), forward changes;
/// returns why it ended.
async fn watch_once(
    ad: &AdConfig,
    regs: &[Registration],
    notices: &mpsc::Sender<Notice>,
    registered: &mut Option<Instant>,
) -> WatchError {
    let conn = match Ad::connect(ad).await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let (tx, mut rx) = mpsc::channel::<Result<String, WatchError>>(64);
    let mut streams = JoinSet::new();
    for r in regs {
        let mut s = match conn.notify(r).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let (tx, base) = (tx.clone(), r.base.clone());
        streams.spawn(async move {
            loop {
                let got = next_change(&mut s, &base).await;
                let end = got.is_err();
                if tx.send(got).await.is_err() || end {
                    return;
                }
            }
        });
    }
    *registered = Some(Instant::now());
    let _ = notices.try_send(Notice::Registered);
    tracing::debug!(registrations = regs.len(), "change notifications registered");
    // A DC that vanishes without closing the connection (power loss, a dropped route) sends
    // nothing, and a notification search never times out: ask it something now and then.
    let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + PROBE, PROBE);
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                // A full queue already holds a wake-up: the delta read finds this one too.
                Some(Ok(dn)) => {
                    let _ = notices.try_send(Notice::Changed(dn));
                }
                Some(Err(e)) => return e,
                None => break,
            },
            _ = probe.tick() => {
                if let Err(e) = conn.ping().await {
                    return e.into();
                }
            }
        }
    }
    WatchError::Refused {
        base: String::new(),
        rc: 0,
        text: "notification streams ended".into(),
    }
}
