//! The emulated LNet client: connects like `lnet_connect`, checks the server's HELLO like the
//! active side of `ksocknal_recv_hello`, and accepts messages by `lnet_parse`'s rule.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lnat_common::{
    nid::Nid,
    wire::{self, Endian, Hello, LnetType, Proto},
};
use socket2::{Domain, Socket, Type};

use crate::{
    lnet::{self, ChecksumError, Msg, Wire},
    report::{ClientReport, Put, RpcClient},
    rpc_client, workload,
};

pub use crate::rpc_client::RpcOpts;

/// How the client behaves.
#[derive(Clone, Debug)]
pub struct ClientOpts {
    /// The server's acceptor.
    pub server: SocketAddr,
    /// The NID the client dials.
    pub server_nid: Nid,
    /// The client's own NID.
    pub nid: Nid,
    /// socklnd version to speak.
    pub proto: Proto,
    /// Byte order to speak.
    pub endian: Endian,
    /// HELLO connection type.
    pub ctype: u32,
    /// PUTs to receive before closing.
    pub expect: u64,
    /// Longest the whole run may take.
    pub timeout: Duration,
    /// Reconnections allowed after a rejected or broken connection.
    pub reconnects: u32,
    /// Source port instead of the first free reserved one.
    pub src_port: Option<u16>,
    /// Digest every payload for the report (off for benchmarks, where SHA-256 caps the rate).
    pub digest: bool,
    /// Read in large blocks (benchmarks, where two reads per message cap the rate). Off, a
    /// rejected stream leaves unread bytes behind and closing resets the connection, as a
    /// kernel rejecting a message does.
    pub read_ahead: bool,
    /// Rpc mode (requests, replies, callbacks, discovery) instead of receiving `expect` PUTs.
    pub rpc: Option<RpcOpts>,
}

/// How one connection ended.
enum End {
    /// Everything expected arrived.
    Done,
    /// The connection failed: the kernel-style reason, and the report's status for it.
    Failed(String, Status),
}

/// Why a connection failed, as the report's `status` says it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    /// The client dropped it by the kernel's rules (HELLO check, lnet_parse, checksum).
    Rejected,
    /// The server refused it: nothing listens, or it closed before its HELLO.
    Refused,
    /// The deadline passed while waiting.
    Timeout,
    /// Anything else (a reset mid-stream, a malformed frame).
    Error,
}

impl Status {
    /// The report's word for it.
    fn as_str(self) -> &'static str {
        match self {
            Status::Rejected => "rejected",
            Status::Refused => "refused",
            Status::Timeout => "timeout",
            Status::Error => "error",
        }
    }
}

/// The kind of the I/O error behind `e`, if there is one.
fn io_kind(e: &anyhow::Error) -> Option<ErrorKind> {
    e.chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
}

/// True when `e` is a read that ran into the deadline.
pub(crate) fn timed_out(e: &anyhow::Error) -> bool {
    matches!(
        io_kind(e),
        Some(ErrorKind::WouldBlock | ErrorKind::TimedOut)
    )
}

/// True when `e` says the other side closed or reset the connection.
fn closed_by_peer(e: &anyhow::Error) -> bool {
    matches!(
        io_kind(e),
        Some(
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        )
    )
}

/// Runs started by this process so far.
static RUNS: AtomicU64 = AtomicU64::new(0);

