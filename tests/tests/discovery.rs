//! The reproduction of why a NATed client's Lustre RPCs fail with only lnat's ingress program
//! attached (LNet 2.11 and later; `talk_back.rs` has them pass with both): before the server sends its reply PUT to the client's userspace peer it
//! discovers that peer, which needs a new connection to the NAT (refused) or, once the client's
//! push has named its private NID as primary, to that private address (times out). The
//! emulated server and client run discovery as lustre-release c881f8eb does
//! (`lnat_tests::discovery`); every number below is what that model predicts, so a change in
//! the model fails the test. Needs root (network namespaces) and `target/release/lnat`.

use lnat_tests::{
    discovery::PeerSummary,
    harness::{Host, Lnat, RpcRun},
    ping,
    report::{ClientReport, Dial, RpcClient, RpcServed, ServerReport},
    topology::{CLIENT_NID, NAT_NID, NatMode, SERVER_NID, TopoOpts, Topology},
};

/// Requests the client sends (and replies the server tries to send).
const REQUESTS: u64 = 3;
/// Callbacks the server tries to send.
const CALLBACKS: u64 = 2;
/// `-ECONNREFUSED`: the NAT has nothing on port 988.
const REFUSED: i32 = -111;
/// `-ETIMEDOUT`: the client's private address is not reachable from outside.
const TIMED_OUT: i32 = -110;
/// The server's own ping data: NI status, Multi-Rail, not routing, and discovery if on.
const FEATURES_ON: u32 = ping::feat::NI_STATUS
    | ping::feat::MULTI_RAIL
    | ping::feat::RTE_DISABLED
    | ping::feat::DISCOVERY;
const FEATURES_OFF: u32 = FEATURES_ON & !ping::feat::DISCOVERY;

/// The NAT'd world, with the clients' network unreachable from outside as behind a real NAT.
fn topology(tag: &str) -> Topology {
    Topology::new(
        tag,
        TopoOpts {
            private_unreachable: true,
            ..TopoOpts::default()
        },
    )
    .expect("topology")
}

/// One rpc exchange: the server with discovery `server_disc`, the client with `client_disc`.
fn rpc(t: &Topology, server_disc: &str, client_disc: &str) -> (ClientReport, ServerReport) {
    let run = RpcRun {
        server_discovery: server_disc == "on",
        client_discovery: client_disc == "on",
        timeout_secs: 12,
        ..RpcRun::new(REQUESTS, CALLBACKS)
    };
    let (mut clients, server) = run.run(t).expect("exchange");
    (clients.remove(0), server)
}

/// The server's rpc record of its one connection, from a peer it calls `peer_nid`.
fn served(s: &ServerReport, peer_nid: &str) -> RpcServed {
    assert_eq!(s.connections.len(), 1, "{s:?}");
    let conn = &s.connections[0];
    assert_eq!(conn.peer_nid, peer_nid);
    assert_eq!(conn.rejected, None, "lnat rewrote every dest NID");
    conn.rpc.clone().expect("an rpc record")
}

fn dial(purpose: &str, nid: &str, addr: &str, errno: i32) -> Dial {
    Dial {
        purpose: purpose.into(),
        nid: nid.into(),
        addr: addr.into(),
        errno,
        error: String::new(),
    }
}

/// The dials with their OS wording left out (it is checked by errno).
fn dials(r: &RpcServed) -> Vec<Dial> {
    r.dials
        .iter()
        .map(|d| Dial {
            error: String::new(),
            ..d.clone()
        })
        .collect()
}

/// Asserts the client discovered the server over its own connection: primary NID the server's,
/// Multi-Rail when the server's ping data said so.
fn assert_client_discovered_the_server(c: &RpcClient, multi_rail: bool) {
    let peer = c
        .server_peer
        .clone()
        .expect("the client's peer of the server");
    assert_eq!(
        (peer.primary_nid.as_str(), peer.discovered, peer.multi_rail),
        (SERVER_NID, true, multi_rail)
    );
}

