//! The reference rewrite: what lnat must do to a whole stream, written the plain way.
//!
//! It walks a complete byte stream front to back with every byte in hand, so it never decides on
//! a partial NID and never sees a segment boundary. The tracker, fed the same stream in any
//! segmentation, must produce the same bytes; tests and the fuzz target check exactly that.
//!
//! It rewrites NIDs only. The DISCOVERY feature a server's ping reply gains on the way in
//! (ingress rule I1, docs/discovery.md) is checked by lnat-common's `tests/discoverable.rs`;
//! the streams compared with this reference carry no ping information.

use std::collections::BTreeMap;

use lnat_common::{
    crc,
    nid::{Nid, NidForm},
    tracker::Role,
    wire::{self, Endian, Proto},
};

/// Who the receiving host is and what it maps.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Which side opened the connection.
    pub role: Role,
    /// Our address on the connection (host order).
    pub local: u32,
    /// Static mappings: external NID to local address (0: the connection's own).
    pub mappings: BTreeMap<Nid, u32>,
    /// Whether an active HELLO teaches the external NID.
    pub learn: bool,
}

/// The rewritten stream and what was learned on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// The stream as the receiving stack must see it.
    pub bytes: Vec<u8>,
    /// External NIDs learned, in order.
    pub learned: Vec<Nid>,
    /// Offset where the stream stopped being followed, if it did.
    pub desync_at: Option<usize>,
}

struct Walk<'a> {
    setup: &'a Setup,
    mappings: BTreeMap<Nid, u32>,
    out: Vec<u8>,
    learned: Vec<Nid>,
}

impl Walk<'_> {
    fn mapped(&self, nid: Nid) -> Option<u32> {
        self.mappings
            .get(&nid)
            .map(|&a| if a == 0 { self.setup.local } else { a })
    }

    /// Rewrites the NID field at `at` if it maps; returns the address XOR it applied.
    fn nid(&mut self, at: usize, form: NidForm, learn: bool) -> [u8; 4] {
        let Some(nid) = form.decode(&self.out[at..at + form.size()]) else {
            return [0; 4];
        };
        let learning = learn && self.setup.learn && nid.is_socklnd();
        let target = match self.mapped(nid) {
            Some(t) => Some(t),
            None if learning => Some(self.setup.local),
            None => None,
        };
        if learning && nid.addr() != self.setup.local && !self.mappings.contains_key(&nid) {
            self.mappings.insert(nid, 0);
            self.learned.push(nid);
        }
        let Some(t) = target.filter(|&t| t != nid.addr()) else {
            return [0; 4];
        };
        let a = at + form.addr_offset();
        let mut xor = [0u8; 4];
        for (i, (b, n)) in self.out[a..a + 4]
            .iter_mut()
            .zip(form.addr_bytes(t))
            .enumerate()
        {
            xor[i] = *b ^ n;
            *b = n;
        }
        xor
    }
}

/// Rewrites a complete stream; a truncated last unit is left as it is.
pub fn rewrite(stream: &[u8], setup: &Setup) -> Rewritten {
    let mut w = Walk {
        setup,
        mappings: setup.mappings.clone(),
        out: stream.to_vec(),
        learned: Vec::new(),
    };
    let desync_at = walk(&mut w);
    Rewritten {
        bytes: w.out,
        learned: w.learned,
        desync_at,
    }
}

fn walk(w: &mut Walk<'_>) -> Option<usize> {
    let len = w.out.len();
    let mut p = 0usize;
    if w.setup.role == Role::Passive {
        match wire::Connreq::decode(&w.out) {
            Ok((req, endian)) => {
                let form = if req.version == 2 {
                    NidForm::Large
                } else if endian == Endian::Big {
                    NidForm::Be
                } else {
                    NidForm::Le
                };
                w.nid(wire::connreq::NID, form, false);
                p = req.wire_len();
            }
            Err(wire::WireError::Short) => return None,
            Err(wire::WireError::NotIpv4) => p = wire::connreq::LEN_V2,
            Err(_) => return Some(0),
        }
    }
    if p + 8 > len {
        return None;
    }
    let (proto, endian) = match wire::Hello::probe(&w.out[p..]) {
        Ok(x) => x,
        Err(_) => return Some(p),
    };
    let form = proto.hello_form(endian == Endian::Big);
    let layout = proto.hello();
    if p + layout.count_at + 4 > len {
        return None;
    }
    // Fields are acted on in stream order: a NID is rewritten before a later field of the same
    // header can show the header to be bad, as it must be in a datapath that sees it first.
    if let Some(dst) = layout.dst_nid {
        w.nid(p + dst, form, w.setup.role == Role::Active);
    }
    let count = if proto == Proto::V1 {
        let h = wire::LnetHdrLayout::NID4;
        if Endian::Little.u32(&w.out, p + h.msg_type) != wire::LnetType::Hello as u32 {
            return Some(p);
        }
        let bytes = Endian::Little.u32(&w.out, p + layout.count_at);
        if !bytes.is_multiple_of(4) {
            return Some(p);
        }
        bytes / 4
    } else {
        endian.u32(&w.out, p + layout.count_at)
    };
    if count > wire::MAX_HELLO_IPS {
        return Some(p);
    }
    p += layout.fixed + 4 * count as usize;
    // The ksock header is in the sender's order, the LNet header after it always LE
    // (`lnet_hdr_from_nid4` in include/linux/lnet/lib-lnet.h).
    let hdr = proto.lnet_hdr();
    let ks = proto.ksock_len();
    let hdr_form = proto.lnet_form();
    let le = Endian::Little;
    loop {
        if p >= len {
            return None;
        }
        let mut csum = 0;
        if proto != Proto::V1 {
            if p + 4 > len {
                return None;
            }
            match endian.u32(&w.out, p) {
                wire::MSG_NOOP => {
                    p += wire::ksock::LEN;
                    continue;
                }
                wire::MSG_LNET => {}
                _ => return Some(p),
            }
            csum = endian.u32(&w.out, p + wire::ksock::CSUM);
        }
        if p + ks + hdr.payload_length + 4 > len {
            return None;
        }
        let xor = w.nid(p + ks + hdr.dest_nid, hdr_form, false);
        if csum != 0 && xor != [0; 4] {
            let addr_end = ks + hdr.dest_nid + hdr_form.addr_offset() + 4;
            let gap = (ks + hdr.dest_pid - addr_end) as u32;
            let pid = crc::cancel_word(u32::from_le_bytes(xor), gap).to_le_bytes();
            for (b, x) in w.out[p + ks + hdr.dest_pid..].iter_mut().zip(pid) {
                *b ^= x;
            }
        }
        if proto == Proto::V1 && le.u32(&w.out, p + hdr.msg_type) > wire::LnetType::Reply as u32 {
            return Some(p);
        }
        let payload = le.u32(&w.out, p + ks + hdr.payload_length);
        if payload > wire::LNET_MTU {
            return Some(p);
        }
        p += ks + hdr.len + payload as usize;
    }
}
