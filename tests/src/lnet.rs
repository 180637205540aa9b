//! socklnd framing over a TCP socket, on lnat-common's codec (no second copy of the layouts).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
};

use anyhow::{Context as _, bail};
use lnat_common::{
    crc,
    nid::Nid,
    wire::{self, Connreq, Endian, Hello, KsockHdr, LnetHdr, Proto},
};
use lnat_testkit::{Rng, Unit, encode_unit};

/// One end of a socklnd connection.
pub struct Wire {
    stream: TcpStream,
    chunk_max: usize,
    rng: Rng,
    /// Bytes read ahead and not yet taken, from `ahead_at` on (see [`Wire::read_ahead`]).
    ahead: Vec<u8>,
    ahead_at: usize,
    read_ahead: bool,
}

/// Most bytes one read takes when reading ahead.
const READ_AHEAD: usize = 256 * 1024;

/// A received socklnd message.
#[derive(Debug)]
pub enum Msg {
    /// A NOOP (keepalive or zero-copy ACK).
    Noop,
    /// An LNet message.
    Lnet {
        /// Its header.
        hdr: LnetHdr,
        /// Its payload.
        payload: Vec<u8>,
    },
}

/// Why a received message breaks the kernel's rules.
#[derive(Debug)]
pub struct ChecksumError {
    /// The checksum on the wire.
    pub wire: u32,
    /// The checksum of the bytes received.
    pub data: u32,
}

impl std::fmt::Display for ChecksumError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Checksum error, wire:0x{:08X} data:0x{:08X}",
            self.wire, self.data
        )
    }
}

impl std::error::Error for ChecksumError {}

impl Wire {
    /// Wraps a connected socket; `chunk_max` > 0 writes every frame in random chunks of at most
    /// that many bytes, each its own segment (TCP_NODELAY), to split headers anywhere.
    pub fn new(stream: TcpStream, chunk_max: usize, seed: u64) -> anyhow::Result<Wire> {
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        Ok(Wire {
            stream,
            chunk_max,
            rng: Rng::new(seed),
            ahead: Vec::new(),
            ahead_at: 0,
            read_ahead: false,
        })
    }

    /// Reads in large blocks from now on, as a kernel receiver takes whatever is queued: a
    /// stream of small messages then costs a system call per block, not two per message, and
    /// the receiving process stops being what limits the rate. For a side that reads the
    /// socket only through this `Wire`.
    pub fn read_ahead(mut self) -> Wire {
        self.read_ahead = true;
        self
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends `bytes`, chunked if asked.
    pub fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if self.chunk_max == 0 {
            return self.stream.write_all(bytes).context("sending");
        }
        let mut at = 0;
        while at < bytes.len() {
            let n = (1 + self.rng.below(self.chunk_max as u64) as usize).min(bytes.len() - at);
            self.stream
                .write_all(&bytes[at..at + n])
                .context("sending")?;
            self.stream.flush().context("sending")?;
            at += n;
        }
        Ok(())
    }

