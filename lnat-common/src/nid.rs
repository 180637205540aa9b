//! LNet network identifiers: the canonical value, its string form and its wire encodings.
//!
//! A nid4 is `(net << 32) | addr` with `net = (lnd << 16) | num` and `addr` the IPv4 address as a
//! host-order integer. Every IPv4 NID that lnat handles is carried in this form internally; the
//! three wire encodings below only differ in byte order and framing.

use core::fmt;

/// LND type of the TCP socket LND (`tcp` in NID strings).
pub const SOCKLND: u16 = 2;
/// LND type of the InfiniBand LND (`o2ib`).
pub const O2IBLND: u16 = 5;
/// LND type of the loopback LND (`lo`).
pub const LOLND: u16 = 9;

/// Names of the LND types lnat can print and parse, by LND type number.
const LND_NAMES: [(u16, &str); 3] = [(SOCKLND, "tcp"), (O2IBLND, "o2ib"), (LOLND, "lo")];

/// An IPv4 LNet NID in its canonical nid4 form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Nid(pub u64);

impl Nid {
    /// `LNET_NID_ANY`: never a real peer, so never learned or rewritten.
    pub const ANY: Nid = Nid(u64::MAX);

    /// Builds a NID from an IPv4 address (host order), an LND type and a net number.
    pub const fn new(addr: u32, lnd: u16, num: u16) -> Self {
        Nid(((lnd as u64) << 48) | ((num as u64) << 32) | addr as u64)
    }

    /// The IPv4 address as a host-order integer (`a.b.c.d` is `a << 24 | ...`).
    pub const fn addr(self) -> u32 {
        self.0 as u32
    }

    /// The LNet net: LND type in the high half, net number in the low half.
    pub const fn net(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The LND type (2 for `tcp`).
    pub const fn lnd(self) -> u16 {
        (self.0 >> 48) as u16
    }

    /// The net number (`tcp1` is 1).
    pub const fn num(self) -> u16 {
        (self.0 >> 32) as u16
    }

    /// The same net with another address: how lnat forms the local NID for an external one.
    pub const fn with_addr(self, addr: u32) -> Self {
        Nid((self.0 & !0xffff_ffff) | addr as u64)
    }

    /// True for a NID of the socket LND, the only kind a socklnd HELLO can name us by.
    pub const fn is_socklnd(self) -> bool {
        self.lnd() == SOCKLND && self.0 != Nid::ANY.0
    }
}

/// How a NID field is laid out on one stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum NidForm {
    /// 8-byte nid4, little-endian: the normal x86 peer.
    Le = 0,
    /// 8-byte nid4 from an other-endian peer: the u64 is big-endian.
    Be = 1,
    /// 20-byte `struct lnet_nid` (protocol V4, acceptor V2): size, type, BE net number, address.
    Large = 2,
}

/// Size of a large NID field on the wire.
pub const LARGE_NID_LEN: usize = 20;

impl NidForm {
    /// Field length in bytes.
    pub const fn size(self) -> usize {
        match self {
            NidForm::Le | NidForm::Be => 8,
            NidForm::Large => LARGE_NID_LEN,
        }
    }

    /// Offset of the four IPv4 address bytes inside the field: the only bytes lnat rewrites.
    pub const fn addr_offset(self) -> usize {
        match self {
            NidForm::Le => 0,
            NidForm::Be | NidForm::Large => 4,
        }
    }

    /// The address as its four wire bytes in this form.
    pub const fn addr_bytes(self, addr: u32) -> [u8; 4] {
        match self {
            NidForm::Le => addr.to_le_bytes(),
            NidForm::Be | NidForm::Large => addr.to_be_bytes(),
        }
    }

