//! Figures, not a pass/fail speed test: how much memory the agent's cluster state takes at
//! 150 000 pods, and how long the first full sync takes. Ignored by default; run with
//!
//! ```sh
//! cargo test --release --test agent_scale -- --ignored --nocapture
//! ```
//!
//! Objects are built one at a time as the watch would deliver them (a k8s-openapi Pod,
//! converted by the shared Converter, then dropped) and fed to the engine. The dataplane here
//! discards what it is sent (the kernel's copy of the table is kernel memory, not the agent's),
//! so the resident size is the agent's own: compiler, converter caches, engine indexes.
//!
//! Cluster: 1 500 namespaces x 100 pods (10 deployments of 10 pods each), 1 500 nodes of which
//! this node runs 200 pods, 2 policies per namespace (deny all ingress; allow the frontend
//! deployment on 8080).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use nftpol::agent::attachments::AttachmentStore;
use nftpol::agent::engine::{
    self, Change, EngineConfig, EngineParts, Input, KernelWatch, Object, WatchEvent,
};
use nftpol::agent::health::Health;
use nftpol::agent::metrics::{Metrics, ObjectKind};
use nftpol::core::convert::Converter;
use nftpol::dataplane::{ApplyReport, Dataplane, DataplaneError};
use nftpol::nft::model::Table;
use nftpol::nft::transaction::Transaction;

const NAMESPACES: usize = 1500;
const DEPLOYMENTS: usize = 10;
const REPLICAS: usize = 10;
const NODES: usize = 1500;

struct Discard;

impl Dataplane for Discard {
    fn apply(&mut self, _tx: &Transaction) -> Result<ApplyReport, DataplaneError> {
        Ok(ApplyReport::default())
    }
    fn dump(&mut self, _table: &str) -> Result<Option<Table>, DataplaneError> {
        Ok(None)
    }
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn labels(pairs: &[(&str, String)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

fn pod(ns: usize, dep: usize, r: usize) -> corev1::Pod {
    let i = (ns * DEPLOYMENTS + dep) * REPLICAS + r;
    let node = if i.is_multiple_of(NODES) || i < 100 {
        "node-a".to_string()
    } else {
        format!("node-{}", i % NODES)
    };
    let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    corev1::Pod {
        metadata: ObjectMeta {
            name: Some(format!("dep{dep}-5d8f7c9b4-{r:05}")),
            namespace: Some(format!("ns-{ns}")),
            labels: labels(&[
                ("app", format!("dep{dep}")),
                ("pod-template-hash", "5d8f7c9b4".into()),
                ("team", format!("team-{}", ns % 50)),
            ]),
            ..ObjectMeta::default()
        },
        spec: Some(corev1::PodSpec {
            node_name: Some(node),
            containers: vec![corev1::Container {
                name: "app".into(),
                ports: Some(vec![corev1::ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(corev1::PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![corev1::PodIP { ip }]),
            ..Default::default()
        }),
    }
}

fn policies(ns: usize) -> Vec<netv1::NetworkPolicy> {
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        namespace: Some(format!("ns-{ns}")),
        ..ObjectMeta::default()
    };
    let deny = netv1::NetworkPolicy {
        metadata: meta("deny-all"),
        spec: Some(netv1::NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ..Default::default()
        }),
    };
    let allow = netv1::NetworkPolicy {
        metadata: meta("allow-frontend"),
        spec: Some(netv1::NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: labels(&[("app", "dep1".into())]),
                ..Default::default()
            }),
            ingress: Some(vec![netv1::NetworkPolicyIngressRule {
                from: Some(vec![netv1::NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: labels(&[("app", "dep0".into())]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![netv1::NetworkPolicyPort {
                    port: Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080),
                    ),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    };
    vec![deny, allow]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures: 150k pods; run with --ignored --nocapture (release)"]
async fn memory_and_first_sync_at_150k_pods() {
    let before = rss_kib("VmRSS:");
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(Duration::from_secs(3600), metrics.clone()));
    let mut cfg = EngineConfig::new("node-a");
    cfg.kernel_watch = KernelWatch::Off;
    let engine = engine::spawn(
        cfg,
        EngineParts {
            dataplane: Box::new(|| Ok(Box::new(Discard) as Box<dyn Dataplane>)),
            links: Box::new(nftpol::agent::attachments::KernelLinks),
            store: AttachmentStore::in_memory(),
            metrics: metrics.clone(),
            health: health.clone(),
        },
    )
    .expect("engine");
    let tx = engine.sender();
    let mut conv = Converter::new();
    let send = |c: Change| {
        let tx = tx.clone();
        async move {
            tx.send(Input::Watch(WatchEvent::now(c)))
                .await
                .expect("engine")
        }
    };
    let started = Instant::now();
    for n in 0..NODES {
        let node = corev1::Node {
            metadata: ObjectMeta {
                name: Some(if n == 0 {
                    "node-a".into()
                } else {
                    format!("node-{n}")
                }),
                ..ObjectMeta::default()
            },
            ..Default::default()
        };
        send(Change::Upsert(Object::Node(
            conv.node(&node).expect("node"),
        )))
        .await;
    }
    for ns in 0..NAMESPACES {
        let n = corev1::Namespace {
            metadata: ObjectMeta {
                name: Some(format!("ns-{ns}")),
                labels: labels(&[("team", format!("team-{}", ns % 50))]),
                ..ObjectMeta::default()
            },
            ..Default::default()
        };
        send(Change::Upsert(Object::Namespace(
            conv.namespace(&n).expect("ns"),
        )))
        .await;
        for p in policies(ns) {
            send(Change::Upsert(Object::Policy(
                conv.network_policy(&p).expect("np"),
            )))
            .await;
        }
    }
    let mut pods = 0;
    for ns in 0..NAMESPACES {
        for dep in 0..DEPLOYMENTS {
            for r in 0..REPLICAS {
                let p = conv.pod(&pod(ns, dep, r)).expect("pod");
                send(Change::Upsert(Object::Pod(p))).await;
                pods += 1;
            }
        }
    }
    conv.forget_unused();
    let fed = started.elapsed();
    let sync_started = Instant::now();
    for k in ObjectKind::ALL {
        send(Change::Synced(k)).await;
    }
    let h = health.clone();
    while h.ready().is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sync = sync_started.elapsed();
    let after = rss_kib("VmRSS:");
    let peak = rss_kib("VmHWM:");
    let m = metrics.encode();
    let line = |name: &str| {
        m.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    eprintln!(
        "pods {pods}, namespaces {NAMESPACES}, nodes {NODES}, policies {}",
        NAMESPACES * 2
    );
    eprintln!(
        "RSS before {} MiB, after first sync {} MiB (agent state {} MiB), peak {} MiB",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024,
        peak / 1024
    );
    eprintln!(
        "feeding (convert + engine upserts) {fed:?}; first full sync (compile + diff + apply) {sync:?}"
    );
    eprintln!(
        "{}\n{}",
        line("nftpol_table_elements"),
        line("nftpol_table_rules")
    );
    assert_eq!(pods, NAMESPACES * DEPLOYMENTS * REPLICAS);
    engine.shutdown().await.expect("shutdown");
}
