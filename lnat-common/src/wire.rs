//! The socklnd and acceptor wire formats: constants, field offsets and codecs.
//!
//! The stream tracker reads fields at the offsets below; the LNet peer emulator in `tests/`
//! builds and parses whole frames with the codecs. Keeping both on this one module means a
//! layout mistake shows up in the golden vectors and captures, not in two places that agree.

use crate::nid::{Nid, NidForm};

/// HELLO magic of socklnd V2..V4 (`LNET_PROTO_MAGIC`).
pub const PROTO_MAGIC: u32 = 0x4572_6963;
/// Acceptor connection-request magic (`LNET_PROTO_ACCEPTOR_MAGIC`).
pub const ACCEPTOR_MAGIC: u32 = 0xacce_7100;
/// Magic that opens a V1 HELLO (`LNET_PROTO_TCP_MAGIC`); V1 peers are always little-endian.
pub const TCP_MAGIC: u32 = 0xeebc_0ded;
/// socklnd message carrying nothing (keepalive or zero-copy ACK).
pub const MSG_NOOP: u32 = 0xc0;
/// socklnd message carrying an LNet header and payload.
pub const MSG_LNET: u32 = 0xc1;
/// Largest LNet payload the kernel accepts (`LNET_MTU`).
pub const LNET_MTU: u32 = 1 << 20;
/// The pid of kernel LNet (`LNET_PID_LUSTRE`).
pub const PID_LUSTRE: u32 = 12345;
/// Flag a passive socklnd ORs into the pid of a peer it treats as userspace.
pub const PID_USERFLAG: u32 = 0x8000_0000;
/// Highest source port the acceptor counts as reserved (`LNET_ACCEPTOR_MAX_RESERVED_PORT`).
pub const MAX_RESERVED_PORT: u16 = 1023;
/// Lowest reserved port `lnet_connect` tries.
pub const MIN_RESERVED_PORT: u16 = 512;
/// Most deprecated interface addresses a HELLO may list (`LNET_INTERFACES_NUM`).
pub const MAX_HELLO_IPS: u32 = 16;
/// The LNet acceptor port.
pub const ACCEPTOR_PORT: u16 = 988;

/// LNet message types, as in an LNet header's `type` field.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum LnetType {
    /// Acknowledges a PUT; no payload.
    Ack = 0,
    /// Sends a payload.
    Put = 1,
    /// Asks for a payload; no payload itself.
    Get = 2,
    /// Answers a GET with a payload.
    Reply = 3,
    /// A V1 HELLO, which is an LNet header of this type.
    Hello = 4,
}

impl LnetType {
    /// The type for a wire value, if it is one.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(LnetType::Ack),
            1 => Some(LnetType::Put),
            2 => Some(LnetType::Get),
            3 => Some(LnetType::Reply),
            4 => Some(LnetType::Hello),
            _ => None,
        }
    }
}

/// socklnd protocol versions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Proto {
    /// No ksock header; HELLO is an LNet header; no dst_nid.
    V1 = 1,
    /// ksock header, nid4 LNet header, optional CRC-32 checksum.
    V2 = 2,
    /// As V2 without checksums: the default for IPv4.
    V3 = 3,
    /// ksock header and large (nid16) LNet header: the default for IPv6.
    V4 = 4,
}

