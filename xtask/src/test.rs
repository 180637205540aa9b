//! `cargo xtask test`: the whole suite, as CI runs it.

use std::process::Command;

use anyhow::bail;

use crate::{
    matrix, setup,
    workspace::{self, cargo, exec},
};

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Only run tests whose name contains this.
    filter: Option<String>,
}

/// Runs formatting and lint checks, then every test in release mode.
pub fn run(args: Args) -> anyhow::Result<()> {
    setup::run()?;
    if !workspace::is_root() {
        bail!(
            "the namespace tests need root (network namespaces, BPF): run cargo xtask test as root"
        );
    }
    exec(cargo().args(["fmt", "--all", "--check"]))?;
    exec(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "lnat-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The datapath only builds for BPF, with nightly (README.md, Building).
    exec(
        Command::new("rustup")
            .current_dir(workspace::root().join("lnat-ebpf"))
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"]),
    )?;
    workspace::build_release()?;
    let mut test = cargo();
    test.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "lnat-ebpf",
        "--no-fail-fast",
    ])
    .env("LNAT_BIN", workspace::release_bin("lnat"));
    if let Some(f) = &args.filter {
        test.arg(f);
        return exec(&mut test);
    }
    exec(&mut test)?;
    fuzz(FUZZ_SECS)?;
    matrix::run()
}

/// The kernel matrix alone: set up, build, boot each kernel.
pub fn matrix() -> anyhow::Result<()> {
    setup::run()?;
    if !workspace::is_root() {
        bail!("the kernel matrix needs root (network namespaces and BPF in each guest)");
    }
    workspace::build_release()?;
    matrix::run()
}

/// Seconds of fuzzing in every test run (the long runs are done by hand; see the README).
const FUZZ_SECS: u32 = 30;

/// Fuzzes the stream tracker against the reference rewrite, from the committed corpus.
pub fn fuzz(secs: u32) -> anyhow::Result<()> {
    let dir = workspace::root().join("lnat-common");
    // libFuzzer adds what it finds to the corpus; a short run's additions are not kept.
    let scratch = workspace::target_dir().join("fuzz-corpus");
    std::fs::create_dir_all(&scratch)?;
    exec(
        Command::new("rustup")
            .current_dir(&dir)
            .args(["run", "nightly", "cargo", "fuzz", "run", "tracker"])
            .arg(&scratch)
            .arg(dir.join("fuzz/corpus/tracker"))
            .args(["--", &format!("-max_total_time={secs}")]),
    )
}
