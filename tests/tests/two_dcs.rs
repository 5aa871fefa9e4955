//! The two-DC lab replicates both ways: a change made on one DC shows on the other, and how long
//! it took is printed (the figure per-DC verify will be compared with). Starts the two-DC lab
//! when it is not up (`lab.sh up --dcs 2`, ~20 s); deploy/test.sh stops it again if it was not
//! up before the run.

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use kcdsync_agent::probe::kerberos::{self, MitKerberos};
use kcdsync_tests::token;
use kcdsync_tests::two_dcs::{Dc, TwoDcLab, read_attr, wait_until};
use ldap3::{Ldap, Mod};

/// Longer than notification (1 s with the lab's `dreplsrv:notify_interval = 1`) plus a loaded
/// machine's delay, far shorter than the 300 s periodic pull that would mask a broken
/// notification path.
const DEADLINE: Duration = Duration::from_secs(30);

/// The measured latencies go to stderr directly, not through `println!` (which the test
/// harness captures): they belong in the CI log of a passing run.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "two_dcs: {line}");
}

async fn set_description(ldap: &mut Ldap, dn: &str, value: &str) {
    ldap.modify(dn, vec![Mod::Replace("description", HashSet::from([value]))])
        .await
        .and_then(|r| r.success())
        .unwrap_or_else(|e| panic!("modify {dn}: {e}"));
}

/// Writes `description` on `from` and waits for the value on `to`; returns the latency.
async fn replicate_description(lab: &TwoDcLab, conns: &mut [(Dc, Ldap)], dn: &str, from: Dc, to: Dc) -> Duration {
    let value = format!("written on {} {}", from.name(), token());
    let [a, b] = conns else { unreachable!() };
    let (writer, reader) = if a.0 == from {
        (&mut a.1, &mut b.1)
    } else {
        (&mut b.1, &mut a.1)
    };
    let t = Instant::now();
    set_description(writer, dn, &value).await;
    wait_until(reader, dn, "description", t, DEADLINE, |v| {
        v.is_some_and(|v| v.iter().any(|x| x == &value))
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "a change on {} did not reach {}: {e:#}. {}",
            from.name(),
            to.name(),
            hint(lab, to)
        )
    })
}

