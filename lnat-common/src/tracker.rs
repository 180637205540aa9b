//! The socklnd stream tracker: where the next header is, and what in it to rewrite.
//!
//! One [`Tracker`] follows one direction of one TCP connection: the bytes a peer sends to the
//! host lnat runs on. It is fed the stream in order, a window at a time, and works in *units*:
//! the acceptor connection request (only on connections the peer opened), the peer's HELLO, then
//! messages. For each unit it buffers only the fixed prefix it needs (at most [`PREFIX_MAX`]
//! bytes), frames the unit from it, and skips the payload without reading it.
//!
//! When the bytes of a NID field arrive it decides whether that NID becomes ours: the HELLO's
//! dst_nid on a connection we opened always does when learning is on (the server's HELLO names
//! us as it sees us), any other NID does when the [`Env`] maps it. The decision is made as soon as
//! the first address byte is in hand. If the segment ends inside the NID, the rest of it is not
//! known yet; the tracker then decides on the bytes it has, matched against the NID the peer
//! named us by in its HELLO (socklnd addresses every message on a connection to that peer), and
//! reports a conflict if the complete NID later disagrees. Only the four address bytes ever
//! change: the local NID is the flow's own address on the same LNet net.
//!
//! A tracker follows one [`Direction`]. From the peer (ingress) it rewrites the NIDs that name
//! this host by an external NID, as above, and gives a server's ping reply the DISCOVERY
//! feature, so that this host pushes to a server whose discovery is off (rule I1). To the peer
//! (egress) it rewrites only what this host says of itself in a discovery push: its own NID
//! becomes the external one, and the DISCOVERY feature is cleared, so that a server behind which
//! this host is a NATed userspace peer takes it as discovered without pushing back
//! (docs/discovery.md). Both directions read ping information ([`crate::ping`]) with the same
//! units; only which message carries it and which way the feature bit goes differ.
//!
//! Decisions leave the tracker as [`Patch`]es: recorded in the flow's [`History`] for copies of
//! the segment that come again, and returned from [`Tracker::advance`] for the segment in hand.

use crate::{
    ahead::{AHEAD_MAX, Ahead, Scan},
    crc,
    history::{History, Patch, RUNS},
    nid::{Nid, NidForm},
    ping, seq,
    wire::{self, Endian, Proto},
};

/// Longest unit prefix the tracker buffers: a whole V4 LNet message header (ksock header and
/// nid16 LNet header), which egress reads to its portal and match bits.
pub const PREFIX_MAX: usize = 120;

/// Which side opened the connection, seen from the host lnat runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Role {
    /// We connected to the peer's acceptor: the stream opens with the peer's HELLO.
    Active = 1,
    /// The peer connected to our acceptor: the stream opens with a connection request.
    Passive = 2,
}

/// Which way a followed stream flows, seen from the host lnat runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Direction {
    /// From the peer (TC ingress): NIDs naming this host by an external NID are made its own.
    In = 1,
    /// To the peer (TC egress): this host's own NIDs in its discovery pushes become external.
    Out = 2,
}

/// Why a stream could no longer be followed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Desync {
    /// Not an acceptor request or a socklnd HELLO.
    BadMagic = 1,
    /// A version socklnd does not speak.
    BadVersion = 2,
    /// A message type socklnd rejects.
    BadType = 3,
    /// A payload longer than LNet allows.
    TooLong = 4,
    /// A HELLO listing more addresses than socklnd accepts.
    TooManyIps = 5,
    /// A V1 HELLO that is not an LNet HELLO header.
    NotHello = 6,
    /// A segment held more units than the datapath will parse in one packet.
    Overrun = 7,
    /// The packet was shorter than its headers said, so its bytes could not be read or written.
    Unreadable = 8,
    /// The peer's segments arrive as IPv4 fragments, reassembled only after the datapath.
    Fragmented = 9,
    /// A patch fell on bytes passed ahead ([`crate::ahead`]), which the receiver already has,
    /// or they could not be read again.
    Delivered = 10,
}

impl Desync {
    /// The reason for a stored code, if it is one.
    pub const fn from_u8(v: u8) -> Option<Desync> {
        match v {
            1 => Some(Desync::BadMagic),
            2 => Some(Desync::BadVersion),
            3 => Some(Desync::BadType),
            4 => Some(Desync::TooLong),
            5 => Some(Desync::TooManyIps),
            6 => Some(Desync::NotHello),
            7 => Some(Desync::Overrun),
            8 => Some(Desync::Unreadable),
            9 => Some(Desync::Fragmented),
            10 => Some(Desync::Delivered),
            _ => None,
        }
    }

    /// A short name for logs and status output.
    pub const fn name(self) -> &'static str {
        match self {
            Desync::BadMagic => "bad magic",
            Desync::BadVersion => "unknown version",
            Desync::BadType => "bad message type",
            Desync::TooLong => "payload too long",
            Desync::TooManyIps => "too many HELLO addresses",
            Desync::NotHello => "V1 HELLO is not a HELLO",
            Desync::Overrun => "too many units in one packet",
            Desync::Unreadable => "packet shorter than its headers",
            Desync::Fragmented => "IPv4 fragments (reassembled after the datapath)",
            Desync::Delivered => "a patch on bytes passed ahead",
        }
    }
}

/// Things the tracker tells its environment as they happen.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Note {
    /// A NID's address was rewritten.
    Rewrote,
    /// A V2 checksummed message got its dest_pid compensation.
    Compensated,
    /// A discovery push's DISCOVERY feature bit was cleared.
    Undiscovering,
    /// A server's ping reply was given the DISCOVERY feature bit.
    Discoverable,
    /// A NID decided on its first bytes turned out to want a different decision.
    Conflict,
    /// This host sent a GET (an LNet ping, in Lustre's use of a client): its REPLY, ping
    /// information, may come on the incoming stream.
    GetSent,
    /// A REPLY was framed on the incoming stream.
    ReplyFramed,
    /// The stream can no longer be followed.
    Desynced(Desync),
}

