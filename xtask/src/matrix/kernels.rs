//! Debian's own kernel packages, fetched through a private apt configuration and unpacked
//! under `~/.cache/lnat/kernels`: the host's suites and package state are never touched.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::workspace::{cache_dir, exec, output};

/// What lnat must do on a kernel.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// Attach in this mode and pass every guest test.
    Pass {
        /// The attach mode lnat must choose there by itself.
        mode: &'static str,
    },
    /// Refuse to attach with one line naming the kernel and this missing feature.
    Refused {
        /// The feature the line must name.
        lacks: &'static str,
    },
}

/// One kernel of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// The Debian suite whose `linux-image-amd64` names the kernel.
    pub suite: &'static str,
    /// Who runs it, for the README's table.
    pub runs_it: &'static str,
    /// What lnat must do on it.
    pub expect: Expect,
}

/// The kernels Lustre clients run, as Debian ships them: Debian 12's own 6.1 (no tcx), 6.12
/// (Debian 12 backports, Debian 13; tcx) and Debian 11's 5.10 (no `bpf_loop`).
pub const KERNELS: [Kernel; 3] = [
    Kernel {
        suite: "bookworm",
        runs_it: "Debian 12",
        expect: Expect::Pass { mode: "clsact" },
    },
    Kernel {
        suite: "bookworm-backports",
        runs_it: "Debian 12 backports, Debian 13",
        expect: Expect::Pass { mode: "tcx" },
    },
    Kernel {
        suite: "bullseye",
        runs_it: "Debian 11",
        expect: Expect::Refused { lacks: "bpf_loop" },
    },
];

/// A kernel unpacked from its package.
pub struct Unpacked {
    /// Its release (`uname -r`).
    pub release: String,
    /// The root it was unpacked into: `boot/vmlinuz-RELEASE`, `lib/modules/RELEASE`.
    pub root: PathBuf,
}

impl Unpacked {
    /// The kernel image.
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// Its modules, with the `modules.dep` that depmod made for them.
    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// The kernel of `suite`, downloaded and unpacked unless the cache already has it.
pub fn fetch(suite: &str) -> anyhow::Result<Unpacked> {
    let dir = cache_dir()?.join("kernels");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The package a suite resolved to last time, so that a warm cache needs no network.
    let chosen = dir.join(format!("{suite}.package"));
    if let Ok(package) = std::fs::read_to_string(&chosen) {
        let unpacked = unpacked(&dir, package.trim());
        if unpacked.vmlinuz().is_file() && unpacked.modules().join("modules.dep").is_file() {
            return Ok(unpacked);
        }
    }
    let apt = Apt::new()?;
    let package = apt.image_of(suite)?;
    let unpacked = unpacked(&dir, &package);
    if !unpacked.vmlinuz().is_file() {
        eprintln!("xtask: downloading {package} from {suite}");
        apt.download(&package, &dir)?;
        let deb = find_deb(&dir, &package)?;
        let _ = std::fs::remove_dir_all(&unpacked.root);
        exec(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&unpacked.root),
        )?;
        std::fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    }
    // Debian's postinst runs depmod; unpacked by hand, the tree has no modules.dep yet.
    exec(
        Command::new("depmod")
            .arg("-b")
            .arg(&unpacked.root)
            .arg(&unpacked.release),
    )?;
    std::fs::write(&chosen, &package).with_context(|| format!("writing {}", chosen.display()))?;
    Ok(unpacked)
}

fn unpacked(dir: &Path, package: &str) -> Unpacked {
    let release = package.trim_start_matches("linux-image-").to_owned();
    Unpacked {
        root: dir.join(&release),
        release,
    }
}

fn find_deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{package}_");
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(path);
        }
    }
    bail!(
        "apt-get download left no {package}_*.deb in {}",
        dir.display()
    )
}

/// apt with its own sources list, lists and cache under `~/.cache/lnat/apt`.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    /// Writes the private sources list (the host's Debian mirror, the matrix's suites) and
    /// refreshes its package lists.
    fn new() -> anyhow::Result<Apt> {
        let dir = cache_dir()?.join("apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let mirror = host_mirror()?;
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let list: String = KERNELS
            .iter()
            .map(|k| format!("deb [signed-by={keyring}] {mirror} {} main\n", k.suite))
            .collect();
        let sources = dir.join("sources.list");
        std::fs::write(&sources, list).with_context(|| format!("writing {}", sources.display()))?;
        let path = |p: &str| dir.join(p).display().to_string();
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", path("lists")),
            format!("Dir::Cache={}", path("cache")),
            "Dir::State::status=/dev/null".to_owned(),
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect();
        let apt = Apt { options };
        exec(apt.command("apt-get").args(["-qq", "update"]))?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(&self.options);
        c
    }

    /// The kernel image package `linux-image-amd64` of `suite` depends on.
    fn image_of(&self, suite: &str) -> anyhow::Result<String> {
        let show = output(
            self.command("apt-cache")
                .arg("show")
                .arg(format!("linux-image-amd64/{suite}")),
        )?;
        show.lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .and_then(|d| {
                d.split([',', ' ', '('])
                    .find(|w| w.starts_with("linux-image-"))
            })
            .map(str::to_owned)
            .with_context(|| format!("linux-image-amd64 of {suite} names no kernel image"))
    }

    fn download(&self, package: &str, into: &Path) -> anyhow::Result<()> {
        exec(
            self.command("apt-get")
                .current_dir(into)
                .args(["-qq", "download", package]),
        )
    }
}

/// The Debian mirror the host's apt already uses (its sources list names it; lnat does not).
fn host_mirror() -> anyhow::Result<String> {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|e| e == "sources" || e == "list")
                && let Ok(t) = std::fs::read_to_string(&path)
            {
                texts.push(t);
            }
        }
    }
    // One-line entries (`deb [options] URI suite...`) and deb822 stanzas (`URIs: URI...`).
    texts
        .iter()
        .flat_map(|t| t.lines())
        .map(str::trim)
        .filter(|l| l.starts_with("deb ") || l.starts_with("URIs:"))
        .flat_map(str::split_whitespace)
        .filter(|w| w.contains("://"))
        .map(|uri| uri.trim_end_matches('/'))
        .find(|uri| uri.ends_with("/debian"))
        .map(str::to_owned)
        .context("the host's apt sources name no Debian mirror (a URI ending in /debian)")
}