/// What to run when replication towards `to` is broken.
fn hint(lab: &TwoDcLab, to: Dc) -> String {
    format!(
        "Check replication with: deploy/lab/lab.sh exec --dcs 2 --dc {} -- sh -c 'samba-tool drs showrepl -s \"$LAB_SMB_CONF\"' \
         (lab dir {})",
        to.n(),
        lab.dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_either_dc_reaches_the_other() {
    let lab = TwoDcLab::start();
    let mut conns = [
        (Dc::Dc1, lab.admin(Dc::Dc1).await.unwrap()),
        (Dc::Dc2, lab.admin(Dc::Dc2).await.unwrap()),
    ];

    // The two DCs are two databases, not one reached twice through the forwarder: each has its
    // own NTDS Settings object (dsServiceName in its rootDSE).
    let mut dsas = Vec::new();
    for (dc, ldap) in conns.iter_mut() {
        let v = read_attr(ldap, "", "dsServiceName").await.unwrap().unwrap_or_default();
        assert_eq!(v.len(), 1, "{}'s rootDSE dsServiceName: {v:?}", dc.name());
        dsas.push(v[0].to_lowercase());
    }
    assert!(dsas[0].contains(",cn=dc1,") && dsas[1].contains(",cn=dc2,"), "{dsas:?}");

    // An OU of this run's own: parallel runs (other worktrees on the same lab) never touch it.
    let dn = format!("OU=kcdsync-repl-{},{}", token(), lab.base_dn());
    let t = Instant::now();
    conns[0]
        .1
        .add(
            &dn,
            vec![
                ("objectClass", HashSet::from(["organizationalUnit"])),
                ("description", HashSet::from(["created on dc1"])),
            ],
        )
        .await
        .and_then(|r| r.success())
        .unwrap_or_else(|e| panic!("adding {dn} on dc1: {e}"));
    let add = wait_until(&mut conns[1].1, &dn, "description", t, DEADLINE, |v| v.is_some())
        .await
        .unwrap_or_else(|e| panic!("an add on dc1 did not reach dc2: {e:#}. {}", hint(lab, Dc::Dc2)));

    let mut up = Vec::new();
    let mut down = Vec::new();
    for _ in 0..3 {
        down.push(replicate_description(lab, &mut conns, &dn, Dc::Dc2, Dc::Dc1).await);
        up.push(replicate_description(lab, &mut conns, &dn, Dc::Dc1, Dc::Dc2).await);
    }

    // Clean up on dc2, and see the delete reach dc1.
    let t = Instant::now();
    conns[1]
        .1
        .delete(&dn)
        .await
        .and_then(|r| r.success())
        .unwrap_or_else(|e| panic!("deleting {dn} on dc2: {e}"));
    let del = wait_until(&mut conns[0].1, &dn, "description", t, DEADLINE, |v| v.is_none())
        .await
        .unwrap_or_else(|e| panic!("a delete on dc2 did not reach dc1: {e:#}. {}", hint(lab, Dc::Dc1)));

    let ms = |d: &[Duration]| {
        d.iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    report(&format!(
        "replication latency (ms): add dc1->dc2 {:.0}; modify dc1->dc2 {}; modify dc2->dc1 {}; delete dc2->dc1 {:.0}",
        add.as_secs_f64() * 1000.0,
        ms(&up),
        ms(&down),
        del.as_secs_f64() * 1000.0
    ));
}

/// Each DC's KDC is reachable from the host on its own (`LAB_DCn_KRB5_CONFIG` names one KDC),
/// and a password set through DC1 reaches DC2's KDC by replication: what the per-DC `kvno`
/// proofs of issue 14 build on. Prints how long DC2's KDC took to accept the new account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_set_on_dc1_reaches_dc2s_kdc() {
    let lab = TwoDcLab::start();
    let tmp = tempfile::tempdir().unwrap();
    let krb = |dc: Dc| MitKerberos {
        krb5_config: lab.krb5_conf(dc).into(),
        ccache: format!("FILE:{}", tmp.path().join(format!("cc-{}", dc.name())).display()),
        timeout: Duration::from_secs(20),
    };
    let realm = lab.var("LAB_REALM");

    // A user of this run's own (sAMAccountName at most 20 characters).
    let name = format!("kcd2-{}", &token()[..12]);
    let dn = format!("CN={name},CN=Users,{}", lab.base_dn());
    let password = format!("Kcd-{}-Aa1!", token());
    let quoted: Vec<u8> = format!("\"{password}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let mut dc1 = lab.admin(Dc::Dc1).await.unwrap();
    let t = Instant::now();
    dc1.add(
        &dn,
        vec![
            (b"objectClass".to_vec(), HashSet::from([b"user".to_vec()])),
            (b"sAMAccountName".to_vec(), HashSet::from([name.clone().into_bytes()])),
            (b"unicodePwd".to_vec(), HashSet::from([quoted])),
            (b"userAccountControl".to_vec(), HashSet::from([b"512".to_vec()])),
        ],
    )
    .await
    .and_then(|r| r.success())
    .unwrap_or_else(|e| panic!("adding {dn} on dc1: {e}"));
    let principal = format!("{name}@{realm}");

    // DC1's KDC knows the account at once: it was written there.
    krb(Dc::Dc1)
        .kinit_password(&principal, &password)
        .await
        .unwrap_or_else(|e| panic!("kinit {principal} at dc1's KDC: {}", kerberos::said(&e)));

    // DC2's KDC refuses it until replication brings the account, then grants it.
    let dc2 = krb(Dc::Dc2);
    let mut refusals = 0;
    let latency = loop {
        match dc2.kinit_password(&principal, &password).await {
            Ok(()) => break t.elapsed(),
            Err(e) if t.elapsed() < DEADLINE => {
                let said = kerberos::said(&e);
                assert!(
                    said.contains("not found in Kerberos database") || said.contains("Preauthentication failed"),
                    "dc2's KDC refused {principal} for another reason than replication: {said}"
                );
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!(
                "dc2's KDC still refuses {principal} after {:.1} s: {}. {}",
                t.elapsed().as_secs_f64(),
                kerberos::said(&e),
                hint(lab, Dc::Dc2)
            ),
        }
    };
    // The ticket came from DC2's KDC: its krb5.conf names no other.
    dc2.run(&["kvno", &format!("ldap/{}", lab.dc_var(Dc::Dc2, "HOST"))], None)
        .await
        .unwrap_or_else(|e| panic!("kvno at dc2's KDC: {}", kerberos::said(&e)));

    dc1.delete(&dn)
        .await
        .and_then(|r| r.success())
        .unwrap_or_else(|e| panic!("deleting {dn}: {e}"));
    report(&format!(
        "a new account's password reached dc2's KDC {:.0} ms after the add on dc1 ({refusals} refusals before)",
        latency.as_secs_f64() * 1000.0
    ));
}
