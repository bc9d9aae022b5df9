//! The agent's Prometheus metrics, all in one place so that their names, help texts and label
//! sets are reviewed together.
//!
//! Every label has a small, fixed set of values (kinds, operations, results): never an object
//! name, a node name or an error text, so the number of series stays constant however big the
//! cluster gets. The metric types are atomics; the engine thread, the watchers and the CNI
//! server update them without locks, and `/metrics` encodes the registry on demand.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `nftpol_sync_duration_seconds` | histogram | `kind` = full, incremental |
//! | `nftpol_transactions_total` | counter | `kind` |
//! | `nftpol_transaction_failures_total` | counter | `kind` |
//! | `nftpol_kernel_drift_total` | counter | - (full syncs that found the kernel table differing from the desired one) |
//! | `nftpol_watched_objects` | gauge | `kind` = pod, namespace, node, networkpolicy |
//! | `nftpol_watch_errors_total` | counter | `kind` |
//! | `nftpol_invalid_objects_total` | counter | `kind` (conversion failures) |
//! | `nftpol_rejected_policies` | gauge | - (NetworkPolicies whose current version is invalid) |
//! | `nftpol_events_published_total` / `nftpol_event_failures_total` | counter | - |
//! | `nftpol_table_elements`, `nftpol_table_rules`, `nftpol_table_chains`, `nftpol_table_sets` | gauge | - |
//! | `nftpol_isolated_pods`, `nftpol_attachments` | gauge | - |
//! | `nftpol_enforcement_latency_seconds` | histogram | `kind` (from a watch event's arrival to the kernel commit) |
//! | `nftpol_cni_requests_total` | counter | `op`, `result` = ok, try_again, error |
//! | `nftpol_cni_request_duration_seconds` | histogram | `op`, `result` |
//! | `nftpol_ready` | gauge | - |
//! | `nftpol_last_successful_sync_timestamp_seconds` | gauge | - (unix time) |

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Kinds of sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncKind {
    /// Dump the live table, diff against the desired one, apply the difference.
    Full,
    /// Apply the compiler's delta since the last commit.
    Incremental,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SyncLabels {
    pub kind: SyncKind,
}

/// Kinds of watched object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Pod,
    Namespace,
    Node,
    Networkpolicy,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 4] = [
        ObjectKind::Pod,
        ObjectKind::Namespace,
        ObjectKind::Node,
        ObjectKind::Networkpolicy,
    ];

    /// The Kubernetes spelling, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Pod => "Pod",
            ObjectKind::Namespace => "Namespace",
            ObjectKind::Node => "Node",
            ObjectKind::Networkpolicy => "NetworkPolicy",
        }
    }

    pub fn index(self) -> usize {
        match self {
            ObjectKind::Pod => 0,
            ObjectKind::Namespace => 1,
            ObjectKind::Node => 2,
            ObjectKind::Networkpolicy => 3,
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: ObjectKind,
}

/// CNI operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CniOp {
    Add,
    Del,
    Check,
    Status,
    Gc,
    /// A request that could not be read or parsed.
    Invalid,
}

/// How a CNI request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CniResult {
    Ok,
    /// CNI error 11: the runtime retries.
    TryAgain,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CniLabels {
    pub op: CniOp,
    pub result: CniResult,
}

/// Label values in snake case (the derive would keep the Rust spelling).
macro_rules! label_values {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            pub fn label(self) -> &'static str {
                match self {
                    $(<$ty>::$variant => $text,)*
                }
            }
        }
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.label())
            }
        }
    };
}

