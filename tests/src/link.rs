//! Link settings Debian 12's iproute2 (6.1) cannot make: the IPv4 BIG TCP sizes (Linux 6.3+),
//! set over rtnetlink from a thread that enters the namespace.

use std::{ffi::CString, fs::File, os::fd::AsRawFd as _};

use anyhow::{Context as _, bail};

use crate::ns::Netns;

/// `IFLA_GSO_IPV4_MAX_SIZE`: the largest IPv4 GSO packet the device is handed.
pub const GSO_IPV4_MAX_SIZE: u16 = 63;
/// `IFLA_GRO_IPV4_MAX_SIZE`: the largest IPv4 packet GRO builds on the device.
pub const GRO_IPV4_MAX_SIZE: u16 = 64;

/// Sets the 32-bit link attribute `attr` of `dev` in `ns` to `value`.
pub fn set_u32(ns: &Netns, dev: &str, attr: u16, value: u32) -> anyhow::Result<()> {
    let path = format!("/run/netns/{}", ns.name());
    let what = format!("setting link attribute {attr} of {dev} in {}", ns.name());
    let dev = dev.to_owned();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let netns = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on this thread only, with a namespace file we hold open.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("entering the namespace");
        }
        new_link(&dev, attr, value)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the netlink thread panicked"))?
    .context(what)
}

/// Sends one RTM_NEWLINK for `dev` with `attr` = `value` and reads the kernel's answer.
fn new_link(dev: &str, attr: u16, value: u32) -> anyhow::Result<()> {
    let name = CString::new(dev).context("interface name")?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {dev}");
    }
    let mut msg = Vec::with_capacity(40);
    msg.extend_from_slice(&40u32.to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // struct ifinfomsg: family, pad, type, index, flags, change.
    msg.extend_from_slice(&[0, 0, 0, 0]);
    msg.extend_from_slice(&(index as i32).to_ne_bytes());
    msg.extend_from_slice(&[0; 8]);
    // struct rtattr and its u32.
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&attr.to_ne_bytes());
    msg.extend_from_slice(&value.to_ne_bytes());
    // SAFETY: plain socket calls on buffers we own, with their lengths.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("netlink socket");
        }
        let sent = libc::send(fd, msg.as_ptr().cast(), msg.len(), 0);
        let mut answer = [0u8; 256];
        let got = libc::recv(fd, answer.as_mut_ptr().cast(), answer.len(), 0);
        libc::close(fd);
        if sent != msg.len() as isize || got < 20 {
            bail!("netlink exchange failed");
        }
        // NLMSG_ERROR: the error code follows the 16-byte header; 0 is the ACK.
        let code = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
        if code != 0 {
            return Err(std::io::Error::from_raw_os_error(-code)).context("RTM_NEWLINK");
        }
    }
    Ok(())
}
