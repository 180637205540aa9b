//! The tracker against the specification: vectors from docs/protocol.md, every split position, and
//! random streams delivered through random networks, compared with the reference rewrite.

use lnat_common::{
    nid::Nid,
    segment,
    tracker::{Admit, Desync, Direction, Note, Role, Tracker},
    wire::{Endian, Proto},
};
use lnat_testkit::{Cast, MapEnv, Receiver, Rng, Unit, VecPacket, Weather};
use proptest::prelude::*;

fn nid(s: &str) -> Nid {
    s.parse().unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

const LOCAL: u32 = 0xc633_6402; // 198.51.100.2

/// Server HELLO naming us 203.0.113.1@tcp, then the PUT of docs/protocol.md.
fn vector_stream() -> Vec<u8> {
    let mut s = hex(
        "63 69 72 45 03 00 00 00 0a 71 00 cb 00 00 02 00 01 71 00 cb 00 00 02 00 39 30 00 00 \
         00 00 00 00 8d 41 18 17 4a 1e eb 18 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00",
    );
    s.extend(hex(
        "c1 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         01 71 00 cb 00 00 02 00 0a 71 00 cb 00 00 02 00 \
         41 9c 00 80 39 30 00 00 01 00 00 00 10 00 00 00 \
         ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 88 77 66 55 44 33 22 11 \
         00 00 00 00 00 00 00 00 04 00 00 00 00 00 00 00 \
         00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f",
    ));
    s
}

/// The same stream as lnat must deliver it: only HELLO bytes 16..19 and message bytes 24..27.
fn vector_expected() -> Vec<u8> {
    let mut s = vector_stream();
    s[16..20].copy_from_slice(&[0x02, 0x64, 0x33, 0xc6]);
    s[56 + 24..56 + 28].copy_from_slice(&[0x02, 0x64, 0x33, 0xc6]);
    s
}

fn learning_env() -> MapEnv {
    MapEnv {
        learn: true,
        ..MapEnv::default()
    }
}

/// The first guess a new flow gets, as the datapath takes it from its config: the most recent
/// external NID (here, any mapped one).
fn hint_of(env: &MapEnv) -> Nid {
    env.mappings.keys().next_back().copied().unwrap_or(Nid(0))
}

/// Feeds `stream` cut at `cuts` (sorted offsets) and returns the bytes passed.
fn run_cut(stream: &[u8], cuts: &[usize], env: &mut MapEnv) -> Vec<u8> {
    let isn = 0xffff_ff00; // wraps inside the stream
    let mut t = Box::new(Tracker::new(Role::Active, isn, LOCAL, hint_of(env)));
    let mut out = Vec::new();
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(stream.len());
    for w in bounds.windows(2) {
        let mut seg = stream[w[0]..w[1]].to_vec();
        let seq = isn.wrapping_add(w[0] as u32);
        let a = segment::process(
            &mut t,
            seq,
            seg.len() as u32,
            &mut VecPacket(&mut seg),
            env,
            1 << 12,
        );
        assert!(
            matches!(a, Admit::Track { miss: false } | Admit::Pass),
            "{a:?}"
        );
        out.extend(seg);
    }
    out
}

#[test]
fn the_wire_vector_is_rewritten_exactly() {
    let mut env = learning_env();
    assert_eq!(run_cut(&vector_stream(), &[], &mut env), vector_expected());
    assert_eq!(env.learned, vec![nid("203.0.113.1@tcp")]);
    assert_eq!(env.count(Note::Rewrote), 2);
}

#[test]
fn every_single_split_gives_the_same_bytes() {
    let stream = vector_stream();
    for cut in 1..stream.len() {
        let mut env = learning_env();
        assert_eq!(
            run_cut(&stream, &[cut], &mut env),
            vector_expected(),
            "cut at {cut}"
        );
        assert_eq!(env.count(Note::Conflict), 0, "cut at {cut}");
    }
}

#[test]
fn every_pair_of_splits_and_one_byte_segments() {
    let stream = vector_stream();
    for a in 1..stream.len() {
        for b in a + 1..stream.len().min(a + 12) {
            let mut env = learning_env();
            assert_eq!(
                run_cut(&stream, &[a, b], &mut env),
                vector_expected(),
                "cuts {a} {b}"
            );
        }
    }
    let all: Vec<usize> = (1..stream.len()).collect();
    let mut env = learning_env();
    assert_eq!(run_cut(&stream, &all, &mut env), vector_expected());
}

/// The stream of docs/protocol.md from a big-endian server: HELLO and ksock headers
/// byte-swapped, LNet headers little-endian as on every connection (`lnet_hdr_to_nid4`). A
/// PUT, a NOOP and the PUT again.
fn swapped_stream() -> Vec<u8> {
    let mut s = hex(
        "45 72 69 63 00 00 00 03 00 02 00 00 cb 00 71 0a 00 02 00 00 cb 00 71 01 00 00 30 39 \
         00 00 00 00 18 eb 1e 4a 17 18 41 8d 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00",
    );
    let put = hex(
        "00 00 00 c1 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         01 71 00 cb 00 00 02 00 0a 71 00 cb 00 00 02 00 \
         41 9c 00 80 39 30 00 00 01 00 00 00 10 00 00 00 \
         ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 88 77 66 55 44 33 22 11 \
         00 00 00 00 00 00 00 00 04 00 00 00 00 00 00 00 \
         00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f",
    );
    s.extend(&put);
    s.extend(hex(
        "00 00 00 c0 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
    ));
    s.extend(&put);
    s
}

/// A big-endian server's HELLO dst_nid is rewritten in its order (address at bytes 20..24), each
/// PUT's dest_nid as LE (first four bytes), and the LE payload_length frames the next message.
#[test]
fn a_big_endian_peer_sends_little_endian_lnet_headers() {
    let stream = swapped_stream();
    let mut want = stream.clone();
    want[20..24].copy_from_slice(&[0xc6, 0x33, 0x64, 0x02]);
    let second = 56 + 24 + 72 + 16 + 24;
    for put in [56, second] {
        want[put + 24..put + 28].copy_from_slice(&[0x02, 0x64, 0x33, 0xc6]);
    }
    for cut in 1..stream.len() {
        let mut env = learning_env();
        assert_eq!(run_cut(&stream, &[cut], &mut env), want, "cut at {cut}");
        assert_eq!(env.learned, vec![nid("203.0.113.1@tcp")], "cut at {cut}");
        assert_eq!(env.count(Note::Rewrote), 3, "cut at {cut}");
        assert_eq!(env.count(Note::Conflict), 0, "cut at {cut}");
        assert!(
            !env.notes.iter().any(|n| matches!(n, Note::Desynced(_))),
            "cut at {cut}: {:?}",
            env.notes
        );
    }
    let env = learning_env();
    let reference = lnat_testkit::expected(&stream, Role::Active, LOCAL, &env);
    assert_eq!((reference.bytes, reference.desync_at), (want, None));
}

#[test]
fn without_learning_only_static_mappings_apply() {
    let mut env = MapEnv::default();
    assert_eq!(run_cut(&vector_stream(), &[], &mut env), vector_stream());
    let mut env = MapEnv::default();
    env.mappings.insert(nid("203.0.113.1@tcp"), 0);
    assert_eq!(
        run_cut(&vector_stream(), &[20], &mut env),
        vector_expected()
    );
    // An explicit local address wins over the connection's own.
    let mut env = MapEnv::default();
    env.mappings.insert(nid("203.0.113.1@tcp"), 0x0a00_0005);
    let out = run_cut(&vector_stream(), &[], &mut env);
    assert_eq!(out[16..20], [0x05, 0x00, 0x00, 0x0a]);
}

#[test]
fn a_keepport_stream_passes_unchanged() {
    // The server names us by our own NID: nothing to learn or rewrite.
    let mut s = vector_stream();
    s[16..20].copy_from_slice(&[0x02, 0x64, 0x33, 0xc6]);
    s[56 + 24..56 + 28].copy_from_slice(&[0x02, 0x64, 0x33, 0xc6]);
    let mut env = learning_env();
    assert_eq!(run_cut(&s, &[30, 90], &mut env), s);
    assert!(env.learned.is_empty());
}

/// Feeds `stream` in one segment; returns why the tracker gave up, checking that nothing but the
/// HELLO dst_nid and the first message's dest_nid (both before any later field can show the
/// header bad) changed.
fn desync_reason(stream: &[u8], role: Role) -> Option<Desync> {
    let mut t = Box::new(Tracker::new(role, 1000, LOCAL, Nid(0)));
    let mut env = learning_env();
    let mut seg = stream.to_vec();
    segment::process(
        &mut t,
        1000,
        seg.len() as u32,
        &mut VecPacket(&mut seg),
        &mut env,
        1 << 12,
    );
    for (i, (a, b)) in seg.iter().zip(stream).enumerate() {
        assert!(
            a == b || (16..20).contains(&i) || (80..84).contains(&i),
            "byte {i} changed"
        );
    }
    Desync::from_u8(t.desync)
}

#[test]
fn bad_input_desyncs_with_a_reason() {
    let garbage: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(
        desync_reason(&garbage, Role::Active),
        Some(Desync::BadMagic)
    );
    assert_eq!(
        desync_reason(&garbage, Role::Passive),
        Some(Desync::BadMagic)
    );
    let mut bad_version = vector_stream();
    bad_version[4] = 9;
    assert_eq!(
        desync_reason(&bad_version, Role::Active),
        Some(Desync::BadVersion)
    );
    let mut bad_type = vector_stream();
    bad_type[56] = 0xc5;
    assert_eq!(
        desync_reason(&bad_type, Role::Active),
        Some(Desync::BadType)
    );
    let mut too_long = vector_stream();
    too_long[56 + 52..56 + 56].copy_from_slice(&(0x0010_0001u32).to_le_bytes());
    assert_eq!(
        desync_reason(&too_long, Role::Active),
        Some(Desync::TooLong)
    );
    let mut many_ips = vector_stream();
    many_ips[52] = 17;
    assert_eq!(
        desync_reason(&many_ips, Role::Active),
        Some(Desync::TooManyIps)
    );
    // A truncated header is simply waited for.
    assert_eq!(desync_reason(&vector_stream()[..70], Role::Active), None);
}

#[test]
fn a_segment_past_the_cursor_is_dropped_and_one_before_it_is_not() {
    let stream = vector_stream();
    let mut t = Box::new(Tracker::new(Role::Active, 0, LOCAL, Nid(0)));
    let mut env = learning_env();
    let mut tail = stream[60..].to_vec();
    let a = segment::process(
        &mut t,
        60,
        tail.len() as u32,
        &mut VecPacket(&mut tail),
        &mut env,
        64,
    );
    assert_eq!(a, Admit::Drop);
    let mut head = stream[..60].to_vec();
    let a = segment::process(&mut t, 0, 60, &mut VecPacket(&mut head), &mut env, 64);
    assert_eq!(a, Admit::Track { miss: false });
    let mut tail = stream[56..].to_vec();
    segment::process(
        &mut t,
        56,
        tail.len() as u32,
        &mut VecPacket(&mut tail),
        &mut env,
        64,
    );
    assert_eq!(tail, vector_expected()[56..]);
    // A duplicate of the HELLO, after the fact, gets the same rewrite.
    let mut again = stream[..56].to_vec();
    segment::process(&mut t, 0, 56, &mut VecPacket(&mut again), &mut env, 64);
    assert_eq!(again, vector_expected()[..56]);
}

/// The NIDs of every generated stream.
fn cast() -> Cast {
    Cast {
        peer: nid("203.0.113.10@tcp"),
        external: nid("203.0.113.1@tcp"),
        local: Nid::new(LOCAL, 2, 0),
    }
}

/// NIDs a server may address us by: ours, the NAT's, and strangers whose first and last octets
/// differ from the NAT's (so that no prefix of theirs is the NAT's, in any byte order).
fn lnet_dests(c: Cast) -> Vec<Nid> {
    vec![
        c.external,
        c.external,
        c.local,
        nid("10.9.8.7@tcp"),
        nid("192.0.2.77@tcp1"),
        nid("203.0.113.9@tcp4"),
    ]
}

fn protos() -> impl Strategy<Value = (Proto, Endian)> {
    prop_oneof![
        Just((Proto::V1, Endian::Little)),
        Just((Proto::V2, Endian::Little)),
        Just((Proto::V2, Endian::Big)),
        Just((Proto::V3, Endian::Little)),
        Just((Proto::V3, Endian::Big)),
        Just((Proto::V4, Endian::Little)),
        Just((Proto::V4, Endian::Big)),
    ]
}

fn weather() -> impl Strategy<Value = Weather> {
    (
        1usize..300,
        0u64..8,
        0u64..10,
        0u64..15,
        0u64..50,
        2u64..30,
        any::<bool>(),
    )
        .prop_map(
            |(max_seg, loss, drop_after, dup, coalesce, recovery, sack)| Weather {
                max_seg,
                loss,
                drop_after,
                dup,
                coalesce,
                recovery,
                sack,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Any LNet stream, any segmentation, with loss, duplication, retransmission and drops after
    /// the datapath: the receiver gets the reference rewrite, every copy of a byte is the same,
    /// and every checksum still verifies.
    #[test]
    fn any_delivery_gives_the_reference_rewrite(
        seed in any::<u64>(),
        (proto, endian) in protos(),
        passive in any::<bool>(),
        learn in any::<bool>(),
        static_map in any::<bool>(),
        w in weather(),
    ) {
        let role = if passive { Role::Passive } else { Role::Active };
        let mut rng = Rng::new(seed);
        let c = cast();
        let spec = lnat_testkit::random_stream(&mut rng, role, proto, endian, c, &lnet_dests(c));
        let stream = spec.bytes();
        let mut env = MapEnv { learn, ..MapEnv::default() };
        if static_map || (proto == Proto::V1 && learn) {
            env.mappings.insert(c.external, 0);
        }
        let want = lnat_testkit::expected(&stream, role, LOCAL, &env);
        prop_assert_eq!(want.desync_at, None);
        let hint = hint_of(&env);
        let rx = Receiver { role, local: LOCAL, env, hint, socket: rng.chance(50), dir: Direction::In };
        let d = lnat_testkit::deliver(&stream, rng.bits() as u32, rx, w, &mut rng);
        prop_assert!(d.received == want.bytes, "received bytes differ from the reference");
        prop_assert_eq!(copies_agree_at(&d, &want.bytes), None);
        prop_assert_eq!(&d.env.learned, &want.learned);
        prop_assert_eq!(d.env.count(Note::Conflict), 0);
        prop_assert!(!d.tracker.desynced());
        let checked = lnat_testkit::check_csums(&d.received, &spec);
        prop_assert!(checked.is_ok(), "checksum broken at {:?}", checked);
        prop_assert_eq!(lnat_testkit::check_csums(&stream, &spec), checked);
        // Framing ends exactly at the end of the stream.
        prop_assert_eq!(d.tracker.cursor(), d.tracker.unit_seq);
    }

    /// Streams addressing arbitrary NIDs: framing never slips, only NID address bytes ever
    /// change, and any difference from the reference comes with a reported conflict.
    #[test]
    fn arbitrary_nids_never_break_framing(
        seed in any::<u64>(),
        (proto, endian) in protos(),
        w in weather(),
    ) {
        let mut rng = Rng::new(seed);
        let c = cast();
        let strangers: Vec<Nid> = (0..6).map(|_| Nid::new(rng.bits() as u32 & 0xff0f_00ff | 0x0000_7100, 2, 0)).chain([c.external]).collect();
        let spec = lnat_testkit::random_stream(&mut rng, Role::Active, proto, endian, c, &strangers);
        let stream = spec.bytes();
        let env = MapEnv { learn: true, ..MapEnv::default() };
        let want = lnat_testkit::expected(&stream, Role::Active, LOCAL, &env);
        let rx = Receiver { role: Role::Active, local: LOCAL, env, hint: Nid(0), socket: rng.chance(50), dir: Direction::In };
        let d = lnat_testkit::deliver(&stream, rng.bits() as u32, rx, w, &mut rng);
        prop_assert!(!d.tracker.desynced());
        prop_assert_eq!(d.tracker.cursor(), d.tracker.unit_seq);
        if d.received != want.bytes {
            prop_assert!(d.env.count(Note::Conflict) > 0);
        }
        prop_assert_eq!(copies_agree_at(&d, &d.received), None);
    }

    /// Garbage never panics, never loops, and leaves bytes alone once the stream is given up.
    #[test]
    fn garbage_is_survived(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in 1usize..64, passive in any::<bool>()) {
        let role = if passive { Role::Passive } else { Role::Active };
        let mut t = Box::new(Tracker::new(role, 5, LOCAL, nid("203.0.113.1@tcp")));
        let mut env = MapEnv { learn: true, ..MapEnv::default() };
        for (i, chunk) in bytes.chunks(cut).enumerate() {
            let mut seg = chunk.to_vec();
            let seq = 5u32.wrapping_add((i * cut) as u32);
            let was = t.desynced();
            segment::process(&mut t, seq, seg.len() as u32, &mut VecPacket(&mut seg), &mut env, 1 << 12);
            if was {
                prop_assert_eq!(&seg[..], chunk);
            }
        }
    }
}

/// Long streams of small varied messages, cut into segments that split NIDs anywhere,
/// duplicated, lost and dropped after the datapath: every copy of every NID, those the history
/// missed too, carries all of its rewrite or none of it. Without the socket's rcv_nxt the
/// history is outgrown; with it, new bytes are held back while the history is full of patches
/// the receiver lacks, so it holds what may still be delivered and misses nothing.
#[test]
fn every_copy_of_a_nid_is_rewritten_whole_or_not_at_all() {
    let c = cast();
    let (mut missed, mut missed_seeing, mut held) = (0, 0, 0);
    for seed in 0..40u64 {
        let mut rng = Rng::new(seed);
        let mut spec = lnat_testkit::random_stream(
            &mut rng,
            Role::Active,
            Proto::V3,
            Endian::Little,
            c,
            &[c.external],
        );
        let template = spec.units.clone();
        while spec.units.len() < 1500 {
            let mut u = template[rng.below(template.len() as u64) as usize].clone();
            if let Unit::Lnet { payload, .. } = &mut u {
                payload.truncate(rng.below(120) as usize);
            }
            spec.units.push(u);
        }
        let stream = spec.bytes();
        let env = learning_env();
        let want = lnat_testkit::expected(&stream, Role::Active, LOCAL, &env);
        let w = Weather {
            max_seg: 1 + rng.below(3000) as usize,
            loss: rng.below(8),
            drop_after: 5 + rng.below(10),
            dup: 5 + rng.below(20),
            coalesce: rng.below(50),
            recovery: 1 + rng.below(15),
            sack: rng.chance(50),
        };
        let hint = hint_of(&env);
        // Half the seeds without the socket's rcv_nxt, so that the history is outgrown.
        let rx = Receiver {
            role: Role::Active,
            local: LOCAL,
            env,
            hint,
            socket: seed % 2 == 1,
            dir: Direction::In,
        };
        let d = lnat_testkit::deliver(&stream, rng.bits() as u32, rx, w, &mut rng);
        assert_eq!(
            lnat_testkit::all_or_nothing(&d, &stream, &want.bytes),
            Ok(()),
            "seed {seed}, {w:?}"
        );
        assert_eq!(copies_agree_at(&d, &want.bytes), None, "seed {seed}");
        if seed % 2 == 1 {
            missed_seeing += d.missed.len();
            held += d.held;
        } else {
            missed += d.missed.len();
            assert_eq!(d.held, 0, "seed {seed}: held without the socket's rcv_nxt");
        }
    }
    assert!(
        missed > 0,
        "no copy outran the history: the case is not exercised"
    );
    assert_eq!(
        missed_seeing, 0,
        "with the receiver's rcv_nxt, the history holds what may still be delivered"
    );
    assert!(held > 0, "no segment was held: the history never filled");
}

fn copies_agree_at(d: &lnat_testkit::Delivered, want: &[u8]) -> Option<usize> {
    lnat_testkit::copies_agree(d, want)
        .err()
        .map(|(at, _, _)| at)
}

#[test]
fn v2_checksums_survive_every_split() {
    let mut rng = Rng::new(42);
    let c = cast();
    let mut spec = lnat_testkit::random_stream(
        &mut rng,
        Role::Active,
        Proto::V2,
        Endian::Little,
        c,
        &[c.external],
    );
    spec.units.retain(|u| matches!(u, Unit::Lnet { .. }));
    for u in &mut spec.units {
        if let Unit::Lnet { csum, .. } = u {
            *csum = true;
        }
    }
    let stream = spec.bytes();
    let first = spec.hello.wire_len();
    for cut in first..first + 100 {
        let mut env = learning_env();
        let out = run_cut(&stream, &[cut], &mut env);
        assert_eq!(
            lnat_testkit::check_csums(&out, &spec),
            Ok(spec.units.len()),
            "cut {cut}"
        );
        assert!(env.count(Note::Compensated) >= 1);
    }
}

/// A random stream (`role`, `proto`, `endian`) delivered through `w` to a learning receiver
/// (the socket's `rcv_nxt` known for even seeds); asserts that the receiver got exactly the
/// reference rewrite and that every copy agrees with it.
fn deliver_exactly(
    seed: u64,
    rng: &mut Rng,
    role: Role,
    proto: Proto,
    endian: Endian,
    w: Weather,
) -> lnat_testkit::Delivered {
    let c = cast();
    let spec = lnat_testkit::random_stream(rng, role, proto, endian, c, &lnet_dests(c));
    let stream = spec.bytes();
    let mut env = learning_env();
    if proto == Proto::V1 {
        env.mappings.insert(c.external, 0);
    }
    let want = lnat_testkit::expected(&stream, role, LOCAL, &env);
    let hint = hint_of(&env);
    let rx = Receiver {
        role,
        local: LOCAL,
        env,
        hint,
        socket: seed.is_multiple_of(2),
        dir: Direction::In,
    };
    let d = lnat_testkit::deliver(&stream, rng.bits() as u32, rx, w, rng);
    assert!(
        d.received == want.bytes,
        "seed {seed}: received bytes differ"
    );
    assert_eq!(copies_agree_at(&d, &want.bytes), None, "seed {seed}");
    d
}

/// Segments inside payloads pass on a published quiet window, as the datapath passes them
/// without taking the flow: a stale window as often as the newest, and the receiver still gets
/// exactly the reference rewrite.
#[test]
fn segments_inside_payloads_pass_on_the_quiet_window() {
    let w = Weather {
        max_seg: 200,
        loss: 3,
        drop_after: 3,
        dup: 10,
        coalesce: 20,
        recovery: 15,
        sack: true,
    };
    let mut quiet = 0;
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let (proto, endian) = [
            (Proto::V1, Endian::Little),
            (Proto::V2, Endian::Big),
            (Proto::V3, Endian::Little),
            (Proto::V4, Endian::Big),
        ][seed as usize % 4];
        let role = if seed % 3 == 0 {
            Role::Passive
        } else {
            Role::Active
        };
        let d = deliver_exactly(seed, &mut rng, role, proto, endian, w);
        quiet += d.quiet;
    }
    assert!(quiet > 1000, "only {quiet} segments passed on a window");
}

/// Segments beyond a hole go ahead of the cursor when nothing in them can change, and the
/// sender, which resends only what the receiver lacks (a SACK sender), never sends them again:
/// the tracker parses them from where they were kept, and the receiver gets exactly the
/// reference rewrite, V1 and V3 streams of small messages through a lossy network.
#[test]
fn segments_beyond_a_hole_go_ahead_and_are_parsed_from_where_they_were_kept() {
    let w = Weather {
        max_seg: 300,
        loss: 5,
        drop_after: 2,
        dup: 5,
        coalesce: 20,
        recovery: 10,
        sack: true,
    };
    let (mut ahead, mut dropped) = (0, 0);
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let proto = [Proto::V1, Proto::V3][seed as usize % 2];
        let d = deliver_exactly(seed, &mut rng, Role::Active, proto, Endian::Little, w);
        assert!(!d.tracker.desynced(), "seed {seed}: {:?}", d.tracker.desync);
        ahead += d.ahead;
        dropped += d.dropped;
    }
    assert!(
        ahead >= 100,
        "only {ahead} segments went ahead ({dropped} dropped)"
    );
}

/// Records what each patch was told about the writes still to come in its segment.
struct Reaches<'a> {
    inner: VecPacket<'a>,
    seen: Vec<u32>,
}

