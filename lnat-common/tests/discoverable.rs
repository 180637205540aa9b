//! The stream a server sends a NATed client: its ping replies get the DISCOVERY feature, so
//! that the client pushes to a server whose discovery is off (docs/discovery.md, section 6 and
//! "Rules for the egress datapath" rule 7, ingress rule I1). Nothing else changes but what the
//! ingress always rewrote (the NIDs naming the client by its external NID, with their V2
//! checksum compensations); V2 checksums stay valid; however the stream is cut into segments,
//! duplicated, lost or dropped after the datapath.

use lnat_common::{
    nid::Nid,
    ping, segment,
    tracker::{Direction, Note, Role, Tracker},
    wire::{self, Endian, Hello, LnetHdr, LnetType, Proto},
};
use lnat_testkit::{MapEnv, Receiver, Rng, StreamSpec, Unit, VecPacket, Weather};

const CLIENT: &str = "198.51.100.2@tcp";
const EXTERNAL: &str = "203.0.113.1@tcp";
const SERVER: &str = "203.0.113.10@tcp";
const ISN: u32 = 1000;

/// The ping target's sequence number in the ping information built here (entry 0's status).
const SEQNO: u32 = 7;

fn nid(s: &str) -> Nid {
    s.parse().expect("nid")
}

fn local() -> u32 {
    nid(CLIENT).addr()
}

/// What the server runs with discovery off: `NI_STATUS|RTE_DISABLED|MULTI_RAIL`, no DISCOVERY
/// (`api-ni.c:1909-1910`, `:2243-2246`).
const FEATURES: u32 = ping::feat::NI_STATUS | ping::feat::RTE_DISABLED | ping::feat::MULTI_RAIL;

/// An LNet message of `msg_type` from the server to the client, addressed as the server knows
/// it: by its external NID and NAT port.
fn msg(msg_type: LnetType, payload: Vec<u8>, csum: bool) -> Unit {
    let mut body = [0u8; wire::LnetHdrLayout::BODY_LEN];
    for (i, b) in body.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(29).wrapping_add(3);
    }
    if msg_type == LnetType::Put {
        // The reserved portal and the ping match bits: a push, were the server to send one.
        body[wire::LnetHdrLayout::PUT_MATCH_BITS..][..8]
            .copy_from_slice(&ping::MATCH_BITS.to_le_bytes());
        body[wire::LnetHdrLayout::PUT_PTL_INDEX..][..4]
            .copy_from_slice(&ping::PORTAL.to_le_bytes());
    }
    Unit::Lnet {
        hdr: LnetHdr {
            dest_nid: nid(EXTERNAL),
            src_nid: nid(SERVER),
            dest_pid: wire::PID_USERFLAG | 40001,
            src_pid: wire::PID_LUSTRE,
            msg_type: msg_type as u32,
            payload_length: 0,
            body,
        },
        payload,
        csum,
    }
}

/// What the server sends on a connection the client opened: its HELLO naming the client by its
/// external NID, then `units`.
fn server_stream(proto: Proto, endian: Endian, units: Vec<Unit>) -> StreamSpec {
    StreamSpec {
        connreq: None,
        endian,
        hello: Hello {
            proto,
            src_nid: nid(SERVER),
            dst_nid: nid(EXTERNAL),
            src_pid: wire::PID_LUSTRE,
            dst_pid: wire::PID_USERFLAG | 40001,
            src_incarnation: 0x18eb_1e4a,
            dst_incarnation: 0x0102_0304,
            ctype: 1,
            nips: 0,
        },
        units,
    }
}

/// A client that learns its external NID from the server's HELLO, as the datapath does.
/// The client's environment: its pushes leave naming it by the external NID.
fn env() -> MapEnv {
    MapEnv {
        learn: true,
        external: Some(nid(EXTERNAL)),
        ..MapEnv::default()
    }
}

/// What rule I1 must do to a message's DISCOVERY bit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Set it: a valid ping reply without it.
    Set,
    /// Leave it, wherever segments end.
    Keep,
    /// Ping information whose flaw shows only once this many payload bytes are in hand: the
    /// bit is decided as soon as the features byte is, so it is set when a segment ends
    /// between the two.
    SetIfDecidedBefore(usize),
}

