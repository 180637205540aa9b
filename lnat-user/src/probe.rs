//! `lnat probe`: asks an LNet server, connecting as LNet does, what it calls this host, and
//! says from that whether this host needs lnat (docs/protocol.md, What a NAT does).

use std::{
    fmt,
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use lnat_common::{
    nid::Nid,
    wire::{self, Connreq, Endian, Hello, Proto, WireError},
};
use serde::Serialize;

use crate::iface;

/// Longest wait for the TCP connection: an unreachable server is an error, not a hang.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for each read and write of the exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the probe listens before it sends a byte. An acceptor running `accept=secure`
/// closes a connection from an unreserved port at once, before reading anything
/// (lnet/lnet/acceptor.c, `lnet_acceptor`), and an LNet acceptor never speaks first: a close in
/// this time is that refusal, data is something other than LNet. Well under the acceptor's own
/// 5 s wait for a request (`accept_timeout`).
pub const REFUSAL_WAIT: Duration = Duration::from_millis(500);
/// The pid in the probe's HELLO. socklnd keys its peers by NID and pid: under 12345, LNet's own,
/// a server that already talks to this host's LNet would take the probe's new incarnation for
/// a reboot and close that LNet's connections (socklnd.c, "peer_ni rebooted").
pub const PROBE_PID: u32 = wire::PID_LUSTRE + 1;
/// How long closing waits for the server's FIN after sending its own.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Bytes of an unexpected answer an error shows.
const SHOWN: usize = 24;

/// What the server answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Its HELLO, naming this host by this NID (`dst_nid`).
    Named(Nid),
    /// It closed the connection before the probe sent a byte: the acceptor's `accept=secure`
    /// refusal of a source port above 1023.
    RefusedInsecure,
}

/// The one thing to do.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The server names this host by another NID (a NAT remaps its port): run `lnat attach`.
    Attach,
    /// The server names this host by its own NID: LNet works without lnat.
    NothingNeeded,
    /// The server refuses this host's port as insecure: it must run `accept=all` first.
    AcceptAll,
}

impl Verdict {
    /// What to tell the administrator; `iface` is the interface toward the server, if known.
    pub fn advice(self, iface: Option<&str>) -> String {
        match self {
            Verdict::Attach => format!(
                "run lnat attach {}",
                iface.unwrap_or("<the interface toward the server>")
            ),
            Verdict::NothingNeeded => "nothing needed".to_owned(),
            Verdict::AcceptAll => "set options lnet accept=all on the server".to_owned(),
        }
    }
}

/// What an answer means for this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// A NAT changes this host's port on the way: the server names it by another NID, or
    /// refused the reserved port the probe sent from as insecure.
    pub remapped: bool,
    /// What to do about it.
    pub verdict: Verdict,
}

/// Decides from the server's answer to a probe from `local`: the rule of docs/protocol.md,
/// What a NAT does, kept apart from the sockets so that each case is tested.
pub fn decide(local: Nid, answer: Answer) -> Decision {
    match answer {
        Answer::RefusedInsecure => Decision {
            remapped: true,
            verdict: Verdict::AcceptAll,
        },
        Answer::Named(n) if n == local => Decision {
            remapped: false,
            verdict: Verdict::NothingNeeded,
        },
        Answer::Named(_) => Decision {
            remapped: true,
            verdict: Verdict::Attach,
        },
    }
}

/// What `lnat probe` reports, printed for people or as JSON.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Report {
    /// The NID probed.
    pub server_nid: String,
    /// Its acceptor, `address:port`.
    pub address: String,
    /// This host's NID on the server's net: the connection's local address.
    pub local_nid: String,
    /// The reserved port the probe connected from.
    pub local_port: u16,
    /// The NID the server's HELLO names this host by (none when refused).
    pub server_calls_us: Option<String>,
    /// Whether a NAT changes this host's port ([`Decision::remapped`]).
    pub remapped: bool,
    /// Whether the server refused the connection as from an insecure port.
    pub refused_insecure: bool,
    /// The one thing to do.
    pub verdict: Verdict,
    /// That, in words.
    pub advice: String,
}

