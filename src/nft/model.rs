//! The typed nftables ruleset: what the core computes and what the dataplane programs.
//!
//! Everything nftpol puts into the kernel is described here as plain data: one [`Table`] with
//! its [`Chain`]s, [`Rule`]s and [`Set`]s (maps are sets with verdict data). The text printer
//! (`nft::text`) and the netlink encoder (`dataplane`) are two printers of this one model, so
//! what `nftpol render` shows is exactly what `nftpol apply` programs.
//!
//! The model is deliberately small: it can express only the statements nftpol needs. Every
//! variant must have a text form that `nft -f` accepts and that `nft list ruleset` prints back
//! the same way, and a netlink form that produces the bytecode `nft` itself would produce for
//! that text.
//!
//! Collections are ordered (`BTreeMap`) so rendering and diffing are deterministic.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// Name of a chain or set. Shared, because thousands of map elements point at the same chain.
pub type Name = Arc<str>;

/// Address family of a table. nftpol only ever uses `inet` (IPv4 and IPv6 in one table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Inet,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
        }
    }
}

/// One nftables table, owned by nftpol alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    /// Sets and maps by name.
    pub sets: BTreeMap<Name, Set>,
    /// Chains by name.
    pub chains: BTreeMap<Name, Chain>,
}

impl Table {
    pub fn new(name: impl Into<String>) -> Self {
        Table {
            family: Family::Inet,
            name: name.into(),
            sets: BTreeMap::new(),
            chains: BTreeMap::new(),
        }
    }

    /// Number of set and map elements in the whole table.
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }

    /// Number of rules in the whole table.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }
}

/// Netfilter hook of a base chain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    /// The inet `ingress` hook on one device (kernel 5.10+): sees packets as they arrive on
    /// that interface, before bridging or routing. Used for anti-spoofing on pod veths.
    Ingress {
        device: String,
    },
}

impl Hook {
    pub fn as_str(&self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
            Hook::Ingress { .. } => "ingress",
        }
    }
}

/// Default verdict of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainPolicy {
    Accept,
    Drop,
}

/// What makes a chain a base chain: its hook. Always of type `filter`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BaseChain {
    pub hook: Hook,
    /// Numeric priority; printed symbolically (`filter`, `filter - 5`) where nft would.
    pub priority: i32,
    pub policy: ChainPolicy,
}

/// A chain: a base chain (with a hook) or a regular chain reached by jump/goto/vmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: Name,
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

impl Chain {
    pub fn regular(name: impl Into<Name>) -> Self {
        Chain {
            name: name.into(),
            base: None,
            rules: Vec::new(),
        }
    }

    pub fn base(name: impl Into<Name>, base: BaseChain) -> Self {
        Chain {
            name: name.into(),
            base: Some(base),
            rules: Vec::new(),
        }
    }
}

/// One rule: matches (all must hold), then an optional counter, then an action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub counter: bool,
    pub action: Action,
    /// Rule comment (nft limits it to 128 bytes; longer comments are a model error).
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(matches: Vec<Match>, action: Action) -> Self {
        Rule {
            matches,
            counter: false,
            action,
            comment: None,
        }
    }

    pub fn counted(mut self) -> Self {
        self.counter = true;
        self
    }

    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }
}

/// Longest rule or set comment nft accepts (`NFTNL_UDATA_COMMENT_MAXLEN`, without the NUL).
pub const COMMENT_MAX: usize = 127;

/// Longest chain or set name the kernel accepts (`NFT_NAME_MAXLEN` is 256 with the NUL).
pub const NAME_MAX: usize = 255;

/// What a rule does when its matches hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// No verdict: the rule only counts (or does nothing) and evaluation continues.
    Continue,
    Verdict(Verdict),
    /// `key vmap @map`: look the key up in a verdict map and apply the verdict found; no
    /// match continues with the next rule.
    VMap {
        key: Vec<Field>,
        map: Name,
    },
}

/// A verdict, as a rule action or as the data of a verdict map element.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(Name),
    Goto(Name),
}

/// A packet or connection field that rules match on and set keys are made of.
///
/// Each field has one nft spelling (`ip saddr`, `meta l4proto`, ...) and one set key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// `meta nfproto`: ipv4 or ipv6 (in an inet table).
    NfProto,
    /// `meta l4proto`: the transport protocol number.
    L4Proto,
    /// `ip saddr`
    IpSaddr,
    /// `ip daddr`
    IpDaddr,
    /// `ip6 saddr`
    Ip6Saddr,
    /// `ip6 daddr`
    Ip6Daddr,
    /// `th dport`: destination port of TCP, UDP or SCTP (raw transport header, offset 2).
    ThDport,
    /// `icmpv6 type`
    Icmpv6Type,
    /// `iifname`
    Iifname,
    /// `oifname`
    Oifname,
}

impl Field {
    /// The set key type that holds values of this field.
    pub fn key_type(self) -> KeyType {
        match self {
            Field::NfProto => KeyType::NfProto,
            Field::L4Proto => KeyType::InetProto,
            Field::IpSaddr | Field::IpDaddr => KeyType::Ipv4Addr,
            Field::Ip6Saddr | Field::Ip6Daddr => KeyType::Ipv6Addr,
            Field::ThDport => KeyType::InetService,
            Field::Icmpv6Type => KeyType::Icmpv6Type,
            Field::Iifname | Field::Oifname => KeyType::Ifname,
        }
    }
}

