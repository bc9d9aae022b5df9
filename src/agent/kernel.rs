//! Tamper detection: notices within milliseconds when someone else changes or deletes our
//! table, so the engine can restore it, without reading the table back on a timer.
//!
//! # Why notifications, not polling
//!
//! Reading our table back (a dump) costs time linear in its size (hundreds of milliseconds at
//! 100k elements), and the ruleset generation id changes with every commit of any table
//! (kube-proxy commits often), so neither is a cheap "did our table change?" probe. nf_tables
//! instead multicasts every committed change to the `NFNLGRP_NFTABLES` netlink group: one
//! message per table, chain, rule, set or element change, each naming its table (attribute 1
//! of every such message type), then one `NFT_MSG_NEWGEN` per commit naming the process
//! (thread) that made it (`NFTA_GEN_PROC_NAME`, the thread's `comm`). This module listens on
//! that group with a plain netlink socket (through nix: no `unsafe` here), and when a commit by
//! any thread other than the engine's ([`ENGINE_THREAD`]) touched `inet <table>`, it sends
//! the engine [`Input::KernelChanged`]; the engine answers with a full sync (dump, diff,
//! apply) a moment later. Our own commits are recognised by the thread name, which the engine
//! thread carries whatever the PID namespace (PIDs would not be comparable inside a container).
//!
//! If the socket's receive buffer overflows (`ENOBUFS`: a huge commit by someone else) some
//! notifications are lost, so that too is reported as a possible change. If the socket cannot
//! be opened at all, the engine falls back to polling (a dump every `--kernel-poll-interval`).
//! The periodic full resync stays as a safety net either way.
//!
//! Only the kernel can tell what happened; on kernels that remove a device-bound base chain
//! when its device disappears, that removal also shows up here (by the kernel's thread) and
//! triggers a repair, which drops the stale attachment first (see `attachments`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, setsockopt,
    socket, sockopt,
};
use nix::sys::time::TimeVal;
use tokio::sync::mpsc;

use super::engine::Input;

/// Name of the engine thread: commits by a thread of this name are ours.
pub const ENGINE_THREAD: &str = "nftpol-engine";

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_PROC_NAME: u16 = 3;
/// Attribute 1 of every table, chain, rule, set, element, object and flowtable message is the
/// table's name.
const ATTR_TABLE: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const RCVBUF: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("nf_tables notifications: {operation}: {source}")]
    Socket {
        operation: &'static str,
        #[source]
        source: Errno,
    },
    #[error("nf_tables notifications: cannot start the monitor thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A commit by someone else that touched our table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignChange {
    /// The committing thread's name, or why it is unknown.
    pub by: String,
}

/// Follows the notification stream; see [`Scanner::feed`].
#[derive(Debug)]
pub struct Scanner {
    table: String,
    own: String,
    touched: bool,
}

impl Scanner {
    pub fn new(table: &str, own_thread: &str) -> Scanner {
        Scanner {
            table: table.to_string(),
            own: own_thread.to_string(),
            touched: false,
        }
    }

