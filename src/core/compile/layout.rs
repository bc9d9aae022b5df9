//! The fixed shape of nftpol's table: base chains, dispatch maps, allow maps and the names of
//! everything the compiler creates.
//!
//! Keeping every name and every fixed object in one place is what lets a reader of
//! `nft list ruleset` map each line back to this file (and ARCHITECTURE.md).

use std::net::IpAddr;

use crate::core::policy::Direction;
use crate::nft::model::{
    Action, AnonSet, BaseChain, Chain, ChainPolicy, CtStates, Field, Hook, Key, KeyPart, KeyType,
    Match, NAME_MAX, Name, Rule, Set, SetRef, Verdict, icmpv6, proto, tcp_flags,
};

/// IP family of an address, a map or a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }

    pub fn saddr(self) -> Field {
        match self {
            Family::V4 => Field::IpSaddr,
            Family::V6 => Field::Ip6Saddr,
        }
    }

    pub fn daddr(self) -> Field {
        match self {
            Family::V4 => Field::IpDaddr,
            Family::V6 => Field::Ip6Daddr,
        }
    }

    pub fn addr_type(self) -> KeyType {
        match self {
            Family::V4 => KeyType::Ipv4Addr,
            Family::V6 => KeyType::Ipv6Addr,
        }
    }

    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];
}

/// The field holding the local pod's address for a direction: the destination for ingress,
/// the source for egress.
pub fn local_field(dir: Direction, fam: Family) -> Field {
    match dir {
        Direction::Ingress => fam.daddr(),
        Direction::Egress => fam.saddr(),
    }
}

/// The field holding the peer's address for a direction.
pub fn peer_field(dir: Direction, fam: Family) -> Field {
    match dir {
        Direction::Ingress => fam.saddr(),
        Direction::Egress => fam.daddr(),
    }
}

/// The five flattened allow maps of each direction and family (see ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AllowMap {
    /// local . peer : pod peers, all ports (hash)
    Peer,
    /// local . peer . l4proto : pod peers, every port of one protocol (hash)
    PeerProto,
    /// local . peer . l4proto . dport : pod peers, single ports (hash)
    PeerPort,
    /// local . peer-range : ipBlocks and any-peer, all ports (interval)
    Cidr,
    /// local . peer-range . l4proto . dport-range (interval)
    CidrPort,
}

impl AllowMap {
    pub const ALL: [AllowMap; 5] = [
        AllowMap::PeerPort,
        AllowMap::PeerProto,
        AllowMap::Peer,
        AllowMap::Cidr,
        AllowMap::CidrPort,
    ];

    fn tag(self) -> &'static str {
        match self {
            AllowMap::Peer => "peer",
            AllowMap::PeerProto => "peer_proto",
            AllowMap::PeerPort => "peer_port",
            AllowMap::Cidr => "cidr",
            AllowMap::CidrPort => "cidr_port",
        }
    }

    pub fn interval(self) -> bool {
        matches!(self, AllowMap::Cidr | AllowMap::CidrPort)
    }

    pub fn name(self, dir: Direction, fam: Family) -> Name {
        format!("{}_{}_{}", dir.as_str(), self.tag(), fam.suffix()).into()
    }

    /// The fields of the lookup key, local address first.
    pub fn key_fields(self, dir: Direction, fam: Family) -> Vec<Field> {
        let mut f = vec![local_field(dir, fam), peer_field(dir, fam)];
        match self {
            AllowMap::Peer | AllowMap::Cidr => {}
            AllowMap::PeerProto => f.push(Field::L4Proto),
            AllowMap::PeerPort | AllowMap::CidrPort => {
                f.push(Field::L4Proto);
                f.push(Field::ThDport);
            }
        }
        f
    }

    pub fn set(self, dir: Direction, fam: Family) -> Set {
        let key = self
            .key_fields(dir, fam)
            .into_iter()
            .map(Field::key_type)
            .collect();
        let set = Set::verdict_map(self.name(dir, fam), key);
        if self.interval() {
            set.with_interval()
        } else {
            set
        }
    }
}

