//! Rounds of every workload under every configuration, the configurations alternated within
//! each round so that a machine getting busier or quieter shifts them all alike.

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    bench::{
        config::{Active, Config},
        headers::{self, HeaderCost},
        kernel::{self, MapMemory, StatsEnabled},
        packets::{self, Frames},
        workload::{self, Unit, Workload},
    },
    harness::Host,
    impair::Weather,
    topology::{TopoOpts, Topology},
};

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Rounds of everything.
    pub rounds: usize,
    /// Smaller transfers.
    pub quick: bool,
    /// Only the single-packet costs: seconds, for work on the datapath.
    pub packets_only: bool,
    /// Only the workloads whose name contains this.
    pub only: Option<String>,
}

/// One measurement.
#[derive(Serialize, Clone, Debug)]
pub struct Sample {
    /// Which round it belongs to.
    pub round: usize,
    /// The workload's name.
    pub workload: String,
    /// Connections at once.
    pub flows: usize,
    /// What `rate` is counted in.
    pub unit: Unit,
    /// What sat on the client's receive path.
    pub config: Config,
    /// The rate the client received at.
    pub rate: f64,
    /// Seconds timed.
    pub secs: f64,
    /// Nanoseconds per program run (per packet), when a program was attached.
    pub ns_per_packet: Option<f64>,
    /// Program runs counted.
    pub packets: u64,
    /// CPU seconds spent rewriting (the program's run time, or the relay's CPU time) per GiB of
    /// payload: what a relay costs that lnat does not.
    pub cpu_s_per_gib: Option<f64>,
    /// Segments lnat dropped for TCP to resend (out of order, or another CPU on the flow):
    /// each costs the sender a retransmission timeout.
    pub lnat_drops: Option<u64>,
}

/// The cost of one kind of packet, run on its own through a program.
#[derive(Serialize, Clone, Debug)]
pub struct PacketSample {
    /// Which round it belongs to.
    pub round: usize,
    /// The kind of packet.
    pub kind: packets::Kind,
    /// The program: the empty one or lnat.
    pub config: Config,
    /// Nanoseconds per run, from the kernel's run-time accounting.
    pub ns_per_packet: f64,
}

/// What one header cost a program, in one round.
#[derive(Serialize, Clone, Debug)]
pub struct HeaderSample {
    /// Which round it belongs to.
    pub round: usize,
    /// The program: the empty one or lnat.
    pub config: Config,
    /// The two walks and the cost per header from them.
    pub cost: HeaderCost,
}

/// Everything one bench run measured.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Outcome {
    /// Every measurement, in the order taken.
    pub samples: Vec<Sample>,
    /// Every single-packet measurement.
    pub packets: Vec<PacketSample>,
    /// Every header-cost measurement.
    pub headers: Vec<HeaderSample>,
    /// lnat's maps, as the kernel accounts them (default `--max-flows`).
    pub maps: Vec<MapMemory>,
    /// Most flows lnat's LRU table evicted in one round (0: none made room early).
    pub evicted: u64,
}

/// Runs the bench; `stop` says the user asked to stop (checked between workloads).
pub fn run(opts: &Opts, stop: &dyn Fn() -> bool) -> anyhow::Result<Outcome> {
    let _stats = StatsEnabled::new()?;
    let t = Topology::new("bench", TopoOpts::default()).context("building the namespaces")?;
    tune(&t)?;
    let host = Host::new(t.client())?;
    let single = workload::single(opts.quick);
    let scale = workload::scale(opts.quick);
    let frames = Frames::new()?;
    let scratch = std::env::temp_dir();
    let mut out = Outcome::default();
    for round in 0..opts.rounds {
        for i in 0..Config::ALL.len() {
            let config = Config::ALL[(round + i) % Config::ALL.len()];
            let active = Active::start(config, &host)
                .with_context(|| format!("setting up {}", config.name()))?;
            if let (Config::Lnat, Some(lnat), true) = (config, active.lnat(), out.maps.is_empty()) {
                let ids: Vec<u32> = [lnat.program_id(), lnat.egress_program_id()]
                    .into_iter()
                    .flatten()
                    .collect();
                out.maps = kernel::map_memory(&ids)?;
            }
            if let Some(id) = active.program_id()
                && matches!(config, Config::Empty | Config::Lnat)
            {
                measure_packets(&active, id, config, round, &frames, &scratch, &mut out)?;
            }
            if opts.packets_only {
                continue;
            }
            // The relay and the no-rewrite variant are compared on one connection.
            let scaled: &[Workload] = match config {
                Config::None | Config::Empty | Config::Lnat => &scale,
                Config::Following | Config::Relay => &[],
            };
            let chosen = |w: &&Workload| opts.only.as_ref().is_none_or(|o| w.name.contains(o));
            for w in single.iter().chain(scaled).filter(chosen) {
                if stop() {
                    bail!("interrupted");
                }
                let s = measure(&t, &active, config, w, round)?;
                log(opts, &s);
                out.samples.push(s);
            }
            if let Some(l) = active.lnat() {
                out.evicted = out.evicted.max(l.counter("untracked")?);
            }
        }
        if !opts.packets_only {
            impaired_round(opts, round, stop, &mut out)?;
        }
    }
    Ok(out)
}

