//! The datapath: the embedded eBPF object, loading and attaching it, and its maps.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions},
    },
    util::KernelVersion,
};
use lnat_common::{
    maps::{Config, Counters, FlowKey, FlowState, MAX_PORTS, Mapping, NidKey, Origin, names},
    nid::Nid,
};

use crate::{iface::Iface, pins};

/// The compiled TC program (built by build.rs from `lnat-ebpf`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lnat"));

/// Name of the classifier in the object, and of the program `bpftool prog` shows.
pub const PROGRAM: &str = "lnat";

/// How the program sits on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A tcx link, first in the ingress chain (Linux 6.6+).
    Tcx,
    /// A filter on a clsact qdisc (older kernels).
    Clsact,
}

impl Mode {
    /// A short name for output.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Tcx => "tcx",
            Mode::Clsact => "clsact",
        }
    }
}

/// A live attachment.
#[derive(Clone, Copy, Debug)]
pub struct Attached {
    /// How it is attached.
    pub mode: Mode,
    /// The kernel's id of the program.
    pub program_id: u32,
}

/// Loads the object with the flow table sized to `max_flows`; the program is not yet verified.
pub fn load(max_flows: u32) -> anyhow::Result<Ebpf> {
    let kernel = KernelVersion::current().context("reading the kernel version")?;
    if kernel < KernelVersion::new(5, 17, 0) {
        bail!("kernel {kernel:?} lacks bpf_loop: lnat needs Linux 5.17 or newer");
    }
    EbpfLoader::new()
        .map_max_entries(names::FLOWS, max_flows)
        .map_max_entries(names::QUIET, max_flows)
        .load(OBJECT)
        .context("loading the datapath's maps (does this kernel have BPF ring buffers and BTF?)")
}

/// The mode `mode` (or, when `None`, the best this kernel has: tcx from Linux 6.6).
pub fn choose(mode: Option<Mode>) -> anyhow::Result<Mode> {
    match mode {
        Some(Mode::Tcx) if !has_tcx()? => {
            bail!("this kernel has no tcx (Linux 6.6 or newer); use --attach-mode clsact")
        }
        Some(m) => Ok(m),
        None if has_tcx()? => Ok(Mode::Tcx),
        None => Ok(Mode::Clsact),
    }
}

/// Removes an lnat clsact filter left on `iface` by an lnat that was killed (tcx links go
/// with their process; filters do not). True if there was one.
pub fn remove_stale_filter(iface: &str) -> anyhow::Result<bool> {
    match tc::qdisc_detach_program(iface, TcAttachType::Ingress, PROGRAM) {
        Ok(()) => Ok(true),
        Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(tc::TcError::NetlinkError(_)) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing a stale lnat filter from {iface}")),
    }
}

/// Verifies the program and attaches it to `iface` ingress: first in the tcx chain, so that a
/// program with a final verdict cannot hide packets from it, or as a clsact filter.
pub fn attach(ebpf: &mut Ebpf, iface: &Iface, mode: Mode) -> anyhow::Result<Attached> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROGRAM)
        .context("the datapath object has no lnat program")?
        .try_into()
        .context("the lnat program is not a TC classifier")?;
    prog.load()
        .context("the kernel's verifier rejected the datapath")?;
    if mode == Mode::Tcx {
        prog.attach_with_options(
            &iface.name,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .with_context(|| format!("attaching to {} ingress with tcx", iface.name))?;
    } else {
        if let Err(e) = tc::qdisc_add_clsact(&iface.name)
            && !already_exists(&e)
        {
            return Err(e).with_context(|| format!("adding a clsact qdisc to {}", iface.name));
        }
        let options = NlOptions {
            priority: 1,
            ..NlOptions::default()
        };
        prog.attach_with_options(
            &iface.name,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(options),
        )
        .with_context(|| format!("attaching to {} ingress on clsact", iface.name))?;
    }
    let program_id = prog.info().context("reading the program's id")?.id();
    Ok(Attached { mode, program_id })
}

