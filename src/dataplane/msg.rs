//! Netlink message framing for nf_tables, in safe Rust: writing messages and attributes into
//! one contiguous batch buffer, and walking the attributes of replies and dumps.
//!
//! Set elements (millions of them in a full sync) are written here directly, attribute by
//! attribute, with no allocation per element; everything else that needs libnftnl goes
//! through `ffi`.

pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(crate) const NFPROTO_INET: u8 = 1;

pub(crate) const NFT_MSG_NEWTABLE: u16 = 0;
pub(crate) const NFT_MSG_GETTABLE: u16 = 1;
pub(crate) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(crate) const NFT_MSG_GETCHAIN: u16 = 4;
pub(crate) const NFT_MSG_DELCHAIN: u16 = 5;
pub(crate) const NFT_MSG_NEWRULE: u16 = 6;
pub(crate) const NFT_MSG_GETRULE: u16 = 7;
pub(crate) const NFT_MSG_DELRULE: u16 = 8;
pub(crate) const NFT_MSG_NEWSET: u16 = 9;
pub(crate) const NFT_MSG_GETSET: u16 = 10;
pub(crate) const NFT_MSG_DELSET: u16 = 11;
pub(crate) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(crate) const NFT_MSG_GETSETELEM: u16 = 13;
pub(crate) const NFT_MSG_DELSETELEM: u16 = 14;
pub(crate) const NFT_MSG_GETGEN: u16 = 16;
pub(crate) const NFT_MSG_DESTROYTABLE: u16 = 26;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;

pub(crate) const HDR_LEN: usize = 16;
pub(crate) const NFGEN_LEN: usize = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends netlink messages to one contiguous buffer.
#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    /// Starts an nf_tables message; returns its offset for [`Writer::end`].
    pub fn begin(&mut self, msg_type: u16, flags: u16, seq: u32) -> usize {
        self.begin_raw(
            (NFNL_SUBSYS_NFTABLES << 8) | msg_type,
            flags,
            seq,
            NFPROTO_INET,
            0,
        )
    }

    /// Starts a message with an explicit full type, family and resource id.
    pub fn begin_raw(
        &mut self,
        full_type: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&full_type.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    /// Finishes the message started at `start` (writes its length).
    pub fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Adds flags to the message header at `start`.
    pub fn add_flags(&mut self, start: usize, flags: u16) {
        let f = u16::from_ne_bytes([self.buf[start + 6], self.buf[start + 7]]) | flags;
        self.buf[start + 6..start + 8].copy_from_slice(&f.to_ne_bytes());
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// A big-endian u32 attribute.
    pub fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    pub fn nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub fn end_nest(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        let n = align4(self.buf.len()) - self.buf.len();
        self.buf.extend(std::iter::repeat_n(0u8, n));
    }
}

/// One received netlink message.
pub(crate) struct Msg<'a> {
    pub msg_type: u16,
    /// The whole message, header included (what libnftnl's parsers take).
    pub raw: &'a [u8],
}

impl<'a> Msg<'a> {
    /// The attributes after the nfgenmsg header.
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs(self.raw.get(HDR_LEN + NFGEN_LEN..).unwrap_or(&[]))
    }

    /// For an NLMSG_ERROR: the errno (0 for an ack), the sequence number of the message it
    /// answers, and the offset of the offending attribute in that message, if the kernel
    /// said (extended ack).
    pub fn error(&self) -> Option<(i32, u32, Option<u32>)> {
        if self.msg_type != NLMSG_ERROR {
            return None;
        }
        let p = self.raw.get(HDR_LEN..)?;
        let err = i32::from_ne_bytes(p.get(..4)?.try_into().ok()?);
        let inner = p.get(4..4 + HDR_LEN)?;
        let inner_len = u32::from_ne_bytes(inner[..4].try_into().ok()?) as usize;
        let inner_seq = u32::from_ne_bytes(inner[8..12].try_into().ok()?);
        let flags = u16::from_ne_bytes([self.raw[6], self.raw[7]]);
        // NLM_F_CAPPED (0x100): only the header of the request was echoed.
        let echoed = if flags & 0x100 != 0 {
            HDR_LEN
        } else {
            inner_len
        };
        let mut offset = None;
        // NLM_F_ACK_TLVS (0x200): extended ack attributes follow.
        if flags & 0x200 != 0
            && let Some(tlvs) = p.get(4 + align4(echoed)..)
        {
            for (ty, data) in Attrs(tlvs) {
                // NLMSGERR_ATTR_OFFS
                if ty == 2 && data.len() >= 4 {
                    offset = Some(u32::from_ne_bytes(data[..4].try_into().ok()?));
                }
            }
        }
        Some((-err, inner_seq, offset))
    }
}

/// Iterates the netlink messages in a receive buffer.
pub(crate) fn messages(buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let h = buf.get(off..off + HDR_LEN)?;
        let len = u32::from_ne_bytes(h[..4].try_into().ok()?) as usize;
        if len < HDR_LEN || off + len > buf.len() {
            return None;
        }
        let msg = Msg {
            msg_type: u16::from_ne_bytes([h[4], h[5]]),
            raw: &buf[off..off + len],
        };
        off += align4(len);
        Some(msg)
    })
}

/// Iterates netlink attributes: (type without flags, payload).
#[derive(Clone)]
pub(crate) struct Attrs<'a>(pub &'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            self.0 = &[];
            return None;
        }
        self.0 = b.get(align4(len)..).unwrap_or(&[]);
        Some((ty, &b[4..len]))
    }
}

/// The payload of the first attribute of type `ty`.
pub(crate) fn find(attrs: Attrs<'_>, ty: u16) -> Option<&[u8]> {
    attrs.into_iter().find(|(t, _)| *t == ty).map(|(_, d)| d)
}

pub(crate) fn be32(d: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(..4)?.try_into().ok()?))
}

/// A NUL-terminated string attribute.
pub(crate) fn string(d: &[u8]) -> Option<&str> {
    let end = d.iter().position(|c| *c == 0).unwrap_or(d.len());
    std::str::from_utf8(&d[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_attributes_parse_back() {
        let mut w = Writer::default();
        let m = w.begin(NFT_MSG_NEWSET, NLM_F_REQUEST, 7);
        w.attr_str(1, "nftpol");
        let n = w.nest(3);
        w.attr_u32(1, 0xdead_beef);
        w.attr(2, &[1, 2, 3]);
        w.end_nest(n);
        w.end(m);
        let msgs: Vec<_> = messages(&w.buf).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            u32::from_ne_bytes(msgs[0].raw[8..12].try_into().unwrap()),
            7
        );
        let attrs: Vec<_> = msgs[0].attrs().collect();
        assert_eq!(string(attrs[0].1), Some("nftpol"));
        let inner: Vec<_> = Attrs(attrs[1].1).collect();
        assert_eq!(be32(inner[0].1), Some(0xdead_beef));
        assert_eq!(inner[1].1, &[1, 2, 3]);
        assert_eq!(w.buf.len() % 4, 0);
    }
}
