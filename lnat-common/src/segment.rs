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

/// Most steps (recorded patches applied, windows read, examined and patched) one segment gets.
/// A 64 KiB GRO packet of NOOPs holds about 2,700 units, three steps each; BIG TCP packets up
/// to 512 KiB eight times that.
pub const MAX_STEPS: u32 = 1 << 18;

/// Access to the payload of the segment being rewritten.
pub trait Packet {
    /// Copies the payload bytes at `off..off + dst.len()` into `dst`.
    fn load(&mut self, off: u32, dst: &mut [u8]) -> bool;
    /// XORs `clip` into the payload and keeps the packet's checksum right. `reach` is the
    /// payload offset this pass may still write up to (0: nothing beyond `clip` is known): an
    /// adapter that must make a packet writable before a write (the kernel copies a GRO
    /// packet's data into one buffer up to the written offset) can do it once for all.
    fn patch(&mut self, clip: &Clip, reach: u32) -> bool;
    /// The first sequence number the receiver still lacks, if known (the client socket's
    /// `rcv_nxt` for what it receives, its `snd_una` for what it sends): asked only when the
    /// segment could bring the history to forget a run. Runs wholly before it make
    /// way without loss ([`crate::history::History::receive`]); a segment whose next window
    /// could only push out one the client still lacks is held back ([`Outcome::Held`]).
    fn received(&mut self) -> Option<u32> {
        None
    }
    /// True when these bytes are the receiver's already: a segment passed ahead
    /// ([`crate::ahead`]), read again from where the caller kept it. A patch on them cannot be
    /// made, and gives the stream up ([`Desync::Delivered`]).
    fn delivered(&self) -> bool {
        false
    }
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
fn history_step<P: Packet, const N: usize>(
    t: &Tracker<N>,
    walk: &mut PatchWalk,
    pkt: &mut P,
) -> Step {
    match walk.step(&t.history) {
        WalkStep::Patch(c) if !pkt.patch(&c, 0) => Step::Failed,
        WalkStep::Patch(_) | WalkStep::Moved => Step::More,
        WalkStep::Done => Step::Done,
    }
}

/// Reads the next window of the segment `[seq, seq + len)`, from the tracker's cursor, into
/// the tracker's prefix; returns how many bytes the tracker took.
fn load_step<P: Packet, const N: usize>(
    t: &mut Tracker<N>,
    seq: u32,
    len: u32,
    pkt: &mut P,
) -> Result<u32, Step> {
    if t.desynced() {
        return Err(Step::Done);
    }
    let off = seq::delta(seq, t.cursor());
    if off < 0 {
        return Err(Step::Failed);
    }
    if off >= len as i64 {
        return Err(Step::Done);
    }
    let left = len as usize - off as usize;
    let (at, room) = t.window();
    let n = if left < room { left } else { room };
    let Some(dst) = t.buf.get_mut(at..at + n) else {
        return Err(Step::Failed);
    };
    if n == 0 || !pkt.load(off as u32, dst) {
        return Err(Step::Failed);
    }
    Ok(t.take(n) as u32)
}

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
    /// The next window could push out of the history a patch the client still lacks: the
    /// segment is to be dropped, for TCP to resend once the client has caught up. What was
    /// parsed before that point stands; the next copy gets its patches from the history.
    Held = 3,
}

/// The phases of a segment, in order; `LOAD`, `PROGRESS` and `PATCH` repeat per window.
///
/// Each step does one small thing and returns to the loop: the verifier then follows each
/// phase's paths once, from the loop's entry, instead of every combination of reading,
/// parsing and writing in one step (Linux 6.1 ran out of its million instructions on those).
const HISTORY: u8 = 0;
/// Read the next window into the tracker's prefix.
const LOAD: u8 = 1;
/// Let the tracker examine what it took.
const PROGRESS: u8 = 2;
/// Apply the patches it decided, one per step.
const PATCH: u8 = 3;
const DONE: u8 = 4;

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
    /// Bytes the tracker took in the last load (0: the window made no progress).
    used: u32,
    /// Payload offset the patches of this window may reach (see [`Packet::patch`]).
    reach: u32,
    phase: u8,
    /// 1 once a packet access failed.
    failed: u8,
    /// The next of the tracker's decided patches to apply.
    next_out: u8,
    /// 1 when the client's `rcv_nxt` is known for this segment, so it may be held.
    may_hold: u8,
    /// 1 when the segment was held.
    held: u8,
    /// 1 when the segment's bytes were passed ahead ([`Packet::delivered`]).
    delivered: u8,
    _pad: [u8; 2],
}

