//! Every store test runs twice: on SQLite (a temp file) and on PostgreSQL (a fresh database from
//! `testing::PgTestDb` on the cluster `deploy/pg/pg.sh up` starts), through the same `Store`
//! code. Without a reachable server the PostgreSQL variants print a skip note and pass, unless
//! KCDSYNC_REQUIRE_PG=1 (CI), where they fail.

use std::time::Duration;

use kcdsync_proto::v1::{HostIdentity, HostReport, MigrationAttempt, MigrationRole};

use super::testing::{PgTestDb, url_user, with_database};
use super::*;
use crate::config::Mode;
use crate::model::HostChange;

mod audit;
mod ingest;
mod join_tokens;
mod lease;
mod plans;
mod purges;
mod replication;
mod revocations;
use audit::*;
use ingest::*;
use join_tokens::*;
use lease::*;
use plans::*;
use purges::*;
use replication::*;
use revocations::*;

/// One store test, on both backends: `sqlite::NAME` and `postgres::NAME`.
macro_rules! store_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDb::sqlite();
                    super::$name(&db).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(db) = super::TestDb::postgres() {
                        super::$name(&db).await;
                    }
                }
            )+
        }
    };
}

store_tests!(
    pending_plans_are_found_by_what_they_do,
    plans_round_trip_with_increasing_ids,
    plan_decisions_keep_earlier_values_when_not_given,
    plan_decisions_move_only_from_the_state_they_expect,
    an_approve_racing_a_reject_has_exactly_one_winner,
    plans_list_newest_first_by_state_and_limit,
    superseding_without_a_plan_to_keep_touches_only_pending_plans,
    audit_rows_round_trip_and_survive_reopen,
    audit_lists_newest_first_by_host_and_limit_and_counts,
    last_change_per_host_is_the_newest_audit_time,
    reports_are_upserted_and_last_seen_moves,
    audit_rows_are_committed_with_an_ingest_batch,
    attempts_are_stored_once_even_when_resent,
    attempts_list_newest_first_by_host_and_limit,
    one_hosts_attempt_ids_never_shadow_anothers,
    attempts_stored_before_the_rekey_keep_their_host,
    an_empty_store_answers_empty,
    negative_limits_mean_no_limit,
    nul_characters_in_text_are_replaced,
    two_stores_on_one_database_see_each_other,
    leases_are_taken_renewed_fenced_and_taken_over,
    the_failure_poll_finds_auth_failures_behind_a_flood_of_others,
    an_undelivered_purge_waits_per_host_until_its_answer,
    plans_page_by_id_below_the_previous_page,
    audit_pages_by_id_with_host_and_plan_filters,
    a_write_is_awaited_per_dc_and_arrives_once,
    writes_still_awaited_are_found_again_with_their_audit_rows,
    a_revoked_host_stays_listed_with_who_when_and_why_until_unrevoked,
    two_stores_revoking_one_host_at_once_write_it_once,
    a_join_token_is_spent_once_by_two_replicas_racing,
);

/// The store of one test: where it lives, and what removes it afterwards.
struct TestDb {
    url: String,
    postgres: bool,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgTestDb>,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        TestDb {
            url: format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()),
            postgres: false,
            _dir: Some(dir),
            _pg: None,
        }
    }

    /// A fresh database of its own on the test cluster; `None` (after a skip note) when no
    /// server is configured or reachable and KCDSYNC_REQUIRE_PG is not 1.
    fn postgres() -> Option<TestDb> {
        PgTestDb::create().map(|pg| TestDb {
            url: pg.url.clone(),
            postgres: true,
            _dir: None,
            _pg: Some(pg),
        })
    }

    /// Opens (and migrates) the store; may be called again to reopen it.
    async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", redact_url(&self.url)))
    }
}

// ----------------------------------------------------------------------------------------
// Fixtures
// ----------------------------------------------------------------------------------------

fn change(dn: &str) -> HostChange {
    HostChange {
        host: "hv01.lab.test".into(),
        dn: dn.into(),
        groups: vec!["a".into()],
        mode: Mode::Enforce,
        uac_before: 4096,
        uac_after: None,
        add: vec![],
        remove: vec!["cifs/hv09.lab.test".into()],
        entries_before: 1,
    }
}

fn audit_record(plan_id: i64, host: &str, time_ms: i64) -> AuditRecord {
    AuditRecord {
        id: 0,
        time_ms,
        plan_id,
        host: host.into(),
        dn: format!("CN={host},DC=x"),
        uac_before: 4096,
        uac_after: 4096 | 0x1000000,
        delegate_before: vec!["cifs/HV02".into()],
        delegate_after: vec!["cifs/HV02".into(), "cifs/hv02.lab.test".into()],
        reasons: vec!["set protocol transition".into()],
        trigger: "cli".into(),
        approved_by: None,
        epoch: 3,
        dc: "dc1.lab.test".into(),
    }
}

