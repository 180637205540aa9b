//! What lnat changed in a stream, by position, so every copy of a segment gets the same bytes.
//!
//! A rewrite is a set of 4-byte XOR patches at TCP sequence numbers. The tracker records each one
//! here as it decides it; a segment is then rewritten by applying every recorded patch that
//! overlaps it. A retransmission, a duplicate, or a segment the stack dropped after TC and the
//! peer sent again gets exactly the bytes the first copy got, whatever its boundaries.
//!
//! Patches are kept as runs (first position, stride, count, XOR): a stream of equal-sized messages
//! to the same NID, the common case under load, is one run however many headers it holds.
//!
//! The oldest run makes room for a new one. Whether forgetting it can cost anything depends on
//! the client: the receiving socket's `rcv_nxt`, which the datapath reads when the history is
//! about to be full ([`History::receive`]), marks every byte before it as the stack's already
//! (copies of those bytes are discarded unread). A run wholly before it goes without a trace;
//! only a run the client had not yet received is recorded as forgotten, and only a copy of
//! bytes the client may still take in counts as a miss (`history_misses`).

use crate::seq;

/// Runs kept per flow of the server's stream. 256 runs of 12 bytes: the patches of a 64 KiB
/// packet of 260-byte messages of varied sizes fit, and at the default flow-table size the maps
/// stay within the 16 MiB budget (README, Benchmarks).
pub const RUNS: usize = 256;
/// How far behind the cursor the history's marks may trail: the largest TCP receive window
/// (65,535 << 14, just under 1 GiB). No segment from further back can be accepted by the
/// receiver, and positions that far apart still compare correctly modulo 2^32; marks left older
/// (a stream with nothing to rewrite for gigabytes) are brought up to it, see [`History::follow`].
pub const SPAN: u32 = 1 << 30;
/// The fewest payload bytes per recorded patch: a V2 message of 96 bytes (socklnd and LNet
/// headers, no payload) brings two (its NID and the `dest_pid` that compensates its checksum).
/// A V2 ping reply given DISCOVERY brings four in 144 bytes, but a client gets one per discovery
/// round, and the slack in [`History::wants_received`] covers a few in one segment.
const BYTES_PER_PATCH: u32 = 48;

/// One patch: XOR `xor` into the four bytes at stream position `pos` (zero bytes are untouched).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Patch {
    /// Sequence number of the first byte.
    pub pos: u32,
    /// XOR for bytes `pos..pos + 4`.
    pub xor: [u8; 4],
}

/// Patches with the same XOR at `first + i * stride` for `i < count`.
///
/// Twelve bytes: strides above 64 KiB (1 MiB bulk messages) start a new run each, which costs
/// little, as such messages are few in any window.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Run {
    /// Position of the first patch.
    pub first: u32,
    /// XOR of every patch.
    pub xor: [u8; 4],
    /// Distance between patches (0 while the run has one patch).
    pub stride: u16,
    /// Number of patches.
    pub count: u16,
}

impl Run {
    /// Position of the last patch.
    const fn last(&self) -> u32 {
        self.first.wrapping_add(
            (self.count as u32)
                .wrapping_sub(1)
                .wrapping_mul(self.stride as u32),
        )
    }

    /// Position just past the last patched byte.
    pub const fn end(&self) -> u32 {
        self.last().wrapping_add(4)
    }

    /// Adds `p` to this run if it continues it.
    fn extend(&mut self, p: Patch) -> bool {
        if self.count == 0
            || self.count == u16::MAX
            || self.xor != p.xor
            || !seq::after(p.pos, self.last())
        {
            return false;
        }
        let gap = p.pos.wrapping_sub(self.last());
        if gap < 4 || gap > u16::MAX as u32 || (self.count > 1 && gap != self.stride as u32) {
            return false;
        }
        self.stride = gap as u16;
        self.count += 1;
        true
    }
}

/// A flow's recent patches.
///
/// The runs form a ring in stream order: each run starts after the one before it, and a run
/// grows only while it is one of the two newest (see [`History::push`]), so every patch of run
/// `i` lies before the first of run `i + 2`. A walk can therefore find where a segment starts
/// by binary search.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct History<const N: usize = RUNS> {
    /// The runs, filled round-robin.
    pub runs: [Run; N],
    /// Slot the next new run goes to.
    pub next: u32,
    /// Slots in use.
    pub used: u32,
    /// Where the forgotten runs began: `[lost, floor)` may have held patches the history no
    /// longer knows and the client had not received (empty when equal).
    pub lost: u32,
    /// Where the forgotten runs ended.
    pub floor: u32,
    /// Position just past the newest patch: segments starting here or later need no history.
    pub end: u32,
    /// The receiving socket's next expected byte, as last read: the stack discards copies of
    /// bytes before it, so patches there are no longer needed.
    pub received: u32,
}

