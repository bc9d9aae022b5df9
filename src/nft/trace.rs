//! A packet tracer over the typed ruleset: what the kernel would do with one packet.
//!
//! Tests of the compiler must not stop at "the table looks like the golden file": the question
//! users care about is which packets pass. [`trace`] answers it without a kernel, over the same
//! [`Table`] value the dataplane programs, so a property test can compare it with the reference
//! evaluator (`core::eval`) on thousands of random clusters. It is pure and deliberately literal.
//!
//! Kernel semantics it follows:
//!
//! - All base chains registered on the hook run in priority order (lower first; equal
//!   priorities, whose kernel order is registration order, run in name order). `accept` ends
//!   only the current base chain and the next one runs; `drop` is final. A packet that no base
//!   chain drops is accepted. With no base chain on the hook the packet is accepted.
//! - A rule's matches are ANDed. A match whose field cannot be loaded from this packet fails the
//!   whole rule, negated or not, as nft's implicit dependencies do: `ip saddr` carries
//!   `meta nfproto ipv4`, `icmpv6 type` carries `meta nfproto ipv6` and `meta l4proto
//!   ipv6-icmp`, and `iifname`/`oifname` fail where the hook has no such interface.
//! - `th dport` loads only when the packet has a destination port ([`Packet::dport`]).
//!   Simplification: the kernel emits no dependency for `th dport` and would read bytes 2-3 of
//!   any transport header (the ICMP checksum, say); nftpol always pairs it with `meta l4proto`.
//! - `jump` pushes a return address; `goto` does not, so a `return` (or falling off the end) of
//!   a chain entered by `goto` resumes after the last `jump`. `return` or the end of a base
//!   chain applies the base chain's policy. `vmap` applies the verdict of the matching element;
//!   no match continues with the next rule. Counters have no effect.
//! - Set lookups: each key component must equal the element's, or lie in its range (interval
//!   sets, including concatenations of ranges as in nft's `pipapo` sets). A range in a set
//!   without the interval flag, or two elements of a named interval set matching one key
//!   (overlap, which the kernel refuses), is a malformed table.
//! - Like the kernel's load-time validation, a chain nested [`MAX_DEPTH`] jumps/gotos below a
//!   base chain is an error; every jump or goto loop ends there.
//!
//! Malformed tables (missing chains or sets, key types that do not fit) are errors, never
//! silent misses: a tracer that quietly skipped them would hide exactly the bugs it is for.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use super::model::{
    Action, Chain, ChainPolicy, CtStates, Field, Hook, Key, KeyPart, KeyType, Match, Name, Rule,
    Set, SetRef, Table, Verdict, nfproto, proto, tcp_flags,
};

/// Deepest chain nesting the kernel accepts (`NFT_JUMP_STACK_SIZE`): a chain reached through
/// this many jumps/gotos from its base chain makes the table invalid.
pub const MAX_DEPTH: usize = 16;

/// The hook a packet is traced through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceHook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    /// The inet `ingress` hook of the packet's input device ([`Packet::iifname`]).
    Ingress,
}

/// Conntrack state of the packet's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtState {
    New,
    Established,
    Related,
    Invalid,
    Untracked,
}

impl CtState {
    fn bits(self) -> CtStates {
        match self {
            CtState::New => CtStates::NEW,
            CtState::Established => CtStates::ESTABLISHED,
            CtState::Related => CtStates::RELATED,
            CtState::Invalid => CtStates::INVALID,
            CtState::Untracked => CtStates::UNTRACKED,
        }
    }
}

/// The packet fields the model's matches read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (`meta l4proto`).
    pub l4proto: u8,
    /// Destination port, for protocols that have one (`th dport`).
    pub dport: Option<u16>,
    /// ICMPv6 type, for ICMPv6 packets.
    pub icmpv6_type: Option<u8>,
    pub ct_state: CtState,
    /// TCP flags of the segment (`tcp flags`), for TCP packets: a SYN for a new connection
    /// and an ACK for a tracked one unless set otherwise ([`Packet::tcp_flags`]).
    pub tcp_flags: Option<u8>,
    /// Input interface; `None` where the hook has none (output).
    pub iifname: Option<String>,
    /// Output interface; `None` where the hook has none yet (prerouting, input).
    pub oifname: Option<String>,
}

impl Packet {
    /// A packet of a new connection, without interfaces.
    pub fn new(src: IpAddr, dst: IpAddr, l4proto: u8, dport: Option<u16>) -> Self {
        Packet {
            src,
            dst,
            l4proto,
            dport,
            icmpv6_type: None,
            ct_state: CtState::New,
            tcp_flags: (l4proto == proto::TCP).then_some(tcp_flags::SYN),
            iifname: None,
            oifname: None,
        }
    }

    pub fn tcp(src: IpAddr, dst: IpAddr, dport: u16) -> Self {
        Packet::new(src, dst, proto::TCP, Some(dport))
    }

    pub fn udp(src: IpAddr, dst: IpAddr, dport: u16) -> Self {
        Packet::new(src, dst, proto::UDP, Some(dport))
    }

    pub fn sctp(src: IpAddr, dst: IpAddr, dport: u16) -> Self {
        Packet::new(src, dst, proto::SCTP, Some(dport))
    }

    /// An echo request: ICMP for IPv4, ICMPv6 (type 128) for IPv6.
    pub fn ping(src: IpAddr, dst: IpAddr) -> Self {
        if src.is_ipv4() {
            Packet::new(src, dst, proto::ICMP, None)
        } else {
            Packet::icmpv6(src, dst, 128)
        }
    }

    pub fn icmpv6(src: IpAddr, dst: IpAddr, icmpv6_type: u8) -> Self {
        Packet {
            icmpv6_type: Some(icmpv6_type),
            ..Packet::new(src, dst, proto::ICMPV6, None)
        }
    }

    /// Sets the conntrack state; a TCP packet becomes a SYN for [`CtState::New`] and an ACK
    /// for any other state (set other flags afterwards with [`Packet::tcp_flags`]).
    pub fn ct(mut self, state: CtState) -> Self {
        self.ct_state = state;
        if self.tcp_flags.is_some() {
            self.tcp_flags = Some(if state == CtState::New {
                tcp_flags::SYN
            } else {
                tcp_flags::ACK
            });
        }
        self
    }

