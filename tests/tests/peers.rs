//! Many peers and flows through the port-remapping NAT: two clients behind it at once (each
//! receives only its own messages, and both learn the same external NID as their own), one client
//! talking to three servers, 2,000 connections followed at once, and more connections than the
//! flow table holds (an evicted connection's segments pass untouched and are counted; the client
//! then rejects the server's messages, reconnects LNet-style, and lnat follows the new
//! connection from its handshake).

use std::time::{Duration, Instant};

use lnat_tests::{
    harness::{self, Host, Lnat},
    ns::{Netns, Proc},
    report::{ClientReport, Put},
    topology::{self, CLIENT_NID, NAT_NID, SERVER_NID, TopoOpts, Topology},
    workload::{self, Sizes},
};

const WAIT: Duration = Duration::from_secs(90);

/// Client `i`'s NID.
fn client_nid(i: usize) -> String {
    format!("{}@tcp", topology::client_addr(i))
}

/// What a server seeded `seed` sends the peer `nid` as its first `n` PUTs of `sizes`.
fn expected(sizes: &str, seed: u64, nid: &str, n: u64) -> Vec<Put> {
    let sizes: Sizes = sizes.parse().expect("sizes");
    workload::expected(&sizes, seed, nid.parse().expect("nid"), n)
}

/// Starts a client in `ns` as `nid`, dialling `server` (`address:988`) as `server_nid` for `n`
/// PUTs; `extra` flags.
fn dial(ns: &Netns, nid: &str, server: &str, server_nid: &str, n: u64, extra: &[&str]) -> Proc {
    let n = n.to_string();
    let mut args = vec![
        "--server",
        server,
        "--server-nid",
        server_nid,
        "--nid",
        nid,
        "--expect",
        &n,
        "--timeout-secs",
        "60",
    ];
    args.extend_from_slice(extra);
    harness::spawn_client(ns, &args).expect("client")
}

#[test]
fn two_clients_behind_one_nat_each_receive_their_own_messages() {
    const PUTS: u64 = 100;
    let t = Topology::new(
        "two",
        TopoOpts {
            clients: 2,
            ..TopoOpts::default()
        },
    )
    .expect("topology");
    let hosts: Vec<Host> = (0..2)
        .map(|i| Host::new(t.client_n(i)).expect("host"))
        .collect();
    let lnats: Vec<Lnat<'_>> = hosts
        .iter()
        .map(|h| Lnat::attach(h, "eth0", &[]).expect("attach"))
        .collect();
    // Paced, so that the two connections overlap.
    let server = harness::lnet_server(&t, PUTS, "mixed", &["--conns", "2", "--pace-ms", "3"])
        .expect("server");
    t.server()
        .wait_listening(topology::ACCEPTOR_PORT, Duration::from_secs(10))
        .expect("listening");
    let server_addr = format!("{}:988", topology::SERVER);
    let clients: Vec<Proc> = (0..2)
        .map(|i| {
            dial(
                t.client_n(i),
                &client_nid(i),
                &server_addr,
                SERVER_NID,
                PUTS,
                &[],
            )
        })
        .collect();
    let reports: Vec<ClientReport> = clients
        .into_iter()
        .map(|c| harness::client_report(c, WAIT).expect("client report"))
        .collect();
    let served = harness::server_report(server, WAIT).expect("server report");
    let want: Vec<Vec<Put>> = (0..2)
        .map(|i| expected("mixed", 1, &client_nid(i), PUTS))
        .collect();
    assert_ne!(
        want[0], want[1],
        "the two clients are sent different payloads"
    );
    for (i, (client, lnat)) in reports.iter().zip(&lnats).enumerate() {
        assert_eq!(client.status, "ok", "client {i}: {}", client.reason);
        assert_eq!(
            client.received, want[i],
            "client {i} received another's PUTs"
        );
        assert_eq!(client.server_hello_dst_nid, client_nid(i), "client {i}");
        let status = lnat.status().expect("status");
        let mappings = status["mappings"].as_array().expect("mappings");
        assert_eq!(mappings.len(), 1, "client {i}: {status}");
        assert_eq!(mappings[0]["external"], NAT_NID, "client {i}");
        assert_eq!(mappings[0]["local"], client_nid(i).as_str(), "client {i}");
        let c = &status["counters"];
        assert_eq!(c["learned"], 1, "client {i}: {c}");
        assert_eq!(c["rewritten"].as_u64(), Some(PUTS + 1), "client {i}: {c}");
        assert_eq!(c["desynced"], 0, "client {i}: {c}");
        assert_eq!(t.client_n(i).nstat("TcpInCsumErrors").expect("nstat"), 0);
    }
    // The server named both NAT_NID, and sent each its own PUTs.
    let mut sent: Vec<Vec<Put>> = served
        .connections
        .iter()
        .map(|c| {
            assert_eq!(c.peer_nid, NAT_NID);
            c.sent.clone()
        })
        .collect();
    sent.sort();
    let mut want = want;
    want.sort();
    assert_eq!(sent, want);
}

