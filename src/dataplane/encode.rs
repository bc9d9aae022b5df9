//! A [`Transaction`] as one nf_tables netlink batch, in the order documented in
//! `nft::transaction`, byte-compatible with what nft 1.0.6 sends for the same objects (set
//! types, flags and user data, element layout, rule bytecode).
//!
//! Every message's sequence number is remembered with a description of the object, so a
//! kernel error can be reported as `add element 10.0.0.1 . tcp . 80 to map m: File exists`.
//! Element messages are described by their position, and the failing element is found again
//! from the kernel's extended-ack attribute offset only when an error happens: the success
//! path keeps nothing per element.

use std::collections::HashMap;

#[cfg(test)]
use super::expr::concat_reg;
use super::expr::{self, Expr, value_len};
use super::ffi::{self, FfiError};
use super::msg::*;
use crate::nft::diff::padded_len;
use crate::nft::model::{
    AnonSet, BaseChain, Chain, ChainPolicy, Field, Hook, Key, KeyPart, KeyType, Match, Name, Rule,
    Set, SetRef, Verdict,
};
use crate::nft::text;
use crate::nft::transaction::Transaction;

// nf_tables attribute numbers.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_HOOK_DEV: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

pub(crate) const NFT_SET_ANONYMOUS: u32 = 0x1;
pub(crate) const NFT_SET_CONSTANT: u32 = 0x2;
pub(crate) const NFT_SET_INTERVAL: u32 = 0x4;
pub(crate) const NFT_SET_MAP: u32 = 0x8;
pub(crate) const NFT_SET_CONCAT: u32 = 0x80;
pub(crate) const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
pub(crate) const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

/// Keep each element list well below the 64 KiB an attribute length can describe.
const ELEMENTS_PER_MESSAGE_BYTES: usize = 60 * 1024;

/// What a message of the batch did, for error reports.
#[derive(Debug, Clone)]
pub(crate) enum Desc {
    Text(String),
    /// Elements `from..to` of the transaction's list for `set` (`add` or delete).
    Elements {
        add: bool,
        set: Name,
        is_map: bool,
        from: usize,
        to: usize,
        /// Offset of the message in the batch buffer.
        at: usize,
    },
    /// Elements of the anonymous set of a rule.
    AnonElements {
        chain: Name,
        rule: usize,
    },
}

/// What the encoder must know about sets that already exist in the kernel.
#[derive(Debug, Clone)]
pub(crate) struct SetShape {
    pub key: Vec<KeyType>,
    pub interval: bool,
    pub is_map: bool,
}

impl SetShape {
    pub fn of(set: &Set) -> SetShape {
        SetShape {
            key: set.key.clone(),
            interval: set.interval,
            is_map: set.data.is_some(),
        }
    }
}

/// A finished batch.
pub(crate) struct Batch {
    pub buf: Vec<u8>,
    pub messages: usize,
    pub descs: HashMap<u32, Desc>,
    /// Sequence number of the batch end message.
    pub end_seq: u32,
    /// Sequence number of the last object message (acked).
    pub last_seq: u32,
}

/// Why a transaction could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("set {0} is neither in the transaction nor in the kernel")]
    UnknownSet(Name),
    #[error("set {set}: element {element}: {reason}")]
    Element {
        set: Name,
        element: String,
        reason: String,
    },
    #[error("rule in chain {chain}: {source}")]
    Rule {
        chain: Name,
        #[source]
        source: FfiError,
    },
}

struct Encoder<'a> {
    w: Writer,
    seq: u32,
    messages: usize,
    descs: HashMap<u32, Desc>,
    table: &'a str,
    next_set_id: u32,
    last_obj: usize,
    exprs: Vec<Expr>,
    scratch: Vec<u8>,
}

impl Encoder<'_> {
    fn begin(&mut self, msg_type: u16, flags: u16, desc: Desc) -> usize {
        self.seq = self.seq.wrapping_add(1);
        self.messages += 1;
        self.descs.insert(self.seq, desc);
        let at = self.w.begin(msg_type, NLM_F_REQUEST | flags, self.seq);
        self.last_obj = at;
        at
    }
}

