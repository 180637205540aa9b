//! `struct lnet_ping_info`: what a ping REPLY and a discovery push carry (a node's NIDs), and
//! the check a receiver makes of it. Layout from lustre-release
//! include/uapi/linux/lnet/lnet-idl.h (commit c881f8eb): `struct lnet_ping_info` (line 301),
//! `struct lnet_ni_status` (line 234), the `LNET_PING_FEAT_*` bits (lines 267-275). Nid4
//! entries only (no `LNET_PING_FEAT_LARGE_ADDR`), in the sender's byte order.

use lnat_common::{nid::Nid, wire::Endian};

use lnat_common::ping::{
    FEATURES, HEAD_LEN, MAGIC_AT, NI_LEN, NI_MSG_SIZE, NI_STATUS_AT, NNIS, PID,
};
/// The layout's constants are the datapath's (`lnat_common::ping`), one definition for both;
/// the captured reply in the tests below checks them against a real kernel's bytes.
pub use lnat_common::ping::{LO, MAGIC, MATCH_BITS, PORTAL, STATUS_UP, feat};

/// `lnet_interfaces_max`'s default (`LNET_INTERFACES_MAX_DEFAULT`, lnet-types.h:226,
/// api-ni.c:122), the most entries `lnet_ping_info_validate` accepts.
const MAX_ENTRIES: u32 = 4096;
/// `EPROTO`, `ERANGE`: the errors of `lnet_ping_info_validate`.
const EPROTO: i32 = 71;
const ERANGE: i32 = 34;

/// One `struct lnet_ni_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NiStatus {
    /// `ns_nid`, a nid4.
    pub nid: u64,
    /// `ns_status` (for entry 0, the sender's ping-target sequence number).
    pub status: u32,
    /// `ns_msg_size` (0 without large NIDs).
    pub msg_size: u32,
}

/// A decoded `struct lnet_ping_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingInfo {
    /// `pi_magic`, in the receiver's order after any swab.
    pub magic: u32,
    /// `pi_features`.
    pub features: u32,
    /// `pi_pid`.
    pub pid: u32,
    /// `pi_ni[]`, entry 0 first (0@lo when valid).
    pub nis: Vec<NiStatus>,
}

impl PingInfo {
    /// The ping data a node publishes (`lnet_ping_target_create`, api-ni.c:1909, then
    /// `lnet_ping_target_update`, api-ni.c:2244-2246): NI status and Multi-Rail always,
    /// routing disabled (the emulated nodes do not route), discovery when enabled; entry 0 is
    /// 0@lo with the sequence number as its status (`LNET_PING_INFO_SEQNO`), then each NID up.
    pub fn of_node(pid: u32, nids: &[Nid], discovery: bool, seqno: u32) -> PingInfo {
        let mut features = feat::NI_STATUS | feat::MULTI_RAIL | feat::RTE_DISABLED;
        if discovery {
            features |= feat::DISCOVERY;
        }
        let mut nis = vec![NiStatus {
            nid: LO.0,
            status: seqno,
            msg_size: 0,
        }];
        nis.extend(nids.iter().map(|n| NiStatus {
            nid: n.0,
            status: STATUS_UP,
            msg_size: 0,
        }));
        PingInfo {
            magic: MAGIC,
            features,
            pid,
            nis,
        }
    }

    /// Encodes in `endian` (a node writes its ping data in its own byte order).
    pub fn encode(&self, endian: Endian) -> Vec<u8> {
        let mut b = vec![0u8; HEAD_LEN + NI_LEN * self.nis.len()];
        endian.put_u32(&mut b, MAGIC_AT, self.magic);
        endian.put_u32(&mut b, FEATURES, self.features);
        endian.put_u32(&mut b, PID, self.pid);
        endian.put_u32(&mut b, NNIS, self.nis.len() as u32);
        for (i, ni) in self.nis.iter().enumerate() {
            let at = HEAD_LEN + NI_LEN * i;
            endian.put_u64(&mut b, at, ni.nid);
            endian.put_u32(&mut b, at + NI_STATUS_AT, ni.status);
            endian.put_u32(&mut b, at + NI_MSG_SIZE, ni.msg_size);
        }
        b
    }

    /// Decodes, swabbing when the magic is byte-swapped (`lnet_discovery_event_reply`,
    /// peer.c:3067: `lnet_swap_pinginfo`). Entries past the payload are not read: `pi_nnis`
    /// is kept in `nis.len()` only as far as the bytes go, and [`PingInfo::validate`] then
    /// sees the count the sender claimed through `claimed`.
    pub fn decode(b: &[u8]) -> Option<(PingInfo, u32)> {
        if b.len() < HEAD_LEN {
            return None;
        }
        let endian = if Endian::Little.u32(b, MAGIC_AT) == MAGIC.swap_bytes() {
            Endian::Big
        } else {
            Endian::Little
        };
        let claimed = endian.u32(b, NNIS);
        let fit = ((b.len() - HEAD_LEN) / NI_LEN).min(claimed as usize);
        let nis = (0..fit)
            .map(|i| {
                let at = HEAD_LEN + NI_LEN * i;
                NiStatus {
                    nid: endian.u64(b, at),
                    status: endian.u32(b, at + NI_STATUS_AT),
                    msg_size: endian.u32(b, at + NI_MSG_SIZE),
                }
            })
            .collect();
        let info = PingInfo {
            magic: endian.u32(b, MAGIC_AT),
            features: endian.u32(b, FEATURES),
            pid: endian.u32(b, PID),
            nis,
        };
        Some((info, claimed))
    }

