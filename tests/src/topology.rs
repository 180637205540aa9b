//! The world of the namespace tests: an LNet client, a NAT router and an LNet server.
//!
//! ```text
//!  client 198.51.100.2 --- 198.51.100.1 router 203.0.113.1 --- 203.0.113.10 server
//!         (eth0)              (in0)   NAT    (out0)               (eth0)
//! ```
//! Only these documentation ranges are used, and only between namespaces this module creates.

use anyhow::Context as _;

use crate::ns::{self, Netns};

/// The client's address.
pub const CLIENT: &str = "198.51.100.2";
/// The router's address on the client's side.
pub const ROUTER_IN: &str = "198.51.100.1";
/// The NAT's public address.
pub const NAT: &str = "203.0.113.1";
/// The server's address.
pub const SERVER: &str = "203.0.113.10";
/// The client's NID.
pub const CLIENT_NID: &str = "198.51.100.2@tcp";
/// The NID the server gives the client behind a port-remapping NAT.
pub const NAT_NID: &str = "203.0.113.1@tcp";
/// The server's NID.
pub const SERVER_NID: &str = "203.0.113.10@tcp";

/// What the router does to the client's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatMode {
    /// Source NAT with every TCP source port remapped into 40000-49999: lnat's case.
    HighPort,
    /// Source NAT keeping source ports (so reserved ports stay reserved).
    KeepPort,
    /// Plain routing.
    None,
}

/// How to build the world.
#[derive(Clone, Copy, Debug)]
pub struct TopoOpts {
    /// The router's NAT.
    pub nat: NatMode,
    /// MSS the client advertises: the server's segments carry at most this much payload (TSO
    /// and GSO are then turned off on the way, so the client receives them as such).
    pub client_mss: Option<u16>,
    /// GRO on the client's interface.
    pub gro: bool,
    /// The router computes TCP checksums in software, so the client's kernel receives complete
    /// checksums and verifies each one (a wrong rewrite shows in TcpInCsumErrors).
    pub full_csum: bool,
    /// Steer each connection to one CPU on the client (RPS), as a NIC's RSS does. Without it,
    /// veth delivers a connection's packets on whichever CPU sent them.
    pub rss: bool,
}

impl Default for TopoOpts {
    fn default() -> Self {
        TopoOpts {
            nat: NatMode::HighPort,
            client_mss: None,
            gro: true,
            full_csum: false,
            rss: true,
        }
    }
}

/// Three namespaces wired client - router - server; all deleted on drop.
pub struct Topology {
    client: Netns,
    router: Netns,
    server: Netns,
}

/// A veth pair between two namespaces, with the given names inside them.
fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> anyhow::Result<()> {
    // Created under unique temporary names in the root namespace's view, then renamed inside.
    let id = format!("{:x}", std::process::id() as u64 * 1000 + rand_small());
    let (ta, tb) = (format!("lt{id}a"), format!("lt{id}b"));
    ns::output(std::process::Command::new("ip").args([
        "link",
        "add",
        &ta,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &tb,
        "netns",
        b.name(),
    ]))
    .context("creating a veth pair")?;
    a.run(&["ip", "link", "set", &ta, "name", a_name])?;
    b.run(&["ip", "link", "set", &tb, "name", b_name])?;
    a.run(&["ip", "link", "set", a_name, "up"])?;
    b.run(&["ip", "link", "set", b_name, "up"])?;
    Ok(())
}

/// Steers each flow received on `dev` to one CPU (RPS on every receive queue).
fn rps(ns: &Netns, dev: &str) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(63);
    let mask = format!("{:x}", (1u64 << cpus) - 1);
    let dir = format!("/sys/class/net/{dev}/queues");
    for q in ns
        .run(&["ls", &dir])?
        .split_whitespace()
        .filter(|q| q.starts_with("rx-"))
    {
        ns.run(&["sh", "-c", &format!("echo {mask} > {dir}/{q}/rps_cpus")])?;
    }
    Ok(())
}

