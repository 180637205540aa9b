//! The emulated LNet server: the acceptor and passive socklnd rules of docs/protocol.md (Receiver rules), then a
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
    discovery::Node,
    lnet::{self, Msg, Wire},
    report::{Put, ServedConn, ServerReport},
    rpc_server::Session,
    workload::{self, Sizes},
};

pub use crate::rpc_server::RpcOpts;

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
    /// The server's own byte order (None: the peer's).
    pub endian: Option<Endian>,
    /// Break the protocol this way after three good PUTs, then close.
    pub corrupt: Option<Corrupt>,
    /// Send with IPv4 options (four NOPs), so headers are 24 bytes.
    pub ip_options: bool,
    /// Clear DF, so routers with a smaller MTU fragment.
    pub no_df: bool,
    /// Make each payload and digest it (false, for benchmarks: one payload per size is sent
    /// again and again, undigested, so the server's own work does not cap the rate).
    pub digest: bool,
    /// How a connection ends once its PUTs are written.
    pub end: Ending,
    /// Rpc mode (answer requests, send callbacks, run discovery) instead of sending `puts`.
    pub rpc: Option<RpcOpts>,
}

/// How the server ends a connection after its last write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Ending {
    /// Wait for the peer to close first (up to `hold`), as socklnd keeps a connection open.
    #[default]
    Hold,
    /// Shut its sending side at once (FIN right behind the last write, before it is
    /// acknowledged), then read ACKs until the peer closes.
    Shutdown,
    /// Reset (SO_LINGER 0) as soon as the peer has acknowledged every PUT, before it closes.
    Reset,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            listen: SocketAddr::from(([0, 0, 0, 0], wire::ACCEPTOR_PORT)),
            nid: Nid::ANY,
            accept: Accept::Secure,
            puts: 10,
            seed: 1,
            sizes: Sizes::Mixed,
            csum: false,
            noop_every: 0,
            chunk_max: 0,
            batch: 1,
            pace: Duration::ZERO,
            conns: 1,
            hold: Duration::from_secs(30),
            endian: None,
            corrupt: None,
            ip_options: false,
            no_df: false,
            digest: true,
            end: Ending::Hold,
            rpc: None,
        }
    }
}

/// Ways to break the protocol, to show lnat gives up cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Corrupt {
    /// A HELLO with a bad magic.
    HelloMagic,
    /// A HELLO with an unknown version.
    HelloVersion,
    /// A socklnd message of an unknown type.
    MsgType,
    /// A PUT longer than LNet allows.
    TooLong,
    /// Half a message, then FIN.
    Truncated,
    /// Half a message, then RST.
    Reset,
}

/// PUTs sent before a corruption.
const GOOD_BEFORE_CORRUPT: u64 = 3;

/// PUTs each peer (its NID and incarnation) has acknowledged, across its connections.
type Acked = Arc<Mutex<BTreeMap<(Nid, u64), BTreeSet<u64>>>>;

/// Listens on `opts.listen` and serves `opts.conns` connections, one thread each.
pub fn serve(opts: &ServerOpts) -> anyhow::Result<ServerReport> {
    let listen = || -> std::io::Result<TcpListener> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.bind(&opts.listen.into())?;
        // A backlog for thousands of clients dialling at once (std's 128 would overflow into
        // SYN cookies and resets, which are not what the tests are about).
        sock.listen(4096)?;
        Ok(sock.into())
    };
    let listener = listen().with_context(|| format!("listening on {}", opts.listen))?;
    serve_on(listener, opts)
}

