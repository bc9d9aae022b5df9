//! proptest strategies for small, random, meaningful clusters and the probes to ask about them.
//!
//! The property test that compares the compiled-and-traced ruleset with `core::eval::verdict`
//! is only as good as these generators, so they aim at the edges: labels present and absent,
//! every selector operator, excepts carved out of pod ranges (and excepts equal to their
//! CIDR), named ports that exist on some pods, with another protocol on others, and missing on
//! the rest, port ranges probed at and just beyond their ends, hostNetwork, terminal and
//! IP-less pods, dual-stack pods and ipBlocks of the other family.
//!
//! # Address plan
//!
//! | what | IPv4 | IPv6 |
//! |---|---|---|
//! | node `n<i>` (i = 0..3) | `192.168.1.<10+i>` | `fd00:1::<10+i>` (hex) |
//! | pod number j on node i | `10.244.<i>.<2+j>` | `fd00:10:244:<i>::<2+j>` (hex) |
//! | hostNetwork pod | its node's addresses | its node's addresses |
//! | outside | `203.0.113.9`, `198.51.100.7` | `2001:db8::9` |
//!
//! Every policy-relevant pod has its own addresses. A terminal (Succeeded/Failed) pod
//! sometimes keeps the address a running pod now holds, as happens when an address is reused;
//! the running pod must win.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use nftpol::core::cluster::{
    Labels, NAMESPACE_NAME_LABEL, NamedPort, Namespace, Node, Pod, PodPhase, Protocol, Str,
};
use nftpol::core::eval::Cluster;
use nftpol::core::policy::{IpBlock, Namespaces, NetworkPolicy, Peer, Port, PortMatch, Rule};
use nftpol::core::selector::{Operator, Requirement, Selector};
use nftpol::nft::model::proto;
use nftpol::nft::trace::Packet;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};

/// Namespace names, in order of creation.
pub const NAMESPACES: [&str; 4] = ["default", "prod", "dev", "ops"];
/// Pod label keys and values.
pub const POD_KEYS: [&str; 3] = ["app", "tier", "env"];
pub const POD_VALUES: [&str; 3] = ["a", "b", "c"];
/// Namespace label keys and values (plus `kubernetes.io/metadata.name`).
pub const NS_KEYS: [&str; 2] = ["team", "stage"];
pub const NS_VALUES: [&str; 2] = ["x", "y"];
/// Port names policies use; "nope" is never declared by a pod.
pub const PORT_NAMES: [&str; 4] = ["http", "dns", "metrics", "nope"];
/// Outside addresses.
pub const OUTSIDE: [&str; 3] = ["203.0.113.9", "198.51.100.7", "2001:db8::9"];

/// One question for the evaluator and the tracer: a new connection `src -> dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Probe {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number: TCP, UDP, SCTP, or ICMP/ICMPv6 (by family).
    pub proto: u8,
    /// Destination port; `None` for ICMP.
    pub port: Option<u16>,
}

impl Probe {
    /// The first packet of this connection, for `nft::trace` (no interfaces set).
    pub fn packet(&self) -> Packet {
        if self.proto == proto::ICMPV6 {
            Packet::icmpv6(self.src, self.dst, 128)
        } else {
            Packet::new(self.src, self.dst, self.proto, self.port)
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.proto {
            proto::TCP => "tcp",
            proto::UDP => "udp",
            proto::SCTP => "sctp",
            proto::ICMP => "icmp",
            proto::ICMPV6 => "icmpv6",
            _ => "proto",
        };
        match self.port {
            Some(p) => write!(f, "{} -> {} {name}/{p}", self.src, self.dst),
            None => write!(f, "{} -> {} {name}", self.src, self.dst),
        }
    }
}

pub fn node_v4(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10 + i as u8))
}

pub fn node_v6(i: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x10 + i as u16))
}

pub fn pod_v4(node: usize, j: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, node as u8, 2 + j as u8))
}

pub fn pod_v6(node: usize, j: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        node as u16,
        0,
        0,
        0,
        2 + j as u16,
    ))
}

// ---------------------------------------------------------------------------------------------
// Intermediate specs (indices into the vocabularies), assembled into a Cluster at the end.

#[derive(Debug, Clone, Copy)]
enum Family {
    V4,
    V6,
    Dual,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Running,
    PendingWithIp,
    Unknown,
    HostNetwork,
    /// Succeeded or Failed; `reuse` makes it claim another pod's address.
    Terminal {
        failed: bool,
        reuse: Option<Index>,
    },
    /// Pending, not scheduled, no IPs.
    NoIp,
}