/// Asserts every reply and callback failed with `errno`, none reached the client, and the
/// client timed out waiting with its requests all sent.
fn assert_nothing_delivered(client: &ClientReport, r: &RpcServed, errno: i32) {
    assert_eq!(r.requests, (0..REQUESTS).collect::<Vec<_>>());
    assert_eq!(r.replies.len() as u64, REQUESTS);
    assert_eq!(r.callbacks.len() as u64, CALLBACKS);
    for sent in r.replies.iter().chain(&r.callbacks) {
        assert_eq!(sent.errno, errno, "{sent:?}");
    }
    assert_eq!(client.status, "timeout", "{}", client.reason);
    assert_eq!(
        client.reason,
        format!("0 of {REQUESTS} replies and 0 of {CALLBACKS} callbacks in 12s")
    );
    let c = client.rpc.as_ref().expect("the client's rpc record");
    assert_eq!(c.requests_sent, REQUESTS);
    assert_eq!(c.discovery_error, 0);
    assert!(c.replies.is_empty(), "{:?}", c.replies);
    assert!(c.callbacks.is_empty(), "{:?}", c.callbacks);
    assert!(client.bad_dest_nids.is_empty());
}

/// Discovery on at both ends (LNet's default): the client pings and pushes its ping data,
/// which names 198.51.100.2@tcp as primary; the server moves its peer to that NID, pushes back
/// to it (a new connection to 198.51.100.2:988: times out), and each reply and callback to
/// U<port>-203.0.113.1@tcp then goes to a new peer of the NAT's NID, which is pinged first (a
/// new connection to 203.0.113.1:988: refused). Nothing reaches the client.
#[test]
fn with_discovery_on_the_servers_puts_fail_on_the_private_nid_then_the_nat() {
    let t = topology("dcon");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &["--ingress-only"]).expect("lnat attach");
    let (client, server) = rpc(&t, "on", "on");
    let r = served(&server, NAT_NID);
    assert!(r.discovery);
    assert_eq!(r.pings_answered, 1);
    assert_eq!(r.pushes.len(), 1);
    let push = &r.pushes[0];
    assert_eq!(push.primary_nid, CLIENT_NID);
    assert_eq!(push.nids, vec![CLIENT_NID.to_string()]);
    assert_eq!(push.features, FEATURES_ON);
    assert_eq!(push.outcome, "Accepted");
    assert_eq!(push.discovery, TIMED_OUT);
    let mut want = vec![dial("push", CLIENT_NID, "198.51.100.2:988", TIMED_OUT)];
    want.extend(
        (0..REQUESTS + CALLBACKS).map(|_| dial("ping", NAT_NID, "203.0.113.1:988", REFUSED)),
    );
    assert_eq!(dials(&r), want);
    assert_nothing_delivered(&client, &r, REFUSED);
    assert_eq!(
        r.peers,
        vec![
            PeerSummary {
                primary_nid: CLIENT_NID.into(),
                nids: vec![CLIENT_NID.into()],
                discovered: false,
                multi_rail: true,
                dc_error: TIMED_OUT,
            },
            PeerSummary {
                primary_nid: NAT_NID.into(),
                nids: vec![NAT_NID.into()],
                discovered: false,
                multi_rail: false,
                dc_error: REFUSED,
            },
        ]
    );
    let c = client.rpc.as_ref().expect("the client's rpc record");
    assert!(c.discovery);
    assert_eq!((c.pings, c.pushes, c.pushes_acked), (1, 1, 1));
    assert_eq!(c.ping_reply_features, vec![FEATURES_ON]);
    assert_eq!(c.ping_data_nids, vec![CLIENT_NID.to_string()]);
    assert_client_discovered_the_server(c, true);
    lnat.stop().expect("stop");
}

