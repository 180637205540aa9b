//! `lnet-peer`: an LNet peer that follows the kernel's rules, for lnat's namespace tests, and
//! the plain-TCP and bad-network helpers those tests need. Each role prints one JSON line; the
//! client exits 0 only when every expected PUT arrived.

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use lnat_common::{
    nid::Nid,
    wire::{Endian, Proto},
};
use lnat_tests::{
    blob,
    client::{self, ClientOpts},
    impair::{self, Weather},
    relay,
    server::{self, Accept, Corrupt, Ending, ServerOpts},
    workload::Sizes,
};

#[derive(Parser)]
#[command(
    name = "lnet-peer",
    about = "An emulated LNet (socklnd) peer, and test helpers"
)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Accept connections like the LNet acceptor and passive socklnd, then send PUTs.
    Server(ServerArgs),
    /// Connect like lnet_connect, check the server's HELLO, accept messages like lnet_parse.
    Client(ClientArgs),
    /// Not LNet: accept one connection and send deterministic bytes (or read them).
    BlobServer {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        #[command(flatten)]
        blob: BlobArgs,
        /// Read what the client sends instead.
        #[arg(long)]
        upload: bool,
    },
    /// Not LNet: connect and read to the end (or send deterministic bytes).
    BlobClient {
        /// Where to connect.
        #[arg(long)]
        server: SocketAddr,
        /// Source port.
        #[arg(long)]
        src_port: Option<u16>,
        #[command(flatten)]
        blob: BlobArgs,
        /// Send the bytes instead.
        #[arg(long)]
        upload: bool,
    },
    /// A bad network between two interfaces, until SIGTERM; prints what it did.
    Impair(ImpairArgs),
    /// A userspace TCP relay that rewrites NIDs, lnat's alternative (for benchmarks).
    Relay(RelayArgs),
}

/// The bytes of a blob transfer, for the side that sends them.
#[derive(Args)]
struct BlobArgs {
    /// Bytes to send.
    #[arg(long, default_value_t = 0)]
    bytes: u32,
    /// Seed of the bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Send this text, repeated, instead of seeded bytes.
    #[arg(long)]
    text: Option<String>,
}

impl BlobArgs {
    fn blob(self) -> blob::Blob {
        blob::Blob {
            bytes: self.bytes,
            seed: self.seed,
            text: self.text,
        }
    }
}

#[derive(Args)]
struct RelayArgs {
    /// Address the LNet client connects to.
    #[arg(long)]
    listen: SocketAddr,
    /// The server's acceptor.
    #[arg(long, default_value = "203.0.113.10:988")]
    upstream: SocketAddr,
    /// The NID the server calls the client.
    #[arg(long, value_parser = parse_nid)]
    external: Nid,
    /// The client's own NID.
    #[arg(long, value_parser = parse_nid)]
    local: Nid,
    /// Connections to relay before exiting.
    #[arg(long, default_value_t = 1)]
    conns: u32,
}

