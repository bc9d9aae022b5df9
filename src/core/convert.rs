//! Kubernetes API objects -> validated core types, with errors that name the object and field.
//!
//! Everything that enters the core passes through here: the file loader (`input`) and the
//! agent's watchers both convert with a [`Converter`]. The core types downstream never see a
//! raw API object, so every defaulting rule of networking.k8s.io/v1 (omitted `policyTypes`,
//! absent or empty `from`/`ports`, a peer with only a `podSelector`, ...) is resolved exactly
//! once, here, into the normal form documented in [`crate::core::policy`].
//!
//! Validation follows the API server's (`ValidateNetworkPolicy`, `ValidateLabelSelector`,
//! `ValidateObjectMeta`, the container port checks of `ValidatePod`) closely enough that a
//! manifest the API server would reject is rejected here too, with the field path spelt the way
//! Kubernetes spells it (`spec.ingress[0].from[1].ipBlock.except[0]`). Two deliberate
//! differences: CIDRs and IPs are parsed strictly (no IPv4 octets with leading zeros, which the
//! API server only still accepts for old objects), and host bits in a CIDR are cleared instead
//! of warned about. Only named container ports are validated (unnamed ones are dropped). The
//! first problem found is reported.
//!
//! The converter interns strings (label keys and values, namespace, node and port names) and
//! whole label sets, so 150 000 pods of a few hundred deployments share a few thousand
//! allocations instead of holding a million.
//!
//! Nothing here panics, whatever the input.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cluster::{
    Labels, NAMESPACE_NAME_LABEL, NamedPort, Namespace, Node, Pod, PodPhase, Protocol, Str,
};
use super::policy::{IpBlock, Namespaces, NetworkPolicy, Peer, Port, PortMatch, Rule};
use super::selector::{Operator, Requirement, Selector};

/// The namespace of a namespaced object whose `metadata.namespace` is absent (as `kubectl`
/// does without `-n` and a context namespace).
pub const DEFAULT_NAMESPACE: &str = "default";

/// A conversion failure: which object, which field (spelt as Kubernetes does), what is wrong.
///
/// Displays as `NetworkPolicy prod/allow-web: spec.ingress[0].ports[1].endPort: must not be
/// less than port (80 < 90)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {problem}")]
pub struct ConvertError {
    /// `Namespace`, `Pod`, `Node` or `NetworkPolicy`.
    pub kind: &'static str,
    /// `namespace/name` for namespaced kinds, `name` otherwise (`<unnamed>` when absent).
    pub object: String,
    /// Field path, e.g. `spec.ingress[0].from[1].ipBlock.except[0]`.
    pub field: String,
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    #[error("required")]
    Required,
    /// Required in this context; the text says why.
    #[error("required: {0}")]
    RequiredBecause(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("unsupported value {value:?} (supported: {supported})")]
    Unsupported {
        value: String,
        supported: &'static str,
    },
    /// A name, label, port name, IP or CIDR that does not have the required syntax.
    #[error("invalid value {value:?}: {reason}")]
    Invalid { value: String, reason: String },
    #[error("must be between 1 and 65535, inclusive (got {0})")]
    PortOutOfRange(i32),
    #[error("must not be less than port ({end_port} < {port})")]
    EndPortBeforePort { port: u16, end_port: i32 },
    #[error("{except:?} is not in the same address family as cidr {cidr}")]
    ExceptFamily { except: String, cidr: IpNet },
    #[error("{except:?} is not a strict subset of cidr {cidr}")]
    ExceptNotSubset { except: String, cidr: IpNet },
    #[error("duplicate value {0:?}")]
    Duplicate(String),
    #[error("may not specify more than two policyTypes (got {0})")]
    TooManyPolicyTypes(usize),
}

/// Converts API objects into core types, sharing repeated strings and label sets.
///
/// One converter should serve a whole snapshot (or the agent's whole lifetime): sharing only
/// happens between objects converted by the same converter. Call [`Converter::forget_unused`]
/// now and then in long-running processes so that the caches do not keep strings of objects
/// long gone.
#[derive(Debug, Default)]
pub struct Converter {
    strings: HashSet<Str>,
    labels: HashSet<Labels>,
    /// Label sets used before the last `forget_unused` and not since.
    old_labels: HashSet<Labels>,
}

impl Converter {
    pub fn new() -> Self {
        Converter::default()
    }

    /// Drops cached strings that no converted object holds any more, and label sets that no
    /// conversion has produced since the previous call. Objects already converted are not
    /// affected; later conversions may just share a little less with them.
    pub fn forget_unused(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.old_labels = std::mem::take(&mut self.labels);
    }

    /// Number of distinct strings currently cached.
    pub fn cached_strings(&self) -> usize {
        self.strings.len()
    }

    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Str {
        if let Some(found) = self.strings.get(s) {
            return found.clone();
        }
        let new: Str = Str::from(s);
        self.strings.insert(new.clone());
        new
    }

    fn intern_labels(&mut self, labels: Labels) -> Labels {
        if let Some(found) = self.labels.get(&labels) {
            return found.clone();
        }
        let labels = self.old_labels.take(&labels).unwrap_or(labels);
        self.labels.insert(labels.clone());
        labels
    }

    /// A v1 Namespace. Adds (or corrects) `kubernetes.io/metadata.name=<name>`, as the API
    /// server does.
    pub fn namespace(&mut self, ns: &corev1::Namespace) -> Result<Namespace, ConvertError> {
        let ctx = Ctx::cluster_scoped("Namespace", &ns.metadata);
        let meta = Path::root("metadata");
        let name = ctx.required_name(&meta, dns1123_label)?;
        let labels = self.labels_of(&ctx, &meta, &ns.metadata)?;
        let name = self.intern(name);
        let labels = match labels.get(NAMESPACE_NAME_LABEL) {
            Some(v) if v == name.as_ref() => labels,
            _ => {
                let key = self.intern(NAMESPACE_NAME_LABEL);
                self.intern_labels(labels.with(key, name.clone()))
            }
        };
        Ok(Namespace { name, labels })
    }

    /// A v1 Node: name, labels and its InternalIP/ExternalIP addresses (deduplicated, in
    /// order).
    pub fn node(&mut self, node: &corev1::Node) -> Result<Node, ConvertError> {
        let ctx = Ctx::cluster_scoped("Node", &node.metadata);
        let meta = Path::root("metadata");
        let name = ctx.required_name(&meta, dns1123_subdomain)?;
        let labels = self.labels_of(&ctx, &meta, &node.metadata)?;
        let mut addresses: Vec<IpAddr> = Vec::new();
        let status = Path::root("status");
        let list = status.field("addresses");
        let all = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default();
        for (i, address) in all.iter().enumerate() {
            if address.type_ != "InternalIP" && address.type_ != "ExternalIP" {
                continue;
            }
            let path = list.index(i);
            let ip = parse_ip(&ctx, &path.field("address"), &address.address)?;
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        let spec = Path::root("spec");
        let mut pod_cidrs: Vec<IpNet> = Vec::new();
        if let Some(node_spec) = &node.spec {
            let list = node_spec.pod_cidrs.as_deref().unwrap_or_default();
            for (i, text) in list.iter().enumerate() {
                let net = parse_cidr(&ctx, &spec.field("podCIDRs").index(i), text)?;
                if !pod_cidrs.contains(&net) {
                    pod_cidrs.push(net);
                }
            }
            if let Some(text) = node_spec.pod_cidr.as_deref().filter(|t| !t.is_empty()) {
                let net = parse_cidr(&ctx, &spec.field("podCIDR"), text)?;
                if !pod_cidrs.contains(&net) {
                    pod_cidrs.push(net);
                }
            }
        }
        Ok(Node {
            name: self.intern(name),
            labels,
            addresses,
            pod_cidrs,
        })
    }

    /// A v1 Pod. The namespace defaults to `default`; `status.podIPs` is preferred over
    /// `status.podIP`; only named container ports of `spec.containers` are kept.
    pub fn pod(&mut self, pod: &corev1::Pod) -> Result<Pod, ConvertError> {
        let ctx = Ctx::namespaced("Pod", &pod.metadata);
        let meta = Path::root("metadata");
        let name = ctx.required_name(&meta, dns1123_subdomain)?;
        let namespace = ctx.checked_namespace(&meta)?;
        let labels = self.labels_of(&ctx, &meta, &pod.metadata)?;

        let spec_path = Path::root("spec");
        let mut node_name = None;
        let mut host_network = false;
        let mut named_ports = Vec::new();
        if let Some(spec) = &pod.spec {
            if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
                check(&ctx, &spec_path.field("nodeName"), node, dns1123_subdomain)?;
                node_name = Some(self.intern(node));
            }
            host_network = spec.host_network.unwrap_or(false);
            let containers = spec_path.field("containers");
            for (c, container) in spec.containers.iter().enumerate() {
                let container_path = containers.index(c);
                let ports_path = container_path.field("ports");
                // Port names are unique within a container (validateContainerPorts).
                let mut seen: Vec<&str> = Vec::new();
                for (p, port) in container.ports.iter().flatten().enumerate() {
                    let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                        continue;
                    };
                    let path = ports_path.index(p);
                    let name_path = path.field("name");
                    check(&ctx, &name_path, port_name, port_name_syntax)?;
                    if seen.contains(&port_name) {
                        return Err(ctx.err(&name_path, Problem::Duplicate(port_name.to_string())));
                    }
                    seen.push(port_name);
                    let number =
                        port_number(&ctx, &path.field("containerPort"), port.container_port)?;
                    let protocol =
                        protocol(&ctx, &path.field("protocol"), port.protocol.as_deref())?;
                    named_ports.push(NamedPort {
                        name: self.intern(port_name),
                        protocol,
                        port: number,
                    });
                }
            }
        }

