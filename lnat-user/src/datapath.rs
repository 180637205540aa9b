//! The datapath: the embedded eBPF object, loading and attaching it, and its maps.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, MapType, PerCpuArray, ProgramArray},
    programs::{
        LinkOrder, ProgramError, ProgramInfo, ProgramType, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
    sys::{BpfHelper, is_helper_supported, is_map_supported},
};
use lnat_common::{
    maps::{
        Config, Counters, FlowKey, FlowState, Kept, MAX_PORTS, Mapping, NidKey, Origin,
        OutFlowState, names,
    },
    nid::Nid,
};

use crate::{iface::Iface, kernel, pins, verifier::Rejected};

/// The compiled TC program (built by build.rs from `lnat-ebpf`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lnat"));

/// Name of the ingress classifier in the object, and of the program `bpftool prog` shows.
pub const PROGRAM: &str = "lnat";

/// A TC hook lnat attaches a program to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// What servers send: their destination NIDs are rewritten.
    Ingress,
    /// What this host sends: its discovery pushes are rewritten (docs/discovery.md).
    Egress,
}

impl Hook {
    /// Both hooks, in the order they are attached.
    pub const BOTH: [Hook; 2] = [Hook::Ingress, Hook::Egress];

    /// The classifier for the hook, by the name `bpftool prog` shows.
    pub const fn program(self) -> &'static str {
        match self {
            Hook::Ingress => PROGRAM,
            Hook::Egress => "lnat_egress",
        }
    }

    /// A short name for output.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    const fn attach_type(self) -> TcAttachType {
        match self {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }
}

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

/// A live attachment, as `lnat attach` made it.
#[derive(Debug)]
pub struct Attached {
    /// How it is attached.
    pub mode: Mode,
    /// Each hook's program id and its tcx link or clsact filter, for [`detach`].
    links: Vec<(Hook, u32, SchedClassifierLinkId)>,
}

impl Attached {
    /// The kernel's id of the program on `hook`, if it is attached there.
    pub fn program_id(&self, hook: Hook) -> Option<u32> {
        self.links
            .iter()
            .find(|(h, ..)| *h == hook)
            .map(|(_, id, _)| *id)
    }
}

/// One of the lnat programs working on an interface, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    /// The kernel's id of the program.
    pub id: u32,
    /// Instructions the verifier processed to accept it (out of its 1M limit).
    pub verified_insns: Option<u32>,
}

/// The lnat programs working on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    /// How they are attached.
    pub mode: Mode,
    /// The ingress program.
    pub ingress: Program,
    /// The egress program, unless attached with `--ingress-only`.
    pub egress: Option<Program>,
}

/// The ring aya-log's datapath side writes to, and the bytes lnat gives it.
const LOG_RING: &str = "AYA_LOGS";
const LOG_RING_BYTES: u32 = 32 * 1024;

/// Loads the object with the flow table sized to `max_flows`; the program is not yet verified.
///
/// The kernel is asked first for what the datapath needs beyond what any BPF kernel has, so
/// that an old one is refused with its name and what it lacks rather than with a verifier log.
pub fn load(max_flows: u32) -> anyhow::Result<Ebpf> {
    check_kernel()?;
    raise_memlock_limit()?;
    EbpfLoader::new()
        // aya-log's ring, 128 KiB by default: the datapath logs only what it learns and the
        // streams it gives up, and 32 KiB keeps all the maps within 16 MiB.
        .map_max_entries(LOG_RING, LOG_RING_BYTES)
        .map_max_entries(names::FLOWS, max_flows)
        .map_max_entries(names::QUIET, max_flows)
        .map_max_entries(names::OUT_FLOWS, max_flows)
        .map_max_entries(names::OUT_QUIET, max_flows)
        .load(OBJECT)
        .map_err(|e| map_error(&kernel::name(), e))
}

