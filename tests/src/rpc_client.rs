//! The client's side of rpc mode on its connection to the server: before its first request
//! PUT it discovers the server as the kernel does (`crate::discovery`: a ping, and with
//! discovery on at both ends a push of its own ping data, both over this connection, since
//! the server's socklnd peer is 12345-NID, the connection's own), then sends its requests and
//! takes the server's reply and callback PUTs by `lnet_parse`'s rule (dest NID its own).

use std::collections::VecDeque;

use lnat_common::{
    nid::Nid,
    wire::{self, Endian, LnetHdr, LnetType, Proto},
};

use crate::{
    client::ReadClock,
    discovery::{ETIMEDOUT, Node, Transport},
    lnet::{self, Msg, Msg4, Wire},
    ping::{self, PingInfo},
    report::{Put, RpcClient},
    rpc, workload,
};

/// The client's rpc-mode settings.
#[derive(Clone, Debug)]
pub struct RpcOpts {
    /// Request PUTs to send (and replies to expect).
    pub requests: u64,
    /// Callback PUTs to expect.
    pub callbacks: u64,
    /// `lnet_peer_discovery_disabled=0`.
    pub discovery: bool,
    /// Checksum messages on a V2 connection (socklnd's `enable_csum`).
    pub csum: bool,
}

/// How the session ended, for the caller's report.
pub(crate) enum Outcome {
    /// Every reply and callback arrived.
    Done,
    /// A message for another NID: the kernel-style reason.
    Rejected(String),
}

/// `-EIO`: the connection failed under a ping or push.
const EIO: i32 = -5;

/// The client's connection, as discovery's transport and as the session's.
pub(crate) struct Conn<'a> {
    /// The connection.
    pub wire: &'a mut Wire,
    /// Read deadline.
    pub clock: &'a mut ReadClock,
    /// Its protocol.
    pub proto: Proto,
    /// Whether its messages carry a checksum.
    pub csum: bool,
    /// The client's byte order.
    pub endian: Endian,
    /// The client's NID.
    pub me: Nid,
    /// The server's NID.
    pub server: Nid,
}

/// Discovery's view of the connection: what it sent and what arrived meanwhile.
struct Discovering<'c, 'a> {
    conn: &'c mut Conn<'a>,
    own: PingInfo,
    report: &'c mut RpcClient,
    /// Messages that arrived while waiting for a REPLY or ACK, for the session.
    early: Vec<(LnetHdr, Vec<u8>)>,
    rejected: Option<String>,
}

impl<'c, 'a> Discovering<'c, 'a> {
    /// Discovery's view of `conn` for one send or receive, reporting into `report`.
    fn new(conn: &'c mut Conn<'a>, own: &PingInfo, report: &'c mut RpcClient) -> Self {
        Discovering {
            conn,
            own: own.clone(),
            report,
            early: Vec::new(),
            rejected: None,
        }
    }
}

impl Conn<'_> {
    fn to_server(&self) -> Msg4 {
        Msg4 {
            dest: (self.server, wire::PID_LUSTRE),
            src: (self.me, wire::PID_LUSTRE),
        }
    }

    /// The next LNet message, checked by lnet_parse's rule.
    fn next(&mut self) -> anyhow::Result<Result<(LnetHdr, Vec<u8>), String>> {
        loop {
            let (proto, endian) = (self.proto, self.endian);
            let wire = &mut *self.wire;
            let Msg::Lnet { hdr, payload } = self.clock.by(|| wire.recv_msg(proto, endian))? else {
                continue;
            };
            if hdr.dest_nid != self.me {
                return Ok(Err(format!(
                    "lnet_parse(): {}, src {}: Bad dest nid {} (should have been sent direct)",
                    self.server, hdr.src_nid, hdr.dest_nid
                )));
            }
            return Ok(Ok((hdr, payload)));
        }
    }
}

impl Discovering<'_, '_> {
    /// Reads until a message of type `want` for `wmd` arrives; others wait for the session.
    fn wait_for(&mut self, want: LnetType, wmd: lnet::Wmd) -> Result<Vec<u8>, i32> {
        loop {
            match self.conn.next() {
                Err(e) => {
                    return Err(if crate::client::timed_out(&e) {
                        ETIMEDOUT
                    } else {
                        EIO
                    });
                }
                Ok(Err(why)) => {
                    self.rejected = Some(why);
                    return Err(EIO);
                }
                Ok(Ok((hdr, payload))) => {
                    if hdr.msg_type == want as u32 && lnet::wmd_of(&hdr) == wmd {
                        return Ok(payload);
                    }
                    self.early.push((hdr, payload));
                }
            }
        }
    }
}

impl Transport for Discovering<'_, '_> {
    fn ping(&mut self, nid: Nid) -> Result<Vec<u8>, i32> {
        let wmd = [0x50; 16];
        let get = Msg4 {
            dest: (nid, wire::PID_LUSTRE),
            src: (self.conn.me, wire::PID_LUSTRE),
        }
        .get(ping::PORTAL, ping::MATCH_BITS, wmd, rpc::PING_SINK);
        self.report.pings += 1;
        let (proto, endian, csum) = (self.conn.proto, self.conn.endian, self.conn.csum);
        self.conn
            .wire
            .send_lnet(proto, endian, get, Vec::new(), csum)
            .map_err(|_| EIO)?;
        let reply = self.wait_for(LnetType::Reply, wmd)?;
        if let Some((info, _)) = PingInfo::decode(&reply) {
            self.report.ping_reply_features.push(info.features);
        }
        Ok(reply)
    }