    /// Reads exactly `n` bytes.
    pub fn recv(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        if !self.read_ahead {
            let mut b = vec![0u8; n];
            self.stream
                .read_exact(&mut b)
                .with_context(|| format!("reading {n} bytes"))?;
            return Ok(b);
        }
        while self.ahead.len() - self.ahead_at < n {
            self.ahead.drain(..self.ahead_at);
            self.ahead_at = 0;
            let have = self.ahead.len();
            self.ahead.resize(have + READ_AHEAD.max(n - have), 0);
            let got = self.stream.read(&mut self.ahead[have..]);
            let got = match got {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                )),
                other => other,
            };
            self.ahead.truncate(have + *got.as_ref().unwrap_or(&0));
            got.with_context(|| format!("reading {n} bytes"))?;
        }
        let b = self.ahead[self.ahead_at..self.ahead_at + n].to_vec();
        self.ahead_at += n;
        Ok(b)
    }

    /// Sends an acceptor connection request for `nid` (V2, large NID, when `large`).
    pub fn send_connreq(&mut self, nid: Nid, large: bool, endian: Endian) -> anyhow::Result<()> {
        let req = Connreq {
            nid,
            version: if large { 2 } else { 1 },
        };
        let mut b = [0u8; wire::connreq::LEN_V2];
        let n = req.encode(endian, &mut b);
        self.send(&b[..n])
    }

    /// Reads an acceptor connection request: magic and version first, which say how long the
    /// NID field is, then the rest.
    pub fn recv_connreq(&mut self) -> anyhow::Result<Connreq> {
        let mut b = self.recv(wire::connreq::NID)?;
        let endian = match Endian::Little.u32(&b, wire::connreq::MAGIC) {
            wire::ACCEPTOR_MAGIC => Endian::Little,
            m if m.swap_bytes() == wire::ACCEPTOR_MAGIC => Endian::Big,
            m => bail!("Bad magic {m:#x} in connection request"),
        };
        let len = Connreq {
            nid: Nid::ANY,
            version: endian.u32(&b, wire::connreq::VERSION),
        }
        .wire_len();
        b.extend(self.recv(len - wire::connreq::NID)?);
        Connreq::decode(&b)
            .map(|(r, _)| r)
            .map_err(|e| anyhow::anyhow!("bad connection request: {e:?}"))
    }

    /// Sends a HELLO.
    pub fn send_hello(&mut self, hello: &Hello, endian: Endian) -> anyhow::Result<()> {
        let mut b = vec![0u8; hello.wire_len()];
        hello.encode(endian, &mut b);
        self.send(&b)
    }

    /// Reads a HELLO of any version.
    pub fn recv_hello(&mut self) -> anyhow::Result<(Hello, Endian)> {
        let mut b = self.recv(8)?;
        let (proto, _) = Hello::probe(&b).map_err(|e| anyhow::anyhow!("bad HELLO: {e:?}"))?;
        b.extend(self.recv(proto.hello().fixed - 8)?);
        let len = Hello::wire_len_from(&b).map_err(|e| anyhow::anyhow!("bad HELLO: {e:?}"))?;
        b.extend(self.recv(len - b.len())?);
        Hello::decode(&b)
            .map(|(h, e, _)| (h, e))
            .map_err(|e| anyhow::anyhow!("bad HELLO: {e:?}"))
    }

    /// Sends an LNet message, checksummed when `csum` (V2 `enable_csum`): the ksock header in
    /// `endian`, the LNet header LE, as [`encode_unit`] says.
    pub fn send_lnet(
        &mut self,
        proto: Proto,
        endian: Endian,
        hdr: LnetHdr,
        payload: Vec<u8>,
        csum: bool,
    ) -> anyhow::Result<()> {
        self.send(&encode_lnet(proto, endian, hdr, payload, csum))
    }

    /// Reads one message; fails with [`ChecksumError`] when its socklnd checksum is wrong. The
    /// ksock header is read in `endian`, the LNet header LE (`lnet_hdr_from_nid4` in
    /// include/linux/lnet/lib-lnet.h).
    pub fn recv_msg(&mut self, proto: Proto, endian: Endian) -> anyhow::Result<Msg> {
        let layout = proto.lnet_hdr();
        let mut msg = Vec::new();
        let mut csum = 0;
        if proto != Proto::V1 {
            msg = self.recv(wire::ksock::LEN)?;
            let k = KsockHdr::decode(endian, &msg).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            csum = k.csum;
            match k.msg_type {
                wire::MSG_NOOP => {
                    check_csum(&msg, csum)?;
                    return Ok(Msg::Noop);
                }
                wire::MSG_LNET => {}
                t => bail!("Unknown message type: {t:x}"),
            }
        }
        let at = msg.len();
        msg.extend(self.recv(layout.len)?);
        let hdr = LnetHdr::decode(proto, &msg[at..])
            .map_err(|e| anyhow::anyhow!("bad LNet header: {e:?}"))?;
        if hdr.payload_length > wire::LNET_MTU {
            bail!(
                "bad payload {} ({} max expected)",
                hdr.payload_length,
                wire::LNET_MTU
            );
        }
        let payload = self.recv(hdr.payload_length as usize)?;
        if csum != 0 {
            msg.extend_from_slice(&payload);
            check_csum(&msg, csum)?;
        }
        Ok(Msg::Lnet { hdr, payload })
    }
}

