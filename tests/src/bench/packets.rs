//! Single packets run through a loaded program with `BPF_PROG_TEST_RUN` (`bpftool prog run`):
//! the cost of one kind of packet on its own, which traffic only shows averaged with others.
//!
//! lnat is first walked through a connection's handshake, HELLO and the header of a 1 MiB PUT,
//! so that a packet from the middle of that PUT's payload is what a bulk transfer mostly is: a
//! followed stream with no header in it. No packet leaves the program: test runs deliver nothing.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail, ensure};
use lnat_common::{
    nid::Nid,
    wire::{Endian, Hello, LNET_MTU, LnetType, Proto},
};
use serde::Serialize;

use crate::{
    bench::kernel,
    lnet, ns,
    topology::{ACCEPTOR_PORT, CLIENT, NAT_NID, SERVER, SERVER_NID},
};

/// One kind of packet measured.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Payload of a followed LNet connection, between two headers.
    NoHeader,
    /// TCP that is not LNet (another port): passed after the header parse.
    OtherTcp,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 2] = [Kind::NoHeader, Kind::OtherTcp];

    /// Its name in tables.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::NoHeader => "LNet payload, no header",
            Kind::OtherTcp => "other TCP",
        }
    }
}

/// TCP payload per data packet: a 1500-byte MTU's.
pub(crate) const MSS: usize = 1448;
/// The client's port on the measured connection.
const CLIENT_PORT: u16 = 1023;
/// The program's verdict for a packet it lets through (`TCX_NEXT`), as bpftool prints it.
pub(crate) const PASS: u64 = u32::MAX as u64;
/// TCP flags.
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const SYN_ACK: u8 = 0x12;