impl Report {
    /// The report of a probe of `server` at `address` from `local` that got `answer`;
    /// `iface` holds the local address.
    pub fn new(
        server: Nid,
        address: SocketAddrV4,
        local: SocketAddrV4,
        answer: Answer,
        iface: Option<&str>,
    ) -> Report {
        let local_nid = server.with_addr(u32::from(*local.ip()));
        let decision = decide(local_nid, answer);
        Report {
            server_nid: server.to_string(),
            address: address.to_string(),
            local_nid: local_nid.to_string(),
            local_port: local.port(),
            server_calls_us: match answer {
                Answer::Named(n) => Some(n.to_string()),
                Answer::RefusedInsecure => None,
            },
            remapped: decision.remapped,
            refused_insecure: answer == Answer::RefusedInsecure,
            verdict: decision.verdict,
            advice: decision.verdict.advice(iface),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "probed {} at {} from port {} as {}",
            self.server_nid, self.address, self.local_port, self.local_nid
        )?;
        match (&self.server_calls_us, self.remapped) {
            (Some(n), false) => writeln!(f, "the server calls this host {n}, its own NID")?,
            (Some(n), true) => writeln!(
                f,
                "the server calls this host {n}, not {}: a NAT remaps its port",
                self.local_nid
            )?,
            (None, _) => writeln!(
                f,
                "the server refused the connection: insecure port (accept=secure), as a NAT \
                 remaps this host's reserved port above 1023"
            )?,
        }
        writeln!(f, "advice: {}", self.advice)
    }
}

/// Probes `server`'s acceptor on `port`: connects from a reserved port, sends the connection
/// request and a HELLO, reads the server's HELLO and closes.
pub fn probe(server: Nid, port: u16) -> anyhow::Result<Report> {
    if !server.is_socklnd() {
        bail!("{server} is not a tcp NID: lnat probes socklnd (tcp) servers only");
    }
    let address = SocketAddrV4::new(Ipv4Addr::from(server.addr()), port);
    let mut stream = connect_reserved(address)?;
    let local = match stream
        .local_addr()
        .context("reading the connection's local address")?
    {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => bail!("the connection to {address} has an IPv6 local address {a}"),
    };
    let local_nid = server.with_addr(u32::from(*local.ip()));
    let answer = exchange(&mut stream, address, server, local_nid)?;
    let iface = iface::with_address(*local.ip())?;
    Ok(Report::new(
        server,
        address,
        local,
        answer,
        iface.as_deref(),
    ))
}

/// Connects to `address` from the highest free reserved port, 1023 down to 512, as
/// `lnet_connect` does (lnet/lnet/acceptor.c): a server sees the port LNet's would have.
fn connect_reserved(address: SocketAddrV4) -> anyhow::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let stream = rt.block_on(async {
        for port in (wire::MIN_RESERVED_PORT..=wire::MAX_RESERVED_PORT).rev() {
            let sock = tokio::net::TcpSocket::new_v4().context("creating a socket")?;
            sock.set_reuseaddr(true)
                .context("setting SO_REUSEADDR on the socket")?;
            match sock.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(
                    "binding reserved port {port} needs root (CAP_NET_BIND_SERVICE), as LNet's \
                     own connections do"
                ),
                Err(e) => return Err(e).with_context(|| format!("binding port {port}")),
            }
            match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(address.into())).await {
                Err(_) => bail!(
                    "no answer from {address} within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
                    ) =>
                {
                    continue;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    bail!("{address} refused the connection: no LNet acceptor listens there")
                }
                Ok(Err(e)) => {
                    return Err(e)
                        .with_context(|| format!("connecting to {address} from port {port}"));
                }
            }
        }
        bail!(
            "no reserved port free to connect to {address} from ({} down to {} all in use)",
            wire::MAX_RESERVED_PORT,
            wire::MIN_RESERVED_PORT
        )
    })?;
    let stream = stream
        .into_std()
        .context("taking the socket out of the event loop")?;
    stream
        .set_nonblocking(false)
        .context("making the socket blocking")?;
    Ok(stream)
}