impl<const N: usize> History<N> {
    const MASK: usize = {
        assert!(N.is_power_of_two());
        N - 1
    };

    /// An empty history for a stream whose first byte has sequence number `start`.
    pub const fn new(start: u32) -> Self {
        History {
            runs: [Run {
                first: 0,
                xor: [0; 4],
                stride: 0,
                count: 0,
            }; N],
            next: 0,
            used: 0,
            lost: start,
            floor: start,
            end: start,
            received: start,
        }
    }

    /// Forgets everything, for a new stream starting at `start`; slots are overwritten on use.
    pub const fn reset(&mut self, start: u32) {
        self.next = 0;
        self.used = 0;
        self.lost = start;
        self.floor = start;
        self.end = start;
        self.received = start;
    }

    /// The `k`th run from the oldest.
    const fn slot(&self, k: u32) -> usize {
        self.next.wrapping_sub(self.used).wrapping_add(k) as usize & Self::MASK
    }

    /// True when a segment of `len` bytes could bring the history to forget a run: the
    /// datapath then reads the socket's `rcv_nxt` for [`History::receive`] (a lookup it spares
    /// other segments). A segment records at most one run per [`BYTES_PER_PATCH`], and the
    /// window checked by [`History::must_hold`] two more.
    pub const fn wants_received(&self, len: u32) -> bool {
        self.used as u64 + (len / BYTES_PER_PATCH) as u64 + 4 > N as u64
    }

    /// True when recording the next two patches (what one examined window can add) could push
    /// out a run with patches in `[received, seq)`: bytes the client still lacks that the
    /// segment in hand, starting at `seq`, does not carry. A later copy of them may come, and
    /// would miss them. A segment starting where the client's bytes end (the one that fills a
    /// hole) is therefore never held, and a packet with more patches than the history holds
    /// forgets some of its own rather than being held for them.
    pub fn must_hold(&self, seq: u32) -> bool {
        if self.used as usize + 2 <= N || !seq::after(seq, self.received) {
            return false;
        }
        let mut k = 0;
        while k < 2 && k < self.used {
            let run = &self.runs[self.slot(k) & Self::MASK];
            if seq::after(run.end(), self.received) && seq::before(run.first, seq) {
                return true;
            }
            k += 1;
        }
        false
    }

    /// Notes that the receiver has every byte before `rcv_nxt`: runs wholly before it are
    /// dropped without loss when room is needed, and of the forgotten stretch only what lies
    /// at or after it can still be missed. A value behind what is known changes nothing.
    pub const fn receive(&mut self, rcv_nxt: u32) {
        if seq::after(rcv_nxt, self.received) {
            self.received = rcv_nxt;
        }
        if !seq::before(self.received, self.floor) {
            self.lost = self.floor;
        } else if seq::before(self.lost, self.received) {
            self.lost = self.received;
        }
    }

    /// Records a patch; a patch that changes nothing is not recorded.
    pub fn push(&mut self, p: Patch) {
        if p.xor == [0; 4] {
            return;
        }
        self.end = seq::max(self.end, p.pos.wrapping_add(4));
        // The newest run, or the one before it: V2 checksummed streams alternate NID and
        // dest_pid patches, each forming its own run.
        let mut back = 1;
        while back <= 2 && back <= self.used {
            let idx = self.slot(self.used - back);
            if let Some(run) = self.runs.get_mut(idx)
                && run.extend(p)
            {
                return;
            }
            back += 1;
        }
        let idx = self.next as usize & Self::MASK;
        if let Some(slot) = self.runs.get_mut(idx) {
            if self.used as usize == N {
                // The oldest run goes. Unless the client has it all, its stretch is recorded;
                // runs are made in stream order, so the first one forgotten starts it.
                if seq::after(slot.end(), self.received) {
                    if self.lost == self.floor {
                        self.lost = seq::max(slot.first, self.received);
                    }
                    self.floor = seq::max(self.floor, slot.end());
                }
            } else {
                self.used += 1;
            }
            *slot = Run {
                first: p.pos,
                xor: p.xor,
                stride: 0,
                count: 1,
            };
        }
        self.next = ((idx + 1) & Self::MASK) as u32;
    }

