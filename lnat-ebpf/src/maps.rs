//! lnat's BPF maps. The names are `lnat_common::maps::names`; the types are shared with `lnat`.

use crate::side::Windows;
use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    macros::btf_map,
};
use lnat_common::{
    maps::{
        Config, Counters, DEFAULT_FLOWS, FlowKey, FlowState, Kept, LearnEvent, MAX_KEPT,
        MAX_MAPPINGS, Mapping, NidKey, OutFlowState, Work,
    },
    quiet::Quiet,
};

/// Settings written by `lnat attach`: ports, learning, link-layer length, mapping generation.
#[btf_map]
pub static LNAT_CONFIG: Array<Config, 1> = Array::new();

/// External NID to the local address it becomes.
#[btf_map]
pub static LNAT_MAPPINGS: HashMap<NidKey, Mapping, { MAX_MAPPINGS as usize }> = HashMap::new();

/// Followed connections; least recently used ones make room for new ones.
#[btf_map]
pub static LNAT_FLOWS: LruHashMap<FlowKey, FlowState, { DEFAULT_FLOWS as usize }> =
    LruHashMap::new();

/// Where each followed connection's segments pass without the tracker (see `Quiet`): a small
/// table of its own, which stays in cache when the flow table does not.
#[btf_map]
pub static LNAT_QUIET: LruHashMap<FlowKey, Quiet, { DEFAULT_FLOWS as usize }> = LruHashMap::new();

/// Decision counters.
#[btf_map]
pub static LNAT_COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

/// Learned mappings, reported to `lnat attach`.
#[btf_map]
pub static LNAT_EVENTS: RingBuf<LearnEvent, { 8 * 4096 }> = RingBuf::new();

/// Where a new flow entry is built: it is too large for the stack.
#[btf_map]
pub static LNAT_SCRATCH: PerCpuArray<FlowState, 1> = PerCpuArray::new();

/// Per-packet working state of the rewrite loops.
#[btf_map]
pub static LNAT_WORK: PerCpuArray<Work, 1> = PerCpuArray::new();

/// The streams this host sends on followed connections, for the egress program.
#[btf_map]
pub static LNAT_OUT_FLOWS: LruHashMap<FlowKey, OutFlowState, { DEFAULT_FLOWS as usize }> =
    LruHashMap::new();

/// Quiet windows of the streams this host sends.
#[btf_map]
pub static LNAT_OUT_QUIET: LruHashMap<FlowKey, Quiet, { DEFAULT_FLOWS as usize }> =
    LruHashMap::new();

/// Where a new outgoing flow entry is built.
#[btf_map]
pub static LNAT_OUT_SCRATCH: PerCpuArray<OutFlowState, 1> = PerCpuArray::new();

/// Per-packet working state of the egress program: its own, as an egress run may begin on a
/// CPU in the middle of an ingress one (a softirq's reply sent from within it).
#[btf_map]
pub static LNAT_OUT_WORK: PerCpuArray<Work, 1> = PerCpuArray::new();

/// The bytes of segments passed ahead of the tracker, until it parses them: a plain hash, so
/// that a full table refuses a new segment (which is then dropped as before) rather than
/// evict bytes another connection still needs. `lnat attach` frees what no flow needs.
#[btf_map]
pub static LNAT_KEPT: HashMap<FlowKey, Kept, { MAX_KEPT as usize }> = HashMap::new();

/// Where a segment's bytes are read and scanned before they are kept (too large for the stack).
#[btf_map]
pub static LNAT_KEPT_NEW: PerCpuArray<Kept, 1> = PerCpuArray::new();

/// The program that parses a segment kept ahead (`lnat_kept`), tail-called by the ingress
/// program: it is verified apart, so its steps do not count against the ingress program's
/// instructions. Set by `lnat attach`.
#[btf_map]
pub static LNAT_PROGS: ProgramArray<1> = ProgramArray::new();

/// Shorter names for the rest of the crate.
pub use LNAT_FLOWS as FLOWS;
pub use LNAT_MAPPINGS as MAPPINGS;

/// Publishes `q` as where `key`'s segments pass without the tracker in `windows`: one aligned
/// word, written whole for readers that take no claim.
#[inline(always)]
pub fn publish(windows: &Windows, key: &FlowKey, q: Quiet) {
    if let Some(v) = windows.get_ptr_mut(key) {
        // SAFETY: a live value of the table, one aligned u64.
        unsafe { core::ptr::write_volatile(v, q) };
    } else {
        let _ = windows.insert(key, q, 0);
    }
}

/// The attachment's settings.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    LNAT_CONFIG.get(0)
}

/// Updates this CPU's counters.
#[inline(always)]
pub fn count(f: impl FnOnce(&mut Counters)) {
    if let Some(c) = LNAT_COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, and programs do not migrate while they run.
        f(unsafe { &mut *c });
    }
}