/// One round of the impaired workloads: for each bad network, namespaces with an impairment
/// bridge (its decisions seeded per round), and the workloads run with no program and with
/// lnat in turn on the same bridge.
fn impaired_round(
    opts: &Opts,
    round: usize,
    stop: &dyn Fn() -> bool,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let all = workload::impaired(opts.quick);
    for (name, weather, _) in workload::WEATHERS {
        let chosen: Vec<&Workload> = all
            .iter()
            .filter(|w| w.weather == Some(weather))
            .filter(|w| opts.only.as_ref().is_none_or(|o| w.name.contains(o)))
            .collect();
        if chosen.is_empty() {
            continue;
        }
        let impair = Weather {
            seed: weather.seed + round as u64,
            ..weather
        };
        let t = Topology::new(
            "bimp",
            TopoOpts {
                impair: Some(impair),
                ..TopoOpts::default()
            },
        )
        .with_context(|| format!("building the namespaces of {name}"))?;
        tune(&t)?;
        let host = Host::new(t.client())?;
        let configs = [Config::None, Config::Lnat];
        for i in 0..configs.len() {
            let config = configs[(round + i) % configs.len()];
            let active = Active::start(config, &host)
                .with_context(|| format!("setting up {} on {name}", config.name()))?;
            for w in &chosen {
                if stop() {
                    bail!("interrupted");
                }
                let s = measure(&t, &active, config, w, round)?;
                log(opts, &s);
                out.samples.push(s);
            }
        }
    }
    Ok(())
}

/// Prints one measurement as it is taken.
fn log(opts: &Opts, s: &Sample) {
    eprintln!(
        "lnat-bench: round {}/{} {:>15} {:>16}: {:>12.2} {:?} in {:.2} s{}",
        s.round + 1,
        opts.rounds,
        s.config.name(),
        s.workload,
        s.rate,
        s.unit,
        s.secs,
        s.ns_per_packet
            .map(|n| format!(", {n:.0} ns/packet"))
            .unwrap_or_default()
            + &s.lnat_drops
                .map(|n| format!(", {n} dropped by lnat"))
                .unwrap_or_default()
    );
}

