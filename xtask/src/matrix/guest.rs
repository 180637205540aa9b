//! A guest: a Debian kernel under qemu (TCG), booted from a small initramfs that mounts this
//! host's root read-only over 9p, so the guest runs the very binaries the host built.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::kernels::Unpacked;
use crate::workspace::exec;

/// Modules the initramfs loads to reach the host's root; their dependencies come along.
const BOOT_MODULES: [&str; 3] = ["virtio_pci", "9pnet_virtio", "9p"];

/// The initramfs's `/init`: load the 9p modules, mount the host's root read-only with a tmpfs
/// on `/run` (network namespaces, lnat's lock, and `TMPDIR`; `/tmp` stays the host's, where a
/// checkout may live), point the kernel's module loader at the guest kernel's own modules,
/// switch to that root and run the script named on the command line. Its last line says how
/// the script ended; then, a second later, the guest powers off: the kernel's "sysrq: Power
/// Off" line, printed at once, could otherwise land inside that line on the serial console
/// (seen on 6.12: `LNAT-GUEST-EXIT=[ 181.787439] sysrq: Power Off` and the `0` after it).
const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /modules/*; do insmod "$m" || echo "lnat-guest: insmod $m failed"; done
for a in $(cat /proc/cmdline); do
    case "$a" in lnat.run=*) RUN=${a#lnat.run=};; lnat.kernel=*) KERNEL=${a#lnat.kernel=};; esac
done
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /host; then
    echo "lnat-guest: cannot mount the host's root"; echo "LNAT-GUEST-EXIT=125"; sleep 1; poweroff -f
fi
mount -t tmpfs run /host/run
mkdir /host/run/tmp
printf '#!/bin/sh\nexec /sbin/modprobe -d %s "$@"\n' "$KERNEL" > /host/run/lnat-modprobe
chmod +x /host/run/lnat-modprobe
mount --move /proc /host/proc
mount --move /sys /host/sys
mount --move /dev /host/dev
exec switch_root /host /bin/sh -c "echo /run/lnat-modprobe > /proc/sys/kernel/modprobe
mount -t bpf bpf /sys/fs/bpf
TMPDIR=/run/tmp /bin/sh $RUN; echo LNAT-GUEST-EXIT=\$?; sleep 1; echo o > /proc/sysrq-trigger; sleep 60"
"#;

/// Builds the initramfs for `kernel` in `dir`: busybox, the boot modules, `/init`.
pub fn initramfs(kernel: &Unpacked, dir: &Path) -> anyhow::Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "modules", "proc", "sys", "dev", "host"] {
        let p = tree.join(d);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .context("copying /bin/busybox (Debian's busybox-static)")?;
    for applet in [
        "sh",
        "mount",
        "insmod",
        "cat",
        "printf",
        "chmod",
        "echo",
        "switch_root",
        "poweroff",
    ] {
        let link = tree.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    for (i, module) in load_order(kernel)?.iter().enumerate() {
        let name = module
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .replace(".ko.xz", ".ko")
            .replace(".ko.zst", ".ko");
        let to = tree.join("modules").join(format!("{i:02}-{name}"));
        decompress(module, &to)?;
    }
    let init = tree.join("init");
    std::fs::write(&init, INIT).with_context(|| format!("writing {}", init.display()))?;
    exec(Command::new("chmod").arg("+x").arg(&init))?;
    let image = dir.join("initrd.gz");
    exec(Command::new("sh").current_dir(&tree).arg("-c").arg(format!(
        "find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        image.display()
    )))?;
    Ok(image)
}

/// The boot modules and what they need, dependencies first (from depmod's `modules.dep`);
/// a module built into the kernel is not there and needs nothing.
fn load_order(kernel: &Unpacked) -> anyhow::Result<Vec<PathBuf>> {
    let dep_file = kernel.modules().join("modules.dep");
    let deps = std::fs::read_to_string(&dep_file)
        .with_context(|| format!("reading {}", dep_file.display()))?;
    let line_of = |name: &str| {
        deps.lines().find(|l| {
            let path = l.split(':').next().unwrap_or_default();
            let file = path.rsplit('/').next().unwrap_or_default();
            file.split(".ko").next() == Some(name)
        })
    };
    let mut order: Vec<String> = Vec::new();
    let mut todo: Vec<(String, bool)> = BOOT_MODULES
        .iter()
        .rev()
        .map(|m| (m.to_string(), false))
        .collect();
    // Depth first: a module goes in once everything it depends on is in.
    while let Some((name, expanded)) = todo.pop() {
        let Some(line) = line_of(&name) else { continue };
        let (path, needs) = line.split_once(':').unwrap_or((line, ""));
        if order.iter().any(|p| p == path) {
            continue;
        }
        if expanded {
            order.push(path.to_owned());
            continue;
        }
        todo.push((name, true));
        for dep in needs.split_whitespace().rev() {
            let file = dep.rsplit('/').next().unwrap_or_default();
            let dep_name = file.split(".ko").next().unwrap_or_default().to_owned();
            todo.push((dep_name, false));
        }
    }
    Ok(order.iter().map(|p| kernel.modules().join(p)).collect())
}

/// Copies a module, decompressing it: busybox's insmod takes plain `.ko` files.
fn decompress(from: &Path, to: &Path) -> anyhow::Result<()> {
    let name = from.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        std::fs::copy(from, to).with_context(|| format!("copying {name}"))?;
        return Ok(());
    };
    let out = File::create(to).with_context(|| format!("creating {}", to.display()))?;
    exec(Command::new(tool).arg("-dc").arg(from).stdout(out))
}

/// How a guest ended.
pub struct Run {
    /// Everything its console printed.
    pub log: String,
    /// The script's exit status, if the guest got that far.
    pub status: Option<i32>,
}

/// Boots `kernel` with `initrd`, runs `script` (a path on this host) inside, and waits at most
/// `limit`; the console goes to `log_file` as well.
pub fn boot(
    kernel: &Unpacked,
    initrd: &Path,
    script: &Path,
    log_file: &Path,
    limit: Duration,
) -> anyhow::Result<Run> {
    let log = File::create(log_file).with_context(|| format!("creating {}", log_file.display()))?;
    let append = format!(
        "console=ttyS0 panic=-1 quiet lnat.run={} lnat.kernel={}",
        script.display(),
        kernel.root.display()
    );
    let mut child = Command::new("qemu-system-x86_64")
        // /dev/kvm exists on these machines, but a KVM guest hangs after the boot loader.
        .args(["-accel", "tcg", "-m", "3072", "-smp", "2"])
        .args(["-nographic", "-nic", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append)
        .args([
            "-virtfs",
            "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("sharing the guest's log")?)
        .stderr(log)
        .spawn()
        .context("starting qemu-system-x86_64 (Debian's qemu-system-x86)")?;
    let deadline = Instant::now() + limit;
    let finished = loop {
        if child.try_wait().context("waiting for qemu")?.is_some() {
            break true;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let bytes =
        std::fs::read(log_file).with_context(|| format!("reading {}", log_file.display()))?;
    let log = String::from_utf8_lossy(&bytes).into_owned();
    let status = log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("LNAT-GUEST-EXIT="))
        .find_map(|s| s.trim().parse().ok());
    if !finished {
        bail!(
            "the guest did not finish within {} s; its console ends:\n{}",
            limit.as_secs(),
            tail(&log, 60)
        );
    }
    Ok(Run { log, status })
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
