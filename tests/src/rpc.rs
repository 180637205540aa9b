//! What the "rpc" mode of the emulated peers exchanges, as Lustre's RPCs use LNet: the client
//! sends request PUTs, the server answers each with a reply PUT (a PUT of its own, not an ACK)
//! and sends callback PUTs of its own. Every one of the server's is a PUT to a peer, so
//! discovery (`crate::discovery`) runs before it; pings and pushes use portal 0.

use crate::{report::Put, workload};

/// The portal requests go to (Lustre's requests use portals other than 0; the number only
/// tells the three kinds apart).
pub const REQUEST_PORTAL: u32 = 12;
/// The portal replies go to.
pub const REPLY_PORTAL: u32 = 10;
/// The portal the server's callbacks go to.
pub const CALLBACK_PORTAL: u32 = 17;
/// Payload bytes of a request.
pub const REQUEST_SIZE: u32 = 64;
/// The buffer a ping offers for the REPLY (`LNET_PING_INFO_MIN_SIZE`: a header and 16
/// entries, lnet-idl.h, as `lnet_peer_send_ping` asks for at first, peer.c:4004).
pub const PING_SINK: u32 = 16 + 16 * 16;

/// The payload of PUT `index` on `portal` (each kind its own seed, so a reply is never taken
/// for a callback), and its record.
pub fn payload(seed: u64, portal: u32, index: u64, size: u32) -> (Vec<u8>, Put) {
    let p = workload::payload(seed ^ (u64::from(portal) << 32), index, size);
    let put = Put {
        index,
        size,
        digest: workload::digest(&p),
    };
    (p, put)
}
