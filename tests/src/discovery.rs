//! LNet peer discovery (LNet 2.11 and later), as the kernel runs it before sending to a peer:
//! each node's table of peers (primary NID, NIDs, discovery state) and the discovery thread's
//! steps for one peer, from lustre-release commit c881f8ebcbd130cf6c2b9e8862582fc5d2da5289
//! (lnet/lnet/peer.c, lnet/lnet/lib-move.c, include/linux/lnet/lib-lnet.h). Both emulated ends
//! use it; what differs is the [`Transport`] by which a ping or push reaches the peer (the
//! client's goes over its connection, the server's needs a new one, which it dials).
//!
//! The kernel's discovery thread is asynchronous: a message waits on the peer's queue while a
//! discovery runs, and every message queued meanwhile shares its outcome. The emulator runs
//! one discovery at a time, to the end, before the message that started it, so each message
//! sent to a peer that is not up to date starts a discovery of its own.

use lnat_common::nid::Nid;
use serde::{Deserialize, Serialize};

use crate::ping::{self, PingInfo};

/// The `LNET_PEER_*` state bits (include/linux/lnet/lib-types.h) the emulated rules read.
mod state {
    /// Multi-Rail peer (set from ping data).
    pub const MULTI_RAIL: u32 = 1 << 0;
    /// The peer's NIDs are known.
    pub const NIDS_UPTODATE: u32 = 1 << 1;
    /// Ping data waits to be processed.
    pub const DATA_PRESENT: u32 = 1 << 2;
    /// The peer has been discovered.
    pub const DISCOVERED: u32 = 1 << 3;
    /// The last discovery failed: do it again.
    pub const REDISCOVER: u32 = 1 << 4;
    /// A ping failed.
    pub const PING_FAILED: u32 = 1 << 5;
    /// A push failed.
    pub const PUSH_FAILED: u32 = 1 << 6;
    /// Ping even if the NIDs are known.
    pub const FORCE_PING: u32 = 1 << 7;
    /// The peer says it runs no discovery.
    pub const NO_DISCOVERY: u32 = 1 << 8;
}

/// `-ETIMEDOUT`: what a discovery that never settles ends with (the discovery thread times
/// out a peer left on its working queue, peer.c `lnet_peer_discovery` and
/// `lnet_peer_discovery_timeout`).
pub const ETIMEDOUT: i32 = -110;
/// `-EPROTO`: ping data too short to hold a `struct lnet_ping_info` header.
const EPROTO: i32 = -71;
/// Steps of one discovery before it counts as timed out (the kernel's is a time, not a count;
/// each step here is a ping or push that completed).
const MAX_STEPS: u32 = 16;

/// How a node's pings and pushes reach a peer.
pub trait Transport {
    /// A ping: a GET to 12345-`nid` on portal 0 with the ping match bits
    /// (`lnet_peer_send_ping`, peer.c:3988, via `lnet_send_ping`). The REPLY's payload, or the
    /// negative errno the send failed with (the send event's status,
    /// `lnet_discovery_event_send`, peer.c:3219).
    fn ping(&mut self, nid: Nid) -> Result<Vec<u8>, i32>;
    /// A push of the node's own ping data: a PUT to 12345-`nid` on portal 0 with the ping match
    /// bits, ACK requested (`lnet_peer_send_push`, peer.c:4092). Ok once acknowledged.
    fn push(&mut self, nid: Nid) -> Result<(), i32>;
}

/// One peer as LNet keeps it (`struct lnet_peer`).
#[derive(Clone, Debug)]
struct Peer {
    primary: Nid,
    nids: Vec<Nid>,
    state: u32,
    /// `lp_node_seqno`: our ping-target sequence number the peer last acknowledged a push of.
    node_seqno: u32,
    /// `lp_dc_error`: how the last discovery failed.
    dc_error: i32,
    ping_error: i32,
    push_error: i32,
    data: Option<PingInfo>,
}

