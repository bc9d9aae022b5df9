//! Every `unsafe` line of nftpol: libnftnl's raw rule and expression API (building rule
//! messages and parsing dumped ones) and the few socket calls libmnl does not wrap.
//!
//! The nftnl crate's own lookup, payload and meta expressions always use register 1, so
//! concatenations need expressions built on the C API with explicit registers; this module
//! turns the plain-data [`Expr`] list into libnftnl objects and back, and nothing else.

use std::ffi::{CStr, CString, c_void};
use std::io;
use std::os::fd::RawFd;

use nftnl::nftnl_sys as sys;

use super::expr::{Data, Expr, LookupSet};
use super::msg::Writer;
use crate::nft::model::Name;

/// Largest message libnftnl may write for one rule: rules carry a few dozen small attributes,
/// far below the 64 KiB nf_tables allows per message.
const RULE_MSG_MAX: usize = 64 * 1024;

/// Why libnftnl could not build or parse something.
#[derive(Debug, thiserror::Error)]
pub enum FfiError {
    #[error("libnftnl could not allocate {0}")]
    Alloc(&'static str),
    #[error("name or string {0:?} contains a NUL byte")]
    Nul(String),
    #[error("rule message longer than {RULE_MSG_MAX} bytes")]
    TooLong,
}

/// Owns a `nftnl_rule` and frees it on drop.
struct RuleObj(*mut sys::nftnl_rule);

impl Drop for RuleObj {
    fn drop(&mut self) {
        // SAFETY: the pointer came from nftnl_rule_alloc, is non-null, and is freed only here;
        // nftnl_rule_free also frees the expressions added to the rule.
        unsafe { sys::nftnl_rule_free(self.0) }
    }
}

fn cstring(s: &str) -> Result<CString, FfiError> {
    CString::new(s).map_err(|_| FfiError::Nul(s.to_string()))
}

/// Appends one NFT_MSG_NEWRULE message (inet family) built by libnftnl to `w`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_rule(
    w: &mut Writer,
    seq: u32,
    flags: u16,
    table: &str,
    chain: &str,
    exprs: &[Expr],
    anon: &[(Name, u32)],
    udata: &[u8],
) -> Result<(), FfiError> {
    let table = cstring(table)?;
    let chain = cstring(chain)?;
    // SAFETY: plain allocation; checked for null below.
    let raw = unsafe { sys::nftnl_rule_alloc() };
    if raw.is_null() {
        return Err(FfiError::Alloc("a rule"));
    }
    let rule = RuleObj(raw);
    // SAFETY: `rule.0` is a valid rule; the setters copy the strings and data they are given
    // (libnftnl strdup/memcpy), so the CStrings and slices may be dropped afterwards.
    unsafe {
        sys::nftnl_rule_set_u32(
            rule.0,
            sys::NFTNL_RULE_FAMILY as u16,
            u32::from(super::msg::NFPROTO_INET),
        );
        sys::nftnl_rule_set_str(rule.0, sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
        sys::nftnl_rule_set_str(rule.0, sys::NFTNL_RULE_CHAIN as u16, chain.as_ptr());
        if !udata.is_empty() {
            sys::nftnl_rule_set_data(
                rule.0,
                sys::NFTNL_RULE_USERDATA as u16,
                udata.as_ptr().cast::<c_void>(),
                udata.len() as u32,
            );
        }
    }
    for e in exprs {
        let expr = build_expr(e, anon)?;
        // SAFETY: both pointers are valid; the rule takes ownership of the expression.
        unsafe { sys::nftnl_rule_add_expr(rule.0, expr) };
    }
    let start = w.buf.len();
    w.buf.reserve(RULE_MSG_MAX);
    // SAFETY: the buffer has at least RULE_MSG_MAX writable bytes after `start` (reserved
    // above). nftnl_nlmsg_build_hdr zeroes and writes the headers there, and
    // nftnl_rule_nlmsg_build_payload appends the rule's attributes, updating nlmsg_len. We
    // then check that length before making those bytes part of the vector.
    unsafe {
        let base = w.buf.as_mut_ptr().add(start);
        let nlh = sys::nftnl_nlmsg_build_hdr(
            base.cast(),
            super::msg::NFT_MSG_NEWRULE,
            u16::from(super::msg::NFPROTO_INET),
            flags,
            seq,
        );
        sys::nftnl_rule_nlmsg_build_payload(nlh, rule.0);
        let len = (*nlh).nlmsg_len as usize;
        if len > RULE_MSG_MAX {
            return Err(FfiError::TooLong);
        }
        w.buf.set_len(start + len);
    }
    Ok(())
}

/// Owns a `nftnl_expr` until it is handed to a rule.
struct ExprObj(*mut sys::nftnl_expr);

impl Drop for ExprObj {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: still owned by us (not yet added to a rule).
            unsafe { sys::nftnl_expr_free(self.0) }
        }
    }
}

