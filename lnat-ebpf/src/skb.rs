//! The segment's payload inside the socket buffer: reads, and writes that keep the TCP checksum.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::generated::{
        bpf_l4_csum_replace, bpf_sk_lookup_tcp, bpf_sk_release, bpf_skb_load_bytes,
        bpf_skb_pull_data, bpf_skb_store_bytes, bpf_tcp_sock,
    },
    programs::TcContext,
};
use lnat_common::{
    csum,
    history::Clip,
    maps::{SegmentInfo, Work},
    segment::Packet,
    tracker::Direction,
};

/// `v`, with everything the compiler knows about it forgotten.
///
/// LLVM drops a bounds check it can prove redundant from its own range analysis, which the
/// verifier does not share; reading the value back through memory keeps the check in the
/// bytecode, where the verifier needs it: to bound a helper's length argument, or a packet
/// offset before it is compared with the packet's end.
#[inline(always)]
pub fn opaque<T: Copy>(v: T) -> T {
    // SAFETY: reads a local.
    unsafe { core::ptr::read_volatile(&v) }
}

/// `len` as a helper's length argument the verifier can prove is in `1..=max`, or `None`.
///
/// Verifiers before Linux 6.8 learn nothing from `len != 0` (they refine only ranges, and
/// "not zero" is not one), and those before 6.3 forget the range of a 32-bit value spilled to
/// the stack, so Debian 12's 6.1 saw a length of 0 possible and refused the call ("invalid
/// access to map value ... size=0"). Here the range comes from arithmetic on a 64-bit value
/// read back through memory, so the compiler cannot merge the checks: `len - 1 < max`, then
/// `+ 1`, which any verifier follows.
#[inline(always)]
pub fn helper_len(len: usize, max: u32) -> Option<u32> {
    let below = opaque((len as u64).wrapping_sub(1));
    if below >= max as u64 {
        return None;
    }
    Some(below as u32 + 1)
}

/// The payload of one segment.
pub struct SkbPacket {
    skb: *mut __sk_buff,
    seg: *const SegmentInfo,
    /// Bytes from the start of the packet made linear so far, kept in map memory (the work
    /// area), which the verifier does not follow value by value.
    pulled: *mut u32,
    /// Where a socket lookup's tuple is built (map memory too).
    tuple: *mut [u8; 12],
    /// Which way the packet flows: who receives its bytes.
    dir: Direction,
}

impl SkbPacket {
    /// The payload of the segment `work` describes in `ctx`, flowing `dir`; `work` also keeps
    /// what is linear.
    pub fn new(ctx: &TcContext, work: *mut Work, dir: Direction) -> Self {
        SkbPacket {
            skb: ctx.skb.skb,
            // SAFETY: only field addresses of a live per-CPU map value are taken.
            seg: unsafe { &raw const (*work).seg },
            pulled: unsafe { &raw mut (*work).pulled },
            tuple: unsafe { &raw mut (*work).tuple },
            dir,
        }
    }

    /// Makes the packet linear up to `end` before a write there, and up to `reach` where more
    /// writes are coming. The kernel makes a write deep in a GRO packet writable by pulling
    /// everything before it into the linear area, growing (reallocating and copying) that area
    /// each time: a packet of many headers paid one copy per header. Pulling once to the last
    /// write, or else ahead geometrically, bounds it to one or a few. A failed pull is left to
    /// the store, which then fails the same way.
    fn pull(&mut self, end: u32, reach: u32) {
        // SAFETY: a live per-CPU map value, and the packet's context.
        let (pulled, total) = unsafe { (*self.pulled, (*self.skb).len) };
        if end <= pulled {
            return;
        }
        let want = end.max(reach.max(2 * pulled).min(total));
        // SAFETY: the helper checks the length against the packet; the work area is this CPU's.
        unsafe {
            if bpf_skb_pull_data(self.skb.cast(), want) == 0 {
                *self.pulled = want;
            }
        }
    }

    fn payload_off(&self) -> u32 {
        // SAFETY: a live per-CPU map value.
        unsafe { (*self.seg).payload_off }
    }
}

/// TCP states of a synchronised connection, whose `rcv_nxt` and `snd_una` say what each end
/// has received: established, FIN-WAIT-1 and 2, CLOSE-WAIT, LAST-ACK, CLOSING. (A listener,
/// found for a connection still in its handshake, has no `rcv_nxt` of the connection's.)
const SYNCHRONISED: u32 = 1 << 1 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 11;