/// Runs the client and reports what it saw.
pub fn run(opts: &ClientOpts) -> ClientReport {
    let deadline = Instant::now() + opts.timeout;
    // Each run is a peer of its own: one incarnation, kept across its reconnections, so a
    // server resending what a peer has not acknowledged tells apart runs sharing a NID.
    let incarnation = 0x18eb_1e4a_51f6_4e1b + RUNS.fetch_add(1, Ordering::Relaxed);
    let mut report = ClientReport {
        role: "client".into(),
        ..ClientReport::default()
    };
    let mut received: BTreeMap<u64, Put> = BTreeMap::new();
    loop {
        if Instant::now() >= deadline {
            report.status = Status::Timeout.as_str().into();
            report.reason = match (&opts.rpc, &report.rpc) {
                (Some(want), Some(got)) => format!(
                    "{} of {} replies and {} of {} callbacks in {:?}",
                    got.replies.len(),
                    want.requests,
                    got.callbacks.len(),
                    want.callbacks,
                    opts.timeout
                ),
                _ => format!(
                    "{} of {} PUTs in {:?}",
                    received.len(),
                    opts.expect,
                    opts.timeout
                ),
            };
            break;
        }
        let end = match connect(opts) {
            Ok(stream) => {
                report.connections += 1;
                report.local_port = stream.local_addr().map_or(0, |a| a.port());
                session(
                    stream,
                    opts,
                    incarnation,
                    deadline,
                    &mut report,
                    &mut received,
                )
            }
            Err(e) if io_kind(&e) == Some(ErrorKind::ConnectionRefused) => End::Failed(
                format!(
                    "Connection to {} at host {} was refused: check that Lustre is running on \
                     that node.",
                    opts.server_nid, opts.server
                ),
                Status::Refused,
            ),
            Err(e) => End::Failed(format!("{e:#}"), Status::Error),
        };
        match end {
            End::Done => {
                report.status = "ok".into();
                report.reason.clear();
                break;
            }
            End::Failed(why, status) => {
                eprintln!("{why}");
                if status == Status::Timeout {
                    // The deadline check above reports how far the run got.
                    continue;
                }
                report.failures += 1;
                report.reason = why;
                report.status = status.as_str().into();
                if report.failures > opts.reconnects {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    report.received = received.into_values().collect();
    report
}

/// Runs `n` clients at once (each its own connections), and reports them together: ok when
/// all are, with every PUT any of them received (they receive the same ones; an error if two
/// received one differently).
pub fn run_many(opts: &ClientOpts, n: usize) -> ClientReport {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let o = opts.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || run(&o))
        })
        .collect();
    let mut all = ClientReport {
        role: "client".into(),
        status: "ok".into(),
        ..ClientReport::default()
    };
    let mut received: BTreeMap<u64, Put> = BTreeMap::new();
    for t in threads {
        let r = match t.map(|h| h.join()) {
            Ok(Ok(r)) => r,
            _ => ClientReport {
                status: "error".into(),
                reason: "a client thread failed".into(),
                ..ClientReport::default()
            },
        };
        all.connections += r.connections;
        all.failures += r.failures;
        if r.status == "ok" {
            all.sessions_ok += 1;
        } else if all.status == "ok" {
            all.status = r.status;
            all.reason = r.reason;
        }
        all.server_hello_dst_nid = r.server_hello_dst_nid;
        if r.first_put_ns != 0 && (all.first_put_ns == 0 || r.first_put_ns < all.first_put_ns) {
            all.first_put_ns = r.first_put_ns;
        }
        all.last_put_ns = all.last_put_ns.max(r.last_put_ns);
        all.timed_puts += r.timed_puts;
        all.timed_bytes += r.timed_bytes;
        for nid in r.bad_dest_nids {
            if !all.bad_dest_nids.contains(&nid) {
                all.bad_dest_nids.push(nid);
            }
        }
        for p in r.received {
            // They receive the same PUTs: one that differs between them was altered on the way.
            if received.get(&p.index).is_some_and(|q| *q != p) {
                all.status = Status::Error.as_str().into();
                all.reason = format!("PUT {} differs between two clients", p.index);
            }
            received.insert(p.index, p);
        }
    }
    all.received = received.into_values().collect();
    all
}

/// Connects from a reserved port, 1023 down to 512, as `lnet_connect` does.
fn connect(opts: &ClientOpts) -> anyhow::Result<TcpStream> {
    let ports: Vec<u16> = match opts.src_port {
        // Any port: a port whose four-tuple is still in TIME_WAIT is refused at connect, and
        // the next bind picks another (thousands of connections a second, in the bench).
        Some(0) => vec![0; 64],
        Some(p) => vec![p],
        None => (wire::MIN_RESERVED_PORT..=wire::MAX_RESERVED_PORT)
            .rev()
            .collect(),
    };
    for port in ports {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).context("creating a socket")?;
        sock.set_reuse_address(true)
            .context("setting SO_REUSEADDR")?;
        let local = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        match sock.bind(&local.into()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).context("binding a reserved port"),
        }
        match sock.connect_timeout(&opts.server.into(), Duration::from_secs(5)) {
            Ok(()) => return Ok(sock.into()),
            // The same four-tuple may still be in TIME_WAIT: try the next port.
            Err(e) if matches!(e.kind(), ErrorKind::AddrNotAvailable | ErrorKind::AddrInUse) => {
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", opts.server)),
        }
    }
    bail!("no reserved port free to connect from")
}

