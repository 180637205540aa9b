//! The network interface lnat attaches to.

use std::{
    ffi::{CStr, CString},
    io,
    net::Ipv4Addr,
};

use anyhow::{Context as _, bail};

/// An interface, resolved in the current network namespace.
#[derive(Clone, Debug)]
pub struct Iface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Bytes of link-layer header in front of IPv4 on ingress (14 on Ethernet, 0 on IP devices).
    pub l2_len: u8,
}

const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;
const ARPHRD_NONE: u16 = 0xfffe;

/// Looks `name` up; a clear error for names that do not exist or cannot be pinned under.
pub fn lookup(name: &str) -> anyhow::Result<Iface> {
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name.contains('/')
        || name == "."
        || name == ".."
    {
        bail!("invalid interface name '{name}'");
    }
    let cname = CString::new(name).with_context(|| format!("invalid interface name '{name}'"))?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        bail!("unknown interface '{name}'");
    }
    let l2_len =
        match link_type(&cname).with_context(|| format!("reading the link type of {name}"))? {
            ARPHRD_ETHER | ARPHRD_LOOPBACK => 14,
            ARPHRD_NONE => 0,
            other => bail!(
                "interface {name} has link type {other}; lnat supports Ethernet and IP-only devices"
            ),
        };
    Ok(Iface {
        name: name.to_owned(),
        index,
        l2_len,
    })
}

/// The ARPHRD type of an interface, from `SIOCGIFHWADDR` (works in any network namespace, with
/// or without a matching /sys).
fn link_type(name: &CString) -> io::Result<u16> {
    // SAFETY: plain socket and ioctl calls on a zeroed ifreq whose name fits (checked above).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            return Err(err);
        }
        Ok(req.ifr_ifru.ifru_hwaddr.sa_family)
    }
}

/// The name of the interface that holds `ip`, if one does: the interface a connection from
/// that local address leaves by, so `lnat probe` can name the one to attach to.
pub fn with_address(ip: Ipv4Addr) -> anyhow::Result<Option<String>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error()).context("listing the interfaces' addresses");
    }
    let mut found = None;
    let mut at = list;
    // SAFETY: walks the list getifaddrs returned, reading each entry's IPv4 address only when
    // its family says it is one, then frees the list once.
    unsafe {
        while let Some(entry) = at.as_ref() {
            let addr = entry.ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = &*(addr as *const libc::sockaddr_in);
                if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == ip {
                    found = Some(
                        CStr::from_ptr(entry.ifa_name)
                            .to_string_lossy()
                            .into_owned(),
                    );
                    break;
                }
            }
            at = entry.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    Ok(found)
}
