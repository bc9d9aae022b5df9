//! What one isolated local pod contributes to the table, computed from scratch.
//!
//! For each direction in which some policy isolates the pod: a chain that consults the allow
//! maps (one lookup per non-empty map, so chain length does not grow with the number of
//! policies), rules for big peer groups kept as shared sets, and a counted drop; the pod's
//! elements in the dispatch and allow maps; and the per-rule chains and shared sets it uses.
//! Everything a pod owns is keyed by its own IPs or named after it, so outputs of different
//! pods never collide and can be diffed independently.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::layout::{self, AllowMap, Family};
use super::ranges::{self, AddrRange, PortRange};
use super::{Compiler, GroupKey};
use crate::core::cluster::{ObjectKey, Pod, Protocol, Str};
use crate::core::policy::{Direction, Peer, PortMatch, Rule as PolicyRule};
use crate::nft::model::{
    Action, AnonSet, Chain, Field, Key, KeyPart, KeyType, Match, Name, Rule, SetRef, Verdict,
};

/// A local pod's share of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PodOutput {
    /// The pod's chains: `ingress_<ns>_<pod>` and `egress_<ns>_<pod>` when isolated, and the
    /// anti-spoofing base chain on its host interface when the CNI plugin reported one.
    pub chains: BTreeMap<Name, Chain>,
    /// The pod's elements, by set or map.
    pub elements: BTreeMap<Name, BTreeMap<Key, Option<Verdict>>>,
    /// Per-rule chains the elements and rules jump to.
    pub rule_chains: BTreeMap<Name, Chain>,
    /// Shared sets of big peer groups the rules use.
    pub shared_sets: BTreeMap<Name, SharedSpec>,
    /// Peer groups the output was computed from (small and big).
    pub groups: BTreeSet<GroupKey>,
}

/// A shared set: the IPs of a big peer group in one family, optionally joined with a named
/// port (`ip . proto . port` of each member that has it) for egress named ports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct SharedSpec {
    pub group: GroupKey,
    pub named_port: Option<(Str, Protocol)>,
    pub family: Family,
}

impl SharedSpec {
    pub fn name(&self) -> Name {
        let mut text = format!("{:?}", self.group);
        if let Some((n, p)) = &self.named_port {
            text.push_str(&format!("/{n}/{p}"));
        }
        let hash = format!("{:016x}", layout::fnv1a(text.as_bytes()));
        match &self.named_port {
            None => layout::name(&["peers", &hash, self.family.suffix()]),
            Some((n, p)) => layout::name(&[
                "peers",
                &hash,
                n,
                &p.as_str().to_ascii_lowercase(),
                self.family.suffix(),
            ]),
        }
    }

    pub fn key_types(&self) -> Vec<KeyType> {
        match self.named_port {
            None => vec![self.family.addr_type()],
            Some(_) => vec![
                self.family.addr_type(),
                KeyType::InetProto,
                KeyType::InetService,
            ],
        }
    }

    pub fn describe(&self) -> String {
        let mut s = self.group.describe();
        if let Some((n, p)) = &self.named_port {
            s.push_str(&format!(" with port {n}/{p}"));
        }
        s
    }

    /// The element for one member IP, if the member belongs in this set.
    pub fn element(&self, ip: &IpAddr, pod: &Pod) -> Option<Key> {
        let addr = addr_part(ip);
        match &self.named_port {
            None => Some(Key::new(vec![addr])),
            Some((name, proto)) => pod.named_port(name, *proto).map(|port| {
                Key::new(vec![
                    addr,
                    KeyPart::Proto(proto.number()),
                    KeyPart::Port(port),
                ])
            }),
        }
    }
}

fn addr_part(ip: &IpAddr) -> KeyPart {
    match ip {
        IpAddr::V4(a) => KeyPart::V4(*a),
        IpAddr::V6(a) => KeyPart::V6(*a),
    }
}

/// The rank of a pod's own addresses in its allow maps.
const SELF_RANK: u32 = 0;

/// Ports of a rule after resolving what can be resolved for this pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortSel {
    /// Every port of a protocol.
    Proto(u8),
    /// An inclusive port range of a protocol (single port when lo == hi).
    Range(u8, u16, u16),
}

