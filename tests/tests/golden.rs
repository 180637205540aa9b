//! Golden packets: the loaded datapath run on crafted and captured frames with
//! `BPF_PROG_TEST_RUN`, Katran-style: input bytes in, expected bytes out, TCP checksum verified.
//!
//! Each case runs twice, once with the skb as `CHECKSUM_NONE` (aya's test-run) and once as
//! `CHECKSUM_COMPLETE` (the kernel then also checks that `skb->csum` still matches the bytes),
//! the two states a test run can produce; CHECKSUM_PARTIAL and UNNECESSARY are what veth hands
//! the namespace tests.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use lnat::datapath::{self, Maps};
use lnat_common::{
    maps::{Counters, Origin},
    nid::Nid,
    tracker::Role,
    wire::{Endian, Proto},
};
use lnat_testkit::{
    Cast, Rng,
    frames::{self, ACK, Build, FIN, PSH, RST, SYN, Tcp4},
};

/// The classifier's "carry on" verdict (TC_ACT_UNSPEC).
const PASS: u32 = u32::MAX;
/// The classifier's verdict for a segment it drops so TCP sends it again (TC_ACT_SHOT).
const DROP: u32 = 2;

const SERVER: [u8; 4] = [203, 0, 113, 10];
const CLIENT: [u8; 4] = [198, 51, 100, 2];

/// How the test run presents the skb's checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Csum {
    None,
    Complete,
}

/// A loaded, unattached datapath and its maps.
struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    csum: Csum,
}

impl Datapath {
    fn new(learn: bool, csum: Csum) -> Datapath {
        let mut ebpf = datapath::load(256).expect("load");
        let prog: &mut SchedClassifier = ebpf
            .program_mut(datapath::PROGRAM)
            .expect("program")
            .try_into()
            .expect("classifier");
        prog.load().expect("verifier");
        let mut maps = Maps::take(&mut ebpf).expect("maps");
        maps.configure(&[988], learn, frames::ETH_LEN as u8)
            .expect("configure");
        Datapath { ebpf, maps, csum }
    }

    fn prog(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(datapath::PROGRAM)
            .expect("program")
            .try_into()
            .expect("classifier")
    }

    /// Runs the program on `frame`: its verdict and the frame as it left.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(frame).expect("test run")
    }

    /// [`Datapath::run`], for frames the kernel may refuse to build an skb from. With
    /// CHECKSUM_COMPLETE, EBADMSG means the program left `skb->csum` stale.
    fn try_run(&mut self, frame: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let (ret, len) = match self.csum {
            Csum::None => {
                let r = self
                    .prog()
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        data_out: Some(&mut out),
                        ..TestRunOptions::default()
                    })
                    .map_err(std::io::Error::other)?;
                (r.return_value, r.data_size_out)
            }
            Csum::Complete => {
                let fd = self.prog().fd().expect("fd").as_fd().as_raw_fd();
                test_run_complete(fd, frame, &mut out)?
            }
        };
        out.truncate(len as usize);
        Ok((ret, out))
    }

    /// Opens a connection the client made to the server's port 988: the server's SYN-ACK.
    fn open(&mut self, port: u16, isn: u32) {
        let syn_ack = Build {
            flags: SYN | ACK,
            ..seg(port, isn.wrapping_sub(1), &[])
        }
        .frame();
        assert_eq!(self.run(&syn_ack), (PASS, syn_ack));
    }

    fn counters(&self) -> Counters {
        self.maps.counters().expect("counters")
    }
}

/// `BPF_F_TEST_SKB_CHECKSUM_COMPLETE`: the test skb arrives with `skb->csum` over its bytes.
const F_CHECKSUM_COMPLETE: u32 = 1 << 2;
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `BPF_PROG_TEST_RUN` with the checksum-complete flag, which aya's options do not expose.
fn test_run_complete(fd: i32, frame: &[u8], out: &mut [u8]) -> std::io::Result<(u32, u32)> {
    // The `test` member of `union bpf_attr`, zero-padded as the kernel requires.
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        pad: u32,
    }
    let mut attr = TestAttr {
        prog_fd: fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        flags: F_CHECKSUM_COMPLETE,
        ..TestAttr::default()
    };
    // SAFETY: the attribute points at live buffers of the sizes it gives.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            size_of::<TestAttr>(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((attr.retval, attr.data_size_out))
}