/// Runs `w` once under `active` and reads the program's cost over it.
fn measure(
    t: &Topology,
    active: &Active<'_>,
    config: Config,
    w: &Workload,
    round: usize,
) -> anyhow::Result<Sample> {
    let id = active.program_id();
    let drops = || -> anyhow::Result<Option<u64>> {
        let Some(l) = active.lnat() else {
            return Ok(None);
        };
        // One `lnat status` for every counter of a segment lnat drops.
        let c = l.counters()?;
        let n = |name: &str| {
            c[name]
                .as_u64()
                .with_context(|| format!("no counter {name}"))
        };
        Ok(Some(n("dropped_ooo")? + n("contended")? + n("held")?))
    };
    let drops_before = drops()?;
    let before = id.map(kernel::run_stats).transpose()?;
    let m = workload::run(t, w, config)?;
    let cost = match (id, before) {
        (Some(id), Some(b)) => Some(kernel::run_stats(id)?.per_run_since(&b)),
        _ => None,
    };
    let cpu_ns = match cost {
        Some((ns, runs)) if !ns.is_nan() => Some(ns * runs as f64),
        _ => m.relay_cpu_ns.map(|n| n as f64),
    };
    let gib = workload::payload_bytes(w).map_or(0.0, |b| b as f64 / (1u64 << 30) as f64);
    Ok(Sample {
        round,
        workload: w.name.clone(),
        flows: w.flows,
        unit: w.unit,
        config,
        rate: m.rate,
        secs: m.secs,
        ns_per_packet: cost.map(|c| c.0).filter(|n| !n.is_nan()),
        packets: cost.map_or(0, |c| c.1),
        cpu_s_per_gib: cpu_ns.filter(|_| gib > 0.0).map(|ns| ns / 1e9 / gib),
        lnat_drops: drops()?.zip(drops_before).map(|(a, b)| a - b),
    })
}

/// Runs within one single-packet measurement: long enough that the two clock reads the
/// kernel's accounting adds are what they are for traffic, a fraction of a second in all.
const PACKET_RUNS: u32 = 500_000;

/// Runs each kind of packet through the program `id`, lnat first walked to the middle of a PUT.
fn measure_packets(
    active: &Active<'_>,
    id: u32,
    config: Config,
    round: usize,
    frames: &Frames,
    scratch: &std::path::Path,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    if let Some(l) = active.lnat() {
        packets::prime(id, frames, scratch, || l.counter("rewritten"))
            .context("walking lnat to the middle of a PUT")?;
    }
    for kind in packets::Kind::ALL {
        let (ns, verdict) = packets::run(id, frames.of(kind), PACKET_RUNS, scratch)?;
        packets::check_pass(kind, verdict)?;
        eprintln!(
            "lnat-bench: round {} {:>15} {:>24}: {ns:.1} ns/packet",
            round + 1,
            config.name(),
            kind.name()
        );
        out.packets.push(PacketSample {
            round,
            kind,
            config,
            ns_per_packet: ns,
        });
    }
    let rewritten = || {
        active
            .lnat()
            .context("lnat is not attached")?
            .counter("rewritten")
    };
    let cost = headers::header_cost(
        id,
        active
            .lnat()
            .map(|_| &rewritten as &dyn Fn() -> anyhow::Result<u64>),
        HEADER_SEGMENTS,
    )
    .context("walking segments of headers")?;
    eprintln!(
        "lnat-bench: round {} {:>15} {:>24}: {:.1} ns/header ({:.0} ns for a segment of {:.1} headers, {:.0} for one of payload)",
        round + 1,
        config.name(),
        "header cost",
        cost.ns_per_header,
        cost.headers.ns_per_segment,
        cost.headers_per_segment,
        cost.payload.ns_per_segment
    );
    out.headers.push(HeaderSample {
        round,
        config,
        cost,
    });
    Ok(())
}

/// Segments in each header-cost walk: tens of thousands of headers, a few milliseconds.
const HEADER_SEGMENTS: usize = 2000;

/// Makes runs repeatable and independent. Thousands of connections a round, each leaving a
/// TIME_WAIT behind: the NAT's 10,000 ports and the client's must come back quickly. No TCP
/// metrics cache: each connection starts as the first did, not from what the last one learned.
/// Where the client's packets are received is set per workload (`Workload::rx_apart`): spread
/// by flow hash, a connection's receive work would land by chance with one emulated peer or the
/// other, and its rate would vary fourfold with it.
fn tune(t: &Topology) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus <= workload::CLIENT_CPU {
        bail!("the bench needs 2 CPUs, one per emulated peer; this machine has {cpus}");
    }
    t.router()
        .run(&[
            "sysctl",
            "-qw",
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
        ])
        .context("shortening the NAT's TIME_WAIT")?;
    t.client()
        .run(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])
        .context("letting the client reuse TIME_WAIT ports")?;
    for ns in [t.client(), t.server()] {
        ns.run(&["sysctl", "-qw", "net.ipv4.tcp_no_metrics_save=1"])
            .context("turning the TCP metrics cache off")?;
    }
    Ok(())
}
