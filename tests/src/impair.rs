//! A bad network between two interfaces: frames are forwarded with AF_PACKET sockets and, one
//! way, dropped, held back (reordered) or duplicated with seeded probabilities. The kernel here
//! has no netem; this does the part of netem the tests need.

use std::{
    collections::VecDeque,
    ffi::CString,
    io,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lnat_testkit::Rng;
use serde::{Deserialize, Serialize};

/// What to do to frames going from `a` to `b`, in percent per frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weather {
    /// Frames dropped.
    pub drop: u64,
    /// Frames held back and sent after up to three later frames (or 2 ms).
    pub hold: u64,
    /// Frames sent twice.
    pub dup: u64,
    /// Seed of the decisions.
    pub seed: u64,
}

/// What the bridge did, for the test to report.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Frames forwarded a to b.
    pub forwarded: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames held back.
    pub held: u64,
    /// Frames duplicated.
    pub duplicated: u64,
    /// Frames lost by the bridge itself (its socket overflowed, or the far side stayed full):
    /// loss on top of `dropped` that a test's figures must not hide.
    pub overflowed: u64,
}

const ETH_P_ALL: u16 = 0x0003;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_STATISTICS: libc::c_int = 6;

/// Receive buffer of each bridge socket: a burst of 64 KiB GSO packets must fit while the
/// bridge is busy sending.
const RCVBUF: libc::c_int = 32 << 20;

/// Times a frame is offered again while the far side's queue is full, yielding in between, as
/// a wire's buffer would hold it.
const SEND_TRIES: u32 = 2000;

/// A raw socket on one interface.
struct Port {
    fd: libc::c_int,
}

impl Port {
    fn open(dev: &str) -> anyhow::Result<Port> {
        let name = CString::new(dev).context("interface name")?;
        // SAFETY: plain socket calls on values we own.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            if index == 0 {
                bail!("no interface {dev}");
            }
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                (ETH_P_ALL.to_be()) as i32,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error()).context("AF_PACKET socket");
            }
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&raw const one).cast(),
                4,
            );
            let rcvbuf = RCVBUF;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const rcvbuf).cast(),
                4,
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = index as i32;
            if libc::bind(
                fd,
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("binding to {dev}"));
            }
            Ok(Port { fd })
        }
    }

    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: reads into `buf`.
        let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then_some(n as usize)
    }

    /// Sends `frame`, waiting out a full queue for a while; false if it was lost anyway.
    fn send(&self, frame: &[u8]) -> bool {
        for _ in 0..SEND_TRIES {
            // SAFETY: writes from `frame`.
            let n = unsafe { libc::send(self.fd, frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    /// Frames the kernel dropped because this socket's buffer was full.
    fn overflowed(&self) -> u64 {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: reads the statistics into `st`.
        let ok = unsafe {
            libc::getsockopt(
                self.fd,
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                (&raw mut st).cast(),
                &raw mut len,
            )
        } == 0;
        if ok { u64::from(st.tp_drops) } else { 0 }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.fd) };
    }
}

/// Forwards between `a` and `b` until `stop` returns true, impairing `a` to `b` per `w` and
/// pushing `tags` 802.1Q priority tags (VLAN 0, which hosts accept without a VLAN device) onto
/// each of those frames.
pub fn run(
    a: &str,
    b: &str,
    w: Weather,
    tags: u8,
    mut stop: impl FnMut(&Tally) -> bool,
) -> anyhow::Result<Tally> {
    let (pa, pb) = (Port::open(a)?, Port::open(b)?);
    let mut rng = Rng::new(w.seed);
    let mut tally = Tally::default();
    let mut held: VecDeque<(Vec<u8>, u32, Instant)> = VecDeque::new();
    let mut buf = vec![0u8; 65536];
    let mut fds = [
        libc::pollfd {
            fd: pa.fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: pb.fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    while !stop(&tally) {
        // SAFETY: polls our two fds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 1) };
        // b to a: untouched (ACKs and the client's requests).
        while let Some(n) = pb.recv(&mut buf) {
            if !pa.send(&buf[..n]) {
                tally.overflowed += 1;
            }
        }
        while let Some(n) = pa.recv(&mut buf[4 * tags as usize..]) {
            let frame = tag(&mut buf[..n + 4 * tags as usize], tags);
            tally.forwarded += 1;
            if rng.chance(w.drop) {
                tally.dropped += 1;
            } else if rng.chance(w.hold) {
                tally.held += 1;
                held.push_back((frame.to_vec(), 1 + rng.below(3) as u32, Instant::now()));
                continue;
            } else {
                if !pb.send(frame) {
                    tally.overflowed += 1;
                }
                if rng.chance(w.dup) {
                    tally.duplicated += 1;
                    if !pb.send(frame) {
                        tally.overflowed += 1;
                    }
                }
            }
            // Every frame that passes brings held frames closer to release.
            for h in &mut held {
                h.1 = h.1.saturating_sub(1);
            }
            release(&pb, &mut held, false, &mut tally);
        }
        release(&pb, &mut held, true, &mut tally);
    }
    release(&pb, &mut held, true, &mut tally);
    tally.overflowed += pa.overflowed() + pb.overflowed();
    Ok(tally)
}

/// The frame received at `buf[4 * tags..]` with `tags` priority tags inserted after its MAC
/// addresses.
fn tag(buf: &mut [u8], tags: u8) -> &[u8] {
    let shift = 4 * tags as usize;
    if shift > 0 && buf.len() >= shift + 12 {
        buf.copy_within(shift..shift + 12, 0);
        for t in 0..tags as usize {
            buf[12 + 4 * t..16 + 4 * t].copy_from_slice(&[0x81, 0x00, 0x00, 0x00]);
        }
    }
    buf
}

/// Sends held frames that are due: overtaken by enough frames, or held for 2 ms.
fn release(
    port: &Port,
    held: &mut VecDeque<(Vec<u8>, u32, Instant)>,
    by_time: bool,
    tally: &mut Tally,
) {
    let now = Instant::now();
    held.retain(|(frame, left, since)| {
        let due = *left == 0 || (by_time && now.duration_since(*since) >= Duration::from_millis(2));
        if due && !port.send(frame) {
            tally.overflowed += 1;
        }
        !due
    });
}