/// A data segment from the server to the client's `port`.
fn seg(port: u16, seq: u32, payload: &[u8]) -> Build<'_> {
    Build {
        src: (SERVER, 988),
        dst: (CLIENT, port),
        seq,
        flags: ACK | PSH,
        ip_options: &[],
        tcp_options: &[],
        payload,
    }
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect()
}

/// The V3 exchange of docs/protocol.md: the server's HELLO to the client seen as 203.0.113.1@tcp, then
/// a PUT to that NID with a 16-byte payload.
fn vectors() -> Vec<u8> {
    hex(
        "63 69 72 45 03 00 00 00 0a 71 00 cb 00 00 02 00 01 71 00 cb 00 00 02 00 39 30 00 00 \
         00 00 00 00 8d 41 18 17 4a 1e eb 18 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 \
         c1 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         01 71 00 cb 00 00 02 00 0a 71 00 cb 00 00 02 00 \
         41 9c 00 80 39 30 00 00 01 00 00 00 10 00 00 00 \
         ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 88 77 66 55 44 33 22 11 \
         00 00 00 00 00 00 00 00 04 00 00 00 00 00 00 00 \
         00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f",
    )
}

/// The same stream as the client's kernel must see it: HELLO dst_nid (stream bytes 16..20) and
/// the PUT's dest_nid (56 + 24) name 198.51.100.2@tcp; nothing else differs.
fn vectors_rewritten() -> Vec<u8> {
    let mut v = vectors();
    for at in [16, 56 + 24] {
        v[at..at + 4].copy_from_slice(&hex("02 64 33 c6"));
    }
    v
}

/// Checks that `out` is `input` with its payload replaced by `want` and its TCP checksum (and
/// nothing else) updated to match: it verifies exactly when the input's did.
fn assert_frame(input: &[u8], ret: u32, out: &[u8], want: &[u8], what: &str) {
    assert_eq!(ret, PASS, "{what}: verdict");
    let t = Tcp4::parse(input).expect("input parses");
    assert_eq!(out.len(), input.len(), "{what}: length");
    assert_eq!(t.payload(out), want, "{what}: payload");
    assert_eq!(
        t.csum_residue(out),
        t.csum_residue(input),
        "{what}: TCP checksum not kept"
    );
    let check = t.tcp_off + 16..t.tcp_off + 18;
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        if i < t.payload_off && !check.contains(&i) {
            assert_eq!(a, b, "{what}: header byte {i} changed");
        }
    }
}

fn each_csum(f: impl Fn(Csum)) {
    for c in [Csum::None, Csum::Complete] {
        f(c);
    }
}

#[test]
fn the_failing_capture_comes_out_fixed() {
    each_csum(|csum| {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("captures/nat_acceptall_client.pcap");
        let client = [192, 168, 50, 2];
        let mut dp = Datapath::new(true, csum);
        let mut rewritten = 0;
        for frame in frames::read_pcap(&path).expect("capture") {
            let Some(t) = Tcp4::parse(&frame).filter(|t| t.sport == 988 && t.dst == client) else {
                continue;
            };
            let (ret, out) = dp.run(&frame);
            let mut want = t.payload(&frame).to_vec();
            // The HELLO's dst_nid (56-byte HELLOs) and the REPLY's dest_nid (after the 24-byte
            // ksock header) name the NAT, 10.88.0.254@tcp; they must name 192.168.50.2@tcp.
            let nat = hex("fe 00 58 0a 00 00 02 00");
            let at = match want.len() {
                56 => Some(16),
                144 => Some(24),
                _ => None,
            };
            if let Some(at) = at {
                assert_eq!(want[at..at + 8], nat[..], "{csum:?}: capture layout");
                want[at..at + 4].copy_from_slice(&hex("02 32 a8 c0"));
                rewritten += 1;
            }
            assert_frame(&frame, ret, &out, &want, &format!("{csum:?} seq {}", t.seq));
        }
        assert_eq!(rewritten, 5);
        assert_eq!(dp.counters().rewritten, 5);
        assert_eq!(dp.counters().learned, 1);
        let m = dp.maps.mappings().expect("mappings");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, "10.88.0.254@tcp".parse::<Nid>().unwrap());
        assert_eq!(m[0].1.origin, Origin::Learned as u8);
    });
}

