//! Plain TCP traffic that is not LNet, to show lnat leaves it alone: a deterministic byte stream
//! from a server to a client, compared by digest.

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

/// Accepts one connection on `listen` and sends `bytes` bytes made from `seed`, or `text`
/// repeated to that length (another protocol's look, rather than noise).
pub fn serve(
    listen: SocketAddr,
    bytes: u32,
    seed: u64,
    text: Option<&str>,
) -> anyhow::Result<BlobReport> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let (mut s, _) = listener.accept().context("accepting")?;
    let data = match text {
        Some(t) => t.bytes().cycle().take(bytes as usize).collect(),
        None => workload::payload(seed, u64::MAX, bytes),
    };
    s.write_all(&data).context("sending")?;
    Ok(BlobReport {
        bytes: data.len() as u64,
        digest: workload::digest(&data),
    })
}

/// Connects to `server` (from `src_port` if given) and reads to the end.
pub fn fetch(
    server: SocketAddr,
    src_port: Option<u16>,
    timeout: Duration,
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
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(timeout)).context("read timeout")?;
    let mut data = Vec::new();
    s.read_to_end(&mut data).context("reading")?;
    Ok(BlobReport {
        bytes: data.len() as u64,
        digest: workload::digest(&data),
    })
}
