//! With both of lnat's programs attached, an LNet 2.11+ server sends a NATed client its own
//! PUTs (RPC replies and callbacks): the client's discovery push names it by the NAT's NID and
//! without the DISCOVERY feature, so the server marks the peer discovered and non-Multi-Rail
//! and uses the client's own connection (docs/discovery.md, section 6). `discovery.rs` has the
//! same exchanges failing with the ingress program alone. Needs root (network namespaces) and
//! `target/release/lnat`.

use lnat_tests::{
    discovery::PeerSummary,
    harness::{Host, Lnat, RpcRun},
    impair::Weather,
    ping,
    report::{ClientReport, Put, RpcSent, ServerReport},
    topology::{NAT_NID, TopoOpts, Topology, client_addr},
};

/// The server's ping data features with discovery on, as the client's push carries them
/// after lnat: NI status, Multi-Rail, not routing, and no DISCOVERY.
const PUSHED_FEATURES: u32 =
    ping::feat::NI_STATUS | ping::feat::MULTI_RAIL | ping::feat::RTE_DISABLED;

/// The NAT'd world with `clients` clients, the private network unreachable from outside.
fn topology(tag: &str, clients: usize, more: TopoOpts) -> Topology {
    Topology::new(
        tag,
        TopoOpts {
            clients,
            private_unreachable: true,
            ..more
        },
    )
    .expect("topology")
}

/// lnat attached (both programs) on each client's eth0.
fn attach_all<'h>(hosts: &'h [Host]) -> Vec<Lnat<'h>> {
    hosts
        .iter()
        .map(|h| Lnat::attach(h, "eth0", &[]).expect("lnat attach"))
        .collect()
}

fn hosts(t: &Topology, n: usize) -> Vec<Host> {
    (0..n)
        .map(|i| Host::new(t.client_n(i)).expect("host"))
        .collect()
}

/// What the server sent, as the client must have received it.
fn sent(sent: &[RpcSent]) -> Vec<Put> {
    sent.iter()
        .map(|x| Put {
            index: x.index,
            size: x.size,
            digest: x.digest.clone(),
        })
        .collect()
}

/// A short account of the server's side, for failure messages (the whole report runs to
/// megabytes).
fn summary(server: &ServerReport) -> String {
    let mut out = String::new();
    for (i, conn) in server.connections.iter().enumerate() {
        let Some(r) = &conn.rpc else {
            out += &format!("[conn {i}: no rpc record, refused {:?}] ", conn.refused);
            continue;
        };
        let failed = |s: &[RpcSent]| s.iter().filter(|x| x.errno != 0).count();
        out += &format!(
            "[conn {i} from {}: {} requests, replies {} ({} failed), callbacks {} ({} failed), \
             pushes {:?}, first dials {:?}, peers {:?}, rejected {:?}] ",
            conn.peer_nid,
            r.requests.len(),
            r.replies.len(),
            failed(&r.replies),
            r.callbacks.len(),
            failed(&r.callbacks),
            r.pushes,
            r.dials.iter().take(2).collect::<Vec<_>>(),
            r.peers,
            conn.rejected,
        );
    }
    out
}

/// Asserts every reply and callback reached its client, byte for byte, without the server
/// dialling anyone, and that every push the server got named the NAT's NID alone.
fn assert_talked_back(run: &RpcRun, clients: &[ClientReport], server: &ServerReport) {
    assert_eq!(server.connections.len(), run.clients, "{}", summary(server));
    for (i, client) in clients.iter().enumerate() {
        assert_eq!(client.status, "ok", "client {i}: {}", client.reason);
        assert!(client.bad_dest_nids.is_empty(), "client {i}");
        let c = client.rpc.as_ref().expect("the client's rpc record");
        // The server knows the client by the NAT's port: its connection is the one whose
        // replies the client got.
        let conn = server
            .connections
            .iter()
            .find(|conn| {
                conn.rpc
                    .as_ref()
                    .is_some_and(|r| sent(&r.replies) == c.replies)
            })
            .unwrap_or_else(|| {
                panic!(
                    "client {i}: no connection sent the {} replies it got ({})",
                    c.replies.len(),
                    summary(server)
                )
            });
        assert_eq!(conn.peer_nid, NAT_NID);
        assert_eq!(conn.rejected, None, "lnat rewrote every dest NID");
        let r = conn.rpc.as_ref().expect("an rpc record");
        assert!(
            r.dials.is_empty(),
            "client {i}: the server dialled: {}",
            summary(server)
        );
        assert_eq!(r.requests, (0..run.requests).collect::<Vec<_>>());
        assert!(
            r.replies.iter().chain(&r.callbacks).all(|x| x.errno == 0),
            "client {i}: {}",
            summary(server)
        );
        assert_eq!(c.callbacks, sent(&r.callbacks), "client {i}: callbacks");
        assert_eq!(c.replies.len() as u64, run.requests);
        assert_eq!(c.callbacks.len() as u64, run.callbacks);
        assert_eq!(
            c.ping_data_nids,
            vec![format!("{}@tcp", client_addr(i))],
            "the client's own ping data names its private NID"
        );
        let pushed = usize::from(run.client_discovery && run.server_discovery);
        assert_eq!(r.pushes.len(), pushed, "client {i}: {:?}", r.pushes);
        for push in &r.pushes {
            assert_eq!(push.primary_nid, NAT_NID, "client {i}");
            assert_eq!(push.nids, vec![NAT_NID.to_string()], "client {i}");
            assert_eq!(push.features, PUSHED_FEATURES, "client {i}");
            assert_eq!(push.outcome, "Accepted", "client {i}");
            assert_eq!(push.discovery, 0, "client {i}");
        }
    }
    let last = server.connections.last().and_then(|c| c.rpc.as_ref());
    assert_eq!(
        last.map(|r| r.peers.clone()),
        Some(vec![PeerSummary {
            primary_nid: NAT_NID.into(),
            nids: vec![NAT_NID.into()],
            discovered: true,
            multi_rail: false,
            dc_error: 0,
        }]),
        "one peer for the NAT, discovered, not Multi-Rail"
    );
}

