//! The real dataplane: nf_tables over a netlink socket (libmnl) in the current network
//! namespace.
//!
//! `apply` sends a whole transaction as one batch in one `sendmsg` (the kernel needs the
//! batch begin-to-end in a single send), with the socket's send buffer forced up to the batch
//! size. Acks are requested only on the last object message and the batch end (an ack per
//! message would overflow the receive buffer on big batches, making success and failure
//! indistinguishable). The kernel handles the batch synchronously inside the send, so all
//! replies are queued when it returns; they are drained without blocking (on failure the
//! batch end is never acked) and each error is mapped back, by sequence number, to the object
//! that caused it.
//!
//! `dump` reads our table only (chains, sets with their elements, rules decoded back into the
//! model), consistently: it retries when the ruleset generation changed underneath.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use super::encode::{self, Desc, NFT_DATA_VERDICT, SetShape};
use super::expr::{self, Expr, value_len};
use super::ffi;
use super::msg::*;
use super::{ApplyReport, Dataplane, DataplaneError};
use crate::nft::diff::{ErrorKind, ModelError, padded_len};
use crate::nft::model::{
    Action, AnonSet, BaseChain, Chain, ChainPolicy, DataType, Hook, Key, KeyType, Match, Name,
    Rule, Set, SetRef, Table, Verdict,
};
use crate::nft::text;
use crate::nft::transaction::Transaction;

/// Marks a rule, chain or set read from the kernel that nftpol did not write (or cannot
/// express). It starts with a control character, which every name, comment and interface
/// name nftpol generates is forbidden to contain (`nft::diff::validate_table`), so such an
/// object never equals a desired one and `diff` replaces or refills it.
pub const FOREIGN_MARK: &str = "\u{1}foreign";

const RECV_BUF: usize = 1 << 20;
const RCVBUF_BYTES: i32 = 8 << 20;

