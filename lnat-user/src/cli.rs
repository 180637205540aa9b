//! The command line.

use clap::{Args, Parser, Subcommand};
use lnat::datapath::Mode;
use lnat_common::{maps::DEFAULT_FLOWS, nid::Nid, wire::ACCEPTOR_PORT};

/// Lustre through NAT, without a kernel patch.
///
/// A Lustre client behind a NAT that remaps its source ports is addressed by servers (running
/// `lnet accept=all`) by the NAT's public NID, and its kernel drops every such message ("Bad dest
/// nid ... should have been sent direct"). lnat attaches a TC program to the client's interface
/// that rewrites those NIDs in the incoming socklnd stream back to the client's own.
#[derive(Parser, Debug)]
#[command(name = "lnat", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// lnat's commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the datapath to an interface's ingress and run until SIGINT or SIGTERM.
    Attach(AttachArgs),
    /// Show mappings, followed connections and counters (works while `attach` runs).
    #[command(after_long_help = lnat::report::counter_help())]
    Status(StatusArgs),
    /// Add or remove a static mapping on a running attachment.
    #[command(subcommand)]
    Map(MapCommand),
    /// Ask an LNet server what it calls this host: whether this host needs lnat.
    ///
    /// Meant for before installing anything: it connects from a reserved port as LNet does,
    /// exchanges HELLOs with the server, sends no LNet message and prints the one thing to do.
    Probe(ProbeArgs),
    /// Print a shell completion script (e.g. `lnat completions bash > /etc/bash_completion.d/lnat`).
    Completions(CompletionsArgs),
    /// Write lnat's manual pages (lnat.1 and one per command) into a directory, for packaging.
    Man(ManArgs),
}

/// `lnat completions`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell the script is for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `lnat man`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// Where the pages go (created if missing).
    pub dir: std::path::PathBuf,
}

/// `lnat attach`.
#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Interface LNet traffic from the servers arrives on (e.g. eth0, wg0).
    pub iface: String,
    /// LNet acceptor port whose connections to follow; repeat for several.
    #[arg(long = "port", value_name = "N", default_values_t = [ACCEPTOR_PORT])]
    pub ports: Vec<u16>,
    /// External NID servers address this host by (e.g. the NAT's 203.0.113.1@tcp); rewritten
    /// to each connection's own address on that net. Repeat for several.
    #[arg(long = "external", value_name = "NID", value_parser = parse_nid)]
    pub externals: Vec<Nid>,
    /// Do not learn external NIDs from server HELLOs; rewrite only the --external ones and those
    /// added with `lnat map add`.
    #[arg(long)]
    pub no_learn: bool,
    /// Forget a learned mapping after this many seconds without use (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub learn_ttl: u64,
    /// How to attach: tcx (Linux 6.6+, the default there) or a clsact filter (older kernels,
    /// or to sit among `tc` filters).
    #[arg(long, value_enum, value_name = "MODE")]
    pub attach_mode: Option<Mode>,
    /// Connections the flow table follows at once; the least recently used make room.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_FLOWS)]
    pub max_flows: u32,
    /// Attach only the ingress program: this host's discovery pushes leave as LNet wrote them,
    /// naming its private NID, and servers running LNet 2.11+ cannot send it their own RPC
    /// replies or callbacks (docs/discovery.md).
    #[arg(long)]
    pub ingress_only: bool,
}

/// `lnat status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Interface to show; all attached ones when omitted.
    pub iface: Option<String>,
    /// Print JSON for programs to read.
    #[arg(long)]
    pub json: bool,
}

/// `lnat probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The server's NID, e.g. 203.0.113.10@tcp.
    #[arg(value_name = "SERVER_NID", value_parser = parse_nid)]
    pub server: Nid,
    /// The server's LNet acceptor port.
    #[arg(long, value_name = "N", default_value_t = ACCEPTOR_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Print JSON for programs to read.
    #[arg(long)]
    pub json: bool,
}

/// `lnat map`.
#[derive(Subcommand, Debug)]
pub enum MapCommand {
    /// Rewrite EXTERNAL_NID to LOCAL_NID (default: each connection's own address on that net).
    Add {
        /// The NID servers address this host by.
        #[arg(value_name = "EXTERNAL_NID", value_parser = parse_nid)]
        external: Nid,
        /// The NID it becomes; must be on the same LNet net.
        #[arg(value_name = "LOCAL_NID", value_parser = parse_nid)]
        local: Option<Nid>,
        /// The attachment to change.
        #[arg(long, value_name = "IFACE")]
        iface: String,
    },
    /// Stop rewriting EXTERNAL_NID (learned or static).
    Del {
        /// The NID to stop rewriting.
        #[arg(value_name = "EXTERNAL_NID", value_parser = parse_nid)]
        external: Nid,
        /// The attachment to change.
        #[arg(long, value_name = "IFACE")]
        iface: String,
    },
}

fn parse_nid(s: &str) -> Result<Nid, String> {
    s.parse().map_err(|e| format!("malformed NID: {e}"))
}
