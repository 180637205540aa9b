//! Segmentation extremes in network namespaces: every segment 1 to 100 bytes long, and BIG TCP
//! packets larger than 64 KiB (up to 185,000 bytes) with headers anywhere in them. (Headers split at every byte
//! offset, with every skb checksum state, are the golden tests; 64 KiB GRO packets of
//! zero-payload messages and random tiny writes are in `core.rs`.)

use std::time::Duration;

use lnat_tests::{
    harness::{self, Host, Lnat},
    topology::{TopoOpts, Topology},
};

/// Runs `puts` PUTs of `sizes` with lnat on the client; checks them intact, every NID
/// rewritten, no checksum error; returns the payload bytes and the segments lnat saw.
fn intact(t: &Topology, puts: u64, sizes: &str, server_extra: &[&str]) -> (u64, u64) {
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let (client, served) = harness::puts(t, puts, sizes, server_extra, &[]).expect("exchange");
    harness::check_intact(&client, &served, puts as usize).expect("intact");
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
    let c = lnat.counters().expect("counters");
    assert_eq!(c["rewritten"].as_u64(), Some(puts + 1), "{c}");
    assert_eq!(c["desynced"], 0, "{c}");
    assert_eq!(c["conflicts"], 0, "{c}");
    lnat.wait_no_flows(Duration::from_secs(10))
        .expect("flows freed");
    let bytes = client.received.iter().map(|p| u64::from(p.size)).sum();
    (bytes, c["segments"].as_u64().expect("segments"))
}

#[test]
fn segments_of_one_to_a_hundred_bytes() {
    // Writes of 1 to 100 bytes, sent at once (TCP_NODELAY), and segments of at most 100 bytes
    // (the client's MSS) without GRO: each header is cut at random places, NIDs included.
    let t = Topology::new(
        "tiny",
        TopoOpts {
            client_mss: Some(100),
            gro: false,
            full_csum: true,
            ..TopoOpts::default()
        },
    )
    .expect("topology");
    let (bytes, segments) = intact(&t, 500, "small", &["--chunk-max", "100"]);
    // Headers (96 bytes with their socklnd message) and payloads, in segments of 50 bytes on
    // average at most.
    let stream = bytes + 500 * 96;
    assert!(
        segments >= stream / 100,
        "{segments} segments for {stream} bytes: not segmented"
    );
    println!("RESULT tiny segments: {stream} stream bytes in {segments} segments");
}

/// Counts, in `t`'s client, LNet packets longer than 64 KiB (nftables sees the skb TC saw).
fn count_big_packets(t: &Topology) {
    t.client()
        .run(&[
            "nft",
            "add table ip big; add chain ip big input { type filter hook input priority 0; }; \
             add rule ip big input tcp sport 988 meta length > 65535 counter",
        ])
        .expect("nft");
}

/// Packets counted by [`count_big_packets`].
fn big_packets(t: &Topology) -> u64 {
    let rules = t
        .client()
        .run(&["nft", "list", "chain", "ip", "big", "input"])
        .expect("nft list");
    rules
        .split("counter packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .expect("a counter")
}

#[test]
fn big_tcp_packets_beyond_64k_arrive_intact() {
    let t = Topology::new(
        "big",
        TopoOpts {
            big_tcp: Some(185_000),
            ..TopoOpts::default()
        },
    )
    .expect("topology");
    count_big_packets(&t);
    let (bytes, segments) = intact(&t, 300, "mixed", &["--batch", "8"]);
    let big = big_packets(&t);
    assert!(big > 0, "no packet beyond 64 KiB reached the client");
    println!("RESULT BIG TCP: {bytes} payload bytes in {segments} segments, {big} beyond 64 KiB");
}
