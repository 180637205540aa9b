//! lnat's test kit: a host-side harness for the tracker (LNet stream builder, a
//! segment-delivery simulator, and the environment and packet stand-ins the datapath provides for
//! real), the reference rewrite ([`reference`]) and a frame codec ([`frames`]).
//!
//! Shared by lnat-common's property and capture tests, the fuzz target and the namespace tests,
//! so they all drive the tracker through [`lnat_common::segment`] exactly as the eBPF program
//! does. A crate of its own, which the `lnat` binary does not depend on, so none of this ships.

pub mod frames;
pub mod reference;

use std::collections::BTreeMap;

use lnat_common::{
    crc,
    history::Clip,
    nid::Nid,
    ping,
    quiet::Quiet,
    segment::{self, Packet},
    tracker::{Admit, Direction, Env, Note, Role, Tracker},
    wire::{self, Connreq, Endian, Hello, KsockHdr, LnetHdr, LnetType, Proto},
};

use crate::reference::Setup;

/// A mapping table and learning switch, recording what the tracker reports.
#[derive(Clone, Debug, Default)]
pub struct MapEnv {
    /// External NID to local address (0: the flow's own).
    pub mappings: BTreeMap<Nid, u32>,
    /// Whether HELLOs teach external NIDs.
    pub learn: bool,
    /// NIDs learned, in order.
    pub learned: Vec<Nid>,
    /// Everything noted, in order.
    pub notes: Vec<Note>,
    /// The NID the peer names this host by, for an outgoing stream's own NIDs.
    pub external: Option<Nid>,
}

impl MapEnv {
    /// How many times `what` was noted.
    pub fn count(&self, what: Note) -> usize {
        self.notes.iter().filter(|n| **n == what).count()
    }
}

impl Env for MapEnv {
    fn mapping(&mut self, nid: Nid) -> Option<u32> {
        self.mappings.get(&nid).copied()
    }
    fn learning(&self) -> bool {
        self.learn
    }
    fn learn(&mut self, ext: Nid, _local: Nid) {
        self.mappings.insert(ext, 0);
        self.learned.push(ext);
    }
    fn note(&mut self, what: Note) {
        self.notes.push(what);
    }
    fn external(&mut self) -> Option<Nid> {
        self.external
    }
    /// Without an outgoing stream to count GETs, a REPLY may come whenever rule I1 applies.
    fn replies_due(&mut self) -> bool {
        self.external.is_some()
    }
}

/// A segment payload in memory.
pub struct VecPacket<'a>(pub &'a mut [u8]);

/// Copies `bytes[off..off + dst.len()]` into `dst`: a packet load from memory.
fn load_from(bytes: &[u8], off: u32, dst: &mut [u8]) -> bool {
    let off = off as usize;
    match bytes.get(off..off + dst.len()) {
        Some(src) => {
            dst.copy_from_slice(src);
            true
        }
        None => false,
    }
}

impl Packet for VecPacket<'_> {
    fn load(&mut self, off: u32, dst: &mut [u8]) -> bool {
        load_from(self.0, off, dst)
    }
    fn patch(&mut self, clip: &Clip, _reach: u32) -> bool {
        let off = clip.off as usize;
        match self.0.get_mut(off..off + clip.len as usize) {
            Some(dst) => {
                for (b, x) in dst.iter_mut().zip(clip.xor) {
                    *b ^= x;
                }
                true
            }
            None => false,
        }
    }
}

/// One unit after the HELLO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A socklnd NOOP (V2..V4).
    Noop,
    /// An LNet message.
    Lnet {
        /// The header; payload_length is set from `payload`.
        hdr: LnetHdr,
        /// Payload bytes.
        payload: Vec<u8>,
        /// Whether to checksum it (V2 `enable_csum`).
        csum: bool,
    },
    /// Raw bytes, for garbage.
    Raw(Vec<u8>),
}

