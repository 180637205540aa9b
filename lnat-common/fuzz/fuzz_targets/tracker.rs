//! The tracker, fed any LNet stream in any segmentation with re-sent segments, must deliver
//! the reference rewrite; fed any bytes at all, it must not panic and must give every copy of
//! a byte the same value.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use lnat_common::{
    nid::Nid,
    segment,
    tracker::{Note, Role, Tracker},
    wire::{self, Connreq, Endian, Hello, LnetHdr, LnetType, Proto},
};
use lnat_testkit::{MapEnv, StreamSpec, Unit, VecPacket};

const LOCAL: u32 = 0xc633_6402;
const NAT: u32 = 0xcb00_7101;

/// Who a message is for.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Dest {
    /// The NID the server gives the client.
    External,
    /// The client's own.
    Local,
    /// A stranger whose first and last octets differ from the NAT's.
    Stranger(u16),
    /// Anything at all (may share a prefix with the external NID: then a conflict is allowed).
    Any(u32, u8),
}

#[derive(Arbitrary, Debug)]
enum FUnit {
    Noop,
    Lnet { dest: Dest, kind: u8, len: u16, csum: bool },
}

#[derive(Arbitrary, Debug)]
struct Case {
    proto: u8,
    big: bool,
    passive: bool,
    learn: bool,
    static_map: bool,
    units: Vec<FUnit>,
    /// Segment lengths, cycled.
    cuts: Vec<u8>,
    /// After segment i, re-send a copy of the range (back, len) before the cursor.
    resend: Vec<(u16, u16)>,
    /// Raw bytes instead of an LNet stream.
    raw: Option<Vec<u8>>,
}

fn nid(addr: u32, num: u16) -> Nid {
    Nid::new(addr, 2, num)
}

fn build(c: &Case) -> (StreamSpec, Role) {
    let proto = Proto::from_u8(1 + c.proto % 4).unwrap_or(Proto::V3);
    let endian = if c.big && proto != Proto::V1 { Endian::Big } else { Endian::Little };
    let role = if c.passive { Role::Passive } else { Role::Active };
    let external = nid(NAT, 0);
    let units = c
        .units
        .iter()
        .take(64)
        .map(|u| match *u {
            FUnit::Noop if proto != Proto::V1 => Unit::Noop,
            FUnit::Noop => Unit::Lnet { hdr: hdr(external, LnetType::Get), payload: Vec::new(), csum: false },
            FUnit::Lnet { dest, kind, len, csum } => {
                let dest = match dest {
                    Dest::External => external,
                    Dest::Local => nid(LOCAL, 0),
                    Dest::Stranger(n) => nid(0x0a00_0007 | ((n as u32) << 8), n % 3),
                    Dest::Any(a, num) => nid(a, num as u16),
                };
                let t = match kind % 4 {
                    0 => LnetType::Ack,
                    1 => LnetType::Put,
                    2 => LnetType::Get,
                    _ => LnetType::Reply,
                };
                let len = if matches!(t, LnetType::Ack | LnetType::Get) { 0 } else { (len % 700) as usize };
                Unit::Lnet { hdr: hdr(dest, t), payload: vec![0x5a; len], csum: csum && proto == Proto::V2 }
            }
        })
        .collect();
    let spec = StreamSpec {
        connreq: (role == Role::Passive).then_some(Connreq { nid: external, version: if proto == Proto::V4 { 2 } else { 1 } }),
        endian,
        hello: Hello {
            proto,
            src_nid: nid(0xcb00_710a, 0),
            dst_nid: if proto == Proto::V1 { Nid::ANY } else { external },
            src_pid: wire::PID_LUSTRE,
            dst_pid: 0,
            src_incarnation: 7,
            dst_incarnation: 0,
            ctype: 1,
            nips: 0,
        },
        units,
    };
    (spec, role)
}

fn hdr(dest: Nid, t: LnetType) -> LnetHdr {
    LnetHdr {
        dest_nid: dest,
        src_nid: nid(0xcb00_710a, 0),
        dest_pid: wire::PID_USERFLAG | 40001,
        src_pid: wire::PID_LUSTRE,
        msg_type: t as u32,
        payload_length: 0,
        body: [0x11; wire::LnetHdrLayout::BODY_LEN],
    }
}

/// Delivers `stream` cut by `cuts`, re-sending ranges as `resend` says; returns the bytes first
/// delivered at each offset and every copy made.
fn deliver(stream: &[u8], c: &Case, t: &mut Tracker, env: &mut MapEnv) -> (Vec<u8>, Vec<(usize, Vec<u8>)>) {
    let isn = 0xffff_fff0u32;
    let mut copies = Vec::new();
    let mut at = 0usize;
    let mut i = 0usize;
    while at < stream.len() {
        let cut = c.cuts.get(i % c.cuts.len().max(1)).copied().unwrap_or(0) as usize;
        let end = (at + 1 + cut).min(stream.len());
        let mut seg = stream[at..end].to_vec();
        segment::process(t, isn.wrapping_add(at as u32), seg.len() as u32, &mut VecPacket(&mut seg), env, 1 << 14);
        copies.push((at, seg));
        if let Some(&(back, len)) = c.resend.get(i) {
            let from = end.saturating_sub(back as usize);
            let to = (from + 1 + len as usize).min(end);
            let mut seg = stream[from..to].to_vec();
            segment::process(t, isn.wrapping_add(from as u32), seg.len() as u32, &mut VecPacket(&mut seg), env, 1 << 14);
            copies.push((from, seg));
        }
        at = end;
        i += 1;
    }
    let mut first = stream.to_vec();
    for (start, bytes) in copies.iter().rev() {
        first[*start..*start + bytes.len()].copy_from_slice(bytes);
    }
    (first, copies)
}

fuzz_target!(|c: Case| {
    let mut env = MapEnv { learn: c.learn, ..MapEnv::default() };
    if let Some(raw) = &c.raw {
        let mut t = Box::new(Tracker::new(if c.passive { Role::Passive } else { Role::Active }, 0xffff_fff0, LOCAL, nid(NAT, 0)));
        let (first, copies) = deliver(raw, &c, &mut t, &mut env);
        for (start, bytes) in &copies {
            assert_eq!(&first[*start..*start + bytes.len()], &bytes[..], "copies differ");
        }
        return;
    }
    let (spec, role) = build(&c);
    if c.static_map || spec.hello.proto == Proto::V1 {
        env.mappings.insert(nid(NAT, 0), 0);
    }
    let stream = spec.bytes();
    let want = lnat_testkit::expected(&stream, role, LOCAL, &env);
    let hint = env.mappings.keys().next_back().copied().unwrap_or(Nid(0));
    let mut t = Box::new(Tracker::new(role, 0xffff_fff0, LOCAL, hint));
    let (first, copies) = deliver(&stream, &c, &mut t, &mut env);
    for (start, bytes) in &copies {
        assert_eq!(&first[*start..*start + bytes.len()], &bytes[..], "copies of a byte differ");
    }
    assert!(!t.desynced(), "a valid stream was given up: {:?}", t.desync);
    if env.count(Note::Conflict) == 0 {
        assert!(first == want.bytes, "delivered bytes differ from the reference");
        assert_eq!(env.learned, want.learned);
    }
});