impl Proto {
    /// The version for a wire value, if lnat knows it.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Proto::V1),
            2 => Some(Proto::V2),
            3 => Some(Proto::V3),
            4 => Some(Proto::V4),
            _ => None,
        }
    }

    /// How NIDs are laid out in this version's HELLO, given the sender's byte order: a V2/V3
    /// HELLO writes its nid4s in the sender's order (`ksocknal_send_hello_v2`), and V1's is LE.
    pub const fn hello_form(self, flip: bool) -> NidForm {
        match self {
            Proto::V4 => NidForm::Large,
            _ if flip => NidForm::Be,
            _ => NidForm::Le,
        }
    }

    /// How NIDs are laid out in this version's LNet headers: LE nid4 whatever the sender's byte
    /// order (`include/linux/lnet/lib-lnet.h`, `lnet_hdr_to_nid4`: `cpu_to_le64`), large NIDs in
    /// V4.
    pub const fn lnet_form(self) -> NidForm {
        match self {
            Proto::V4 => NidForm::Large,
            _ => NidForm::Le,
        }
    }

    /// The HELLO layout of this version.
    pub const fn hello(self) -> HelloLayout {
        match self {
            Proto::V1 => HelloLayout {
                fixed: LnetHdrLayout::NID4.len,
                dst_nid: None,
                count_at: LnetHdrLayout::NID4.payload_length,
                count_is_bytes: true,
            },
            Proto::V2 | Proto::V3 => HelloLayout {
                fixed: hello4::LEN,
                dst_nid: Some(hello4::DST_NID),
                count_at: hello4::NIPS,
                count_is_bytes: false,
            },
            Proto::V4 => HelloLayout {
                fixed: hello16::LEN,
                dst_nid: Some(hello16::DST_NID),
                count_at: hello16::NIPS,
                count_is_bytes: false,
            },
        }
    }

    /// The LNet header layout of this version.
    pub const fn lnet_hdr(self) -> LnetHdrLayout {
        match self {
            Proto::V4 => LnetHdrLayout::NID16,
            _ => LnetHdrLayout::NID4,
        }
    }

    /// Bytes before the LNet header in each message: the ksock header, absent in V1.
    pub const fn ksock_len(self) -> usize {
        match self {
            Proto::V1 => 0,
            _ => ksock::LEN,
        }
    }
}

/// Where a version's HELLO keeps the fields the tracker needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HelloLayout {
    /// Length of the fixed part, before the deprecated interface list.
    pub fixed: usize,
    /// Offset of dst_nid, absent in V1.
    pub dst_nid: Option<usize>,
    /// Offset of the u32 that sizes the trailing list.
    pub count_at: usize,
    /// True when that u32 counts bytes (V1 payload_length), false when it counts addresses.
    pub count_is_bytes: bool,
}

/// Where an LNet header keeps the fields the tracker needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LnetHdrLayout {
    /// Header length.
    pub len: usize,
    /// Offset of dest_nid.
    pub dest_nid: usize,
    /// Offset of src_nid.
    pub src_nid: usize,
    /// Offset of dest_pid.
    pub dest_pid: usize,
    /// Offset of src_pid.
    pub src_pid: usize,
    /// Offset of the LNet message type.
    pub msg_type: usize,
    /// Offset of payload_length.
    pub payload_length: usize,
    /// Offset of the type-specific union.
    pub body: usize,
}

impl LnetHdrLayout {
    /// `struct lnet_hdr_nid4` (V1..V3).
    pub const NID4: LnetHdrLayout = LnetHdrLayout {
        len: 72,
        dest_nid: 0,
        src_nid: 8,
        dest_pid: 16,
        src_pid: 20,
        msg_type: 24,
        payload_length: 28,
        body: 32,
    };
    /// `struct lnet_hdr_nid16` (V4).
    pub const NID16: LnetHdrLayout = LnetHdrLayout {
        len: 96,
        dest_nid: 0,
        src_nid: 20,
        dest_pid: 40,
        src_pid: 44,
        msg_type: 48,
        payload_length: 52,
        body: 56,
    };
    /// Length of the type-specific union, the same in both forms.
    pub const BODY_LEN: usize = 40;
    /// Offset of a PUT's match bits (u64) in the union, after `ack_wmd`.
    pub const PUT_MATCH_BITS: usize = 16;
    /// Offset of a PUT's portal index in the union, after the match bits and `hdr_data`.
    pub const PUT_PTL_INDEX: usize = 32;
}

/// The acceptor connection request (`struct lnet_acceptor_connreq`, V1 and V2).
pub mod connreq {
    /// Offset of the magic.
    pub const MAGIC: usize = 0;
    /// Offset of the version.
    pub const VERSION: usize = 4;
    /// Offset of acr_nid.
    pub const NID: usize = 8;
    /// Length of a V1 request (nid4).
    pub const LEN_V1: usize = 16;
    /// Length of a V2 request (large NID).
    pub const LEN_V2: usize = 28;
}

/// `struct ksock_hello_msg_nid4` (V2, V3).
pub mod hello4 {
    /// Offset of the magic.
    pub const MAGIC: usize = 0;
    /// Offset of the version.
    pub const VERSION: usize = 4;
    /// Offset of src_nid.
    pub const SRC_NID: usize = 8;
    /// Offset of dst_nid.
    pub const DST_NID: usize = 16;
    /// Offset of src_pid.
    pub const SRC_PID: usize = 24;
    /// Offset of dst_pid.
    pub const DST_PID: usize = 28;
    /// Offset of src_incarnation.
    pub const SRC_INC: usize = 32;
    /// Offset of dst_incarnation.
    pub const DST_INC: usize = 40;
    /// Offset of ctype.
    pub const CTYPE: usize = 48;
    /// Offset of nips.
    pub const NIPS: usize = 52;
    /// Length without the address list.
    pub const LEN: usize = 56;
}