/// A stream as one peer sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    /// The connection request, on a connection the peer opened.
    pub connreq: Option<Connreq>,
    /// The peer's byte order.
    pub endian: Endian,
    /// The peer's HELLO.
    pub hello: Hello,
    /// What follows.
    pub units: Vec<Unit>,
}

impl StreamSpec {
    /// Encodes the stream, computing checksums where asked.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        if let Some(req) = &self.connreq {
            let n = req.encode(self.endian, &mut buf);
            out.extend_from_slice(&buf[..n]);
        }
        let mut hello = vec![0u8; self.hello.wire_len()];
        self.hello.encode(self.endian, &mut hello);
        out.extend_from_slice(&hello);
        for u in &self.units {
            out.extend_from_slice(&encode_unit(self.hello.proto, self.endian, u));
        }
        out
    }

    /// Where each unit starts in [`StreamSpec::bytes`].
    pub fn unit_starts(&self) -> Vec<usize> {
        let mut at = self.connreq.map_or(0, |r| r.wire_len()) + self.hello.wire_len();
        self.units
            .iter()
            .map(|u| {
                let start = at;
                at += encode_unit(self.hello.proto, self.endian, u).len();
                start
            })
            .collect()
    }
}

/// Ping information listing `nids` after `0@lo`, in `endian`, as `lnet_ping_target_create`
/// builds it (`api-ni.c:1909-1925`): entry 0's status is the ping target's `seqno`, the
/// others are up.
pub fn ping_info(endian: Endian, features: u32, seqno: u32, nids: &[Nid]) -> Vec<u8> {
    let mut b = vec![0u8; ping::HEAD_LEN + ping::NI_LEN * (1 + nids.len())];
    endian.put_u32(&mut b, ping::MAGIC_AT, ping::MAGIC);
    endian.put_u32(&mut b, ping::FEATURES, features);
    endian.put_u32(&mut b, ping::PID, wire::PID_LUSTRE);
    endian.put_u32(&mut b, ping::NNIS, 1 + nids.len() as u32);
    for (i, n) in [ping::LO].iter().chain(nids).enumerate() {
        let at = ping::HEAD_LEN + i * ping::NI_LEN;
        endian.put_u64(&mut b, at, n.0);
        let status = if i == 0 { seqno } else { ping::STATUS_UP };
        endian.put_u32(&mut b, at + ping::NI_STATUS_AT, status);
    }
    b
}

/// Encodes one unit for `proto` as a kernel of byte order `endian` sends it: the ksock header
/// (checksum included) in that order, which the receiver swaps back (`ksocknal_process_receive`
/// in lnet/klnds/socklnd/socklnd_cb.c), the LNet header little-endian whatever the order
/// (`lnet_hdr_to_nid4` and `lnet_hdr_to_nid16` in include/linux/lnet/lib-lnet.h).
pub fn encode_unit(proto: Proto, endian: Endian, u: &Unit) -> Vec<u8> {
    let mut buf = [0u8; 128];
    match u {
        Unit::Noop => {
            let n = KsockHdr {
                msg_type: wire::MSG_NOOP,
                ..KsockHdr::default()
            }
            .encode(endian, &mut buf);
            buf[..n].to_vec()
        }
        Unit::Raw(b) => b.clone(),
        Unit::Lnet { hdr, payload, csum } => {
            let mut hdr = *hdr;
            hdr.payload_length = payload.len() as u32;
            let mut msg = Vec::new();
            if proto != Proto::V1 {
                let n = KsockHdr {
                    msg_type: wire::MSG_LNET,
                    ..KsockHdr::default()
                }
                .encode(endian, &mut buf);
                msg.extend_from_slice(&buf[..n]);
            }
            let n = hdr.encode(proto, &mut buf);
            msg.extend_from_slice(&buf[..n]);
            msg.extend_from_slice(payload);
            if *csum && proto != Proto::V1 {
                let c = crc::crc32_le(!0, &msg);
                endian.put_u32(&mut msg, wire::ksock::CSUM, c);
            }
            msg
        }
    }
}