/// The set of every known local pod address (isolated or not).
pub fn local_pods_set(fam: Family) -> Name {
    format!("local_pods_{}", fam.suffix()).into()
}

/// The interval set of this node's pod ranges (`spec.podCIDRs`).
pub fn local_pod_cidrs_set(fam: Family) -> Name {
    format!("local_pod_cidrs_{}", fam.suffix()).into()
}

/// `antispoof_<ifname>`: the ingress-hook chain on a pod's host interface. Named after the
/// device, because a base chain's device cannot change in place.
pub fn antispoof_chain_name(ifname: &str) -> Name {
    let clean: String = ifname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == ifname {
        name(&["antispoof", &clean])
    } else {
        let hash = format!("{:08x}", fnv1a(ifname.as_bytes()) as u32);
        name(&["antispoof", &clean, &hash])
    }
}

/// Name of the map that sends packets of isolated local pods that no allow map accepted to
/// their own chain (big peer groups, then the drop).
pub fn dispatch_map(dir: Direction, fam: Family) -> Name {
    format!("{}_pods_{}", dir.as_str(), fam.suffix()).into()
}

/// Chains that allow a pod's traffic to itself (hairpin through a Service): "a pod cannot
/// block access to itself".
pub const SELF_INGRESS: &str = "self_ingress";
pub const SELF_EGRESS: &str = "self_egress";

/// The chain a pod's own address maps to in its `peer` map.
pub fn self_chain(dir: Direction) -> Name {
    match dir {
        Direction::Ingress => SELF_INGRESS.into(),
        Direction::Egress => SELF_EGRESS.into(),
    }
}
/// Priority of both base chains: `filter` (0). After Service DNAT (`dstnat`, -100).
pub const FILTER_PRIORITY: i32 = 0;

/// Builds a chain or set name from parts joined by `_`. Kubernetes names never contain `_`,
/// so names stay unambiguous. A name longer than the kernel allows is cut and suffixed with a
/// hash of the full name.
pub fn name(parts: &[&str]) -> Name {
    let full = parts.join("_");
    if full.len() <= NAME_MAX {
        return full.into();
    }
    let hash = format!("{:016x}", fnv1a(full.as_bytes()));
    let mut cut = NAME_MAX - hash.len() - 1;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{}", &full[..cut], hash).into()
}

/// 64-bit FNV-1a: a stable, dependency-free hash for name suffixes.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `ingress_<ns>_<pod>` / `egress_<ns>_<pod>`.
pub fn pod_chain(dir: Direction, namespace: &str, pod: &str) -> Name {
    name(&[dir.as_str(), namespace, pod])
}

/// `np_<ns>_<policy>_<direction>_<index>`: the one-rule chain of a policy rule.
pub fn rule_chain(dir: Direction, namespace: &str, policy: &str, index: usize) -> Name {
    name(&["np", namespace, policy, dir.as_str(), &index.to_string()])
}

/// Trims a comment to what nft accepts, marking the cut.
pub fn comment(text: String) -> String {
    use crate::nft::model::COMMENT_MAX;
    if text.len() <= COMMENT_MAX {
        return text;
    }
    let mut cut = COMMENT_MAX - 3;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

/// The set of local pods isolated in a direction: every other packet of that direction is
/// accepted after one lookup.
pub fn isolated_set(dir: Direction, fam: Family) -> Name {
    format!("{}_isolated_{}", dir.as_str(), fam.suffix()).into()
}

/// The regular chain holding a direction's checks, reached from the base chains.
pub fn direction_chain(dir: Direction) -> Name {
    dir.as_str().into()
}

/// Base chains: (name, hook, priority, direction). Egress runs just before ingress on the
/// forward hook, so same-node traffic passes the sender's egress and then the receiver's
/// ingress: an `accept` only ends the base chain it happens in.
pub const BASE_CHAINS: [(&str, Hook, i32, Direction); 3] = [
    (
        "forward_egress",
        Hook::Forward,
        FILTER_PRIORITY - 1,
        Direction::Egress,
    ),
    (
        "forward_ingress",
        Hook::Forward,
        FILTER_PRIORITY,
        Direction::Ingress,
    ),
    (
        "input_egress",
        Hook::Input,
        FILTER_PRIORITY,
        Direction::Egress,
    ),
];

/// What each allow map holds, for the comments of the lookups.
fn allow_map_comment(map: AllowMap) -> &'static str {
    match map {
        AllowMap::PeerPort => "pod peers on single ports: elements name the policy rule",
        AllowMap::PeerProto => "pod peers on every port of a protocol",
        AllowMap::Peer => "pod peers on every port, and each pod itself",
        AllowMap::Cidr => "ipBlocks and any peer, every port",
        AllowMap::CidrPort => "ipBlocks and any peer on ports, and port ranges",
    }
}