    /// `lnet_ping_info_validate` (api-ni.c:1981): the magic, the NI-status feature, 1 to
    /// `lnet_interfaces_max` entries, and 0@lo first. `claimed` is the wire's `pi_nnis`.
    /// Returns the negative errno the kernel returns.
    pub fn validate(&self, claimed: u32) -> Result<(), i32> {
        if self.magic != MAGIC {
            return Err(-EPROTO);
        }
        if self.features & feat::NI_STATUS == 0 {
            return Err(-EPROTO);
        }
        if !(1..=MAX_ENTRIES).contains(&claimed) {
            return Err(-ERANGE);
        }
        if self.nis.first().map(|n| n.nid) != Some(LO.0) {
            return Err(-EPROTO);
        }
        Ok(())
    }

    /// `find_primary` (peer.c:3010), nid4 case: `pi_ni[1]` is the primary NID; none with
    /// fewer than two entries.
    pub fn primary(&self) -> Option<Nid> {
        self.nis.get(1).map(|n| Nid(n.nid))
    }

    /// The NIDs listed after 0@lo (what `lnet_peer_merge_data`, peer.c:3436, walks).
    pub fn nids(&self) -> Vec<Nid> {
        self.nis.iter().skip(1).map(|n| Nid(n.nid)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ping REPLY payload (48 bytes) of shared/captures/nat_acceptall_client.pcap, from the
    /// real Lustre 2.17.57 server 10.88.0.2@tcp: found at byte 1352 of the capture file by its
    /// magic (tshark is not installed here; `python3` searching for `67 6e 69 70`).
    const CAPTURED_REPLY: [u8; 48] = [
        0x67, 0x6e, 0x69, 0x70, 0x1e, 0x00, 0x00, 0x00, 0x39, 0x30, 0x00, 0x00, 0x02, 0x00, 0x00,
        0x00, // magic, features, pid, nnis
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, // 0@lo, seqno 3
        0x02, 0x00, 0x58, 0x0a, 0x00, 0x00, 0x02, 0x00, 0xde, 0xc0, 0xaa, 0x15, 0x00, 0x00, 0x00,
        0x00, // 10.88.0.2@tcp, up
    ];

    fn nid(s: &str) -> Nid {
        s.parse().expect("nid")
    }

    #[test]
    fn the_captured_ping_reply_decodes_validates_and_reencodes() {
        let (info, claimed) = PingInfo::decode(&CAPTURED_REPLY).expect("decodes");
        assert_eq!(claimed, 2);
        assert_eq!(info.validate(claimed), Ok(()));
        assert_eq!(
            info.features,
            feat::NI_STATUS | feat::RTE_DISABLED | feat::MULTI_RAIL | feat::DISCOVERY
        );
        assert_eq!(info.pid, lnat_common::wire::PID_LUSTRE);
        // Entry 0's status is the sender's sequence number (`LNET_PING_INFO_SEQNO`).
        assert_eq!(info.nis[0].status, 3);
        assert_eq!(info.primary(), Some(nid("10.88.0.2@tcp")));
        assert_eq!(info.nis[1].status, STATUS_UP);
        // The same bytes as the kernel's, from the node's own description.
        let ours = PingInfo::of_node(
            lnat_common::wire::PID_LUSTRE,
            &[nid("10.88.0.2@tcp")],
            true,
            3,
        );
        assert_eq!(ours, info);
        assert_eq!(ours.encode(Endian::Little), CAPTURED_REPLY);
    }

    #[test]
    fn a_big_endian_ping_info_is_swabbed() {
        let info = PingInfo::of_node(12345, &[nid("198.51.100.2@tcp")], false, 7);
        let (back, claimed) = PingInfo::decode(&info.encode(Endian::Big)).expect("decodes");
        assert_eq!((back, claimed), (info, 2));
    }

    #[test]
    fn validation_follows_lnet_ping_info_validate() {
        let good = PingInfo::of_node(12345, &[nid("198.51.100.2@tcp")], true, 1);
        assert_eq!(good.validate(2), Ok(()));
        let mut bad = good.clone();
        bad.magic = 0x1234;
        assert_eq!(bad.validate(2), Err(-EPROTO));
        let mut bad = good.clone();
        bad.features &= !feat::NI_STATUS;
        assert_eq!(bad.validate(2), Err(-EPROTO));
        assert_eq!(good.validate(0), Err(-ERANGE));
        assert_eq!(good.validate(MAX_ENTRIES + 1), Err(-ERANGE));
        let mut bad = good.clone();
        bad.nis[0].nid = nid("198.51.100.2@tcp").0;
        assert_eq!(bad.validate(2), Err(-EPROTO));
        // Only 0@lo: valid, but no primary NID.
        let lo = PingInfo::of_node(12345, &[], true, 1);
        assert_eq!((lo.validate(1), lo.primary()), (Ok(()), None));
    }
}
