//! The bench's results: summaries per workload and configuration, ratios to the baseline of
//! the same run, the targets, as Markdown, JSON and a chart.

use std::fmt::Write as _;

use serde::Serialize;

use crate::bench::{
    chart::{self, Panel, Series},
    config::Config,
    kernel::MapMemory,
    packets::Kind,
    run::{HeaderSample, Opts, Outcome, PacketSample, Sample},
    stats::Summary,
    workload::{self, BULK, IMPAIRED, SMALL, SMALL_APART, Unit, WEATHERS},
};

/// The machine the numbers come from.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// CPUs online.
    pub cpus: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// This machine.
    pub fn this() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        Machine {
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map_or_else(String::new, |(_, m)| m.trim().to_owned()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        }
    }
}

/// One workload under one configuration, over every round.
#[derive(Serialize, Clone, Debug)]
pub struct Row {
    /// The workload.
    pub workload: String,
    /// Connections at once.
    pub flows: usize,
    /// What the rate is counted in.
    pub unit: Unit,
    /// The configuration.
    pub config: Config,
    /// The rate.
    pub rate: Summary,
    /// Median rate over the median rate with no program, in the same run.
    pub ratio: Option<f64>,
    /// Nanoseconds per packet in the program attached.
    pub ns_per_packet: Option<Summary>,
    /// CPU seconds spent rewriting per GiB of payload (program run time, or the relay's CPU).
    pub cpu_s_per_gib: Option<Summary>,
    /// Segments lnat dropped for TCP to resend, per run.
    pub lnat_drops: Option<Summary>,
}

/// One kind of packet run on its own through one program, over every round.
#[derive(Serialize, Clone, Debug)]
pub struct PacketRow {
    /// The kind of packet.
    pub kind: Kind,
    /// The program.
    pub config: Config,
    /// Nanoseconds per run.
    pub ns: Summary,
}

/// What one header cost one program, over every round.
#[derive(Serialize, Clone, Debug)]
pub struct HeaderRow {
    /// The program.
    pub config: Config,
    /// Nanoseconds per header.
    pub ns_per_header: Summary,
    /// Nanoseconds per segment of headers.
    pub ns_per_segment: Summary,
    /// Nanoseconds per segment of payload only.
    pub ns_per_payload_segment: Summary,
    /// Headers per segment.
    pub headers_per_segment: f64,
}

/// One of the targets.
#[derive(Serialize, Clone, Debug)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// The value measured (`None`: not measured).
    pub measured: Option<f64>,
    /// The bound.
    pub goal: f64,
    /// Whether `measured` must be at least (true) or at most (false) `goal`.
    pub at_least: bool,
    /// Whether it is met.
    pub pass: bool,
}

impl Target {
    fn new(name: &str, measured: Option<f64>, at_least: bool, goal: f64) -> Target {
        let pass = measured.is_some_and(|m| if at_least { m >= goal } else { m <= goal });
        Target {
            name: name.into(),
            measured,
            goal,
            at_least,
            pass,
        }
    }
}

/// Everything the bench reports.
#[derive(Serialize, Clone, Debug)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// Rounds of everything.
    pub rounds: usize,
    /// Whether transfers were shortened.
    pub quick: bool,
    /// Summaries.
    pub rows: Vec<Row>,
    /// Single packets, by kind and program.
    pub packets: Vec<PacketRow>,
    /// What a header costs, by program.
    pub headers: Vec<HeaderRow>,
    /// The targets.
    pub targets: Vec<Target>,
    /// lnat's maps.
    pub maps: Vec<MapMemory>,
    /// Their total, bytes.
    pub maps_total: u64,
    /// Flows lnat's table evicted (most in one round).
    pub evicted: u64,
    /// Every measurement.
    pub samples: Vec<Sample>,
}

