//! The cluster as the core sees it: trimmed, validated Namespaces, Pods and Nodes.
//!
//! These are not the Kubernetes API types. They hold only what policy needs, already
//! validated, with shared strings so that the agent can keep 150 000 pods in a few tens of
//! megabytes. Conversion from the API types (with errors that name the object and field) lives
//! in `core::convert`; both the file loader and the agent's watchers go through it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A shared, immutable string: names and label keys/values repeat across thousands of pods.
pub type Str = Arc<str>;

/// Labels of an object: sorted by key, unique keys, cheap to clone and compare.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Labels(Arc<[(Str, Str)]>);

impl Labels {
    /// Builds labels from pairs; a later pair with the same key replaces an earlier one.
    pub fn new<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<Str>,
        V: Into<Str>,
    {
        let mut v: Vec<(Str, Str)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // Stable sort keeps insertion order among equal keys; keep the last of each key.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Str, Str)> = Vec::with_capacity(v.len());
        for pair in v {
            match out.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => out.push(pair),
            }
        }
        Labels(out.into())
    }

    pub fn empty() -> Self {
        Labels::default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_ref())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy with `key=value` set (replacing any previous value).
    pub fn with(&self, key: impl Into<Str>, value: impl Into<Str>) -> Self {
        let key = key.into();
        let value = value.into();
        Labels::new(self.0.iter().cloned().chain(std::iter::once((key, value))))
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// The label every namespace carries (the API server sets it since Kubernetes 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A Namespace: its name and labels (namespaceSelectors match these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: Str,
    /// Includes `kubernetes.io/metadata.name=<name>`, added by conversion when absent.
    pub labels: Labels,
}

/// A Node: only its name, labels, addresses and pod ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: Str,
    pub labels: Labels,
    /// InternalIP and ExternalIP addresses from status.addresses.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs` (or `spec.podCIDR`): the ranges this node's pods get addresses from.
    /// nftpol drops traffic of addresses in these ranges that belong to no known pod, so a
    /// pod is never reachable before its policy is in place.
    pub pod_cidrs: Vec<ipnet::IpNet>,
}

/// Transport protocols a NetworkPolicy port can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the Kubernetes spelling (case-sensitive, as the API server is).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named container port (`spec.containers[].ports[]` with a `name`). Unnamed ports are not
/// kept: only names matter to policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: Str,
    pub protocol: Protocol,
    pub port: u16,
}

/// `status.phase` of a Pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    pub fn parse(s: &str) -> Option<PodPhase> {
        match s {
            "Pending" => Some(PodPhase::Pending),
            "Running" => Some(PodPhase::Running),
            "Succeeded" => Some(PodPhase::Succeeded),
            "Failed" => Some(PodPhase::Failed),
            "Unknown" => Some(PodPhase::Unknown),
            _ => None,
        }
    }

    /// Succeeded and Failed pods hold no IP any more that policy should care about (the IP
    /// may already belong to a new pod).
    pub fn is_terminal(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// Namespace and name of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: Str,
    pub name: Str,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<Str>, name: impl Into<Str>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Pod, trimmed to what policy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: Str,
    pub name: Str,
    pub labels: Labels,
    /// `spec.nodeName`; `None` while unscheduled.
    pub node_name: Option<Str>,
    /// `spec.hostNetwork`: such pods share the node's IPs and are never isolated.
    pub host_network: bool,
    /// Named container ports of `spec.containers[]`.
    pub named_ports: Vec<NamedPort>,
    /// `status.podIPs` (or `status.podIP`), at most one per family in practice.
    pub ips: Vec<IpAddr>,
    pub phase: PodPhase,
}

impl Pod {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.clone(), self.name.clone())
    }

    /// Whether policy applies to this pod at all, as a selected pod or as a peer: it has IPs,
    /// is not finished, and does not use the host's network.
    pub fn is_policy_relevant(&self) -> bool {
        !self.ips.is_empty() && !self.phase.is_terminal() && !self.host_network
    }

    /// Looks up a named container port for the given protocol.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| p.name.as_ref() == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}