/// `struct ksock_hello_msg` (V4, large NIDs).
pub mod hello16 {
    /// Offset of src_nid.
    pub const SRC_NID: usize = 8;
    /// Offset of dst_nid.
    pub const DST_NID: usize = 28;
    /// Offset of src_pid.
    pub const SRC_PID: usize = 48;
    /// Offset of dst_pid.
    pub const DST_PID: usize = 52;
    /// Offset of src_incarnation.
    pub const SRC_INC: usize = 56;
    /// Offset of dst_incarnation.
    pub const DST_INC: usize = 64;
    /// Offset of ctype.
    pub const CTYPE: usize = 72;
    /// Offset of nips.
    pub const NIPS: usize = 76;
    /// Length without the address list.
    pub const LEN: usize = 80;
}

/// V1 HELLO: an LNet nid4 header whose first 8 bytes hold magic and version.
pub mod hello1 {
    /// Offset of the u16 major version (1).
    pub const MAJOR: usize = 4;
    /// Offset of the u16 minor version (0).
    pub const MINOR: usize = 6;
    /// Offset of the incarnation in the header's union.
    pub const INCARNATION: usize = 32;
    /// Offset of the connection type in the header's union.
    pub const CTYPE: usize = 40;
}

/// `struct ksock_msg_hdr`.
pub mod ksock {
    /// Offset of the socklnd message type.
    pub const TYPE: usize = 0;
    /// Offset of the checksum.
    pub const CSUM: usize = 4;
    /// Offset of the two zero-copy cookies.
    pub const ZC_COOKIES: usize = 8;
    /// Header length.
    pub const LEN: usize = 24;
}

/// Byte order of a peer, as its HELLO magic reveals.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Endian {
    /// Same order as lnat's reference (x86) peers.
    Little,
    /// Byte-swapped: socklnd calls this `ksnc_flip`.
    Big,
}

impl Endian {
    /// Reads a u32 at `off`; zero past the end (callers check lengths first).
    pub fn u32(self, b: &[u8], off: usize) -> u32 {
        let mut w = [0u8; 4];
        if let Some(s) = b.get(off..off + 4) {
            w.copy_from_slice(s);
        }
        match self {
            Endian::Little => u32::from_le_bytes(w),
            Endian::Big => u32::from_be_bytes(w),
        }
    }

    /// Reads a u64 at `off`; zero past the end.
    pub fn u64(self, b: &[u8], off: usize) -> u64 {
        let mut w = [0u8; 8];
        if let Some(s) = b.get(off..off + 8) {
            w.copy_from_slice(s);
        }
        match self {
            Endian::Little => u64::from_le_bytes(w),
            Endian::Big => u64::from_be_bytes(w),
        }
    }

    /// Writes a u32 at `off`.
    pub fn put_u32(self, b: &mut [u8], off: usize, v: u32) {
        let w = match self {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        b[off..off + 4].copy_from_slice(&w);
    }

    /// Writes a u64 at `off`.
    pub fn put_u64(self, b: &mut [u8], off: usize, v: u64) {
        let w = match self {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        b[off..off + 8].copy_from_slice(&w);
    }
}

/// Why a frame could not be decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WireError {
    /// Fewer bytes than the frame needs.
    Short,
    /// The magic is not one socklnd or the acceptor sends.
    BadMagic(u32),
    /// A version lnat does not know.
    BadVersion(u32),
    /// A V1 HELLO whose LNet header type is not HELLO.
    NotHello,
    /// More interface addresses than socklnd accepts.
    TooManyIps(u32),
    /// A large NID that is not IPv4.
    NotIpv4,
}

/// An acceptor connection request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Connreq {
    /// The NID the connecting side wants to reach.
    pub nid: Nid,
    /// 1 for a nid4 request, 2 for a large-NID request.
    pub version: u32,
}

