//! Network namespaces and processes in them, cleaned up however a test ends.

use std::{
    io::Read as _,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Prefix of every namespace this crate creates.
pub const PREFIX: &str = "lnat-t-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted (with everything still running in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Runs `cmd`, returning its stdout or an error with its stderr.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    /// A fresh namespace named after `tag`, this process and a counter, with `lo` up.
    pub fn new(tag: &str) -> anyhow::Result<Netns> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{tag}-{}-{n}", std::process::id());
        output(Command::new("ip").args(["netns", "add", &name]))
            .context("creating a network namespace (root needed)")?;
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `args` inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs `args` inside the namespace and returns its stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        output(&mut self.command(args))
    }

    /// Starts `args` inside the namespace with its output captured.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Proc> {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {args:?} in {}", self.name))?;
        Ok(Proc {
            child: Some(child),
            what: args.join(" "),
        })
    }

    /// Waits until something in the namespace listens on TCP `port`, so a client started next
    /// is not refused by a server still starting.
    pub fn wait_listening(&self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let filter = format!("sport = :{port}");
        while self.run(&["ss", "-Hltn", &filter])?.trim().is_empty() {
            if Instant::now() >= deadline {
                bail!(
                    "nothing listens on port {port} in {} after {timeout:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Runs `f` on a thread inside the namespace (setns(2) moves only the calling thread), for
    /// a test that needs a socket of its own there: sockets stay in the namespace they were
    /// made in, whichever thread uses them afterwards.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        use std::os::fd::AsRawFd as _;
        let path = format!("/run/netns/{}", self.name);
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on an open namespace file, for this thread alone.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("entering {}", self.name));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in {} panicked", self.name))?
        })
    }

    /// The absolute value of a kernel SNMP counter (e.g. `TcpInCsumErrors`) in the namespace.
    pub fn nstat(&self, counter: &str) -> anyhow::Result<u64> {
        let out = self.run(&["nstat", "-azs", counter])?;
        out.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(counter))
                    .then(|| f.next().and_then(|v| v.parse().ok()))
                    .flatten()
            })
            .with_context(|| format!("nstat has no {counter}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(pids) = output(Command::new("ip").args(["netns", "pids", &self.name])) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a pid from the namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Deletes namespaces left by test processes that no longer run (killed mid-test).
pub fn cleanup_stale() {
    let Ok(list) = output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
    {
        let owner = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A process, killed on drop unless it was waited for.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    what: String,
}

impl Proc {
    /// Wraps a child started elsewhere.
    pub fn from_child(child: Child, what: &str) -> Proc {
        Proc {
            child: Some(child),
            what: what.to_owned(),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to it.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// True while it runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits up to `timeout` for it to exit and returns its output; kills it at the deadline.
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<Output> {
        let mut child = self.child.take().context("process already waited for")?;
        let deadline = Instant::now() + timeout;
        // Drain the pipes while waiting, so a chatty process cannot block on a full pipe. (A
        // caller that took a pipe to read it live gets nothing here for it.)
        let out = child.stdout.take();
        let err = child.stderr.take();
        let reader_out = std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(mut p) = out {
                let _ = p.read_to_end(&mut b);
            }
            b
        });
        let reader_err = std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(mut p) = err {
                let _ = p.read_to_end(&mut b);
            }
            b
        });
        let status = loop {
            if let Some(s) = child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.what))?
            {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = reader_err.join().unwrap_or_default();
                bail!(
                    "{} did not finish within {timeout:?}; stderr: {}",
                    self.what,
                    String::from_utf8_lossy(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Output {
            status,
            stdout: reader_out.join().unwrap_or_default(),
            stderr: reader_err.join().unwrap_or_default(),
        })
    }

    /// Takes its stdout, to read it while it runs.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Takes its stderr, to read it while it runs.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.as_mut().and_then(|c| c.stderr.take())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
