//! One-time join tokens: stored by hash with their audit event, found by hash, spent exactly
//! once across stores on one database (two replicas), given back, revoked once.

use super::*;

fn token(id: &str, host: &str, expires_at_ms: i64) -> JoinToken {
    JoinToken {
        id: id.into(),
        host: host.into(),
        created_at_ms: now_ms(),
        expires_at_ms,
        created_by: "alice".into(),
        used_at_ms: None,
        used_from: None,
        revoked_at_ms: None,
        revoked_by: None,
    }
}

pub(super) async fn a_join_token_is_spent_once_by_two_replicas_racing(db: &TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    let t = token("jt-00000000000a", "hv01.lab.test", now_ms() + 60_000);
    a.create_join_token(&t, &"ab".repeat(32)).await.unwrap();
    assert_eq!(b.join_token_by_hash(&"ab".repeat(32)).await.unwrap(), Some(t.clone()));
    assert_eq!(b.join_token_by_hash(&"cd".repeat(32)).await.unwrap(), None);

    let now = now_ms();
    for _ in 0..5 {
        let (x, y) = tokio::join!(
            a.consume_join_token(&t.id, now, "10.0.0.1:1"),
            b.consume_join_token(&t.id, now, "10.0.0.2:1")
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(x ^ y, "exactly one wins: {x} {y}");
        let used = a.join_token(&t.id).await.unwrap().unwrap();
        assert_eq!(used.used_at_ms, Some(now));
        let from = used.used_from.unwrap();
        // Given back (nothing was issued): usable again, by whoever comes next.
        assert!(a.release_join_token(&t.id, now, &from).await.unwrap());
        assert!(!a.release_join_token(&t.id, now, &from).await.unwrap());
    }
    assert!(a.consume_join_token(&t.id, now, "x").await.unwrap());
    assert!(matches!(
        b.revoke_join_token(&t.id, "bob").await.unwrap(),
        Some(TokenRevoked::Unchanged(_))
    ));

    // Expired: not spendable. Revoked: not spendable, revoked once.
    let old = token("jt-00000000000b", "hv02.lab.test", now_ms() - 1);
    a.create_join_token(&old, &"ef".repeat(32)).await.unwrap();
    assert!(!a.consume_join_token(&old.id, now_ms(), "x").await.unwrap());
    let r = token("jt-00000000000c", "hv03.lab.test", now_ms() + 60_000);
    a.create_join_token(&r, &"01".repeat(32)).await.unwrap();
    let Some(TokenRevoked::Now(revoked)) = b.revoke_join_token(&r.id, "bob").await.unwrap() else {
        panic!("an unused token is revoked");
    };
    assert_eq!(revoked.revoked_by.as_deref(), Some("bob"));
    assert!(matches!(
        a.revoke_join_token(&r.id, "bob").await.unwrap(),
        Some(TokenRevoked::Unchanged(_))
    ));
    assert!(!a.consume_join_token(&r.id, now_ms(), "x").await.unwrap());
    assert_eq!(a.revoke_join_token("jt-nope", "bob").await.unwrap(), None);

    let ids: Vec<String> = a.join_tokens().await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(ids.len(), 3);
    let kinds: Vec<(String, String)> = a
        .audit_events(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.host))
        .collect();
    assert_eq!(
        kinds,
        [
            (EVENT_JOIN_TOKEN_REVOKED.to_owned(), "hv03.lab.test".to_owned()),
            (EVENT_JOIN_TOKEN_CREATED.to_owned(), "hv03.lab.test".to_owned()),
            (EVENT_JOIN_TOKEN_CREATED.to_owned(), "hv02.lab.test".to_owned()),
            (EVENT_JOIN_TOKEN_CREATED.to_owned(), "hv01.lab.test".to_owned()),
        ]
    );
}
