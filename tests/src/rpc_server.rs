//! The server's side of rpc mode on one accepted connection: it answers pings, takes pushes as
//! `lnet_peer_push_event` does, and answers each request with a reply PUT (then, after the
//! first, sends its callbacks), running discovery (`crate::discovery`) before each. A ping or
//! push goes to 12345-NID, and socklnd matches peers on pid and NID (`ksocknal_launch_packet`,
//! socklnd_cb.c:800): it goes over the accepted connection only if that is 12345-NID's (a
//! client on a reserved port); a userspace peer's connection (`U<port>`, through a NAT) is not,
//! so the server dials a new one as `lnet_connect` does (acceptor.c:283: from a reserved port,
//! 1023 down, to the NID's address on port 988).

use std::{
    collections::VecDeque,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::Mutex,
    time::Duration,
};

use lnat_common::{
    nid::Nid,
    wire::{self, Endian, LnetHdr, LnetType, Proto},
};
use socket2::{Domain, Socket, Type};

use crate::{
    discovery::{ETIMEDOUT, Node, Transport},
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

/// The server's discovery transport. A ping or push to 12345-NID goes over this connection
/// when it is that peer's (a client that connected from a reserved port, whose HELLO named
/// it: socklnd finds the peer by pid and NID, `ksocknal_find_peer_locked` in
/// `ksocknal_launch_packet`, socklnd_cb.c:800); otherwise it needs a new connection, which the
/// server dials.
struct ServerTransport<'a, 'l> {
    link: &'a mut Link<'l>,
    /// The server's own ping data, as a push carries it.
    own: Vec<u8>,
    timeout: Duration,
    dials: &'a mut Vec<Dial>,
    on_connection: &'a mut Vec<String>,
}

impl ServerTransport<'_, '_> {
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
                -e.raw_os_error().unwrap_or(-ETIMEDOUT),
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

    /// True when this connection is the one to 12345-`nid`.
    fn on_this_connection(&self, nid: Nid) -> bool {
        self.link.peer == (nid, wire::PID_LUSTRE)
    }

    /// Sends `hdr` with `payload` on this connection and waits for the `want` that names
    /// `wmd`; what arrives meanwhile waits for the session.
    fn exchange(
        &mut self,
        what: String,
        hdr: LnetHdr,
        payload: Vec<u8>,
        want: LnetType,
        wmd: lnet::Wmd,
    ) -> Result<Vec<u8>, i32> {
        self.on_connection.push(what);
        self.link.send(hdr, payload).map_err(|_| EIO)?;
        loop {
            let (h, p) = self.link.recv().map_err(|e| e.errno())?;
            if h.msg_type == want as u32 && lnet::wmd_of(&h) == wmd {
                return Ok(p);
            }
            self.link.early.push_back((h, p));
        }
    }
}

impl Transport for ServerTransport<'_, '_> {
    fn ping(&mut self, nid: Nid) -> Result<Vec<u8>, i32> {
        if !self.on_this_connection(nid) {
            return self.dial("ping", nid).map(|()| Vec::new());
        }
        let wmd = [0x60; 16];
        let get = self
            .link
            .to_peer()
            .get(ping::PORTAL, ping::MATCH_BITS, wmd, rpc::PING_SINK);
        let what = format!("ping {}-{nid}", wire::PID_LUSTRE);
        self.exchange(what, get, Vec::new(), LnetType::Reply, wmd)
    }

    fn push(&mut self, nid: Nid) -> Result<(), i32> {
        if !self.on_this_connection(nid) {
            return self.dial("push", nid);
        }
        let wmd = [0x61; 16];
        let data = self.own.clone();
        let put =
            self.link
                .to_peer()
                .put(ping::PORTAL, ping::MATCH_BITS, Some(wmd), data.len() as u32);
        let what = format!("push {}-{nid}", wire::PID_LUSTRE);
        self.exchange(what, put, data, LnetType::Ack, wmd).map(drop)
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
    /// Whether its messages carry a checksum (V2 with socklnd's `enable_csum`).
    pub csum: bool,
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

/// Why reading the connection stopped.
enum RecvEnd {
    /// A message for another NID (`lnet_parse`), now recorded.
    Rejected,
    /// The peer stayed silent too long.
    Timeout,
    /// The connection ended or broke.
    Closed,
}

impl RecvEnd {
    /// The error a ping or push waiting on the connection fails with.
    fn errno(&self) -> i32 {
        match self {
            RecvEnd::Timeout => ETIMEDOUT,
            RecvEnd::Rejected | RecvEnd::Closed => EIO,
        }
    }
}

/// `-EIO`: the connection failed under a ping or push.
const EIO: i32 = -5;

/// The connection as the session and discovery share it.
struct Link<'w> {
    wire: &'w mut Wire,
    proto: Proto,
    csum: bool,
    endian: Endian,
    me: Nid,
    peer: (Nid, u32),
    /// Messages that arrived while discovery waited for its REPLY or ACK.
    early: VecDeque<(LnetHdr, Vec<u8>)>,
    rejected: Option<String>,
}

impl Link<'_> {
    /// Headers of the server's messages to the peer on this connection.
    fn to_peer(&self) -> Msg4 {
        Msg4 {
            dest: self.peer,
            src: (self.me, wire::PID_LUSTRE),
        }
    }

    fn send(&mut self, hdr: LnetHdr, payload: Vec<u8>) -> anyhow::Result<()> {
        self.wire
            .send_lnet(self.proto, self.endian, hdr, payload, self.csum)
    }

    /// The next LNet message from the wire, checked by `lnet_parse`'s rule: a message for
    /// another NID should have been sent direct, and the connection is dropped.
    fn recv(&mut self) -> Result<(LnetHdr, Vec<u8>), RecvEnd> {
        loop {
            let msg = match self.wire.recv_msg(self.proto, self.endian) {
                Ok(m) => m,
                Err(e) if crate::client::timed_out(&e) => return Err(RecvEnd::Timeout),
                Err(_) => return Err(RecvEnd::Closed),
            };
            let Msg::Lnet { hdr, payload } = msg else {
                continue;
            };
            if hdr.dest_nid != self.me {
                let why = format!(
                    "lnet_parse(): src {}: Bad dest nid {} (should have been sent direct)",
                    hdr.src_nid, hdr.dest_nid
                );
                eprintln!("{why}");
                self.rejected = Some(why);
                return Err(RecvEnd::Rejected);
            }
            return Ok((hdr, payload));
        }
    }
}

impl Session<'_> {
    /// Serves the connection until the peer closes or stays silent for `hold`; returns what
    /// happened, and why the server dropped the connection if it did.
    pub fn run(mut self, opts: &RpcOpts) -> (RpcServed, Option<String>) {
        let mut r = RpcServed {
            discovery: opts.discovery,
            ..RpcServed::default()
        };
        let _ = self.wire.stream().set_read_timeout(Some(self.hold));
        let mut link = Link {
            wire: &mut self.wire,
            proto: self.proto,
            csum: self.csum,
            endian: self.endian,
            me: self.me,
            peer: self.peer,
            early: VecDeque::new(),
            rejected: None,
        };
        let served = Served {
            seed: self.seed,
            sizes: &self.sizes,
            node: self.node,
            opts,
        };
        loop {
            let next = match link.early.pop_front() {
                Some(m) => Ok(m),
                None => link.recv(),
            };
            let Ok((hdr, payload)) = next else { break };
            if served.handle(&mut link, &hdr, &payload, &mut r).is_err() || link.rejected.is_some()
            {
                break;
            }
        }
        r.peers = self.node.lock().map(|n| n.summary()).unwrap_or_default();
        (r, link.rejected)
    }
}

