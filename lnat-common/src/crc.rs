//! The socklnd checksum (V2 with `enable_csum=1`): reflected CRC-32, polynomial 0xEDB88320,
//! initial value `!0`, no final inversion.
//!
//! lnat never touches the checksum field. It cannot, in general: the field precedes the NID and
//! payload_length in the stream, so a segment may carry it before lnat knows what will change.
//! Instead, a rewrite of the NID's address bytes is paired with an XOR on dest_pid, which follows
//! the NID and which the receiving kernel never reads (`lnet_parse` only copies it into the event's
//! target pid). The XOR is chosen so that the message's CRC is unchanged: the CRC is affine, so it
//! suffices that the CRC register, run from zero over the difference between the old and the new
//! message, ends at zero; it does when the dest_pid XOR equals the register after the address XOR
//! and the bytes between the address and dest_pid.

/// The reflected CRC-32 polynomial.
pub const POLY: u32 = 0xEDB8_8320;

/// One bit step of the reflected CRC register.
#[inline(always)]
const fn step(r: u32) -> u32 {
    (r >> 1) ^ (POLY & (r & 1).wrapping_neg())
}

/// `crc32_le` as socklnd calls it: continues `crc` over `data`.
pub fn crc32_le(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = step(crc);
        }
    }
    crc
}

/// The byte-at-a-time table of the reflected CRC-32: `TABLE[b]` is 8 steps from `b`.
const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut b = 0;
    while b < 256 {
        let mut r = b as u32;
        let mut i = 0;
        while i < 8 {
            r = step(r);
            i += 1;
        }
        t[b] = r;
        b += 1;
    }
    t
};

/// Runs the register over `n` zero bytes.
#[inline(always)]
fn zeros(mut r: u32, n: usize) -> u32 {
    let mut i = 0;
    while i < n {
        r = (r >> 8) ^ TABLE[(r & 0xff) as usize];
        i += 1;
    }
    r
}

/// The gaps between a changed word and the word that cancels it: in an LNet header, from a
/// NID's address to dest_pid (nid4 from an other-endian peer, nid4, nid16); in ping information,
/// from an entry's address to its `ns_msg_size` (big-endian sender) and from `pi_features` to
/// the first NI entry's `ns_msg_size` (see [`crate::ping`]).
pub const GAPS: [u32; 5] = [8, 12, 32, 4, 36];

/// The XOR that cancels `addr_xor` (a changed word's four byte XORs, as a little-endian word of
/// wire bytes) when `gap` unchanged bytes (one of [`GAPS`]; another counts as the last) separate
/// it from the compensating word.
///
/// Returned as a little-endian word of wire bytes, like `addr_xor`: the register after the
/// address XOR (four bytes) and the gap, run from zero. Table steps with constant trip counts
/// keep the eBPF verifier's work small and branch-free.
pub fn cancel_word(addr_xor: u32, gap: u32) -> u32 {
    if gap == GAPS[0] {
        zeros(addr_xor, 4 + GAPS[0] as usize)
    } else if gap == GAPS[1] {
        zeros(addr_xor, 4 + GAPS[1] as usize)
    } else if gap == GAPS[2] {
        zeros(addr_xor, 4 + GAPS[2] as usize)
    } else if gap == GAPS[3] {
        zeros(addr_xor, 4 + GAPS[3] as usize)
    } else {
        zeros(addr_xor, 4 + GAPS[4] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_crc32() {
        // CRC-32 of "123456789" is 0xCBF43926 with the usual final inversion.
        assert_eq!(!crc32_le(!0, b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn the_table_is_the_bitwise_crc() {
        let data = [0x12u8, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0, 0];
        let by_table = zeros(!0 ^ u32::from_le_bytes([0x12, 0x34, 0x56, 0x78]), 10);
        assert_eq!(by_table, crc32_le(!0, &data));
    }

    #[test]
    fn cancel_word_keeps_the_message_crc() {
        let mut msg = [0u8; 200];
        for (i, b) in msg.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        // Every gap of GAPS: header NIDs to dest_pid, ping entries and features to msg_size.
        for (addr_at, pid_at) in [
            (24usize, 40usize),
            (28, 40),
            (28, 64),
            (100, 108),
            (100, 140),
        ] {
            for xor in [0x0000_0001u32, 0xdead_beef, 0x8000_0000, 0x00ff_ff00] {
                let before = crc32_le(!0, &msg);
                let mut m = msg;
                for (i, x) in xor.to_le_bytes().iter().enumerate() {
                    m[addr_at + i] ^= x;
                }
                let gap = (pid_at - addr_at - 4) as u32;
                for (i, x) in cancel_word(xor, gap).to_le_bytes().iter().enumerate() {
                    m[pid_at + i] ^= x;
                }
                assert_ne!(m, msg);
                assert_eq!(
                    crc32_le(!0, &m),
                    before,
                    "addr {addr_at} pid {pid_at} xor {xor:#x}"
                );
            }
        }
    }
}