/// An LNet message as sent, checksummed when `csum` (V2 `enable_csum`).
pub fn encode_lnet(
    proto: Proto,
    endian: Endian,
    hdr: LnetHdr,
    payload: Vec<u8>,
    csum: bool,
) -> Vec<u8> {
    encode_unit(proto, endian, &Unit::Lnet { hdr, payload, csum })
}

/// A NOOP as sent.
pub fn encode_noop(proto: Proto, endian: Endian) -> Vec<u8> {
    encode_unit(proto, endian, &Unit::Noop)
}

/// Verifies a socklnd checksum as the receiving kernel does (the field counted as zero).
fn check_csum(msg: &[u8], wire_csum: u32) -> anyhow::Result<()> {
    if wire_csum == 0 {
        return Ok(());
    }
    let mut m = msg.to_vec();
    m[wire::ksock::CSUM..wire::ksock::CSUM + 4].fill(0);
    let data = crc::crc32_le(!0, &m);
    if data != wire_csum {
        return Err(ChecksumError {
            wire: wire_csum,
            data,
        }
        .into());
    }
    Ok(())
}

/// The PUT union's match bits (message index) at body offset 16.
pub const MATCH_BITS: usize = 16;

/// An LNet header with `index` as match bits.
pub fn header(
    dest: Nid,
    dest_pid: u32,
    src: Nid,
    src_pid: u32,
    msg_type: wire::LnetType,
    index: u64,
    payload: u32,
) -> LnetHdr {
    let mut body = [0u8; wire::LnetHdrLayout::BODY_LEN];
    body[MATCH_BITS..MATCH_BITS + 8].copy_from_slice(&index.to_le_bytes());
    LnetHdr {
        dest_nid: dest,
        src_nid: src,
        dest_pid,
        src_pid,
        msg_type: msg_type as u32,
        payload_length: payload,
        body,
    }
}

/// The match bits (message index) of a header.
pub fn index_of(hdr: &LnetHdr) -> u64 {
    u64::from_le_bytes(
        hdr.body[MATCH_BITS..MATCH_BITS + 8]
            .try_into()
            .unwrap_or_default(),
    )
}

/// Where the LNet header's union keeps each message type's fields (lustre-release
/// include/uapi/linux/lnet/lnet-idl.h, `struct lnet_put`, `lnet_get`, `lnet_ack`,
/// `lnet_reply`): the wire handle first in all four, then match bits at [`MATCH_BITS`].
mod union {
    /// `ack_wmd`, `return_wmd` or `dst_wmd`: two u64 cookies.
    pub const WMD: usize = 0;
    /// `struct lnet_put`: `ptl_index`.
    pub const PUT_PORTAL: usize = 32;
    /// `struct lnet_get`: `ptl_index`.
    pub const GET_PORTAL: usize = 24;
    /// `struct lnet_get`: `sink_length`.
    pub const GET_SINK_LENGTH: usize = 32;
    /// `struct lnet_ack`: `mlength`.
    pub const ACK_MLENGTH: usize = 24;
}

/// A wire handle: `LNET_WIRE_HANDLE_COOKIE_NONE` in both cookies means none
/// (lnet-types.h:235, lib-lnet.h:90 `lnet_is_wire_handle_none`).
pub type Wmd = [u8; 16];

/// The handle that asks for nothing back.
pub const WMD_NONE: Wmd = [0xff; 16];

/// An LNet message header with its union filled field by field.
pub struct Msg4 {
    /// The destination (NID, pid).
    pub dest: (Nid, u32),
    /// The source (NID, pid).
    pub src: (Nid, u32),
}

