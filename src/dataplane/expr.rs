//! Rules as kernel expressions: the bytecode nft 1.0.6 generates for each rule the model can
//! express, and the way back.
//!
//! Encoding and decoding share one plain-data [`Expr`] type, so the dataplane can prove a
//! decoded rule is faithful: it re-encodes the decoded rule and compares the expressions with
//! what the kernel returned. Anything that does not round-trip (a rule someone else inserted)
//! is reported as a foreign rule that never equals a rule we generate.
//!
//! What nft generates, as observed with `nft --debug=netlink` (see the module tests):
//! - ip/ip6 fields in an inet table get an implicit `meta nfproto` check, `icmpv6 type` also
//!   a `meta l4proto ipv6-icmp` check, each only once per rule (nft tracks the protocol
//!   context; an explicit `meta nfproto ipv4` or `meta l4proto tcp` sets it too);
//! - single values compare in register 1; concatenations load field after field into
//!   consecutive 32-bit registers (1, 9, 10, 11, 2, 13, ...), each padded to 4 bytes;
//! - a byte-aligned prefix shortens the payload load, other prefixes use a bitwise mask;
//!   ranges are `cmp gte` + `cmp lte`, or `range neq` when negated;
//! - host-order fields (`meta l4proto`, `meta nfproto`) are converted to network order
//!   before a lookup in an interval set with a concatenated key;
//! - `ct state` is a bitwise test, counters start at zero, verdicts go to register 0.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::nft::model::{
    Action, AnonSet, CtStates, Field, Key, KeyPart, KeyType, Match, Name, Rule, SetRef, Verdict,
    proto,
};
use crate::nft::{model::nfproto, text};

// Kernel constants (linux/netfilter/nf_tables.h, linux/netfilter.h).
pub(crate) const NFT_REG_VERDICT: u32 = 0;
pub(crate) const NFT_REG_1: u32 = 1;
const NFT_REG32_00: u32 = 8;
pub(crate) const NFT_CMP_EQ: u32 = 0;
pub(crate) const NFT_CMP_NEQ: u32 = 1;
pub(crate) const NFT_CMP_LTE: u32 = 3;
pub(crate) const NFT_CMP_GTE: u32 = 5;
pub(crate) const NFT_RANGE_NEQ: u32 = 1;
pub(crate) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(crate) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub(crate) const NFT_META_IIFNAME: u32 = 6;
pub(crate) const NFT_META_OIFNAME: u32 = 7;
pub(crate) const NFT_META_NFPROTO: u32 = 15;
pub(crate) const NFT_META_L4PROTO: u32 = 16;
pub(crate) const NFT_CT_STATE: u32 = 0;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: u32 = 13;
pub(crate) const NFT_LOOKUP_F_INV: u32 = 1;
pub(crate) const NFT_BYTEORDER_HTON: u32 = 1;
pub(crate) const NF_DROP: i32 = 0;
pub(crate) const NF_ACCEPT: i32 = 1;
pub(crate) const NFT_JUMP: i32 = -3;
pub(crate) const NFT_GOTO: i32 = -4;
pub(crate) const NFT_RETURN: i32 = -5;

/// Up to 16 bytes of expression data (an address, a port, an interface name), inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Data {
    len: u8,
    bytes: [u8; 16],
}

impl Data {
    pub(crate) const EMPTY: Data = Data {
        len: 0,
        bytes: [0; 16],
    };

    pub(crate) fn new(b: &[u8]) -> Option<Data> {
        if b.len() > 16 {
            return None;
        }
        let mut bytes = [0u8; 16];
        bytes[..b.len()].copy_from_slice(b);
        Some(Data {
            len: b.len() as u8,
            bytes,
        })
    }

    fn from_fixed<const N: usize>(b: [u8; N]) -> Data {
        let mut bytes = [0u8; 16];
        bytes[..N].copy_from_slice(&b);
        Data {
            len: N as u8,
            bytes,
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.as_slice() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Which set a lookup uses: a named one, or the rule's n-th anonymous set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LookupSet {
    Named(Name),
    Anon(usize),
}

/// One kernel expression, with exactly the attributes nft sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    Cmp {
        op: u32,
        sreg: u32,
        data: Data,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Data,
        xor: Data,
    },
    Range {
        op: u32,
        sreg: u32,
        from: Data,
        to: Data,
    },
    Byteorder {
        sreg: u32,
        dreg: u32,
        op: u32,
        len: u32,
        size: u32,
    },
    Lookup {
        sreg: u32,
        dreg: Option<u32>,
        set: LookupSet,
        flags: u32,
    },
    Counter,
    Immediate {
        verdict: i32,
        chain: Option<Name>,
    },
    /// An expression nftpol never generates (decoding only).
    Other(String),
}