    /// Sets the TCP flags (ignored unless the packet is TCP). A SYN whose conntrack state is
    /// established is what conntrack lets through when a client reuses the ports of a
    /// connection it still tracks.
    pub fn tcp_flags(mut self, flags: u8) -> Self {
        if self.l4proto == proto::TCP {
            self.tcp_flags = Some(flags);
        }
        self
    }

    pub fn iif(mut self, name: impl Into<String>) -> Self {
        self.iifname = Some(name.into());
        self
    }

    pub fn oif(mut self, name: impl Into<String>) -> Self {
        self.oifname = Some(name.into());
        self
    }
}

/// The packet's fate at the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Final {
    Accept,
    Drop,
}

/// What one evaluated rule did.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A match failed; the next rule runs.
    NoMatch,
    /// The matches held and the rule has no verdict (counter only); the next rule runs.
    Continue,
    /// The matches held and this verdict was applied (the rule's own, or a vmap element's).
    Verdict(Verdict),
    /// The matches held but the vmap key has no element; the next rule runs.
    VMapMiss,
}

/// One step of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    /// Rule `index` of `chain` was evaluated.
    Rule {
        chain: Name,
        index: usize,
        outcome: Outcome,
    },
    /// The base chain ended (by `return` or its last rule) and its policy applied.
    Policy { chain: Name, verdict: Final },
}

/// The result of [`trace`]: the verdict and every rule evaluated on the way, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub verdict: Final,
    pub steps: Vec<Step>,
}

impl Trace {
    pub fn accepted(&self) -> bool {
        self.verdict == Final::Accept
    }

    /// Rules whose matches all held, as (chain, index), in evaluation order.
    pub fn matched(&self) -> impl Iterator<Item = (&str, usize)> {
        self.steps.iter().filter_map(|s| match s {
            Step::Rule {
                chain,
                index,
                outcome,
            } if *outcome != Outcome::NoMatch => Some((chain.as_ref(), *index)),
            _ => None,
        })
    }

    /// Whether any rule of `chain` was evaluated.
    pub fn entered(&self, chain: &str) -> bool {
        self.steps.iter().any(|s| match s {
            Step::Rule { chain: c, .. } | Step::Policy { chain: c, .. } => c.as_ref() == chain,
        })
    }

    /// Chains in the order they were first entered.
    pub fn chains(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in &self.steps {
            let (Step::Rule { chain, .. } | Step::Policy { chain, .. }) = s;
            if !out.contains(&chain.as_ref()) {
                out.push(chain.as_ref());
            }
        }
        out
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            match s {
                Step::Rule {
                    chain,
                    index,
                    outcome,
                } => {
                    write!(f, "{chain}[{index}]: ")?;
                    match outcome {
                        Outcome::NoMatch => f.write_str("no match")?,
                        Outcome::Continue => f.write_str("match, continue")?,
                        Outcome::VMapMiss => f.write_str("vmap miss")?,
                        Outcome::Verdict(v) => write!(f, "{}", verdict_text(v))?,
                    }
                }
                Step::Policy { chain, verdict } => write!(f, "{chain}: policy {verdict:?}")?,
            }
            f.write_str("\n")?;
        }
        write!(f, "=> {:?}", self.verdict)
    }
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

/// A malformed table or packet: what the kernel would have refused, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TraceError {
    #[error("packet source {src} and destination {dst} are of different families")]
    FamilyMismatch { src: IpAddr, dst: IpAddr },
    #[error("rule {index} of chain {chain}: {verdict} targets missing chain {target}")]
    MissingChain {
        chain: String,
        index: usize,
        verdict: String,
        target: String,
    },
    #[error("rule {index} of chain {chain}: {verdict} targets base chain {target}")]
    JumpToBaseChain {
        chain: String,
        index: usize,
        verdict: String,
        target: String,
    },
    #[error(
        "rule {index} of chain {chain}: chain {target} would be nested {depth} deep (limit {MAX_DEPTH}): a loop or too many jumps"
    )]
    TooDeep {
        chain: String,
        index: usize,
        target: String,
        depth: usize,
    },
    #[error("rule {index} of chain {chain}: lookup of missing set {set}")]
    MissingSet {
        chain: String,
        index: usize,
        set: String,
    },
    #[error("rule {index} of chain {chain}: vmap on set {set}, which is not a verdict map")]
    NotAMap {
        chain: String,
        index: usize,
        set: String,
    },
    #[error("rule {index} of chain {chain}: key {fields:?} does not fit set {set} of type {key:?}")]
    KeyMismatch {
        chain: String,
        index: usize,
        set: String,
        fields: Vec<Field>,
        key: Vec<KeyType>,
    },
    #[error("rule {index} of chain {chain}: {field:?} cannot be compared with {value:?}")]
    ValueType {
        chain: String,
        index: usize,
        field: Field,
        value: KeyPart,
    },
    #[error("set {set}: element {element:?} does not fit key {fields:?}")]
    BadElement {
        set: String,
        element: Key,
        fields: Vec<Field>,
    },
    #[error("set {set}: range element {element:?} in a set without the interval flag")]
    RangeWithoutInterval { set: String, element: Key },
    #[error("set {set}: elements {first:?} and {second:?} overlap")]
    Overlap {
        set: String,
        first: Key,
        second: Key,
    },
    #[error("map {set}: element {element:?} has no verdict")]
    MissingVerdict { set: String, element: Key },
}

/// Where in the table a rule is, for error context.
#[derive(Clone, Copy)]
struct At<'a> {
    chain: &'a str,
    index: usize,
}

/// Traces `packet` through every base chain of `table` on `hook`. See the module docs.
pub fn trace(table: &Table, hook: TraceHook, packet: &Packet) -> Result<Trace, TraceError> {
    if packet.src.is_ipv4() != packet.dst.is_ipv4() {
        return Err(TraceError::FamilyMismatch {
            src: packet.src,
            dst: packet.dst,
        });
    }
    let mut bases: Vec<(&Chain, i32)> = table
        .chains
        .values()
        .filter_map(|c| {
            let base = c.base.as_ref()?;
            on_hook(&base.hook, hook, packet).then_some((c, base.priority))
        })
        .collect();
    bases.sort_by(|a, b| (a.1, &a.0.name).cmp(&(b.1, &b.0.name)));

    let mut steps = Vec::new();
    for (chain, _) in bases {
        if run_base(table, chain, packet, &mut steps)? == Final::Drop {
            return Ok(Trace {
                verdict: Final::Drop,
                steps,
            });
        }
    }
    Ok(Trace {
        verdict: Final::Accept,
        steps,
    })
}

