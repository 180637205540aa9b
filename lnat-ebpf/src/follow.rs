//! One packet through the flow it belongs to, the same way in either direction: the quiet
//! window, the flow and its claim, then `lnat_common::segment`'s `Driver` in a `bpf_loop`.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use lnat_common::{
    flow::{self, Event},
    history::RUNS,
    maps::{FlowState, OUT_RUNS, SegmentInfo, Work},
    quiet::Quiet,
    segment::{MAX_STEPS, Outcome, Packet},
    tracker::{Admit, Desync, Direction},
};

use crate::{
    DROP, PASS,
    ahead::{self, KeptPacket},
    env::DpEnv,
    flows, headers, maps,
    side::{self, In, Out, Side, Tally},
    skb::SkbPacket,
};

/// Follows the packet in `ctx` on side `S`; the program's verdict.
#[inline(always)]
pub fn packet<const N: usize, S: Side<N>>(ctx: &TcContext) -> i32 {
    // The segment is described in map memory, not on the stack (see `Work`).
    let Some(work) = S::work().get_ptr_mut(0) else {
        return PASS;
    };
    // SAFETY: this CPU's work area; one program run at a time uses it.
    let seg = unsafe { &mut (*work).seg };
    if !headers::parse(ctx, seg, S::DIR) {
        return PASS;
    }
    if seg.fragment != 0 {
        maps::count(|c| c.fragments += 1);
        give_up::<N, S>(seg, Desync::Fragmented);
        return PASS;
    }
    let event = flow::event(seg.flags, flows::role(seg), S::DIR);
    if let Event::Open(role) = event {
        flows::open::<N, S>(seg, role);
        return PASS;
    }
    // One call site: the rewrite's frame and the bpf_loop callback's share the 512-byte stack.
    let verdict = if seg.len == 0 {
        PASS
    } else {
        rewrite::<N, S>(ctx, work)
    };
    // A FIN or RST, after whatever data it carries: the flow is closing, and keeps its state
    // for the bytes before it that may still come (see `lnat_common::flow`). So is the other
    // direction's: a reset ends it too, and after a FIN the connection is on its way out (a
    // closing flow is still followed, and freed only once idle).
    if event == Event::End {
        // SAFETY: as above.
        let seg = unsafe { &(*work).seg };
        flows::end::<N, S>(seg);
        match S::DIR {
            Direction::In => flows::end::<OUT_RUNS, Out>(seg),
            Direction::Out => flows::end::<RUNS, In>(seg),
        }
    }
    // SAFETY: as above.
    if S::DIR == Direction::In && unsafe { core::mem::take(&mut (*work).kept_due) } != 0 {
        // The kept segment is parsed by a program of its own, which ends with this verdict
        // (lnat asks for one only when it passes the segment).
        // SAFETY: the tail call takes this program's context; it returns only if it failed.
        unsafe { maps::LNAT_PROGS.tail_call(ctx, 0) };
        // No program to parse the kept bytes: the stream cannot go on past them.
        give_up::<N, S>(unsafe { &(*work).seg }, Desync::Delivered);
    }
    verdict
}

/// The kept segment's pass, tail-called after a segment that reached it: takes the flow again
/// and parses the kept bytes; the packet goes on, as the segment before was passed.
pub fn kept(ctx: &TcContext) -> i32 {
    let Some(work) = maps::LNAT_WORK.get_ptr_mut(0) else {
        return PASS;
    };
    // SAFETY: this CPU's work area, which the tail-calling program filled.
    let key = unsafe { (*work).seg.key };
    let Some(flow) = maps::FLOWS.get_ptr_mut(key) else {
        return PASS;
    };
    // Another CPU that took the flow meanwhile parses the kept bytes itself if it needs them.
    let Some(claim) = flows::Claim::take(flow) else {
        return PASS;
    };
    if let Some(env) = DpEnv::<RUNS, In>::new(ctx, flow, work) {
        parse_kept::<RUNS, In>(work, flow, &env);
        // SAFETY: a flow this CPU has claimed.
        let quiet = Quiet::of(unsafe { &(*flow).tracker });
        maps::publish(In::windows(), &key, quiet);
    }
    claim.release();
    PASS
}

/// What the `bpf_loop` callback needs: pointers only. Everything it reads or changes lives in
/// map memory (the flow state and [`Work`], which holds the segment's `Driver`), which costs no
/// stack and keeps the verifier's view of the loop small.
struct Job<'a, const N: usize, S: Side<N>, P: Packet> {
    flow: *mut FlowState<N>,
    work: *mut Work,
    pkt: P,
    env: DpEnv<'a, N, S>,
}

fn rewrite<const N: usize, S: Side<N>>(ctx: &TcContext, work: *mut Work) -> i32 {
    // SAFETY: this CPU's work area.
    let (key, seq, len) = unsafe { ((*work).seg.key, (*work).seg.seq, (*work).seg.len) };
    // Inside a payload, with nothing to do: passed without the flow or its claim (see `Quiet`
    // for why a window another CPU is replacing is still right).
    if let Some(q) = S::windows().get_ptr(key)
        // SAFETY: a live value of the table, one aligned word, read whole.
        && unsafe { core::ptr::read_volatile(q) }.covers(seq, len)
    {
        side::count::<N, S>(Tally::Quiet);
        return PASS;
    }
    let Some(flow) = S::flows().get_ptr_mut(key) else {
        side::count::<N, S>(Tally::Untracked);
        return PASS;
    };
    // Packets of one connection can reach two CPUs at once (a sender migrating between veth
    // queues, say); the tracker must only ever be worked on by one.
    let Some(claim) = flows::Claim::take(flow) else {
        side::count::<N, S>(Tally::Contended);
        return DROP;
    };
    let verdict = rewrite_owned::<N, S>(ctx, work, flow);
    claim.release();
    verdict
}

