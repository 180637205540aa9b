//! The flow table: a connection is followed from its handshake; when it is freed is
//! `lnat_common::flow`'s rule.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use core::intrinsics::{AtomicOrdering::SeqCst, atomic_cxchg};
use lnat_common::{
    maps::{FlowState, LookupCache, SegmentInfo},
    nid::Nid,
    quiet::Quiet,
    tracker::{Direction, Role, Tracker},
};

use crate::{
    maps,
    side::{self, Side, Tally},
};

/// Which side opened the connection `seg` belongs to.
pub fn role(seg: &SegmentInfo) -> Role {
    if seg.role == Role::Passive as u8 {
        Role::Passive
    } else {
        Role::Active
    }
}

/// Makes `t` the tracker of a new stream of side `S`.
#[inline(always)]
fn restart<const N: usize, S: Side<N>>(t: &mut Tracker<N>, role: Role, start: u32, local: u32) {
    match S::DIR {
        Direction::In => {
            let hint = maps::config().map_or(Nid(0), |c| c.hint.nid());
            t.reset(role, start, local, hint);
        }
        Direction::Out => t.reset_outgoing(role, start, local),
    }
}

/// Starts following the stream a handshake announces; a repeated handshake keeps the state.
#[inline(never)]
pub fn open<const N: usize, S: Side<N>>(seg: &SegmentInfo, role: Role) {
    let start = seg.seq.wrapping_add(1);
    let local = u32::from_be_bytes(seg.key.local_addr);
    if let Some(f) = S::flows().get_ptr_mut(seg.key) {
        let Some(claim) = Claim::take(f) else {
            // Another CPU is working on the old connection; its data is behind us anyway.
            return;
        };
        // SAFETY: a live flow-table value this CPU has claimed.
        let f = unsafe { &mut *f };
        if f.start != start {
            // The same four-tuple with a new sequence space: a new connection. Its old window
            // goes first, as readers do not take the claim.
            maps::publish(S::windows(), &seg.key, Quiet::NONE);
            f.start = start;
            restart::<N, S>(&mut f.tracker, role, start, local);
            f.cache = LookupCache::default();
            f.rewrites = 0;
            f.closing_ns = 0;
            f.gets = 0;
            f.replies = 0;
            // SAFETY: a helper without arguments.
            f.opened_ns = unsafe { bpf_ktime_get_ns() };
            side::count::<N, S>(Tally::Opened);
        }
        claim.release();
        return;
    }
    let Some(scratch) = S::scratch().get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch value.
    let f = unsafe { &mut *scratch };
    f.start = start;
    f.owner = 0;
    restart::<N, S>(&mut f.tracker, role, start, local);
    f.cache = LookupCache::default();
    f.rewrites = 0;
    f.closing_ns = 0;
    f.gets = 0;
    f.replies = 0;
    // SAFETY: a helper without arguments.
    f.opened_ns = unsafe { bpf_ktime_get_ns() };
    // A reference, so the entry goes from map to map without a 1.2 KiB copy on the stack.
    let entry: &FlowState<N> = f;
    // A window left by an earlier connection on this four-tuple goes before the flow exists.
    maps::publish(S::windows(), &seg.key, Quiet::NONE);
    if S::flows().insert(seg.key, entry, 0).is_ok() {
        side::count::<N, S>(Tally::Opened);
    }
}

/// Marks `seg`'s flow closing (a FIN or RST): its state stays for the bytes before it.
///
/// Without the claim: the mark is one aligned word, and a CPU working on the flow only ever
/// writes a later time into it.
pub fn end<const N: usize, S: Side<N>>(seg: &SegmentInfo) {
    let Some(f) = S::flows().get_ptr_mut(seg.key) else {
        return;
    };
    // SAFETY: a live flow-table value; see above for the word written without the claim.
    let f = unsafe { &mut *f };
    if !f.closing() {
        side::count::<N, S>(Tally::Closed);
    }
    // SAFETY: a helper without arguments.
    f.touch_closing(unsafe { bpf_ktime_get_ns() });
}

/// This CPU's exclusive hold on a flow, taken with a compare-and-swap on its `owner` word.
pub struct Claim {
    owner: *mut u64,
    token: u64,
}

impl Claim {
    /// Takes the flow, unless another CPU holds it.
    pub fn take<const N: usize>(flow: *mut FlowState<N>) -> Option<Claim> {
        // SAFETY: a helper without arguments.
        let token = unsafe { bpf_get_smp_processor_id() } as u64 + 1;
        // SAFETY: `owner` is an aligned u64 in a live map value.
        unsafe {
            let owner = &raw mut (*flow).owner;
            atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(owner, 0, token)
                .1
                .then_some(Claim { owner, token })
        }
    }

    /// Lets the flow go; the compare-and-swap orders every write made under the claim before it.
    pub fn release(self) {
        // SAFETY: as in `take`; only the holder's token is replaced.
        unsafe {
            atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(self.owner, self.token, 0);
        }
    }
}
