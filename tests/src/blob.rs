//! Plain TCP traffic that is not LNet, to show lnat leaves it alone: a deterministic byte stream
//! from a server to a client, or from the client to the server, compared by digest.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::workload;

/// What one side of a blob transfer saw.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobReport {
    /// Bytes moved.
    pub bytes: u64,
    /// SHA-256 of them.
    pub digest: String,
}

/// The bytes of a transfer: `bytes` bytes made from `seed`, or `text` repeated to that length
/// (another protocol's look, rather than noise).
#[derive(Clone, Debug)]
pub struct Blob {
    /// How many.
    pub bytes: u32,
    /// Seed of the bytes.
    pub seed: u64,
    /// The text to repeat instead.
    pub text: Option<String>,
}

impl Blob {
    fn data(&self) -> Vec<u8> {
        match &self.text {
            Some(t) => t.bytes().cycle().take(self.bytes as usize).collect(),
            None => workload::payload(self.seed, u64::MAX, self.bytes),
        }
    }
}

/// Sends `blob` on `s` and closes it.
fn send(mut s: std::net::TcpStream, blob: &Blob) -> anyhow::Result<BlobReport> {
    let data = blob.data();
    s.write_all(&data).context("sending")?;
    s.shutdown(std::net::Shutdown::Write)
        .context("closing the stream")?;
    Ok(BlobReport {
        bytes: data.len() as u64,
        digest: workload::digest(&data),
    })
}

/// Reads `s` to its end.
fn receive(mut s: std::net::TcpStream, timeout: Duration) -> anyhow::Result<BlobReport> {
    s.set_read_timeout(Some(timeout)).context("read timeout")?;
    let mut data = Vec::new();
    s.read_to_end(&mut data).context("reading")?;
    Ok(BlobReport {
        bytes: data.len() as u64,
        digest: workload::digest(&data),
    })
}

/// Accepts one connection on `listen` and sends it `blob`, or with `upload` reads what the
/// client sends.
pub fn serve(listen: SocketAddr, blob: &Blob, upload: bool) -> anyhow::Result<BlobReport> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let (s, _) = listener.accept().context("accepting")?;
    if upload {
        receive(s, Duration::from_secs(60))
    } else {
        send(s, blob)
    }
}

/// Connects to `server` (from `src_port` if given) and reads to the end, or sends `upload`.
pub fn fetch(
    server: SocketAddr,
    src_port: Option<u16>,
    timeout: Duration,
    upload: Option<&Blob>,
) -> anyhow::Result<BlobReport> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .context("socket")?;
    if let Some(p) = src_port {
        sock.set_reuse_address(true).context("SO_REUSEADDR")?;
        let local = SocketAddr::from(([0, 0, 0, 0], p));
        sock.bind(&local.into())
            .with_context(|| format!("binding port {p}"))?;
    }
    sock.connect_timeout(&server.into(), Duration::from_secs(5))
        .with_context(|| format!("connecting to {server}"))?;
    let s: std::net::TcpStream = sock.into();
    match upload {
        Some(blob) => send(s, blob),
        None => receive(s, timeout),
    }
}