impl Msg4 {
    fn hdr(
        &self,
        t: wire::LnetType,
        payload: u32,
        body: [u8; wire::LnetHdrLayout::BODY_LEN],
    ) -> LnetHdr {
        LnetHdr {
            dest_nid: self.dest.0,
            src_nid: self.src.0,
            dest_pid: self.dest.1,
            src_pid: self.src.1,
            msg_type: t as u32,
            payload_length: payload,
            body,
        }
    }

    /// A PUT on `portal` with `match_bits`; `ack` names the handle the ACK is to carry back
    /// (None: no ACK, as `LNET_NOACK_REQ`).
    pub fn put(&self, portal: u32, match_bits: u64, ack: Option<Wmd>, payload: u32) -> LnetHdr {
        let mut b = [0u8; wire::LnetHdrLayout::BODY_LEN];
        b[union::WMD..union::WMD + 16].copy_from_slice(&ack.unwrap_or(WMD_NONE));
        b[MATCH_BITS..MATCH_BITS + 8].copy_from_slice(&match_bits.to_le_bytes());
        b[union::PUT_PORTAL..union::PUT_PORTAL + 4].copy_from_slice(&portal.to_le_bytes());
        self.hdr(wire::LnetType::Put, payload, b)
    }

    /// A GET on `portal` with `match_bits`, for at most `sink_length` bytes, whose REPLY is
    /// to carry `ret` back.
    pub fn get(&self, portal: u32, match_bits: u64, ret: Wmd, sink_length: u32) -> LnetHdr {
        let mut b = [0u8; wire::LnetHdrLayout::BODY_LEN];
        b[union::WMD..union::WMD + 16].copy_from_slice(&ret);
        b[MATCH_BITS..MATCH_BITS + 8].copy_from_slice(&match_bits.to_le_bytes());
        b[union::GET_PORTAL..union::GET_PORTAL + 4].copy_from_slice(&portal.to_le_bytes());
        b[union::GET_SINK_LENGTH..union::GET_SINK_LENGTH + 4]
            .copy_from_slice(&sink_length.to_le_bytes());
        self.hdr(wire::LnetType::Get, 0, b)
    }

    /// The ACK of a PUT that asked for one with `wmd` (lib-msg.c:459-463, `lnet_complete_msg_locked`).
    pub fn ack(&self, wmd: Wmd, match_bits: u64, mlength: u32) -> LnetHdr {
        let mut b = [0u8; wire::LnetHdrLayout::BODY_LEN];
        b[union::WMD..union::WMD + 16].copy_from_slice(&wmd);
        b[MATCH_BITS..MATCH_BITS + 8].copy_from_slice(&match_bits.to_le_bytes());
        b[union::ACK_MLENGTH..union::ACK_MLENGTH + 4].copy_from_slice(&mlength.to_le_bytes());
        self.hdr(wire::LnetType::Ack, 0, b)
    }

    /// The REPLY to a GET that named `wmd`, with `payload` bytes.
    pub fn reply(&self, wmd: Wmd, payload: u32) -> LnetHdr {
        let mut b = [0u8; wire::LnetHdrLayout::BODY_LEN];
        b[union::WMD..union::WMD + 16].copy_from_slice(&wmd);
        self.hdr(wire::LnetType::Reply, payload, b)
    }
}

/// The wire handle of a header (PUT: `ack_wmd`; GET: `return_wmd`; ACK, REPLY: `dst_wmd`).
pub fn wmd_of(hdr: &LnetHdr) -> Wmd {
    let mut w = [0u8; 16];
    w.copy_from_slice(&hdr.body[union::WMD..union::WMD + 16]);
    w
}

/// True when a PUT asks for an ACK (lib-move.c:4301, `lnet_recv_put`: `ack_wmd` not none).
pub fn ack_requested(hdr: &LnetHdr) -> bool {
    hdr.msg_type == wire::LnetType::Put as u32 && wmd_of(hdr) != WMD_NONE
}

