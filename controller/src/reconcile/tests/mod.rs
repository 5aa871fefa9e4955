//! The reconcile paths the lab cannot provoke on demand: a concurrent writer
//! (conflict → re-read → re-plan), a busy DC (transient retry), a lease lost
//! mid-apply (fencing), and a write AD does not keep (verify). AD is an
//! in-memory directory with AD's modify semantics (a value-level delete of a
//! value that is not there fails with rc 16, an add of one that is with rc
//! 20, and the whole modify is atomic); the store is the real SQLite store in
//! a temp dir. The end-to-end tests against the lab DC prove the same paths
//! on real AD where they can.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::ldap::{
    Change, Cursor, DcIdentity, LdapError, RC_BUSY, RC_NO_SUCH_ATTRIBUTE, RC_TYPE_OR_VALUE_EXISTS, WritePolicy,
};
use crate::model::dn::Dn;
use crate::model::fixtures::{BASE, delegating};
use crate::model::{
    Claims, Computer, Directory, TRUSTED_TO_AUTH_FOR_DELEGATION, WORKSTATION_TRUST_ACCOUNT, dn_key, spn_key,
};
use crate::store::{Store, now_ms};

const KERBEROS_ONLY: u32 = WORKSTATION_TRUST_ACCOUNT;
const ANY_PROTOCOL: u32 = WORKSTATION_TRUST_ACCOUNT | TRUSTED_TO_AUTH_FOR_DELEGATION;

