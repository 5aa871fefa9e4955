//! Audit, write-ahead: every write is on record as an intent before it
//! happens, and settled from the read-back after (done: the row shows what AD
//! says now; aborted: never written). A writer that dies, or loses its lease,
//! between the two leaves intents, never unaudited writes: the next run
//! settles them from AD.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tracing::Instrument;

use super::apply::Written;
use super::verify::Verified;
use super::{AdClient, ReconcileError};
use crate::model::{Computer, HostChange, dn_key, spn_key};
use crate::store::{AuditRecord, Store, now_ms};

/// Who a run's audit rows name.
pub(super) struct Context<'a> {
    pub plan_id: i64,
    pub trigger: &'a str,
    pub approved_by: Option<&'a str>,
    pub epoch: i64,
    /// The DC the run writes to.
    pub dc: &'a str,
}

impl Context<'_> {
    fn record(&self, change: &HostChange, before: &Computer, after_uac: u32, after: Vec<String>) -> AuditRecord {
        AuditRecord {
            id: 0,
            time_ms: now_ms(),
            plan_id: self.plan_id,
            host: change.host.clone(),
            dn: change.dn.clone(),
            uac_before: before.uac,
            uac_after: after_uac,
            delegate_before: before.allowed_to_delegate_to.clone(),
            delegate_after: after,
            reasons: change.reasons(),
            trigger: self.trigger.to_owned(),
            approved_by: self.approved_by.map(str::to_owned),
            epoch: self.epoch,
            dc: self.dc.to_owned(),
        }
    }
}

/// The intents of a run, by DN.
pub(super) struct Intents(HashMap<String, i64>);

impl Intents {
    /// The intents of `dns` only (those this run recorded).
    pub(super) fn of(&self, dns: &[String]) -> Intents {
        Intents(
            dns.iter()
                .filter_map(|d| {
                    let k = dn_key(d);
                    self.0.get(&k).map(|id| (k, *id))
                })
                .collect(),
        )
    }

    pub(super) fn ids(&self) -> Vec<i64> {
        self.0.values().copied().collect()
    }

    /// The ids of the intents of every DN but `dns`.
    pub(super) fn all_but(&self, dns: &[&str]) -> Vec<i64> {
        let keep: BTreeSet<String> = dns.iter().map(|d| dn_key(d)).collect();
        self.0
            .iter()
            .filter(|(dn, _)| !keep.contains(*dn))
            .map(|(_, id)| *id)
            .collect()
    }
}

/// Records an intent for every change about to be written.
pub(super) async fn record_intents(
    store: &Store,
    ctx: &Context<'_>,
    work: &[Written],
) -> Result<Intents, ReconcileError> {
    let records: Vec<AuditRecord> = work
        .iter()
        .map(|(c, b)| {
            let after = c.delegate_after(&b.allowed_to_delegate_to);
            ctx.record(c, b, c.uac_after.unwrap_or(c.uac_before), after)
        })
        .collect();
    let ids = store.record_intents(&records).await?;
    Ok(Intents(
        work.iter().zip(ids).map(|((c, _), id)| (dn_key(&c.dn), id)).collect(),
    ))
}

/// Settles the run's intents: the verified writes become audit rows with
/// what AD says now; the rest were never written. Returns the rows.
pub(super) async fn settle(
    store: &Store,
    ctx: &Context<'_>,
    intents: &Intents,
    verified: &[Verified],
) -> Result<Vec<AuditRecord>, ReconcileError> {
    let records: Vec<AuditRecord> = verified
        .iter()
        .map(|(change, before, now)| ctx.record(change, before, now.uac, now.allowed_to_delegate_to.clone()))
        .collect();
    let done: Vec<(i64, AuditRecord)> = records
        .iter()
        .filter_map(|r| intents.0.get(&dn_key(&r.dn)).map(|id| (*id, r.clone())))
        .collect();
    let written: BTreeSet<String> = records.iter().map(|r| dn_key(&r.dn)).collect();
    let aborted: Vec<i64> = intents
        .0
        .iter()
        .filter(|(dn, _)| !written.contains(*dn))
        .map(|(_, id)| *id)
        .collect();
    store
        .settle_intents(&done, &aborted)
        .instrument(tracing::info_span!("audit", rows = records.len(), plan = ctx.plan_id))
        .await?;
    Ok(records)
}

