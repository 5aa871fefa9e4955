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
    plans_list_newest_first_by_state_and_limit,
    superseding_without_a_plan_to_keep_touches_only_pending_plans,
    audit_rows_round_trip_and_survive_reopen,
    audit_lists_newest_first_by_host_and_limit_and_counts,
    last_change_per_host_is_the_newest_audit_time,
    reports_are_upserted_and_last_seen_moves,
    attempts_are_stored_once_even_when_resent,
    attempts_list_newest_first_by_host_and_limit,
    an_empty_store_answers_empty,
    negative_limits_mean_no_limit,
    nul_characters_in_text_are_replaced,
    two_stores_on_one_database_see_each_other,
    leases_are_taken_renewed_fenced_and_taken_over,
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

async fn pending_plans_are_found_by_what_they_do(db: &TestDb) {
    let s = db.open().await;
    let id = s
        .create_plan(
            PlanState::PendingApproval,
            "cli",
            &[change("CN=HV01,DC=x")],
            &["r".into()],
        )
        .await
        .unwrap();
    assert_eq!(s.find_pending(&[change("cn=hv01,dc=X")]).await.unwrap(), Some(id));
    assert_eq!(s.find_pending(&[change("CN=HV02,DC=x")]).await.unwrap(), None);
    let other = s
        .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV02,DC=x")], &[])
        .await
        .unwrap();
    assert_eq!(s.supersede_pending(Some(other)).await.unwrap(), 1);
    assert_eq!(s.get_plan(id).await.unwrap().unwrap().state, PlanState::Superseded);
    assert_eq!(
        s.get_plan(other).await.unwrap().unwrap().changes,
        vec![change("CN=HV02,DC=x")]
    );
    // Only pending plans are found, the newest first.
    assert_eq!(s.find_pending(&[change("CN=HV01,DC=x")]).await.unwrap(), None);
    s.create_plan(PlanState::Applied, "cli", &[change("CN=HV03,DC=x")], &[])
        .await
        .unwrap();
    assert_eq!(s.find_pending(&[change("CN=HV03,DC=x")]).await.unwrap(), None);
    let newer = s
        .create_plan(PlanState::PendingApproval, "api", &[change("CN=HV02,DC=x")], &[])
        .await
        .unwrap();
    assert_eq!(s.find_pending(&[change("CN=HV02,DC=x")]).await.unwrap(), Some(newer));
}

async fn plans_round_trip_with_increasing_ids(db: &TestDb) {
    let s = db.open().await;
    let before = now_ms();
    let mut big = change("CN=HV01,DC=x");
    big.uac_before = u32::MAX;
    big.uac_after = Some(0x8100_1000);
    big.add = vec![
        "cifs/hv02.lab.test".into(),
        "Microsoft Virtual System Migration Service/HV02".into(),
    ];
    big.groups.push("unicode: Überprüfung ✓".into());
    let gate = vec!["removes entries".to_string(), "more than 1 host".to_string()];
    let a = s
        .create_plan(
            PlanState::PendingApproval,
            "agent:hv01",
            &[big.clone(), change("CN=HV02,DC=x")],
            &gate,
        )
        .await
        .unwrap();
    let b = s.create_plan(PlanState::Applied, "timer", &[], &[]).await.unwrap();
    assert!(a > 0 && b > a, "ids {a}, {b}");
    let p = s.get_plan(a).await.unwrap().unwrap();
    assert_eq!(p.id, a);
    assert!(
        p.created_at_ms >= before && p.created_at_ms <= now_ms(),
        "{}",
        p.created_at_ms
    );
    assert_eq!(p.state, PlanState::PendingApproval);
    assert_eq!(p.trigger, "agent:hv01");
    assert_eq!(p.changes, vec![big.clone(), change("CN=HV02,DC=x")]);
    assert_eq!(p.gate_reasons, gate);
    assert_eq!(p.decided_by, None);
    assert_eq!(p.note, None);
    assert_eq!(p.intents(), crate::model::intents(&[big, change("CN=HV02,DC=x")]));
    let q = s.get_plan(b).await.unwrap().unwrap();
    assert_eq!(
        (q.state, q.changes.len(), q.gate_reasons.len()),
        (PlanState::Applied, 0, 0)
    );
    assert!(s.get_plan(b + 1000).await.unwrap().is_none());
}