/// What the tracker asks of the datapath (or of a test).
pub trait Env {
    /// The address `nid` maps to, if it is a mapped external NID; `Some(0)` means "the flow's own".
    fn mapping(&mut self, nid: Nid) -> Option<u32>;
    /// Whether an active HELLO's dst_nid teaches us our external NID.
    fn learning(&self) -> bool;
    /// An active HELLO named us `ext`; `local` is who we are. Called once the HELLO is complete,
    /// before the next unit is parsed, only when `ext` is not mapped yet.
    fn learn(&mut self, ext: Nid, local: Nid);
    /// The NID the peer names this host by on this connection, if it is not the host's own and
    /// this host's discovery pushes leave carrying it: what an outgoing stream's own NIDs
    /// become. An incoming stream asks before it makes a server's ping reply ask for a push
    /// (ingress rule I1): a push left as LNet wrote it would name the private NID.
    fn external(&mut self) -> Option<Nid> {
        None
    }
    /// Whether a REPLY to one of this host's GETs may still come on the incoming stream, whose
    /// feature word rule I1 could change: a segment is then not passed ahead
    /// ([`crate::ahead`]), as the REPLY may lie before it in a hole, its feature word in it.
    fn replies_due(&mut self) -> bool {
        false
    }
    /// Something worth counting happened.
    fn note(&mut self, what: Note);
}

/// How a segment relates to the tracker's position.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Admit {
    /// Nothing to do: no payload, or the flow is no longer followed.
    Pass,
    /// The segment starts beyond the next unparsed byte: its headers cannot be found.
    Drop,
    /// Held back ([`crate::segment::Outcome::Held`]): what [`crate::segment::process`] says
    /// of a segment it did not rewrite because the history had no room for its patches.
    Hold,
    /// Passed unchanged ahead of the cursor ([`crate::ahead`]): what
    /// [`crate::segment::process_ahead`] says of a segment it could not admit whose bytes
    /// touch nothing lnat changes. The caller keeps its bytes for the tracker.
    Ahead,
    /// Rewrite it (history first, then parse from the cursor); `miss` when it overlaps the
    /// stretch whose patches the history forgot.
    Track {
        /// True when part of the segment may have had a patch the history no longer knows.
        miss: bool,
    },
}

const UNIT_CONNREQ: u8 = 0;
const UNIT_HELLO: u8 = 1;
const UNIT_MSG: u8 = 2;
/// The fixed part of ping information and entry 0's NID: a push (egress) or ping reply
/// (ingress).
const UNIT_PING: u8 = 3;
/// One later NI entry of a push (egress).
const UNIT_PING_NI: u8 = 4;
/// Prefix of an NI entry the tracker needs: its NID.
const NI_NEED: usize = 8;
/// Prefix of ping information the tracker needs: the fixed part and entry 0's NID, all that a
/// receiver checks (`lnet_ping_info_validate`, `api-ni.c:1981-1995`).
const PING_NEED: usize = ping::HEAD_LEN + NI_NEED;

/// The peer is other-endian.
const F_FLIP: u8 = 1;
/// The unit's magic or type has been read and `need` is the full prefix.
const F_PROBED: u8 = 2;
/// The current NID has been decided.
const F_DECIDED: u8 = 4;
/// The decision is to write `target` into the address.
const F_REWRITE: u8 = 8;
/// The decision was made before the whole NID was in hand.
const F_PREFIX: u8 = 16;
/// The stream is no longer followed.
const F_DESYNC: u8 = 32;
/// The V2 dest_pid compensation for the current message has been emitted.
const F_PID_DONE: u8 = 64;
/// The message has a V2 checksum: kept across the units of its ping information.
const F_CSUM: u8 = 128;

/// Most patches one call to [`Tracker::advance`] can emit: an address part and a compensation.
pub const OUT_MAX: usize = 2;

/// Where the current unit keeps its NID and what to do with it.
#[derive(Clone, Copy)]
struct NidField {
    off: u8,
    form: NidForm,
    pid_off: u8,
    learn: bool,
}

impl NidField {
    /// Offset of the field in the unit. (Fields are bytes: the struct is on the eBPF stack.)
    const fn off(self) -> usize {
        self.off as usize
    }

    /// Offset of dest_pid when it compensates a V2 checksum, else 0.
    const fn pid_off(self) -> usize {
        self.pid_off as usize
    }
}

/// The state of one tracked stream. Plain data, so it can live in a BPF map value.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Tracker<const N: usize = RUNS> {
    /// Sequence number where the unit being parsed begins.
    pub unit_seq: u32,
    /// Our IPv4 address on this connection (host order).
    pub local: u32,
    /// The NID the peer addresses us by, for decisions on partial NIDs (0: none yet).
    pub hint: u64,
    /// The address being written into the current NID.
    pub target: u32,
    /// Bytes of the unit's prefix in `buf`.
    pub have: u8,
    /// Bytes of prefix the unit needs.
    pub need: u8,
    /// Which unit is being parsed.
    pub unit: u8,
    /// Protocol version once the HELLO is probed (0 before).
    pub proto: u8,
    /// `F_*` bits.
    pub flags: u8,
    /// [`Role`] of the connection.
    pub role: u8,
    /// NID form of the current unit.
    pub form: u8,
    /// Address bytes of the current NID already patched (0 to 4).
    pub emitted: u8,
    /// [`Desync`] reason, 0 while followed.
    pub desync: u8,
    /// Patches in `out` from the last `advance`.
    pub n_out: u8,
    /// [`Direction`] of the stream.
    pub dir: u8,
    /// Index of the ping NI entry being parsed.
    pub entry: u8,
    /// Ping NI entries left, the current one included.
    pub entries: u8,
    /// Keeps `out` aligned.
    pub _pad: [u8; 1],
    /// Bytes of the segment passed ahead of the cursor, whose bytes the datapath keeps (0:
    /// none).
    pub ahead_len: u16,
    /// Payload bytes of the current message after the entries of its ping information.
    pub rest: u32,
    /// The checksum compensation for a changed feature bit, owed to NI entry 1's
    /// `ns_msg_size` (0: none).
    pub comp: u32,
    /// Sequence number of the segment passed ahead.
    pub ahead_seq: u32,
    /// Patches from the last `advance`, for the segment in hand.
    pub out: [Patch; OUT_MAX],
    /// The unit's prefix.
    pub buf: [u8; PREFIX_MAX],
    /// Every patch decided recently, by position.
    pub history: History<N>,
}