#[derive(Debug, Clone)]
struct PodSpec {
    ns: usize,
    node: Index,
    labels: Vec<Option<usize>>,
    family: Family,
    kind: Kind,
    named: Vec<Option<(Protocol, u16)>>,
}

/// Named port choices per name in `PORT_NAMES[..3]`: several numbers, and another protocol.
fn named_port_choice(name: usize) -> BoxedStrategy<Option<(Protocol, u16)>> {
    let choices: Vec<(Protocol, u16)> = match name {
        0 => vec![
            (Protocol::Tcp, 80),
            (Protocol::Tcp, 8080),
            (Protocol::Udp, 80),
        ],
        1 => vec![
            (Protocol::Udp, 53),
            (Protocol::Tcp, 53),
            (Protocol::Udp, 5353),
        ],
        _ => vec![
            (Protocol::Tcp, 9090),
            (Protocol::Sctp, 9090),
            (Protocol::Tcp, 9100),
        ],
    };
    prop_oneof![1 => Just(None), 2 => select(choices).prop_map(Some)].boxed()
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    let labels = vec(
        prop_oneof![1 => Just(None), 2 => (0..POD_VALUES.len()).prop_map(Some)],
        3,
    );
    let family = prop_oneof![3 => Just(Family::V4), 2 => Just(Family::Dual), 1 => Just(Family::V6)];
    let kind = prop_oneof![
        10 => Just(Kind::Running),
        1 => Just(Kind::PendingWithIp),
        1 => Just(Kind::Unknown),
        2 => Just(Kind::HostNetwork),
        2 => (any::<bool>(), prop::option::weighted(0.5, any::<Index>()))
            .prop_map(|(failed, reuse)| Kind::Terminal { failed, reuse }),
        1 => Just(Kind::NoIp),
    ];
    let named = (
        named_port_choice(0),
        named_port_choice(1),
        named_port_choice(2),
    )
        .prop_map(|(a, b, c)| vec![a, b, c]);
    (
        namespace_choice(),
        any::<Index>(),
        labels,
        family,
        kind,
        named,
    )
        .prop_map(|(ns, node, labels, family, kind, named)| PodSpec {
            ns,
            node,
            labels,
            family,
            kind,
            named,
        })
}

/// A namespace number (taken modulo the namespace count), biased towards the first two so
/// that policies often select the generated pods.
fn namespace_choice() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0usize), 2 => Just(1usize), 2 => 0usize..NAMESPACES.len()]
}

// ---------------------------------------------------------------------------------------------
// Selectors

fn requirement(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = Requirement> {
    let values_set = vec(select(values), 1..=2)
        .prop_map(|vs| vs.into_iter().map(Str::from).collect::<BTreeSet<Str>>());
    (
        select(keys),
        prop_oneof![
            3 => Just(Operator::In),
            2 => Just(Operator::NotIn),
            1 => Just(Operator::Exists),
            1 => Just(Operator::DoesNotExist),
        ],
        values_set,
    )
        .prop_map(|(key, operator, values)| Requirement {
            key: key.into(),
            values: match operator {
                Operator::In | Operator::NotIn => values,
                Operator::Exists | Operator::DoesNotExist => BTreeSet::new(),
            },
            operator,
        })
}

/// A pod selector: often empty or one `matchLabels`, sometimes two expressions.
pub fn pod_selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        3 => Just(Selector::everything()),
        4 => (select(&POD_KEYS[..]), select(&POD_VALUES[..]))
            .prop_map(|(k, v)| Selector::from_labels([(k, v)])),
        2 => vec(requirement(&POD_KEYS, &POD_VALUES), 1..=2).prop_map(Selector::new),
    ]
}

/// A namespace selector, including by `kubernetes.io/metadata.name`.
pub fn namespace_selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        2 => Just(Selector::everything()),
        2 => select(&NAMESPACES[..]).prop_map(|n| Selector::from_labels([(NAMESPACE_NAME_LABEL, n)])),
        3 => vec(requirement(&NS_KEYS, &NS_VALUES), 1..=2).prop_map(Selector::new),
    ]
}

// ---------------------------------------------------------------------------------------------
// ipBlocks

