//! The bench's workloads: an emulated LNet server streaming PUTs through the NAT to emulated
//! clients, timed at the client from its first complete PUT to its last.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    bench::config::Config,
    harness,
    impair::Weather,
    ns::Proc,
    topology::{ACCEPTOR_PORT, CLIENT, CLIENT_NID, NAT_NID, SERVER, SERVER_NID, Topology},
};

/// What a workload's rate is counted in.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Payload gigabits per second.
    #[serde(rename = "Gbit/s")]
    Gbps,
    /// PUTs per second.
    #[serde(rename = "msg/s")]
    MsgPerSec,
}

/// One workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its name in tables and JSON.
    pub name: String,
    /// PUT payload bytes; 0 with `mixed`.
    pub size: u32,
    /// PUTs of every size from 0 B to 1 MiB (`--sizes mixed`) rather than `size` each.
    pub mixed: bool,
    /// PUTs to each client.
    pub puts: u64,
    /// Clients at once (one connection each).
    pub flows: usize,
    /// PUTs per server write: many makes packets of many headers.
    pub batch: usize,
    /// What its rate is counted in.
    pub unit: Unit,
    /// 64 KiB packets (GSO and GRO), or MTU-sized ones, which are one size at any flow count.
    pub large_packets: bool,
    /// The client's packets received on the other CPU (the server's) rather than its own: a
    /// host whose NIC delivers a connection to a core other than the one reading it.
    pub rx_apart: bool,
    /// The bad network it crosses (between the server and the client), if any.
    pub weather: Option<Weather>,
}

/// 1 MiB, LNet's largest PUT.
const MIB: u32 = 1 << 20;

/// PUT size of the scale workloads: a header every 64 KiB, as a busy client's mixed traffic.
const SCALE_SIZE: u32 = 1 << 16;

/// Flow counts of the scale workloads.
pub const SCALE_FLOWS: [usize; 4] = [1, 16, 256, 4096];

/// The single-connection workloads: bulk, then the parser's worst cases, received on the
/// client's CPU and then apart from it.
pub fn single(quick: bool) -> Vec<Workload> {
    // About a second each with --quick: shorter runs are mostly TCP's window opening.
    let k = if quick { 1 } else { 4 };
    let one =
        |name: &str, size: u32, puts: u64, batch: usize, unit: Unit, rx_apart: bool| Workload {
            name: name.into(),
            size,
            puts: puts * k,
            flows: 1,
            batch,
            unit,
            large_packets: true,
            rx_apart,
            mixed: false,
            weather: None,
        };
    vec![
        one(BULK, MIB, 1500, 1, Unit::Gbps, false),
        one(SMALL[0], 0, 300_000, 64, Unit::MsgPerSec, false),
        one(SMALL[1], 4096, 150_000, 16, Unit::MsgPerSec, false),
        one(SMALL_APART[0], 0, 300_000, 64, Unit::MsgPerSec, true),
        one(SMALL_APART[1], 4096, 150_000, 16, Unit::MsgPerSec, true),
    ]
}

/// The bulk workload's name.
pub const BULK: &str = "bulk 1 MiB";
/// The small-message workloads, received on the client's CPU.
pub const SMALL: [&str; 2] = ["0 B messages", "4 KiB messages"];
/// The same, received on the other CPU.
pub const SMALL_APART: [&str; 2] = ["0 B, rx apart", "4 KiB, rx apart"];

/// The scale workloads: 64 KiB PUTs over 1 to 4,096 connections at once, in MTU-sized packets.
/// In 64 KiB packets the cost per packet follows where headers fall in them (a rewrite deep in
/// a large packet makes the kernel copy what precedes it), which hides what flows cost.
pub fn scale(quick: bool) -> Vec<Workload> {
    let total: u64 = if quick { 2048 } else { 8192 };
    SCALE_FLOWS
        .iter()
        .map(|&flows| Workload {
            name: format!("{flows} flows"),
            size: SCALE_SIZE,
            puts: (total / flows as u64).max(2),
            flows,
            batch: 1,
            unit: Unit::Gbps,
            large_packets: false,
            rx_apart: false,
            mixed: false,
            weather: None,
        })
        .collect()
}