/// Asserts what lnat on a client counted: one push rewritten (its one own NID, DISCOVERY
/// cleared), nothing given up or forgotten in either direction.
fn assert_one_push_rewritten(lnat: &Lnat<'_>, pushes: u64) {
    let c = lnat.counters().expect("counters");
    assert_eq!(c["own_nids"], pushes, "{c}");
    assert_eq!(c["undiscovered"], pushes, "{c}");
    assert_eq!(c["out_flows_opened"], 1, "{c}");
    assert_nothing_given_up(&c);
}

/// Asserts that no stream was given up or had patches forgotten, in either direction.
fn assert_nothing_given_up(c: &serde_json::Value) {
    for k in [
        "out_desynced",
        "out_history_misses",
        "desynced",
        "history_misses",
    ] {
        assert_eq!(c[k], 0, "{k}: {c}");
    }
}

/// Discovery on at both ends (LNet's default): 1,000 requests answered and 100 callbacks,
/// on V3 and on V2 with checksums (the push's compensation keeps them valid).
#[test]
fn every_reply_and_callback_reaches_the_client() {
    let t = topology("tbk", 1, TopoOpts::default());
    let hosts = hosts(&t, 1);
    let lnat = attach_all(&hosts);
    for (proto, csum) in [(3, false), (2, true)] {
        let before = lnat[0].counters().expect("counters");
        let run = RpcRun {
            proto,
            csum,
            ..RpcRun::new(1000, 100)
        };
        let (clients, server) = run.run(&t).expect("exchange");
        assert_talked_back(&run, &clients, &server);
        assert_eq!(server.connections[0].proto, proto);
        let after = lnat[0].counters().expect("counters");
        let moved = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
        assert_eq!(
            (moved("own_nids"), moved("undiscovered")),
            (1, 1),
            "V{proto}: {after}"
        );
    }
    let c = lnat[0].counters().expect("counters");
    assert_eq!(c["out_flows_opened"], 2, "{c}");
    assert_eq!(c["out_desynced"], 0, "{c}");
}

/// Two clients behind one NAT share its NID: the server keeps one peer for it, and each
/// client's replies and callbacks go over its own connection.
#[test]
fn two_clients_behind_one_nat_each_get_theirs() {
    let t = topology("tb2", 2, TopoOpts::default());
    let hosts = hosts(&t, 2);
    let lnat = attach_all(&hosts);
    let run = RpcRun {
        clients: 2,
        ..RpcRun::new(300, 30)
    };
    let (clients, server) = run.run(&t).expect("exchange");
    assert_talked_back(&run, &clients, &server);
    for l in &lnat {
        assert_one_push_rewritten(l, 1);
    }
}