/// How a field is loaded: payload (base, offset, len) or meta key.
enum Load {
    Payload(u32, u32, u32),
    Meta(u32),
}

fn load_of(field: Field) -> Load {
    match field {
        Field::NfProto => Load::Meta(NFT_META_NFPROTO),
        Field::L4Proto => Load::Meta(NFT_META_L4PROTO),
        Field::IpSaddr => Load::Payload(NFT_PAYLOAD_NETWORK_HEADER, 12, 4),
        Field::IpDaddr => Load::Payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
        Field::Ip6Saddr => Load::Payload(NFT_PAYLOAD_NETWORK_HEADER, 8, 16),
        Field::Ip6Daddr => Load::Payload(NFT_PAYLOAD_NETWORK_HEADER, 24, 16),
        Field::ThDport => Load::Payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
        Field::Icmpv6Type => Load::Payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1),
        Field::Iifname => Load::Meta(NFT_META_IIFNAME),
        Field::Oifname => Load::Meta(NFT_META_OIFNAME),
    }
}

fn load_expr(field: Field, dreg: u32, short_len: Option<u32>) -> Expr {
    match load_of(field) {
        Load::Payload(base, offset, len) => Expr::Payload {
            base,
            offset,
            len: short_len.unwrap_or(len),
            dreg,
        },
        Load::Meta(key) => Expr::Meta { key, dreg },
    }
}

/// Field a load expression reads, if it is one nftpol uses.
fn field_of(e: &Expr) -> Option<(Field, u32, u32)> {
    let all = [
        Field::NfProto,
        Field::L4Proto,
        Field::IpSaddr,
        Field::IpDaddr,
        Field::Ip6Saddr,
        Field::Ip6Daddr,
        Field::ThDport,
        Field::Icmpv6Type,
        Field::Iifname,
        Field::Oifname,
    ];
    match e {
        Expr::Meta { key, dreg } => all
            .into_iter()
            .find(|f| matches!(load_of(*f), Load::Meta(k) if k == *key))
            .map(|f| (f, *dreg, value_len(f.key_type()) as u32)),
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => all
            .into_iter()
            .find(|f| {
                matches!(load_of(*f), Load::Payload(b, o, l) if b == *base && o == *offset && *len <= l && *len > 0)
            })
            .map(|f| (f, *dreg, *len)),
        _ => None,
    }
}

/// Length of a value of this type in the kernel (unpadded).
pub(crate) fn value_len(t: KeyType) -> usize {
    match t {
        KeyType::Ipv4Addr => 4,
        KeyType::Ipv6Addr | KeyType::Ifname => 16,
        KeyType::InetProto | KeyType::NfProto | KeyType::Icmpv6Type => 1,
        KeyType::InetService => 2,
    }
}

/// The 32-bit register slot `k` of a concatenation, named the way nft names it: slots that
/// start a 128-bit register use the 128-bit name (1..4), the others their 32-bit name.
pub(crate) fn concat_reg(slot: u32) -> u32 {
    if slot.is_multiple_of(4) {
        NFT_REG_1 + slot / 4
    } else {
        NFT_REG32_00 + slot
    }
}

/// Whether nft converts this field to network order before an interval-set lookup.
fn host_order(f: Field) -> bool {
    matches!(f, Field::L4Proto | Field::NfProto)
}

/// Writes a (lower or upper) value of a key part, unpadded, into `out`.
pub(crate) fn part_bytes(p: &KeyPart, upper: bool, out: &mut Vec<u8>) {
    match p {
        KeyPart::V4(a) => out.extend_from_slice(&a.octets()),
        KeyPart::V4Range(a, b) => out.extend_from_slice(&(if upper { b } else { a }).octets()),
        KeyPart::V6(a) => out.extend_from_slice(&a.octets()),
        KeyPart::V6Range(a, b) => out.extend_from_slice(&(if upper { b } else { a }).octets()),
        KeyPart::Proto(v) | KeyPart::NfProto(v) | KeyPart::Icmpv6Type(v) => out.push(*v),
        KeyPart::Port(v) => out.extend_from_slice(&v.to_be_bytes()),
        KeyPart::PortRange(a, b) => {
            out.extend_from_slice(&(if upper { b } else { a }).to_be_bytes())
        }
        KeyPart::Ifname(n) => {
            let b = n.as_bytes();
            let len = b.len().min(16);
            out.extend_from_slice(&b[..len]);
            out.extend(std::iter::repeat_n(0u8, 16 - len));
        }
    }
}