/// Refuses a kernel without BPF ring buffers (before 5.8) or `bpf_loop` (before 5.17, unless
/// backported, as in RHEL 9's 5.14). A probe that cannot decide lets the load go ahead: its
/// own errors say more.
fn check_kernel() -> anyhow::Result<()> {
    if matches!(is_map_supported(MapType::RingBuf), Ok(false)) {
        bail!(
            "{} lacks BPF ring buffers (Linux 5.8+), which lnat's datapath needs",
            kernel::name()
        );
    }
    if matches!(
        is_helper_supported(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_loop),
        Ok(false)
    ) {
        bail!(
            "{} lacks the BPF helper bpf_loop (Linux 5.17+), which lnat's datapath needs",
            kernel::name()
        );
    }
    Ok(())
}

/// Lifts RLIMIT_MEMLOCK as far as lnat may: kernels before 5.11 charge BPF maps to it, and
/// the flow table is larger than its usual 8 MiB. Without CAP_SYS_RESOURCE (in some
/// containers) that is the hard limit; later kernels do not need it at all.
fn raise_memlock_limit() -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given; setrlimit reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("reading RLIMIT_MEMLOCK");
        }
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return Ok(());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
            return Err(std::io::Error::last_os_error())
                .context("raising RLIMIT_MEMLOCK to its hard limit for the maps");
        }
    }
    Ok(())
}

/// A failed load of the object as one line: which map `kernel` would not create, and why.
fn map_error(kernel: &str, e: EbpfError) -> anyhow::Error {
    match e {
        EbpfError::MapError(MapError::CreateError { name, io_error }) => {
            let what = if name == names::EVENTS {
                " (a BPF ring buffer, Linux 5.8+)"
            } else {
                ""
            };
            anyhow!("{kernel} refused to create the map {name}{what}: {io_error}")
        }
        e => anyhow::Error::new(e).context(format!(
            "loading the datapath's maps and BTF into {kernel} (lnat needs Linux 5.17+ or \
             backports of BPF ring buffers and bpf_loop)"
        )),
    }
}

/// The mode `mode` (or, when `None`, the best the kernel has for `iface`: tcx where it has
/// tcx links, Linux 6.6 and later).
pub fn choose(mode: Option<Mode>, iface: &str) -> anyhow::Result<Mode> {
    let tcx = tcx_programs(iface, Hook::Ingress)?.is_some();
    match mode {
        Some(Mode::Tcx) if !tcx => bail!(
            "{} has no tcx (Linux 6.6+); use --attach-mode clsact",
            kernel::name()
        ),
        Some(m) => Ok(m),
        None if tcx => Ok(Mode::Tcx),
        None => Ok(Mode::Clsact),
    }
}

/// Removes the lnat clsact filters left on `iface` by an lnat that was killed (tcx links go
/// with their process; filters do not). True if there was one. Asked whatever the mode, on
/// kernels with tcx too: the killed lnat may have used clsact.
pub fn remove_stale_filters(iface: &str) -> anyhow::Result<bool> {
    let mut removed = false;
    for hook in Hook::BOTH {
        removed |= remove_stale_filter(iface, hook)?;
    }
    Ok(removed)
}

fn remove_stale_filter(iface: &str, hook: Hook) -> anyhow::Result<bool> {
    match tc::qdisc_detach_program(iface, hook.attach_type(), hook.program()) {
        Ok(()) => Ok(true),
        Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        // No clsact qdisc, so no filter.
        Err(tc::TcError::NetlinkError(e))
            if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) =>
        {
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("removing a stale lnat filter from {iface}")),
    }
}

/// Verifies the programs for `hooks` and attaches each to its hook of `iface`: first in the
/// tcx chain, so that a program with a final verdict cannot hide packets from it, or as a
/// clsact filter. A program that fails leaves the ones before it attached, for the caller to
/// [`detach`] or drop.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &Iface,
    mode: Mode,
    hooks: &[Hook],
) -> anyhow::Result<Attached> {
    if mode == Mode::Clsact
        && let Err(e) = tc::qdisc_add_clsact(&iface.name)
        && !already_exists(&e)
    {
        return Err(e).with_context(|| format!("adding a clsact qdisc to {}", iface.name));
    }
    let mut attached = Attached {
        mode,
        links: Vec::new(),
    };
    if hooks.contains(&Hook::Ingress) {
        load_kept_pass(ebpf)?;
    }
    for &hook in hooks {
        let (id, link) = attach_one(ebpf, iface, mode, hook)?;
        attached.links.push((hook, id, link));
    }
    Ok(attached)
}