async fn plan_decisions_keep_earlier_values_when_not_given(db: &TestDb) {
    let s = db.open().await;
    let id = s
        .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV01,DC=x")], &[])
        .await
        .unwrap();
    let other = s
        .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV02,DC=x")], &[])
        .await
        .unwrap();
    s.set_plan_state(id, PlanState::Approved, Some("alice"), Some("change 42"))
        .await
        .unwrap();
    let p = s.get_plan(id).await.unwrap().unwrap();
    assert_eq!(p.state, PlanState::Approved);
    assert_eq!(p.decided_by.as_deref(), Some("alice"));
    assert_eq!(p.note.as_deref(), Some("change 42"));
    // NULL parameters leave what is there (COALESCE).
    s.set_plan_state(id, PlanState::Applied, None, None).await.unwrap();
    let p = s.get_plan(id).await.unwrap().unwrap();
    assert_eq!(p.state, PlanState::Applied);
    assert_eq!(p.decided_by.as_deref(), Some("alice"));
    assert_eq!(p.note.as_deref(), Some("change 42"));
    s.set_plan_state(id, PlanState::Failed, None, Some("rc 16"))
        .await
        .unwrap();
    let p = s.get_plan(id).await.unwrap().unwrap();
    assert_eq!((p.state, p.note.as_deref()), (PlanState::Failed, Some("rc 16")));
    // Only the plan named changed; every state survives the round trip.
    assert_eq!(
        s.get_plan(other).await.unwrap().unwrap().state,
        PlanState::PendingApproval
    );
    for state in [
        PlanState::PendingApproval,
        PlanState::Approved,
        PlanState::Applied,
        PlanState::Rejected,
        PlanState::Superseded,
        PlanState::Failed,
    ] {
        s.set_plan_state(other, state, Some("bob"), None).await.unwrap();
        assert_eq!(s.get_plan(other).await.unwrap().unwrap().state, state);
    }
    // A missing plan is not an error.
    s.set_plan_state(other + 1000, PlanState::Rejected, None, None)
        .await
        .unwrap();
}

async fn plans_list_newest_first_by_state_and_limit(db: &TestDb) {
    let s = db.open().await;
    let mut ids = vec![];
    for (i, state) in [
        PlanState::Applied,
        PlanState::PendingApproval,
        PlanState::Applied,
        PlanState::Rejected,
        PlanState::Applied,
    ]
    .into_iter()
    .enumerate()
    {
        let dn = format!("CN=HV{i:02},DC=x");
        ids.push(s.create_plan(state, "cli", &[change(&dn)], &[]).await.unwrap());
    }
    let all: Vec<i64> = s.list_plans(None, 100).await.unwrap().iter().map(|p| p.id).collect();
    assert_eq!(all, ids.iter().rev().copied().collect::<Vec<_>>());
    let applied: Vec<i64> = s
        .list_plans(Some(PlanState::Applied), 100)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(applied, vec![ids[4], ids[2], ids[0]]);
    let two: Vec<i64> = s
        .list_plans(Some(PlanState::Applied), 2)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(two, vec![ids[4], ids[2]]);
    let pending = s.list_plans(Some(PlanState::PendingApproval), 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].changes, vec![change("CN=HV01,DC=x")]);
    assert!(s.list_plans(Some(PlanState::Failed), 10).await.unwrap().is_empty());
    assert_eq!(s.list_plans(None, 1).await.unwrap().len(), 1);
}

async fn superseding_without_a_plan_to_keep_touches_only_pending_plans(db: &TestDb) {
    let s = db.open().await;
    let p1 = s
        .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV01,DC=x")], &[])
        .await
        .unwrap();
    let p2 = s
        .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV02,DC=x")], &[])
        .await
        .unwrap();
    let applied = s
        .create_plan(PlanState::Applied, "cli", &[change("CN=HV03,DC=x")], &[])
        .await
        .unwrap();
    assert_eq!(s.supersede_pending(None).await.unwrap(), 2);
    for id in [p1, p2] {
        assert_eq!(s.get_plan(id).await.unwrap().unwrap().state, PlanState::Superseded);
    }
    assert_eq!(s.get_plan(applied).await.unwrap().unwrap().state, PlanState::Applied);
    assert_eq!(s.supersede_pending(None).await.unwrap(), 0);
    // Keeping a plan that is not pending supersedes the pending ones all the same.
    let p3 = s
        .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV04,DC=x")], &[])
        .await
        .unwrap();
    assert_eq!(s.supersede_pending(Some(p3)).await.unwrap(), 0);
    assert_eq!(s.supersede_pending(Some(applied)).await.unwrap(), 1);
    assert_eq!(s.get_plan(p3).await.unwrap().unwrap().state, PlanState::Superseded);
}

