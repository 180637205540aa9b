//! Running lnat and the emulated peers in a [`Topology`](crate::topology::Topology).

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    ns::{self, Netns, Proc},
    report::{ClientReport, ServerReport},
    topology::{CLIENT_NID, SERVER, SERVER_NID, Topology},
};

/// A binary of this workspace: `$env`, else next to the running executable or in
/// target/{release,debug}.
fn find_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(name))
        .collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    candidates.extend([
        target.join("release").join(name),
        target.join("debug").join(name),
    ]);
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The `lnat` binary (`$LNAT_BIN` or the workspace's build).
pub fn lnat_bin() -> PathBuf {
    find_bin("lnat", "LNAT_BIN")
}

/// The `lnet-peer` binary (`$LNET_PEER_BIN` or the workspace's build).
pub fn peer_bin() -> PathBuf {
    find_bin("lnet-peer", "LNET_PEER_BIN")
}

/// A place to run lnat: a network namespace plus a mount namespace that outlives any one lnat
/// process (held by an idle process), so its bpffs and pins can be inspected after lnat exits,
/// as on a real host.
pub struct Host {
    holder: Proc,
}

impl Host {
    /// A host in `ns`.
    pub fn new(ns: &Netns) -> anyhow::Result<Host> {
        let holder = ns.spawn(&["sleep", "infinity"])?;
        // `ip netns exec` sets up the namespace's /sys, then execs: wait for the exec.
        let comm = format!("/proc/{}/comm", holder.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&comm)
            .map(|c| c.trim() != "sleep")
            .unwrap_or(true)
        {
            if Instant::now() >= deadline {
                bail!("the namespace holder did not start");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Host { holder })
    }

    /// A command running `args` in this host's network and mount namespaces.
    pub fn command(&self, args: &[&str]) -> Command {
        let pid = self.holder.pid().to_string();
        let mut c = Command::new("nsenter");
        c.args(["-t", &pid, "-m", "-n"]).args(args);
        c
    }

    /// Runs `args` on this host and returns its stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        ns::output(&mut self.command(args))
    }

    /// Runs `lnat ARGS...` on this host: stdout, or an error with lnat's message.
    pub fn lnat(&self, args: &[&str]) -> anyhow::Result<String> {
        let bin = lnat_bin();
        let mut argv = vec![bin.to_str().unwrap_or("lnat")];
        argv.extend_from_slice(args);
        self.run(&argv)
    }
}

/// A running `lnat attach`, stopped (SIGINT) on drop.
pub struct Lnat<'h> {
    host: &'h Host,
    proc: Option<Proc>,
    iface: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl<'h> Lnat<'h> {
    /// Starts `lnat attach IFACE ARGS...` on `host` and waits for it to say it is attached.
    pub fn attach(host: &'h Host, iface: &str, args: &[&str]) -> anyhow::Result<Lnat<'h>> {
        let bin = lnat_bin();
        let bin = bin.to_string_lossy();
        let mut argv = vec![bin.as_ref(), "attach", iface];
        argv.extend_from_slice(args);
        let mut cmd = host.command(&argv);
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting lnat attach")?;
        let mut proc = Proc::from_child(child, "lnat attach");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            proc.take_stdout()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            proc.take_stderr().map(|p| Box::new(p) as _),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let mut lnat = Lnat {
            host,
            proc: Some(proc),
            iface: iface.to_owned(),
            lines,
        };
        lnat.wait_line("attached to", Duration::from_secs(30))?;
        Ok(lnat)
    }

    /// Everything lnat printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits for a line containing `needle`.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return Ok(l);
            }
            if !self.proc.as_mut().is_some_and(Proc::running) {
                bail!(
                    "lnat exited before printing {needle:?}: {}",
                    self.lines().join(" | ")
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "lnat did not print {needle:?} within {timeout:?}: {}",
                    self.lines().join(" | ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of `lnat attach`.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    /// `lnat status IFACE --json`, from another process on the same host.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.host.lnat(&["status", &self.iface, "--json"])?;
        serde_json::from_str(&out).context("parsing lnat status --json")
    }

    /// Waits until every connection lnat follows is closing (its FIN or RST was seen; the
    /// state stays for late copies of its bytes).
    pub fn wait_no_flows(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status()?;
            let n = s["flows"]
                .as_array()
                .map_or(0, |f| f.iter().filter(|f| f["closing"] != true).count());
            if n == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{n} flows still followed after {timeout:?}: {}", s["flows"]);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every counter from `lnat status`.
    pub fn counters(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self.status()?["counters"].clone())
    }

    /// One counter from `lnat status`.
    pub fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let s = self.status()?;
        s["counters"][name]
            .as_u64()
            .with_context(|| format!("no counter {name}"))
    }

    /// Kills lnat with SIGKILL, as a crash or an OOM kill would, and waits for it to be gone.
    pub fn kill(mut self) -> anyhow::Result<()> {
        let proc = self.proc.take().context("already stopped")?;
        proc.signal(libc::SIGKILL);
        proc.wait(Duration::from_secs(10)).map(|_| ())
    }

    /// The kernel's id of the egress program, from the "attached" line (`None` with
    /// `--ingress-only`).
    pub fn egress_program_id(&self) -> Option<u32> {
        self.lines().iter().find_map(|l| {
            l.split("its egress (program ")
                .nth(1)?
                .split(')')
                .next()?
                .parse()
                .ok()
        })
    }

    /// The kernel's id of the attached program, from the "attached" line.
    pub fn program_id(&self) -> Option<u32> {
        self.lines()
            .iter()
            .find_map(|l| l.split("program ").nth(1)?.split(')').next()?.parse().ok())
    }

    /// Stops lnat with SIGINT and returns everything it printed.
    pub fn stop(mut self) -> anyhow::Result<Vec<String>> {
        let proc = self.proc.take().context("already stopped")?;
        proc.signal(libc::SIGINT);
        let out = proc.wait(Duration::from_secs(20))?;
        // The reader threads have drained the pipes by the time the process is gone.
        std::thread::sleep(Duration::from_millis(50));
        if !out.status.success() {
            bail!(
                "lnat exited with {}: {}",
                out.status,
                self.lines().join(" | ")
            );
        }
        Ok(self.lines())
    }
}

impl Drop for Lnat<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.signal(libc::SIGINT);
            let _ = p.wait(Duration::from_secs(10));
        }
    }
}