    /// Consumes one datagram of netlink messages; returns the foreign commits that touched
    /// the table (a commit's messages may span datagrams).
    pub fn feed(&mut self, buf: &[u8]) -> Vec<ForeignChange> {
        let mut out = Vec::new();
        let mut rest = buf;
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len < NLMSG_HDRLEN || len > rest.len() {
                break;
            }
            let msg_type = u16::from_ne_bytes([rest[4], rest[5]]);
            let msg = &rest[..len];
            rest = &rest[align4(len).min(rest.len())..];
            if msg_type >> 8 != NFNL_SUBSYS_NFTABLES {
                continue;
            }
            let Some(body) = msg.get(NLMSG_HDRLEN..) else {
                continue;
            };
            if body.len() < NFGENMSG_LEN {
                continue;
            }
            let family = body[0];
            let attrs = &body[NFGENMSG_LEN..];
            if msg_type & 0xff == NFT_MSG_NEWGEN {
                if std::mem::take(&mut self.touched) {
                    let by = attr(attrs, NFTA_GEN_PROC_NAME)
                        .map(c_string)
                        .unwrap_or_else(|| "<unknown process>".to_string());
                    if by != self.own {
                        out.push(ForeignChange { by });
                    }
                }
                continue;
            }
            if family == NFPROTO_INET
                && attr(attrs, ATTR_TABLE).is_some_and(|v| c_string(v) == self.table)
            {
                self.touched = true;
            }
        }
        out
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The payload of the first attribute of type `ty` (nested/byte-order flags ignored).
fn attr(mut attrs: &[u8], ty: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let t = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if t == ty {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// A netlink socket subscribed to nf_tables notifications, in the network namespace of the
/// thread that opens it.
#[derive(Debug)]
pub struct Monitor {
    fd: OwnedFd,
}

impl Monitor {
    pub fn open() -> Result<Monitor, MonitorError> {
        let err = |operation| move |source| MonitorError::Socket { operation, source };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(err("open socket"))?;
        let groups = 1u32 << (NFNLGRP_NFTABLES - 1);
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).map_err(err("join NFNLGRP_NFTABLES"))?;
        if setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF).is_err() {
            // Without CAP_NET_ADMIN: the ordinary limit; overflows are detected anyway.
            setsockopt(&fd, sockopt::RcvBuf, &RCVBUF).map_err(err("size receive buffer"))?;
        }
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 250_000))
            .map_err(err("set receive timeout"))?;
        Ok(Monitor { fd })
    }

    /// Reads notifications on a thread of its own until `stop` is set or the engine is gone,
    /// sending [`Input::KernelChanged`] for every foreign commit touching `table`.
    pub fn spawn(
        self,
        table: &str,
        engine: mpsc::Sender<Input>,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>, MonitorError> {
        let mut scanner = Scanner::new(table, ENGINE_THREAD);
        std::thread::Builder::new()
            .name("nftpol-monitor".into())
            .spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while !stop.load(Ordering::Relaxed) {
                    let changes = match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                        Ok(n) => scanner.feed(&buf[..n]),
                        Err(Errno::EAGAIN | Errno::EINTR) => continue,
                        Err(Errno::ENOBUFS) => {
                            tracing::warn!(
                                "nf_tables notifications overflowed; checking the table in case \
                                 someone changed it"
                            );
                            vec![ForeignChange {
                                by: "<lost notifications>".into(),
                            }]
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "nf_tables notifications failed; relying on periodic resyncs");
                            let _ = engine.blocking_send(Input::KernelMonitorFailed);
                            return;
                        }
                    };
                    for c in changes {
                        if engine
                            .blocking_send(Input::KernelChanged { by: c.by })
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            })
            .map_err(MonitorError::Thread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds one nf_tables netlink message with string attributes.
    fn msg(ty: u16, family: u8, attrs: &[(u16, &str)]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, v) in attrs {
            let mut payload = v.as_bytes().to_vec();
            payload.push(0);
            let len = 4 + payload.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(&payload);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | ty).to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&body);
        m
    }

    const DELTABLE: u16 = 2;
    const DELCHAIN: u16 = 5;
    const NEWSETELEM: u16 = 12;

    #[test]
    fn a_foreign_commit_on_our_table_is_reported_with_its_process() {
        let mut s = Scanner::new("nftpol", ENGINE_THREAD);
        let mut dg = msg(DELCHAIN, NFPROTO_INET, &[(1, "nftpol"), (3, "forward")]);
        dg.extend(msg(DELTABLE, NFPROTO_INET, &[(1, "nftpol")]));
        dg.extend(msg(NFT_MSG_NEWGEN, 0, &[(NFTA_GEN_PROC_NAME, "nft")]));
        assert_eq!(s.feed(&dg), vec![ForeignChange { by: "nft".into() }]);
    }

    #[test]
    fn our_own_commits_and_other_tables_are_ignored() {
        let mut s = Scanner::new("nftpol", ENGINE_THREAD);
        let mut dg = msg(NEWSETELEM, NFPROTO_INET, &[(1, "nftpol")]);
        dg.extend(msg(
            NFT_MSG_NEWGEN,
            0,
            &[(NFTA_GEN_PROC_NAME, ENGINE_THREAD)],
        ));
        // kube-proxy's table, and an ip (not inet) table of the same name.
        dg.extend(msg(NEWSETELEM, NFPROTO_INET, &[(1, "kube-proxy")]));
        dg.extend(msg(NEWSETELEM, 2, &[(1, "nftpol")]));
        dg.extend(msg(
            NFT_MSG_NEWGEN,
            0,
            &[(NFTA_GEN_PROC_NAME, "kube-proxy")],
        ));
        assert_eq!(s.feed(&dg), vec![]);
    }

    #[test]
    fn a_commit_split_over_datagrams_is_still_attributed() {
        let mut s = Scanner::new("nftpol", ENGINE_THREAD);
        assert_eq!(
            s.feed(&msg(DELTABLE, NFPROTO_INET, &[(1, "nftpol")])),
            vec![]
        );
        assert_eq!(
            s.feed(&msg(
                NFT_MSG_NEWGEN,
                0,
                &[(NFTA_GEN_PROC_NAME, "iptables-nft")]
            )),
            vec![ForeignChange {
                by: "iptables-nft".into()
            }]
        );
    }

    #[test]
    fn truncated_input_does_not_panic() {
        let mut s = Scanner::new("nftpol", ENGINE_THREAD);
        let m = msg(DELTABLE, NFPROTO_INET, &[(1, "nftpol")]);
        for cut in 0..m.len() {
            let _ = s.feed(&m[..cut]);
        }
    }
}
