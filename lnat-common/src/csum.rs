//! The Internet checksum delta for bytes lnat changes in a TCP segment.
//!
//! The checksum sums 16-bit words counted from the start of the TCP header; IPv4 and TCP header
//! lengths are multiples of four, so a byte's parity within the TCP payload is its parity within
//! the word sum. The delta is in the kernel's `__wsum` convention (words read in host byte order
//! on the little-endian machines lnat runs on), ready for `bpf_l4_csum_replace` in diff mode.

/// Ones'-complement 32-bit addition with end-around carry (`csum_add`).
#[inline(always)]
pub const fn add(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s.wrapping_add(carry as u32)
}

/// The `__wsum` to add when the bytes of `old`, starting at a payload offset whose parity is
/// `odd`, become the bytes of `new` (bytes equal in both contribute nothing).
///
/// Branch-free: a 64-bit accumulator needs no carry tests, and each byte's place in its 16-bit
/// word is a shift, so the eBPF verifier follows a single path.
pub fn replace_delta(odd: bool, old: [u8; 4], new: [u8; 4]) -> u32 {
    let mut acc: u64 = 0;
    let mut i = 0;
    while i < 4 {
        let shift = ((i as u64 & 1) << 3) ^ ((odd as u64) << 3);
        // new - old in ones' complement: add new and the 16-bit complement of old.
        acc += ((new[i] as u64) << shift) + (0xffff - ((old[i] as u64) << shift));
        i += 1;
    }
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u32
}

/// Folds a `__wsum` to 16 bits (`csum_fold` without the final complement).
#[inline(always)]
pub const fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum field value for `data` read as little-endian words, as the kernel stores it.
    fn checksum(data: &[u8]) -> u16 {
        let mut s = 0u32;
        for pair in data.chunks(2) {
            let w = pair[0] as u32 | (*pair.get(1).unwrap_or(&0) as u32) << 8;
            s = add(s, w);
        }
        !fold(s)
    }

    /// `inet_proto_csum_replace_by_diff` for a skb whose checksum is complete.
    fn replace_by_diff(check: u16, diff: u32) -> u16 {
        !fold(add(diff, !(check as u32) & 0xffff))
    }

    fn same_checksum(a: u16, b: u16) -> bool {
        a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
    }

    #[test]
    fn delta_matches_a_full_recompute_at_every_offset_and_length() {
        let mut seed = 0x1234_5678u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..2000 {
            let len = 8 + (rnd() % 60) as usize;
            let mut data: std::vec::Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            let off = (rnd() as usize) % (len - 1);
            let n = 1 + (rnd() as usize) % 4.min(len - off);
            let mut old = [0u8; 4];
            old[..n].copy_from_slice(&data[off..off + n]);
            let mut new = old;
            for b in new.iter_mut().take(n) {
                *b ^= rnd() as u8;
            }
            let before = checksum(&data);
            data[off..off + n].copy_from_slice(&new[..n]);
            let want = checksum(&data);
            let got = replace_by_diff(before, replace_delta(off % 2 == 1, old, new));
            assert!(
                same_checksum(got, want),
                "off {off} n {n}: {got:#x} vs {want:#x}"
            );
        }
    }
}
