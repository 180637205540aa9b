//! Builds the eBPF datapath (`lnat-ebpf`) for the BPF target with the nightly toolchain, so the
//! `lnat` binary can embed it. `cargo xtask setup` installs what this needs (rust-src and
//! bpf-linker); see the README.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace with cargo metadata")?;
    let ebpf = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "lnat-ebpf")
        .ok_or_else(|| anyhow!("lnat-ebpf is not in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .context("lnat-ebpf has no directory")?;
    aya_build::build_ebpf(
        [Package {
            name: "lnat-ebpf",
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