/// A peer as the reports show it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSummary {
    /// Its primary NID.
    pub primary_nid: String,
    /// Every NID it has.
    pub nids: Vec<String>,
    /// `LNET_PEER_DISCOVERED`.
    pub discovered: bool,
    /// `LNET_PEER_MULTI_RAIL`.
    pub multi_rail: bool,
    /// How its last discovery failed (negative errno), 0 if it did not.
    pub dc_error: i32,
}

/// What a received push did (`lnet_peer_push_event`, peer.c:2679).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// From a NID that belongs to no peer: ignored.
    UnknownPeer,
    /// Failed `lnet_ping_info_validate` (its errno): the peer is to be pinged instead.
    Invalid(i32),
    /// Without `LNET_PING_FEAT_MULTI_RAIL`: dropped.
    NotMultiRail,
    /// Taken as the peer's data, and discovery run on it.
    Accepted,
}

/// A node's peers and discovery settings.
#[derive(Debug)]
pub struct Node {
    /// `!lnet_peer_discovery_disabled`.
    discovery: bool,
    /// `the_lnet.ln_ping_target_seqno`: 1 once the ping target is set up
    /// (`lnet_ping_target_install_locked`, api-ni.c, `atomic_inc_return`).
    ping_seqno: u32,
    peers: Vec<Peer>,
}

impl Node {
    /// A node with discovery on or off (`lnet_peer_discovery_disabled`, api-ni.c:138).
    pub fn new(discovery: bool) -> Node {
        Node {
            discovery,
            ping_seqno: 1,
            peers: Vec::new(),
        }
    }

    /// The ping data this node publishes for `nids`.
    pub fn ping_info(&self, nids: &[Nid]) -> PingInfo {
        PingInfo::of_node(
            lnat_common::wire::PID_LUSTRE,
            nids,
            self.discovery,
            self.ping_seqno,
        )
    }

    /// The peer `nid` belongs to, if any (`lnet_find_peer`).
    fn find(&self, nid: Nid) -> Option<usize> {
        self.peers.iter().position(|p| p.nids.contains(&nid))
    }

    /// The peer of `nid`, created by traffic if there is none (`lnet_peerni_by_nid_locked`,
    /// peer.c, then `lnet_peer_ni_traffic_add`, peer.c:2131: a new peer whose primary NID is
    /// `nid`, not discovered). Every message received does this for its source NID
    /// (`lnet_parse`, lib-move.c:4795) and every message sent for its destination
    /// (`lnet_select_pathway`, lib-move.c:2926).
    pub fn peer_of(&mut self, nid: Nid) -> usize {
        if let Some(i) = self.find(nid) {
            return i;
        }
        self.peers.push(Peer {
            primary: nid,
            nids: vec![nid],
            state: 0,
            node_seqno: 0,
            dc_error: 0,
            ping_error: 0,
            push_error: 0,
            data: None,
        });
        self.peers.len() - 1
    }

    /// Every peer, for the report.
    pub fn summary(&self) -> Vec<PeerSummary> {
        self.peers
            .iter()
            .map(|p| PeerSummary {
                primary_nid: p.primary.to_string(),
                nids: p.nids.iter().map(Nid::to_string).collect(),
                discovered: p.state & state::DISCOVERED != 0,
                multi_rail: p.state & state::MULTI_RAIL != 0,
                dc_error: p.dc_error,
            })
            .collect()
    }

    /// `lnet_is_discovery_disabled_locked` (peer.c:1350): off here, or the peer is not
    /// Multi-Rail, or it runs no discovery.
    fn discovery_disabled(&self, i: usize) -> bool {
        let s = self.peers[i].state;
        !self.discovery || s & state::MULTI_RAIL == 0 || s & state::NO_DISCOVERY != 0
    }