impl PortSel {
    fn range(self) -> (u8, PortRange) {
        match self {
            PortSel::Proto(p) => (p, (0, u16::MAX)),
            PortSel::Range(p, lo, hi) => (p, (lo, hi)),
        }
    }
}

/// A rule's resolved ports: `None` = every port and protocol.
struct Ports {
    all: bool,
    numeric: Vec<PortSel>,
    /// Egress named ports, resolved later against each destination pod.
    named: Vec<(Str, Protocol)>,
}

/// An (address range x port range) allowance with its rank.
type Rect = (AddrRange, PortRange, u32);

/// Collects one direction's allowances of one pod before they become elements and rules.
struct Accumulator {
    dir: Direction,
    local: Vec<IpAddr>,
    /// Hash map elements without the local address: (map, family) -> peer key parts -> rank.
    hash: BTreeMap<(AllowMap, Family), BTreeMap<Vec<KeyPart>, u32>>,
    /// ipBlock / any-peer ranges, all ports.
    cidr: BTreeMap<Family, Vec<(AddrRange, u32)>>,
    /// ipBlock / any-peer / pod-with-port-range rectangles, per protocol.
    cidr_port: BTreeMap<(Family, u8), Vec<Rect>>,
    /// Rules for big groups, with the rank they belong to.
    big_rules: Vec<Rule>,
    /// Rank -> (rule chain, label).
    ranks: Vec<(Name, String)>,
}

impl Accumulator {
    fn families(&self) -> BTreeSet<Family> {
        self.local.iter().map(Family::of).collect()
    }

    fn hash_insert(&mut self, map: AllowMap, fam: Family, peer: Vec<KeyPart>, rank: u32) {
        // Ranks only grow, so the first rule that allows a key keeps it.
        self.hash
            .entry((map, fam))
            .or_default()
            .entry(peer)
            .or_insert(rank);
    }

    /// Allowances towards a set of peer address ranges (ipBlock or any peer).
    fn ranges(&mut self, fam: Family, ranges: &[AddrRange], ports: &Ports, rank: u32) {
        if ports.all {
            self.cidr
                .entry(fam)
                .or_default()
                .extend(ranges.iter().map(|r| (*r, rank)));
        }
        for sel in &ports.numeric {
            let (proto, pr) = sel.range();
            self.cidr_port
                .entry((fam, proto))
                .or_default()
                .extend(ranges.iter().map(|r| (*r, pr, rank)));
        }
    }

    /// Allowances towards one peer pod IP (flattened).
    fn peer_ip(&mut self, ip: IpAddr, ports: &Ports, rank: u32) {
        let fam = Family::of(&ip);
        let peer = addr_part(&ip);
        if ports.all {
            self.hash_insert(AllowMap::Peer, fam, vec![peer.clone()], rank);
        }
        for sel in &ports.numeric {
            match *sel {
                PortSel::Proto(p) => self.hash_insert(
                    AllowMap::PeerProto,
                    fam,
                    vec![peer.clone(), KeyPart::Proto(p)],
                    rank,
                ),
                PortSel::Range(p, lo, hi) if lo == hi => self.hash_insert(
                    AllowMap::PeerPort,
                    fam,
                    vec![peer.clone(), KeyPart::Proto(p), KeyPart::Port(lo)],
                    rank,
                ),
                PortSel::Range(p, lo, hi) => {
                    let (_, r) = AddrRange::single(&ip);
                    self.cidr_port
                        .entry((fam, p))
                        .or_default()
                        .push((r, (lo, hi), rank));
                }
            }
        }
    }

    /// One resolved `(peer ip, protocol, port)` of an egress named port.
    fn peer_named(&mut self, ip: IpAddr, proto: Protocol, port: u16, rank: u32) {
        let fam = Family::of(&ip);
        self.hash_insert(
            AllowMap::PeerPort,
            fam,
            vec![
                addr_part(&ip),
                KeyPart::Proto(proto.number()),
                KeyPart::Port(port),
            ],
            rank,
        );
    }

