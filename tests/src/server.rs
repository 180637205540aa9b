//! The emulated LNet server: the acceptor and passive socklnd rules of lnet-wire.md, then a
//! stream of PUTs to each peer.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lnat_common::{
    nid::Nid,
    wire::{self, Endian, Hello, LnetType, Proto},
};

use crate::{
    lnet::{self, Msg, Wire},
    report::{Put, ServedConn, ServerReport},
    workload::{self, Sizes},
};

/// The acceptor's `accept` module parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Any source port.
    All,
    /// Only reserved source ports (the kernel's default).
    Secure,
}

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The server's NID.
    pub nid: Nid,
    /// The acceptor rule.
    pub accept: Accept,
    /// PUTs per peer.
    pub puts: u64,
    /// Seed of sizes and payloads.
    pub seed: u64,
    /// PUT sizes.
    pub sizes: Sizes,
    /// Checksum messages (V2 only, as socklnd's `enable_csum`).
    pub csum: bool,
    /// A NOOP after every this many PUTs (0: never).
    pub noop_every: u64,
    /// Write frames in random chunks of at most this many bytes (0: whole).
    pub chunk_max: usize,
    /// Messages per write (1: one write each), as socklnd does with a backed-up queue.
    pub batch: usize,
    /// Pause after each write, to stretch a transfer over time.
    pub pace: Duration,
    /// Connections to serve before exiting.
    pub conns: u32,
    /// Longest to keep a connection once its PUTs are sent.
    pub hold: Duration,
}

/// PUTs each peer NID has acknowledged, across its connections.
type Acked = Arc<Mutex<BTreeMap<Nid, BTreeSet<u64>>>>;

/// Listens on `opts.listen` and serves `opts.conns` connections, one thread each.
pub fn serve(opts: &ServerOpts) -> anyhow::Result<ServerReport> {
    let listener =
        TcpListener::bind(opts.listen).with_context(|| format!("listening on {}", opts.listen))?;
    serve_on(listener, opts)
}

/// Serves `opts.conns` connections from a listener bound by the caller (a test binds port 0
/// and learns the port before any client dials), and reports them.
pub fn serve_on(listener: TcpListener, opts: &ServerOpts) -> anyhow::Result<ServerReport> {
    let acked: Acked = Arc::default();
    let mut threads = Vec::new();
    for _ in 0..opts.conns {
        let (stream, peer) = listener.accept().context("accepting")?;
        let (opts, acked) = (opts.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            let mut conn = ServedConn {
                peer: peer.to_string(),
                ..ServedConn::default()
            };
            if let Err(e) = handle(stream, peer, &opts, &acked, &mut conn)
                && conn.refused.is_none()
            {
                conn.refused = Some(format!("{e:#}"));
            }
            conn
        }));
    }
    let connections = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_default())
        .collect();
    Ok(ServerReport {
        role: "server".into(),
        connections,
    })
}

fn refuse(conn: &mut ServedConn, why: String) -> anyhow::Result<()> {
    eprintln!("{why}");
    conn.refused = Some(why.clone());
    bail!(why)
}

fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    opts: &ServerOpts,
    acked: &Acked,
    conn: &mut ServedConn,
) -> anyhow::Result<()> {
    if opts.accept == Accept::Secure && peer.port() > wire::MAX_RESERVED_PORT {
        return refuse(
            conn,
            format!(
                "Refusing connection from {}: insecure port {}",
                peer.ip(),
                peer.port()
            ),
        );
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .context("setting a read timeout")?;
    let mut w = Wire::new(stream, opts.chunk_max, opts.seed ^ peer.port() as u64)?;
    let req = w.recv_connreq()?;
    if req.nid != opts.nid {
        return refuse(
            conn,
            format!(
                "Refusing connection from {} for {}: No matching NI",
                peer.ip(),
                req.nid
            ),
        );
    }
    let (hello, endian) = w.recv_hello()?;
    let IpAddr::V4(ip) = peer.ip() else {
        bail!("IPv6 peer")
    };
    // ksocknal_recv_hello, passive side: a peer on an unreserved port is a userspace process,
    // known by its socket address on our net.
    let (peer_nid, peer_pid) = if peer.port() > wire::MAX_RESERVED_PORT {
        (
            opts.nid.with_addr(u32::from(ip)),
            wire::PID_USERFLAG | peer.port() as u32,
        )
    } else {
        (hello.src_nid, hello.src_pid)
    };
    conn.peer_nid = peer_nid.to_string();
    conn.peer_pid = peer_pid;
    conn.proto = hello.proto as u8;
    let ctype = match hello.ctype {
        2 => 3,
        3 => 2,
        c => c,
    };
    let reply = Hello {
        proto: hello.proto,
        src_nid: opts.nid,
        dst_nid: peer_nid,
        src_pid: wire::PID_LUSTRE,
        dst_pid: peer_pid,
        src_incarnation: opts.seed.wrapping_mul(31).wrapping_add(peer.port() as u64),
        dst_incarnation: hello.src_incarnation,
        ctype,
        nips: 0,
    };
    w.send_hello(&reply, endian)?;
    let done: BTreeSet<u64> = acked
        .lock()
        .map(|a| a.get(&peer_nid).cloned().unwrap_or_default())
        .unwrap_or_default();
    let reader = {
        let stream = w.stream().try_clone().context("cloning the socket")?;
        let (acked, proto) = (acked.clone(), hello.proto);
        std::thread::spawn(move || read_acks(stream, proto, endian, peer_nid, &acked))
    };
    let csum = opts.csum && hello.proto == Proto::V2;
    let mut pending = Vec::new();
    let mut queued = 0;
    for index in (0..opts.puts).filter(|i| !done.contains(i)) {
        let size = workload::size(&opts.sizes, opts.seed, index);
        let payload = workload::payload(opts.seed, index, size);
        let digest = workload::digest(&payload);
        let hdr = lnet::header(
            peer_nid,
            peer_pid,
            opts.nid,
            wire::PID_LUSTRE,
            LnetType::Put,
            index,
            size,
        );
        pending.extend(lnet::encode_lnet(hello.proto, endian, hdr, payload, csum));
        conn.sent.push(Put {
            index,
            size,
            digest,
        });
        if opts.noop_every > 0 && (index + 1) % opts.noop_every == 0 && hello.proto != Proto::V1 {
            pending.extend(lnet::encode_noop(hello.proto, endian));
        }
        queued += 1;
        if queued >= opts.batch.max(1) {
            if w.send(&pending).is_err() {
                break;
            }
            pending.clear();
            queued = 0;
            std::thread::sleep(opts.pace);
        }
    }
    if !pending.is_empty() {
        let _ = w.send(&pending);
    }
    // Wait for the peer to finish (it closes), for at most `hold`.
    let deadline = Instant::now() + opts.hold;
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = w.stream().shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    Ok(())
}

/// Records the peer's ACKs until it closes.
fn read_acks(stream: TcpStream, proto: Proto, endian: Endian, peer: Nid, acked: &Acked) {
    let Ok(mut w) = Wire::new(stream, 0, 0) else {
        return;
    };
    while let Ok(msg) = w.recv_msg(proto, endian) {
        if let Msg::Lnet { hdr, .. } = msg
            && hdr.msg_type == LnetType::Ack as u32
            && let Ok(mut a) = acked.lock()
        {
            a.entry(peer).or_default().insert(lnet::index_of(&hdr));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{self, ClientOpts};

    fn nid(s: &str) -> Nid {
        s.parse().expect("nid")
    }

    /// Server options for `puts` PUTs on loopback.
    fn opts(accept: Accept, puts: u64, sizes: Sizes) -> ServerOpts {
        ServerOpts {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            nid: nid("127.0.0.1@tcp"),
            accept,
            puts,
            seed: 11,
            sizes,
            csum: true,
            noop_every: 3,
            chunk_max: 0,
            batch: 1,
            pace: Duration::ZERO,
            conns: 1,
            hold: Duration::from_secs(10),
        }
    }

    /// Runs the server in a thread and a client with NID `client_nid` against it.
    fn exchange(
        server: ServerOpts,
        client_nid: &str,
        proto: Proto,
    ) -> (crate::report::ClientReport, ServerReport) {
        let listener = TcpListener::bind(server.listen).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let expect = server.puts;
        let nid = server.nid;
        let t = std::thread::spawn(move || serve_on(listener, &server).expect("serve"));
        let report = client::run(&ClientOpts {
            server: addr,
            server_nid: nid,
            nid: client_nid.parse().expect("nid"),
            proto,
            endian: Endian::Little,
            ctype: 2,
            expect,
            timeout: Duration::from_secs(20),
            reconnects: 0,
            src_port: Some(0),
        });
        (report, t.join().expect("server thread"))
    }

    /// A client from an unreserved port is a userspace peer, named by its socket address: here
    /// 127.0.0.1@tcp, which it is, so it takes every PUT.
    #[test]
    fn a_userspace_peer_named_by_its_address_receives_everything() {
        for proto in [Proto::V1, Proto::V2, Proto::V3, Proto::V4] {
            let (client, served) = exchange(
                opts(Accept::All, 12, Sizes::List(vec![0, 1, 4096, 70_001])),
                "127.0.0.1@tcp",
                proto,
            );
            assert_eq!(client.status, "ok", "{proto:?}: {}", client.reason);
            assert_eq!(client.role, "client");
            assert_eq!(served.role, "server");
            let conn = &served.connections[0];
            assert_eq!(conn.refused, None);
            assert_eq!(conn.proto, proto as u8);
            assert_eq!(conn.peer_nid, "127.0.0.1@tcp");
            assert_eq!(
                conn.peer_pid,
                wire::PID_USERFLAG | u32::from(client.local_port)
            );
            // A V1 HELLO has no dst_nid.
            let dst = if proto == Proto::V1 {
                "<?>"
            } else {
                "127.0.0.1@tcp"
            };
            assert_eq!(client.server_hello_dst_nid, dst);
            assert_eq!(client.received, conn.sent);
            assert_eq!(conn.sent.len(), 12);
        }
    }

    /// The same peer claiming another NID is addressed by its socket address anyway, and
    /// refuses what it receives: the NAT case.
    #[test]
    fn a_userspace_peer_with_another_nid_rejects_the_puts() {
        let (client, served) = exchange(
            opts(Accept::All, 3, Sizes::Small),
            "198.51.100.2@tcp",
            Proto::V3,
        );
        assert_eq!(client.status, "rejected");
        assert!(
            client.reason.contains("Bad dest nid 127.0.0.1@tcp"),
            "{}",
            client.reason
        );
        assert_eq!(client.server_hello_dst_nid, "127.0.0.1@tcp");
        assert_eq!(served.connections[0].peer_nid, "127.0.0.1@tcp");
    }

    #[test]
    fn the_secure_acceptor_refuses_unreserved_ports() {
        let (client, served) = exchange(
            opts(Accept::Secure, 3, Sizes::Zero),
            "127.0.0.1@tcp",
            Proto::V3,
        );
        assert_eq!(client.status, "refused", "{}", client.reason);
        let why = served.connections[0].refused.clone().unwrap_or_default();
        assert!(
            why.starts_with("Refusing connection from 127.0.0.1: insecure port"),
            "{why}"
        );
    }

    #[test]
    fn the_acceptor_refuses_a_request_for_another_nid() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            serve_on(listener, &opts(Accept::All, 1, Sizes::Zero)).expect("serve")
        });
        let client = client::run(&ClientOpts {
            server: addr,
            server_nid: nid("127.0.0.2@tcp"),
            nid: nid("127.0.0.1@tcp"),
            proto: Proto::V3,
            endian: Endian::Big,
            ctype: 1,
            expect: 1,
            timeout: Duration::from_secs(10),
            reconnects: 0,
            src_port: Some(0),
        });
        let served = t.join().expect("server thread");
        assert_eq!(client.status, "refused", "{}", client.reason);
        let why = served.connections[0].refused.clone().unwrap_or_default();
        assert_eq!(
            why,
            "Refusing connection from 127.0.0.1 for 127.0.0.2@tcp: No matching NI"
        );
    }
}
