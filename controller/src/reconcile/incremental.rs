//! Observe, event-driven: the last full observe is kept in memory with the
//! cursor it was read at (the DC's identity and highestCommittedUSN), and a
//! delta read — every object with `uSNChanged >= cursor + 1`, domain-wide,
//! tombstones included — patches it. Planning then runs on the patched
//! observe exactly as on a full one (same plan, guard, approval, apply,
//! verify and audit), so the cost of noticing a change follows the changes,
//! not the fleet.
//!
//! What a patch cannot express safely is read in full instead: another DC
//! (or the same DC restored from backup) behind the cursor, a USN that went
//! backwards, and structural changes of the scope — a computer added,
//! deleted, renamed or moved in or out. Those are rare; a delta that is only
//! modifications of known objects is the common case.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::AdClient;
use super::observe::{names_to_check, observe, read_context};
use crate::config::Config;
use crate::ldap::{Change, Cursor, LdapError};
use crate::model::dn::{Dn, dn_key, in_scope};
use crate::model::identity::PARTIAL_SECRETS_ACCOUNT;
use crate::model::identity::answers_to;
use crate::model::{Computer, Index, Observed, SERVER_TRUST_ACCOUNT};

/// The last observe, kept current by delta reads.
#[derive(Debug, Clone)]
pub struct Cache {
    pub observed: Observed,
    /// The identity verdicts and name lookups of `observed`: kept, not rebuilt per run (at
    /// 10,000 hosts building it costs ~0.2 s); rebuilt when a delta touches what they read.
    pub index: Arc<Index>,
    pub cursor: Cursor,
    /// When the scope was last read in full.
    pub full_at: Instant,
}

/// What a delta read did to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// Nothing committed on the DC since the cursor.
    Unchanged,
    /// Known objects changed: these hosts (DN keys; for an AD group, its members before and
    /// after) may need a reconcile. Empty: nothing kcdsync reads changed. Planning still
    /// runs over the fleet (a host's desired entries name its peers): this says whether to
    /// plan, and how much moved.
    /// `containers`: an OU or container of the scope was added, renamed or moved in (the
    /// notifications must be registered again to cover it).
    Patched { dirty: BTreeSet<String>, containers: bool },
    /// The scope was read again in full, and why.
    Resynced(String),
}

/// A full observe, with the cursor read first: whatever commits during the read is read
/// again by the next delta, never missed.
pub async fn full(cfg: &Config, ad: &impl AdClient) -> Result<Cache, LdapError> {
    let cursor = ad.cursor().await?;
    let observed = observe(cfg, ad).await?;
    Ok(Cache {
        index: Arc::new(Index::new(&observed, &cfg.dns_suffixes)),
        observed,
        cursor,
        full_at: Instant::now(),
    })
}

impl Cache {
    /// Takes in objects read back after this controller's own writes (verify), so the delta
    /// that brings those writes back finds nothing new in them. An object whose identity
    /// moved meanwhile (someone renamed it between our write and the read-back) is left to
    /// that delta, which must see the change to re-read the claims and rebuild the index.
    pub fn absorb(&mut self, read: &[Computer]) {
        let same: Vec<Computer> = read
            .iter()
            .filter(|r| {
                self.index
                    .find_dn(&r.dn)
                    .and_then(|i| self.observed.computers.get(i))
                    .is_some_and(|old| !identity_changed(old, r))
            })
            .cloned()
            .collect();
        self.observed.update_computers(&same);
    }
}

/// Brings `cache` up to date with what changed on its DC since its cursor.
#[tracing::instrument(name = "delta", skip_all, fields(changes = tracing::field::Empty))]
pub async fn refresh(cfg: &Config, ad: &impl AdClient, cache: &mut Cache) -> Result<Refresh, LdapError> {
    let now = ad.cursor().await?;
    let resync = if now.dc != cache.cursor.dc {
        Some(format!(
            "the cursor belongs to another DC or database ({} / {}), now {} / {}",
            cache.cursor.dc.service, cache.cursor.dc.invocation_id, now.dc.service, now.dc.invocation_id
        ))
    } else if now.usn < cache.cursor.usn {
        Some(format!(
            "the DC's highestCommittedUSN went backwards ({} -> {})",
            cache.cursor.usn, now.usn
        ))
    } else if now.usn == cache.cursor.usn {
        return Ok(Refresh::Unchanged);
    } else {
        None
    };
    let patch = match resync {
        Some(why) => Patch::resync(why),
        None => {
            let changes = ad.changes_since(&cfg.ad.domain_dn, cache.cursor.usn + 1).await?;
            tracing::Span::current().record("changes", changes.len());
            classify(cfg, &cache.observed, &changes)
        }
    };
    if let Some(why) = patch.resync {
        tracing::info!(reason = %why, "full resync");
        *cache = full(cfg, ad).await?;
        return Ok(Refresh::Resynced(why));
    }
    let mut changed: HashSet<String> = patch.update.iter().map(|c| dn_key(&c.dn)).collect();
    cache.observed.update_computers(&patch.update);
    if !patch.groups.is_empty() {
        let refs: Vec<&Dn> = patch.groups.iter().collect();
        let fresh = ad.observe(&[], &refs).await?;
        for g in &patch.groups {
            // Who left the group is affected as much as who stayed.
            if let Some(old) = cache.observed.ad_groups.get(&g.normalized()) {
                changed.extend(old.iter().map(|m| dn_key(m)));
            }
            match fresh.ad_groups.get(&g.normalized()) {
                Some(m) => {
                    changed.extend(m.iter().map(|m| dn_key(m)));
                    cache.observed.ad_groups.insert(g.normalized(), m.clone())
                }
                None => cache.observed.ad_groups.remove(&g.normalized()),
            };
        }
    }
    if patch.context {
        read_context(cfg, ad, &mut cache.observed).await?;
        cache.index = Arc::new(Index::new(&cache.observed, &cfg.dns_suffixes));
    }
    cache.cursor = now;
    let dirty = if patch.context {
        // Identity verdicts may have moved: every host is worth a look.
        cache.observed.computers.iter().map(|c| dn_key(&c.dn)).collect()
    } else {
        changed.into_iter().collect()
    };
    Ok(Refresh::Patched {
        dirty,
        containers: patch.containers,
    })
}