/// Base addresses ipBlocks are cut around: pods, nodes, outside, and the zero address.
fn block_bases() -> Vec<IpAddr> {
    let mut v = Vec::new();
    for node in 0..3 {
        for j in [0, 1, 2, 5] {
            v.push(pod_v4(node, j));
            v.push(pod_v6(node, j));
        }
        v.push(node_v4(node));
        v.push(node_v6(node));
    }
    v.extend(OUTSIDE.iter().map(|s| {
        s.parse::<IpAddr>()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }));
    v.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    v.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    v
}

fn prefix_for(addr: IpAddr, pick: usize) -> u8 {
    const V4: [u8; 9] = [32, 31, 30, 29, 28, 24, 16, 8, 0];
    const V6: [u8; 9] = [128, 127, 126, 125, 124, 120, 64, 48, 0];
    if addr.is_ipv4() {
        V4[pick % V4.len()]
    } else {
        V6[pick % V6.len()]
    }
}

fn make_net(addr: IpAddr, prefix: u8) -> Option<IpNet> {
    IpNet::new(addr, prefix).ok().map(|n| n.trunc())
}

/// An ipBlock: a CIDR around a planned address, minus 0-2 excepts inside it. Excepts are cut
/// around the same base (so the base address itself is excluded), around a neighbour, or equal
/// the CIDR (a block that matches nothing).
pub fn ip_block() -> impl Strategy<Value = IpBlock> {
    let bases = block_bases();
    (
        select(bases.clone()),
        0usize..9,
        vec((select(bases), 0u8..=8, any::<bool>()), 0..=2),
    )
        .prop_map(|(base, pick, excepts)| {
            let prefix = prefix_for(base, pick);
            let cidr = make_net(base, prefix).unwrap_or_else(|| IpNet::from(base));
            let max = if base.is_ipv4() { 32 } else { 128 };
            let mut except: Vec<IpNet> = excepts
                .into_iter()
                .filter_map(|(other, extra, same_base)| {
                    let at = if same_base { base } else { other };
                    let len = prefix.saturating_add(extra).min(max);
                    make_net(at, len)
                })
                .filter(|e| cidr.contains(e))
                .collect();
            except.sort();
            except.dedup();
            IpBlock { cidr, except }
        })
}

// ---------------------------------------------------------------------------------------------
// Rules and policies

#[derive(Debug, Clone)]
enum PeerSpec {
    SameNs(Selector),
    Ns(Selector),
    NsAndPods(Selector, Selector),
    Block(IpBlock),
}

fn peer_spec() -> impl Strategy<Value = PeerSpec> {
    prop_oneof![
        3 => pod_selector().prop_map(PeerSpec::SameNs),
        2 => namespace_selector().prop_map(PeerSpec::Ns),
        2 => (namespace_selector(), pod_selector()).prop_map(|(n, p)| PeerSpec::NsAndPods(n, p)),
        3 => ip_block().prop_map(PeerSpec::Block),
    ]
}

/// Port ranges (`port`..`endPort`) around the planned port numbers.
const RANGES: [(u16, u16); 5] = [
    (8000, 8080),
    (53, 53),
    (1, 1024),
    (9000, 9100),
    (5353, 8080),
];
/// Single port numbers.
const NUMBERS: [u16; 6] = [53, 80, 443, 8080, 9090, 5353];

pub fn port() -> impl Strategy<Value = Port> {
    let protocol =
        prop_oneof![4 => Just(Protocol::Tcp), 2 => Just(Protocol::Udp), 1 => Just(Protocol::Sctp)];
    let what = prop_oneof![
        3 => select(&NUMBERS[..]).prop_map(|p| PortMatch::Range(p, p)),
        2 => select(&RANGES[..]).prop_map(|(a, b)| PortMatch::Range(a, b)),
        3 => select(&PORT_NAMES[..]).prop_map(|n| PortMatch::Named(n.into())),
        1 => Just(PortMatch::All),
    ];
    (protocol, what).prop_map(|(protocol, port)| Port { protocol, port })
}

#[derive(Debug, Clone)]
struct RuleSpec {
    peers: Option<Vec<PeerSpec>>,
    ports: Option<Vec<Port>>,
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    (
        prop::option::weighted(0.75, vec(peer_spec(), 1..=3)),
        prop::option::weighted(0.7, vec(port(), 1..=3)),
    )
        .prop_map(|(peers, ports)| RuleSpec { peers, ports })
}

#[derive(Debug, Clone)]
struct PolicySpec {
    ns: usize,
    selector: Selector,
    ingress: Option<Vec<RuleSpec>>,
    egress: Option<Vec<RuleSpec>>,
}