impl Connreq {
    /// Encoded length.
    pub const fn wire_len(&self) -> usize {
        if self.version == 2 {
            connreq::LEN_V2
        } else {
            connreq::LEN_V1
        }
    }

    /// Encodes into `out`, returning the length written.
    pub fn encode(&self, endian: Endian, out: &mut [u8]) -> usize {
        let len = self.wire_len();
        out[..len].fill(0);
        endian.put_u32(out, connreq::MAGIC, ACCEPTOR_MAGIC);
        endian.put_u32(out, connreq::VERSION, self.version);
        let form = if self.version == 2 {
            NidForm::Large
        } else if endian == Endian::Big {
            NidForm::Be
        } else {
            NidForm::Le
        };
        form.encode(self.nid, &mut out[connreq::NID..]);
        len
    }

    /// Decodes a request from the start of `b`.
    pub fn decode(b: &[u8]) -> Result<(Connreq, Endian), WireError> {
        if b.len() < 8 {
            return Err(WireError::Short);
        }
        let endian = match Endian::Little.u32(b, 0) {
            ACCEPTOR_MAGIC => Endian::Little,
            m if m.swap_bytes() == ACCEPTOR_MAGIC => Endian::Big,
            m => return Err(WireError::BadMagic(m)),
        };
        let version = endian.u32(b, connreq::VERSION);
        let form = match version {
            1 if endian == Endian::Big => NidForm::Be,
            1 => NidForm::Le,
            2 => NidForm::Large,
            v => return Err(WireError::BadVersion(v)),
        };
        let field = b
            .get(connreq::NID..connreq::NID + form.size())
            .ok_or(WireError::Short)?;
        let nid = form.decode(field).ok_or(WireError::NotIpv4)?;
        Ok((Connreq { nid, version }, endian))
    }
}

/// A socklnd HELLO of any version (V1 fills only the fields it has).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Hello {
    /// Protocol version.
    pub proto: Proto,
    /// The sender's NID.
    pub src_nid: Nid,
    /// The NID the sender addresses (absent from V1, decoded as `Nid::ANY`).
    pub dst_nid: Nid,
    /// The sender's pid.
    pub src_pid: u32,
    /// The pid the sender addresses.
    pub dst_pid: u32,
    /// The sender's incarnation.
    pub src_incarnation: u64,
    /// The incarnation the sender knows of the receiver.
    pub dst_incarnation: u64,
    /// Connection type: 0 any, 1 control, 2 bulk-in, 3 bulk-out.
    pub ctype: u32,
    /// Number of trailing interface addresses.
    pub nips: u32,
}

impl Hello {
    /// Encoded length including the interface addresses.
    pub const fn wire_len(&self) -> usize {
        self.proto.hello().fixed + 4 * self.nips as usize
    }

    /// Encodes into `out` (addresses written as 10.0.0.1, 10.0.0.2, ...), returning the length.
    pub fn encode(&self, endian: Endian, out: &mut [u8]) -> usize {
        let len = self.wire_len();
        let out = &mut out[..len];
        out.fill(0);
        let form = self.proto.hello_form(endian == Endian::Big);
        match self.proto {
            Proto::V1 => {
                let h = LnetHdrLayout::NID4;
                Endian::Little.put_u32(out, 0, TCP_MAGIC);
                out[hello1::MAJOR..hello1::MAJOR + 2].copy_from_slice(&1u16.to_le_bytes());
                form.encode(self.src_nid, &mut out[h.src_nid..]);
                Endian::Little.put_u32(out, h.src_pid, self.src_pid);
                Endian::Little.put_u32(out, h.msg_type, LnetType::Hello as u32);
                Endian::Little.put_u32(out, h.payload_length, 4 * self.nips);
                Endian::Little.put_u64(out, hello1::INCARNATION, self.src_incarnation);
                Endian::Little.put_u32(out, hello1::CTYPE, self.ctype);
            }
            Proto::V2 | Proto::V3 => {
                endian.put_u32(out, hello4::MAGIC, PROTO_MAGIC);
                endian.put_u32(out, hello4::VERSION, self.proto as u32);
                form.encode(self.src_nid, &mut out[hello4::SRC_NID..]);
                form.encode(self.dst_nid, &mut out[hello4::DST_NID..]);
                endian.put_u32(out, hello4::SRC_PID, self.src_pid);
                endian.put_u32(out, hello4::DST_PID, self.dst_pid);
                endian.put_u64(out, hello4::SRC_INC, self.src_incarnation);
                endian.put_u64(out, hello4::DST_INC, self.dst_incarnation);
                endian.put_u32(out, hello4::CTYPE, self.ctype);
                endian.put_u32(out, hello4::NIPS, self.nips);
            }
            Proto::V4 => {
                endian.put_u32(out, hello4::MAGIC, PROTO_MAGIC);
                endian.put_u32(out, hello4::VERSION, 4);
                form.encode(self.src_nid, &mut out[hello16::SRC_NID..]);
                form.encode(self.dst_nid, &mut out[hello16::DST_NID..]);
                endian.put_u32(out, hello16::SRC_PID, self.src_pid);
                endian.put_u32(out, hello16::DST_PID, self.dst_pid);
                endian.put_u64(out, hello16::SRC_INC, self.src_incarnation);
                endian.put_u64(out, hello16::DST_INC, self.dst_incarnation);
                endian.put_u32(out, hello16::CTYPE, self.ctype);
                endian.put_u32(out, hello16::NIPS, self.nips);
            }
        }
        let fixed = self.proto.hello().fixed;
        let ip_endian = if self.proto == Proto::V1 {
            Endian::Little
        } else {
            endian
        };
        for i in 0..self.nips as usize {
            ip_endian.put_u32(out, fixed + 4 * i, 0x0a00_0001 + i as u32);
        }
        len
    }