/// Checks every nonzero socklnd checksum in a stream as the receiving kernel does; returns the
/// offset of the first message that fails.
pub fn check_csums(stream: &[u8], spec: &StreamSpec) -> Result<usize, usize> {
    let proto = spec.hello.proto;
    let mut p = spec.connreq.map_or(0, |r| r.wire_len()) + spec.hello.wire_len();
    let mut checked = 0;
    if proto == Proto::V1 {
        return Ok(0);
    }
    let hdr = proto.lnet_hdr();
    while p + wire::ksock::LEN <= stream.len() {
        let k = KsockHdr::decode(spec.endian, &stream[p..]).map_err(|_| p)?;
        let len = match k.msg_type {
            wire::MSG_NOOP => wire::ksock::LEN,
            wire::MSG_LNET => {
                let at = p + wire::ksock::LEN + hdr.payload_length;
                wire::ksock::LEN + hdr.len + Endian::Little.u32(stream, at) as usize
            }
            _ => return Err(p),
        };
        let msg = stream.get(p..p + len).ok_or(p)?;
        if k.csum != 0 {
            let mut m = msg.to_vec();
            m[wire::ksock::CSUM..wire::ksock::CSUM + 4].fill(0);
            if crc::crc32_le(!0, &m) != k.csum {
                return Err(p);
            }
            checked += 1;
        }
        p += len;
    }
    Ok(checked)
}

/// A small deterministic generator, so a failing case is a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.bits() % n
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Who talks to whom in a generated stream.
#[derive(Clone, Copy, Debug)]
pub struct Cast {
    /// The peer (sender) NID.
    pub peer: Nid,
    /// The NID the peer addresses us by (the NAT's, for the case lnat exists for).
    pub external: Nid,
    /// Our own NID.
    pub local: Nid,
}

/// Generates a random stream: every message type, NOOPs, zero and odd payloads, checksums on
/// V2, dest NIDs drawn from `dests`.
pub fn random_stream(
    rng: &mut Rng,
    role: Role,
    proto: Proto,
    endian: Endian,
    cast: Cast,
    dests: &[Nid],
) -> StreamSpec {
    let connreq = (role == Role::Passive).then(|| Connreq {
        nid: cast.external,
        version: if proto == Proto::V4 { 2 } else { 1 },
    });
    let hello = Hello {
        proto,
        src_nid: cast.peer,
        dst_nid: if proto == Proto::V1 {
            Nid::ANY
        } else {
            cast.external
        },
        src_pid: wire::PID_LUSTRE,
        dst_pid: if proto == Proto::V1 {
            0
        } else {
            wire::PID_USERFLAG | 40001
        },
        src_incarnation: rng.bits(),
        dst_incarnation: 0,
        ctype: 1 + rng.below(3) as u32,
        nips: if rng.chance(20) {
            rng.below(3) as u32
        } else {
            0
        },
    };
    let csum = proto == Proto::V2 && rng.chance(70);
    let count = 1 + rng.below(40) as usize;
    let mut units = Vec::new();
    for _ in 0..count {
        if proto != Proto::V1 && rng.chance(15) {
            units.push(Unit::Noop);
            continue;
        }
        let msg_type = match rng.below(4) {
            0 => LnetType::Ack,
            1 => LnetType::Put,
            2 => LnetType::Get,
            _ => LnetType::Reply,
        };
        let len = match msg_type {
            LnetType::Ack | LnetType::Get => 0,
            _ => match rng.below(6) {
                0 => 0,
                1 => 1 + 2 * rng.below(40) as usize,
                2 => 4096,
                3 => rng.below(3000) as usize,
                _ => rng.below(200) as usize,
            },
        };
        let mut body = [0u8; wire::LnetHdrLayout::BODY_LEN];
        body.iter_mut().for_each(|b| *b = rng.bits() as u8);
        let hdr = LnetHdr {
            dest_nid: dests[rng.below(dests.len() as u64) as usize],
            src_nid: cast.peer,
            dest_pid: wire::PID_USERFLAG | rng.below(65536) as u32,
            src_pid: wire::PID_LUSTRE,
            msg_type: msg_type as u32,
            payload_length: 0,
            body,
        };
        let payload = (0..len).map(|_| rng.bits() as u8).collect();
        units.push(Unit::Lnet { hdr, payload, csum });
    }
    StreamSpec {
        connreq,
        endian,
        hello,
        units,
    }
}