fn policy_spec() -> impl Strategy<Value = PolicySpec> {
    let rules = || vec(rule_spec(), 0..=3);
    let directions = prop_oneof![
        4 => rules().prop_map(|i| (Some(i), None)),
        2 => rules().prop_map(|e| (None, Some(e))),
        3 => (rules(), rules()).prop_map(|(i, e)| (Some(i), Some(e))),
    ];
    let selector = prop_oneof![1 => Just(Selector::everything()), 2 => pod_selector()];
    (namespace_choice(), selector, directions).prop_map(|(ns, selector, (ingress, egress))| {
        PolicySpec {
            ns,
            selector,
            ingress,
            egress,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Assembly

fn namespace(name: &str, labels: &[Option<usize>]) -> Namespace {
    let mut l = Labels::new([(NAMESPACE_NAME_LABEL, name)]);
    for (k, v) in NS_KEYS.iter().zip(labels) {
        if let Some(v) = v {
            l = l.with(*k, NS_VALUES[*v]);
        }
    }
    Namespace {
        name: name.into(),
        labels: l,
    }
}

fn assemble(
    n_nodes: usize,
    ns_labels: Vec<Vec<Option<usize>>>,
    pods: Vec<PodSpec>,
    policies: Vec<PolicySpec>,
) -> Cluster {
    let namespaces: Vec<Namespace> = ns_labels
        .iter()
        .enumerate()
        .map(|(i, l)| namespace(NAMESPACES[i], l))
        .collect();
    let nodes: Vec<Node> = (0..n_nodes)
        .map(|i| Node {
            name: format!("n{i}").into(),
            labels: Labels::empty(),
            addresses: vec![node_v4(i), node_v6(i)],
            // No pod ranges: the unknown-address guard they enable has no counterpart in the
            // evaluator (an address no pod holds is just an address there).
            pod_cidrs: Vec::new(),
        })
        .collect();

    let mut per_node = vec![0usize; n_nodes];
    let mut out_pods: Vec<Pod> = Vec::new();
    for (idx, spec) in pods.iter().enumerate() {
        let ns = NAMESPACES[spec.ns % namespaces.len()];
        let node = spec.node.index(n_nodes);
        let mut labels = Labels::empty();
        for (k, v) in POD_KEYS.iter().zip(&spec.labels) {
            if let Some(v) = v {
                labels = labels.with(*k, POD_VALUES[*v]);
            }
        }
        let named_ports = spec
            .named
            .iter()
            .zip(PORT_NAMES)
            .filter_map(|(choice, name)| {
                choice.map(|(protocol, port)| NamedPort {
                    name: name.into(),
                    protocol,
                    port,
                })
            })
            .collect();
        let own_ips = |j: usize| -> Vec<IpAddr> {
            match spec.family {
                Family::V4 => vec![pod_v4(node, j)],
                Family::V6 => vec![pod_v6(node, j)],
                Family::Dual => vec![pod_v4(node, j), pod_v6(node, j)],
            }
        };
        let node_ips = || -> Vec<IpAddr> {
            match spec.family {
                Family::V4 => vec![node_v4(node)],
                Family::V6 => vec![node_v6(node)],
                Family::Dual => vec![node_v4(node), node_v6(node)],
            }
        };
        let mut fresh = || {
            let j = per_node[node];
            per_node[node] += 1;
            own_ips(j)
        };
        let (phase, host_network, ips, node_name) = match spec.kind {
            Kind::Running => (PodPhase::Running, false, fresh(), Some(node)),
            Kind::PendingWithIp => (PodPhase::Pending, false, fresh(), Some(node)),
            Kind::Unknown => (PodPhase::Unknown, false, fresh(), Some(node)),
            Kind::HostNetwork => (PodPhase::Running, true, node_ips(), Some(node)),
            Kind::NoIp => (PodPhase::Pending, false, Vec::new(), None),
            Kind::Terminal { failed, reuse } => {
                let phase = if failed {
                    PodPhase::Failed
                } else {
                    PodPhase::Succeeded
                };
                // Reuse the address of an earlier relevant pod, if any; else a fresh one.
                let earlier: Vec<&Pod> =
                    out_pods.iter().filter(|p| p.is_policy_relevant()).collect();
                let ips = match reuse {
                    Some(i) if !earlier.is_empty() => earlier[i.index(earlier.len())].ips.clone(),
                    _ => fresh(),
                };
                (phase, false, ips, Some(node))
            }
        };
        out_pods.push(Pod {
            namespace: ns.into(),
            name: format!("pod-{idx}").into(),
            labels,
            node_name: node_name.map(|n| Str::from(format!("n{n}"))),
            host_network,
            named_ports,
            ips,
            phase,
        });
    }

    let out_policies = policies
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let ns: Str = NAMESPACES[spec.ns % namespaces.len()].into();
            let rules = |specs: Option<Vec<RuleSpec>>| {
                specs.map(|rs| {
                    rs.into_iter()
                        .map(|r| Rule {
                            peers: r
                                .peers
                                .map(|ps| ps.into_iter().map(|p| peer(&ns, p)).collect()),
                            ports: r.ports,
                        })
                        .collect()
                })
            };
            NetworkPolicy {
                namespace: ns.clone(),
                name: format!("np-{i}").into(),
                pod_selector: spec.selector,
                ingress: rules(spec.ingress),
                egress: rules(spec.egress),
            }
        })
        .collect();

    Cluster {
        namespaces,
        nodes,
        pods: out_pods,
        policies: out_policies,
    }
}

fn peer(ns: &Str, spec: PeerSpec) -> Peer {
    match spec {
        PeerSpec::SameNs(pods) => Peer::Pods {
            namespaces: Namespaces::Named(ns.clone()),
            pods,
        },
        PeerSpec::Ns(n) => Peer::Pods {
            namespaces: Namespaces::Matching(n),
            pods: Selector::everything(),
        },
        PeerSpec::NsAndPods(n, pods) => Peer::Pods {
            namespaces: Namespaces::Matching(n),
            pods,
        },
        PeerSpec::Block(b) => Peer::IpBlock(b),
    }
}

/// A small random cluster: 1-3 nodes, 1-4 namespaces, 1-10 pods, 0-6 policies.
pub fn cluster() -> impl Strategy<Value = Cluster> {
    (1usize..=3, 1usize..=4)
        .prop_flat_map(|(n_nodes, n_ns)| {
            (
                Just(n_nodes),
                vec(
                    vec(
                        prop::option::weighted(0.6, 0..NS_VALUES.len()),
                        NS_KEYS.len(),
                    ),
                    n_ns,
                ),
                vec(pod_spec(), 1..=10),
                prop_oneof![1 => vec(policy_spec(), 0..=1), 4 => vec(policy_spec(), 2..=6)],
            )
        })
        .prop_map(|(n_nodes, ns_labels, pods, policies)| {
            assemble(n_nodes, ns_labels, pods, policies)
        })
}

// ---------------------------------------------------------------------------------------------
// Probes

/// Addresses at and around the edges of every ipBlock CIDR and except of the cluster.
pub fn block_edges(cluster: &Cluster) -> Vec<IpAddr> {
    let mut out = BTreeSet::new();
    let mut add = |n: &IpNet| {
        let (first, last) = (n.network(), n.broadcast());
        out.insert(first);
        out.insert(last);
        if let Some(a) = step(first, -1) {
            out.insert(a);
        }
        if let Some(a) = step(last, 1) {
            out.insert(a);
        }
    };
    for p in &cluster.policies {
        for rules in [&p.ingress, &p.egress].into_iter().flatten() {
            for r in rules {
                for peer in r.peers.iter().flatten() {
                    if let Peer::IpBlock(b) = peer {
                        add(&b.cidr);
                        b.except.iter().for_each(&mut add);
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

fn step(ip: IpAddr, by: i8) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => {
            let n = u32::from(a);
            let n = if by < 0 {
                n.checked_sub(1)?
            } else {
                n.checked_add(1)?
            };
            Some(IpAddr::V4(Ipv4Addr::from(n)))
        }
        IpAddr::V6(a) => {
            let n = u128::from(a);
            let n = if by < 0 {
                n.checked_sub(1)?
            } else {
                n.checked_add(1)?
            };
            Some(IpAddr::V6(Ipv6Addr::from(n)))
        }
    }
}

/// Ports worth probing in this cluster: both ends of every range and one beyond each (the
/// first list), every single number policies name, every named port number pods declare, and
/// 443 (the second list).
pub fn interesting_ports(cluster: &Cluster) -> (Vec<u16>, Vec<u16>) {
    let mut edges: BTreeSet<u16> = BTreeSet::new();
    let mut others: BTreeSet<u16> = BTreeSet::from([443]);
    for p in &cluster.policies {
        for rules in [&p.ingress, &p.egress].into_iter().flatten() {
            for r in rules {
                for port in r.ports.iter().flatten() {
                    match port.port {
                        PortMatch::Range(a, b) if a == b => {
                            others.insert(a);
                        }
                        PortMatch::Range(a, b) => {
                            edges.extend([a, b]);
                            edges.extend(a.checked_sub(1));
                            edges.extend(b.checked_add(1));
                        }
                        PortMatch::Named(_) | PortMatch::All => {}
                    }
                }
            }
        }
    }
    for pod in &cluster.pods {
        others.extend(pod.named_ports.iter().map(|n| n.port));
    }
    edges.remove(&0);
    others.remove(&0);
    (edges.into_iter().collect(), others.into_iter().collect())
}

/// Probes for one cluster: both ends from the same family, mostly pod addresses (any pod's,
/// including terminal and hostNetwork ones), else nodes, outside addresses and ipBlock edges.
pub fn probe(cluster: &Cluster) -> BoxedStrategy<Probe> {
    let mut pods: BTreeSet<IpAddr> = BTreeSet::new();
    for p in &cluster.pods {
        pods.extend(p.ips.iter().copied());
    }
    let mut others: BTreeSet<IpAddr> = BTreeSet::new();
    for n in &cluster.nodes {
        others.extend(n.addresses.iter().copied());
    }
    others.extend(OUTSIDE.iter().filter_map(|s| s.parse::<IpAddr>().ok()));
    others.extend(block_edges(cluster));
    let ports: BoxedStrategy<u16> = match interesting_ports(cluster) {
        (edges, others) if edges.is_empty() => select(others).boxed(),
        (edges, others) => prop_oneof![select(edges), select(others)].boxed(),
    };
    let for_family = |v4: bool| -> Option<BoxedStrategy<Probe>> {
        let p: Vec<IpAddr> = pods.iter().copied().filter(|a| a.is_ipv4() == v4).collect();
        let o: Vec<IpAddr> = others
            .iter()
            .copied()
            .filter(|a| a.is_ipv4() == v4)
            .collect();
        if p.is_empty() && o.is_empty() {
            return None;
        }
        let icmp = if v4 { proto::ICMP } else { proto::ICMPV6 };
        let l4 = prop_oneof![
            4 => Just(proto::TCP),
            2 => Just(proto::UDP),
            1 => Just(proto::SCTP),
            1 => Just(icmp),
        ];
        let end = || (prop::bool::weighted(0.75), any::<Index>());
        let same = prop::bool::weighted(0.05);
        Some(
            (end(), end(), same, l4, ports.clone())
                .prop_map(move |(src, dst, same, proto, port)| {
                    let src = pick(&p, &o, src);
                    let mut dst = pick(&p, &o, dst);
                    if dst == src && !same {
                        dst = next_address(&p, &o, dst);
                    }
                    Probe {
                        src,
                        dst,
                        proto,
                        port: (proto != icmp).then_some(port),
                    }
                })
                .boxed(),
        )
    };
    match (for_family(true), for_family(false)) {
        (Some(a), Some(b)) => prop_oneof![2 => a, 1 => b].boxed(),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        // Unreachable: OUTSIDE holds both families.
        (None, None) => Just(Probe {
            src: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dst: IpAddr::V4(Ipv4Addr::LOCALHOST),
            proto: proto::TCP,
            port: Some(80),
        })
        .boxed(),
    }
}

/// An address from the pod pool (when asked and non-empty) or the other pool.
fn pick(pods: &[IpAddr], others: &[IpAddr], (from_pods, i): (bool, Index)) -> IpAddr {
    let pool = if (from_pods && !pods.is_empty()) || others.is_empty() {
        pods
    } else {
        others
    };
    pool[i.index(pool.len())]
}

/// The address after `a` in pods-then-others order (wrapping), to avoid talking to oneself.
fn next_address(pods: &[IpAddr], others: &[IpAddr], a: IpAddr) -> IpAddr {
    let all: Vec<IpAddr> = pods.iter().chain(others).copied().collect();
    let at = all.iter().position(|x| *x == a).unwrap_or(0);
    all[(at + 1) % all.len()]
}

/// A cluster with `probes` probes about it.
pub fn cluster_and_probes(
    probes: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = (Cluster, Vec<Probe>)> {
    cluster().prop_flat_map(move |c| {
        let p = vec(probe(&c), probes.clone());
        (Just(c), p)
    })
}
