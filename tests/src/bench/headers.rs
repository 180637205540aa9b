//! What one LNet header costs the datapath, from `BPF_PROG_TEST_RUN` on segments full of them.
//!
//! A repeated packet of a stream lnat has passed is a retransmission, which its history
//! rewrites without the header parser, so each run here is the next segment of a fresh stream:
//! back-to-back 0-byte PUTs cut into MSS-sized segments, headers falling across segment
//! boundaries as traffic puts them, each segment run once. The same walk over a PUT's payload,
//! segments with no header, is the per-segment cost subtracted from it. Test runs are per CPU
//! and deliver nothing; the flows opened stay in lnat's maps until it detaches.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, ensure};
use lnat_common::wire::{LNET_MTU, Proto, ksock};
use serde::Serialize;

use crate::bench::{
    kernel,
    packets::{self, Conn, MSS, PASS},
    test_run,
};

/// The client's port on the header walks' connections (the single packets' is 1023).
const HEADERS_PORT: u16 = 1022;
/// The client's port on the payload walks' connections.
const PAYLOAD_PORT: u16 = 1021;
/// Bytes of one 0-byte PUT: its socklnd and LNet headers.
const PUT_LEN: usize = ksock::LEN + Proto::V3.lnet_hdr().len;
/// Segments of one 1 MiB PUT after the one its header opens: none holds a header.
const PAYLOAD_SEGMENTS: usize = (PUT_LEN + LNET_MTU as usize).div_ceil(MSS) - 1;

/// Connections opened so far: each gets its own initial sequence number, so a walk repeated
/// on the same port is a new connection to lnat, not a retransmission of the last.
static OPENED: AtomicU32 = AtomicU32::new(0);

/// A connection not seen before, on the client's port `port`.
fn fresh(port: u16) -> anyhow::Result<Conn> {
    let n = OPENED.fetch_add(1, Ordering::Relaxed);
    Conn::new(
        port,
        0x1000_0000u32.wrapping_add(n.wrapping_mul(0x9e37_79b9)),
    )
}

/// The frames of one connection: those that bring lnat to the stream measured, then the
/// measured segments, consecutive, each to be run once.
struct Stream {
    /// SYN-ACK, HELLO and whatever precedes the measured segments.
    opening: Vec<Vec<u8>>,
    /// The segments measured, in stream order.
    measured: Vec<Vec<u8>>,
    /// LNet headers that begin in the measured segments.
    headers: u64,
    /// NIDs lnat rewrites in the whole stream: the HELLO's and one per PUT.
    rewrites: u64,
}

/// `bytes`, from stream offset `from` on, cut into MSS-sized segments of `conn`.
fn cut(conn: &Conn, bytes: &[u8], from: usize) -> Vec<Vec<u8>> {
    bytes[from..]
        .chunks(MSS)
        .enumerate()
        .map(|(i, c)| conn.segment(from + i * MSS, c))
        .collect()
}

/// `segments` segments of back-to-back 0-byte PUTs: as many as fit whole, so the last
/// segment is short by less than one.
fn puts(conn: &Conn, segments: usize) -> anyhow::Result<Stream> {
    let n = segments * MSS / PUT_LEN;
    let mut bytes = Vec::with_capacity(n * PUT_LEN);
    for i in 0..n {
        bytes.extend(packets::put(i as u64, Vec::new())?);
    }
    Ok(Stream {
        opening: vec![conn.syn_ack(), conn.hello()],
        measured: cut(conn, &bytes, 0),
        headers: n as u64,
        rewrites: 1 + n as u64,
    })
}

/// The first `segments` (at most [`PAYLOAD_SEGMENTS`]) segments of a 1 MiB PUT's payload
/// after the one its header opens, which is run first.
fn payload(conn: &Conn, segments: usize) -> anyhow::Result<Stream> {
    let bytes = packets::put(0, vec![0x5a; LNET_MTU as usize])?;
    let mut measured = cut(conn, &bytes, MSS);
    measured.truncate(segments);
    Ok(Stream {
        opening: vec![conn.syn_ack(), conn.hello(), conn.segment(0, &bytes[..MSS])],
        measured,
        headers: 0,
        rewrites: 2,
    })
}

/// One walk of consecutive segments through a program, each run once.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct Walk {
    /// Segments measured.
    pub segments: u64,
    /// LNet headers in them, counted in the stream built.
    pub headers: u64,
    /// Nanoseconds per segment, from the kernel's run-time accounting.
    pub ns_per_segment: f64,
}

