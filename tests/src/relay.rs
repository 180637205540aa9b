//! The user's alternative to lnat: a userspace TCP relay on the client that forwards LNet
//! connections to the server and rewrites the NIDs in what comes back. `lnat-bench` measures
//! it next to lnat. It follows the stream with lnat-common's tracker, fed each read as the
//! datapath feeds it each segment (one protocol brain, no second copy of the layouts).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
};

use anyhow::Context as _;
use lnat_common::{
    nid::Nid,
    segment,
    tracker::{Env, Note, Role, Tracker},
};
use lnat_testkit::VecPacket;
use serde::Serialize;

/// Where the relay listens and forwards, and what it rewrites.
#[derive(Clone, Copy, Debug)]
pub struct RelayOpts {
    /// Where the LNet client connects instead of the server.
    pub listen: SocketAddr,
    /// The server's acceptor.
    pub upstream: SocketAddr,
    /// The NID the server calls the client (the NAT's).
    pub external: Nid,
    /// The client's own NID, which `external` becomes.
    pub local: Nid,
    /// Connections to relay before exiting.
    pub conns: u32,
}

/// What the relay did, printed when it exits.
#[derive(Serialize, Debug, Default)]
pub struct RelayReport {
    /// Connections relayed.
    pub connections: u32,
    /// Bytes relayed from the server to the client.
    pub bytes: u64,
    /// NIDs rewritten.
    pub rewrites: u64,
    /// CPU time the relay used, user and system, in nanoseconds: what lnat's run time is
    /// compared with.
    pub cpu_ns: u64,
}

/// CPU time this process has used, user and system, in nanoseconds.
fn cpu_ns() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// The single mapping the relay was given, counting what the tracker does with it.
struct OneMapping {
    external: Nid,
    rewrites: u64,
}

impl Env for OneMapping {
    fn mapping(&mut self, nid: Nid) -> Option<u32> {
        (nid == self.external).then_some(0)
    }
    fn learning(&self) -> bool {
        false
    }
    fn learn(&mut self, _ext: Nid, _local: Nid) {}
    fn note(&mut self, what: Note) {
        if what == Note::Rewrote {
            self.rewrites += 1;
        }
    }
}

/// Rewrites the server-to-client byte stream of one connection, chunk by chunk.
pub struct Rewriter {
    tracker: Box<Tracker>,
    env: OneMapping,
    seq: u32,
}

/// Most parse steps for one chunk: far more than a 64 KiB read of the smallest units needs.
const MAX_STEPS: u32 = 1 << 17;

impl Rewriter {
    /// A rewriter for a connection the client opened, from the stream's first byte.
    pub fn new(external: Nid, local: Nid) -> Rewriter {
        Rewriter {
            tracker: Box::new(Tracker::new(Role::Active, 0, local.addr(), external)),
            env: OneMapping {
                external,
                rewrites: 0,
            },
            seq: 0,
        }
    }

    /// Rewrites the next `chunk` of the stream in place.
    pub fn rewrite(&mut self, chunk: &mut [u8]) {
        let len = chunk.len() as u32;
        segment::process(
            &mut self.tracker,
            self.seq,
            len,
            &mut VecPacket(chunk),
            &mut self.env,
            MAX_STEPS,
        );
        self.seq = self.seq.wrapping_add(len);
    }

    /// NIDs rewritten so far.
    pub fn rewrites(&self) -> u64 {
        self.env.rewrites
    }
}

/// Relays `opts.conns` connections, one after another's accept, each with two copy threads.
pub fn serve(opts: &RelayOpts) -> anyhow::Result<RelayReport> {
    let listener =
        TcpListener::bind(opts.listen).with_context(|| format!("listening on {}", opts.listen))?;
    let mut threads = Vec::new();
    for _ in 0..opts.conns {
        let (client, _) = listener.accept().context("accepting")?;
        let upstream = TcpStream::connect(opts.upstream)
            .with_context(|| format!("connecting to {}", opts.upstream))?;
        let opts = *opts;
        threads.push(std::thread::spawn(move || relay(client, upstream, &opts)));
    }
    let mut report = RelayReport::default();
    for t in threads {
        let (bytes, rewrites) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a relay thread panicked"))??;
        report.connections += 1;
        report.bytes += bytes;
        report.rewrites += rewrites;
    }
    report.cpu_ns = cpu_ns();
    Ok(report)
}