/// True when an error says, somewhere in its chain, that the thing already exists.
fn already_exists(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AlreadyExists)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The verifier's cost of a loaded program: instructions it processed (out of its 1M limit).
pub fn verified_insns(program_id: u32) -> Option<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == program_id)
        .and_then(|p| p.verified_instruction_count())
}

/// The id of an lnat program attached to `iface` ingress through tcx, if there is one.
pub fn running_on(iface: &str) -> anyhow::Result<Option<u32>> {
    if !has_tcx()? {
        return Ok(None);
    }
    let (_, programs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
        .with_context(|| format!("listing the programs on {iface} ingress"))?;
    Ok(programs
        .iter()
        .find(|p| p.name_as_str() == Some(PROGRAM))
        .map(|p| p.id()))
}

/// True on kernels with tcx links (6.6 and later).
fn has_tcx() -> anyhow::Result<bool> {
    Ok(
        KernelVersion::current().context("reading the kernel version")?
            >= KernelVersion::new(6, 6, 0),
    )
}

/// Pins every lnat map of `ebpf` under `dir`.
pub fn pin_maps(ebpf: &Ebpf, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in names::ALL {
        let map = ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the datapath has no map {name}"))?;
        let path = dir.join(name);
        map.pin(&path)
            .with_context(|| format!("pinning {name} at {}", path.display()))?;
    }
    Ok(())
}

/// Typed handles on an attachment's pinned maps.
pub struct Maps {
    config: Array<MapData, Config>,
    mappings: HashMap<MapData, NidKey, Mapping>,
    flows: HashMap<MapData, FlowKey, FlowState>,
    counters: PerCpuArray<MapData, Counters>,
}

impl Maps {
    /// Opens the maps pinned for `iface`.
    pub fn pinned(iface: &str) -> anyhow::Result<Maps> {
        Maps::typed(
            Map::Array(pins::open(iface, names::CONFIG)?),
            Map::HashMap(pins::open(iface, names::MAPPINGS)?),
            Map::LruHashMap(pins::open(iface, names::FLOWS)?),
            Map::PerCpuArray(pins::open(iface, names::COUNTERS)?),
        )
    }

    /// Takes the maps out of a loaded object that is not pinned (a test-run of the program).
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Maps> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the datapath has no map {name}"))
        };
        Maps::typed(
            take(names::CONFIG)?,
            take(names::MAPPINGS)?,
            take(names::FLOWS)?,
            take(names::COUNTERS)?,
        )
    }

    fn typed(config: Map, mappings: Map, flows: Map, counters: Map) -> anyhow::Result<Maps> {
        Ok(Maps {
            config: config
                .try_into()
                .context("LNAT_CONFIG is not the expected array")?,
            mappings: mappings
                .try_into()
                .context("LNAT_MAPPINGS is not the expected hash map")?,
            flows: flows
                .try_into()
                .context("LNAT_FLOWS is not the expected LRU hash map")?,
            counters: counters
                .try_into()
                .context("LNAT_COUNTERS is not the expected per-CPU array")?,
        })
    }

    /// The attachment's settings.
    pub fn config(&self) -> anyhow::Result<Config> {
        self.config.get(&0, 0).context("reading LNAT_CONFIG")
    }

    /// Writes the attachment's settings.
    pub fn set_config(&mut self, cfg: Config) -> anyhow::Result<()> {
        self.config.set(0, cfg, 0).context("writing LNAT_CONFIG")
    }

    /// Sets up a fresh attachment: ports, learning and link-layer length.
    pub fn configure(&mut self, ports: &[u16], learn: bool, l2_len: u8) -> anyhow::Result<()> {
        if ports.is_empty() || ports.len() > MAX_PORTS {
            bail!("give between 1 and {MAX_PORTS} LNet ports");
        }
        let mut cfg = Config {
            nports: ports.len() as u8,
            learn: learn as u8,
            l2_len,
            generation: 1,
            ..Config::default()
        };
        cfg.ports[..ports.len()].copy_from_slice(ports);
        self.set_config(cfg)
    }

    /// Every mapping, sorted by external NID.
    pub fn mappings(&self) -> anyhow::Result<Vec<(Nid, Mapping)>> {
        let mut all = Vec::new();
        for entry in self.mappings.iter() {
            let (k, v) = entry.context("reading LNAT_MAPPINGS")?;
            all.push((k.nid(), v));
        }
        all.sort_by_key(|(n, _)| *n);
        Ok(all)
    }

    /// Adds (or replaces) a static mapping; `local` of `None` means each connection's own address.
    pub fn add_static(&mut self, external: Nid, local: Option<Nid>) -> anyhow::Result<()> {
        let m = Mapping {
            local_addr: local.map_or([0; 4], |l| l.addr().to_be_bytes()),
            origin: Origin::Static as u8,
            last_used_ns: now_ns(),
            ..Mapping::default()
        };
        self.mappings
            .insert(NidKey::of(external), m, 0)
            .with_context(|| format!("adding {external} to LNAT_MAPPINGS"))?;
        self.changed(Some(external))
    }

    /// Removes a mapping; false when there was none.
    pub fn remove(&mut self, external: Nid) -> anyhow::Result<bool> {
        match self.mappings.remove(&NidKey::of(external)) {
            Ok(()) => {
                self.changed(None)?;
                Ok(true)
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(false)
            }
            Err(e) => Err(e).with_context(|| format!("removing {external} from LNAT_MAPPINGS")),
        }
    }

    /// Tells flows that mappings changed, and makes `hint` the first guess for new connections.
    fn changed(&mut self, hint: Option<Nid>) -> anyhow::Result<()> {
        let mut cfg = self.config()?;
        cfg.generation = cfg.generation.wrapping_add(1);
        if let Some(h) = hint {
            cfg.hint = NidKey::of(h);
        }
        self.set_config(cfg)
    }

    /// Removes learned mappings unused for `ttl_ns`; returns them.
    pub fn expire(&mut self, ttl_ns: u64) -> anyhow::Result<Vec<(Nid, Mapping)>> {
        let now = now_ns();
        let stale: Vec<_> = self
            .mappings()?
            .into_iter()
            .filter(|(_, m)| {
                m.origin == Origin::Learned as u8 && now.saturating_sub(m.last_used_ns) > ttl_ns
            })
            .collect();
        for (nid, _) in &stale {
            self.remove(*nid)?;
        }
        Ok(stale)
    }

    /// Every followed connection.
    pub fn flows(&self) -> anyhow::Result<Vec<(FlowKey, FlowState)>> {
        let mut all = Vec::new();
        for entry in self.flows.iter() {
            all.push(entry.context("reading LNAT_FLOWS")?);
        }
        all.sort_by_key(|(k, _)| (k.peer_addr, k.peer_port, k.local_port));
        Ok(all)
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let per_cpu = self.counters.get(&0, 0).context("reading LNAT_COUNTERS")?;
        Ok(per_cpu.iter().fold(Counters::default(), |a, c| sum(&a, c)))
    }
}

/// Field-wise sum of two counter sets.
fn sum(a: &Counters, b: &Counters) -> Counters {
    Counters {
        segments: a.segments + b.segments,
        rewritten: a.rewritten + b.rewritten,
        compensated: a.compensated + b.compensated,
        learned: a.learned + b.learned,
        learn_failed: a.learn_failed + b.learn_failed,
        dropped_ooo: a.dropped_ooo + b.dropped_ooo,
        desynced: a.desynced + b.desynced,
        evicted: a.evicted + b.evicted,
        conflicts: a.conflicts + b.conflicts,
        history_misses: a.history_misses + b.history_misses,
        flows_opened: a.flows_opened + b.flows_opened,
        flows_closed: a.flows_closed + b.flows_closed,
        passed: a.passed + b.passed,
        fragments: a.fragments + b.fragments,
        contended: a.contended + b.contended,
        quiet: a.quiet + b.quiet,
    }
}

/// The clock `bpf_ktime_get_ns` reads (CLOCK_MONOTONIC), in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