/// Waits until `n` sockets listen on port 988 in the server's namespace.
fn wait_listeners(t: &Topology, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = t
            .server()
            .run(&["ss", "-Hltn", "sport = :988"])
            .expect("ss");
        if out.lines().count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} servers do not listen: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_client_talks_to_three_servers_at_once() {
    const PUTS: u64 = 100;
    let t = Topology::new(
        "three",
        TopoOpts {
            servers: 3,
            ..TopoOpts::default()
        },
    )
    .expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let addrs: Vec<String> = (0..3).map(topology::server_addr).collect();
    let servers: Vec<Proc> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let (listen, nid, seed) = (format!("{a}:988"), format!("{a}@tcp"), (i + 1).to_string());
            let puts = PUTS.to_string();
            harness::server(
                t.server(),
                &[
                    "--listen",
                    &listen,
                    "--nid",
                    &nid,
                    "--seed",
                    &seed,
                    "--accept",
                    "all",
                    "--puts",
                    &puts,
                    "--pace-ms",
                    "3",
                ],
            )
            .expect("server")
        })
        .collect();
    wait_listeners(&t, 3);
    let clients: Vec<Proc> = addrs
        .iter()
        .map(|a| {
            dial(
                t.client(),
                CLIENT_NID,
                &format!("{a}:988"),
                &format!("{a}@tcp"),
                PUTS,
                &[],
            )
        })
        .collect();
    let reports: Vec<ClientReport> = clients
        .into_iter()
        .map(|c| harness::client_report(c, WAIT).expect("client report"))
        .collect();
    for (i, (client, server)) in reports.iter().zip(servers).enumerate() {
        let served = harness::server_report(server, WAIT).expect("server report");
        harness::check_intact(client, &served, PUTS as usize)
            .unwrap_or_else(|e| panic!("server {i}: {e:#}"));
        assert_eq!(client.server_hello_dst_nid, CLIENT_NID, "server {i}");
        assert_eq!(served.connections[0].peer_nid, NAT_NID, "server {i}");
    }
    assert_ne!(
        reports[0].received, reports[1].received,
        "the servers send different payloads"
    );
    let status = lnat.status().expect("status");
    let mappings = status["mappings"].as_array().expect("mappings");
    assert_eq!(
        mappings.len(),
        1,
        "one external NID for all three: {status}"
    );
    assert_eq!(mappings[0]["external"], NAT_NID);
    assert_eq!(mappings[0]["local"], CLIENT_NID);
    let c = &status["counters"];
    assert_eq!(c["learned"], 1, "{c}");
    assert_eq!(c["flows_opened"], 3, "{c}");
    assert_eq!(c["rewritten"].as_u64(), Some(3 * (PUTS + 1)), "{c}");
    assert_eq!(c["desynced"], 0, "{c}");
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
    lnat.wait_no_flows(Duration::from_secs(10))
        .expect("flows freed");
}