impl Tracker {
    /// A tracker for a stream whose first byte has sequence number `start`.
    pub const fn new(role: Role, start: u32, local: u32, hint: Nid) -> Self {
        let mut t = Tracker {
            unit_seq: 0,
            local: 0,
            hint: 0,
            target: 0,
            have: 0,
            need: 0,
            unit: 0,
            proto: 0,
            flags: 0,
            role: 0,
            form: 0,
            emitted: 0,
            desync: 0,
            n_out: 0,
            dir: 0,
            entry: 0,
            entries: 0,
            _pad: [0; 1],
            rest: 0,
            comp: 0,
            ahead_seq: 0,
            ahead_len: 0,
            out: [Patch {
                pos: 0,
                xor: [0; 4],
            }; OUT_MAX],
            buf: [0; PREFIX_MAX],
            history: History::new(0),
        };
        t.reset(role, start, local, hint);
        t
    }

    /// A tracker for the stream this host sends on a connection opened by `role`'s side.
    pub const fn outgoing(role: Role, start: u32, local: u32) -> Self {
        let mut t = Self::new(role, start, local, Nid(0));
        t.reset_outgoing(role, start, local);
        t
    }
}

impl<const N: usize> Tracker<N> {
    /// Starts a new stream in place, as `new` would, without building a tracker elsewhere: a
    /// tracker is larger than the eBPF stack. The buffer and history slots are left as they are;
    /// nothing reads them before writing them.
    pub const fn reset(&mut self, role: Role, start: u32, local: u32, hint: Nid) {
        self.start_stream(role, Direction::In, start, local, hint);
    }

    /// Starts, in place, the stream this host sends, as `outgoing` would.
    pub const fn reset_outgoing(&mut self, role: Role, start: u32, local: u32) {
        self.start_stream(role, Direction::Out, start, local, Nid(0));
    }

    #[inline(always)]
    const fn start_stream(
        &mut self,
        role: Role,
        dir: Direction,
        start: u32,
        local: u32,
        hint: Nid,
    ) {
        self.unit_seq = start;
        self.local = local;
        self.hint = hint.0;
        self.target = 0;
        self.have = 0;
        self.need = 8;
        // The side that connects sends the acceptor request first.
        self.unit = match (role, dir) {
            (Role::Active, Direction::In) | (Role::Passive, Direction::Out) => UNIT_HELLO,
            (Role::Passive, Direction::In) | (Role::Active, Direction::Out) => UNIT_CONNREQ,
        };
        self.dir = dir as u8;
        self.entry = 0;
        self.entries = 0;
        self.rest = 0;
        self.comp = 0;
        self.ahead_len = 0;
        self.proto = 0;
        self.flags = 0;
        self.role = role as u8;
        self.form = NidForm::Le as u8;
        self.emitted = 0;
        self.desync = 0;
        self.n_out = 0;
        self.history.reset(start);
    }

    /// Sequence number of the next byte the tracker needs.
    pub const fn cursor(&self) -> u32 {
        self.unit_seq.wrapping_add(self.have as u32)
    }

    /// True once the stream can no longer be followed.
    pub const fn desynced(&self) -> bool {
        self.flags & F_DESYNC != 0
    }

    /// Where the next window goes in `buf` and how much of it may be filled: `buf[at..at + max]`.
    pub const fn window(&self) -> (usize, usize) {
        let at = self.have as usize;
        if at >= PREFIX_MAX {
            (PREFIX_MAX, 0)
        } else {
            (at, PREFIX_MAX - at)
        }
    }

    /// How a segment `[seq, seq + len)` relates to the stream.
    pub const fn admit(&self, seq: u32, len: u32) -> Admit {
        if len == 0 || self.desynced() {
            Admit::Pass
        } else if seq::after(seq, self.cursor()) {
            Admit::Drop
        } else {
            Admit::Track {
                miss: self.history.misses(seq, len),
            }
        }
    }

    /// A scan for the segment `[seq, seq + len)` if it may be passed ahead of the cursor
    /// ([`crate::ahead`]): it lies beyond the cursor of a followed V1 or V3 stream from the
    /// peer, in its messages, whose HELLO named this host; it fits [`AHEAD_MAX`]; and no other
    /// segment waits ahead.
    pub fn ahead_scan<E: Env>(&self, seq: u32, len: u32, env: &mut E) -> Option<Scan> {
        let v1_or_v3 = self.proto == Proto::V1 as u8 || self.proto == Proto::V3 as u8;
        if self.dir != Direction::In as u8
            || !v1_or_v3
            || self.unit < UNIT_MSG
            || self.hint == 0
            || self.desynced()
            || self.ahead().pending(self.cursor())
            || len < 4
            || len as usize > AHEAD_MAX
            || !seq::after(seq, self.cursor())
            || env.replies_due()
        {
            return None;
        }
        Some(Scan::new(Nid(self.hint).addr()))
    }

    /// Records that the segment `[seq, seq + len)` went to the receiver ahead of the cursor
    /// (its scan found it safe); its bytes are the caller's to keep until the cursor reaches
    /// it.
    pub const fn keep_ahead(&mut self, seq: u32, len: u32) {
        self.ahead_seq = seq;
        self.ahead_len = len as u16;
    }