impl Report {
    /// Summarises `outcome`.
    pub fn new(outcome: Outcome, opts: &Opts, machine: Machine) -> Report {
        let mut keys: Vec<(String, usize, Unit, Config)> = Vec::new();
        for s in &outcome.samples {
            let k = (s.workload.clone(), s.flows, s.unit, s.config);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys.sort_by_key(|k| k.3);
        keys.sort_by_key(|k| order(&outcome.samples, &k.0));
        let pick = |w: &str, c: Config| -> Vec<&Sample> {
            outcome
                .samples
                .iter()
                .filter(|s| s.workload == w && s.config == c)
                .collect()
        };
        let rows: Vec<Row> = keys
            .into_iter()
            .filter_map(|(workload, flows, unit, config)| {
                let mine = pick(&workload, config);
                let rate = Summary::of(&mine.iter().map(|s| s.rate).collect::<Vec<_>>())?;
                let base = Summary::of(
                    &pick(&workload, Config::None)
                        .iter()
                        .map(|s| s.rate)
                        .collect::<Vec<_>>(),
                );
                let ns = Summary::of(
                    &mine
                        .iter()
                        .filter_map(|s| s.ns_per_packet)
                        .collect::<Vec<_>>(),
                );
                let cpu = Summary::of(
                    &mine
                        .iter()
                        .filter_map(|s| s.cpu_s_per_gib)
                        .collect::<Vec<_>>(),
                );
                let drops = Summary::of(
                    &mine
                        .iter()
                        .filter_map(|s| s.lnat_drops.map(|d| d as f64))
                        .collect::<Vec<_>>(),
                );
                Some(Row {
                    ratio: base.map(|b| rate.median / b.median),
                    workload,
                    flows,
                    unit,
                    config,
                    rate,
                    ns_per_packet: ns,
                    cpu_s_per_gib: cpu,
                    lnat_drops: drops,
                })
            })
            .collect();
        let maps_total = outcome.maps.iter().map(|m| m.bytes).sum();
        let mut r = Report {
            machine,
            rounds: opts.rounds,
            quick: opts.quick,
            rows,
            packets: packet_rows(&outcome.packets),
            headers: header_rows(&outcome.headers),
            targets: Vec::new(),
            maps: outcome.maps,
            maps_total,
            evicted: outcome.evicted,
            samples: outcome.samples,
        };
        r.targets = r.targets();
        r
    }

    fn row(&self, workload: &str, config: Config) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.workload == workload && r.config == config)
    }

    fn packet_ns(&self, kind: Kind, config: Config) -> Option<f64> {
        self.packets
            .iter()
            .find(|r| r.kind == kind && r.config == config)
            .map(|r| r.ns.median)
    }

    fn cpu(&self, workload: &str, config: Config) -> Option<f64> {
        self.row(workload, config)?.cpu_s_per_gib.map(|s| s.median)
    }

    fn ns(&self, workload: &str, config: Config) -> Option<f64> {
        self.row(workload, config)?.ns_per_packet.map(|s| s.median)
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = vec![Target::new(
            "bulk throughput, lnat / no program",
            self.row(BULK, Config::Lnat).and_then(|r| r.ratio),
            true,
            0.97,
        )];
        for w in SMALL.iter().chain(&SMALL_APART) {
            t.push(Target::new(
                &format!("{w} rate, lnat / no program"),
                self.row(w, Config::Lnat).and_then(|r| r.ratio),
                true,
                0.90,
            ));
        }
        t.push(Target::new(
            "cost of a packet with no header (single packet), lnat / empty program",
            self.packet_ns(Kind::NoHeader, Config::Lnat)
                .zip(self.packet_ns(Kind::NoHeader, Config::Empty))
                .map(|(l, e)| l / e),
            false,
            1.5,
        ));
        t.push(Target::new(
            "one LNet header (BPF_PROG_TEST_RUN, segments of back-to-back 0 B PUTs), lnat, ns",
            self.headers
                .iter()
                .find(|h| h.config == Config::Lnat)
                .map(|h| h.ns_per_header.median),
            false,
            40.0,
        ));
        let scale: Vec<f64> = workload::SCALE_FLOWS
            .iter()
            .filter_map(|f| self.ns(&format!("{f} flows"), Config::Lnat))
            .collect();
        let flat = (scale.len() == workload::SCALE_FLOWS.len()).then(|| {
            scale.iter().copied().fold(f64::MIN, f64::max)
                / scale.iter().copied().fold(f64::MAX, f64::min)
        });
        t.push(Target::new(
            "cost per packet, 1 to 4,096 flows (MTU-sized packets), largest / smallest",
            flat,
            false,
            1.5,
        ));
        t.push(Target::new(
            "lnat's map memory, MiB",
            (!self.maps.is_empty()).then(|| self.maps_total as f64 / (1u64 << 20) as f64),
            false,
            16.0,
        ));
        t.push(Target::new(
            "bulk CPU spent rewriting per GiB, userspace relay / lnat",
            self.cpu(BULK, Config::Relay)
                .zip(self.cpu(BULK, Config::Lnat))
                .map(|(r, l)| r / l),
            true,
            50.0,
        ));
        for (weather, _, goal) in WEATHERS {
            for kind in IMPAIRED {
                // The same bytes either way: the ratio of rates is the inverse of the times'.
                t.push(Target::new(
                    &format!("{kind}, {weather}: transfer time, lnat / no program"),
                    self.row(&format!("{kind}, {weather}"), Config::Lnat)
                        .and_then(|r| r.ratio)
                        .map(|r| 1.0 / r),
                    false,
                    goal,
                ));
            }
        }
        t
    }

    /// The report as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "lnat bench: {} rounds{}, on {} ({} CPUs, {} GiB), Linux {}\n",
            self.rounds,
            if self.quick { " (quick)" } else { "" },
            m.cpu,
            m.cpus,
            m.memory_gib,
            m.kernel
        );
        s.push_str("| workload | configuration | median | spread (min–max) | × no program | ns/packet (median, min–max) | dropped by lnat (median) |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            let unit = match r.unit {
                Unit::Gbps => "Gbit/s",
                Unit::MsgPerSec => "msg/s",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} {unit} | {}–{} | {} | {} | {} |",
                r.workload,
                r.config.name(),
                num(r.rate.median),
                num(r.rate.min),
                num(r.rate.max),
                r.ratio.map_or("–".into(), |x| format!("{x:.3}")),
                r.ns_per_packet.map_or("–".into(), |n| format!(
                    "{:.0} ({:.0}–{:.0})",
                    n.median, n.min, n.max
                )),
                r.lnat_drops
                    .map_or("–".into(), |d| format!("{:.0}", d.median)),
            );
        }
        s.push_str("\n| single packet (`BPF_PROG_TEST_RUN`) | program | ns/packet (median, min–max) |\n|---|---|---:|\n");
        for p in &self.packets {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} ({:.1}–{:.1}) |",
                p.kind.name(),
                p.config.name(),
                p.ns.median,
                p.ns.min,
                p.ns.max
            );
        }
        s.push_str("\n| header cost (`BPF_PROG_TEST_RUN`, consecutive segments) | program | ns/header (median, min–max) | ns per segment of headers | ns per segment of payload | headers/segment |\n|---|---|---:|---:|---:|---:|\n");
        for h in &self.headers {
            let _ = writeln!(
                s,
                "| back-to-back 0 B PUTs | {} | {:.1} ({:.1}–{:.1}) | {:.0} | {:.0} | {:.2} |",
                h.config.name(),
                h.ns_per_header.median,
                h.ns_per_header.min,
                h.ns_per_header.max,
                h.ns_per_segment.median,
                h.ns_per_payload_segment.median,
                h.headers_per_segment
            );
        }
        s.push_str("\n| bulk 1 MiB | CPU seconds rewriting per GiB (median) |\n|---|---:|\n");
        for c in [Config::Lnat, Config::Relay] {
            if let Some(v) = self.cpu(BULK, c) {
                let _ = writeln!(s, "| {} | {v:.4} |", c.name());
            }
        }
        s.push_str("\n| lnat map | type | entries | bytes |\n|---|---|---:|---:|\n");
        for mm in &self.maps {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                mm.name, mm.kind, mm.max_entries, mm.bytes
            );
        }
        let _ = writeln!(
            s,
            "| total | | | {} ({:.2} MiB) |\n\nFlows evicted from lnat's table early: {}.\n",
            self.maps_total,
            self.maps_total as f64 / (1u64 << 20) as f64,
            self.evicted
        );
        s.push_str("| target | measured | goal | |\n|---|---:|---:|---|\n");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} {:.2} | {} |",
                t.name,
                t.measured.map_or("–".into(), |v| format!("{v:.3}")),
                if t.at_least { "≥" } else { "≤" },
                t.goal,
                if t.pass { "pass" } else { "**miss**" }
            );
        }
        s
    }

    /// The chart: cost per packet against flow count, and per workload.
    pub fn chart(&self) -> String {
        let series = |workloads: &[String]| -> Vec<Series> {
            [Config::Lnat, Config::Following, Config::Empty]
                .iter()
                .map(|&c| Series {
                    name: c.name().into(),
                    values: workloads.iter().map(|w| self.ns(w, c)).collect(),
                })
                .filter(|s| s.values.iter().any(Option::is_some))
                .collect()
        };
        let scale: Vec<String> = workload::SCALE_FLOWS
            .iter()
            .map(|f| format!("{f} flows"))
            .collect();
        let single: Vec<String> = std::iter::once(BULK)
            .chain(SMALL)
            .map(String::from)
            .collect();
        chart::svg(
            "lnat: cost per packet (median ns per program run)",
            &[
                Panel {
                    title: "64 KiB PUTs in MTU-sized packets, by concurrent flows".into(),
                    categories: workload::SCALE_FLOWS
                        .iter()
                        .map(|f| f.to_string())
                        .collect(),
                    y_label: "ns per packet".into(),
                    kind: chart::Kind::Lines,
                    series: series(&scale),
                },
                Panel {
                    title: "one flow, by workload".into(),
                    categories: single.clone(),
                    y_label: "ns per packet".into(),
                    kind: chart::Kind::Bars,
                    series: series(&single),
                },
            ],
        )
    }
}