fn on_hook(chain_hook: &Hook, hook: TraceHook, packet: &Packet) -> bool {
    match (chain_hook, hook) {
        (Hook::Prerouting, TraceHook::Prerouting)
        | (Hook::Input, TraceHook::Input)
        | (Hook::Forward, TraceHook::Forward)
        | (Hook::Output, TraceHook::Output)
        | (Hook::Postrouting, TraceHook::Postrouting) => true,
        (Hook::Ingress { device }, TraceHook::Ingress) => {
            packet.iifname.as_deref() == Some(device.as_str())
        }
        _ => false,
    }
}

/// A return address: the chain that jumped, the rule after the jump, and its nesting depth.
struct Frame<'t> {
    chain: &'t Chain,
    next: usize,
    depth: usize,
}

fn run_base(
    table: &Table,
    base: &Chain,
    packet: &Packet,
    steps: &mut Vec<Step>,
) -> Result<Final, TraceError> {
    let policy = match base.base.as_ref().map(|b| b.policy) {
        Some(ChainPolicy::Drop) => Final::Drop,
        _ => Final::Accept,
    };
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut chain = base;
    let mut index = 0usize;
    let mut depth = 0usize;
    loop {
        let Some(rule) = chain.rules.get(index) else {
            // The end of a chain: an implicit return.
            match stack.pop() {
                Some(frame) => {
                    (chain, index, depth) = (frame.chain, frame.next, frame.depth);
                    continue;
                }
                None => {
                    steps.push(Step::Policy {
                        chain: base.name.clone(),
                        verdict: policy,
                    });
                    return Ok(policy);
                }
            }
        };
        let at = At {
            chain: &chain.name,
            index,
        };
        let outcome = eval_rule(table, rule, packet, at)?;
        steps.push(Step::Rule {
            chain: chain.name.clone(),
            index,
            outcome: outcome.clone(),
        });
        let verdict = match outcome {
            Outcome::NoMatch | Outcome::Continue | Outcome::VMapMiss => {
                index += 1;
                continue;
            }
            Outcome::Verdict(v) => v,
        };
        match verdict {
            Verdict::Accept => return Ok(Final::Accept),
            Verdict::Drop => return Ok(Final::Drop),
            Verdict::Return => match stack.pop() {
                Some(frame) => (chain, index, depth) = (frame.chain, frame.next, frame.depth),
                None => {
                    steps.push(Step::Policy {
                        chain: base.name.clone(),
                        verdict: policy,
                    });
                    return Ok(policy);
                }
            },
            Verdict::Jump(ref target) | Verdict::Goto(ref target) => {
                let next = target_chain(table, &verdict, target, at)?;
                if depth + 1 >= MAX_DEPTH {
                    return Err(TraceError::TooDeep {
                        chain: at.chain.to_string(),
                        index,
                        target: target.to_string(),
                        depth: depth + 1,
                    });
                }
                if matches!(verdict, Verdict::Jump(_)) {
                    stack.push(Frame {
                        chain,
                        next: index + 1,
                        depth,
                    });
                }
                (chain, index, depth) = (next, 0, depth + 1);
            }
        }
    }
}

fn target_chain<'t>(
    table: &'t Table,
    verdict: &Verdict,
    target: &Name,
    at: At<'_>,
) -> Result<&'t Chain, TraceError> {
    let Some(chain) = table.chains.get(target) else {
        return Err(TraceError::MissingChain {
            chain: at.chain.to_string(),
            index: at.index,
            verdict: verdict_text(verdict),
            target: target.to_string(),
        });
    };
    if chain.base.is_some() {
        return Err(TraceError::JumpToBaseChain {
            chain: at.chain.to_string(),
            index: at.index,
            verdict: verdict_text(verdict),
            target: target.to_string(),
        });
    }
    Ok(chain)
}

fn eval_rule(
    table: &Table,
    rule: &Rule,
    packet: &Packet,
    at: At<'_>,
) -> Result<Outcome, TraceError> {
    for m in &rule.matches {
        if !eval_match(table, m, packet, at)? {
            return Ok(Outcome::NoMatch);
        }
    }
    match &rule.action {
        Action::Continue => Ok(Outcome::Continue),
        Action::Verdict(v) => Ok(Outcome::Verdict(v.clone())),
        Action::VMap { key, map } => {
            let Some(values) = load_all(key, packet) else {
                return Ok(Outcome::NoMatch);
            };
            let set = named_set(table, map, key, at)?;
            if set.data.is_none() {
                return Err(TraceError::NotAMap {
                    chain: at.chain.to_string(),
                    index: at.index,
                    set: map.to_string(),
                });
            }
            match find_element(
                &set.name,
                set.interval,
                true,
                set.elements.keys(),
                key,
                &values,
            )? {
                None => Ok(Outcome::VMapMiss),
                Some(element) => match set.elements.get(element).cloned().flatten() {
                    Some(v) => Ok(Outcome::Verdict(v)),
                    None => Err(TraceError::MissingVerdict {
                        set: map.to_string(),
                        element: element.clone(),
                    }),
                },
            }
        }
    }
}

fn eval_match(table: &Table, m: &Match, packet: &Packet, at: At<'_>) -> Result<bool, TraceError> {
    match m {
        Match::CtState(states) => Ok(states.0 & packet.ct_state.bits().0 != 0),
        Match::TcpFlags {
            mask,
            value,
            negate,
        } => Ok(packet
            .tcp_flags
            .is_some_and(|f| (f & mask == *value) != *negate)),
        Match::Cmp {
            field,
            negate,
            value,
        } => {
            let Some(loaded) = load(*field, packet) else {
                return Ok(false);
            };
            match part_matches(value, &loaded, true, true) {
                Some(eq) => Ok(eq != *negate),
                None => Err(TraceError::ValueType {
                    chain: at.chain.to_string(),
                    index: at.index,
                    field: *field,
                    value: value.clone(),
                }),
            }
        }
        Match::Lookup { key, set, negate } => {
            let Some(values) = load_all(key, packet) else {
                return Ok(false);
            };
            let found = match set {
                SetRef::Named(name) => {
                    let set = named_set(table, name, key, at)?;
                    find_element(
                        &set.name,
                        set.interval,
                        true,
                        set.elements.keys(),
                        key,
                        &values,
                    )?
                    .is_some()
                }
                SetRef::Anonymous(anon) => find_element(
                    &format!("anonymous set of rule {} in chain {}", at.index, at.chain),
                    anon.interval,
                    false,
                    anon.elements.iter(),
                    key,
                    &values,
                )?
                .is_some(),
            };
            Ok(found != *negate)
        }
    }
}