    /// `lnet_peer_needs_push` (lib-lnet.h:1059): a Multi-Rail peer that runs discovery, with
    /// discovery on here, which has not acknowledged our current ping data.
    fn needs_push(&self, i: usize) -> bool {
        let p = &self.peers[i];
        p.state & state::MULTI_RAIL != 0
            && p.state & state::NO_DISCOVERY == 0
            && self.discovery
            && p.node_seqno < self.ping_seqno
    }

    /// `lnet_peer_needs_ping` (lib-lnet.h:1080): forced, or the NIDs are not known.
    fn needs_ping(&self, i: usize) -> bool {
        let s = self.peers[i].state;
        s & state::FORCE_PING != 0 || s & state::NIDS_UPTODATE == 0
    }

    /// `lnet_peer_is_uptodate_locked` (peer.c:2545): not to be rediscovered, nothing to push,
    /// discovered with its NIDs known.
    fn is_uptodate(&self, i: usize) -> bool {
        let s = self.peers[i].state;
        if s & (state::FORCE_PING | state::REDISCOVER) != 0 || self.needs_push(i) {
            return false;
        }
        s & state::DISCOVERED != 0 && s & state::NIDS_UPTODATE != 0
    }

    /// Before a message to `nid` goes out: `lnet_initiate_peer_discovery` (lib-move.c:1970).
    /// A message on portal 0 (ping, push) or a response (ACK, REPLY) never starts discovery
    /// (`lnet_msg_discovery`, lib-move.c:1653), whatever `lnet_peer_discovery_disabled` says;
    /// any other PUT or GET to a peer not up to date waits for a discovery
    /// (`lnet_discover_peer_locked`, peer.c:2892, which first clears the last one's error)
    /// and fails with the discovery's error (`lnet_peer_discovery_complete`, peer.c:2622:
    /// `lnet_finalize(msg, dc_error)`).
    pub fn before_send(
        &mut self,
        nid: Nid,
        starts_discovery: bool,
        t: &mut impl Transport,
    ) -> Result<(), i32> {
        let i = self.peer_of(nid);
        if !starts_discovery || self.is_uptodate(i) {
            return Ok(());
        }
        self.peers[i].dc_error = 0;
        self.discover(i, t)
    }

    /// A push received from `source` (the connection's NID for a userspace peer, which
    /// socklnd substitutes, socklnd_cb.c:1204): `lnet_peer_push_event` (peer.c:2679), then
    /// the discovery the push queues the peer for.
    pub fn push_received(
        &mut self,
        source: Nid,
        payload: &[u8],
        t: &mut impl Transport,
    ) -> (PushOutcome, Result<(), i32>) {
        let Some(i) = self.find(source) else {
            return (PushOutcome::UnknownPeer, Ok(()));
        };
        let checked = match PingInfo::decode(payload) {
            Some((info, claimed)) => info.validate(claimed).map(|()| info),
            None => Err(EPROTO),
        };
        let outcome = match checked {
            Err(e) => {
                let p = &mut self.peers[i];
                p.state &= !state::NIDS_UPTODATE;
                p.state |= state::FORCE_PING;
                PushOutcome::Invalid(e)
            }
            Ok(info) if info.features & ping::feat::MULTI_RAIL == 0 => PushOutcome::NotMultiRail,
            Ok(info) => {
                self.take_peer_features(i, &info);
                let p = &mut self.peers[i];
                p.state &= !state::NIDS_UPTODATE;
                p.state |= state::DATA_PRESENT;
                p.data = Some(info);
                PushOutcome::Accepted
            }
        };
        if outcome == PushOutcome::NotMultiRail || self.is_uptodate(i) {
            return (outcome, Ok(()));
        }
        let result = self.discover(i, t);
        (outcome, result)
    }

