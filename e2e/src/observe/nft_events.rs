//! nf_tables commits as they happen in a network namespace, timestamped and decoded.
//!
//! To measure when a change reaches the kernel, polling `nft list` is both slow (a dump of a
//! large table takes hundreds of milliseconds, so the error would be as large as what is
//! measured) and disturbing (it competes with the agent for the nf_tables mutex). nf_tables
//! instead multicasts every committed change to the `NFNLGRP_NFTABLES` netlink group: one
//! message per table, chain, rule, set or element added or deleted, then one `NEWGEN`
//! message closing the commit with the generation id and the committing thread's name.
//!
//! The kernel sends these after the new generation became active, from the committing
//! thread, before the batch's sender gets its acknowledgement. So a [`Commit`]'s `seen` time
//! (when the first datagram carrying a message of that commit was read) is *later* than the
//! moment packets started seeing the change by the delivery delay only: a socket wake-up and
//! a context switch, microseconds on an idle core, up to a scheduler slice when both cores
//! are busy. The reader runs on a thread of its own doing nothing else.
//!
//! Notifications are not flow-controlled: when the receive buffer overflows (`ENOBUFS`, e.g.
//! during the initial load of a table with 100 000 elements) some are lost, and the stream
//! reports [`Event::Overflow`] so that a measurement can be discarded instead of trusted.
//!
//! The socket is plain netlink through nix; no `unsafe`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, setsockopt,
    socket, sockopt,
};
use nix::sys::time::TimeVal;

use crate::netns::{Netns, NetnsError};

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const RCVBUF: usize = 32 << 20;

// NFT_MSG_* message types.
const NEWTABLE: u16 = 0;
const DELTABLE: u16 = 2;
const NEWCHAIN: u16 = 3;
const DELCHAIN: u16 = 5;
const NEWRULE: u16 = 6;
const DELRULE: u16 = 8;
const NEWSET: u16 = 9;
const DELSET: u16 = 11;
const NEWSETELEM: u16 = 12;
const DELSETELEM: u16 = 14;
const NEWGEN: u16 = 15;

// Attributes. Attribute 1 of table, chain, rule, set and element messages is the table.
const ATTR_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_GEN_ID: u16 = 1;
const NFTA_GEN_PROC_NAME: u16 = 3;

/// Address family numbers of nf_tables (`NFPROTO_*`).
pub mod family {
    pub const INET: u8 = 1;
    pub const IPV4: u8 = 2;
    pub const IPV6: u8 = 10;
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("nf_tables notifications: {operation}: {source}")]
    Socket {
        operation: &'static str,
        #[source]
        source: Errno,
    },
    #[error("nf_tables notifications: {0}")]
    Netns(#[from] NetnsError),
    #[error("nf_tables notifications: the reader thread exited before opening its socket")]
    Thread,
}

/// What kind of object a [`Change::Object`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Table,
    Chain,
    Rule,
    Set,
}

/// One change a commit made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A set or map element added or deleted. `key` is the kernel's key bytes: each field of
    /// a concatenation padded to 4 bytes, addresses and ports in network byte order.
    Element {
        added: bool,
        family: u8,
        table: String,
        set: String,
        key: Vec<u8>,
        /// The end of a range element (interval sets with concatenations).
        key_end: Option<Vec<u8>>,
    },
    /// A table, chain, rule or set added or deleted; `name` is the object's name (for a rule:
    /// its chain's).
    Object {
        added: bool,
        kind: ObjectKind,
        family: u8,
        table: String,
        name: String,
    },
}

impl Change {
    /// The table the change belongs to.
    pub fn table(&self) -> (u8, &str) {
        match self {
            Change::Element { family, table, .. } | Change::Object { family, table, .. } => {
                (*family, table)
            }
        }
    }
}

/// A committed nf_tables transaction.
#[derive(Debug, Clone)]
pub struct Commit {
    /// When the first datagram carrying a message of this commit was read.
    pub seen: Instant,
    /// When its closing `NEWGEN` message was read.
    pub ended: Instant,
    /// The ruleset generation it produced.
    pub generation: u32,
    /// The committing thread's name (`comm`).
    pub process: String,
    /// What it changed (filtered by [`Monitor::start`]'s table filter).
    pub changes: Vec<Change>,
    /// Changes to other tables, counted only.
    pub other_changes: usize,
}

