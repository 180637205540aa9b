//! `cargo xtask`: everything lnat needs, from a fresh machine to a demo, tests and benchmarks.

mod bench;
mod demo;
mod matrix;
mod setup;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// lnat's developer commands.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing lnat needs (Debian packages, rust-src, bpf-linker).
    Setup,
    /// Build the `lnat`, `lnet-peer`, `lnat-bench` and `lnat-demo` binaries (release).
    Build,
    /// Show lnat fixing a NATed Lustre client, in network namespaces.
    Demo,
    /// Run every check: formatting, clippy, unit, property and namespace tests on this
    /// kernel, then the kernel matrix (Debian's 6.1, 6.12 and 5.10 under qemu).
    Test(test::Args),
    /// Only the kernel matrix (after building what it runs).
    Matrix,
    /// Measure what lnat costs: throughput, message rate and per-packet cost, against no
    /// program, an empty program and a userspace relay (results in target/bench/).
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build => setup::run().and_then(|()| workspace::build_release()),
        Command::Demo => demo::run(),
        Command::Test(args) => test::run(args),
        Command::Matrix => test::matrix(),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