/// Looks up a named set and checks that the lookup key fits its type.
fn named_set<'t>(
    table: &'t Table,
    name: &Name,
    key: &[Field],
    at: At<'_>,
) -> Result<&'t Set, TraceError> {
    let Some(set) = table.sets.get(name) else {
        return Err(TraceError::MissingSet {
            chain: at.chain.to_string(),
            index: at.index,
            set: name.to_string(),
        });
    };
    let types: Vec<KeyType> = key.iter().map(|f| f.key_type()).collect();
    if types != set.key {
        return Err(TraceError::KeyMismatch {
            chain: at.chain.to_string(),
            index: at.index,
            set: name.to_string(),
            fields: key.to_vec(),
            key: set.key.clone(),
        });
    }
    Ok(set)
}

/// The element matching `values`, after checking every element is well-formed. With
/// `reject_overlap`, two matching elements of an interval set are an error (the kernel refuses
/// overlapping elements in named sets; nft merges them in anonymous ones).
fn find_element<'k>(
    set: &str,
    interval: bool,
    reject_overlap: bool,
    elements: impl Iterator<Item = &'k Key>,
    fields: &[Field],
    values: &[Value<'_>],
) -> Result<Option<&'k Key>, TraceError> {
    let mut found: Option<&Key> = None;
    for element in elements {
        let bad = || TraceError::BadElement {
            set: set.to_string(),
            element: element.clone(),
            fields: fields.to_vec(),
        };
        if element.0.len() != values.len() {
            return Err(bad());
        }
        if !interval && element.0.iter().any(is_range) {
            return Err(TraceError::RangeWithoutInterval {
                set: set.to_string(),
                element: element.clone(),
            });
        }
        let mut all = true;
        for (part, value) in element.0.iter().zip(values) {
            match part_matches(part, value, interval, interval) {
                Some(true) => {}
                Some(false) => all = false,
                None => return Err(bad()),
            }
        }
        if !all {
            continue;
        }
        match found {
            None => found = Some(element),
            Some(first) if reject_overlap => {
                return Err(TraceError::Overlap {
                    set: set.to_string(),
                    first: first.clone(),
                    second: element.clone(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(found)
}

fn is_range(part: &KeyPart) -> bool {
    matches!(
        part,
        KeyPart::V4Range(..) | KeyPart::V6Range(..) | KeyPart::PortRange(..)
    )
}

/// A field's value in the packet.
#[derive(Debug, Clone, Copy)]
enum Value<'p> {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Proto(u8),
    Port(u16),
    Ifname(&'p str),
    NfProto(u8),
    Icmpv6Type(u8),
}

fn load(field: Field, p: &Packet) -> Option<Value<'_>> {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => Some(Value::V4(a)),
        IpAddr::V6(_) => None,
    };
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V6(a) => Some(Value::V6(a)),
        IpAddr::V4(_) => None,
    };
    match field {
        Field::NfProto => Some(Value::NfProto(if p.src.is_ipv4() {
            nfproto::IPV4
        } else {
            nfproto::IPV6
        })),
        Field::L4Proto => Some(Value::Proto(p.l4proto)),
        Field::IpSaddr => v4(p.src),
        Field::IpDaddr => v4(p.dst),
        Field::Ip6Saddr => v6(p.src),
        Field::Ip6Daddr => v6(p.dst),
        Field::ThDport => p.dport.map(Value::Port),
        Field::Icmpv6Type => {
            if p.src.is_ipv6() && p.l4proto == proto::ICMPV6 {
                p.icmpv6_type.map(Value::Icmpv6Type)
            } else {
                None
            }
        }
        Field::Iifname => p.iifname.as_deref().map(Value::Ifname),
        Field::Oifname => p.oifname.as_deref().map(Value::Ifname),
    }
}

fn load_all<'p>(fields: &[Field], p: &'p Packet) -> Option<Vec<Value<'p>>> {
    fields.iter().map(|f| load(*f, p)).collect()
}

/// Whether `part` matches `value`; `None` when their types differ. Ranges count only where
/// `ranges` is set; a trailing `*` in an interface name is nft's prefix wildcard where
/// `wildcard` is set.
fn part_matches(part: &KeyPart, value: &Value<'_>, ranges: bool, wildcard: bool) -> Option<bool> {
    let eq = match (part, value) {
        (KeyPart::V4(a), Value::V4(x)) => a == x,
        (KeyPart::V4Range(lo, hi), Value::V4(x)) if ranges => lo <= x && x <= hi,
        (KeyPart::V6(a), Value::V6(x)) => a == x,
        (KeyPart::V6Range(lo, hi), Value::V6(x)) if ranges => lo <= x && x <= hi,
        (KeyPart::Proto(a), Value::Proto(x)) => a == x,
        (KeyPart::Port(a), Value::Port(x)) => a == x,
        (KeyPart::PortRange(lo, hi), Value::Port(x)) if ranges => lo <= x && x <= hi,
        (KeyPart::NfProto(a), Value::NfProto(x)) => a == x,
        (KeyPart::Icmpv6Type(a), Value::Icmpv6Type(x)) => a == x,
        (KeyPart::Ifname(name), Value::Ifname(x)) => match name.strip_suffix('*') {
            Some(prefix) if wildcard => x.starts_with(prefix),
            _ => name == x,
        },
        _ => return None,
    };
    Some(eq)
}

#[cfg(test)]
mod tests {
    //! Address plan: 10.0.0.0/24 and fd00::/64 are "pods", 192.0.2.0/24 and 2001:db8::/64 are
    //! "outside".
    use super::*;
    use crate::nft::model::{AnonSet, BaseChain};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn v4(s: &str) -> KeyPart {
        KeyPart::V4(s.parse().unwrap())
    }

    fn v4r(lo: &str, hi: &str) -> KeyPart {
        KeyPart::V4Range(lo.parse().unwrap(), hi.parse().unwrap())
    }

    fn base(name: &str, hook: Hook, priority: i32, policy: ChainPolicy, rules: Vec<Rule>) -> Chain {
        Chain {
            rules,
            ..Chain::base(
                name,
                BaseChain {
                    hook,
                    priority,
                    policy,
                },
            )
        }
    }

    fn regular(name: &str, rules: Vec<Rule>) -> Chain {
        Chain {
            rules,
            ..Chain::regular(name)
        }
    }