/// nf_tables through libmnl, in the network namespace the process (thread) is in when
/// [`Netlink::new`] is called.
pub struct Netlink {
    sock: mnl::Socket,
    seq: u32,
    sndbuf: usize,
    recv_buf: Vec<u8>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DataplaneError {
    let context = context.into();
    move |source| DataplaneError::Io { context, source }
}

impl Netlink {
    /// Opens a netfilter netlink socket.
    pub fn new() -> Result<Netlink, DataplaneError> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(io_err("open netlink socket"))?;
        let fd = sock.as_raw_fd();
        // Extended acks tell which element of a message failed; capped acks keep error
        // replies from echoing whole 60 KiB element messages.
        ffi::set_int_opt(fd, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1)
            .map_err(io_err("enable extended acks"))?;
        ffi::set_int_opt(fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1)
            .map_err(io_err("enable capped acks"))?;
        ffi::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF_BYTES)
            .map_err(io_err("raise the receive buffer"))?;
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Netlink {
            sock,
            seq,
            sndbuf: 0,
            recv_buf: vec![0u8; RECV_BUF],
        })
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request and collects every reply message until the dump ends (or the ack).
    fn request(&mut self, w: &Writer, what: &str) -> Result<Vec<Vec<u8>>, DataplaneError> {
        ffi::send(self.fd(), &w.buf).map_err(io_err(format!("send {what}")))?;
        let req_seq = msg_seq(&w.buf);
        let mut out = Vec::new();
        loop {
            let n = ffi::recv(self.fd(), &mut self.recv_buf, true)
                .map_err(io_err(format!("receive {what}")))?
                .unwrap_or(0);
            if n == 0 {
                return Err(DataplaneError::Io {
                    context: format!("receive {what}"),
                    source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                });
            }
            let mut done = false;
            for m in messages(&self.recv_buf[..n]) {
                let seq = msg_seq(m.raw);
                let answers = match m.error() {
                    Some((_, inner, _)) => inner == req_seq,
                    None => seq == req_seq,
                };
                if !answers {
                    // A late reply to an earlier request: not ours to consume.
                    tracing::debug!(seq, req_seq, what, "skipping a stale netlink reply");
                    continue;
                }
                if m.msg_type == NLMSG_DONE {
                    done = true;
                } else if let Some((errno, _, _)) = m.error() {
                    if errno != 0 {
                        return Err(DataplaneError::Kernel {
                            operation: what.to_string(),
                            errno,
                            source: std::io::Error::from_raw_os_error(errno),
                        });
                    }
                    done = true;
                } else {
                    out.push(m.raw.to_vec());
                }
            }
            if done {
                return Ok(out);
            }
        }
    }

    fn genid(&mut self) -> Result<u32, DataplaneError> {
        let mut w = Writer::default();
        let seq = self.next_seq();
        let m = w.begin_raw(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            0,
            0,
        );
        w.end(m);
        let replies = self.request(&w, "get ruleset generation")?;
        replies
            .iter()
            .flat_map(|r| messages(r).collect::<Vec<_>>())
            .find_map(|m| find(m.attrs(), 1).and_then(be32))
            .ok_or_else(|| DataplaneError::Dump {
                table: String::new(),
                reason: "no generation id in reply".into(),
            })
    }

    /// Key shape of sets in the kernel that a transaction uses but does not define.
    fn shapes_for(&mut self, tx: &Transaction) -> Result<HashMap<Name, SetShape>, DataplaneError> {
        let mut wanted: Vec<Name> = Vec::new();
        if !tx.replace {
            let defined = |n: &Name| tx.add_sets.iter().any(|s| s.name == *n);
            for n in tx.add_elements.keys().chain(tx.delete_elements.keys()) {
                if !defined(n) {
                    wanted.push(n.clone());
                }
            }
            for (_, rules) in &tx.add_rules {
                for r in rules {
                    let mut uses = |key: &[crate::nft::model::Field], n: &Name| {
                        if key.len() > 1
                            && key.iter().any(|f| {
                                matches!(
                                    f,
                                    crate::nft::model::Field::L4Proto
                                        | crate::nft::model::Field::NfProto
                                )
                            })
                            && !defined(n)
                        {
                            wanted.push(n.clone());
                        }
                    };
                    for m in &r.matches {
                        if let Match::Lookup {
                            key,
                            set: SetRef::Named(n),
                            ..
                        } = m
                        {
                            uses(key, n);
                        }
                    }
                    if let Action::VMap { key, map } = &r.action {
                        uses(key, map);
                    }
                }
            }
        }
        wanted.sort();
        wanted.dedup();
        let mut shapes = HashMap::new();
        for name in wanted {
            let mut w = Writer::default();
            let seq = self.next_seq();
            let m = w.begin(NFT_MSG_GETSET, NLM_F_REQUEST | NLM_F_ACK, seq);
            w.attr_str(1, &tx.table);
            w.attr_str(2, &name);
            w.end(m);
            match self.request(&w, &format!("get set {name}")) {
                Ok(replies) => {
                    if let Some(info) = replies
                        .iter()
                        .find_map(|r| messages(r).next().and_then(|m| parse_set(&m)))
                        && let Some(key) = info.key.clone()
                    {
                        shapes.insert(
                            name.clone(),
                            SetShape {
                                key,
                                interval: info.flags & encode::NFT_SET_INTERVAL != 0,
                                is_map: info.flags & encode::NFT_SET_MAP != 0,
                            },
                        );
                    }
                }
                // A missing set is the kernel's to report, in the batch.
                Err(DataplaneError::Kernel { errno, .. }) if errno == libc::ENOENT => {}
                Err(e) => return Err(e),
            }
        }
        Ok(shapes)
    }
}

/// The sequence number in a netlink message header.
fn msg_seq(raw: &[u8]) -> u32 {
    raw.get(8..12)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .unwrap_or(0)
}