fn report(fqdn: &str, build: u32) -> HostReport {
    HostReport {
        observed_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        }),
        identity: Some(HostIdentity {
            fqdn: fqdn.into(),
            netbios_name: fqdn.split('.').next().unwrap_or_default().to_uppercase(),
            os_build: build,
            os_caption: "Windows Server".into(),
            credential_guard_running: true,
        }),
        probe_errors: vec!["klist: timed out".into()],
        ..Default::default()
    }
}

fn attempt(id: &str, time_ms: Option<i64>, success: bool, message: &str) -> MigrationAttempt {
    MigrationAttempt {
        attempt_id: id.into(),
        time: time_ms.map(|ms| prost_types::Timestamp {
            // A sub-millisecond part, which the store drops.
            nanos: kcdsync_proto::timestamp_from_ms(ms).nanos + 999,
            ..kcdsync_proto::timestamp_from_ms(ms)
        }),
        vm_name: format!("vm-{id}"),
        vm_id: "00000000-0000-0000-0000-000000000001".into(),
        peer: "hv02.lab.test".into(),
        role: MigrationRole::Source as i32,
        success,
        event_id: 21502,
        error_code: if success { 0 } else { 0x8009030E },
        message: message.into(),
        account: "LAB\\svc-migrate".into(),
        ..Default::default()
    }
}

/// Lets the clock move past the millisecond of the previous write.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

// ----------------------------------------------------------------------------------------
// Plans
// ----------------------------------------------------------------------------------------

async fn an_empty_store_answers_empty(db: &TestDb) {
    let s = db.open().await;
    assert!(IngestBatch::default().is_empty());
    s.ingest(&IngestBatch::default()).await.unwrap();
    assert!(s.list_plans(None, 10).await.unwrap().is_empty());
    assert!(s.get_plan(1).await.unwrap().is_none());
    assert_eq!(s.find_pending(&[change("CN=HV01,DC=x")]).await.unwrap(), None);
    assert_eq!(s.supersede_pending(None).await.unwrap(), 0);
    assert!(s.audit(None, 10).await.unwrap().is_empty());
    assert_eq!(s.audit_count().await.unwrap(), 0);
    assert!(s.last_change_per_host().await.unwrap().is_empty());
    assert!(s.latest_report("hv01.lab.test").await.unwrap().is_none());
    assert!(s.all_reports().await.unwrap().is_empty());
    assert!(s.reporting_hosts().await.unwrap().is_empty());
    assert!(s.attempts(None, 10).await.unwrap().is_empty());
    assert_eq!(s.attempt_count().await.unwrap(), 0);
}

