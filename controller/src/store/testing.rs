//! A throwaway PostgreSQL database for tests and benchmarks, on the cluster `deploy/pg/pg.sh up`
//! starts: the store's own suite, the end-to-end tests and `kcdsync-bench` all make theirs here.
//! URLs come from KCDSYNC_PG_URL / KCDSYNC_PG_ADMIN_URL, else from
//! `${KCDSYNC_PG_DIR:-/var/tmp/kcdsync-pg}/pg.env`. Compiled for tests and with the `testing`
//! feature only.

use std::future::Future;
use std::io::Write as _;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Connection as _;
use sqlx::any::install_default_drivers;

use super::redact_url;

/// A database of its own on the test cluster, created by the admin role and owned by the app
/// role when KCDSYNC_PG_URL names one (so migrations run with the app's own rights, as in
/// production). Dropped, with its connections, when this value is, also while a panic unwinds.
pub struct PgTestDb {
    /// What a store opens: the app URL (else the admin URL) with this database.
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgTestDb {
    /// For a test: the database, or `None` after a skip note (once per process) when no
    /// cluster is configured or reachable. With KCDSYNC_REQUIRE_PG=1 (CI) it panics instead,
    /// so a missing cluster cannot pass unseen.
    pub fn create() -> Option<PgTestDb> {
        let required = std::env::var("KCDSYNC_REQUIRE_PG").is_ok_and(|v| v == "1");
        match PgTestDb::try_create() {
            Ok(db) => Some(db),
            Err(why) if required => panic!(
                "PostgreSQL tests required (KCDSYNC_REQUIRE_PG=1) but {why}.\n\
                 Start the test cluster with `deploy/pg/pg.sh up` (as root), then run the \
                 tests again: they read the URLs it writes to \
                 ${{KCDSYNC_PG_DIR:-/var/tmp/kcdsync-pg}}/pg.env."
            ),
            Err(why) => {
                skip_note(&why);
                None
            }
        }
    }

    /// The database, or why there is none: for callers that fail on their own (benchmarks).
    pub fn try_create() -> Result<PgTestDb, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let (app_url, admin_url) = pg_urls()?;
        let name = format!(
            "kcdsync_test_{}_{}_{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let owner = app_url.as_deref().and_then(url_user);
        let sql = match owner {
            Some(o) => format!("CREATE DATABASE {name} OWNER \"{}\"", o.replace('"', "\"\"")),
            None => format!("CREATE DATABASE {name}"),
        };
        let admin = admin_url.clone();
        on_own_runtime(async move {
            let mut conn = tokio::time::timeout(Duration::from_secs(10), sqlx::AnyConnection::connect(&admin))
                .await
                .map_err(|_| format!("connecting to {} timed out", redact_url(&admin)))?
                .map_err(|e| format!("cannot connect to {} ({e})", redact_url(&admin)))?;
            // The name is ours (digits only) and the owner is quoted: safe to splice in.
            let r = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut conn).await;
            let _ = conn.close().await;
            r.map(|_| ()).map_err(|e| format!("`{sql}` failed ({e})"))
        })?;
        let url = with_database(app_url.as_deref().unwrap_or(&admin_url), &name);
        Ok(PgTestDb { url, admin_url, name })
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = on_own_runtime(async move {
            // A backend the admin may not terminate (an autovacuum worker, on a cluster where
            // autovacuum is on) fails the drop for a moment: try a few times.
            let mut last = String::new();
            for _ in 0..20 {
                match drop_database(&admin_url, &name).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(last)
        });
        if let Err(e) = dropped {
            // Straight to stderr: libtest would swallow eprintln! of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "warning: test database {} not dropped: {e}",
                self.name
            );
        }
    }
}

/// Runs `work` to its end on a thread with a runtime of its own, so that callers need none and
/// may hold one (a `#[tokio::test]`, a drop while its runtime unwinds) without blocking in it.
fn on_own_runtime<F>(work: F) -> Result<(), String>
where
    F: Future<Output = Result<(), String>> + Send + 'static,
{
    install_default_drivers();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(work)
    })
    .join()
    .unwrap_or_else(|_| Err("panic".to_owned()))
}

/// WITH (FORCE) ends the connections the test's pools still hold.
async fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let mut admin = sqlx::AnyConnection::connect(admin_url)
        .await
        .map_err(|e| e.to_string())?;
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    let r = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
    let _ = admin.close().await;
    r.map(|_| ()).map_err(|e| e.to_string())
}

/// Once per process, straight to stderr: libtest captures `eprintln!` of passing tests, so a
/// skip would otherwise go unseen.
fn skip_note(why: &str) {
    static NOTE: Once = Once::new();
    NOTE.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\n\
             ************************************************************************\n\
             * SKIPPING the PostgreSQL tests: {why}.\n\
             * They pass without checking anything. Run `deploy/pg/pg.sh up` (as root)\n\
             * to run them; KCDSYNC_REQUIRE_PG=1 turns this skip into a failure.\n\
             ************************************************************************\n"
        );
    });
}

/// (app URL, admin URL): from the environment, else from pg.sh's pg.env.
fn pg_urls() -> Result<(Option<String>, String), String> {
    let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(admin) = from_env("KCDSYNC_PG_ADMIN_URL") {
        return Ok((from_env("KCDSYNC_PG_URL"), admin));
    }
    let dir = from_env("KCDSYNC_PG_DIR").unwrap_or_else(|| "/var/tmp/kcdsync-pg".into());
    let path = std::path::Path::new(&dir).join("pg.env");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "KCDSYNC_PG_ADMIN_URL is not set and {} cannot be read ({e})",
            path.display()
        )
    })?;
    // Lines as pg.sh writes them: export NAME='VALUE'
    let var = |name: &str| {
        text.lines().find_map(|l| {
            let v = l
                .trim()
                .strip_prefix("export ")?
                .strip_prefix(name)?
                .strip_prefix('=')?;
            Some(v.trim_matches('\'').to_owned())
        })
    };
    let admin = var("KCDSYNC_PG_ADMIN_URL").ok_or_else(|| format!("{} has no KCDSYNC_PG_ADMIN_URL", path.display()))?;
    Ok((var("KCDSYNC_PG_URL"), admin))
}

/// `url` with its database name replaced by `db` (query parameters kept).
pub(super) fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = authority.split_once('/').map_or(authority, |(a, _)| a);
    match query {
        Some(q) => format!("{scheme}://{authority}/{db}?{q}"),
        None => format!("{scheme}://{authority}/{db}"),
    }
}

/// The user name of a `postgres://user:pw@host/db` URL.
pub(super) fn url_user(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    Some(userinfo.split(':').next().unwrap_or(userinfo)).filter(|u| !u.is_empty())
}
