//! lnat's TC classifiers: on ingress they follow LNet socklnd streams and rewrite the
//! destination NIDs a NAT made foreign back to this host's own; on egress, the host's own NIDs
//! in its discovery pushes to the external one.
//!
//! This crate only adapts: it finds the TCP segment in the packet, keeps the flow tables, and
//! lets `lnat_common::segment` decide and place every change. See `lnat_common::tracker`.
#![no_std]
#![no_main]
// Atomic add on shared map values; the eBPF crate is built with nightly (README.md, Building).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod ahead;
mod env;
mod flows;
mod follow;
mod headers;
mod maps;
mod side;
mod skb;

use aya_ebpf::{macros::classifier, programs::TcContext};
use lnat_common::{history::RUNS, maps::OUT_RUNS};

use crate::side::{In, Out};

/// Let the packet continue: the next tcx program or the stack (`TCX_NEXT` / `TC_ACT_UNSPEC`).
const PASS: i32 = -1;
/// Drop the packet (`TCX_DROP` / `TC_ACT_SHOT`).
const DROP: i32 = 2;

/// Ingress: the streams servers send, whose destination NIDs name this host by its external
/// NID.
#[classifier]
pub fn lnat(ctx: TcContext) -> i32 {
    follow::packet::<RUNS, In>(&ctx)
}

/// Egress: the streams this host sends, whose discovery pushes must name it by its external
/// NID (docs/discovery.md).
#[classifier]
pub fn lnat_egress(ctx: TcContext) -> i32 {
    follow::packet::<OUT_RUNS, Out>(&ctx)
}

/// Tail-called by `lnat` after a segment that brought the cursor into a segment kept ahead:
/// parses the kept bytes (`lnat_common::ahead`).
#[classifier]
pub fn lnat_kept(ctx: TcContext) -> i32 {
    follow::kept(&ctx)
}

/// Passes every packet untouched, as lnat does: the hook-cost baseline of `lnat-bench`.
#[classifier]
pub fn lnat_pass(_ctx: TcContext) -> i32 {
    PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable out-of-bounds access, so the
    // bounds checks that lead here are never taken in a loaded program.
    unsafe { core::hint::unreachable_unchecked() }
}
