//! The reference evaluator: what Kubernetes says about one connection, written straight from
//! the documentation, with no indexes and no cleverness.
//!
//! It exists to be the oracle. Property tests compile a random cluster into an nftables table,
//! trace packets through it (`nft::trace`) and compare every answer with [`verdict`]. So this
//! module must stay obviously correct rather than fast: every function is a linear scan over
//! the snapshot that a reader can check against the sentences quoted below.
//!
//! Sources: <https://kubernetes.io/docs/concepts/services-networking/network-policies/> ("the
//! concept page") and the NetworkPolicy v1 API reference ("the API reference").
//!
//! # The rules, with the sentences they come from
//!
//! 1. **Isolation per direction.** "A pod is isolated for egress if there is any
//!    NetworkPolicy that both selects the pod and has "Egress" in its `policyTypes`" (and the
//!    same for ingress). A policy selects the pods *of its own namespace* whose labels match
//!    its `podSelector` ("An empty `podSelector` selects all pods in the namespace"). The
//!    validated [`NetworkPolicy`] has `ingress`/`egress` set to `Some` exactly when that
//!    direction is in the (defaulted) `policyTypes`.
//! 2. **Union.** "If any policy or policies apply to a given pod for a given direction, the
//!    connections allowed in that direction from that pod is the union of what the applicable
//!    policies allow." A policy with `Some(vec![])` isolates and allows nothing.
//! 3. **Both ends.** "For a connection from a source pod to a destination pod to be allowed,
//!    both the egress policy on the source pod and the ingress policy on the destination pod
//!    need to allow the connection." An end that is not a pod (a node, an external address)
//!    has no policy and never restricts.
//! 4. **A rule** "allows traffic which matches both the `from` and `ports` sections"; peers
//!    are ORed, ports are ORed; `peers: None` / `ports: None` mean every peer / every port
//!    ("If this field is empty or missing, this rule matches all sources").
//! 5. **Peers.** A pod peer with [`Namespaces::Named`] selects "the Pods matching PodSelector
//!    in the policy's own Namespace"; with [`Namespaces::Matching`] "the Pods matching
//!    PodSelector in the Namespaces selected by NamespaceSelector". An `ipBlock` matches by
//!    address alone: `cidr` minus every `except`, whatever the address belongs to (a pod, a
//!    node, the outside world); an address of the other family never matches.
//! 6. **Ports.** "If present, only traffic on the specified protocol AND port will be
//!    matched"; "If this field is not provided, this matches all port names and numbers" (of
//!    the protocol); `endPort` gives "the range of ports from port to endPort, inclusive". A
//!    named port "can either be a numerical or named port on a pod": it is resolved on the
//!    pod that *receives* the connection, i.e. the selected pod for ingress and the
//!    destination (peer) pod for egress. A destination that is not a (policy-relevant) pod, or
//!    has no container port of that name *and* protocol, matches nothing.
//! 7. **Other protocols.** "NetworkPolicy is defined for layer 4 connections (TCP, UDP, and
//!    optionally SCTP). For all the other protocols, the behaviour may vary". nftpol's choice:
//!    a protocol other than TCP/UDP/SCTP (ICMP, ICMPv6, ...) is allowed only by a rule whose
//!    `ports` is `None` (all ports of all protocols); a ports list never matches it.
//! 8. **The node exception.** "the only allowed connections into the pod are those from the
//!    pod's node and those allowed by the `ingress` list"; the API reference: "OR if the
//!    traffic source is the pod's local node". A connection whose source address is one of
//!    the `status.addresses` of the destination pod's node (kubelet probes, hostNetwork pods
//!    there) is always allowed. The concept page's overview also says "traffic to and from the
//!    node where a Pod is running is always allowed", but the normative egress sentence ("the
//!    only allowed connections from the pod are those allowed by the `egress` list") has no
//!    such exception, so egress from a pod to its own node *is* subject to its egress policy.
//! 9. **Self.** "a pod cannot block access to itself": a connection between two addresses of
//!    the same pod is always allowed (it never leaves the pod's network namespace).
//! 10. **Which pods count.** Only pods for which [`Pod::is_policy_relevant`] holds (they have
//!     IPs, are not Succeeded/Failed, do not use the host network) are selected by a policy or
//!     matched as pod peers. An address is mapped to a pod through every entry of its
//!     `status.podIPs` (dual-stack pods have one per family), considering relevant pods only;
//!     a terminal pod's old address is just an address (ipBlocks still see it).
//! 11. **hostNetwork pods.** "it ignores `hostNetwork` pods when matching `podSelector` and
//!     `namespaceSelector`. Traffic to/from `hostNetwork` pods is treated the same as all other
//!     traffic to/from the node IP" and "you can allow traffic from a `hostNetwork` Pod using
//!     an `ipBlock` rule". So hostNetwork pods are never isolated, never pod peers, and their
//!     addresses (which are their node's) are node addresses.
//!
//! A namespace that a pod names but the snapshot lacks is treated as carrying only its
//! `kubernetes.io/metadata.name` label (as `core::convert` would give it). When several rules
//! allow a connection, the one reported is the first in (namespace, policy name, rule index)
//! order, the order in which the compiled table labels its map elements.

