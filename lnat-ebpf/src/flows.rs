//! The flow table: a connection is followed from its handshake; when it is freed is
//! `lnat_common::flow`'s rule.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use core::intrinsics::{AtomicOrdering::SeqCst, atomic_cxchg};
use lnat_common::{
    maps::{FlowState, LookupCache, SegmentInfo},
    nid::Nid,
    quiet::Quiet,
    tracker::Role,
};

use crate::maps;

/// Which side opened the connection `seg` belongs to.
pub fn role(seg: &SegmentInfo) -> Role {
    if seg.role == Role::Passive as u8 {
        Role::Passive
    } else {
        Role::Active
    }
}

/// Starts following the stream a handshake announces; a repeated handshake keeps the state.
#[inline(never)]
pub fn open(seg: &SegmentInfo, role: Role) {
    let start = seg.seq.wrapping_add(1);
    let local = u32::from_be_bytes(seg.key.local_addr);
    let hint = maps::config().map_or(Nid(0), |c| c.hint.nid());
    if let Some(f) = maps::FLOWS.get_ptr_mut(seg.key) {
        let Some(claim) = Claim::take(f) else {
            // Another CPU is working on the old connection; its data is behind us anyway.
            return;
        };
        // SAFETY: a live flow-table value this CPU has claimed.
        let f = unsafe { &mut *f };
        if f.start != start {
            // The same four-tuple with a new sequence space: a new connection. Its old window
            // goes first, as readers do not take the claim.
            maps::publish(&seg.key, Quiet::NONE);
            f.start = start;
            f.tracker.reset(role, start, local, hint);
            f.cache = LookupCache::default();
            f.rewrites = 0;
            f.closing_ns = 0;
            // SAFETY: a helper without arguments.
            f.opened_ns = unsafe { bpf_ktime_get_ns() };
            maps::count(|c| c.flows_opened += 1);
        }
        claim.release();
        return;
    }
    let Some(scratch) = maps::LNAT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch value.
    let f = unsafe { &mut *scratch };
    f.start = start;
    f.owner = 0;
    f.tracker.reset(role, start, local, hint);
    f.cache = LookupCache::default();
    f.rewrites = 0;
    f.closing_ns = 0;
    // SAFETY: a helper without arguments.
    f.opened_ns = unsafe { bpf_ktime_get_ns() };
    // A reference, so the entry goes from map to map without a 1.2 KiB copy on the stack.
    let entry: &FlowState = f;
    // A window left by an earlier connection on this four-tuple goes before the flow exists.
    maps::publish(&seg.key, Quiet::NONE);
    if maps::FLOWS.insert(seg.key, entry, 0).is_ok() {
        maps::count(|c| c.flows_opened += 1);
    }
}

/// Marks `seg`'s flow closing (a FIN or RST): its state stays for the bytes before it.
///
/// Without the claim: the mark is one aligned word, and a CPU working on the flow only ever
/// writes a later time into it.
pub fn end(seg: &SegmentInfo) {
    let Some(f) = maps::FLOWS.get_ptr_mut(seg.key) else {
        return;
    };
    // SAFETY: a live flow-table value; see above for the word written without the claim.
    let f = unsafe { &mut *f };
    if !f.closing() {
        maps::count(|c| c.flows_closed += 1);
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
    pub fn take(flow: *mut FlowState) -> Option<Claim> {
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