fn rand_small() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) % 1000
}

impl Topology {
    /// Builds the world; `tag` names its namespaces.
    pub fn new(tag: &str, opts: TopoOpts) -> anyhow::Result<Topology> {
        ns::cleanup_stale();
        let t = Topology {
            client: Netns::new(&format!("{tag}-c"))?,
            router: Netns::new(&format!("{tag}-r"))?,
            server: Netns::new(&format!("{tag}-s"))?,
        };
        veth(&t.client, "eth0", &t.router, "in0")?;
        veth(&t.router, "out0", &t.server, "eth0")?;
        t.client
            .run(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
        t.router.run(&[
            "ip",
            "addr",
            "add",
            &format!("{ROUTER_IN}/24"),
            "dev",
            "in0",
        ])?;
        t.router
            .run(&["ip", "addr", "add", &format!("{NAT}/24"), "dev", "out0"])?;
        t.server
            .run(&["ip", "addr", "add", &format!("{SERVER}/24"), "dev", "eth0"])?;
        t.router.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let mut route = vec!["ip", "route", "add", "default", "via", ROUTER_IN];
        let mss = opts.client_mss.map(|m| m.to_string());
        if let Some(m) = &mss {
            route.extend(["advmss", m.as_str()]);
        }
        t.client.run(&route)?;
        t.server
            .run(&["ip", "route", "add", "default", "via", NAT])?;
        if opts.rss {
            // Every receiving side on the way: the router, too, gets the server's packets from
            // whichever CPU sent them, and would forward them out of order.
            rps(&t.client, "eth0")?;
            rps(&t.router, "in0")?;
            rps(&t.router, "out0")?;
        }
        if opts.full_csum {
            t.router.run(&["ethtool", "-K", "in0", "tx", "off"])?;
            // And no receive offload, which veth would take as "already verified".
            t.client.run(&["ethtool", "-K", "eth0", "rx", "off"])?;
        }
        if opts.client_mss.is_some() {
            // Otherwise veth hands 64 KiB GSO packets through and nothing is ever segmented.
            t.server
                .run(&["ethtool", "-K", "eth0", "tso", "off", "gso", "off"])?;
            t.router
                .run(&["ethtool", "-K", "in0", "tso", "off", "gso", "off"])?;
        }
        t.set_gro(opts.gro)?;
        let rules = match opts.nat {
            NatMode::HighPort => format!(
                "oifname \"out0\" ip saddr 198.51.100.0/24 meta l4proto tcp snat to {NAT}:40000-49999\n\
                 oifname \"out0\" ip saddr 198.51.100.0/24 snat to {NAT}\n"
            ),
            NatMode::KeepPort => {
                format!("oifname \"out0\" ip saddr 198.51.100.0/24 snat to {NAT}\n")
            }
            NatMode::None => String::new(),
        };
        if !rules.is_empty() {
            let script = format!(
                "table ip lnat_nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  {rules} }}\n}}\n"
            );
            let path = std::env::temp_dir().join(format!("{}.nft", t.router.name()));
            std::fs::write(&path, script).context("writing the NAT rules")?;
            let loaded = t.router.run(&["nft", "-f", &path.to_string_lossy()]);
            let _ = std::fs::remove_file(&path);
            loaded.context("loading the NAT rules")?;
        }
        Ok(t)
    }

    /// Turns GRO on the client's `eth0` on or off: whether the client's stack, and a program on
    /// its ingress, sees the server's segments coalesced.
    pub fn set_gro(&self, on: bool) -> anyhow::Result<()> {
        self.client
            .run(&[
                "ethtool",
                "-K",
                "eth0",
                "gro",
                if on { "on" } else { "off" },
            ])
            .map(drop)
            .context("setting GRO on the client's eth0")
    }

    /// The LNet client's namespace (interface `eth0`).
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The NAT router's namespace.
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// The LNet server's namespace.
    pub fn server(&self) -> &Netns {
        &self.server
    }
}