/// The portal of a PUT or GET (None for the other types, which carry none).
pub fn portal_of(hdr: &LnetHdr) -> Option<u32> {
    let at = match wire::LnetType::from_u32(hdr.msg_type) {
        Some(wire::LnetType::Put) => union::PUT_PORTAL,
        Some(wire::LnetType::Get) => union::GET_PORTAL,
        _ => return None,
    };
    Some(u32::from_le_bytes(
        hdr.body[at..at + 4].try_into().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, time::Duration};

    use lnat_common::{
        ping,
        wire::{LnetType, PID_LUSTRE, PID_USERFLAG},
    };

    use super::*;

    /// Two connected ends over loopback; `chunk_max` applies to the first.
    fn pair(chunk_max: usize) -> (Wire, Wire) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
        }
        (
            Wire::new(a, chunk_max, 1).expect("wire"),
            Wire::new(b, 0, 2).expect("wire"),
        )
    }

    fn nid(s: &str) -> Nid {
        s.parse().expect("nid")
    }

    fn put(index: u64, payload: u32) -> LnetHdr {
        header(
            nid("198.51.100.2@tcp"),
            PID_LUSTRE,
            nid("203.0.113.10@tcp"),
            PID_LUSTRE,
            LnetType::Put,
            index,
            payload,
        )
    }

    #[test]
    fn connreqs_round_trip_in_both_byte_orders() {
        let (mut a, mut b) = pair(0);
        for (large, endian) in [
            (false, Endian::Little),
            (false, Endian::Big),
            (true, Endian::Little),
        ] {
            a.send_connreq(nid("203.0.113.10@tcp"), large, endian)
                .expect("send");
            let req = b.recv_connreq().expect("recv");
            assert_eq!(req.nid, nid("203.0.113.10@tcp"));
            assert_eq!(req.version, if large { 2 } else { 1 });
        }
    }

    #[test]
    fn a_bad_connreq_magic_is_refused() {
        let (mut a, mut b) = pair(0);
        a.send(&[0x63, 0x69, 0x72, 0x45, 3, 0, 0, 0]).expect("send");
        assert!(b.recv_connreq().is_err());
    }

    #[test]
    fn the_connreq_matches_the_spec_vector() {
        let (mut a, mut b) = pair(0);
        a.send_connreq(nid("203.0.113.10@tcp"), false, Endian::Little)
            .expect("send");
        let want = [
            0x00, 0x71, 0xce, 0xac, 0x01, 0, 0, 0, 0x0a, 0x71, 0x00, 0xcb, 0, 0, 2, 0,
        ];
        assert_eq!(b.recv(want.len()).expect("recv"), want);
    }

    #[test]
    fn hellos_of_every_version_round_trip() {
        let (mut a, mut b) = pair(5);
        for (proto, endian) in [
            (Proto::V1, Endian::Little),
            (Proto::V2, Endian::Little),
            (Proto::V3, Endian::Little),
            (Proto::V3, Endian::Big),
            (Proto::V4, Endian::Little),
        ] {
            let v1 = proto == Proto::V1;
            let hello = Hello {
                proto,
                src_nid: nid("203.0.113.10@tcp"),
                dst_nid: if v1 { Nid::ANY } else { nid("203.0.113.1@tcp") },
                src_pid: PID_LUSTRE,
                dst_pid: if v1 { 0 } else { PID_USERFLAG | 40001 },
                src_incarnation: 0x18eb_1e4a_1718_418d,
                dst_incarnation: 0,
                ctype: 1,
                nips: 0,
            };
            a.send_hello(&hello, endian).expect("send");
            assert_eq!(b.recv_hello().expect("recv"), (hello, endian), "{proto:?}");
        }
    }

    #[test]
    fn lnet_messages_and_noops_round_trip() {
        let (mut a, mut b) = pair(7);
        for (proto, endian, csum) in [
            (Proto::V1, Endian::Little, false),
            (Proto::V2, Endian::Little, true),
            (Proto::V2, Endian::Big, true),
            (Proto::V3, Endian::Little, false),
            (Proto::V4, Endian::Little, false),
        ] {
            for (index, len) in [(0u64, 0u32), (1, 1), (2, 333)] {
                let body: Vec<u8> = (0..len).map(|i| i as u8 ^ index as u8).collect();
                let hdr = put(index, len);
                a.send_lnet(proto, endian, hdr, body.clone(), csum)
                    .expect("send");
                match b.recv_msg(proto, endian).expect("recv") {
                    Msg::Lnet { hdr: got, payload } => {
                        assert_eq!(got, hdr, "{proto:?}");
                        assert_eq!(index_of(&got), index);
                        assert_eq!(payload, body);
                    }
                    Msg::Noop => panic!("a NOOP instead of a PUT"),
                }
            }
            if proto != Proto::V1 {
                a.send(&encode_noop(proto, endian)).expect("send");
                assert!(matches!(b.recv_msg(proto, endian), Ok(Msg::Noop)));
            }
        }
    }

    #[test]
    fn a_full_size_put_round_trips() {
        let (mut a, mut b) = pair(0);
        let body = vec![0x5a; wire::LNET_MTU as usize];
        let sent = body.clone();
        let writer = std::thread::spawn(move || {
            a.send_lnet(
                Proto::V2,
                Endian::Little,
                put(9, wire::LNET_MTU),
                sent,
                true,
            )
            .expect("send");
        });
        let Msg::Lnet { payload, .. } = b.recv_msg(Proto::V2, Endian::Little).expect("recv") else {
            panic!("a NOOP instead of a PUT");
        };
        writer.join().expect("writer");
        assert_eq!(payload, body);
    }

    #[test]
    fn a_wrong_checksum_is_a_checksum_error() {
        let (mut a, mut b) = pair(0);
        let mut msg = encode_lnet(Proto::V2, Endian::Little, put(3, 8), vec![1; 8], true);
        let last = msg.len() - 1;
        msg[last] ^= 1;
        a.send(&msg).expect("send");
        let e = b
            .recv_msg(Proto::V2, Endian::Little)
            .expect_err("corruption undetected");
        assert!(e.downcast_ref::<ChecksumError>().is_some(), "{e:#}");
        assert!(format!("{e}").starts_with("Checksum error"));
    }

    #[test]
    fn an_oversized_payload_is_refused() {
        let (mut a, mut b) = pair(0);
        a.send(&encode_lnet(
            Proto::V3,
            Endian::Little,
            put(0, 0),
            Vec::new(),
            false,
        ))
        .expect("send");
        assert!(b.recv_msg(Proto::V3, Endian::Little).is_ok());
        let mut msg = encode_lnet(Proto::V3, Endian::Little, put(0, 0), Vec::new(), false);
        let at = wire::ksock::LEN + wire::LnetHdrLayout::NID4.payload_length;
        Endian::Little.put_u32(&mut msg, at, wire::LNET_MTU + 1);
        a.send(&msg).expect("send");
        assert!(b.recv_msg(Proto::V3, Endian::Little).is_err());
    }

    /// GET, REPLY, PUT-with-ACK and ACK on one connection, both ways, their union fields read
    /// back from the wire as lnet-idl.h lays them out.
    #[test]
    fn gets_replies_puts_and_acks_round_trip_both_ways() {
        let (mut a, mut b) = pair(3);
        let client = Msg4 {
            dest: (nid("203.0.113.10@tcp"), PID_LUSTRE),
            src: (nid("198.51.100.2@tcp"), PID_LUSTRE),
        };
        let server = Msg4 {
            dest: (nid("203.0.113.1@tcp"), PID_USERFLAG | 40001),
            src: (nid("203.0.113.10@tcp"), PID_LUSTRE),
        };
        let ret = [7u8; 16];
        let get = client.get(ping::PORTAL, ping::MATCH_BITS, ret, 4096);
        a.send_lnet(Proto::V3, Endian::Little, get, Vec::new(), false)
            .expect("send");
        let Msg::Lnet { hdr, .. } = b.recv_msg(Proto::V3, Endian::Little).expect("recv") else {
            panic!("a NOOP instead of a GET");
        };
        assert_eq!(hdr, get);
        assert_eq!(
            (portal_of(&hdr), index_of(&hdr)),
            (Some(ping::PORTAL), ping::MATCH_BITS)
        );
        assert_eq!(hdr.body[32..36], 4096u32.to_le_bytes());
        let reply = server.reply(wmd_of(&hdr), 3);
        b.send_lnet(Proto::V3, Endian::Big, reply, vec![1, 2, 3], false)
            .expect("send");
        let Msg::Lnet { hdr, payload } = a.recv_msg(Proto::V3, Endian::Big).expect("recv") else {
            panic!("a NOOP instead of a REPLY");
        };
        assert_eq!((hdr, payload), (reply, vec![1, 2, 3]));
        assert_eq!((wmd_of(&hdr), portal_of(&hdr)), (ret, None));
        let put = client.put(12, 5, Some([9; 16]), 0);
        assert!(ack_requested(&put));
        assert_eq!(put.body[32..36], 12u32.to_le_bytes());
        assert!(!ack_requested(&server.put(10, 5, None, 0)));
        let ack = server.ack(wmd_of(&put), 5, 0);
        assert_eq!(ack.msg_type, LnetType::Ack as u32);
        assert_eq!((wmd_of(&ack), index_of(&ack)), ([9; 16], 5));
        assert!(!ack_requested(&ack));
    }

    /// The header of the PUT in docs/protocol.md's V3 exchange.
    fn spec_put() -> LnetHdr {
        header(
            nid("203.0.113.1@tcp"),
            0x8000_9c41,
            nid("203.0.113.10@tcp"),
            PID_LUSTRE,
            LnetType::Put,
            0x1122_3344_5566_7788,
            16,
        )
    }

    /// The PUT of docs/protocol.md's V3 exchange, up to the union, then its match bits and payload.
    #[test]
    fn the_put_matches_the_spec_vector() {
        let hdr = spec_put();
        let msg = encode_lnet(Proto::V3, Endian::Little, hdr, (0..16).collect(), false);
        let head: [u8; 56] = [
            0xc1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
            0x01, 0x71, 0x00, 0xcb, 0, 0, 2, 0, 0x0a, 0x71, 0x00, 0xcb, 0, 0, 2, 0, //
            0x41, 0x9c, 0x00, 0x80, 0x39, 0x30, 0, 0, 1, 0, 0, 0, 0x10, 0, 0, 0,
        ];
        let layout = wire::LnetHdrLayout::NID4;
        let body = wire::ksock::LEN + layout.body;
        assert_eq!(msg.len(), wire::ksock::LEN + layout.len + 16);
        assert_eq!(msg[..body], head);
        assert_eq!(
            msg[body + MATCH_BITS..body + MATCH_BITS + 8],
            [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(
            msg[wire::ksock::LEN + layout.len..],
            (0..16).collect::<Vec<u8>>()
        );
    }

    /// A big-endian peer sends the same PUT with only the ksock header swapped: the LNet header is
    /// LE on every connection (`lnet_hdr_to_nid4` in include/linux/lnet/lib-lnet.h).
    #[test]
    fn a_big_endian_put_swaps_only_the_ksock_header() {
        let hdr = spec_put();
        let payload: Vec<u8> = (0..16).collect();
        let le = encode_lnet(Proto::V3, Endian::Little, hdr, payload.clone(), false);
        let be = encode_lnet(Proto::V3, Endian::Big, hdr, payload, false);
        assert_eq!(be[..4], [0, 0, 0, 0xc1]);
        assert_eq!(be[4..], le[4..]);
        let (mut a, mut b) = pair(3);
        a.send(&be).expect("send");
        match b.recv_msg(Proto::V3, Endian::Big).expect("recv") {
            Msg::Lnet { hdr: got, .. } => assert_eq!(got, hdr),
            Msg::Noop => panic!("a NOOP instead of a PUT"),
        }
    }
}