    /// Reads magic and version: the protocol and byte order, from the first 8 bytes.
    pub fn probe(b: &[u8]) -> Result<(Proto, Endian), WireError> {
        if b.len() < 8 {
            return Err(WireError::Short);
        }
        let magic = Endian::Little.u32(b, 0);
        let endian = if magic == PROTO_MAGIC {
            Endian::Little
        } else if magic.swap_bytes() == PROTO_MAGIC {
            Endian::Big
        } else if magic == TCP_MAGIC {
            let major = u16::from_le_bytes([b[hello1::MAJOR], b[hello1::MAJOR + 1]]);
            let minor = u16::from_le_bytes([b[hello1::MINOR], b[hello1::MINOR + 1]]);
            return if (major, minor) == (1, 0) {
                Ok((Proto::V1, Endian::Little))
            } else {
                Err(WireError::BadVersion(major as u32))
            };
        } else {
            return Err(WireError::BadMagic(magic));
        };
        let version = endian.u32(b, hello4::VERSION);
        match version {
            2..=4 => Ok((Proto::from_u8(version as u8).unwrap_or(Proto::V3), endian)),
            v => Err(WireError::BadVersion(v)),
        }
    }

    /// The whole HELLO's length, from its fixed part: a reader of a socket takes that many
    /// bytes before [`Hello::decode`], and refuses an address list socklnd would refuse.
    pub fn wire_len_from(b: &[u8]) -> Result<usize, WireError> {
        let (proto, endian) = Hello::probe(b)?;
        let layout = proto.hello();
        if b.len() < layout.fixed {
            return Err(WireError::Short);
        }
        let list = if layout.count_is_bytes {
            Endian::Little.u32(b, layout.count_at)
        } else {
            endian.u32(b, layout.count_at).saturating_mul(4)
        };
        if !list.is_multiple_of(4) || list / 4 > MAX_HELLO_IPS {
            return Err(WireError::TooManyIps(list / 4));
        }
        Ok(layout.fixed + list as usize)
    }

