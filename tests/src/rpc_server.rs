//! The server's side of rpc mode on one accepted connection: it answers pings, takes pushes as
//! `lnet_peer_push_event` does, and answers each request with a reply PUT (then, after the
//! first, sends its callbacks), running discovery (`crate::discovery`) before each. Discovery
//! of a peer needs a new connection to 12345-NID (socklnd matches peers on pid and NID,
//! `ksocknal_launch_packet`, socklnd_cb.c:800; the accepted connection is a userspace peer's,
//! `U<port>`), which the server dials itself as `lnet_connect` does (acceptor.c:283: from a
//! reserved port, 1023 down, to the NID's address on port 988).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::Mutex,
    time::{Duration, Instant},
};

use lnat_common::{
    nid::Nid,
    wire::{self, Endian, LnetType, Proto},
};
use socket2::{Domain, Socket, Type};

use crate::{
    discovery::{Node, Transport},
    lnet::{self, Msg, Msg4, Wire},
    ping::{self, PingInfo},
    report::{Dial, PushSeen, RpcSent, RpcServed},
    rpc,
    workload::{self, Sizes},
};

/// The server's rpc-mode settings.
#[derive(Clone, Debug)]
pub struct RpcOpts {
    /// Callback PUTs to send after the first request.
    pub callbacks: u64,
    /// `lnet_peer_discovery_disabled=0`.
    pub discovery: bool,
    /// Longest a discovery dial may take (the kernel's is `lnet_connect`'s socket timeout).
    pub dial_timeout: Duration,
}

/// `-EOPNOTSUPP`: a dial that connected, after which the emulator does not carry the ping or
/// push over the new connection (no emulated peer listens, so a test never gets here).
const EOPNOTSUPP: i32 = -95;

/// The server's discovery transport: every ping and push dials the NID's address.
struct Dialer<'r> {
    timeout: Duration,
    dials: &'r mut Vec<Dial>,
}

impl Dialer<'_> {
    fn dial(&mut self, purpose: &str, nid: Nid) -> Result<(), i32> {
        let addr = SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(nid.addr()),
            wire::ACCEPTOR_PORT,
        ));
        let (errno, error) = match connect_reserved(addr, self.timeout) {
            Ok(s) => {
                drop(s);
                (EOPNOTSUPP, "connected".to_string())
            }
            Err(e) => (
                // connect_timeout's own timeout carries no OS errno.
                -e.raw_os_error().unwrap_or(-crate::discovery::ETIMEDOUT),
                e.to_string(),
            ),
        };
        eprintln!("Error {errno} connecting to {nid} at host {addr} ({purpose}): {error}");
        self.dials.push(Dial {
            purpose: purpose.into(),
            nid: nid.to_string(),
            addr: addr.to_string(),
            errno,
            error,
        });
        Err(errno)
    }
}

impl Transport for Dialer<'_> {
    fn ping(&mut self, nid: Nid) -> Result<Vec<u8>, i32> {
        self.dial("ping", nid).map(|()| Vec::new())
    }

    fn push(&mut self, nid: Nid) -> Result<(), i32> {
        self.dial("push", nid)
    }
}