/// The single-packet measurements summarised by kind and program.
fn packet_rows(samples: &[PacketSample]) -> Vec<PacketRow> {
    let mut rows = Vec::new();
    for kind in Kind::ALL {
        for config in [Config::Empty, Config::Lnat] {
            let ns: Vec<f64> = samples
                .iter()
                .filter(|s| s.kind == kind && s.config == config)
                .map(|s| s.ns_per_packet)
                .collect();
            if let Some(ns) = Summary::of(&ns) {
                rows.push(PacketRow { kind, config, ns });
            }
        }
    }
    rows
}

/// The header-cost measurements summarised by program.
fn header_rows(samples: &[HeaderSample]) -> Vec<HeaderRow> {
    [Config::Empty, Config::Lnat]
        .into_iter()
        .filter_map(|config| {
            let mine: Vec<&HeaderSample> = samples.iter().filter(|s| s.config == config).collect();
            let of = |f: fn(&HeaderSample) -> f64| {
                Summary::of(&mine.iter().map(|s| f(s)).collect::<Vec<_>>())
            };
            Some(HeaderRow {
                config,
                ns_per_header: of(|s| s.cost.ns_per_header)?,
                ns_per_segment: of(|s| s.cost.headers.ns_per_segment)?,
                ns_per_payload_segment: of(|s| s.cost.payload.ns_per_segment)?,
                headers_per_segment: mine.first()?.cost.headers_per_segment,
            })
        })
        .collect()
}