fn rewrite_owned<const N: usize, S: Side<N>>(
    ctx: &TcContext,
    work: *mut Work,
    flow: *mut FlowState<N>,
) -> i32 {
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
    match start::<N, S>(ctx, work, flow) {
        // `start` never holds: the loop below does, before a window of new bytes.
        Admit::Pass | Admit::Hold | Admit::Ahead => return PASS,
        // Only the incoming stream goes ahead; its flows are `FlowState<RUNS>`.
        Admit::Drop if S::DIR == Direction::In && ahead::pass(ctx, work, flow.cast()) => {
            return PASS;
        }
        Admit::Drop => {
            side::count::<N, S>(Tally::Ahead);
            return DROP;
        }
        Admit::Track { miss } => side::count::<N, S>(Tally::Segment { closing, miss }),
    }
    let Some(env) = DpEnv::new(ctx, flow, work) else {
        return PASS;
    };
    let mut job = Job::<N, S, SkbPacket> {
        flow,
        work,
        pkt: SkbPacket::new(ctx, work, S::DIR),
        env,
    };
    // SAFETY: `bpf_loop` calls `step` with `job`, which outlives the call.
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(
            MAX_STEPS,
            step::<N, S, SkbPacket> as *mut core::ffi::c_void,
            (&raw mut job).cast(),
            0,
        );
    }
    // SAFETY: as above.
    let outcome = unsafe { (*work).driver.finish(&mut (*flow).tracker, &mut job.env) };
    if S::DIR == Direction::In && outcome != Outcome::Held {
        // SAFETY: this CPU's work area; the flow is the incoming stream's.
        unsafe { (*work).kept_due = ahead::due(flow.cast()) as u8 };
    }
    job.env.finish();
    // SAFETY: as above.
    let (key, quiet) = unsafe { ((*work).seg.key, Quiet::of(&(*flow).tracker)) };
    maps::publish(S::windows(), &key, quiet);
    if outcome == Outcome::Held {
        side::count::<N, S>(Tally::Held);
        return DROP;
    }
    PASS
}

/// Parses the segment kept ahead of the cursor if the segment just parsed brought the cursor
/// into it (`lnat_common::segment::process_kept`), with the same steps over its kept bytes (a
/// callback of their own, which the verifier follows apart from the packet's); kept bytes that
/// are gone give the stream up, as the receiver has them and TCP will not send them again.
#[inline(always)]
fn parse_kept<const N: usize, S: Side<N>>(
    work: *mut Work,
    flow: *mut FlowState<N>,
    env: &DpEnv<'_, N, S>,
) {
    // The incoming stream's flows are `FlowState<RUNS>`.
    let Some((a, kept)) = ahead::reached(work, flow.cast()) else {
        return;
    };
    // SAFETY: as in `rewrite_owned`.
    let t = unsafe { &mut (*flow).tracker };
    if kept.is_null() {
        t.desync(Desync::Delivered, &mut { *env });
        return;
    }
    let mut job = Job::<N, S, KeptPacket> {
        flow,
        work,
        pkt: KeptPacket(kept),
        env: *env,
    };
    // SAFETY: as in `rewrite_owned`; `bpf_loop` calls `step` with `job`, which outlives it.
    unsafe {
        (*work)
            .driver
            .start(t, a.seq, a.len as u32, MAX_STEPS, &mut job.pkt);
        aya_ebpf::helpers::generated::bpf_loop(
            MAX_STEPS,
            step::<N, S, KeptPacket> as *mut core::ffi::c_void,
            (&raw mut job).cast(),
            0,
        );
        (*work).driver.finish(t, &mut job.env);
    }
    ahead::settle(work, flow.cast());
}

/// Starts the segment's `Driver`. A frame of its own: what the socket lookup for the history
/// keeps on the stack is then not on the 512 bytes that the entry point and the `bpf_loop`
/// callback share (Linux 6.1 refused the program at 544).
#[inline(never)]
fn start<const N: usize, S: Side<N>>(
    ctx: &TcContext,
    work: *mut Work,
    flow: *mut FlowState<N>,
) -> Admit {
    let mut pkt = SkbPacket::new(ctx, work, S::DIR);
    // SAFETY: as in `rewrite_owned`.
    unsafe {
        let (seq, len) = ((*work).seg.seq, (*work).seg.len);
        (*work)
            .driver
            .start(&mut (*flow).tracker, seq, len, MAX_STEPS, &mut pkt)
    }
}

/// Stops following `seg`'s stream, if it is followed.
#[inline(never)]
fn give_up<const N: usize, S: Side<N>>(seg: &SegmentInfo, why: Desync) {
    let Some(flow) = S::flows().get_ptr_mut(seg.key) else {
        return;
    };
    let Some(claim) = flows::Claim::take(flow) else {
        return;
    };
    // SAFETY: a live flow value this CPU has claimed.
    if unsafe { (*flow).tracker.abandon(why) } {
        side::count::<N, S>(Tally::Desynced);
    }
    claim.release();
}

/// One step of the segment's `Driver`; `bpf_loop`'s continue (0) or stop (1).
extern "C" fn step<const N: usize, S: Side<N>, P: Packet>(
    _: u64,
    job: *mut core::ffi::c_void,
) -> i64 {
    let job = job.cast::<Job<'_, N, S, P>>();
    // SAFETY: the loop passes a live `Job`, whose pointers are to live map values.
    unsafe {
        let (flow, work) = ((*job).flow, (*job).work);
        let more = (*work)
            .driver
            .step(&mut (*flow).tracker, &mut (*job).pkt, &mut (*job).env);
        (!more) as i64
    }
}