/// Runs `stream` through program `id`: the opening unmeasured, then the measured segments;
/// returns their total nanoseconds and runs counted. `rewritten`, lnat's counter of rewrites,
/// must have grown by every NID of the stream, or lnat did not follow it.
fn walk(
    id: u32,
    stream: &Stream,
    rewritten: Option<&dyn Fn() -> anyhow::Result<u64>>,
) -> anyhow::Result<(f64, u64)> {
    let run = |f: &[u8]| -> anyhow::Result<()> {
        let verdict = test_run::run(id, f)?;
        ensure!(
            u64::from(verdict) == PASS,
            "program {id}'s verdict on a segment was {verdict}, not pass"
        );
        Ok(())
    };
    ensure!(!stream.measured.is_empty(), "no segment to measure");
    let rewrites_before = rewritten.map(|r| r()).transpose()?;
    for f in &stream.opening {
        run(f).context("opening the stream")?;
    }
    let before = kernel::run_stats(id)?;
    for (i, f) in stream.measured.iter().enumerate() {
        run(f).with_context(|| format!("segment {i} of {}", stream.measured.len()))?;
    }
    let (ns, runs) = kernel::run_stats(id)?.per_run_since(&before);
    packets::check_runs(id, runs, stream.measured.len() as u64)?;
    if let (Some(r), Some(before)) = (rewritten, rewrites_before) {
        let n = r()?.saturating_sub(before);
        ensure!(
            n == stream.rewrites,
            "lnat rewrote {n} NIDs of a stream that holds {}: it did not follow the stream",
            stream.rewrites
        );
    }
    Ok((ns * runs as f64, runs))
}

/// Walks `segments` segments of back-to-back 0-byte PUTs, on a fresh connection, through
/// program `id`: what a stream of small messages costs per segment. `rewritten` (lnat's
/// counter; None for a program that rewrites nothing) checks every header was rewritten.
pub fn walk_headers(
    id: u32,
    rewritten: Option<&dyn Fn() -> anyhow::Result<u64>>,
    segments: usize,
) -> anyhow::Result<Walk> {
    let stream = puts(&fresh(HEADERS_PORT)?, segments)?;
    let (ns, runs) = walk(id, &stream, rewritten).context("walking segments of headers")?;
    Ok(Walk {
        segments: stream.measured.len() as u64,
        headers: stream.headers,
        ns_per_segment: ns / runs as f64,
    })
}

/// Walks `segments` segments of 1 MiB PUTs' payload, with no header, through program `id`:
/// what any segment of a followed stream costs. One fresh connection per PUT, its header's
/// segment unmeasured; `rewritten` as for [`walk_headers`].
pub fn walk_payload(
    id: u32,
    rewritten: Option<&dyn Fn() -> anyhow::Result<u64>>,
    segments: usize,
) -> anyhow::Result<Walk> {
    let (mut ns, mut runs, mut left) = (0.0, 0, segments);
    loop {
        let stream = payload(&fresh(PAYLOAD_PORT)?, left.min(PAYLOAD_SEGMENTS))?;
        let (n, r) = walk(id, &stream, rewritten).context("walking segments of payload")?;
        (ns, runs, left) = (ns + n, runs + r, left - stream.measured.len());
        if left == 0 {
            break;
        }
    }
    Ok(Walk {
        segments: segments as u64,
        headers: 0,
        ns_per_segment: ns / runs as f64,
    })
}

/// What one LNet header costs a program: a segment of headers against one of payload only.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct HeaderCost {
    /// The walk of segments full of headers.
    pub headers: Walk,
    /// The walk of payload segments: the per-segment cost without any header.
    pub payload: Walk,
    /// Headers per segment of the first walk, exact.
    pub headers_per_segment: f64,
    /// Nanoseconds one header adds to its segment.
    pub ns_per_header: f64,
}

impl HeaderCost {
    /// `(ns/segment with headers − ns/segment of payload) / headers per segment`.
    pub fn of(headers: Walk, payload: Walk) -> HeaderCost {
        let per_segment = headers.headers as f64 / headers.segments as f64;
        HeaderCost {
            headers,
            payload,
            headers_per_segment: per_segment,
            ns_per_header: (headers.ns_per_segment - payload.ns_per_segment) / per_segment,
        }
    }
}

/// Both walks of `segments` segments through program `id` (lnat or any other; `rewritten` is
/// lnat's counter of rewrites, None for a program that rewrites nothing), and what one header
/// costs from them.
pub fn header_cost(
    id: u32,
    rewritten: Option<&dyn Fn() -> anyhow::Result<u64>>,
    segments: usize,
) -> anyhow::Result<HeaderCost> {
    let headers = walk_headers(id, rewritten, segments)?;
    let payload = walk_payload(id, rewritten, segments)?;
    Ok(HeaderCost::of(headers, payload))
}