async fn negative_limits_mean_no_limit(db: &TestDb) {
    let s = db.open().await;
    for i in 0..3 {
        let p = s.create_plan(PlanState::Applied, "cli", &[], &[]).await.unwrap();
        s.record_audit(&[audit_record(p, "hv01.lab.test", now_ms())])
            .await
            .unwrap();
        s.ingest(&IngestBatch {
            attempts: vec![("hv01.lab.test".into(), attempt(&format!("x{i}"), None, true, ""))],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(s.list_plans(None, -1).await.unwrap().len(), 3);
    assert_eq!(s.list_plans(Some(PlanState::Applied), i64::MIN).await.unwrap().len(), 3);
    assert_eq!(s.audit(None, -1).await.unwrap().len(), 3);
    assert_eq!(s.audit(Some("hv01.lab.test"), -5).await.unwrap().len(), 3);
    assert_eq!(s.attempts(None, -1).await.unwrap().len(), 3);
    assert_eq!(s.list_plans(None, i64::MAX).await.unwrap().len(), 3);
    assert!(s.list_plans(None, 0).await.unwrap().is_empty());
    assert!(s.audit(None, 0).await.unwrap().is_empty());
    assert!(s.attempts(None, 0).await.unwrap().is_empty());
}

/// Agents and API callers send arbitrary strings; PostgreSQL refuses U+0000 in TEXT, and a
/// refused ingest batch would come back forever (its attempts are never acknowledged).
async fn nul_characters_in_text_are_replaced(db: &TestDb) {
    let s = db.open().await;
    s.ingest(&IngestBatch {
        reports: vec![("hv01.lab.test".into(), report("hv01\0.lab.test", 1))],
        attempts: vec![("hv01.lab.test".into(), {
            let mut a = attempt("n\u{0}1", Some(1_700_000_000_000), false, "bad\0message");
            a.vm_name = "vm\0".into();
            a.peer = "\0".into();
            a.account = "LAB\\\0x".into();
            a
        })],
        seen: vec!["hv01\0.lab.test".into()],
    })
    .await
    .unwrap();
    let got = s.attempts(None, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attempt_id, "n\u{FFFD}1");
    assert_eq!(got[0].message, "bad\u{FFFD}message");
    assert_eq!(got[0].vm, "vm\u{FFFD}");
    assert_eq!(got[0].peer, "\u{FFFD}");
    assert_eq!(got[0].account, "LAB\\\u{FFFD}x");
    // Inside the protobuf bytes a NUL is just a byte.
    let (r, _, _) = s.latest_report("hv01.lab.test").await.unwrap().unwrap();
    assert_eq!(r, report("hv01\0.lab.test", 1));
    assert!(s.attempts(Some("hv01\0.lab.test"), 10).await.unwrap().is_empty());
    assert!(s.latest_report("hv01\0.lab.test").await.unwrap().is_none());

    let p = s
        .create_plan(PlanState::PendingApproval, "api:\0", &[change("CN=HV\0,DC=x")], &[])
        .await
        .unwrap();
    s.decide_plan(
        p,
        PlanState::PendingApproval,
        PlanState::Rejected,
        Some("alice\0"),
        Some("no\0pe"),
    )
    .await
    .unwrap();
    let plan = s.get_plan(p).await.unwrap().unwrap();
    assert_eq!(plan.trigger, "api:\u{FFFD}");
    assert_eq!(plan.changes, vec![change("CN=HV\0,DC=x")], "JSON escapes NUL itself");
    assert_eq!(plan.decided_by.as_deref(), Some("alice\u{FFFD}"));
    assert_eq!(plan.note.as_deref(), Some("no\u{FFFD}pe"));
    let mut rec = audit_record(p, "hv\u{0}01.lab.test", now_ms());
    rec.trigger = "\0".into();
    rec.approved_by = Some("bob\0".into());
    s.record_audit(&[rec]).await.unwrap();
    let got = s.audit(Some("hv\u{0}01.lab.test"), 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].host, "hv\u{FFFD}01.lab.test");
    assert_eq!(got[0].dn, "CN=hv\u{FFFD}01.lab.test,DC=x");
    assert_eq!(got[0].trigger, "\u{FFFD}");
    assert_eq!(got[0].approved_by.as_deref(), Some("bob\u{FFFD}"));
    assert_eq!(s.last_change_per_host().await.unwrap()[0].0, "hv\u{FFFD}01.lab.test");
}

/// Two controllers on one database (what several replicas will do): the second open finds
/// the schema migrated, concurrent writes get distinct ids, each sees the other's rows,
/// and an attempt both of them ingest is stored once.
async fn two_stores_on_one_database_see_each_other(db: &TestDb) {
    // On PostgreSQL both start on the empty database at once: sqlx's migrator holds an
    // advisory lock, so the migrations run once. Its SQLite migrator takes no lock (two
    // processes creating one store file at the same instant fail with "table plans
    // already exists"); SQLite is the single-controller store, so there they start in turn.
    let (a, b) = if db.postgres {
        tokio::join!(db.open(), db.open())
    } else {
        (db.open().await, db.open().await)
    };
    let (ca, cb) = ([change("CN=HV01,DC=x")], [change("CN=HV02,DC=x")]);
    let (pa, pb) = tokio::join!(
        a.create_plan(PlanState::PendingApproval, "a", &ca, &[]),
        b.create_plan(PlanState::PendingApproval, "b", &cb, &[]),
    );
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    assert_ne!(pa, pb);
    assert_eq!(b.get_plan(pa).await.unwrap().unwrap().trigger, "a");
    assert_eq!(a.find_pending(&[change("CN=HV02,DC=x")]).await.unwrap(), Some(pb));
    let batch = |host: &str| IngestBatch {
        reports: vec![(host.to_string(), report(host, 20348))],
        attempts: vec![
            (
                "hv01.lab.test".to_string(),
                attempt("shared", Some(1_700_000_000_000), true, ""),
            ),
            (host.to_string(), attempt(host, Some(1_700_000_000_001), true, "")),
        ],
        seen: vec![],
    };
    let (ba, bb) = (batch("hv01.lab.test"), batch("hv02.lab.test"));
    let (ra, rb) = tokio::join!(a.ingest(&ba), b.ingest(&bb));
    ra.unwrap();
    rb.unwrap();
    assert_eq!(a.attempt_count().await.unwrap(), 3);
    assert_eq!(b.reporting_hosts().await.unwrap().len(), 2);
    a.close().await;
    b.close().await;
}

#[test]
fn urls_lose_their_passwords() {
    assert_eq!(
        redact_url("postgres://kcd:hunter2@db:5432/x"),
        "postgres://kcd:***@db:5432/x"
    );
    assert_eq!(
        redact_url("sqlite:///var/lib/kcdsync.db"),
        "sqlite:///var/lib/kcdsync.db"
    );
}

#[tokio::test]
async fn unknown_schemes_are_refused() {
    assert!(matches!(
        Store::open("mysql://u:p@h/db").await,
        Err(StoreError::Scheme(_))
    ));
}

#[test]
fn test_database_urls() {
    assert_eq!(
        with_database("postgres://u:p@127.0.0.1:55432/kcdsync", "t1"),
        "postgres://u:p@127.0.0.1:55432/t1"
    );
    assert_eq!(
        with_database("postgres://u:p@h/postgres?sslmode=disable", "t1"),
        "postgres://u:p@h/t1?sslmode=disable"
    );
    assert_eq!(with_database("postgresql://h:5432", "t1"), "postgresql://h:5432/t1");
    assert_eq!(url_user("postgres://kcdsync:pw@h/db"), Some("kcdsync"));
    assert_eq!(url_user("postgres://h/db"), None);
}
