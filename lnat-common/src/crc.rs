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

/// The dest_pid XOR that cancels `addr_xor` (the four address-byte XORs, as a little-endian word
/// of wire bytes) when `gap` unchanged bytes separate the address from dest_pid.
///
/// Returned as a little-endian word of wire bytes, like `addr_xor`.
pub fn cancel_word(addr_xor: u32, gap: u32) -> u32 {
    let mut r = addr_xor;
    let steps = 32 + 8 * gap;
    let mut i = 0;
    while i < steps && i < 32 + 8 * 64 {
        r = step(r);
        i += 1;
    }
    r
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
    fn cancel_word_keeps_the_message_crc() {
        let mut msg = [0u8; 200];
        for (i, b) in msg.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        for (addr_at, pid_at) in [(24usize, 40usize), (28, 40), (28, 64)] {
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
                assert_eq!(crc32_le(!0, &m), before, "addr {addr_at} pid {pid_at} xor {xor:#x}");
            }
        }
    }
}