use std::fmt;
use std::net::IpAddr;

use super::cluster::{Labels, NAMESPACE_NAME_LABEL, Namespace, Node, ObjectKey, Pod};
use super::policy::{Direction, Namespaces, NetworkPolicy, Peer, Port, PortMatch, Rule};

/// A cluster snapshot: everything the evaluator looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
}

/// What an address stands for in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// A policy-relevant pod that has this address.
    Pod(&'a Pod),
    /// A node that has this address (hostNetwork pods use these too).
    Node(&'a Node),
    /// Anything else: outside the cluster, or an address no relevant pod holds any more.
    External,
}

impl Cluster {
    /// The policy-relevant pod that holds `ip`, if any (the first one in snapshot order).
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.is_policy_relevant() && p.ips.contains(&ip))
    }

    /// The node that has `ip` among its addresses, if any.
    pub fn node_by_ip(&self, ip: IpAddr) -> Option<&Node> {
        self.nodes.iter().find(|n| n.addresses.contains(&ip))
    }

    /// Classifies an address: pod first, then node, else external.
    pub fn endpoint(&self, ip: IpAddr) -> Endpoint<'_> {
        if let Some(pod) = self.pod_by_ip(ip) {
            Endpoint::Pod(pod)
        } else if let Some(node) = self.node_by_ip(ip) {
            Endpoint::Node(node)
        } else {
            Endpoint::External
        }
    }

    /// Labels of a namespace; a namespace missing from the snapshot carries only its name label.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        match self.namespaces.iter().find(|n| n.name.as_ref() == name) {
            Some(ns) => ns.labels.clone(),
            None => Labels::new([(NAMESPACE_NAME_LABEL, name)]),
        }
    }

    /// Policies that apply to `pod` for `direction`, ordered by name. Empty when the pod is not
    /// isolated for that direction (including every pod that is not policy-relevant).
    pub fn applicable_policies(&self, pod: &Pod, direction: Direction) -> Vec<&NetworkPolicy> {
        if !pod.is_policy_relevant() {
            return Vec::new();
        }
        let mut out: Vec<&NetworkPolicy> = self
            .policies
            .iter()
            .filter(|p| p.namespace == pod.namespace)
            .filter(|p| p.pod_selector.matches(&pod.labels))
            .filter(|p| p.rules(direction).is_some())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Whether `pod` is isolated for `direction`.
    pub fn is_isolated(&self, pod: &Pod, direction: Direction) -> bool {
        !self.applicable_policies(pod, direction).is_empty()
    }
}

/// One rule of one policy: `namespace/policy direction rule index`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub policy: ObjectKey,
    pub direction: Direction,
    /// Position of the rule in the policy's `ingress` or `egress` list.
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} rule {}", self.policy, self.direction, self.index)
    }
}

