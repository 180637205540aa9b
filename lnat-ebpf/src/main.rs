//! lnat's TC ingress classifier: follows LNet socklnd streams and rewrites the destination NIDs
//! a NAT made foreign back to this host's own.
//!
//! This crate only adapts: it finds the TCP segment in the packet, keeps the flow table, and lets
//! `lnat_common::segment` decide and place every change. See `lnat_common::tracker`.
#![no_std]
#![no_main]
// Atomic add on shared map values; the eBPF crate is built with nightly (README.md, Building).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod env;
mod flows;
mod headers;
mod maps;
mod skb;

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::classifier, programs::TcContext};
use lnat_common::{
    flow::{self, Event},
    maps::{FlowState, SegmentInfo, Work},
    quiet::Quiet,
    segment::{MAX_STEPS, Outcome},
    tracker::{Admit, Desync, Direction},
};

use crate::{env::DpEnv, skb::SkbPacket};

/// Let the packet continue: the next tcx program or the stack (`TCX_NEXT` / `TC_ACT_UNSPEC`).
const PASS: i32 = -1;
/// Drop the packet (`TCX_DROP` / `TC_ACT_SHOT`).
const DROP: i32 = 2;

#[classifier]
pub fn lnat(ctx: TcContext) -> i32 {
    // The segment is described in map memory, not on the stack (see `Work`).
    let Some(work) = maps::LNAT_WORK.get_ptr_mut(0) else {
        return PASS;
    };
    // SAFETY: this CPU's work area; one program run at a time uses it.
    let seg = unsafe { &mut (*work).seg };
    if !headers::parse(&ctx, seg, Direction::In) {
        return PASS;
    }
    if seg.fragment != 0 {
        maps::count(|c| c.fragments += 1);
        give_up(seg, Desync::Fragmented);
        return PASS;
    }
    let event = flow::event(seg.flags, flows::role(seg), Direction::In);
    if let Event::Open(role) = event {
        flows::open(seg, role);
        return PASS;
    }
    // One call site: the rewrite's frame and the bpf_loop callback's share the 512-byte stack.
    let verdict = if seg.len == 0 {
        PASS
    } else {
        rewrite(&ctx, work)
    };
    // A FIN or RST, after whatever data it carries: the flow is closing, and keeps its state
    // for the bytes before it that may still come (see `lnat_common::flow`).
    if event == Event::End {
        // SAFETY: as above.
        flows::end(unsafe { &(*work).seg });
    }
    verdict
}

/// Passes every packet untouched, as lnat does: the hook-cost baseline of `lnat-bench`.
#[classifier]
pub fn lnat_pass(_ctx: TcContext) -> i32 {
    PASS
}

/// What the `bpf_loop` callback needs: pointers only. Everything it reads or changes lives in
/// map memory (the flow state and [`Work`], which holds the segment's `Driver`), which costs no
/// stack and keeps the verifier's view of the loop small.
struct Job<'a> {
    flow: *mut FlowState,
    work: *mut Work,
    pkt: SkbPacket,
    env: DpEnv<'a>,
}

fn rewrite(ctx: &TcContext, work: *mut Work) -> i32 {
    // SAFETY: this CPU's work area.
    let (key, seq, len) = unsafe { ((*work).seg.key, (*work).seg.seq, (*work).seg.len) };
    // Inside a payload, with nothing to do: passed without the flow or its claim (see `Quiet`
    // for why a window another CPU is replacing is still right).
    if let Some(q) = maps::QUIET.get_ptr(key)
        // SAFETY: a live value of the table, one aligned word, read whole.
        && unsafe { core::ptr::read_volatile(q) }.covers(seq, len)
    {
        maps::count(|c| {
            c.segments += 1;
            c.quiet += 1;
        });
        return PASS;
    }
    let Some(flow) = maps::FLOWS.get_ptr_mut(key) else {
        maps::count(|c| c.untracked += 1);
        return PASS;
    };
    // Packets of one connection can reach two CPUs at once (a sender migrating between veth
    // queues, say); the tracker must only ever be worked on by one.
    let Some(claim) = flows::Claim::take(flow) else {
        maps::count(|c| c.contended += 1);
        return DROP;
    };
    let verdict = rewrite_owned(ctx, work, flow);
    claim.release();
    verdict
}