/// Lexical checks nft and the kernel would make anyway, done before building anything so the
/// user sees the model's error rather than a kernel EINVAL.
fn check_transaction(tx: &Transaction) -> Result<(), ModelError> {
    let invalid = |object: String, reason: &str| ModelError::Invalid {
        object,
        reason: reason.to_string(),
    };
    if let Some(p) = text::name_problem(&tx.table) {
        return Err(invalid(format!("table {}", tx.table), p));
    }
    for c in &tx.add_chains {
        if let Some(p) = text::name_problem(&c.name) {
            return Err(invalid(format!("chain {}", c.name), p));
        }
        if !c.rules.is_empty() {
            return Err(invalid(
                format!("chain {}", c.name),
                "a declared chain must be empty",
            ));
        }
    }
    for s in &tx.add_sets {
        let obj = format!("set {}", s.name);
        if let Some(p) = text::name_problem(&s.name) {
            return Err(invalid(obj, p));
        }
        if let Some(p) = s.comment.as_deref().and_then(text::comment_problem) {
            return Err(invalid(obj, p));
        }
        if !s.elements.is_empty() {
            return Err(invalid(obj, "a declared set must be empty"));
        }
    }
    for (chain, rules) in &tx.add_rules {
        for (i, r) in rules.iter().enumerate() {
            crate::nft::diff::check_rule_shape(r).map_err(|reason| ModelError::Invalid {
                object: format!("chain {chain}: rule {i}"),
                reason,
            })?;
        }
    }
    Ok(())
}