#[test]
fn two_thousand_connections_are_followed_at_once() {
    const CONNS: u64 = 2000;
    const PUTS: u64 = 10;
    let t = Topology::new("2000", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let conns = CONNS.to_string();
    // Ten PUTs half a second apart: every connection lasts five seconds, longer than it takes
    // to open them all even on a loaded machine.
    let server = harness::lnet_server(
        &t,
        PUTS,
        "small",
        &["--conns", &conns, "--pace-ms", "500", "--hold-secs", "10"],
    )
    .expect("server");
    t.server()
        .wait_listening(topology::ACCEPTOR_PORT, Duration::from_secs(10))
        .expect("listening");
    let started = Instant::now();
    let mut client = harness::lnet_client(
        &t,
        PUTS,
        Duration::from_secs(45),
        &["--parallel", &conns, "--src-port", "0"],
    )
    .expect("client");
    let mut peak = 0;
    while client.running() {
        let flows = lnat.status().expect("status")["flows"]
            .as_array()
            .map_or(0, Vec::len);
        peak = peak.max(flows);
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = harness::client_report(client, WAIT).expect("client report");
    let took = started.elapsed();
    let served = harness::server_report(server, WAIT).expect("server report");
    assert_eq!(client.status, "ok", "{}", client.reason);
    assert_eq!(u64::from(client.sessions_ok), CONNS);
    assert_eq!(u64::from(client.connections), CONNS);
    let want = expected("small", 1, CLIENT_NID, PUTS);
    assert_eq!(client.received, want);
    assert_eq!(served.connections.len() as u64, CONNS);
    for c in &served.connections {
        assert_eq!(c.refused, None, "{}", c.peer);
        assert_eq!(c.sent, want, "{}", c.peer);
    }
    assert_eq!(peak as u64, CONNS, "connections followed at once");
    lnat.wait_no_flows(Duration::from_secs(20))
        .expect("flows freed");
    let c = lnat.counters().expect("counters");
    harness::assert_clean_run(&c, CONNS, CONNS * (PUTS + 1), "2,000 connections");
    assert_eq!(c["flows_closed"].as_u64(), Some(CONNS), "{c}");
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
    println!("RESULT {CONNS} connections: {peak} followed at once, all intact in {took:.1?}; {c}");
}

#[test]
fn more_connections_than_the_flow_table_holds() {
    const CLIENTS: u32 = 150;
    const PUTS: u64 = 30;
    let t = Topology::new("lru", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &["--max-flows", "64"]).expect("attach");
    // Connections last 0.6 s or more (a PUT every 20 ms), so about 150 overlap. The server
    // serves whatever comes; it is killed at the end.
    let _server = harness::lnet_server(
        &t,
        PUTS,
        "small",
        &["--conns", "100000", "--pace-ms", "20", "--hold-secs", "5"],
    )
    .expect("server");
    t.server()
        .wait_listening(topology::ACCEPTOR_PORT, Duration::from_secs(10))
        .expect("listening");
    let clients = CLIENTS.to_string();
    let client = harness::lnet_client(
        &t,
        PUTS,
        Duration::from_secs(45),
        &[
            "--parallel",
            &clients,
            "--src-port",
            "0",
            "--reconnects",
            "1000",
        ],
    )
    .expect("client");
    let out = client.wait(WAIT).expect("client");
    let client: ClientReport = serde_json::from_slice(&out.stdout).expect("client report");
    assert_eq!(client.status, "ok", "{}", client.reason);
    assert_eq!(client.sessions_ok, CLIENTS);
    assert_eq!(client.received, expected("small", 1, CLIENT_NID, PUTS));
    // Every failed connection is one whose server messages reached the client unrewritten
    // (its flow had been evicted): nothing else went wrong.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rejections = stderr
        .lines()
        .filter(|l| {
            l.contains(&format!(
                "Bad dest nid {NAT_NID} (should have been sent direct)"
            ))
        })
        .count();
    assert_eq!(stderr.lines().count(), rejections, "{stderr}");
    assert_eq!(rejections as u32, client.failures);
    assert!(client.failures > 0, "no connection lost its flow");
    let c = lnat.counters().expect("counters");
    assert!(c["untracked"].as_u64() > Some(0), "{c}");
    // Each reconnection was followed afresh from its handshake.
    assert_eq!(
        c["flows_opened"].as_u64(),
        Some(u64::from(client.connections)),
        "{c}"
    );
    assert_eq!(c["learned"], 1, "{c}");
    assert_eq!(c["desynced"], 0, "{c}");
    assert_eq!(c["conflicts"], 0, "{c}");
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
    println!(
        "RESULT {CLIENTS} clients, 64 flows: {} connections ({} rejected after eviction); {c}",
        client.connections, client.failures
    );
}