    /// Turns the collected allowances into map elements and chain rules.
    fn finish(self, out: &mut PodOutput, pod_label: &str, policies: &str) -> Vec<Rule> {
        let mut rules = Vec::new();
        let goto = |rank: u32| Verdict::Goto(self.ranks[rank as usize].0.clone());
        for fam in self.families() {
            let locals: Vec<KeyPart> = self
                .local
                .iter()
                .filter(|ip| Family::of(ip) == fam)
                .map(addr_part)
                .collect();
            for map in AllowMap::ALL {
                let mut elements: BTreeMap<Key, u32> = BTreeMap::new();
                match map {
                    AllowMap::Peer | AllowMap::PeerProto | AllowMap::PeerPort => {
                        if let Some(peers) = self.hash.get(&(map, fam)) {
                            for (peer, rank) in peers {
                                for l in &locals {
                                    let mut k = Vec::with_capacity(1 + peer.len());
                                    k.push(l.clone());
                                    k.extend(peer.iter().cloned());
                                    elements.insert(Key::new(k), *rank);
                                }
                            }
                        }
                    }
                    AllowMap::Cidr => {
                        if let Some(rs) = self.cidr.get(&fam) {
                            for (r, rank) in ranges::partition(rs) {
                                for l in &locals {
                                    elements
                                        .insert(Key::new(vec![l.clone(), r.key_part(fam)]), rank);
                                }
                            }
                        }
                    }
                    AllowMap::CidrPort => {
                        for ((f, proto), rects) in &self.cidr_port {
                            if *f != fam {
                                continue;
                            }
                            for (r, (plo, phi), rank) in ranges::partition_2d(rects) {
                                let port = if plo == phi {
                                    KeyPart::Port(plo)
                                } else {
                                    KeyPart::PortRange(plo, phi)
                                };
                                for l in &locals {
                                    elements.insert(
                                        Key::new(vec![
                                            l.clone(),
                                            r.key_part(fam),
                                            KeyPart::Proto(*proto),
                                            port.clone(),
                                        ]),
                                        rank,
                                    );
                                }
                            }
                        }
                    }
                }
                if elements.is_empty() {
                    continue;
                }
                out.elements
                    .entry(map.name(self.dir, fam))
                    .or_default()
                    .extend(elements.into_iter().map(|(k, r)| (k, Some(goto(r)))));
            }
        }
        rules.extend(self.big_rules);
        rules.push(
            Rule::new(vec![], Action::Verdict(Verdict::Drop))
                .counted()
                .comment(layout::comment(format!(
                    "{pod_label} {}: isolated by {policies}",
                    self.dir
                ))),
        );
        rules
    }
}

impl Compiler {
    /// Computes a pod's output from scratch; `None` when the pod is not local, not relevant,
    /// or not isolated in any direction.
    pub(super) fn compute_output(&mut self, key: &ObjectKey) -> Option<PodOutput> {
        let pod = Pod::clone(self.pods.get(key)?);
        if !self.is_local(&pod) || !pod.is_policy_relevant() {
            return None;
        }
        let local: Vec<IpAddr> = self.owned_ips(key, &pod).collect();
        if local.is_empty() {
            return None;
        }
        let mut out = PodOutput::default();
        let policy_names: Vec<Str> = self
            .policies_by_ns
            .get(&pod.namespace)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for dir in Direction::BOTH {
            let policies: Vec<_> = policy_names
                .iter()
                .filter_map(|n| {
                    self.policies
                        .get(&ObjectKey::new(pod.namespace.clone(), n.clone()))
                })
                .filter(|p| p.rules(dir).is_some() && p.pod_selector.matches(&pod.labels))
                .cloned()
                .collect();
            if policies.is_empty() {
                continue;
            }
            let mut acc = Accumulator {
                dir,
                local: local.clone(),
                hash: BTreeMap::new(),
                cidr: BTreeMap::new(),
                cidr_port: BTreeMap::new(),
                big_rules: Vec::new(),
                // Rank 0: the pod itself, always allowed, before any policy rule.
                ranks: vec![(layout::self_chain(dir), "itself".to_string())],
            };
            for ip in &local {
                acc.hash_insert(
                    AllowMap::Peer,
                    Family::of(ip),
                    vec![addr_part(ip)],
                    SELF_RANK,
                );
            }
            for policy in &policies {
                for (index, rule) in policy.rules(dir).unwrap_or_default().iter().enumerate() {
                    let chain = layout::rule_chain(dir, &policy.namespace, &policy.name, index);
                    let label = format!("{}/{} {dir}[{index}]", policy.namespace, policy.name);
                    let rank = acc.ranks.len() as u32;
                    acc.ranks.push((chain.clone(), label.clone()));
                    out.rule_chains
                        .insert(chain.clone(), rule_chain(&chain, dir, &label));
                    self.emit_rule(&mut acc, &mut out, &pod, dir, rule, rank);
                }
            }
            let pod_label = format!("{}/{}", pod.namespace, pod.name);
            let names: Vec<String> = policies
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            let chain = layout::pod_chain(dir, &pod.namespace, &pod.name);
            let rules = acc.finish(&mut out, &pod_label, &names.join(", "));
            for ip in &local {
                let fam = Family::of(ip);
                let key = Key::new(vec![addr_part(ip)]);
                out.elements
                    .entry(layout::isolated_set(dir, fam))
                    .or_default()
                    .insert(key.clone(), None);
                out.elements
                    .entry(layout::dispatch_map(dir, fam))
                    .or_default()
                    .insert(key, Some(Verdict::Goto(chain.clone())));
            }
            let mut c = Chain::regular(chain.clone());
            c.rules = rules;
            out.chains.insert(chain, c);
        }
        // Every local pod's addresses are known addresses of this node's pod ranges.
        for ip in &local {
            out.elements
                .entry(layout::local_pods_set(Family::of(ip)))
                .or_default()
                .insert(Key::new(vec![addr_part(ip)]), None);
        }
        if let Some(ifname) = self
            .attachments
            .get(key)
            .and_then(|a| a.host_interface.as_deref())
        {
            let chain = antispoof_chain(ifname, &local, &format!("{}/{}", pod.namespace, pod.name));
            out.chains.insert(chain.name.clone(), chain);
        }
        Some(out)
    }