/// An Ethernet frame carrying one IPv4 TCP segment from `src` to `dst`.
fn frame(src: (&str, u16), dst: (&str, u16), seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let addr = |s: &str| -> [u8; 4] {
        s.parse::<std::net::Ipv4Addr>()
            .map_or([0; 4], |a| a.octets())
    };
    let mut f = Vec::with_capacity(54 + payload.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let tot = (20 + 20 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&tot.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&addr(src.0));
    f.extend_from_slice(&addr(dst.0));
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    f.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// One server-to-client connection through the NAT, from the server's SYN-ACK on, as the
/// client's interface receives it: V3, little endian. The single-packet frames and the header
/// walks ([`crate::bench::headers`]) each open their own, so none repeats another's stream.
pub(crate) struct Conn {
    client_port: u16,
    isn: u32,
    hello: Vec<u8>,
}

/// The server's NID and the NAT's, which the server sends to.
fn nids() -> anyhow::Result<(Nid, Nid)> {
    let nid = |s: &str| s.parse::<Nid>().map_err(|e| anyhow::anyhow!("{s}: {e:?}"));
    Ok((nid(SERVER_NID)?, nid(NAT_NID)?))
}

/// A PUT from the server to the NAT's NID, match bits `index`, as the server sends it on a
/// [`Conn`]: the socklnd and LNet headers, then `payload`.
pub(crate) fn put(index: u64, payload: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let (server_nid, nat_nid) = nids()?;
    let len = u32::try_from(payload.len()).context("a PUT payload over 4 GiB")?;
    let hdr = lnet::header(nat_nid, 12345, server_nid, 12345, LnetType::Put, index, len);
    Ok(lnet::encode_lnet(
        Proto::V3,
        Endian::Little,
        hdr,
        payload,
        false,
    ))
}

impl Conn {
    /// The connection on the client's port `client_port` whose server picked `isn`. A new
    /// `isn` on a port makes a new connection for lnat (see `lnat_ebpf`'s `flows::open`).
    pub(crate) fn new(client_port: u16, isn: u32) -> anyhow::Result<Conn> {
        let (server_nid, nat_nid) = nids()?;
        let hello = Hello {
            proto: Proto::V3,
            src_nid: server_nid,
            dst_nid: nat_nid,
            src_pid: 12345,
            dst_pid: 12345,
            src_incarnation: 1,
            dst_incarnation: 0,
            ctype: 0,
            nips: 0,
        };
        let mut hello_bytes = vec![0u8; hello.wire_len()];
        hello.encode(Endian::Little, &mut hello_bytes);
        Ok(Conn {
            client_port,
            isn,
            hello: hello_bytes,
        })
    }

    fn frame(&self, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (server, client) = ((SERVER, ACCEPTOR_PORT), (CLIENT, self.client_port));
        frame(server, client, seq, flags, payload)
    }

    /// The server's SYN-ACK: lnat starts following.
    pub(crate) fn syn_ack(&self) -> Vec<u8> {
        self.frame(self.isn, SYN_ACK, &[])
    }

    /// The server's HELLO, naming the NAT's NID as the client's (lnat rewrites it), in one
    /// segment.
    pub(crate) fn hello(&self) -> Vec<u8> {
        self.frame(self.isn.wrapping_add(1), PSH_ACK, &self.hello)
    }

    /// The segment carrying `payload` from byte `off` of the stream after the HELLO on.
    pub(crate) fn segment(&self, off: usize, payload: &[u8]) -> Vec<u8> {
        let seq = self.isn.wrapping_add(1) as usize + self.hello.len() + off;
        self.frame(seq as u32, ACK, payload)
    }
}

/// The frames of one server-to-client stream as the client's interface receives it.
pub struct Frames {
    /// The server's SYN-ACK: lnat starts following.
    pub syn_ack: Vec<u8>,
    /// The server's HELLO.
    pub hello: Vec<u8>,
    /// The first packet of a 1 MiB PUT: its header, addressed to the NAT, which lnat rewrites.
    pub put: Vec<u8>,
    /// A full packet from the middle of that PUT's payload.
    pub body: Vec<u8>,
    /// A full packet of another TCP connection.
    pub other: Vec<u8>,
}

impl Frames {
    /// The frames of a V3 little-endian stream from the server through the NAT.
    pub fn new() -> anyhow::Result<Frames> {
        let conn = Conn::new(CLIENT_PORT, 1_000_000)?;
        let put = put(0, vec![0x5a; LNET_MTU as usize])?;
        let body = 16 * MSS;
        Ok(Frames {
            syn_ack: conn.syn_ack(),
            hello: conn.hello(),
            put: conn.segment(0, &put[..MSS]),
            body: conn.segment(body, &put[body..body + MSS]),
            other: frame((SERVER, 22), (CLIENT, CLIENT_PORT), 7, ACK, &[0x5a; MSS]),
        })
    }

    /// The frame measured for `kind`.
    pub fn of(&self, kind: Kind) -> &[u8] {
        match kind {
            Kind::NoHeader => &self.body,
            Kind::OtherTcp => &self.other,
        }
    }
}

/// Runs `frame` through program `id` `repeat` times; returns the nanoseconds per run the
/// kernel's run-time accounting charged (as for traffic) and the program's verdict.
pub fn run(id: u32, frame: &[u8], repeat: u32, dir: &Path) -> anyhow::Result<(f64, u64)> {
    let file = dir.join(format!("frame-{}.bin", std::process::id()));
    std::fs::write(&file, frame).with_context(|| format!("writing {}", file.display()))?;
    let before = kernel::run_stats(id)?;
    let out = ns::output(Command::new("bpftool").args([
        "--json",
        "prog",
        "run",
        "id",
        &id.to_string(),
        "data_in",
        &file.to_string_lossy(),
        "repeat",
        &repeat.to_string(),
    ]));
    let _ = std::fs::remove_file(&file);
    let out = out?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("parsing bpftool prog run: {out}"))?;
    let retval = v["retval"]
        .as_u64()
        .context("bpftool prog run gave no retval")?;
    let (ns, runs) = kernel::run_stats(id)?.per_run_since(&before);
    check_runs(id, runs, u64::from(repeat))?;
    Ok((ns, retval))
}

/// Checks that program `id` ran `runs` times for the `sent` runs asked of it: a packet the
/// interface received meanwhile (IPv6 neighbour discovery, say) runs it too, a few more.
pub(crate) fn check_runs(id: u32, runs: u64, sent: u64) -> anyhow::Result<()> {
    ensure!(
        (sent..=sent + sent / 100 + 10).contains(&runs),
        "program {id} ran {runs} times, not {sent}: is kernel.bpf_stats_enabled on?"
    );
    Ok(())
}

/// Walks lnat (program `id`) through the stream up to the PUT's payload. `rewritten` reads its
/// counter of rewrites: the HELLO's and the PUT's destination NIDs must both have been
/// rewritten, or what follows would measure a stream lnat is not following.
pub fn prime(
    id: u32,
    frames: &Frames,
    dir: &Path,
    rewritten: impl Fn() -> anyhow::Result<u64>,
) -> anyhow::Result<()> {
    let before = rewritten()?;
    for f in [&frames.syn_ack, &frames.hello, &frames.put] {
        let (_, verdict) = run(id, f, 1, dir)?;
        if verdict != PASS {
            bail!("lnat's verdict on a priming packet was {verdict}, not pass");
        }
    }
    let n = rewritten()? - before;
    ensure!(n == 2, "priming rewrote {n} NIDs, not 2");
    Ok(())
}

/// Checks a measured run's verdict.
pub fn check_pass(kind: Kind, verdict: u64) -> anyhow::Result<()> {
    ensure!(
        verdict == PASS,
        "{}: the program's verdict was {verdict}, not pass",
        kind.name()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use lnat_common::wire::{LnetHdr, ksock};

    use super::*;

    #[test]
    fn the_put_header_opens_its_packet_and_names_the_nat() {
        let f = Frames::new().unwrap();
        assert_eq!(f.put.len(), 54 + MSS);
        assert_eq!(f.body.len(), 54 + MSS);
        let payload = &f.put[54..];
        let hdr = LnetHdr::decode(Proto::V3, &payload[ksock::LEN..]).unwrap();
        assert_eq!(hdr.dest_nid, NAT_NID.parse().unwrap());
        assert_eq!(hdr.payload_length, LNET_MTU);
    }

    #[test]
    fn the_body_packet_lies_inside_the_put_payload() {
        let f = Frames::new().unwrap();
        let seq = |fr: &[u8]| u32::from_be_bytes(fr[38..42].try_into().unwrap());
        let body_off = seq(&f.body).wrapping_sub(seq(&f.put)) as usize;
        let hdr_len = ksock::LEN + Proto::V3.lnet_hdr().len;
        assert!(body_off >= hdr_len);
        assert!(body_off + MSS <= hdr_len + LNET_MTU as usize);
    }
}
