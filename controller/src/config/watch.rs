//! `[reconcile]` keys of the event-driven loop: what wakes the delta read of
//! AD (change notifications, the interval timer, agents' failure reports) and
//! how often the whole scope is read again as a safety net.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// Active Directory's default `MaxNotificationPerConn` (Samba's is hard-coded to the same 5).
pub const AD_NOTIFICATIONS_PER_CONN: usize = 5;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReconcile {
    #[serde(default = "default_interval_secs")]
    pub interval_secs: u64,
    #[serde(default = "default_true")]
    watch: bool,
    #[serde(default = "default_full_resync_secs")]
    full_resync_secs: u64,
    #[serde(default = "default_per_conn")]
    notifications_per_connection: usize,
    #[serde(default = "default_max_registrations")]
    max_notifications: usize,
    #[serde(default = "default_debounce_secs")]
    failure_debounce_secs: u64,
}

impl Default for RawReconcile {
    fn default() -> Self {
        RawReconcile {
            interval_secs: default_interval_secs(),
            watch: true,
            full_resync_secs: default_full_resync_secs(),
            notifications_per_connection: default_per_conn(),
            max_notifications: default_max_registrations(),
            failure_debounce_secs: default_debounce_secs(),
        }
    }
}

fn default_interval_secs() -> u64 {
    300
}
fn default_true() -> bool {
    true
}
fn default_full_resync_secs() -> u64 {
    3600
}
/// One fewer than AD's limit: on the Samba 4.17 lab, the 5th registration on a connection
/// made the server end the first one with rc 11 "MaxNotificationPerConn reached" at the next
/// change (docs/ad-watch.md); 4 worked.
fn default_per_conn() -> usize {
    AD_NOTIFICATIONS_PER_CONN - 1
}
fn default_max_registrations() -> usize {
    100
}
fn default_debounce_secs() -> u64 {
    30
}

/// How `serve` learns about changes in AD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// Register change notifications over the scope (off: only the timer and agents wake the
    /// delta read).
    pub enabled: bool,
    /// A full read of the scope at least this often, whatever the deltas said.
    pub full_resync: Duration,
    /// Notification searches per LDAP connection (AD's MaxNotificationPerConn).
    pub per_connection: usize,
    /// Notification searches in all (so connections = this / per_connection at most).
    pub max_registrations: usize,
    /// A host's failure reports within this long of the last one that woke the loop are
    /// dropped (an agent retrying a failing migration must not become a reconcile storm).
    pub failure_debounce: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            enabled: true,
            full_resync: Duration::from_secs(default_full_resync_secs()),
            per_connection: default_per_conn(),
            max_registrations: default_max_registrations(),
            failure_debounce: Duration::from_secs(default_debounce_secs()),
        }
    }
}

pub(super) fn validate_reconcile(raw: &RawReconcile) -> Result<(Duration, WatchConfig), ConfigError> {
    if raw.interval_secs == 0 {
        return Err(invalid("reconcile.interval_secs", "must be at least 1"));
    }
    if raw.full_resync_secs == 0 {
        return Err(invalid("reconcile.full_resync_secs", "must be at least 1"));
    }
    if !(1..=AD_NOTIFICATIONS_PER_CONN).contains(&raw.notifications_per_connection) {
        return Err(invalid(
            "reconcile.notifications_per_connection",
            format!("must be between 1 and {AD_NOTIFICATIONS_PER_CONN} (AD and Samba refuse more per connection)"),
        ));
    }
    if !(1..=1000).contains(&raw.max_notifications) {
        return Err(invalid("reconcile.max_notifications", "must be between 1 and 1000"));
    }
    Ok((
        Duration::from_secs(raw.interval_secs),
        WatchConfig {
            enabled: raw.watch,
            full_resync: Duration::from_secs(raw.full_resync_secs),
            per_connection: raw.notifications_per_connection,
            max_registrations: raw.max_notifications,
            failure_debounce: Duration::from_secs(raw.failure_debounce_secs),
        },
    ))
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{AD, err};

    #[test]
    fn more_notifications_per_connection_than_ad_allows_is_refused() {
        let e = err(&format!("{AD}\n[reconcile]\nnotifications_per_connection = 6\n"));
        assert!(e.contains("reconcile.notifications_per_connection"), "{e}");
        let e = err(&format!("{AD}\n[reconcile]\nfull_resync_secs = 0\n"));
        assert!(e.contains("reconcile.full_resync_secs"), "{e}");
    }
}