    fn emit_rule(
        &mut self,
        acc: &mut Accumulator,
        out: &mut PodOutput,
        pod: &Pod,
        dir: Direction,
        rule: &PolicyRule,
        rank: u32,
    ) {
        let ports = resolve_ports(rule, pod, dir);
        if !ports.all && ports.numeric.is_empty() && ports.named.is_empty() {
            // Every port of the rule is a name this pod does not have: nothing allowed.
            return;
        }
        let fams = acc.families();
        let target = acc.ranks[rank as usize].0.clone();
        let label = acc.ranks[rank as usize].1.clone();
        match &rule.peers {
            None => {
                for fam in &fams {
                    acc.ranges(*fam, &[AddrRange::all(*fam)], &ports, rank);
                }
                if !ports.named.is_empty() {
                    self.emit_named(
                        acc,
                        out,
                        &GroupKey::all_pods(),
                        &ports,
                        rank,
                        &target,
                        &label,
                    );
                }
            }
            Some(peers) => {
                for peer in peers {
                    match peer {
                        Peer::IpBlock(block) => {
                            let (fam, rs) = ranges::block_ranges(block);
                            if fams.contains(&fam) {
                                acc.ranges(fam, &rs, &ports, rank);
                            }
                            if !ports.named.is_empty() {
                                let g = GroupKey::Block(block.clone());
                                self.emit_named(acc, out, &g, &ports, rank, &target, &label);
                            }
                        }
                        Peer::Pods { namespaces, pods } => {
                            let g = GroupKey::Pods {
                                namespaces: namespaces.clone(),
                                pods: pods.clone(),
                            };
                            self.emit_pods(acc, out, &g, &ports, rank, &target, &label);
                        }
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_pods(
        &mut self,
        acc: &mut Accumulator,
        out: &mut PodOutput,
        g: &GroupKey,
        ports: &Ports,
        rank: u32,
        target: &Name,
        label: &str,
    ) {
        let big = self.ensure_group(g);
        out.groups.insert(g.clone());
        if ports.all || !ports.numeric.is_empty() {
            if big {
                for fam in acc.families() {
                    let spec = SharedSpec {
                        group: g.clone(),
                        named_port: None,
                        family: fam,
                    };
                    let set = spec.name();
                    out.shared_sets.insert(set.clone(), spec);
                    let mut matches = vec![Match::Lookup {
                        key: vec![layout::peer_field(acc.dir, fam)],
                        set: SetRef::Named(set),
                        negate: false,
                    }];
                    if !ports.all {
                        matches.push(port_match(&ports.numeric));
                    }
                    acc.big_rules.push(
                        Rule::new(matches, Action::Verdict(Verdict::Goto(target.clone())))
                            .comment(layout::comment(label.to_string())),
                    );
                }
            } else {
                let fams = acc.families();
                for ip in self.group_ips(g) {
                    if fams.contains(&Family::of(&ip)) {
                        acc.peer_ip(ip, ports, rank);
                    }
                }
            }
        }
        if !ports.named.is_empty() {
            self.emit_named(acc, out, g, ports, rank, target, label);
        }
    }

    /// Egress named ports towards the members of a group.
    #[allow(clippy::too_many_arguments)]
    fn emit_named(
        &mut self,
        acc: &mut Accumulator,
        out: &mut PodOutput,
        g: &GroupKey,
        ports: &Ports,
        rank: u32,
        target: &Name,
        label: &str,
    ) {
        let big = self.ensure_group(g);
        out.groups.insert(g.clone());
        let fams = acc.families();
        if big {
            for fam in &fams {
                for (name, proto) in &ports.named {
                    let spec = SharedSpec {
                        group: g.clone(),
                        named_port: Some((name.clone(), *proto)),
                        family: *fam,
                    };
                    let set = spec.name();
                    out.shared_sets.insert(set.clone(), spec);
                    acc.big_rules.push(
                        Rule::new(
                            vec![Match::Lookup {
                                key: vec![
                                    layout::peer_field(acc.dir, *fam),
                                    Field::L4Proto,
                                    Field::ThDport,
                                ],
                                set: SetRef::Named(set),
                                negate: false,
                            }],
                            Action::Verdict(Verdict::Goto(target.clone())),
                        )
                        .comment(layout::comment(label.to_string())),
                    );
                }
            }
            return;
        }
        let members: Vec<ObjectKey> = self
            .groups
            .get(g)
            .map(|grp| grp.members.iter().cloned().collect())
            .unwrap_or_default();
        for member in members {
            let Some(pod) = self.pods.get(&member) else {
                continue;
            };
            for ip in self.owned_ips(&member, pod) {
                if !fams.contains(&Family::of(&ip)) {
                    continue;
                }
                if let GroupKey::Block(b) = g
                    && !b.contains(ip)
                {
                    continue;
                }
                for (name, proto) in &ports.named {
                    if let Some(port) = pod.named_port(name, *proto) {
                        acc.peer_named(ip, *proto, port, rank);
                    }
                }
            }
        }
    }

    /// Owned IPs of a group's members.
    fn group_ips(&self, g: &GroupKey) -> Vec<IpAddr> {
        let Some(group) = self.groups.get(g) else {
            return Vec::new();
        };
        let mut ips = Vec::new();
        for member in &group.members {
            if let Some(pod) = self.pods.get(member) {
                ips.extend(self.owned_ips(member, pod));
            }
        }
        ips
    }
}

/// Resolves a rule's ports for one pod: ingress named ports against the pod itself; egress
/// named ports are kept for resolution against each destination.
fn resolve_ports(rule: &PolicyRule, pod: &Pod, dir: Direction) -> Ports {
    let Some(list) = &rule.ports else {
        return Ports {
            all: true,
            numeric: Vec::new(),
            named: Vec::new(),
        };
    };
    let mut ports = Ports {
        all: false,
        numeric: Vec::new(),
        named: Vec::new(),
    };
    for p in list {
        let proto = p.protocol.number();
        match &p.port {
            PortMatch::All => ports.numeric.push(PortSel::Proto(proto)),
            PortMatch::Range(lo, hi) => ports.numeric.push(PortSel::Range(proto, *lo, *hi)),
            PortMatch::Named(name) => match dir {
                Direction::Ingress => {
                    if let Some(n) = pod.named_port(name, p.protocol) {
                        ports.numeric.push(PortSel::Range(proto, n, n));
                    }
                }
                Direction::Egress => ports.named.push((name.clone(), p.protocol)),
            },
        }
    }
    ports.numeric.sort_by_key(|s| match *s {
        PortSel::Proto(p) => (p, 0, u16::MAX),
        PortSel::Range(p, lo, hi) => (p, lo, hi),
    });
    ports.numeric.dedup();
    ports.named.sort();
    ports.named.dedup();
    ports
}

/// `meta l4proto . th dport { tcp . 80, udp . 53-60 }` for a big group's rule.
fn port_match(numeric: &[PortSel]) -> Match {
    let mut interval = false;
    let elements = numeric
        .iter()
        .map(|s| {
            let (proto, (lo, hi)) = s.range();
            let port = if lo == hi {
                KeyPart::Port(lo)
            } else {
                interval = true;
                KeyPart::PortRange(lo, hi)
            };
            Key::new(vec![KeyPart::Proto(proto), port])
        })
        .collect();
    Match::Lookup {
        key: vec![Field::L4Proto, Field::ThDport],
        set: SetRef::Anonymous(AnonSet { interval, elements }),
        negate: false,
    }
}

/// The one-rule chain of a policy rule: counts and accepts. An accept ends only the base
/// chain it happens in, so the receiver's ingress check (same node) still runs after an
/// egress accept.
fn rule_chain(name: &Name, _dir: Direction, label: &str) -> Chain {
    let mut chain = Chain::regular(name.clone());
    chain.rules.push(
        Rule::new(vec![], Action::Verdict(Verdict::Accept))
            .counted()
            .comment(layout::comment(
                label.replace('[', " rule ").replace(']', ""),
            )),
    );
    chain
}

/// The anti-spoofing chain of a pod: on the ingress hook of its host-side interface, packets
/// whose source is not one of the pod's addresses are dropped before they can borrow another
/// pod's allowances or escape the pod's egress policy. IPv6 link-local and unspecified sources
/// stay allowed (neighbour discovery, duplicate address detection).
fn antispoof_chain(ifname: &str, ips: &[IpAddr], pod: &str) -> Chain {
    let mut chain = Chain::base(
        layout::antispoof_chain_name(ifname),
        crate::nft::model::BaseChain {
            hook: crate::nft::model::Hook::Ingress {
                device: ifname.to_string(),
            },
            priority: layout::FILTER_PRIORITY,
            policy: crate::nft::model::ChainPolicy::Accept,
        },
    );
    let comment = layout::comment(format!("{pod}: forged source address"));
    let v4: Vec<Key> = ips
        .iter()
        .filter(|ip| ip.is_ipv4())
        .map(|ip| Key::new(vec![addr_part(ip)]))
        .collect();
    let v4_rule = if v4.is_empty() {
        Rule::new(
            vec![Match::Cmp {
                field: Field::NfProto,
                negate: false,
                value: KeyPart::NfProto(crate::nft::model::nfproto::IPV4),
            }],
            Action::Verdict(Verdict::Drop),
        )
    } else if let [only] = v4.as_slice() {
        // nft turns a one-element anonymous set into a comparison; so do we.
        Rule::new(
            vec![Match::Cmp {
                field: Field::IpSaddr,
                negate: true,
                value: only.0[0].clone(),
            }],
            Action::Verdict(Verdict::Drop),
        )
    } else {
        Rule::new(
            vec![Match::Lookup {
                key: vec![Field::IpSaddr],
                set: SetRef::Anonymous(AnonSet {
                    interval: false,
                    elements: v4,
                }),
                negate: true,
            }],
            Action::Verdict(Verdict::Drop),
        )
    };
    chain.rules.push(v4_rule.counted().comment(comment.clone()));
    let unspecified = std::net::Ipv6Addr::UNSPECIFIED;
    let mut v6: Vec<Key> = vec![
        Key::new(vec![KeyPart::V6(unspecified)]),
        Key::new(vec![KeyPart::V6Range(
            "fe80::".parse().unwrap_or(unspecified),
            "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                .parse()
                .unwrap_or(unspecified),
        )]),
    ];
    v6.extend(
        ips.iter()
            .filter(|ip| ip.is_ipv6())
            .map(|ip| Key::new(vec![addr_part(ip)])),
    );
    v6.sort();
    v6.dedup();
    chain.rules.push(
        Rule::new(
            vec![Match::Lookup {
                key: vec![Field::Ip6Saddr],
                set: SetRef::Anonymous(AnonSet {
                    interval: true,
                    elements: v6,
                }),
                negate: true,
            }],
            Action::Verdict(Verdict::Drop),
        )
        .counted()
        .comment(comment),
    );
    chain
}