/// The bad networks of the impaired workloads, each with its name and the target its transfer
/// time ratio (lnat / no program) is held to: 3% of frames lost, and 25% held back behind up
/// to three later frames.
pub const WEATHERS: [(&str, Weather, f64); 2] = [
    (
        "3% loss",
        Weather {
            drop: 3,
            hold: 0,
            dup: 0,
            seed: 0x5eed,
        },
        1.3,
    ),
    (
        "25% reordering",
        Weather {
            drop: 0,
            hold: 25,
            dup: 0,
            seed: 0x5eed,
        },
        2.0,
    ),
];

/// The impaired workloads: mixed PUTs and a stream of 4 KiB messages across each of
/// [`WEATHERS`], with and without lnat on the same bad network (MTU-sized frames: the
/// impairment bridge forwards frames, not GSO packets).
pub fn impaired(quick: bool) -> Vec<Workload> {
    // Twice the quick transfers in a full run, not four times: each loss lnat turns into a
    // retransmission timeout costs 200 ms, and a round would otherwise take minutes.
    let k = if quick { 1 } else { 2 };
    WEATHERS
        .iter()
        .flat_map(|&(name, weather, _)| {
            let w = |what: &str, size: u32, puts: u64, batch: usize, mixed: bool, unit: Unit| {
                Workload {
                    name: format!("{what}, {name}"),
                    size,
                    mixed,
                    puts: puts * k,
                    flows: 1,
                    batch,
                    unit,
                    large_packets: false,
                    rx_apart: false,
                    weather: Some(weather),
                }
            };
            [
                w(IMPAIRED[0], 0, 250, 1, true, Unit::Gbps),
                w(IMPAIRED[1], 4096, 1000, 16, false, Unit::MsgPerSec),
            ]
        })
        .collect()
}

/// The impaired workloads' kinds of traffic.
pub const IMPAIRED: [&str; 2] = ["mixed PUTs", "4 KiB messages"];

/// Payload bytes the server sends in `w`, when its sizes are fixed.
pub fn payload_bytes(w: &Workload) -> Option<u64> {
    (!w.mixed).then(|| w.puts * w.flows as u64 * u64::from(w.size))
}

/// What one run of a workload gave.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// The rate, in the workload's unit.
    pub rate: f64,
    /// Seconds timed.
    pub secs: f64,
    /// CPU the userspace relay used, in nanoseconds, when it ran.
    pub relay_cpu_ns: Option<u64>,
}

/// What the relay prints when it exits.
#[derive(serde::Deserialize)]
struct RelayReport {
    cpu_ns: u64,
}

/// The CPU the emulated server runs on.
const SERVER_CPU: usize = 0;
/// The CPU the emulated client runs on, and where its packets are received unless `rx_apart`.
pub const CLIENT_CPU: usize = 1;

/// Where the relay listens in the client's namespace.
const RELAY_PORT: u16 = 1988;