/// What the monitor reports.
#[derive(Debug, Clone)]
pub enum Event {
    Commit(Commit),
    /// The receive buffer overflowed at this time: notifications were lost, and the commit
    /// in progress (if any) is incomplete.
    Overflow(Instant),
    /// The socket failed; no more events follow.
    Failed(String),
}

/// Keeps the changes of one table only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFilter {
    pub family: u8,
    pub name: String,
}

/// A reader of nf_tables notifications in one network namespace, on a thread of its own.
/// Stops when dropped.
pub struct Monitor {
    rx: Receiver<Event>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

impl Monitor {
    /// Subscribes to the notifications of `netns` (the socket is open when this returns, so
    /// every later commit is reported). With a `filter`, changes of other tables are only
    /// counted.
    pub fn start(netns: &Netns, filter: Option<TableFilter>) -> Result<Monitor, MonitorError> {
        let (tx, rx) = mpsc::channel();
        let (opened_tx, opened_rx) = mpsc::sync_channel::<Result<(), MonitorError>>(1);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = netns.spawn("nft-events", move || {
            let fd = match open() {
                Ok(fd) => {
                    let _ = opened_tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            read_loop(&fd, filter, &tx, &thread_stop);
        })?;
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(Monitor {
                rx,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(MonitorError::Thread)
            }
        }
    }

    /// The next event, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Event> {
        // Timed out, or the reader thread is gone (its last event says why).
        self.rx.recv_timeout(timeout).ok()
    }

    /// Every event already received.
    pub fn drain(&self) -> Vec<Event> {
        self.rx.try_iter().collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open() -> Result<OwnedFd, MonitorError> {
    let err = |operation| move |source| MonitorError::Socket { operation, source };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(err("open socket"))?;
    bind(
        fd.as_raw_fd(),
        &NetlinkAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)),
    )
    .map_err(err("join NFNLGRP_NFTABLES"))?;
    setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF).map_err(err("size the receive buffer"))?;
    // Wakes the reader now and then to notice `stop`.
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 100_000))
        .map_err(err("set the receive timeout"))?;
    Ok(fd)
}

fn read_loop(
    fd: &OwnedFd,
    filter: Option<TableFilter>,
    tx: &mpsc::Sender<Event>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 1 << 17];
    let mut parser = Parser::new(filter);
    while !stop.load(Ordering::Relaxed) {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(Errno::ENOBUFS) => {
                parser.reset();
                if tx.send(Event::Overflow(Instant::now())).is_err() {
                    return;
                }
                continue;
            }
            Err(e) => {
                let _ = tx.send(Event::Failed(e.to_string()));
                return;
            }
        };
        let now = Instant::now();
        for commit in parser.feed(&buf[..n], now) {
            if tx.send(Event::Commit(commit)).is_err() {
                return;
            }
        }
    }
}

/// Assembles commits from datagrams of notifications.
#[derive(Debug)]
pub struct Parser {
    filter: Option<TableFilter>,
    current: Option<Commit>,
}

impl Parser {
    pub fn new(filter: Option<TableFilter>) -> Parser {
        Parser {
            filter,
            current: None,
        }
    }

    /// Forgets a commit in progress (after lost notifications).
    pub fn reset(&mut self) {
        self.current = None;
    }

    /// Consumes one datagram read at `now`; returns the commits it completed.
    pub fn feed(&mut self, buf: &[u8], now: Instant) -> Vec<Commit> {
        let mut done = Vec::new();
        let mut rest = buf;
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len < NLMSG_HDRLEN || len > rest.len() {
                break;
            }
            let msg_type = u16::from_ne_bytes([rest[4], rest[5]]);
            let msg = &rest[..len];
            rest = &rest[align4(len).min(rest.len())..];
            if msg_type >> 8 != NFNL_SUBSYS_NFTABLES || msg.len() < NLMSG_HDRLEN + NFGENMSG_LEN {
                continue;
            }
            let family = msg[NLMSG_HDRLEN];
            let attrs = &msg[NLMSG_HDRLEN + NFGENMSG_LEN..];
            let commit = self.current.get_or_insert_with(|| Commit {
                seen: now,
                ended: now,
                generation: 0,
                process: String::new(),
                changes: Vec::new(),
                other_changes: 0,
            });
            let ty = msg_type & 0xff;
            if ty == NEWGEN {
                commit.ended = now;
                commit.generation = attr(attrs, NFTA_GEN_ID)
                    .and_then(|v| v.get(..4))
                    .map_or(0, |v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
                commit.process = attr(attrs, NFTA_GEN_PROC_NAME)
                    .map(c_string)
                    .unwrap_or_default();
                if let Some(c) = self.current.take() {
                    done.push(c);
                }
                continue;
            }
            let table = attr(attrs, ATTR_TABLE).map(c_string).unwrap_or_default();
            let wanted = self
                .filter
                .as_ref()
                .is_none_or(|f| f.family == family && f.name == table);
            let decoded = decode(ty, family, table, attrs);
            if wanted {
                commit.changes.extend(decoded);
            } else {
                commit.other_changes += decoded.len();
            }
        }
        done
    }
}

