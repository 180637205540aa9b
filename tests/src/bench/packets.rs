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
    wire::{Endian, Hello, KsockHdr, LNET_MTU, LnetType, MSG_LNET, Proto, ksock},
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
const MSS: usize = 1448;
/// The client's port on the measured connection.
const CLIENT_PORT: u16 = 1023;
/// The program's verdict for a packet it lets through (`TCX_NEXT`), as bpftool prints it.
const PASS: u64 = u32::MAX as u64;
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
        let nid = |s: &str| s.parse::<Nid>().map_err(|e| anyhow::anyhow!("{s}: {e:?}"));
        let (server_nid, nat_nid) = (nid(SERVER_NID)?, nid(NAT_NID)?);
        let (proto, endian) = (Proto::V3, Endian::Little);
        let hello = Hello {
            proto,
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
        hello.encode(endian, &mut hello_bytes);
        // Encoded by hand, not as a testkit unit: the header announces a 1 MiB payload of which
        // only the first packet is ever built.
        let hdr = lnet::header(
            nat_nid,
            12345,
            server_nid,
            12345,
            LnetType::Put,
            0,
            LNET_MTU,
        );
        let mut put = vec![0u8; ksock::LEN + proto.lnet_hdr().len];
        let n = KsockHdr {
            msg_type: MSG_LNET,
            ..KsockHdr::default()
        }
        .encode(endian, &mut put);
        hdr.encode(proto, &mut put[n..]);
        put.resize(MSS, 0);
        let isn = 1_000_000u32;
        let start = isn.wrapping_add(1);
        let put_seq = start.wrapping_add(hello_bytes.len() as u32);
        let server = (SERVER, ACCEPTOR_PORT);
        let client = (CLIENT, CLIENT_PORT);
        Ok(Frames {
            syn_ack: frame(server, client, isn, SYN_ACK, &[]),
            hello: frame(server, client, start, PSH_ACK, &hello_bytes),
            put: frame(server, client, put_seq, ACK, &put),
            body: frame(
                server,
                client,
                put_seq.wrapping_add(16 * MSS as u32),
                ACK,
                &[0x5a; MSS],
            ),
            other: frame((SERVER, 22), client, 7, ACK, &[0x5a; MSS]),
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
    // A packet the interface received meanwhile (IPv6 neighbour discovery, say) runs it too.
    let repeat = u64::from(repeat);
    ensure!(
        (repeat..=repeat + repeat / 100 + 10).contains(&runs),
        "program {id} ran {runs} times, not {repeat}: is kernel.bpf_stats_enabled on?"
    );
    Ok((ns, retval))
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
    use lnat_common::wire::LnetHdr;

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