/// Runs `w` across `t` once under `config`.
pub fn run(t: &Topology, w: &Workload, config: Config) -> anyhow::Result<Measured> {
    t.set_large_packets(w.large_packets)?;
    t.steer_to_cpu(if w.rx_apart { SERVER_CPU } else { CLIENT_CPU })?;
    let (puts, size, conns, batch) = (
        w.puts.to_string(),
        if w.mixed {
            "mixed".to_string()
        } else {
            w.size.to_string()
        },
        w.flows.to_string(),
        w.batch.to_string(),
    );
    let bin = harness::peer_bin();
    let bin = bin.to_string_lossy();
    // The emulated peers on CPUs of their own: left to the scheduler, two busy processes on
    // two CPUs sometimes share one, and the rate halves whatever the configuration.
    let server = t.server().spawn(&[
        "taskset",
        "-c",
        &SERVER_CPU.to_string(),
        &bin,
        "server",
        "--nid",
        SERVER_NID,
        "--accept",
        "all",
        "--puts",
        &puts,
        "--sizes",
        &size,
        "--conns",
        &conns,
        "--batch",
        &batch,
        "--hold-secs",
        "10",
        "--no-digest",
    ])?;
    t.server()
        .wait_listening(ACCEPTOR_PORT, Duration::from_secs(10))?;
    let relay = (config == Config::Relay)
        .then(|| start_relay(t, &conns))
        .transpose()?;
    // Without a rewrite the server's messages name the NAT: a baseline client takes that NID as
    // its own, so every configuration carries the same bytes and the client does the same work.
    let nid = match config {
        Config::None | Config::Empty | Config::Following => NAT_NID,
        Config::Lnat | Config::Relay => CLIENT_NID,
    };
    let target = match relay {
        Some(_) => format!("{CLIENT}:{RELAY_PORT}"),
        None => format!("{SERVER}:{ACCEPTOR_PORT}"),
    };
    let parallel = w.flows.to_string();
    let client = t.client().spawn(&[
        "taskset",
        "-c",
        &CLIENT_CPU.to_string(),
        &bin,
        "client",
        "--server",
        &target,
        "--server-nid",
        SERVER_NID,
        "--nid",
        nid,
        "--expect",
        &puts,
        "--timeout-secs",
        "240",
        "--src-port",
        "0",
        "--parallel",
        &parallel,
        "--no-digest",
        "--read-ahead",
    ])?;
    let report = harness::client_report(client, Duration::from_secs(300))
        .with_context(|| format!("running {}", w.name))?;
    // The client's report is the measurement; a server still holding connections it has sent
    // everything on is only reported.
    if let Err(e) = harness::server_report(server, Duration::from_secs(60)) {
        eprintln!("lnat-bench: {}: the server did not finish: {e:#}", w.name);
    }
    let relay_cpu_ns = match relay {
        Some(r) => {
            let out = r.wait(Duration::from_secs(30))?;
            let report: RelayReport = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("reading the relay's report: {:?}", out.stdout))?;
            Some(report.cpu_ns)
        }
        None => None,
    };
    if report.status != "ok" {
        bail!("{}: client {}: {}", w.name, report.status, report.reason);
    }
    let secs = report.last_put_ns.saturating_sub(report.first_put_ns) as f64 / 1e9;
    if secs <= 0.0 || report.timed_puts == 0 {
        bail!("{}: too short to time", w.name);
    }
    let rate = match w.unit {
        Unit::Gbps => report.timed_bytes as f64 * 8.0 / secs / 1e9,
        Unit::MsgPerSec => report.timed_puts as f64 / secs,
    };
    Ok(Measured {
        rate,
        secs,
        relay_cpu_ns,
    })
}

/// Starts the relay in the client's namespace, for `conns` connections.
fn start_relay(t: &Topology, conns: &str) -> anyhow::Result<Proc> {
    let bin = harness::peer_bin();
    let listen = format!("{CLIENT}:{RELAY_PORT}");
    let upstream = format!("{SERVER}:{ACCEPTOR_PORT}");
    let p = t.client().spawn(&[
        &bin.to_string_lossy(),
        "relay",
        "--listen",
        &listen,
        "--upstream",
        &upstream,
        "--external",
        NAT_NID,
        "--local",
        CLIENT_NID,
        "--conns",
        conns,
    ])?;
    t.client()
        .wait_listening(RELAY_PORT, Duration::from_secs(10))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_workloads_cover_the_flow_counts_with_two_puts_at_least() {
        for quick in [true, false] {
            let s = scale(quick);
            assert_eq!(s.iter().map(|w| w.flows).collect::<Vec<_>>(), SCALE_FLOWS);
            assert!(
                s.iter()
                    .all(|w| w.puts >= 2 && w.size == SCALE_SIZE && !w.large_packets)
            );
        }
        assert_eq!(scale(false)[0].puts, 8192);
    }

    #[test]
    fn each_bad_network_carries_both_kinds_of_traffic_in_frames() {
        let w = impaired(true);
        assert_eq!(w.len(), WEATHERS.len() * IMPAIRED.len());
        for (name, weather, _) in WEATHERS {
            let here: Vec<_> = w.iter().filter(|w| w.weather == Some(weather)).collect();
            assert_eq!(here.len(), IMPAIRED.len());
            assert!(
                here.iter()
                    .all(|w| w.name.ends_with(name) && !w.large_packets)
            );
        }
        assert!(w[0].mixed && payload_bytes(&w[0]).is_none());
        assert_eq!(payload_bytes(&w[1]), Some(1000 * 4096));
    }

    #[test]
    fn each_message_workload_runs_again_received_apart() {
        let s = single(true);
        for (near, apart) in SMALL.iter().zip(SMALL_APART) {
            let a = s.iter().find(|w| w.name == *near).expect("near");
            let b = s.iter().find(|w| w.name == apart).expect("apart");
            assert!(!a.rx_apart && b.rx_apart);
            assert_eq!((a.size, a.puts, a.batch), (b.size, b.puts, b.batch));
        }
    }
}
