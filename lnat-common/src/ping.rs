//! LNet ping information (`struct lnet_ping_info`), where a node lists its own NIDs and features:
//! the payload of a discovery push, which the client's egress must make name it by its external
//! NID, and of a ping reply, whose DISCOVERY feature the client's ingress sets for a server that
//! has discovery off (docs/discovery.md, "Rules for the egress datapath").
//!
//! Every multi-byte field is in the sender's byte order (the magic tells which); offsets are from
//! the start of the payload (`include/uapi/linux/lnet/lnet-idl.h:301-323`).

use crate::nid::{LOLND, Nid};

/// `LNET_PROTO_PING_MAGIC`, "ping" (`lnet-idl.h:187`).
pub const MAGIC: u32 = 0x7069_6e67;
/// The portal pings and pushes go to (`LNET_RESERVED_PORTAL`, `lnet-types.h:28`).
pub const PORTAL: u32 = 0;
/// The match bits of pings and pushes (`LNET_PROTO_PING_MATCHBITS`, `lib-types.h:1455`).
pub const MATCH_BITS: u64 = 0x8000_0000_0000_0000;

/// `pi_features` bits (`lnet-idl.h:267-292`).
pub mod feat {
    /// Entries carry a status; a receiver requires it.
    pub const NI_STATUS: u32 = 0x02;
    /// The sender does not route (`LNET_PING_FEAT_RTE_DISABLED`).
    pub const RTE_DISABLED: u32 = 0x04;
    /// The sender is Multi-Rail capable; a push without it is dropped (`peer.c:2738`).
    pub const MULTI_RAIL: u32 = 0x08;
    /// The sender runs discovery; a server that sees it marks the peer Multi-Rail and then must
    /// push back to it, which it cannot through a NAT (docs/discovery.md, 3a).
    pub const DISCOVERY: u32 = 0x10;
    /// Large NIDs follow the entries, and entry 0's `ns_msg_size` is the total size.
    pub const LARGE_ADDR: u32 = 0x20;
    /// The primary NID is a large one, in the section after `pi_ni[]`.
    pub const PRIMARY_LARGE: u32 = 0x40;
}

/// `ns_status` of an NI that is up (`LNET_NI_STATUS_UP`, `lnet-idl.h:230`); entry 0's carries
/// the sender's sequence number instead (`LNET_PING_INFO_SEQNO`, `lnet-idl.h:314`).
pub const STATUS_UP: u32 = 0x15aa_c0de;

/// `0@lo` (`LNET_NID_LO_0`, `lnet-types.h:82`), entry 0 of every node's ping information
/// (`lnet_ping_info_validate`, `api-ni.c:1992`).
pub const LO: Nid = Nid::new(0, LOLND, 0);

/// Offset of `pi_magic`.
pub const MAGIC_AT: usize = 0;
/// Offset of `pi_features`.
pub const FEATURES: usize = 4;
/// Offset of `pi_pid`.
pub const PID: usize = 8;
/// Offset of `pi_nnis`.
pub const NNIS: usize = 12;
/// Length of the fixed part, before the entries (`LNET_PING_INFO_HDR_SIZE`, `lnet-idl.h:309`).
pub const HEAD_LEN: usize = 16;
/// Length of one `struct lnet_ni_status` entry (`lnet-idl.h:234`): `ns_nid` (u64), `ns_status`,
/// `ns_msg_size`.
pub const NI_LEN: usize = 16;
/// Offset of `ns_status` in an entry (`ns_nid` is at 0); `_AT` as [`feat::NI_STATUS`] has the
/// name.
pub const NI_STATUS_AT: usize = 8;
/// Offset of `ns_msg_size` in an entry: read for entry 0 only (`lnet-idl.h:320-323`), so it can
/// carry the checksum compensation of a change before it.
pub const NI_MSG_SIZE: usize = 12;
/// Most entries lnat follows in one push or ping reply: a node with more NIs than that is left
/// alone.
pub const MAX_NIS: u32 = 32;