    /// The segment passed ahead of the cursor ([`Ahead::NONE`]: none).
    pub const fn ahead(&self) -> Ahead {
        Ahead {
            seq: self.ahead_seq,
            len: self.ahead_len,
        }
    }

    /// Forgets the segment passed ahead once the cursor is past it (or the stream given up).
    pub const fn settle_ahead(&mut self) {
        if self.desynced() || !self.ahead().pending(self.cursor()) {
            self.ahead_len = 0;
        }
    }

    /// Gives up on the stream, telling `env`.
    pub fn desync<E: Env>(&mut self, why: Desync, env: &mut E) {
        if self.abandon(why) {
            env.note(Note::Desynced(why));
        }
    }

    /// Gives up on the stream; true if it was still followed. For callers with no [`Env`] at
    /// hand, which report the desync themselves.
    pub fn abandon(&mut self, why: Desync) -> bool {
        if self.desynced() {
            return false;
        }
        self.flags |= F_DESYNC;
        self.desync = why as u8;
        true
    }

    /// Takes `n` bytes the caller placed at `buf[have..have + n]`, the stream bytes from the
    /// cursor on, and returns how many it took: bytes past the end of the current unit's prefix
    /// are not, and must be offered again from the new cursor once [`Tracker::progress`] has
    /// framed the unit.
    pub fn take(&mut self, n: usize) -> usize {
        self.n_out = 0;
        if self.desynced() {
            return 0;
        }
        let (at, room) = self.window();
        let end = at + if n < room { n } else { room };
        let start = self.have as usize;
        let need = self.need as usize;
        let upto = if need < end { need } else { end };
        if upto > start {
            self.have = upto as u8;
        }
        upto.saturating_sub(start)
    }

    /// [`Tracker::take`], then [`Tracker::progress`]; returns what `take` took.
    pub fn advance<E: Env>(&mut self, n: usize, env: &mut E) -> usize {
        let used = self.take(n);
        self.progress(env);
        used
    }

    /// Copies `bytes` into the window and advances: the host-side way in.
    pub fn feed<E: Env>(&mut self, bytes: &[u8], env: &mut E) -> usize {
        let (at, room) = self.window();
        let n = if bytes.len() < room {
            bytes.len()
        } else {
            room
        };
        let mut i = 0;
        while i < n && at + i < PREFIX_MAX {
            self.buf[at + i] = bytes[i];
            i += 1;
        }
        self.advance(n, env)
    }

    fn endian(&self) -> Endian {
        if self.flags & F_FLIP != 0 {
            Endian::Big
        } else {
            Endian::Little
        }
    }

    /// Reads a u32 in the sender's order: connection request, HELLO and ksock header fields.
    fn rd32(&self, off: usize) -> u32 {
        self.endian().u32(&self.buf, off)
    }

    /// Reads a u32 of the LNet header, which is LE on every connection (`lnet_hdr_from_nid4`
    /// in `include/linux/lnet/lib-lnet.h`), whatever the sender's order.
    fn rd32_lnet(&self, off: usize) -> u32 {
        Endian::Little.u32(&self.buf, off)
    }

    fn proto(&self) -> Proto {
        Proto::from_u8(self.proto).unwrap_or(Proto::V3)
    }

    fn form(&self) -> NidForm {
        match self.form {
            1 => NidForm::Be,
            2 => NidForm::Large,
            _ => NidForm::Le,
        }
    }

    /// Examines the buffered prefix: probes, or decides NIDs and frames the unit when complete.
    /// The patches decided are in `out[..n_out]` and recorded in the history.
    ///
    /// A probe ends the call whatever it found: every probe leaves more of the prefix to read,
    /// and the verifier follows the probe's paths and the rest's apart, not every combination.
    pub fn progress<E: Env>(&mut self, env: &mut E) {
        if self.desynced() {
            return;
        }
        if self.flags & F_PROBED == 0 {
            self.probe(env);
            return;
        }
        let Some(field) = self.nid_field() else {
            if self.unit == UNIT_PING {
                self.ping_features(env);
            }
            if self.have == self.need {
                self.finish(None, env);
            }
            return;
        };
        self.nid_progress(field, env);
        if self.have == self.need {
            let nid = self.finish_nid(field, env);
            if !self.desynced() {
                self.finish(nid, env);
            }
        }
    }

    /// Reads the magic (connreq, HELLO) or message type and sets the full prefix length.
    fn probe<E: Env>(&mut self, env: &mut E) {
        let have = self.have as usize;
        match self.unit {
            UNIT_CONNREQ => {
                if have < 8 {
                    return;
                }
                let magic = Endian::Little.u32(&self.buf, wire::connreq::MAGIC);
                if magic == wire::ACCEPTOR_MAGIC.swap_bytes() {
                    self.flags |= F_FLIP;
                } else if magic != wire::ACCEPTOR_MAGIC {
                    self.desync(Desync::BadMagic, env);
                    return;
                }
                match self.rd32(wire::connreq::VERSION) {
                    1 => {
                        self.need = wire::connreq::LEN_V1 as u8;
                        self.form = self.hello_form(Proto::V3) as u8;
                    }
                    2 => {
                        self.need = wire::connreq::LEN_V2 as u8;
                        self.form = NidForm::Large as u8;
                    }
                    _ => {
                        self.desync(Desync::BadVersion, env);
                        return;
                    }
                }
            }
            UNIT_HELLO => {
                if have < 8 {
                    return;
                }
                let (proto, endian) = match wire::Hello::probe(&self.buf[..8]) {
                    Ok(p) => p,
                    Err(wire::WireError::BadVersion(_)) => {
                        self.desync(Desync::BadVersion, env);
                        return;
                    }
                    Err(_) => {
                        self.desync(Desync::BadMagic, env);
                        return;
                    }
                };
                self.proto = proto as u8;
                self.flags =
                    (self.flags & !F_FLIP) | if endian == Endian::Big { F_FLIP } else { 0 };
                self.form = self.hello_form(proto) as u8;
                self.need = (proto.hello().count_at + 4) as u8;
            }
            _ => {
                if self.proto() == Proto::V1 {
                    self.need = self.lnet_need();
                } else {
                    if have < 4 {
                        return;
                    }
                    match self.rd32(wire::ksock::TYPE) {
                        wire::MSG_NOOP => self.need = wire::ksock::LEN as u8,
                        wire::MSG_LNET => self.need = self.lnet_need(),
                        _ => {
                            self.desync(Desync::BadType, env);
                            return;
                        }
                    }
                }
            }
        }
        self.flags |= F_PROBED;
    }

