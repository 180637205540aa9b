//! Finding the TCP segment in an ingress packet, and whether it is on an LNet port.

use aya_ebpf::programs::TcContext;
use lnat_common::{maps::FlowKey, tracker::Role};

use crate::maps;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;

/// TCP flags lnat acts on.
pub const FIN: u8 = 0x01;
/// Synchronise: a connection opens.
pub const SYN: u8 = 0x02;
/// Reset: a connection ends at once.
pub const RST: u8 = 0x04;
/// Acknowledgement.
pub const ACK: u8 = 0x10;

/// A TCP segment on an LNet port, as lnat needs it.
#[derive(Clone, Copy)]
pub struct Segment {
    /// The connection, as this packet names it.
    pub key: FlowKey,
    /// Which side opened the connection: the LNet port is the sender's (we connected) or ours.
    pub role: Role,
    /// Sequence number of the first payload byte.
    pub seq: u32,
    /// Payload bytes.
    pub len: u32,
    /// TCP flags.
    pub flags: u8,
    /// Packet offset of the first payload byte.
    pub payload_off: u32,
    /// Packet offset of the TCP checksum field.
    pub check_off: u32,
    /// The first fragment of a fragmented segment.
    pub fragment: bool,
}

#[inline(always)]
fn be16(ctx: &TcContext, off: usize) -> Option<u16> {
    ctx.load::<u16>(off).ok().map(u16::from_be)
}

/// The segment in `ctx`, if it is IPv4 TCP to or from a followed LNet port; counts what it passes.
pub fn parse(ctx: &TcContext) -> Option<Segment> {
    let cfg = maps::config()?;
    let mut l3 = cfg.l2_len as usize;
    if l3 != 0 {
        let mut proto = be16(ctx, 12)?;
        // Tags the device left in the frame (it usually strips them into skb->vlan_tci).
        let mut tags = 0;
        while (proto == ETH_P_8021Q || proto == ETH_P_8021AD) && tags < 2 {
            proto = be16(ctx, l3 + 2)?;
            l3 += 4;
            tags += 1;
        }
        if proto != ETH_P_IP {
            maps::count(|c| c.passed += 1);
            return None;
        }
    } else if u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16) != ETH_P_IP {
        maps::count(|c| c.passed += 1);
        return None;
    }
    let ver_ihl: u8 = ctx.load(l3).ok()?;
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 || ctx.load::<u8>(l3 + 9).ok()? != IPPROTO_TCP {
        maps::count(|c| c.passed += 1);
        return None;
    }
    let tot_len = be16(ctx, l3 + 2)? as u32;
    let frag = be16(ctx, l3 + 6)?;
    if frag & 0x1fff != 0 {
        // A later fragment: no TCP header to tell whose it is.
        maps::count(|c| c.fragments += 1);
        return None;
    }
    // A first fragment (more-fragments set) still carries the TCP header: its flow is told to
    // give up, as the rest of its bytes reach the stack only after reassembly, past TC.
    let fragment = frag & 0x2000 != 0;
    let saddr: [u8; 4] = ctx.load(l3 + 12).ok()?;
    let daddr: [u8; 4] = ctx.load(l3 + 16).ok()?;
    let l4 = l3 + ihl;
    let sport = be16(ctx, l4)?;
    let dport = be16(ctx, l4 + 2)?;
    let role = if cfg.follows(sport) {
        Role::Active
    } else if cfg.follows(dport) {
        Role::Passive
    } else {
        maps::count(|c| c.passed += 1);
        return None;
    };
    let seq = u32::from_be(ctx.load::<u32>(l4 + 4).ok()?);
    let doff: u8 = ctx.load(l4 + 12).ok()?;
    let flags: u8 = ctx.load(l4 + 13).ok()?;
    let thl = ((doff >> 4) as u32) * 4;
    if thl < 20 {
        maps::count(|c| c.passed += 1);
        return None;
    }
    // BIG TCP packets carry a zero total length; their length is the skb's.
    let ip_len = if tot_len == 0 {
        ctx.len().saturating_sub(l3 as u32)
    } else {
        tot_len
    };
    let len = ip_len.saturating_sub(ihl as u32 + thl);
    Some(Segment {
        key: FlowKey {
            peer_addr: saddr,
            local_addr: daddr,
            peer_port: sport,
            local_port: dport,
        },
        role,
        seq,
        len,
        flags,
        payload_off: l4 as u32 + thl,
        check_off: l4 as u32 + 16,
        fragment,
    })
}
