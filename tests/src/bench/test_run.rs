//! One frame through a loaded program with `BPF_PROG_TEST_RUN`, by bpf(2) directly: a walk of
//! thousands of segments, each run once, would spend seconds starting a `bpftool` per segment.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::Context as _;

/// bpf(2) commands (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// `union bpf_attr` for `BPF_PROG_GET_FD_BY_ID`.
#[repr(C)]
struct GetFdById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`, up to `repeat` and `duration`: the kernel takes
/// the fields after them, unsent, as zero.
#[repr(C)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

/// bpf(2) with `attr`; the fd or value it returns.
fn bpf<T>(cmd: libc::c_long, attr: &mut T, what: &str) -> anyhow::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `bpf_attr` prefix of the size passed, which the
    // kernel reads and, for a test run, writes back within.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bpf(2) {what}"));
    }
    Ok(r)
}

/// Runs `frame` once through program `id` (a TC program: `frame` is an Ethernet frame) and
/// returns its verdict. The kernel charges the run to the program's run-time accounting.
pub fn run(id: u32, frame: &[u8]) -> anyhow::Result<u32> {
    let mut get = GetFdById {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = bpf(
        BPF_PROG_GET_FD_BY_ID,
        &mut get,
        &format!("BPF_PROG_GET_FD_BY_ID {id}"),
    )?;
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut test = TestRun {
        prog_fd: fd.as_raw_fd() as u32,
        retval: 0,
        data_size_in: u32::try_from(frame.len()).context("a frame over 4 GiB")?,
        data_size_out: 0,
        data_in: frame.as_ptr() as u64,
        data_out: 0,
        repeat: 1,
        duration: 0,
    };
    bpf(
        BPF_PROG_TEST_RUN,
        &mut test,
        &format!("BPF_PROG_TEST_RUN of program {id}"),
    )?;
    Ok(test.retval)
}
