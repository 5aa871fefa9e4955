//! Agent ingest: reports upserted, attempts stored once per (host, attempt id), listed.

use super::*;

pub(super) async fn reports_are_upserted_and_last_seen_moves(db: &TestDb) {
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

pub(super) async fn attempts_are_stored_once_even_when_resent(db: &TestDb) {
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

pub(super) async fn attempts_list_newest_first_by_host_and_limit(db: &TestDb) {
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

pub(super) async fn one_hosts_attempt_ids_never_shadow_anothers(db: &TestDb) {
    let s = db.open().await;
    let t = 1_700_000_000_000;
    s.ingest(&IngestBatch {
        attempts: vec![(
            "hv-b.lab.test".into(),
            attempt("hv-b.lab.test:7", Some(t), false, "b's own"),
        )],
        ..Default::default()
    })
    .await
    .unwrap();
    // hv-a sends the very same id (by mistake or on purpose), then resends it.
    for _ in 0..2 {
        s.ingest(&IngestBatch {
            attempts: vec![(
                "hv-a.lab.test".into(),
                attempt("hv-b.lab.test:7", Some(t + 1), true, "a's"),
            )],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(s.attempt_count().await.unwrap(), 2);
    let b = s.attempts(Some("hv-b.lab.test"), 10).await.unwrap();
    assert_eq!((b.len(), b[0].message.as_str(), b[0].success), (1, "b's own", false));
    let a = s.attempts(Some("hv-a.lab.test"), 10).await.unwrap();
    assert_eq!((a.len(), a[0].message.as_str(), a[0].success), (1, "a's", true));
    assert_eq!(a[0].attempt_id, b[0].attempt_id);
    // Failures are found with the host they belong to.
    let failed = s.auth_failures_since(0, &[0x8009030E]).await.unwrap();
    assert_eq!(
        failed.iter().map(|f| (f.0.as_str(), f.1.as_str())).collect::<Vec<_>>(),
        vec![("hv-b.lab.test:7", "hv-b.lab.test")]
    );
}

/// Migration 0005 re-keys attempts by (host, attempt id): rows stored before it keep their host
/// and content, and afterwards another host may use the same id.
pub(super) async fn attempts_stored_before_the_rekey_keep_their_host(db: &TestDb) {
    sqlx::any::install_default_drivers();
    let migrator = if db.postgres {
        sqlx::migrate!("./migrations/postgres")
    } else {
        sqlx::migrate!("./migrations/sqlite")
    };
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    migrator.run_to(4, &pool).await.unwrap();
    sqlx::query(
        "INSERT INTO attempts (attempt_id, host, time, vm, peer, role, success, event_id, error_code, message, account, received_at) \
         VALUES ('x:1', 'hv-b.lab.test', 5, 'vm', 'hv-a.lab.test', 1, 0, 21502, 2148074254, 'old', 'LAB\\svc', 6)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let s = db.open().await;
    let old = s.attempts(None, 10).await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(
        (
            old[0].host.as_str(),
            old[0].attempt_id.as_str(),
            old[0].time_ms,
            old[0].message.as_str()
        ),
        ("hv-b.lab.test", "x:1", 5, "old")
    );
    assert_eq!(old[0].error_code, 0x8009030E);
    s.ingest(&IngestBatch {
        attempts: vec![("hv-a.lab.test".into(), attempt("x:1", Some(7), true, "new"))],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.attempt_count().await.unwrap(), 2);
    assert_eq!(s.attempts(Some("hv-b.lab.test"), 10).await.unwrap()[0].message, "old");
}

/// The failure poll filters by error code in SQL: 1,500 other failures received first do not
/// push an authentication failure past the page (before, the LIMIT came before the filter).
pub(super) async fn the_failure_poll_finds_auth_failures_behind_a_flood_of_others(db: &TestDb) {
    let s = db.open().await;
    let flood: Vec<(String, MigrationAttempt)> = (0..1500)
        .map(|i| {
            let mut a = attempt(&format!("flood:{i}"), Some(1_700_000_000_000), false, "disk full");
            a.error_code = 0x80070070;
            ("hv-flood.lab.test".to_owned(), a)
        })
        .collect();
    s.ingest(&IngestBatch {
        attempts: flood,
        ..Default::default()
    })
    .await
    .unwrap();
    let since = now_ms() - 60_000;
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.ingest(&IngestBatch {
        attempts: vec![
            (
                "hv-k.lab.test".into(),
                attempt("auth:1", Some(1_700_000_000_000), false, "no creds"),
            ),
            (
                "hv-k.lab.test".into(),
                attempt("ok:1", Some(1_700_000_000_000), true, ""),
            ),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let found = s.auth_failures_since(since, &[0x8009030E, 0x8009030D]).await.unwrap();
    assert_eq!(
        found.iter().map(|f| (f.0.as_str(), f.1.as_str())).collect::<Vec<_>>(),
        vec![("auth:1", "hv-k.lab.test")]
    );
    assert!(s.auth_failures_since(since, &[]).await.unwrap().is_empty());
    assert!(
        s.auth_failures_since(now_ms() + 60_000, &[0x8009030E])
            .await
            .unwrap()
            .is_empty()
    );
}

pub(super) async fn audit_rows_are_committed_with_an_ingest_batch(db: &TestDb) {
    let s = db.open().await;
    let t0 = now_ms();
    let row = |host: &str, serial: &str| AuditRow {
        kind: EVENT_CERT_RENEWED,
        host: host.into(),
        actor: "agent at 127.0.0.1:50000".into(),
        detail: format!("certificate serial {serial}"),
    };
    s.ingest_audited(
        &IngestBatch {
            attempts: vec![("hv01.lab.test".into(), attempt("a1", Some(t0), true, "ok"))],
            ..Default::default()
        },
        &[row("hv01.lab.test", "01"), row("hv02.lab.test", "02")],
    )
    .await
    .unwrap();
    assert_eq!(s.attempt_count().await.unwrap(), 1);
    let events = s.audit_events(Some("hv02.lab.test"), 10).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(
        (e.kind.as_str(), e.actor.as_str(), e.detail.as_str()),
        (EVENT_CERT_RENEWED, "agent at 127.0.0.1:50000", "certificate serial 02")
    );
    assert!(e.time_ms >= t0, "{} >= {t0}", e.time_ms);
    // Audit rows alone (no attempt queued) are a batch too.
    s.ingest_audited(&IngestBatch::default(), &[row("hv01.lab.test", "03")])
        .await
        .unwrap();
    assert_eq!(s.audit_events(Some("hv01.lab.test"), 10).await.unwrap().len(), 2);
}
