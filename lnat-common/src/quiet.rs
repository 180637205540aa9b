//! The stretch of a followed stream where nothing is left to do, published in one word so that
//! the datapath can pass the packets inside it without taking the flow.
//!
//! Most packets of a bulk transfer lie in the middle of a large payload: every byte of them is
//! behind the tracker's cursor and no patch touches them. Such a segment needs neither the
//! tracker nor the claim that guards it, only a look at this window.
//!
//! A window stays right however stale it is, which is what makes reading it without the claim
//! safe: it spans from the end of the last recorded patch to the cursor, every byte before the
//! cursor has been parsed, and every patch recorded later changes only bytes at or after the
//! cursor of its time (a NID's address bytes are patched as they arrive, and a V2 checksum's
//! compensation lies after its NID). Once published, a window never gains a patch.

use crate::{seq, tracker::Tracker};

/// `[from, to)` in sequence numbers, `from` in the low half: one aligned word, written and read
/// whole, so a reader on another CPU never sees half of an update.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Quiet(pub u64);

impl Quiet {
    /// No window: every segment goes through the tracker.
    pub const NONE: Quiet = Quiet(0);

    /// The window `t` leaves: from the end of its newest patch to its cursor.
    pub const fn of<const N: usize>(t: &Tracker<N>) -> Quiet {
        let (from, to) = (t.history.end, t.cursor());
        if t.desynced() || !seq::before(from, to) {
            return Quiet::NONE;
        }
        Quiet(from as u64 | (to as u64) << 32)
    }

    /// True when every byte of the segment `[seq, seq + len)` lies in the window.
    pub const fn covers(self, seq: u32, len: u32) -> bool {
        let (from, to) = (self.0 as u32, (self.0 >> 32) as u32);
        let span = to.wrapping_sub(from) as u64;
        let off = seq.wrapping_sub(from) as u64;
        len != 0 && off + len as u64 <= span
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{nid::Nid, tracker::Role};

    #[test]
    fn the_window_is_exact_at_both_ends_and_wraps() {
        let q = Quiet(100 | 200 << 32);
        assert!(q.covers(100, 100) && q.covers(150, 1));
        assert!(!q.covers(99, 2) && !q.covers(199, 2) && !q.covers(150, 0));
        let from = u32::MAX - 9;
        let q = Quiet(from as u64 | 10 << 32);
        assert!(q.covers(from, 20) && q.covers(2, 8));
        assert!(!q.covers(from, 21) && !q.covers(from - 1, 2));
    }

    #[test]
    fn no_window_covers_nothing() {
        for seq in [0, 1, u32::MAX, 1 << 31] {
            assert!(!Quiet::NONE.covers(seq, 1) && !Quiet::NONE.covers(seq, u32::MAX));
        }
    }

    #[test]
    fn a_fresh_or_desynced_tracker_leaves_no_window() {
        let mut t = Tracker::new(Role::Active, 1000, 1, Nid(0));
        assert_eq!(Quiet::of(&t), Quiet::NONE);
        t.unit_seq = 5000;
        assert_eq!(Quiet::of(&t), Quiet(1000 | 5000 << 32));
        t.abandon(crate::tracker::Desync::Overrun);
        assert_eq!(Quiet::of(&t), Quiet::NONE);
    }
}