label_values!(SyncKind { Full => "full", Incremental => "incremental" });
label_values!(ObjectKind {
    Pod => "pod",
    Namespace => "namespace",
    Node => "node",
    Networkpolicy => "networkpolicy",
});
label_values!(CniOp {
    Add => "add",
    Del => "del",
    Check => "check",
    Status => "status",
    Gc => "gc",
    Invalid => "invalid",
});
label_values!(CniResult { Ok => "ok", TryAgain => "try_again", Error => "error" });

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn sync_buckets() -> Histogram {
    // 0.5 ms .. ~65 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn latency_buckets() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric of the agent, registered in [`Metrics::registry`].
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub sync_duration: HistogramFamily<SyncLabels>,
    pub transactions: Family<SyncLabels, Counter>,
    pub transaction_failures: Family<SyncLabels, Counter>,
    pub kernel_drift: Counter,
    pub watched_objects: Family<KindLabels, Gauge>,
    pub watch_errors: Family<KindLabels, Counter>,
    pub invalid_objects: Family<KindLabels, Counter>,
    pub rejected_policies: Gauge,
    pub events_published: Counter,
    pub event_failures: Counter,
    pub table_elements: Gauge,
    pub table_rules: Gauge,
    pub table_chains: Gauge,
    pub table_sets: Gauge,
    pub isolated_pods: Gauge,
    pub attachments: Gauge,
    pub enforcement_latency: HistogramFamily<KindLabels>,
    pub cni_requests: Family<CniLabels, Counter>,
    pub cni_duration: HistogramFamily<CniLabels>,
    pub ready: Gauge,
    pub last_successful_sync: Gauge<f64, AtomicU64>,
    pub cni_config_repairs: Counter,
    pub cni_config_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            sync_duration: Family::new_with_constructor(sync_buckets as fn() -> Histogram),
            transactions: Family::default(),
            transaction_failures: Family::default(),
            kernel_drift: Counter::default(),
            watched_objects: Family::default(),
            watch_errors: Family::default(),
            invalid_objects: Family::default(),
            rejected_policies: Gauge::default(),
            events_published: Counter::default(),
            event_failures: Counter::default(),
            table_elements: Gauge::default(),
            table_rules: Gauge::default(),
            table_chains: Gauge::default(),
            table_sets: Gauge::default(),
            isolated_pods: Gauge::default(),
            attachments: Gauge::default(),
            enforcement_latency: Family::new_with_constructor(latency_buckets as fn() -> Histogram),
            cni_requests: Family::default(),
            cni_duration: Family::new_with_constructor(sync_buckets as fn() -> Histogram),
            ready: Gauge::default(),
            last_successful_sync: Gauge::default(),
            cni_config_repairs: Counter::default(),
            cni_config_errors: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "nftpol_cni_config_repairs",
            "Times the host CNI config had lost the nftpol plugin entry and it was chained again",
            m.cni_config_repairs.clone(),
        );
        registry.register(
            "nftpol_cni_config_errors",
            "Checks of the host CNI config that failed",
            m.cni_config_errors.clone(),
        );
        registry.register(
            "nftpol_sync_duration_seconds",
            "Duration of table syncs (compile, dump and diff for full syncs, apply)",
            m.sync_duration.clone(),
        );
        registry.register(
            "nftpol_transactions",
            "Non-empty transactions sent to the kernel",
            m.transactions.clone(),
        );
        registry.register(
            "nftpol_transaction_failures",
            "Syncs that failed (the next sync is a full one)",
            m.transaction_failures.clone(),
        );
        registry.register(
            "nftpol_kernel_drift",
            "Full syncs that found the live table differing from the desired one",
            m.kernel_drift.clone(),
        );
        registry.register(
            "nftpol_watched_objects",
            "Objects known from the Kubernetes API, by kind",
            m.watched_objects.clone(),
        );
        registry.register(
            "nftpol_watch_errors",
            "Errors of the Kubernetes watches (they retry with backoff)",
            m.watch_errors.clone(),
        );
        registry.register(
            "nftpol_invalid_objects",
            "Objects that failed validation (their last valid version stays in force)",
            m.invalid_objects.clone(),
        );
        registry.register(
            "nftpol_rejected_policies",
            "NetworkPolicies whose current version is invalid",
            m.rejected_policies.clone(),
        );
        registry.register(
            "nftpol_events_published",
            "Kubernetes Events created",
            m.events_published.clone(),
        );
        registry.register(
            "nftpol_event_failures",
            "Kubernetes Events that could not be created",
            m.event_failures.clone(),
        );
        registry.register(
            "nftpol_table_elements",
            "Set and map elements in the desired table",
            m.table_elements.clone(),
        );
        registry.register(
            "nftpol_table_rules",
            "Rules in the desired table",
            m.table_rules.clone(),
        );
        registry.register(
            "nftpol_table_chains",
            "Chains in the desired table",
            m.table_chains.clone(),
        );
        registry.register(
            "nftpol_table_sets",
            "Sets and maps in the desired table",
            m.table_sets.clone(),
        );
        registry.register(
            "nftpol_isolated_pods",
            "Local pods isolated by at least one policy",
            m.isolated_pods.clone(),
        );
        registry.register(
            "nftpol_attachments",
            "CNI attachments known to the agent",
            m.attachments.clone(),
        );
        registry.register(
            "nftpol_enforcement_latency_seconds",
            "Time from a watch event's arrival to the kernel commit that enforces it",
            m.enforcement_latency.clone(),
        );
        registry.register(
            "nftpol_cni_requests",
            "CNI requests served, by operation and result",
            m.cni_requests.clone(),
        );
        registry.register(
            "nftpol_cni_request_duration_seconds",
            "Time to answer a CNI request, by operation and result",
            m.cni_duration.clone(),
        );
        registry.register(
            "nftpol_ready",
            "1 once the table has been programmed from synced caches and the last sync succeeded",
            m.ready.clone(),
        );
        registry.register(
            "nftpol_last_successful_sync_timestamp_seconds",
            "Unix time of the last successful sync",
            m.last_successful_sync.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The registry in the Prometheus text format (OpenMetrics flavour).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn sync_observed(&self, kind: SyncKind, seconds: f64) {
        self.sync_duration
            .get_or_create(&SyncLabels { kind })
            .observe(seconds);
    }

    pub fn cni_observed(&self, op: CniOp, result: CniResult, seconds: f64) {
        let labels = CniLabels { op, result };
        self.cni_requests.get_or_create(&labels).inc();
        self.cni_duration.get_or_create(&labels).observe(seconds);
    }

    pub fn watch_error(&self, kind: ObjectKind) {
        self.watch_errors.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn invalid_object(&self, kind: ObjectKind) {
        self.invalid_objects
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn set_watched(&self, kind: ObjectKind, count: usize) {
        self.watched_objects
            .get_or_create(&KindLabels { kind })
            .set(count as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_documented_metrics() {
        let m = Metrics::new();
        m.sync_observed(SyncKind::Full, 0.01);
        m.cni_observed(CniOp::Add, CniResult::TryAgain, 0.2);
        m.set_watched(ObjectKind::Networkpolicy, 3);
        let text = m.encode();
        for needle in [
            "nftpol_sync_duration_seconds_bucket{le=",
            "kind=\"full\"",
            "nftpol_cni_requests_total{op=\"add\",result=\"try_again\"} 1",
            "nftpol_watched_objects{kind=\"networkpolicy\"} 3",
            "nftpol_ready 0",
            "nftpol_last_successful_sync_timestamp_seconds",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