impl ExprObj {
    fn new(name: &'static CStr) -> Result<ExprObj, FfiError> {
        // SAFETY: `name` is a valid NUL-terminated string.
        let e = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
        if e.is_null() {
            return Err(FfiError::Alloc("an expression"));
        }
        Ok(ExprObj(e))
    }

    fn u32(&self, attr: u32, v: u32) {
        // SAFETY: valid expression; the attribute number belongs to this expression type.
        unsafe { sys::nftnl_expr_set_u32(self.0, attr as u16, v) }
    }

    fn data(&self, attr: u32, d: &Data) {
        let s = d.as_slice();
        // SAFETY: valid expression; libnftnl copies `len` bytes from the pointer.
        unsafe {
            sys::nftnl_expr_set(
                self.0,
                attr as u16,
                s.as_ptr().cast::<c_void>(),
                s.len() as u32,
            );
        }
    }

    fn str(&self, attr: u32, s: &str) -> Result<(), FfiError> {
        let c = cstring(s)?;
        // SAFETY: valid expression; libnftnl duplicates the string.
        unsafe { sys::nftnl_expr_set_str(self.0, attr as u16, c.as_ptr()) };
        Ok(())
    }

    fn into_raw(mut self) -> *mut sys::nftnl_expr {
        std::mem::replace(&mut self.0, std::ptr::null_mut())
    }
}

