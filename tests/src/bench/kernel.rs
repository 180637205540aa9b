//! What the kernel accounts for BPF programs and maps: run time and run count (with
//! `kernel.bpf_stats_enabled`), and the memory each map holds.

use std::process::Command;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::ns;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled=1` while it lives; the previous value is put back on drop, however
/// the bench ends (short of SIGKILL).
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    /// Turns run-time accounting on.
    pub fn new() -> anyhow::Result<StatsEnabled> {
        let previous = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?;
        std::fs::write(STATS_SYSCTL, "1")
            .with_context(|| format!("writing 1 to {STATS_SYSCTL}"))?;
        Ok(StatsEnabled {
            previous: previous.trim().to_owned(),
        })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(STATS_SYSCTL, &self.previous) {
            eprintln!(
                "lnat-bench: could not restore {STATS_SYSCTL} to {}: {e}",
                self.previous
            );
        }
    }
}

/// A program's run-time counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Nanoseconds spent in the program since it was loaded (while stats were on).
    pub run_time_ns: u64,
    /// Times it ran.
    pub run_cnt: u64,
}

impl RunStats {
    /// Nanoseconds per run between `before` and `self`, and the runs counted.
    pub fn per_run_since(&self, before: &RunStats) -> (f64, u64) {
        let runs = self.run_cnt.saturating_sub(before.run_cnt);
        let ns = self.run_time_ns.saturating_sub(before.run_time_ns);
        if runs == 0 {
            (f64::NAN, 0)
        } else {
            (ns as f64 / runs as f64, runs)
        }
    }
}

fn bpftool_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = ns::output(Command::new("bpftool").arg("--json").args(args))?;
    serde_json::from_str(&out).with_context(|| format!("parsing bpftool {}", args.join(" ")))
}

/// The run-time counters of program `id`.
pub fn run_stats(id: u32) -> anyhow::Result<RunStats> {
    let v = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
    Ok(RunStats {
        run_time_ns: v["run_time_ns"].as_u64().unwrap_or(0),
        run_cnt: v["run_cnt"].as_u64().unwrap_or(0),
    })
}

/// One map of a program, as the kernel accounts it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct MapMemory {
    /// The map's name.
    pub name: String,
    /// Its type, as bpftool names it.
    pub kind: String,
    /// Its capacity.
    pub max_entries: u64,
    /// Bytes the kernel charges for it (`bytes_memlock`).
    pub bytes: u64,
}

/// Every map the programs `ids` use, each once, with the memory the kernel charges for it.
pub fn map_memory(ids: &[u32]) -> anyhow::Result<Vec<MapMemory>> {
    let mut maps = std::collections::BTreeSet::new();
    for id in ids {
        let prog = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
        let Some(used) = prog["map_ids"].as_array() else {
            bail!("bpftool shows no maps for program {id}");
        };
        maps.extend(used.iter().filter_map(serde_json::Value::as_u64));
    }
    maps.into_iter()
        .map(|m| {
            let v = bpftool_json(&["map", "show", "id", &m.to_string()])?;
            Ok(MapMemory {
                name: v["name"].as_str().unwrap_or("?").to_owned(),
                kind: v["type"].as_str().unwrap_or("?").to_owned(),
                max_entries: v["max_entries"].as_u64().unwrap_or(0),
                bytes: v["bytes_memlock"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_per_run_is_the_ratio_of_deltas() {
        let a = RunStats {
            run_time_ns: 1_000,
            run_cnt: 10,
        };
        let b = RunStats {
            run_time_ns: 5_000,
            run_cnt: 50,
        };
        assert_eq!(b.per_run_since(&a), (100.0, 40));
        let (ns, runs) = a.per_run_since(&a);
        assert!(ns.is_nan());
        assert_eq!(runs, 0);
    }
}
