//! Installing what lnat needs on a fresh machine (README.md, Building, automated).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::workspace::{self, exec};

/// Debian packages and a binary each provides: the namespace tests and the bench need the
/// first five, the kernel matrix (a QEMU guest booting a busybox initramfs) the rest.
const PACKAGES: [(&str, &str); 11] = [
    ("bpftool", "bpftool"),
    ("iproute2", "ip"),
    ("nftables", "nft"),
    ("ethtool", "ethtool"),
    ("iperf3", "iperf3"),
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "busybox"),
    ("cpio", "cpio"),
    ("kmod", "kmod"),
    ("zstd", "zstd"),
    ("xz-utils", "xz"),
];

/// bpf-linker version known to work with this nightly's LLVM.
const BPF_LINKER: &str = "0.13.0";

/// cargo-fuzz version for the tracker's fuzz target.
const CARGO_FUZZ: &str = "0.13.2";

/// Installs whatever is missing; quick when everything is there.
pub fn run() -> anyhow::Result<()> {
    packages()?;
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()
}

fn cargo_fuzz() -> anyhow::Result<()> {
    if Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    exec(workspace::cargo().args(["install", "cargo-fuzz", "--version", CARGO_FUZZ, "--locked"]))
}

fn found(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, bin)| !found(bin))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !workspace::is_root() {
        bail!(
            "missing Debian packages {} (run as root to install them)",
            missing.join(" ")
        );
    }
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rustc_nightly(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("+nightly")
        .args(args)
        .output()
        .context("running rustc +nightly")?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is not installed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn nightly() -> anyhow::Result<()> {
    rustc_nightly(&["--version"]).map(|_| ())
}

fn sysroot() -> anyhow::Result<PathBuf> {
    rustc_nightly(&["--print", "sysroot"]).map(PathBuf::from)
}

fn rust_src() -> anyhow::Result<()> {
    if sysroot()?
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        return Ok(());
    }
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    // No LLVM 21+ in Debian 12: link bpf-linker against the nightly's own libLLVM.
    let sysroot = sysroot()?;
    let version = rustc_nightly(&["-vV"])?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV names no LLVM version")?
        .to_owned();
    let prefix = workspace::cache_dir()?.join(format!("llvm-{major}"));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let mut libllvm = None;
    for entry in std::fs::read_dir(sysroot.join("lib")).context("reading the nightly sysroot")? {
        let path = entry.context("reading the nightly sysroot")?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("libLLVM") && name.contains(".so") {
            link(&path, &lib.join(&name))?;
            if name.starts_with("libLLVM.so.") {
                libllvm = Some(path.clone());
            }
        }
    }
    let libllvm = libllvm.context("the nightly sysroot has no libLLVM.so.*")?;
    link(&libllvm, &lib.join("libLLVM.so"))?;
    exec(
        workspace::cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER,
                "--locked",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix),
    )
}

/// `ln -sf target name`.
fn link(target: &Path, name: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(name) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("replacing {}", name.display())),
    }
    std::os::unix::fs::symlink(target, name).with_context(|| format!("linking {}", name.display()))
}