fn decode(ty: u16, family: u8, table: String, attrs: &[u8]) -> Vec<Change> {
    let object = |added, kind, name_attr| {
        vec![Change::Object {
            added,
            kind,
            family,
            table: table.clone(),
            name: attr(attrs, name_attr).map(c_string).unwrap_or_default(),
        }]
    };
    match ty {
        NEWTABLE | DELTABLE => object(ty == NEWTABLE, ObjectKind::Table, ATTR_TABLE),
        NEWCHAIN | DELCHAIN => object(ty == NEWCHAIN, ObjectKind::Chain, NFTA_CHAIN_NAME),
        NEWRULE | DELRULE => object(ty == NEWRULE, ObjectKind::Rule, NFTA_RULE_CHAIN),
        NEWSET | DELSET => object(ty == NEWSET, ObjectKind::Set, NFTA_SET_NAME),
        NEWSETELEM | DELSETELEM => {
            let set = attr(attrs, NFTA_SET_ELEM_LIST_SET)
                .map(c_string)
                .unwrap_or_default();
            let Some(list) = attr(attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else {
                return Vec::new();
            };
            Attrs(list)
                .filter(|(t, _)| *t == NFTA_LIST_ELEM)
                .map(|(_, elem)| Change::Element {
                    added: ty == NEWSETELEM,
                    family,
                    table: table.clone(),
                    set: set.clone(),
                    key: data_value(elem, NFTA_SET_ELEM_KEY).unwrap_or_default(),
                    key_end: data_value(elem, NFTA_SET_ELEM_KEY_END),
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The `NFTA_DATA_VALUE` inside attribute `ty` of an element.
fn data_value(elem: &[u8], ty: u16) -> Option<Vec<u8>> {
    attr(elem, ty)
        .and_then(|d| attr(d, NFTA_DATA_VALUE))
        .map(<[u8]>::to_vec)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates over (type, payload) of a run of netlink attributes.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let a = self.0;
        if a.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([a[0], a[1]]) as usize;
        let ty = u16::from_ne_bytes([a[2], a[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > a.len() {
            self.0 = &[];
            return None;
        }
        self.0 = &a[align4(len).min(a.len())..];
        Some((ty, &a[4..len]))
    }
}

fn attr(attrs: &[u8], ty: u16) -> Option<&[u8]> {
    Attrs(attrs).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink attribute (nested when `nested`).
    fn nla(ty: u16, payload: &[u8], nested: bool) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&(ty | if nested { 0x8000 } else { 0 }).to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn s(text: &str) -> Vec<u8> {
        let mut v = text.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn msg(ty: u16, family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attrs.concat();
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | ty).to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&[family, 0, 0, 0]);
        m.extend_from_slice(&body);
        m
    }

    fn element_msg(ty: u16, table: &str, set: &str, keys: &[&[u8]]) -> Vec<u8> {
        let elems: Vec<u8> = keys
            .iter()
            .map(|k| {
                let key = nla(NFTA_SET_ELEM_KEY, &nla(NFTA_DATA_VALUE, k, false), true);
                nla(NFTA_LIST_ELEM, &key, true)
            })
            .collect::<Vec<_>>()
            .concat();
        msg(
            ty,
            family::INET,
            &[
                nla(ATTR_TABLE, &s(table), false),
                nla(NFTA_SET_ELEM_LIST_SET, &s(set), false),
                nla(NFTA_SET_ELEM_LIST_ELEMENTS, &elems, true),
            ],
        )
    }

    fn gen_msg(id: u32, proc_name: &str) -> Vec<u8> {
        msg(
            NEWGEN,
            0,
            &[
                nla(NFTA_GEN_ID, &id.to_be_bytes(), false),
                nla(NFTA_GEN_PROC_NAME, &s(proc_name), false),
            ],
        )
    }

    #[test]
    fn a_commit_spanning_datagrams_is_reported_once_with_its_elements() {
        let mut p = Parser::new(Some(TableFilter {
            family: family::INET,
            name: "nftpol".into(),
        }));
        let t0 = Instant::now();
        let mut first = element_msg(NEWSETELEM, "nftpol", "m", &[&[10, 0, 0, 1], &[10, 0, 0, 2]]);
        first.extend(element_msg(DELSETELEM, "other", "x", &[&[1, 2, 3, 4]]));
        assert!(p.feed(&first, t0).is_empty());
        let t1 = t0 + Duration::from_millis(1);
        let mut second = msg(
            DELCHAIN,
            family::INET,
            &[
                nla(ATTR_TABLE, &s("nftpol"), false),
                nla(NFTA_CHAIN_NAME, &s("np_a"), false),
            ],
        );
        second.extend(gen_msg(42, "nftpol-engine"));
        let commits = p.feed(&second, t1);
        assert_eq!(commits.len(), 1);
        let c = &commits[0];
        assert_eq!((c.seen, c.ended), (t0, t1));
        assert_eq!((c.generation, c.process.as_str()), (42, "nftpol-engine"));
        assert_eq!(c.other_changes, 1);
        assert_eq!(
            c.changes,
            vec![
                Change::Element {
                    added: true,
                    family: family::INET,
                    table: "nftpol".into(),
                    set: "m".into(),
                    key: vec![10, 0, 0, 1],
                    key_end: None
                },
                Change::Element {
                    added: true,
                    family: family::INET,
                    table: "nftpol".into(),
                    set: "m".into(),
                    key: vec![10, 0, 0, 2],
                    key_end: None
                },
                Change::Object {
                    added: false,
                    kind: ObjectKind::Chain,
                    family: family::INET,
                    table: "nftpol".into(),
                    name: "np_a".into()
                },
            ]
        );
    }

    /// The real kernel, in a namespace of its own: `nft` commits a table with a concatenated
    /// set, then deletes one element; both commits come out decoded, attributed to `nft`.
    #[test]
    fn commits_by_nft_are_reported_with_their_element_keys() {
        crate::skip_unless_root!("commits_by_nft_are_reported_with_their_element_keys");
        let ns = Netns::create(&crate::netns::unique_name("observe", "events")).unwrap();
        let mon = Monitor::start(
            &ns,
            Some(TableFilter {
                family: family::INET,
                name: "t".into(),
            }),
        )
        .unwrap();
        ns.nft_apply(
            "table inet t {\n set s { type ipv4_addr . inet_service; \
             elements = { 10.0.0.1 . 80, 10.0.0.2 . 443 } }\n}\n",
        )
        .unwrap();
        ns.nft(&["delete", "element", "inet", "t", "s", "{ 10.0.0.2 . 443 }"])
            .unwrap();
        let next_commit = || match mon.next(Duration::from_secs(5)) {
            Some(Event::Commit(c)) => c,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("no commit within 5 s"),
        };
        let keys = |c: &Commit, added: bool| -> Vec<Vec<u8>> {
            c.changes
                .iter()
                .filter_map(|ch| match ch {
                    Change::Element {
                        added: a, set, key, ..
                    } if *a == added && set == "s" => Some(key.clone()),
                    _ => None,
                })
                .collect()
        };
        let load = next_commit();
        assert_eq!(load.process, "nft");
        assert!(load.changes.contains(&Change::Object {
            added: true,
            kind: ObjectKind::Set,
            family: family::INET,
            table: "t".into(),
            name: "s".into()
        }));
        let mut added = keys(&load, true);
        added.sort();
        // address . port, each field padded to 4 bytes, network byte order.
        assert_eq!(
            added,
            vec![
                vec![10, 0, 0, 1, 0, 80, 0, 0],
                vec![10, 0, 0, 2, 1, 187, 0, 0]
            ]
        );
        let delete = next_commit();
        assert_eq!(keys(&delete, false), vec![vec![10, 0, 0, 2, 1, 187, 0, 0]]);
        assert!(delete.generation > load.generation);
        assert!(delete.seen >= load.ended);
    }

    #[test]
    fn truncated_datagrams_do_not_panic() {
        let mut m = element_msg(NEWSETELEM, "nftpol", "m", &[&[10, 0, 0, 1]]);
        m.extend(gen_msg(1, "nft"));
        for cut in 0..m.len() {
            let mut p = Parser::new(None);
            let _ = p.feed(&m[..cut], Instant::now());
        }
    }
}