/// The table skeleton: base chains, the direction chains and every global set and map, all
/// empty of elements.
pub fn skeleton(table: &str) -> crate::nft::model::Table {
    let mut t = crate::nft::model::Table::new(table);
    for fam in Family::BOTH {
        let known = Set::new(local_pods_set(fam), vec![fam.addr_type()]);
        t.sets.insert(known.name.clone(), known);
        let ranges = Set::new(local_pod_cidrs_set(fam), vec![fam.addr_type()]).with_interval();
        t.sets.insert(ranges.name.clone(), ranges);
    }
    for dir in Direction::BOTH {
        for fam in Family::BOTH {
            let d = Set::verdict_map(dispatch_map(dir, fam), vec![fam.addr_type()]);
            t.sets.insert(d.name.clone(), d);
            let i = Set::new(isolated_set(dir, fam), vec![fam.addr_type()]);
            t.sets.insert(i.name.clone(), i);
            for m in AllowMap::ALL {
                let s = m.set(dir, fam);
                t.sets.insert(s.name.clone(), s);
            }
        }
        let c = direction_chain_rules(dir);
        t.chains.insert(c.name.clone(), c);
    }
    for (name, hook, priority, dir) in BASE_CHAINS {
        let mut c = Chain::base(
            name,
            BaseChain {
                hook,
                priority,
                policy: ChainPolicy::Accept,
            },
        );
        c.rules.push(Rule::new(
            vec![],
            Action::Verdict(Verdict::Jump(direction_chain(dir))),
        ));
        t.chains.insert(c.name.clone(), c);
    }
    for dir in Direction::BOTH {
        let mut c = Chain::regular(self_chain(dir));
        c.rules.push(
            Rule::new(vec![], Action::Verdict(Verdict::Accept))
                .counted()
                .comment("a pod can always reach itself"),
        );
        t.chains.insert(c.name.clone(), c);
    }
    t
}