#[test]
fn the_vectors_split_at_every_byte_come_out_exactly() {
    let stream = vectors();
    let want = vectors_rewritten();
    // Payload offsets 54 (plain), 66 (TCP timestamps) and 58 (IPv4 options): the NIDs land at
    // every parity relative to the TCP header as the cut moves.
    let layouts: [(&[u8], &[u8]); 3] = [
        (&[], &[]),
        (&[], &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
        (&[1, 1, 1, 0], &[]),
    ];
    each_csum(|csum| {
        let mut dp = Datapath::new(true, csum);
        for (l, (ip_options, tcp_options)) in layouts.iter().enumerate() {
            for cut in 1..stream.len() {
                let port = 40000 + (l * 1000 + cut) as u16;
                let isn = 0xffff_ff00u32.wrapping_add(cut as u32 * 7);
                dp.open(port, isn);
                for (from, to) in [(0, cut), (cut, stream.len())] {
                    let frame = Build {
                        ip_options,
                        tcp_options,
                        ..seg(port, isn.wrapping_add(from as u32), &stream[from..to])
                    }
                    .frame();
                    let (ret, out) = dp.run(&frame);
                    let what = format!("{csum:?} layout {l} cut {cut} part {from}..{to}");
                    assert_frame(&frame, ret, &out, &want[from..to], &what);
                }
            }
        }
        let cases = 3 * (stream.len() as u64 - 1);
        assert_eq!(dp.counters().rewritten, 2 * cases);
        assert_eq!(dp.counters().desynced, 0);
    });
}

#[test]
fn many_headers_in_one_packet_are_all_rewritten() {
    let mut put = vectors()[56..].to_vec();
    // Zero payload: 96 bytes a message, 36 of them and the HELLO in one 3,512-byte segment.
    put[24 + 28] = 0;
    put.truncate(96);
    let mut stream = vectors()[..56].to_vec();
    let mut want = vectors_rewritten()[..56].to_vec();
    for _ in 0..36 {
        stream.extend_from_slice(&put);
        let mut w = put.clone();
        w[24..28].copy_from_slice(&hex("02 64 33 c6"));
        want.extend_from_slice(&w);
    }
    each_csum(|csum| {
        let mut dp = Datapath::new(true, csum);
        dp.open(40001, 1000);
        let frame = seg(40001, 1000, &stream).frame();
        let (ret, out) = dp.run(&frame);
        assert_frame(&frame, ret, &out, &want, &format!("{csum:?}"));
        // The same packet again (a retransmission) comes out the same, from the history.
        let (ret, again) = dp.run(&frame);
        assert_frame(&frame, ret, &again, &want, &format!("{csum:?} again"));
        assert_eq!(dp.counters().rewritten, 37);
    });
}

/// A FIN, even one that arrives before data it follows, ends nothing: segments that come after
/// it (lnat dropped them out of order, or the stack dropped them after TC) come out rewritten
/// exactly as their first copy, and so does a retransmission of the whole stream after a RST.
#[test]
fn segments_after_the_fin_are_rewritten_as_their_first_copy() {
    let stream = vectors();
    let want = vectors_rewritten();
    let end = stream.len();
    each_csum(|csum| {
        let mut dp = Datapath::new(true, csum);
        let (port, isn) = (40001, 0xffff_ffe0u32);
        dp.open(port, isn);
        let frame = |from: usize, to: usize, flags: u8| {
            Build {
                flags,
                ..seg(port, isn.wrapping_add(from as u32), &stream[from..to])
            }
            .frame()
        };
        // The HELLO's first 50 bytes, then the last data with the FIN, which lies beyond the
        // rest of the HELLO and the PUT header: dropped so TCP resends it in order.
        let a = frame(0, 50, ACK | PSH);
        let (ret, out) = dp.run(&a);
        assert_frame(&a, ret, &out, &want[..50], &format!("{csum:?} first"));
        let last = frame(100, end, ACK | PSH | FIN);
        assert_eq!(dp.run(&last).0, DROP, "{csum:?}: past the cursor");
        // The PUT's dest_nid (stream 80..84) arrives after the FIN.
        let b = frame(50, 100, ACK | PSH);
        let (ret, out) = dp.run(&b);
        assert_frame(&b, ret, &out, &want[50..100], &format!("{csum:?} middle"));
        let (ret, out) = dp.run(&last);
        assert_frame(&last, ret, &out, &want[100..], &format!("{csum:?} last"));
        // A pure FIN again, then older retransmissions: the middle one the stack dropped after
        // TC, and the whole stream coalesced, both from the history alone.
        let fin = frame(end, end, ACK | FIN);
        assert_eq!(dp.run(&fin), (PASS, fin.clone()));
        let (ret, out) = dp.run(&b);
        assert_frame(
            &b,
            ret,
            &out,
            &want[50..100],
            &format!("{csum:?} middle again"),
        );
        let all = frame(0, end, ACK | PSH);
        let (ret, out) = dp.run(&all);
        assert_frame(&all, ret, &out, &want, &format!("{csum:?} all again"));
        let rst = Build {
            flags: RST,
            ..seg(port, isn.wrapping_add(end as u32 + 1), &[])
        }
        .frame();
        assert_eq!(dp.run(&rst), (PASS, rst.clone()));
        let (ret, out) = dp.run(&all);
        assert_frame(&all, ret, &out, &want, &format!("{csum:?} after the RST"));
        let c = dp.counters();
        assert_eq!(c.rewritten, 2, "{c:?}");
        assert_eq!(c.flows_closed, 1, "{c:?}");
        // After the first FIN: the middle, the last, the middle again, all, all.
        assert_eq!(c.closing, 5, "{c:?}");
        assert_eq!(
            (c.untracked, c.history_misses, c.desynced),
            (0, 0, 0),
            "{c:?}"
        );
        let flows = dp.maps.flows().expect("flows");
        assert_eq!(flows.len(), 1);
        assert!(flows[0].1.closing(), "the flow is kept, closing");
        // A new handshake on the four-tuple starts afresh.
        dp.open(port, 7000);
        let flows = dp.maps.flows().expect("flows");
        assert!(!flows[0].1.closing() && flows[0].1.start == 7000);
    });
}

/// Random streams of every version and byte order, cut into random segments, some sent twice
/// and some overtaken: what leaves the program equals the reference rewrite of the stream.
#[test]
fn random_streams_through_the_program_match_the_reference() {
    let cast = Cast {
        peer: "203.0.113.10@tcp".parse().unwrap(),
        external: "203.0.113.1@tcp".parse().unwrap(),
        local: "198.51.100.2@tcp".parse().unwrap(),
    };
    let others: Nid = "198.51.100.7@tcp".parse().unwrap();
    each_csum(|csum| {
        let mut dp = Datapath::new(true, csum);
        // V1 HELLOs name no destination, so nothing is learned from them: map statically.
        dp.maps.add_static(cast.external, None).expect("map add");
        let mut rng = Rng::new(0x901d);
        let versions = [
            (Proto::V1, Endian::Little),
            (Proto::V2, Endian::Little),
            (Proto::V2, Endian::Big),
            (Proto::V3, Endian::Little),
            (Proto::V3, Endian::Big),
            (Proto::V4, Endian::Little),
            (Proto::V4, Endian::Big),
        ];
        for case in 0..56u16 {
            let (proto, endian) = versions[case as usize % versions.len()];
            let spec = lnat_testkit::random_stream(
                &mut rng,
                Role::Active,
                proto,
                endian,
                cast,
                &[cast.external, cast.local, others],
            );
            let stream = spec.bytes();
            let env = lnat_testkit::MapEnv {
                learn: true,
                mappings: BTreeMap::from([(cast.external, 0)]),
                ..lnat_testkit::MapEnv::default()
            };
            let want =
                lnat_testkit::expected(&stream, Role::Active, u32::from_be_bytes(CLIENT), &env);
            assert_eq!(want.desync_at, None);
            let port = 41000 + case;
            let isn = rng.bits() as u32;
            dp.open(port, isn);
            let mut got = vec![None; stream.len()];
            let mut at = 0;
            let mut sent: Vec<(usize, usize)> = Vec::new();
            while at < stream.len() {
                let end = (at + 1 + rng.below(1400) as usize).min(stream.len());
                // Now and then a later segment overtakes this one: it is dropped (it lies past a
                // header not yet parsed) or passed; either way what passes must be right.
                let mut order = vec![(at, end)];
                if rng.chance(10) && end < stream.len() {
                    let next = (end + 1 + rng.below(600) as usize).min(stream.len());
                    order.insert(0, (end, next));
                }
                if rng.chance(15)
                    && let Some(&old) = sent.get(rng.below(sent.len().max(1) as u64) as usize)
                {
                    order.push(old);
                }
                for (from, to) in order {
                    let frame = seg(port, isn.wrapping_add(from as u32), &stream[from..to]).frame();
                    let (ret, out) = dp.run(&frame);
                    if ret == DROP {
                        continue;
                    }
                    let what = format!("{csum:?} case {case} {proto:?} {endian:?} {from}..{to}");
                    assert_frame(&frame, ret, &out, &want.bytes[from..to], &what);
                    for (i, b) in Tcp4::parse(&frame)
                        .unwrap()
                        .payload(&out)
                        .iter()
                        .enumerate()
                    {
                        got[from + i] = Some(*b);
                    }
                    sent.push((from, to));
                }
                at = end;
            }
            assert!(
                got.iter().all(Option::is_some),
                "case {case}: a byte never passed"
            );
        }
        assert_eq!(dp.counters().desynced, 0);
    });
}

/// Frames lnat does not own, or cannot read, pass byte for byte and change no state.
#[test]
fn frames_lnat_does_not_own_pass_untouched() {
    let payload = vectors();
    let data = seg(40001, 1000, &payload).frame();
    let mut frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "another port",
            Build {
                src: (SERVER, 989),
                ..seg(40001, 1000, &payload)
            }
            .frame(),
        ),
        ("no flow (no SYN-ACK seen)", data.clone()),
        // The kernel builds no test skb from an IPv4 frame shorter than the IPv4 header.
        ("IPv4 header, no TCP header", data[..34].to_vec()),
        ("TCP header cut", data[..44].to_vec()),
    ];
    let mut udp = data.clone();
    udp[14 + 9] = 17;
    frames.push(("UDP", udp));
    let mut icmp = data.clone();
    icmp[14 + 9] = 1;
    frames.push(("ICMP", icmp));
    let mut v6 = data.clone();
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    frames.push(("IPv6 ethertype", v6));
    let mut arp = data.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    frames.push(("ARP", arp));
    let mut bad_ihl = data.clone();
    bad_ihl[14] = 0x43;
    frames.push(("IHL 3", bad_ihl));
    let mut long_tot = data.clone();
    long_tot[16..18].copy_from_slice(&9000u16.to_be_bytes());
    frames.push(("total length past the frame", long_tot));
    each_csum(|csum| {
        let mut dp = Datapath::new(true, csum);
        for (what, f) in &frames {
            let (ret, out) = dp
                .try_run(f)
                .unwrap_or_else(|e| panic!("{csum:?} {what}: {e}"));
            assert_eq!(ret, PASS, "{csum:?} {what}: verdict");
            assert_eq!(&out, f, "{csum:?} {what}: bytes");
        }
        assert_eq!(dp.counters().rewritten, 0);
        assert_eq!(dp.counters().flows_opened, 0);
        assert!(dp.maps.mappings().expect("mappings").is_empty());
    });
}
