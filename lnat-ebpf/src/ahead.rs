//! Segments passed ahead of the tracker (`lnat_common::ahead`): the datapath keeps their bytes
//! in `LNAT_KEPT` and reads them back when the cursor reaches them.

use aya_ebpf::{
    helpers::generated::{bpf_probe_read_kernel, bpf_skb_load_bytes},
    programs::TcContext,
};
use lnat_common::{
    ahead::{AHEAD_MAX, Ahead, Scan},
    history::Clip,
    maps::{FlowState, Kept, Work},
    segment::{Packet, SCAN_CHUNK},
    tracker::PREFIX_MAX,
};

use crate::{
    env::DpEnv,
    maps,
    side::In,
    skb::{helper_len, opaque},
};

/// The bytes of the segment passed ahead, read again for the tracker: the receiver has them,
/// so nothing in them is written.
pub struct KeptPacket(pub *const Kept);

impl Packet for KeptPacket {
    /// Copies kept bytes `off..off + dst.len()` into `dst` with one helper call: a loop over
    /// them would be followed by the verifier for each window the tracker may ask for.
    fn load(&mut self, off: u32, dst: &mut [u8]) -> bool {
        let Some(n) = helper_len(dst.len(), PREFIX_MAX as u32) else {
            return false;
        };
        let off = opaque(off as usize);
        if off >= AHEAD_MAX || n as usize > AHEAD_MAX - off {
            return false;
        }
        // SAFETY: `dst` is valid for n bytes; the source lies within the kept value (checked
        // above), a live map value.
        unsafe {
            bpf_probe_read_kernel(
                dst.as_mut_ptr().cast(),
                n,
                (&raw const (*self.0).bytes).cast::<u8>().add(off).cast(),
            ) == 0
        }
    }

    /// A clip changes some of the bytes, which the receiver already has: it cannot be made.
    fn patch(&mut self, _: &Clip, _: u32) -> bool {
        false
    }

    fn delivered(&self) -> bool {
        true
    }
}

/// What the scan's `bpf_loop` callback reads.
struct ScanJob {
    scan: *mut Scan,
    bytes: *const Kept,
    len: u32,
}

/// True when the segment in `work`, which starts beyond its flow's cursor, went ahead: its
/// bytes touch nothing lnat changes, and are kept in `LNAT_KEPT` for the tracker.
#[inline(never)]
pub fn pass(ctx: &TcContext, work: *mut Work, flow: *mut FlowState) -> bool {
    let Some(mut env) = DpEnv::<_, In>::new(ctx, flow, work) else {
        return false;
    };
    // SAFETY: this CPU's work area and a flow this CPU has claimed.
    let (seg, t) = unsafe { ((*work).seg, &mut (*flow).tracker) };
    let Some(scan) = t.ahead_scan(seg.seq, seg.len, &mut env) else {
        return false;
    };
    // SAFETY: this CPU's work area.
    unsafe { (*work).scan = scan };
    let Some(n) = helper_len(seg.len as usize, AHEAD_MAX as u32) else {
        return false;
    };
    let Some(buf) = maps::LNAT_KEPT_NEW.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: `buf` is this CPU's, valid for AHEAD_MAX bytes, and n is at most that; the
    // helper checks the packet side.
    if unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            seg.payload_off,
            (&raw mut (*buf).bytes).cast(),
            n,
        )
    } != 0
    {
        return false;
    }
    let mut job = ScanJob {
        // SAFETY: a field address of this CPU's work area.
        scan: unsafe { &raw mut (*work).scan },
        bytes: buf,
        len: n,
    };
    let chunks = n.div_ceil(SCAN_CHUNK as u32);
    // SAFETY: `bpf_loop` calls `scan_step` with `job`, which outlives the call.
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(
            chunks,
            scan_step as *mut core::ffi::c_void,
            (&raw mut job).cast(),
            0,
        );
    }
    // SAFETY: as above.
    if !unsafe { (*work).scan.safe() } {
        return false;
    }
    // SAFETY: as above. A reference: the helper copies the value from map memory, where by
    // value it would first be copied onto the stack, which has no room for it.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let kept = maps::LNAT_KEPT.insert(seg.key, unsafe { &*buf }, 0);
    if kept.is_err() {
        return false;
    }
    t.keep_ahead(seg.seq, seg.len);
    maps::count(|c| c.passed_ahead += 1);
    true
}

/// Reads chunk `i` of the segment into the scan; `bpf_loop`'s continue (0) or stop (1).
///
/// Byte by byte, each index checked against the buffer: a slice of a variable start and
/// length is a range the verifier cannot bound.
extern "C" fn scan_step(i: u64, job: *mut core::ffi::c_void) -> i64 {
    // SAFETY: the loop passes a live `ScanJob` whose pointers are to a live stack value and a
    // live per-CPU map value.
    let job = unsafe { &*job.cast::<ScanJob>() };
    let off = i as usize * SCAN_CHUNK;
    let len = job.len as usize;
    if off >= len {
        return 1;
    }
    // SAFETY: as above.
    let (bytes, scan) = unsafe { (&(*job.bytes).bytes, &mut *job.scan) };
    let mut j = 0;
    while j < SCAN_CHUNK {
        let at = opaque(off + j);
        if at >= len {
            return 1;
        }
        let Some(&b) = bytes.get(at) else {
            return 1;
        };
        scan.byte(b);
        j += 1;
    }
    0
}

/// True when the cursor of `flow` has reached the segment its tracker kept ahead: the kept
/// pass is due.
#[inline(always)]
pub fn due(flow: *mut FlowState) -> bool {
    // SAFETY: a flow this CPU has claimed.
    let t = unsafe { &(*flow).tracker };
    t.ahead().reached(t.cursor())
}

/// The segment the tracker of `flow` kept ahead and its bytes (null: gone), if its cursor has
/// reached it; otherwise forgets a segment the cursor is past.
#[inline(always)]
pub fn reached(work: *mut Work, flow: *mut FlowState) -> Option<(Ahead, *const Kept)> {
    // SAFETY: this CPU's work area and a flow this CPU has claimed.
    let (key, t) = unsafe { ((*work).seg.key, &mut (*flow).tracker) };
    let a = t.ahead();
    if a.len == 0 {
        return None;
    }
    if !a.reached(t.cursor()) {
        t.settle_ahead();
        if t.ahead().len == 0 {
            let _ = maps::LNAT_KEPT.remove(key);
        }
        return None;
    }
    Some((a, maps::LNAT_KEPT.get_ptr(key).unwrap_or(core::ptr::null())))
}

/// Forgets the kept bytes once the tracker is past them.
#[inline(always)]
pub fn settle(work: *mut Work, flow: *mut FlowState) {
    // SAFETY: as in `reached`.
    let (key, t) = unsafe { ((*work).seg.key, &mut (*flow).tracker) };
    t.settle_ahead();
    if t.ahead().len == 0 {
        let _ = maps::LNAT_KEPT.remove(key);
    }
}
