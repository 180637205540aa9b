//! The flow table: a connection is followed from its handshake and forgotten at FIN or RST.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lnat_common::{maps::LookupCache, nid::Nid, tracker::Role};

use crate::{
    headers::{ACK, FIN, RST, SYN, Segment},
    maps,
};

/// What a segment means for the flow table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A handshake: start following the stream that begins after it.
    Open(Role),
    /// A reset: forget the flow.
    Close,
    /// The last data: rewrite it, then forget the flow.
    Fin,
    /// Anything else.
    Data,
}

/// The flow-table event `seg` carries.
pub fn event(seg: &Segment) -> Event {
    let f = seg.flags;
    if f & RST != 0 {
        Event::Close
    } else if f & SYN != 0 {
        // We only see the peer's half: its SYN-ACK when we connected, its SYN when it did.
        match (seg.role, f & ACK != 0) {
            (Role::Active, true) | (Role::Passive, false) => Event::Open(seg.role),
            _ => Event::Data,
        }
    } else if f & FIN != 0 {
        Event::Fin
    } else {
        Event::Data
    }
}

/// Starts following the stream a handshake announces; a repeated handshake keeps the state.
pub fn open(seg: &Segment, role: Role) {
    let start = seg.seq.wrapping_add(1);
    let local = u32::from_be_bytes(seg.key.local_addr);
    let hint = maps::config().map_or(Nid(0), |c| c.hint.nid());
    if let Some(f) = maps::FLOWS.get_ptr_mut(seg.key) {
        // SAFETY: a live flow-table value, worked on by this CPU only.
        let f = unsafe { &mut *f };
        if f.start == start {
            return;
        }
        // The same four-tuple with a new sequence space: a new connection.
        f.start = start;
        f.tracker.reset(role, start, local, hint);
        f.cache = LookupCache::default();
        f.rewrites = 0;
        // SAFETY: a helper without arguments.
        f.opened_ns = unsafe { bpf_ktime_get_ns() };
        maps::count(|c| c.flows_opened += 1);
        return;
    }
    let Some(scratch) = maps::LNAT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch value.
    let f = unsafe { &mut *scratch };
    f.start = start;
    f.tracker.reset(role, start, local, hint);
    f.cache = LookupCache::default();
    f.rewrites = 0;
    // SAFETY: a helper without arguments.
    f.opened_ns = unsafe { bpf_ktime_get_ns() };
    if maps::FLOWS.insert(seg.key, &*f, 0).is_ok() {
        maps::count(|c| c.flows_opened += 1);
    }
}

/// Forgets a flow.
pub fn close(seg: &Segment) {
    if maps::FLOWS.remove(seg.key).is_ok() {
        maps::count(|c| c.flows_closed += 1);
    }
}
