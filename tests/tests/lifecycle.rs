//! Attaching and detaching, cleanly and not: clsact as well as tcx, SIGKILL in the middle of a
//! transfer, and what the next `lnat attach` finds.

use std::time::Duration;

use lnat_tests::{
    harness::{self, Host, Lnat},
    topology::{TopoOpts, Topology},
};

fn tc_filters(host: &Host) -> String {
    host.run(&["tc", "filter", "show", "dev", "eth0", "ingress"])
        .expect("tc filter show")
}

/// `puts` mixed PUTs to the first client, allowing `reconnects`; its report.
fn exchange(t: &Topology, puts: u64, reconnects: &str) -> lnat_tests::report::ClientReport {
    let _server = harness::lnet_server(t, puts, "mixed", &["--conns", "4", "--hold-secs", "5"])
        .expect("server");
    let client = harness::lnet_client(
        t,
        puts,
        Duration::from_secs(60),
        &["--reconnects", reconnects],
    )
    .expect("client");
    harness::client_report(client, Duration::from_secs(90)).expect("client report")
}

#[test]
fn clsact_mode_works_and_leaves_no_filter() {
    let t = Topology::new("cls", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &["--attach-mode", "clsact"]).expect("attach");
    assert!(
        lnat.lines()[0].contains("(clsact, program"),
        "{:?}",
        lnat.lines()
    );
    assert!(tc_filters(&host).contains("lnat"), "no filter");
    let report = exchange(&t, 30, "0");
    assert_eq!(report.status, "ok", "{}", report.reason);
    let again = host
        .lnat(&["attach", "eth0", "--attach-mode", "clsact"])
        .expect_err("second attach");
    assert!(
        format!("{again:#}").contains("already attached to eth0"),
        "{again:#}"
    );
    lnat.stop().expect("stop");
    assert!(!tc_filters(&host).contains("lnat"), "filter left behind");
}

/// Asserts that `lnat status` finds the programs `lnat` announced, attached in `mode`, with
/// their verifier costs, in JSON and in text.
fn assert_status_finds_the_program(host: &Host, lnat: &Lnat<'_>, mode: &str) {
    let program = lnat.program_id().expect("program id");
    let egress = lnat.egress_program_id().expect("the egress program's id");
    let status = lnat.status().expect("status");
    assert_eq!(status["program_id"], program, "{status}");
    assert_eq!(status["mode"], mode, "{status}");
    assert_eq!(status["egress"]["program_id"], egress, "{status}");
    let verified = status["verified_insns"].as_u64().unwrap_or(0);
    let egress_verified = status["egress"]["verified_insns"].as_u64().unwrap_or(0);
    assert!(verified > 0 && egress_verified > 0, "{status}");
    let text = host.lnat(&["status", "eth0"]).expect("status");
    assert!(
        text.starts_with(&format!(
            "eth0: attached ({mode}, program {program}, {verified} instructions verified; \
             egress program {egress}, {egress_verified} instructions verified)"
        )),
        "{text}"
    );
}

#[test]
fn status_finds_a_clsact_program_and_sigterm_removes_its_filter() {
    let t = Topology::new("clst", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &["--attach-mode", "clsact"]).expect("attach");
    assert_status_finds_the_program(&host, &lnat, "clsact");
    assert!(tc_filters(&host).contains("lnat"), "no filter");
    // SAFETY: kill(2) on the lnat this test started.
    unsafe { libc::kill(lnat.pid() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !lnat
        .lines()
        .iter()
        .any(|l| l.contains("detached from eth0"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no detach on SIGTERM: {:?}",
            lnat.lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(tc_filters(&host).trim(), "", "filter left behind");
}

#[test]
fn status_finds_the_program_in_the_mode_attach_chose() {
    let t = Topology::new("mode", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    // tcx where the kernel has it, clsact where it does not (Debian 12's 6.1).
    let mode = if lnat.lines()[0].contains("(tcx, program") {
        "tcx"
    } else {
        "clsact"
    };
    assert_status_finds_the_program(&host, &lnat, mode);
    lnat.stop().expect("stop");
    assert!(!tc_filters(&host).contains("lnat"), "filter left behind");
}

#[test]
fn sigkill_mid_transfer_then_reattach_and_reconnect() {
    let t = Topology::new("kill", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let program = lnat.program_id().expect("program id");
    // A long transfer, killed in the middle.
    let server = harness::lnet_server(
        &t,
        600,
        "mixed",
        &["--pace-ms", "5", "--conns", "12", "--hold-secs", "5"],
    )
    .expect("server");
    // Reconnections every 200 ms while lnat is away, which takes seconds to verify its two
    // programs again.
    let client = harness::lnet_client(&t, 600, Duration::from_secs(90), &["--reconnects", "100"])
        .expect("client");
    // tcx where the kernel has it; on Debian 12's 6.1 attach chooses clsact.
    let tcx = lnat.lines()[0].contains("(tcx, program");
    std::thread::sleep(Duration::from_millis(700));
    lnat.kill().expect("kill");
    std::thread::sleep(Duration::from_millis(300));
    // A tcx link goes with the process, and the program with it; a clsact filter stays.
    assert_eq!(
        host.run(&["bpftool", "prog", "show", "id", &program.to_string()])
            .is_err(),
        tcx,
        "program {program} after SIGKILL (tcx: {tcx})"
    );
    // The pins stay (bpffs keeps them) until the next attach, which removes them.
    assert!(host.run(&["ls", "/sys/fs/bpf/lnat/eth0"]).is_ok());
    std::thread::sleep(Duration::from_millis(500));
    let lnat = Lnat::attach(&host, "eth0", &[]).expect("reattach");
    let cleaned = if tcx {
        "removed stale pins"
    } else {
        "removed a stale lnat filter"
    };
    assert!(
        lnat.lines().iter().any(|l| l.contains(cleaned)),
        "{:?}",
        lnat.lines()
    );
    // LNet-style: the client's connection broke (its next message was rejected); it reconnects
    // and the server resends what was not acknowledged.
    let report = harness::client_report(client, Duration::from_secs(120)).expect("client");
    drop(server);
    assert_eq!(report.status, "ok", "{}", report.reason);
    assert_eq!(report.received.len(), 600);
    assert!(
        report.connections >= 2,
        "the client never had to reconnect ({} connection)",
        report.connections
    );
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
}

#[test]
fn sigkill_in_clsact_mode_leaves_a_filter_the_next_attach_removes() {
    let t = Topology::new("killc", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &["--attach-mode", "clsact"]).expect("attach");
    lnat.kill().expect("kill");
    assert!(
        tc_filters(&host).contains("lnat"),
        "clsact filters outlive their process"
    );
    let lnat = Lnat::attach(&host, "eth0", &["--attach-mode", "clsact"]).expect("reattach");
    assert!(
        lnat.lines()
            .iter()
            .any(|l| l.contains("removed a stale lnat filter")),
        "{:?}",
        lnat.lines()
    );
    let report = exchange(&t, 20, "0");
    assert_eq!(report.status, "ok", "{}", report.reason);
    lnat.stop().expect("stop");
    assert!(!tc_filters(&host).contains("lnat"));
}
