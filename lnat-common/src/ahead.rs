//! Segments passed ahead of the tracker, so that loss and reordering cost what they cost TCP.
//!
//! A segment that starts beyond the cursor cannot be parsed: the bytes before it, which say
//! where its headers are, have not arrived. Dropped, it costs the sender its fast retransmit:
//! the receiver never sees it and sends no SACK, so the sender waits for its retransmission
//! timer (200 ms at least) at every hole in front of a header. Passed, the receiver SACKs it,
//! and RACK (RFC 8985) at the sender retransmits what is missing before it within a round
//! trip. Two things must then hold, because TCP does not send bytes the receiver SACKed again:
//!
//! - No byte of it may be one the tracker would later change. On a V1 or V3 stream from the
//!   peer, the tracker changes the four address bytes of a NID that names this host by an
//!   external NID (on a connection, the one the peer's HELLO named: the hint) and the feature
//!   word of a ping reply, which follows the ping magic. [`Scan`] passes a segment only if it
//!   holds neither pattern, whole or cut at either end. What the bytes alone cannot show (a
//!   mapped NID other than the hint, a magic before the segment) the tracker meets when it
//!   parses them: a patch that falls on bytes passed ahead gives the stream up
//!   ([`crate::tracker::Desync::Delivered`]) rather than change one.
//! - The tracker must still read its headers. The datapath keeps the segment's bytes, and
//!   [`Ahead`] says where they sit in the stream; once the cursor reaches them they are parsed
//!   as if the segment had come again.
//!
//! One segment per flow at a time is enough for the sender: its SACK marks everything sent
//! before it lost, and once it is parsed the slot takes the next segment beyond a hole.

use crate::{nid::NidForm, ping, seq};

/// Longest segment passed ahead: an MSS of a 1500-byte MTU without TCP options. A longer one
/// (GRO) is dropped as before.
pub const AHEAD_MAX: usize = 1460;

/// Where in the stream the bytes passed ahead lie; `len` 0: none.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Ahead {
    /// Sequence number of the first byte.
    pub seq: u32,
    /// Bytes kept (at most [`AHEAD_MAX`]).
    pub len: u16,
}

impl Ahead {
    /// No segment passed ahead.
    pub const NONE: Ahead = Ahead { seq: 0, len: 0 };

    /// Sequence number past the last byte.
    pub const fn end(self) -> u32 {
        self.seq.wrapping_add(self.len as u32)
    }

    /// True while the tracker has yet to parse some of it: its end lies beyond `cursor`.
    pub const fn pending(self, cursor: u32) -> bool {
        self.len != 0 && seq::before(cursor, self.end())
    }

    /// True when `cursor` lies inside it: its bytes are what the tracker needs next.
    pub const fn reached(self, cursor: u32) -> bool {
        self.pending(cursor) && !seq::before(cursor, self.seq)
    }
}

/// The patterns a segment passed ahead must not hold, as four bytes in stream order packed
/// big-endian (the first byte highest): the hint's address as an LNet header carries it
/// (nid4, little-endian), and the ping magic in either byte order.
const PATTERNS: usize = 3;

/// Reads a segment's bytes in order and says whether it may be passed ahead. Plain data, so
/// that the datapath keeps it in map memory.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Scan {
    patterns: [u32; PATTERNS],
    /// The last four bytes read, the newest lowest.
    window: u32,
    /// Bytes read (saturating at 4: only the first three are special).
    seen: u8,
    /// 1 once a pattern, or a part of one at the start, was found.
    hit: u8,
    _pad: [u8; 2],
}

impl Scan {
    /// A scan for a stream whose peer names this host by the NID with address `hint`.
    pub const fn new(hint: u32) -> Scan {
        let addr = NidForm::Le.addr_bytes(hint);
        let magic = ping::MAGIC;
        Scan {
            patterns: [u32::from_be_bytes(addr), magic.swap_bytes(), magic],
            window: 0,
            seen: 0,
            hit: 0,
            _pad: [0; 2],
        }
    }