/// Encodes `tx` as one batch starting at sequence number `seq0 + 1`. `shapes` gives the
/// definition of every set the transaction touches that it does not itself add.
pub(crate) fn encode(
    tx: &Transaction,
    seq0: u32,
    shapes: &HashMap<Name, SetShape>,
) -> Result<Batch, EncodeError> {
    let t = tx.table.as_str();
    let est = 64 * (tx.add_rules.iter().map(|(_, r)| r.len()).sum::<usize>() + 8)
        + 48 * tx.add_elements.values().map(Vec::len).sum::<usize>()
        + 32 * tx.delete_elements.values().map(Vec::len).sum::<usize>();
    let mut e = Encoder {
        w: Writer {
            buf: Vec::with_capacity(est + 4096),
        },
        seq: seq0,
        messages: 0,
        descs: HashMap::new(),
        table: t,
        next_set_id: 0,
        last_obj: 0,
        exprs: Vec::with_capacity(32),
        scratch: Vec::with_capacity(64),
    };
    // batch begin
    e.seq = e.seq.wrapping_add(1);
    e.messages += 1;
    let b = e.w.begin_raw(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        e.seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    e.w.end(b);

    let mut shapes_all = shapes.clone();
    for s in &tx.add_sets {
        shapes_all.insert(s.name.clone(), SetShape::of(s));
    }

    if tx.replace {
        let m = e.begin(
            NFT_MSG_DESTROYTABLE,
            0,
            Desc::Text(format!("delete table inet {t}")),
        );
        e.w.attr_str(NFTA_TABLE_NAME, t);
        e.w.end(m);
    }
    if tx.create_table || tx.replace {
        let m = e.begin(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            Desc::Text(format!("add table inet {t}")),
        );
        e.w.attr_str(NFTA_TABLE_NAME, t);
        e.w.attr_u32(NFTA_TABLE_FLAGS, 0);
        e.w.end(m);
    }
    for c in &tx.add_chains {
        write_chain(&mut e, c);
    }
    for s in &tx.add_sets {
        e.next_set_id += 1;
        let id = e.next_set_id;
        write_named_set(&mut e, s, id);
    }
    for c in &tx.flush_chains {
        let m = e.begin(NFT_MSG_DELRULE, 0, Desc::Text(format!("flush chain {c}")));
        e.w.attr_str(NFTA_RULE_TABLE, t);
        e.w.attr_str(NFTA_RULE_CHAIN, c);
        e.w.end(m);
    }
    for (set, keys) in &tx.delete_elements {
        if keys.is_empty() {
            continue;
        }
        let shape = shapes_all
            .get(set)
            .ok_or_else(|| EncodeError::UnknownSet(set.clone()))?;
        write_elements(&mut e, set, shape, false, keys.iter().map(|k| (k, None)))?;
    }
    for (set, elems) in &tx.add_elements {
        if elems.is_empty() {
            continue;
        }
        let shape = shapes_all
            .get(set)
            .ok_or_else(|| EncodeError::UnknownSet(set.clone()))?;
        write_elements(
            &mut e,
            set,
            shape,
            true,
            elems.iter().map(|(k, v)| (k, v.as_ref())),
        )?;
    }
    let interval = |n: &Name| shapes_all.get(n).is_some_and(|s| s.interval);
    for (chain, rules) in &tx.add_rules {
        for (i, rule) in rules.iter().enumerate() {
            write_rule(&mut e, chain, i, rule, &interval)?;
        }
    }
    for s in &tx.delete_sets {
        let m = e.begin(NFT_MSG_DELSET, 0, Desc::Text(format!("delete set {s}")));
        e.w.attr_str(NFTA_SET_TABLE, t);
        e.w.attr_str(NFTA_SET_NAME, s);
        e.w.end(m);
    }
    for c in &tx.delete_chains {
        let m = e.begin(NFT_MSG_DELCHAIN, 0, Desc::Text(format!("delete chain {c}")));
        e.w.attr_str(NFTA_CHAIN_TABLE, t);
        e.w.attr_str(NFTA_CHAIN_NAME, c);
        e.w.end(m);
    }
    let last_seq = e.seq;
    let last_obj = e.last_obj;
    e.w.add_flags(last_obj, NLM_F_ACK);
    e.seq = e.seq.wrapping_add(1);
    e.messages += 1;
    let end = e.w.begin_raw(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST | NLM_F_ACK,
        e.seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    e.w.end(end);
    Ok(Batch {
        buf: e.w.buf,
        messages: e.messages,
        descs: e.descs,
        end_seq: e.seq,
        last_seq,
    })
}

pub(crate) fn hook_num(h: &Hook) -> u32 {
    match h {
        Hook::Prerouting => 0,
        Hook::Input => 1,
        Hook::Forward => 2,
        Hook::Output => 3,
        Hook::Postrouting => 4,
        Hook::Ingress { .. } => 5,
    }
}

fn write_chain(e: &mut Encoder<'_>, c: &Chain) {
    let m = e.begin(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE | NLM_F_EXCL,
        Desc::Text(format!("add chain {}", c.name)),
    );
    e.w.attr_str(NFTA_CHAIN_TABLE, e.table);
    e.w.attr_str(NFTA_CHAIN_NAME, &c.name);
    if let Some(BaseChain {
        hook,
        priority,
        policy,
    }) = &c.base
    {
        let n = e.w.nest(NFTA_CHAIN_HOOK);
        e.w.attr_u32(NFTA_HOOK_HOOKNUM, hook_num(hook));
        e.w.attr_u32(NFTA_HOOK_PRIORITY, *priority as u32);
        if let Hook::Ingress { device } = hook {
            e.w.attr_str(NFTA_HOOK_DEV, device);
        }
        e.w.end_nest(n);
        e.w.attr_u32(
            NFTA_CHAIN_POLICY,
            match policy {
                ChainPolicy::Accept => 1,
                ChainPolicy::Drop => 0,
            },
        );
        e.w.attr_str(NFTA_CHAIN_TYPE, "filter");
    }
    e.w.end(m);
}

/// nft's datatype ids (NFTA_SET_KEY_TYPE), composed 6 bits per field for concatenations.
pub(crate) fn type_id(t: KeyType) -> u32 {
    match t {
        KeyType::NfProto => 2,
        KeyType::Ipv4Addr => 7,
        KeyType::Ipv6Addr => 8,
        KeyType::InetProto => 12,
        KeyType::InetService => 13,
        KeyType::Icmpv6Type => 29,
        KeyType::Ifname => 41,
    }
}

pub(crate) fn key_type_id(key: &[KeyType]) -> u32 {
    key.iter().fold(0, |acc, t| (acc << 6) | type_id(*t))
}

pub(crate) fn key_len(key: &[KeyType]) -> usize {
    if key.len() == 1 {
        value_len(key[0])
    } else {
        key.iter().map(|t| padded_len(*t)).sum()
    }
}

/// nft's byte order tag for a set key in the set's user data.
fn key_byteorder(key: &[KeyType]) -> u32 {
    if key.len() > 1 {
        return 0;
    }
    match key[0] {
        KeyType::Ipv4Addr | KeyType::Ipv6Addr | KeyType::InetService | KeyType::Icmpv6Type => 2,
        KeyType::Ifname => 1,
        KeyType::InetProto | KeyType::NfProto => 0,
    }
}

fn udata_u32(out: &mut Vec<u8>, ty: u8, v: u32) {
    out.push(ty);
    out.push(4);
    out.extend_from_slice(&v.to_ne_bytes());
}

fn udata_strz(out: &mut Vec<u8>, ty: u8, s: &str) {
    out.push(ty);
    out.push((s.len() + 1) as u8);
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Starts a nested udata attribute; returns its position for [`udata_end`].
fn udata_nest(out: &mut Vec<u8>, ty: u8) -> usize {
    out.push(ty);
    out.push(0);
    out.len() - 2
}

fn udata_end(out: &mut [u8], at: usize) {
    out[at + 1] = (out.len() - at - 2) as u8;
}

const EXPR_PAYLOAD: u32 = 7;
const EXPR_META: u32 = 9;
const EXPR_CONCAT: u32 = 13;

/// The `typeof` description nft stores for one key expression: (expression type, data).
fn typeof_field(f: Field, l4: Option<u8>, out: &mut Vec<u8>) {
    // nft's protocol description ids: th 11, or the concrete header the context names.
    let th_desc = match l4 {
        Some(crate::nft::model::proto::TCP) => 8,
        Some(crate::nft::model::proto::UDP) => 6,
        Some(crate::nft::model::proto::SCTP) => 10,
        _ => 11,
    };
    let (etype, a, b) = match f {
        Field::IpSaddr => (EXPR_PAYLOAD, 12, Some(11)),
        Field::IpDaddr => (EXPR_PAYLOAD, 12, Some(12)),
        Field::Ip6Saddr => (EXPR_PAYLOAD, 13, Some(8)),
        Field::Ip6Daddr => (EXPR_PAYLOAD, 13, Some(9)),
        Field::ThDport => (EXPR_PAYLOAD, th_desc, Some(2)),
        Field::Icmpv6Type => (EXPR_PAYLOAD, 14, Some(1)),
        Field::L4Proto => (EXPR_META, expr::NFT_META_L4PROTO, None),
        Field::NfProto => (EXPR_META, expr::NFT_META_NFPROTO, None),
        Field::Iifname => (EXPR_META, expr::NFT_META_IIFNAME, None),
        Field::Oifname => (EXPR_META, expr::NFT_META_OIFNAME, None),
    };
    udata_u32(out, 0, etype);
    let d = udata_nest(out, 1);
    udata_u32(out, 0, a);
    if let Some(b) = b {
        udata_u32(out, 1, b);
    }
    udata_end(out, d);
}

fn write_named_set(e: &mut Encoder<'_>, s: &Set, id: u32) {
    let concat = s.key.len() > 1;
    let mut flags = 0;
    if s.interval {
        flags |= NFT_SET_INTERVAL;
    }
    if s.data.is_some() {
        flags |= NFT_SET_MAP;
    }
    if concat && s.interval {
        flags |= NFT_SET_CONCAT;
    }
    let kind = if s.data.is_some() { "map" } else { "set" };
    let m = e.begin(
        NFT_MSG_NEWSET,
        NLM_F_CREATE | NLM_F_EXCL,
        Desc::Text(format!("add {kind} {}", s.name)),
    );
    let mut ud = std::mem::take(&mut e.scratch);
    ud.clear();
    udata_u32(&mut ud, 0, key_byteorder(&s.key));
    if s.data.is_some() {
        udata_u32(&mut ud, 1, 0);
    }
    if concat {
        let n = udata_nest(&mut ud, 3);
        udata_u32(&mut ud, 0, EXPR_CONCAT);
        let d = udata_nest(&mut ud, 1);
        udata_end(&mut ud, d);
        udata_end(&mut ud, n);
    }
    if s.data.is_some() {
        udata_u32(&mut ud, 6, 0);
    }
    if let Some(c) = &s.comment {
        udata_strz(&mut ud, 7, c);
    }
    write_set_attrs(e, &s.name, flags, &s.key, s.data.is_some(), None, id, &ud);
    e.scratch = ud;
    e.w.end(m);
}

#[allow(clippy::too_many_arguments)]
fn write_set_attrs(
    e: &mut Encoder<'_>,
    name: &str,
    flags: u32,
    key: &[KeyType],
    is_map: bool,
    desc_size: Option<u32>,
    id: u32,
    udata: &[u8],
) {
    e.w.attr_str(NFTA_SET_TABLE, e.table);
    e.w.attr_str(NFTA_SET_NAME, name);
    e.w.attr_u32(NFTA_SET_FLAGS, flags);
    e.w.attr_u32(NFTA_SET_KEY_TYPE, key_type_id(key));
    e.w.attr_u32(NFTA_SET_KEY_LEN, key_len(key) as u32);
    if is_map {
        e.w.attr_u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
        e.w.attr_u32(NFTA_SET_DATA_LEN, 0);
    }
    e.w.attr_u32(NFTA_SET_ID, id);
    let concat_desc = key.len() > 1 && flags & NFT_SET_INTERVAL != 0;
    if desc_size.is_some() || concat_desc {
        let d = e.w.nest(NFTA_SET_DESC);
        if let Some(n) = desc_size {
            e.w.attr_u32(NFTA_SET_DESC_SIZE, n);
        }
        if concat_desc {
            let c = e.w.nest(NFTA_SET_DESC_CONCAT);
            for t in key {
                let f = e.w.nest(NFTA_LIST_ELEM);
                e.w.attr_u32(NFTA_SET_FIELD_LEN, value_len(*t) as u32);
                e.w.end_nest(f);
            }
            e.w.end_nest(c);
        }
        e.w.end_nest(d);
    }
    e.w.attr(NFTA_SET_USERDATA, udata);
}

/// Appends `+1` to a big-endian value in place; false when it overflowed (was all ones).
fn increment(b: &mut [u8]) -> bool {
    for x in b.iter_mut().rev() {
        if *x == 0xff {
            *x = 0;
        } else {
            *x += 1;
            return true;
        }
    }
    false
}

/// Writes the key of an element (padded concatenation, or the bare value of a single
/// field), lower or upper bound.
fn key_bytes(types: &[KeyType], key: &Key, upper: bool, out: &mut Vec<u8>) {
    out.clear();
    let concat = types.len() > 1;
    for p in &key.0 {
        let before = out.len();
        expr::part_bytes(p, upper, out);
        if concat {
            let pad = (4 - (out.len() - before) % 4) % 4;
            out.extend(std::iter::repeat_n(0u8, pad));
        }
    }
}

/// The kernel elements of one model element: (key, key_end, interval-end flag, open-ended).
/// Single-field interval elements become a start element and an end element at `end + 1`
/// (none when the range reaches the top).
fn write_one_element(
    w: &mut Writer,
    shape: &SetShape,
    key: &Key,
    verdict: Option<&Verdict>,
    lo: &mut Vec<u8>,
    hi: &mut Vec<u8>,
) {
    key_bytes(&shape.key, key, false, lo);
    if shape.interval && shape.key.len() > 1 {
        key_bytes(&shape.key, key, true, hi);
        write_elem(w, None, lo, Some(hi), verdict, false);
    } else if shape.interval {
        key_bytes(&shape.key, key, true, hi);
        let has_end = increment(hi);
        write_elem(w, None, lo, None, verdict, !has_end);
        if has_end {
            write_elem(w, Some(NFT_SET_ELEM_INTERVAL_END), hi, None, None, false);
        }
    } else {
        write_elem(w, None, lo, None, verdict, false);
    }
}

/// How many kernel elements one model element becomes.
pub(crate) fn kernel_elements(shape: &SetShape, key: &Key) -> usize {
    if shape.interval && shape.key.len() == 1 {
        let mut hi = Vec::with_capacity(16);
        key_bytes(&shape.key, key, true, &mut hi);
        if increment(&mut hi) { 2 } else { 1 }
    } else {
        1
    }
}

fn write_elem(
    w: &mut Writer,
    flags: Option<u32>,
    key: &[u8],
    key_end: Option<&[u8]>,
    verdict: Option<&Verdict>,
    open: bool,
) {
    let el = w.nest(NFTA_LIST_ELEM);
    if let Some(f) = flags {
        w.attr_u32(NFTA_SET_ELEM_FLAGS, f);
    }
    let k = w.nest(NFTA_SET_ELEM_KEY);
    w.attr(NFTA_DATA_VALUE, key);
    w.end_nest(k);
    if let Some(end) = key_end {
        let k = w.nest(NFTA_SET_ELEM_KEY_END);
        w.attr(NFTA_DATA_VALUE, end);
        w.end_nest(k);
    }
    if let Some(v) = verdict {
        let d = w.nest(NFTA_SET_ELEM_DATA);
        let vn = w.nest(NFTA_DATA_VERDICT);
        let (code, chain) = expr::verdict_code(v);
        w.attr_u32(NFTA_VERDICT_CODE, code as u32);
        if let Some(c) = chain {
            w.attr_str(NFTA_VERDICT_CHAIN, c);
        }
        w.end_nest(vn);
        w.end_nest(d);
    }
    if open {
        // NFTNL_UDATA_SET_ELEM_FLAGS = NFTNL_SET_ELEM_F_INTERVAL_OPEN, as nft writes it.
        w.attr(NFTA_SET_ELEM_USERDATA, &[1, 4, 1, 0, 0, 0]);
    }
    w.end_nest(el);
}

fn write_elements<'k>(
    e: &mut Encoder<'_>,
    set: &Name,
    shape: &SetShape,
    add: bool,
    elems: impl Iterator<Item = (&'k Key, Option<&'k Verdict>)>,
) -> Result<(), EncodeError> {
    let (msg_type, flags) = if add {
        (NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL)
    } else {
        (NFT_MSG_DELSETELEM, 0)
    };
    let mut lo = Vec::with_capacity(64);
    let mut hi = Vec::with_capacity(64);
    let mut open: Option<(usize, usize, usize)> = None; // (msg start, list nest, first index)
    let mut index = 0usize;
    let close = |e: &mut Encoder<'_>, open: (usize, usize, usize), to: usize| {
        e.w.end_nest(open.1);
        e.w.end(open.0);
        let seq = e.seq;
        if let Some(Desc::Elements { to: t, .. }) = e.descs.get_mut(&seq) {
            *t = to;
        }
    };
    for (key, verdict) in elems {
        let problem = crate::nft::diff::check_key(&shape.key, shape.interval, key)
            .err()
            .or_else(|| match (add, shape.is_map, verdict.is_some()) {
                (true, true, false) => Some("map element has no verdict".to_string()),
                (true, false, true) => Some("set element has a verdict".to_string()),
                _ => None,
            });
        if let Some(reason) = problem {
            let mut element = String::new();
            let _ = text::write_key(key, &mut element);
            return Err(EncodeError::Element {
                set: set.clone(),
                element,
                reason,
            });
        }
        if open.is_none() {
            let at = e.w.buf.len();
            let m = e.begin(
                msg_type,
                flags,
                Desc::Elements {
                    add,
                    set: set.clone(),
                    is_map: shape.is_map,
                    from: index,
                    to: index,
                    at,
                },
            );
            e.w.attr_str(NFTA_SET_ELEM_LIST_TABLE, e.table);
            e.w.attr_str(NFTA_SET_ELEM_LIST_SET, set);
            let list = e.w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            open = Some((m, list, index));
        }
        write_one_element(
            &mut e.w,
            shape,
            key,
            if add { verdict } else { None },
            &mut lo,
            &mut hi,
        );
        index += 1;
        if let Some(o) = open
            && e.w.buf.len() - o.1 > ELEMENTS_PER_MESSAGE_BYTES
        {
            close(e, o, index);
            open = None;
        }
    }
    if let Some(o) = open {
        close(e, o, index);
    }
    Ok(())
}

fn write_rule(
    e: &mut Encoder<'_>,
    chain: &Name,
    index: usize,
    rule: &Rule,
    interval: &dyn Fn(&Name) -> bool,
) -> Result<(), EncodeError> {
    // Anonymous sets first, bound to the rule by set id.
    let mut anon: Vec<(Name, u32)> = Vec::new();
    // The transport protocol a `meta l4proto tcp` before the lookup established: nft then
    // describes `th dport` as `tcp dport` in the set's user data.
    let mut l4: Option<u8> = None;
    for m in &rule.matches {
        if let Match::Cmp {
            field: Field::L4Proto,
            negate: false,
            value: KeyPart::Proto(p),
        } = m
        {
            l4 = Some(*p);
        }
        if let Match::Lookup {
            key,
            set: SetRef::Anonymous(a),
            ..
        } = m
        {
            e.next_set_id += 1;
            let id = e.next_set_id;
            write_anon_set(e, chain, index, key, a, id, l4);
            anon.push((Name::from("__set%d"), id));
        }
    }
    let mut exprs = std::mem::take(&mut e.exprs);
    exprs.clear();
    expr::encode_rule(rule, interval, &mut exprs);
    let mut ud = std::mem::take(&mut e.scratch);
    ud.clear();
    if let Some(c) = &rule.comment {
        udata_strz(&mut ud, 0, c);
    }
    e.seq = e.seq.wrapping_add(1);
    e.messages += 1;
    e.descs
        .insert(e.seq, Desc::Text(rule_desc(chain, index, rule)));
    e.last_obj = e.w.buf.len();
    let r = ffi::write_rule(
        &mut e.w,
        e.seq,
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND,
        e.table,
        chain,
        &exprs,
        &anon,
        &ud,
    );
    e.exprs = exprs;
    e.scratch = ud;
    r.map_err(|source| EncodeError::Rule {
        chain: chain.clone(),
        source,
    })
}

fn rule_desc(chain: &Name, index: usize, rule: &Rule) -> String {
    let _ = index;
    let mut s = format!("add rule to chain {chain}: ");
    let _ = text::write_rule(rule, &mut s);
    s
}

fn write_anon_set(
    e: &mut Encoder<'_>,
    chain: &Name,
    index: usize,
    key: &[Field],
    a: &AnonSet,
    id: u32,
    l4: Option<u8>,
) {
    let types: Vec<KeyType> = key.iter().map(|f| f.key_type()).collect();
    let concat = types.len() > 1;
    let shape = SetShape {
        key: types.clone(),
        interval: a.interval,
        is_map: false,
    };
    let mut flags = NFT_SET_ANONYMOUS | NFT_SET_CONSTANT;
    if a.interval {
        flags |= NFT_SET_INTERVAL;
        if concat {
            flags |= NFT_SET_CONCAT;
        }
    }
    // Single-field interval sets start with an interval end at zero, as nft sends them.
    let leading_zero = a.interval
        && !concat
        && a.elements.first().is_some_and(|k| {
            let mut lo = Vec::new();
            key_bytes(&types, k, false, &mut lo);
            lo.iter().any(|b| *b != 0)
        });
    let size: usize = a
        .elements
        .iter()
        .map(|k| kernel_elements(&shape, k))
        .sum::<usize>()
        + usize::from(leading_zero);
    let m = e.begin(
        NFT_MSG_NEWSET,
        NLM_F_CREATE | NLM_F_EXCL,
        Desc::Text(format!(
            "add anonymous set of rule {index} in chain {chain}"
        )),
    );
    let mut ud = std::mem::take(&mut e.scratch);
    ud.clear();
    // An anonymous set takes its byte order from the key expression: meta keys are in host
    // order, packet fields in network order.
    let byteorder = match key {
        [Field::L4Proto | Field::NfProto | Field::Iifname | Field::Oifname] => 1,
        [_] => 2,
        _ => 0,
    };
    udata_u32(&mut ud, 0, byteorder);
    if a.interval {
        udata_u32(&mut ud, 2, 1);
    }
    let n = udata_nest(&mut ud, 3);
    if concat {
        udata_u32(&mut ud, 0, EXPR_CONCAT);
        let d = udata_nest(&mut ud, 1);
        for (i, f) in key.iter().enumerate() {
            // nft stops describing an interval concatenation at the first field it had to
            // convert to network byte order.
            if a.interval && matches!(f, Field::L4Proto | Field::NfProto) {
                break;
            }
            let sub = udata_nest(&mut ud, i as u8);
            let mut one = Vec::new();
            typeof_field(*f, l4, &mut one);
            // typeof_field writes (type, data); in a concatenation they are SUB_TYPE, SUB_DATA.
            ud.extend_from_slice(&one);
            udata_end(&mut ud, sub);
        }
        udata_end(&mut ud, d);
    } else {
        typeof_field(key[0], l4, &mut ud);
    }
    udata_end(&mut ud, n);
    write_set_attrs(
        e,
        "__set%d",
        flags,
        &types,
        false,
        Some(size as u32),
        id,
        &ud,
    );
    e.scratch = ud;
    e.w.end(m);

    // Its elements.
    let m = e.begin(
        NFT_MSG_NEWSETELEM,
        NLM_F_CREATE | NLM_F_EXCL,
        Desc::AnonElements {
            chain: chain.clone(),
            rule: index,
        },
    );
    e.w.attr_str(NFTA_SET_ELEM_LIST_TABLE, e.table);
    e.w.attr_str(NFTA_SET_ELEM_LIST_SET, "__set%d");
    e.w.attr_u32(NFTA_SET_ELEM_LIST_SET_ID, id);
    let list = e.w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    let mut lo = Vec::with_capacity(64);
    let mut hi = Vec::with_capacity(64);
    if leading_zero {
        let zero = vec![0u8; key_len(&types)];
        write_elem(
            &mut e.w,
            Some(NFT_SET_ELEM_INTERVAL_END),
            &zero,
            None,
            None,
            false,
        );
    }
    for k in &a.elements {
        write_one_element(&mut e.w, &shape, k, None, &mut lo, &mut hi);
    }
    e.w.end_nest(list);
    e.w.end(m);
}

/// Describes the element of an element message at attribute offset `offset` (from the start
/// of that message), by walking the message in the batch buffer.
pub(crate) fn describe_element(
    tx: &Transaction,
    shapes: &HashMap<Name, SetShape>,
    buf: &[u8],
    desc: &Desc,
    offset: Option<u32>,
) -> String {
    let Desc::Elements {
        add,
        set,
        is_map,
        from,
        to,
        at,
    } = desc
    else {
        return String::new();
    };
    let kind = if *is_map { "map" } else { "set" };
    let (verb, prep) = if *add {
        ("add", "to")
    } else {
        ("delete", "from")
    };
    let keys: Vec<&Key> = if *add {
        tx.add_elements
            .get(set)
            .map(|v| v.iter().map(|(k, _)| k).collect())
            .unwrap_or_default()
    } else {
        tx.delete_elements
            .get(set)
            .map(|v| v.iter().collect())
            .unwrap_or_default()
    };
    let shape = tx
        .add_sets
        .iter()
        .find(|s| s.name == *set)
        .map(SetShape::of)
        .or_else(|| shapes.get(set).cloned());
    let found = (|| {
        let off = offset? as usize;
        let shape = shape.as_ref()?;
        let msg = messages(buf.get(*at..)?).next()?;
        let list_at = HDR_LEN + NFGEN_LEN;
        // Find the element list attribute and walk its elements by offset.
        let mut pos = list_at;
        for (ty, data) in msg.attrs() {
            let attr_len = 4 + data.len();
            if ty == NFTA_SET_ELEM_LIST_ELEMENTS {
                let mut epos = pos + 4;
                for (kernel_index, (_, edata)) in Attrs(data).enumerate() {
                    let elen = 4 + edata.len();
                    if off >= epos && off < epos + elen {
                        // Map the kernel element back to the model element.
                        let mut n = 0usize;
                        for (i, k) in keys.get(*from..*to)?.iter().enumerate() {
                            n += kernel_elements(shape, k);
                            if kernel_index < n {
                                return Some(from + i);
                            }
                        }
                        return None;
                    }
                    epos += (elen + 3) & !3;
                }
            }
            pos += (attr_len + 3) & !3;
        }
        None
    })();
    match found.and_then(|i| keys.get(i)) {
        Some(k) => {
            let mut s = String::new();
            let _ = text::write_key(k, &mut s);
            format!("{verb} element {s} {prep} {kind} {set}")
        }
        None => format!(
            "{verb} elements {}..{} of {} {prep} {kind} {set}",
            from,
            to,
            keys.len()
        ),
    }
}

/// Registers a concatenated key of `fields` occupies (for tests).
#[cfg(test)]
fn regs_of(fields: &[Field]) -> Vec<u32> {
    let mut slot = 0;
    fields
        .iter()
        .map(|f| {
            let r = concat_reg(slot);
            slot += (padded_len(f.key_type()) / 4) as u32;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_concatenations_skip_whole_registers() {
        use Field::*;
        assert_eq!(
            regs_of(&[IpDaddr, IpSaddr, L4Proto, ThDport]),
            vec![1, 9, 10, 11]
        );
        assert_eq!(
            regs_of(&[Ip6Daddr, Ip6Saddr, L4Proto, ThDport]),
            vec![1, 2, 3, 17]
        );
    }

    #[test]
    fn key_type_ids_compose_like_nft() {
        use KeyType::*;
        // Values observed in nft's NEWSET messages.
        assert_eq!(key_type_id(&[Ipv4Addr, InetProto, InetService]), 0x730d);
        assert_eq!(
            key_type_id(&[Ipv4Addr, Ipv4Addr, InetProto, InetService]),
            0x1c730d
        );
        assert_eq!(key_type_id(&[Ifname]), 0x29);
    }

    #[test]
    fn interval_end_is_one_past_the_range_and_omitted_at_the_top() {
        let mut b = vec![10, 255, 255, 255];
        assert!(increment(&mut b));
        assert_eq!(b, vec![11, 0, 0, 0]);
        let mut b = vec![255, 255];
        assert!(!increment(&mut b));
        let shape = SetShape {
            key: vec![KeyType::Ipv4Addr],
            interval: true,
            is_map: false,
        };
        let top = Key(vec![KeyPart::V4Range(
            "255.0.0.0".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
        )]);
        assert_eq!(kernel_elements(&shape, &top), 1);
        let mid = Key(vec![KeyPart::V4("10.0.0.1".parse().unwrap())]);
        assert_eq!(kernel_elements(&shape, &mid), 2);
    }
}