#[derive(Args)]
struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:988")]
    listen: SocketAddr,
    /// The server's NID.
    #[arg(long, value_parser = parse_nid)]
    nid: Nid,
    /// The acceptor's `accept` parameter.
    #[arg(long, value_enum, default_value_t = AcceptArg::Secure)]
    accept: AcceptArg,
    /// PUTs to send to each peer.
    #[arg(long, default_value_t = 10)]
    puts: u64,
    /// Seed of sizes and payloads.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// PUT sizes: mixed, zero, small, or a comma-separated list.
    #[arg(long, default_value = "mixed")]
    sizes: Sizes,
    /// Checksum messages (protocol V2, like socklnd's enable_csum).
    #[arg(long)]
    csum: bool,
    /// Send a NOOP after every N PUTs (0: never).
    #[arg(long, default_value_t = 0)]
    noop_every: u64,
    /// Write frames in random chunks of at most B bytes (0: one write each).
    #[arg(long, default_value_t = 0)]
    chunk_max: usize,
    /// Messages per write, as socklnd sends a backed-up queue.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Milliseconds to pause after each write.
    #[arg(long, default_value_t = 0)]
    pace_ms: u64,
    /// Connections to serve before exiting.
    #[arg(long, default_value_t = 1)]
    conns: u32,
    /// Seconds to wait for a peer to close after its PUTs.
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    /// The server's byte order (default: the peer's).
    #[arg(long, value_enum)]
    endian: Option<EndianArg>,
    /// Break the protocol this way after three good PUTs.
    #[arg(long, value_enum)]
    corrupt: Option<Corrupt>,
    /// Send with IPv4 options.
    #[arg(long)]
    ip_options: bool,
    /// Clear DF so routers fragment.
    #[arg(long)]
    no_df: bool,
    /// Send one payload per size again and again, undigested (benchmarks).
    #[arg(long)]
    no_digest: bool,
    /// How a connection ends after the last PUT is written.
    #[arg(long, value_enum, default_value_t = Ending::Hold)]
    end: Ending,
    /// puts: send --puts PUTs; rpc: answer each request PUT with a reply PUT, send
    /// --callbacks PUTs, and run LNet discovery before each.
    #[arg(long, value_enum, default_value_t = Mode::Puts)]
    mode: Mode,
    /// In rpc mode, callback PUTs to send after the first request.
    #[arg(long, default_value_t = 0)]
    callbacks: u64,
    /// In rpc mode, LNet peer discovery (lnet_peer_discovery_disabled=0 when on).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    discovery: OnOff,
    /// In rpc mode, longest a discovery dial (to a peer's NID on port 988) may take.
    #[arg(long, default_value_t = 2000)]
    dial_timeout_ms: u64,
}

#[derive(Args)]
struct ClientArgs {
    /// The server's acceptor address.
    #[arg(long, default_value = "203.0.113.10:988")]
    server: SocketAddr,
    /// The NID to dial.
    #[arg(long, value_parser = parse_nid)]
    server_nid: Nid,
    /// The client's own NID.
    #[arg(long, value_parser = parse_nid)]
    nid: Nid,
    /// socklnd version (1 to 4).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=4))]
    proto: u8,
    /// Byte order to speak.
    #[arg(long, value_enum, default_value_t = EndianArg::Little)]
    endian: EndianArg,
    /// HELLO connection type.
    #[arg(long, default_value_t = 1)]
    ctype: u32,
    /// PUTs to receive.
    #[arg(long, default_value_t = 10)]
    expect: u64,
    /// Seconds the whole run may take.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Reconnections allowed after a rejected or broken connection.
    #[arg(long, default_value_t = 0)]
    reconnects: u32,
    /// Connect from this port instead of the first free reserved one (0: any).
    #[arg(long)]
    src_port: Option<u16>,
    /// Run this many clients at once.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Do not digest payloads (benchmarks); the report's digests are empty.
    #[arg(long)]
    no_digest: bool,
    /// Read in large blocks rather than message by message (benchmarks).
    #[arg(long)]
    read_ahead: bool,
    /// puts: receive --expect PUTs; rpc: discover the server, send --requests request PUTs,
    /// and receive as many replies and --callbacks callbacks.
    #[arg(long, value_enum, default_value_t = Mode::Puts)]
    mode: Mode,
    /// In rpc mode, checksum messages on a V2 connection (socklnd's enable_csum).
    #[arg(long)]
    csum: bool,
    /// In rpc mode, request PUTs to send.
    #[arg(long, default_value_t = 1)]
    requests: u64,
    /// In rpc mode, callback PUTs to expect.
    #[arg(long, default_value_t = 0)]
    callbacks: u64,
    /// In rpc mode, LNet peer discovery (lnet_peer_discovery_disabled=0 when on).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    discovery: OnOff,
}

/// What a peer exchanges.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A stream of PUTs from the server.
    Puts,
    /// Requests, replies and callbacks, with discovery.
    Rpc,
}

/// A switch.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

#[derive(Args)]
struct ImpairArgs {
    /// Interface frames are impaired coming from.
    #[arg(long)]
    from: String,
    /// Interface they go to.
    #[arg(long)]
    to: String,
    /// Percent of frames dropped.
    #[arg(long, default_value_t = 0)]
    drop: u64,
    /// Percent of frames held back (reordered).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Percent of frames duplicated.
    #[arg(long, default_value_t = 0)]
    dup: u64,
    /// Seed of the decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// 802.1Q priority tags (VLAN 0) pushed onto each frame forwarded (0 to 2).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    tags: u8,
}