    /// Decodes a whole HELLO (fixed part and addresses) from the start of `b`.
    pub fn decode(b: &[u8]) -> Result<(Hello, Endian, usize), WireError> {
        let (proto, endian) = Hello::probe(b)?;
        let layout = proto.hello();
        if b.len() < layout.fixed {
            return Err(WireError::Short);
        }
        let form = proto.hello_form(endian == Endian::Big);
        let nid_at = |off: usize| {
            form.decode(&b[off..off + form.size()])
                .ok_or(WireError::NotIpv4)
        };
        let hello = match proto {
            Proto::V1 => {
                let h = LnetHdrLayout::NID4;
                if Endian::Little.u32(b, h.msg_type) != LnetType::Hello as u32 {
                    return Err(WireError::NotHello);
                }
                let bytes = Endian::Little.u32(b, h.payload_length);
                if !bytes.is_multiple_of(4) || bytes / 4 > MAX_HELLO_IPS {
                    return Err(WireError::TooManyIps(bytes / 4));
                }
                Hello {
                    proto,
                    src_nid: nid_at(h.src_nid)?,
                    dst_nid: Nid::ANY,
                    src_pid: Endian::Little.u32(b, h.src_pid),
                    dst_pid: 0,
                    src_incarnation: Endian::Little.u64(b, hello1::INCARNATION),
                    dst_incarnation: 0,
                    ctype: Endian::Little.u32(b, hello1::CTYPE),
                    nips: bytes / 4,
                }
            }
            Proto::V2 | Proto::V3 => Hello {
                proto,
                src_nid: nid_at(hello4::SRC_NID)?,
                dst_nid: nid_at(hello4::DST_NID)?,
                src_pid: endian.u32(b, hello4::SRC_PID),
                dst_pid: endian.u32(b, hello4::DST_PID),
                src_incarnation: endian.u64(b, hello4::SRC_INC),
                dst_incarnation: endian.u64(b, hello4::DST_INC),
                ctype: endian.u32(b, hello4::CTYPE),
                nips: endian.u32(b, hello4::NIPS),
            },
            Proto::V4 => Hello {
                proto,
                src_nid: nid_at(hello16::SRC_NID)?,
                dst_nid: nid_at(hello16::DST_NID)?,
                src_pid: endian.u32(b, hello16::SRC_PID),
                dst_pid: endian.u32(b, hello16::DST_PID),
                src_incarnation: endian.u64(b, hello16::SRC_INC),
                dst_incarnation: endian.u64(b, hello16::DST_INC),
                ctype: endian.u32(b, hello16::CTYPE),
                nips: endian.u32(b, hello16::NIPS),
            },
        };
        if hello.nips > MAX_HELLO_IPS {
            return Err(WireError::TooManyIps(hello.nips));
        }
        let len = hello.wire_len();
        if b.len() < len {
            return Err(WireError::Short);
        }
        Ok((hello, endian, len))
    }
}

/// An LNet header (either form), with the type-specific union kept as raw bytes.
///
/// Always little-endian on the wire, on every connection: the sender converts with
/// `cpu_to_le*` and the receiver with `le*_to_cpu` (`include/linux/lnet/lib-lnet.h`,
/// `lnet_hdr_to_nid4`, `lnet_hdr_from_nid4`, `lnet_hdr_to_nid16`, `lnet_hdr_from_nid16`), unlike
/// the ksock header before it, which a big-endian peer sends byte-swapped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LnetHdr {
    /// Final destination.
    pub dest_nid: Nid,
    /// Original sender.
    pub src_nid: Nid,
    /// Destination pid (not checked by a receiving kernel).
    pub dest_pid: u32,
    /// Sender's pid.
    pub src_pid: u32,
    /// LNet message type (raw, so that bad types can be sent).
    pub msg_type: u32,
    /// Payload bytes following the header.
    pub payload_length: u32,
    /// The type-specific union (PUT: ack_wmd, match_bits, hdr_data, ptl_index, offset), already
    /// in wire order (LE: `LNetPut` in `lnet/lnet/lib-move.c` stores it with `cpu_to_le*`).
    pub body: [u8; LnetHdrLayout::BODY_LEN],
}

impl LnetHdr {
    /// Encodes into `out` in the layout of `proto`, returning the header length.
    pub fn encode(&self, proto: Proto, out: &mut [u8]) -> usize {
        let l = proto.lnet_hdr();
        let form = proto.lnet_form();
        let le = Endian::Little;
        let out = &mut out[..l.len];
        out.fill(0);
        form.encode(self.dest_nid, &mut out[l.dest_nid..]);
        form.encode(self.src_nid, &mut out[l.src_nid..]);
        le.put_u32(out, l.dest_pid, self.dest_pid);
        le.put_u32(out, l.src_pid, self.src_pid);
        le.put_u32(out, l.msg_type, self.msg_type);
        le.put_u32(out, l.payload_length, self.payload_length);
        out[l.body..l.body + LnetHdrLayout::BODY_LEN].copy_from_slice(&self.body);
        l.len
    }