/// The outcome of one direction's check (egress at the source or ingress at the destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// This end is not a policy-relevant pod: nothing to check.
    NotAPod,
    /// This end is a pod that no policy isolates for the direction.
    NotIsolated(ObjectKey),
    /// The pod is isolated and this rule (the first that matches) allows the connection.
    AllowedBy { pod: ObjectKey, rule: RuleRef },
    /// The pod is isolated by these policies and none of their rules allows the connection.
    Denied {
        pod: ObjectKey,
        policies: Vec<ObjectKey>,
    },
}

impl Side {
    pub fn allows(&self) -> bool {
        !matches!(self, Side::Denied { .. })
    }
}

/// Why a connection is allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Source and destination addresses are of different families: no such packet exists.
    FamilyMismatch,
    /// Both addresses belong to the same pod ("a pod cannot block access to itself").
    SamePod(ObjectKey),
    /// The source is an address of the node the destination pod runs on.
    FromLocalNode { node: String, pod: ObjectKey },
    /// Egress of the source and ingress of the destination were evaluated.
    Policies { egress: Side, ingress: Side },
}

/// The evaluator's answer for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The rule that allowed the connection at the source's egress, if egress was restricted.
    pub fn egress_rule(&self) -> Option<&RuleRef> {
        match &self.reason {
            Reason::Policies {
                egress: Side::AllowedBy { rule, .. },
                ..
            } => Some(rule),
            _ => None,
        }
    }

    /// The rule that allowed the connection at the destination's ingress, if ingress was
    /// restricted.
    pub fn ingress_rule(&self) -> Option<&RuleRef> {
        match &self.reason {
            Reason::Policies {
                ingress: Side::AllowedBy { rule, .. },
                ..
            } => Some(rule),
            _ => None,
        }
    }
}

fn fmt_side(f: &mut fmt::Formatter<'_>, direction: Direction, side: &Side) -> fmt::Result {
    match side {
        Side::NotAPod => write!(f, "{direction}: not a pod"),
        Side::NotIsolated(pod) => write!(f, "{direction}: {pod} is not isolated"),
        Side::AllowedBy { pod, rule } => write!(f, "{direction}: {pod} allowed by {rule}"),
        Side::Denied { pod, policies } => {
            let names: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
            write!(
                f,
                "{direction}: {pod} denied (isolated by {})",
                names.join(", ")
            )
        }
    }
}

/// One line for humans, e.g. `denied: egress: prod/web allowed by ...; ingress: prod/db denied
/// (isolated by prod/default-deny)`.
impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allowed {
            "allowed: "
        } else {
            "denied: "
        })?;
        match &self.reason {
            Reason::FamilyMismatch => {
                f.write_str("source and destination are of different families")
            }
            Reason::SamePod(pod) => write!(f, "{pod} talks to itself"),
            Reason::FromLocalNode { node, pod } => {
                write!(f, "source is node {node}, where {pod} runs")
            }
            Reason::Policies { egress, ingress } => {
                fmt_side(f, Direction::Egress, egress)?;
                f.write_str("; ")?;
                fmt_side(f, Direction::Ingress, ingress)
            }
        }
    }
}