fn build_expr(e: &Expr, anon: &[(Name, u32)]) -> Result<*mut sys::nftnl_expr, FfiError> {
    let x = match e {
        Expr::Meta { key, dreg } => {
            let x = ExprObj::new(c"meta")?;
            x.u32(sys::NFTNL_EXPR_META_KEY, *key);
            x.u32(sys::NFTNL_EXPR_META_DREG, *dreg);
            x
        }
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            let x = ExprObj::new(c"payload")?;
            x.u32(sys::NFTNL_EXPR_PAYLOAD_DREG, *dreg);
            x.u32(sys::NFTNL_EXPR_PAYLOAD_BASE, *base);
            x.u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
            x.u32(sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
            x
        }
        Expr::Ct { key, dreg } => {
            let x = ExprObj::new(c"ct")?;
            x.u32(sys::NFTNL_EXPR_CT_KEY, *key);
            x.u32(sys::NFTNL_EXPR_CT_DREG, *dreg);
            x
        }
        Expr::Cmp { op, sreg, data } => {
            let x = ExprObj::new(c"cmp")?;
            x.u32(sys::NFTNL_EXPR_CMP_SREG, *sreg);
            x.u32(sys::NFTNL_EXPR_CMP_OP, *op);
            x.data(sys::NFTNL_EXPR_CMP_DATA, data);
            x
        }
        Expr::Bitwise {
            sreg,
            dreg,
            len,
            mask,
            xor,
        } => {
            let x = ExprObj::new(c"bitwise")?;
            x.u32(sys::NFTNL_EXPR_BITWISE_SREG, *sreg);
            x.u32(sys::NFTNL_EXPR_BITWISE_DREG, *dreg);
            x.u32(sys::NFTNL_EXPR_BITWISE_LEN, *len);
            x.data(sys::NFTNL_EXPR_BITWISE_MASK, mask);
            x.data(sys::NFTNL_EXPR_BITWISE_XOR, xor);
            x
        }
        Expr::Range { op, sreg, from, to } => {
            let x = ExprObj::new(c"range")?;
            x.u32(sys::NFTNL_EXPR_RANGE_SREG, *sreg);
            x.u32(sys::NFTNL_EXPR_RANGE_OP, *op);
            x.data(sys::NFTNL_EXPR_RANGE_FROM_DATA, from);
            x.data(sys::NFTNL_EXPR_RANGE_TO_DATA, to);
            x
        }
        Expr::Byteorder {
            sreg,
            dreg,
            op,
            len,
            size,
        } => {
            let x = ExprObj::new(c"byteorder")?;
            x.u32(sys::NFTNL_EXPR_BYTEORDER_SREG, *sreg);
            x.u32(sys::NFTNL_EXPR_BYTEORDER_DREG, *dreg);
            x.u32(sys::NFTNL_EXPR_BYTEORDER_OP, *op);
            x.u32(sys::NFTNL_EXPR_BYTEORDER_LEN, *len);
            x.u32(sys::NFTNL_EXPR_BYTEORDER_SIZE, *size);
            x
        }
        Expr::Lookup {
            sreg,
            dreg,
            set,
            flags,
        } => {
            let x = ExprObj::new(c"lookup")?;
            x.u32(sys::NFTNL_EXPR_LOOKUP_SREG, *sreg);
            if let Some(d) = dreg {
                x.u32(sys::NFTNL_EXPR_LOOKUP_DREG, *d);
            }
            match set {
                LookupSet::Named(n) => x.str(sys::NFTNL_EXPR_LOOKUP_SET, n)?,
                LookupSet::Anon(k) => {
                    let (name, id) = anon.get(*k).ok_or(FfiError::Alloc("an anonymous set id"))?;
                    x.str(sys::NFTNL_EXPR_LOOKUP_SET, name)?;
                    x.u32(sys::NFTNL_EXPR_LOOKUP_SET_ID, *id);
                }
            }
            if *flags != 0 {
                x.u32(sys::NFTNL_EXPR_LOOKUP_FLAGS, *flags);
            }
            x
        }
        Expr::Counter => ExprObj::new(c"counter")?,
        Expr::Immediate { verdict, chain } => {
            let x = ExprObj::new(c"immediate")?;
            x.u32(sys::NFTNL_EXPR_IMM_DREG, 0);
            x.u32(sys::NFTNL_EXPR_IMM_VERDICT, *verdict as u32);
            if let Some(c) = chain {
                x.str(sys::NFTNL_EXPR_IMM_CHAIN, c)?;
            }
            x
        }
        Expr::Other(name) => return Err(FfiError::Nul(name.clone())),
    };
    Ok(x.into_raw())
}

/// A rule read back from the kernel.
pub(crate) struct ParsedRule {
    pub table: String,
    pub chain: String,
    pub exprs: Vec<Expr>,
    pub udata: Vec<u8>,
}