#[cfg(test)]
mod tests {
    use lnat_common::{nid::Nid, wire::LnetHdr};

    use super::*;
    use crate::topology::NAT_NID;

    /// A frame's sequence number and TCP payload.
    fn seg(f: &[u8]) -> (u32, &[u8]) {
        (u32::from_be_bytes(f[38..42].try_into().unwrap()), &f[54..])
    }

    /// Every measured segment follows the one before, all full but the last; returns the
    /// first one's sequence number and their bytes, joined.
    fn consecutive(s: &Stream) -> (u32, Vec<u8>) {
        let first = seg(&s.measured[0]).0;
        let mut bytes = Vec::new();
        for (i, f) in s.measured.iter().enumerate() {
            let (seq, p) = seg(f);
            assert_eq!(seq, first.wrapping_add(bytes.len() as u32), "segment {i}");
            if i + 1 < s.measured.len() {
                assert_eq!(p.len(), MSS, "segment {i}");
            } else {
                assert!((1..=MSS).contains(&p.len()));
            }
            bytes.extend_from_slice(p);
        }
        (first, bytes)
    }

    #[test]
    fn the_put_segments_follow_the_hello_and_hold_every_header_whole() {
        let conn = fresh(HEADERS_PORT).unwrap();
        let s = puts(&conn, 100).unwrap();
        assert_eq!(s.measured.len(), 100);
        let (hello_seq, hello) = seg(&s.opening[1]);
        let (first, bytes) = consecutive(&s);
        assert_eq!(first, hello_seq.wrapping_add(hello.len() as u32));
        assert_eq!(bytes.len() % PUT_LEN, 0);
        assert_eq!(s.headers, (bytes.len() / PUT_LEN) as u64);
        assert_eq!(s.headers, (100 * MSS / PUT_LEN) as u64);
        assert_eq!(s.rewrites, s.headers + 1);
        let nat: Nid = NAT_NID.parse().unwrap();
        for (i, unit) in bytes.chunks(PUT_LEN).enumerate() {
            let hdr = LnetHdr::decode(Proto::V3, &unit[ksock::LEN..]).unwrap();
            assert_eq!((hdr.dest_nid, hdr.payload_length), (nat, 0), "PUT {i}");
            assert_eq!(crate::lnet::index_of(&hdr), i as u64);
        }
    }

    #[test]
    fn segment_boundaries_cut_headers_at_many_offsets() {
        let s = puts(&fresh(HEADERS_PORT).unwrap(), 100).unwrap();
        let cuts: std::collections::BTreeSet<usize> =
            (1..s.measured.len()).map(|i| i * MSS % PUT_LEN).collect();
        assert_eq!(cuts.len(), PUT_LEN / 8);
    }

    #[test]
    fn the_payload_segments_hold_no_header() {
        let s = payload(&fresh(PAYLOAD_PORT).unwrap(), usize::MAX).unwrap();
        assert_eq!(s.measured.len(), PAYLOAD_SEGMENTS);
        let (put_seq, put) = seg(&s.opening[2]);
        assert_eq!(put.len(), MSS);
        let hdr = LnetHdr::decode(Proto::V3, &put[ksock::LEN..]).unwrap();
        assert_eq!(hdr.payload_length, LNET_MTU);
        let (first, bytes) = consecutive(&s);
        assert_eq!(first, put_seq.wrapping_add(MSS as u32));
        assert_eq!(MSS + bytes.len(), PUT_LEN + LNET_MTU as usize);
        assert!(bytes.iter().all(|&b| b == 0x5a));
        assert_eq!((s.headers, s.rewrites), (0, 2));
        let short = payload(&fresh(PAYLOAD_PORT).unwrap(), 10).unwrap();
        assert_eq!(short.measured.len(), 10);
    }

    #[test]
    fn each_connection_is_new() {
        let (a, b) = (fresh(HEADERS_PORT).unwrap(), fresh(HEADERS_PORT).unwrap());
        assert_ne!(seg(&a.syn_ack()).0, seg(&b.syn_ack()).0);
    }

    #[test]
    fn a_header_costs_the_difference_over_the_headers_per_segment() {
        let headers = Walk {
            segments: 100,
            headers: 1_510,
            ns_per_segment: 1_000.0,
        };
        let payload = Walk {
            segments: 100,
            headers: 0,
            ns_per_segment: 94.0,
        };
        let c = HeaderCost::of(headers, payload);
        assert_eq!(c.headers_per_segment, 15.1);
        assert!((c.ns_per_header - 60.0).abs() < 1e-9);
        assert_eq!((c.headers, c.payload), (headers, payload));
    }
}