// ----------------------------------------------------------------------------------------
// Audit
// ----------------------------------------------------------------------------------------

async fn audit_rows_round_trip_and_survive_reopen(db: &TestDb) {
    let s = db.open().await;
    let plan = s
        .create_plan(PlanState::Applied, "cli", &[change("CN=HV01,DC=x")], &[])
        .await
        .unwrap();
    let mut rec = audit_record(plan, "hv01.lab.test", now_ms());
    rec.uac_before = u32::MAX; // beyond i32: stored as BIGINT
    rec.approved_by = Some("alice".into());
    s.record_audit(std::slice::from_ref(&rec)).await.unwrap();
    s.close().await;
    let s = db.open().await;
    let got = s.audit(Some("hv01.lab.test"), 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].id > 0);
    assert_eq!(
        AuditRecord {
            id: 0,
            ..got[0].clone()
        },
        rec
    );
    assert!(s.audit(Some("hv02.lab.test"), 10).await.unwrap().is_empty());
    // An empty apply writes nothing.
    s.record_audit(&[]).await.unwrap();
    assert_eq!(s.audit_count().await.unwrap(), 1);
}

async fn audit_lists_newest_first_by_host_and_limit_and_counts(db: &TestDb) {
    let s = db.open().await;
    let plan = s.create_plan(PlanState::Applied, "cli", &[], &[]).await.unwrap();
    let t = now_ms();
    let batch: Vec<AuditRecord> = ["hv01", "hv02", "hv01", "hv03", "hv01"]
        .iter()
        .enumerate()
        .map(|(i, h)| audit_record(plan, &format!("{h}.lab.test"), t + i as i64))
        .collect();
    s.record_audit(&batch[..2]).await.unwrap();
    s.record_audit(&batch[2..]).await.unwrap();
    assert_eq!(s.audit_count().await.unwrap(), 5);
    let all = s.audit(None, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let times: Vec<i64> = all.iter().map(|r| r.time_ms).collect();
    assert_eq!(times, vec![t + 4, t + 3, t + 2, t + 1, t]);
    let hv01 = s.audit(Some("hv01.lab.test"), 100).await.unwrap();
    assert_eq!(
        hv01.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
        vec![t + 4, t + 2, t]
    );
    assert!(hv01.iter().all(|r| r.host == "hv01.lab.test" && r.plan_id == plan));
    assert_eq!(s.audit(Some("hv01.lab.test"), 2).await.unwrap().len(), 2);
    assert_eq!(s.audit(None, 3).await.unwrap().len(), 3);
    // Host names match exactly.
    assert!(s.audit(Some("HV01.lab.test"), 10).await.unwrap().is_empty());
    assert!(s.audit(Some("hv01"), 10).await.unwrap().is_empty());
    // One apply is one transaction: a row naming no plan (foreign key) fails the whole
    // batch on both backends, and the valid row before it is not kept.
    let bad = [
        audit_record(plan, "hv04.lab.test", t),
        audit_record(plan + 1000, "hv05.lab.test", t),
    ];
    assert!(s.record_audit(&bad).await.is_err());
    assert_eq!(s.audit_count().await.unwrap(), 5);
    assert!(s.audit(Some("hv04.lab.test"), 10).await.unwrap().is_empty());
}

async fn last_change_per_host_is_the_newest_audit_time(db: &TestDb) {
    let s = db.open().await;
    let plan = s.create_plan(PlanState::Applied, "cli", &[], &[]).await.unwrap();
    // Times past 2^31 ms (and past i32 seconds): BIGINT all the way through MAX().
    let t = 4_102_444_800_000; // 2100-01-01
    s.record_audit(&[
        audit_record(plan, "hv02.lab.test", t - 50),
        audit_record(plan, "hv01.lab.test", t + 7),
        audit_record(plan, "hv01.lab.test", t - 1000),
        audit_record(plan, "hv02.lab.test", t + 1),
    ])
    .await
    .unwrap();
    // Out of order across applies too: MAX(time), not the latest row.
    s.record_audit(&[audit_record(plan, "hv01.lab.test", t)]).await.unwrap();
    let mut got = s.last_change_per_host().await.unwrap();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("hv01.lab.test".to_string(), t + 7),
            ("hv02.lab.test".to_string(), t + 1)
        ]
    );
}

// ----------------------------------------------------------------------------------------
// Agents
// ----------------------------------------------------------------------------------------