/// One copy of a segment as it reaches the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Stream offset of its first byte.
    pub start: usize,
    /// Stream offset past its last byte.
    pub end: usize,
    /// Lost before the datapath sees it.
    pub lost: bool,
    /// Seen by the datapath, then dropped by the stack.
    pub dropped_after: bool,
}

/// How hostile the delivery is, in percent per segment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Weather {
    /// Largest segment.
    pub max_seg: usize,
    /// Loss before the datapath.
    pub loss: u64,
    /// Drop after the datapath.
    pub drop_after: u64,
    /// Duplicate of an earlier range.
    pub dup: u64,
    /// Resend of lost data coalesced with what follows.
    pub coalesce: u64,
    /// Chance each round that the sender resends from the first byte the receiver lacks
    /// (15 is a quick recovery; lower leaves holes open longer, with more sent past them).
    pub recovery: u64,
    /// The sender resends only what the receiver lacks, as a SACK sender does: never a byte it
    /// received out of order (a segment passed ahead among them), so the datapath must keep
    /// what it needs of those.
    pub sack: bool,
}

impl Weather {
    /// A random bad network of segments up to 400 bytes (a few small messages each): loss,
    /// drops after the datapath, duplication and coalesced resends in random measure.
    pub fn random(rng: &mut Rng) -> Weather {
        Weather {
            max_seg: 1 + rng.below(400) as usize,
            loss: rng.below(8),
            drop_after: rng.below(10),
            dup: rng.below(15),
            coalesce: rng.below(50),
            recovery: 5 + rng.below(20),
            sack: rng.chance(50),
        }
    }
}

/// What a delivery produced.
#[derive(Debug)]
pub struct Delivered {
    /// The receiving stack's view: each byte from the first copy it accepted.
    pub received: Vec<u8>,
    /// Every copy the datapath passed knowing all its patches, with its bytes as passed, from
    /// the first byte the receiver then lacked (the stack discards what it has unread).
    pub copies: Vec<(usize, Vec<u8>)>,
    /// Copies overlapping a stretch whose patches the history forgot (counted and passed with
    /// what it still knows, a documented limit), with their bytes as passed: each NID in them
    /// must still carry all of its rewrite or none of it; cut like `copies`.
    pub missed: Vec<(usize, Vec<u8>)>,
    /// Copies the datapath dropped as out of order.
    pub dropped: usize,
    /// Copies the datapath passed ahead of its cursor ([`lnat_common::ahead`]).
    pub ahead: usize,
    /// Copies the datapath held back for want of room in the history.
    pub held: usize,
    /// Copies passed on a published quiet window alone, as the datapath passes them without
    /// the tracker; the window read is the newest or, as another CPU might see it, an older one.
    pub quiet: usize,
    /// The environment after the delivery.
    pub env: MapEnv,
    /// The tracker after the delivery.
    pub tracker: std::boxed::Box<Tracker>,
}

/// The receiving host: its role on the connection, its address, its mappings, and the first
/// guess at the NID the peer addresses it by (as the datapath's config gives new flows).
#[derive(Clone, Debug)]
pub struct Receiver {
    /// Which side opened the connection.
    pub role: Role,
    /// Our address (host order).
    pub local: u32,
    /// Mappings and learning.
    pub env: MapEnv,
    /// The hint new flows start with.
    pub hint: Nid,
    /// Whether the datapath can read the receiving socket's `rcv_nxt`, as the kernel's can
    /// for a live socket; without it the history keeps every patch it has room for.
    pub socket: bool,
    /// Where the datapath follows the stream: on the receiving host ([`Direction::In`]) or, for
    /// the stream it sends, on the sending host ([`Direction::Out`]; `local` is then the
    /// sender's address).
    pub dir: Direction,
}