    /// `nid` encoded in this form, zero-padded to the large-NID length.
    ///
    /// One branch on the form, then straight-line stores: cheap for the eBPF verifier.
    pub const fn wire(self, nid: Nid) -> [u8; LARGE_NID_LEN] {
        let mut out = [0u8; LARGE_NID_LEN];
        let addr = self.addr_bytes(nid.addr());
        let (net, net_at, addr_at) = match self {
            NidForm::Le => (nid.net().to_le_bytes(), 4, 0),
            NidForm::Be => (nid.net().to_be_bytes(), 0, 4),
            NidForm::Large => {
                let num = nid.num().to_be_bytes();
                ([0, nid.lnd() as u8, num[0], num[1]], 0, 4)
            }
        };
        let mut i = 0;
        while i < 4 {
            out[net_at + i] = net[i];
            out[addr_at + i] = addr[i];
            i += 1;
        }
        out
    }

    /// Writes `nid` into `out` (which must hold at least `self.size()` bytes).
    pub fn encode(self, nid: Nid, out: &mut [u8]) {
        let w = self.wire(nid);
        let n = self.size();
        out[..n].copy_from_slice(&w[..n]);
    }

    /// Reads a NID field; `None` for a large NID that is not IPv4 (or bytes too short).
    pub fn decode(self, b: &[u8]) -> Option<Nid> {
        match self {
            NidForm::Le => Some(Nid(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))),
            NidForm::Be => Some(Nid(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))),
            NidForm::Large => {
                let b = b.get(..LARGE_NID_LEN)?;
                if b[0] != 0 || b[8..].iter().any(|&x| x != 0) {
                    return None;
                }
                let num = u16::from_be_bytes([b[2], b[3]]);
                let addr = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                Some(Nid::new(addr, b[1] as u16, num))
            }
        }
    }
}

/// Why a NID string was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NidParseError {
    /// No `@` separating address and net.
    MissingAt,
    /// The address part is not a dotted IPv4 address.
    BadAddress,
    /// The net part is not a known LND name followed by an optional number.
    BadNet,
}

impl fmt::Display for NidParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NidParseError::MissingAt => "expected ADDRESS@NET, e.g. 203.0.113.1@tcp",
            NidParseError::BadAddress => "the address is not a dotted IPv4 address",
            NidParseError::BadNet => "the net is not one of tcp, o2ib, lo with an optional number",
        })
    }
}

/// Parses `a.b.c.d`; strict: four decimal octets, no leading `+`, no empty parts.
fn parse_ipv4(s: &str) -> Option<u32> {
    let mut addr: u32 = 0;
    let mut parts = 0;
    for part in s.split('.') {
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let v: u32 = part.parse().ok()?;
        if v > 255 {
            return None;
        }
        addr = (addr << 8) | v;
        parts += 1;
    }
    (parts == 4).then_some(addr)
}

impl core::str::FromStr for Nid {
    type Err = NidParseError;

    /// Parses the `libcfs_str2nid` forms lnat supports: `ADDR@tcp`, `ADDR@tcpN`, `ADDR@o2ibN`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, net) = s.split_once('@').ok_or(NidParseError::MissingAt)?;
        let addr = parse_ipv4(addr).ok_or(NidParseError::BadAddress)?;
        let (lnd, name) = LND_NAMES
            .iter()
            .find(|(_, name)| net.starts_with(name))
            .ok_or(NidParseError::BadNet)?;
        let digits = &net[name.len()..];
        let num = if digits.is_empty() {
            0
        } else if digits.bytes().all(|c| c.is_ascii_digit()) && digits.len() <= 5 {
            digits.parse::<u16>().map_err(|_| NidParseError::BadNet)?
        } else {
            return Err(NidParseError::BadNet);
        };
        Ok(Nid::new(addr, *lnd, num))
    }
}