impl segment::Packet for Reaches<'_> {
    fn load(&mut self, off: u32, dst: &mut [u8]) -> bool {
        self.inner.load(off, dst)
    }
    fn patch(&mut self, clip: &lnat_common::history::Clip, reach: u32) -> bool {
        self.seen.push(reach);
        self.inner.patch(clip, reach)
    }
}

/// A patch followed by another header in the same segment announces the whole segment, so
/// the datapath makes a GRO packet writable once; the last header's patch announces nothing.
#[test]
fn a_patch_announces_the_segment_when_more_headers_follow_in_it() {
    let mut stream = vector_stream();
    let message = stream[56..].to_vec();
    stream.extend_from_slice(&message);
    let mut env = learning_env();
    let mut t = Tracker::new(Role::Active, 0, LOCAL, hint_of(&env));
    let mut hello = stream[..56].to_vec();
    segment::process(&mut t, 0, 56, &mut VecPacket(&mut hello), &mut env, 64);
    let mut rest = stream[56..].to_vec();
    let len = rest.len() as u32;
    let mut pkt = Reaches {
        inner: VecPacket(&mut rest),
        seen: Vec::new(),
    };
    segment::process(&mut t, 56, len, &mut pkt, &mut env, 64);
    assert_eq!(pkt.seen, [len, 0]);
    let want = vector_expected();
    assert_eq!(rest[..message.len()], want[56..]);
    assert_eq!(rest[message.len()..], want[56..]);
}
