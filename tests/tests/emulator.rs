//! The emulated peers follow the kernel's rules, shown without lnat: through plain routing and a
//! port-keeping NAT every PUT arrives intact; through a port-remapping NAT the client refuses
//! the server's messages (`accept=all`) or the server refuses the client (`accept=secure`).
//! Needs root (network namespaces).

use std::time::Duration;

use lnat_common::wire::{ACCEPTOR_PORT, LNET_MTU, MAX_RESERVED_PORT, MIN_RESERVED_PORT};
use lnat_common::wire::{PID_LUSTRE, PID_USERFLAG};
use lnat_tests::{
    ns::Proc,
    report::{ClientReport, ServerReport},
    topology::{CLIENT, CLIENT_NID, NAT, NAT_NID, NatMode, SERVER, SERVER_NID, TopoOpts, Topology},
};

const PEER: &str = env!("CARGO_BIN_EXE_lnet-peer");
/// Longest any one peer may run; the client's own deadline is shorter.
const WAIT: Duration = Duration::from_secs(90);

fn topology(tag: &str, nat: NatMode) -> Topology {
    Topology::new(
        tag,
        TopoOpts {
            nat,
            ..TopoOpts::default()
        },
    )
    .expect("topology")
}

/// The one JSON line a peer printed.
fn report<T: serde::de::DeserializeOwned>(p: Proc) -> T {
    let out = p.wait(WAIT).expect("the peer ends in time");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "report {text:?}: {e}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs a server with `server_args` and a client with `client_args` to the end.
fn exchange(
    t: &Topology,
    server_args: &[&str],
    client_args: &[&str],
) -> (ClientReport, ServerReport) {
    let mut argv = vec![PEER, "server", "--nid", SERVER_NID, "--hold-secs", "20"];
    argv.extend_from_slice(server_args);
    let server = t.server().spawn(&argv).expect("server");
    t.server()
        .wait_listening(ACCEPTOR_PORT, Duration::from_secs(10))
        .expect("the server listens");
    let dial = format!("{SERVER}:{ACCEPTOR_PORT}");
    let mut argv = vec![
        PEER,
        "client",
        "--server",
        &dial,
        "--nid",
        CLIENT_NID,
        "--timeout-secs",
        "45",
    ];
    argv.extend_from_slice(client_args);
    let client = report(t.client().spawn(&argv).expect("client"));
    (client, report(server))
}

/// The client's flags to dial the server's NID and take `puts` PUTs.
fn dial(puts: &str) -> Vec<&str> {
    vec!["--server-nid", SERVER_NID, "--expect", puts]
}

/// Asserts the client took every PUT the server sent, byte for byte, from a reserved port.
fn assert_intact(client: &ClientReport, served: &ServerReport, puts: usize) {
    assert_eq!(client.status, "ok", "client: {}", client.reason);
    assert_eq!(client.role, "client");
    assert_eq!(served.role, "server");
    assert_eq!(served.connections.len(), 1);
    let conn = &served.connections[0];
    assert_eq!(conn.refused, None);
    assert_eq!(conn.sent.len(), puts);
    assert_eq!(client.received, conn.sent, "payload digests differ");
    assert!((MIN_RESERVED_PORT..=MAX_RESERVED_PORT).contains(&client.local_port));
    // A reserved port: the server takes the HELLO's word for who the peer is.
    assert_eq!(conn.peer_nid, CLIENT_NID);
    assert_eq!(conn.peer_pid, PID_LUSTRE);
    // A V1 HELLO has no dst_nid.
    if conn.proto != 1 {
        assert_eq!(client.server_hello_dst_nid, CLIENT_NID);
    }
}

#[test]
fn routed_client_receives_every_put() {
    let t = topology("er", NatMode::None);
    let (client, served) = exchange(
        &t,
        &["--puts", "60", "--sizes", "mixed", "--noop-every", "7"],
        &dial("60"),
    );
    assert_intact(&client, &served, 60);
    let conn = &served.connections[0];
    assert_eq!(conn.peer, format!("{CLIENT}:{}", client.local_port));
    assert_eq!(conn.proto, 3);
    assert!(conn.sent.iter().any(|p| p.size == LNET_MTU), "no 1 MiB PUT");
    assert!(conn.sent.iter().any(|p| p.size == 0), "no empty PUT");
}

#[test]
fn port_keeping_nat_passes_every_put() {
    let t = topology("ek", NatMode::KeepPort);
    let (client, served) = exchange(
        &t,
        &["--accept", "secure", "--puts", "30", "--sizes", "mixed"],
        &dial("30"),
    );
    assert_intact(&client, &served, 30);
    assert_eq!(
        served.connections[0].peer,
        format!("{NAT}:{}", client.local_port),
        "the NAT kept the reserved port"
    );
}

/// The case lnat exists for: the server addresses the client as the NAT's userspace peer, and
/// the client's lnet_parse drops the first message.
#[test]
fn port_remapping_nat_makes_the_client_reject_the_puts() {
    let t = topology("eh", NatMode::HighPort);
    let (client, served) = exchange(
        &t,
        &["--accept", "all", "--puts", "5", "--sizes", "small"],
        &dial("5"),
    );
    assert_eq!(client.status, "rejected");
    assert!(
        client.reason.contains(&format!(
            "Bad dest nid {NAT_NID} (should have been sent direct)"
        )),
        "{}",
        client.reason
    );
    assert!(client.received.is_empty());
    assert_eq!(client.server_hello_dst_nid, NAT_NID);
    let conn = &served.connections[0];
    assert_eq!(conn.peer_nid, NAT_NID);
    let port: u32 = conn
        .peer
        .strip_prefix(&format!("{NAT}:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("peer {} is not the NAT", conn.peer));
    assert!((40000..=49999).contains(&port), "NAT port {port}");
    assert_eq!(conn.peer_pid, PID_USERFLAG | port);
}

#[test]
fn port_remapping_nat_is_refused_by_a_secure_acceptor() {
    let t = topology("es", NatMode::HighPort);
    let (client, served) = exchange(&t, &["--accept", "secure", "--puts", "5"], &dial("5"));
    assert_eq!(client.status, "refused", "{}", client.reason);
    assert!(client.received.is_empty());
    let why = served.connections[0].refused.clone().unwrap_or_default();
    assert!(
        why.starts_with(&format!("Refusing connection from {NAT}: insecure port")),
        "{why}"
    );
}

#[test]
fn a_request_for_another_nid_is_refused() {
    let t = topology("en", NatMode::None);
    let (client, served) = exchange(
        &t,
        &["--puts", "1"],
        &["--server-nid", "203.0.113.99@tcp", "--expect", "1"],
    );
    assert_eq!(client.status, "refused", "{}", client.reason);
    assert_eq!(
        served.connections[0].refused.as_deref(),
        Some("Refusing connection from 198.51.100.2 for 203.0.113.99@tcp: No matching NI")
    );
}

/// Every protocol version and byte order, checksums on V2, and frames split anywhere.
#[test]
fn every_protocol_variant_delivers_intact() {
    let t = topology("ev", NatMode::None);
    let variants: [(&[&str], &[&str]); 5] = [
        (&["--sizes", "mixed"], &["--proto", "1"]),
        (
            &["--sizes", "small", "--csum", "--chunk-max", "7"],
            &["--proto", "2"],
        ),
        (
            &["--sizes", "0,1,4096,65537", "--csum", "--noop-every", "2"],
            &["--proto", "2", "--endian", "big"],
        ),
        (&["--sizes", "mixed"], &["--proto", "3", "--endian", "big"]),
        (
            &["--sizes", "mixed", "--noop-every", "3"],
            &["--proto", "4", "--ctype", "2"],
        ),
    ];
    for (server_args, client_args) in variants {
        let mut s = vec!["--puts", "12", "--seed", "3"];
        s.extend_from_slice(server_args);
        let mut c = dial("12");
        c.extend_from_slice(client_args);
        let (client, served) = exchange(&t, &s, &c);
        assert_intact(&client, &served, 12);
        let proto = client_args[1].parse::<u8>().expect("proto");
        assert_eq!(served.connections[0].proto, proto, "{client_args:?}");
    }
}