    /// Decodes a header in the layout of `proto` from the start of `b`.
    pub fn decode(proto: Proto, b: &[u8]) -> Result<LnetHdr, WireError> {
        let l = proto.lnet_hdr();
        let b = b.get(..l.len).ok_or(WireError::Short)?;
        let form = proto.lnet_form();
        let le = Endian::Little;
        let nid = |off: usize| {
            form.decode(&b[off..off + form.size()])
                .ok_or(WireError::NotIpv4)
        };
        let mut body = [0u8; LnetHdrLayout::BODY_LEN];
        body.copy_from_slice(&b[l.body..l.body + LnetHdrLayout::BODY_LEN]);
        Ok(LnetHdr {
            dest_nid: nid(l.dest_nid)?,
            src_nid: nid(l.src_nid)?,
            dest_pid: le.u32(b, l.dest_pid),
            src_pid: le.u32(b, l.src_pid),
            msg_type: le.u32(b, l.msg_type),
            payload_length: le.u32(b, l.payload_length),
            body,
        })
    }
}

/// A ksock message header.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct KsockHdr {
    /// `MSG_NOOP` or `MSG_LNET`.
    pub msg_type: u32,
    /// CRC-32 of the message (V2 with `enable_csum`), 0 for none.
    pub csum: u32,
    /// Zero-copy request and ACK cookies.
    pub zc_cookies: [u64; 2],
}

impl KsockHdr {
    /// Encodes into `out`, returning 24.
    pub fn encode(&self, endian: Endian, out: &mut [u8]) -> usize {
        endian.put_u32(out, ksock::TYPE, self.msg_type);
        endian.put_u32(out, ksock::CSUM, self.csum);
        endian.put_u64(out, ksock::ZC_COOKIES, self.zc_cookies[0]);
        endian.put_u64(out, ksock::ZC_COOKIES + 8, self.zc_cookies[1]);
        ksock::LEN
    }