/// The other byte order.
fn other(endian: Endian) -> Endian {
    match endian {
        Endian::Little => Endian::Big,
        Endian::Big => Endian::Little,
    }
}

/// Every kind of message the rule must tell apart. `cut_free` leaves out the ping information
/// whose outcome depends on where a segment ends.
fn mixed_units(endian: Endian, csum: bool, cut_free: bool) -> Vec<(Unit, Expect)> {
    use Expect::*;
    let server = [nid(SERVER)];
    let two = [nid(SERVER), nid("10.9.8.7@tcp1")];
    let good = lnat_testkit::ping_info(endian, FEATURES, SEQNO, &server);
    let reply = |p: Vec<u8>| msg(LnetType::Reply, p, csum);
    let with = |features| lnat_testkit::ping_info(endian, features, SEQNO, &server);
    let mut bad_magic = good.clone();
    bad_magic[1] ^= 0x20;
    // A bulk REPLY that starts like ping information but is longer than its entries.
    let mut long = good.clone();
    long.resize(1024, 0x5a);
    let mut units = vec![
        (msg(LnetType::Put, vec![0x5a; 100], csum), Keep),
        (reply(good.clone()), Set),
        (Unit::Noop, Keep),
        (reply(with(FEATURES | ping::feat::DISCOVERY)), Keep),
        // Bulk data the length of a two-entry reply.
        (reply((0..48u8).map(|i| i.wrapping_mul(71)).collect()), Keep),
        // Three entries, in the other byte order from the connection's.
        (
            reply(lnat_testkit::ping_info(
                other(endian),
                FEATURES,
                SEQNO,
                &two,
            )),
            Set,
        ),
        // Ping information in a PUT (the server's push, were its discovery on).
        (msg(LnetType::Put, good.clone(), csum), Keep),
        (reply(with(FEATURES | ping::feat::LARGE_ADDR)), Keep),
        (reply(with(FEATURES | ping::feat::PRIMARY_LARGE)), Keep),
        (reply(with(FEATURES & !ping::feat::NI_STATUS)), Keep),
        (reply(bad_magic), Keep),
        (reply(long), Keep),
        (msg(LnetType::Ack, vec![], csum), Keep),
        (
            reply(lnat_testkit::ping_info(endian, FEATURES, SEQNO, &two)),
            Set,
        ),
        (msg(LnetType::Get, vec![], csum), Keep),
    ];
    if !cut_free {
        let mut no_nis = good.clone();
        endian.put_u32(&mut no_nis, ping::NNIS, 0);
        let mut not_lo = lnat_testkit::ping_info(endian, FEATURES, SEQNO, &[ping::LO]);
        endian.put_u64(&mut not_lo, ping::HEAD_LEN, nid(SERVER).0);
        // Three entries' worth announced, two sent: a truncated reply.
        let mut truncated = lnat_testkit::ping_info(endian, FEATURES, SEQNO, &two);
        truncated.truncate(ping::HEAD_LEN + 2 * ping::NI_LEN);
        // Two entries announced, a third's worth of bytes more: not exactly the entries.
        let mut longer = good.clone();
        longer.extend([0; ping::NI_LEN]);
        units.extend([
            (reply(no_nis), SetIfDecidedBefore(ping::HEAD_LEN)),
            (reply(longer), SetIfDecidedBefore(ping::HEAD_LEN)),
            (reply(not_lo), SetIfDecidedBefore(ping::HEAD_LEN + 8)),
            (reply(truncated), SetIfDecidedBefore(ping::HEAD_LEN)),
            (msg(LnetType::Put, vec![1, 2, 3], csum), Keep),
        ]);
    }
    units
}

/// Where the payload of the unit starting at `start` begins.
fn payload_at(spec: &StreamSpec, start: usize) -> usize {
    let proto = spec.hello.proto;
    start + proto.ksock_len() + proto.lnet_hdr().len
}