async fn reports_are_upserted_and_last_seen_moves(db: &TestDb) {
    let s = db.open().await;
    let t0 = now_ms();
    s.ingest(&IngestBatch {
        reports: vec![
            ("hv02.lab.test".into(), report("hv02.lab.test", 17763)),
            ("hv01.lab.test".into(), report("hv01.lab.test", 14393)),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let (r1, received1, seen1) = s.latest_report("hv01.lab.test").await.unwrap().unwrap();
    assert_eq!(r1, report("hv01.lab.test", 14393));
    assert!(received1 >= t0 && received1 == seen1, "{t0} {received1} {seen1}");
    assert!(s.latest_report("hv09.lab.test").await.unwrap().is_none());

    // A heartbeat moves last_seen only; one for a host that never reported is ignored.
    tick().await;
    s.ingest(&IngestBatch {
        seen: vec!["hv01.lab.test".into(), "hv09.lab.test".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let (r, received, seen2) = s.latest_report("hv01.lab.test").await.unwrap().unwrap();
    assert_eq!((r, received), (report("hv01.lab.test", 14393), received1));
    assert!(seen2 > seen1, "{seen2} > {seen1}");
    assert!(s.latest_report("hv09.lab.test").await.unwrap().is_none());

    // A new report replaces the old one and moves both times.
    tick().await;
    s.ingest(&IngestBatch {
        reports: vec![("hv01.lab.test".into(), report("hv01.lab.test", 26100))],
        ..Default::default()
    })
    .await
    .unwrap();
    let (r, received3, seen3) = s.latest_report("hv01.lab.test").await.unwrap().unwrap();
    assert_eq!(r, report("hv01.lab.test", 26100));
    assert!(received3 > received1 && seen3 == received3);

    let hosts = s.reporting_hosts().await.unwrap();
    assert_eq!(
        hosts.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
        vec!["hv01.lab.test", "hv02.lab.test"]
    );
    assert_eq!(hosts[0].1, seen3);
    let mut all = s.all_reports().await.unwrap();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], ("hv01.lab.test".into(), report("hv01.lab.test", 26100), seen3));
    assert_eq!(all[1].0, "hv02.lab.test");
    assert_eq!(all[1].1, report("hv02.lab.test", 17763));
    // An empty report (zero bytes encoded) is a report too.
    s.ingest(&IngestBatch {
        reports: vec![("hv03.lab.test".into(), HostReport::default())],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.latest_report("hv03.lab.test").await.unwrap().unwrap().0,
        HostReport::default()
    );
    assert_eq!(s.attempt_count().await.unwrap(), 0);
}

async fn attempts_are_stored_once_even_when_resent(db: &TestDb) {
    let s = db.open().await;
    let t = 1_700_000_000_123;
    s.ingest(&IngestBatch {
        attempts: vec![
            (
                "hv01.lab.test".into(),
                attempt("a1", Some(t), false, "0x8009030E first"),
            ),
            ("hv01.lab.test".into(), attempt("a2", Some(t + 1), true, "ok")),
            // The same id twice in one batch.
            ("hv01.lab.test".into(), attempt("a2", Some(t + 1), true, "ok again")),
        ],
        seen: vec!["hv01.lab.test".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.attempt_count().await.unwrap(), 2);
    // A later batch resends a1 (say the ack was lost) along with a new one.
    s.ingest(&IngestBatch {
        attempts: vec![
            (
                "hv01.lab.test".into(),
                attempt("a1", Some(t), false, "0x8009030E resent"),
            ),
            ("hv02.lab.test".into(), attempt("a3", Some(t + 2), false, "other")),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.attempt_count().await.unwrap(), 3);
    let got = s.attempts(None, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|a| a.attempt_id.as_str()).collect::<Vec<_>>(),
        vec!["a3", "a2", "a1"]
    );
    let a1 = &got[2];
    assert_eq!(
        a1,
        &StoredAttempt {
            attempt_id: "a1".into(),
            host: "hv01.lab.test".into(),
            time_ms: t,
            vm: "vm-a1".into(),
            peer: "hv02.lab.test".into(),
            success: false,
            error_code: 0x8009030E,
            message: "0x8009030E first".into(),
            account: "LAB\\svc-migrate".into(),
        }
    );
    assert!(got[1].success && got[1].error_code == 0 && got[1].message == "ok");
    // Attempts do not make a host a reporting one.
    assert!(s.reporting_hosts().await.unwrap().is_empty());
}

async fn attempts_list_newest_first_by_host_and_limit(db: &TestDb) {
    let s = db.open().await;
    let t = 1_700_000_000_000;
    let before = now_ms();
    s.ingest(&IngestBatch {
        attempts: vec![
            ("hv01.lab.test".into(), attempt("b", Some(t), true, "")),
            // Same time: the attempt id breaks the tie, descending.
            ("hv01.lab.test".into(), attempt("c", Some(t), true, "")),
            ("hv02.lab.test".into(), attempt("a", Some(t + 5), true, "")),
            ("hv01.lab.test".into(), attempt("d", Some(t - 5), false, "")),
            // No time from the agent: stored with the time it arrived.
            ("hv01.lab.test".into(), attempt("e", None, false, "")),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let ids = |v: Vec<StoredAttempt>| v.into_iter().map(|a| a.attempt_id).collect::<Vec<_>>();
    assert_eq!(ids(s.attempts(None, 10).await.unwrap()), vec!["e", "a", "c", "b", "d"]);
    assert_eq!(
        ids(s.attempts(Some("hv01.lab.test"), 10).await.unwrap()),
        vec!["e", "c", "b", "d"]
    );
    assert_eq!(ids(s.attempts(Some("hv01.lab.test"), 2).await.unwrap()), vec!["e", "c"]);
    assert_eq!(ids(s.attempts(Some("hv02.lab.test"), 10).await.unwrap()), vec!["a"]);
    assert!(s.attempts(Some("hv03.lab.test"), 10).await.unwrap().is_empty());
    let e = s.attempts(None, 1).await.unwrap().remove(0);
    assert!(e.time_ms >= before && e.time_ms <= now_ms(), "{}", e.time_ms);
    assert_eq!(s.attempt_count().await.unwrap(), 5);
}

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
    s.set_plan_state(p, PlanState::Rejected, Some("alice\0"), Some("no\0pe"))
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

/// The lease: one holder at a time; renewals keep the epoch; a takeover after expiry bumps
/// it, and the deposed holder's fence check fails from then on.
async fn leases_are_taken_renewed_fenced_and_taken_over(db: &TestDb) {
    let s = db.open().await;
    assert_eq!(s.lease("leader").await.unwrap(), None);
    assert!(!s.holds_lease("leader", "a", 1).await.unwrap());
    assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), Some(1));
    // Renewal: same epoch. Another holder cannot take a live lease.
    assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), Some(1));
    assert_eq!(s.acquire_lease("leader", "b", "b:1", 60_000).await.unwrap(), None);
    let l = s.lease("leader").await.unwrap().unwrap();
    assert_eq!((l.holder.as_str(), l.address.as_str(), l.epoch), ("a", "a:1", 1));
    assert!(l.expires_at_ms > now_ms());
    assert!(s.holds_lease("leader", "a", 1).await.unwrap());
    assert!(!s.holds_lease("leader", "a", 2).await.unwrap());
    assert!(!s.holds_lease("leader", "b", 1).await.unwrap());
    // Another lease name is independent.
    assert_eq!(s.acquire_lease("other", "b", "b:1", 60_000).await.unwrap(), Some(1));
    // Expiry: a short lease lapses, and b takes it over at epoch 2.
    assert_eq!(s.acquire_lease("leader", "a", "a:1", 1).await.unwrap(), Some(1));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!s.holds_lease("leader", "a", 1).await.unwrap());
    assert_eq!(s.acquire_lease("leader", "b", "b:1", 60_000).await.unwrap(), Some(2));
    assert!(!s.holds_lease("leader", "a", 1).await.unwrap());
    assert!(s.holds_lease("leader", "b", 2).await.unwrap());
    assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), None);
    // Release by a non-holder does nothing; by the holder, the next taker gets epoch 3.
    s.release_lease("leader", "a").await.unwrap();
    assert!(s.holds_lease("leader", "b", 2).await.unwrap());
    s.release_lease("leader", "b").await.unwrap();
    assert!(!s.holds_lease("leader", "b", 2).await.unwrap());
    assert_eq!(s.acquire_lease("leader", "a", "a:1", 60_000).await.unwrap(), Some(3));
    // Two contenders at once on an expired lease: exactly one wins.
    s.release_lease("leader", "a").await.unwrap();
    let (x, y) = tokio::join!(
        s.acquire_lease("leader", "x", "x:1", 60_000),
        s.acquire_lease("leader", "y", "y:1", 60_000)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x.is_some() != y.is_some(), "{x:?} {y:?}");
    assert_eq!(x.or(y), Some(4));
    s.close().await;
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
