//! Finding the TCP segment in a packet, and whether it is on an LNet port.
//!
//! Headers are read in place from the packet's linear area, where the stack keeps them for
//! every packet it builds (GRO included): no helper call on the path every packet takes.

use aya_ebpf::{helpers::generated::bpf_skb_pull_data, programs::TcContext};
use lnat_common::{
    maps::SegmentInfo,
    tracker::{Direction, Role},
};

use crate::{maps, skb::opaque};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
/// Furthest a header read starts: two VLAN tags, then 60 bytes of IP header.
const MAX_OFF: usize = 128;

/// The `N` bytes at `off`, if the linear area holds them.
#[inline(always)]
fn linear<const N: usize>(ctx: &TcContext, off: usize) -> Option<&[u8; N]> {
    let off = opaque(off);
    if off > MAX_OFF {
        return None;
    }
    let at = ctx.data() + off;
    if at + N > ctx.data_end() {
        return None;
    }
    // SAFETY: `at..at + N` lies within the packet's linear data, checked just above.
    Some(unsafe { &*(at as *const [u8; N]) })
}

/// The `N` bytes at `off`, read in place; a packet whose headers a driver left outside the
/// linear area has them pulled in first. `None` if the packet is shorter.
#[inline(always)]
fn bytes<const N: usize>(ctx: &TcContext, off: usize) -> Option<&[u8; N]> {
    if let Some(b) = linear::<N>(ctx, off) {
        return Some(b);
    }
    // SAFETY: the helper checks the length against the packet.
    if unsafe { bpf_skb_pull_data(ctx.skb.skb.cast(), (off + N) as u32) } != 0 {
        return None;
    }
    linear::<N>(ctx, off)
}

fn be16(h: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([h[off], h[off + 1]])
}

fn passed() -> Option<()> {
    maps::count(|c| c.passed += 1);
    None
}

/// Describes the segment in `ctx`, flowing `dir`, in `seg` and returns true, if it is IPv4 TCP
/// to or from a followed LNet port; counts what it passes. The key names the connection the
/// same way in both directions (the peer's address and port, then ours).
pub fn parse(ctx: &TcContext, seg: &mut SegmentInfo, dir: Direction) -> bool {
    read(ctx, seg, dir).is_some()
}

fn read(ctx: &TcContext, seg: &mut SegmentInfo, dir: Direction) -> Option<()> {
    let cfg = maps::config()?;
    // Every field goes into `seg` (map memory) as soon as it is read: a later read may pull
    // the packet, which ends the life of the bytes read before it.
    let mut l3 = cfg.l2_len as usize;
    if l3 != 0 {
        let h = bytes::<14>(ctx, 0)?;
        let mut proto = be16(h, 12);
        // Tags the device left in the frame (it usually strips them into skb->vlan_tci).
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let t = bytes::<22>(ctx, 0)?;
            proto = be16(t, 16);
            l3 += 4;
            if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
                proto = be16(t, 20);
                l3 += 4;
            }
        }
        if proto != ETH_P_IP {
            return passed();
        }
    } else if u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16) != ETH_P_IP {
        return passed();
    }
    let h = bytes::<20>(ctx, l3)?;
    let ihl = ((h[0] & 0x0f) as u32) * 4;
    if h[0] >> 4 != 4 || ihl < 20 || h[9] != IPPROTO_TCP {
        return passed();
    }
    let frag = be16(h, 6);
    if frag & 0x1fff != 0 {
        // A later fragment: no TCP header to tell whose it is.
        maps::count(|c| c.fragments += 1);
        return None;
    }
    // A first fragment (more-fragments set) still carries the TCP header: its flow is told to
    // give up, as the rest of its bytes reach the stack only after reassembly, past TC.
    seg.fragment = (frag & 0x2000 != 0) as u8;
    let (src, dst) = ([h[12], h[13], h[14], h[15]], [h[16], h[17], h[18], h[19]]);
    (seg.key.peer_addr, seg.key.local_addr) = match dir {
        Direction::In => (src, dst),
        Direction::Out => (dst, src),
    };
    // BIG TCP packets carry a zero total length; their length is the skb's.
    let tot_len = be16(h, 2) as u32;
    let ip_len = if tot_len == 0 {
        ctx.len().saturating_sub(l3 as u32)
    } else {
        tot_len
    };
    let l4 = l3 + ihl as usize;
    let h = bytes::<20>(ctx, l4)?;
    let (sport, dport) = (be16(h, 0), be16(h, 2));
    let (peer_port, local_port) = match dir {
        Direction::In => (sport, dport),
        Direction::Out => (dport, sport),
    };
    seg.role = match cfg.lnet_side(peer_port, local_port) {
        Some(true) => Role::Active as u8,
        Some(false) => Role::Passive as u8,
        None => return passed(),
    };
    let thl = ((h[12] >> 4) as u32) * 4;
    if thl < 20 {
        return passed();
    }
    seg.key.peer_port = peer_port;
    seg.key.local_port = local_port;
    seg.seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    seg.len = ip_len.saturating_sub(ihl + thl);
    seg.payload_off = l4 as u32 + thl;
    seg.check_off = l4 as u32 + 16;
    seg.flags = h[13];
    Some(())
}