impl Driver {
    /// Starts on the segment `[seq, seq + len)` of `pkt` with at most `budget` steps; returns
    /// how the segment relates to the stream. Only `Admit::Track` leaves steps to make.
    pub fn start<P: Packet, const N: usize>(
        &mut self,
        t: &mut Tracker<N>,
        seq: u32,
        len: u32,
        budget: u32,
        pkt: &mut P,
    ) -> Admit {
        t.history.follow(t.cursor());
        self.may_hold = 0;
        self.held = 0;
        self.delivered = pkt.delivered() as u8;
        if matches!(t.admit(seq, len), Admit::Track { .. })
            && t.history.wants_received(len)
            && let Some(r) = pkt.received()
        {
            t.history.receive(r);
            self.may_hold = 1;
        }
        let admit = t.admit(seq, len);
        self.walk = PatchWalk::new(&t.history, seq, len);
        self.seq = seq;
        self.len = len;
        self.budget = budget;
        self.used = 0;
        self.reach = 0;
        self.failed = 0;
        self.next_out = 0;
        self.phase = match admit {
            Admit::Track { .. } if t.history.reaches(seq) => HISTORY,
            Admit::Track { .. } => LOAD,
            Admit::Pass | Admit::Drop | Admit::Hold | Admit::Ahead => DONE,
        };
        admit
    }

