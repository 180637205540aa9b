//! The two directions the datapath follows: what differs between the ingress and the egress
//! program is which tables they use and which counters their events go to, nothing else.
//!
//! A type per direction, so that each program is compiled with its own maps named directly in
//! its bytecode (the verifier needs a map pointer it can see, not one read from memory).

use aya_ebpf::btf_maps::{LruHashMap, PerCpuArray};
use lnat_common::{
    history::RUNS,
    maps::{Counters, DEFAULT_FLOWS, FlowKey, FlowState, OUT_RUNS, Work},
    quiet::Quiet,
    tracker::Direction,
};

use crate::maps;

/// A table of flows with `N` runs of patch history.
pub type Flows<const N: usize> = LruHashMap<FlowKey, FlowState<N>, { DEFAULT_FLOWS as usize }>;
/// A table of quiet windows.
pub type Windows = LruHashMap<FlowKey, Quiet, { DEFAULT_FLOWS as usize }>;

/// Something a program counts; each direction has its own counters for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// A segment with payload went through the tracker.
    Segment {
        /// Its connection is closing.
        closing: bool,
        /// It overlapped a stretch whose patches the history forgot.
        miss: bool,
    },
    /// A segment with payload passed on its quiet window.
    Quiet,
    /// A segment on an LNet port without flow state.
    Untracked,
    /// Dropped: another CPU was working on its flow.
    Contended,
    /// Dropped: it starts past a header not yet seen.
    Ahead,
    /// Dropped: held for the patch history.
    Held,
    /// A flow was opened.
    Opened,
    /// A flow began to close.
    Closed,
    /// A stream was given up.
    Desynced,
}

/// One direction's tables and counters; `N` is its flows' history size.
pub trait Side<const N: usize> {
    /// Which stream of a connection this side follows.
    const DIR: Direction;
    /// Its flows.
    fn flows() -> &'static Flows<N>;
    /// Its flows' quiet windows.
    fn windows() -> &'static Windows;
    /// Where its new flow entries are built.
    fn scratch() -> &'static PerCpuArray<FlowState<N>, 1>;
    /// Its per-packet working state.
    fn work() -> &'static PerCpuArray<Work, 1>;
    /// Adds `t` to this side's counters in `c`.
    fn tally(c: &mut Counters, t: Tally);
}

/// The stream the peer sends us: destination NIDs.
pub struct In;

/// The stream we send the peer: our own NIDs in discovery pushes.
pub struct Out;

impl Side<RUNS> for In {
    const DIR: Direction = Direction::In;

    #[inline(always)]
    fn flows() -> &'static Flows<RUNS> {
        &maps::LNAT_FLOWS
    }

    #[inline(always)]
    fn windows() -> &'static Windows {
        &maps::LNAT_QUIET
    }

    #[inline(always)]
    fn scratch() -> &'static PerCpuArray<FlowState<RUNS>, 1> {
        &maps::LNAT_SCRATCH
    }

    #[inline(always)]
    fn work() -> &'static PerCpuArray<Work, 1> {
        &maps::LNAT_WORK
    }

    #[inline(always)]
    fn tally(c: &mut Counters, t: Tally) {
        match t {
            Tally::Segment { closing, miss } => {
                c.segments += 1;
                c.history_misses += miss as u64;
                c.closing += closing as u64;
            }
            Tally::Quiet => {
                c.segments += 1;
                c.quiet += 1;
            }
            Tally::Untracked => c.untracked += 1,
            Tally::Contended => c.contended += 1,
            Tally::Ahead => c.dropped_ooo += 1,
            Tally::Held => c.held += 1,
            Tally::Opened => c.flows_opened += 1,
            Tally::Closed => c.flows_closed += 1,
            Tally::Desynced => c.desynced += 1,
        }
    }
}

impl Side<OUT_RUNS> for Out {
    const DIR: Direction = Direction::Out;

    #[inline(always)]
    fn flows() -> &'static Flows<OUT_RUNS> {
        &maps::LNAT_OUT_FLOWS
    }

    #[inline(always)]
    fn windows() -> &'static Windows {
        &maps::LNAT_OUT_QUIET
    }

    #[inline(always)]
    fn scratch() -> &'static PerCpuArray<FlowState<OUT_RUNS>, 1> {
        &maps::LNAT_OUT_SCRATCH
    }

    #[inline(always)]
    fn work() -> &'static PerCpuArray<Work, 1> {
        &maps::LNAT_OUT_WORK
    }

    #[inline(always)]
    fn tally(c: &mut Counters, t: Tally) {
        match t {
            Tally::Segment { miss, .. } => {
                c.out_segments += 1;
                c.out_history_misses += miss as u64;
            }
            Tally::Quiet => c.out_segments += 1,
            Tally::Contended | Tally::Ahead | Tally::Held => c.out_dropped += 1,
            Tally::Opened => c.out_flows_opened += 1,
            Tally::Desynced => c.out_desynced += 1,
            // The ingress program counts connections that close or were never followed.
            Tally::Untracked | Tally::Closed => {}
        }
    }
}

/// Counts `t` for side `S`.
#[inline(always)]
pub fn count<const N: usize, S: Side<N>>(t: Tally) {
    maps::count(|c| S::tally(c, t));
}