    /// The NID form of a connection request or HELLO: nid4s come in the sender's order.
    fn hello_form(&self, proto: Proto) -> NidForm {
        proto.hello_form(self.flags & F_FLIP != 0)
    }

    /// The prefix an LNet message needs: up to payload_length from the peer, the whole header
    /// to the peer (whose portal and match bits tell a push).
    fn lnet_need(&self) -> u8 {
        let proto = self.proto();
        let hdr = proto.lnet_hdr();
        let ks = proto.ksock_len();
        if self.dir == Direction::Out as u8 {
            (ks + hdr.len) as u8
        } else {
            (ks + hdr.payload_length + 4) as u8
        }
    }

    /// The NID field of the current (probed) unit, if it has one.
    fn nid_field(&self) -> Option<NidField> {
        let form = self.form();
        if self.dir == Direction::Out as u8 {
            // Outgoing, only this host's own NIDs in ping information change.
            return (self.unit == UNIT_PING_NI).then_some(NidField {
                off: 0,
                form,
                pid_off: if self.flags & F_CSUM != 0 {
                    ping::NI_MSG_SIZE as u8
                } else {
                    0
                },
                learn: false,
            });
        }
        match self.unit {
            UNIT_CONNREQ => Some(NidField {
                off: wire::connreq::NID as u8,
                form,
                pid_off: 0,
                learn: false,
            }),
            UNIT_HELLO => self.proto().hello().dst_nid.map(|off| NidField {
                off: off as u8,
                form,
                pid_off: 0,
                learn: self.role == Role::Active as u8,
            }),
            UNIT_MSG => {
                let proto = self.proto();
                let ks = proto.ksock_len();
                if proto != Proto::V1 && self.need as usize == wire::ksock::LEN {
                    return None; // NOOP
                }
                let hdr = proto.lnet_hdr();
                // A checksummed message (V2 enable_csum) gets the dest_pid compensation.
                let csum = proto != Proto::V1 && self.rd32(wire::ksock::CSUM) != 0;
                Some(NidField {
                    off: (ks + hdr.dest_nid) as u8,
                    form,
                    pid_off: if csum { (ks + hdr.dest_pid) as u8 } else { 0 },
                    learn: false,
                })
            }
            // A ping reply: only its features change.
            _ => None,
        }
    }

    /// The NID of `field`, once all its bytes are in `buf`.
    fn nid_of(&self, field: NidField) -> Option<Nid> {
        self.buf
            .get(field.off()..field.off() + field.form.size())
            .and_then(|b| field.form.decode(b))
    }

    /// The address a complete NID becomes, if it is rewritten. (Four arguments at most: eBPF
    /// calls pass five registers and no stack.)
    fn full_target<E: Env>(&self, nid: Nid, learn: bool, env: &mut E) -> Option<u32> {
        if self.dir == Direction::Out as u8 {
            return self
                .external(env)
                .filter(|ext| ext.with_addr(self.local) == nid)
                .map(|ext| ext.addr());
        }
        let mapped = env
            .mapping(nid)
            .map(|a| if a == 0 { self.local } else { a });
        let target = if learn && env.learning() && nid.is_socklnd() {
            Some(mapped.unwrap_or(self.local))
        } else {
            mapped
        };
        target.filter(|&t| t != nid.addr())
    }

    /// Decides the current NID as soon as an address byte is present, and patches the address
    /// bytes as they arrive.
    fn nid_progress<E: Env>(&mut self, field: NidField, env: &mut E) {
        let addr_at = field.off() + field.form.addr_offset();
        let have = self.have as usize;
        if have <= addr_at {
            return;
        }
        if self.flags & F_DECIDED == 0 {
            self.decide(field, env);
        }
        if self.flags & F_REWRITE == 0 {
            return;
        }
        let avail = if have - addr_at < 4 {
            have - addr_at
        } else {
            4
        };
        let done = self.emitted as usize;
        if avail <= done {
            return;
        }
        let target = u32::from_le_bytes(field.form.addr_bytes(self.target));
        let have_bytes = [
            self.prefix_byte(addr_at),
            self.prefix_byte(addr_at + 1),
            self.prefix_byte(addr_at + 2),
            self.prefix_byte(addr_at + 3),
        ];
        let full = u32::from_le_bytes(have_bytes) ^ target;
        // The bytes newly in hand, [done, avail), as a word mask.
        let upto = |k: usize| ((1u64 << (8 * k)) - 1) as u32;
        let xor = (full & upto(avail) & !upto(done)).to_le_bytes();
        self.emit(
            Patch {
                pos: self.unit_seq.wrapping_add(addr_at as u32),
                xor,
            },
            done != 0,
        );
        self.emitted = avail as u8;
        if avail < 4 {
            return;
        }
        let full = full.to_le_bytes();
        if full == [0; 4] {
            return;
        }
        env.note(Note::Rewrote);
        if field.pid_off() != 0 && self.flags & F_PID_DONE == 0 {
            self.flags |= F_PID_DONE;
            // Bytes in stream order, not a number: the CRC runs over bytes, so the XOR holds
            // in either byte order (dest_pid itself is LE, like the whole LNet header).
            let gap = (field.pid_off() - addr_at - 4) as u32;
            // The first ping entry's word also carries what a cleared feature bit owes.
            let owed = if self.unit == UNIT_PING_NI && self.entry == 1 {
                core::mem::take(&mut self.comp)
            } else {
                0
            };
            let pid_xor = crc::cancel_word(u32::from_le_bytes(full), gap) ^ owed;
            self.emit(
                Patch {
                    pos: self.unit_seq.wrapping_add(field.pid_off() as u32),
                    xor: pid_xor.to_le_bytes(),
                },
                false,
            );
            env.note(Note::Compensated);
        }
    }