/// The features byte holding DISCOVERY in ping information, from its magic.
fn features_at(payload: &[u8]) -> usize {
    if Endian::Little.u32(payload, ping::MAGIC_AT) == ping::MAGIC {
        ping::FEATURES
    } else {
        ping::FEATURES + 3
    }
}

/// What the client must receive when segments end at `ends` (stream offsets, sorted): the
/// reference rewrite of the NIDs (the ingress rule before I1), with DISCOVERY set in the
/// replies that get it. Also the bytes a checksum compensation may change (entry 1's
/// `ns_msg_size` in a checksummed reply whose bit is set; the checksum must then verify, which
/// fixes them), and how many bits are set.
fn expected(
    spec: &StreamSpec,
    expect: &[Expect],
    reference: &[u8],
    ends: &[usize],
) -> (Vec<u8>, Vec<usize>, usize) {
    let mut out = reference.to_vec();
    let mut may_differ = Vec::new();
    let mut set = 0;
    for (u, &start) in spec.unit_starts().iter().enumerate() {
        let Unit::Lnet { payload, csum, .. } = &spec.units[u] else {
            continue;
        };
        if expect[u] == Expect::Keep {
            continue;
        }
        let p = payload_at(spec, start);
        let f = features_at(payload);
        // The payload bytes in hand when the byte is decided: up to the end of the segment
        // that brings it, at most the fixed part and entry 0's NID.
        let have = ends
            .iter()
            .find(|&&e| e > p + f)
            .map_or(24, |&e| (e - p).min(24));
        let sets = match expect[u] {
            Expect::SetIfDecidedBefore(k) => have < k,
            _ => true,
        };
        if sets {
            out[p + f] ^= ping::feat::DISCOVERY as u8;
            set += 1;
            if *csum {
                let at = p + ping::HEAD_LEN + ping::NI_LEN + ping::NI_MSG_SIZE;
                may_differ.extend(at..at + 4);
            }
        }
    }
    (out, may_differ, set)
}

/// The reference rewrite of the NIDs alone.
fn reference(stream: &[u8]) -> Vec<u8> {
    let r = lnat_testkit::expected(stream, Role::Active, local(), &env());
    assert_eq!(r.desync_at, None);
    assert_eq!(r.learned, vec![nid(EXTERNAL)]);
    r.bytes
}