    fn push(&mut self, nid: Nid) -> Result<(), i32> {
        let wmd = [0x51; 16];
        let data = self.own.encode(self.conn.endian);
        let put = Msg4 {
            dest: (nid, wire::PID_LUSTRE),
            src: (self.conn.me, wire::PID_LUSTRE),
        }
        .put(ping::PORTAL, ping::MATCH_BITS, Some(wmd), data.len() as u32);
        self.report.pushes += 1;
        self.report.ping_data_nids = self.own.nids().iter().map(Nid::to_string).collect();
        let (proto, endian, csum) = (self.conn.proto, self.conn.endian, self.conn.csum);
        self.conn
            .wire
            .send_lnet(proto, endian, put, data, csum)
            .map_err(|_| EIO)?;
        self.wait_for(LnetType::Ack, wmd)?;
        self.report.pushes_acked += 1;
        Ok(())
    }
}

/// Runs rpc mode on `conn`; `r` records what happened. Errors are read errors (a timeout
/// among them), for the caller to classify.
pub(crate) fn session(
    conn: &mut Conn,
    opts: &RpcOpts,
    r: &mut RpcClient,
) -> anyhow::Result<Outcome> {
    let mut node = Node::new(opts.discovery);
    r.discovery = opts.discovery;
    let own = node.ping_info(&[conn.me]);
    let mut early = Vec::new();
    for index in 0..opts.requests {
        let mut d = Discovering::new(conn, &own, r);
        // lnet_initiate_peer_discovery (lib-move.c:1970) before each request PUT.
        let ready = node.before_send(d.conn.server, true, &mut d);
        early.append(&mut d.early);
        if let Some(why) = d.rejected {
            return Ok(Outcome::Rejected(why));
        }
        r.server_peer = node.summary().into_iter().next();
        if let Err(e) = ready {
            r.discovery_error = e;
            continue;
        }
        r.discovery_error = 0;
        let (payload, _) = rpc::payload(0, rpc::REQUEST_PORTAL, index, rpc::REQUEST_SIZE);
        let put = conn
            .to_server()
            .put(rpc::REQUEST_PORTAL, index, None, rpc::REQUEST_SIZE);
        conn.wire
            .send_lnet(conn.proto, conn.endian, put, payload, conn.csum)?;
        r.requests_sent += 1;
    }
    let mut pending: VecDeque<_> = early.into();
    while (r.replies.len() as u64) < opts.requests || (r.callbacks.len() as u64) < opts.callbacks {
        let (hdr, payload) = match pending.pop_front() {
            Some(m) => m,
            None => match conn.next()? {
                Ok(m) => m,
                Err(why) => return Ok(Outcome::Rejected(why)),
            },
        };
        let mut d = Discovering::new(conn, &own, r);
        d.receive(&mut node, &hdr, payload)?;
        pending.extend(d.early);
        if let Some(why) = d.rejected {
            return Ok(Outcome::Rejected(why));
        }
    }
    r.server_peer = node.summary().into_iter().next();
    Ok(Outcome::Done)
}

impl Discovering<'_, '_> {
    /// One message from the server: an ACK if asked, a ping answered with the client's ping
    /// data, a push taken as `lnet_peer_push_event` does, a reply or callback kept.
    fn receive(&mut self, node: &mut Node, hdr: &LnetHdr, payload: Vec<u8>) -> anyhow::Result<()> {
        let bits = lnet::index_of(hdr);
        let to = Msg4 {
            dest: (hdr.src_nid, hdr.src_pid),
            src: (self.conn.me, wire::PID_LUSTRE),
        };
        let (proto, endian, csum) = (self.conn.proto, self.conn.endian, self.conn.csum);
        if lnet::ack_requested(hdr) {
            let ack = to.ack(lnet::wmd_of(hdr), bits, payload.len() as u32);
            self.conn
                .wire
                .send_lnet(proto, endian, ack, Vec::new(), csum)?;
        }
        let t = LnetType::from_u32(hdr.msg_type);
        match (t, lnet::portal_of(hdr)) {
            (Some(LnetType::Get), Some(ping::PORTAL)) if bits == ping::MATCH_BITS => {
                let data = self.own.encode(endian);
                self.report.ping_data_nids = self.own.nids().iter().map(Nid::to_string).collect();
                let reply = to.reply(lnet::wmd_of(hdr), data.len() as u32);
                self.conn.wire.send_lnet(proto, endian, reply, data, csum)?;
            }
            (Some(LnetType::Put), Some(ping::PORTAL)) if bits == ping::MATCH_BITS => {
                let _ = node.push_received(hdr.src_nid, &payload, self);
            }
            (Some(LnetType::Put), Some(portal @ (rpc::REPLY_PORTAL | rpc::CALLBACK_PORTAL))) => {
                let put = Put {
                    index: bits,
                    size: payload.len() as u32,
                    digest: workload::digest(&payload),
                };
                if portal == rpc::REPLY_PORTAL {
                    self.report.replies.push(put);
                } else {
                    self.report.callbacks.push(put);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