    fn table(chains: Vec<Chain>, sets: Vec<Set>) -> Table {
        let mut t = Table::new("nftpol");
        for c in chains {
            t.chains.insert(c.name.clone(), c);
        }
        for s in sets {
            t.sets.insert(s.name.clone(), s);
        }
        t
    }

    fn forward(rules: Vec<Rule>) -> Chain {
        base("forward", Hook::Forward, 0, ChainPolicy::Accept, rules)
    }

    fn verdict(v: Verdict) -> Action {
        Action::Verdict(v)
    }

    fn accept() -> Action {
        verdict(Verdict::Accept)
    }

    fn drop_() -> Action {
        verdict(Verdict::Drop)
    }

    fn cmp(field: Field, value: KeyPart) -> Match {
        Match::Cmp {
            field,
            negate: false,
            value,
        }
    }

    fn not_cmp(field: Field, value: KeyPart) -> Match {
        Match::Cmp {
            field,
            negate: true,
            value,
        }
    }

    fn run(t: &Table, p: &Packet) -> Trace {
        trace(t, TraceHook::Forward, p).unwrap()
    }

    fn tcp(src: &str, dst: &str, port: u16) -> Packet {
        Packet::tcp(ip(src), ip(dst), port)
    }

    #[test]
    fn a_hook_without_base_chains_accepts() {
        let t = table(
            vec![base("in", Hook::Input, 0, ChainPolicy::Drop, vec![])],
            vec![],
        );
        let tr = run(&t, &tcp("10.0.0.1", "10.0.0.2", 80));
        assert!(tr.accepted());
        assert!(tr.steps.is_empty());
        let tr = trace(&t, TraceHook::Input, &tcp("10.0.0.1", "10.0.0.2", 80)).unwrap();
        assert_eq!(tr.verdict, Final::Drop);
        assert_eq!(
            tr.steps,
            vec![Step::Policy {
                chain: "in".into(),
                verdict: Final::Drop
            }]
        );
    }

    #[test]
    fn accept_ends_only_its_base_chain_and_drop_is_final() {
        let first = base(
            "early",
            Hook::Forward,
            -10,
            ChainPolicy::Accept,
            vec![Rule::new(vec![], accept())],
        );
        let second = base(
            "late",
            Hook::Forward,
            10,
            ChainPolicy::Accept,
            vec![Rule::new(
                vec![cmp(Field::ThDport, KeyPart::Port(22))],
                drop_(),
            )],
        );
        let t = table(vec![second, first], vec![]);
        let tr = run(&t, &tcp("10.0.0.1", "10.0.0.2", 22));
        assert_eq!(tr.verdict, Final::Drop, "{tr}");
        assert_eq!(
            tr.chains(),
            vec!["early", "late"],
            "lower priority runs first"
        );
        assert!(run(&t, &tcp("10.0.0.1", "10.0.0.2", 80)).accepted());

        // A drop in the first base chain: the second never runs.
        let first = base(
            "early",
            Hook::Forward,
            -10,
            ChainPolicy::Accept,
            vec![Rule::new(vec![], drop_())],
        );
        let second = base(
            "late",
            Hook::Forward,
            10,
            ChainPolicy::Accept,
            vec![Rule::new(vec![], accept())],
        );
        let t = table(vec![first, second], vec![]);
        let tr = run(&t, &tcp("10.0.0.1", "10.0.0.2", 80));
        assert_eq!(tr.verdict, Final::Drop);
        assert!(!tr.entered("late"));
    }

    #[test]
    fn ct_state_matches_the_packets_state_only() {
        let t = table(
            vec![base(
                "forward",
                Hook::Forward,
                0,
                ChainPolicy::Drop,
                vec![Rule::new(
                    vec![Match::CtState(
                        CtStates::ESTABLISHED.union(CtStates::RELATED),
                    )],
                    accept(),
                )],
            )],
            vec![],
        );
        let p = tcp("10.0.0.1", "10.0.0.2", 80);
        assert_eq!(run(&t, &p).verdict, Final::Drop);
        assert!(run(&t, &p.clone().ct(CtState::Established)).accepted());
        assert!(run(&t, &p.clone().ct(CtState::Related)).accepted());
        assert_eq!(run(&t, &p.ct(CtState::Invalid)).verdict, Final::Drop);
    }

    #[test]
    fn tcp_flags_match_tcp_packets_only_even_negated() {
        let not_bare_syn = Match::TcpFlags {
            mask: tcp_flags::SYN | tcp_flags::ACK,
            value: tcp_flags::SYN,
            negate: true,
        };
        let t = table(
            vec![base(
                "forward",
                Hook::Forward,
                0,
                ChainPolicy::Drop,
                vec![Rule::new(
                    vec![
                        Match::CtState(CtStates::ESTABLISHED.union(CtStates::RELATED)),
                        not_bare_syn,
                    ],
                    accept(),
                )],
            )],
            vec![],
        );
        let p = tcp("10.0.0.1", "10.0.0.2", 80).ct(CtState::Established);
        assert_eq!(p.tcp_flags, Some(tcp_flags::ACK));
        assert!(run(&t, &p).accepted(), "an ACK of a tracked connection");
        let synack = p.clone().tcp_flags(tcp_flags::SYN | tcp_flags::ACK);
        assert!(run(&t, &synack).accepted(), "a SYN-ACK");
        let syn = p.clone().tcp_flags(tcp_flags::SYN);
        assert_eq!(run(&t, &syn).verdict, Final::Drop, "a bare SYN");
        let new = tcp("10.0.0.1", "10.0.0.2", 80);
        assert_eq!(new.tcp_flags, Some(tcp_flags::SYN));
        // Negated or not, a non-TCP packet never matches `tcp flags`.
        let udp = Packet::udp(ip("10.0.0.1"), ip("10.0.0.2"), 53).ct(CtState::Established);
        assert_eq!(udp.tcp_flags, None);
        assert_eq!(udp.clone().tcp_flags(tcp_flags::ACK).tcp_flags, None);
        assert_eq!(run(&t, &udp).verdict, Final::Drop);
    }