/// Whether the connection `src -> dst` with IP protocol number `proto` and destination `port`
/// (`None` for protocols without ports, such as ICMP) is allowed. See the module docs.
pub fn verdict(
    cluster: &Cluster,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> Decision {
    if src.is_ipv4() != dst.is_ipv4() {
        return Decision {
            allowed: false,
            reason: Reason::FamilyMismatch,
        };
    }
    let src_pod = cluster.pod_by_ip(src);
    let dst_pod = cluster.pod_by_ip(dst);

    if let (Some(s), Some(d)) = (src_pod, dst_pod)
        && s.key() == d.key()
    {
        return Decision {
            allowed: true,
            reason: Reason::SamePod(s.key()),
        };
    }

    if let Some(d) = dst_pod
        && let Some(node) = local_node(cluster, d)
        && node.addresses.contains(&src)
    {
        return Decision {
            allowed: true,
            reason: Reason::FromLocalNode {
                node: node.name.to_string(),
                pod: d.key(),
            },
        };
    }

    let egress = match src_pod {
        Some(pod) => check(cluster, pod, Direction::Egress, dst, proto, port),
        None => Side::NotAPod,
    };
    let ingress = match dst_pod {
        Some(pod) => check(cluster, pod, Direction::Ingress, src, proto, port),
        None => Side::NotAPod,
    };
    Decision {
        allowed: egress.allows() && ingress.allows(),
        reason: Reason::Policies { egress, ingress },
    }
}

/// The Node object of the node a pod runs on.
fn local_node<'a>(cluster: &'a Cluster, pod: &Pod) -> Option<&'a Node> {
    let name = pod.node_name.as_ref()?;
    cluster.nodes.iter().find(|n| n.name == *name)
}

/// One direction's check for `pod`: egress towards `peer` (the destination), or ingress from
/// `peer` (the source). Named ports resolve on the receiving pod: `pod` for ingress, the pod
/// holding `peer` for egress.
pub fn check(
    cluster: &Cluster,
    pod: &Pod,
    direction: Direction,
    peer: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> Side {
    let policies = cluster.applicable_policies(pod, direction);
    if policies.is_empty() {
        return if pod.is_policy_relevant() {
            Side::NotIsolated(pod.key())
        } else {
            Side::NotAPod
        };
    }
    let receiver = match direction {
        Direction::Ingress => Some(pod),
        Direction::Egress => cluster.pod_by_ip(peer),
    };
    for policy in &policies {
        let rules = policy.rules(direction).unwrap_or_default();
        for (index, rule) in rules.iter().enumerate() {
            if rule_matches(cluster, rule, peer, proto, port, receiver) {
                return Side::AllowedBy {
                    pod: pod.key(),
                    rule: RuleRef {
                        policy: policy.key(),
                        direction,
                        index,
                    },
                };
            }
        }
    }
    Side::Denied {
        pod: pod.key(),
        policies: policies.iter().map(|p| p.key()).collect(),
    }
}

fn rule_matches(
    cluster: &Cluster,
    rule: &Rule,
    peer: IpAddr,
    proto: u8,
    port: Option<u16>,
    receiver: Option<&Pod>,
) -> bool {
    let peer_ok = match &rule.peers {
        None => true,
        Some(peers) => peers.iter().any(|p| peer_matches(cluster, p, peer)),
    };
    let port_ok = match &rule.ports {
        None => true,
        Some(ports) => ports.iter().any(|p| port_matches(p, proto, port, receiver)),
    };
    peer_ok && port_ok
}

fn peer_matches(cluster: &Cluster, peer: &Peer, ip: IpAddr) -> bool {
    match peer {
        Peer::IpBlock(block) => block.contains(ip),
        Peer::Pods { namespaces, pods } => {
            let Some(pod) = cluster.pod_by_ip(ip) else {
                return false;
            };
            let namespace_ok = match namespaces {
                Namespaces::Named(ns) => pod.namespace == *ns,
                Namespaces::Matching(sel) => sel.matches(&cluster.namespace_labels(&pod.namespace)),
            };
            namespace_ok && pods.matches(&pod.labels)
        }
    }
}

fn port_matches(entry: &Port, proto: u8, port: Option<u16>, receiver: Option<&Pod>) -> bool {
    if entry.protocol.number() != proto {
        return false;
    }
    match (&entry.port, port) {
        (PortMatch::All, _) => true,
        (_, None) => false,
        (PortMatch::Range(lo, hi), Some(p)) => *lo <= p && p <= *hi,
        (PortMatch::Named(name), Some(p)) => {
            receiver.and_then(|r| r.named_port(name, entry.protocol)) == Some(p)
        }
    }
}
