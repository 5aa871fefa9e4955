//! The audit: rows round-trip, list, count, and date each host's last change.

use super::*;

pub(super) async fn audit_rows_round_trip_and_survive_reopen(db: &TestDb) {
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

pub(super) async fn audit_lists_newest_first_by_host_and_limit_and_counts(db: &TestDb) {
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

pub(super) async fn last_change_per_host_is_the_newest_audit_time(db: &TestDb) {
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

/// ListAudit pages in SQL by id, filtered by host and plan in the query.
pub(super) async fn audit_pages_by_id_with_host_and_plan_filters(db: &TestDb) {
    let s = db.open().await;
    let p1 = s.create_plan(PlanState::Applied, "cli", &[], &[]).await.unwrap();
    let p2 = s.create_plan(PlanState::Applied, "cli", &[], &[]).await.unwrap();
    let t = now_ms();
    let rows: Vec<AuditRecord> = [(p1, "hv01"), (p1, "hv02"), (p2, "hv01"), (p2, "hv02"), (p2, "hv01")]
        .iter()
        .map(|(p, h)| audit_record(*p, &format!("{h}.lab.test"), t))
        .collect();
    s.record_audit(&rows).await.unwrap();
    let ids = |v: Vec<AuditRecord>| v.iter().map(|r| (r.plan_id, r.host.clone(), r.id)).collect::<Vec<_>>();
    let all = ids(s.audit_page(None, None, None, 100).await.unwrap());
    assert_eq!(all.len(), 5);
    let first = ids(s.audit_page(None, None, None, 2).await.unwrap());
    assert_eq!(first, all[..2]);
    let next = ids(s.audit_page(None, None, Some(first[1].2), 2).await.unwrap());
    assert_eq!(next, all[2..4]);
    let p2_hv01 = ids(s.audit_page(Some("hv01.lab.test"), Some(p2), None, 10).await.unwrap());
    assert_eq!(p2_hv01.len(), 2);
    assert!(p2_hv01.iter().all(|(p, h, _)| *p == p2 && h == "hv01.lab.test"));
    let p1_rows = ids(s.audit_page(None, Some(p1), None, 10).await.unwrap());
    assert_eq!(
        p1_rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        ["hv02.lab.test", "hv01.lab.test"]
    );
    assert!(s.audit_page(None, Some(p2 + 100), None, 10).await.unwrap().is_empty());
}
