//! A bad network between the server and the client (loss, reordering, duplication), and drops
//! after TC inside the client, which force retransmissions of segments lnat already rewrote:
//! 1,000 PUTs of mixed sizes must arrive intact, on one connection, with no checksum errors.
//! Each test prints what lnat dropped as out of order against what TCP retransmitted, and the
//! same transfer on the same bad network without lnat (a NAT that keeps ports needs none): what
//! lnat's dropping adds to the network's own cost.

use std::time::{Duration, Instant};

use lnat_tests::{
    harness::{self, Host, Lnat},
    impair::Weather,
    topology::{NatMode, TopoOpts, Topology},
};

const PUTS: u64 = 1000;

/// The transfer through a NAT that keeps ports, without lnat; its time and TCP's
/// retransmissions.
fn without_lnat(tag: &str, opts: TopoOpts) -> (Duration, u64) {
    let t = Topology::new(
        &format!("{tag}0"),
        TopoOpts {
            nat: NatMode::KeepPort,
            ..opts
        },
    )
    .expect("topology");
    let started = Instant::now();
    let (client, served) = harness::puts(&t, PUTS, "mixed", &[], &[]).expect("exchange");
    let took = started.elapsed();
    harness::check_intact(&client, &served, 1000).expect("intact");
    (took, t.server().nstat("TcpRetransSegs").expect("nstat"))
}

fn bad_network(tag: &str, opts: TopoOpts) {
    let (base_took, base_retrans) = without_lnat(tag, opts);
    let mut t = Topology::new(tag, opts).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let started = Instant::now();
    let (client, served) = harness::puts(&t, PUTS, "mixed", &[], &[]).expect("exchange");
    let took = started.elapsed();
    harness::check_intact(&client, &served, 1000).expect("intact");
    assert_eq!(
        client.connections, 1,
        "the connection was reset: {}",
        client.reason
    );
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
    let c = lnat.counters().expect("counters");
    assert_eq!(c["desynced"], 0, "{c}");
    assert_eq!(c["conflicts"], 0, "{c}");
    assert_eq!(c["rewritten"], 1001, "{c}");
    let retrans = t.server().nstat("TcpRetransSegs").expect("nstat");
    let bridge = opts.impair.map(|_| t.impairment().expect("impairment"));
    println!(
        "RESULT {tag}: 1000 PUTs intact in {took:.1?}; lnat dropped {} out-of-order (passed {} ahead), {} contended, {} history misses; \
         TCP retransmitted {retrans}; segments {}; bridge {bridge:?}; without lnat: \
         {base_took:.1?}, TCP retransmitted {base_retrans}",
        c["dropped_ooo"], c["passed_ahead"], c["contended"], c["history_misses"], c["segments"]
    );
}

fn weather(drop: u64, hold: u64, dup: u64) -> Option<Weather> {
    Some(Weather {
        drop,
        hold,
        dup,
        seed: 0x5eed,
    })
}

#[test]
fn three_percent_loss() {
    bad_network(
        "loss",
        TopoOpts {
            impair: weather(3, 0, 0),
            ..TopoOpts::default()
        },
    );
}

#[test]
fn three_percent_loss_in_the_router() {
    bad_network(
        "nftloss",
        TopoOpts {
            router_drop: 3,
            ..TopoOpts::default()
        },
    );
}

#[test]
fn twenty_five_percent_reordering() {
    bad_network(
        "reord",
        TopoOpts {
            impair: weather(0, 25, 0),
            ..TopoOpts::default()
        },
    );
}

#[test]
fn two_percent_duplication() {
    bad_network(
        "dup",
        TopoOpts {
            impair: weather(0, 0, 2),
            ..TopoOpts::default()
        },
    );
}

#[test]
fn five_percent_drops_after_tc() {
    bad_network(
        "posttc",
        TopoOpts {
            post_tc_drop: 5,
            ..TopoOpts::default()
        },
    );
}

#[test]
fn all_of_it_at_once() {
    bad_network(
        "all",
        TopoOpts {
            impair: weather(3, 25, 2),
            post_tc_drop: 5,
            ..TopoOpts::default()
        },
    );
}
