//! Fixture builders that read like sentences, producing the validated core types directly.
//!
//! ```ignore
//! let c = cluster()
//!     .ns(ns("prod").label("team", "a"))
//!     .node(node("n1").ip("192.168.1.10"))
//!     .pod(pod("prod", "web-1").label("app", "web").ip("10.244.1.5").node("n1")
//!         .named_port("http", Tcp, 8080))
//!     .policy(policy("prod", "allow-web").select(sel!("app" = "web"))
//!         .ingress_rule(allow().from(pods(sel!("role" = "client"))).port(tcp_named("http"))))
//!     .build();
//! ```
//!
//! No YAML and no conversion: what a test states is exactly what the compiler and the
//! evaluator get. Policies are built in their validated shape (see `core::policy`): a policy
//! isolates a direction only when a rule is added for it or `deny_ingress`/`deny_egress` is
//! called, so "policyTypes: [Egress]" is simply a policy with no ingress rules.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use nftpol::core::cluster::{
    Labels, NAMESPACE_NAME_LABEL, NamedPort, Namespace, Node, Pod, PodPhase, Protocol, Str,
};
use nftpol::core::eval::Cluster;
use nftpol::core::policy::{IpBlock, Namespaces, NetworkPolicy, Peer, Port, PortMatch, Rule};
use nftpol::core::selector::{Operator, Requirement, Selector};

/// Parses an address; panics on a typo (tests only).
pub fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad address {s:?} in test: {e}"))
}

/// Parses a CIDR and clears its host bits.
pub fn net(s: &str) -> IpNet {
    s.parse::<IpNet>()
        .unwrap_or_else(|e| panic!("bad CIDR {s:?} in test: {e}"))
        .trunc()
}

// ---------------------------------------------------------------------------------------------
// Selectors

/// `key In (values)`.
pub fn key_in<const N: usize>(key: &str, values: [&str; N]) -> Requirement {
    Requirement {
        key: key.into(),
        operator: Operator::In,
        values: values.iter().map(|v| Str::from(*v)).collect(),
    }
}

/// `key NotIn (values)`.
pub fn key_not_in<const N: usize>(key: &str, values: [&str; N]) -> Requirement {
    Requirement {
        key: key.into(),
        operator: Operator::NotIn,
        values: values.iter().map(|v| Str::from(*v)).collect(),
    }
}

/// `key Exists`.
pub fn key_exists(key: &str) -> Requirement {
    Requirement {
        key: key.into(),
        operator: Operator::Exists,
        values: BTreeSet::new(),
    }
}

/// `key DoesNotExist`.
pub fn key_absent(key: &str) -> Requirement {
    Requirement {
        key: key.into(),
        operator: Operator::DoesNotExist,
        values: BTreeSet::new(),
    }
}

/// A label selector in a kubectl-like syntax:
/// `sel!()` (everything), `sel!("app" = "web", "tier" in ["a", "b"], "env" notin ["dev"],
/// exists "team", !"legacy")`.
#[macro_export]
macro_rules! sel {
    () => { ::nftpol::core::selector::Selector::everything() };
    ($($t:tt)+) => { $crate::sel_reqs!([] $($t)+) };
}

/// Implementation detail of `sel!`: munches one requirement at a time into the accumulator.
#[macro_export]
macro_rules! sel_reqs {
    ([$($acc:expr),*]) => { ::nftpol::core::selector::Selector::new([$($acc),*]) };
    ([$($acc:expr),*] $k:literal = $val:literal $(, $($rest:tt)*)?) => {
        $crate::sel_reqs!([$($acc,)* $crate::common::fixtures::key_in($k, [$val])] $($($rest)*)?)
    };
    ([$($acc:expr),*] $k:literal in [$($val:literal),* $(,)?] $(, $($rest:tt)*)?) => {
        $crate::sel_reqs!([$($acc,)* $crate::common::fixtures::key_in($k, [$($val),*])] $($($rest)*)?)
    };
    ([$($acc:expr),*] $k:literal notin [$($val:literal),* $(,)?] $(, $($rest:tt)*)?) => {
        $crate::sel_reqs!([$($acc,)* $crate::common::fixtures::key_not_in($k, [$($val),*])] $($($rest)*)?)
    };
    ([$($acc:expr),*] exists $k:literal $(, $($rest:tt)*)?) => {
        $crate::sel_reqs!([$($acc,)* $crate::common::fixtures::key_exists($k)] $($($rest)*)?)
    };
    ([$($acc:expr),*] ! $k:literal $(, $($rest:tt)*)?) => {
        $crate::sel_reqs!([$($acc,)* $crate::common::fixtures::key_absent($k)] $($($rest)*)?)
    };
}

// ---------------------------------------------------------------------------------------------
// Namespaces, nodes, pods

/// A namespace; it carries `kubernetes.io/metadata.name` like every real one.
pub fn ns(name: &str) -> NsBuilder {
    NsBuilder(Namespace {
        name: name.into(),
        labels: Labels::new([(NAMESPACE_NAME_LABEL, name)]),
    })
}

