//! `cargo xtask bench`: what lnat costs, measured in network namespaces (`lnat-bench`).

use anyhow::bail;

use crate::{
    setup,
    workspace::{self, exec},
};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
    /// A quarter of the transfers.
    #[arg(long)]
    quick: bool,
}

/// Builds everything, then runs `lnat-bench run`; results also go to target/bench/.
pub fn run(args: Args) -> anyhow::Result<()> {
    setup::run()?;
    if !workspace::is_root() {
        bail!("the bench creates network namespaces and loads BPF: run cargo xtask bench as root");
    }
    workspace::build_release()?;
    let mut bench = std::process::Command::new(workspace::release_bin("lnat-bench"));
    bench
        .arg("run")
        .arg("--out")
        .arg(workspace::target_dir().join("bench"))
        .env("LNAT_BIN", workspace::release_bin("lnat"))
        .env("LNET_PEER_BIN", workspace::release_bin("lnet-peer"));
    if args.json {
        bench.arg("--json");
    }
    if args.quick {
        bench.arg("--quick");
    }
    exec(&mut bench)
}