    #[test]
    fn ip_fields_never_match_a_packet_of_the_other_family_even_negated() {
        let t = table(
            vec![forward(vec![
                Rule::new(vec![not_cmp(Field::IpSaddr, v4("10.0.0.1"))], drop_()),
                Rule::new(
                    vec![cmp(Field::IpSaddr, v4r("10.0.0.0", "10.0.0.255"))],
                    drop_(),
                ),
            ])],
            vec![],
        );
        let tr = run(&t, &tcp("fd00::1", "fd00::2", 80));
        assert!(tr.accepted(), "{tr}");
        assert_eq!(tr.matched().count(), 0);
        // An IPv4 packet: the negated compare holds for another source, the prefix for this one.
        assert_eq!(
            run(&t, &tcp("10.0.0.9", "10.0.0.2", 80)).verdict,
            Final::Drop
        );
        let tr = run(&t, &tcp("10.0.0.1", "10.0.0.2", 80));
        assert_eq!(tr.matched().collect::<Vec<_>>(), vec![("forward", 1)]);
    }

    #[test]
    fn th_dport_and_icmpv6_type_need_a_packet_that_has_them() {
        let t = table(
            vec![forward(vec![
                Rule::new(vec![not_cmp(Field::ThDport, KeyPart::Port(80))], drop_()),
                Rule::new(
                    vec![Match::Lookup {
                        key: vec![Field::Icmpv6Type],
                        set: SetRef::Anonymous(AnonSet {
                            interval: false,
                            elements: vec![
                                Key::new(vec![KeyPart::Icmpv6Type(135)]),
                                Key::new(vec![KeyPart::Icmpv6Type(136)]),
                            ],
                        }),
                        negate: true,
                    }],
                    drop_(),
                ),
            ])],
            vec![],
        );
        // IPv4 ICMP has neither a port nor an ICMPv6 type: nothing matches.
        assert!(run(&t, &Packet::ping(ip("10.0.0.1"), ip("10.0.0.2"))).accepted());
        // Echo request: type 128 is not in the set, the negated lookup holds.
        assert_eq!(
            run(&t, &Packet::ping(ip("fd00::1"), ip("fd00::2"))).verdict,
            Final::Drop
        );
        assert!(run(&t, &Packet::icmpv6(ip("fd00::1"), ip("fd00::2"), 135)).accepted());
        assert_eq!(
            run(&t, &tcp("10.0.0.1", "10.0.0.2", 81)).verdict,
            Final::Drop
        );
        assert!(run(&t, &tcp("10.0.0.1", "10.0.0.2", 80)).accepted());
    }

    #[test]
    fn interface_names_match_exactly_or_by_wildcard_and_need_the_interface() {
        let t = table(
            vec![forward(vec![
                Rule::new(
                    vec![cmp(Field::Iifname, KeyPart::Ifname("veth*".into()))],
                    drop_(),
                ),
                Rule::new(
                    vec![cmp(Field::Oifname, KeyPart::Ifname("eth0".into()))],
                    drop_(),
                ),
            ])],
            vec![],
        );
        let p = tcp("10.0.0.1", "10.0.0.2", 80);
        assert!(run(&t, &p).accepted());
        assert_eq!(run(&t, &p.clone().iif("veth12ab")).verdict, Final::Drop);
        assert!(run(&t, &p.clone().iif("eth1").oif("eth01")).accepted());
        assert_eq!(run(&t, &p.oif("eth0")).verdict, Final::Drop);
    }

    #[test]
    fn l4proto_and_counter_only_rules_continue() {
        let t = table(
            vec![base(
                "forward",
                Hook::Forward,
                0,
                ChainPolicy::Drop,
                vec![
                    Rule::new(vec![], Action::Continue).counted(),
                    Rule::new(
                        vec![cmp(Field::L4Proto, KeyPart::Proto(proto::UDP))],
                        accept(),
                    ),
                ],
            )],
            vec![],
        );
        let tr = run(&t, &Packet::udp(ip("10.0.0.1"), ip("10.0.0.2"), 53));
        assert!(tr.accepted());
        assert_eq!(
            tr.steps[0],
            Step::Rule {
                chain: "forward".into(),
                index: 0,
                outcome: Outcome::Continue
            }
        );
        assert_eq!(
            run(&t, &tcp("10.0.0.1", "10.0.0.2", 53)).verdict,
            Final::Drop
        );
    }

    /// base: jump A; drop.  A: <goto|jump> B; accept.  B: return.
    fn jump_goto_table(a_to_b: Verdict) -> Table {
        table(
            vec![
                forward(vec![
                    Rule::new(vec![], verdict(Verdict::Jump("a".into()))),
                    Rule::new(vec![], drop_()),
                ]),
                regular(
                    "a",
                    vec![
                        Rule::new(vec![], verdict(a_to_b)),
                        Rule::new(vec![], accept()),
                    ],
                ),
                regular("b", vec![Rule::new(vec![], verdict(Verdict::Return))]),
            ],
            vec![],
        )
    }

    #[test]
    fn return_after_goto_resumes_after_the_last_jump_not_after_the_goto() {
        let p = tcp("10.0.0.1", "10.0.0.2", 80);
        // goto: b's return goes back to the base chain (after "jump a"), which drops.
        let tr = run(&jump_goto_table(Verdict::Goto("b".into())), &p);
        assert_eq!(tr.verdict, Final::Drop, "{tr}");
        assert_eq!(
            tr.matched().collect::<Vec<_>>(),
            vec![("forward", 0), ("a", 0), ("b", 0), ("forward", 1)]
        );
        // jump: b's return goes back to a, which accepts.
        let tr = run(&jump_goto_table(Verdict::Jump("b".into())), &p);
        assert!(tr.accepted(), "{tr}");
        assert_eq!(
            tr.matched().collect::<Vec<_>>(),
            vec![("forward", 0), ("a", 0), ("b", 0), ("a", 1)]
        );
    }

    #[test]
    fn return_or_end_of_a_base_chain_applies_its_policy() {
        let t = table(
            vec![base(
                "forward",
                Hook::Forward,
                0,
                ChainPolicy::Drop,
                vec![
                    Rule::new(
                        vec![cmp(Field::ThDport, KeyPart::Port(80))],
                        verdict(Verdict::Return),
                    ),
                    Rule::new(vec![], accept()),
                ],
            )],
            vec![],
        );
        let tr = run(&t, &tcp("10.0.0.1", "10.0.0.2", 80));
        assert_eq!(tr.verdict, Final::Drop);
        assert_eq!(
            tr.steps.last(),
            Some(&Step::Policy {
                chain: "forward".into(),
                verdict: Final::Drop
            })
        );
        assert!(run(&t, &tcp("10.0.0.1", "10.0.0.2", 81)).accepted());
    }