#[derive(Debug, Clone)]
pub struct NsBuilder(Namespace);

impl NsBuilder {
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.labels = self.0.labels.with(key, value);
        self
    }

    pub fn build(self) -> Namespace {
        self.0
    }
}

impl From<NsBuilder> for Namespace {
    fn from(b: NsBuilder) -> Namespace {
        b.0
    }
}

/// A node with no addresses yet.
pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder(Node {
        name: name.into(),
        labels: Labels::empty(),
        addresses: Vec::new(),
        pod_cidrs: Vec::new(),
    })
}

#[derive(Debug, Clone)]
pub struct NodeBuilder(Node);

impl NodeBuilder {
    pub fn ip(mut self, addr: &str) -> Self {
        self.0.addresses.push(ip(addr));
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.labels = self.0.labels.with(key, value);
        self
    }

    pub fn pod_cidr(mut self, cidr: &str) -> Self {
        self.0.pod_cidrs.push(net(cidr));
        self
    }

    pub fn build(self) -> Node {
        self.0
    }
}

impl From<NodeBuilder> for Node {
    fn from(b: NodeBuilder) -> Node {
        b.0
    }
}

/// A Running pod with no labels, no IPs and no node yet.
pub fn pod(namespace: &str, name: &str) -> PodBuilder {
    PodBuilder(Pod {
        namespace: namespace.into(),
        name: name.into(),
        labels: Labels::empty(),
        node_name: None,
        host_network: false,
        named_ports: Vec::new(),
        ips: Vec::new(),
        phase: PodPhase::Running,
    })
}

#[derive(Debug, Clone)]
pub struct PodBuilder(Pod);

impl PodBuilder {
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.labels = self.0.labels.with(key, value);
        self
    }

    /// Adds a `status.podIPs` entry (call twice for dual-stack).
    pub fn ip(mut self, addr: &str) -> Self {
        self.0.ips.push(ip(addr));
        self
    }

    pub fn node(mut self, name: &str) -> Self {
        self.0.node_name = Some(name.into());
        self
    }

    pub fn named_port(mut self, name: &str, protocol: Protocol, port: u16) -> Self {
        self.0.named_ports.push(NamedPort {
            name: name.into(),
            protocol,
            port,
        });
        self
    }

    /// `spec.hostNetwork: true`; give it its node's addresses with `ip`.
    pub fn host_network(mut self) -> Self {
        self.0.host_network = true;
        self
    }

    pub fn phase(mut self, phase: PodPhase) -> Self {
        self.0.phase = phase;
        self
    }

    pub fn build(self) -> Pod {
        self.0
    }
}

impl From<PodBuilder> for Pod {
    fn from(b: PodBuilder) -> Pod {
        b.0
    }
}

// ---------------------------------------------------------------------------------------------
// Policies

/// A policy selecting every pod of its namespace and isolating nothing yet.
pub fn policy(namespace: &str, name: &str) -> PolicyBuilder {
    PolicyBuilder(NetworkPolicy {
        namespace: namespace.into(),
        name: name.into(),
        pod_selector: Selector::everything(),
        ingress: None,
        egress: None,
    })
}

#[derive(Debug, Clone)]
pub struct PolicyBuilder(NetworkPolicy);

impl PolicyBuilder {
    /// `spec.podSelector`.
    pub fn select(mut self, selector: Selector) -> Self {
        self.0.pod_selector = selector;
        self
    }

    /// Isolates ingress (if not already) and adds a rule.
    pub fn ingress_rule(mut self, rule: RuleBuilder) -> Self {
        let rule = rule.resolve(&self.0.namespace);
        self.0.ingress.get_or_insert_with(Vec::new).push(rule);
        self
    }

    /// Isolates egress (if not already) and adds a rule.
    pub fn egress_rule(mut self, rule: RuleBuilder) -> Self {
        let rule = rule.resolve(&self.0.namespace);
        self.0.egress.get_or_insert_with(Vec::new).push(rule);
        self
    }

    /// Isolates ingress without adding rules (`policyTypes: [Ingress]`, no `ingress`).
    pub fn deny_ingress(mut self) -> Self {
        self.0.ingress.get_or_insert_with(Vec::new);
        self
    }

    /// Isolates egress without adding rules (`policyTypes: [Egress]`, no `egress`).
    pub fn deny_egress(mut self) -> Self {
        self.0.egress.get_or_insert_with(Vec::new);
        self
    }

    pub fn build(self) -> NetworkPolicy {
        self.0
    }
}

impl From<PolicyBuilder> for NetworkPolicy {
    fn from(b: PolicyBuilder) -> NetworkPolicy {
        b.0
    }
}

/// A rule that allows every peer on every port; narrow it with `from`/`to` and `port`.
pub fn allow() -> RuleBuilder {
    RuleBuilder {
        peers: None,
        ports: None,
    }
}

#[derive(Debug, Clone)]
pub struct RuleBuilder {
    peers: Option<Vec<PeerBuilder>>,
    ports: Option<Vec<Port>>,
}