/// Starts `lnet-peer server ARGS...` in `ns`.
pub fn server(ns: &Netns, args: &[&str]) -> anyhow::Result<Proc> {
    let bin = peer_bin();
    let bin = bin.to_string_lossy();
    let mut argv = vec![bin.as_ref(), "server"];
    argv.extend_from_slice(args);
    let p = ns.spawn(&argv)?;
    // Let it bind before a client dials.
    std::thread::sleep(Duration::from_millis(150));
    Ok(p)
}

/// The server's report, once it exits.
pub fn server_report(p: Proc, timeout: Duration) -> anyhow::Result<ServerReport> {
    let out = p.wait(timeout)?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "server report: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Starts `lnet-peer client ARGS...` in `ns`, for traffic that runs while a test does
/// something else.
pub fn spawn_client(ns: &Netns, args: &[&str]) -> anyhow::Result<Proc> {
    let bin = peer_bin();
    let bin = bin.to_string_lossy();
    let mut argv = vec![bin.as_ref(), "client"];
    argv.extend_from_slice(args);
    ns.spawn(&argv)
}

/// The client's report, once it exits.
pub fn client_report(p: Proc, timeout: Duration) -> anyhow::Result<ClientReport> {
    let out = p.wait(timeout)?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "client report: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `lnet-peer client ARGS...` in `ns` to the end and returns its report.
pub fn client(ns: &Netns, args: &[&str], timeout: Duration) -> anyhow::Result<ClientReport> {
    client_report(spawn_client(ns, args)?, timeout)
}

/// A byte stream that is not LNet across `t`: `lnet-peer blob-server --listen 0.0.0.0:PORT
/// ARGS` in the server, read to its end by `blob-client` in the first client (from `src_port`,
/// if given); the server's and the client's reports (bytes, digest).
pub fn blob(
    t: &Topology,
    port: u16,
    src_port: Option<u16>,
    server_args: &[&str],
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    transfer(t, port, src_port, server_args, &[])
}

/// The same stream the other way: `blob-client --upload ARGS` in the first client sends, the
/// server reads it to its end; the client's and the server's reports (bytes, digest).
pub fn upload(
    t: &Topology,
    port: u16,
    src_port: Option<u16>,
    client_args: &[&str],
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    let mut client = vec!["--upload"];
    client.extend_from_slice(client_args);
    let (received, sent) = transfer(t, port, src_port, &["--upload"], &client)?;
    Ok((sent, received))
}

/// Runs a blob server and client: the server's and the client's reports.
fn transfer(
    t: &Topology,
    port: u16,
    src_port: Option<u16>,
    server_args: &[&str],
    client_args: &[&str],
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    const TIMEOUT: Duration = Duration::from_secs(240);
    let bin = peer_bin();
    let bin = bin.to_string_lossy();
    let listen = format!("0.0.0.0:{port}");
    let mut args = vec![bin.as_ref(), "blob-server", "--listen", &listen];
    args.extend_from_slice(server_args);
    let server = t.server().spawn(&args)?;
    t.server().wait_listening(port, Duration::from_secs(10))?;
    let addr = format!("{}:{port}", crate::topology::SERVER);
    let mut args = vec![bin.as_ref(), "blob-client", "--server", &addr];
    let sp = src_port.map(|p| p.to_string());
    if let Some(p) = &sp {
        args.extend(["--src-port", p]);
    }
    args.extend_from_slice(client_args);
    let got = t.client().spawn(&args)?.wait(TIMEOUT)?;
    let sent = server.wait(TIMEOUT)?;
    let report = |o: &std::process::Output| -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&o.stdout).context("parsing a blob report")
    };
    Ok((report(&sent)?, report(&got)?))
}