fn session(
    stream: TcpStream,
    opts: &ClientOpts,
    incarnation: u64,
    deadline: Instant,
    report: &mut ClientReport,
    received: &mut BTreeMap<u64, Put>,
) -> End {
    match exchange(stream, opts, incarnation, deadline, report, received) {
        Ok(end) => end,
        Err(e) if e.downcast_ref::<ChecksumError>().is_some() => {
            End::Failed(format!("{e}"), Status::Rejected)
        }
        Err(e) if timed_out(&e) => End::Failed(format!("{e:#}"), Status::Timeout),
        Err(e) => End::Failed(format!("{e:#}"), Status::Error),
    }
}

fn exchange(
    stream: TcpStream,
    opts: &ClientOpts,
    incarnation: u64,
    deadline: Instant,
    report: &mut ClientReport,
    received: &mut BTreeMap<u64, Put>,
) -> anyhow::Result<End> {
    let mut clock = ReadClock::new(stream.try_clone().context("cloning the socket")?, deadline);
    let mut w = Wire::new(stream, 0, 0)?;
    if opts.read_ahead {
        w = w.read_ahead();
    }
    let hello = Hello {
        proto: opts.proto,
        src_nid: opts.nid,
        dst_nid: if opts.proto == Proto::V1 {
            Nid::ANY
        } else {
            opts.server_nid
        },
        src_pid: wire::PID_LUSTRE,
        dst_pid: 0,
        src_incarnation: incarnation,
        dst_incarnation: 0,
        ctype: opts.ctype,
        nips: 0,
    };
    let handshake = w
        .send_connreq(opts.server_nid, opts.proto == Proto::V4, opts.endian)
        .and_then(|()| w.send_hello(&hello, opts.endian))
        .and_then(|()| clock.by(|| w.recv_hello()));
    let (theirs, endian) = match handshake {
        Ok(h) => h,
        // The acceptor refuses by closing: the kernel reports it as a reset.
        Err(e) if closed_by_peer(&e) => {
            return Ok(End::Failed(
                format!(
                    "Connection to {} at host {} was reset: is it running a compatible version \
                     of Lustre and is {} one of its NIDs?",
                    opts.server_nid, opts.server, opts.server_nid
                ),
                Status::Refused,
            ));
        }
        Err(e) => return Err(e.context(format!("reading the HELLO from {}", opts.server))),
    };
    // The active side checks who answered, not what it calls us.
    if theirs.src_nid != opts.server_nid || theirs.src_pid != wire::PID_LUSTRE {
        return Ok(End::Failed(
            format!(
                "Connected successfully to {}-{} on host {}, but they claimed they were {}-{}",
                opts.server_nid,
                wire::PID_LUSTRE,
                opts.server.ip(),
                theirs.src_nid,
                theirs.src_pid
            ),
            Status::Rejected,
        ));
    }
    report.server_hello_dst_nid = theirs.dst_nid.to_string();
    let proto = theirs.proto;
    if let Some(rpc) = &opts.rpc {
        let mut conn = rpc_client::Conn {
            wire: &mut w,
            clock: &mut clock,
            proto,
            csum: rpc.csum && proto == Proto::V2,
            endian,
            me: opts.nid,
            server: opts.server_nid,
        };
        let mut r = RpcClient::default();
        let outcome = rpc_client::session(&mut conn, rpc, &mut r);
        report.rpc = Some(r);
        return match outcome? {
            rpc_client::Outcome::Done => Ok(End::Done),
            rpc_client::Outcome::Rejected(why) => Ok(End::Failed(why, Status::Rejected)),
        };
    }
    while (received.len() as u64) < opts.expect {
        let msg = match clock.by(|| w.recv_msg(proto, endian)) {
            Ok(m) => m,
            Err(e) if e.downcast_ref::<ChecksumError>().is_some() || timed_out(&e) => {
                return Err(e);
            }
            Err(e) => {
                return Ok(End::Failed(
                    format!("connection lost: {e:#}"),
                    Status::Error,
                ));
            }
        };
        let Msg::Lnet { hdr, payload } = msg else {
            continue;
        };
        // lnet_parse: a message for another NID on our own net should have been sent direct.
        if hdr.dest_nid != opts.nid {
            let nid = hdr.dest_nid.to_string();
            if !report.bad_dest_nids.contains(&nid) {
                report.bad_dest_nids.push(nid);
            }
            return Ok(End::Failed(
                format!(
                    "lnet_parse(): {}, src {}: Bad dest nid {} (should have been sent direct)",
                    opts.server_nid, hdr.src_nid, hdr.dest_nid
                ),
                Status::Rejected,
            ));
        }
        let t = LnetType::from_u32(hdr.msg_type);
        if matches!(t, Some(LnetType::Ack | LnetType::Get)) && hdr.payload_length > 0 {
            return Ok(End::Failed(
                format!("bad {t:?} payload {} (0 expected)", hdr.payload_length),
                Status::Rejected,
            ));
        }
        if t != Some(LnetType::Put) {
            continue;
        }
        let index = lnet::index_of(&hdr);
        // CLOCK_MONOTONIC: one clock for every process on the host, so the reports of several
        // clients can be put on one time line.
        let now = lnat::datapath::now_ns();
        if report.first_put_ns == 0 {
            report.first_put_ns = now;
        } else {
            report.timed_puts += 1;
            report.timed_bytes += payload.len() as u64;
        }
        report.last_put_ns = now;
        received.insert(
            index,
            Put {
                index,
                size: payload.len() as u32,
                digest: if opts.digest {
                    workload::digest(&payload)
                } else {
                    String::new()
                },
            },
        );
        let ack = lnet::header(
            opts.server_nid,
            wire::PID_LUSTRE,
            opts.nid,
            wire::PID_LUSTRE,
            LnetType::Ack,
            index,
            0,
        );
        w.send_lnet(proto, endian, ack, Vec::new(), false)?;
    }
    Ok(End::Done)
}

