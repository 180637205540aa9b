//! Rewriting one TCP segment: the order of operations the datapath follows, as one stepping
//! state machine, [`Driver`].
//!
//! A segment first gets every recorded patch that overlaps it (history phase), then the tracker
//! parses it from its cursor on, and each patch decided along the way is applied at once (parse
//! phase). Every patch therefore reaches a given copy of a segment exactly once: patches recorded
//! before this copy arrived come from the history, patches decided while parsing it come from the
//! parse. Recording into the history does not have to keep up within a segment, so a packet with
//! more headers than the history holds is still rewritten completely.
//!
//! The eBPF program calls [`Driver::start`], then [`Driver::step`] from one `bpf_loop`, then
//! [`Driver::finish`]; host code, the property tests and the fuzz target make the same three
//! calls with a plain loop in the middle ([`process`]). Phases, the step budget and every way a
//! segment can fail exist here once.

use crate::{
    history::{Clip, PatchWalk, WalkStep},
    seq,
    tracker::{Admit, Desync, Env, Tracker},
};

/// Most steps (recorded patches applied, windows parsed) one segment gets. A 64 KiB GRO packet
/// of NOOPs holds about 2,700 units; BIG TCP packets up to 512 KiB eight times that.
pub const MAX_STEPS: u32 = 1 << 16;

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

/// What one step of a phase leaves to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    /// Call again.
    More,
    /// This pass is complete.
    Done,
    /// The packet could not be read or written; the pass stops.
    Failed,
}

/// Applies the next recorded patch that overlaps the segment.
fn history_step<P: Packet>(t: &Tracker, walk: &mut PatchWalk, pkt: &mut P) -> Step {
    match walk.step(&t.history) {
        WalkStep::Patch(c) if !pkt.patch(&c, 0) => Step::Failed,
        WalkStep::Patch(_) | WalkStep::Moved => Step::More,
        WalkStep::Done => Step::Done,
    }
}

/// Parses one window of the segment `[seq, seq + len)` from the tracker's cursor and applies the
/// patches decided in it.
fn parse_step<P: Packet, E: Env>(
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

const HISTORY: u8 = 0;
const PARSE: u8 = 1;
const DONE: u8 = 2;

/// How a segment's rewrite ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Outcome {
    /// Every step it needed was made (the stream may have been given up for what it held).
    Complete = 0,
    /// The packet could not be read or written where its headers said: the stream is given up
    /// ([`Desync::Unreadable`]).
    Unreadable = 1,
    /// The step budget ran out first: the stream is given up ([`Desync::Overrun`]).
    Overrun = 2,
}

/// One segment's way through the history and the tracker, one step per call.
///
/// Plain data, so that the datapath keeps it in map memory (its per-CPU work area), where the
/// `bpf_loop` callback that steps it costs no stack.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Driver {
    /// Where the history phase is.
    walk: PatchWalk,
    seq: u32,
    len: u32,
    /// Steps left.
    budget: u32,
    phase: u8,
    /// 1 once a packet access failed.
    failed: u8,
    _pad: [u8; 2],
}

impl Driver {
    /// Starts on the segment `[seq, seq + len)` with at most `budget` steps; returns how the
    /// segment relates to the stream. Only `Admit::Track` leaves steps to make.
    pub fn start(&mut self, t: &mut Tracker, seq: u32, len: u32, budget: u32) -> Admit {
        t.history.follow(t.cursor());
        let admit = t.admit(seq, len);
        self.walk = PatchWalk::new(seq, len);
        self.seq = seq;
        self.len = len;
        self.budget = budget;
        self.failed = 0;
        self.phase = match admit {
            Admit::Track { .. } if t.history.reaches(seq) => HISTORY,
            Admit::Track { .. } => PARSE,
            Admit::Pass | Admit::Drop => DONE,
        };
        admit
    }

    /// Makes one step; true while more are needed.
    pub fn step<P: Packet, E: Env>(&mut self, t: &mut Tracker, pkt: &mut P, env: &mut E) -> bool {
        if self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        let step = match self.phase {
            HISTORY => match history_step(t, &mut self.walk, pkt) {
                Step::Done => {
                    self.phase = PARSE;
                    Step::More
                }
                s => s,
            },
            PARSE => parse_step(t, self.seq, self.len, pkt, env),
            _ => Step::Done,
        };
        match step {
            Step::More => true,
            Step::Done => {
                self.phase = DONE;
                false
            }
            Step::Failed => {
                self.phase = DONE;
                self.failed = 1;
                false
            }
        }
    }

    /// Ends the segment: a failed packet access, or a budget spent before the segment's last
    /// byte was parsed, gives the stream up (told to `env`). Passing such a copy as it is stays
    /// all-or-nothing per NID: a NID's bytes in one packet are one write, made or not.
    pub fn finish<E: Env>(&mut self, t: &mut Tracker, env: &mut E) -> Outcome {
        let unfinished = self.phase == HISTORY
            || (self.phase == PARSE
                && !t.desynced()
                && seq::before(t.cursor(), self.seq.wrapping_add(self.len)));
        self.phase = DONE;
        if self.failed != 0 {
            t.desync(Desync::Unreadable, env);
            Outcome::Unreadable
        } else if unfinished {
            t.desync(Desync::Overrun, env);
            Outcome::Overrun
        } else {
            Outcome::Complete
        }
    }
}

/// Rewrites a whole segment with at most `budget` steps: [`Driver`]'s three calls, as the
/// datapath makes them, with a plain loop where it has `bpf_loop`. Returns what `start` said.
pub fn process<P: Packet, E: Env>(
    t: &mut Tracker,
    seq: u32,
    len: u32,
    pkt: &mut P,
    env: &mut E,
    budget: u32,
) -> Admit {
    let mut d = Driver::default();
    let admit = d.start(t, seq, len, budget);
    while d.step(t, pkt, env) {}
    d.finish(t, env);
    admit
}