/// Waits for a refusal, then sends the connection request and HELLO and reads the server's.
fn exchange(
    s: &mut TcpStream,
    address: SocketAddrV4,
    server: Nid,
    local: Nid,
) -> anyhow::Result<Answer> {
    s.set_nodelay(true).context("setting TCP_NODELAY")?;
    s.set_read_timeout(Some(REFUSAL_WAIT))
        .context("setting a read timeout")?;
    let mut first = [0u8; SHOWN];
    match s.read(&mut first) {
        Ok(0) => return Ok(Answer::RefusedInsecure),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            return Ok(Answer::RefusedInsecure);
        }
        Ok(n) => bail!(
            "{address} is not an LNet acceptor: it spoke first (\"{}\")",
            first[..n].escape_ascii()
        ),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        Err(e) => return Err(e).with_context(|| format!("reading from {address}")),
    }
    s.set_read_timeout(Some(IO_TIMEOUT))
        .context("setting a read timeout")?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .context("setting a write timeout")?;
    let incarnation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("reading the clock for an incarnation")?
        .as_nanos() as u64;
    let hello = Hello {
        proto: Proto::V3,
        src_nid: local,
        dst_nid: server,
        src_pid: PROBE_PID,
        dst_pid: 0,
        src_incarnation: incarnation,
        dst_incarnation: 0,
        ctype: 1,
        nips: 0,
    };
    let mut out = [0u8; wire::connreq::LEN_V1 + wire::hello4::LEN];
    let n = Connreq {
        nid: server,
        version: 1,
    }
    .encode(Endian::Little, &mut out);
    let n = n + hello.encode(Endian::Little, &mut out[n..]);
    s.write_all(&out[..n])
        .with_context(|| format!("sending the connection request and HELLO to {address}"))?;
    let reply = read_hello(s, address, server)?;
    close(s);
    if reply.src_nid != server {
        bail!(
            "{address} answered as {}, not {server}: LNet would refuse this connection",
            reply.src_nid
        );
    }
    if reply.dst_nid == Nid::ANY {
        bail!(
            "{address} answered with a socklnd V{} HELLO, which names no peer",
            reply.proto as u8
        );
    }
    Ok(Answer::Named(reply.dst_nid))
}

/// Reads the server's HELLO: magic and version, then its fixed part, then its address list.
fn read_hello(s: &mut TcpStream, address: SocketAddrV4, server: Nid) -> anyhow::Result<Hello> {
    let mut b = vec![0u8; 8];
    read_exact(s, &mut b, address).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => anyhow::anyhow!(
            "{address} closed the connection after the connection request, without a HELLO: is \
             {server} its NID? (its log says why)"
        ),
        _ => anyhow::Error::new(e).context(format!("waiting for the HELLO of {address}")),
    })?;
    let magic = Endian::Little.u32(&b, wire::connreq::MAGIC);
    if magic == wire::ACCEPTOR_MAGIC || magic.swap_bytes() == wire::ACCEPTOR_MAGIC {
        bail!("{address} refused the connection request (it answered with a request of its own)");
    }
    let (proto, _) = Hello::probe(&b).map_err(|e| not_hello(address, e, &b))?;
    b.resize(proto.hello().fixed, 0);
    read_exact(s, &mut b[8..], address)
        .with_context(|| format!("reading the HELLO of {address}"))?;
    let len = Hello::wire_len_from(&b).map_err(|e| not_hello(address, e, &b))?;
    let fixed = b.len();
    b.resize(len, 0);
    read_exact(s, &mut b[fixed..], address)
        .with_context(|| format!("reading the HELLO of {address}"))?;
    let (hello, _, _) = Hello::decode(&b).map_err(|e| not_hello(address, e, &b))?;
    Ok(hello)
}

/// `read_exact` whose timeout says so.
fn read_exact(s: &mut TcpStream, b: &mut [u8], address: SocketAddrV4) -> io::Result<()> {
    s.read_exact(b).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{address} sent nothing for {} s", IO_TIMEOUT.as_secs()),
        ),
        _ => e,
    })
}

/// The error for an answer that is not a HELLO lnat can read.
fn not_hello(address: SocketAddrV4, e: WireError, b: &[u8]) -> anyhow::Error {
    let shown = b[..b.len().min(SHOWN)].escape_ascii();
    match e {
        WireError::BadMagic(m) => anyhow::anyhow!(
            "{address} is not an LNet server: its answer has magic {m:#010x} (\"{shown}\")"
        ),
        WireError::BadVersion(v) => {
            anyhow::anyhow!("{address} answered with socklnd version {v}, which lnat does not know")
        }
        e => anyhow::anyhow!("{address} sent a HELLO lnat cannot read ({e:?}: \"{shown}\")"),
    }
}