/// A segment's payload, with what the receiver has taken in so far.
struct ReceiverPacket<'a> {
    bytes: VecPacket<'a>,
    rcv_nxt: Option<u32>,
}

/// The bytes of a segment passed ahead, as the datapath keeps them: read again, never written.
struct KeptPacket<'a>(&'a [u8]);

impl Packet for KeptPacket<'_> {
    fn load(&mut self, off: u32, dst: &mut [u8]) -> bool {
        load_from(self.0, off, dst)
    }
    fn patch(&mut self, _: &Clip, _: u32) -> bool {
        false
    }
    fn delivered(&self) -> bool {
        true
    }
}

impl Packet for ReceiverPacket<'_> {
    fn load(&mut self, off: u32, dst: &mut [u8]) -> bool {
        self.bytes.load(off, dst)
    }
    fn patch(&mut self, clip: &Clip, reach: u32) -> bool {
        self.bytes.patch(clip, reach)
    }
    fn received(&mut self) -> Option<u32> {
        self.rcv_nxt
    }
}

/// Delivers `stream` (first byte at sequence number `isn`) to a tracker through a hostile
/// network, TCP-style: lost and dropped data is sent again until the receiver has it all.
pub fn deliver(stream: &[u8], isn: u32, rx: Receiver, w: Weather, rng: &mut Rng) -> Delivered {
    let Receiver {
        role,
        local,
        env,
        hint,
        socket,
        dir,
    } = rx;
    let mut t = std::boxed::Box::new(match dir {
        Direction::In => Tracker::new(role, isn, local, hint),
        Direction::Out => Tracker::outgoing(role, isn, local),
    });
    let mut env = env;
    let n = stream.len();
    let mut have = vec![false; n];
    let mut received = vec![0u8; n];
    let mut copies = Vec::new();
    let mut dropped = 0;
    let mut ahead = 0;
    let mut kept: Vec<u8> = Vec::new();
    let mut held = 0;
    let mut missed = Vec::new();
    let mut quiet = 0;
    let mut windows = vec![Quiet::NONE];
    // Its own generator, so the stream of segments is what it was before windows existed.
    let mut stale = Rng::new(u64::from(isn) ^ 0x5155_4945_5400);
    let mut next_new = 0usize;
    let mut rounds = 0;
    while have.iter().any(|h| !h) {
        rounds += 1;
        assert!(rounds < 200_000, "delivery does not converge");
        let first_missing = have.iter().position(|h| !h).unwrap_or(n);
        let (start, end) = if next_new < n && !rng.chance(w.recovery) {
            // New data, or a duplicate of something earlier.
            if next_new > 0 && rng.chance(w.dup) {
                let a = rng.below(next_new as u64) as usize;
                (
                    a,
                    (a + 1 + rng.below(w.max_seg as u64) as usize).min(next_new),
                )
            } else {
                let s = next_new;
                let e = (s + 1 + rng.below(w.max_seg as u64) as usize).min(n);
                next_new = e;
                (s, e)
            }
        } else {
            // Retransmit from the first byte the receiver lacks, maybe coalesced.
            let s = first_missing;
            let limit = if rng.chance(w.coalesce) {
                2 * w.max_seg
            } else {
                w.max_seg
            };
            let mut e = (s + 1 + rng.below(limit as u64) as usize)
                .min(n.max(s + 1))
                .min(n);
            if w.sack {
                // Up to the next byte the receiver has: what it has, it has SACKed.
                e = have[s..e].iter().position(|&h| h).map_or(e, |i| s + i);
            }
            next_new = next_new.max(e);
            (s, e)
        };
        if start >= end {
            continue;
        }
        let seg = Segment {
            start,
            end,
            lost: rng.chance(w.loss),
            dropped_after: rng.chance(w.drop_after),
        };
        if seg.lost {
            continue;
        }
        let mut bytes = stream[start..end].to_vec();
        let seq = isn.wrapping_add(start as u32);
        let newest = windows.len() - 1;
        let window = windows[if stale.chance(50) {
            newest
        } else {
            stale.below(windows.len() as u64) as usize
        }];
        let admit = if window.covers(seq, bytes.len() as u32) {
            quiet += 1;
            Admit::Pass
        } else {
            let rcv_nxt = socket.then(|| isn.wrapping_add(first_missing as u32));
            let mut pkt = ReceiverPacket {
                bytes: VecPacket(&mut bytes),
                rcv_nxt,
            };
            let admit = segment::process_ahead(
                &mut t,
                seq,
                pkt.bytes.0.len() as u32,
                &mut pkt,
                &mut KeptPacket(&kept),
                &mut env,
                1 << 16,
            );
            if admit == Admit::Ahead {
                kept = pkt.bytes.0.to_vec();
            }
            let q = Quiet::of(&t);
            if windows[newest] != q {
                windows.push(q);
            }
            admit
        };
        // The stack reads nothing of a copy before the first byte it lacks: only the rest is
        // checked.
        let from = first_missing.clamp(start, end);
        let used = (from, bytes[from - start..].to_vec());
        match admit {
            Admit::Drop => {
                dropped += 1;
                continue;
            }
            Admit::Hold => {
                held += 1;
                continue;
            }
            Admit::Track { miss: true } => missed.push(used),
            Admit::Ahead => {
                ahead += 1;
                copies.push(used);
            }
            Admit::Pass | Admit::Track { miss: false } => copies.push(used),
        }
        if seg.dropped_after {
            continue;
        }
        for (i, b) in bytes.iter().enumerate() {
            if !have[start + i] {
                have[start + i] = true;
                received[start + i] = *b;
            }
        }
    }
    Delivered {
        received,
        copies,
        dropped,
        ahead,
        held,
        missed,
        quiet,
        env,
        tracker: t,
    }
}

