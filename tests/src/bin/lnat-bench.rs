//! `lnat-bench`: what lnat costs a Lustre client. In network namespaces, an emulated LNet
//! server streams to emulated clients through a port-remapping NAT, with no TC program, an
//! empty one, lnat, or a userspace relay on the client; see `cargo xtask bench`.

use std::{
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use lnat_tests::bench::{
    hook,
    report::{Machine, Report},
    run::{self, Opts},
};

#[derive(Parser)]
#[command(
    name = "lnat-bench",
    about = "Measures what lnat costs a Lustre client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every workload under every configuration and report (needs root).
    Run(RunArgs),
    /// Attach the empty TC program to IFACE ingress as lnat attaches lnat, until SIGINT or
    /// SIGTERM (`run` starts it on the client).
    Hook {
        /// The interface.
        iface: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Print JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// A quarter of the transfers.
    #[arg(long)]
    quick: bool,
    /// Rounds of everything (default 5).
    #[arg(long)]
    rounds: Option<usize>,
    /// Only the cost of single packets run through the programs (seconds, for datapath work).
    #[arg(long)]
    packets_only: bool,
    /// Only the workloads whose name contains this (for datapath work).
    #[arg(long)]
    only: Option<String>,
    /// Where to write results.json, results.md and cost.svg.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// The signals that end a run or a hook.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset initialise and fill the set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic. The run then stops between workloads and
    // unwinds, so the namespaces go and bpf_stats_enabled is put back.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let opts = Opts {
        rounds: args.rounds.unwrap_or(5).max(1),
        quick: args.quick,
        packets_only: args.packets_only,
        only: args.only.clone(),
    };
    let outcome = run::run(&opts, &|| STOP.load(Ordering::Relaxed))?;
    let report = Report::new(outcome, &opts, Machine::this());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
    let markdown = report.markdown();
    for (name, text) in [
        ("results.json", &json),
        ("results.md", &markdown),
        ("cost.svg", &report.chart()),
    ] {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", if args.json { &json } else { &markdown });
    eprintln!(
        "lnat-bench: results in {}",
        args.out.join("results.json").display()
    );
    Ok(())
}

fn hold_hook(iface: &str) -> anyhow::Result<()> {
    let set = stop_signals();
    // SAFETY: blocks the stop signals in this (single) thread, so sigwait receives them.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let (_ebpf, id) = hook::attach(iface)?;
    println!("lnat-bench: empty program attached to {iface} (tcx, program {id})");
    std::io::stdout().flush().context("writing to stdout")?;
    let mut sig = 0;
    // SAFETY: waits for one of the blocked signals.
    unsafe { libc::sigwait(&set, &mut sig) };
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(a) => run(&a),
        Command::Hook { iface } => hold_hook(&iface),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lnat-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
