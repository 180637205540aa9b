//! Fast endings: a server that shuts its side right after its last write, one that resets as
//! soon as its last PUT is acknowledged, and a client that closes first, each under small
//! segments, two clients behind one NAT, and a bad network with drops after TC. A FIN or RST
//! that lnat sees while earlier bytes are still to come (segments it dropped out of order, or
//! that the stack dropped after TC) must end nothing: every late copy is rewritten as its first
//! copy was. 200 connections of 300 PUTs each per case (1,200 on the bad network); every digest
//! equal, no rejection, no destination NID other than the client's own ever seen, no history
//! miss.

use std::time::{Duration, Instant};

use lnat_tests::{
    harness::{self, Host, Lnat},
    impair::Weather,
    ns::Proc,
    report::{ClientReport, Put, ServerReport},
    topology::{self, NAT_NID, SERVER_NID, TopoOpts, Topology},
    workload::{self, Sizes},
};

const CONNS: usize = 200;
/// PUTs per connection; on the bad network, streams whose patch history (256 runs, a PUT of
/// varied size each) wraps several times, so that late copies are rewritten from a wrapped ring.
const PUTS: u64 = 300;
const LONG_PUTS: u64 = 1200;
const WAIT: Duration = Duration::from_secs(300);

fn client_nid(i: usize) -> String {
    format!("{}@tcp", topology::client_addr(i))
}

fn expected(nid: &str, puts: u64) -> Vec<Put> {
    let sizes: Sizes = "small".parse().expect("sizes");
    workload::expected(&sizes, 1, nid.parse().expect("nid"), puts)
}

/// `conns` connections at once from the `i`th client, each expecting every PUT.
fn clients(t: &Topology, i: usize, conns: usize, puts: u64) -> Proc {
    let (n, parallel, nid) = (puts.to_string(), conns.to_string(), client_nid(i));
    let server = format!("{}:988", topology::SERVER);
    let args = [
        "--server",
        &server,
        "--server-nid",
        SERVER_NID,
        "--nid",
        &nid,
        "--expect",
        &n,
        "--timeout-secs",
        "240",
        "--parallel",
        &parallel,
        "--src-port",
        "0",
    ];
    harness::spawn_client(t.client_n(i), &args).expect("client")
}