/// Connects from the highest free reserved port, as `lnet_connect` does.
fn connect_reserved(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::from(std::io::ErrorKind::AddrInUse);
    for port in (wire::MIN_RESERVED_PORT..=wire::MAX_RESERVED_PORT).rev() {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        let local = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        if let Err(e) = sock.bind(&local.into()) {
            last = e;
            continue;
        }
        match sock.connect_timeout(&addr.into(), timeout) {
            Ok(()) => return Ok(sock.into()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::AddrInUse) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// One accepted connection in rpc mode, after the HELLOs.
pub struct Session<'a> {
    /// The connection.
    pub wire: Wire,
    /// Its protocol.
    pub proto: Proto,
    /// The server's byte order on it.
    pub endian: Endian,
    /// The server's NID.
    pub me: Nid,
    /// Who the peer is on this connection (for a userspace peer, the NAT's NID and
    /// `U<port>`, which socklnd substitutes into every header received,
    /// socklnd_cb.c:1204).
    pub peer: (Nid, u32),
    /// Seed of the payloads.
    pub seed: u64,
    /// Sizes of replies and callbacks.
    pub sizes: Sizes,
    /// Longest to wait for the next message.
    pub hold: Duration,
    /// The server's peers, shared by its connections.
    pub node: &'a Mutex<Node>,
}

impl Session<'_> {
    /// Serves the connection until the peer closes or stays silent for `hold`; returns what
    /// happened, and why the server dropped the connection if it did.
    pub fn run(mut self, opts: &RpcOpts) -> (RpcServed, Option<String>) {
        let mut r = RpcServed {
            discovery: opts.discovery,
            ..RpcServed::default()
        };
        let mut rejected = None;
        let _ = self.wire.stream().set_read_timeout(Some(self.hold));
        let end = Instant::now() + self.hold;
        while Instant::now() < end {
            let Ok(msg) = self.wire.recv_msg(self.proto, self.endian) else {
                break;
            };
            let Msg::Lnet { hdr, payload } = msg else {
                continue;
            };
            // lnet_parse: a message for another NID should have been sent direct.
            if hdr.dest_nid != self.me {
                let why = format!(
                    "lnet_parse(): src {}: Bad dest nid {} (should have been sent direct)",
                    hdr.src_nid, hdr.dest_nid
                );
                eprintln!("{why}");
                rejected = Some(why);
                break;
            }
            if self.handle(&hdr, &payload, opts, &mut r).is_err() {
                break;
            }
        }
        r.peers = self.node.lock().map(|n| n.summary()).unwrap_or_default();
        (r, rejected)
    }

    /// Headers of the server's messages to the peer on this connection.
    fn to_peer(&self) -> Msg4 {
        Msg4 {
            dest: self.peer,
            src: (self.me, wire::PID_LUSTRE),
        }
    }

    fn send(&mut self, hdr: wire::LnetHdr, payload: Vec<u8>) -> anyhow::Result<()> {
        self.wire
            .send_lnet(self.proto, self.endian, hdr, payload, false)
    }

    /// One message received from the peer.
    fn handle(
        &mut self,
        hdr: &wire::LnetHdr,
        payload: &[u8],
        opts: &RpcOpts,
        r: &mut RpcServed,
    ) -> anyhow::Result<()> {
        let mut node = self
            .node
            .lock()
            .map_err(|_| anyhow::anyhow!("peer table poisoned"))?;
        // lnet_parse (lib-move.c:4795): the source's peer exists from now on.
        node.peer_of(self.peer.0);
        let t = LnetType::from_u32(hdr.msg_type);
        let portal = lnet::portal_of(hdr);
        let bits = lnet::index_of(hdr);
        match (t, portal) {
            // A ping: the ping target MD answers with this node's ping data (a REPLY, which
            // never starts discovery, lib-move.c:1653).
            (Some(LnetType::Get), Some(ping::PORTAL)) if bits == ping::MATCH_BITS => {
                let info = node.ping_info(&[self.me]).encode(self.endian);
                drop(node);
                let reply = self.to_peer().reply(lnet::wmd_of(hdr), info.len() as u32);
                self.send(reply, info)?;
                r.pings_answered += 1;
            }
            // A push: ACKed (an ACK starts no discovery), then lnet_peer_push_event.
            (Some(LnetType::Put), Some(ping::PORTAL)) if bits == ping::MATCH_BITS => {
                if lnet::ack_requested(hdr) {
                    let ack = self
                        .to_peer()
                        .ack(lnet::wmd_of(hdr), bits, payload.len() as u32);
                    self.send(ack, Vec::new())?;
                }
                let decoded = PingInfo::decode(payload).map(|(i, _)| i);
                let mut dialer = Dialer {
                    timeout: opts.dial_timeout,
                    dials: &mut r.dials,
                };
                let (outcome, result) = node.push_received(self.peer.0, payload, &mut dialer);
                r.pushes.push(PushSeen {
                    primary_nid: decoded
                        .as_ref()
                        .and_then(PingInfo::primary)
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                    nids: decoded
                        .as_ref()
                        .map(|i| i.nids().iter().map(Nid::to_string).collect())
                        .unwrap_or_default(),
                    features: decoded.map_or(0, |i| i.features),
                    outcome: format!("{outcome:?}"),
                    discovery: result.err().unwrap_or(0),
                });
            }
            (Some(LnetType::Put), Some(rpc::REQUEST_PORTAL)) => {
                if lnet::ack_requested(hdr) {
                    let ack = self
                        .to_peer()
                        .ack(lnet::wmd_of(hdr), bits, payload.len() as u32);
                    self.send(ack, Vec::new())?;
                }
                let first = r.requests.is_empty();
                r.requests.push(bits);
                let reply = self.put_to_peer(&mut node, rpc::REPLY_PORTAL, bits, opts, r)?;
                r.replies.push(reply);
                if first {
                    for i in 0..opts.callbacks {
                        let cb = self.put_to_peer(&mut node, rpc::CALLBACK_PORTAL, i, opts, r)?;
                        r.callbacks.push(cb);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A PUT of the server's own to the peer: discovery first (lib-move.c:1970), then the
    /// PUT on this connection, or the discovery's error.
    fn put_to_peer(
        &mut self,
        node: &mut Node,
        portal: u32,
        index: u64,
        opts: &RpcOpts,
        r: &mut RpcServed,
    ) -> anyhow::Result<RpcSent> {
        let size = workload::size(&self.sizes, self.seed, index);
        let (payload, put) = rpc::payload(self.seed, portal, index, size);
        let mut dialer = Dialer {
            timeout: opts.dial_timeout,
            dials: &mut r.dials,
        };
        let errno = match node.before_send(self.peer.0, true, &mut dialer) {
            Ok(()) => {
                let hdr = self.to_peer().put(portal, index, None, size);
                self.send(hdr, payload)?;
                0
            }
            Err(e) => {
                eprintln!(
                    "PUT {index} on portal {portal} to {}-{}: discovery failed: {e}",
                    self.peer.1, self.peer.0
                );
                e
            }
        };
        Ok(RpcSent {
            index,
            size,
            digest: put.digest,
            errno,
        })
    }
}