    /// What ping data says of the peer's discovery and Multi-Rail support
    /// (`lnet_discovery_event_reply`, peer.c:3086-3155; the same in `lnet_peer_push_event`,
    /// peer.c:2748-2795): no discovery there, or here, marks it NO_DISCOVERY; it becomes
    /// Multi-Rail only with discovery on at both ends.
    fn take_peer_features(&mut self, i: usize, info: &PingInfo) {
        let here = self.discovery;
        let p = &mut self.peers[i];
        if info.features & ping::feat::DISCOVERY == 0 || !here {
            p.state |= state::NO_DISCOVERY;
        } else {
            p.state &= !state::NO_DISCOVERY;
        }
        if info.features & ping::feat::MULTI_RAIL != 0 {
            if here && p.state & state::NO_DISCOVERY == 0 {
                p.state |= state::MULTI_RAIL;
            }
        } else {
            p.state &= !state::MULTI_RAIL;
        }
    }

    /// The discovery thread on one peer until it is discovered or fails (`lnet_peer_discovery`,
    /// peer.c:4343-4371: data present, ping failed, push failed, needs ping, needs push, else
    /// discovered), ending as `lnet_peer_discovery_complete` (peer.c:2622) does: on an error
    /// the peer keeps it and is to be rediscovered.
    fn discover(&mut self, i: usize, t: &mut impl Transport) -> Result<(), i32> {
        let mut steps = 0;
        let rc = loop {
            let s = self.peers[i].state;
            let rc = if s & state::DATA_PRESENT != 0 {
                self.data_present(i)
            } else if s & state::PING_FAILED != 0 {
                // lnet_peer_ping_failed (peer.c:3958): retry with FORCE_PING, or end with
                // the ping's error.
                let p = &mut self.peers[i];
                p.state &= !state::PING_FAILED;
                p.state |= state::FORCE_PING;
                std::mem::take(&mut p.ping_error)
            } else if s & state::PUSH_FAILED != 0 {
                // lnet_peer_push_failed (peer.c:4046): end with the push's error.
                let p = &mut self.peers[i];
                p.state &= !state::PUSH_FAILED;
                std::mem::take(&mut p.push_error)
            } else if self.needs_ping(i) {
                steps += 1;
                self.send_ping(i, t);
                0
            } else if self.needs_push(i) {
                steps += 1;
                self.send_push(i, t);
                0
            } else {
                // lnet_peer_discovered (peer.c:4073).
                let p = &mut self.peers[i];
                p.state |= state::DISCOVERED;
                p.state &= !state::REDISCOVER;
                break 0;
            };
            if rc != 0 {
                break rc;
            }
            if steps > MAX_STEPS {
                break ETIMEDOUT;
            }
        };
        if rc == 0 {
            self.peers[i].dc_error = 0;
            return Ok(());
        }
        let p = &mut self.peers[i];
        p.dc_error = rc;
        p.state |= state::REDISCOVER;
        Err(rc)
    }

    /// `lnet_peer_send_ping` (peer.c:3988) to the primary NID, and its outcome as the event
    /// handlers take it: a failed send (`lnet_discovery_event_send`, peer.c:3219) or an
    /// invalid reply (`lnet_discovery_event_reply`, peer.c:3040) sets PING_FAILED; a good
    /// reply sets the peer's features and DATA_PRESENT.
    fn send_ping(&mut self, i: usize, t: &mut impl Transport) {
        self.peers[i].state &= !state::FORCE_PING;
        let primary = self.peers[i].primary;
        let reply = t.ping(primary);
        let info = match reply {
            Err(e) => {
                let p = &mut self.peers[i];
                p.state |= state::PING_FAILED;
                p.ping_error = e;
                return;
            }
            Ok(b) => match PingInfo::decode(&b) {
                Some((info, claimed)) if info.validate(claimed).is_ok() => info,
                _ => {
                    let p = &mut self.peers[i];
                    p.state |= state::PING_FAILED;
                    p.ping_error = 0;
                    return;
                }
            },
        };
        self.take_peer_features(i, &info);
        let p = &mut self.peers[i];
        p.state |= state::DATA_PRESENT;
        p.data = Some(info);
    }