/// Parses one NFT_MSG_NEWRULE message from a dump with libnftnl.
pub(crate) fn parse_rule(raw: &[u8]) -> Option<ParsedRule> {
    // libnftnl reads the header and attributes with aligned loads: copy into u32 storage.
    let mut aligned = vec![0u32; raw.len().div_ceil(4)];
    // SAFETY: `aligned` has at least raw.len() bytes; the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(raw.as_ptr(), aligned.as_mut_ptr().cast::<u8>(), raw.len());
    }
    // SAFETY: plain allocation; checked for null.
    let r = unsafe { sys::nftnl_rule_alloc() };
    if r.is_null() {
        return None;
    }
    let rule = RuleObj(r);
    // SAFETY: `aligned` holds one complete netlink message (length from its header, checked
    // by the message iterator against the receive buffer); libnftnl copies what it keeps.
    let ok = unsafe { sys::nftnl_rule_nlmsg_parse(aligned.as_ptr().cast(), rule.0) } >= 0;
    if !ok {
        return None;
    }
    let get_str = |attr: u32| -> Option<String> {
        // SAFETY: valid rule; the returned pointer is owned by the rule and NUL-terminated
        // (or null when unset), and we copy it before the rule is freed.
        unsafe {
            let p = sys::nftnl_rule_get_str(rule.0, attr as u16);
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    };
    let table = get_str(sys::NFTNL_RULE_TABLE)?;
    let chain = get_str(sys::NFTNL_RULE_CHAIN)?;
    let mut udata = Vec::new();
    // SAFETY: valid rule; the data pointer (if set) is valid for `len` bytes while the rule
    // lives; we copy it.
    unsafe {
        if sys::nftnl_rule_is_set(rule.0, sys::NFTNL_RULE_USERDATA as u16) {
            let mut len = 0u32;
            let p = sys::nftnl_rule_get_data(rule.0, sys::NFTNL_RULE_USERDATA as u16, &mut len);
            if !p.is_null() {
                udata.extend_from_slice(std::slice::from_raw_parts(p.cast::<u8>(), len as usize));
            }
        }
    }
    let mut exprs = Vec::new();
    // SAFETY: valid rule; the iterator is destroyed below and the expressions it yields are
    // owned by the rule, which outlives the loop.
    unsafe {
        let it = sys::nftnl_expr_iter_create(rule.0);
        if it.is_null() {
            return None;
        }
        loop {
            let e = sys::nftnl_expr_iter_next(it);
            if e.is_null() {
                break;
            }
            exprs.push(read_expr(e));
        }
        sys::nftnl_expr_iter_destroy(it);
    }
    Some(ParsedRule {
        table,
        chain,
        exprs,
        udata,
    })
}