        let status_path = Path::root("status");
        let mut ips = Vec::new();
        let mut phase = PodPhase::default();
        if let Some(status) = &pod.status {
            match status.pod_ips.as_deref() {
                Some(list) if !list.is_empty() => {
                    let list_path = status_path.field("podIPs");
                    for (i, entry) in list.iter().enumerate() {
                        let ip = parse_ip(&ctx, &list_path.index(i).field("ip"), &entry.ip)?;
                        if !ips.contains(&ip) {
                            ips.push(ip);
                        }
                    }
                }
                _ => {
                    if let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
                        ips.push(parse_ip(&ctx, &status_path.field("podIP"), ip)?);
                    }
                }
            }
            if let Some(p) = status.phase.as_deref().filter(|p| !p.is_empty()) {
                phase = PodPhase::parse(p).ok_or_else(|| {
                    ctx.err(
                        &status_path.field("phase"),
                        Problem::Unsupported {
                            value: p.to_string(),
                            supported: "Pending, Running, Succeeded, Failed, Unknown",
                        },
                    )
                })?;
            }
        }

        Ok(Pod {
            namespace: self.intern(namespace),
            // Pod names are unique: sharing them would only cost.
            name: Str::from(name),
            labels,
            node_name,
            host_network,
            named_ports,
            ips,
            phase,
        })
    }

    /// A networking.k8s.io/v1 NetworkPolicy, validated and normalised (see
    /// [`crate::core::policy`]). The namespace defaults to `default`.
    pub fn network_policy(
        &mut self,
        np: &netv1::NetworkPolicy,
    ) -> Result<NetworkPolicy, ConvertError> {
        let ctx = Ctx::namespaced("NetworkPolicy", &np.metadata);
        let meta = Path::root("metadata");
        let name = ctx.required_name(&meta, dns1123_subdomain)?;
        let namespace = ctx.checked_namespace(&meta)?;
        // Labels of the policy object itself are not used, but garbage there is still garbage.
        self.labels_of(&ctx, &meta, &np.metadata)?;
        let namespace = self.intern(namespace);

        let empty = netv1::NetworkPolicySpec::default();
        let spec = np.spec.as_ref().unwrap_or(&empty);
        let spec_path = Path::root("spec");

        let pod_selector = match &spec.pod_selector {
            Some(sel) => self.selector(&ctx, &spec_path.field("podSelector"), sel)?,
            None => Selector::everything(),
        };

        // Both sections are validated even when policyTypes makes one of them irrelevant,
        // as the API server does.
        let ingress_path = spec_path.field("ingress");
        let mut ingress = Vec::new();
        for (i, rule) in spec.ingress.iter().flatten().enumerate() {
            let path = ingress_path.index(i);
            let peers = ("from", rule.from.as_deref());
            ingress.push(self.rule(&ctx, &path, &namespace, peers, rule.ports.as_deref())?);
        }
        let egress_path = spec_path.field("egress");
        let mut egress = Vec::new();
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            let path = egress_path.index(i);
            let peers = ("to", rule.to.as_deref());
            egress.push(self.rule(&ctx, &path, &namespace, peers, rule.ports.as_deref())?);
        }

        let types_path = spec_path.field("policyTypes");
        let types = spec.policy_types.as_deref().unwrap_or_default();
        if types.len() > 2 {
            return Err(ctx.err(&types_path, Problem::TooManyPolicyTypes(types.len())));
        }
        let (mut isolates_ingress, mut isolates_egress) = (false, false);
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => isolates_ingress = true,
                "Egress" => isolates_egress = true,
                other => {
                    return Err(ctx.err(
                        &types_path.index(i),
                        Problem::Unsupported {
                            value: other.to_string(),
                            supported: "Ingress, Egress",
                        },
                    ));
                }
            }
        }
        if types.is_empty() {
            // SetDefaults_NetworkPolicy: Ingress always, Egress iff there are egress rules.
            isolates_ingress = true;
            isolates_egress = !egress.is_empty();
        }

        Ok(NetworkPolicy {
            namespace,
            name: Str::from(name),
            pod_selector,
            ingress: isolates_ingress.then_some(ingress),
            egress: isolates_egress.then_some(egress),
        })
    }

    fn rule(
        &mut self,
        ctx: &Ctx<'_>,
        path: &Path<'_>,
        policy_namespace: &Str,
        (peers_field, peers): (&'static str, Option<&[netv1::NetworkPolicyPeer]>),
        ports: Option<&[netv1::NetworkPolicyPort]>,
    ) -> Result<Rule, ConvertError> {
        let ports_path = path.field("ports");
        let mut out_ports = Vec::new();
        for (i, port) in ports.unwrap_or_default().iter().enumerate() {
            out_ports.push(self.policy_port(ctx, &ports_path.index(i), port)?);
        }
        let peers_path = path.field(peers_field);
        let mut out_peers = Vec::new();
        for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
            out_peers.push(self.peer(ctx, &peers_path.index(i), policy_namespace, peer)?);
        }
        Ok(Rule {
            peers: (!out_peers.is_empty()).then_some(out_peers),
            ports: (!out_ports.is_empty()).then_some(out_ports),
        })
    }

    fn peer(
        &mut self,
        ctx: &Ctx<'_>,
        path: &Path<'_>,
        policy_namespace: &Str,
        peer: &netv1::NetworkPolicyPeer,
    ) -> Result<Peer, ConvertError> {
        let given = [
            peer.pod_selector.is_some(),
            peer.namespace_selector.is_some(),
            peer.ip_block.is_some(),
        ]
        .into_iter()
        .filter(|g| *g)
        .count();
        if given == 0 {
            return Err(ctx.err(
                path,
                Problem::RequiredBecause(
                    "must specify a peer (podSelector, namespaceSelector or ipBlock)",
                ),
            ));
        }
        if let Some(block) = &peer.ip_block {
            if given > 1 {
                return Err(ctx.err(
                    path,
                    Problem::Forbidden("may not specify both ipBlock and another peer"),
                ));
            }
            return Ok(Peer::IpBlock(ip_block(ctx, &path.field("ipBlock"), block)?));
        }
        let pods = match &peer.pod_selector {
            Some(sel) => self.selector(ctx, &path.field("podSelector"), sel)?,
            None => Selector::everything(),
        };
        let namespaces = match &peer.namespace_selector {
            Some(sel) => {
                Namespaces::Matching(self.selector(ctx, &path.field("namespaceSelector"), sel)?)
            }
            None => Namespaces::Named(policy_namespace.clone()),
        };
        Ok(Peer::Pods { namespaces, pods })
    }

    fn policy_port(
        &mut self,
        ctx: &Ctx<'_>,
        path: &Path<'_>,
        port: &netv1::NetworkPolicyPort,
    ) -> Result<Port, ConvertError> {
        let protocol = protocol(ctx, &path.field("protocol"), port.protocol.as_deref())?;
        let end_path = path.field("endPort");
        let port = match (&port.port, port.end_port) {
            (None, None) => PortMatch::All,
            (None, Some(_)) => {
                return Err(ctx.err(
                    &end_path,
                    Problem::Forbidden("may not be specified when port is not specified"),
                ));
            }
            (Some(IntOrString::Int(n)), end) => {
                let start = port_number(ctx, &path.field("port"), *n)?;
                let end = match end {
                    None => start,
                    Some(e) if e < i32::from(start) => {
                        return Err(ctx.err(
                            &end_path,
                            Problem::EndPortBeforePort {
                                port: start,
                                end_port: e,
                            },
                        ));
                    }
                    Some(e) => port_number(ctx, &end_path, e)?,
                };
                PortMatch::Range(start, end)
            }
            (Some(IntOrString::String(_)), Some(_)) => {
                return Err(ctx.err(
                    &end_path,
                    Problem::Forbidden("may not be specified when port is a name"),
                ));
            }
            (Some(IntOrString::String(name)), None) => {
                check(ctx, &path.field("port"), name, port_name_syntax)?;
                PortMatch::Named(self.intern(name))
            }
        };
        Ok(Port { protocol, port })
    }

    fn selector(
        &mut self,
        ctx: &Ctx<'_>,
        path: &Path<'_>,
        sel: &LabelSelector,
    ) -> Result<Selector, ConvertError> {
        let mut requirements = Vec::new();
        let labels_path = path.field("matchLabels");
        for (key, value) in sel.match_labels.iter().flatten() {
            let entry = labels_path.key(key);
            check(ctx, &entry, key, qualified_name)?;
            check(ctx, &entry, value, label_value)?;
            requirements.push(Requirement {
                key: self.intern(key),
                operator: Operator::In,
                values: BTreeSet::from([self.intern(value)]),
            });
        }
        let exprs_path = path.field("matchExpressions");
        for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let path = exprs_path.index(i);
            let key_path = path.field("key");
            if expr.key.is_empty() {
                return Err(ctx.err(&key_path, Problem::Required));
            }
            check(ctx, &key_path, &expr.key, qualified_name)?;
            let operator = Operator::parse(&expr.operator).ok_or_else(|| {
                let field = path.field("operator");
                if expr.operator.is_empty() {
                    ctx.err(&field, Problem::Required)
                } else {
                    ctx.err(
                        &field,
                        Problem::Unsupported {
                            value: expr.operator.clone(),
                            supported: "In, NotIn, Exists, DoesNotExist",
                        },
                    )
                }
            })?;
            let values = expr.values.as_deref().unwrap_or_default();
            let values_path = path.field("values");
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err(ctx.err(
                        &values_path,
                        Problem::RequiredBecause("must be specified when operator is In or NotIn"),
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err(ctx.err(
                        &values_path,
                        Problem::Forbidden(
                            "may not be specified when operator is Exists or DoesNotExist",
                        ),
                    ));
                }
                _ => {}
            }
            let mut set = BTreeSet::new();
            for (j, value) in values.iter().enumerate() {
                check(ctx, &values_path.index(j), value, label_value)?;
                set.insert(self.intern(value));
            }
            requirements.push(Requirement {
                key: self.intern(&expr.key),
                operator,
                values: set,
            });
        }
        Ok(Selector::new(requirements))
    }

    fn labels_of(
        &mut self,
        ctx: &Ctx<'_>,
        meta_path: &Path<'_>,
        meta: &ObjectMeta,
    ) -> Result<Labels, ConvertError> {
        let Some(map) = meta.labels.as_ref().filter(|m| !m.is_empty()) else {
            return Ok(Labels::empty());
        };
        self.labels(ctx, &meta_path.field("labels"), map)
    }

    fn labels(
        &mut self,
        ctx: &Ctx<'_>,
        path: &Path<'_>,
        map: &BTreeMap<String, String>,
    ) -> Result<Labels, ConvertError> {
        let mut pairs = Vec::with_capacity(map.len());
        for (key, value) in map {
            let entry = path.key(key);
            check(ctx, &entry, key, qualified_name)?;
            check(ctx, &entry, value, label_value)?;
            pairs.push((self.intern(key), self.intern(value)));
        }
        Ok(self.intern_labels(Labels::new(pairs)))
    }
}