/// Runs one exchange: `lnet-peer server ARGS` in `server_ns` (waiting until it listens on 988),
/// `lnet-peer client ARGS` in `client_ns` to its end, then the server to its end.
pub fn exchange(
    server_ns: &Netns,
    client_ns: &Netns,
    server_args: &[&str],
    client_args: &[&str],
    timeout: Duration,
) -> anyhow::Result<(ClientReport, ServerReport)> {
    let s = server(server_ns, server_args)?;
    server_ns.wait_listening(crate::topology::ACCEPTOR_PORT, Duration::from_secs(10))?;
    let c = client(client_ns, client_args, timeout)?;
    let r = server_report(s, timeout)?;
    Ok((c, r))
}

/// The usual server in `t`: SERVER_NID, `accept=all`, `n` PUTs of `sizes` to each peer, and
/// `extra` flags; returned once it listens, so that a client started next is not refused (a
/// TCG guest showed that race).
pub fn lnet_server(t: &Topology, n: u64, sizes: &str, extra: &[&str]) -> anyhow::Result<Proc> {
    let n = n.to_string();
    let mut args = vec![
        "--nid", SERVER_NID, "--accept", "all", "--puts", &n, "--sizes", sizes,
    ];
    args.extend_from_slice(extra);
    let s = server(t.server(), &args)?;
    t.server()
        .wait_listening(crate::topology::ACCEPTOR_PORT, Duration::from_secs(10))?;
    Ok(s)
}

/// The usual client in `t`: the first client (CLIENT_NID) dials SERVER_NID for `n` PUTs and
/// gives up after `timeout`; `extra` flags.
pub fn lnet_client(
    t: &Topology,
    n: u64,
    timeout: Duration,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let n = n.to_string();
    let secs = timeout.as_secs().to_string();
    let mut args = vec![
        "--server-nid",
        SERVER_NID,
        "--nid",
        CLIENT_NID,
        "--expect",
        &n,
        "--timeout-secs",
        &secs,
    ];
    args.extend_from_slice(extra);
    spawn_client(t.client(), &args)
}

/// The usual exchange across `t`: [`lnet_server`] with a NOOP every 7 PUTs, and
/// [`lnet_client`] to its end; extra flags for either side.
pub fn puts(
    t: &Topology,
    n: u64,
    sizes: &str,
    server_extra: &[&str],
    client_extra: &[&str],
) -> anyhow::Result<(ClientReport, ServerReport)> {
    let mut server_args = vec!["--noop-every", "7"];
    server_args.extend_from_slice(server_extra);
    let s = lnet_server(t, n, sizes, &server_args)?;
    let c = lnet_client(t, n, Duration::from_secs(400), client_extra)?;
    let c = client_report(c, Duration::from_secs(450))?;
    Ok((c, server_report(s, Duration::from_secs(450))?))
}

/// Checks that the client received exactly what the server sent, byte for byte (by digest):
/// `puts` distinct PUTs, none missing, none altered.
pub fn check_intact(
    client: &ClientReport,
    served: &ServerReport,
    puts: usize,
) -> anyhow::Result<()> {
    if client.status != "ok" {
        bail!("client {}: {}", client.status, client.reason);
    }
    let mut sent: Vec<_> = served
        .connections
        .iter()
        .flat_map(|c| c.sent.clone())
        .collect();
    sent.sort();
    sent.dedup();
    if sent.len() != puts {
        bail!("the server sent {} distinct PUTs, not {puts}", sent.len());
    }
    if client.received != sent {
        let bad = client.received.iter().zip(&sent).find(|(a, b)| a != b);
        bail!("payload digests differ: first difference {bad:?}");
    }
    Ok(())
}