    /// Makes one step; true while more are needed.
    pub fn step<P: Packet, E: Env, const N: usize>(
        &mut self,
        t: &mut Tracker<N>,
        pkt: &mut P,
        env: &mut E,
    ) -> bool {
        if self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        let step = match self.phase {
            // Before each window of new bytes: what it decides could push out a patch the
            // client still lacks. The packet is dropped with the stream's state consistent up
            // to here; its next copy gets what was decided from the history and goes on from
            // the cursor. Copies that bring nothing new, and the one that fills the client's
            // hole, are never held, so the hole always fills.
            LOAD if self.may_hold != 0
                && seq::after(self.seq.wrapping_add(self.len), t.cursor())
                && t.history.must_hold(self.seq) =>
            {
                self.held = 1;
                Step::Done
            }
            HISTORY => match history_step(t, &mut self.walk, pkt) {
                Step::Done => {
                    self.phase = LOAD;
                    Step::More
                }
                s => s,
            },
            LOAD => match load_step(t, self.seq, self.len, pkt) {
                Ok(used) => {
                    self.used = used;
                    self.phase = PROGRESS;
                    Step::More
                }
                Err(s) => s,
            },
            PROGRESS => {
                t.progress(env);
                // Another unit starting in this segment brings more headers to rewrite in it.
                let end = self.seq.wrapping_add(self.len);
                self.reach = if seq::before(t.cursor(), end) {
                    self.len
                } else {
                    0
                };
                self.next_out = 0;
                self.phase = PATCH;
                Step::More
            }
            PATCH => self.patch_step(t, pkt),
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

    /// Applies the next patch the last window decided, or, with none left, goes on to the
    /// next window; a window that took no byte without giving the stream up is a failure.
    fn patch_step<P: Packet, const N: usize>(&mut self, t: &Tracker<N>, pkt: &mut P) -> Step {
        let i = self.next_out as usize;
        if i < t.n_out as usize
            && let Some(p) = t.out.get(i)
        {
            self.next_out += 1;
            return match p.clip(self.seq, self.len) {
                Some(c) if !pkt.patch(&c, self.reach) => Step::Failed,
                _ => Step::More,
            };
        }
        if self.used == 0 && !t.desynced() {
            return Step::Failed;
        }
        self.phase = LOAD;
        Step::More
    }

    /// Ends the segment: a failed packet access, or a budget spent before the segment's last
    /// byte was parsed, gives the stream up (told to `env`). Passing such a copy as it is stays
    /// all-or-nothing per NID: a NID's bytes in one packet are one write, made or not.
    pub fn finish<E: Env, const N: usize>(&mut self, t: &mut Tracker<N>, env: &mut E) -> Outcome {
        let parsing = matches!(self.phase, LOAD | PROGRESS | PATCH);
        let unfinished = self.phase == HISTORY
            || (parsing
                && !t.desynced()
                && (self.phase != LOAD
                    || seq::before(t.cursor(), self.seq.wrapping_add(self.len))));
        self.phase = DONE;
        if self.held != 0 {
            Outcome::Held
        } else if self.failed != 0 {
            let why = if self.delivered != 0 {
                Desync::Delivered
            } else {
                Desync::Unreadable
            };
            t.desync(why, env);
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
/// datapath makes them, with a plain loop where it has `bpf_loop`. Returns what `start` said,
/// or [`Admit::Hold`] when the segment was held ([`Outcome::Held`]).
pub fn process<P: Packet, E: Env, const N: usize>(
    t: &mut Tracker<N>,
    seq: u32,
    len: u32,
    pkt: &mut P,
    env: &mut E,
    budget: u32,
) -> Admit {
    let mut d = Driver::default();
    let admit = d.start(t, seq, len, budget, pkt);
    while d.step(t, pkt, env) {}
    match d.finish(t, env) {
        Outcome::Held => Admit::Hold,
        _ => admit,
    }
}

/// Longest stretch of a segment scanned at once for [`pass_ahead`].
pub const SCAN_CHUNK: usize = 64;

/// Whether the segment `[seq, seq + len)` of `pkt`, which the tracker could not admit
/// ([`Admit::Drop`]), is passed ahead ([`crate::ahead`]): its scan reads it in chunks, and
/// when it touches nothing lnat changes the tracker records it. True: pass it and keep its
/// bytes.
pub fn pass_ahead<P: Packet, E: Env, const N: usize>(
    t: &mut Tracker<N>,
    seq: u32,
    len: u32,
    pkt: &mut P,
    env: &mut E,
) -> bool {
    let Some(mut scan) = t.ahead_scan(seq, len, env) else {
        return false;
    };
    let mut chunk = [0u8; SCAN_CHUNK];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(SCAN_CHUNK as u32) as usize;
        if !pkt.load(off, &mut chunk[..n]) {
            return false;
        }
        scan.feed(&chunk[..n]);
        off += n as u32;
    }
    if !scan.safe() {
        return false;
    }
    t.keep_ahead(seq, len);
    true
}

/// Parses the segment passed ahead once the cursor has reached it, `kept` reading its bytes
/// where the caller kept them (a [`Packet`] that says they are [`Packet::delivered`]); then
/// forgets it if the cursor is past it. `Complete` when there was nothing to parse.
pub fn process_kept<P: Packet, E: Env, const N: usize>(
    t: &mut Tracker<N>,
    kept: &mut P,
    env: &mut E,
    budget: u32,
) -> Outcome {
    let a = t.ahead();
    let mut outcome = Outcome::Complete;
    if a.reached(t.cursor()) {
        let mut d = Driver::default();
        d.start(t, a.seq, a.len as u32, budget, kept);
        while d.step(t, kept, env) {}
        outcome = d.finish(t, env);
    }
    t.settle_ahead();
    outcome
}

/// What the datapath does with one segment, in order: [`process`]; a segment it could not
/// admit may go ahead ([`pass_ahead`]: [`Admit::Ahead`], its bytes for the caller to keep);
/// after one it followed, the segment kept ahead is parsed when the cursor has reached it
/// ([`process_kept`], `kept` reading it).
pub fn process_ahead<P: Packet, K: Packet, E: Env, const N: usize>(
    t: &mut Tracker<N>,
    seq: u32,
    len: u32,
    pkt: &mut P,
    kept: &mut K,
    env: &mut E,
    budget: u32,
) -> Admit {
    let admit = process(t, seq, len, pkt, env, budget);
    match admit {
        Admit::Drop if pass_ahead(t, seq, len, pkt, env) => Admit::Ahead,
        Admit::Track { .. } => {
            process_kept(t, kept, env, budget);
            admit
        }
        _ => admit,
    }
}
