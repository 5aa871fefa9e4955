//! Domain-wide reads past AD's page limit: 1,500 accounts in Protected Users and in a
//! privileged group, and the controller's snapshot must see every one of them as privileged and
//! protected. Windows AD answers an unpaged search with at most 1,000 entries (MaxPageSize) and
//! rc 4; Samba 4.17 does not enforce that, so the controller is configured here with pages of
//! 200 and has to follow eight paging cookies to get the answer right.

use std::collections::HashSet;

use futures::StreamExt;
use kcdsync_controller::config::Config;
use kcdsync_controller::ldap::Ad;
use kcdsync_controller::store::Store;
use kcdsync_controller::view::Snapshot;
use kcdsync_tests::*;
use ldap3::{Ldap, Mod, Scope, SearchEntry};

const MEMBERS: usize = 1500;
/// This test's own OU: membership of Protected Users is domain-wide, so every account is
/// created here under a per-run name and removed at the end.
const OU: &str = "t-pu1500";

#[tokio::test]
async fn fifteen_hundred_protected_privileged_accounts_are_all_seen() {
    let lab = Lab::start();
    let mut ldap = lab.admin().await.unwrap();
    let ou_dn = format!("OU={OU},{}", lab.fleet_ou());
    let protected_users = protected_users_dn(&mut ldap).await;
    clean(&mut ldap, &ou_dn, &protected_users).await;
    let tag = &token()[..6];
    let group_dn = format!("CN=pu-admins-{tag},{ou_dn}");
    let users = create(&ldap, &ou_dn, &group_dn, tag).await;
    ldap.modify(
        &protected_users,
        vec![Mod::Add("member", users.iter().map(String::as_str).collect())],
    )
    .await
    .unwrap()
    .success()
    .expect("adding 1,500 members to Protected Users");

    let config = format!(
        "{}page_size = 200\n\n[scope]\nbase_dns = [\"{ou_dn}\"]\n\n[diagnosis]\nprivileged_groups = [\"{group_dn}\"]\n",
        lab.ad_section(BindAs::Svc)
    );
    let (_dir, path) = write_config(&config);
    let cfg = Config::load(&path).unwrap();
    let ad = Ad::connect(&cfg.ad).await.unwrap();
    let store = Store::open(&cfg.store_url).await.unwrap();
    let snap = Snapshot::gather(&cfg, &ad, &store, None).await;
    // Cleaned up before any assertion can fail.
    clean(&mut ldap, &ou_dn, &protected_users).await;
    let snap = snap.expect("a snapshot of a domain with 1,500 protected privileged accounts");

    let group_cn = format!("pu-admins-{tag}");
    let ours: Vec<_> = snap
        .directory
        .privileged
        .iter()
        .filter(|p| p.via.contains(&group_cn))
        .collect();
    let want: HashSet<String> = users.iter().map(|u| u.to_lowercase()).collect();
    let got: HashSet<String> = ours.iter().map(|p| p.account.dn.to_lowercase()).collect();
    assert_eq!(
        got.len(),
        MEMBERS,
        "privileged through {group_cn}: {} of {MEMBERS}",
        got.len()
    );
    assert_eq!(got, want);
    let unprotected: Vec<&str> = ours
        .iter()
        .filter(|p| !p.account.protected_users)
        .map(|p| p.account.name.as_str())
        .collect();
    assert!(
        unprotected.is_empty(),
        "{} of {MEMBERS} seen as not in Protected Users, e.g. {:?}",
        unprotected.len(),
        &unprotected[..unprotected.len().min(5)]
    );
}

async fn protected_users_dn(ldap: &mut Ldap) -> String {
    let (found, _) = ldap
        .search(
            "DC=lab,DC=test",
            Scope::Subtree,
            "(&(objectClass=group)(cn=Protected Users))",
            vec!["1.1"],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    SearchEntry::construct(found.into_iter().next().expect("Protected Users exists")).dn
}

/// The OU, a group and 1,500 disabled users in both, added 16 at a time on one connection.
async fn create(ldap: &Ldap, ou_dn: &str, group_dn: &str, tag: &str) -> Vec<String> {
    let mut l = ldap.clone();
    l.add(
        ou_dn,
        vec![
            ("objectClass", HashSet::from(["organizationalUnit"])),
            ("ou", HashSet::from([OU])),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap_or_else(|e| panic!("creating {ou_dn}: {e}"));
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("CN=pu-{tag}-{i:04},{ou_dn}")).collect();
    futures::stream::iter(users.iter().enumerate())
        .for_each_concurrent(16, |(i, dn)| {
            let mut l = ldap.clone();
            async move {
                let sam = format!("pu-{tag}-{i:04}");
                let attrs = vec![
                    ("objectClass", HashSet::from(["user"])),
                    ("sAMAccountName", HashSet::from([sam.as_str()])),
                    ("userAccountControl", HashSet::from(["514"])),
                ];
                l.add(dn, attrs)
                    .await
                    .unwrap()
                    .success()
                    .unwrap_or_else(|e| panic!("creating {dn}: {e}"));
            }
        })
        .await;
    let cn = group_dn.trim_start_matches("CN=").split(',').next().unwrap();
    let members: HashSet<&str> = users.iter().map(String::as_str).collect();
    l.add(
        group_dn,
        vec![
            ("objectClass", HashSet::from(["group"])),
            ("sAMAccountName", HashSet::from([cn])),
            ("member", members),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap_or_else(|e| panic!("creating {group_dn}: {e}"));
    users
}

/// Takes this test's accounts out of Protected Users (one modify), then deletes the OU.
async fn clean(ldap: &mut Ldap, ou_dn: &str, protected_users: &str) {
    let res = ldap
        .search(ou_dn, Scope::Subtree, "(objectClass=*)", vec!["1.1"])
        .await
        .unwrap();
    if res.1.rc == 32 {
        return;
    }
    let dns: Vec<String> = res.0.into_iter().map(|e| SearchEntry::construct(e).dn).collect();
    let (groups, users): (Vec<&str>, Vec<&str>) = dns
        .iter()
        .map(String::as_str)
        .filter(|d| *d != ou_dn)
        .partition(|d| d.starts_with("CN=pu-admins-"));
    if !users.is_empty() {
        let all: HashSet<&str> = users.iter().copied().collect();
        // Members not in the group fail the whole modify (rc 16): then one at a time.
        if ldap
            .modify(protected_users, vec![Mod::Delete("member", all)])
            .await
            .unwrap()
            .rc
            != 0
        {
            for u in &users {
                let _ = ldap
                    .modify(protected_users, vec![Mod::Delete("member", HashSet::from([*u]))])
                    .await;
            }
        }
    }
    // The group first, so that no delete of a user has to rewrite a 1,500-value member list.
    for dn in groups {
        ldap.delete(dn)
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|e| panic!("deleting {dn}: {e}"));
    }
    futures::stream::iter(users)
        .for_each_concurrent(16, |dn| {
            let mut l = ldap.clone();
            async move {
                l.delete(dn)
                    .await
                    .unwrap()
                    .success()
                    .unwrap_or_else(|e| panic!("deleting {dn}: {e}"));
            }
        })
        .await;
    ldap.delete(ou_dn).await.unwrap().success().unwrap();
}