/// Discovery off at the server (`lnet_peer_discovery_disabled=1`), client on or off: the
/// client pings, sees no discovery in the reply and does not push; the server still pings
/// 12345-203.0.113.1@tcp before each reply and callback (a new connection to the NAT:
/// refused), as in the log of the real server.
#[test]
fn with_discovery_off_at_the_server_it_still_pings_the_nat_and_is_refused() {
    let t = topology("dcoff");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &["--ingress-only"]).expect("lnat attach");
    for client_disc in ["on", "off"] {
        let (client, server) = rpc(&t, "off", client_disc);
        let r = served(&server, NAT_NID);
        assert!(!r.discovery);
        assert_eq!(r.pings_answered, 1, "client {client_disc}");
        assert!(r.pushes.is_empty(), "client {client_disc}: {:?}", r.pushes);
        let want: Vec<Dial> = (0..REQUESTS + CALLBACKS)
            .map(|_| dial("ping", NAT_NID, "203.0.113.1:988", REFUSED))
            .collect();
        assert_eq!(dials(&r), want, "client {client_disc}");
        assert_nothing_delivered(&client, &r, REFUSED);
        assert_eq!(
            r.peers,
            vec![PeerSummary {
                primary_nid: NAT_NID.into(),
                nids: vec![NAT_NID.into()],
                discovered: false,
                multi_rail: false,
                dc_error: REFUSED,
            }]
        );
        let c = client.rpc.as_ref().expect("the client's rpc record");
        assert_eq!(c.discovery, client_disc == "on");
        assert_eq!((c.pings, c.pushes), (1, 0), "client {client_disc}");
        assert_eq!(c.ping_reply_features, vec![FEATURES_OFF]);
        assert!(c.ping_data_nids.is_empty());
        assert_client_discovered_the_server(c, false);
    }
    lnat.stop().expect("stop");
}

/// The model's control: a routed client (no NAT, a reserved source port, so the server's
/// socklnd peer is 12345-198.51.100.2@tcp, the connection's own) gets every reply and
/// callback, whatever discovery does: with discovery on the server pushes back over the
/// connection, with it off it pings over it; it never dials.
#[test]
fn a_routed_client_gets_every_reply_and_callback() {
    let t = Topology::new(
        "dcrt",
        TopoOpts {
            nat: NatMode::None,
            ..TopoOpts::default()
        },
    )
    .expect("topology");
    for (disc, on_connection, multi_rail) in [("on", "push", true), ("off", "ping", false)] {
        let (client, server) = rpc(&t, disc, disc);
        let r = served(&server, CLIENT_NID);
        assert!(r.dials.is_empty(), "discovery {disc}: {:?}", r.dials);
        assert_eq!(
            r.on_connection,
            vec![format!("{on_connection} 12345-{CLIENT_NID}")],
            "discovery {disc}"
        );
        assert_eq!(client.status, "ok", "discovery {disc}: {}", client.reason);
        let c = client.rpc.as_ref().expect("the client's rpc record");
        let record = |s: &[lnat_tests::report::RpcSent]| -> Vec<lnat_tests::report::Put> {
            s.iter()
                .map(|x| {
                    assert_eq!(x.errno, 0, "{x:?}");
                    lnat_tests::report::Put {
                        index: x.index,
                        size: x.size,
                        digest: x.digest.clone(),
                    }
                })
                .collect()
        };
        assert_eq!(c.replies, record(&r.replies), "replies by digest");
        assert_eq!(c.callbacks, record(&r.callbacks), "callbacks by digest");
        assert_eq!(c.replies.len() as u64, REQUESTS);
        assert_eq!(c.callbacks.len() as u64, CALLBACKS);
        assert_eq!(c.ping_data_nids, vec![CLIENT_NID.to_string()]);
        assert_eq!(
            r.peers,
            vec![PeerSummary {
                primary_nid: CLIENT_NID.into(),
                nids: vec![CLIENT_NID.into()],
                discovered: true,
                multi_rail,
                dc_error: 0,
            }]
        );
    }
}