/// Reads a libnftnl expression into plain data.
///
/// # Safety
/// `e` must be a valid expression owned by a live rule.
unsafe fn read_expr(e: *mut sys::nftnl_expr) -> Expr {
    // SAFETY (whole function): `e` is valid per the contract; getters return copies or
    // pointers into `e` that we copy immediately.
    unsafe {
        let u = |a: u32| sys::nftnl_expr_get_u32(e, a as u16);
        let is = |a: u32| sys::nftnl_expr_is_set(e, a as u16);
        // Data longer than nftpol ever uses marks the expression as foreign.
        let oversized = std::cell::Cell::new(false);
        let data = |a: u32| -> Data {
            let mut len = 0u32;
            let p = sys::nftnl_expr_get(e, a as u16, &mut len);
            if p.is_null() {
                return Data::EMPTY;
            }
            let s = std::slice::from_raw_parts(p.cast::<u8>(), len as usize);
            Data::new(s).unwrap_or_else(|| {
                oversized.set(true);
                Data::EMPTY
            })
        };
        let string = |a: u32| -> Option<String> {
            let p = sys::nftnl_expr_get_str(e, a as u16);
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        };
        let name = string(sys::NFTNL_EXPR_NAME).unwrap_or_default();
        let expr = match name.as_str() {
            "meta" if !is(sys::NFTNL_EXPR_META_SREG) => Expr::Meta {
                key: u(sys::NFTNL_EXPR_META_KEY),
                dreg: u(sys::NFTNL_EXPR_META_DREG),
            },
            "payload" if !is(sys::NFTNL_EXPR_PAYLOAD_SREG) => Expr::Payload {
                base: u(sys::NFTNL_EXPR_PAYLOAD_BASE),
                offset: u(sys::NFTNL_EXPR_PAYLOAD_OFFSET),
                len: u(sys::NFTNL_EXPR_PAYLOAD_LEN),
                dreg: u(sys::NFTNL_EXPR_PAYLOAD_DREG),
            },
            "ct" if is(sys::NFTNL_EXPR_CT_DREG) => Expr::Ct {
                key: u(sys::NFTNL_EXPR_CT_KEY),
                dreg: u(sys::NFTNL_EXPR_CT_DREG),
            },
            "cmp" => Expr::Cmp {
                op: u(sys::NFTNL_EXPR_CMP_OP),
                sreg: u(sys::NFTNL_EXPR_CMP_SREG),
                data: data(sys::NFTNL_EXPR_CMP_DATA),
            },
            "bitwise" if is(sys::NFTNL_EXPR_BITWISE_MASK) => Expr::Bitwise {
                sreg: u(sys::NFTNL_EXPR_BITWISE_SREG),
                dreg: u(sys::NFTNL_EXPR_BITWISE_DREG),
                len: u(sys::NFTNL_EXPR_BITWISE_LEN),
                mask: data(sys::NFTNL_EXPR_BITWISE_MASK),
                xor: data(sys::NFTNL_EXPR_BITWISE_XOR),
            },
            "range" => Expr::Range {
                op: u(sys::NFTNL_EXPR_RANGE_OP),
                sreg: u(sys::NFTNL_EXPR_RANGE_SREG),
                from: data(sys::NFTNL_EXPR_RANGE_FROM_DATA),
                to: data(sys::NFTNL_EXPR_RANGE_TO_DATA),
            },
            "byteorder" => Expr::Byteorder {
                sreg: u(sys::NFTNL_EXPR_BYTEORDER_SREG),
                dreg: u(sys::NFTNL_EXPR_BYTEORDER_DREG),
                op: u(sys::NFTNL_EXPR_BYTEORDER_OP),
                len: u(sys::NFTNL_EXPR_BYTEORDER_LEN),
                size: u(sys::NFTNL_EXPR_BYTEORDER_SIZE),
            },
            "lookup" => Expr::Lookup {
                sreg: u(sys::NFTNL_EXPR_LOOKUP_SREG),
                dreg: is(sys::NFTNL_EXPR_LOOKUP_DREG).then(|| u(sys::NFTNL_EXPR_LOOKUP_DREG)),
                set: LookupSet::Named(Name::from(
                    string(sys::NFTNL_EXPR_LOOKUP_SET).unwrap_or_default(),
                )),
                flags: if is(sys::NFTNL_EXPR_LOOKUP_FLAGS) {
                    u(sys::NFTNL_EXPR_LOOKUP_FLAGS)
                } else {
                    0
                },
            },
            "counter" => Expr::Counter,
            "immediate" if u(sys::NFTNL_EXPR_IMM_DREG) == 0 && is(sys::NFTNL_EXPR_IMM_VERDICT) => {
                Expr::Immediate {
                    verdict: u(sys::NFTNL_EXPR_IMM_VERDICT) as i32,
                    chain: string(sys::NFTNL_EXPR_IMM_CHAIN).map(Name::from),
                }
            }
            _ => Expr::Other(name.clone()),
        };
        if oversized.get() {
            Expr::Other(format!("{name} with data longer than 16 bytes"))
        } else {
            expr
        }
    }
}

/// Sets an integer socket option.
pub(crate) fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed correctly.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast::<c_void>(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one datagram; `Ok(None)` when nothing is queued and `wait` is false.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8], wait: bool) -> io::Result<Option<usize>> {
    let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
    loop {
        // SAFETY: `buf` is valid for writes of buf.len() bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast::<c_void>(), buf.len(), flags) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// Sends the whole buffer as one datagram with one sendmsg call.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: sockaddr_nl is plain data; all-zero is "the kernel" (pid 0, no groups).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; the fields set below point at live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut addr).cast::<c_void>();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    loop {
        // SAFETY: `msg` and everything it points to live across the call; the kernel only
        // reads from the iovec.
        let n = unsafe { libc::sendmsg(fd, &raw const msg, 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