    /// forward: ip saddr vmap @pods; ip daddr 10.0.0.2 drop.  pods: 10.0.0.1 : <verdict pod_a>.
    /// pod_a: return.
    fn vmap_table(element: Verdict) -> Table {
        let mut pods = Set::verdict_map("pods", vec![KeyType::Ipv4Addr]);
        pods.elements
            .insert(Key::new(vec![v4("10.0.0.1")]), Some(element));
        table(
            vec![
                forward(vec![
                    Rule::new(
                        vec![],
                        Action::VMap {
                            key: vec![Field::IpSaddr],
                            map: "pods".into(),
                        },
                    ),
                    Rule::new(vec![cmp(Field::IpDaddr, v4("10.0.0.2"))], drop_()),
                ]),
                regular(
                    "pod_a",
                    vec![Rule::new(vec![], verdict(Verdict::Return)).counted()],
                ),
            ],
            vec![pods],
        )
    }

    #[test]
    fn a_vmap_goto_to_a_chain_that_returns_skips_the_rest_of_the_base_chain() {
        let p = tcp("10.0.0.1", "10.0.0.2", 80);
        // goto: the return has no jump to go back to, so the base chain's policy (accept)
        // decides and the later drop rule never runs.
        let tr = run(&vmap_table(Verdict::Goto("pod_a".into())), &p);
        assert!(tr.accepted(), "{tr}");
        assert!(!tr.steps.iter().any(
            |s| matches!(s, Step::Rule { chain, index: 1, .. } if chain.as_ref() == "forward")
        ));
        // jump: the return resumes the base chain, whose next rule drops.
        let tr = run(&vmap_table(Verdict::Jump("pod_a".into())), &p);
        assert_eq!(tr.verdict, Final::Drop, "{tr}");
    }

    #[test]
    fn a_vmap_miss_or_a_packet_of_the_other_family_continues() {
        let t = vmap_table(Verdict::Accept);
        let tr = run(&t, &tcp("10.0.0.3", "10.0.0.2", 80));
        assert_eq!(tr.verdict, Final::Drop);
        assert_eq!(
            tr.steps[0],
            Step::Rule {
                chain: "forward".into(),
                index: 0,
                outcome: Outcome::VMapMiss
            }
        );
        let tr = run(&t, &tcp("fd00::1", "fd00::2", 80));
        assert!(tr.accepted());
        assert_eq!(
            tr.steps[0],
            Step::Rule {
                chain: "forward".into(),
                index: 0,
                outcome: Outcome::NoMatch
            }
        );
        assert!(run(&t, &tcp("10.0.0.1", "10.0.0.2", 80)).accepted());
    }

    fn cidr_port_map() -> Table {
        // ip daddr . ip saddr . meta l4proto . th dport, interval: like ingress_cidr_port_v4.
        let mut m = Set::verdict_map(
            "cidr_port",
            vec![
                KeyType::Ipv4Addr,
                KeyType::Ipv4Addr,
                KeyType::InetProto,
                KeyType::InetService,
            ],
        )
        .with_interval();
        m.elements.insert(
            Key::new(vec![
                v4("10.0.0.2"),
                v4r("192.0.2.0", "192.0.2.127"),
                KeyPart::Proto(proto::TCP),
                KeyPart::PortRange(32000, 32768),
            ]),
            Some(Verdict::Accept),
        );
        m.elements.insert(
            Key::new(vec![
                v4("10.0.0.2"),
                v4r("192.0.2.128", "192.0.2.255"),
                KeyPart::Proto(proto::UDP),
                KeyPart::Port(53),
            ]),
            Some(Verdict::Accept),
        );
        table(
            vec![base(
                "forward",
                Hook::Forward,
                0,
                ChainPolicy::Drop,
                vec![Rule::new(
                    vec![],
                    Action::VMap {
                        key: vec![
                            Field::IpDaddr,
                            Field::IpSaddr,
                            Field::L4Proto,
                            Field::ThDport,
                        ],
                        map: "cidr_port".into(),
                    },
                )],
            )],
            vec![m],
        )
    }

    #[test]
    fn interval_concatenations_match_cidr_and_port_ranges_inclusively() {
        let t = cidr_port_map();
        let cases = [
            ("192.0.2.0", proto::TCP, 32000, true),
            ("192.0.2.127", proto::TCP, 32768, true),
            ("192.0.2.127", proto::TCP, 32769, false),
            ("192.0.2.64", proto::TCP, 31999, false),
            ("192.0.2.128", proto::TCP, 32000, false),
            ("192.0.2.128", proto::UDP, 53, true),
            ("192.0.2.255", proto::UDP, 53, true),
            ("192.0.2.255", proto::UDP, 54, false),
            ("192.0.3.0", proto::UDP, 53, false),
            ("192.0.2.10", proto::UDP, 32000, false),
        ];
        for (src, l4, port, accepted) in cases {
            let p = Packet::new(ip(src), ip("10.0.0.2"), l4, Some(port));
            assert_eq!(
                run(&t, &p).accepted(),
                accepted,
                "{src} proto {l4} port {port}"
            );
        }
        let other_dst = Packet::tcp(ip("192.0.2.1"), ip("10.0.0.3"), 32000);
        assert!(!run(&t, &other_dst).accepted());
    }

    #[test]
    fn ipv6_interval_sets_match_prefixes() {
        let mut s = Set::new("v6", vec![KeyType::Ipv6Addr]).with_interval();
        s.elements.insert(
            Key::new(vec![KeyPart::V6Range(
                "2001:db8::".parse().unwrap(),
                "2001:db8::ffff:ffff:ffff:ffff".parse().unwrap(),
            )]),
            None,
        );
        let t = table(
            vec![forward(vec![Rule::new(
                vec![Match::Lookup {
                    key: vec![Field::Ip6Saddr],
                    set: SetRef::Named("v6".into()),
                    negate: false,
                }],
                drop_(),
            )])],
            vec![s],
        );
        assert_eq!(
            run(&t, &tcp("2001:db8::5", "fd00::1", 80)).verdict,
            Final::Drop
        );
        assert!(run(&t, &tcp("2001:db8:0:1::5", "fd00::1", 80)).accepted());
        assert!(run(&t, &tcp("192.0.2.1", "10.0.0.1", 80)).accepted());
    }