/// Copies client to server as it is, and server to client rewritten, until both are closed.
fn relay(client: TcpStream, upstream: TcpStream, opts: &RelayOpts) -> anyhow::Result<(u64, u64)> {
    for s in [&client, &upstream] {
        s.set_nodelay(true).context("setting TCP_NODELAY")?;
    }
    let up = {
        let (mut from, mut to) = (
            client.try_clone().context("cloning a socket")?,
            upstream.try_clone().context("cloning a socket")?,
        );
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        })
    };
    let (mut from, mut to) = (upstream, client);
    let mut rw = Rewriter::new(opts.external, opts.local);
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        rw.rewrite(&mut buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        bytes += n as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Both);
    up.join()
        .map_err(|_| anyhow::anyhow!("a relay thread panicked"))?;
    Ok((bytes, rw.rewrites()))
}

#[cfg(test)]
mod tests {
    use lnat_common::wire::{Endian, Proto};
    use lnat_testkit::{Cast, MapEnv, Rng};

    use super::*;

    fn nid(s: &str) -> Nid {
        s.parse().expect("nid")
    }

    /// Server-to-client streams fed to the relay in random chunks come out as the reference
    /// rewrite says, whatever the chunking.
    #[test]
    fn the_relay_rewrites_like_the_reference() {
        let cast = Cast {
            peer: nid("203.0.113.10@tcp"),
            external: nid("203.0.113.1@tcp"),
            local: nid("198.51.100.2@tcp"),
        };
        let mut rng = Rng::new(7);
        let mut rewritten = 0;
        for i in 0..200u64 {
            let proto = [Proto::V1, Proto::V2, Proto::V3, Proto::V4][(i % 4) as usize];
            let endian = if i % 3 == 0 {
                Endian::Big
            } else {
                Endian::Little
            };
            // Not the server's own NID: it shares its first three bytes with the NAT's, and a
            // NID cut after them is decided on the hint, in the relay as in the datapath.
            let dests = [cast.external, cast.local];
            let stream =
                lnat_testkit::random_stream(&mut rng, Role::Active, proto, endian, cast, &dests)
                    .bytes();
            let env = MapEnv {
                mappings: [(cast.external, 0)].into(),
                ..MapEnv::default()
            };
            let want = lnat_testkit::expected(&stream, Role::Active, cast.local.addr(), &env);
            let mut got = stream.clone();
            let mut rw = Rewriter::new(cast.external, cast.local);
            let mut at = 0;
            while at < got.len() {
                let n = (1 + rng.below(300) as usize).min(got.len() - at);
                rw.rewrite(&mut got[at..at + n]);
                at += n;
            }
            let diff = got.iter().zip(&want.bytes).position(|(a, b)| a != b);
            assert_eq!(diff, None, "stream {i} ({proto:?}, {endian:?})");
            assert_eq!(got.len(), want.bytes.len());
            rewritten += rw.rewrites();
        }
        assert!(rewritten > 500, "only {rewritten} NIDs rewritten");
    }

    /// A NID the relay was not given is left alone.
    #[test]
    fn other_nids_pass_untouched() {
        let cast = Cast {
            peer: nid("203.0.113.10@tcp"),
            external: nid("203.0.113.1@tcp"),
            local: nid("198.51.100.2@tcp"),
        };
        let stream = lnat_testkit::random_stream(
            &mut Rng::new(3),
            Role::Active,
            Proto::V3,
            Endian::Little,
            cast,
            &[cast.external],
        )
        .bytes();
        let mut got = stream.clone();
        let mut rw = Rewriter::new(nid("203.0.113.99@tcp"), cast.local);
        rw.rewrite(&mut got);
        assert_eq!(got, stream);
        assert_eq!(rw.rewrites(), 0);
    }
}
