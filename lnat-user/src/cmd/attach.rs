//! `lnat attach`: load, attach, report, and clean up on SIGINT or SIGTERM.

use std::{io::Write as _, time::Duration};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use lnat::{
    datapath::{self, Hook, Maps},
    iface,
    lock::AttachLock,
    pins, privileges,
};
use lnat_common::{
    flow::CLOSING_IDLE_NS,
    maps::{LearnEvent, MAX_PORTS, names},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::cli::AttachArgs;

/// Prints the datapath's aya-log records as lnat output lines.
struct DatapathLog;

impl log::Log for DatapathLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        say(&format!(
            "datapath: {} {}",
            record.level().as_str().to_lowercase(),
            record.args()
        ));
    }
    fn flush(&self) {}
}

/// One line of output, flushed at once so that scripts watching it see it.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "lnat: {line}");
    let _ = out.flush();
}

/// Removes the attachment's pins however `run` ends.
struct Unpin(String);

impl Drop for Unpin {
    fn drop(&mut self) {
        if let Err(e) = pins::remove(&self.0) {
            eprintln!("lnat: error: {e:#}");
        }
    }
}

/// Attaches to `args.iface` and runs until told to stop.
pub fn run(args: AttachArgs) -> anyhow::Result<()> {
    privileges::require()?;
    let iface = iface::lookup(&args.iface)?;
    check_ports(&args.ports)?;
    let mode = datapath::choose(args.attach_mode, &iface.name)?;
    pins::ensure_bpffs()?;
    let _lock = AttachLock::take(&iface.name)?;
    if let Some(id) = datapath::on_tcx(&iface.name)? {
        bail!(
            "an lnat program ({id}) is attached to {} by something else",
            iface.name
        );
    }
    // Holding the lock, whatever an earlier lnat left behind is stale: it was killed.
    let dir = pins::dir(&iface.name);
    if dir.exists() {
        pins::remove(&iface.name)?;
        say(&format!("removed stale pins under {}", dir.display()));
    }
    if datapath::remove_stale_filters(&iface.name)? {
        say(&format!("removed a stale lnat filter from {}", iface.name));
    }
    let mut ebpf = datapath::load(args.max_flows)?;
    let logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, DatapathLog)
        .context("connecting to the datapath's log")?;
    let _unpin = Unpin(iface.name.clone());
    datapath::pin_maps(&ebpf, &dir)?;
    let mut maps = Maps::pinned(&iface.name)?;
    maps.configure(&args.ports, !args.no_learn, iface.l2_len)?;
    maps.set_egress(!args.ingress_only)?;
    for ext in &args.externals {
        maps.add_static(*ext, None)?;
    }
    let events: RingBuf<MapData> = ebpf
        .take_map(names::EVENTS)
        .context("the datapath has no event ring")?
        .try_into()
        .context("LNAT_EVENTS is not a ring buffer")?;
    let hooks: &[Hook] = if args.ingress_only {
        &[Hook::Ingress]
    } else {
        &Hook::BOTH
    };
    let attached = datapath::attach(&mut ebpf, &iface, mode, hooks)?;
    let ports: Vec<String> = args.ports.iter().map(u16::to_string).collect();
    let egress = match attached.program_id(Hook::Egress) {
        Some(id) => format!(" and its egress (program {id})"),
        None => ", ingress only".to_owned(),
    };
    say(&format!(
        "attached to {} ({}, program {}){egress}; following LNet port {}; learning {}",
        iface.name,
        attached.mode.name(),
        attached.program_id(Hook::Ingress).unwrap_or_default(),
        ports.join(","),
        if args.no_learn { "off" } else { "on" },
    ));
    let ttl = Duration::from_secs(args.learn_ttl);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let served = rt.block_on(serve(events, logger, maps, ttl));
    let detached = datapath::detach(&mut ebpf, &iface.name, attached);
    served?;
    detached?;
    say(&format!("detached from {}", iface.name));
    Ok(())
}

fn check_ports(ports: &[u16]) -> anyhow::Result<()> {
    if ports.len() > MAX_PORTS {
        bail!("at most {MAX_PORTS} --port options");
    }
    if ports.contains(&0) {
        bail!("port 0 is not an LNet acceptor port");
    }
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != ports.len() {
        bail!("a --port is given twice");
    }
    Ok(())
}

/// Reports learned mappings and datapath logs, expires idle learned mappings and frees closed
/// flows past their idle time (`lnat_common::flow`), until a signal.
async fn serve(
    events: RingBuf<MapData>,
    logger: aya_log::EbpfLogger<DatapathLog>,
    mut maps: Maps,
    ttl: Duration,
) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    // SAFETY: each wraps the map fd it owns, which stays open and the same until it is dropped.
    let (mut events, mut logs) = unsafe {
        (
            AsyncFd::register_with_interest(events, Interest::READABLE)
                .map_err(|e| e.into_parts().1)
                .context("watching LNAT_EVENTS")?,
            AsyncFd::register_with_interest(logger, Interest::READABLE)
                .map_err(|e| e.into_parts().1)
                .context("watching the datapath log")?,
        )
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            ready = events.readable_mut() => {
                let mut guard = ready.context("waiting for LNAT_EVENTS")?;
                while let Some(item) = guard.get_inner_mut().next() {
                    if item.len() >= size_of::<LearnEvent>() {
                        // SAFETY: the datapath writes whole `LearnEvent`s; the ring gives no alignment.
                        let e: LearnEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                        say(&format!(
                            "learned {} -> {} (server {}:{})",
                            e.external.nid(),
                            e.local.nid(),
                            std::net::Ipv4Addr::from(e.flow.peer_addr),
                            e.flow.peer_port,
                        ));
                    }
                }
                guard.clear_ready();
            }
            ready = logs.readable_mut() => {
                let mut guard = ready.context("waiting for the datapath log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = sweep.tick() => {
                let freed = maps.sweep_closed();
                if freed != 0 {
                    say(&format!("freed {freed} closed connections, idle for {}s", CLOSING_IDLE_NS / 1_000_000_000));
                }
                if !ttl.is_zero() {
                    for (nid, _) in maps.expire(ttl.as_nanos() as u64)? {
                        say(&format!("expired {nid} (unused for {}s)", ttl.as_secs()));
                    }
                }
            }
        }
    }
    Ok(())
}