    #[test]
    fn overlapping_elements_of_a_named_interval_map_are_an_error() {
        let mut t = cidr_port_map();
        let m = t.sets.get_mut("cidr_port").unwrap();
        m.elements.insert(
            Key::new(vec![
                v4("10.0.0.2"),
                v4r("192.0.2.0", "192.0.2.255"),
                KeyPart::Proto(proto::TCP),
                KeyPart::Port(32000),
            ]),
            Some(Verdict::Drop),
        );
        let p = Packet::tcp(ip("192.0.2.1"), ip("10.0.0.2"), 32000);
        assert!(matches!(
            trace(&t, TraceHook::Forward, &p),
            Err(TraceError::Overlap { set, .. }) if set == "cidr_port"
        ));
    }

    #[test]
    fn the_ingress_hook_runs_the_chain_of_the_input_device_only() {
        let t = table(
            vec![base(
                "ingress_veth1",
                Hook::Ingress {
                    device: "veth1".into(),
                },
                0,
                ChainPolicy::Drop,
                vec![],
            )],
            vec![],
        );
        let p = tcp("10.0.0.1", "10.0.0.2", 80);
        assert!(
            trace(&t, TraceHook::Ingress, &p.clone().iif("veth2"))
                .unwrap()
                .accepted()
        );
        assert_eq!(
            trace(&t, TraceHook::Ingress, &p.iif("veth1"))
                .unwrap()
                .verdict,
            Final::Drop
        );
    }

    fn err(t: &Table) -> TraceError {
        trace(t, TraceHook::Forward, &tcp("10.0.0.1", "10.0.0.2", 80)).unwrap_err()
    }

    #[test]
    fn malformed_tables_are_errors_that_name_the_place() {
        let t = table(
            vec![forward(vec![Rule::new(
                vec![],
                verdict(Verdict::Jump("nope".into())),
            )])],
            vec![],
        );
        let e = err(&t);
        assert!(
            matches!(&e, TraceError::MissingChain { chain, index: 0, target, .. } if chain == "forward" && target == "nope")
        );
        assert_eq!(
            e.to_string(),
            "rule 0 of chain forward: jump nope targets missing chain nope"
        );

        let t = table(
            vec![forward(vec![Rule::new(
                vec![Match::Lookup {
                    key: vec![Field::IpSaddr],
                    set: SetRef::Named("gone".into()),
                    negate: false,
                }],
                accept(),
            )])],
            vec![],
        );
        assert!(matches!(err(&t), TraceError::MissingSet { set, .. } if set == "gone"));

        let t = table(
            vec![
                forward(vec![Rule::new(
                    vec![],
                    verdict(Verdict::Goto("other".into())),
                )]),
                base("other", Hook::Input, 0, ChainPolicy::Accept, vec![]),
            ],
            vec![],
        );
        assert!(matches!(err(&t), TraceError::JumpToBaseChain { .. }));

        let s = Set::new("ports", vec![KeyType::InetService]);
        let t = table(
            vec![forward(vec![Rule::new(
                vec![Match::Lookup {
                    key: vec![Field::IpSaddr],
                    set: SetRef::Named("ports".into()),
                    negate: false,
                }],
                accept(),
            )])],
            vec![s],
        );
        assert!(matches!(err(&t), TraceError::KeyMismatch { .. }));

        let t = table(
            vec![forward(vec![Rule::new(
                vec![cmp(Field::IpSaddr, KeyPart::Port(1))],
                accept(),
            )])],
            vec![],
        );
        assert!(matches!(
            err(&t),
            TraceError::ValueType {
                field: Field::IpSaddr,
                ..
            }
        ));

        let mut s = Set::new("hosts", vec![KeyType::Ipv4Addr]);
        s.elements
            .insert(Key::new(vec![v4r("10.0.0.0", "10.0.0.255")]), None);
        let t = table(
            vec![forward(vec![Rule::new(
                vec![Match::Lookup {
                    key: vec![Field::IpSaddr],
                    set: SetRef::Named("hosts".into()),
                    negate: false,
                }],
                accept(),
            )])],
            vec![s],
        );
        assert!(matches!(err(&t), TraceError::RangeWithoutInterval { set, .. } if set == "hosts"));

        let t = table(
            vec![forward(vec![Rule::new(
                vec![],
                Action::VMap {
                    key: vec![Field::IpSaddr],
                    map: "plain".into(),
                },
            )])],
            vec![Set::new("plain", vec![KeyType::Ipv4Addr])],
        );
        assert!(matches!(err(&t), TraceError::NotAMap { .. }));

        let p = Packet::tcp(ip("10.0.0.1"), ip("fd00::1"), 80);
        assert!(matches!(
            trace(&table(vec![], vec![]), TraceHook::Forward, &p),
            Err(TraceError::FamilyMismatch { .. })
        ));
    }

    /// forward jumps c1, c1 jumps c2, ... c(n-1) jumps cn, which accepts.
    fn nested(n: usize, last_goto_to: Option<&str>) -> Table {
        let mut chains = vec![forward(vec![Rule::new(
            vec![],
            verdict(Verdict::Jump("c1".into())),
        )])];
        for i in 1..n {
            chains.push(regular(
                &format!("c{i}"),
                vec![Rule::new(
                    vec![],
                    verdict(Verdict::Jump(format!("c{}", i + 1).into())),
                )],
            ));
        }
        let last = match last_goto_to {
            Some(target) => Rule::new(vec![], verdict(Verdict::Goto(target.into()))),
            None => Rule::new(vec![], accept()),
        };
        chains.push(regular(&format!("c{n}"), vec![last]));
        table(chains, vec![])
    }

    #[test]
    fn nesting_is_limited_like_the_kernel_and_loops_end_there() {
        assert!(
            run(
                &nested(MAX_DEPTH - 1, None),
                &tcp("10.0.0.1", "10.0.0.2", 80)
            )
            .accepted()
        );
        assert!(matches!(
            err(&nested(MAX_DEPTH, None)),
            TraceError::TooDeep { target, depth: MAX_DEPTH, .. } if target == format!("c{MAX_DEPTH}")
        ));
        // A goto loop: c2 goes back to c1.
        assert!(matches!(
            err(&nested(2, Some("c1"))),
            TraceError::TooDeep { .. }
        ));
        // A chain that jumps to itself.
        let t = table(
            vec![
                forward(vec![Rule::new(
                    vec![],
                    verdict(Verdict::Jump("self".into())),
                )]),
                regular(
                    "self",
                    vec![Rule::new(vec![], verdict(Verdict::Jump("self".into())))],
                ),
            ],
            vec![],
        );
        assert!(matches!(err(&t), TraceError::TooDeep { .. }));
    }
}
