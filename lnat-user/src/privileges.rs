//! Whether this process may load and attach eBPF.

use anyhow::{Context as _, bail};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Fails with a clear message unless the process has CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN.
pub fn require() -> anyhow::Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapEff line in /proc/self/status")?;
    let has = |cap: u32| eff & (1 << cap) != 0;
    if !(has(CAP_BPF) || has(CAP_SYS_ADMIN)) || !has(CAP_NET_ADMIN) {
        bail!(
            "permission denied: lnat needs root (CAP_BPF and CAP_NET_ADMIN) to load and attach its datapath"
        );
    }
    Ok(())
}