impl Dataplane for Netlink {
    fn apply(&mut self, tx: &Transaction) -> Result<ApplyReport, DataplaneError> {
        if tx.is_empty() {
            return Ok(ApplyReport::default());
        }
        let started = Instant::now();
        check_transaction(tx)?;
        let shapes = self.shapes_for(tx)?;
        let build_started = Instant::now();
        let batch = encode::encode(tx, self.seq, &shapes)?;
        let build = build_started.elapsed();
        self.seq = batch.end_seq;
        if batch.buf.len() + 4096 > self.sndbuf {
            let want = (batch.buf.len() + 65536).min(i32::MAX as usize);
            ffi::set_int_opt(
                self.fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                want as i32,
            )
            .map_err(io_err("raise the send buffer to the batch size"))?;
            self.sndbuf = want;
        }
        let sent = ffi::send(self.fd(), &batch.buf).map_err(io_err(format!(
            "send batch of {} messages ({} bytes) for table {}",
            batch.messages,
            batch.buf.len(),
            tx.table
        )))?;
        if sent != batch.buf.len() {
            return Err(DataplaneError::Io {
                context: format!("send batch: {sent} of {} bytes sent", batch.buf.len()),
                source: std::io::Error::from(std::io::ErrorKind::WriteZero),
            });
        }
        // Drain every queued reply.
        let mut errors: Vec<(u32, i32, Option<u32>)> = Vec::new();
        let mut acked = false;
        loop {
            match ffi::recv(self.fd(), &mut self.recv_buf, false) {
                Ok(Some(n)) => {
                    for m in messages(&self.recv_buf[..n]) {
                        if let Some((errno, seq, off)) = m.error() {
                            if errno == 0 {
                                acked |= seq == batch.end_seq || seq == batch.last_seq;
                            } else {
                                errors.push((seq, errno, off));
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(DataplaneError::Io {
                        context: format!(
                            "replies to the batch for table {} were lost; outcome unknown",
                            tx.table
                        ),
                        source: e,
                    });
                }
                Err(e) => return Err(io_err("receive batch replies")(e)),
            }
        }
        if let Some(&(seq, errno, off)) = errors
            .iter()
            .min_by_key(|e| e.0.wrapping_sub(batch.end_seq))
        {
            let operation = match batch.descs.get(&seq) {
                Some(d @ Desc::Elements { .. }) => {
                    encode::describe_element(tx, &shapes, &batch.buf, d, off)
                }
                Some(Desc::AnonElements { chain, rule }) => {
                    format!("add anonymous set elements of rule {rule} in chain {chain}")
                }
                Some(Desc::Text(s)) => s.clone(),
                None => format!("message {seq}"),
            };
            return Err(DataplaneError::Kernel {
                operation: format!(
                    "table {}: {operation}{}",
                    tx.table,
                    if errors.len() > 1 {
                        format!(" (and {} more errors)", errors.len() - 1)
                    } else {
                        String::new()
                    }
                ),
                errno,
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        if !acked {
            return Err(DataplaneError::Io {
                context: format!(
                    "batch for table {} was neither acknowledged nor refused",
                    tx.table
                ),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            });
        }
        let report = ApplyReport {
            messages: batch.messages,
            bytes: batch.buf.len(),
            elapsed: started.elapsed(),
            build,
        };
        tracing::debug!(
            table = %tx.table,
            messages = report.messages,
            bytes = report.bytes,
            elapsed_ms = report.elapsed.as_secs_f64() * 1e3,
            "applied {}",
            tx.stats()
        );
        Ok(report)
    }

    fn dump(&mut self, table: &str) -> Result<Option<Table>, DataplaneError> {
        for _ in 0..5 {
            let before = self.genid()?;
            let t = self.dump_once(table)?;
            if self.genid()? == before {
                return Ok(t);
            }
            tracing::debug!(table, "ruleset changed during dump, reading again");
        }
        Err(DataplaneError::Dump {
            table: table.to_string(),
            reason: "the ruleset kept changing while it was read".into(),
        })
    }
}

/// A set as the kernel describes it.
struct SetInfo {
    name: String,
    table: String,
    flags: u32,
    key: Option<Vec<KeyType>>,
    data_type: Option<u32>,
    comment: Option<String>,
}

fn key_types_from(id: u32, len: u32) -> Option<Vec<KeyType>> {
    let mut types = Vec::new();
    let mut id = id;
    while id != 0 {
        let t = match id & 0x3f {
            2 => KeyType::NfProto,
            7 => KeyType::Ipv4Addr,
            8 => KeyType::Ipv6Addr,
            12 => KeyType::InetProto,
            13 => KeyType::InetService,
            29 => KeyType::Icmpv6Type,
            41 => KeyType::Ifname,
            _ => return None,
        };
        types.push(t);
        id >>= 6;
    }
    types.reverse();
    (!types.is_empty() && encode::key_len(&types) as u32 == len).then_some(types)
}

fn parse_set(m: &Msg<'_>) -> Option<SetInfo> {
    let a = m.attrs();
    let flags = find(a.clone(), 3).and_then(be32).unwrap_or(0);
    let key = key_types_from(
        find(a.clone(), 4).and_then(be32)?,
        find(a.clone(), 5).and_then(be32)?,
    );
    let comment = find(a.clone(), 13).and_then(|ud| {
        let mut i = 0;
        while i + 2 <= ud.len() {
            let (ty, len) = (ud[i], usize::from(ud[i + 1]));
            let v = ud.get(i + 2..i + 2 + len)?;
            if ty == 7 {
                return string(v).map(str::to_string);
            }
            i += 2 + len;
        }
        None
    });
    Some(SetInfo {
        name: string(find(a.clone(), 2)?)?.to_string(),
        table: string(find(a.clone(), 1)?)?.to_string(),
        flags,
        key,
        data_type: find(a.clone(), 6).and_then(be32),
        comment,
    })
}

/// One element as the kernel returns it.
struct RawElem {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    end_flag: bool,
    verdict: Option<Verdict>,
    bad_verdict: bool,
}

fn parse_elems(m: &Msg<'_>, out: &mut Vec<RawElem>) {
    let Some(list) = find(m.attrs(), 3) else {
        return;
    };
    for (_, el) in Attrs(list) {
        let mut e = RawElem {
            key: Vec::new(),
            key_end: None,
            end_flag: false,
            verdict: None,
            bad_verdict: false,
        };
        for (ty, d) in Attrs(el) {
            match ty {
                1 => e.key = find(Attrs(d), 1).unwrap_or(&[]).to_vec(),
                10 => e.key_end = find(Attrs(d), 1).map(<[u8]>::to_vec),
                3 => e.end_flag = be32(d).unwrap_or(0) & encode::NFT_SET_ELEM_INTERVAL_END != 0,
                2 => {
                    let v = find(Attrs(d), 2).and_then(|vd| {
                        let code = find(Attrs(vd), 1).and_then(be32)? as i32;
                        let chain = find(Attrs(vd), 2).and_then(string);
                        expr::verdict_from(code, chain)
                    });
                    e.bad_verdict = v.is_none();
                    e.verdict = v;
                }
                _ => {}
            }
        }
        out.push(e);
    }
}

/// Splits a (padded, for concatenations) key into its parts.
fn split_key(types: &[KeyType], lo: &[u8], hi: Option<&[u8]>) -> Option<Key> {
    let mut parts = Vec::with_capacity(types.len());
    let mut off = 0;
    let concat = types.len() > 1;
    for t in types {
        let w = if concat {
            padded_len(*t)
        } else {
            value_len(*t)
        };
        let a = lo.get(off..off + w)?;
        let p = match hi {
            Some(h) => expr::part_between(*t, a, h.get(off..off + w)?)?,
            None => expr::part_from(*t, a)?,
        };
        parts.push(p);
        off += w;
    }
    Some(Key(parts))
}

fn decrement(b: &mut [u8]) {
    for x in b.iter_mut().rev() {
        if *x == 0 {
            *x = 0xff;
        } else {
            *x -= 1;
            return;
        }
    }
}

/// Elements of a set back into model keys; `None` if any element is not one we would write.
fn decode_elements(
    info: &SetInfo,
    types: &[KeyType],
    raw: Vec<RawElem>,
) -> Option<Vec<(Key, Option<Verdict>)>> {
    let interval = info.flags & encode::NFT_SET_INTERVAL != 0;
    let is_map = info.flags & encode::NFT_SET_MAP != 0;
    if raw
        .iter()
        .any(|e| e.bad_verdict || (is_map && !e.end_flag && e.verdict.is_none()))
    {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    if !interval || types.len() > 1 {
        for e in raw {
            let key = split_key(
                types,
                &e.key,
                if interval {
                    Some(e.key_end.as_deref()?)
                } else {
                    None
                },
            )?;
            out.push((key, e.verdict));
        }
        return Some(out);
    }
    // Single-field interval set: pair each start with the end element that follows it.
    let mut raw = raw;
    raw.sort_by(|a, b| a.key.cmp(&b.key).then(b.end_flag.cmp(&a.end_flag)));
    let t = types[0];
    let mut i = 0;
    while i < raw.len() {
        if raw[i].end_flag {
            i += 1; // an end without a start (nft's leading end at zero)
            continue;
        }
        let lo = &raw[i].key;
        // The end element is one past the range; an open range reaches the top.
        let hi = match raw.get(i + 1) {
            Some(n) if n.end_flag => {
                let mut h = n.key.clone();
                decrement(&mut h);
                h
            }
            _ => vec![0xffu8; lo.len()],
        };
        let key = expr::key_between(t, lo, &hi)?;
        out.push((key, raw[i].verdict.clone()));
        i += if raw.get(i + 1).is_some_and(|n| n.end_flag) {
            2
        } else {
            1
        };
    }
    Some(out)
}

fn foreign_chain(name: &str, why: &str) -> Chain {
    Chain::base(
        name,
        BaseChain {
            hook: Hook::Ingress {
                device: format!("{FOREIGN_MARK}: {why}"),
            },
            priority: 0,
            policy: ChainPolicy::Accept,
        },
    )
}

fn foreign_rule(handle_exprs: String) -> Rule {
    Rule {
        matches: Vec::new(),
        counter: false,
        action: Action::Continue,
        comment: Some(format!("{FOREIGN_MARK} rule: {handle_exprs}")),
    }
}

impl Netlink {
    fn dump_request(&mut self, msg_type: u16, attrs: &[(u16, &str)], dump: bool) -> Writer {
        let mut w = Writer::default();
        let seq = self.next_seq();
        let flags = if dump {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST | NLM_F_ACK
        };
        let m = w.begin(msg_type, flags, seq);
        for (ty, v) in attrs {
            w.attr_str(*ty, v);
        }
        w.end(m);
        w
    }

    /// The elements of one set. The kernel walks a hash set afresh for every 32 KiB dump
    /// message, skipping what it already sent; when the hash table resizes in between (it
    /// does so on its own after big insertions), elements shift and some come twice while
    /// others are missed. A duplicate is the visible sign: read the set again.
    fn dump_elements(&mut self, table: &str, set: &str) -> Result<Vec<RawElem>, DataplaneError> {
        for attempt in 0..8 {
            let w = self.dump_request(NFT_MSG_GETSETELEM, &[(1, table), (2, set)], true);
            let mut raw = Vec::new();
            for r in self.request(&w, &format!("dump elements of set {set}"))? {
                for m in messages(&r) {
                    parse_elems(&m, &mut raw);
                }
            }
            let mut seen = std::collections::HashSet::with_capacity(raw.len());
            let duplicate = raw
                .iter()
                .any(|e| !seen.insert((e.key.as_slice(), e.key_end.as_deref(), e.end_flag)));
            if !duplicate {
                return Ok(raw);
            }
            tracing::debug!(
                set,
                attempt,
                "set changed shape while it was read, reading again"
            );
            std::thread::sleep(std::time::Duration::from_millis(20 << attempt.min(4)));
        }
        Err(DataplaneError::Dump {
            table: table.to_string(),
            reason: format!("the elements of set {set} kept moving while they were read"),
        })
    }

    fn dump_once(&mut self, table: &str) -> Result<Option<Table>, DataplaneError> {
        let w = self.dump_request(NFT_MSG_GETTABLE, &[(1, table)], false);
        match self.request(&w, &format!("get table inet {table}")) {
            Ok(_) => {}
            Err(DataplaneError::Kernel { errno, .. }) if errno == libc::ENOENT => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut t = Table::new(table);

        // Chains: the kernel cannot filter a chain dump by table; skip other tables' chains
        // by their table attribute before decoding anything else.
        let w = self.dump_request(NFT_MSG_GETCHAIN, &[], true);
        for raw in self.request(&w, "dump chains")? {
            for m in messages(&raw) {
                let a = m.attrs();
                if find(a.clone(), 1).and_then(string) != Some(table) {
                    continue;
                }
                let Some(name) = find(a.clone(), 3).and_then(string) else {
                    continue;
                };
                let chain = match find(a.clone(), 4) {
                    None => Chain::regular(name),
                    Some(h) => {
                        let hooknum = find(Attrs(h), 1).and_then(be32);
                        let prio = find(Attrs(h), 2).and_then(be32).map(|p| p as i32);
                        let dev = find(Attrs(h), 3).and_then(string);
                        let policy = find(a.clone(), 5).and_then(be32);
                        let ty = find(a.clone(), 7).and_then(string);
                        let hook = match (hooknum, dev) {
                            (Some(0), None) => Some(Hook::Prerouting),
                            (Some(1), None) => Some(Hook::Input),
                            (Some(2), None) => Some(Hook::Forward),
                            (Some(3), None) => Some(Hook::Output),
                            (Some(4), None) => Some(Hook::Postrouting),
                            (Some(5), Some(d)) => Some(Hook::Ingress {
                                device: d.to_string(),
                            }),
                            _ => None,
                        };
                        let policy = match policy {
                            Some(1) => Some(ChainPolicy::Accept),
                            Some(0) => Some(ChainPolicy::Drop),
                            _ => None,
                        };
                        match (hook, prio, policy, ty) {
                            (Some(hook), Some(priority), Some(policy), Some("filter")) => {
                                Chain::base(
                                    name,
                                    BaseChain {
                                        hook,
                                        priority,
                                        policy,
                                    },
                                )
                            }
                            _ => foreign_chain(name, "hook, type or policy nftpol does not use"),
                        }
                    }
                };
                t.chains.insert(chain.name.clone(), chain);
            }
        }

        // Sets and their elements.
        let w = self.dump_request(NFT_MSG_GETSET, &[(1, table)], true);
        let mut infos = Vec::new();
        for raw in self.request(&w, "dump sets")? {
            for m in messages(&raw) {
                if let Some(info) = parse_set(&m)
                    && info.table == table
                {
                    infos.push(info);
                }
            }
        }
        let mut anon: HashMap<Name, Option<AnonSet>> = HashMap::new();
        for info in infos {
            let raw = self.dump_elements(table, &info.name)?;
            let is_map = info.flags & encode::NFT_SET_MAP != 0;
            let supported_flags = encode::NFT_SET_ANONYMOUS
                | encode::NFT_SET_CONSTANT
                | encode::NFT_SET_INTERVAL
                | encode::NFT_SET_MAP
                | encode::NFT_SET_CONCAT;
            let sane = info.flags & !supported_flags == 0
                && (!is_map || info.data_type == Some(NFT_DATA_VERDICT));
            let elements = match (&info.key, sane) {
                (Some(types), true) => decode_elements(&info, types, raw),
                _ => None,
            };
            let name = Name::from(info.name.as_str());
            if info.flags & encode::NFT_SET_ANONYMOUS != 0 {
                let a = elements.map(|els| {
                    let mut keys: Vec<Key> = els.into_iter().map(|(k, _)| k).collect();
                    keys.sort();
                    AnonSet {
                        interval: info.flags & encode::NFT_SET_INTERVAL != 0,
                        elements: keys,
                    }
                });
                anon.insert(name, if is_map { None } else { a });
                continue;
            }
            let set = match (info.key.clone(), elements) {
                (Some(key), Some(els)) => Set {
                    name: name.clone(),
                    key,
                    data: is_map.then_some(DataType::Verdict),
                    interval: info.flags & encode::NFT_SET_INTERVAL != 0,
                    comment: info.comment.clone(),
                    elements: els.into_iter().collect(),
                },
                // A set nftpol cannot express: an empty key never equals a desired set, so
                // the next diff replaces the table.
                _ => Set {
                    name: name.clone(),
                    key: Vec::new(),
                    data: None,
                    interval: false,
                    comment: Some(format!("{FOREIGN_MARK} set")),
                    elements: BTreeMap::new(),
                },
            };
            t.sets.insert(name, set);
        }

        // Rules.
        let w = self.dump_request(NFT_MSG_GETRULE, &[(1, table)], true);
        let interval_sets: HashMap<Name, bool> = t
            .sets
            .iter()
            .map(|(n, s)| (n.clone(), s.interval))
            .collect();
        let anon_names: Vec<Name> = anon.keys().cloned().collect();
        for raw in self.request(&w, "dump rules")? {
            for m in messages(&raw) {
                let Some(parsed) = ffi::parse_rule(m.raw) else {
                    continue;
                };
                if parsed.table != table {
                    continue;
                }
                let comment = rule_comment(&parsed.udata);
                let lookup_anon = |n: &Name| anon.get(n).cloned().flatten();
                let is_interval = |n: &Name| interval_sets.get(n).copied().unwrap_or(false);
                let rule = match comment {
                    Ok(comment) => expr::decode_rule(
                        &parsed.exprs,
                        &anon_names,
                        &lookup_anon,
                        &is_interval,
                        comment,
                    ),
                    Err(()) => None,
                };
                let rule = rule.unwrap_or_else(|| {
                    foreign_rule(
                        parsed
                            .exprs
                            .iter()
                            .map(expr_name)
                            .collect::<Vec<_>>()
                            .join(" "),
                    )
                });
                let chain = t
                    .chains
                    .entry(Name::from(parsed.chain.as_str()))
                    .or_insert_with(|| foreign_chain(&parsed.chain, "rules of a chain not listed"));
                chain.rules.push(rule);
            }
        }
        Ok(Some(t))
    }
}

fn expr_name(e: &Expr) -> String {
    match e {
        Expr::Other(n) => n.clone(),
        other => format!("{other:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or("?")
            .to_lowercase(),
    }
}

/// The rule comment from rule user data; `Err` when the user data holds anything else.
fn rule_comment(ud: &[u8]) -> Result<Option<String>, ()> {
    if ud.is_empty() {
        return Ok(None);
    }
    let (ty, len) = (ud[0], usize::from(*ud.get(1).ok_or(())?));
    let v = ud.get(2..2 + len).ok_or(())?;
    if ty != 0 || ud.len() != 2 + len {
        return Err(());
    }
    Ok(string(v).map(str::to_string))
}

impl DataplaneError {
    /// The errno class of a refusal, to compare the kernel with the fake.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            DataplaneError::Model(m) => Some(m.kind()),
            DataplaneError::Encode(super::EncodeError::Element { .. }) => Some(ErrorKind::Invalid),
            DataplaneError::Encode(super::EncodeError::UnknownSet(_)) => Some(ErrorKind::Missing),
            DataplaneError::Kernel { errno, .. } => Some(match *errno {
                libc::EEXIST => ErrorKind::Exists,
                libc::ENOENT => ErrorKind::Missing,
                libc::EBUSY => ErrorKind::Busy,
                libc::ENOTEMPTY => ErrorKind::Overlap,
                libc::ELOOP | libc::EMLINK => ErrorKind::Loop,
                _ => ErrorKind::Invalid,
            }),
            _ => None,
        }
    }
}
