//! The segment's payload inside the socket buffer: reads, and writes that keep the TCP checksum.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{
        bpf_l4_csum_replace, bpf_skb_load_bytes, bpf_skb_pull_data, bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use lnat_common::{csum, history::Clip, maps::SegmentInfo, segment::Packet};

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
}

impl SkbPacket {
    /// The payload of `seg` in `ctx`; `pulled` counts what is linear (both in map memory).
    pub fn new(ctx: &TcContext, seg: *const SegmentInfo, pulled: *mut u32) -> Self {
        SkbPacket {
            skb: ctx.skb.skb,
            seg,
            pulled,
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

impl Packet for SkbPacket {
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