/// The checks of one direction, in order: replies and neighbour discovery pass; addresses of
/// this node's pod range that no known pod holds are dropped; traffic of pods not isolated in
/// this direction is accepted after one lookup; then one lookup per allow map (an element is
/// `goto` the allowing policy rule's chain, which accepts); what is left goes to the pod's own
/// chain (rules for big peer groups, then a counted drop).
fn direction_chain_rules(dir: Direction) -> Chain {
    let mut c = Chain::regular(direction_chain(dir));
    // Packets of tracked connections pass, except a bare SYN: conntrack lets a SYN through as
    // `established` when it reuses the addresses and ports of a connection conntrack still
    // tracks (its entry outlived the endpoints, or the client reopens from the same port).
    // That is a new connection, and the policy in force now must decide on it.
    let tracked = CtStates::ESTABLISHED.union(CtStates::RELATED);
    c.rules.push(
        Rule::new(
            vec![
                Match::CtState(tracked),
                Match::TcpFlags {
                    mask: tcp_flags::SYN | tcp_flags::ACK,
                    value: tcp_flags::SYN,
                    negate: true,
                },
            ],
            Action::Verdict(Verdict::Accept),
        )
        .comment("tracked connections; a bare SYN meets the policy"),
    );
    c.rules.push(Rule::new(
        vec![
            Match::CtState(tracked),
            Match::Cmp {
                field: Field::L4Proto,
                negate: true,
                value: KeyPart::Proto(proto::TCP),
            },
        ],
        Action::Verdict(Verdict::Accept),
    ));
    c.rules.push(Rule::new(
        vec![Match::Lookup {
            key: vec![Field::Icmpv6Type],
            set: SetRef::Anonymous(AnonSet {
                interval: false,
                elements: [
                    icmpv6::ND_ROUTER_SOLICIT,
                    icmpv6::ND_ROUTER_ADVERT,
                    icmpv6::ND_NEIGHBOR_SOLICIT,
                    icmpv6::ND_NEIGHBOR_ADVERT,
                ]
                .into_iter()
                .map(|t| Key::new(vec![KeyPart::Icmpv6Type(t)]))
                .collect(),
            }),
            negate: false,
        }],
        Action::Verdict(Verdict::Accept),
    ));
    // An address of this node's pod ranges that no known pod holds is a pod whose policy is
    // not in place yet (or no pod at all): drop, so no pod is ever reachable unprotected.
    let side = match dir {
        Direction::Egress => "source",
        Direction::Ingress => "destination",
    };
    for fam in Family::BOTH {
        let field = local_field(dir, fam);
        c.rules.push(
            Rule::new(
                vec![
                    Match::Lookup {
                        key: vec![field],
                        set: SetRef::Named(local_pod_cidrs_set(fam)),
                        negate: false,
                    },
                    Match::Lookup {
                        key: vec![field],
                        set: SetRef::Named(local_pods_set(fam)),
                        negate: true,
                    },
                ],
                Action::Verdict(Verdict::Drop),
            )
            .counted()
            .comment(format!("{side} in this node's pod range but no known pod")),
        );
    }
    for fam in Family::BOTH {
        c.rules.push(Rule::new(
            vec![Match::Lookup {
                key: vec![local_field(dir, fam)],
                set: SetRef::Named(isolated_set(dir, fam)),
                negate: true,
            }],
            Action::Verdict(Verdict::Accept),
        ));
    }
    for fam in Family::BOTH {
        for map in AllowMap::ALL {
            c.rules.push(
                Rule::new(
                    vec![],
                    Action::VMap {
                        key: map.key_fields(dir, fam),
                        map: map.name(dir, fam),
                    },
                )
                .comment(allow_map_comment(map)),
            );
        }
    }
    for fam in Family::BOTH {
        c.rules.push(Rule::new(
            vec![],
            Action::VMap {
                key: vec![local_field(dir, fam)],
                map: dispatch_map(dir, fam),
            },
        ));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_to_the_kernel_limit_with_a_stable_hash() {
        let pod = "p".repeat(253);
        let n = pod_chain(Direction::Ingress, &"n".repeat(63), &pod);
        assert_eq!(n.len(), NAME_MAX);
        assert!(n.starts_with("ingress_nnn"));
        assert_eq!(n, pod_chain(Direction::Ingress, &"n".repeat(63), &pod));
        let other = pod_chain(
            Direction::Ingress,
            &"n".repeat(63),
            &format!("{}q", &pod[1..]),
        );
        assert_ne!(n, other, "different pods must not share a shortened name");
    }

    #[test]
    fn short_names_are_left_alone() {
        assert_eq!(
            &*pod_chain(Direction::Egress, "prod", "web-1"),
            "egress_prod_web-1"
        );
        assert_eq!(
            &*rule_chain(Direction::Ingress, "prod", "allow-web", 2),
            "np_prod_allow-web_ingress_2"
        );
    }

    #[test]
    fn comments_are_trimmed_to_the_nft_limit() {
        let c = comment("x".repeat(300));
        assert_eq!(c.len(), crate::nft::model::COMMENT_MAX);
        assert!(c.ends_with("..."));
    }
}