/// What one delta means for the cache.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Patch {
    /// Known computers of the scope, as they are now.
    pub update: Vec<Computer>,
    /// Configured AD groups whose members must be read again.
    pub groups: Vec<Dn>,
    /// The claims on the hosts' names (or the privileged accounts) may have changed.
    pub context: bool,
    /// An OU or container of the scope was added, renamed or moved in.
    pub containers: bool,
    /// Why the scope must be read in full instead.
    pub resync: Option<String>,
}

impl Patch {
    fn resync(why: String) -> Patch {
        Patch {
            resync: Some(why),
            ..Default::default()
        }
    }
}

/// Sorts the changed objects into what the cache needs (pure).
pub fn classify(cfg: &Config, observed: &Observed, changes: &[Change]) -> Patch {
    let known: HashMap<String, &Computer> = observed.computers.iter().map(|c| (dn_key(&c.dn), c)).collect();
    let sams: HashSet<String> = observed
        .computers
        .iter()
        .map(|c| c.sam_account_name.to_ascii_lowercase())
        .collect();
    let holders: HashSet<String> = observed.claims.holders.iter().map(|h| dn_key(&h.dn)).collect();
    let names: HashSet<String> = names_to_check(cfg, observed).into_iter().collect();
    let ad_groups: Vec<&Dn> = cfg.groups.iter().filter_map(|g| g.ad_group.as_ref()).collect();
    let in_scope = |dn: &str| in_scope(dn, &cfg.scope);
    let mut patch = Patch::default();
    for ch in changes {
        let o = &ch.object;
        let key = dn_key(&o.dn);
        let sam_known = !o.sam_account_name.is_empty() && sams.contains(&o.sam_account_name.to_ascii_lowercase());
        if ch.deleted {
            if sam_known || ch.last_parent.as_deref().is_some_and(in_scope) {
                return Patch::resync(format!("{} was deleted", o.sam_account_name));
            }
            patch.context |= holders.contains(&key) || ch.is("group");
            continue;
        }
        if let Some(g) = ad_groups.iter().find(|g| g.normalized() == key) {
            patch.groups.push((*g).clone());
        }
        if ch.is("computer") && in_scope(&o.dn) {
            match known.get(&key) {
                Some(old) => {
                    patch.context |= identity_changed(old, o);
                    if !same_state(old, o) {
                        patch.update.push(o.clone());
                    }
                }
                None => return Patch::resync(format!("{} is new in the scope (added, moved or renamed)", o.dn)),
            }
            continue;
        }
        if (ch.is("organizationalunit") || ch.is("container")) && in_scope(&o.dn) {
            patch.containers = true;
            continue;
        }
        if ch.is("computer") && sam_known {
            return Patch::resync(format!("{} left the scope ({})", o.sam_account_name, o.dn));
        }
        // Anything else matters only through the identity checks: a group (privileged
        // membership), an account with sensitive-account enforcement, or an object that
        // claims — or claimed — one of the hosts' names.
        patch.context |= ch.is("group")
            || (cfg.diagnosis.enforce_sensitive && ch.is("user"))
            || holders.contains(&key)
            || answers_to(o, &names);
    }
    patch
}

/// Two reads of one object that plan alike (uSNChanged aside).
fn same_state(a: &Computer, b: &Computer) -> bool {
    Computer {
        usn_changed: 0,
        ..a.clone()
    } == Computer {
        usn_changed: 0,
        ..b.clone()
    }
}

/// What the identity checks read of a computer changed.
fn identity_changed(a: &Computer, b: &Computer) -> bool {
    let bits = SERVER_TRUST_ACCOUNT | PARTIAL_SECRETS_ACCOUNT;
    a.sam_account_name != b.sam_account_name
        || a.dns_host_name != b.dns_host_name
        || a.spns != b.spns
        || a.uac & bits != b.uac & bits
}
