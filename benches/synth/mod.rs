//! Synthetic clusters for the benchmarks: shaped like a real multi-tenant cluster, sized by
//! three numbers (pods, namespaces, policies), deterministic.
//!
//! Address plan: node `n` (0-based) owns 10.<n/256>.<n%256>.0/24 for its pods and
//! 172.16.<n/256>.<n%256> as its own address; the node under test is `node-0`. The "managed
//! database" range 10.200.0.0/16 is never a pod range (clusters stay below 200*256 nodes).
//!
//! Shape: namespaces carry `team=team-<i%50>` and `env`; pods belong to deployments `web`,
//! `backend`, `worker`, `db` (labels `app`, `tier`, `pod-template-hash`); `web` and `backend`
//! pods name ports `http` (8080) and `metrics` (9090), `db` pods `pg` (5432). A `kube-system`
//! namespace holds two DNS pods and `monitoring` a Prometheus. Policies cycle through the kinds
//! users actually write: same-namespace tier rules, team-wide rules with named ports, default
//! deny, egress to a database CIDR plus DNS, public ingress via ipBlock with except, scraping
//! from monitoring.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use nftpol::core::cluster::{
    Labels, NAMESPACE_NAME_LABEL, NamedPort, Namespace, Node, Pod, PodPhase, Protocol,
};
use nftpol::core::policy::{IpBlock, Namespaces, NetworkPolicy, Peer, Port, PortMatch, Rule};
use nftpol::core::selector::Selector;

pub struct Spec {
    pub pods: usize,
    pub namespaces: usize,
    pub policies: usize,
    /// Pods on the node under test.
    pub local_pods: usize,
}

pub struct Generated {
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
}

pub const LOCAL_NODE: &str = "node-0";
const APPS: [&str; 4] = ["web", "backend", "worker", "db"];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(pairs.iter().map(|(k, v)| (*k, *v)))
}

fn sel(pairs: &[(&str, &str)]) -> Selector {
    Selector::from_labels(pairs.iter().map(|(k, v)| (*k, *v)))
}

pub fn namespace_name(i: usize) -> String {
    format!("tenant-{i:05}")
}

fn cidr(s: &str) -> ipnet::IpNet {
    s.parse().unwrap_or_else(|_| unreachable!("constant CIDR"))
}

pub fn generate(spec: &Spec) -> Generated {
    let user_ns = spec.namespaces.max(1);
    let mut namespaces: Vec<Namespace> = (0..user_ns)
        .map(|i| {
            let name = namespace_name(i);
            Namespace {
                name: name.as_str().into(),
                labels: labels(&[
                    (NAMESPACE_NAME_LABEL, &name),
                    ("team", &format!("team-{}", i % 50)),
                    ("env", ["prod", "staging", "dev"][i % 3]),
                ]),
            }
        })
        .collect();
    for system in ["kube-system", "monitoring"] {
        namespaces.push(Namespace {
            name: system.into(),
            labels: labels(&[(NAMESPACE_NAME_LABEL, system)]),
        });
    }

    // 100 pods on each remote node; the local node gets `local_pods`, spread over namespaces.
    let total = spec.pods.max(spec.local_pods);
    let nodes_count = total.div_ceil(100).max(2);
    let stride = (total / spec.local_pods.max(1)).max(1);
    let mut per_node = vec![0usize; nodes_count];
    let mut pods = Vec::with_capacity(total + 3);
    let mut local = 0;
    for i in 0..total {
        let ns = i % user_ns;
        let app = APPS[(i / user_ns) % APPS.len()];
        let node = if i % stride == 0 && local < spec.local_pods {
            local += 1;
            0
        } else {
            1 + (i % (nodes_count - 1))
        };
        let j = per_node[node];
        per_node[node] += 1;
        let mut named_ports = Vec::new();
        if app == "web" || app == "backend" {
            named_ports.push(NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            });
            named_ports.push(NamedPort {
                name: "metrics".into(),
                protocol: Protocol::Tcp,
                port: 9090,
            });
        }
        if app == "db" {
            named_ports.push(NamedPort {
                name: "pg".into(),
                protocol: Protocol::Tcp,
                port: 5432,
            });
        }
        pods.push(Pod {
            namespace: namespace_name(ns).into(),
            name: format!("{app}-{i}").into(),
            labels: labels(&[
                ("app", app),
                ("tier", if app == "web" { "frontend" } else { "backend" }),
                (
                    "pod-template-hash",
                    &format!("{:x}", (ns * 7 + app.len()) % 4096),
                ),
            ]),
            node_name: Some(format!("node-{node}").into()),
            host_network: false,
            named_ports,
            ips: vec![pod_ip(node, j)],
            phase: PodPhase::Running,
        });
    }
    let system = [
        ("kube-system", "kube-dns"),
        ("kube-system", "kube-dns"),
        ("monitoring", "prometheus"),
    ];
    for (k, (ns, app)) in system.into_iter().enumerate() {
        let node = 1 + k % (nodes_count - 1);
        let j = per_node[node];
        per_node[node] += 1;
        pods.push(Pod {
            namespace: ns.into(),
            name: format!("{app}-{k}").into(),
            labels: labels(&[("k8s-app", app)]),
            node_name: Some(format!("node-{node}").into()),
            host_network: false,
            named_ports: vec![],
            ips: vec![pod_ip(node, j)],
            phase: PodPhase::Running,
        });
    }

    let nodes = (0..nodes_count)
        .map(|n| Node {
            name: format!("node-{n}").into(),
            labels: Labels::empty(),
            addresses: vec![IpAddr::V4(Ipv4Addr::new(
                172,
                16,
                (n / 256) as u8,
                (n % 256) as u8,
            ))],
            pod_cidrs: vec![cidr(&format!("10.{}.{}.0/24", n / 256, n % 256))],
        })
        .collect();

    let policies = (0..spec.policies).map(|i| policy(i, user_ns)).collect();
    Generated {
        namespaces,
        nodes,
        pods,
        policies,
    }
}