    /// Records `p`, the rest of a NID whose first bytes are the newest record, into that
    /// record, so that a NID's rewrite is one record, kept or forgotten whole: no copy ever
    /// gets half of it. False (nothing recorded) when the newest record is not those bytes
    /// alone (they changed nothing, or joined a run of others): the caller pushes `p`.
    pub fn complete(&mut self, p: Patch) -> bool {
        if self.used == 0 {
            return false;
        }
        let idx = self.slot(self.used - 1);
        let Some(run) = self.runs.get_mut(idx) else {
            return false;
        };
        if run.count != 1 || run.first != p.pos {
            return false;
        }
        run.xor = (u32::from_le_bytes(run.xor) | u32::from_le_bytes(p.xor)).to_le_bytes();
        self.end = seq::max(self.end, p.pos.wrapping_add(4));
        true
    }

    /// True when the segment `[seq, seq + len)` overlaps the stretch whose patches were
    /// forgotten before the client had them: only there could a copy lack a patch its first
    /// copy got. A segment of a stream where nothing was ever rewritten, old bytes before the
    /// first forgotten patch, or bytes the client already has, miss nothing.
    pub const fn misses(&self, seq: u32, len: u32) -> bool {
        seq::before(self.lost, self.floor)
            && seq::before(seq, self.floor)
            && seq::before(self.lost, seq.wrapping_add(len))
    }

    /// Brings marks more than [`SPAN`] behind `cursor` up to `cursor - SPAN`: what they say
    /// about older bytes no longer matters, and left alone they would, 2 GiB later, compare as
    /// ahead of the stream (every segment a miss, no quiet window).
    pub const fn follow(&mut self, cursor: u32) {
        let oldest = cursor.wrapping_sub(SPAN);
        if seq::before(self.end, oldest) {
            self.end = oldest;
        }
        if seq::before(self.floor, oldest) {
            self.floor = oldest;
        }
        if seq::before(self.lost, oldest) {
            self.lost = oldest;
        }
        if seq::before(self.received, oldest) {
            self.received = oldest;
        }
    }

    /// True when a segment starting at `seq` may overlap a recorded patch.
    pub const fn reaches(&self, seq: u32) -> bool {
        seq::before(seq, self.end)
    }
}

/// A patch cut to the part of it inside one segment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Clip {
    /// Offset of the first changed byte from the start of the segment's payload.
    pub off: u32,
    /// Number of bytes from `off` (1 to 4).
    pub len: u32,
    /// XOR for those bytes, from index 0.
    pub xor: [u8; 4],
}

impl Patch {
    /// The part of this patch inside the segment `[seq, seq + len)`, if it changes anything there.
    pub fn clip(&self, seq: u32, len: u32) -> Option<Clip> {
        let rel = seq::delta(seq, self.pos);
        let start = if rel < 0 { 0 } else { rel };
        let end = if rel + 4 < len as i64 {
            rel + 4
        } else {
            len as i64
        };
        if start >= end {
            return None;
        }
        let skip = (start - rel) as u32;
        let n = (end - start) as u32;
        // Whole-word shifts rather than a byte loop: no data-dependent branches or masks for the
        // verifier to fork on.
        let word = u32::from_le_bytes(self.xor) >> (8 * skip);
        let keep = ((1u64 << (8 * n)) - 1) as u32;
        let x = word & keep;
        let xor = x.to_le_bytes();
        let any = x;
        (any != 0).then_some(Clip {
            off: start as u32,
            len: n,
            xor,
        })
    }
}

/// Walks the recorded patches that overlap one segment.
///
/// A plain cursor advanced one step per call rather than a borrowing iterator, so the eBPF
/// program can drive it from a `bpf_loop` callback with no loop of its own to verify. It first
/// halves the runs to the first that can reach the segment, one comparison a step, then goes
/// through the runs from there until one starts past the segment.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PatchWalk {
    seq: u32,
    len: u32,
    /// The search's bounds, as runs from the oldest: runs before `lo` start more than 3
    /// bytes before the segment, runs from `hi` on do not.
    lo: u32,
    hi: u32,
    /// The run being walked, from the oldest.
    run: u32,
    member: u32,
    member_end: u32,
    /// 0 while searching, 1 once walking.
    walking: u32,
}

/// One step of a [`PatchWalk`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WalkStep {
    /// A patch to apply.
    Patch(Clip),
    /// Moved on without a patch; call again.
    Moved,
    /// No more patches overlap the segment.
    Done,
}