/// Asserts what lnat's counters `c` say after a run in which every connection was followed
/// from its handshake and nothing went wrong: `flows` opened, `rewritten` NIDs, one external
/// NID learned, and no stream given up, no conflict, no untracked segment, no history miss.
/// `what` names the run in a failure.
pub fn assert_clean_run(c: &serde_json::Value, flows: u64, rewritten: u64, what: &str) {
    assert_eq!(c["flows_opened"].as_u64(), Some(flows), "{what}: {c}");
    assert_eq!(c["rewritten"].as_u64(), Some(rewritten), "{what}: {c}");
    assert_eq!(c["learned"], 1, "{what}: {c}");
    for zero in ["desynced", "conflicts", "untracked", "history_misses"] {
        assert_eq!(c[zero], 0, "{what}: {zero}: {c}");
    }
}

/// An rpc-mode exchange (`lnet-peer --mode rpc`): the first `clients` clients each send
/// `requests` request PUTs to the server and wait for as many replies and for `callbacks`
/// callbacks of the server's own, discovery on or off at either end.
#[derive(Clone, Copy, Debug)]
pub struct RpcRun {
    /// `lnet_peer_discovery_disabled=0` at the server.
    pub server_discovery: bool,
    /// The same at the clients.
    pub client_discovery: bool,
    /// Requests each client sends.
    pub requests: u64,
    /// Callbacks the server sends each client.
    pub callbacks: u64,
    /// socklnd version the clients speak.
    pub proto: u8,
    /// Checksummed messages (V2) at both ends.
    pub csum: bool,
    /// Clients, each in its own namespace behind the NAT.
    pub clients: usize,
    /// Seconds a client may take.
    pub timeout_secs: u64,
}

impl RpcRun {
    /// One client, V3, discovery on at both ends.
    pub const fn new(requests: u64, callbacks: u64) -> RpcRun {
        RpcRun {
            server_discovery: true,
            client_discovery: true,
            requests,
            callbacks,
            proto: 3,
            csum: false,
            clients: 1,
            timeout_secs: 60,
        }
    }

    /// Runs it in `t`: each client's report, in order, and the server's.
    pub fn run(&self, t: &Topology) -> anyhow::Result<(Vec<ClientReport>, ServerReport)> {
        let on = |b: bool| if b { "on" } else { "off" };
        let (requests, callbacks) = (self.requests.to_string(), self.callbacks.to_string());
        let (conns, proto) = (self.clients.to_string(), self.proto.to_string());
        let timeout = self.timeout_secs.to_string();
        // The server outwaits its clients, so that a client that times out saw its own
        // timeout, never the server giving up first.
        let hold = (self.timeout_secs + 10).to_string();
        let mut server_args = vec![
            "--nid",
            SERVER_NID,
            "--accept",
            "all",
            "--mode",
            "rpc",
            "--sizes",
            "small",
            "--callbacks",
            &callbacks,
            "--discovery",
            on(self.server_discovery),
            "--dial-timeout-ms",
            "2000",
            "--conns",
            &conns,
            "--hold-secs",
            &hold,
        ];
        if self.csum {
            server_args.push("--csum");
        }
        let s = server(t.server(), &server_args)?;
        t.server()
            .wait_listening(crate::topology::ACCEPTOR_PORT, Duration::from_secs(10))?;
        let dial = format!("{SERVER}:988");
        let procs = (0..self.clients)
            .map(|i| {
                let nid = format!("{}@tcp", crate::topology::client_addr(i));
                let mut args = vec![
                    "--server",
                    &dial,
                    "--server-nid",
                    SERVER_NID,
                    "--nid",
                    &nid,
                    "--proto",
                    &proto,
                    "--mode",
                    "rpc",
                    "--requests",
                    &requests,
                    "--callbacks",
                    &callbacks,
                    "--discovery",
                    on(self.client_discovery),
                    "--timeout-secs",
                    &timeout,
                ];
                if self.csum {
                    args.push("--csum");
                }
                spawn_client(t.client_n(i), &args)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let wait = Duration::from_secs(self.timeout_secs + 40);
        let clients = procs
            .into_iter()
            .map(|p| client_report(p, wait))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((clients, server_report(s, wait)?))
    }
}