    /// Chooses what the current NID becomes, from all of it or from its first bytes.
    fn decide<E: Env>(&mut self, field: NidField, env: &mut E) {
        self.flags |= F_DECIDED;
        let len = field.form.size();
        let known = (self.have as usize).saturating_sub(field.off());
        let target = if known >= len {
            self.nid_of(field)
                .and_then(|n| self.full_target(n, field.learn, env))
        } else if self.dir == Direction::Out as u8 {
            self.flags |= F_PREFIX;
            self.external(env)
                .filter(|ext| self.prefix_matches(field, known, ext.with_addr(self.local)))
                .map(|ext| ext.addr())
        } else {
            self.flags |= F_PREFIX;
            if field.learn && env.learning() {
                // The HELLO names us: whatever the address, it becomes ours.
                Some(self.local)
            } else if self.hint != 0 && self.prefix_matches(field, known, Nid(self.hint)) {
                let hint = Nid(self.hint);
                env.mapping(hint)
                    .map(|a| if a == 0 { self.local } else { a })
            } else {
                None
            }
        };
        if let Some(t) = target {
            self.flags |= F_REWRITE;
            self.target = t;
        }
    }

    /// The external NID this host's own NIDs become on the way out: the peer's name for it on
    /// this connection's net, when that is not its own address.
    fn external<E: Env>(&self, env: &mut E) -> Option<Nid> {
        env.external().filter(|ext| ext.addr() != self.local)
    }

    /// The prefix byte at `i`, counted round the buffer (`i` is below `2 * PREFIX_MAX`).
    ///
    /// A conditional subtraction, not `%`: a variable `%` compiles to a division, whose result
    /// older verifiers (Linux 6.1) do not bound, and then refuse it as a map value offset.
    fn prefix_byte(&self, i: usize) -> u8 {
        let i = if i >= PREFIX_MAX { i - PREFIX_MAX } else { i };
        self.buf.get(i).copied().unwrap_or(0)
    }