    /// Decodes from the start of `b`.
    pub fn decode(endian: Endian, b: &[u8]) -> Result<KsockHdr, WireError> {
        if b.len() < ksock::LEN {
            return Err(WireError::Short);
        }
        Ok(KsockHdr {
            msg_type: endian.u32(b, ksock::TYPE),
            csum: endian.u32(b, ksock::CSUM),
            zc_cookies: [
                endian.u64(b, ksock::ZC_COOKIES),
                endian.u64(b, ksock::ZC_COOKIES + 8),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> std::vec::Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn nid(s: &str) -> Nid {
        s.parse().unwrap()
    }

    /// docs/protocol.md, V3 exchange: connreq from 198.51.100.2@tcp to 203.0.113.10@tcp.
    #[test]
    fn connreq_vector() {
        let want = hex("00 71 ce ac 01 00 00 00 0a 71 00 cb 00 00 02 00");
        let req = Connreq {
            nid: nid("203.0.113.10@tcp"),
            version: 1,
        };
        let mut out = [0u8; 32];
        assert_eq!(req.encode(Endian::Little, &mut out), 16);
        assert_eq!(out[..16], want[..]);
        assert_eq!(Connreq::decode(&want), Ok((req, Endian::Little)));
        let n = req.encode(Endian::Big, &mut out);
        assert_eq!(Connreq::decode(&out[..n]), Ok((req, Endian::Big)));
        let v2 = Connreq {
            nid: nid("203.0.113.10@tcp"),
            version: 2,
        };
        let n = v2.encode(Endian::Little, &mut out);
        assert_eq!(n, 28);
        assert_eq!(Connreq::decode(&out[..n]), Ok((v2, Endian::Little)));
    }

    /// docs/protocol.md, V3 exchange: client HELLO and the server HELLO naming the client 203.0.113.1@tcp.
    #[test]
    fn hello_vectors() {
        let client = hex(
            "63 69 72 45 03 00 00 00 02 64 33 c6 00 00 02 00 0a 71 00 cb 00 00 02 00 39 30 00 00 \
             00 00 00 00 1b 4e f6 51 4a 1e eb 18 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00",
        );
        let server = hex(
            "63 69 72 45 03 00 00 00 0a 71 00 cb 00 00 02 00 01 71 00 cb 00 00 02 00 39 30 00 00 \
             00 00 00 00 8d 41 18 17 4a 1e eb 18 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00",
        );
        let (h, e, len) = Hello::decode(&client).unwrap();
        assert_eq!((e, len, h.proto), (Endian::Little, 56, Proto::V3));
        assert_eq!(
            (h.src_nid, h.dst_nid),
            (nid("198.51.100.2@tcp"), nid("203.0.113.10@tcp"))
        );
        assert_eq!(
            (h.src_pid, h.dst_pid, h.ctype, h.nips),
            (PID_LUSTRE, 0, 1, 0)
        );
        assert_eq!(h.src_incarnation, 0x18eb_1e4a_51f6_4e1b);
        let mut out = [0u8; 128];
        assert_eq!(h.encode(Endian::Little, &mut out), 56);
        assert_eq!(out[..56], client[..]);
        let (s, _, _) = Hello::decode(&server).unwrap();
        assert_eq!(
            (s.src_nid, s.dst_nid),
            (nid("203.0.113.10@tcp"), nid("203.0.113.1@tcp"))
        );
    }

    #[test]
    fn hello_round_trips_every_version_and_order() {
        for proto in [Proto::V1, Proto::V2, Proto::V3, Proto::V4] {
            for endian in [Endian::Little, Endian::Big] {
                if proto == Proto::V1 && endian == Endian::Big {
                    continue;
                }
                let h = Hello {
                    proto,
                    src_nid: nid("203.0.113.10@tcp2"),
                    dst_nid: if proto == Proto::V1 {
                        Nid::ANY
                    } else {
                        nid("203.0.113.1@tcp2")
                    },
                    src_pid: PID_LUSTRE,
                    dst_pid: if proto == Proto::V1 { 0 } else { 7 },
                    src_incarnation: 0x1122_3344_5566_7788,
                    dst_incarnation: if proto == Proto::V1 { 0 } else { 9 },
                    ctype: 3,
                    nips: 2,
                };
                let mut out = [0u8; 256];
                let n = h.encode(endian, &mut out);
                assert_eq!(
                    Hello::decode(&out[..n]),
                    Ok((h, endian, n)),
                    "{proto:?} {endian:?}"
                );
                assert_eq!(Hello::decode(&out[..n - 1]), Err(WireError::Short));
            }
        }
    }

    #[test]
    fn hello_rejects_bad_magic_version_and_ips() {
        let mut b = [0u8; 80];
        assert_eq!(Hello::probe(&b), Err(WireError::BadMagic(0)));
        Endian::Little.put_u32(&mut b, 0, PROTO_MAGIC);
        Endian::Little.put_u32(&mut b, 4, 5);
        assert_eq!(Hello::probe(&b), Err(WireError::BadVersion(5)));
        Endian::Little.put_u32(&mut b, 4, 3);
        Endian::Little.put_u32(&mut b, hello4::NIPS, 17);
        assert_eq!(Hello::decode(&b), Err(WireError::TooManyIps(17)));
        assert_eq!(Hello::wire_len_from(&b), Err(WireError::TooManyIps(17)));
        assert_eq!(Hello::wire_len_from(&b[..40]), Err(WireError::Short));
        Endian::Little.put_u32(&mut b, hello4::NIPS, 2);
        assert_eq!(Hello::wire_len_from(&b), Ok(hello4::LEN + 8));
    }

    /// docs/protocol.md, V3 exchange: a PUT from the server to 203.0.113.1@tcp with a 16-byte payload.
    #[test]
    fn put_vector() {
        let msg = hex(
            "c1 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
             01 71 00 cb 00 00 02 00 0a 71 00 cb 00 00 02 00 \
             41 9c 00 80 39 30 00 00 01 00 00 00 10 00 00 00 \
             ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff 88 77 66 55 44 33 22 11 \
             00 00 00 00 00 00 00 00 04 00 00 00 00 00 00 00",
        );
        let k = KsockHdr::decode(Endian::Little, &msg).unwrap();
        assert_eq!(
            k,
            KsockHdr {
                msg_type: MSG_LNET,
                csum: 0,
                zc_cookies: [0, 0]
            }
        );
        let h = LnetHdr::decode(Proto::V3, &msg[24..]).unwrap();
        assert_eq!(
            (h.dest_nid, h.src_nid),
            (nid("203.0.113.1@tcp"), nid("203.0.113.10@tcp"))
        );
        assert_eq!((h.dest_pid, h.src_pid), (0x8000_9c41, PID_LUSTRE));
        assert_eq!((h.msg_type, h.payload_length), (LnetType::Put as u32, 16));
        let mut out = [0u8; 96];
        let n = k.encode(Endian::Little, &mut out);
        let n = n + h.encode(Proto::V3, &mut out[n..]);
        assert_eq!(out[..n], msg[..]);
    }
}