impl PatchWalk {
    /// A walk over the patches of `h` overlapping `[seq, seq + len)`.
    pub const fn new<const N: usize>(h: &History<N>, seq: u32, len: u32) -> Self {
        PatchWalk {
            seq,
            len,
            lo: 0,
            hi: h.used,
            run: 0,
            member: 0,
            member_end: 0,
            walking: 0,
        }
    }

    /// Where the segment starts, from the start of `run`.
    fn offset_in(&self, run: &Run) -> i64 {
        seq::delta(run.first, self.seq)
    }

    /// The members of `run` whose four bytes overlap the segment, as `[lo, hi)`.
    fn members(&self, run: &Run) -> (u32, u32) {
        if run.count == 0 {
            return (0, 0);
        }
        let from_start = self.offset_in(run);
        let to_end = from_start + self.len as i64;
        if to_end <= 0 {
            return (0, 0);
        }
        if run.count == 1 || run.stride == 0 {
            return if from_start < 4 { (0, 1) } else { (0, 0) };
        }
        let stride = run.stride as i64;
        // Member i covers [i * stride, i * stride + 4) relative to `first`.
        let lo = if from_start < 4 {
            0
        } else {
            (from_start - 4) / stride + 1
        };
        let hi = (to_end + stride - 1) / stride;
        let hi = if hi > run.count as i64 {
            run.count as i64
        } else {
            hi
        };
        if lo >= hi {
            (0, 0)
        } else {
            (lo as u32, hi as u32)
        }
    }

    /// Advances by one comparison of the search, one member or one run.
    pub fn step<const N: usize>(&mut self, h: &History<N>) -> WalkStep {
        if self.walking == 0 {
            if self.lo < self.hi {
                let mid = self.lo + (self.hi - self.lo) / 2;
                // A mask on the very value used as the index, for the verifier: `slot` masks
                // after arithmetic the compiler may fold.
                let run = &h.runs[h.slot(mid) & History::<N>::MASK];
                if self.offset_in(run) > 3 {
                    self.lo = mid + 1;
                } else {
                    self.hi = mid;
                }
                return WalkStep::Moved;
            }
            // Runs two before the first that starts near the segment may still reach into it.
            self.walking = 1;
            self.run = self.lo.saturating_sub(2);
            self.member = 0;
            self.member_end = 0;
            return self.enter(h);
        }
        if self.member < self.member_end {
            let run = &h.runs[h.slot(self.run) & History::<N>::MASK];
            let pos = run
                .first
                .wrapping_add(self.member.wrapping_mul(run.stride as u32));
            self.member += 1;
            return match (Patch { pos, xor: run.xor }).clip(self.seq, self.len) {
                Some(c) => WalkStep::Patch(c),
                None => WalkStep::Moved,
            };
        }
        self.run += 1;
        self.enter(h)
    }

    /// Starts on run `self.run`, or ends the walk when there is none or it starts past the
    /// segment (every later run starts later still).
    fn enter<const N: usize>(&mut self, h: &History<N>) -> WalkStep {
        if self.run >= h.used {
            self.member_end = 0;
            return WalkStep::Done;
        }
        let run = &h.runs[h.slot(self.run) & History::<N>::MASK];
        if -self.offset_in(run) >= self.len as i64 {
            self.member_end = 0;
            return WalkStep::Done;
        }
        let (lo, hi) = self.members(run);
        self.member = lo;
        self.member_end = hi;
        WalkStep::Moved
    }