/// Reads that end by a deadline: the socket's read timeout is kept at the time left, renewed
/// every [`ReadClock::RENEW`] rather than before every read, which would double the system
/// calls of a stream of small messages. A read may thus overrun the deadline by that much.
pub(crate) struct ReadClock {
    stream: TcpStream,
    deadline: Instant,
    renewed: Option<Instant>,
}

impl ReadClock {
    const RENEW: Duration = Duration::from_millis(100);

    fn new(stream: TcpStream, deadline: Instant) -> ReadClock {
        ReadClock {
            stream,
            deadline,
            renewed: None,
        }
    }

    /// Runs `read` with the read timeout set to the time left.
    pub(crate) fn by<T>(&mut self, read: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        let now = Instant::now();
        if self.renewed.is_none_or(|t| now - t >= Self::RENEW) {
            let left = self
                .deadline
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(left))
                .context("setting a read timeout")?;
            self.renewed = Some(now);
        }
        read()
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    const SERVER_NID: &str = "203.0.113.10@tcp";
    const CLIENT_NID: &str = "198.51.100.2@tcp";

    fn nid(s: &str) -> Nid {
        s.parse().expect("nid")
    }

    /// Client options against `server` on loopback, from an ephemeral port.
    fn opts(server: SocketAddr, expect: u64) -> ClientOpts {
        ClientOpts {
            server,
            server_nid: nid(SERVER_NID),
            nid: nid(CLIENT_NID),
            proto: Proto::V3,
            endian: Endian::Little,
            ctype: 1,
            expect,
            timeout: Duration::from_secs(10),
            reconnects: 0,
            src_port: Some(0),
            digest: true,
            read_ahead: false,
            rpc: None,
        }
    }

