//! Plans: stored, found by what they do, decided, listed, superseded.

use super::*;

pub(super) async fn pending_plans_are_found_by_what_they_do(db: &TestDb) {
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

pub(super) async fn plans_round_trip_with_increasing_ids(db: &TestDb) {
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

pub(super) async fn plan_decisions_keep_earlier_values_when_not_given(db: &TestDb) {
    let s = db.open().await;
    let id = s
        .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV01,DC=x")], &[])
        .await
        .unwrap();
    let other = s
        .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV02,DC=x")], &[])
        .await
        .unwrap();
    let before = now_ms();
    s.decide_plan(
        id,
        PlanState::PendingApproval,
        PlanState::Approved,
        Some("alice"),
        Some("change 42"),
    )
    .await
    .unwrap();
    let p = s.get_plan(id).await.unwrap().unwrap();
    assert_eq!(p.state, PlanState::Approved);
    assert_eq!(p.decided_by.as_deref(), Some("alice"));
    assert_eq!(p.note.as_deref(), Some("change 42"));
    assert!(p.decided_at_ms.unwrap() >= before);
    // NULL parameters leave what is there (COALESCE).
    s.decide_plan(id, PlanState::Approved, PlanState::Applied, None, None)
        .await
        .unwrap();
    let p = s.get_plan(id).await.unwrap().unwrap();
    assert_eq!(p.state, PlanState::Applied);
    assert_eq!(p.decided_by.as_deref(), Some("alice"));
    assert_eq!(p.note.as_deref(), Some("change 42"));
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
        let p = s
            .create_plan(state, "cli", &[change("CN=HV03,DC=x")], &[])
            .await
            .unwrap();
        assert_eq!(s.get_plan(p).await.unwrap().unwrap().state, state);
    }
}

/// Every decision is a compare-and-set on the state it expects: from any other state it
/// changes nothing and says who decided first.
pub(super) async fn plan_decisions_move_only_from_the_state_they_expect(db: &TestDb) {
    let s = db.open().await;
    let id = s
        .create_plan(PlanState::PendingApproval, "cli", &[change("CN=HV01,DC=x")], &[])
        .await
        .unwrap();
    s.decide_plan(
        id,
        PlanState::PendingApproval,
        PlanState::Rejected,
        Some("token:alice"),
        Some("not today"),
    )
    .await
    .unwrap();
    let lost = s
        .decide_plan(id, PlanState::PendingApproval, PlanState::Approved, Some("bob"), None)
        .await
        .unwrap_err();
    let StoreError::PlanChanged(c) = &lost else {
        panic!("{lost}")
    };
    assert_eq!(
        (c.id, c.found, c.by.as_deref()),
        (id, Some(PlanState::Rejected), Some("token:alice"))
    );
    let msg = lost.to_string();
    assert!(
        msg.starts_with(&format!("plan {id} was rejected by token:alice at 20"))
            && msg.ends_with("; nothing was applied"),
        "{msg}"
    );
    // The loser changed nothing.
    let p = s.get_plan(id).await.unwrap().unwrap();
    assert_eq!(
        (p.state, p.decided_by.as_deref(), p.note.as_deref()),
        (PlanState::Rejected, Some("token:alice"), Some("not today"))
    );
    // A rejected plan cannot be finished as applied either; a missing plan is said so.
    let e = s
        .decide_plan(id, PlanState::Approved, PlanState::Applied, None, None)
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        StoreError::PlanChanged(PlanChanged {
            found: Some(PlanState::Rejected),
            ..
        })
    ));
    let e = s
        .decide_plan(id + 1000, PlanState::PendingApproval, PlanState::Rejected, None, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

/// An approve racing a reject on the same plan, many times over, on as many connections as
/// the store has: exactly one wins each time, and a rejected plan never reaches applied.
pub(super) async fn an_approve_racing_a_reject_has_exactly_one_winner(db: &TestDb) {
    let s = db.open().await;
    let (mut approvals, mut rejections) = (0, 0);
    for round in 0..40 {
        let id = s
            .create_plan(PlanState::PendingApproval, "timer", &[change("CN=HV01,DC=x")], &[])
            .await
            .unwrap();
        let approve = {
            let s = s.clone();
            async move {
                s.decide_plan(id, PlanState::PendingApproval, PlanState::Approved, Some("bob"), None)
                    .await?;
                // Only a claimed plan is applied.
                s.decide_plan(id, PlanState::Approved, PlanState::Applied, None, None)
                    .await
            }
        };
        let reject = {
            let s = s.clone();
            async move {
                s.decide_plan(id, PlanState::PendingApproval, PlanState::Rejected, Some("alice"), None)
                    .await
            }
        };
        // Alternate who starts first, so either side gets to win.
        let (a, r) = if round % 2 == 0 {
            let (a, r) = tokio::join!(tokio::spawn(approve), tokio::spawn(reject));
            (a.unwrap(), r.unwrap())
        } else {
            let (r, a) = tokio::join!(tokio::spawn(reject), tokio::spawn(approve));
            (a.unwrap(), r.unwrap())
        };
        let end = s.get_plan(id).await.unwrap().unwrap();
        match (a, r) {
            (Ok(()), Err(StoreError::PlanChanged(c))) => {
                assert_eq!(end.state, PlanState::Applied);
                assert_eq!(end.decided_by.as_deref(), Some("bob"));
                assert!(matches!(c.found, Some(PlanState::Approved | PlanState::Applied)), "{c}");
                approvals += 1;
            }
            (Err(StoreError::PlanChanged(c)), Ok(())) => {
                assert_eq!(end.state, PlanState::Rejected, "a rejected plan never reaches applied");
                assert_eq!(end.decided_by.as_deref(), Some("alice"));
                assert_eq!(c.found, Some(PlanState::Rejected));
                rejections += 1;
            }
            (a, r) => panic!("round {round}: not exactly one winner: approve {a:?}, reject {r:?}"),
        }
    }
    assert_eq!(approvals + rejections, 40);
    println!("approve won {approvals}, reject won {rejections}");
}

pub(super) async fn plans_list_newest_first_by_state_and_limit(db: &TestDb) {
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

pub(super) async fn superseding_without_a_plan_to_keep_touches_only_pending_plans(db: &TestDb) {
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

/// ListPlans pages in SQL by id: each page starts below the last id of the one before, so a
/// plan created between pages shifts nothing.
pub(super) async fn plans_page_by_id_below_the_previous_page(db: &TestDb) {
    let s = db.open().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let state = if i % 2 == 0 {
            PlanState::Applied
        } else {
            PlanState::Rejected
        };
        ids.push(
            s.create_plan(state, "cli", &[change(&format!("CN=HV{i:02},DC=x"))], &[])
                .await
                .unwrap(),
        );
    }
    let page = |p: Vec<StoredPlan>| p.iter().map(|p| p.id).collect::<Vec<_>>();
    let first = page(s.plans_page(None, None, 2).await.unwrap());
    assert_eq!(first, vec![ids[4], ids[3]]);
    // A plan created now is newer than every page already read: it does not shift the next one.
    s.create_plan(PlanState::Applied, "cli", &[], &[]).await.unwrap();
    let second = page(s.plans_page(None, Some(ids[3]), 2).await.unwrap());
    assert_eq!(second, vec![ids[2], ids[1]]);
    let last = page(s.plans_page(None, Some(ids[1]), 2).await.unwrap());
    assert_eq!(last, vec![ids[0]]);
    let applied = page(s.plans_page(Some(PlanState::Applied), Some(ids[4]), 10).await.unwrap());
    assert_eq!(applied, vec![ids[2], ids[0]]);
    assert!(s.plans_page(None, Some(i64::MIN), 10).await.unwrap().is_empty());
}
