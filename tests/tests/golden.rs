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
use lnat::datapath::{self, Hook, Maps};
use lnat_common::{
    maps::{Counters, Origin},
    nid::Nid,
    ping,
    tracker::Role,
    wire::{self, Connreq, Endian, Hello, LnetHdr, LnetHdrLayout, LnetType, Proto},
};
use lnat_testkit::{
    Cast, Rng, StreamSpec, Unit,
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

/// A loaded, unattached datapath and its maps: both programs, which share the maps as they do
/// when attached, so that the egress one finds what the ingress one learned of a connection.
struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    csum: Csum,
}

impl Datapath {
    fn new(learn: bool, csum: Csum) -> Datapath {
        let mut ebpf = datapath::load(256).expect("load");
        for hook in Hook::BOTH {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(hook.program())
                .expect("program")
                .try_into()
                .expect("classifier");
            prog.load().expect("verifier");
        }
        datapath::load_kept_pass(&mut ebpf).expect("the kept-segment pass");
        let mut maps = Maps::take(&mut ebpf).expect("maps");
        maps.configure(&[988], learn, frames::ETH_LEN as u8)
            .expect("configure");
        Datapath { ebpf, maps, csum }
    }

    fn prog(&mut self, hook: Hook) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(hook.program())
            .expect("program")
            .try_into()
            .expect("classifier")
    }

    /// Runs the ingress program on `frame`: its verdict and the frame as it left.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(frame).expect("test run")
    }

    /// [`Datapath::run`] with the egress program, for what the client sends.
    fn run_egress(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run_on(Hook::Egress, frame).expect("test run")
    }

    /// [`Datapath::run`], for frames the kernel may refuse to build an skb from.
    fn try_run(&mut self, frame: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
        self.try_run_on(Hook::Ingress, frame)
    }

    /// Runs the program of `hook` on `frame`. With CHECKSUM_COMPLETE, EBADMSG means the program
    /// left `skb->csum` stale.
    fn try_run_on(&mut self, hook: Hook, frame: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let (ret, len) = match self.csum {
            Csum::None => {
                let r = self
                    .prog(hook)
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        data_out: Some(&mut out),
                        ..TestRunOptions::default()
                    })
                    .map_err(std::io::Error::other)?;
                (r.return_value, r.data_size_out)
            }
            Csum::Complete => {
                let fd = self.prog(hook).fd().expect("fd").as_fd().as_raw_fd();
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

// The egress program: the client's discovery pushes, on connections whose ingress told it the
// NID the server names the client by (docs/discovery.md, "Rules for the egress datapath").

const SERVER_NID: &str = "203.0.113.10@tcp";
const CLIENT_NID: &str = "198.51.100.2@tcp";
/// The NAT's address, as the server names the client.
const EXTERNAL_NID: &str = "203.0.113.1@tcp";

/// The features of a Multi-Rail client with discovery on.
const FEATURES: u32 = ping::feat::NI_STATUS | ping::feat::MULTI_RAIL | ping::feat::DISCOVERY;

// Message offsets of what a push's rewrite changes, counted by hand: the payload starts at 96,
// after the 24-byte ksock header and the 72-byte LNet header.
/// `pi_features`' low byte (payload 4).
const FEATURES_AT: usize = 100;
/// Entry 1's address (payload 16 + 16, little-endian).
const ADDR_AT: usize = 128;
/// Entry 1's `ns_msg_size` (payload 44), where a checksum is compensated.
const COMP_AT: usize = 140;

/// A connection a push is rewritten on: V3, and V2 with socklnd checksums, whose change the
/// rewrite must cancel.
const PUSHES: [(Proto, bool); 2] = [(Proto::V3, false), (Proto::V2, true)];

fn nid(s: &str) -> Nid {
    s.parse().expect("nid")
}

/// A segment from the client's `port` to the server's 988: what the egress program sees.
fn out_seg(port: u16, seq: u32, payload: &[u8]) -> Build<'_> {
    Build {
        src: (CLIENT, port),
        dst: (SERVER, 988),
        ..seg(port, seq, payload)
    }
}

/// Ping information as a little-endian node builds it (`lnet_ping_target_create`): 0@lo, then
/// `nids`. Entry 0's status, the ping target's sequence number, is `STATUS_UP` here, as the
/// hex vectors have it.
fn ping_info(features: u32, nids: &[Nid]) -> Vec<u8> {
    lnat_testkit::ping_info(Endian::Little, features, ping::STATUS_UP, nids)
}

