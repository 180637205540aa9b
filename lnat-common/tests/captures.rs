//! Golden inputs: real LNet traffic between two Lustre 2.17 kernels through a NAT
//! (`tests/captures/`, see its README). The server-to-client segments of the failing
//! conversation, replayed through the tracker packet by packet, must come out with exactly the
//! HELLO dst_nid and every LNet dest_nid that named the NAT rewritten to the client, and the
//! conversation through a NAT that kept reserved ports must come out unchanged.

use std::{collections::BTreeMap, path::PathBuf};

use lnat_common::{
    nid::Nid,
    segment,
    tracker::{Admit, Note, Role, Tracker},
};
use lnat_testkit::{
    MapEnv, VecPacket,
    frames::{self, ACK, SYN, Tcp4},
};

/// One TCP segment from a capture.
struct Seg {
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    flags: u8,
    payload: Vec<u8>,
}

/// The TCP segments of a capture in `tests/captures/`.
fn read_pcap(name: &str) -> Vec<Seg> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/captures")
        .join(name);
    let frames = frames::read_pcap(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    frames
        .iter()
        .filter_map(|f| {
            let t = Tcp4::parse(f)?;
            Some(Seg {
                dst: t.dst,
                sport: t.sport,
                dport: t.dport,
                seq: t.seq,
                flags: t.flags,
                payload: t.payload(f).to_vec(),
            })
        })
        .collect()
}

/// Replays the segments from port 988 to `client`, one tracker per connection (a SYN-ACK starts
/// a new one, as in the datapath), and returns each data segment as passed.
fn replay(segs: &[Seg], client: [u8; 4], env: &mut MapEnv) -> Vec<(Vec<u8>, Vec<u8>)> {
    let local = u32::from_be_bytes(client);
    let mut flows: BTreeMap<u16, Box<Tracker>> = BTreeMap::new();
    let mut out = Vec::new();
    for s in segs.iter().filter(|s| s.sport == 988 && s.dst == client) {
        if s.flags & (SYN | ACK) == SYN | ACK {
            let hint = env.mappings.keys().next_back().copied().unwrap_or(Nid(0));
            flows.insert(
                s.dport,
                Box::new(Tracker::new(
                    Role::Active,
                    s.seq.wrapping_add(1),
                    local,
                    hint,
                )),
            );
            continue;
        }
        if s.payload.is_empty() {
            continue;
        }
        let t = flows.get_mut(&s.dport).expect("data before the handshake");
        let mut bytes = s.payload.clone();
        let admit = segment::process(
            t,
            s.seq,
            bytes.len() as u32,
            &mut VecPacket(&mut bytes),
            env,
            1 << 12,
        );
        assert_eq!(admit, Admit::Track { miss: false });
        assert!(!t.desynced(), "desynced: {:?}", t.desync);
        out.push((s.payload.clone(), bytes));
    }
    out
}

/// Offsets where two equal-length byte strings differ.
fn diff(a: &[u8], b: &[u8]) -> Vec<usize> {
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn the_failing_conversation_is_fixed_exactly() {
    let segs = read_pcap("nat_acceptall_client.pcap");
    let client = [192, 168, 50, 2];
    let nat: Nid = "10.88.0.254@tcp".parse().unwrap();
    let mut env = MapEnv {
        learn: true,
        ..MapEnv::default()
    };
    let passed = replay(&segs, client, &mut env);
    assert_eq!(env.learned, vec![nat]);
    // Four server HELLOs and the REPLY to the ping.
    assert_eq!(passed.len(), 5);
    let ours_le = u32::from_be_bytes(client).to_le_bytes();
    let nat_le = nat.addr().to_le_bytes();
    for (before, after) in &passed {
        match before.len() {
            56 => {
                assert_eq!(before[16..20], nat_le, "HELLO dst_nid names the NAT");
                assert_eq!(diff(before, after), vec![16, 17, 18, 19]);
                assert_eq!(after[16..20], ours_le);
            }
            144 => {
                // ksock header (24) + LNet header: dest_nid at 24, the NAT; dest_pid at 40 has
                // the userspace flag; the 48-byte payload is the ping answer.
                assert_eq!(before[24..28], nat_le);
                assert_eq!(
                    u32::from_le_bytes(before[40..44].try_into().unwrap()) & 0x8000_0000,
                    0x8000_0000
                );
                assert_eq!(diff(before, after), vec![24, 25, 26, 27]);
                assert_eq!(after[24..28], ours_le);
            }
            n => panic!("unexpected {n}-byte segment"),
        }
    }
    assert_eq!(env.count(Note::Rewrote), 5);
}

#[test]
fn the_keepport_conversation_passes_unchanged() {
    let segs = read_pcap("nat_secure_privport_client.pcap");
    let mut env = MapEnv {
        learn: true,
        ..MapEnv::default()
    };
    let passed = replay(&segs, [192, 168, 50, 2], &mut env);
    assert!(!passed.is_empty());
    for (before, after) in &passed {
        assert_eq!(before, after);
    }
    assert!(env.learned.is_empty());
}

#[test]
fn every_split_of_the_failing_reply_is_rewritten_the_same() {
    let segs = read_pcap("nat_acceptall_client.pcap");
    let client = [192, 168, 50, 2];
    let mut env = MapEnv {
        learn: true,
        ..MapEnv::default()
    };
    let whole = replay(&segs, client, &mut env);
    let (hello_in, hello_out) = &whole[0];
    let (reply_in, reply_out) = &whole[1];
    let stream: Vec<u8> = hello_in.iter().chain(reply_in).copied().collect();
    let want: Vec<u8> = hello_out.iter().chain(reply_out).copied().collect();
    for cut in 1..stream.len() {
        let mut env = MapEnv {
            learn: true,
            ..MapEnv::default()
        };
        let mut t = Box::new(Tracker::new(
            Role::Active,
            7,
            u32::from_be_bytes(client),
            Nid(0),
        ));
        let mut got = Vec::new();
        for (from, to) in [(0, cut), (cut, stream.len())] {
            let mut bytes = stream[from..to].to_vec();
            segment::process(
                &mut t,
                7 + from as u32,
                bytes.len() as u32,
                &mut VecPacket(&mut bytes),
                &mut env,
                64,
            );
            got.extend(bytes);
        }
        assert_eq!(got, want, "cut at {cut}");
    }
}