/// The program the ingress one tail-calls to parse a segment kept ahead of its cursor.
const KEPT_PASS: &str = "lnat_kept";
/// Where the ingress program finds it.
const PROGS: &str = "LNAT_PROGS";

/// Verifies the kept-segment pass and puts it where the ingress program tail-calls it, before
/// the ingress program sees a packet.
pub fn load_kept_pass(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let prog = classifier_named(ebpf, KEPT_PASS)?;
    prog.load().map_err(rejected)?;
    let fd = prog
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .with_context(|| format!("taking the {KEPT_PASS} program's descriptor"))?;
    let mut progs: ProgramArray<&mut MapData> = ebpf
        .map_mut(PROGS)
        .with_context(|| format!("the datapath has no map {PROGS}"))?
        .try_into()
        .with_context(|| format!("{PROGS} is not the expected program array"))?;
    progs
        .set(0, &fd, 0)
        .with_context(|| format!("putting {KEPT_PASS} into {PROGS}"))
}

/// A failed program load as lnat reports it: the verifier's reason in one line.
fn rejected(e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow::Error::new(Rejected::new(
            &kernel::name(),
            &io_error,
            &verifier_log.to_string(),
        )),
        e => anyhow::Error::new(e).context("loading the datapath's program"),
    }
}

fn classifier(ebpf: &mut Ebpf, hook: Hook) -> anyhow::Result<&mut SchedClassifier> {
    classifier_named(ebpf, hook.program())
}

/// The object's TC program `name`.
fn classifier_named<'e>(ebpf: &'e mut Ebpf, name: &str) -> anyhow::Result<&'e mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("the datapath object has no {name} program"))?
        .try_into()
        .with_context(|| format!("the {name} program is not a TC classifier"))
}

fn attach_one(
    ebpf: &mut Ebpf,
    iface: &Iface,
    mode: Mode,
    hook: Hook,
) -> anyhow::Result<(u32, SchedClassifierLinkId)> {
    let prog = classifier(ebpf, hook)?;
    let loaded = prog.load().map_err(rejected);
    match hook {
        Hook::Ingress => loaded?,
        Hook::Egress => {
            loaded.context("the egress program (--ingress-only attaches without it)")?
        }
    }
    let options = match mode {
        Mode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
        Mode::Clsact => TcAttachOptions::Netlink(NlOptions {
            priority: 1,
            ..NlOptions::default()
        }),
    };
    let link = prog
        .attach_with_options(&iface.name, hook.attach_type(), options)
        .with_context(|| {
            format!(
                "attaching to {} {} with {}",
                iface.name,
                hook.name(),
                mode.name()
            )
        })?;
    let id = prog
        .info()
        .with_context(|| format!("reading the id of the {} program", hook.program()))?
        .id();
    Ok((id, link))
}