/// `ipBlock`: parsed, host bits cleared, excepts checked to be strict subsets of the same
/// family, sorted and deduplicated.
fn ip_block(
    ctx: &Ctx<'_>,
    path: &Path<'_>,
    block: &netv1::IPBlock,
) -> Result<IpBlock, ConvertError> {
    let cidr_path = path.field("cidr");
    if block.cidr.is_empty() {
        return Err(ctx.err(&cidr_path, Problem::Required));
    }
    let cidr = parse_cidr(ctx, &cidr_path, &block.cidr)?;
    let except_path = path.field("except");
    let mut except = Vec::new();
    for (i, text) in block.except.iter().flatten().enumerate() {
        let path = except_path.index(i);
        let net = parse_cidr(ctx, &path, text)?;
        let same_family = matches!(
            (cidr, net),
            (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
        );
        if !same_family {
            return Err(ctx.err(
                &path,
                Problem::ExceptFamily {
                    except: text.clone(),
                    cidr,
                },
            ));
        }
        if !(cidr.contains(&net.network()) && net.prefix_len() > cidr.prefix_len()) {
            return Err(ctx.err(
                &path,
                Problem::ExceptNotSubset {
                    except: text.clone(),
                    cidr,
                },
            ));
        }
        except.push(net);
    }
    except.sort();
    except.dedup();
    Ok(IpBlock { cidr, except })
}

/// `address/prefix`, IPv4 or IPv6, returned with host bits cleared.
fn parse_cidr(ctx: &Ctx<'_>, path: &Path<'_>, text: &str) -> Result<IpNet, ConvertError> {
    let invalid = |reason: String| {
        ctx.err(
            path,
            Problem::Invalid {
                value: text.to_string(),
                reason,
            },
        )
    };
    let Some((addr, prefix)) = text.split_once('/') else {
        return Err(invalid(
            "not a CIDR: expected address/prefix-length, e.g. 10.0.0.0/16".into(),
        ));
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| invalid(format!("{addr:?} is not an IPv4 or IPv6 address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bad_prefix = || invalid(format!("prefix length must be a number from 0 to {max}"));
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max && prefix.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(bad_prefix)?;
    IpNet::new(addr, prefix)
        .map(|net| net.trunc())
        .map_err(|_| bad_prefix())
}

fn parse_ip(ctx: &Ctx<'_>, path: &Path<'_>, text: &str) -> Result<IpAddr, ConvertError> {
    if text.is_empty() {
        return Err(ctx.err(path, Problem::Required));
    }
    text.parse().map_err(|_| {
        ctx.err(
            path,
            Problem::Invalid {
                value: text.to_string(),
                reason: "not an IPv4 or IPv6 address".into(),
            },
        )
    })
}

fn port_number(ctx: &Ctx<'_>, path: &Path<'_>, n: i32) -> Result<u16, ConvertError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ctx.err(path, Problem::PortOutOfRange(n)))
}

fn protocol(ctx: &Ctx<'_>, path: &Path<'_>, p: Option<&str>) -> Result<Protocol, ConvertError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(p) => Protocol::parse(p).ok_or_else(|| {
            ctx.err(
                path,
                Problem::Unsupported {
                    value: p.to_string(),
                    supported: "TCP, UDP, SCTP",
                },
            )
        }),
    }
}

fn check(
    ctx: &Ctx<'_>,
    path: &Path<'_>,
    value: &str,
    rule: fn(&str) -> Result<(), &'static str>,
) -> Result<(), ConvertError> {
    rule(value).map_err(|reason| {
        ctx.err(
            path,
            Problem::Invalid {
                value: value.to_string(),
                reason: reason.to_string(),
            },
        )
    })
}

// --- syntax rules, as k8s.io/apimachinery/pkg/util/validation defines them -----------------

fn lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One `[a-z0-9]([-a-z0-9]*[a-z0-9])?` part.
fn dns_part(part: &str) -> bool {
    let b = part.as_bytes();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) => {
            lower_alnum(first)
                && lower_alnum(last)
                && b.iter().all(|&c| lower_alnum(c) || c == b'-')
        }
        _ => false,
    }
}

/// RFC 1123 label (namespace names).
fn dns1123_label(s: &str) -> Result<(), &'static str> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters");
    }
    if !dns_part(s) {
        return Err(
            "must be a lowercase RFC 1123 label: lowercase letters, digits and '-', \
                    starting and ending with a letter or digit",
        );
    }
    Ok(())
}

