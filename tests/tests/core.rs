//! The core promise, in network namespaces: behind a NAT that remaps reserved ports, the
//! emulated client rejects the server's messages without lnat and receives every byte with it;
//! traffic lnat does not own passes untouched; lnat leaves nothing behind.

use std::time::Duration;

use lnat_tests::{
    harness::{self, Host, Lnat},
    ns::Netns,
    report::{ClientReport, ServerReport},
    topology::{CLIENT_NID, NAT_NID, NatMode, TopoOpts, Topology},
};

/// `harness::puts`, expecting it to run.
fn exchange(
    t: &Topology,
    puts: u64,
    sizes: &str,
    extra_server: &[&str],
    extra_client: &[&str],
) -> (ClientReport, ServerReport) {
    harness::puts(t, puts, sizes, extra_server, extra_client).expect("exchange")
}

/// Asserts the client got exactly what the server sent, byte for byte (by digest).
fn assert_intact(client: &ClientReport, served: &ServerReport, puts: usize) {
    harness::check_intact(client, served, puts).expect("intact");
}

fn csum_errors(ns: &Netns) -> u64 {
    ns.nstat("TcpInCsumErrors").expect("nstat")
}

#[test]
fn without_lnat_the_natted_client_rejects() {
    let t = Topology::new("rej", TopoOpts::default()).expect("topology");
    let (client, served) = exchange(&t, 3, "mixed", &[], &[]);
    assert_eq!(client.status, "rejected");
    assert!(
        client.reason.contains(&format!(
            "Bad dest nid {NAT_NID} (should have been sent direct)"
        )),
        "{}",
        client.reason
    );
    assert_eq!(client.server_hello_dst_nid, NAT_NID);
    assert_eq!(served.connections[0].peer_nid, NAT_NID);
    assert!(
        served.connections[0].peer_pid & 0x8000_0000 != 0,
        "userspace peer pid"
    );
}

/// 300 PUTs of mixed sizes through the port-remapping NAT, with lnat on the client; returns
/// the payload bytes and the segments the datapath saw.
fn three_hundred_puts(tag: &str, opts: TopoOpts, extra_server: &[&str]) -> (u64, u64) {
    let t = Topology::new(tag, opts).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("lnat attach");
    let before = csum_errors(t.client());
    let (client, served) = exchange(&t, 300, "mixed", extra_server, &[]);
    assert_intact(&client, &served, 300);
    assert_eq!(
        client.server_hello_dst_nid, CLIENT_NID,
        "the HELLO dst_nid is rewritten too"
    );
    assert_eq!(csum_errors(t.client()) - before, 0, "TcpInCsumErrors");
    let status = lnat.status().expect("status");
    assert_eq!(status["mappings"][0]["external"], NAT_NID);
    assert_eq!(status["mappings"][0]["local"], CLIENT_NID);
    assert_eq!(status["mappings"][0]["origin"], "learned");
    let c = &status["counters"];
    assert_eq!(c["learned"], 1);
    // Every PUT's dest_nid and the HELLO's dst_nid.
    assert_eq!(c["rewritten"].as_u64(), Some(301), "{status}");
    assert_eq!(c["desynced"], 0);
    assert_eq!(c["conflicts"], 0);
    let segments = c["segments"].as_u64().unwrap_or_default();
    let quiet = c["quiet"].as_u64().unwrap_or_default();
    eprintln!("RESULT {tag}: {segments} segments, {quiet} passed on the quiet window");
    // Most segments lie inside payloads and pass without the tracker.
    assert!(
        quiet * 3 > segments,
        "{quiet} of {segments} on the quiet window"
    );
    // The connection ended: its flow is closing, kept for late copies of its bytes.
    lnat.wait_no_flows(Duration::from_secs(10))
        .expect("flows freed");
    assert_eq!(lnat.counter("flows_closed").expect("counter"), 1);
    let lines = lnat.stop().expect("stop");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("learned {NAT_NID} -> {CLIENT_NID}"))),
        "{lines:?}"
    );
    (
        client.received.iter().map(|p| p.size as u64).sum(),
        segments,
    )
}

#[test]
fn with_lnat_300_mixed_puts_arrive_intact_gro_on() {
    three_hundred_puts(
        "gro1",
        TopoOpts {
            gro: true,
            ..TopoOpts::default()
        },
        &[],
    );
}

#[test]
fn with_lnat_300_mixed_puts_arrive_intact_gro_off() {
    three_hundred_puts(
        "gro0",
        TopoOpts {
            gro: false,
            ..TopoOpts::default()
        },
        &[],
    );
}

#[test]
fn with_lnat_300_mixed_puts_arrive_intact_with_checksums_verified_in_software() {
    let opts = TopoOpts {
        gro: false,
        full_csum: true,
        ..TopoOpts::default()
    };
    three_hundred_puts("swck", opts, &[]);
}

#[test]
fn with_lnat_300_mixed_puts_arrive_intact_in_100_byte_segments() {
    let (bytes, segments) = three_hundred_puts(
        "mss",
        TopoOpts {
            client_mss: Some(100),
            gro: false,
            full_csum: true,
            ..TopoOpts::default()
        },
        &[],
    );
    assert!(
        segments >= bytes / 100,
        "{segments} segments for {bytes} bytes: not segmented"
    );
}