/// Removes the tcx links or the clsact filters `attached` made, the same way in either mode,
/// and says so if that fails (dropping the object would do it silently).
pub fn detach(ebpf: &mut Ebpf, iface: &str, attached: Attached) -> anyhow::Result<()> {
    let mode = attached.mode;
    for (hook, _, link) in attached.links.into_iter().rev() {
        classifier(ebpf, hook)?
            .detach(link)
            .with_context(|| format!("detaching from {iface} {} ({})", hook.name(), mode.name()))?;
    }
    Ok(())
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

/// The lnat programs working on `iface`, in either mode: the loaded programs that use the
/// interface's pinned LNAT_CONFIG (each attachment has its own maps). They are attached by
/// tcx if tcx lists the ingress one on the interface, else by the clsact filters that alone
/// keep them loaded.
pub fn running(iface: &str) -> anyhow::Result<Option<Running>> {
    let config = pins::open(iface, names::CONFIG)?
        .info()
        .with_context(|| format!("reading the id of {iface}'s {}", names::CONFIG))?
        .id();
    let (mut ingress, mut egress) = (None, None);
    for p in aya::programs::loaded_programs() {
        // A program unloaded while the list is read is not ours to report.
        let Ok(p) = p else { continue };
        let slot = match p.name_as_str() {
            Some(n) if n == Hook::Ingress.program() => &mut ingress,
            Some(n) if n == Hook::Egress.program() => &mut egress,
            _ => continue,
        };
        // Nor is one unloaded before its maps are read (another lnat detaching meanwhile).
        let maps = match p.map_ids() {
            Err(ProgramError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                continue;
            }
            maps => maps.with_context(|| format!("reading the maps of program {}", p.id()))?,
        };
        if maps.is_some_and(|ids| ids.contains(&config)) {
            *slot = Some(Program {
                id: p.id(),
                verified_insns: p.verified_instruction_count(),
            });
        }
    }
    let Some(ingress) = ingress else {
        return Ok(None);
    };
    let on_tcx = tcx_programs(iface, Hook::Ingress)?
        .is_some_and(|tcx| tcx.iter().any(|t| t.id() == ingress.id));
    Ok(Some(Running {
        mode: if on_tcx { Mode::Tcx } else { Mode::Clsact },
        ingress,
        egress,
    }))
}

/// The id of an lnat program attached to either hook of `iface` through tcx, if there is one.
pub fn on_tcx(iface: &str) -> anyhow::Result<Option<u32>> {
    for hook in Hook::BOTH {
        let found = tcx_programs(iface, hook)?.and_then(|programs| {
            programs
                .iter()
                .find(|p| p.name_as_str() == Some(hook.program()))
                .map(ProgramInfo::id)
        });
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The programs on `iface`'s `hook` through tcx; `None` when the kernel has no tcx links
/// (before 6.6; asked, not guessed from the version, for kernels with backports).
fn tcx_programs(iface: &str, hook: Hook) -> anyhow::Result<Option<Vec<ProgramInfo>>> {
    match SchedClassifier::query_tcx(iface, hook.attach_type()) {
        Ok((_, programs)) => Ok(Some(programs)),
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL) => {
            Ok(None)
        }
        Err(e) => {
            Err(e).with_context(|| format!("listing the tcx programs on {iface} {}", hook.name()))
        }
    }
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
    quiet: HashMap<MapData, FlowKey, u64>,
    out_flows: HashMap<MapData, FlowKey, OutFlowState>,
    out_quiet: HashMap<MapData, FlowKey, u64>,
    counters: PerCpuArray<MapData, Counters>,
    kept: HashMap<MapData, FlowKey, Kept>,
}

impl Maps {
    /// Opens the maps pinned for `iface`.
    pub fn pinned(iface: &str) -> anyhow::Result<Maps> {
        Maps::typed([
            Map::Array(pins::open(iface, names::CONFIG)?),
            Map::HashMap(pins::open(iface, names::MAPPINGS)?),
            Map::LruHashMap(pins::open(iface, names::FLOWS)?),
            Map::LruHashMap(pins::open(iface, names::QUIET)?),
            Map::LruHashMap(pins::open(iface, names::OUT_FLOWS)?),
            Map::LruHashMap(pins::open(iface, names::OUT_QUIET)?),
            Map::PerCpuArray(pins::open(iface, names::COUNTERS)?),
            Map::HashMap(pins::open(iface, names::KEPT)?),
        ])
    }

    /// Takes the maps out of a loaded object that is not pinned (a test-run of the program).
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Maps> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the datapath has no map {name}"))
        };
        Maps::typed([
            take(names::CONFIG)?,
            take(names::MAPPINGS)?,
            take(names::FLOWS)?,
            take(names::QUIET)?,
            take(names::OUT_FLOWS)?,
            take(names::OUT_QUIET)?,
            take(names::COUNTERS)?,
            take(names::KEPT)?,
        ])
    }

    /// The maps in this order: config, mappings, flows, quiet, out_flows, out_quiet, counters,
    /// kept.
    fn typed(
        [
            config,
            mappings,
            flows,
            quiet,
            out_flows,
            out_quiet,
            counters,
            kept,
        ]: [Map; 8],
    ) -> anyhow::Result<Maps> {
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
            quiet: quiet
                .try_into()
                .context("LNAT_QUIET is not the expected LRU hash map")?,
            out_flows: out_flows
                .try_into()
                .context("LNAT_OUT_FLOWS is not the expected LRU hash map")?,
            out_quiet: out_quiet
                .try_into()
                .context("LNAT_OUT_QUIET is not the expected LRU hash map")?,
            counters: counters
                .try_into()
                .context("LNAT_COUNTERS is not the expected per-CPU array")?,
            kept: kept
                .try_into()
                .context("LNAT_KEPT is not the expected hash map")?,
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

    /// Tells the ingress program whether the egress one rewrites this host's pushes.
    pub fn set_egress(&mut self, on: bool) -> anyhow::Result<()> {
        let mut cfg = self.config()?;
        cfg.egress = on as u8;
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

    /// Frees the flows that closed and have been idle longer than `lnat_common::flow`'s
    /// `CLOSING_IDLE_NS`, with their quiet windows; returns how many.
    ///
    /// Each is read again just before it goes: a new handshake on its four-tuple in between
    /// (which resets the entry in place, no longer closing) keeps it.
    /// Entries the datapath frees or replaces meanwhile are skipped.
    pub fn sweep_closed(&mut self) -> usize {
        let now = now_ns();
        // Each direction of a connection closes on its own FIN or RST: two tables, one rule.
        // A connection is counted by its incoming stream, which every attachment follows.
        sweep(&mut self.out_flows, &mut self.out_quiet, now);
        let freed = sweep(&mut self.flows, &mut self.quiet, now);
        // Bytes kept ahead for a flow that is gone (freed here, or pushed out of the flow
        // table): the datapath frees the rest once parsed, or replaces them with a flow's next.
        let orphans: Vec<FlowKey> = self
            .kept
            .keys()
            .filter_map(Result::ok)
            .filter(|k| self.flows.get(k, 0).is_err())
            .collect();
        for key in orphans {
            let _ = self.kept.remove(&key);
        }
        freed
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
        Ok(per_cpu.iter().fold(Counters::default(), |mut sum, c| {
            sum.add(c);
            sum
        }))
    }
}

/// Frees the entries of `flows` (and their windows in `quiet`) that have been closing and idle
/// past [`lnat_common::flow::CLOSING_IDLE_NS`] at `now`; returns how many.
fn sweep<const N: usize>(
    flows: &mut HashMap<MapData, FlowKey, FlowState<N>>,
    quiet: &mut HashMap<MapData, FlowKey, u64>,
    now: u64,
) -> usize {
    let expired: Vec<FlowKey> = flows
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, f)| f.expired(now))
        .map(|(k, _)| k)
        .collect();
    let mut freed = 0;
    for key in expired {
        if !flows.get(&key, 0).is_ok_and(|f| f.expired(now)) {
            continue;
        }
        if flows.remove(&key).is_ok() {
            freed += 1;
        }
        let _ = quiet.remove(&key);
    }
    freed
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_the_kernel_cannot_create_is_named_with_the_kernel() {
        let refused = |name: &str| {
            map_error(
                "kernel 5.4.0-150-generic",
                EbpfError::MapError(MapError::CreateError {
                    name: name.to_owned(),
                    io_error: std::io::Error::from_raw_os_error(libc::EINVAL),
                }),
            )
            .to_string()
        };
        assert_eq!(
            refused(names::EVENTS),
            "kernel 5.4.0-150-generic refused to create the map LNAT_EVENTS (a BPF ring buffer, \
             Linux 5.8+): Invalid argument (os error 22)"
        );
        assert_eq!(
            refused(names::FLOWS),
            "kernel 5.4.0-150-generic refused to create the map LNAT_FLOWS: Invalid argument (os \
             error 22)"
        );
    }

    #[test]
    fn other_load_failures_say_what_lnat_needs() {
        let e = map_error("kernel 4.19.0", EbpfError::NoBTF);
        assert_eq!(
            format!("{e:#}"),
            "loading the datapath's maps and BTF into kernel 4.19.0 (lnat needs Linux 5.17+ or \
             backports of BPF ring buffers and bpf_loop): no BTF parsed for object"
        );
    }
}