/// Address of pod `j` on node `n` (up to 250 pods a node).
pub fn pod_ip(node: usize, j: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        (node / 256) as u8,
        (node % 256) as u8,
        (j % 250 + 2) as u8,
    ))
}

fn tcp(port: u16) -> Port {
    Port {
        protocol: Protocol::Tcp,
        port: PortMatch::Range(port, port),
    }
}

fn named(name: &str) -> Port {
    Port {
        protocol: Protocol::Tcp,
        port: PortMatch::Named(name.into()),
    }
}

fn pods_in(ns: &str, s: Selector) -> Peer {
    Peer::Pods {
        namespaces: Namespaces::Named(ns.into()),
        pods: s,
    }
}

/// Policy `i` lives in namespace `i % namespaces`; its kind cycles so that each namespace
/// collects a mix when policies outnumber namespaces.
fn policy(i: usize, namespaces: usize) -> NetworkPolicy {
    let ns_idx = i % namespaces;
    let ns = namespace_name(ns_idx);
    let kind = (i / namespaces + ns_idx) % 6;
    let mut p = NetworkPolicy {
        namespace: ns.as_str().into(),
        name: format!("policy-{i}").into(),
        pod_selector: Selector::everything(),
        ingress: None,
        egress: None,
    };
    match kind {
        0 => {
            // backends accept the frontend of their namespace on 8080
            p.pod_selector = sel(&[("app", "backend")]);
            p.ingress = Some(vec![Rule {
                peers: Some(vec![pods_in(&ns, sel(&[("tier", "frontend")]))]),
                ports: Some(vec![tcp(8080)]),
            }]);
        }
        1 => {
            // web accepts its whole team on the named port http
            p.pod_selector = sel(&[("app", "web")]);
            p.ingress = Some(vec![Rule {
                peers: Some(vec![Peer::Pods {
                    namespaces: Namespaces::Matching(sel(&[(
                        "team",
                        &format!("team-{}", ns_idx % 50),
                    )])),
                    pods: Selector::everything(),
                }]),
                ports: Some(vec![named("http")]),
            }]);
        }
        2 => {
            // default deny ingress
            p.ingress = Some(vec![]);
        }
        3 => {
            // workers talk only to the managed database and to DNS
            p.pod_selector = sel(&[("app", "worker")]);
            p.egress = Some(vec![
                Rule {
                    peers: Some(vec![Peer::IpBlock(IpBlock {
                        cidr: cidr("10.200.0.0/16"),
                        except: vec![],
                    })]),
                    ports: Some(vec![tcp(5432)]),
                },
                Rule {
                    peers: Some(vec![Peer::Pods {
                        namespaces: Namespaces::Matching(sel(&[(
                            NAMESPACE_NAME_LABEL,
                            "kube-system",
                        )])),
                        pods: sel(&[("k8s-app", "kube-dns")]),
                    }]),
                    ports: Some(vec![
                        Port {
                            protocol: Protocol::Udp,
                            port: PortMatch::Range(53, 53),
                        },
                        tcp(53),
                    ]),
                },
            ]);
        }
        4 => {
            // public HTTPS from outside the cluster network
            p.pod_selector = sel(&[("app", "web")]);
            p.ingress = Some(vec![Rule {
                peers: Some(vec![Peer::IpBlock(IpBlock {
                    cidr: cidr("0.0.0.0/0"),
                    except: vec![cidr("10.0.0.0/8")],
                })]),
                ports: Some(vec![tcp(443)]),
            }]);
        }
        _ => {
            // scraping from monitoring on the named port metrics
            p.ingress = Some(vec![Rule {
                peers: Some(vec![Peer::Pods {
                    namespaces: Namespaces::Matching(sel(&[(NAMESPACE_NAME_LABEL, "monitoring")])),
                    pods: sel(&[("k8s-app", "prometheus")]),
                }]),
                ports: Some(vec![named("metrics")]),
            }]);
        }
    }
    p
}

