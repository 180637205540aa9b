//! socklnd framing over a TCP socket, on lnat-common's codec (no second copy of the layouts).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
};

use anyhow::{Context as _, bail};
use lnat_common::{
    crc,
    nid::Nid,
    testkit::{Rng, Unit, encode_unit},
    wire::{self, Connreq, Endian, Hello, KsockHdr, LnetHdr, Proto},
};

/// One end of a socklnd connection.
pub struct Wire {
    stream: TcpStream,
    chunk_max: usize,
    rng: Rng,
}

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
        })
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
        let mut b = vec![0u8; n];
        self.stream
            .read_exact(&mut b)
            .with_context(|| format!("reading {n} bytes"))?;
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

    /// Reads an acceptor connection request.
    pub fn recv_connreq(&mut self) -> anyhow::Result<Connreq> {
        let mut b = self.recv(8)?;
        let (magic, version) = (Endian::Little.u32(&b, 0), Endian::Little.u32(&b, 4));
        let big = magic.swap_bytes() == wire::ACCEPTOR_MAGIC;
        let version = if big { version.swap_bytes() } else { version };
        let rest = if version == 2 {
            wire::connreq::LEN_V2
        } else {
            wire::connreq::LEN_V1
        };
        if magic != wire::ACCEPTOR_MAGIC && !big {
            bail!("Bad magic {magic:#x} in connection request");
        }
        b.extend(self.recv(rest - 8)?);
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
        let (proto, endian) = Hello::probe(&b).map_err(|e| anyhow::anyhow!("bad HELLO: {e:?}"))?;
        let layout = proto.hello();
        b.extend(self.recv(layout.fixed - 8)?);
        let count = if proto == Proto::V1 {
            Endian::Little.u32(&b, layout.count_at)
        } else {
            4 * endian.u32(&b, layout.count_at)
        };
        if count > 4 * wire::MAX_HELLO_IPS {
            bail!("Bad nips {} in HELLO", count / 4);
        }
        b.extend(self.recv(count as usize)?);
        Hello::decode(&b)
            .map(|(h, e, _)| (h, e))
            .map_err(|e| anyhow::anyhow!("bad HELLO: {e:?}"))
    }

    /// Sends an LNet message, checksummed when `csum` (V2 `enable_csum`).
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

    /// Reads one message; fails with [`ChecksumError`] when its socklnd checksum is wrong.
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
        let hdr = LnetHdr::decode(proto, endian, &msg[at..])
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
