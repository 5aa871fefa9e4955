//! The controller's current view of the fleet, published after every
//! reconcile for the API to answer from: the snapshot — what one observe read
//! from AD (computers, privileged accounts, krbtgt, Protected Users), what the
//! agents last reported, and when kcdsync last changed each host, gathered at
//! the I/O edges — and the findings diagnosis drew from it without I/O.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::config::Config;
use crate::diagnose::{Facts, Finding, HostFacts, Policy};
use crate::exposure::Exposure;
use crate::ldap::{Ad, LdapError};
use crate::model::{Account, Directory, FindingKind, Index, Observed, Outside};
use crate::reconcile::ReconcileError;
use crate::store::{Store, now_ms};

/// The latest view the API answers from, replaced after every reconcile.
pub struct View {
    pub cfg: Arc<Config>,
    /// Shared, so the findings can be replaced between reconciles (the per-DC verify raises
    /// and clears its own) without copying what AD said.
    pub snapshot: Arc<Snapshot>,
    pub findings: Vec<Finding>,
    /// The exposure model of this view's snapshot, computed at its first use:
    /// every page of GetExposure and every dashboard view of it reads the same
    /// one (30,000 edges take ~0.3 s to classify at 2,000 hosts), runs that no
    /// one looks at do not pay for it, and a view with other findings but the
    /// same snapshot shares it.
    exposure: Arc<OnceLock<Exposure>>,
}

impl View {
    pub fn new(cfg: Arc<Config>, snapshot: Snapshot, findings: Vec<Finding>) -> View {
        View {
            cfg,
            snapshot: Arc::new(snapshot),
            findings,
            exposure: Arc::default(),
        }
    }

    /// The same view with the findings of `kind` replaced by `findings`.
    pub fn with_findings_of(&self, kind: FindingKind, findings: impl IntoIterator<Item = Finding>) -> View {
        let mut all: Vec<Finding> = self.findings.iter().filter(|f| f.kind != kind).cloned().collect();
        all.extend(findings);
        View {
            cfg: self.cfg.clone(),
            snapshot: self.snapshot.clone(),
            findings: all,
            exposure: self.exposure.clone(),
        }
    }

    pub fn empty(cfg: Arc<Config>) -> View {
        View::new(cfg, Snapshot::empty(), Vec::new())
    }

    /// Who can impersonate whom, to what, in this view.
    pub fn exposure(&self) -> &Exposure {
        self.exposure
            .get_or_init(|| crate::exposure::exposure(&self.snapshot.facts(&self.cfg, now_ms()).exposure_inputs()))
    }
}

pub struct Snapshot {
    pub observed: Observed,
    pub index: Arc<Index>,
    pub directory: Directory,
    /// Objects outside the scope that its delegation entries name (the exposure model's input).
    pub outside: Outside,
    pub hosts: HashMap<String, HostFacts>,
    pub last_change_ms: HashMap<String, i64>,
    pub taken_ms: i64,
}

impl Snapshot {
    /// A view of nothing, until the first observe.
    pub fn empty() -> Snapshot {
        let observed = Observed::default();
        Snapshot {
            index: Arc::new(Index::new(&observed, &[])),
            observed,
            directory: Directory::default(),
            outside: Outside::default(),
            hosts: HashMap::new(),
            last_change_ms: HashMap::new(),
            taken_ms: 0,
        }
    }

    /// Reads AD and the store. `observed` (with its index) may be passed in when the caller
    /// has just read the scope (a reconcile), to avoid reading it twice.
    pub async fn gather(
        cfg: &Config,
        ad: &Ad,
        store: &Store,
        observed: Option<(Observed, Arc<Index>)>,
    ) -> Result<Snapshot, ReconcileError> {
        let (observed, index) = match observed {
            Some(o) => o,
            None => {
                let o = crate::reconcile::observe(cfg, ad).await?;
                let index = Arc::new(Index::new(&o, &cfg.dns_suffixes));
                (o, index)
            }
        };
        let directory = ad
            .directory(&cfg.ad.domain_dn, &cfg.diagnosis.privileged_groups)
            .await?;
        let hosts = store
            .all_reports()
            .await?
            .into_iter()
            .map(|(h, r, seen)| {
                (
                    h,
                    HostFacts {
                        report: Some(r),
                        last_seen_ms: Some(seen),
                    },
                )
            })
            .collect();
        let last_change_ms = store.last_change_per_host().await?.into_iter().collect();
        let outside = ad
            .outside(
                &cfg.ad.domain_dn,
                &cfg.scope,
                &crate::exposure::names_outside(&observed, &index),
                &cfg.diagnosis.privileged_groups,
            )
            .await?;
        Ok(Snapshot {
            index,
            observed,
            directory,
            outside,
            hosts,
            last_change_ms,
            taken_ms: now_ms(),
        })
    }

    /// The facts diagnosis reads, as of `now_ms`.
    pub fn facts<'a>(&'a self, cfg: &'a Config, now_ms: i64) -> Facts<'a> {
        Facts {
            groups: &cfg.groups,
            observed: &self.observed,
            index: &self.index,
            hosts: &self.hosts,
            privileged: &self.directory.privileged,
            outside: &self.outside,
            krbtgt_uac: self.directory.krbtgt_uac,
            last_change_ms: &self.last_change_ms,
            now_ms,
            policy: Policy {
                require_kerberos: cfg.diagnosis.require_kerberos,
                stale_after_ms: cfg.stale_after().as_millis() as i64,
            },
        }
    }

    /// Looks an account up in AD (the name is escaped).
    pub async fn account(&self, cfg: &Config, ad: &Ad, name: &str) -> Result<Option<Account>, LdapError> {
        ad.read_account(&cfg.ad.domain_dn, self.directory.protected_users_dn.as_deref(), name)
            .await
    }
}