/// RFC 1123 subdomain (most object names, label key prefixes).
fn dns1123_subdomain(s: &str) -> Result<(), &'static str> {
    if s.len() > 253 {
        return Err("must be no more than 253 characters");
    }
    if !s.split('.').all(dns_part) {
        return Err(
            "must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' \
                    and '.', starting and ending with a letter or digit",
        );
    }
    Ok(())
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Label keys: `[prefix/]name`, prefix a DNS subdomain, name at most 63 characters.
fn qualified_name(s: &str) -> Result<(), &'static str> {
    let name = match s.split_once('/') {
        None => s,
        Some((prefix, name)) => {
            if name.contains('/') {
                return Err("a label key may contain at most one '/'");
            }
            if prefix.is_empty() {
                return Err("prefix part must not be empty");
            }
            if dns1123_subdomain(prefix).is_err() {
                return Err(
                    "prefix part must be a lowercase RFC 1123 subdomain (e.g. example.com)",
                );
            }
            name
        }
    };
    if name.is_empty() {
        return Err("name part must not be empty");
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters");
    }
    if !qualified_part(name) {
        return Err(
            "name part must consist of alphanumeric characters, '-', '_' or '.', \
                    and must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

/// Label values: empty, or at most 63 characters of the qualified-name alphabet.
fn label_value(s: &str) -> Result<(), &'static str> {
    if s.len() > 63 {
        return Err("must be no more than 63 characters");
    }
    if !s.is_empty() && !qualified_part(s) {
        return Err(
            "must be empty or consist of alphanumeric characters, '-', '_' or '.', \
                    and must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

/// IANA_SVC_NAME: at most 15 characters of `[a-z0-9-]`, at least one letter, no `--`, no
/// leading or trailing `-`.
fn port_name_syntax(s: &str) -> Result<(), &'static str> {
    if s.len() > 15 {
        return Err("must be no more than 15 characters");
    }
    if s.is_empty() || !s.bytes().all(|c| lower_alnum(c) || c == b'-') {
        return Err("must contain only lowercase letters, digits and '-'");
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)");
    }
    if s.contains("--") {
        return Err("must not contain consecutive hyphens");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not begin or end with a hyphen");
    }
    Ok(())
}

// --- error context ------------------------------------------------------------------------

/// The object being converted, for error messages.
struct Ctx<'a> {
    kind: &'static str,
    namespace: Option<&'a str>,
    name: &'a str,
}

impl<'a> Ctx<'a> {
    fn cluster_scoped(kind: &'static str, meta: &'a ObjectMeta) -> Self {
        Ctx {
            kind,
            namespace: None,
            name: meta.name.as_deref().unwrap_or_default(),
        }
    }

    fn namespaced(kind: &'static str, meta: &'a ObjectMeta) -> Self {
        Ctx {
            kind,
            namespace: Some(
                meta.namespace
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(DEFAULT_NAMESPACE),
            ),
            name: meta.name.as_deref().unwrap_or_default(),
        }
    }

    fn required_name(
        &self,
        meta: &Path<'_>,
        rule: fn(&str) -> Result<(), &'static str>,
    ) -> Result<&'a str, ConvertError> {
        let path = meta.field("name");
        if self.name.is_empty() {
            return Err(self.err(&path, Problem::Required));
        }
        check(self, &path, self.name, rule)?;
        Ok(self.name)
    }

    fn checked_namespace(&self, meta: &Path<'_>) -> Result<&'a str, ConvertError> {
        let ns = self.namespace.unwrap_or(DEFAULT_NAMESPACE);
        check(self, &meta.field("namespace"), ns, dns1123_label)?;
        Ok(ns)
    }

    fn err(&self, path: &Path<'_>, problem: Problem) -> ConvertError {
        let name = if self.name.is_empty() {
            "<unnamed>"
        } else {
            self.name
        };
        let object = match self.namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        ConvertError {
            kind: self.kind,
            // Names are shown as written; control characters must not reach a terminal.
            object: printable(&object).into_owned(),
            field: path.to_string(),
            problem,
        }
    }
}

/// `s` with control characters escaped (`\n`, `\u{1b}`), everything else as written: names
/// and keys from the input are shown to users, but must not drive their terminal.
pub(crate) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A field path built on the stack while walking an object; rendered only for errors.
#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    segment: Segment<'a>,
}

