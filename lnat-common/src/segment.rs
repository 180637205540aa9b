//! Rewriting one TCP segment: the order of operations the datapath follows, in steps.
//!
//! A segment first gets every recorded patch that overlaps it (history pass), then the tracker
//! parses it from its cursor on, and each patch decided along the way is applied at once (parse
//! pass). Every patch therefore reaches a given copy of a segment exactly once: patches recorded
//! before this copy arrived come from the history, patches decided while parsing it come from the
//! parse. Recording into the history does not have to keep up within a segment, so a packet with
//! more headers than the history holds is still rewritten completely.
//!
//! The steps are single calls so that the eBPF program can drive them from `bpf_loop`; host
//! code and tests use [`process`], which loops over the same steps.

use crate::{
    history::{Clip, PatchWalk, WalkStep},
    seq,
    tracker::{Admit, Desync, Env, Tracker},
};

/// Access to the payload of the segment being rewritten.
pub trait Packet {
    /// Copies the payload bytes at `off..off + dst.len()` into `dst`.
    fn load(&mut self, off: u32, dst: &mut [u8]) -> bool;
    /// XORs `clip` into the payload and keeps the packet's checksum right. `reach` is the
    /// payload offset this pass may still write up to (0: nothing beyond `clip` is known): an
    /// adapter that must make a packet writable before a write (the kernel copies a GRO
    /// packet's data into one buffer up to the written offset) can do it once for all.
    fn patch(&mut self, clip: &Clip, reach: u32) -> bool;
}

/// What a step leaves to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Step {
    /// Call again.
    More,
    /// This pass is complete.
    Done,
    /// The packet could not be read or written; the pass stops.
    Failed,
}

/// Applies the next recorded patch that overlaps the segment.
pub fn history_step<P: Packet>(t: &Tracker, walk: &mut PatchWalk, pkt: &mut P) -> Step {
    match walk.step(&t.history) {
        WalkStep::Patch(c) if !pkt.patch(&c, 0) => Step::Failed,
        WalkStep::Patch(_) | WalkStep::Moved => Step::More,
        WalkStep::Done => Step::Done,
    }
}

/// Parses one window of the segment `[seq, seq + len)` from the tracker's cursor and applies the
/// patches decided in it.
pub fn parse_step<P: Packet, E: Env>(
    t: &mut Tracker,
    seq: u32,
    len: u32,
    pkt: &mut P,
    env: &mut E,
) -> Step {
    if t.desynced() {
        return Step::Done;
    }
    let off = seq::delta(seq, t.cursor());
    if off < 0 {
        return Step::Failed;
    }
    if off >= len as i64 {
        return Step::Done;
    }
    let left = len as usize - off as usize;
    let (at, room) = t.window();
    let n = if left < room { left } else { room };
    let Some(dst) = t.buf.get_mut(at..at + n) else {
        return Step::Failed;
    };
    if n == 0 || !pkt.load(off as u32, dst) {
        return Step::Failed;
    }
    let used = t.advance(n, env);
    // Another unit starting in this segment brings more headers to rewrite in it.
    let reach = if seq::before(t.cursor(), seq.wrapping_add(len)) {
        len
    } else {
        0
    };
    let mut i = 0;
    while i < t.n_out as usize && i < t.out.len() {
        if let Some(c) = t.out[i].clip(seq, len)
            && !pkt.patch(&c, reach)
        {
            return Step::Failed;
        }
        i += 1;
    }
    if used == 0 && !t.desynced() {
        return Step::Failed;
    }
    Step::More
}

/// Rewrites a whole segment with at most `max_steps` steps per pass; returns what `admit` said.
/// A parse that runs out of steps gives the stream up (it cannot be followed in bounded work).
pub fn process<P: Packet, E: Env>(
    t: &mut Tracker,
    seq: u32,
    len: u32,
    pkt: &mut P,
    env: &mut E,
    max_steps: usize,
) -> Admit {
    let admit = t.admit(seq, len);
    if !matches!(admit, Admit::Track { .. }) {
        return admit;
    }
    if t.history.reaches(seq) {
        let mut walk = PatchWalk::new(seq, len);
        let mut n = 0;
        while n < max_steps && history_step(t, &mut walk, pkt) == Step::More {
            n += 1;
        }
    }
    let mut n = 0;
    loop {
        if n == max_steps {
            t.desync(Desync::Overrun, env);
            break;
        }
        n += 1;
        if parse_step(t, seq, len, pkt, env) != Step::More {
            break;
        }
    }
    admit
}