/// Runs the case: `end` is the server's `--end`; `opts` the network.
fn ending(tag: &str, end: &str, opts: TopoOpts) {
    let puts = if opts.impair.is_some() {
        LONG_PUTS
    } else {
        PUTS
    };
    let mut t = Topology::new(tag, opts).expect("topology");
    let hosts: Vec<Host> = (0..opts.clients)
        .map(|i| Host::new(t.client_n(i)).expect("host"))
        .collect();
    let lnats: Vec<Lnat<'_>> = hosts
        .iter()
        .map(|h| Lnat::attach(h, "eth0", &[]).expect("attach"))
        .collect();
    let conns = CONNS.to_string();
    let started = Instant::now();
    let server = harness::lnet_server(
        &t,
        puts,
        "small",
        // Waiting as long as the clients may take: a server giving up its hold closes with
        // ACKs unread, which resets a connection still receiving on a slow, lossy network.
        &[
            "--conns",
            &conns,
            "--noop-every",
            "7",
            "--end",
            end,
            "--hold-secs",
            "240",
        ],
    )
    .expect("server");
    t.server()
        .wait_listening(topology::ACCEPTOR_PORT, Duration::from_secs(10))
        .expect("listening");
    let per = CONNS / opts.clients;
    let procs: Vec<Proc> = (0..opts.clients)
        .map(|i| clients(&t, i, per, puts))
        .collect();
    let reports: Vec<ClientReport> = procs
        .into_iter()
        .map(|p| harness::client_report(p, WAIT).expect("client report"))
        .collect();
    let served: ServerReport = harness::server_report(server, WAIT).expect("server report");
    let took = started.elapsed();
    assert_eq!(served.connections.len(), CONNS);
    for c in &served.connections {
        assert_eq!(c.refused, None, "{}", c.peer);
        assert_eq!(c.rejected, None, "{}: rejected", c.peer);
    }
    for (i, (client, lnat)) in reports.iter().zip(&lnats).enumerate() {
        let m = format!("{tag} client {i}: {}", lnat.counters().expect("counters"));
        assert!(
            client.bad_dest_nids.is_empty(),
            "{m}: saw {:?}",
            client.bad_dest_nids
        );
        assert_eq!(client.status, "ok", "{m}: {}", client.reason);
        assert_eq!(client.failures, 0, "{m}: rejected or reset");
        assert_eq!(client.sessions_ok as usize, per, "{m}");
        assert_eq!(client.connections as usize, per, "{m}");
        assert_eq!(
            client.received,
            expected(&client_nid(i), puts),
            "{m}: digests"
        );
        let per = per as u64;
        // A RST is sent once: on a lossy network the one ending a connection can be lost
        // before lnat sees it (a FIN is sent again until acknowledged).
        let ends_may_be_lost = end == "reset" && opts.impair.is_some();
        if !ends_may_be_lost {
            lnat.wait_no_flows(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{m}: {e:#}"));
        }
        let c = lnat.counters().expect("counters");
        harness::assert_clean_run(&c, per, per * (puts + 1), &m);
        let closed = c["flows_closed"].as_u64().expect("flows_closed");
        if ends_may_be_lost {
            assert!(closed <= per && closed >= per - per / 10, "{m}: {c}");
        } else {
            assert_eq!(closed, per, "{m}: {c}");
        }
        let mappings = lnat.status().expect("status")["mappings"].clone();
        assert_eq!(mappings[0]["external"], NAT_NID, "{m}: {mappings}");
        assert_eq!(t.client_n(i).nstat("TcpInCsumErrors").expect("nstat"), 0);
        println!(
            "RESULT {tag} client {i}: {per} connections x {puts} PUTs intact in {took:.1?}; \
             closing={} dropped_ooo={} held={} history_misses={} segments={} quiet={}",
            c["closing"],
            c["dropped_ooo"],
            c["held"],
            c["history_misses"],
            c["segments"],
            c["quiet"]
        );
    }
    if opts.impair.is_some() {
        println!(
            "RESULT {tag}: bridge {:?}",
            t.impairment().expect("impairment")
        );
    }
}

/// (a) Client MSS 88, TSO, GSO and GRO off on the way: small segments, headers and NIDs
/// split across them.
fn small_segments() -> TopoOpts {
    TopoOpts {
        client_mss: Some(88),
        gro: false,
        ..TopoOpts::default()
    }
}

/// (b) Two clients behind one NAT, on a bridge, 100 connections each.
fn two_clients() -> TopoOpts {
    TopoOpts {
        clients: 2,
        ..TopoOpts::default()
    }
}

/// (c) 3% loss, 2% duplication, and 5% of LNet segments dropped after TC, together.
fn bad_network() -> TopoOpts {
    TopoOpts {
        impair: Some(Weather {
            drop: 3,
            hold: 0,
            dup: 2,
            seed: 0xe4d,
        }),
        post_tc_drop: 5,
        ..TopoOpts::default()
    }
}

#[test]
fn server_shuts_down_after_its_last_write_small_segments() {
    ending("shut-a", "shutdown", small_segments());
}

#[test]
fn server_shuts_down_after_its_last_write_two_clients() {
    ending("shut-b", "shutdown", two_clients());
}

#[test]
fn server_shuts_down_after_its_last_write_bad_network() {
    ending("shut-c", "shutdown", bad_network());
}

#[test]
fn server_resets_small_segments() {
    ending("rst-a", "reset", small_segments());
}

#[test]
fn server_resets_two_clients() {
    ending("rst-b", "reset", two_clients());
}

#[test]
fn server_resets_bad_network() {
    ending("rst-c", "reset", bad_network());
}

#[test]
fn client_closes_first_small_segments() {
    ending("cli-a", "hold", small_segments());
}

#[test]
fn client_closes_first_two_clients() {
    ending("cli-b", "hold", two_clients());
}

#[test]
fn client_closes_first_bad_network() {
    ending("cli-c", "hold", bad_network());
}
