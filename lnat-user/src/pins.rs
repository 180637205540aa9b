//! Where lnat pins its maps: `/sys/fs/bpf/lnat/IFACE/MAP`, for `lnat status`, `lnat map` and
//! `bpftool` to find.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::maps::MapData;

/// The bpffs mount lnat uses.
pub const BPFFS: &str = "/sys/fs/bpf";
/// lnat's directory in it.
pub const ROOT: &str = "/sys/fs/bpf/lnat";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin directory of one attachment.
pub fn dir(iface: &str) -> PathBuf {
    Path::new(ROOT).join(iface)
}

/// Mounts bpffs on /sys/fs/bpf when nothing is mounted there (as under `ip netns exec`).
pub fn ensure_bpffs() -> anyhow::Result<()> {
    let path = std::ffi::CString::new(BPFFS).context("bpffs path")?;
    // SAFETY: statfs into a zeroed struct; mount with static strings.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC {
            return Ok(());
        }
        let fstype = c"bpf";
        if libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
        }
    }
    Ok(())
}

/// Opens a pinned map of an attachment, with an error that says lnat is not attached.
pub fn open(iface: &str, name: &str) -> anyhow::Result<MapData> {
    let path = dir(iface).join(name);
    if !path.exists() {
        bail!(
            "lnat is not attached to {iface} (nothing pinned at {})",
            dir(iface).display()
        );
    }
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

/// Interfaces with pins, for `lnat status` without an interface.
pub fn attached() -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(ROOT) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {ROOT}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {ROOT}"))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Removes an attachment's pins (the maps live on while a program uses them).
pub fn remove(iface: &str) -> anyhow::Result<()> {
    let dir = dir(iface);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    // Leave /sys/fs/bpf/lnat only if another attachment still uses it.
    match fs::remove_dir(ROOT) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("removing {ROOT}")),
    }
}