/// True when every copy agrees with `want` at every byte it carries.
pub fn copies_agree(d: &Delivered, want: &[u8]) -> Result<(), (usize, u8, u8)> {
    for (start, bytes) in &d.copies {
        for (i, b) in bytes.iter().enumerate() {
            if want[start + i] != *b {
                return Err((start + i, *b, want[start + i]));
            }
        }
    }
    Ok(())
}

/// Checks that every copy, those the history missed included, carries each change the
/// reference makes to a field (a NID's address, a dest_pid compensation: changed bytes less
/// than four apart) whole or not at all; returns the first stream offset where one is half.
pub fn all_or_nothing(d: &Delivered, stream: &[u8], want: &[u8]) -> Result<(), usize> {
    let mut fields: Vec<(usize, usize)> = Vec::new();
    for i in (0..stream.len()).filter(|&i| stream[i] != want[i]) {
        match fields.last_mut() {
            Some((_, end)) if i < *end + 4 => *end = i + 1,
            _ => fields.push((i, i + 1)),
        }
    }
    for (start, bytes) in d.copies.iter().chain(&d.missed) {
        let end = start + bytes.len();
        for &(a, b) in fields.iter().filter(|&&(a, b)| a >= *start && b <= end) {
            let got = &bytes[a - start..b - start];
            if got != &want[a..b] && got != &stream[a..b] {
                return Err(a);
            }
        }
    }
    Ok(())
}

/// The reference rewrite of `stream` for a receiver set up like `env`.
pub fn expected(stream: &[u8], role: Role, local: u32, env: &MapEnv) -> reference::Rewritten {
    reference::rewrite(
        stream,
        &Setup {
            role,
            local,
            mappings: env.mappings.clone(),
            learn: env.learn,
        },
    )
}