/// An LNet message from the client to the server.
fn client_msg(
    msg_type: LnetType,
    body: [u8; LnetHdrLayout::BODY_LEN],
    payload: Vec<u8>,
    csum: bool,
) -> Unit {
    Unit::Lnet {
        hdr: LnetHdr {
            dest_nid: nid(SERVER_NID),
            src_nid: nid(CLIENT_NID),
            dest_pid: wire::PID_LUSTRE,
            src_pid: wire::PID_LUSTRE,
            msg_type: msg_type as u32,
            payload_length: 0,
            body,
        },
        payload,
        csum,
    }
}

/// A PUT from the client on `portal` with `bits`.
fn put(portal: u32, bits: u64, payload: Vec<u8>, csum: bool) -> Unit {
    let mut body = [0u8; LnetHdrLayout::BODY_LEN];
    body[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    body[LnetHdrLayout::PUT_MATCH_BITS..][..8].copy_from_slice(&bits.to_le_bytes());
    body[LnetHdrLayout::PUT_PTL_INDEX..][..4].copy_from_slice(&portal.to_le_bytes());
    client_msg(LnetType::Put, body, payload, csum)
}

/// The client's discovery push, naming it by its own NID, with DISCOVERY.
fn push(csum: bool) -> Unit {
    put(
        ping::PORTAL,
        ping::MATCH_BITS,
        ping_info(FEATURES, &[nid(CLIENT_NID)]),
        csum,
    )
}

/// The client's ping, as in the capture: a GET on portal 0 with the ping match bits and a
/// 3,960-byte sink (return MD, match bits, portal, source offset, sink length).
fn ping_get() -> Unit {
    let mut body = [0u8; LnetHdrLayout::BODY_LEN];
    body[..8].copy_from_slice(&0x18eb_1e4a_4ee9_196fu64.to_le_bytes());
    body[16..24].copy_from_slice(&ping::MATCH_BITS.to_le_bytes());
    body[32..36].copy_from_slice(&3960u32.to_le_bytes());
    client_msg(LnetType::Get, body, vec![], false)
}

/// What the client sends on a connection it opened in `proto`: its acceptor request, its
/// HELLO, then `units`.
fn client_stream(proto: Proto, units: Vec<Unit>) -> StreamSpec {
    StreamSpec {
        connreq: Some(Connreq {
            nid: nid(SERVER_NID),
            version: 1,
        }),
        endian: Endian::Little,
        hello: Hello {
            proto,
            src_nid: nid(CLIENT_NID),
            dst_nid: nid(SERVER_NID),
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

fn encode(proto: Proto, unit: &Unit) -> Vec<u8> {
    lnat_testkit::encode_unit(proto, Endian::Little, unit)
}

/// The server's HELLO in `proto`, naming the client `dst_nid`.
fn server_hello(proto: Proto, dst_nid: Nid) -> Vec<u8> {
    let h = Hello {
        proto,
        src_nid: nid(SERVER_NID),
        dst_nid,
        src_pid: wire::PID_LUSTRE,
        dst_pid: wire::PID_LUSTRE,
        src_incarnation: 0x1718_418d,
        dst_incarnation: 0x18eb_1e4a,
        ctype: 1,
        nips: 0,
    };
    let mut b = vec![0u8; h.wire_len()];
    h.encode(Endian::Little, &mut b);
    b
}

impl Datapath {
    /// Opens a connection from the client's `port` to the server's 988 in `proto`, both ways
    /// and in that order: the client's SYN (egress), the server's SYN-ACK and its HELLO naming
    /// the client `named` (ingress, which makes that the connection's external NID), the
    /// client's acceptor request and HELLO (egress, untouched). Returns the sequence number of
    /// the client's next byte.
    fn connect(&mut self, port: u16, proto: Proto, named: Nid) -> u32 {
        // The sequence numbers wrap at stream offset `port % 199`: in the push (72..216) on
        // many connections.
        let isn = 0u32.wrapping_sub(u32::from(port) % 199);
        let syn = Build {
            flags: SYN,
            ..out_seg(port, isn.wrapping_sub(1), &[])
        }
        .frame();
        assert_eq!(self.run_egress(&syn), (PASS, syn), "port {port}: the SYN");
        let server_isn = 7000 + u32::from(port);
        self.open(port, server_isn);
        let frame = seg(port, server_isn, &server_hello(proto, named)).frame();
        let (ret, out) = self.run(&frame);
        let want = server_hello(proto, nid(CLIENT_NID));
        assert_frame(&frame, ret, &out, &want, "the server's HELLO");
        let spec = client_stream(proto, vec![]);
        let stream = spec.bytes();
        let req = spec.connreq.map_or(0, |r| r.wire_len());
        let mut seq = isn;
        for part in [&stream[..req], &stream[req..]] {
            let frame = out_seg(port, seq, part).frame();
            assert_eq!(
                self.run_egress(&frame),
                (PASS, frame.clone()),
                "port {port}: the client's {} bytes at {seq}",
                part.len()
            );
            seq = seq.wrapping_add(part.len() as u32);
        }
        seq
    }

    /// Sends the client's push at `seq` on `port` in one segment and checks that it leaves
    /// rewritten, its checksums kept; returns the frame, as sent and as it left.
    fn send_push(&mut self, port: u16, seq: u32, proto: Proto, csum: bool) -> (Vec<u8>, Vec<u8>) {
        let msg = encode(proto, &push(csum));
        let frame = out_seg(port, seq, &msg).frame();
        let (ret, out) = self.run_egress(&frame);
        let what = format!("{:?} {proto:?} push on port {port}", self.csum);
        let t = Tcp4::parse(&frame).expect("parses");
        assert_eq!(out.len(), frame.len(), "{what}: length");
        let want = rewritten_push(&msg, t.payload(&out));
        assert_frame(&frame, ret, &out, &want, &what);
        assert_socklnd_csum(proto, csum, &want, &what);
        (frame, out)
    }
}

/// A V3 discovery push from 198.51.100.2@tcp to 203.0.113.10@tcp, little-endian, without a
/// checksum: ksock header, LNet header, ping information (docs/discovery.md section 4).
fn push_hex() -> Vec<u8> {
    hex(
        "c1 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         0a 71 00 cb 00 00 02 00 02 64 33 c6 00 00 02 00 39 30 00 00 39 30 00 00 \
         01 00 00 00 30 00 00 00 \
         88 77 66 55 44 33 22 11 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 80 \
         00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         67 6e 69 70 1a 00 00 00 39 30 00 00 02 00 00 00 \
         00 00 00 00 00 00 09 00 de c0 aa 15 00 00 00 00 \
         02 64 33 c6 00 00 02 00 de c0 aa 15 00 00 00 00",
    )
}

/// The push `msg` (laid out as [`push_hex`]) as the server must get it: DISCOVERY cleared
/// (`1a` becomes `0a`) and entry 1's address 203.0.113.1 for 198.51.100.2. With a checksum,
/// entry 1's `ns_msg_size` is taken from `got`: [`assert_socklnd_csum`] then holds it to the one
/// value that makes the checksum right.
fn rewritten_push(msg: &[u8], got: &[u8]) -> Vec<u8> {
    let mut want = msg.to_vec();
    assert_eq!(want[FEATURES_AT], 0x1a, "push layout");
    want[FEATURES_AT] = 0x0a;
    assert_eq!(
        want[ADDR_AT..ADDR_AT + 4],
        hex("02 64 33 c6")[..],
        "push layout"
    );
    want[ADDR_AT..ADDR_AT + 4].copy_from_slice(&hex("01 71 00 cb"));
    if msg[4..8] != [0; 4] {
        want[COMP_AT..COMP_AT + 4].copy_from_slice(&got[COMP_AT..COMP_AT + 4]);
    }
    want
}

/// Checks the socklnd checksum of the push `msg` as the server's kernel does; a message without
/// one must still have none.
fn assert_socklnd_csum(proto: Proto, csum: bool, msg: &[u8], what: &str) {
    let mut stream = client_stream(proto, vec![]).bytes();
    stream.extend_from_slice(msg);
    let spec = client_stream(proto, vec![push(csum)]);
    assert_eq!(
        lnat_testkit::check_csums(&stream, &spec),
        Ok(usize::from(csum)),
        "{what}: socklnd checksum"
    );
}

#[test]
fn a_push_names_the_client_by_its_external_nid_without_discovery() {
    // The encoder agrees with the bytes written out by hand, and with their rewrite as a push
    // listing the NAT's address without DISCOVERY, so that neither can hide a mistake of the
    // program's.
    let msg = push_hex();
    assert_eq!(encode(Proto::V3, &push(false)), msg, "the encoder's push");
    let info = ping_info(FEATURES & !ping::feat::DISCOVERY, &[nid(EXTERNAL_NID)]);
    let external = put(ping::PORTAL, ping::MATCH_BITS, info, false);
    assert_eq!(
        encode(Proto::V3, &external),
        rewritten_push(&msg, &msg),
        "the encoder's push naming 203.0.113.1@tcp"
    );
    for (proto, csum) in PUSHES {
        // V2 and V3 messages differ only in the checksum.
        let m = encode(proto, &push(csum));
        assert_eq!(m[8..], msg[8..], "{proto:?}");
        assert_eq!(m[4..8] != [0; 4], csum, "{proto:?}: checksum");
        each_csum(|c| {
            let mut dp = Datapath::new(true, c);
            let seq = dp.connect(1023, proto, nid(EXTERNAL_NID));
            let (frame, out) = dp.send_push(1023, seq, proto, csum);
            let got = Tcp4::parse(&frame).unwrap().payload(&out);
            if csum {
                assert_ne!(got[COMP_AT..COMP_AT + 4], m[COMP_AT..COMP_AT + 4]);
            }
            let n = dp.counters();
            let what = format!("{c:?} {proto:?}: {n:?}");
            assert_eq!((n.own_nids, n.undiscovered), (1, 1), "{what}");
            assert_eq!(n.compensated, u64::from(csum), "{what}");
            // The acceptor request, the HELLO and the push.
            assert_eq!((n.out_segments, n.out_flows_opened), (3, 1), "{what}");
            assert_eq!((n.out_desynced, n.out_dropped), (0, 0), "{what}");
            // The ingress side: the connection, its HELLO's dst_nid, the external NID learned.
            assert_eq!(
                (n.flows_opened, n.rewritten, n.learned),
                (1, 1, 1),
                "{what}"
            );
        });
    }
}

#[test]
fn a_push_split_at_every_byte_is_rewritten_as_whole() {
    for (proto, csum) in PUSHES {
        let msg = encode(proto, &push(csum));
        each_csum(|c| {
            let mut dp = Datapath::new(true, c);
            let seq = dp.connect(1023, proto, nid(EXTERNAL_NID));
            let (frame, out) = dp.send_push(1023, seq, proto, csum);
            let whole = Tcp4::parse(&frame).unwrap().payload(&out).to_vec();
            for cut in 1..msg.len() {
                let port = 2000 + cut as u16;
                let seq = dp.connect(port, proto, nid(EXTERNAL_NID));
                for (from, to) in [(0, cut), (cut, msg.len())] {
                    let at = seq.wrapping_add(from as u32);
                    let frame = out_seg(port, at, &msg[from..to]).frame();
                    let (ret, out) = dp.run_egress(&frame);
                    let what = format!("{c:?} {proto:?} cut {cut} part {from}..{to}");
                    assert_frame(&frame, ret, &out, &whole[from..to], &what);
                }
            }
            let n = dp.counters();
            let pushes = msg.len() as u64;
            let what = format!("{c:?} {proto:?}: {n:?}");
            assert_eq!((n.own_nids, n.undiscovered), (pushes, pushes), "{what}");
            assert_eq!(n.out_flows_opened, pushes, "{what}");
            assert_eq!((n.out_desynced, n.out_dropped), (0, 0), "{what}");
        });
    }
}

/// A copy of the push sent again, before or after the client's FIN, comes out as its first
/// copy did, from the history.
#[test]
fn a_retransmitted_push_comes_out_as_its_first_copy() {
    for (proto, csum) in PUSHES {
        each_csum(|c| {
            let mut dp = Datapath::new(true, c);
            let seq = dp.connect(1023, proto, nid(EXTERNAL_NID));
            let (frame, out) = dp.send_push(1023, seq, proto, csum);
            let first = (PASS, out);
            let what = format!("{c:?} {proto:?}");
            assert_eq!(dp.run_egress(&frame), first, "{what}: again");
            let end = seq.wrapping_add(Tcp4::parse(&frame).unwrap().payload_len as u32);
            let fin = Build {
                flags: ACK | FIN,
                ..out_seg(1023, end, &[])
            }
            .frame();
            assert_eq!(dp.run_egress(&fin), (PASS, fin.clone()), "{what}: FIN");
            assert_eq!(dp.run_egress(&frame), first, "{what}: after the FIN");
            let n = dp.counters();
            let what = format!("{what}: {n:?}");
            // Counted once, when first rewritten; three copies of it went through.
            assert_eq!((n.own_nids, n.undiscovered), (1, 1), "{what}");
            assert_eq!(n.out_segments, 2 + 3, "{what}");
            assert_eq!((n.out_desynced, n.out_dropped), (0, 0), "{what}");
        });
    }
}

/// What the client sends that is not a push to rewrite passes byte for byte.
#[test]
fn egress_frames_without_a_push_to_rewrite_pass_untouched() {
    let info = ping_info(FEATURES, &[nid(CLIENT_NID)]);
    each_csum(|c| {
        let mut dp = Datapath::new(true, c);
        let mut frames: Vec<(&str, Vec<u8>)> = Vec::new();
        // On a NATed connection: a PUT on another portal carrying ping information, the ping.
        let mut seq = dp.connect(1023, Proto::V3, nid(EXTERNAL_NID));
        for (what, unit) in [
            (
                "PUT on portal 4",
                put(4, ping::MATCH_BITS, info.clone(), false),
            ),
            ("ping GET", ping_get()),
        ] {
            let msg = encode(Proto::V3, &unit);
            frames.push((what, out_seg(1023, seq, &msg).frame()));
            seq = seq.wrapping_add(msg.len() as u32);
        }
        let push = encode(Proto::V3, &push(false));
        let mut udp = out_seg(1023, seq, &push).frame();
        udp[14 + 9] = 17;
        frames.push(("UDP", udp));
        let mut icmp = out_seg(1023, seq, &push).frame();
        icmp[14 + 9] = 1;
        frames.push(("ICMP", icmp));
        // The server names the client by its own NID: no NAT, nothing to rewrite.
        let seq = dp.connect(1022, Proto::V3, nid(CLIENT_NID));
        frames.push(("push without NAT", out_seg(1022, seq, &push).frame()));
        // A connection to a port lnat does not follow.
        let other = |seq: u32, flags: u8, payload| {
            Build {
                dst: (SERVER, 989),
                flags,
                ..out_seg(1021, seq, payload)
            }
            .frame()
        };
        let stream = client_stream(Proto::V3, vec![]).bytes();
        frames.push(("SYN to port 989", other(99, SYN, &[])));
        frames.push(("HELLO to port 989", other(100, ACK | PSH, &stream)));
        let after = 100 + stream.len() as u32;
        frames.push(("push to port 989", other(after, ACK | PSH, &push)));
        for (what, f) in &frames {
            assert_eq!(dp.run_egress(f), (PASS, f.clone()), "{c:?} {what}");
        }
        let n = dp.counters();
        let what = format!("{c:?}: {n:?}");
        assert_eq!(
            (n.own_nids, n.undiscovered, n.compensated),
            (0, 0, 0),
            "{what}"
        );
        // Two connections on port 988: the requests, HELLOs, the PUT, the GET and the push.
        assert_eq!((n.out_flows_opened, n.out_segments), (2, 7), "{what}");
        assert_eq!((n.out_desynced, n.out_dropped), (0, 0), "{what}");
    });
}

/// The real capture, an `lnetctl ping` through the NAT: with the server's frames through the
/// ingress program, which learns the NAT's NID on each connection, every frame the client sent
/// passes the egress program byte for byte. It has no push.
#[test]
fn the_clients_frames_of_the_capture_pass_untouched() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("captures/nat_acceptall_client.pcap");
    let capture = frames::read_pcap(&path).expect("capture");
    let client = [192, 168, 50, 2];
    each_csum(|csum| {
        let mut dp = Datapath::new(true, csum);
        let mut sent = 0;
        for frame in &capture {
            let t = Tcp4::parse(frame).expect("TCP");
            if t.sport == 988 && t.dst == client {
                assert_eq!(dp.run(frame).0, PASS, "{csum:?} server seq {}", t.seq);
                continue;
            }
            assert!(t.dport == 988 && t.src == client, "{t:?}");
            let what = format!("{csum:?} client port {} seq {}", t.sport, t.seq);
            assert_eq!(dp.run_egress(frame), (PASS, frame.clone()), "{what}");
            sent += usize::from(t.payload_len > 0);
        }
        assert_eq!(sent, 24);
        // Each connection's ingress had the NAT's NID for the egress program to use.
        let flows = dp.maps.flows().expect("flows");
        let hints: Vec<Nid> = flows.iter().map(|(_, f)| Nid(f.tracker.hint)).collect();
        assert_eq!(hints, [nid("10.88.0.254@tcp"); 3], "{csum:?}");
        let n = dp.counters();
        let what = format!("{csum:?}: {n:?}");
        assert_eq!(n.rewritten, 5, "{what}");
        // Four handshakes: ports 1023, 1022, 1023 again and 1021.
        assert_eq!((n.out_flows_opened, n.out_segments), (4, 24), "{what}");
        assert_eq!((n.own_nids, n.undiscovered), (0, 0), "{what}");
        assert_eq!((n.out_desynced, n.out_dropped), (0, 0), "{what}");
    });
}
