//! `lnat-demo`: a Lustre client behind a port-remapping NAT, without and with lnat, in network
//! namespaces it creates and removes. `cargo xtask demo` builds everything and runs it as root,
//! with `LNAT_BIN` and `LNET_PEER_BIN` naming the release binaries.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use lnat_tests::{
    harness::{self, Host, Lnat},
    topology::{CLIENT, CLIENT_NID, NAT, SERVER, SERVER_NID, TopoOpts, Topology},
};

const PUTS: &str = "50";
const WAIT: Duration = Duration::from_secs(120);

fn step(n: u32, what: &str) {
    println!("\n{n}. {what}");
}

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lnat-demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Shows the client failing without lnat and working with it, then cleans up.
fn demo() -> anyhow::Result<()> {
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