    /// The next patch, stepping as far as needed (host code and tests).
    pub fn next<const N: usize>(&mut self, h: &History<N>) -> Option<Clip> {
        loop {
            match self.step(h) {
                WalkStep::Patch(c) => return Some(c),
                WalkStep::Moved => {}
                WalkStep::Done => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Applies every patch overlapping the segment to a copy of it.
    fn apply<const N: usize>(h: &History<N>, seq: u32, seg: &[u8]) -> Vec<u8> {
        let mut out = seg.to_vec();
        let mut walk = PatchWalk::new(h, seq, seg.len() as u32);
        while let Some(c) = walk.next(h) {
            for i in 0..c.len as usize {
                out[c.off as usize + i] ^= c.xor[i];
            }
        }
        out
    }

    #[test]
    fn clip_cuts_at_both_ends() {
        let p = Patch {
            pos: 100,
            xor: [1, 2, 3, 4],
        };
        assert_eq!(
            p.clip(100, 10),
            Some(Clip {
                off: 0,
                len: 4,
                xor: [1, 2, 3, 4]
            })
        );
        assert_eq!(
            p.clip(98, 4),
            Some(Clip {
                off: 2,
                len: 2,
                xor: [1, 2, 0, 0]
            })
        );
        assert_eq!(
            p.clip(102, 1),
            Some(Clip {
                off: 0,
                len: 1,
                xor: [3, 0, 0, 0]
            })
        );
        assert_eq!(p.clip(104, 10), None);
        assert_eq!(p.clip(90, 10), None);
        let sparse = Patch {
            pos: 100,
            xor: [0, 0, 7, 0],
        };
        assert_eq!(sparse.clip(100, 2), None);
        assert_eq!(sparse.clip(u32::MAX - 10, 200).map(|c| c.off), Some(111));
    }

    #[test]
    fn equal_strides_merge_into_one_run() {
        let mut h = History::<RUNS>::new(0);
        for i in 0..1000u32 {
            h.push(Patch {
                pos: 24 + i * 96,
                xor: [9, 9, 0, 0],
            });
        }
        assert_eq!(h.used, 1);
        assert_eq!(h.runs[0].count, 1000);
        // Alternating NID and dest_pid patches form two runs.
        let mut h = History::<RUNS>::new(0);
        for i in 0..50u32 {
            h.push(Patch {
                pos: 24 + i * 112,
                xor: [1, 0, 0, 0],
            });
            h.push(Patch {
                pos: 40 + i * 112,
                xor: [2, 0, 0, 0],
            });
        }
        assert_eq!(h.used, 2);
    }

    #[test]
    fn walk_matches_patching_the_whole_stream() {
        let mut seed = 7u32;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for round in 0..200 {
            let base = if round % 2 == 0 {
                1000
            } else {
                u32::MAX - 3000
            };
            let mut h = History::<RUNS>::new(base);
            let stream_len = 4000u32;
            let mut want = std::vec![0u8; stream_len as usize];
            let mut pos = 0u32;
            while pos + 8 < stream_len {
                let xor = if rnd() % 4 == 0 {
                    [1, 0, 2, 0]
                } else {
                    [0, 3, 0, 4]
                };
                h.push(Patch {
                    pos: base.wrapping_add(pos),
                    xor,
                });
                for i in 0..4 {
                    want[(pos + i) as usize] ^= xor[i as usize];
                }
                pos += 4 + if rnd() % 2 == 0 { 92 } else { rnd() % 200 };
            }
            assert!(!h.misses(base, stream_len), "too many runs for this test");
            for _ in 0..50 {
                let s = rnd() % stream_len;
                let l = 1 + rnd() % (stream_len - s);
                let got = apply(&h, base.wrapping_add(s), &std::vec![0u8; l as usize]);
                assert_eq!(
                    got[..],
                    want[s as usize..(s + l) as usize],
                    "segment {s}+{l}"
                );
            }
        }
    }

    #[test]
    fn nothing_is_missed_where_nothing_was_forgotten_and_old_marks_follow_the_cursor() {
        let mut h = History::<RUNS>::new(1000);
        assert!(!h.misses(0, u32::MAX) && !h.misses(1000, 10));
        // 3 GiB of a stream with nothing rewritten: the marks keep up and compare as behind.
        let mut cursor = 1000u32;
        for _ in 0..3 {
            cursor = cursor.wrapping_add(SPAN);
            h.follow(cursor);
        }
        assert_eq!(
            (h.lost, h.floor, h.end),
            (cursor - SPAN, cursor - SPAN, cursor - SPAN)
        );
        assert!(seq::before(h.end, cursor) && !h.reaches(cursor - 100));
        assert!(!h.misses(cursor - 100, 50));
        // Recent marks are left alone.
        h.push(Patch {
            pos: cursor - 8,
            xor: [1, 0, 0, 0],
        });
        h.follow(cursor);
        assert_eq!(h.end, cursor - 4);
    }

    #[test]
    fn a_split_nid_is_one_record_kept_or_forgotten_whole() {
        let mut h = History::<RUNS>::new(0);
        h.push(Patch {
            pos: 1000,
            xor: [0, 7, 0, 0],
        });
        assert!(h.complete(Patch {
            pos: 1000,
            xor: [0, 0, 0, 9],
        }));
        assert_eq!((h.used, h.runs[0].xor, h.end), (1, [0, 7, 0, 9], 1004));
        assert_eq!(apply(&h, 998, &[0; 8]), [0, 0, 0, 7, 0, 9, 0, 0]);
        // First bytes that changed nothing left no record to complete.
        assert!(!h.complete(Patch {
            pos: 2000,
            xor: [0, 0, 1, 0],
        }));
    }

    #[test]
    fn eviction_raises_the_floor() {
        let mut h = History::<RUNS>::new(0);
        // A new XOR each: no two patches merge, every patch is a run.
        for i in 0..(RUNS as u32 + 3) {
            h.push(Patch {
                pos: i * 1000,
                xor: [(i & 0x7f) as u8 + 1, (i >> 7) as u8 + 1, 0, 0],
            });
        }
        assert_eq!(h.used as usize, RUNS);
        assert_eq!((h.lost, h.floor), (0, 2004));
        assert!(h.misses(2003, 1) && h.misses(0, 1) && !h.misses(2004, 100));
        assert!(h.misses(u32::MAX - 1, 3) && !h.misses(u32::MAX - 1, 2));
        assert!(h.reaches((RUNS as u32 + 2) * 1000 + 3));
        assert!(!h.reaches((RUNS as u32 + 2) * 1000 + 4));
    }

    #[test]
    fn runs_the_client_received_go_without_loss() {
        let mut h = History::<RUNS>::new(0);
        let push = |h: &mut History, i: u32| {
            h.push(Patch {
                pos: i * 1000,
                xor: [(i & 0x7f) as u8 + 1, (i >> 7) as u8 + 1, 0, 0],
            })
        };
        for i in 0..RUNS as u32 {
            push(&mut h, i);
        }
        assert!(h.wants_received(0) && !History::<RUNS>::new(0).wants_received(1448));
        // The client has the first ten runs' bytes: they make room for ten more, no loss.
        // Held for a later segment, not for one that carries the oldest run itself.
        assert!(h.must_hold(RUNS as u32 * 1000) && !h.must_hold(0));
        h.receive(9 * 1000 + 4);
        assert!(!h.must_hold(RUNS as u32 * 1000));
        for i in RUNS as u32..RUNS as u32 + 10 {
            push(&mut h, i);
        }
        assert_eq!(h.lost, h.floor);
        assert!(!h.misses(0, 1 << 20));
        // Two more evict runs it has not received: those are recorded, from where they began.
        push(&mut h, RUNS as u32 + 10);
        push(&mut h, RUNS as u32 + 11);
        assert_eq!((h.lost, h.floor), (10_000, 11_004));
        assert!(h.misses(10_500, 1) && !h.misses(9_000, 1000));
        // Once it has those too, nothing can be missed; an older value changes nothing.
        h.receive(10_600);
        assert_eq!((h.lost, h.floor), (10_600, 11_004));
        h.receive(11_004);
        h.receive(5);
        assert_eq!((h.lost, h.floor, h.received), (11_004, 11_004, 11_004));
        assert!(!h.misses(0, 1 << 20));
        // The next to go are not received yet; once everything is, nothing holds.
        let later = h.end + 1000;
        assert!(h.must_hold(later));
        h.receive(h.end);
        assert!(!h.must_hold(later));
    }

    #[test]
    fn the_walk_finds_a_segment_among_many_interleaved_runs() {
        let mut seed = 11u32;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for base in [5u32, u32::MAX - 40_000] {
            let mut h = History::<RUNS>::new(base);
            let mut want = std::vec![0u8; 200_000];
            let mut pos = 0u32;
            // V2-like messages: a NID patch and a dest_pid patch 16 bytes on, sizes varying
            // in stretches, so runs grow two at a time and then break.
            let mut size = 96;
            while (h.used as usize) < RUNS - 2 && pos + 200 < want.len() as u32 {
                if rnd() % 8 == 0 {
                    size = 96 + rnd() % 400;
                }
                for (off, xor) in [(24, [1, 2, 0, 0]), (44, [0, 0, 3, 4])] {
                    h.push(Patch {
                        pos: base.wrapping_add(pos + off),
                        xor,
                    });
                    for i in 0..4 {
                        want[(pos + off + i) as usize] ^= xor[i as usize];
                    }
                }
                pos += size;
            }
            assert!(h.used > 64 && !h.misses(base, pos), "{} runs", h.used);
            for _ in 0..2000 {
                let s = rnd() % pos;
                let l = 1 + rnd() % 3000.min(pos - s);
                let got = apply(&h, base.wrapping_add(s), &std::vec![0u8; l as usize]);
                assert_eq!(got[..], want[s as usize..(s + l) as usize], "{s}+{l}");
            }
        }
    }
}