/// The server's discovery off: the client pushes only because lnat gives the server's ping
/// reply the DISCOVERY feature (ingress rule I1); the server then marks the peer discovered
/// without pinging it.
#[test]
fn with_discovery_off_at_the_server_the_client_still_gets_everything() {
    let t = topology("tbo", 1, TopoOpts::default());
    let hosts = hosts(&t, 1);
    let lnat = attach_all(&hosts);
    let run = RpcRun {
        server_discovery: false,
        ..RpcRun::new(300, 30)
    };
    let (clients, server) = run.run(&t).expect("exchange");
    let c = clients[0].rpc.as_ref().expect("the client's rpc record");
    assert_eq!(
        c.ping_reply_features,
        vec![PUSHED_FEATURES | ping::feat::DISCOVERY],
        "the reply as the client saw it; {}",
        lnat[0].counters().expect("counters")
    );
    assert_eq!(lnat[0].counters().expect("counters")["discoverable"], 1);
    let r = server.connections[0].rpc.as_ref().expect("an rpc record");
    assert_eq!(r.pushes.len(), 1, "{}", summary(&server));
    assert_eq!(r.pushes[0].primary_nid, NAT_NID);
    assert_eq!(r.pushes[0].nids, vec![NAT_NID.to_string()]);
    assert_talked_back(
        &RpcRun {
            client_discovery: true,
            server_discovery: true,
            ..run
        },
        &clients,
        &server,
    );
    assert_one_push_rewritten(&lnat[0], 1);
}

/// A bad network (loss, reordering and duplication towards the client) and the first copy of
/// the push lost after the client's egress program: its retransmission leaves rewritten too.
#[test]
fn under_impairment_and_a_lost_push_everything_arrives() {
    let t = topology(
        "tbi",
        1,
        TopoOpts {
            impair: Some(Weather {
                drop: 3,
                hold: 3,
                dup: 2,
                seed: 11,
            }),
            drop_first_push: true,
            ..TopoOpts::default()
        },
    );
    let hosts = hosts(&t, 1);
    let lnat = attach_all(&hosts);
    for (proto, csum) in [(3, false), (2, true)] {
        let run = RpcRun {
            proto,
            csum,
            timeout_secs: 120,
            ..RpcRun::new(300, 30)
        };
        let (clients, server) = run.run(&t).expect("exchange");
        assert_talked_back(&run, &clients, &server);
    }
    assert_eq!(t.pushes_dropped().expect("push-loss counter"), 2);
    let c = lnat[0].counters().expect("counters");
    // Counted once per push: the retransmission, the only copy the server got (and found
    // rewritten), was patched from the history of the first.
    assert_eq!(c["own_nids"], 2, "{c}");
    assert_eq!(c["undiscovered"], 2, "{c}");
    assert_nothing_given_up(&c);
}

/// The limit that remains: with the client's discovery off there is no push to rewrite, and
/// the server's pings to 12345-203.0.113.1@tcp need a connection the NAT refuses.
#[test]
fn with_discovery_off_at_the_client_the_server_still_cannot_reach_it() {
    let t = topology("tbc", 1, TopoOpts::default());
    let hosts = hosts(&t, 1);
    let lnat = attach_all(&hosts);
    let run = RpcRun {
        client_discovery: false,
        timeout_secs: 12,
        ..RpcRun::new(3, 2)
    };
    let (clients, server) = run.run(&t).expect("exchange");
    assert_eq!(clients[0].status, "timeout", "{}", clients[0].reason);
    let r = server.connections[0].rpc.as_ref().expect("an rpc record");
    assert!(r.pushes.is_empty());
    assert_eq!(r.dials.len(), 5, "{}", summary(&server));
    assert!(
        r.dials
            .iter()
            .all(|d| d.purpose == "ping" && d.nid == NAT_NID && d.errno == -111),
        "{}",
        summary(&server)
    );
    assert_eq!(lnat[0].counters().expect("counters")["own_nids"], 0);
}

/// What the client sends that is not a push leaves untouched: garbage to port 988 from a
/// reserved port (given up, byte for byte) and a stream to another port.
#[test]
fn unrelated_egress_traffic_passes_byte_for_byte() {
    let t = topology("tbu", 1, TopoOpts::default());
    let hosts = hosts(&t, 1);
    let lnat = attach_all(&hosts);
    let text = "GET / HTTP/1.1\r\nHost: 198.51.100.2@tcp\r\n\r\n";
    let (sent, got) =
        lnat_tests::harness::upload(&t, 988, Some(1000), &["--bytes", "1000000", "--text", text])
            .expect("upload");
    assert_eq!(sent, got, "port 988");
    assert_eq!(got["bytes"], 1_000_000);
    let (sent, got) =
        lnat_tests::harness::upload(&t, 5001, None, &["--bytes", "3000000", "--seed", "7"])
            .expect("upload");
    assert_eq!(sent, got, "port 5001");
    let c = lnat[0].counters().expect("counters");
    assert_eq!(c["own_nids"], 0, "{c}");
    assert_eq!(
        c["out_desynced"], 1,
        "the garbage on port 988 is given up: {c}"
    );
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
    assert_eq!(t.server().nstat("TcpInCsumErrors").expect("nstat"), 0);
}