    /// A scripted server on loopback: it reads the connection request and the client's HELLO,
    /// then `script` answers.
    fn fake_server(
        script: impl FnOnce(Wire, Hello) + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut w = Wire::new(s, 0, 0).expect("wire");
            w.recv_connreq().expect("connreq");
            let (hello, _) = w.recv_hello().expect("hello");
            script(w, hello);
        });
        (addr, t)
    }

    /// The HELLO a server named `src` sends back.
    fn reply(src: &str) -> Hello {
        Hello {
            proto: Proto::V3,
            src_nid: nid(src),
            dst_nid: nid(CLIENT_NID),
            src_pid: wire::PID_LUSTRE,
            dst_pid: 0,
            src_incarnation: 1,
            dst_incarnation: 0,
            ctype: 1,
            nips: 0,
        }
    }

    fn put(dest: &str, index: u64, payload: &[u8]) -> Vec<u8> {
        let hdr = lnet::header(
            nid(dest),
            wire::PID_LUSTRE,
            nid(SERVER_NID),
            wire::PID_LUSTRE,
            LnetType::Put,
            index,
            payload.len() as u32,
        );
        lnet::encode_lnet(Proto::V3, Endian::Little, hdr, payload.to_vec(), false)
    }

    #[test]
    fn puts_for_us_are_received_and_acked() {
        let (addr, server) = fake_server(|mut w, hello| {
            assert_eq!(hello.src_nid, nid(CLIENT_NID));
            assert_eq!(hello.dst_nid, nid(SERVER_NID));
            w.send_hello(&reply(SERVER_NID), Endian::Little)
                .expect("hello");
            w.send(&lnet::encode_noop(Proto::V3, Endian::Little))
                .expect("noop");
            for index in [4, 9] {
                w.send(&put(CLIENT_NID, index, b"payload")).expect("put");
                let Msg::Lnet { hdr, payload } =
                    w.recv_msg(Proto::V3, Endian::Little).expect("ack")
                else {
                    panic!("a NOOP instead of an ACK");
                };
                assert_eq!(hdr.msg_type, LnetType::Ack as u32);
                assert_eq!(hdr.dest_nid, nid(SERVER_NID));
                assert_eq!(lnet::index_of(&hdr), index);
                assert!(payload.is_empty());
            }
        });
        let report = run(&opts(addr, 2));
        server.join().expect("server");
        assert_eq!(report.status, "ok", "{}", report.reason);
        assert_eq!(report.server_hello_dst_nid, CLIENT_NID);
        let want: Vec<Put> = [4, 9]
            .map(|index| Put {
                index,
                size: 7,
                digest: workload::digest(b"payload"),
            })
            .into();
        assert_eq!(report.received, want);
    }

    #[test]
    fn a_put_for_another_nid_on_our_net_is_rejected() {
        let (addr, server) = fake_server(|mut w, _| {
            w.send_hello(&reply(SERVER_NID), Endian::Little)
                .expect("hello");
            w.send(&put("203.0.113.1@tcp", 0, b"x")).expect("put");
        });
        let report = run(&opts(addr, 1));
        server.join().expect("server");
        assert_eq!(report.status, "rejected");
        assert!(
            report
                .reason
                .contains("Bad dest nid 203.0.113.1@tcp (should have been sent direct)"),
            "{}",
            report.reason
        );
        assert!(report.received.is_empty());
    }

    #[test]
    fn a_server_claiming_another_nid_is_rejected() {
        let (addr, server) = fake_server(|mut w, _| {
            w.send_hello(&reply("203.0.113.11@tcp"), Endian::Little)
                .expect("hello");
        });
        let report = run(&opts(addr, 1));
        server.join().expect("server");
        assert_eq!(report.status, "rejected");
        assert!(
            report
                .reason
                .contains("but they claimed they were 203.0.113.11@tcp-12345"),
            "{}",
            report.reason
        );
    }

    #[test]
    fn a_corrupt_checksum_is_rejected() {
        let (addr, server) = fake_server(|mut w, _| {
            let mut hello = reply(SERVER_NID);
            hello.proto = Proto::V2;
            w.send_hello(&hello, Endian::Little).expect("hello");
            let hdr = lnet::header(
                nid(CLIENT_NID),
                wire::PID_LUSTRE,
                nid(SERVER_NID),
                wire::PID_LUSTRE,
                LnetType::Put,
                0,
                3,
            );
            let mut msg = lnet::encode_lnet(Proto::V2, Endian::Little, hdr, vec![1, 2, 3], true);
            let last = msg.len() - 1;
            msg[last] ^= 0x40;
            w.send(&msg).expect("put");
        });
        let report = run(&opts(addr, 1));
        server.join().expect("server");
        assert_eq!(report.status, "rejected");
        assert!(
            report.reason.starts_with("Checksum error"),
            "{}",
            report.reason
        );
    }

    #[test]
    fn a_server_closing_before_its_hello_refused_us() {
        let (addr, server) = fake_server(|w, _| drop(w));
        let report = run(&opts(addr, 1));
        server.join().expect("server");
        assert_eq!(report.status, "refused", "{}", report.reason);
        assert!(report.reason.contains("was reset"), "{}", report.reason);
    }

    #[test]
    fn nothing_listening_is_refused() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let report = run(&opts(addr, 1));
        assert_eq!(report.status, "refused", "{}", report.reason);
        assert_eq!(report.connections, 0);
    }

    #[test]
    fn a_silent_server_times_out() {
        let (addr, server) = fake_server(|mut w, _| {
            w.send_hello(&reply(SERVER_NID), Endian::Little)
                .expect("hello");
            // Holds the connection until the client gives up.
            let _ = w.recv(1);
        });
        let mut o = opts(addr, 1);
        o.timeout = Duration::from_millis(500);
        let report = run(&o);
        server.join().expect("server");
        assert_eq!(report.status, "timeout", "{}", report.reason);
        assert_eq!(report.reason, "0 of 1 PUTs in 500ms");
    }
}