    /// `lnet_peer_send_push` (peer.c:4092) to the primary NID (no ping reply set
    /// `lp_disc_dst_nid`), and its outcome: an ACK records our sequence number as pushed
    /// (`lnet_discovery_event_ack`, peer.c:2992), a failed send sets PUSH_FAILED
    /// (`lnet_discovery_event_send`, peer.c:3219).
    fn send_push(&mut self, i: usize, t: &mut impl Transport) {
        let primary = self.peers[i].primary;
        match t.push(primary) {
            Ok(()) => self.peers[i].node_seqno = self.ping_seqno,
            Err(e) => {
                let p = &mut self.peers[i];
                p.state |= state::PUSH_FAILED;
                p.push_error = e;
            }
        }
    }

    /// `lnet_peer_data_present` (peer.c:3798): the NIDs are now known; the data's primary NID
    /// (`find_primary`, peer.c:3010) is the peer's own, or listed with discovery off for the
    /// peer, and the data is merged; else, if no other peer has that NID, it becomes this
    /// peer's primary NID (`lnet_peer_set_primary_nid`, peer.c:2086: a peer created by traffic
    /// has no locked primary) and the data is merged; else the data goes to that other peer
    /// (`lnet_peer_set_primary_data`, peer.c:3643). Returns 0 (`LNET_REDISCOVER_PEER`: look
    /// at the peer again).
    fn data_present(&mut self, i: usize) -> i32 {
        let p = &mut self.peers[i];
        let Some(info) = p.data.take() else { return 0 };
        p.state &= !state::DATA_PRESENT;
        p.state |= state::NIDS_UPTODATE;
        let Some(primary) = info.primary() else {
            return 0;
        };
        let listed = info.nids().contains(&self.peers[i].primary);
        if self.peers[i].primary == primary || (listed && self.discovery_disabled(i)) {
            self.merge_data(i, &info);
            return 0;
        }
        match self.find(primary) {
            Some(other) if other != i => {
                let o = &mut self.peers[other];
                o.state |= state::DATA_PRESENT;
                o.data = Some(info);
            }
            _ => {
                let p = &mut self.peers[i];
                p.primary = primary;
                if !p.nids.contains(&primary) {
                    p.nids.push(primary);
                }
                self.merge_data(i, &info);
            }
        }
        0
    }