/// The `rcv_nxt` of the socket `seg` is going to, if there is one that receives. Inlined, and
/// its tuple in map memory: a call frame of its own would cost 32 bytes of the 512 that the
/// entry point and the `bpf_loop` callback share (Linux 6.1 counts frames so).
#[inline(always)]
fn rcv_nxt(skb: *mut __sk_buff, seg: *const SegmentInfo, tuple: *mut [u8; 12]) -> Option<u32> {
    // SAFETY: live per-CPU map values.
    unsafe {
        let key = (*seg).key;
        let t = &mut *tuple;
        t[0..4].copy_from_slice(&key.peer_addr);
        t[4..8].copy_from_slice(&key.local_addr);
        t[8..10].copy_from_slice(&key.peer_port.to_be_bytes());
        t[10..12].copy_from_slice(&key.local_port.to_be_bytes());
    }
    // SAFETY: the tuple is valid for its 12 bytes, the size of `bpf_sock_tuple`'s IPv4 part;
    // a socket found is released below.
    unsafe {
        let sk = bpf_sk_lookup_tcp(
            skb.cast(),
            tuple.cast::<bpf_sock_tuple>(),
            12,
            BPF_F_CURRENT_NETNS as i64 as u64,
            0,
        );
        if sk.is_null() {
            return None;
        }
        let mut found = None;
        let state = (*sk).state;
        if state < 32 && SYNCHRONISED & (1 << state) != 0 {
            let tp = bpf_tcp_sock(sk);
            if !tp.is_null() {
                found = Some((*tp).rcv_nxt);
            }
        }
        bpf_sk_release(sk.cast());
        found
    }
}

/// The `snd_una` of the socket sending the egress packet `skb`: what the peer has
/// acknowledged. The packet names its socket; no lookup.
#[inline(always)]
fn snd_una(skb: *mut __sk_buff) -> Option<u32> {
    // SAFETY: `sk` is a context field the verifier types as a socket or null; the TCP view of
    // it is checked for null, and neither needs a release.
    unsafe {
        let sk = (*skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return None;
        }
        let state = (*sk).state;
        if state >= 32 || SYNCHRONISED & (1 << state) == 0 {
            return None;
        }
        let tp = bpf_tcp_sock(sk);
        (!tp.is_null()).then(|| (*tp).snd_una)
    }
}

impl Packet for SkbPacket {
    fn received(&mut self) -> Option<u32> {
        match self.dir {
            Direction::In => rcv_nxt(self.skb, self.seg, self.tuple),
            Direction::Out => snd_una(self.skb),
        }
    }

    fn load(&mut self, off: u32, dst: &mut [u8]) -> bool {
        let Some(n) = helper_len(dst.len(), lnat_common::tracker::PREFIX_MAX as u32) else {
            return false;
        };
        // SAFETY: `dst` is valid for `n` bytes; the helper checks the packet side.
        unsafe {
            bpf_skb_load_bytes(
                self.skb.cast(),
                self.payload_off() + off,
                dst.as_mut_ptr().cast(),
                n,
            ) == 0
        }
    }

    fn patch(&mut self, clip: &Clip, reach: u32) -> bool {
        let Some(n) = helper_len(clip.len as usize, 4) else {
            return false;
        };
        let at = self.payload_off() + clip.off;
        let mut old = [0u8; 4];
        // SAFETY: `old` holds 4 bytes and n <= 4.
        if unsafe { bpf_skb_load_bytes(self.skb.cast(), at, old.as_mut_ptr().cast(), n) } != 0 {
            return false;
        }
        let mut new = old;
        for (b, x) in new.iter_mut().zip(clip.xor) {
            *b ^= x;
        }
        // If the store fails the packet is unchanged and the caller gives the flow up; the checksum
        // update cannot fail once the store succeeded, as the field precedes the payload.
        let diff = csum::replace_delta(clip.off & 1 == 1, old, new);
        self.pull(at + n, self.payload_off() + reach);
        // SAFETY: `new` holds 4 bytes and n <= 4; offsets are checked by the helpers.
        unsafe {
            if bpf_skb_store_bytes(self.skb.cast(), at, new.as_ptr().cast(), n, 0) != 0 {
                return false;
            }
            bpf_l4_csum_replace(self.skb.cast(), (*self.seg).check_off, 0, diff as u64, 0) == 0
        }
    }
}
