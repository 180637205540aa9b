//! Bad input on the way to a client running lnat: every socklnd protocol break the emulated
//! server can make, text of another protocol on port 988, IPv4 options, IPv4 fragments, UDP and
//! ICMP, and frames carrying 802.1Q tags. Each reaches the client as it was sent, or the flow is
//! given up (counted) and its bytes pass untouched; no checksum breaks, and the next LNet
//! connection on the same attachment is rewritten as usual.
//!
//! Covered elsewhere: random bytes on port 988 and TCP on other ports, byte for byte
//! (`core.rs`, `unrelated_tcp_traffic_passes_byte_for_byte`); frames that are not IPv4 TCP, cut
//! short or with bad header lengths, run through the loaded program (`golden.rs`,
//! `frames_lnat_does_not_own_pass_untouched`).
//!
//! When the client's kernel gives up on a stream with bytes unread, its close is a reset the
//! server never answers: lnat's egress program sees it and marks the flow closing (given up, it
//! stays until it has been idle long enough, LRU pressure, or the next connection from the same
//! port reuses it).

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use lnat_common::wire::{Endian, LnetType, PID_LUSTRE, Proto};
use lnat_tests::{
    harness::{self, Host, Lnat},
    lnet,
    topology::{NAT_NID, SERVER, SERVER_NID, TopoOpts, Topology},
};

const WAIT: Duration = Duration::from_secs(60);
/// PUTs of the normal exchange that follows each break.
const AFTER: u64 = 50;

/// How far counter `k` moved from `before` to `after`.
fn delta(before: &serde_json::Value, after: &serde_json::Value, k: &str) -> u64 {
    after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0)
}