/// Ends the connection cleanly: FIN, then whatever the server still sends up to its own FIN,
/// so that nothing unread turns the close into a reset. Failures are ignored: the answer is
/// already in hand, and the socket is closed either way.
fn close(s: &mut TcpStream) {
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.set_read_timeout(Some(CLOSE_WAIT));
    let deadline = Instant::now() + CLOSE_WAIT;
    let mut sink = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nid(s: &str) -> Nid {
        s.parse().unwrap()
    }

    const SERVER: &str = "203.0.113.10@tcp";
    const LOCAL: &str = "198.51.100.2@tcp";

    fn report(answer: Answer, iface: Option<&str>) -> Report {
        Report::new(
            nid(SERVER),
            "203.0.113.10:988".parse().unwrap(),
            "198.51.100.2:1023".parse().unwrap(),
            answer,
            iface,
        )
    }

    #[test]
    fn a_server_naming_us_by_another_nid_needs_attach() {
        let d = decide(nid(LOCAL), Answer::Named(nid("203.0.113.1@tcp")));
        assert_eq!(
            d,
            Decision {
                remapped: true,
                verdict: Verdict::Attach
            }
        );
        assert_eq!(d.verdict.advice(Some("eth0")), "run lnat attach eth0");
        assert_eq!(
            d.verdict.advice(None),
            "run lnat attach <the interface toward the server>"
        );
    }

    #[test]
    fn a_server_naming_us_by_our_nid_needs_nothing() {
        let d = decide(nid(LOCAL), Answer::Named(nid(LOCAL)));
        assert_eq!(
            d,
            Decision {
                remapped: false,
                verdict: Verdict::NothingNeeded
            }
        );
        assert_eq!(d.verdict.advice(Some("eth0")), "nothing needed");
    }

    #[test]
    fn another_net_is_another_nid() {
        let d = decide(nid(LOCAL), Answer::Named(nid("198.51.100.2@tcp1")));
        assert_eq!(d.verdict, Verdict::Attach);
    }

    #[test]
    fn a_refusal_needs_accept_all() {
        let d = decide(nid(LOCAL), Answer::RefusedInsecure);
        assert_eq!(
            d,
            Decision {
                remapped: true,
                verdict: Verdict::AcceptAll
            }
        );
        assert_eq!(
            d.verdict.advice(Some("eth0")),
            "set options lnet accept=all on the server"
        );
    }

    #[test]
    fn the_json_has_every_field() {
        let r = report(Answer::Named(nid("203.0.113.1@tcp")), Some("eth0"));
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({
                "server_nid": "203.0.113.10@tcp",
                "address": "203.0.113.10:988",
                "local_nid": "198.51.100.2@tcp",
                "local_port": 1023,
                "server_calls_us": "203.0.113.1@tcp",
                "remapped": true,
                "refused_insecure": false,
                "verdict": "attach",
                "advice": "run lnat attach eth0",
            })
        );
        let r = report(Answer::RefusedInsecure, Some("eth0"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["server_calls_us"], serde_json::Value::Null);
        assert_eq!(v["refused_insecure"], true);
        assert_eq!(v["verdict"], "accept-all");
        let r = report(Answer::Named(nid(LOCAL)), None);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (v["remapped"].clone(), v["verdict"].clone()),
            (false.into(), "nothing-needed".into())
        );
    }

    #[test]
    fn the_text_says_what_the_server_calls_us_and_what_to_do() {
        let text = report(Answer::Named(nid("203.0.113.1@tcp")), Some("eth0")).to_string();
        assert!(
            text.contains("calls this host 203.0.113.1@tcp, not 198.51.100.2@tcp"),
            "{text}"
        );
        assert!(text.ends_with("advice: run lnat attach eth0\n"), "{text}");
        let text = report(Answer::RefusedInsecure, None).to_string();
        assert!(text.contains("insecure port"), "{text}");
    }
}