#[test]
fn a_flood_of_zero_payload_messages_in_large_packets_arrives_intact() {
    let t = Topology::new("flood", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("lnat attach");
    let (client, served) = exchange(&t, 20000, "zero", &["--batch", "600"], &[]);
    assert_intact(&client, &served, 20000);
    let c = &lnat.status().expect("status")["counters"];
    assert_eq!(c["rewritten"], 20001);
    // Writes of 600 messages (57 KiB) go out as 64 KiB GSO packets: hundreds of headers each.
    assert!(c["segments"].as_u64().unwrap_or(u64::MAX) < 2000, "{c}");
}

#[test]
fn headers_split_anywhere_by_tiny_writes_arrive_intact() {
    let t = Topology::new("chunk", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("lnat attach");
    let (client, served) = exchange(&t, 300, "small", &["--chunk-max", "17"], &[]);
    assert_intact(&client, &served, 300);
    assert_eq!(lnat.counter("conflicts").expect("counter"), 0);
    assert_eq!(csum_errors(t.client()), 0);
}

#[test]
fn keepport_nat_traffic_passes_unchanged() {
    let t = Topology::new(
        "keep",
        TopoOpts {
            nat: NatMode::KeepPort,
            ..TopoOpts::default()
        },
    )
    .expect("topology");
    let (client, served) = exchange(&t, 20, "mixed", &[], &[]);
    assert_intact(&client, &served, 20);
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("lnat attach");
    let (client, served) = exchange(&t, 50, "mixed", &[], &[]);
    assert_intact(&client, &served, 50);
    assert_eq!(client.server_hello_dst_nid, CLIENT_NID);
    let status = lnat.status().expect("status");
    assert_eq!(status["counters"]["rewritten"], 0);
    assert_eq!(status["counters"]["learned"], 0);
    // Nothing was ever rewritten, so no copy can lack a patch: no history miss, whatever
    // was retransmitted.
    assert_eq!(status["counters"]["history_misses"], 0, "{status}");
    assert!(status["mappings"].as_array().is_some_and(Vec::is_empty));
}

/// Digests of a byte stream that is not LNet, on `port`, as sent and as the client (from
/// `src_port`) read it.
fn blob(t: &Topology, port: u16, src_port: Option<u16>) -> (String, String) {
    let (sent, got) =
        harness::blob(t, port, src_port, &["--bytes", "3000000", "--seed", "9"]).expect("blob");
    let digest = |v: serde_json::Value| v["digest"].as_str().unwrap_or_default().to_owned();
    (digest(sent), digest(got))
}

#[test]
fn unrelated_tcp_traffic_passes_byte_for_byte() {
    let t = Topology::new("blob", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("lnat attach");
    // Garbage on the LNet port, from a reserved port like an LNet client would use.
    let (sent, got) = blob(&t, 988, Some(1000));
    assert_eq!(sent, got, "port 988");
    // Another port entirely.
    let (sent, got) = blob(&t, 5001, None);
    assert_eq!(sent, got, "port 5001");
    let c = &lnat.status().expect("status")["counters"];
    assert_eq!(c["rewritten"], 0);
    assert_eq!(
        c["desynced"], 1,
        "the garbage on port 988 is given up, not rewritten"
    );
    assert_eq!(csum_errors(t.client()), 0);
}

#[test]
fn v2_checksums_still_verify_after_rewrites() {
    let t = Topology::new("csum", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("lnat attach");
    let (client, served) = exchange(&t, 100, "mixed", &["--csum"], &["--proto", "2"]);
    assert_intact(&client, &served, 100);
    assert_eq!(served.connections[0].proto, 2);
    assert_eq!(lnat.counter("compensated").expect("counter"), 100);
}

#[test]
fn attach_shows_the_mapping_then_leaves_nothing_behind() {
    let t = Topology::new("life", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("lnat attach");
    let program = lnat.lines()[0]
        .split("program ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_default()
        .to_owned();
    assert!(!program.is_empty(), "{:?}", lnat.lines());
    // A second attach on the same interface is refused.
    let again = host.lnat(&["attach", "eth0"]).expect_err("second attach");
    assert!(
        format!("{again:#}").contains("already attached to eth0"),
        "{again:#}"
    );
    let (client, _) = exchange(&t, 5, "mixed", &[], &[]);
    assert_eq!(client.status, "ok", "{}", client.reason);
    // The verifier's budget is 1,000,000 processed instructions: keep a margin for what comes.
    let verified = lnat.status().expect("status")["verified_insns"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(
        verified < 750_000,
        "the datapath costs the verifier {verified} instructions"
    );
    // bpftool reads the BTF-typed, pinned map: the learned NID by field name.
    let dump = host
        .run(&[
            "bpftool",
            "-j",
            "map",
            "dump",
            "pinned",
            "/sys/fs/bpf/lnat/eth0/LNAT_MAPPINGS",
        ])
        .expect("bpftool");
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("bpftool json");
    let entry = &dump[0]["formatted"];
    assert_eq!(
        entry["key"]["addr"],
        serde_json::json!([203, 0, 113, 1]),
        "{dump}"
    );
    assert_eq!(entry["value"]["origin"], 1);
    assert_eq!(
        entry["value"]["learned_on"],
        serde_json::json!([198, 51, 100, 2])
    );
    assert!(
        host.run(&["ls", "/sys/fs/bpf/lnat/eth0"])
            .expect("ls")
            .contains("LNAT_FLOWS")
    );
    let lines = lnat.stop().expect("stop");
    assert!(
        lines.iter().any(|l| l.contains("detached from eth0")),
        "{lines:?}"
    );
    // Nothing pinned, and the program is gone from the kernel.
    assert!(
        host.run(&["ls", "/sys/fs/bpf/lnat"]).is_err(),
        "pins left behind"
    );
    assert!(
        host.run(&["bpftool", "prog", "show", "id", &program])
            .is_err(),
        "program {program} still loaded"
    );
    let status = host.lnat(&["status"]).expect("status");
    assert!(status.contains("not attached to any interface"), "{status}");
}