/// The generated cluster as one Kubernetes `v1 List` (what `kubectl get -o json` prints).
pub fn to_kube_list(g: &Generated) -> serde_json::Value {
    use serde_json::{Value, json};
    let labels = |l: &Labels| -> Value {
        Value::Object(l.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
    };
    let selector = |s: &Selector| -> Value {
        let exprs: Vec<Value> = s
            .requirements()
            .iter()
            .map(|r| {
                json!({
                    "key": &*r.key,
                    "operator": format!("{:?}", r.operator),
                    "values": r.values.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "matchExpressions": exprs })
    };
    let port = |p: &Port| -> Value {
        let mut v = json!({ "protocol": p.protocol.as_str() });
        match &p.port {
            PortMatch::All => {}
            PortMatch::Range(a, b) => {
                v["port"] = json!(a);
                if a != b {
                    v["endPort"] = json!(b);
                }
            }
            PortMatch::Named(n) => v["port"] = json!(&**n),
        }
        v
    };
    let peer = |p: &Peer| -> Value {
        match p {
            Peer::IpBlock(b) => json!({ "ipBlock": {
                "cidr": b.cidr.to_string(),
                "except": b.except.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }}),
            Peer::Pods {
                namespaces: Namespaces::Named(_),
                pods,
            } => {
                json!({ "podSelector": selector(pods) })
            }
            Peer::Pods {
                namespaces: Namespaces::Matching(ns),
                pods,
            } => {
                json!({ "namespaceSelector": selector(ns), "podSelector": selector(pods) })
            }
        }
    };
    let rules = |rules: &[Rule], dir: &str| -> Value {
        Value::Array(
            rules
                .iter()
                .map(|r| {
                    let mut v = json!({});
                    if let Some(peers) = &r.peers {
                        v[dir] = Value::Array(peers.iter().map(peer).collect());
                    }
                    if let Some(ports) = &r.ports {
                        v["ports"] = Value::Array(ports.iter().map(port).collect());
                    }
                    v
                })
                .collect(),
        )
    };
    let mut items: Vec<Value> = Vec::new();
    for ns in &g.namespaces {
        items.push(json!({ "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": &*ns.name, "labels": labels(&ns.labels) } }));
    }
    for n in &g.nodes {
        items.push(json!({ "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": &*n.name },
            "spec": { "podCIDRs": n.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>() },
            "status": { "addresses": n.addresses.iter()
                .map(|a| json!({ "type": "InternalIP", "address": a.to_string() }))
                .collect::<Vec<_>>() } }));
    }
    for p in &g.pods {
        let ports: Vec<Value> = p
            .named_ports
            .iter()
            .map(|np| json!({ "name": &*np.name, "containerPort": np.port, "protocol": np.protocol.as_str() }))
            .collect();
        items.push(json!({ "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": &*p.name, "namespace": &*p.namespace, "labels": labels(&p.labels) },
            "spec": { "nodeName": p.node_name.as_deref(), "hostNetwork": p.host_network,
                "containers": [{ "name": "main", "image": "app", "ports": ports }] },
            "status": { "phase": "Running",
                "podIPs": p.ips.iter().map(|ip| json!({ "ip": ip.to_string() })).collect::<Vec<_>>() } }));
    }
    for np in &g.policies {
        let mut types = Vec::new();
        let mut spec = json!({ "podSelector": selector(&np.pod_selector) });
        if let Some(r) = &np.ingress {
            types.push("Ingress");
            spec["ingress"] = rules(r, "from");
        }
        if let Some(r) = &np.egress {
            types.push("Egress");
            spec["egress"] = rules(r, "to");
        }
        spec["policyTypes"] = json!(types);
        items.push(
            json!({ "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": { "name": &*np.name, "namespace": &*np.namespace }, "spec": spec }),
        );
    }
    json!({ "apiVersion": "v1", "kind": "List", "items": items })
}
