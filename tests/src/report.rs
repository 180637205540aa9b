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
    /// In rpc mode, the client's discovery and what it received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcClient>,
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
    /// In rpc mode, what the server did on the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcServed>,
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

/// One ping or push the server dialled a new connection for, and how the dial ended.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Dial {
    /// `ping` or `push`.
    pub purpose: String,
    /// The NID pinged or pushed to (as 12345-NID).
    pub nid: String,
    /// The address dialled (the NID's address, port 988).
    pub addr: String,
    /// The negative errno the dial ended with (`-111` refused, `-110` timed out), 0 if it
    /// connected.
    pub errno: i32,
    /// The error as the OS says it.
    pub error: String,
}

/// A push the server received.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PushSeen {
    /// The primary NID its ping data carried (`pi_ni[1]`), empty if none.
    pub primary_nid: String,
    /// Every NID its ping data listed after 0@lo.
    pub nids: Vec<String>,
    /// Its `pi_features`.
    pub features: u32,
    /// What the push event made of it (`Accepted`, `Invalid(errno)`, ...).
    pub outcome: String,
    /// How the discovery it started ended (negative errno, 0 for success).
    pub discovery: i32,
}

/// A PUT the server sent on its own (a reply or a callback), or failed to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RpcSent {
    /// Its match bits.
    pub index: u64,
    /// Payload bytes.
    pub size: u32,
    /// SHA-256 of the payload.
    pub digest: String,
    /// The error it was finalized with (negative errno, the discovery's), 0 if sent.
    pub errno: i32,
}

/// What the server did on one connection in rpc mode.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct RpcServed {
    /// Discovery on (`lnet_peer_discovery_disabled=0`) at the server.
    pub discovery: bool,
    /// Request PUTs received, by match bits.
    pub requests: Vec<u64>,
    /// Pings (GETs on portal 0) answered with a REPLY on this connection.
    pub pings_answered: u32,
    /// Pushes received.
    pub pushes: Vec<PushSeen>,
    /// New connections dialled for discovery, in order.
    pub dials: Vec<Dial>,
    /// Pings and pushes sent on this connection instead (`ping 12345-NID`, `push 12345-NID`):
    /// the peer's own connection, when it connected from a reserved port.
    pub on_connection: Vec<String>,
    /// Replies to the requests.
    pub replies: Vec<RpcSent>,
    /// Callbacks of the server's own.
    pub callbacks: Vec<RpcSent>,
    /// The server's peers when the connection ended.
    pub peers: Vec<crate::discovery::PeerSummary>,
}

/// What the client's discovery of the server did in rpc mode.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct RpcClient {
    /// Discovery on at the client.
    pub discovery: bool,
    /// Pings sent to the server.
    pub pings: u32,
    /// The `pi_features` of each ping REPLY received.
    pub ping_reply_features: Vec<u32>,
    /// Pushes sent.
    pub pushes: u32,
    /// Pushes acknowledged.
    pub pushes_acked: u32,
    /// The NIDs the client's own ping data listed (after 0@lo), as pushed or given in REPLY.
    pub ping_data_nids: Vec<String>,
    /// How discovery of the server ended (negative errno), 0 if it succeeded.
    pub discovery_error: i32,
    /// Requests sent.
    pub requests_sent: u64,
    /// Replies received, by digest.
    pub replies: Vec<Put>,
    /// Callbacks received, by digest.
    pub callbacks: Vec<Put>,
    /// The client's peer of the server at the end.
    pub server_peer: Option<crate::discovery::PeerSummary>,
}
