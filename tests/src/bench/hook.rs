//! The empty TC program, `lnat_pass` from lnat's own object, attached exactly as `lnat attach`
//! attaches lnat: the cost of the hook itself, which lnat's cost is measured against.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
};
use lnat::datapath;
use lnat_common::maps::names;

use crate::{harness::Host, ns::Proc};

/// The empty classifier's name in lnat's object.
pub const PROGRAM: &str = "lnat_pass";

/// Loads lnat's object and attaches its empty classifier to `iface` ingress, first in the tcx
/// chain as lnat is. The link lasts as long as the returned object; the id is the program's.
pub fn attach(iface: &str) -> anyhow::Result<(Ebpf, u32)> {
    // The empty program uses no map: the flow table is kept small.
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::FLOWS, 64)
        .map_max_entries(names::QUIET, 64)
        .load(datapath::OBJECT)
        .context("loading lnat's object")?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROGRAM)
        .with_context(|| format!("lnat's object has no {PROGRAM} program"))?
        .try_into()
        .with_context(|| format!("{PROGRAM} is not a TC classifier"))?;
    prog.load()
        .with_context(|| format!("the verifier rejected {PROGRAM}"))?;
    prog.attach_with_options(
        iface,
        TcAttachType::Ingress,
        TcAttachOptions::TcxOrder(LinkOrder::first()),
    )
    .with_context(|| format!("attaching {PROGRAM} to {iface} ingress with tcx"))?;
    let id = prog.info().context("reading the program's id")?.id();
    Ok((ebpf, id))
}

/// A `lnat-bench hook` process on a host, holding the empty program on an interface until
/// dropped.
pub struct EmptyHook {
    proc: Option<Proc>,
    /// The kernel's id of the attached program.
    pub program_id: u32,
}

impl EmptyHook {
    /// Runs `lnat-bench hook IFACE` on `host` (this very binary) and waits for it to attach.
    pub fn start(host: &Host, iface: &str) -> anyhow::Result<EmptyHook> {
        let exe = std::env::current_exe().context("finding lnat-bench")?;
        let exe = exe.to_string_lossy();
        let child = host
            .command(&[&exe, "hook", iface])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting lnat-bench hook")?;
        let mut proc = Proc::from_child(child, "lnat-bench hook");
        let out = proc
            .take_stdout()
            .context("no stdout from lnat-bench hook")?;
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .context("reading lnat-bench hook's output")?;
        let Some(program_id) = line
            .rsplit("program ")
            .next()
            .and_then(|s| s.split(')').next()?.parse().ok())
        else {
            bail!("lnat-bench hook did not attach: {line:?}");
        };
        Ok(EmptyHook {
            proc: Some(proc),
            program_id,
        })
    }
}

impl Drop for EmptyHook {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.signal(libc::SIGTERM);
            let _ = p.wait(Duration::from_secs(10));
        }
    }
}
