//! `lnet-peer`: an LNet peer that follows the kernel's rules, for lnat's namespace tests.
//! Prints one JSON report line; the client exits 0 only when every expected PUT arrived.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use lnat_common::{
    nid::Nid,
    wire::{Endian, Proto},
};
use lnat_tests::{
    blob,
    client::{self, ClientOpts},
    server::{self, Accept, ServerOpts},
    workload::Sizes,
};

#[derive(Parser)]
#[command(name = "lnet-peer", about = "An emulated LNet (socklnd) peer")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Accept connections like the LNet acceptor and passive socklnd, then send PUTs.
    Server {
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
    },
    /// Connect like lnet_connect, check the server's HELLO, accept messages like lnet_parse.
    Client {
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
        /// Connect from this port instead of the first free reserved one.
        #[arg(long)]
        src_port: Option<u16>,
    },
    /// Not LNet: accept one connection and send deterministic bytes.
    BlobServer {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Bytes to send.
        #[arg(long)]
        bytes: u32,
        /// Seed of the bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Not LNet: connect and read to the end.
    BlobClient {
        /// Where to connect.
        #[arg(long)]
        server: SocketAddr,
        /// Source port.
        #[arg(long)]
        src_port: Option<u16>,
    },
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

fn main() -> ExitCode {
    match Cli::parse().role {
        Role::BlobServer {
            listen,
            bytes,
            seed,
        } => finish(blob::serve(listen, bytes, seed)),
        Role::BlobClient { server, src_port } => {
            finish(blob::fetch(server, src_port, Duration::from_secs(60)))
        }
        Role::Server {
            listen,
            nid,
            accept,
            puts,
            seed,
            sizes,
            csum,
            noop_every,
            chunk_max,
            batch,
            pace_ms,
            conns,
            hold_secs,
        } => {
            let opts = ServerOpts {
                listen,
                nid,
                accept: match accept {
                    AcceptArg::All => Accept::All,
                    AcceptArg::Secure => Accept::Secure,
                },
                puts,
                seed,
                sizes,
                csum,
                noop_every,
                chunk_max,
                batch,
                pace: Duration::from_millis(pace_ms),
                conns,
                hold: Duration::from_secs(hold_secs),
            };
            finish(server::serve(&opts))
        }
        Role::Client {
            server,
            server_nid,
            nid,
            proto,
            endian,
            ctype,
            expect,
            timeout_secs,
            reconnects,
            src_port,
        } => {
            let opts = ClientOpts {
                server,
                server_nid,
                nid,
                proto: Proto::from_u8(proto).unwrap_or(Proto::V3),
                endian: match endian {
                    EndianArg::Little => Endian::Little,
                    EndianArg::Big => Endian::Big,
                },
                ctype,
                expect,
                timeout: Duration::from_secs(timeout_secs),
                reconnects,
                src_port,
            };
            let report = client::run(&opts);
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            if report.status == "ok" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