/// Where a workload comes in the tables: in the order first measured.
fn order(samples: &[Sample], workload: &str) -> usize {
    samples
        .iter()
        .position(|s| s.workload == workload)
        .unwrap_or(usize::MAX)
}

/// A rate with sensible digits.
fn num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::headers::{HeaderCost, Walk};

    fn sample(workload: &str, config: Config, rate: f64, ns: Option<f64>) -> Sample {
        Sample {
            round: 0,
            workload: workload.into(),
            flows: 1,
            unit: Unit::Gbps,
            config,
            rate,
            secs: 1.0,
            ns_per_packet: ns,
            packets: 100,
            cpu_s_per_gib: ns.map(|n| n / 100.0),
            lnat_drops: None,
        }
    }

    fn packet(kind: Kind, config: Config, ns: f64) -> PacketSample {
        PacketSample {
            round: 0,
            kind,
            config,
            ns_per_packet: ns,
        }
    }

    #[test]
    fn ratios_are_to_the_same_runs_baseline_and_targets_follow() {
        let mut samples = Vec::new();
        for (none, lnat) in [(10.0, 9.9), (12.0, 11.0), (11.0, 10.0)] {
            samples.push(sample(BULK, Config::None, none, None));
            samples.push(sample(BULK, Config::Empty, none, Some(50.0)));
            samples.push(sample(BULK, Config::Lnat, lnat, Some(300.0)));
            samples.push(sample(BULK, Config::Following, lnat, Some(120.0)));
            samples.push(Sample {
                cpu_s_per_gib: Some(300.0),
                ..sample(BULK, Config::Relay, 1.0, None)
            });
            let lossy = "mixed PUTs, 3% loss";
            samples.push(sample(lossy, Config::None, 2.0, None));
            samples.push(Sample {
                lnat_drops: Some(40),
                ..sample(lossy, Config::Lnat, 1.0, Some(90.0))
            });
        }
        let r = Report::new(
            Outcome {
                samples,
                packets: vec![
                    packet(Kind::NoHeader, Config::Empty, 30.0),
                    packet(Kind::NoHeader, Config::Lnat, 72.0),
                ],
                headers: [(Config::Empty, 0.5), (Config::Lnat, 128.0)]
                    .into_iter()
                    .map(|(config, ns_per_header)| HeaderSample {
                        round: 0,
                        config,
                        cost: HeaderCost {
                            headers: Walk {
                                segments: 100,
                                headers: 1500,
                                ns_per_segment: 2000.0,
                            },
                            payload: Walk {
                                segments: 100,
                                headers: 0,
                                ns_per_segment: 80.0,
                            },
                            headers_per_segment: 15.0,
                            ns_per_header,
                        },
                    })
                    .collect(),
                maps: Vec::new(),
                evicted: 0,
            },
            &Opts {
                rounds: 3,
                quick: true,
                packets_only: false,
                only: None,
            },
            Machine::default(),
        );
        let lnat = r.row(BULK, Config::Lnat).expect("row");
        assert_eq!(lnat.rate.median, 10.0);
        assert_eq!(lnat.ratio, Some(10.0 / 11.0));
        let t = |name: &str| r.targets.iter().find(|t| t.name.starts_with(name)).cloned();
        let bulk = t("bulk throughput, lnat / no").expect("target");
        assert!(!bulk.pass);
        let cost = t("cost of a packet").expect("target");
        assert_eq!(cost.measured, Some(2.4));
        assert!(!cost.pass);
        let header = t("one LNet header").expect("target");
        assert_eq!(header.measured, Some(128.0));
        assert!(!header.pass);
        let relay = t("bulk CPU spent rewriting per GiB").expect("target");
        assert_eq!(relay.measured, Some(100.0));
        assert!(relay.pass);
        let lossy = t("mixed PUTs, 3% loss: transfer time").expect("target");
        assert_eq!(lossy.measured, Some(2.0));
        assert!(!lossy.pass);
        assert_eq!(
            t("4 KiB messages, 25% reordering: transfer time")
                .expect("target")
                .measured,
            None
        );
        assert!(!t("lnat's map memory").expect("target").pass);
        let md = r.markdown();
        assert!(
            md.contains(
                "| bulk 1 MiB | lnat | 10.00 Gbit/s | 9.90–11.00 | 0.909 | 300 (300–300) | – |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| mixed PUTs, 3% loss | lnat | 1.00 Gbit/s | 1.00–1.00 | 0.500 | 90 (90–90) | 40 |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| back-to-back 0 B PUTs | lnat | 128.0 (128.0–128.0) | 2000 | 80 | 15.00 |"
            ),
            "{md}"
        );
        assert!(r.chart().contains("<svg"));
    }
}
