//! The controller's OpenTelemetry instruments (no-ops without an exporter).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

pub struct Metrics {
    pub reconcile_duration: Histogram<f64>,
    /// Seconds from a write verified on its DC to the change read on another DC (attribute `dc`).
    pub replication_lag: Histogram<f64>,
    pub ldap_operations: Counter<u64>,
    pub ldap_entries: Counter<u64>,
    pub drift_detected: Counter<u64>,
    pub drift_repaired: Counter<u64>,
    pub attempts: Counter<u64>,
    /// Agent streams refused or cut because their host is revoked (attribute `stage`:
    /// `hello` for a refused connection, `live` for a stream cut while it ran).
    pub agents_revoked_refused: Counter<u64>,
    /// serve moved its writes to another DC (attributes `from`, `to`: dNSHostNames).
    pub writer_switches: Counter<u64>,
    /// Certificate renewals asked for over agent streams, by `result`: `issued`, or why not
    /// (`not_configured`, `too_soon`, `bad_csr`, `wrong_name`, `revoked`, `ca_expired`,
    /// `unavailable`).
    pub agent_renewals: Counter<u64>,
    /// Agents enrolling by Kerberos, by result: `issued`, or why not (`unauthenticated`,
    /// `not_in_scope`, `untrusted`, `wrong_name`, `revoked`, … see `crate::enrollment`).
    pub agent_enrollments: Counter<u64>,
    /// Values the observable gauges report: (name, attribute) -> value.
    gauges: Arc<Mutex<BTreeMap<(&'static str, String), u64>>>,
}

/// The instruments, created on first use (after telemetry is initialised).
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let meter = kcdsync_telemetry::meter();
        let gauges: Arc<Mutex<BTreeMap<(&'static str, String), u64>>> = Arc::default();
        for (name, key, description) in [
            ("kcdsync.hosts", "readiness", "grouped hosts by readiness"),
            ("kcdsync.findings", "kind", "current findings by kind"),
            ("kcdsync.agents.connected", "", "agents with an open stream"),
            (
                "kcdsync.ad.writer",
                "dc",
                "the domain controller serve writes to (1), by dc",
            ),
        ] {
            let g = gauges.clone();
            meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |o| {
                    for ((n, attr), v) in g.lock().unwrap().iter() {
                        if *n == name {
                            let attrs = if key.is_empty() {
                                vec![]
                            } else {
                                vec![KeyValue::new(key, attr.clone())]
                            };
                            o.observe(*v, &attrs);
                        }
                    }
                })
                .build();
        }
        Metrics {
            reconcile_duration: meter
                .f64_histogram("kcdsync.reconcile.duration")
                .with_unit("s")
                .with_description("reconcile wall time")
                .build(),
            replication_lag: meter
                .f64_histogram("kcdsync.replication.lag")
                .with_unit("s")
                .with_description(
                    "from a write verified on the DC it was made on to the change read on another DC, by dc",
                )
                .build(),
            ldap_operations: meter
                .u64_counter("kcdsync.ldap.operations")
                .with_description("LDAP operations by operation and result code")
                .build(),
            ldap_entries: meter
                .u64_counter("kcdsync.ldap.entries")
                .with_description("entries returned by LDAP searches: what reading AD costs the DC")
                .build(),
            drift_detected: meter
                .u64_counter("kcdsync.drift.detected")
                .with_description("hosts found differing")
                .build(),
            drift_repaired: meter
                .u64_counter("kcdsync.drift.repaired")
                .with_description("hosts written and verified")
                .build(),
            attempts: meter
                .u64_counter("kcdsync.migration.attempts")
                .with_description("live-migration attempts reported by agents, by result and error code")
                .build(),
            agents_revoked_refused: meter
                .u64_counter("kcdsync.agents.revoked_refused")
                .with_description(
                    "agent streams refused at Hello (stage=hello) or cut while live (stage=live) because their host is revoked",
                )
                .build(),
            writer_switches: meter
                .u64_counter("kcdsync.ad.writer_switches")
                .with_description(
                    "serve moved its writes to another domain controller (failed over, or back), by from and to",
                )
                .build(),
            agent_renewals: meter
                .u64_counter("kcdsync.agents.renewals")
                .with_description(
                    "agent certificate renewals asked over the stream, by result (issued, or why they were refused)",
                )
                .build(),
            agent_enrollments: meter
                .u64_counter("kcdsync.agents.enrollments")
                .with_description("agent enrollments by Kerberos, by result (issued, or why they were refused)")
                .build(),
            gauges,
        }
    })
}

impl Metrics {
    /// Replaces the values of one observable gauge.
    pub fn set_gauge(&self, name: &'static str, values: impl IntoIterator<Item = (String, u64)>) {
        let mut g = self.gauges.lock().unwrap();
        g.retain(|(n, _), _| *n != name);
        for (attr, v) in values {
            g.insert((name, attr), v);
        }
    }

    /// One search answered with `rc` after returning `entries` entries.
    pub fn ldap_search(&self, rc: u32, entries: usize) {
        self.ldap("search", rc);
        self.ldap_entries.add(entries as u64, &[]);
    }

    pub fn ldap(&self, op: &'static str, rc: u32) {
        self.ldap_operations.add(
            1,
            &[KeyValue::new("operation", op), KeyValue::new("result_code", rc as i64)],
        );
    }
}