/// What the server answers with, and from which peer table.
struct Served<'a> {
    seed: u64,
    sizes: &'a Sizes,
    node: &'a Mutex<Node>,
    opts: &'a RpcOpts,
}

impl Served<'_> {
    /// One message received from the peer.
    fn handle(
        &self,
        link: &mut Link,
        hdr: &LnetHdr,
        payload: &[u8],
        r: &mut RpcServed,
    ) -> anyhow::Result<()> {
        let mut node = self
            .node
            .lock()
            .map_err(|_| anyhow::anyhow!("peer table poisoned"))?;
        // lnet_parse (lib-move.c:4795): the source's peer exists from now on.
        node.peer_of(link.peer.0);
        let own = node.ping_info(&[link.me]).encode(link.endian);
        let t = LnetType::from_u32(hdr.msg_type);
        let portal = lnet::portal_of(hdr);
        let bits = lnet::index_of(hdr);
        if lnet::ack_requested(hdr) {
            // An ACK is a response: it starts no discovery (lib-move.c:1653).
            let ack = link
                .to_peer()
                .ack(lnet::wmd_of(hdr), bits, payload.len() as u32);
            link.send(ack, Vec::new())?;
        }
        match (t, portal) {
            // A ping: the ping target MD answers with this node's ping data (a REPLY, which
            // never starts discovery either).
            (Some(LnetType::Get), Some(ping::PORTAL)) if bits == ping::MATCH_BITS => {
                let reply = link.to_peer().reply(lnet::wmd_of(hdr), own.len() as u32);
                link.send(reply, own)?;
                r.pings_answered += 1;
            }
            // A push: lnet_peer_push_event, and the discovery it queues the peer for.
            (Some(LnetType::Put), Some(ping::PORTAL)) if bits == ping::MATCH_BITS => {
                let decoded = PingInfo::decode(payload).map(|(i, _)| i);
                let source = link.peer.0;
                let mut t = self.transport(link, own, r);
                let (outcome, result) = node.push_received(source, payload, &mut t);
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
                let first = r.requests.is_empty();
                r.requests.push(bits);
                let reply = self.put_to_peer(&mut node, link, &own, rpc::REPLY_PORTAL, bits, r)?;
                r.replies.push(reply);
                if first {
                    for i in 0..self.opts.callbacks {
                        let cb =
                            self.put_to_peer(&mut node, link, &own, rpc::CALLBACK_PORTAL, i, r)?;
                        r.callbacks.push(cb);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn transport<'a, 'l>(
        &self,
        link: &'a mut Link<'l>,
        own: Vec<u8>,
        r: &'a mut RpcServed,
    ) -> ServerTransport<'a, 'l> {
        ServerTransport {
            link,
            own,
            timeout: self.opts.dial_timeout,
            dials: &mut r.dials,
            on_connection: &mut r.on_connection,
        }
    }

    /// A PUT of the server's own to the peer: discovery first (lib-move.c:1970), then the
    /// PUT on this connection, or the discovery's error.
    fn put_to_peer(
        &self,
        node: &mut Node,
        link: &mut Link,
        own: &[u8],
        portal: u32,
        index: u64,
        r: &mut RpcServed,
    ) -> anyhow::Result<RpcSent> {
        let size = workload::size(self.sizes, self.seed, index);
        let (payload, put) = rpc::payload(self.seed, portal, index, size);
        let peer = link.peer;
        let ready = node.before_send(peer.0, true, &mut self.transport(link, own.to_vec(), r));
        let errno = match ready {
            Ok(()) => {
                let hdr = link.to_peer().put(portal, index, None, size);
                link.send(hdr, payload)?;
                0
            }
            Err(e) => {
                eprintln!(
                    "PUT {index} on portal {portal} to {}-{}: discovery failed: {e}",
                    peer.1, peer.0
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
