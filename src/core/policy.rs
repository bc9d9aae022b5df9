//! NetworkPolicy after validation: the shape the compiler and the reference evaluator read.
//!
//! Kubernetes spells the same meaning in several ways (`from` absent or empty, `ports` absent
//! or empty, `policyTypes` omitted). Conversion (`core::convert`) resolves all of them once,
//! so nothing downstream has to remember the defaulting rules:
//!
//! - `ingress`/`egress` is `Some` exactly when the policy isolates that direction (after
//!   `policyTypes` defaulting: Ingress always, Egress when `spec.egress` is non-empty).
//! - A rule's `peers` is `None` when it allows every peer (`from`/`to` absent or empty);
//!   `ports` is `None` when it allows every port and protocol.

use std::fmt;

use ipnet::IpNet;

use super::cluster::{ObjectKey, Protocol, Str};
use super::selector::Selector;

/// Traffic direction, seen from the selected (policy-owning) pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated networking.k8s.io/v1 NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub namespace: Str,
    pub name: Str,
    /// `spec.podSelector` (empty selects every pod of the namespace).
    pub pod_selector: Selector,
    /// `Some(rules)` iff the policy isolates ingress; `Some(vec![])` allows nothing.
    pub ingress: Option<Vec<Rule>>,
    /// `Some(rules)` iff the policy isolates egress; `Some(vec![])` allows nothing.
    pub egress: Option<Vec<Rule>>,
}

impl NetworkPolicy {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.clone(), self.name.clone())
    }

    /// The rules of one direction, if the policy isolates it.
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// `None`: every peer (`from`/`to` absent or empty). Otherwise the union of the peers.
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port of every protocol (`ports` absent or empty).
    pub ports: Option<Vec<Port>>,
}

/// One element of `from`/`to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Pods chosen by selectors: `podSelector` and/or `namespaceSelector`.
    Pods {
        namespaces: Namespaces,
        /// `podSelector`, or everything when only `namespaceSelector` was given.
        pods: Selector,
    },
    /// `ipBlock`: the CIDR minus the excepts.
    IpBlock(IpBlock),
}

/// Which namespaces a pod peer's pods come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Namespaces {
    /// The policy's own namespace (only `podSelector` given).
    Named(Str),
    /// Namespaces whose labels match (`namespaceSelector` given; `{}` means all).
    Matching(Selector),
}

/// `ipBlock`: `cidr` minus every `except` (each except lies within `cidr`, same family).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    /// Normalised: host bits cleared.
    pub cidr: IpNet,
    /// Normalised, sorted, deduplicated.
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// One element of `ports`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub protocol: Protocol,
    pub port: PortMatch,
}

/// Which ports of the protocol a [`Port`] allows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// `port` omitted: every port of the protocol.
    All,
    /// A numeric port (`start == end`) or an `endPort` range, inclusive.
    Range(u16, u16),
    /// A named port: resolved against the selected pod (ingress) or each destination pod
    /// (egress); a pod without a container port of that name and protocol contributes nothing.
    Named(Str),
}

impl Port {
    /// Whether this port entry allows `(protocol, port)` on a pod with the given named ports.
    /// `named` resolves a port name for `self.protocol` on the pod the name refers to.
    pub fn allows(
        &self,
        protocol: Protocol,
        port: u16,
        named: impl Fn(&str, Protocol) -> Option<u16>,
    ) -> bool {
        if protocol != self.protocol {
            return false;
        }
        match &self.port {
            PortMatch::All => true,
            PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&port),
            PortMatch::Named(name) => named(name, protocol) == Some(port),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortMatch::All => write!(f, "{}", self.protocol),
            PortMatch::Range(a, b) if a == b => write!(f, "{}/{}", self.protocol, a),
            PortMatch::Range(a, b) => write!(f, "{}/{}-{}", self.protocol, a, b),
            PortMatch::Named(n) => write!(f, "{}/{}", self.protocol, n),
        }
    }
}