    /// Reads the next bytes of the segment.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            self.byte(bytes[i]);
            i += 1;
        }
    }

    /// Reads the next byte of the segment (what [`Scan::feed`] does for each).
    pub fn byte(&mut self, b: u8) {
        self.window = self.window << 8 | b as u32;
        if self.seen < 4 {
            self.seen += 1;
        }
        let k = self.seen as u32;
        let mut p = 0;
        while p < PATTERNS {
            let pat = self.patterns[p];
            // A whole pattern; or the segment's first k bytes ending one that began before it.
            if (k == 4 && self.window == pat) || (k < 4 && self.window == pat & mask(k)) {
                self.hit = 1;
            }
            p += 1;
        }
    }

    /// True when the segment read may be passed ahead: no pattern in it, no part of one at its
    /// start or its end, and at least four bytes (a shorter one is all edges).
    pub const fn safe(&self) -> bool {
        if self.hit != 0 || self.seen < 4 {
            return false;
        }
        let mut p = 0;
        while p < PATTERNS {
            let pat = self.patterns[p];
            let mut k = 1;
            // The segment's last k bytes beginning one that goes on after it.
            while k < 4 {
                if self.window & mask(k) == pat >> (32 - 8 * k) {
                    return false;
                }
                k += 1;
            }
            p += 1;
        }
        true
    }
}

/// The low `k` bytes of a word (`k` below 4).
const fn mask(k: u32) -> u32 {
    (1u32 << (8 * k)) - 1
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    /// 203.0.113.1, whose nid4 address bytes are 01 71 00 cb.
    const HINT: u32 = 0xcb00_7101;

    fn safe(bytes: &[u8]) -> bool {
        let mut s = Scan::new(HINT);
        s.feed(bytes);
        s.safe()
    }

    /// Every way a pattern can touch a segment: whole inside it, or cut at its start or end.
    #[test]
    fn a_pattern_anywhere_whole_or_cut_at_an_edge_is_found() {
        let filler = [0x5au8; 40];
        for pat in [
            [0x01, 0x71, 0x00, 0xcb],
            [0x67, 0x6e, 0x69, 0x70],
            [0x70, 0x69, 0x6e, 0x67],
        ] {
            for at in 0..=36 {
                let mut b = filler;
                b[at..at + 4].copy_from_slice(&pat);
                assert!(!safe(&b), "{pat:x?} at {at}");
            }
            for k in 1..4 {
                let mut head = pat[4 - k..].to_vec();
                head.extend_from_slice(&filler);
                assert!(!safe(&head), "{pat:x?}: its last {k} bytes first");
                let mut tail = filler.to_vec();
                tail.extend_from_slice(&pat[..k]);
                assert!(!safe(&tail), "{pat:x?}: its first {k} bytes last");
            }
        }
    }

    #[test]
    fn bytes_that_touch_no_pattern_pass_however_they_are_fed() {
        let b: Vec<u8> = (0..1460u32).map(|i| (i * 7 % 251) as u8 | 0x80).collect();
        assert!(safe(&b));
        for cut in [1, 3, 4, 700, 1459] {
            let mut s = Scan::new(HINT);
            s.feed(&b[..cut]);
            s.feed(&b[cut..]);
            assert!(s.safe(), "fed in two at {cut}");
        }
        // A near miss is no match: three of the four address bytes, then another.
        let mut m = b.clone();
        m[100..104].copy_from_slice(&[0x01, 0x71, 0x00, 0xcc]);
        assert!(safe(&m));
    }

    #[test]
    fn segments_under_four_bytes_are_never_passed() {
        for n in 0..4 {
            assert!(!safe(&[0x99; 3][..n]), "{n} bytes");
        }
    }

    #[test]
    fn a_segment_ahead_is_pending_until_the_cursor_passes_its_end() {
        let a = Ahead {
            seq: 1000,
            len: 100,
        };
        assert!(a.pending(900) && !a.reached(900));
        assert!(a.pending(1000) && a.reached(1000) && a.reached(1099));
        assert!(!a.pending(1100) && !a.reached(1100));
        assert!(!Ahead::NONE.pending(0) && !Ahead::NONE.reached(0));
        let w = Ahead {
            seq: u32::MAX - 9,
            len: 20,
        };
        assert!(w.reached(u32::MAX) && w.reached(5) && !w.pending(10));
    }
}