fn rewrite_owned(ctx: &TcContext, work: *mut Work, flow: *mut FlowState) -> i32 {
    // SAFETY: a value pointer from the flow table stays valid for this program run (values are
    // freed after an RCU grace period), and the claim makes this CPU its only user. The work
    // area is this CPU's.
    let f = unsafe { &mut *flow };
    let closing = f.closing();
    if closing {
        // SAFETY: a helper without arguments.
        f.touch_closing(unsafe { bpf_ktime_get_ns() });
    }
    // SAFETY: this CPU's work area.
    unsafe {
        (*work).rewrites = 0;
        (*work).pulled = 0;
    }
    match start(ctx, work, flow) {
        // `start` never holds: the room phase does, in the loop below.
        Admit::Pass | Admit::Hold => return PASS,
        Admit::Drop => {
            maps::count(|c| c.dropped_ooo += 1);
            return DROP;
        }
        Admit::Track { miss } => maps::count(|c| {
            c.segments += 1;
            c.history_misses += miss as u64;
            c.closing += closing as u64;
        }),
    }
    let Some(env) = DpEnv::new(ctx, flow, work) else {
        return PASS;
    };
    let mut job = Job {
        flow,
        work,
        pkt: SkbPacket::new(ctx, work),
        env,
    };
    // SAFETY: `bpf_loop` calls `step` with `job`, which outlives the call.
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(
            MAX_STEPS,
            step as *mut core::ffi::c_void,
            (&raw mut job).cast(),
            0,
        );
    }
    // SAFETY: as above.
    let outcome = unsafe { (*work).driver.finish(&mut (*flow).tracker, &mut job.env) };
    job.env.finish();
    // SAFETY: as above.
    let (key, quiet) = unsafe { ((*work).seg.key, Quiet::of(&(*flow).tracker)) };
    maps::publish(&key, quiet);
    if outcome == Outcome::Held {
        maps::count(|c| c.held += 1);
        return DROP;
    }
    PASS
}

/// Starts the segment's `Driver`. A frame of its own: what the socket lookup for the history
/// keeps on the stack is then not on the 512 bytes that the entry point and the `bpf_loop`
/// callback share (Linux 6.1 refused the program at 544).
#[inline(never)]
fn start(ctx: &TcContext, work: *mut Work, flow: *mut FlowState) -> Admit {
    let mut pkt = SkbPacket::new(ctx, work);
    // SAFETY: as in `rewrite_owned`.
    unsafe {
        let (seq, len) = ((*work).seg.seq, (*work).seg.len);
        (*work)
            .driver
            .start(&mut (*flow).tracker, seq, len, MAX_STEPS, &mut pkt)
    }
}

/// Stops following `seg`'s connection, if it is followed.
#[inline(never)]
fn give_up(seg: &SegmentInfo, why: Desync) {
    let Some(flow) = maps::FLOWS.get_ptr_mut(seg.key) else {
        return;
    };
    let Some(claim) = flows::Claim::take(flow) else {
        return;
    };
    // SAFETY: a live flow value this CPU has claimed.
    if unsafe { (*flow).tracker.abandon(why) } {
        maps::count(|c| c.desynced += 1);
    }
    claim.release();
}

/// One step of the segment's `Driver`; `bpf_loop`'s continue (0) or stop (1).
extern "C" fn step(_: u64, job: *mut core::ffi::c_void) -> i64 {
    let job = job.cast::<Job<'_>>();
    // SAFETY: the loop passes a live `Job`, whose pointers are to live map values.
    unsafe {
        let (flow, work) = ((*job).flow, (*job).work);
        let more = (*work)
            .driver
            .step(&mut (*flow).tracker, &mut (*job).pkt, &mut (*job).env);
        (!more) as i64
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable out-of-bounds access, so the
    // bounds checks that lead here are never taken in a loaded program.
    unsafe { core::hint::unreachable_unchecked() }
}