#[derive(Clone, Copy, ValueEnum)]
enum AcceptArg {
    All,
    Secure,
}

#[derive(Clone, Copy, ValueEnum)]
enum EndianArg {
    Little,
    Big,
}

impl EndianArg {
    fn endian(self) -> Endian {
        match self {
            EndianArg::Little => Endian::Little,
            EndianArg::Big => Endian::Big,
        }
    }
}

fn parse_nid(s: &str) -> Result<Nid, String> {
    s.parse().map_err(|e| format!("malformed NID: {e}"))
}

/// Prints a report as one JSON line, or the error; the exit code says which.
fn finish<T: serde::Serialize>(result: anyhow::Result<T>) -> ExitCode {
    match result {
        Ok(report) => {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lnet-peer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Raises the soft limit on open files to the hard one: thousands of connections at once (two
/// descriptors each) need more than the usual 1,024.
fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() -> ExitCode {
    raise_nofile();
    match Cli::parse().role {
        Role::BlobServer {
            listen,
            blob,
            upload,
        } => finish(blob::serve(listen, &blob.blob(), upload)),
        Role::BlobClient {
            server,
            src_port,
            blob,
            upload,
        } => {
            let blob = blob.blob();
            finish(blob::fetch(
                server,
                src_port,
                Duration::from_secs(60),
                upload.then_some(&blob),
            ))
        }
        Role::Impair(a) => {
            // SAFETY: installs a handler that only stores to an atomic.
            unsafe {
                libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
                libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
            }
            let w = Weather {
                drop: a.drop,
                hold: a.hold,
                dup: a.dup,
                seed: a.seed,
            };
            finish(impair::run(&a.from, &a.to, w, a.tags, |_| {
                STOP.load(Ordering::Relaxed)
            }))
        }
        Role::Relay(a) => finish(relay::serve(&relay::RelayOpts {
            listen: a.listen,
            upstream: a.upstream,
            external: a.external,
            local: a.local,
            conns: a.conns,
        })),
        Role::Server(a) => {
            let opts = ServerOpts {
                listen: a.listen,
                nid: a.nid,
                accept: match a.accept {
                    AcceptArg::All => Accept::All,
                    AcceptArg::Secure => Accept::Secure,
                },
                puts: a.puts,
                seed: a.seed,
                sizes: a.sizes,
                csum: a.csum,
                noop_every: a.noop_every,
                chunk_max: a.chunk_max,
                batch: a.batch,
                pace: Duration::from_millis(a.pace_ms),
                conns: a.conns,
                hold: Duration::from_secs(a.hold_secs),
                endian: a.endian.map(EndianArg::endian),
                corrupt: a.corrupt,
                ip_options: a.ip_options,
                no_df: a.no_df,
                digest: !a.no_digest,
                end: a.end,
                rpc: (a.mode == Mode::Rpc).then(|| server::RpcOpts {
                    callbacks: a.callbacks,
                    discovery: a.discovery == OnOff::On,
                    dial_timeout: Duration::from_millis(a.dial_timeout_ms),
                }),
            };
            finish(server::serve(&opts))
        }
        Role::Client(a) => {
            let opts = ClientOpts {
                server: a.server,
                server_nid: a.server_nid,
                nid: a.nid,
                proto: Proto::from_u8(a.proto).unwrap_or(Proto::V3),
                endian: a.endian.endian(),
                ctype: a.ctype,
                expect: a.expect,
                timeout: Duration::from_secs(a.timeout_secs),
                reconnects: a.reconnects,
                src_port: a.src_port,
                digest: !a.no_digest,
                read_ahead: a.read_ahead,
                rpc: (a.mode == Mode::Rpc).then(|| client::RpcOpts {
                    requests: a.requests,
                    callbacks: a.callbacks,
                    discovery: a.discovery == OnOff::On,
                    csum: a.csum,
                }),
            };
            let report = if a.parallel > 1 {
                client::run_many(&opts, a.parallel)
            } else {
                client::run(&opts)
            };
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            if report.status == "ok" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
