//! What `lnat status` reports: one model, printed for people or as JSON.

use std::fmt::{self, Write as _};

use lnat_common::{
    maps::{Counters, FlowKey, FlowState, Mapping, Origin},
    nid::Nid,
    tracker::{Desync, Role},
};
use serde::Serialize;

use crate::datapath::{self, Maps};

/// The state of one attachment.
#[derive(Serialize, Debug)]
pub struct Status {
    /// The interface.
    pub iface: String,
    /// The live program, if one is attached (queried from the kernel).
    pub program_id: Option<u32>,
    /// How it is attached: `tcx` or `clsact`.
    pub mode: Option<&'static str>,
    /// Instructions the verifier processed to accept it (its limit is 1,000,000).
    pub verified_insns: Option<u32>,
    /// The egress program, if one is attached (not with `--ingress-only`).
    pub egress: Option<ProgramView>,
    /// Followed LNet ports.
    pub ports: Vec<u16>,
    /// Whether HELLOs teach external NIDs.
    pub learning: bool,
    /// External NID mappings.
    pub mappings: Vec<MappingView>,
    /// Followed connections.
    pub flows: Vec<FlowView>,
    /// Decision counters, summed over CPUs (a JSON object, in a fixed order).
    #[serde(serialize_with = "as_object")]
    pub counters: Vec<(&'static str, u64)>,
}

fn as_object<S: serde::Serializer>(pairs: &[(&'static str, u64)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

/// A program other than the ingress one.
#[derive(Serialize, Debug)]
pub struct ProgramView {
    /// The kernel's id of the program.
    pub program_id: u32,
    /// Instructions the verifier processed to accept it.
    pub verified_insns: Option<u32>,
}

/// One mapping.
#[derive(Serialize, Debug)]
pub struct MappingView {
    /// The NID a server addresses us by.
    pub external: String,
    /// What it becomes: a NID, or `*@net` for each connection's own address.
    pub local: String,
    /// `learned` or `static`.
    pub origin: &'static str,
    /// NIDs rewritten through it.
    pub hits: u64,
    /// Seconds since it was last used (or made).
    pub idle_secs: u64,
}

/// One followed connection.
#[derive(Serialize, Debug)]
pub struct FlowView {
    /// The sender, `address:port`.
    pub peer: String,
    /// Our end, `address:port`.
    pub local: String,
    /// `active` (we connected) or `passive`.
    pub role: &'static str,
    /// socklnd version, once its HELLO was seen.
    pub proto: Option<u8>,
    /// NIDs rewritten on it.
    pub rewrites: u64,
    /// Why it is no longer followed, if it is not.
    pub desynced: Option<&'static str>,
    /// A FIN or RST was seen: kept only for late copies of its bytes (README, Flows).
    pub closing: bool,
}

/// What each counter counts, for `lnat status --help`.
pub fn counter_help() -> String {
    let width = Counters::DESCRIPTIONS
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(0);
    let mut help = "Counters:".to_owned();
    for (name, what) in Counters::DESCRIPTIONS {
        help.push_str(&format!("\n  {name:width$}  {what}"));
    }
    help
}

fn addr(a: [u8; 4]) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(a)
}

fn mapping_view(external: Nid, m: &Mapping, now: u64) -> MappingView {
    let net = external.with_addr(0);
    let net_name = net.to_string();
    let net_name = net_name.trim_start_matches("0.0.0.0");
    let local = if m.local_addr != [0; 4] {
        external
            .with_addr(u32::from_be_bytes(m.local_addr))
            .to_string()
    } else if m.learned_on != [0; 4] {
        external
            .with_addr(u32::from_be_bytes(m.learned_on))
            .to_string()
    } else {
        format!("*{net_name}")
    };
    MappingView {
        external: external.to_string(),
        local,
        origin: if m.origin == Origin::Learned as u8 {
            "learned"
        } else {
            "static"
        },
        hits: m.hits,
        idle_secs: now.saturating_sub(m.last_used_ns) / 1_000_000_000,
    }
}

fn flow_view(k: &FlowKey, f: &FlowState) -> FlowView {
    let t = &f.tracker;
    FlowView {
        peer: format!("{}:{}", addr(k.peer_addr), k.peer_port),
        local: format!("{}:{}", addr(k.local_addr), k.local_port),
        role: if t.role == Role::Passive as u8 {
            "passive"
        } else {
            "active"
        },
        proto: (t.proto != 0).then_some(t.proto),
        rewrites: f.rewrites,
        desynced: Desync::from_u8(t.desync).map(Desync::name),
        closing: f.closing(),
    }
}

impl Status {
    /// Reads the status of the attachment on `iface` from its pinned maps.
    pub fn read(iface: &str) -> anyhow::Result<Status> {
        let maps = Maps::pinned(iface)?;
        let cfg = maps.config()?;
        let now = datapath::now_ns();
        let running = datapath::running(iface)?;
        Ok(Status {
            iface: iface.to_owned(),
            program_id: running.map(|r| r.ingress.id),
            mode: running.map(|r| r.mode.name()),
            verified_insns: running.and_then(|r| r.ingress.verified_insns),
            egress: running.and_then(|r| r.egress).map(|p| ProgramView {
                program_id: p.id,
                verified_insns: p.verified_insns,
            }),
            ports: cfg.ports[..(cfg.nports as usize).min(cfg.ports.len())].to_vec(),
            learning: cfg.learn != 0,
            mappings: maps
                .mappings()?
                .iter()
                .map(|(n, m)| mapping_view(*n, m, now))
                .collect(),
            flows: maps.flows()?.iter().map(|(k, f)| flow_view(k, f)).collect(),
            counters: maps.counters()?.fields().to_vec(),
        })
    }

    /// The value of a counter by name.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let program = |id: u32, insns: Option<u32>| match insns {
            Some(n) => format!("program {id}, {n} instructions verified"),
            None => format!("program {id}"),
        };
        let prog = match (self.program_id, self.mode) {
            (Some(id), Some(mode)) => {
                let egress = match &self.egress {
                    Some(e) => format!("; egress {}", program(e.program_id, e.verified_insns)),
                    None => "; ingress only".to_owned(),
                };
                format!(
                    "attached ({mode}, {}{egress})",
                    program(id, self.verified_insns)
                )
            }
            _ => "pinned maps only (no lnat program uses them)".to_owned(),
        };
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        writeln!(
            f,
            "{}: {prog}, LNet port {}, learning {}",
            self.iface,
            ports.join(","),
            if self.learning { "on" } else { "off" }
        )?;
        writeln!(f, "mappings:")?;
        if self.mappings.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for m in &self.mappings {
            writeln!(
                f,
                "  {} -> {}  {}  hits {}  idle {}s",
                m.external, m.local, m.origin, m.hits, m.idle_secs
            )?;
        }
        writeln!(f, "flows: {} followed", self.flows.len())?;
        for fl in &self.flows {
            let mut state = String::new();
            match fl.desynced {
                Some(why) => write!(state, "not followed ({why})")?,
                None => write!(state, "following")?,
            }
            if fl.closing {
                write!(state, ", closing")?;
            }
            let proto = fl.proto.map_or("-".to_owned(), |p| format!("V{p}"));
            writeln!(
                f,
                "  {} -> {}  {}  {proto}  {state}  rewrites {}",
                fl.peer, fl.local, fl.role, fl.rewrites
            )?;
        }
        write!(f, "counters:")?;
        for (name, value) in &self.counters {
            write!(f, " {name}={value}")?;
        }
        writeln!(f)
    }
}
