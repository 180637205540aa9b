//! The emulated LNet client: connects like `lnet_connect`, checks the server's HELLO like the
//! active side of `ksocknal_recv_hello`, and accepts messages by `lnet_parse`'s rule.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
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
    report::{ClientReport, Put},
    workload,
};

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
}

/// How one connection ended.
enum End {
    /// Everything expected arrived.
    Done,
    /// The connection failed; the reason, and whether it was a rejection by the kernel's rules.
    Failed(String, bool),
}

/// Runs the client and reports what it saw.
pub fn run(opts: &ClientOpts) -> ClientReport {
    let deadline = Instant::now() + opts.timeout;
    let mut report = ClientReport::default();
    let mut received: BTreeMap<u64, Put> = BTreeMap::new();
    loop {
        if Instant::now() >= deadline {
            report.status = "timeout".into();
            report.reason = format!(
                "{} of {} PUTs in {:?}",
                received.len(),
                opts.expect,
                opts.timeout
            );
            break;
        }
        let stream = match connect(opts) {
            Ok(s) => s,
            Err(e) => {
                report.status = "error".into();
                report.reason = format!("{e:#}");
                break;
            }
        };
        report.connections += 1;
        report.local_port = stream.local_addr().map_or(0, |a| a.port());
        match session(stream, opts, deadline, &mut report, &mut received) {
            End::Done => {
                report.status = "ok".into();
                report.reason.clear();
                break;
            }
            End::Failed(why, rejected) => {
                eprintln!("{why}");
                report.failures += 1;
                report.reason = why;
                report.status = if rejected { "rejected" } else { "error" }.into();
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

/// Connects from a reserved port, 1023 down to 512, as `lnet_connect` does.
fn connect(opts: &ClientOpts) -> anyhow::Result<TcpStream> {
    let ports: Vec<u16> = match opts.src_port {
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
    deadline: Instant,
    report: &mut ClientReport,
    received: &mut BTreeMap<u64, Put>,
) -> End {
    match exchange(stream, opts, deadline, report, received) {
        Ok(end) => end,
        Err(e) if e.downcast_ref::<ChecksumError>().is_some() => End::Failed(format!("{e}"), true),
        Err(e) => End::Failed(format!("{e:#}"), false),
    }
}

fn exchange(
    stream: TcpStream,
    opts: &ClientOpts,
    deadline: Instant,
    report: &mut ClientReport,
    received: &mut BTreeMap<u64, Put>,
) -> anyhow::Result<End> {
    let clock = stream.try_clone().context("cloning the socket")?;
    let mut w = Wire::new(stream, 0, 0)?;
    w.send_connreq(opts.server_nid, opts.proto == Proto::V4, opts.endian)?;
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
        src_incarnation: 0x18eb_1e4a_51f6_4e1b,
        dst_incarnation: 0,
        ctype: opts.ctype,
        nips: 0,
    };
    w.send_hello(&hello, opts.endian)?;
    let (theirs, endian) = read_by(&clock, deadline, || w.recv_hello())
        .with_context(|| format!("reading the HELLO from {} (refused?)", opts.server))?;
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
            true,
        ));
    }
    report.server_hello_dst_nid = theirs.dst_nid.to_string();
    let proto = theirs.proto;
    while (received.len() as u64) < opts.expect {
        let msg = match read_by(&clock, deadline, || w.recv_msg(proto, endian)) {
            Ok(m) => m,
            Err(e) if e.downcast_ref::<ChecksumError>().is_some() => return Err(e),
            Err(e) => return Ok(End::Failed(format!("connection lost: {e:#}"), false)),
        };
        let Msg::Lnet { hdr, payload } = msg else {
            continue;
        };
        // lnet_parse: a message for another NID on our own net should have been sent direct.
        if hdr.dest_nid != opts.nid {
            return Ok(End::Failed(
                format!(
                    "lnet_parse(): {}, src {}: Bad dest nid {} (should have been sent direct)",
                    opts.server_nid, hdr.src_nid, hdr.dest_nid
                ),
                true,
            ));
        }
        let t = LnetType::from_u32(hdr.msg_type);
        if matches!(t, Some(LnetType::Ack | LnetType::Get)) && hdr.payload_length > 0 {
            return Ok(End::Failed(
                format!("bad {t:?} payload {} (0 expected)", hdr.payload_length),
                true,
            ));
        }
        if t != Some(LnetType::Put) {
            continue;
        }
        let index = lnet::index_of(&hdr);
        received.insert(
            index,
            Put {
                index,
                size: payload.len() as u32,
                digest: workload::digest(&payload),
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

/// Runs one read with the time left until `deadline` as the socket's timeout (never retried:
/// a read cut off mid-frame would lose its bytes).
fn read_by<T>(
    stream: &TcpStream,
    deadline: Instant,
    read: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(left))
        .context("setting a read timeout")?;
    read()
}