    /// `lnet_peer_merge_data` (peer.c:3436): with discovery disabled for the peer, nothing
    /// changes; otherwise the NIDs of the data are added and the peer's other NIDs deleted
    /// (`lnet_peer_del_nid`, peer.c:513, keeps the primary NID).
    fn merge_data(&mut self, i: usize, info: &PingInfo) {
        if self.discovery_disabled(i) {
            return;
        }
        let listed = info.nids();
        let p = &mut self.peers[i];
        for n in &listed {
            if !p.nids.contains(n) {
                p.nids.push(*n);
            }
        }
        let primary = p.primary;
        p.nids.retain(|n| listed.contains(n) || *n == primary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nid(s: &str) -> Nid {
        s.parse().expect("nid")
    }

    /// A transport that answers from a script and records what was sent.
    #[derive(Default)]
    struct Script {
        ping: Option<Result<Vec<u8>, i32>>,
        push: Option<Result<(), i32>>,
        sent: Vec<(&'static str, Nid)>,
    }

    impl Transport for Script {
        fn ping(&mut self, nid: Nid) -> Result<Vec<u8>, i32> {
            self.sent.push(("ping", nid));
            self.ping.clone().unwrap_or(Err(-111))
        }
        fn push(&mut self, nid: Nid) -> Result<(), i32> {
            self.sent.push(("push", nid));
            self.push.unwrap_or(Err(-111))
        }
    }

    const NAT: &str = "203.0.113.1@tcp";
    const CLIENT: &str = "198.51.100.2@tcp";
    const SERVER: &str = "203.0.113.10@tcp";

    /// With discovery off, a PUT to a new peer still pings it first, and fails with the
    /// ping's error (LU-12424); responses and portal-0 traffic go out at once.
    #[test]
    fn a_put_to_a_new_peer_pings_it_even_with_discovery_off() {
        for on in [false, true] {
            let mut node = Node::new(on);
            let mut t = Script::default();
            assert_eq!(node.before_send(nid(NAT), false, &mut t), Ok(()));
            assert!(t.sent.is_empty());
            assert_eq!(node.before_send(nid(NAT), true, &mut t), Err(-111));
            assert_eq!(t.sent, vec![("ping", nid(NAT))]);
            assert_eq!(node.summary()[0].dc_error, -111);
            // The next message tries again.
            assert_eq!(node.before_send(nid(NAT), true, &mut t), Err(-111));
            assert_eq!(t.sent.len(), 2);
        }
    }

    /// The client discovers the server over its connection: ping, then (discovery on at both
    /// ends, so Multi-Rail) push; with discovery off at either end, no push.
    #[test]
    fn the_client_pushes_only_when_both_ends_run_discovery() {
        for (client_on, server_on, pushes) in [
            (true, true, 1),
            (true, false, 0),
            (false, true, 0),
            (false, false, 0),
        ] {
            let server = Node::new(server_on).ping_info(&[nid(SERVER)]);
            let mut node = Node::new(client_on);
            let mut t = Script {
                ping: Some(Ok(server.encode(lnat_common::wire::Endian::Little))),
                push: Some(Ok(())),
                ..Script::default()
            };
            assert_eq!(node.before_send(nid(SERVER), true, &mut t), Ok(()));
            let want: Vec<_> = std::iter::once(("ping", nid(SERVER)))
                .chain((0..pushes).map(|_| ("push", nid(SERVER))))
                .collect();
            assert_eq!(t.sent, want, "client {client_on} server {server_on}");
            let s = &node.summary()[0];
            assert!(s.discovered);
            assert_eq!(s.multi_rail, pushes == 1);
            // Up to date now: the next PUT goes at once.
            assert_eq!(node.before_send(nid(SERVER), true, &mut t), Ok(()));
            assert_eq!(t.sent.len(), want.len());
        }
    }

    /// The server takes a push naming the client's private NID as primary: the peer of the
    /// NAT's NID adopts it, loses the NAT's NID, and the server pushes back to the private NID.
    #[test]
    fn a_push_with_a_private_primary_moves_the_peer_to_it() {
        let mut node = Node::new(true);
        node.peer_of(nid(NAT));
        let push = Node::new(true)
            .ping_info(&[nid(CLIENT)])
            .encode(lnat_common::wire::Endian::Little);
        let mut t = Script {
            push: Some(Err(-110)),
            ..Script::default()
        };
        let (outcome, result) = node.push_received(nid(NAT), &push, &mut t);
        assert_eq!((outcome, result), (PushOutcome::Accepted, Err(-110)));
        assert_eq!(t.sent, vec![("push", nid(CLIENT))]);
        let s = &node.summary()[0];
        assert_eq!(s.primary_nid, CLIENT);
        assert_eq!(s.nids, vec![CLIENT.to_string()]);
        // A message for the NAT's NID now makes a new peer, which is pinged.
        assert_eq!(node.before_send(nid(NAT), true, &mut t), Err(-111));
        assert_eq!(t.sent[1], ("ping", nid(NAT)));
        assert_eq!(node.summary().len(), 2);
    }

    /// A push whose primary NID is the peer's own NID (what lnat's egress program makes it): the
    /// data is merged, the peer stays, and only the push back remains to do.
    #[test]
    fn a_push_with_the_peers_own_nid_keeps_the_peer() {
        let mut node = Node::new(true);
        node.peer_of(nid(NAT));
        let push = Node::new(true)
            .ping_info(&[nid(NAT)])
            .encode(lnat_common::wire::Endian::Little);
        let mut t = Script {
            push: Some(Ok(())),
            ..Script::default()
        };
        let (outcome, result) = node.push_received(nid(NAT), &push, &mut t);
        assert_eq!((outcome, result), (PushOutcome::Accepted, Ok(())));
        assert_eq!(t.sent, vec![("push", nid(NAT))]);
        assert_eq!(node.before_send(nid(NAT), true, &mut t), Ok(()));
        assert_eq!(t.sent.len(), 1);
    }

    /// What the model predicts for lnat's planned fix (the client's pushed NIDs rewritten to
    /// the NAT's): with discovery on at the server the peer stays, but it is Multi-Rail, so the
    /// server pushes back to 12345-203.0.113.1@tcp, which needs a new connection through the
    /// NAT, and every PUT then fails with the refusal. Without `LNET_PING_FEAT_DISCOVERY` in
    /// the pushed data the peer is not Multi-Rail, nothing is pushed back, and PUTs go at once.
    #[test]
    fn a_push_naming_the_nat_needs_no_push_back_only_without_the_discovery_feature() {
        for (features_off, want) in [(0, Err(-111)), (ping::feat::DISCOVERY, Ok(()))] {
            let mut node = Node::new(true);
            node.peer_of(nid(NAT));
            let mut info = Node::new(true).ping_info(&[nid(NAT)]);
            info.features &= !features_off;
            let push = info.encode(lnat_common::wire::Endian::Little);
            let mut t = Script::default();
            let (outcome, _) = node.push_received(nid(NAT), &push, &mut t);
            assert_eq!(outcome, PushOutcome::Accepted);
            assert_eq!(node.before_send(nid(NAT), true, &mut t), want);
            let pushes_back = if want.is_ok() { 0 } else { 2 };
            assert_eq!(t.sent, vec![("push", nid(NAT)); pushes_back]);
            assert_eq!(node.summary().len(), 1, "the NAT's NID keeps its peer");
        }
    }

    /// With discovery off at the server, a push naming the NAT's NID would make the peer up
    /// to date; but the client never pushes to it (its ping REPLY lacks the discovery feature,
    /// so the client's peer of the server is not Multi-Rail): the server's PUTs wait for a
    /// ping of 12345-203.0.113.1@tcp instead.
    #[test]
    fn with_discovery_off_only_a_push_would_spare_the_ping() {
        let mut node = Node::new(false);
        node.peer_of(nid(NAT));
        let push = Node::new(true)
            .ping_info(&[nid(NAT)])
            .encode(lnat_common::wire::Endian::Little);
        let mut t = Script::default();
        assert_eq!(node.push_received(nid(NAT), &push, &mut t).1, Ok(()));
        assert_eq!(node.before_send(nid(NAT), true, &mut t), Ok(()));
        assert!(t.sent.is_empty());
    }

    #[test]
    fn bad_pushes_are_refused_as_the_push_event_does() {
        let mut node = Node::new(true);
        let mut t = Script::default();
        let good = Node::new(true).ping_info(&[nid(CLIENT)]);
        let b = good.encode(lnat_common::wire::Endian::Little);
        assert_eq!(
            node.push_received(nid(NAT), &b, &mut t).0,
            PushOutcome::UnknownPeer
        );
        node.peer_of(nid(NAT));
        let (outcome, result) = node.push_received(nid(NAT), &b[..8], &mut t);
        assert_eq!(outcome, PushOutcome::Invalid(-71));
        // FORCE_PING: the discovery pings, through the NAT in vain.
        assert_eq!(
            (result, t.sent.clone()),
            (Err(-111), vec![("ping", nid(NAT))])
        );
        let mut plain = good.clone();
        plain.features &= !ping::feat::MULTI_RAIL;
        let (outcome, _) = node.push_received(
            nid(NAT),
            &plain.encode(lnat_common::wire::Endian::Little),
            &mut t,
        );
        assert_eq!(outcome, PushOutcome::NotMultiRail);
    }
}