fn part_data(p: &KeyPart, upper: bool) -> Data {
    let mut v = Vec::with_capacity(16);
    part_bytes(p, upper, &mut v);
    Data::new(&v).unwrap_or(Data::EMPTY)
}

/// Protocol context nft tracks while generating a rule.
#[derive(Default)]
struct Ctx {
    net: Option<u8>,
    l4: Option<u8>,
}

impl Ctx {
    fn need(&mut self, field: Field, out: &mut Vec<Expr>) {
        let net = match field {
            Field::IpSaddr | Field::IpDaddr => Some(nfproto::IPV4),
            Field::Ip6Saddr | Field::Ip6Daddr | Field::Icmpv6Type => Some(nfproto::IPV6),
            _ => None,
        };
        if let Some(v) = net
            && self.net != Some(v)
        {
            out.push(Expr::Meta {
                key: NFT_META_NFPROTO,
                dreg: NFT_REG_1,
            });
            out.push(cmp(NFT_CMP_EQ, Data::from_fixed([v])));
            self.net = Some(v);
        }
        if field == Field::Icmpv6Type {
            self.need_l4(proto::ICMPV6, out);
        }
    }

    /// The implicit `meta l4proto <p>` check, unless the rule established it already.
    fn need_l4(&mut self, p: u8, out: &mut Vec<Expr>) {
        if self.l4 != Some(p) {
            out.push(Expr::Meta {
                key: NFT_META_L4PROTO,
                dreg: NFT_REG_1,
            });
            out.push(cmp(NFT_CMP_EQ, Data::from_fixed([p])));
            self.l4 = Some(p);
        }
    }
}

fn cmp(op: u32, data: Data) -> Expr {
    Expr::Cmp {
        op,
        sreg: NFT_REG_1,
        data,
    }
}

/// Encodes a rule as the expressions nft generates for its text. `named_interval` tells
/// whether a named set is an interval set. Anonymous sets are numbered in rule order.
pub(crate) fn encode_rule(
    rule: &Rule,
    named_interval: &dyn Fn(&Name) -> bool,
    out: &mut Vec<Expr>,
) {
    let mut ctx = Ctx::default();
    let mut anon = 0usize;
    for m in &rule.matches {
        match m {
            Match::CtState(s) => {
                out.push(Expr::Ct {
                    key: NFT_CT_STATE,
                    dreg: NFT_REG_1,
                });
                out.push(Expr::Bitwise {
                    sreg: NFT_REG_1,
                    dreg: NFT_REG_1,
                    len: 4,
                    mask: Data::from_fixed(s.0.to_ne_bytes()),
                    xor: Data::from_fixed([0u8; 4]),
                });
                out.push(cmp(NFT_CMP_NEQ, Data::from_fixed([0u8; 4])));
            }
            Match::TcpFlags {
                mask,
                value,
                negate,
            } => {
                ctx.need_l4(proto::TCP, out);
                out.push(Expr::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: TCP_FLAGS_OFFSET,
                    len: 1,
                    dreg: NFT_REG_1,
                });
                out.push(Expr::Bitwise {
                    sreg: NFT_REG_1,
                    dreg: NFT_REG_1,
                    len: 1,
                    mask: Data::from_fixed([*mask]),
                    xor: Data::from_fixed([0u8]),
                });
                let op = if *negate { NFT_CMP_NEQ } else { NFT_CMP_EQ };
                out.push(cmp(op, Data::from_fixed([*value])));
            }
            Match::Cmp {
                field,
                negate,
                value,
            } => {
                ctx.need(*field, out);
                encode_cmp(*field, *negate, value, out);
                if !*negate {
                    match (field, value) {
                        (Field::NfProto, KeyPart::NfProto(v)) => ctx.net = Some(*v),
                        (Field::L4Proto, KeyPart::Proto(v)) => ctx.l4 = Some(*v),
                        _ => {}
                    }
                }
            }
            Match::Lookup { key, set, negate } => {
                let (target, interval) = match set {
                    SetRef::Named(n) => (LookupSet::Named(n.clone()), named_interval(n)),
                    SetRef::Anonymous(a) => {
                        anon += 1;
                        (LookupSet::Anon(anon - 1), a.interval)
                    }
                };
                encode_lookup(&mut ctx, key, interval, out);
                out.push(Expr::Lookup {
                    sreg: NFT_REG_1,
                    dreg: None,
                    set: target,
                    flags: if *negate { NFT_LOOKUP_F_INV } else { 0 },
                });
            }
        }
    }
    if rule.counter {
        out.push(Expr::Counter);
    }
    match &rule.action {
        Action::Continue => {}
        Action::Verdict(v) => {
            let (verdict, chain) = verdict_code(v);
            out.push(Expr::Immediate {
                verdict,
                chain: chain.cloned(),
            });
        }
        Action::VMap { key, map } => {
            encode_lookup(&mut ctx, key, named_interval(map), out);
            out.push(Expr::Lookup {
                sreg: NFT_REG_1,
                dreg: Some(NFT_REG_VERDICT),
                set: LookupSet::Named(map.clone()),
                flags: 0,
            });
        }
    }
}

