//! Ethernet/IPv4/TCP frames for tests: reading them from pcap captures, building them, and
//! checking their TCP checksums.
//!
//! The golden tests feed whole frames to the loaded datapath (`BPF_PROG_TEST_RUN`) and to the
//! host tracker; both need the same view of where a frame's TCP payload is.

use std::path::Path;

/// Ethernet header length without VLAN tags.
pub const ETH_LEN: usize = 14;

/// TCP flags.
pub const FIN: u8 = 0x01;
/// TCP SYN.
pub const SYN: u8 = 0x02;
/// TCP RST.
pub const RST: u8 = 0x04;
/// TCP PSH.
pub const PSH: u8 = 0x08;
/// TCP ACK.
pub const ACK: u8 = 0x10;

/// Where things are in an Ethernet/IPv4/TCP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp4 {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Flags byte.
    pub flags: u8,
    /// Offset of the IPv4 header in the frame.
    pub ip_off: usize,
    /// Offset of the TCP header in the frame.
    pub tcp_off: usize,
    /// Offset of the payload in the frame.
    pub payload_off: usize,
    /// Payload length (from the IPv4 total length).
    pub payload_len: usize,
}

impl Tcp4 {
    /// The frame's TCP segment, if it is an unfragmented IPv4 TCP frame that holds its headers.
    pub fn parse(frame: &[u8]) -> Option<Tcp4> {
        let ip_off = ETH_LEN;
        if frame.len() < ip_off + 20 || be16(frame, 12) != 0x0800 {
            return None;
        }
        let ip = &frame[ip_off..];
        let ihl = (ip[0] & 0xf) as usize * 4;
        let tot = be16(ip, 2) as usize;
        if ip[0] >> 4 != 4 || ip[9] != 6 || ihl < 20 || tot > ip.len() || tot < ihl + 20 {
            return None;
        }
        if be16(ip, 6) & 0x3fff != 0 {
            return None;
        }
        let tcp_off = ip_off + ihl;
        let tcp = &frame[tcp_off..];
        let thl = (tcp[12] >> 4) as usize * 4;
        if thl < 20 || ihl + thl > tot {
            return None;
        }
        Some(Tcp4 {
            src: ip[12..16].try_into().ok()?,
            dst: ip[16..20].try_into().ok()?,
            sport: be16(tcp, 0),
            dport: be16(tcp, 2),
            seq: u32::from_be_bytes(tcp[4..8].try_into().ok()?),
            flags: tcp[13],
            ip_off,
            tcp_off,
            payload_off: tcp_off + thl,
            payload_len: tot - ihl - thl,
        })
    }

    /// The payload bytes of `frame`.
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[self.payload_off..self.payload_off + self.payload_len]
    }

    /// Whether the TCP checksum of `frame` verifies (over pseudo-header, header and payload).
    pub fn csum_ok(&self, frame: &[u8]) -> bool {
        self.csum_residue(frame) == 0xffff
    }

    /// The folded one's-complement sum over pseudo-header, header and payload: 0xffff when the
    /// checksum verifies. A rewrite that keeps the checksum right keeps this unchanged, also on
    /// captured frames whose checksum was never filled in (offloaded by the sender).
    pub fn csum_residue(&self, frame: &[u8]) -> u16 {
        let seg = &frame[self.tcp_off..self.payload_off + self.payload_len];
        fold(pseudo_sum(self.src, self.dst, seg.len()) + sum(seg))
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The one's-complement sum of `b` as big-endian 16-bit words, not yet folded.
fn sum(b: &[u8]) -> u64 {
    b.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn pseudo_sum(src: [u8; 4], dst: [u8; 4], len: usize) -> u64 {
    sum(&src) + sum(&dst) + 6 + len as u64
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// A TCP segment to build into a frame.
#[derive(Clone, Debug)]
pub struct Build<'a> {
    /// Source address and port.
    pub src: ([u8; 4], u16),
    /// Destination address and port.
    pub dst: ([u8; 4], u16),
    /// Sequence number.
    pub seq: u32,
    /// Flags byte.
    pub flags: u8,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_options: &'a [u8],
    /// TCP options (a multiple of 4 bytes).
    pub tcp_options: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
}

impl Build<'_> {
    /// The frame, with correct IPv4 and TCP checksums.
    pub fn frame(&self) -> Vec<u8> {
        let ihl = 20 + self.ip_options.len();
        let thl = 20 + self.tcp_options.len();
        let tot = ihl + thl + self.payload.len();
        let mut f = Vec::with_capacity(ETH_LEN + tot);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&(tot as u16).to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&self.src.0);
        f.extend_from_slice(&self.dst.0);
        f.extend_from_slice(self.ip_options);
        let ip_csum = !fold(sum(&f[ETH_LEN..ETH_LEN + ihl]));
        f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&ip_csum.to_be_bytes());
        let tcp_off = f.len();
        f.extend_from_slice(&self.src.1.to_be_bytes());
        f.extend_from_slice(&self.dst.1.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&1u32.to_be_bytes());
        f.push(((thl / 4) as u8) << 4);
        f.push(self.flags);
        f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(self.tcp_options);
        f.extend_from_slice(self.payload);
        let csum = !fold(pseudo_sum(self.src.0, self.dst.0, tot - ihl) + sum(&f[tcp_off..]));
        f[tcp_off + 16..tcp_off + 18].copy_from_slice(&csum.to_be_bytes());
        f
    }
}

/// The frames of a little-endian, microsecond, Ethernet pcap file, in order.
pub fn read_pcap(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let data = std::fs::read(path)?;
    if data.len() < 24 || data[..4] != [0xd4, 0xc3, 0xb2, 0xa1] {
        return Err(bad("not a little-endian microsecond pcap"));
    }
    if u32::from_le_bytes([data[20], data[21], data[22], data[23]]) != 1 {
        return Err(bad("not an Ethernet capture"));
    }
    let mut frames = Vec::new();
    let mut p = 24;
    while p + 16 <= data.len() {
        let caplen =
            u32::from_le_bytes([data[p + 8], data[p + 9], data[p + 10], data[p + 11]]) as usize;
        let frame = data
            .get(p + 16..p + 16 + caplen)
            .ok_or_else(|| bad("truncated record"))?;
        frames.push(frame.to_vec());
        p += 16 + caplen;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_frame_parses_back_with_valid_checksums() {
        let payload: Vec<u8> = (0..=200).collect();
        let f = Build {
            src: ([203, 0, 113, 10], 988),
            dst: ([198, 51, 100, 2], 40001),
            seq: 0xfffffff0,
            flags: ACK | PSH,
            ip_options: &[1, 1, 1, 1],
            tcp_options: &[1, 1, 1, 1, 1, 1, 1, 1],
            payload: &payload,
        }
        .frame();
        let t = Tcp4::parse(&f).expect("parses");
        assert_eq!((t.sport, t.dport, t.seq), (988, 40001, 0xfffffff0));
        assert_eq!(t.payload(&f), &payload[..]);
        assert!(t.csum_ok(&f));
        assert_eq!(fold(sum(&f[t.ip_off..t.tcp_off])), 0xffff);
        let mut bad = f.clone();
        bad[t.payload_off + 7] ^= 1;
        assert!(!t.csum_ok(&bad));
    }
}
