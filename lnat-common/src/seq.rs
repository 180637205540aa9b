//! TCP sequence-number arithmetic: positions in a byte stream, modulo 2^32.
//!
//! The tracker names every position by its TCP sequence number, so a rewrite depends on where a
//! byte sits in the stream and never on where a segment happens to start.

/// True when `a` comes before `b` in the stream (within 2 GiB).
#[inline(always)]
pub const fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// True when `a` comes after `b`.
#[inline(always)]
pub const fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// The later of two positions.
#[inline(always)]
pub const fn max(a: u32, b: u32) -> u32 {
    if before(a, b) { b } else { a }
}

/// Signed distance from `from` to `to`.
#[inline(always)]
pub const fn delta(from: u32, to: u32) -> i64 {
    to.wrapping_sub(from) as i32 as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_wraps() {
        assert!(before(1, 2) && after(2, 1) && !before(2, 2));
        assert!(before(u32::MAX - 5, 3) && after(3, u32::MAX - 5));
        assert_eq!(max(u32::MAX, 4), 4);
        assert_eq!(delta(u32::MAX - 1, 2), 4);
        assert_eq!(delta(2, u32::MAX - 1), -4);
    }
}