/// A condition on the packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `ct state <states>`: conntrack state is one of the given ones.
    CtState(CtStates),
    /// `<field> <value>` or `<field> != <value>`.
    Cmp {
        field: Field,
        negate: bool,
        value: KeyPart,
    },
    /// `<f1> . <f2> ... [!=] @set` or with an anonymous set `{ ... }`.
    Lookup {
        key: Vec<Field>,
        set: SetRef,
        negate: bool,
    },
    /// `tcp flags [!=] <value> / <mask>`: the TCP flags byte, masked, equals (or differs
    /// from) `value`. Implies `meta l4proto tcp`: a packet of another protocol never
    /// matches, negated or not. Bits are [`tcp_flags`].
    TcpFlags { mask: u8, value: u8, negate: bool },
}

/// Conntrack states as a bit set, in the kernel's bit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtStates(pub u32);

impl CtStates {
    pub const INVALID: CtStates = CtStates(1);
    pub const ESTABLISHED: CtStates = CtStates(1 << 1);
    pub const RELATED: CtStates = CtStates(1 << 2);
    pub const NEW: CtStates = CtStates(1 << 3);
    pub const UNTRACKED: CtStates = CtStates(1 << 6);

    pub fn union(self, other: CtStates) -> CtStates {
        CtStates(self.0 | other.0)
    }
}

/// The set a lookup consults.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SetRef {
    /// A named set or map of the table.
    Named(Name),
    /// An anonymous constant set, written inline in the rule (`{ tcp . 80, udp . 53 }`). Its
    /// key types follow from the lookup's fields.
    Anonymous(AnonSet),
}

/// The elements of an anonymous set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnonSet {
    /// Whether elements may hold ranges (an interval set).
    pub interval: bool,
    pub elements: Vec<Key>,
}

/// Type of one component of a set key (nft's datatypes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    /// `ipv4_addr`
    Ipv4Addr,
    /// `ipv6_addr`
    Ipv6Addr,
    /// `inet_proto`
    InetProto,
    /// `inet_service`
    InetService,
    /// `ifname`
    Ifname,
    /// `nf_proto`
    NfProto,
    /// `icmpv6_type`
    Icmpv6Type,
}

impl KeyType {
    /// nft's name of the datatype, as in `type ipv4_addr . inet_service`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ipv4_addr",
            KeyType::Ipv6Addr => "ipv6_addr",
            KeyType::InetProto => "inet_proto",
            KeyType::InetService => "inet_service",
            KeyType::Ifname => "ifname",
            KeyType::NfProto => "nf_proto",
            KeyType::Icmpv6Type => "icmpv6_type",
        }
    }
}

/// What a map maps to. nftpol only uses verdict maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    Verdict,
}

/// A named set, or a map when `data` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: Name,
    /// Key components; more than one makes a concatenation (`ipv4_addr . inet_service`).
    pub key: Vec<KeyType>,
    /// `Some` makes this a map; every element then carries a value.
    pub data: Option<DataType>,
    /// `flags interval`: elements may hold ranges and prefixes.
    pub interval: bool,
    pub comment: Option<String>,
    /// Elements with their value (`None` for plain sets, `Some` for maps).
    pub elements: BTreeMap<Key, Option<Verdict>>,
}

impl Set {
    pub fn new(name: impl Into<Name>, key: Vec<KeyType>) -> Self {
        Set {
            name: name.into(),
            key,
            data: None,
            interval: false,
            comment: None,
            elements: BTreeMap::new(),
        }
    }

    pub fn verdict_map(name: impl Into<Name>, key: Vec<KeyType>) -> Self {
        Set {
            data: Some(DataType::Verdict),
            ..Set::new(name, key)
        }
    }

    pub fn with_interval(mut self) -> Self {
        self.interval = true;
        self
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// True when the two sets have the same definition (everything but their elements).
    pub fn same_definition(&self, other: &Set) -> bool {
        self.name == other.name
            && self.key == other.key
            && self.data == other.data
            && self.interval == other.interval
            && self.comment == other.comment
    }
}

/// A set element key: one part per key component, in order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub Vec<KeyPart>);

impl Key {
    pub fn new(parts: Vec<KeyPart>) -> Self {
        Key(parts)
    }
}

/// One component of a key, or a value compared against a field.
///
/// Ranges are inclusive at both ends and only valid in interval sets. An address range that
/// is exactly a prefix is printed as `a/len`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPart {
    V4(Ipv4Addr),
    V4Range(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr),
    V6Range(Ipv6Addr, Ipv6Addr),
    /// An `inet_proto` (IP protocol number).
    Proto(u8),
    /// An `inet_service` (port).
    Port(u16),
    PortRange(u16, u16),
    /// An interface name (`ifname`).
    Ifname(String),
    /// `ipv4` (2) or `ipv6` (10) for `meta nfproto`.
    NfProto(u8),
    /// An ICMPv6 type number.
    Icmpv6Type(u8),
}

/// Well-known protocol numbers.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// TCP header flag bits (`tcp flags`), in the kernel's bit order (the order nft prints them).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECN: u8 = 0x40;
    pub const CWR: u8 = 0x80;
    /// nft's names, bit by bit.
    pub const NAMES: [(u8, &str); 8] = [
        (FIN, "fin"),
        (SYN, "syn"),
        (RST, "rst"),
        (PSH, "psh"),
        (ACK, "ack"),
        (URG, "urg"),
        (ECN, "ecn"),
        (CWR, "cwr"),
    ];
}

/// `meta nfproto` values.
pub mod nfproto {
    pub const IPV4: u8 = 2;
    pub const IPV6: u8 = 10;
}

/// ICMPv6 neighbour discovery message types.
pub mod icmpv6 {
    pub const ND_ROUTER_SOLICIT: u8 = 133;
    pub const ND_ROUTER_ADVERT: u8 = 134;
    pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
    pub const ND_NEIGHBOR_ADVERT: u8 = 136;
}