    /// True when the first `known` bytes of the field are `nid`'s.
    ///
    /// `known` passes a compiler barrier before it is bounded: the compiler knows it is below
    /// the field's length and would drop the `nid::LARGE_NID_LEN` bound, which older verifiers
    /// (Linux 6.1), not knowing it, need to end the loop inside the NID.
    fn prefix_matches(&self, field: NidField, known: usize, nid: Nid) -> bool {
        let hint = field.form.wire(nid);
        let known = core::hint::black_box(known).min(crate::nid::LARGE_NID_LEN);
        let mut i = 0;
        while i < known {
            if self.prefix_byte(field.off() + i) != hint[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// With the whole NID in hand: reports a partial decision it contradicts, learns from an
    /// active HELLO, and returns the NID.
    fn finish_nid<E: Env>(&mut self, field: NidField, env: &mut E) -> Option<Nid> {
        let nid = self.nid_of(field);
        if self.flags & (F_DECIDED | F_PREFIX) == F_DECIDED | F_PREFIX {
            let full = nid.and_then(|n| self.full_target(n, field.learn, env));
            let made = (self.flags & F_REWRITE != 0)
                .then_some(self.target)
                .filter(|&t| nid.is_none_or(|n| n.addr() != t));
            if full != made {
                env.note(Note::Conflict);
            }
        }
        if let Some(n) = nid
            && field.learn
            && env.learning()
            && n.is_socklnd()
            && n.addr() != self.local
            && env.mapping(n).is_none()
        {
            env.learn(n, n.with_addr(self.local));
        }
        nid
    }

    /// Frames the complete unit and moves to the next one.
    fn finish<E: Env>(&mut self, nid: Option<Nid>, env: &mut E) {
        let len = match self.unit {
            UNIT_CONNREQ => {
                if let Some(n) = nid {
                    self.hint = n.0;
                }
                self.next_unit(UNIT_HELLO, self.need as u32);
                return;
            }
            UNIT_HELLO => {
                let proto = self.proto();
                let layout = proto.hello();
                let count = if proto == Proto::V1 {
                    let h = wire::LnetHdrLayout::NID4;
                    if Endian::Little.u32(&self.buf, h.msg_type) != wire::LnetType::Hello as u32 {
                        self.desync(Desync::NotHello, env);
                        return;
                    }
                    let bytes = Endian::Little.u32(&self.buf, layout.count_at);
                    if !bytes.is_multiple_of(4) {
                        self.desync(Desync::TooManyIps, env);
                        return;
                    }
                    bytes / 4
                } else {
                    self.rd32(layout.count_at)
                };
                if count > wire::MAX_HELLO_IPS {
                    self.desync(Desync::TooManyIps, env);
                    return;
                }
                if let Some(n) = nid {
                    self.hint = n.0;
                }
                layout.fixed as u32 + 4 * count
            }
            UNIT_MSG => {
                let proto = self.proto();
                let ks = proto.ksock_len();
                if proto != Proto::V1 && self.need as usize == wire::ksock::LEN {
                    wire::ksock::LEN as u32
                } else {
                    let hdr = proto.lnet_hdr();
                    if proto == Proto::V1 {
                        let t = self.rd32_lnet(hdr.msg_type);
                        if t > wire::LnetType::Reply as u32 {
                            self.desync(Desync::BadType, env);
                            return;
                        }
                    }
                    let payload = self.rd32_lnet(ks + hdr.payload_length);
                    if payload > wire::LNET_MTU {
                        self.desync(Desync::TooLong, env);
                        return;
                    }
                    let msg_type = self.rd32_lnet(ks + hdr.msg_type);
                    match (self.dir == Direction::In as u8, msg_type) {
                        (false, t) if t == wire::LnetType::Get as u32 => env.note(Note::GetSent),
                        (true, t) if t == wire::LnetType::Reply as u32 => {
                            env.note(Note::ReplyFramed)
                        }
                        _ => {}
                    }
                    if self.is_ping(payload) {
                        if proto != Proto::V1 && self.rd32(wire::ksock::CSUM) != 0 {
                            self.flags |= F_CSUM;
                        }
                        self.rest = payload - ping::HEAD_LEN as u32;
                        self.next_part(UNIT_PING, (ks + hdr.len) as u32, PING_NEED);
                        return;
                    }
                    (ks + hdr.len) as u32 + payload
                }
            }
            UNIT_PING => {
                self.ping_head(env);
                return;
            }
            _ => {
                // UNIT_PING_NI: the next entry, or the rest of the payload.
                if self.entry == 1 && self.comp != 0 {
                    let owed = core::mem::take(&mut self.comp);
                    self.emit(
                        Patch {
                            pos: self.unit_seq.wrapping_add(ping::NI_MSG_SIZE as u32),
                            xor: owed.to_le_bytes(),
                        },
                        false,
                    );
                    env.note(Note::Compensated);
                }
                self.entry += 1;
                self.entries -= 1;
                if self.entries > 0 {
                    self.next_part(UNIT_PING_NI, ping::NI_LEN as u32, NI_NEED);
                    return;
                }
                ping::NI_LEN as u32 + self.rest
            }
        };
        self.next_unit(UNIT_MSG, len);
    }

    /// True when the message just framed may carry ping information naming at least one NID
    /// besides `0@lo`. To the peer: a discovery push, a PUT to the reserved portal with the ping
    /// match bits. From the peer: a REPLY with room for the fixed part and a whole number of
    /// entries. In Lustre's use a REPLY reaching a client answers one of its GETs, and those are
    /// LNet pings (discovery, `lnetctl ping`): a server sends bulk read data as PUTs, and takes
    /// bulk write data with GETs, which the client answers (`ptlrpc_start_bulk_transfer`,
    /// `lustre/ptlrpc/niobuf.c`). A REPLY of user data all the same is told from ping
    /// information by [`Tracker::ping_valid`].
    fn is_ping(&self, payload: u32) -> bool {
        if payload < (ping::HEAD_LEN + 2 * ping::NI_LEN) as u32 {
            return false;
        }
        let proto = self.proto();
        let msg_type = self.rd32_lnet(proto.ksock_len() + proto.lnet_hdr().msg_type);
        if self.dir == Direction::In as u8 {
            return msg_type == wire::LnetType::Reply as u32
                && payload <= ping::HEAD_LEN as u32 + ping::NI_LEN as u32 * ping::MAX_NIS
                && payload.is_multiple_of(ping::NI_LEN as u32);
        }
        let at = proto.ksock_len() + proto.lnet_hdr().body;
        let bits = self.rd32_lnet(at + wire::LnetHdrLayout::PUT_MATCH_BITS) as u64
            | (self.rd32_lnet(at + wire::LnetHdrLayout::PUT_MATCH_BITS + 4) as u64) << 32;
        msg_type == wire::LnetType::Put as u32
            && self.rd32_lnet(at + wire::LnetHdrLayout::PUT_PTL_INDEX) == ping::PORTAL
            && bits == ping::MATCH_BITS
    }

    /// The byte order of the ping information in `buf`, from its magic (`None`: not ping
    /// information, or not enough of it yet). A receiver swaps other-endian ping information
    /// (`lnet_swap_pinginfo`, `peer.c:3068-3069`; `api-ni.c:2388-2408`).
    fn ping_endian(&self) -> Option<Endian> {
        if self.have < 4 {
            return None;
        }
        let magic = Endian::Little.u32(&self.buf, ping::MAGIC_AT);
        if magic == ping::MAGIC {
            Some(Endian::Little)
        } else if magic == ping::MAGIC.swap_bytes() {
            Some(Endian::Big)
        } else {
            None
        }
    }

    /// Where the low byte of `pi_features` lies, which holds every bit lnat reads or changes.
    const fn features_at(endian: Endian) -> usize {
        match endian {
            Endian::Little => ping::FEATURES,
            Endian::Big => ping::FEATURES + 3,
        }
    }

    /// False when the bytes of ping information in hand show that this direction's receiver
    /// would not take it, or lnat would not follow it; a check whose bytes are not in hand yet
    /// is passed. The magic in either order, `NI_STATUS`, no large primary, 2 to
    /// [`ping::MAX_NIS`] entries within the payload, entry 0 `0@lo`
    /// (`lnet_ping_info_validate`, `api-ni.c:1981-1995`; `find_primary`, `peer.c:3010-3035`).
    ///
    /// From the peer, also no large NIDs and exactly the entries. That is what keeps REPLYs of
    /// user data byte for byte: to be taken for ping information, one would need exactly that
    /// length, the magic, those flags, a matching entry count and `0@lo` at payload offset 16.
    fn ping_valid(&self) -> bool {
        let Some(endian) = self.ping_endian() else {
            return false;
        };
        let have = self.have as usize;
        let inward = self.dir == Direction::In as u8;
        let at = Self::features_at(endian);
        let features = self.prefix_byte(at) as u32;
        let reject = ping::feat::PRIMARY_LARGE | if inward { ping::feat::LARGE_ADDR } else { 0 };
        if have > at && (features & ping::feat::NI_STATUS == 0 || features & reject != 0) {
            return false;
        }
        if have >= ping::HEAD_LEN {
            let nnis = endian.u32(&self.buf, ping::NNIS);
            if !(2..=ping::MAX_NIS).contains(&nnis) {
                return false;
            }
            let entries = nnis * ping::NI_LEN as u32;
            if entries > self.rest || (inward && entries != self.rest) {
                return false;
            }
        }
        have < PING_NEED || endian.u64(&self.buf, ping::HEAD_LEN) == ping::LO.0
    }

    /// Decides the DISCOVERY feature as soon as the byte that holds it is in hand, on what the
    /// bytes in hand show ([`Tracker::ping_valid`]): from the peer, a ping reply without it gets
    /// it, so that this host pushes to the server (`peer.c:3089-3119`, `lib-lnet.h:1069`); to
    /// the peer, a push with it loses it when this host is known to the peer by an external
    /// NID, so that the server needs no push back (`peer.c:2748-2768`). One bit of one byte
    /// changes, in either byte order.
    ///
    /// All checks are made unless a segment ends between that byte and the end of entry 0's
    /// NID: a segment cannot be changed once passed. Ping information then found malformed is
    /// what its receiver drops anyway (`peer.c:3075-3083` for a reply, `:2719-2725` for a push).
    fn ping_features<E: Env>(&mut self, env: &mut E) {
        if self.flags & F_DECIDED != 0 {
            return;
        }
        let Some(endian) = self.ping_endian() else {
            if self.have >= 4 {
                self.flags |= F_DECIDED;
            }
            return;
        };
        let at = Self::features_at(endian);
        if (self.have as usize) <= at {
            return;
        }
        self.flags |= F_DECIDED;
        // Inward the bit must end set, outward clear.
        let inward = self.dir == Direction::In as u8;
        let discovery = self.prefix_byte(at) as u32 & ping::feat::DISCOVERY != 0;
        if discovery == inward || !self.ping_valid() || self.external(env).is_none() {
            return;
        }
        // The bit as wire bytes, a little-endian word like every patch.
        let bit = ping::feat::DISCOVERY << (8 * (at - ping::FEATURES));
        self.emit(
            Patch {
                pos: self.unit_seq.wrapping_add(ping::FEATURES as u32),
                xor: bit.to_le_bytes(),
            },
            false,
        );
        env.note(if inward {
            Note::Discoverable
        } else {
            Note::Undiscovering
        });
        if self.flags & F_CSUM != 0 {
            let gap = ping::HEAD_LEN + ping::NI_LEN + ping::NI_MSG_SIZE - ping::FEATURES - 4;
            self.comp = crc::cancel_word(bit, gap as u32);
        }
    }

    /// With the fixed part of ping information and entry 0's NID in hand: goes on to the later
    /// NI entries of a push a server would take, whose NIDs may be this host's; else past the
    /// payload, settling first what a changed feature bit owes the checksum. Nothing else of a
    /// ping reply changes.
    fn ping_head<E: Env>(&mut self, env: &mut E) {
        let walk = self.dir == Direction::Out as u8 && self.ping_valid();
        let Some(endian) = self.ping_endian().filter(|_| walk) else {
            if self.comp != 0 {
                // Entry 1's ns_msg_size lies within any ping payload (`is_ping`).
                let at = ping::HEAD_LEN + ping::NI_LEN + ping::NI_MSG_SIZE;
                let owed = core::mem::take(&mut self.comp);
                self.emit(
                    Patch {
                        pos: self.unit_seq.wrapping_add(at as u32),
                        xor: owed.to_le_bytes(),
                    },
                    false,
                );
                env.note(Note::Compensated);
            }
            self.next_unit(UNIT_MSG, ping::HEAD_LEN as u32 + self.rest);
            return;
        };
        self.form = match endian {
            Endian::Little => NidForm::Le,
            Endian::Big => NidForm::Be,
        } as u8;
        // Entry 0 is 0@lo (`ping_valid`): the walk starts at entry 1.
        let nnis = endian.u32(&self.buf, ping::NNIS);
        self.entry = 1;
        self.entries = (nnis - 1) as u8;
        self.rest -= nnis * ping::NI_LEN as u32;
        self.next_part(
            UNIT_PING_NI,
            (ping::HEAD_LEN + ping::NI_LEN) as u32,
            NI_NEED,
        );
    }

    /// Moves `len` bytes on to the next part of the same message, which needs `need` bytes of
    /// prefix and no probe.
    fn next_part(&mut self, unit: u8, len: u32, need: usize) {
        self.unit_seq = self.unit_seq.wrapping_add(len);
        self.unit = unit;
        self.have = 0;
        self.flags = (self.flags & (F_FLIP | F_CSUM)) | F_PROBED;
        self.emitted = 0;
        self.target = 0;
        self.need = need as u8;
    }

    fn next_unit(&mut self, unit: u8, len: u32) {
        self.unit_seq = self.unit_seq.wrapping_add(len);
        self.unit = unit;
        self.have = 0;
        self.flags &= F_FLIP;
        self.emitted = 0;
        self.target = 0;
        self.need = match unit {
            UNIT_MSG if self.proto() == Proto::V1 => self.lnet_need(),
            UNIT_MSG => 4,
            _ => 8,
        };
        if unit == UNIT_MSG {
            self.form = self.proto().lnet_form() as u8;
            if self.proto() == Proto::V1 {
                self.flags |= F_PROBED;
            }
        }
    }

    /// Records `p` and hands it to the segment in hand; `rest` when it completes a NID split
    /// across segments, whose record it then joins.
    fn emit(&mut self, p: Patch, rest: bool) {
        if p.xor == [0; 4] {
            return;
        }
        if !(rest && self.history.complete(p)) {
            self.history.push(p);
        }
        let i = self.n_out as usize;
        if i < OUT_MAX {
            self.out[i] = p;
            self.n_out += 1;
        }
    }
}
