//! The JSON reports `lnet-peer` prints, one line per run.

use serde::{Deserialize, Serialize};

/// One PUT, as sent or received.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Put {
    /// Its index (match bits).
    pub index: u64,
    /// Payload bytes.
    pub size: u32,
    /// SHA-256 of the payload.
    pub digest: String,
}

/// What the client saw.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ClientReport {
    /// Always `client`: tells the two reports apart in a log.
    #[serde(default)]
    pub role: String,
    /// `ok`, `rejected`, `refused`, `timeout` or `error`.
    pub status: String,
    /// Why, when not ok: the kernel-style message.
    pub reason: String,
    /// The dst_nid of the server's last HELLO (what the server calls us).
    pub server_hello_dst_nid: String,
    /// Local port of the last connection.
    pub local_port: u16,
    /// Connections made.
    pub connections: u32,
    /// Connections given up on (rejected, reset).
    pub failures: u32,
    /// Distinct PUTs received, by index.
    pub received: Vec<Put>,
    /// With several clients at once, how many finished ok.
    #[serde(default)]
    pub sessions_ok: u32,
    /// When the first PUT was complete (CLOCK_MONOTONIC ns, 0: none): the rate is measured from
    /// there, without the connection set-up.
    #[serde(default)]
    pub first_put_ns: u64,
    /// When the last PUT was complete (CLOCK_MONOTONIC ns).
    #[serde(default)]
    pub last_put_ns: u64,
    /// PUTs completed after each connection's first, between the two times.
    #[serde(default)]
    pub timed_puts: u64,
    /// Their payload bytes.
    #[serde(default)]
    pub timed_bytes: u64,
    /// Every destination NID of a message that was not the client's own, once each: the
    /// external NID passed unrewritten, or anything else (half a rewrite) never should.
    #[serde(default)]
    pub bad_dest_nids: Vec<String>,
}

/// One connection the server accepted.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ServedConn {
    /// The peer's address and port, as the server sees it.
    pub peer: String,
    /// The NID the server gave the peer.
    pub peer_nid: String,
    /// The pid the server gave the peer.
    pub peer_pid: u32,
    /// socklnd version.
    pub proto: u8,
    /// Why the connection was refused, if it was.
    pub refused: Option<String>,
    /// The dst_nid of the peer's HELLO: what the peer calls the server.
    #[serde(default)]
    pub hello_dst_nid: String,
    /// Why the server dropped the connection over a message it received, if it did.
    #[serde(default)]
    pub rejected: Option<String>,
    /// PUTs sent.
    pub sent: Vec<Put>,
}

/// What the server did.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ServerReport {
    /// Always `server`: tells the two reports apart in a log.
    #[serde(default)]
    pub role: String,
    /// Every accepted connection.
    pub connections: Vec<ServedConn>,
}
