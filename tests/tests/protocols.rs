//! Protocol coverage through the port-remapping NAT: every socklnd version and byte order, V2
//! checksums, NOOPs, a server of the other byte order, V1 (which names no destination in its
//! HELLO), and an acceptor connection request arriving at the client's own port 988.

use std::time::Duration;

use lnat_tests::{
    harness::{self, Host, Lnat},
    topology::{CLIENT_NID, NAT, NAT_NID, SERVER_NID, TopoOpts, Topology},
};

const PUTS: u64 = 40;

#[test]
fn every_version_and_byte_order_is_rewritten() {
    let t = Topology::new("vers", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    // (client flags, server flags, socklnd checksums on)
    let variants: [(&[&str], &[&str], bool); 7] = [
        (&["--proto", "2"], &["--csum"], true),
        (&["--proto", "2", "--endian", "big"], &["--csum"], true),
        (&["--proto", "3"], &[], false),
        (&["--proto", "3", "--endian", "big"], &[], false),
        (&["--proto", "4", "--ctype", "2"], &[], false),
        (&["--proto", "4", "--endian", "big"], &[], false),
        // A big-endian server talking to a little-endian client: its HELLO and ksock headers are
        // byte-swapped relative to the client's, its LNet headers LE as everyone's.
        (&["--proto", "3"], &["--endian", "big"], false),
    ];
    for (client_args, server_args, csum) in variants {
        let before = lnat.counters().expect("counters");
        let (client, served) =
            harness::puts(&t, PUTS, "mixed", server_args, client_args).expect("exchange");
        let what = format!("client {client_args:?} server {server_args:?}");
        harness::check_intact(&client, &served, PUTS as usize).expect(&what);
        assert_eq!(client.server_hello_dst_nid, CLIENT_NID, "{what}");
        assert_eq!(
            served.connections[0].proto.to_string(),
            client_args[1],
            "{what}"
        );
        let after = lnat.counters().expect("counters");
        let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
        assert_eq!(delta("rewritten"), PUTS + 1, "{what}: {after}");
        assert_eq!(
            delta("compensated"),
            if csum { PUTS } else { 0 },
            "{what}: {after}"
        );
        assert_eq!(delta("desynced"), 0, "{what}: {after}");
    }
    assert_eq!(lnat.counter("learned").expect("counter"), 1);
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
}

#[test]
fn v1_is_rewritten_once_the_external_nid_is_mapped() {
    let t = Topology::new("v1", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let (client, _) = harness::puts(&t, PUTS, "mixed", &[], &["--proto", "1"]).expect("exchange");
    // A V1 HELLO names no destination, so there is nothing to learn from.
    assert_eq!(client.status, "rejected", "{}", client.reason);
    assert!(client.reason.contains("Bad dest nid"), "{}", client.reason);
    assert_eq!(lnat.counter("learned").expect("counter"), 0);
    host.lnat(&["map", "add", NAT_NID, "--iface", "eth0"])
        .expect("map add");
    let (client, served) =
        harness::puts(&t, PUTS, "mixed", &[], &["--proto", "1"]).expect("exchange");
    harness::check_intact(&client, &served, PUTS as usize).expect("intact");
    assert_eq!(served.connections[0].proto, 1);
    assert_eq!(lnat.counter("rewritten").expect("counter"), PUTS);
}

/// An LNet node behind the NAT that forwards its port 988: the peer outside dials the NAT's NID,
/// the node's acceptor refuses a request for a NID that is not its own, and lnat, told the
/// external NID, rewrites the connection request and the HELLO. The peer then sees the node's
/// own NID in the reply HELLO: that direction (egress) is outside what lnat rewrites.
#[test]
fn an_inbound_connection_request_for_the_external_nid_is_rewritten() {
    let t = Topology::new(
        "inbound",
        TopoOpts {
            forward_acceptor: true,
            ..TopoOpts::default()
        },
    )
    .expect("topology");
    let acceptor = ["--nid", CLIENT_NID, "--accept", "secure", "--puts", "5"];
    let dialer = [
        "--server",
        &format!("{NAT}:988"),
        "--server-nid",
        NAT_NID,
        "--nid",
        SERVER_NID,
        "--expect",
        "5",
        "--timeout-secs",
        "20",
    ]
    .map(String::from);
    let dialer: Vec<&str> = dialer.iter().map(String::as_str).collect();
    let wait = Duration::from_secs(60);
    let (peer, node) =
        harness::exchange(t.client(), t.server(), &acceptor, &dialer, wait).expect("without");
    assert_eq!(peer.status, "refused", "{}", peer.reason);
    let why = node.connections[0].refused.clone().unwrap_or_default();
    assert!(
        why.contains(&format!("for {NAT_NID}: No matching NI")),
        "{why}"
    );

    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &["--external", NAT_NID]).expect("attach");
    let (peer, node) =
        harness::exchange(t.client(), t.server(), &acceptor, &dialer, wait).expect("with");
    let conn = &node.connections[0];
    assert_eq!(conn.refused, None, "the acceptor took the request");
    assert_eq!(conn.hello_dst_nid, CLIENT_NID, "the peer's HELLO names us");
    assert_eq!(conn.peer_nid, SERVER_NID);
    assert_eq!(peer.status, "rejected", "{}", peer.reason);
    assert!(
        peer.reason
            .contains(&format!("but they claimed they were {CLIENT_NID}")),
        "{}",
        peer.reason
    );
    let c = &lnat.status().expect("status")["counters"];
    assert_eq!(c["rewritten"], 2, "connreq and HELLO: {c}");
    assert_eq!(c["desynced"], 0, "{c}");
}
