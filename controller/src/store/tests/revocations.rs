//! The agents' deny-list: revoked with who, when and why, seen by every store on the database,
//! lifted by an unrevoke, each change with one audit event.

use super::*;

pub(super) async fn a_revoked_host_stays_listed_with_who_when_and_why_until_unrevoked(db: &TestDb) {
    let s = db.open().await;
    assert_eq!(s.agent_revocation("hv01.lab.test").await.unwrap(), None);
    assert!(s.agent_revocations().await.unwrap().is_empty());

    let before = now_ms();
    let Revoked::Now(r) = s.revoke_agent("hv01.lab.test", "stolen disk", "alice").await.unwrap() else {
        panic!("a first revocation is written");
    };
    assert_eq!(
        (r.host.as_str(), r.reason.as_str(), r.revoked_by.as_str()),
        ("hv01.lab.test", "stolen disk", "alice")
    );
    assert!(r.revoked_at_ms >= before);

    // Revoking again keeps the first revocation and writes nothing.
    tick().await;
    assert_eq!(
        s.revoke_agent("hv01.lab.test", "again", "bob").await.unwrap(),
        Revoked::Already(r.clone())
    );
    s.revoke_agent("hv02.lab.test", "", "bob").await.unwrap();

    // Another store on the same database (another replica), and a reopen, see the list.
    s.close().await;
    let s = db.open().await;
    assert_eq!(s.agent_revocation("hv01.lab.test").await.unwrap(), Some(r.clone()));
    let hosts: Vec<String> = s
        .agent_revocations()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.host)
        .collect();
    assert_eq!(hosts, ["hv01.lab.test", "hv02.lab.test"]);

    tick().await;
    assert_eq!(s.unrevoke_agent("hv01.lab.test", "carol").await.unwrap(), Some(r));
    assert_eq!(s.agent_revocation("hv01.lab.test").await.unwrap(), None);
    assert_eq!(
        s.unrevoke_agent("hv01.lab.test", "carol").await.unwrap(),
        None,
        "nothing left to lift"
    );
    assert_eq!(s.agent_revocations().await.unwrap().len(), 1, "hv02 stays revoked");

    // One event per change, newest first; the repeated revoke and unrevoke left none.
    let events = s.audit_events(Some("hv01.lab.test"), 10).await.unwrap();
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.actor.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (EVENT_UNREVOKED, "carol", "lifts the revocation by alice: stolen disk"),
            (EVENT_REVOKED, "alice", "stolen disk"),
        ]
    );
    assert!(events[0].time_ms >= events[1].time_ms && events[0].id > events[1].id);
    assert_eq!(s.audit_events(None, -1).await.unwrap().len(), 3);
    assert_eq!(s.audit_events(None, 1).await.unwrap().len(), 1);
    // They are not AD modifies: the audit of changes and each host's last change are untouched.
    assert!(s.audit(None, 10).await.unwrap().is_empty());
    assert!(s.last_change_per_host().await.unwrap().is_empty());
}

/// Two replicas revoking one host at the same moment: exactly one revocation is written, with
/// one audit event; the other is told the host already was revoked.
pub(super) async fn two_stores_revoking_one_host_at_once_write_it_once(db: &TestDb) {
    let (a, b) = (db.open().await, db.open().await);
    let (ra, rb) = tokio::join!(
        a.revoke_agent("hv03.lab.test", "from a", "alice"),
        b.revoke_agent("hv03.lab.test", "from b", "bob"),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let written: Vec<&Revocation> = [&ra, &rb]
        .into_iter()
        .filter_map(|r| match r {
            Revoked::Now(x) => Some(x),
            Revoked::Already(_) => None,
        })
        .collect();
    assert_eq!(written.len(), 1, "{ra:?} / {rb:?}");
    for r in [&ra, &rb] {
        if let Revoked::Already(x) = r {
            assert_eq!(x, written[0], "the loser is shown the winner's revocation");
        }
    }
    assert_eq!(a.audit_events(Some("hv03.lab.test"), 10).await.unwrap().len(), 1);
    a.close().await;
    b.close().await;
}