/// The kernel's verdict code and chain for a verdict.
pub(crate) fn verdict_code(v: &Verdict) -> (i32, Option<&Name>) {
    match v {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(c) => (NFT_JUMP, Some(c)),
        Verdict::Goto(c) => (NFT_GOTO, Some(c)),
    }
}

/// The verdict for a kernel verdict code and chain.
pub(crate) fn verdict_from(code: i32, chain: Option<&str>) -> Option<Verdict> {
    Some(match (code, chain) {
        (NF_ACCEPT, None) => Verdict::Accept,
        (NF_DROP, None) => Verdict::Drop,
        (NFT_RETURN, None) => Verdict::Return,
        (NFT_JUMP, Some(c)) => Verdict::Jump(c.into()),
        (NFT_GOTO, Some(c)) => Verdict::Goto(c.into()),
        _ => return None,
    })
}

fn encode_lookup(ctx: &mut Ctx, key: &[Field], interval: bool, out: &mut Vec<Expr>) {
    for f in key {
        ctx.need(*f, out);
    }
    if key.len() == 1 {
        out.push(load_expr(key[0], NFT_REG_1, None));
        return;
    }
    let mut slot = 0u32;
    for f in key {
        let reg = concat_reg(slot);
        out.push(load_expr(*f, reg, None));
        if interval && host_order(*f) {
            out.push(Expr::Byteorder {
                sreg: reg,
                dreg: reg,
                op: NFT_BYTEORDER_HTON,
                len: 1,
                size: 2,
            });
        }
        slot += (crate::nft::diff::padded_len(f.key_type()) / 4) as u32;
    }
}

