//! The stream a NATed client sends: its discovery pushes name it by its external NID and
//! without the DISCOVERY feature (docs/discovery.md, "Rules for the egress datapath"), V2
//! checksums stay valid, and nothing else it sends changes, however it is cut into segments,
//! duplicated, lost or dropped after the datapath.

use lnat_common::{
    nid::Nid,
    ping, segment,
    tracker::{Direction, Note, Role, Tracker},
    wire::{self, Connreq, Endian, Hello, LnetHdr, LnetType, Proto},
};
use lnat_testkit::{MapEnv, Receiver, Rng, StreamSpec, Unit, VecPacket, Weather};

const CLIENT: &str = "198.51.100.2@tcp";
const EXTERNAL: &str = "203.0.113.1@tcp";
const SERVER: &str = "203.0.113.10@tcp";

/// The ping target's sequence number in the ping information built here (entry 0's status).
const SEQNO: u32 = 7;

fn nid(s: &str) -> Nid {
    s.parse().expect("nid")
}

fn local() -> u32 {
    nid(CLIENT).addr()
}

/// A PUT from the client to the server on `portal` with `bits`.
fn put(portal: u32, bits: u64, payload: Vec<u8>, csum: bool) -> Unit {
    let mut body = [0u8; wire::LnetHdrLayout::BODY_LEN];
    body[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    body[wire::LnetHdrLayout::PUT_MATCH_BITS..][..8].copy_from_slice(&bits.to_le_bytes());
    body[wire::LnetHdrLayout::PUT_PTL_INDEX..][..4].copy_from_slice(&portal.to_le_bytes());
    Unit::Lnet {
        hdr: LnetHdr {
            dest_nid: nid(SERVER),
            src_nid: nid(CLIENT),
            dest_pid: wire::PID_LUSTRE,
            src_pid: wire::PID_LUSTRE,
            msg_type: LnetType::Put as u32,
            payload_length: 0,
            body,
        },
        payload,
        csum,
    }
}

/// A discovery push of `info`.
fn push(info: Vec<u8>, csum: bool) -> Unit {
    put(ping::PORTAL, ping::MATCH_BITS, info, csum)
}

/// What the client sends on a connection it opened: the acceptor request, its HELLO, `units`.
fn client_stream(proto: Proto, endian: Endian, units: Vec<Unit>) -> StreamSpec {
    StreamSpec {
        connreq: Some(Connreq {
            nid: nid(SERVER),
            version: if proto == Proto::V4 { 2 } else { 1 },
        }),
        endian,
        hello: Hello {
            proto,
            src_nid: nid(CLIENT),
            dst_nid: if proto == Proto::V1 {
                Nid::ANY
            } else {
                nid(SERVER)
            },
            src_pid: wire::PID_LUSTRE,
            dst_pid: wire::PID_LUSTRE,
            src_incarnation: 0x18eb_1e4a,
            dst_incarnation: 0,
            ctype: 1,
            nips: 0,
        },
        units,
    }
}

fn env() -> MapEnv {
    MapEnv {
        external: Some(nid(EXTERNAL)),
        ..MapEnv::default()
    }
}

/// The stream as it must leave: in each push at `pushes` (unit indices), `CLIENT` entries made
/// `EXTERNAL` and DISCOVERY cleared. Checksum compensations are not predicted: `may_differ`
/// lists the `ns_msg_size` words a checksummed push may change.
fn expected(spec: &StreamSpec, pushes: &[usize]) -> (Vec<u8>, Vec<usize>) {
    let mut out = spec.bytes();
    let starts = spec.unit_starts();
    let hdr = spec.hello.proto.ksock_len() + spec.hello.proto.lnet_hdr().len;
    let mut may_differ = Vec::new();
    for &u in pushes {
        let Unit::Lnet { payload, csum, .. } = &spec.units[u] else {
            panic!("not a push");
        };
        let p = starts[u] + hdr;
        let endian = if Endian::Little.u32(payload, ping::MAGIC_AT) == ping::MAGIC {
            Endian::Little
        } else {
            Endian::Big
        };
        let features = endian.u32(payload, ping::FEATURES) & !ping::feat::DISCOVERY;
        endian.put_u32(&mut out, p + ping::FEATURES, features);
        let nnis = endian.u32(payload, ping::NNIS) as usize;
        for i in 1..nnis {
            let at = p + ping::HEAD_LEN + i * ping::NI_LEN;
            if endian.u64(&out, at) == nid(CLIENT).0 {
                endian.put_u64(&mut out, at, nid(EXTERNAL).0);
            }
            if *csum {
                may_differ.extend(at + ping::NI_MSG_SIZE..at + ping::NI_LEN);
            }
        }
    }
    (out, may_differ)
}

/// Runs `stream` through an outgoing tracker in segments ending at `cuts`.
fn send(stream: &[u8], cuts: &[usize], env: &mut MapEnv) -> (Vec<u8>, Box<Tracker>) {
    let mut t = Box::new(Tracker::outgoing(Role::Active, 1000, local()));
    let mut out = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain([&stream.len()]) {
        let mut seg = stream[from..to].to_vec();
        segment::process(
            &mut t,
            1000 + from as u32,
            seg.len() as u32,
            &mut VecPacket(&mut seg),
            env,
            1 << 16,
        );
        out.extend(seg);
        from = to;
    }
    (out, t)
}

fn assert_sent(got: &[u8], want: &[u8], may_differ: &[usize], what: &str) {
    assert_eq!(got.len(), want.len());
    for i in 0..got.len() {
        if got[i] != want[i] && !may_differ.contains(&i) {
            panic!("{what}: byte {i} is {:#04x}, want {:#04x}", got[i], want[i]);
        }
    }
}

fn mixed_units(csum: bool, endian: Endian) -> (Vec<Unit>, Vec<usize>) {
    let features = ping::feat::NI_STATUS
        | ping::feat::MULTI_RAIL
        | ping::feat::RTE_DISABLED
        | ping::feat::DISCOVERY;
    let units = vec![
        put(4, 7, vec![0x5a; 100], csum),
        push(
            lnat_testkit::ping_info(endian, features, SEQNO, &[nid(CLIENT)]),
            csum,
        ),
        Unit::Noop,
        put(
            12,
            1 << 40,
            lnat_testkit::ping_info(endian, features, SEQNO, &[nid(CLIENT)]),
            csum,
        ),
        // Two NIs, ours second; and a push without DISCOVERY.
        push(
            lnat_testkit::ping_info(
                endian,
                features,
                SEQNO,
                &[nid("10.9.8.7@tcp1"), nid(CLIENT)],
            ),
            csum,
        ),
        push(
            lnat_testkit::ping_info(
                endian,
                features & !ping::feat::DISCOVERY,
                SEQNO,
                &[nid(CLIENT)],
            ),
            csum,
        ),
        put(4, 9, vec![], csum),
    ];
    (units, vec![1, 4, 5])
}

#[test]
fn a_push_names_the_client_by_its_external_nid_and_drops_discovery_in_every_cut() {
    for (proto, endian, csum) in [
        (Proto::V3, Endian::Little, false),
        (Proto::V3, Endian::Big, false),
        (Proto::V2, Endian::Little, true),
        (Proto::V2, Endian::Big, true),
    ] {
        let (units, pushes) = mixed_units(csum, endian);
        let spec = client_stream(proto, endian, units);
        let stream = spec.bytes();
        let (want, may_differ) = expected(&spec, &pushes);
        assert_ne!(want, stream);
        for cut in 0..stream.len() {
            let mut env = env();
            let (got, t) = send(&stream, &[cut], &mut env);
            let what = format!("{proto:?} {endian:?} cut at {cut}");
            assert_sent(&got, &want, &may_differ, &what);
            assert!(!t.desynced(), "{what}");
            assert_eq!(t.cursor(), 1000 + stream.len() as u32, "{what}");
            assert_eq!(env.count(Note::Rewrote), 3, "{what}");
            assert_eq!(env.count(Note::Undiscovering), 2, "{what}");
            assert_eq!(env.count(Note::Conflict), 0, "{what}");
            if csum {
                // Every LNet message (six) checksummed and still right.
                assert_eq!(lnat_testkit::check_csums(&got, &spec), Ok(6), "{what}");
            }
        }
    }
}

/// No external NID known, or ping information a server would not take: nothing changes. The
/// DISCOVERY bit is decided as soon as its byte is seen, on the bytes in hand: a segment may
/// end there. So ping information whose entry count or entry 0 shows it bad only after that
/// loses the bit when a segment ends between the two, and nothing else, in a push the server
/// drops (`peer.c:2719-2725`).
#[test]
fn without_an_external_nid_or_with_bad_ping_information_the_nids_stay() {
    let features = ping::feat::NI_STATUS | ping::feat::MULTI_RAIL | ping::feat::DISCOVERY;
    let good = lnat_testkit::ping_info(Endian::Little, features, SEQNO, &[nid(CLIENT)]);
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 1;
    let mut no_status = good.clone();
    Endian::Little.put_u32(
        &mut no_status,
        ping::FEATURES,
        features & !ping::feat::NI_STATUS,
    );
    let mut too_many = good.clone();
    Endian::Little.put_u32(&mut too_many, ping::NNIS, 3);
    let mut not_lo = good.clone();
    not_lo[ping::HEAD_LEN..][..8].copy_from_slice(&nid(CLIENT).0.to_le_bytes());
    // (what, ping information, env, whether a cut after the features byte clears the bit)
    let cases = [
        ("no external NID", good.clone(), MapEnv::default(), false),
        ("bad magic", bad_magic, env(), false),
        ("no NI_STATUS", no_status, env(), false),
        ("more entries than the payload holds", too_many, env(), true),
        ("entry 0 is not 0@lo", not_lo, env(), true),
    ];
    for (what, info, env, early) in cases {
        let spec = client_stream(
            Proto::V3,
            Endian::Little,
            vec![push(info, false), put(4, 1, vec![1, 2, 3], false)],
        );
        let stream = spec.bytes();
        let features_at = spec.unit_starts()[0] + 96 + ping::FEATURES;
        for cut in [None, Some(features_at + 1)] {
            let mut env = env.clone();
            let mut want = stream.clone();
            if early && cut.is_some() {
                want[features_at] &= !(ping::feat::DISCOVERY as u8);
            }
            let (got, t) = send(&stream, cut.as_slice(), &mut env);
            let what = format!("{what}, cut {cut:?}");
            assert_eq!(got, want, "{what}");
            assert_eq!(env.count(Note::Rewrote), 0, "{what}");
            assert_eq!(
                env.count(Note::Undiscovering),
                usize::from(want != stream),
                "{what}"
            );
            assert!(!t.desynced(), "{what}");
            assert_eq!(t.cursor(), 1000 + stream.len() as u32, "{what}");
        }
    }
}

#[test]
fn every_copy_of_a_push_is_rewritten_alike_through_a_bad_network() {
    let mut quiet = 0;
    for seed in 0..200u64 {
        let mut rng = Rng::new(seed);
        let endian = if rng.chance(50) {
            Endian::Little
        } else {
            Endian::Big
        };
        let csum = rng.chance(50);
        let proto = if csum { Proto::V2 } else { Proto::V3 };
        let (mut units, mut pushes) = mixed_units(csum, endian);
        for _ in 0..rng.below(30) {
            let (more, at) = mixed_units(csum, endian);
            pushes.extend(at.iter().map(|i| i + units.len()));
            units.extend(more);
        }
        let spec = client_stream(proto, endian, units);
        let stream = spec.bytes();
        let (want, may_differ) = expected(&spec, &pushes);
        let w = Weather::random(&mut rng);
        let rx = Receiver {
            role: Role::Active,
            local: local(),
            env: env(),
            hint: Nid(0),
            socket: rng.chance(50),
            dir: Direction::Out,
        };
        let d = lnat_testkit::deliver(&stream, rng.bits() as u32, rx, w, &mut rng);
        assert_sent(&d.received, &want, &may_differ, &format!("seed {seed}"));
        for (start, bytes) in &d.copies {
            let end = start + bytes.len();
            assert_sent(
                bytes,
                &d.received[*start..end],
                &[],
                &format!("seed {seed} copy"),
            );
        }
        if csum {
            assert!(
                lnat_testkit::check_csums(&d.received, &spec).is_ok(),
                "seed {seed}"
            );
        }
        assert!(!d.tracker.desynced(), "seed {seed}");
        quiet += d.quiet;
    }
    assert!(quiet > 0);
}