/// Serves `opts.conns` connections from a listener bound by the caller (a test binds port 0
/// and learns the port before any client dials), and reports them.
pub fn serve_on(listener: TcpListener, opts: &ServerOpts) -> anyhow::Result<ServerReport> {
    let acked: Acked = Arc::default();
    // The server's LNet peers, across its connections (rpc mode's discovery).
    let node = Arc::new(Mutex::new(Node::new(
        opts.rpc.as_ref().is_some_and(|r| r.discovery),
    )));
    let mut threads = Vec::new();
    for _ in 0..opts.conns {
        let (stream, peer) = listener.accept().context("accepting")?;
        let (opts, acked, node) = (opts.clone(), acked.clone(), node.clone());
        threads.push(std::thread::spawn(move || {
            let mut conn = ServedConn {
                peer: peer.to_string(),
                ..ServedConn::default()
            };
            if let Err(e) = handle(stream, peer, &opts, &acked, &node, &mut conn)
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
    node: &Mutex<Node>,
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
    set_socket_options(w.stream(), opts)?;
    let (hello, peer_endian) = w.recv_hello()?;
    let endian = opts.endian.unwrap_or(peer_endian);
    conn.hello_dst_nid = hello.dst_nid.to_string();
    // Each client gets its own payloads (two clients behind one NAT share a NID but not their
    // HELLO's src_nid), the same on every connection it makes.
    let seed = workload::peer_seed(opts.seed, hello.src_nid);
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
    if let Some(c @ (Corrupt::HelloMagic | Corrupt::HelloVersion)) = opts.corrupt {
        let mut b = vec![0u8; reply.wire_len()];
        reply.encode(endian, &mut b);
        let (at, v) = if c == Corrupt::HelloMagic {
            (0, 0x1234_5678)
        } else {
            (4, 9)
        };
        endian.put_u32(&mut b, at, v);
        // HELLO and FIN in one segment (corked until the shutdown): the peer rejects the HELLO
        // at once and resets, and a FIN sent after that reset would never leave.
        cork(w.stream())?;
        w.send(&b)?;
        w.stream()
            .shutdown(std::net::Shutdown::Write)
            .context("sending FIN")?;
        return Ok(());
    }
    w.send_hello(&reply, endian)?;
    if let Some(rpc) = &opts.rpc {
        let session = Session {
            wire: w,
            proto: hello.proto,
            csum: opts.csum && hello.proto == Proto::V2,
            endian,
            me: opts.nid,
            peer: (peer_nid, peer_pid),
            seed,
            sizes: opts.sizes.clone(),
            hold: opts.hold,
            node,
        };
        let (served, rejected) = session.run(rpc);
        conn.rpc = Some(served);
        conn.rejected = rejected;
        return Ok(());
    }
    let client = (hello.src_nid, hello.src_incarnation);
    let done: BTreeSet<u64> = acked
        .lock()
        .map(|a| a.get(&client).cloned().unwrap_or_default())
        .unwrap_or_default();
    let reader = {
        let stream = w.stream().try_clone().context("cloning the socket")?;
        let (acked, proto, me) = (acked.clone(), hello.proto, opts.nid);
        std::thread::spawn(move || read_acks(stream, proto, endian, client, me, &acked))
    };
    let csum = opts.csum && hello.proto == Proto::V2;
    let mut pending = Vec::new();
    let mut queued = 0;
    let mut reused: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for index in (0..opts.puts).filter(|i| !done.contains(i)) {
        if opts.corrupt.is_some() && conn.sent.len() as u64 == GOOD_BEFORE_CORRUPT {
            let _ = w.send(&pending);
            if opts.corrupt == Some(Corrupt::Reset) {
                // A reset discards whatever the peer's TCP has not yet acknowledged, with or
                // without lnat; the good PUTs are seen through (their LNet ACKs) first, so that
                // the cut header is all the reset tests.
                let deadline = Instant::now() + opts.hold;
                let want = done.len() + GOOD_BEFORE_CORRUPT as usize;
                while Instant::now() < deadline
                    && acked
                        .lock()
                        .is_ok_and(|a| a.get(&client).map_or(0, BTreeSet::len) < want)
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            corrupt(&mut w, opts, hello.proto, endian, peer_nid, peer_pid)?;
            if matches!(opts.corrupt, Some(Corrupt::MsgType | Corrupt::TooLong)) {
                // A server stays up after its peer rejects a unit: exiting at once would reset
                // the peer while it still reads (and ACKs) the good PUTs before the bad one.
                let deadline = Instant::now() + opts.hold;
                while !reader.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            return Ok(());
        }
        let size = workload::size(&opts.sizes, seed, index);
        let (payload, digest) = if opts.digest {
            let p = workload::payload(seed, index, size);
            let d = workload::digest(&p);
            (p, d)
        } else {
            let p = reused
                .entry(size)
                .or_insert_with(|| workload::payload(seed, 0, size));
            (p.clone(), String::new())
        };
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
    if opts.end == Ending::Shutdown {
        let _ = w.stream().shutdown(std::net::Shutdown::Write);
    }
    // Wait for the peer to finish (it closes), for at most `hold`; a resetting server waits
    // only for its last ACK.
    let deadline = Instant::now() + opts.hold;
    let all_acked = || {
        acked
            .lock()
            .is_ok_and(|a| a.get(&client).map_or(0, BTreeSet::len) as u64 >= opts.puts)
    };
    let mut how = std::net::Shutdown::Both;
    while !reader.is_finished() && Instant::now() < deadline {
        if opts.end == Ending::Reset && all_acked() {
            reset(w.stream())?;
            // Only the reader is stopped (nothing goes on the wire); the RST leaves when the
            // last descriptor closes, on return.
            how = std::net::Shutdown::Read;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = w.stream().shutdown(how);
    if let Ok(Some(why)) = reader.join() {
        conn.rejected = Some(why);
    }
    Ok(())
}

/// Sets the socket option `level`/`name` of `stream` to `value`; `what` names it in errors.
fn set_option<T>(
    stream: &TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    what: &str,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `value` is valid for `size_of::<T>()` bytes, and the kernel only reads them.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setting {what}"));
    }
    Ok(())
}

/// Makes closing `stream` send a RST (SO_LINGER with a zero timeout).
fn reset(stream: &TcpStream) -> anyhow::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_option(
        stream,
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        &linger,
        "SO_LINGER",
    )
}

/// IPv4 options and DF, as asked.
fn set_socket_options(stream: &TcpStream, opts: &ServerOpts) -> anyhow::Result<()> {
    if opts.ip_options {
        // Four NOPs: a legal, meaningless option list that makes every IP header 24 bytes.
        let nops = [1u8, 1, 1, 1];
        set_option(
            stream,
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            &nops,
            "IP_OPTIONS",
        )?;
    }
    if opts.no_df {
        let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
        set_option(
            stream,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &dont,
            "IP_MTU_DISCOVER (clearing DF)",
        )?;
    }
    Ok(())
}

/// Holds what is written back (TCP_CORK) until the socket is shut down or uncorked.
fn cork(stream: &TcpStream) -> anyhow::Result<()> {
    let on: libc::c_int = 1;
    set_option(stream, libc::IPPROTO_TCP, libc::TCP_CORK, &on, "TCP_CORK")
}

/// Breaks the protocol as `opts.corrupt` says, then closes.
fn corrupt(
    w: &mut Wire,
    opts: &ServerOpts,
    proto: Proto,
    endian: Endian,
    peer: Nid,
    peer_pid: u32,
) -> anyhow::Result<()> {
    let put = |len: u32| {
        let hdr = lnet::header(
            peer,
            peer_pid,
            opts.nid,
            wire::PID_LUSTRE,
            LnetType::Put,
            99,
            len,
        );
        lnet::encode_lnet(proto, endian, hdr, Vec::new(), false)
    };
    // The bad unit and the bytes after it go in one write, so they arrive together: the peer
    // gives up with bytes unread, and its close is a reset.
    match opts.corrupt {
        Some(Corrupt::MsgType) => {
            let mut m = lnet::encode_noop(proto, endian);
            endian.put_u32(&mut m, wire::ksock::TYPE, 0xc5);
            m.extend_from_slice(&[0x5a; 200]);
            w.send(&m)?;
        }
        Some(Corrupt::TooLong) => {
            let mut m = put(0);
            let at = proto.ksock_len() + proto.lnet_hdr().payload_length;
            // LE in every byte order, like the whole LNet header.
            Endian::Little.put_u32(&mut m, at, 2 * wire::LNET_MTU);
            m.extend_from_slice(&[0x5a; 4096]);
            w.send(&m)?;
        }
        Some(Corrupt::Truncated) => {
            w.send(&put(0)[..30])?;
            w.stream()
                .shutdown(std::net::Shutdown::Write)
                .context("sending FIN")?;
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(Corrupt::Reset) => {
            w.send(&put(0)[..30])?;
            reset(w.stream())?;
        }
        _ => {}
    }
    Ok(())
}

/// Records the peer's ACKs until it closes; returns why it rejected a message, if it did (the
/// passive side of `lnet_parse`: a message for another NID on its net).
fn read_acks(
    stream: TcpStream,
    proto: Proto,
    endian: Endian,
    client: (Nid, u64),
    me: Nid,
    acked: &Acked,
) -> Option<String> {
    let mut w = Wire::new(stream, 0, 0).ok()?;
    while let Ok(msg) = w.recv_msg(proto, endian) {
        let Msg::Lnet { hdr, .. } = msg else { continue };
        if hdr.dest_nid != me {
            let why = format!(
                "lnet_parse(): src {}: Bad dest nid {} (should have been sent direct)",
                hdr.src_nid, hdr.dest_nid
            );
            eprintln!("{why}");
            let _ = w.stream().shutdown(std::net::Shutdown::Both);
            return Some(why);
        }
        if hdr.msg_type == LnetType::Ack as u32
            && let Ok(mut a) = acked.lock()
        {
            a.entry(client).or_default().insert(lnet::index_of(&hdr));
        }
    }
    None
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
            ..ServerOpts::default()
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
            digest: true,
            read_ahead: false,
            rpc: None,
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
            digest: true,
            read_ahead: false,
            rpc: None,
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
