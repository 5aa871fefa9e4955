//! The per-DC verify's record: awaited once per (plan, object, DC), arrived once.

use super::*;

fn awaited(plan_id: i64, dc: &str) -> ReplicationRecord {
    ReplicationRecord {
        plan_id,
        host: "hv01.lab.test".into(),
        dn: "CN=HV01,OU=Hyper-V,DC=lab,DC=test".into(),
        dc: dc.into(),
        written_at_ms: 1_000,
        arrived_at_ms: None,
    }
}

pub(super) async fn a_write_is_awaited_per_dc_and_arrives_once(db: &TestDb) {
    let s = db.open().await;
    s.expect_replication(&[awaited(7, "dc2.lab.test"), awaited(7, "dc3.lab.test")])
        .await
        .unwrap();
    // Recorded again (a resumed watch): nothing changes.
    s.expect_replication(&[awaited(7, "dc2.lab.test")]).await.unwrap();
    let dn = "CN=HV01,OU=Hyper-V,DC=lab,DC=test";
    assert!(s.replication_arrived(7, dn, "dc2.lab.test", 4_100).await.unwrap());
    assert!(
        !s.replication_arrived(7, dn, "dc2.lab.test", 9_000).await.unwrap(),
        "only the first arrival counts"
    );
    let rows = s.replication_of_plans(7, 7).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].dc.as_str(), rows[0].lag_ms()), ("dc2.lab.test", Some(3_100)));
    assert_eq!((rows[1].dc.as_str(), rows[1].lag_ms()), ("dc3.lab.test", None));
    assert!(s.replication_of_plans(8, 100).await.unwrap().is_empty());
}

pub(super) async fn writes_still_awaited_are_found_again_with_their_audit_rows(db: &TestDb) {
    let s = db.open().await;
    let dn = "CN=HV01,OU=Hyper-V,DC=lab,DC=test";
    let plan = s.create_plan(PlanState::Applied, "cli", &[], &[]).await.unwrap();
    let mut audit = audit_record(plan, "hv01.lab.test", 5_000);
    audit.dn = dn.into();
    s.record_audit(&[audit]).await.unwrap();
    s.expect_replication(&[
        ReplicationRecord {
            plan_id: plan,
            written_at_ms: 5_000,
            ..awaited(plan, "dc2.lab.test")
        },
        ReplicationRecord {
            plan_id: plan,
            written_at_ms: 5_000,
            ..awaited(plan, "dc3.lab.test")
        },
    ])
    .await
    .unwrap();
    s.replication_arrived(plan, dn, "dc3.lab.test", 6_000).await.unwrap();
    let awaited = s.awaited_replication(0).await.unwrap();
    assert_eq!(awaited.len(), 1, "{awaited:?}");
    assert_eq!(awaited[0].0, "dc2.lab.test");
    assert_eq!((awaited[0].1.plan_id, awaited[0].1.dn.as_str()), (plan, dn));
    assert!(
        s.awaited_replication(5_001).await.unwrap().is_empty(),
        "older than the horizon"
    );
}
