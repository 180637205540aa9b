//! Attaching and detaching 100 times in a row while LNet traffic flows: every program and map
//! an attach created is gone after its detach, the kernel's program and map lists end as long
//! as they began, nothing stays pinned, a second attach is refused while one runs, and the
//! traffic that ran through all of it arrives intact.
//!
//! One test in its own binary: the kernel's lists are global, so nothing else may load
//! programs while it counts.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use lnat_tests::{
    harness::{self, Host, Lnat},
    topology::{CLIENT_NID, TopoOpts, Topology},
    workload::{self, Sizes},
};

const CYCLES: usize = 100;
const PUTS: u64 = 2000;

/// The ids in `bpftool prog list` or `bpftool map list`.
fn kernel_ids(host: &Host, kind: &str) -> BTreeSet<u64> {
    let out = host
        .run(&["bpftool", "--json", kind, "list"])
        .expect("bpftool list");
    let list: serde_json::Value = serde_json::from_str(&out).expect("bpftool json");
    list.as_array()
        .expect("a list")
        .iter()
        .filter_map(|o| o["id"].as_u64())
        .collect()
}

/// The maps program `id` uses.
fn map_ids(host: &Host, id: u32) -> Vec<u64> {
    let out = host
        .run(&["bpftool", "--json", "prog", "show", "id", &id.to_string()])
        .expect("bpftool prog show");
    let prog: serde_json::Value = serde_json::from_str(&out).expect("bpftool json");
    prog["map_ids"]
        .as_array()
        .expect("map_ids")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect()
}

/// Waits until none of `ids` is in the kernel's `kind` list (objects are freed after an RCU
/// grace period, not at once); returns those still there.
fn wait_gone(host: &Host, kind: &str, ids: &BTreeSet<u64>) -> BTreeSet<u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left: BTreeSet<u64> = kernel_ids(host, kind).intersection(ids).copied().collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_hundred_attach_detach_cycles_under_traffic_leave_nothing_behind() {
    let t = Topology::new("cycle", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let progs_before = kernel_ids(&host, "prog").len();
    let maps_before = kernel_ids(&host, "map").len();
    let _server = harness::lnet_server(
        &t,
        PUTS,
        "small",
        &["--pace-ms", "10", "--conns", "100000", "--hold-secs", "5"],
    )
    .expect("server");
    // LNet-style: a rejected or broken connection is made again, and the server resends what
    // was not acknowledged.
    let client = harness::lnet_client(
        &t,
        PUTS,
        Duration::from_secs(500),
        &["--reconnects", "100000"],
    )
    .expect("client");

    let mut progs = BTreeSet::new();
    let mut maps = BTreeSet::new();
    let mut segments = 0;
    let mut rewritten = 0;
    for cycle in 0..CYCLES {
        let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
        let id = lnat.program_id().expect("program id");
        progs.insert(u64::from(id));
        maps.extend(map_ids(&host, id));
        if cycle == 0 {
            let again = host.lnat(&["attach", "eth0"]).expect_err("second attach");
            assert!(
                format!("{again:#}").contains("already attached to eth0"),
                "{again:#}"
            );
        }
        std::thread::sleep(Duration::from_millis(150));
        let c = lnat.counters().expect("counters");
        segments += c["segments"].as_u64().expect("segments");
        rewritten += c["rewritten"].as_u64().expect("rewritten");
        assert_eq!(c["desynced"], 0, "cycle {cycle}: {c}");
        assert_eq!(c["conflicts"], 0, "cycle {cycle}: {c}");
        lnat.stop().expect("stop");
        assert!(
            host.run(&["ls", "/sys/fs/bpf/lnat/eth0"]).is_err(),
            "cycle {cycle}: pins left behind"
        );
    }
    assert_eq!(progs.len(), CYCLES, "each attach loads its own program");
    assert!(
        segments > 0 && rewritten > 0,
        "no traffic went through the cycles"
    );

    // The transfer finishes under one last attach, every byte as the server sent it.
    let last = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let report = harness::client_report(client, Duration::from_secs(520)).expect("client");
    assert_eq!(report.status, "ok", "{}", report.reason);
    let me = CLIENT_NID.parse().expect("nid");
    assert_eq!(
        report.received,
        workload::expected(&Sizes::Small, 1, me, PUTS),
        "payload digests differ"
    );
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
    progs.insert(u64::from(last.program_id().expect("program id")));
    last.stop().expect("stop");

    assert_eq!(
        wait_gone(&host, "prog", &progs),
        BTreeSet::new(),
        "programs left"
    );
    assert_eq!(wait_gone(&host, "map", &maps), BTreeSet::new(), "maps left");
    assert_eq!(kernel_ids(&host, "prog").len(), progs_before, "programs");
    assert_eq!(kernel_ids(&host, "map").len(), maps_before, "maps");
    println!(
        "RESULT {CYCLES} attach/detach cycles: {segments} segments, {rewritten} NIDs rewritten \
         while attached; the client made {} connections ({} broken) for {PUTS} PUTs",
        report.connections, report.failures
    );
}