#[derive(Clone, Copy)]
enum Segment<'a> {
    Field(&'static str),
    Index(usize),
    Key(&'a str),
}

impl<'a> Path<'a> {
    fn root(field: &'static str) -> Path<'static> {
        Path {
            parent: None,
            segment: Segment::Field(field),
        }
    }

    fn field(&'a self, name: &'static str) -> Path<'a> {
        Path {
            parent: Some(self),
            segment: Segment::Field(name),
        }
    }

    fn index(&'a self, i: usize) -> Path<'a> {
        Path {
            parent: Some(self),
            segment: Segment::Index(i),
        }
    }

    fn key(&'a self, key: &'a str) -> Path<'a> {
        Path {
            parent: Some(self),
            segment: Segment::Key(key),
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(parent) = self.parent {
            parent.fmt(f)?;
        }
        match self.segment {
            Segment::Field(name) if self.parent.is_some() => write!(f, ".{name}"),
            Segment::Field(name) => f.write_str(name),
            Segment::Index(i) => write!(f, "[{i}]"),
            Segment::Key(k) => write!(f, "[{}]", printable(k)),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Objects are written as the JSON a user would write (through `serde_json::json!`), so
    //! each case reads like a manifest. Policies live in namespace `prod` unless a case says
    //! otherwise.

    use super::*;
    use serde_json::{Value, json};

    fn k8s<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("test object matches the k8s-openapi schema")
    }

    fn policy_json(spec: Value) -> Value {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "allow-web", "namespace": "prod"},
            "spec": spec,
        })
    }

    fn convert_policy(spec: Value) -> Result<NetworkPolicy, ConvertError> {
        Converter::new().network_policy(&k8s(policy_json(spec)))
    }

    fn policy(spec: Value) -> NetworkPolicy {
        match convert_policy(spec.clone()) {
            Ok(p) => p,
            Err(e) => panic!("{spec} should convert: {e}"),
        }
    }

    fn labels_sel(pairs: &[(&str, &str)]) -> Selector {
        Selector::from_labels(pairs.iter().copied())
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| Str::from(*v)).collect(),
        }
    }

    fn allow_all() -> Rule {
        Rule {
            peers: None,
            ports: None,
        }
    }

    fn tcp(lo: u16, hi: u16) -> Port {
        Port {
            protocol: Protocol::Tcp,
            port: PortMatch::Range(lo, hi),
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    // --- policyTypes defaulting and isolation --------------------------------------------

    #[test]
    fn policy_types_decide_which_directions_are_isolated() {
        type Isolation = Option<Vec<Rule>>;
        // (spec, ingress, egress)
        let cases: Vec<(Value, Isolation, Isolation)> = vec![
            // Omitted policyTypes: Ingress always ...
            (json!({}), Some(vec![]), None),
            (json!({"podSelector": {}}), Some(vec![]), None),
            (json!({"ingress": [{}]}), Some(vec![allow_all()]), None),
            // ... Egress only when there are egress rules.
            (
                json!({"egress": [{}]}),
                Some(vec![]),
                Some(vec![allow_all()]),
            ),
            (json!({"egress": []}), Some(vec![]), None),
            (json!({"egress": null}), Some(vec![]), None),
            // An empty list is the same as omitted (SetDefaults checks len == 0).
            (
                json!({"policyTypes": [], "egress": [{}]}),
                Some(vec![]),
                Some(vec![allow_all()]),
            ),
            // Explicit types: no egress section means deny all egress.
            (
                json!({"policyTypes": ["Ingress", "Egress"]}),
                Some(vec![]),
                Some(vec![]),
            ),
            (json!({"policyTypes": ["Egress"]}), None, Some(vec![])),
            // An ingress section is ignored when Ingress is not a policy type.
            (
                json!({"policyTypes": ["Egress"], "ingress": [{}]}),
                None,
                Some(vec![]),
            ),
            (
                json!({"policyTypes": ["Ingress"], "egress": [{}]}),
                Some(vec![]),
                None,
            ),
            // Duplicates are accepted, as by the API server.
            (
                json!({"policyTypes": ["Ingress", "Ingress"]}),
                Some(vec![]),
                None,
            ),
        ];
        for (spec, ingress, egress) in cases {
            let p = policy(spec.clone());
            assert_eq!(p.ingress, ingress, "ingress of {spec}");
            assert_eq!(p.egress, egress, "egress of {spec}");
        }
    }

    #[test]
    fn absent_spec_and_pod_selector_select_every_pod_and_deny_ingress() {
        let np: netv1::NetworkPolicy =
            k8s(json!({"metadata": {"name": "deny", "namespace": "prod"}}));
        let p = Converter::new().network_policy(&np).unwrap();
        assert_eq!(p.pod_selector, Selector::everything());
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, None);
        assert_eq!(p.key().to_string(), "prod/deny");
    }

    #[test]
    fn namespace_defaults_to_default() {
        let np: netv1::NetworkPolicy = k8s(json!({"metadata": {"name": "deny"}}));
        let p = Converter::new().network_policy(&np).unwrap();
        assert_eq!(p.namespace.as_ref(), "default");
    }

    // --- rules: from/to and ports normalisation -------------------------------------------

    #[test]
    fn absent_or_empty_peers_and_ports_mean_everything() {
        for rule in [
            json!({}),
            json!({"from": []}),
            json!({"from": null, "ports": null}),
            json!({"ports": []}),
            json!({"from": [], "ports": []}),
        ] {
            let p = policy(json!({"ingress": [rule.clone()]}));
            assert_eq!(p.ingress, Some(vec![allow_all()]), "ingress rule {rule}");
        }
        let p = policy(json!({"egress": [{"to": [], "ports": []}]}));
        assert_eq!(p.egress, Some(vec![allow_all()]));
    }

    #[test]
    fn peers_follow_the_selector_combinations() {
        let from = json!([
            {"podSelector": {"matchLabels": {"role": "frontend"}}},
            {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
            {"namespaceSelector": {"matchLabels": {"project": "myproject"}},
             "podSelector": {"matchLabels": {"role": "frontend"}}},
            {"podSelector": {}},
            {"namespaceSelector": {}},
        ]);
        let p = policy(json!({"ingress": [{"from": from}]}));
        let peers = p.ingress.unwrap()[0].peers.clone().unwrap();
        assert_eq!(
            peers,
            vec![
                // podSelector alone: pods of the policy's own namespace.
                Peer::Pods {
                    namespaces: Namespaces::Named("prod".into()),
                    pods: labels_sel(&[("role", "frontend")]),
                },
                // namespaceSelector alone: every pod of the matching namespaces.
                Peer::Pods {
                    namespaces: Namespaces::Matching(labels_sel(&[("project", "myproject")])),
                    pods: Selector::everything(),
                },
                // Both: AND.
                Peer::Pods {
                    namespaces: Namespaces::Matching(labels_sel(&[("project", "myproject")])),
                    pods: labels_sel(&[("role", "frontend")]),
                },
                Peer::Pods {
                    namespaces: Namespaces::Named("prod".into()),
                    pods: Selector::everything(),
                },
                Peer::Pods {
                    namespaces: Namespaces::Matching(Selector::everything()),
                    pods: Selector::everything(),
                },
            ]
        );
    }

    #[test]
    fn ip_blocks_are_normalised() {
        let to = json!([
            {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
            // Host bits cleared, excepts normalised, sorted and deduplicated.
            {"ipBlock": {"cidr": "10.1.2.3/8", "except": ["10.9.9.9/16", "10.2.0.0/16", "10.2.3.4/16"]}},
            {"ipBlock": {"cidr": "2001:db8::1/32", "except": ["2001:db8:ff::/48"]}},
            {"ipBlock": {"cidr": "0.0.0.0/0"}},
            {"ipBlock": {"cidr": "192.0.2.7/32", "except": []}},
        ]);
        let p = policy(json!({"egress": [{"to": to}]}));
        let peers = p.egress.unwrap()[0].peers.clone().unwrap();
        let block = |cidr: &str, except: &[&str]| {
            Peer::IpBlock(IpBlock {
                cidr: net(cidr),
                except: except.iter().map(|e| net(e)).collect(),
            })
        };
        assert_eq!(
            peers,
            vec![
                block("172.17.0.0/16", &["172.17.1.0/24"]),
                block("10.0.0.0/8", &["10.2.0.0/16", "10.9.0.0/16"]),
                block("2001:db8::/32", &["2001:db8:ff::/48"]),
                block("0.0.0.0/0", &[]),
                block("192.0.2.7/32", &[]),
            ]
        );
    }

    #[test]
    fn ports_default_to_tcp_and_resolve_ranges_and_names() {
        let ports = json!([
            {"port": 6379},
            {"protocol": "UDP", "port": 53},
            {"protocol": "SCTP"},
            {},
            {"protocol": "TCP", "port": 32000, "endPort": 32768},
            {"port": 443, "endPort": 443},
            {"port": "http-alt"},
            {"protocol": "UDP", "port": "dns"},
            {"port": 1},
            {"port": 65535, "endPort": 65535},
        ]);
        let p = policy(json!({"ingress": [{"ports": ports}]}));
        let got = p.ingress.unwrap()[0].ports.clone().unwrap();
        let port = |protocol, port| Port { protocol, port };
        assert_eq!(
            got,
            vec![
                tcp(6379, 6379),
                port(Protocol::Udp, PortMatch::Range(53, 53)),
                port(Protocol::Sctp, PortMatch::All),
                port(Protocol::Tcp, PortMatch::All),
                tcp(32000, 32768),
                tcp(443, 443),
                port(Protocol::Tcp, PortMatch::Named("http-alt".into())),
                port(Protocol::Udp, PortMatch::Named("dns".into())),
                tcp(1, 1),
                tcp(65535, 65535),
            ]
        );
    }

    #[test]
    fn selectors_and_match_labels_with_match_expressions() {
        let p = policy(json!({"podSelector": {
            "matchLabels": {"app": "web", "example.com/tier": "front"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging", "prod"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "track", "operator": "NotIn", "values": ["canary"]},
                {"key": "owner", "operator": "Exists", "values": []},
                {"key": "empty-value", "operator": "In", "values": [""]},
            ],
        }}));
        let expected = Selector::new([
            req("app", Operator::In, &["web"]),
            req("example.com/tier", Operator::In, &["front"]),
            req("env", Operator::In, &["prod", "staging"]),
            req("legacy", Operator::DoesNotExist, &[]),
            req("track", Operator::NotIn, &["canary"]),
            req("owner", Operator::Exists, &[]),
            req("empty-value", Operator::In, &[""]),
        ]);
        assert_eq!(p.pod_selector, expected);
        // The AND of matchLabels and matchExpressions, evaluated as Kubernetes does.
        let pod = |pairs: &[(&str, &str)]| Labels::new(pairs.iter().copied());
        let full = [
            ("app", "web"),
            ("example.com/tier", "front"),
            ("env", "staging"),
            ("owner", "me"),
            ("empty-value", ""),
        ];
        assert!(p.pod_selector.matches(&pod(&full)));
        let mut canary = full.to_vec();
        canary.push(("track", "canary"));
        assert!(!p.pod_selector.matches(&pod(&canary)));
        assert!(!p.pod_selector.matches(&pod(&full[1..])));
    }

    // --- Namespace, Pod, Node -------------------------------------------------------------

    #[test]
    fn namespaces_carry_their_name_label() {
        let mut c = Converter::new();
        let cases = [
            (
                json!({"metadata": {"name": "prod"}}),
                vec![("kubernetes.io/metadata.name", "prod")],
            ),
            (
                json!({"metadata": {"name": "prod", "labels": {"team": "a"}}}),
                vec![("kubernetes.io/metadata.name", "prod"), ("team", "a")],
            ),
            // The API server forces the label to the name; so do we.
            (
                json!({"metadata": {"name": "prod", "labels": {"kubernetes.io/metadata.name": "other"}}}),
                vec![("kubernetes.io/metadata.name", "prod")],
            ),
        ];
        for (json, labels) in cases {
            let ns = c.namespace(&k8s(json.clone())).unwrap();
            assert_eq!(ns.name.as_ref(), "prod");
            assert_eq!(ns.labels, Labels::new(labels), "{json}");
        }
    }

    fn pod_json() -> Value {
        json!({
            "metadata": {"name": "web-7d4b9c-x2x", "namespace": "prod", "labels": {"app": "web"}},
            "spec": {
                "nodeName": "node-1",
                "containers": [
                    {"name": "web", "ports": [
                        {"containerPort": 8080, "name": "http"},
                        {"containerPort": 9090},
                        {"containerPort": 5353, "name": "dns", "protocol": "UDP"},
                    ]},
                    {"name": "sidecar", "ports": [{"containerPort": 15090, "name": "metrics", "protocol": "TCP"}]},
                ],
                "initContainers": [{"name": "init", "ports": [{"containerPort": 1, "name": "init-port"}]}],
            },
            "status": {
                "phase": "Running",
                "podIP": "10.244.1.5",
                "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}],
            },
        })
    }

    #[test]
    fn pods_keep_what_policy_needs() {
        let pod = Converter::new().pod(&k8s(pod_json())).unwrap();
        assert_eq!(pod.key().to_string(), "prod/web-7d4b9c-x2x");
        assert_eq!(pod.labels, Labels::new([("app", "web")]));
        assert_eq!(pod.node_name.as_deref(), Some("node-1"));
        assert!(!pod.host_network);
        assert_eq!(pod.phase, PodPhase::Running);
        assert_eq!(
            pod.ips,
            vec![
                "10.244.1.5".parse::<IpAddr>().unwrap(),
                "fd00:10:244:1::5".parse().unwrap()
            ]
        );
        let port = |name: &str, protocol, port| NamedPort {
            name: name.into(),
            protocol,
            port,
        };
        // Unnamed ports and init containers are dropped; protocol defaults to TCP.
        assert_eq!(
            pod.named_ports,
            vec![
                port("http", Protocol::Tcp, 8080),
                port("dns", Protocol::Udp, 5353),
                port("metrics", Protocol::Tcp, 15090),
            ]
        );
        assert_eq!(pod.named_port("dns", Protocol::Udp), Some(5353));
        assert_eq!(pod.named_port("dns", Protocol::Tcp), None);
    }

    #[test]
    fn pod_defaults_namespace_phase_and_falls_back_to_pod_ip() {
        let mut c = Converter::new();
        let bare = c.pod(&k8s(json!({"metadata": {"name": "bare"}}))).unwrap();
        assert_eq!(bare.namespace.as_ref(), "default");
        assert_eq!(bare.phase, PodPhase::Pending);
        assert!(bare.ips.is_empty() && bare.named_ports.is_empty() && bare.node_name.is_none());
        assert!(!bare.is_policy_relevant());

        let old = c
            .pod(&k8s(json!({
                "metadata": {"name": "old"},
                "spec": {"containers": [], "hostNetwork": true},
                "status": {"podIP": "192.168.0.10", "podIPs": [], "phase": "Succeeded"},
            })))
            .unwrap();
        assert_eq!(old.ips, vec!["192.168.0.10".parse::<IpAddr>().unwrap()]);
        assert!(old.host_network);
        assert_eq!(old.phase, PodPhase::Succeeded);
    }

    #[test]
    fn nodes_keep_internal_and_external_addresses() {
        let node = Converter::new()
            .node(&k8s(json!({
                "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
                "status": {"addresses": [
                    {"type": "Hostname", "address": "node-1"},
                    {"type": "InternalIP", "address": "172.18.0.2"},
                    {"type": "InternalIP", "address": "fc00:f853:ccd:e793::2"},
                    {"type": "ExternalIP", "address": "203.0.113.9"},
                    {"type": "InternalDNS", "address": "node-1.cluster.local"},
                    {"type": "ExternalIP", "address": "172.18.0.2"},
                ]},
            })))
            .unwrap();
        assert_eq!(node.name.as_ref(), "node-1");
        assert_eq!(node.labels.get("kubernetes.io/hostname"), Some("node-1"));
        let want: Vec<IpAddr> = ["172.18.0.2", "fc00:f853:ccd:e793::2", "203.0.113.9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(node.addresses, want);
    }

    #[test]
    fn identical_strings_are_shared_between_objects() {
        let mut c = Converter::new();
        let a = c.pod(&k8s(pod_json())).unwrap();
        let mut other = pod_json();
        other["metadata"]["name"] = json!("web-7d4b9c-y3y");
        let b = c.pod(&k8s(other)).unwrap();
        let value = |p: &Pod| p.labels.iter().next().map(|(_, v)| v.as_ptr()).unwrap();
        assert_eq!(value(&a), value(&b), "label values share one allocation");
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        assert!(Arc::ptr_eq(
            a.node_name.as_ref().unwrap(),
            b.node_name.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(&a.named_ports[0].name, &b.named_ports[0].name));

        // Forgetting keeps strings still held by live objects ...
        let before = c.cached_strings();
        c.forget_unused();
        assert_eq!(c.cached_strings(), before);
        // ... and drops the rest once those objects are gone.
        drop((a, b));
        c.forget_unused();
        c.forget_unused();
        assert_eq!(c.cached_strings(), 0);
    }

    // --- errors ---------------------------------------------------------------------------

    /// Every validation rule: (spec, expected message). Each message names the object and the
    /// field as Kubernetes spells it.
    #[test]
    fn invalid_policies_are_rejected_with_object_and_field() {
        let cases: Vec<(Value, &str)> = vec![
            // policyTypes
            (
                json!({"policyTypes": ["Ingress", "Egress", "Ingress"]}),
                "spec.policyTypes: may not specify more than two policyTypes (got 3)",
            ),
            (
                json!({"policyTypes": ["Ingress", "ingress"]}),
                "spec.policyTypes[1]: unsupported value \"ingress\" (supported: Ingress, Egress)",
            ),
            // peers
            (
                json!({"ingress": [{"from": [{"podSelector": {}}, {}]}]}),
                "spec.ingress[0].from[1]: required: must specify a peer (podSelector, namespaceSelector or ipBlock)",
            ),
            (
                json!({"egress": [{}, {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
                "spec.egress[1].to[0]: forbidden: may not specify both ipBlock and another peer",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}]}]}),
                "spec.ingress[0].from[0]: forbidden: may not specify both ipBlock and another peer",
            ),
            // ipBlock
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": ""}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr: required",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr: required",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "172.17.0.0/33"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr: invalid value \"172.17.0.0/33\": prefix length must be a number from 0 to 32",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "2001:db8::/129"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr: invalid value \"2001:db8::/129\": prefix length must be a number from 0 to 128",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr: invalid value \"10.0.0.1\": not a CIDR: expected address/prefix-length, e.g. 10.0.0.0/16",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.256/24"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr: invalid value \"10.0.0.256/24\": \"10.0.0.256\" is not an IPv4 or IPv6 address",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/+8"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr: invalid value \"10.0.0.0/+8\": prefix length must be a number from 0 to 32",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.1.0.0/ab"]}}]}]}),
                "spec.ingress[0].from[0].ipBlock.except[1]: invalid value \"10.1.0.0/ab\": prefix length must be a number from 0 to 32",
            ),
            (
                json!({"ingress": [{"from": [{"podSelector": {}}, {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.18.1.0/24"]}}]}]}),
                "spec.ingress[0].from[1].ipBlock.except[0]: \"172.18.1.0/24\" is not a strict subset of cidr 172.17.0.0/16",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.0.0/16"]}}]}]}),
                "spec.ingress[0].from[0].ipBlock.except[0]: \"172.17.0.0/16\" is not a strict subset of cidr 172.17.0.0/16",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.0.0.0/8"]}}]}]}),
                "spec.ingress[0].from[0].ipBlock.except[0]: \"172.0.0.0/8\" is not a strict subset of cidr 172.17.0.0/16",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}]}]}),
                "spec.egress[0].to[0].ipBlock.except[0]: \"fd00::/64\" is not in the same address family as cidr 10.0.0.0/8",
            ),
            // ports
            (
                json!({"ingress": [{"ports": [{"port": 80}, {"port": 90, "endPort": 80}]}]}),
                "spec.ingress[0].ports[1].endPort: must not be less than port (80 < 90)",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 80, "endPort": 65536}]}]}),
                "spec.ingress[0].ports[0].endPort: must be between 1 and 65535, inclusive (got 65536)",
            ),
            (
                json!({"ingress": [{"ports": [{"endPort": 80}]}]}),
                "spec.ingress[0].ports[0].endPort: forbidden: may not be specified when port is not specified",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "http", "endPort": 80}]}]}),
                "spec.ingress[0].ports[0].endPort: forbidden: may not be specified when port is a name",
            ),
            (
                json!({"egress": [{"ports": [{"port": 0}]}]}),
                "spec.egress[0].ports[0].port: must be between 1 and 65535, inclusive (got 0)",
            ),
            (
                json!({"egress": [{"ports": [{"port": 65536}]}]}),
                "spec.egress[0].ports[0].port: must be between 1 and 65535, inclusive (got 65536)",
            ),
            (
                json!({"egress": [{"ports": [{"port": -1}]}]}),
                "spec.egress[0].ports[0].port: must be between 1 and 65535, inclusive (got -1)",
            ),
            (
                json!({"ingress": [{"ports": [{"protocol": "tcp", "port": 80}]}]}),
                "spec.ingress[0].ports[0].protocol: unsupported value \"tcp\" (supported: TCP, UDP, SCTP)",
            ),
            (
                json!({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
                "spec.ingress[0].ports[0].protocol: unsupported value \"ICMP\" (supported: TCP, UDP, SCTP)",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "HTTP"}]}]}),
                "spec.ingress[0].ports[0].port: invalid value \"HTTP\": must contain only lowercase letters, digits and '-'",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "80"}]}]}),
                "spec.ingress[0].ports[0].port: invalid value \"80\": must contain at least one letter (a-z)",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "web--http"}]}]}),
                "spec.ingress[0].ports[0].port: invalid value \"web--http\": must not contain consecutive hyphens",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "-http"}]}]}),
                "spec.ingress[0].ports[0].port: invalid value \"-http\": must not begin or end with a hyphen",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "a-very-long-port-name"}]}]}),
                "spec.ingress[0].ports[0].port: invalid value \"a-very-long-port-name\": must be no more than 15 characters",
            ),
            (
                json!({"ingress": [{"ports": [{"port": ""}]}]}),
                "spec.ingress[0].ports[0].port: invalid value \"\": must contain only lowercase letters, digits and '-'",
            ),
            // selectors
            (
                json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["web"]}]}}),
                "spec.podSelector.matchExpressions[0].operator: unsupported value \"Equals\" (supported: In, NotIn, Exists, DoesNotExist)",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "app"}]}}),
                "spec.podSelector.matchExpressions[0].operator: required",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"operator": "Exists"}]}}),
                "spec.podSelector.matchExpressions[0].key: required",
            ),
            (
                json!({"ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": []}]}}]}]}),
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values: required: must be specified when operator is In or NotIn",
            ),
            (
                json!({"ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "env", "operator": "NotIn"}]}}]}]}),
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].values: required: must be specified when operator is In or NotIn",
            ),
            (
                json!({"egress": [{"to": [{"podSelector": {"matchExpressions": [{"key": "env", "operator": "Exists", "values": ["x"]}]}}]}]}),
                "spec.egress[0].to[0].podSelector.matchExpressions[0].values: forbidden: may not be specified when operator is Exists or DoesNotExist",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["ok", "not ok"]}]}}),
                "spec.podSelector.matchExpressions[0].values[1]: invalid value \"not ok\": must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "Bad_Prefix.com/app", "operator": "Exists"}]}}),
                "spec.podSelector.matchExpressions[0].key: invalid value \"Bad_Prefix.com/app\": prefix part must be a lowercase RFC 1123 subdomain (e.g. example.com)",
            ),
            (
                json!({"podSelector": {"matchLabels": {"app": "web", "a/b/c": "x"}}}),
                "spec.podSelector.matchLabels[a/b/c]: invalid value \"a/b/c\": a label key may contain at most one '/'",
            ),
            (
                json!({"podSelector": {"matchLabels": {"/app": "x"}}}),
                "spec.podSelector.matchLabels[/app]: invalid value \"/app\": prefix part must not be empty",
            ),
            (
                json!({"podSelector": {"matchLabels": {"example.com/": "x"}}}),
                "spec.podSelector.matchLabels[example.com/]: invalid value \"example.com/\": name part must not be empty",
            ),
            (
                json!({"podSelector": {"matchLabels": {"app": "-web"}}}),
                "spec.podSelector.matchLabels[app]: invalid value \"-web\": must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ),
            (
                json!({"podSelector": {"matchLabels": {"app": "x".repeat(64)}}}),
                "spec.podSelector.matchLabels[app]: invalid value \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\": must be no more than 63 characters",
            ),
            (
                json!({"podSelector": {"matchLabels": {"k".repeat(64): "x"}}}),
                "spec.podSelector.matchLabels[kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk]: invalid value \"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\": name part must be no more than 63 characters",
            ),
            // A section that policyTypes ignores is still validated.
            (
                json!({"policyTypes": ["Egress"], "ingress": [{"ports": [{"port": 0}]}]}),
                "spec.ingress[0].ports[0].port: must be between 1 and 65535, inclusive (got 0)",
            ),
        ];
        for (spec, want) in cases {
            match convert_policy(spec.clone()) {
                Ok(p) => panic!("{spec} should be rejected, got {p:?}"),
                Err(e) => {
                    assert_eq!(
                        e.to_string(),
                        format!("NetworkPolicy prod/allow-web: {want}")
                    );
                    assert_eq!(e.kind, "NetworkPolicy");
                    assert_eq!(e.object, "prod/allow-web");
                }
            }
        }
    }

    #[test]
    fn invalid_metadata_is_rejected() {
        let mut c = Converter::new();
        let np = |meta: Value| -> netv1::NetworkPolicy { k8s(json!({"metadata": meta})) };
        let cases: Vec<(netv1::NetworkPolicy, &str)> = vec![
            (
                np(json!({})),
                "NetworkPolicy default/<unnamed>: metadata.name: required",
            ),
            (
                np(json!({"name": "Allow_Web"})),
                "NetworkPolicy default/Allow_Web: metadata.name: invalid value \"Allow_Web\": must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
            ),
            (
                np(json!({"name": "allow.web", "namespace": "my.ns"})),
                "NetworkPolicy my.ns/allow.web: metadata.namespace: invalid value \"my.ns\": must be a lowercase RFC 1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit",
            ),
            (
                np(json!({"name": "x", "labels": {"app": "a b"}})),
                "NetworkPolicy default/x: metadata.labels[app]: invalid value \"a b\": must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ),
        ];
        for (obj, want) in cases {
            assert_eq!(c.network_policy(&obj).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn invalid_namespaces_pods_and_nodes_are_rejected() {
        let mut c = Converter::new();
        let ns = |v: Value| -> corev1::Namespace { k8s(v) };
        let node = |v: Value| -> corev1::Node { k8s(v) };
        let pod = |v: Value| -> corev1::Pod { k8s(v) };
        let with_port = |port: Value| {
            pod(json!({
                "metadata": {"name": "web", "namespace": "prod"},
                "spec": {"containers": [{"name": "a"}, {"name": "b", "ports": [{"containerPort": 80}, port]}]},
            }))
        };
        let long = "n".repeat(64);
        let long_message = format!(
            "Namespace {long}: metadata.name: invalid value \"{long}\": must be no more than 63 characters"
        );
        let results: Vec<(Result<(), ConvertError>, &str)> = vec![
            (
                c.namespace(&ns(json!({"metadata": {}}))).map(drop),
                "Namespace <unnamed>: metadata.name: required",
            ),
            (
                c.namespace(&ns(json!({"metadata": {"name": "a.b"}}))).map(drop),
                "Namespace a.b: metadata.name: invalid value \"a.b\": must be a lowercase RFC 1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit",
            ),
            (
                c.namespace(&ns(json!({"metadata": {"name": long}}))).map(drop),
                &long_message,
            ),
            (
                c.node(&node(json!({"metadata": {"name": "node-1"}, "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.300"}]}}))).map(drop),
                "Node node-1: status.addresses[0].address: invalid value \"172.18.0.300\": not an IPv4 or IPv6 address",
            ),
            (
                c.node(&node(json!({"metadata": {"name": "node-1", "labels": {"node-role.kubernetes.io/control-plane": "", "bad key": "x"}}}))).map(drop),
                "Node node-1: metadata.labels[bad key]: invalid value \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ),
            (
                c.pod(&with_port(json!({"containerPort": 8080, "name": "HTTP"}))).map(drop),
                "Pod prod/web: spec.containers[1].ports[1].name: invalid value \"HTTP\": must contain only lowercase letters, digits and '-'",
            ),
            (
                c.pod(&with_port(json!({"containerPort": 0, "name": "http"}))).map(drop),
                "Pod prod/web: spec.containers[1].ports[1].containerPort: must be between 1 and 65535, inclusive (got 0)",
            ),
            (
                c.pod(&with_port(json!({"name": "http"}))).map(drop),
                "Pod prod/web: spec.containers[1].ports[1].containerPort: must be between 1 and 65535, inclusive (got 0)",
            ),
            (
                c.pod(&with_port(json!({"containerPort": 80, "name": "http", "protocol": "HTTP"}))).map(drop),
                "Pod prod/web: spec.containers[1].ports[1].protocol: unsupported value \"HTTP\" (supported: TCP, UDP, SCTP)",
            ),
            (
                c.pod(&pod(json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a", "ports": [
                    {"containerPort": 80, "name": "http"}, {"containerPort": 81, "name": "http", "protocol": "UDP"}]}]}}))).map(drop),
                "Pod default/web: spec.containers[0].ports[1].name: duplicate value \"http\"",
            ),
            (
                c.pod(&pod(json!({"metadata": {"name": "web"}, "status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1::2"}]}}))).map(drop),
                "Pod default/web: status.podIPs[1].ip: invalid value \"fd00::1::2\": not an IPv4 or IPv6 address",
            ),
            (
                c.pod(&pod(json!({"metadata": {"name": "web"}, "status": {"podIPs": [{}]}}))).map(drop),
                "Pod default/web: status.podIPs[0].ip: required",
            ),
            (
                c.pod(&pod(json!({"metadata": {"name": "web"}, "status": {"podIP": "010.0.0.1"}}))).map(drop),
                "Pod default/web: status.podIP: invalid value \"010.0.0.1\": not an IPv4 or IPv6 address",
            ),
            (
                c.pod(&pod(json!({"metadata": {"name": "web"}, "status": {"phase": "Sleeping"}}))).map(drop),
                "Pod default/web: status.phase: unsupported value \"Sleeping\" (supported: Pending, Running, Succeeded, Failed, Unknown)",
            ),
            (
                c.pod(&pod(json!({"metadata": {"name": "web"}, "spec": {"containers": [], "nodeName": "Node_1"}}))).map(drop),
                "Pod default/web: spec.nodeName: invalid value \"Node_1\": must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
            ),
            (
                c.pod(&pod(json!({"metadata": {"name": "web\nx"}}))).map(drop),
                "Pod default/web\\nx: metadata.name: invalid value \"web\\nx\": must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
            ),
        ];
        for (result, want) in results {
            assert_eq!(result.unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn syntax_rules_accept_what_kubernetes_accepts() {
        for ok in ["a", "0", "a-b", "a.b.c", &"a".repeat(253)] {
            assert_eq!(dns1123_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", ".a", &"a".repeat(254)] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
        for ok in [
            "app",
            "App.Name_x-1",
            "example.com/app",
            "kubernetes.io/metadata.name",
            "a",
        ] {
            assert_eq!(qualified_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "_a",
            "a_",
            "a b",
            "Example.com/app",
            "a/b/c",
            "/a",
            "a/",
        ] {
            assert!(qualified_name(bad).is_err(), "{bad}");
        }
        for ok in ["", "a", "A-b_c.d", &"x".repeat(63)] {
            assert_eq!(label_value(ok), Ok(()), "{ok}");
        }
        for bad in ["-", "a-", "a b", "é", &"x".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad}");
        }
        for ok in ["http", "h2c", "dns-tcp", "a", "web-80", "abcdefghijklmno"] {
            assert_eq!(port_name_syntax(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "80",
            "Http",
            "a--b",
            "-a",
            "a-",
            "abcdefghijklmnop",
            "a_b",
        ] {
            assert!(port_name_syntax(bad).is_err(), "{bad}");
        }
    }

    // --- never panics ---------------------------------------------------------------------

    mod no_panic {
        use super::*;
        use proptest::collection::{btree_map, vec};
        use proptest::option::of;
        use proptest::prelude::*;

        /// Strings that hit the edges of every syntax rule.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                "[a-z0-9./:_-]{0,12}",
                "[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,3}",
                "[0-9a-f:]{0,12}/[0-9]{1,3}",
                any::<String>(),
                Just("In".to_string()),
                Just("Exists".to_string()),
                Just("TCP".to_string()),
                Just("Ingress".to_string()),
                Just("Egress".to_string()),
            ]
        }

        fn selector() -> impl Strategy<Value = Value> {
            let expr = (text(), text(), of(vec(text(), 0..3)))
                .prop_map(|(k, o, v)| json!({"key": k, "operator": o, "values": v}));
            (of(btree_map(text(), text(), 0..3)), of(vec(expr, 0..3))).prop_map(
                |(labels, exprs)| json!({"matchLabels": labels, "matchExpressions": exprs}),
            )
        }

        fn peer() -> impl Strategy<Value = Value> {
            let block =
                (text(), of(vec(text(), 0..3))).prop_map(|(c, e)| json!({"cidr": c, "except": e}));
            (of(selector()), of(selector()), of(block)).prop_map(
                |(p, n, b)| json!({"podSelector": p, "namespaceSelector": n, "ipBlock": b}),
            )
        }

        fn port() -> impl Strategy<Value = Value> {
            let number = prop_oneof![any::<i32>(), -2i32..70000];
            let port = prop_oneof![
                number.clone().prop_map(|i| json!(i)),
                text().prop_map(|s| json!(s))
            ];
            (of(text()), of(port), of(number)).prop_map(
                |(proto, port, end)| json!({"protocol": proto, "port": port, "endPort": end}),
            )
        }

        fn rule(peers: &'static str) -> impl Strategy<Value = Value> {
            (of(vec(peer(), 0..3)), of(vec(port(), 0..3)))
                .prop_map(move |(p, ports)| json!({peers: p, "ports": ports}))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_policies_convert_or_fail_cleanly(
                name in text(),
                namespace in of(text()),
                pod_selector in of(selector()),
                types in of(vec(text(), 0..4)),
                ingress in of(vec(rule("from"), 0..3)),
                egress in of(vec(rule("to"), 0..3)),
            ) {
                let np: netv1::NetworkPolicy = k8s(json!({
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"podSelector": pod_selector, "policyTypes": types,
                             "ingress": ingress, "egress": egress},
                }));
                match Converter::new().network_policy(&np) {
                    Ok(p) => {
                        // Whatever converts is in the normal form policy.rs documents.
                        for rule in [&p.ingress, &p.egress].into_iter().flatten().flatten() {
                            prop_assert!(rule.peers.as_ref().is_none_or(|v| !v.is_empty()));
                            prop_assert!(rule.ports.as_ref().is_none_or(|v| !v.is_empty()));
                            for port in rule.ports.iter().flatten() {
                                if let PortMatch::Range(lo, hi) = port.port {
                                    prop_assert!(1 <= lo && lo <= hi);
                                }
                            }
                            for peer in rule.peers.iter().flatten() {
                                if let Peer::IpBlock(b) = peer {
                                    prop_assert_eq!(b.cidr, b.cidr.trunc());
                                    for e in &b.except {
                                        prop_assert!(b.cidr.contains(e));
                                        prop_assert!(e.prefix_len() > b.cidr.prefix_len());
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        prop_assert_eq!(e.kind, "NetworkPolicy");
                        prop_assert!(!e.field.is_empty());
                    }
                }
            }

            #[test]
            fn arbitrary_pods_convert_or_fail_cleanly(
                name in text(),
                labels in btree_map(text(), text(), 0..3),
                ports in vec((of(text()), any::<i32>(), of(text())), 0..4),
                ips in vec(text(), 0..3),
                pod_ip in of(text()),
                phase in of(text()),
                node in of(text()),
            ) {
                let ports: Vec<Value> = ports
                    .into_iter()
                    .map(|(n, p, proto)| json!({"name": n, "containerPort": p, "protocol": proto}))
                    .collect();
                let ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
                let pod: corev1::Pod = k8s(json!({
                    "metadata": {"name": name, "labels": labels},
                    "spec": {"containers": [{"name": "c", "ports": ports}], "nodeName": node},
                    "status": {"podIPs": ips, "podIP": pod_ip, "phase": phase},
                }));
                if let Err(e) = Converter::new().pod(&pod) {
                    prop_assert_eq!(e.kind, "Pod");
                }
            }
        }
    }
}
