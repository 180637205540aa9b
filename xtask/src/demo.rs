//! `cargo xtask demo`: a Lustre client behind a port-remapping NAT, without and with lnat
//! (`lnat-demo`).

use anyhow::bail;

use crate::{
    setup,
    workspace::{self, exec},
};

/// Runs the demo from a fresh machine: installs, builds, then runs `lnat-demo`, which shows and
/// cleans up.
pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    if !workspace::is_root() {
        bail!("the demo creates network namespaces and loads BPF: run it as root");
    }
    workspace::build_release()?;
    exec(
        std::process::Command::new(workspace::release_bin("lnat-demo"))
            .env("LNAT_BIN", workspace::release_bin("lnat"))
            .env("LNET_PEER_BIN", workspace::release_bin("lnet-peer")),
    )
}