/// A normal exchange on the same attachment: intact, every NID rewritten, nothing given up, and
/// no flow left behind.
fn then_a_normal_exchange(t: &Topology, lnat: &Lnat<'_>, what: &str) {
    let before = lnat.counters().expect("counters");
    let (client, served) = harness::puts(t, AFTER, "mixed", &[], &[]).expect("exchange");
    harness::check_intact(&client, &served, AFTER as usize)
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let after = lnat.counters().expect("counters");
    assert_eq!(
        delta(&before, &after, "rewritten"),
        AFTER + 1,
        "{what}: {after}"
    );
    assert_eq!(delta(&before, &after, "desynced"), 0, "{what}: {after}");
    assert_eq!(after["learned"], 1, "{what}: {after}");
    lnat.wait_no_flows(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert_eq!(
        t.client().nstat("TcpInCsumErrors").expect("nstat"),
        0,
        "{what}"
    );
}

/// One way `lnet-peer server --corrupt` breaks the stream, and what must come of it.
struct Break {
    mode: &'static str,
    /// What the client says of the stream, which reaches it as the server sent it.
    client_says: &'static str,
    /// Good PUTs before the break.
    good: usize,
    /// NIDs rewritten on the broken connection.
    rewritten: u64,
    /// Why lnat stops following the connection, if it must.
    gave_up: Option<&'static str>,
    /// Whether the server ends the connection; otherwise the client resets it.
    server_closes: bool,
}

fn broken(tag: &str, b: &Break) {
    let t = Topology::new(tag, TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let mut lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let server = harness::lnet_server(&t, 10, "mixed", &["--corrupt", b.mode, "--hold-secs", "5"])
        .expect("server");
    t.server()
        .wait_listening(988, Duration::from_secs(10))
        .expect("listening");
    let client = harness::lnet_client(&t, 10, Duration::from_secs(20), &[]).expect("client");
    let client = harness::client_report(client, WAIT).expect("client report");
    let served = harness::server_report(server, WAIT).expect("server report");
    let m = b.mode;
    assert_eq!(client.status, "error", "{m}: {}", client.reason);
    assert!(
        client.reason.contains(b.client_says),
        "{m}: {}",
        client.reason
    );
    let sent = &served.connections[0].sent;
    assert!(
        client.received.iter().all(|p| sent.contains(p)),
        "{m}: received a PUT the server did not send"
    );
    let c = lnat.counters().expect("counters");
    assert_eq!(
        client.received.len(),
        b.good,
        "{m}: {c}; client: {}",
        client.reason
    );
    assert_eq!(c["flows_opened"], 1, "{m}: {c}");
    assert_eq!(c["rewritten"].as_u64(), Some(b.rewritten), "{m}: {c}");
    assert_eq!(
        c["desynced"].as_u64(),
        Some(u64::from(b.gave_up.is_some())),
        "{m}: {c}"
    );
    if b.good == 0 {
        // A HELLO lnat cannot read teaches it nothing.
        assert_eq!(c["learned"], 0, "{m}: {c}");
    }
    if let Some(why) = b.gave_up {
        let line = format!(
            "stopped following {SERVER}:988 -> port {}: {why}",
            client.local_port
        );
        lnat.wait_line(&line, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{m}: {e:#}"));
    }
    if b.server_closes {
        lnat.wait_no_flows(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{m}: {e:#}"));
        assert_eq!(lnat.counters().expect("counters")["flows_closed"], 1, "{m}");
    } else {
        // The client reset the connection: the egress program saw the RST leave. The flow
        // stays, given up and closing.
        let status = lnat.status().expect("status");
        let flows = status["flows"].as_array().expect("flows");
        assert_eq!(flows.len(), 1, "{m}: {status}");
        assert_eq!(flows[0]["desynced"].as_str(), b.gave_up, "{m}: {status}");
        assert_eq!(flows[0]["closing"], true, "{m}: {status}");
        assert_eq!(status["counters"]["flows_closed"], 1, "{m}: {status}");
    }
    // The next connection comes from the same reserved port: lnat follows it afresh, and (when
    // the old flow was left behind) in its place.
    then_a_normal_exchange(&t, &lnat, m);
}

#[test]
fn a_hello_with_a_bad_magic() {
    broken(
        "magic",
        &Break {
            mode: "hello-magic",
            client_says: "bad HELLO: BadMagic",
            good: 0,
            rewritten: 0,
            gave_up: Some("bad magic"),
            server_closes: true,
        },
    );
}

#[test]
fn a_hello_with_an_unknown_version() {
    broken(
        "version",
        &Break {
            mode: "hello-version",
            client_says: "bad HELLO: BadVersion(9)",
            good: 0,
            rewritten: 0,
            gave_up: Some("unknown version"),
            server_closes: true,
        },
    );
}

#[test]
fn a_message_of_an_unknown_type() {
    broken(
        "msgtype",
        &Break {
            mode: "msg-type",
            client_says: "Unknown message type: c5",
            good: 3,
            // The HELLO and three PUTs.
            rewritten: 4,
            gave_up: Some("bad message type"),
            server_closes: false,
        },
    );
}

#[test]
fn a_payload_above_the_lnet_maximum() {
    broken(
        "toolong",
        &Break {
            mode: "too-long",
            client_says: "bad payload 2097152 (1048576 max expected)",
            good: 3,
            // The HELLO, three PUTs, and the long one's dest_nid, which precedes its length.
            rewritten: 5,
            gave_up: Some("payload too long"),
            server_closes: false,
        },
    );
}

#[test]
fn a_header_cut_short_by_fin() {
    broken(
        "trunc",
        &Break {
            mode: "truncated",
            client_says: "failed to fill whole buffer",
            good: 3,
            // The 30 bytes sent hold the cut message's dest_nid address: rewritten too.
            rewritten: 5,
            gave_up: None,
            server_closes: true,
        },
    );
}

#[test]
fn a_header_cut_short_by_rst() {
    broken(
        "rst",
        &Break {
            mode: "reset",
            client_says: "Connection reset by peer",
            good: 3,
            rewritten: 5,
            gave_up: None,
            server_closes: true,
        },
    );
}

#[test]
fn another_protocol_on_port_988_passes_byte_for_byte() {
    let t = Topology::new("http", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let mut lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let text = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nnot LNet at all\r\n";
    // From a reserved port, as an LNet client would dial.
    let (sent, got) =
        harness::blob(&t, 988, Some(1000), &["--bytes", "1000000", "--text", text]).expect("blob");
    assert_eq!(sent["bytes"], 1_000_000);
    assert_eq!(got, sent, "the bytes differ");
    lnat.wait_line(
        &format!("stopped following {SERVER}:988 -> port 1000: bad magic"),
        Duration::from_secs(5),
    )
    .expect("given up");
    lnat.wait_no_flows(Duration::from_secs(10))
        .expect("flows freed");
    let c = lnat.counters().expect("counters");
    // Given up on its first segment; the rest passed unread.
    assert_eq!(c["segments"], 1, "{c}");
    assert_eq!(c["desynced"], 1, "{c}");
    assert_eq!(c["rewritten"], 0, "{c}");
    assert_eq!(c["flows_closed"], 1, "{c}");
    assert!(
        lnat.status().expect("status")["mappings"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
    then_a_normal_exchange(&t, &lnat, "after HTTP");
}

/// Counts, at the client's `eth0` ingress (nftables sees the skb as TC did), the frames that
/// match each of `rules`.
fn count_frames(t: &Topology, rules: &[&str]) {
    let mut script = "add table netdev count; add chain netdev count in { type filter hook \
                      ingress device eth0 priority 0; };"
        .to_owned();
    for r in rules {
        script += &format!(" add rule netdev count in {r} counter;");
    }
    t.client().run(&["nft", &script]).expect("nft");
}

/// The frames counted by each rule of [`count_frames`], in order.
fn counted(t: &Topology) -> Vec<u64> {
    t.client()
        .run(&["nft", "list", "chain", "netdev", "count", "in"])
        .expect("nft list")
        .split("counter packets ")
        .skip(1)
        .map(|r| {
            r.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a counter")
        })
        .collect()
}

#[test]
fn ipv4_options_are_read_past() {
    let t = Topology::new("ipopt", TopoOpts::default()).expect("topology");
    count_frames(&t, &["ip hdrlength 6 tcp sport 988"]);
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let (client, served) =
        harness::puts(&t, 100, "mixed", &["--ip-options"], &[]).expect("exchange");
    harness::check_intact(&client, &served, 100).expect("intact");
    assert!(counted(&t)[0] > 0, "no packet carried IPv4 options");
    let c = lnat.counters().expect("counters");
    assert_eq!(c["rewritten"], 101, "{c}");
    assert_eq!(c["desynced"], 0, "{c}");
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
}

/// lnat does not reassemble: a connection whose segments arrive as IPv4 fragments is given up
/// at its first fragment, and the client then sees what the server sent, NAT NID and all.
#[test]
fn ipv4_fragments_make_the_flow_give_up_untouched() {
    let t = Topology::new(
        "frag",
        TopoOpts {
            client_mtu: Some(1000),
            client_mss: Some(1460),
            ..TopoOpts::default()
        },
    )
    .expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let (client, served) =
        harness::puts(&t, 20, "0,4096", &["--no-df", "--hold-secs", "3"], &[]).expect("exchange");
    assert_eq!(client.status, "rejected", "{}", client.reason);
    assert!(
        client.reason.contains(&format!(
            "Bad dest nid {NAT_NID} (should have been sent direct)"
        )),
        "{}",
        client.reason
    );
    let sent = &served.connections[0].sent;
    assert!(client.received.iter().all(|p| sent.contains(p)));
    assert!(
        t.client().nstat("IpReasmOKs").expect("nstat") > 0,
        "nothing was fragmented"
    );
    let c = lnat.counters().expect("counters");
    assert!(c["fragments"].as_u64() >= Some(2), "{c}");
    assert_eq!(c["desynced"], 1, "{c}");
    // The HELLO and the first PUT, both short enough to arrive whole.
    assert_eq!(
        c["rewritten"].as_u64(),
        Some(1 + client.received.len() as u64),
        "{c}"
    );
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
    println!("RESULT fragments: {c}");
}

/// A PUT to the NAT's NID, as bytes: what lnat would rewrite if it took a datagram for LNet.
fn lnet_lookalike() -> Vec<u8> {
    let hdr = lnet::header(
        NAT_NID.parse().expect("nid"),
        PID_LUSTRE,
        SERVER_NID.parse().expect("nid"),
        PID_LUSTRE,
        LnetType::Put,
        7,
        32,
    );
    lnet::encode_lnet(Proto::V3, Endian::Little, hdr, vec![0xa5; 32], false)
}

#[test]
fn udp_and_icmp_pass_untouched() {
    let t = Topology::new("noTCP", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let before = lnat.counters().expect("counters");
    let data = lnet_lookalike();
    // UDP from port 988 to port 988, echoed by the server.
    let server = t
        .server()
        .within(|| UdpSocket::bind(format!("{SERVER}:988")))
        .expect("server ns")
        .expect("bind");
    let client = t
        .client()
        .within(|| UdpSocket::bind("0.0.0.0:988"))
        .expect("client ns")
        .expect("bind");
    for s in [&server, &client] {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
    }
    client
        .send_to(&data, format!("{SERVER}:988"))
        .expect("send");
    let mut buf = [0u8; 2048];
    let (n, from) = server.recv_from(&mut buf).expect("server receives");
    assert_eq!(&buf[..n], &data[..]);
    server.send_to(&buf[..n], from).expect("echo");
    let n = client.recv(&mut buf).expect("client receives");
    assert_eq!(&buf[..n], &data[..], "UDP payload changed");
    // An ICMP echo with the same payload (a ping socket: the kernel fills in id and checksum).
    t.client()
        .run(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 0"])
        .expect("sysctl");
    let ping = t
        .client()
        .within(|| {
            socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::ICMPV4),
            )
        })
        .expect("client ns")
        .expect("ping socket");
    ping.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut request = vec![8, 0, 0, 0, 0, 0, 0, 1];
    request.extend_from_slice(&data);
    let to: std::net::SocketAddr = format!("{SERVER}:0").parse().expect("addr");
    ping.send_to(&request, &to.into()).expect("ping");
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let mut r = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        let n = ping.recv(&mut r).expect("echo reply");
        // SAFETY: recv initialised the first n bytes.
        let r: Vec<u8> = r[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        if r[0] == 0 || Instant::now() >= deadline {
            break r;
        }
    };
    assert_eq!(reply[0], 0, "an echo reply");
    assert_eq!(&reply[8..], &data[..], "ICMP payload changed");
    let after = lnat.counters().expect("counters");
    for k in [
        "segments",
        "rewritten",
        "flows_opened",
        "desynced",
        "untracked",
    ] {
        assert_eq!(delta(&before, &after, k), 0, "{k}: {after}");
    }
    // The UDP datagram and the echo reply, at least (ARP may add more).
    assert!(delta(&before, &after, "passed") >= 2, "{after}");
    assert!(
        lnat.status().expect("status")["flows"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
}

/// The exchange with `tags` 802.1Q priority tags on every frame to the client: intact, every
/// NID rewritten, and the frames did carry the tags.
fn tagged(tag: &str, tags: u8) {
    let t = Topology::new(
        tag,
        TopoOpts {
            tags,
            // Room for two tags in a 1,500-byte MTU.
            client_mss: Some(1400),
            ..TopoOpts::default()
        },
    )
    .expect("topology");
    count_frames(
        &t,
        &[
            "ether type vlan vlan type ip",
            "ether type vlan vlan type vlan",
        ],
    );
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let (client, served) = harness::puts(&t, 100, "mixed", &[], &[]).expect("exchange");
    harness::check_intact(&client, &served, 100).expect("intact");
    let frames = counted(&t);
    assert!(
        frames[usize::from(tags) - 1] > 100,
        "{tags} tags: {frames:?}"
    );
    let c = lnat.counters().expect("counters");
    assert_eq!(c["rewritten"], 101, "{c}");
    assert_eq!(c["desynced"], 0, "{c}");
    lnat.wait_no_flows(Duration::from_secs(10))
        .expect("flows freed");
    // The client's kernel verifies every checksum in software here.
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
}

/// One tag: the kernel moves it out of the frame before TC, as a NIC's VLAN offload does.
#[test]
fn a_vlan_tag_the_kernel_removes_before_tc() {
    tagged("tag1", 1);
}

/// Two tags: the kernel removes the outer one; TC sees the inner one in the frame, which lnat
/// reads past.
#[test]
fn a_vlan_tag_left_in_the_frame() {
    tagged("tag2", 2);
}