fn encode_cmp(field: Field, negate: bool, value: &KeyPart, out: &mut Vec<Expr>) {
    let op = if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ };
    let full = value_len(field.key_type());
    let prefix = match value {
        KeyPart::V4Range(a, b) => text::v4_prefix_len(*a, *b),
        KeyPart::V6Range(a, b) => text::v6_prefix_len(*a, *b),
        _ => None,
    };
    match (value, prefix) {
        (KeyPart::V4Range(..) | KeyPart::V6Range(..), Some(len)) => {
            let lo = part_data(value, false);
            if len > 0 && len % 8 == 0 {
                let n = usize::from(len / 8);
                out.push(load_expr(field, NFT_REG_1, Some(n as u32)));
                out.push(cmp(op, Data::new(&lo.as_slice()[..n]).unwrap_or(lo)));
            } else {
                let mut mask = vec![0u8; full];
                for (i, m) in mask.iter_mut().enumerate() {
                    let bits = usize::from(len).saturating_sub(i * 8).min(8);
                    *m = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
                }
                out.push(load_expr(field, NFT_REG_1, None));
                out.push(Expr::Bitwise {
                    sreg: NFT_REG_1,
                    dreg: NFT_REG_1,
                    len: full as u32,
                    mask: Data::new(&mask).unwrap_or(lo),
                    xor: Data::new(&vec![0u8; full]).unwrap_or(lo),
                });
                out.push(cmp(op, lo));
            }
        }
        (KeyPart::V4Range(..) | KeyPart::V6Range(..) | KeyPart::PortRange(..), None) => {
            out.push(load_expr(field, NFT_REG_1, None));
            let lo = part_data(value, false);
            let hi = part_data(value, true);
            if negate {
                out.push(Expr::Range {
                    op: NFT_RANGE_NEQ,
                    sreg: NFT_REG_1,
                    from: lo,
                    to: hi,
                });
            } else {
                out.push(cmp(NFT_CMP_GTE, lo));
                out.push(cmp(NFT_CMP_LTE, hi));
            }
        }
        _ => {
            out.push(load_expr(field, NFT_REG_1, None));
            out.push(cmp(op, part_data(value, false)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// decoding

/// Decodes the expressions of a rule back into the model. `anon` returns the elements of an
/// anonymous set by the name the kernel gave it. Returns `None` when the expressions are not
/// exactly what nftpol would generate for the decoded rule.
pub(crate) fn decode_rule(
    exprs: &[Expr],
    anon_names: &[Name],
    anon: &dyn Fn(&Name) -> Option<AnonSet>,
    named_interval: &dyn Fn(&Name) -> bool,
    comment: Option<String>,
) -> Option<Rule> {
    let mut matches: Vec<Match> = Vec::new();
    let mut counter = false;
    let mut action = Action::Continue;
    let mut i = 0;
    let at = |i: usize| exprs.get(i);
    while i < exprs.len() {
        if action != Action::Continue {
            return None; // nothing may follow the action
        }
        match &exprs[i] {
            Expr::Ct {
                key: NFT_CT_STATE,
                dreg: NFT_REG_1,
            } => {
                let Some(Expr::Bitwise { mask, .. }) = at(i + 1) else {
                    return None;
                };
                let bits = u32::from_ne_bytes(mask.as_slice().try_into().ok()?);
                if counter {
                    return None;
                }
                matches.push(Match::CtState(CtStates(bits)));
                i += 3;
            }
            Expr::Payload {
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: TCP_FLAGS_OFFSET,
                len: 1,
                dreg: NFT_REG_1,
            } => {
                let (Some(Expr::Bitwise { mask, xor, .. }), Some(Expr::Cmp { op, data, .. })) =
                    (at(i + 1), at(i + 2))
                else {
                    return None;
                };
                let (&[mask], &[0], &[value]) = (mask.as_slice(), xor.as_slice(), data.as_slice())
                else {
                    return None;
                };
                if counter || (*op != NFT_CMP_EQ && *op != NFT_CMP_NEQ) {
                    return None;
                }
                matches.push(Match::TcpFlags {
                    mask,
                    value,
                    negate: *op == NFT_CMP_NEQ,
                });
                i += 3;
            }
            Expr::Counter => {
                if counter {
                    return None;
                }
                counter = true;
                i += 1;
            }
            Expr::Immediate { verdict, chain } => {
                action = Action::Verdict(verdict_from(*verdict, chain.as_deref())?);
                i += 1;
            }
            e if field_of(e).is_some() => {
                // A run of loads, then what consumes them.
                let mut fields = Vec::new();
                let mut j = i;
                let mut short = None;
                while let Some((f, _reg, len)) = at(j).and_then(field_of) {
                    if len < value_len(f.key_type()) as u32 {
                        short = Some(len);
                    }
                    fields.push(f);
                    j += 1;
                    if let Some(Expr::Byteorder { .. }) = at(j) {
                        j += 1;
                    }
                }
                match at(j)? {
                    Expr::Lookup {
                        dreg, set, flags, ..
                    } => {
                        let set = match set {
                            LookupSet::Named(n) => match anon_names.iter().position(|a| a == n) {
                                Some(_) => SetRef::Anonymous(anon(n)?),
                                None => SetRef::Named(n.clone()),
                            },
                            LookupSet::Anon(_) => return None,
                        };
                        match dreg {
                            Some(NFT_REG_VERDICT) => {
                                let SetRef::Named(map) = set else { return None };
                                action = Action::VMap { key: fields, map };
                            }
                            None => {
                                if counter {
                                    return None;
                                }
                                matches.push(Match::Lookup {
                                    key: fields,
                                    set,
                                    negate: *flags & NFT_LOOKUP_F_INV != 0,
                                })
                            }
                            Some(_) => return None,
                        }
                        i = j + 1;
                    }
                    _ if fields.len() == 1 && !counter => {
                        let field = fields[0];
                        let (m, used) = decode_cmp(field, short, &exprs[j..])?;
                        matches.push(m);
                        i = j + used;
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
    // Drop the implicit protocol checks nft adds (they are re-added by the encoder).
    let mut kept: Vec<Match> = Vec::with_capacity(matches.len());
    for (idx, m) in matches.iter().enumerate() {
        let later = matches[idx + 1..]
            .iter()
            .flat_map(|m| match m {
                Match::Cmp { field, .. } => vec![*field],
                Match::Lookup { key, .. } => key.clone(),
                Match::CtState(_) | Match::TcpFlags { .. } => vec![],
            })
            .chain(match &action {
                Action::VMap { key, .. } => key.clone(),
                _ => vec![],
            })
            .collect::<Vec<_>>();
        let implicit = match m {
            Match::Cmp {
                field: Field::NfProto,
                negate: false,
                value: KeyPart::NfProto(v),
            } => later.iter().any(|f| match f {
                Field::IpSaddr | Field::IpDaddr => *v == nfproto::IPV4,
                Field::Ip6Saddr | Field::Ip6Daddr | Field::Icmpv6Type => *v == nfproto::IPV6,
                _ => false,
            }),
            Match::Cmp {
                field: Field::L4Proto,
                negate: false,
                value: KeyPart::Proto(proto::ICMPV6),
            } => later.contains(&Field::Icmpv6Type),
            Match::Cmp {
                field: Field::L4Proto,
                negate: false,
                value: KeyPart::Proto(proto::TCP),
            } => matches[idx + 1..]
                .iter()
                .any(|m| matches!(m, Match::TcpFlags { .. })),
            _ => false,
        };
        if !implicit {
            kept.push(m.clone());
        }
    }
    let rule = Rule {
        matches: kept,
        counter,
        action,
        comment,
    };
    // Only a rule that re-encodes to exactly these expressions is ours.
    let mut again = Vec::with_capacity(exprs.len());
    encode_rule(&rule, named_interval, &mut again);
    // The anonymous sets this rule uses, in order.
    let used: Vec<&Name> = exprs
        .iter()
        .filter_map(|e| match e {
            Expr::Lookup {
                set: LookupSet::Named(n),
                ..
            } if anon_names.contains(n) => Some(n),
            _ => None,
        })
        .collect();
    let same = again.len() == exprs.len()
        && again.iter().zip(exprs).all(|(a, b)| match (a, b) {
            (
                Expr::Lookup {
                    set: LookupSet::Anon(k),
                    sreg,
                    dreg,
                    flags,
                },
                Expr::Lookup {
                    set: LookupSet::Named(n),
                    sreg: s2,
                    dreg: d2,
                    flags: f2,
                },
            ) => used.get(*k).is_some_and(|a| *a == n) && sreg == s2 && dreg == d2 && flags == f2,
            _ => a == b,
        });
    if !same {
        tracing::debug!(?again, ?exprs, "rule does not round-trip");
    }
    same.then_some(rule)
}

/// Decodes the comparison that follows a single load; returns the match and how many
/// expressions it used (counting from the consumer).
fn decode_cmp(field: Field, short: Option<u32>, rest: &[Expr]) -> Option<(Match, usize)> {
    let t = field.key_type();
    match rest.first()? {
        Expr::Cmp { op, data, .. } if *op == NFT_CMP_EQ || *op == NFT_CMP_NEQ => {
            let negate = *op == NFT_CMP_NEQ;
            let value = match short {
                Some(n) => prefix_part(t, data.as_slice(), n * 8)?,
                None => part_from(t, data.as_slice())?,
            };
            Some((
                Match::Cmp {
                    field,
                    negate,
                    value,
                },
                1,
            ))
        }
        Expr::Cmp { op, data: lo, .. } if *op == NFT_CMP_GTE => {
            let Some(Expr::Cmp {
                op: NFT_CMP_LTE,
                data: hi,
                ..
            }) = rest.get(1)
            else {
                return None;
            };
            Some((
                Match::Cmp {
                    field,
                    negate: false,
                    value: range_part(t, lo.as_slice(), hi.as_slice())?,
                },
                2,
            ))
        }
        Expr::Range { op, from, to, .. } if *op == NFT_RANGE_NEQ => Some((
            Match::Cmp {
                field,
                negate: true,
                value: range_part(t, from.as_slice(), to.as_slice())?,
            },
            1,
        )),
        Expr::Bitwise { mask, .. } => {
            let Some(Expr::Cmp { op, data, .. }) = rest.get(1) else {
                return None;
            };
            let bits: u32 = mask.as_slice().iter().map(|b| b.count_ones()).sum();
            Some((
                Match::Cmp {
                    field,
                    negate: *op == NFT_CMP_NEQ,
                    value: prefix_part(t, data.as_slice(), bits)?,
                },
                2,
            ))
        }
        _ => None,
    }
}

fn prefix_part(t: KeyType, net: &[u8], bits: u32) -> Option<KeyPart> {
    match t {
        KeyType::Ipv4Addr => {
            let mut b = [0u8; 4];
            b.get_mut(..net.len())?.copy_from_slice(net);
            let lo = u32::from_be_bytes(b);
            let host = if bits >= 32 { 0 } else { u32::MAX >> bits };
            Some(KeyPart::V4Range(
                Ipv4Addr::from(lo),
                Ipv4Addr::from(lo | host),
            ))
        }
        KeyType::Ipv6Addr => {
            let mut b = [0u8; 16];
            b.get_mut(..net.len())?.copy_from_slice(net);
            let lo = u128::from_be_bytes(b);
            let host = if bits >= 128 { 0 } else { u128::MAX >> bits };
            Some(KeyPart::V6Range(
                Ipv6Addr::from(lo),
                Ipv6Addr::from(lo | host),
            ))
        }
        _ => None,
    }
}

fn range_part(t: KeyType, lo: &[u8], hi: &[u8]) -> Option<KeyPart> {
    match (part_from(t, lo)?, part_from(t, hi)?) {
        (KeyPart::V4(a), KeyPart::V4(b)) => Some(KeyPart::V4Range(a, b)),
        (KeyPart::V6(a), KeyPart::V6(b)) => Some(KeyPart::V6Range(a, b)),
        (KeyPart::Port(a), KeyPart::Port(b)) => Some(KeyPart::PortRange(a, b)),
        _ => None,
    }
}

/// A single key part from its kernel bytes (padding allowed after the value).
pub(crate) fn part_from(t: KeyType, b: &[u8]) -> Option<KeyPart> {
    Some(match t {
        KeyType::Ipv4Addr => KeyPart::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?)),
        KeyType::Ipv6Addr => KeyPart::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?)),
        KeyType::InetProto => KeyPart::Proto(*b.first()?),
        KeyType::NfProto => KeyPart::NfProto(*b.first()?),
        KeyType::Icmpv6Type => KeyPart::Icmpv6Type(*b.first()?),
        KeyType::InetService => KeyPart::Port(u16::from_be_bytes(b.get(..2)?.try_into().ok()?)),
        KeyType::Ifname => {
            let raw = b.get(..16).unwrap_or(b);
            let end = raw.iter().position(|c| *c == 0).unwrap_or(raw.len());
            KeyPart::Ifname(std::str::from_utf8(&raw[..end]).ok()?.to_string())
        }
    })
}

/// A key part spanning `[lo, hi]` (inclusive), single when they are equal.
pub(crate) fn part_between(t: KeyType, lo: &[u8], hi: &[u8]) -> Option<KeyPart> {
    let a = part_from(t, lo)?;
    if lo.get(..value_len(t)) == hi.get(..value_len(t)) {
        return Some(a);
    }
    range_part(t, lo, hi)
}

/// The key a single-field interval element range `[lo, hi]` stands for.
pub(crate) fn key_between(t: KeyType, lo: &[u8], hi: &[u8]) -> Option<Key> {
    Some(Key(vec![part_between(t, lo, hi)?]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::model::Rule;

    fn roundtrip(rule: Rule) {
        let mut exprs = Vec::new();
        encode_rule(&rule, &|_| false, &mut exprs);
        let anon_names: Vec<Name> = exprs
            .iter()
            .filter_map(|e| match e {
                Expr::Lookup {
                    set: LookupSet::Anon(k),
                    ..
                } => Some(Name::from(format!("__set{k}"))),
                _ => None,
            })
            .collect();
        let anon_sets: Vec<AnonSet> = rule
            .matches
            .iter()
            .filter_map(|m| match m {
                Match::Lookup {
                    set: SetRef::Anonymous(a),
                    ..
                } => Some(a.clone()),
                _ => None,
            })
            .collect();
        let kernel: Vec<Expr> = exprs
            .iter()
            .map(|e| match e {
                Expr::Lookup {
                    sreg,
                    dreg,
                    set: LookupSet::Anon(k),
                    flags,
                } => Expr::Lookup {
                    sreg: *sreg,
                    dreg: *dreg,
                    set: LookupSet::Named(anon_names[*k].clone()),
                    flags: *flags,
                },
                e => e.clone(),
            })
            .collect();
        let lookup = |n: &Name| {
            anon_names
                .iter()
                .position(|a| a == n)
                .map(|k| anon_sets[k].clone())
        };
        let back = decode_rule(
            &kernel,
            &anon_names,
            &lookup,
            &|_| false,
            rule.comment.clone(),
        );
        assert_eq!(back.as_ref(), Some(&rule), "{exprs:?}");
    }

    #[test]
    fn rules_decode_to_what_was_encoded() {
        let cmp = |field, negate, value| Match::Cmp {
            field,
            negate,
            value,
        };
        let ip = |s: &str| KeyPart::V4(s.parse().unwrap());
        let v4r = |a: &str, b: &str| KeyPart::V4Range(a.parse().unwrap(), b.parse().unwrap());
        let v6r = |a: &str, b: &str| KeyPart::V6Range(a.parse().unwrap(), b.parse().unwrap());
        let acc = Action::Verdict(Verdict::Accept);
        roundtrip(Rule::new(
            vec![Match::CtState(
                CtStates::ESTABLISHED.union(CtStates::RELATED),
            )],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![
                Match::CtState(CtStates::ESTABLISHED.union(CtStates::RELATED)),
                Match::TcpFlags {
                    mask: 0x12,
                    value: 0x02,
                    negate: true,
                },
            ],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![
                Match::TcpFlags {
                    mask: 0x17,
                    value: 0x12,
                    negate: false,
                },
                cmp(Field::IpDaddr, false, ip("10.0.0.2")),
            ],
            acc.clone(),
        ));
        roundtrip(
            Rule::new(
                vec![
                    cmp(Field::IpSaddr, false, ip("10.0.0.1")),
                    cmp(Field::IpDaddr, true, ip("10.0.0.2")),
                ],
                acc.clone(),
            )
            .counted()
            .comment("x"),
        );
        roundtrip(Rule::new(
            vec![cmp(
                Field::IpSaddr,
                false,
                v4r("10.0.0.0", "10.255.255.255"),
            )],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![cmp(Field::IpSaddr, true, v4r("10.16.0.0", "10.31.255.255"))],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![cmp(
                Field::IpSaddr,
                false,
                v4r("0.0.0.0", "255.255.255.255"),
            )],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![cmp(Field::IpSaddr, false, v4r("10.0.0.1", "10.0.0.5"))],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![cmp(Field::Ip6Saddr, true, v6r("fd00::1", "fd00::5"))],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![cmp(
                Field::Ip6Saddr,
                false,
                v6r("fd00::", "fd00::1:ffff:ffff:ffff:ffff"),
            )],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![
                cmp(Field::L4Proto, false, KeyPart::Proto(6)),
                cmp(Field::ThDport, false, KeyPart::PortRange(1, 5)),
            ],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![cmp(Field::Iifname, false, KeyPart::Ifname("veth0".into()))],
            Action::Verdict(Verdict::Jump("c".into())),
        ));
        roundtrip(Rule::new(
            vec![cmp(Field::Icmpv6Type, false, KeyPart::Icmpv6Type(134))],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![
                cmp(Field::NfProto, true, KeyPart::NfProto(2)),
                cmp(Field::IpSaddr, false, ip("1.1.1.1")),
            ],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![cmp(Field::NfProto, false, KeyPart::NfProto(10))],
            acc.clone(),
        ));
        roundtrip(Rule::new(
            vec![
                Match::Lookup {
                    key: vec![Field::IpSaddr],
                    set: SetRef::Named("s".into()),
                    negate: true,
                },
                Match::Lookup {
                    key: vec![Field::L4Proto, Field::ThDport],
                    set: SetRef::Anonymous(AnonSet {
                        interval: true,
                        elements: vec![
                            Key(vec![KeyPart::Proto(6), KeyPart::PortRange(80, 90)]),
                            Key(vec![KeyPart::Proto(17), KeyPart::Port(53)]),
                        ],
                    }),
                    negate: false,
                },
            ],
            Action::Verdict(Verdict::Goto("np".into())),
        ));
        roundtrip(
            Rule::new(
                vec![cmp(Field::IpSaddr, false, ip("1.2.3.4"))],
                Action::VMap {
                    key: vec![
                        Field::IpDaddr,
                        Field::IpSaddr,
                        Field::L4Proto,
                        Field::ThDport,
                    ],
                    map: "m".into(),
                },
            )
            .counted(),
        );
    }

    #[test]
    fn concatenations_use_nfts_register_names() {
        let regs: Vec<u32> = (0..10).map(concat_reg).collect();
        assert_eq!(regs, vec![1, 9, 10, 11, 2, 13, 14, 15, 3, 17]);
    }
}