/// Runs `stream` through an incoming tracker in segments ending at `cuts`.
fn receive(stream: &[u8], cuts: &[usize], env: &mut MapEnv) -> (Vec<u8>, Box<Tracker>) {
    let mut t = Box::new(Tracker::new(Role::Active, ISN, local(), Nid(0)));
    let mut out = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain([&stream.len()]) {
        let mut seg = stream[from..to].to_vec();
        segment::process(
            &mut t,
            ISN + from as u32,
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

fn assert_received(got: &[u8], want: &[u8], may_differ: &[usize], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for i in 0..got.len() {
        if got[i] != want[i] && !may_differ.contains(&i) {
            panic!("{what}: byte {i} is {:#04x}, want {:#04x}", got[i], want[i]);
        }
    }
}

/// [`assert_received`] for long streams: `may_differ` sorted.
fn assert_received_sorted(got: &[u8], want: &[u8], may_differ: &[usize], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for i in 0..got.len() {
        if got[i] != want[i] && may_differ.binary_search(&i).is_err() {
            panic!("{what}: byte {i} is {:#04x}, want {:#04x}", got[i], want[i]);
        }
    }
}

/// Every message's dest NID names the client by its own NID once received, as the ingress did
/// before rule I1.
fn assert_dest_nids(got: &[u8], spec: &StreamSpec, what: &str) {
    let proto = spec.hello.proto;
    let form = proto.lnet_form();
    for (u, start) in spec.unit_starts().into_iter().enumerate() {
        if let Unit::Lnet { .. } = spec.units[u] {
            let at = start + proto.ksock_len() + proto.lnet_hdr().dest_nid;
            let dest = form.decode(&got[at..at + form.size()]);
            assert_eq!(dest, Some(nid(CLIENT)), "{what}: unit {u}");
        }
    }
}

const CONNECTIONS: [(Proto, Endian, bool); 6] = [
    (Proto::V3, Endian::Little, false),
    (Proto::V3, Endian::Big, false),
    (Proto::V2, Endian::Little, true),
    (Proto::V2, Endian::Big, true),
    (Proto::V2, Endian::Little, false),
    (Proto::V4, Endian::Big, false),
];

/// One cut anywhere, and one-byte segments: the replies that qualify get the bit and nothing
/// else changes in them; the rest is the ingress rewrite as before; checksums verify.
#[test]
fn a_ping_reply_gets_discovery_and_nothing_else_changes_in_every_cut() {
    for (proto, endian, csum) in CONNECTIONS {
        let (units, expect): (Vec<_>, Vec<_>) =
            mixed_units(endian, csum, false).into_iter().unzip();
        let messages = units
            .iter()
            .filter(|u| matches!(u, Unit::Lnet { .. }))
            .count();
        let spec = server_stream(proto, endian, units);
        let stream = spec.bytes();
        let refd = reference(&stream);
        assert_ne!(refd, stream, "the NIDs are rewritten");
        let one_byte: Vec<usize> = (1..stream.len()).collect();
        let cuts = (0..stream.len()).map(|c| vec![c]).chain([one_byte, vec![]]);
        for cut in cuts {
            let what = match cut.len() {
                0 => format!("{proto:?} {endian:?} csum {csum}, whole"),
                1 => format!("{proto:?} {endian:?} csum {csum}, cut at {}", cut[0]),
                _ => format!("{proto:?} {endian:?} csum {csum}, one-byte segments"),
            };
            let (want, may_differ, set) = expected(&spec, &expect, &refd, &cut);
            let mut env = env();
            let (got, t) = receive(&stream, &cut, &mut env);
            assert_received(&got, &want, &may_differ, &what);
            assert_dest_nids(&got, &spec, &what);
            assert!(!t.desynced(), "{what}");
            assert_eq!(t.cursor(), ISN + stream.len() as u32, "{what}");
            assert!(set >= 3, "{what}");
            assert_eq!(env.count(Note::Discoverable), set, "{what}");
            // The HELLO's dst_nid and every message's dest_nid.
            assert_eq!(env.count(Note::Rewrote), 1 + messages, "{what}");
            assert_eq!(env.count(Note::Conflict), 0, "{what}");
            if csum {
                // A header compensation per message, a payload one per bit set.
                assert_eq!(env.count(Note::Compensated), messages + set, "{what}");
                assert_eq!(
                    lnat_testkit::check_csums(&got, &spec),
                    Ok(messages),
                    "{what}"
                );
            } else {
                assert_eq!(env.count(Note::Compensated), 0, "{what}");
            }
        }
    }
}

/// In one segment, the flawed ping information is seen whole: nothing of it changes, and the
/// valid replies get the bit in both byte orders.
#[test]
fn malformed_ping_replies_pass_unchanged_when_seen_whole() {
    for (proto, endian, csum) in CONNECTIONS {
        let (units, expect): (Vec<_>, Vec<_>) =
            mixed_units(endian, csum, false).into_iter().unzip();
        let spec = server_stream(proto, endian, units);
        let stream = spec.bytes();
        let refd = reference(&stream);
        let mut env = env();
        let (got, _) = receive(&stream, &[], &mut env);
        let starts = spec.unit_starts();
        for (u, &start) in starts.iter().enumerate() {
            let unit = lnat_testkit::encode_unit(proto, endian, &spec.units[u]);
            assert_eq!(
                stream[start..start + unit.len()],
                unit,
                "unit {u} starts at {start}"
            );
        }
        for (u, e) in expect.iter().enumerate() {
            let Unit::Lnet { payload, .. } = &spec.units[u] else {
                continue;
            };
            let p = payload_at(&spec, starts[u]);
            let end = p + payload.len();
            let what = format!("{proto:?} {endian:?} csum {csum}, unit {u} ({e:?})");
            // The header as the ingress always rewrote it.
            assert_eq!(got[starts[u]..p], refd[starts[u]..p], "{what}");
            if *e == Expect::Set {
                let f = features_at(payload);
                assert_eq!(
                    got[p + f],
                    stream[p + f] | ping::feat::DISCOVERY as u8,
                    "{what}"
                );
                let comp = p + ping::HEAD_LEN + ping::NI_LEN + ping::NI_MSG_SIZE;
                for i in p..end {
                    if i != p + f && !(csum && (comp..comp + 4).contains(&i)) {
                        assert_eq!(got[i], stream[i], "{what}: payload byte {}", i - p);
                    }
                }
                if csum {
                    assert_ne!(got[comp..comp + 4], stream[comp..comp + 4], "{what}");
                }
            } else {
                assert_eq!(got[p..end], stream[p..end], "{what}");
            }
        }
        if csum {
            assert!(lnat_testkit::check_csums(&got, &spec).is_ok());
        }
        assert_eq!(env.count(Note::Discoverable), 3);
    }
}

/// Through a bad network every copy of a reply carries the same bytes, the client receives the
/// rule's rewrite, and checksums verify. Flawed ping information may get the bit or not,
/// depending on where segments end, but every copy agrees.
#[test]
fn every_copy_of_a_ping_reply_is_rewritten_alike_through_a_bad_network() {
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
        let mut units = Vec::new();
        for _ in 0..1 + rng.below(12) {
            units.extend(mixed_units(endian, csum, rng.chance(70)));
        }
        let (units, expect): (Vec<_>, Vec<_>) = units.into_iter().unzip();
        let spec = server_stream(proto, endian, units);
        let stream = spec.bytes();
        let refd = reference(&stream);
        // Where segments end is the network's choice: take the flawed replies either way.
        let (mut want, mut may_differ, set) = expected(&spec, &expect, &refd, &[]);
        let starts = spec.unit_starts();
        let mut flawed = 0;
        for (u, e) in expect.iter().enumerate() {
            if let (Expect::SetIfDecidedBefore(_), Unit::Lnet { payload, .. }) = (e, &spec.units[u])
            {
                let p = payload_at(&spec, starts[u]);
                may_differ.push(p + features_at(payload));
                let comp = p + ping::HEAD_LEN + ping::NI_LEN + ping::NI_MSG_SIZE;
                may_differ.extend(comp..comp + 4);
                flawed += 1;
            }
        }
        let w = Weather::random(&mut rng);
        let rx = Receiver {
            role: Role::Active,
            local: local(),
            env: env(),
            hint: Nid(0),
            socket: rng.chance(50),
            dir: Direction::In,
        };
        let d = lnat_testkit::deliver(&stream, rng.bits() as u32, rx, w, &mut rng);
        let what = format!("seed {seed}");
        may_differ.sort_unstable();
        assert_received_sorted(&d.received, &want, &may_differ, &what);
        assert_dest_nids(&d.received, &spec, &what);
        for (start, bytes) in &d.copies {
            let end = start + bytes.len();
            assert_eq!(
                bytes[..],
                d.received[*start..end],
                "{what}: copy at {start}"
            );
        }
        if csum {
            assert!(
                lnat_testkit::check_csums(&d.received, &spec).is_ok(),
                "{what}"
            );
        }
        // Each reply is decided once, however many copies of it come.
        let noted = d.env.count(Note::Discoverable);
        assert!((set..=set + flawed).contains(&noted), "{what}: {noted}");
        assert!(!d.tracker.desynced(), "{what}");
        // The flawed replies as received: the bit counted is the bit set.
        for (u, e) in expect.iter().enumerate() {
            if let (Expect::SetIfDecidedBefore(_), Unit::Lnet { payload, .. }) = (e, &spec.units[u])
            {
                let at = payload_at(&spec, starts[u]) + features_at(payload);
                if d.received[at] != stream[at] {
                    want[at] = d.received[at];
                }
            }
        }
        let changed = want
            .iter()
            .zip(&refd)
            .filter(|(a, b)| (**a ^ **b) == ping::feat::DISCOVERY as u8)
            .count();
        assert_eq!(changed, noted, "{what}");
        quiet += d.quiet;
    }
    assert!(quiet > 0);
}
