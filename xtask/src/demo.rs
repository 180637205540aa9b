//! `cargo xtask demo`: a Lustre client behind a port-remapping NAT, without and with lnat.

use std::time::Duration;

use anyhow::{Context as _, bail};
use lnat_tests::{
    harness::{self, Host, Lnat},
    topology::{CLIENT, CLIENT_NID, NAT, SERVER, SERVER_NID, TopoOpts, Topology},
};

use crate::{setup, workspace};

const PUTS: &str = "50";
const WAIT: Duration = Duration::from_secs(120);

fn step(n: u32, what: &str) {
    println!("\n{n}. {what}");
}

/// Runs the demo from a fresh machine: installs, builds, shows, cleans up.
pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    if !workspace::is_root() {
        bail!("the demo creates network namespaces and loads BPF: run it as root");
    }
    workspace::build_release()?;
    // SAFETY: single-threaded here; the harness reads these to find the binaries.
    unsafe {
        std::env::set_var("LNAT_BIN", workspace::release_bin("lnat"));
        std::env::set_var("LNET_PEER_BIN", workspace::release_bin("lnet-peer"));
    }
    println!(
        "lnat demo: a Lustre (LNet over TCP) client behind a NAT that remaps its source ports"
    );
    println!("  client {CLIENT} (NID {CLIENT_NID})");
    println!("    -> NAT {NAT}, source ports remapped into 40000-49999");
    println!("    -> server {SERVER} (NID {SERVER_NID}, lnet accept=all)");
    let t = Topology::new("demo", TopoOpts::default()).context("building the namespaces")?;
    let server_args = [
        "--nid", SERVER_NID, "--accept", "all", "--puts", PUTS, "--sizes", "mixed", "--conns", "1",
    ];
    let client_args = [
        "--server-nid",
        SERVER_NID,
        "--nid",
        CLIENT_NID,
        "--expect",
        PUTS,
        "--timeout-secs",
        "60",
    ];

    step(
        1,
        "Without lnat, the client connects and the server sends PUTs",
    );
    let server = harness::server(t.server(), &server_args)?;
    let report = harness::client(t.client(), &client_args, WAIT)?;
    drop(server);
    println!(
        "   the server's HELLO names the client {}",
        report.server_hello_dst_nid
    );
    println!("   client: {} - {}", report.status, report.reason);
    if report.status != "rejected" {
        bail!("expected the client to reject the server's messages");
    }

    step(2, "lnat attach eth0, on the client");
    let host = Host::new(t.client())?;
    let lnat = Lnat::attach(&host, "eth0", &[])?;
    for line in lnat.lines() {
        println!("   {line}");
    }

    step(3, "The same exchange again");
    let server = harness::server(t.server(), &server_args)?;
    let report = harness::client(t.client(), &client_args, WAIT)?;
    let served = harness::server_report(server, WAIT)?;
    let sent: Vec<_> = served
        .connections
        .iter()
        .flat_map(|c| c.sent.clone())
        .collect();
    let bytes: u64 = report.received.iter().map(|p| p.size as u64).sum();
    let intact = report.status == "ok" && report.received == sent;
    println!(
        "   client: {}, {} PUTs, {} bytes; every payload digest equals what the server sent: {}",
        report.status,
        report.received.len(),
        bytes,
        if intact { "yes" } else { "NO" }
    );
    println!(
        "   the server's HELLO now reads {}",
        report.server_hello_dst_nid
    );
    for line in lnat.lines().iter().filter(|l| l.contains("learned")) {
        println!("   {line}");
    }
    if !intact {
        bail!(
            "the client did not receive every PUT intact: {}",
            report.reason
        );
    }

    step(4, "lnat status eth0 (from another process)");
    for line in host.lnat(&["status", "eth0"])?.lines() {
        println!("   {line}");
    }

    step(
        5,
        "bpftool map dump pinned /sys/fs/bpf/lnat/eth0/LNAT_MAPPINGS",
    );
    let dump = host.run(&[
        "bpftool",
        "map",
        "dump",
        "pinned",
        "/sys/fs/bpf/lnat/eth0/LNAT_MAPPINGS",
    ])?;
    for line in dump.lines() {
        println!("   {line}");
    }

    step(6, "Stop lnat (SIGINT)");
    let lines = lnat.stop()?;
    if let Some(last) = lines.iter().rev().find(|l| l.contains("detached")) {
        println!("   {last}");
    }
    let left = host.run(&["ls", "/sys/fs/bpf/lnat"]).is_ok();
    println!(
        "   pins left under /sys/fs/bpf/lnat: {}",
        if left { "some (unexpected)" } else { "none" }
    );
    drop(host);
    drop(t);
    println!("\nDone; the namespaces are gone.");
    Ok(())
}
