//! One `lnat attach` per interface and network namespace, however the last one ended.
//!
//! An exclusive `flock` on `/run/lnat/net-INODE-IFACE.lock`: the kernel releases it when the
//! holder exits, even by SIGKILL, so a lock that can be taken means nothing is attached by lnat
//! any more and whatever an earlier lnat left (pins, a clsact filter) is stale.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
};

use anyhow::{Context as _, bail};

const DIR: &str = "/run/lnat";

/// Held for as long as the attachment lives.
#[derive(Debug)]
pub struct AttachLock {
    _file: File,
}

impl AttachLock {
    /// Takes the lock for `iface` in this network namespace, or says who holds it.
    pub fn take(iface: &str) -> anyhow::Result<AttachLock> {
        let netns = fs::metadata("/proc/self/ns/net")
            .context("reading this network namespace")?
            .ino();
        fs::create_dir_all(DIR).with_context(|| format!("creating {DIR}"))?;
        let path = format!("{DIR}/net-{netns}-{iface}.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        // SAFETY: flock on a file we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                bail!(
                    "lnat is already attached to {iface} (pid {}); stop that lnat first",
                    pid.trim()
                );
            }
            return Err(err).with_context(|| format!("locking {path}"));
        }
        file.set_len(0).context("writing the lock file")?;
        file.rewind().context("writing the lock file")?;
        write!(file, "{}", std::process::id()).context("writing the lock file")?;
        Ok(AttachLock { _file: file })
    }
}