type Objects = BTreeMap<String, Computer>;
/// Runs before modify number N (from 0): may change objects (another
/// writer) or answer an error instead of AD.
type Before = Box<dyn FnMut(usize, &mut Objects) -> Option<LdapError> + Send>;
type After = Box<dyn Fn(usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// An in-memory directory.
struct FakeAd {
    objects: Mutex<Objects>,
    before: Mutex<Option<Before>>,
    after: Option<After>,
    modifies: AtomicUsize,
    /// Writes are acknowledged but not kept (a DC that loses them).
    forget_writes: AtomicBool,
    /// The DC's highestCommittedUSN; every write takes the next one.
    usn: AtomicI64,
    /// The DC's invocationId (a restore from backup changes it).
    invocation: Mutex<String>,
    /// The DC's dsServiceName (which DC this is).
    service: Mutex<String>,
    /// Reads fail as on a connection the DC dropped.
    reads_lost: std::sync::Arc<AtomicBool>,
    tombstones: Mutex<Vec<Change>>,
}

impl FakeAd {
    fn new(computers: Vec<Computer>) -> FakeAd {
        FakeAd {
            objects: Mutex::new(computers.into_iter().map(|c| (dn_key(&c.dn), c)).collect()),
            before: Mutex::new(None),
            after: None,
            modifies: AtomicUsize::new(0),
            forget_writes: AtomicBool::new(false),
            usn: AtomicI64::new(100),
            invocation: Mutex::new("aa".into()),
            service: Mutex::new("CN=NTDS Settings,CN=DC1".into()),
            reads_lost: Default::default(),
            tombstones: Mutex::new(Vec::new()),
        }
    }

    /// Another writer changes `name` (outside kcdsync), as AD would: a new uSNChanged.
    fn touch(&self, name: &str, f: impl FnOnce(&mut Computer)) {
        let mut objects = self.objects.lock().unwrap();
        let c = objects.get_mut(&dn_key(&format!("CN={name},{BASE}"))).unwrap();
        f(c);
        c.usn_changed = self.usn.fetch_add(1, Ordering::SeqCst) + 1;
    }

    fn before_modify(self, f: impl FnMut(usize, &mut Objects) -> Option<LdapError> + Send + 'static) -> FakeAd {
        *self.before.lock().unwrap() = Some(Box::new(f));
        self
    }

    fn get(&self, name: &str) -> Computer {
        self.objects.lock().unwrap()[&dn_key(&format!("CN={name},{BASE}"))].clone()
    }

    /// AD's modify: all of it or nothing, values compared as AD does.
    fn apply(objects: &mut Objects, change: &HostChange) -> Result<(), LdapError> {
        let conflict = |rc| LdapError::Conflict {
            dn: change.dn.clone(),
            rc,
        };
        let mut c = objects
            .get(&dn_key(&change.dn))
            .cloned()
            .ok_or_else(|| conflict(RC_NO_SUCH_ATTRIBUTE))?;
        if let Some(after) = change.uac_after {
            if c.uac != change.uac_before {
                return Err(conflict(RC_NO_SUCH_ATTRIBUTE));
            }
            c.uac = after;
        }
        for a in &change.add {
            if c.allowed_to_delegate_to.iter().any(|e| e == a) {
                return Err(conflict(RC_TYPE_OR_VALUE_EXISTS));
            }
            c.allowed_to_delegate_to.push(a.clone());
        }
        for r in &change.remove {
            let at = c
                .allowed_to_delegate_to
                .iter()
                .position(|e| spn_key(e) == spn_key(r))
                .ok_or_else(|| conflict(RC_NO_SUCH_ATTRIBUTE))?;
            c.allowed_to_delegate_to.remove(at);
        }
        objects.insert(dn_key(&c.dn), c);
        Ok(())
    }
}

impl AdClient for FakeAd {
    async fn observe(&self, _scope: &[Dn], _groups: &[&Dn]) -> Result<Observed, LdapError> {
        Ok(Observed {
            computers: self.objects.lock().unwrap().values().cloned().collect(),
            ..Default::default()
        })
    }

    async fn claims(&self, _domain: &Dn, _scope: &[Dn], _names: &[String], _extra: &[Dn]) -> Result<Claims, LdapError> {
        // Every object of the fake directory answers to its own names only.
        Ok(Claims {
            holders: self.objects.lock().unwrap().values().cloned().collect(),
            privileged: Vec::new(),
        })
    }

    async fn directory(&self, _domain: &Dn, _extra: &[Dn]) -> Result<Directory, LdapError> {
        Ok(Directory::default())
    }

    async fn read_object(&self, dn: &str) -> Result<Option<Computer>, LdapError> {
        if self.reads_lost.load(Ordering::SeqCst) {
            return Err(connection_lost());
        }
        Ok(self.objects.lock().unwrap().get(&dn_key(dn)).cloned())
    }

    async fn read_computer(&self, dn: &str) -> Result<Option<Computer>, LdapError> {
        self.read_object(dn).await
    }

    async fn modify_host(&self, change: &HostChange, policy: &WritePolicy) -> Result<(), LdapError> {
        policy.check(change)?;
        let n = self.modifies.fetch_add(1, Ordering::SeqCst);
        let result = {
            let mut objects = self.objects.lock().unwrap();
            let injected = self.before.lock().unwrap().as_mut().and_then(|f| f(n, &mut objects));
            match injected {
                Some(e) => Err(e),
                None if self.forget_writes.load(Ordering::SeqCst) => Ok(()),
                None => FakeAd::apply(&mut objects, change).map(|()| {
                    let usn = self.usn.fetch_add(1, Ordering::SeqCst) + 1;
                    if let Some(c) = objects.get_mut(&dn_key(&change.dn)) {
                        c.usn_changed = usn;
                    }
                }),
            }
        };
        if let (Ok(()), Some(after)) = (&result, &self.after) {
            after(n).await;
        }
        result
    }

    async fn cursor(&self) -> Result<Cursor, LdapError> {
        Ok(Cursor {
            dc: DcIdentity {
                service: self.service.lock().unwrap().clone(),
                invocation_id: self.invocation.lock().unwrap().clone(),
            },
            usn: self.usn.load(Ordering::SeqCst),
        })
    }

    async fn changes_since(&self, _domain: &Dn, from: i64) -> Result<Vec<Change>, LdapError> {
        let mut out: Vec<Change> = self
            .objects
            .lock()
            .unwrap()
            .values()
            .filter(|c| c.usn_changed >= from)
            .map(|c| Change {
                object: c.clone(),
                classes: vec!["computer".into()],
                deleted: false,
                last_parent: None,
            })
            .collect();
        let dead = self.tombstones.lock().unwrap().clone();
        out.extend(dead.into_iter().filter(|t| t.object.usn_changed >= from));
        Ok(out)
    }
}

/// A config for one enforce-mode group, and the real SQLite store in a temp dir.
/// The group opts out of holding first grants: these tests are about what
/// happens to writes, not about what waits for approval.
async fn setup(hosts: &[&str]) -> (Config, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    // The controller refuses a password file others can read.
    #[cfg(unix)]
    std::fs::set_permissions(
        dir.path().join("pw"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    let text = format!(
        r#"
[ad]
url = "ldaps://127.0.0.1"
ca_file = "pw"
bind_dn = "CN=svc,CN=Users,DC=lab,DC=test"
password_file = "pw"
max_in_flight = 1
[scope]
base_dns = ["{BASE}"]
[[group]]
name = "g"
mode = "enforce"
first_grants = "auto"
hosts = [{}]
"#,
        hosts.join(", ")
    );
    let cfg = Config::parse(&text, &dir.path().join("kcdsync.toml")).unwrap();
    let store = Store::open(&cfg.store_url).await.unwrap();
    (cfg, store, dir)
}

fn run_opts() -> RunOptions {
    RunOptions {
        trigger: "test".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_concurrent_change_is_reread_replanned_and_kept() {
    let (cfg, store, _dir) = setup(&["HV01", "HV02"]).await;
    // HV01 is "Kerberos only"; just before kcdsync writes it, someone else
    // adds an entry of their own (and, by chance, one of ours).
    let ad = FakeAd::new(vec![
        delegating("HV01", KERBEROS_ONLY, &[]),
        delegating("HV02", ANY_PROTOCOL, &["HV01"]),
    ])
    .before_modify(|n, objects| {
        if n == 0 {
            let hv01 = objects.get_mut(&dn_key(&format!("CN=HV01,{BASE}"))).unwrap();
            hv01.allowed_to_delegate_to.push("MSSQLSvc/db01.lab.test:1433".into());
            hv01.allowed_to_delegate_to.push("cifs/hv02.lab.test".into());
        }
        None
    });
    let out = reconcile(&cfg, &ad, &store, run_opts()).await.unwrap();
    assert_eq!(out.applied.len(), 1, "{out:#?}");
    assert_eq!(
        ad.modifies.load(Ordering::SeqCst),
        2,
        "one conflict, one re-planned write"
    );
    let hv01 = ad.get("HV01");
    assert_eq!(hv01.uac, ANY_PROTOCOL);
    assert!(
        hv01.allowed_to_delegate_to
            .contains(&"MSSQLSvc/db01.lab.test:1433".to_owned())
    );
    let mut have: Vec<String> = hv01.allowed_to_delegate_to.iter().map(|e| spn_key(e)).collect();
    have.sort();
    let before = have.len();
    have.dedup();
    assert_eq!(have.len(), before, "no entry written twice: {have:?}");
    // The audit row records what AD held just before the write that landed.
    let row = &out.applied[0];
    assert!(row.delegate_before.contains(&"MSSQLSvc/db01.lab.test:1433".to_owned()));
    assert_eq!(store.audit(None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_writer_that_keeps_conflicting_is_given_up_for_this_round() {
    let (cfg, store, _dir) = setup(&["HV01", "HV02"]).await;
    let ad = FakeAd::new(vec![
        delegating("HV01", KERBEROS_ONLY, &["HV02"]),
        delegating("HV02", ANY_PROTOCOL, &["HV01"]),
    ])
    .before_modify(|_, objects| {
        // Every time, just before the write, someone flips a bit.
        let hv01 = objects.get_mut(&dn_key(&format!("CN=HV01,{BASE}"))).unwrap();
        hv01.uac ^= 0x20;
        None
    });
    let err = reconcile(&cfg, &ad, &store, run_opts()).await.unwrap_err();
    assert!(matches!(err, ReconcileError::Partial { failed: 1, .. }), "{err}");
    assert_eq!(
        ad.modifies.load(Ordering::SeqCst) as u32,
        MAX_CONFLICT_RETRIES + 1,
        "tries once, then once per re-plan"
    );
    assert!(store.audit(None, 10).await.unwrap().is_empty(), "nothing was written");
    assert!(
        store.open_intents().await.unwrap().is_empty(),
        "the intent was settled as not written"
    );
}

#[tokio::test]
async fn a_busy_dc_is_retried_with_backoff() {
    let (cfg, store, _dir) = setup(&["HV01", "HV02"]).await;
    let ad = FakeAd::new(vec![
        delegating("HV01", KERBEROS_ONLY, &["HV02"]),
        delegating("HV02", ANY_PROTOCOL, &["HV01"]),
    ])
    .before_modify(|n, _| {
        (n < 2).then(|| LdapError::Modify {
            dn: format!("CN=HV01,{BASE}"),
            rc: RC_BUSY,
            text: "busy".into(),
        })
    });
    let out = reconcile(&cfg, &ad, &store, run_opts()).await.unwrap();
    assert_eq!(out.applied.len(), 1);
    assert_eq!(ad.modifies.load(Ordering::SeqCst), 3);
    assert_eq!(ad.get("HV01").uac, ANY_PROTOCOL);
}

#[tokio::test]
async fn a_dc_that_stays_busy_fails_the_host_not_the_fleet() {
    let (cfg, store, _dir) = setup(&["HV01", "HV02", "HV03"]).await;
    let ad = FakeAd::new(vec![
        delegating("HV01", KERBEROS_ONLY, &["HV02", "HV03"]),
        delegating("HV02", KERBEROS_ONLY, &["HV01", "HV03"]),
        delegating("HV03", ANY_PROTOCOL, &["HV01", "HV02"]),
    ])
    .before_modify(|n, _| {
        (n <= MAX_TRANSIENT_RETRIES as usize).then(|| LdapError::Modify {
            dn: format!("CN=HV01,{BASE}"),
            rc: RC_BUSY,
            text: "busy".into(),
        })
    });
    let err = reconcile(&cfg, &ad, &store, run_opts()).await.unwrap_err();
    let ReconcileError::Partial { failed, total, .. } = err else {
        panic!("{err}");
    };
    assert_eq!((failed, total), (1, 2));
    assert_eq!(ad.get("HV01").uac, KERBEROS_ONLY);
    assert_eq!(ad.get("HV02").uac, ANY_PROTOCOL);
    assert_eq!(store.audit(None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_lease_lost_mid_apply_stops_every_later_write_and_the_audit() {
    let (cfg, store, _dir) = setup(&["HV01", "HV02", "HV03"]).await;
    let epoch = store
        .acquire_lease("reconciler", "a", "a:1", 60_000)
        .await
        .unwrap()
        .unwrap();
    let mut ad = FakeAd::new(vec![
        delegating("HV01", KERBEROS_ONLY, &["HV02", "HV03"]),
        delegating("HV02", KERBEROS_ONLY, &["HV01", "HV03"]),
        delegating("HV03", KERBEROS_ONLY, &["HV01", "HV02"]),
    ]);
    // Right after the first write lands, another replica takes the lease.
    let thief = store.clone();
    ad.after = Some(Box::new(move |n| {
        let s = thief.clone();
        Box::pin(async move {
            if n == 0 {
                s.release_lease("reconciler", "a").await.unwrap();
                assert!(
                    s.acquire_lease("reconciler", "b", "b:1", 60_000)
                        .await
                        .unwrap()
                        .is_some()
                );
            }
        })
    }));
    let opts = RunOptions {
        fence: Some(Fence {
            lease: "reconciler".into(),
            holder: "a".into(),
            epoch,
        }),
        ..run_opts()
    };
    let err = reconcile(&cfg, &ad, &store, opts).await.unwrap_err();
    assert!(matches!(err, ReconcileError::Fenced { written: 1, .. }), "{err}");
    assert_eq!(
        ad.modifies.load(Ordering::SeqCst),
        1,
        "no write after the lease was lost"
    );
    assert!(
        store.audit(None, 10).await.unwrap().is_empty(),
        "a deposed writer audits nothing"
    );
    // Its intents stay open for the new leader, who settles them from AD.
    let open = store.open_intents().await.unwrap();
    assert_eq!(open.len(), 3);
    // The new leader (a later epoch) settles them once no write of "a" can be on its way.
    let wait = audit::settle_open_intents(&ad, &store, epoch + 1, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(wait, None);
    let rows = store.audit(None, 10).await.unwrap();
    assert_eq!(rows.len(), 1, "exactly the one write that happened is audited");
    assert_eq!(ad.get(&rows[0].host[..4].to_uppercase()).uac, ANY_PROTOCOL);
}

#[tokio::test]
async fn a_write_ad_does_not_keep_fails_verification() {
    let (cfg, store, _dir) = setup(&["HV01", "HV02"]).await;
    let ad = FakeAd::new(vec![
        delegating("HV01", KERBEROS_ONLY, &["HV02"]),
        delegating("HV02", ANY_PROTOCOL, &["HV01"]),
    ]);
    ad.forget_writes.store(true, Ordering::SeqCst);
    let err = reconcile(&cfg, &ad, &store, run_opts()).await.unwrap_err();
    let ReconcileError::Partial { plan_id, first, .. } = err else {
        panic!("{err}");
    };
    assert!(first.contains("verify: AD still differs after the write"), "{first}");
    assert!(first.contains("set protocol transition"), "{first}");
    let plan = store.get_plan(plan_id).await.unwrap().unwrap();
    assert_eq!(plan.state, PlanState::Failed);
    // The audit says what AD holds, not what kcdsync meant to write.
    let rows = store.audit(None, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].uac_after, KERBEROS_ONLY);
}

#[tokio::test]
async fn a_converged_fleet_writes_nothing() {
    let (cfg, store, _dir) = setup(&["HV01", "HV02"]).await;
    let ad = FakeAd::new(vec![
        delegating("HV01", ANY_PROTOCOL, &["HV02"]),
        delegating("HV02", ANY_PROTOCOL, &["HV01"]),
    ]);
    let out = reconcile(&cfg, &ad, &store, run_opts()).await.unwrap();
    assert!(out.plan_id.is_none() && out.applied.is_empty());
    assert_eq!(ad.modifies.load(Ordering::SeqCst), 0);
    assert!(store.list_plans(None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_approval_racing_a_rejection_never_writes_a_rejected_plan() {
    let (mut approvals, mut rejections) = (0, 0);
    for round in 0..20 {
        let (mut cfg, store, _dir) = setup(&["HV01", "HV02"]).await;
        cfg.guard.max_hosts_per_apply = 1;
        let ad = FakeAd::new(vec![
            delegating("HV01", KERBEROS_ONLY, &["HV02"]),
            delegating("HV02", KERBEROS_ONLY, &["HV01"]),
        ]);
        let held = reconcile(&cfg, &ad, &store, run_opts()).await.unwrap();
        let plan = held
            .pending_plan
            .expect("two hosts are more than the guard lets through");
        assert_eq!(ad.modifies.load(Ordering::SeqCst), 0);

        let approve = RunOptions {
            approve: Some(Approval {
                plan_id: plan,
                by: "bob".into(),
            }),
            ..run_opts()
        };
        let approving = reconcile(&cfg, &ad, &store, approve);
        // The rejection starts a little later each round, so it meets the approval at every
        // step: before its read, between its read and its claim, after its claim.
        let rejecting = async {
            for _ in 0..round * 2 {
                tokio::task::yield_now().await;
            }
            reject(&store, plan, "token:alice", None).await
        };
        let (a, r) = tokio::join!(approving, rejecting);
        let end = store.get_plan(plan).await.unwrap().unwrap();
        match (a, r) {
            (Ok(out), Err(ReconcileError::PlanDecided(_))) => {
                assert_eq!((out.plan_id, end.state), (Some(plan), PlanState::Applied));
                assert_eq!(ad.modifies.load(Ordering::SeqCst), 2);
                approvals += 1;
            }
            (Err(e @ ReconcileError::PlanDecided(_)), Ok(rejected)) => {
                assert_eq!((rejected.state, end.state), (PlanState::Rejected, PlanState::Rejected));
                assert_eq!(ad.modifies.load(Ordering::SeqCst), 0, "a rejected plan writes nothing");
                assert!(store.audit(None, 10).await.unwrap().is_empty());
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("plan {plan} was rejected by token:alice at "))
                        && msg.ends_with("; nothing was applied"),
                    "{msg}"
                );
                assert_eq!(tonic::Status::from(&e).code(), tonic::Code::FailedPrecondition);
                rejections += 1;
            }
            (a, r) => panic!("round {round}: not exactly one winner: {a:?} / {r:?}"),
        }
    }
    println!("approve won {approvals}, reject won {rejections}");
    assert!(approvals > 0 && rejections > 0, "both sides won some rounds");
}

#[tokio::test]
async fn only_old_intents_of_earlier_epochs_are_settled() {
    let (_cfg, store, _dir) = setup(&["HV01", "HV02", "HV03"]).await;
    // AD shows all three intended writes made.
    let ad = FakeAd::new(vec![
        delegating("HV01", ANY_PROTOCOL, &["HV02", "HV03"]),
        delegating("HV02", ANY_PROTOCOL, &["HV01", "HV03"]),
        delegating("HV03", ANY_PROTOCOL, &["HV01", "HV02"]),
    ]);
    let plan = store.create_plan(PlanState::Approved, "timer", &[], &[]).await.unwrap();
    let intent = |name: &str, epoch: i64, age: Duration| {
        let c = ad.get(name);
        AuditRecord {
            id: 0,
            time_ms: now_ms() - age.as_millis() as i64,
            plan_id: plan,
            host: name.to_lowercase(),
            dn: c.dn.clone(),
            uac_before: KERBEROS_ONLY,
            uac_after: ANY_PROTOCOL,
            delegate_before: c.allowed_to_delegate_to.clone(),
            delegate_after: c.allowed_to_delegate_to.clone(),
            reasons: vec!["set protocol transition".into()],
            trigger: "timer".into(),
            approved_by: None,
            epoch,
            dc: "dc1.lab.test".into(),
        }
    };
    let grace = Duration::from_secs(45); // a 15 s lease TTL + a 30 s LDAP timeout
    store
        .record_intents(&[
            // This run's own epoch: its own business, however old.
            intent("HV01", 4, Duration::from_secs(600)),
            // An earlier writer 10 s ago: its lease may have lapsed, its last write may not have landed.
            intent("HV02", 3, Duration::from_secs(10)),
            // An earlier writer long ago: settled from what AD shows.
            intent("HV03", 3, Duration::from_secs(60)),
        ])
        .await
        .unwrap();

    let wait = audit::settle_open_intents(&ad, &store, 4, grace)
        .await
        .unwrap()
        .unwrap();
    assert!(
        wait > Duration::from_secs(30) && wait <= Duration::from_secs(35),
        "the fresh one is settled after its grace: {wait:?}"
    );
    let rows = store.audit(None, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].host.as_str(), rows[0].epoch), ("hv03", 3));
    let open: Vec<String> = store
        .open_intents()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.host)
        .collect();
    assert_eq!(open, ["hv01", "hv02"]);
}

// The event-driven observe: a delta read patches the last full observe.

#[tokio::test]
async fn a_delta_read_patches_the_cache_and_marks_the_host_and_its_peers() {
    let (cfg, store, _dir) = setup(&["HV01", "HV02", "HV03"]).await;
    let ad = FakeAd::new(vec![
        delegating("HV01", ANY_PROTOCOL, &["HV02", "HV03"]),
        delegating("HV02", ANY_PROTOCOL, &["HV01", "HV03"]),
        delegating("HV03", ANY_PROTOCOL, &["HV01", "HV02"]),
    ]);
    let mut cache = incremental::full(&cfg, &ad).await.unwrap();
    assert!(decide(&cfg, &cache.observed).is_noop());
    assert_eq!(
        incremental::refresh(&cfg, &ad, &mut cache).await.unwrap(),
        incremental::Refresh::Unchanged
    );

    // Someone flips HV02 back to "Kerberos only" out of band.
    ad.touch("HV02", |c| c.uac = KERBEROS_ONLY);
    let got = incremental::refresh(&cfg, &ad, &mut cache).await.unwrap();
    let incremental::Refresh::Patched { dirty, .. } = got else {
        panic!("{got:?}")
    };
    // HV02 changed, and only HV02: planning (over the fleet) finds what follows.
    assert_eq!(dirty.len(), 1, "{dirty:?}");
    let decision = decide(&cfg, &cache.observed);
    let hosts: Vec<&str> = decision.guarded.auto.iter().map(|c| c.host.as_str()).collect();
    assert_eq!(hosts, vec!["hv02.lab.test"]);
    // The same execute path a full reconcile takes repairs it.
    let outcome = execute(&cfg, &ad, &store, &cache.observed, &decision, run_opts())
        .await
        .unwrap();
    assert_eq!(outcome.applied.len(), 1);
    assert_eq!(ad.get("HV02").uac, ANY_PROTOCOL);
    // What verify read back is taken in (as serve does): kcdsync's own write comes back in
    // the next delta, already known, and nothing needs a look.
    assert_eq!(outcome.after.len(), 1);
    cache.observed.update_computers(&outcome.after);
    let got = incremental::refresh(&cfg, &ad, &mut cache).await.unwrap();
    assert!(
        matches!(&got, incremental::Refresh::Patched { dirty, containers: false } if dirty.is_empty()),
        "{got:?}"
    );
    assert!(decide(&cfg, &cache.observed).is_noop());
}

#[tokio::test]
async fn another_dc_a_restored_dc_or_a_deleted_host_means_a_full_read() {
    let (cfg, _store, _dir) = setup(&["HV01", "HV02"]).await;
    let ad = FakeAd::new(vec![
        delegating("HV01", ANY_PROTOCOL, &["HV02"]),
        delegating("HV02", ANY_PROTOCOL, &["HV01"]),
    ]);
    let mut cache = incremental::full(&cfg, &ad).await.unwrap();

    // Restored from backup: a new invocationId, and the USN may even go backwards.
    *ad.invocation.lock().unwrap() = "bb".into();
    ad.usn.store(50, Ordering::SeqCst);
    let got = incremental::refresh(&cfg, &ad, &mut cache).await.unwrap();
    assert!(
        matches!(&got, incremental::Refresh::Resynced(why) if why.contains("another DC")),
        "{got:?}"
    );
    assert_eq!(cache.cursor.usn, 50);

    // The same DC, but its USN went backwards.
    ad.usn.store(40, Ordering::SeqCst);
    let got = incremental::refresh(&cfg, &ad, &mut cache).await.unwrap();
    assert!(
        matches!(&got, incremental::Refresh::Resynced(why) if why.contains("backwards")),
        "{got:?}"
    );

    // HV02 is deleted: the delta shows its tombstone, the cache is read again without it.
    let gone = ad
        .objects
        .lock()
        .unwrap()
        .remove(&dn_key(&format!("CN=HV02,{BASE}")))
        .unwrap();
    let usn = ad.usn.fetch_add(1, Ordering::SeqCst) + 1;
    ad.tombstones.lock().unwrap().push(Change {
        object: Computer {
            dn: "CN=HV02\\0ADEL:1,CN=Deleted Objects,DC=lab,DC=test".to_string(),
            usn_changed: usn,
            ..gone
        },
        classes: vec!["computer".into()],
        deleted: true,
        last_parent: Some(BASE.into()),
    });
    let got = incremental::refresh(&cfg, &ad, &mut cache).await.unwrap();
    assert!(
        matches!(&got, incremental::Refresh::Resynced(why) if why.contains("deleted")),
        "{got:?}"
    );
    assert_eq!(cache.observed.computers.len(), 1);
}

#[test]
fn classify_reads_again_what_a_patch_cannot_express() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (cfg, _store, _dir) = rt.block_on(setup(&["HV01", "HV02"]));
    let hv01 = delegating("HV01", ANY_PROTOCOL, &["HV02"]);
    let observed = Observed {
        computers: vec![hv01.clone()],
        ..Default::default()
    };
    let change = |object: Computer| Change {
        object,
        classes: vec!["top".into(), "computer".into()],
        deleted: false,
        last_parent: None,
    };
    // A computer new in the scope (added, moved in, or renamed): a full read.
    let p = incremental::classify(&cfg, &observed, &[change(delegating("HV09", ANY_PROTOCOL, &[]))]);
    assert!(p.resync.is_some_and(|w| w.contains("new in the scope")));
    // A known host moved out of the scope.
    let moved = Computer {
        dn: "CN=HV01,OU=Elsewhere,DC=lab,DC=test".into(),
        ..hv01.clone()
    };
    let p = incremental::classify(&cfg, &observed, &[change(moved)]);
    assert!(p.resync.is_some_and(|w| w.contains("left the scope")));
    // A user elsewhere that starts claiming HV01's name: the claims are read again.
    let claimant = Computer {
        dn: "CN=svc-x,CN=Users,DC=lab,DC=test".into(),
        sam_account_name: "svc-x".into(),
        spns: vec!["cifs/hv01.lab.test".into()],
        ..Computer::unread("", 0)
    };
    let p = incremental::classify(
        &cfg,
        &observed,
        &[Change {
            classes: vec!["user".into()],
            ..change(claimant)
        }],
    );
    assert!(p.context && p.resync.is_none() && p.update.is_empty());
    // Only uSNChanged moved (e.g. a password change): nothing to patch.
    let touched = Computer {
        usn_changed: 999,
        ..hv01.clone()
    };
    assert_eq!(
        incremental::classify(&cfg, &observed, &[change(touched)]),
        incremental::Patch::default()
    );
    // An OU created (or moved) into the scope: no host changed, but the notifications must
    // be registered on it too, or computers added there wait for the timer.
    let scope = cfg.scope[0].as_str();
    let ou = Computer {
        dn: format!("OU=rack7,{scope}"),
        ..Computer::unread("", 0)
    };
    let p = incremental::classify(
        &cfg,
        &observed,
        &[Change {
            classes: vec!["top".into(), "organizationalUnit".into()],
            ..change(ou.clone())
        }],
    );
    assert!(p.containers && p.resync.is_none() && p.update.is_empty() && !p.context);
    // The same OU elsewhere in the domain is none of our business.
    let elsewhere = Computer {
        dn: "OU=rack7,OU=Elsewhere,DC=lab,DC=test".into(),
        ..ou
    };
    let p = incremental::classify(
        &cfg,
        &observed,
        &[Change {
            classes: vec!["top".into(), "organizationalUnit".into()],
            ..change(elsewhere)
        }],
    );
    assert_eq!(p, incremental::Patch::default());
}

// Failover (runtime::failover): the writer DC is lost mid-apply, the next run writes on the
// next DC. The in-memory directories stand for dc1 and dc2; "replication" is a test copying
// objects from one to the other.

fn on(dc: &str) -> RunOptions {
    RunOptions {
        dc: dc.into(),
        ..run_opts()
    }
}

/// What a client sees when the DC goes away under a request.
fn connection_lost() -> LdapError {
    LdapError::Protocol {
        op: "modify".into(),
        source: Box::new(ldap3::LdapError::EndOfStream),
    }
}

/// Three "Kerberos only" hosts; dc1 accepts HV01's modify, applies HV02's and loses the
/// connection before answering, and is never sent HV03's. Returns dc1 after that run.
async fn lose_dc1_at_the_second_write(cfg: &Config, store: &Store) -> FakeAd {
    let fleet = || {
        vec![
            delegating("HV01", KERBEROS_ONLY, &["HV02", "HV03"]),
            delegating("HV02", KERBEROS_ONLY, &["HV01", "HV03"]),
            delegating("HV03", KERBEROS_ONLY, &["HV01", "HV02"]),
        ]
    };
    let dc1 = FakeAd::new(fleet()).before_modify(|n, objects| match n {
        0 => None,
        1 => {
            // Applied by dc1, then the connection drops before its answer.
            objects.get_mut(&dn_key(&format!("CN=HV02,{BASE}"))).unwrap().uac = ANY_PROTOCOL;
            Some(connection_lost())
        }
        _ => panic!("modify {n} was sent on a connection already lost"),
    });
    let err = reconcile(cfg, &dc1, store, on("dc1.lab.test")).await.unwrap_err();
    assert!(matches!(&err, ReconcileError::Ldap(e) if e.is_unreachable()), "{err}");
    assert_eq!(dc1.modifies.load(Ordering::SeqCst), 2, "nothing sent after the loss");
    assert_eq!(
        store.audit_count().await.unwrap(),
        0,
        "nothing verified, nothing audited yet"
    );
    let open: Vec<String> = store
        .open_intents()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.host)
        .collect();
    assert_eq!(
        open,
        ["hv01.lab.test", "hv02.lab.test"],
        "acknowledged and unanswered writes stay open; HV03's was never sent"
    );
    dc1
}

/// The audit rows, as (host, DC), sorted; and no intent left open.
async fn audited(store: &Store) -> Vec<(String, String)> {
    assert!(store.open_intents().await.unwrap().is_empty(), "every intent settled");
    let mut rows: Vec<(String, String)> = store
        .audit(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.host, r.dc))
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn a_write_cut_off_with_its_dc_and_replicated_during_the_retry_is_audited_once_as_dc1s() {
    let (cfg, store, _dir) = setup(&["HV01", "HV02", "HV03"]).await;
    let dc1 = lose_dc1_at_the_second_write(&cfg, &store).await;
    // dc2 has received HV01's write from dc1, not HV02's yet: it reaches dc2 just before
    // the retry writes HV02 there, so dc2's compare-and-swap finds it done.
    let dc2 = FakeAd::new(vec![
        dc1.get("HV01"),
        delegating("HV02", KERBEROS_ONLY, &["HV01", "HV03"]),
        dc1.get("HV03"),
    ]);
    *dc2.service.lock().unwrap() = "CN=NTDS Settings,CN=DC2".into();
    let hv02_on_dc1 = dc1.get("HV02");
    let dc2 = dc2.before_modify(move |n, objects| {
        if n == 0 {
            objects.insert(dn_key(&hv02_on_dc1.dn), hv02_on_dc1.clone());
        }
        None
    });

    let out = reconcile(&cfg, &dc2, &store, on("dc2.lab.test")).await.unwrap();
    let reported: Vec<(&str, &str)> = out.applied.iter().map(|r| (r.host.as_str(), r.dc.as_str())).collect();
    assert_eq!(
        reported,
        [
            ("hv03.lab.test", "dc2.lab.test"),
            ("hv01.lab.test", "dc1.lab.test"),
            ("hv02.lab.test", "dc1.lab.test")
        ],
        "this run's write, then dc1's it settled (its effects are this run's to send)"
    );
    assert_eq!(
        dc2.modifies.load(Ordering::SeqCst),
        2,
        "HV02's compare-and-swap conflicts (already done), HV03 is written: {out:#?}"
    );
    for h in ["HV01", "HV02", "HV03"] {
        assert_eq!(dc2.get(h).uac, ANY_PROTOCOL, "{h} converged on dc2");
    }
    // One row per change: HV01 and HV02 were made by dc1 (dc2 shows them), HV03 by dc2.
    assert_eq!(
        audited(&store).await,
        [
            ("hv01.lab.test".to_owned(), "dc1.lab.test".to_owned()),
            ("hv02.lab.test".to_owned(), "dc1.lab.test".to_owned()),
            ("hv03.lab.test".to_owned(), "dc2.lab.test".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_write_cut_off_with_its_dc_and_not_yet_replicated_is_made_again_on_dc2_and_audited_once() {
    let (cfg, store, _dir) = setup(&["HV01", "HV02", "HV03"]).await;
    let dc1 = lose_dc1_at_the_second_write(&cfg, &store).await;
    // dc2 has nothing from dc1 yet (dc1 is down, or slow): the retry writes HV01 and HV02
    // again, compare-and-swap on what dc2 shows, and HV03.
    let dc2 = FakeAd::new(vec![
        delegating("HV01", KERBEROS_ONLY, &["HV02", "HV03"]),
        delegating("HV02", KERBEROS_ONLY, &["HV01", "HV03"]),
        dc1.get("HV03"),
    ]);
    *dc2.service.lock().unwrap() = "CN=NTDS Settings,CN=DC2".into();
    let out = reconcile(&cfg, &dc2, &store, on("dc2.lab.test")).await.unwrap();
    assert_eq!(out.applied.len(), 3, "{out:#?}");
    // dc1's own writes of HV01 and HV02 carry the same values: when they replicate, nothing
    // changes again. The audit has the change once, as the write dc2 shows.
    assert_eq!(
        audited(&store).await,
        [
            ("hv01.lab.test".to_owned(), "dc2.lab.test".to_owned()),
            ("hv02.lab.test".to_owned(), "dc2.lab.test".to_owned()),
            ("hv03.lab.test".to_owned(), "dc2.lab.test".to_owned()),
        ]
    );
    // A later run on dc2 finds nothing to do and leaves the audit as it is.
    let again = reconcile(&cfg, &dc2, &store, on("dc2.lab.test")).await.unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(store.audit_count().await.unwrap(), 3);
}

#[tokio::test]
async fn a_delta_cursor_read_on_dc1_means_a_full_read_on_dc2() {
    let (cfg, _store, _dir) = setup(&["HV01", "HV02"]).await;
    let fleet = || {
        vec![
            delegating("HV01", ANY_PROTOCOL, &["HV02"]),
            delegating("HV02", ANY_PROTOCOL, &["HV01"]),
        ]
    };
    let dc1 = FakeAd::new(fleet());
    let mut cache = incremental::full(&cfg, &dc1).await.unwrap();
    // dc2's USNs are its own: higher here, so a cursor compared by number alone would read a
    // "delta" from dc2 that skips whatever dc2 committed below dc1's number.
    let dc2 = FakeAd::new(fleet());
    *dc2.service.lock().unwrap() = "CN=NTDS Settings,CN=DC2".into();
    dc2.usn.store(dc1.usn.load(Ordering::SeqCst) + 1000, Ordering::SeqCst);
    let got = incremental::refresh(&cfg, &dc2, &mut cache).await.unwrap();
    assert!(
        matches!(&got, incremental::Refresh::Resynced(why) if why.contains("another DC") && why.contains("DC2")),
        "{got:?}"
    );
    assert!(cache.cursor.dc.service.contains("DC2"), "the cursor is dc2's now");
    // And back to dc1 (the preferred DC answers again): another full read, not a delta.
    let got = incremental::refresh(&cfg, &dc1, &mut cache).await.unwrap();
    assert!(matches!(&got, incremental::Refresh::Resynced(_)), "{got:?}");
}

#[tokio::test]
async fn a_dc_lost_between_the_writes_and_their_verify_leaves_them_to_the_next_dc_which_audits_them_once() {
    let (cfg, store, _dir) = setup(&["HV01", "HV02"]).await;
    let fleet = || {
        vec![
            delegating("HV01", KERBEROS_ONLY, &["HV02"]),
            delegating("HV02", KERBEROS_ONLY, &["HV01"]),
        ]
    };
    // dc1 takes both modifies; the connection drops right after the last one, before verify.
    let dc1 = FakeAd::new(fleet());
    let lost = dc1.reads_lost.clone();
    let dc1 = dc1.before_modify(move |n, _| {
        if n == 1 {
            lost.store(true, Ordering::SeqCst);
        }
        None
    });
    let err = reconcile(&cfg, &dc1, &store, on("dc1.lab.test")).await.unwrap_err();
    assert!(matches!(&err, ReconcileError::Ldap(e) if e.is_unreachable()), "{err}");
    assert_eq!(store.open_intents().await.unwrap().len(), 2, "written, never verified");
    assert_eq!(store.audit_count().await.unwrap(), 0);

    // dc2 already has both (replicated): nothing left to write, and the retry's run settles
    // dc1's writes as dc1's.
    let dc2 = FakeAd::new(vec![dc1.get("HV01"), dc1.get("HV02")]);
    *dc2.service.lock().unwrap() = "CN=NTDS Settings,CN=DC2".into();
    let out = reconcile(&cfg, &dc2, &store, on("dc2.lab.test")).await.unwrap();
    assert_eq!(dc2.modifies.load(Ordering::SeqCst), 0, "nothing written twice");
    assert_eq!(out.applied.len(), 2, "reported by the run that settled them: {out:#?}");
    assert_eq!(
        audited(&store).await,
        [
            ("hv01.lab.test".to_owned(), "dc1.lab.test".to_owned()),
            ("hv02.lab.test".to_owned(), "dc1.lab.test".to_owned()),
        ]
    );
}

/// 40 hosts in "Kerberos only", all in one group (each already lists the other 39).
async fn forty_hosts() -> (Config, Store, tempfile::TempDir, FakeAd) {
    let names: Vec<String> = (1..=40).map(|i| format!("HV{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (cfg, store, dir) = setup(&refs).await;
    let ad = FakeAd::new(
        refs.iter()
            .map(|h| {
                let peers: Vec<&str> = refs.iter().copied().filter(|p| p != h).collect();
                delegating(h, KERBEROS_ONLY, &peers)
            })
            .collect(),
    );
    (cfg, store, dir, ad)
}

/// A run audits a chunk at a time (with one write in flight, 32 hosts) and hands each chunk's
/// rows over as soon as they are audited: the per-DC verify and the purges of the first 32
/// hosts do not wait for the last 8 to be written.
#[tokio::test]
async fn a_long_run_audits_and_hands_over_each_chunk_before_writing_the_next() {
    let (cfg, store, _dir, mut ad) = forty_hosts().await;
    let at_33rd = std::sync::Arc::new(Mutex::new(None));
    let (seen, audit) = (at_33rd.clone(), store.clone());
    ad.after = Some(Box::new(move |n| {
        let (seen, audit) = (seen.clone(), audit.clone());
        Box::pin(async move {
            if n == 32 {
                *seen.lock().unwrap() = Some(audit.audit(None, 100).await.unwrap().len());
            }
        })
    }));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = RunOptions {
        audited: Some(tx),
        ..run_opts()
    };
    let out = reconcile(&cfg, &ad, &store, opts).await.unwrap();
    assert_eq!(
        *at_33rd.lock().unwrap(),
        Some(32),
        "the first chunk was audited when the 33rd host was written"
    );
    let mut handed = Vec::new();
    while let Ok(a) = rx.try_recv() {
        handed.push(a.rows);
    }
    assert_eq!(handed.iter().map(Vec::len).collect::<Vec<_>>(), [32, 8]);
    let mut all: Vec<_> = handed.concat().into_iter().map(|r| r.host).collect();
    all.sort();
    let mut applied: Vec<_> = out.applied.iter().map(|r| r.host.clone()).collect();
    applied.sort();
    assert_eq!(all, applied, "every row handed over once, and in the outcome");
    assert_eq!(store.audit(None, 100).await.unwrap().len(), 40);
    assert!(store.open_intents().await.unwrap().is_empty());
}

/// A write every other would fail the same way (the privilege is missing) in the second chunk:
/// the first chunk stays audited and handed over, the rest is settled as never written.
#[tokio::test]
async fn an_error_in_a_later_chunk_keeps_the_earlier_chunks_audit_and_settles_the_rest_unwritten() {
    let (cfg, store, _dir, ad) = forty_hosts().await;
    *ad.before.lock().unwrap() = Some(Box::new(|n, _| {
        (n == 33).then(|| LdapError::MissingPrivilege {
            dn: "CN=HV34".into(),
            text: "insufficient access".into(),
        })
    }));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = RunOptions {
        audited: Some(tx),
        ..run_opts()
    };
    let err = reconcile(&cfg, &ad, &store, opts).await.unwrap_err();
    assert!(
        matches!(err, ReconcileError::Ldap(LdapError::MissingPrivilege { .. })),
        "{err}"
    );
    let mut handed = Vec::new();
    while let Ok(a) = rx.try_recv() {
        handed.push(a.rows.len());
    }
    assert_eq!(handed, [32, 1], "the first chunk, and the one write of the second");
    assert_eq!(store.audit(None, 100).await.unwrap().len(), 33);
    assert!(
        store.open_intents().await.unwrap().is_empty(),
        "the rest settled: never written"
    );
    assert_eq!(ad.modifies.load(Ordering::SeqCst), 34, "nothing sent after the refusal");
}