/// Settles the intents a previous writer left (it died, or lost its lease,
/// between its writes and its audit): an intent whose change AD shows
/// becomes an audit row with the values read now; the others are dropped.
///
/// Only intents that no writer can still be acting on are settled: of an epoch older than
/// `epoch` (the one this run writes under; its own open intents are its own business), and
/// older than `grace` (the lease TTL + the LDAP timeout). A deposed writer checks its fence
/// before each modify, so its last write starts before its lease lapses and lands within
/// the LDAP timeout; reading AD for its intents before then could call a write that is
/// still on its way "not written", and leave it unaudited. Returns how long until the
/// freshest of the older writers' intents may be settled, when some had to wait.
pub(super) async fn settle_open_intents(
    ad: &impl AdClient,
    store: &Store,
    epoch: i64,
    grace: Duration,
) -> Result<Option<Duration>, ReconcileError> {
    let now = now_ms();
    let grace_ms = grace.as_millis() as i64;
    let (mut ripe, mut wait_ms) = (Vec::new(), None::<i64>);
    for r in store.open_intents().await? {
        if r.epoch >= epoch {
            continue;
        }
        let age = now - r.time_ms;
        if age < grace_ms {
            wait_ms = wait_ms.max(Some(grace_ms - age));
        } else {
            ripe.push(r);
        }
    }
    if !ripe.is_empty() {
        settle_ripe(ad, store, ripe).await?;
    }
    Ok(wait_ms.map(|ms| Duration::from_millis(ms as u64)))
}

async fn settle_ripe(ad: &impl AdClient, store: &Store, open: Vec<AuditRecord>) -> Result<(), ReconcileError> {
    let (mut done, mut aborted) = (Vec::new(), Vec::new());
    for r in open {
        match ad.read_object(&r.dn).await? {
            Some(now) if reflected(&r, &now) => {
                let id = r.id;
                done.push((
                    id,
                    AuditRecord {
                        uac_after: now.uac,
                        delegate_after: now.allowed_to_delegate_to.clone(),
                        ..r
                    },
                ));
            }
            _ => aborted.push(r.id),
        }
    }
    tracing::warn!(
        written = done.len(),
        not_written = aborted.len(),
        "settled the audit intents of an interrupted writer"
    );
    store.settle_intents(&done, &aborted).await?;
    Ok(())
}

/// Settles the intents an earlier run of this same writer (same epoch, another plan than
/// `plan`) left open because it lost its DC mid-apply (`reconcile::cut_off`): writes the DC
/// acknowledged but could not be verified on, and writes sent without an answer. Called
/// after this run's own writes are audited (`audited`: their DNs), never before: until this
/// run has written, a cut-off write may still be on its way to the DC this run reads
/// (replicated from the lost one), and an intent settled "not written" before it lands
/// would leave a change with no audit row once this run's compare-and-swap then finds it
/// done (a conflict, re-read, nothing left to write). After:
/// - this run wrote the object: its row is the change; the cut-off intent is superseded
///   (if the lost DC made the same write too, the two replicate into one value set);
/// - else AD shows the intent's change: it was made, by the lost DC; its row names that DC;
/// - else it was never made.
///
/// So each change has exactly one row, whichever DC made it. Returns the rows of the changes
/// the lost DC made: the run reports them with its own (agents purge, the per-DC verify
/// watches them), since no run did yet.
pub(super) async fn settle_cut_off(
    ad: &impl AdClient,
    store: &Store,
    epoch: i64,
    plan: Option<i64>,
    audited: &[String],
) -> Result<Vec<AuditRecord>, ReconcileError> {
    let open: Vec<AuditRecord> = store
        .open_intents()
        .await?
        .into_iter()
        .filter(|r| r.epoch == epoch && Some(r.plan_id) != plan)
        .collect();
    if open.is_empty() {
        return Ok(Vec::new());
    }
    let audited: BTreeSet<String> = audited.iter().map(|d| dn_key(d)).collect();
    let (mut done, mut superseded, mut unwritten) = (Vec::new(), Vec::new(), Vec::new());
    for r in open {
        if audited.contains(&dn_key(&r.dn)) {
            superseded.push(r.id);
            continue;
        }
        match ad.read_object(&r.dn).await? {
            Some(now) if reflected(&r, &now) => {
                let id = r.id;
                done.push((
                    id,
                    AuditRecord {
                        time_ms: now_ms(),
                        uac_after: now.uac,
                        delegate_after: now.allowed_to_delegate_to.clone(),
                        ..r
                    },
                ));
            }
            _ => unwritten.push(r.id),
        }
    }
    tracing::info!(
        made_by_the_lost_dc = done.len(),
        superseded_by_this_run = superseded.len(),
        never_made = unwritten.len(),
        "settled the writes cut off with the last domain controller"
    );
    let aborted: Vec<i64> = superseded.into_iter().chain(unwritten).collect();
    store.settle_intents(&done, &aborted).await?;
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

/// AD shows the change an intent describes.
pub(crate) fn reflected(intent: &AuditRecord, now: &Computer) -> bool {
    let set = intent.uac_after & !intent.uac_before;
    let cleared = intent.uac_before & !intent.uac_after;
    if now.uac & set != set || now.uac & cleared != 0 {
        return false;
    }
    let keys = |v: &[String]| v.iter().map(|e| spn_key(e)).collect::<BTreeSet<String>>();
    let (before, after, current) = (
        keys(&intent.delegate_before),
        keys(&intent.delegate_after),
        keys(&now.allowed_to_delegate_to),
    );
    after.difference(&before).all(|e| current.contains(e)) && before.difference(&after).all(|e| !current.contains(e))
}