impl fmt::Display for Nid {
    /// Formats like `libcfs_nid2str`: `203.0.113.1@tcp`, `10.0.0.1@tcp1`, unknown LNDs by number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Nid::ANY {
            return f.write_str("<?>");
        }
        let [a, b, c, d] = self.addr().to_be_bytes();
        write!(f, "{a}.{b}.{c}.{d}@")?;
        match LND_NAMES.iter().find(|(lnd, _)| *lnd == self.lnd()) {
            Some((_, name)) => f.write_str(name)?,
            None => write!(f, "lnd{}-", self.lnd())?,
        }
        if self.num() != 0 {
            write!(f, "{}", self.num())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Nid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(form: NidForm, nid: Nid) -> [u8; 20] {
        let mut out = [0u8; 20];
        form.encode(nid, &mut out);
        out
    }

    /// The NID encodings of docs/protocol.md.
    #[test]
    fn nid4_vectors() {
        let cases: [(&str, [u8; 8]); 4] = [
            ("203.0.113.1@tcp", [0x01, 0x71, 0x00, 0xcb, 0, 0, 2, 0]),
            ("203.0.113.10@tcp", [0x0a, 0x71, 0x00, 0xcb, 0, 0, 2, 0]),
            ("198.51.100.2@tcp", [0x02, 0x64, 0x33, 0xc6, 0, 0, 2, 0]),
            ("198.51.100.2@tcp1", [0x02, 0x64, 0x33, 0xc6, 1, 0, 2, 0]),
        ];
        for (s, wire) in cases {
            let nid: Nid = s.parse().unwrap();
            assert_eq!(enc(NidForm::Le, nid)[..8], wire, "{s}");
            assert_eq!(NidForm::Le.decode(&wire), Some(nid));
            let mut be = wire;
            be.reverse();
            assert_eq!(enc(NidForm::Be, nid)[..8], be, "{s}");
            assert_eq!(NidForm::Be.decode(&be), Some(nid));
            assert_eq!(std::format!("{nid}"), s);
        }
    }

    #[test]
    fn large_nid_vector() {
        let nid: Nid = "203.0.113.1@tcp".parse().unwrap();
        let mut want = [0u8; 20];
        want[..8].copy_from_slice(&[0, 2, 0, 0, 203, 0, 113, 1]);
        assert_eq!(enc(NidForm::Large, nid), want);
        assert_eq!(NidForm::Large.decode(&want), Some(nid));
        let tcp3: Nid = "10.1.2.3@tcp3".parse().unwrap();
        assert_eq!(&enc(NidForm::Large, tcp3)[..8], &[0, 2, 0, 3, 10, 1, 2, 3]);
        // 2001:db8::1@tcp is IPv6: not an IPv4 NID.
        let v6 = [
            0x0c, 0x02, 0, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ];
        assert_eq!(NidForm::Large.decode(&v6), None);
    }

    #[test]
    fn address_bytes_sit_where_forms_say() {
        let nid: Nid = "203.0.113.1@tcp7".parse().unwrap();
        for form in [NidForm::Le, NidForm::Be, NidForm::Large] {
            let e = enc(form, nid);
            let off = form.addr_offset();
            assert_eq!(e[off..off + 4], form.addr_bytes(nid.addr()));
            let other = enc(form, nid.with_addr(0x0a00_0001));
            for i in 0..form.size() {
                assert_eq!(
                    e[i] != other[i],
                    (off..off + 4).contains(&i) && e[i] != other[i]
                );
            }
        }
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "1.2.3.4",
            "1.2.3@tcp",
            "1.2.3.4.5@tcp",
            "256.1.1.1@tcp",
            "1.2.3.4@",
            "1.2.3.4@udp",
            "1.2.3.4@tcpx",
            "1.2.3.4@tcp99999",
            "a.b.c.d@tcp",
            "1..3.4@tcp",
            "+1.2.3.4@tcp",
        ] {
            assert!(bad.parse::<Nid>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            "10.0.0.1@o2ib2".parse::<Nid>().unwrap(),
            Nid::new(0x0a00_0001, O2IBLND, 2)
        );
        assert_eq!("0.0.0.0@lo".parse::<Nid>().unwrap(), Nid::new(0, LOLND, 0));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "10.88.0.254@tcp",
            "192.168.50.2@tcp12",
            "10.0.0.1@o2ib",
            "0.0.0.0@lo",
        ] {
            assert_eq!(std::format!("{}", s.parse::<Nid>().unwrap()), s);
        }
        assert_eq!(std::format!("{}", Nid::ANY), "<?>");
    }
}