impl RuleBuilder {
    /// Adds a peer (an element of `from`).
    pub fn from(self, peer: PeerBuilder) -> Self {
        self.peer(peer)
    }

    /// Adds a peer (an element of `to`).
    pub fn to(self, peer: PeerBuilder) -> Self {
        self.peer(peer)
    }

    pub fn peer(mut self, peer: PeerBuilder) -> Self {
        self.peers.get_or_insert_with(Vec::new).push(peer);
        self
    }

    /// Adds an element of `ports`.
    pub fn port(mut self, port: Port) -> Self {
        self.ports.get_or_insert_with(Vec::new).push(port);
        self
    }

    fn resolve(self, namespace: &Str) -> Rule {
        Rule {
            peers: self
                .peers
                .map(|ps| ps.into_iter().map(|p| p.resolve(namespace)).collect()),
            ports: self.ports,
        }
    }
}

/// A `from`/`to` element, resolved against the policy's namespace when added to a policy.
#[derive(Debug, Clone)]
pub enum PeerBuilder {
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    Block(IpBlock),
}

impl PeerBuilder {
    /// Adds a `podSelector` next to a `namespaceSelector` (one peer: both must match).
    pub fn pods(self, selector: Selector) -> Self {
        match self {
            PeerBuilder::Pods { namespaces, .. } => PeerBuilder::Pods {
                namespaces,
                pods: selector,
            },
            PeerBuilder::Block(_) => panic!("an ipBlock peer cannot have a podSelector"),
        }
    }

    /// Adds an `except` to an `ipBlock`.
    pub fn except(self, cidr: &str) -> Self {
        match self {
            PeerBuilder::Block(mut b) => {
                b.except.push(net(cidr));
                b.except.sort();
                b.except.dedup();
                PeerBuilder::Block(b)
            }
            PeerBuilder::Pods { .. } => panic!("only an ipBlock peer has excepts"),
        }
    }

    fn resolve(self, namespace: &Str) -> Peer {
        match self {
            PeerBuilder::Pods { namespaces, pods } => Peer::Pods {
                namespaces: match namespaces {
                    Some(sel) => Namespaces::Matching(sel),
                    None => Namespaces::Named(namespace.clone()),
                },
                pods,
            },
            PeerBuilder::Block(b) => Peer::IpBlock(b),
        }
    }
}

/// `podSelector` alone: pods of the policy's own namespace.
pub fn pods(selector: Selector) -> PeerBuilder {
    PeerBuilder::Pods {
        namespaces: None,
        pods: selector,
    }
}

/// `namespaceSelector` alone: every pod of the matching namespaces (add `.pods(..)` for both).
pub fn namespaces(selector: Selector) -> PeerBuilder {
    PeerBuilder::Pods {
        namespaces: Some(selector),
        pods: Selector::everything(),
    }
}

/// `ipBlock` with this CIDR (add `.except(..)`).
pub fn ip_block(cidr: &str) -> PeerBuilder {
    PeerBuilder::Block(IpBlock {
        cidr: net(cidr),
        except: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// Ports

pub fn port(protocol: Protocol, number: u16) -> Port {
    Port {
        protocol,
        port: PortMatch::Range(number, number),
    }
}

/// `port` with `endPort`: inclusive.
pub fn port_range(protocol: Protocol, first: u16, last: u16) -> Port {
    Port {
        protocol,
        port: PortMatch::Range(first, last),
    }
}

pub fn named(protocol: Protocol, name: &str) -> Port {
    Port {
        protocol,
        port: PortMatch::Named(name.into()),
    }
}

/// A protocol without `port`: every port of it.
pub fn all_ports(protocol: Protocol) -> Port {
    Port {
        protocol,
        port: PortMatch::All,
    }
}

pub fn tcp(number: u16) -> Port {
    port(Protocol::Tcp, number)
}

pub fn udp(number: u16) -> Port {
    port(Protocol::Udp, number)
}

pub fn sctp(number: u16) -> Port {
    port(Protocol::Sctp, number)
}

pub fn tcp_named(name: &str) -> Port {
    named(Protocol::Tcp, name)
}

// ---------------------------------------------------------------------------------------------
// Cluster

pub fn cluster() -> ClusterBuilder {
    ClusterBuilder(Cluster::default())
}

#[derive(Debug, Clone)]
pub struct ClusterBuilder(Cluster);

impl ClusterBuilder {
    pub fn ns(mut self, ns: impl Into<Namespace>) -> Self {
        self.0.namespaces.push(ns.into());
        self
    }

    pub fn node(mut self, node: impl Into<Node>) -> Self {
        self.0.nodes.push(node.into());
        self
    }

    pub fn pod(mut self, pod: impl Into<Pod>) -> Self {
        self.0.pods.push(pod.into());
        self
    }

    pub fn policy(mut self, policy: impl Into<NetworkPolicy>) -> Self {
        self.0.policies.push(policy.into());
        self
    }

    pub fn build(self) -> Cluster {
        self.0
    }
}

impl From<ClusterBuilder> for Cluster {
    fn from(b: ClusterBuilder) -> Cluster {
        b.0
    }
}
