//! The world of the namespace tests: LNet clients, a NAT router and an LNet server.
//!
//! ```text
//!  client 198.51.100.2 ---+                                  +--- server 203.0.113.10
//!  (eth0)   [impairment]  +- br0 198.51.100.1  router  203.0.113.1 (out0) -+   (eth0, and .11,
//!  client 198.51.100.3 ---+       (in0, in1, ...)   NAT                          .12 ... if asked)
//! ```
//! Only these documentation ranges are used, and only between namespaces this module creates.
//! The router's client side is a bridge, so several clients can sit behind the one NAT; an
//! impairment bridge (see [`crate::impair`]) can sit between the first client and the router.

use anyhow::{Context as _, bail};

use crate::{
    harness,
    impair::Weather,
    link,
    ns::{self, Netns, Proc},
};

/// The first client's address.
pub const CLIENT: &str = "198.51.100.2";
/// The router's address on the clients' side.
pub const ROUTER_IN: &str = "198.51.100.1";
/// The NAT's public address.
pub const NAT: &str = "203.0.113.1";
/// The server's address.
pub const SERVER: &str = "203.0.113.10";
/// The first client's NID.
pub const CLIENT_NID: &str = "198.51.100.2@tcp";
/// The NID the server gives a client behind a port-remapping NAT.
pub const NAT_NID: &str = "203.0.113.1@tcp";
/// The server's NID.
pub const SERVER_NID: &str = "203.0.113.10@tcp";
/// The LNet acceptor port.
pub const ACCEPTOR_PORT: u16 = lnat_common::wire::ACCEPTOR_PORT;

/// Client `i`'s address (198.51.100.2, .3, ...).
pub fn client_addr(i: usize) -> String {
    format!("198.51.100.{}", 2 + i)
}

/// Server address `i` (203.0.113.10, .11, ...).
pub fn server_addr(i: usize) -> String {
    format!("203.0.113.{}", 10 + i)
}

/// What the router does to the clients' connections.
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
    /// Clients behind the NAT.
    pub clients: usize,
    /// Addresses the server listens on.
    pub servers: usize,
    /// MSS the clients advertise: the server's segments carry at most this much payload (TSO
    /// and GSO are then turned off on the way, so the clients receive them as such).
    pub client_mss: Option<u16>,
    /// GRO on the clients' interfaces.
    pub gro: bool,
    /// The router computes TCP checksums in software, so the clients' kernels receive complete
    /// checksums and verify each one (a wrong rewrite shows in TcpInCsumErrors).
    pub full_csum: bool,
    /// Steer each connection to one CPU (RPS) wherever packets are received, as a NIC's RSS
    /// does. Without it, veth delivers a connection's packets on whichever CPU sent them.
    pub rss: bool,
    /// A bad network between the first client and the router (frames server to client).
    pub impair: Option<Weather>,
    /// Percent of the server's LNet segments the router drops (nftables `numgen`).
    pub router_drop: u64,
    /// Percent of LNet segments the first client's stack drops after TC (nftables input).
    pub post_tc_drop: u64,
    /// MTU on the clients' side: with DF clear, the router fragments the server's packets.
    pub client_mtu: Option<u32>,
    /// BIG TCP: GSO and GRO packets up to this size (IPv4; Linux 6.3+).
    pub big_tcp: Option<u32>,
    /// The NAT forwards its port 988 to the first client (an LNet server behind the NAT).
    pub forward_acceptor: bool,
    /// 802.1Q priority tags (VLAN 0) an impairment bridge (lossless unless `impair` says
    /// otherwise) pushes onto every frame to the first client, up to 2. The kernel takes the
    /// outer tag off before TC, leaves a second one in the frame TC sees, and delivers both
    /// without a VLAN device (which kernels without 802.1Q support, like CI's, cannot make).
    pub tags: u8,
    /// The router drops new connections from outside to the clients' network, as a real NAT's
    /// private network is not reachable from outside: a server dialling a client's private
    /// address then times out, where otherwise the router would forward the dial.
    pub private_unreachable: bool,
    /// The router drops the first copy of each client's discovery push (a segment to port
    /// 988 whose LNet payload starts with the ping magic, at stream offset 96 of its
    /// segment): the client's retransmission, which its egress program sees again, must
    /// leave rewritten as the first copy did. Counted in [`Topology::pushes_dropped`].
    pub drop_first_push: bool,
}

impl Default for TopoOpts {
    fn default() -> Self {
        TopoOpts {
            nat: NatMode::HighPort,
            clients: 1,
            servers: 1,
            client_mss: None,
            gro: true,
            full_csum: false,
            rss: true,
            impair: None,
            router_drop: 0,
            post_tc_drop: 0,
            client_mtu: None,
            big_tcp: None,
            forward_acceptor: false,
            tags: 0,
            private_unreachable: false,
            drop_first_push: false,
        }
    }
}

/// The namespaces, deleted on drop (processes in them killed first).
pub struct Topology {
    // Declared first so the bridge process dies before its namespace goes.
    bridge_proc: Option<Proc>,
    clients: Vec<Netns>,
    bridge: Option<Netns>,
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
    rps_mask(ns, dev, (1u64 << cpus) - 1)
}

/// Steers `dev`'s received packets to the CPUs in `mask`.
fn rps_mask(ns: &Netns, dev: &str, mask: u64) -> anyhow::Result<()> {
    let mask = format!("{mask:x}");
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

/// Turns offloads off on `dev`: frames leave it whole, checksummed and no larger than the MTU.
fn no_offloads(ns: &Netns, dev: &str) -> anyhow::Result<()> {
    ns.run(&[
        "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off",
    ])
    .map(drop)
}

fn rand_small() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) % 1000
}

/// Loads an nftables script into `ns`.
fn nft(ns: &Netns, script: &str) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("{}-{}.nft", ns.name(), rand_small()));
    std::fs::write(&path, script).context("writing nftables rules")?;
    let loaded = ns.run(&["nft", "-f", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    loaded.map(drop).context("loading nftables rules")
}

impl Topology {
    /// Builds the world; `tag` names its namespaces.
    pub fn new(tag: &str, opts: TopoOpts) -> anyhow::Result<Topology> {
        ns::cleanup_stale();
        if opts.clients == 0 || opts.clients > 8 || opts.servers == 0 || opts.servers > 8 {
            bail!("between 1 and 8 clients and servers");
        }
        let weather = opts.impair.or((opts.tags > 0).then(Weather::default));
        let mut t = Topology {
            bridge_proc: None,
            clients: (0..opts.clients)
                .map(|i| Netns::new(&format!("{tag}-c{i}")))
                .collect::<anyhow::Result<_>>()?,
            bridge: weather
                .map(|_| Netns::new(&format!("{tag}-b")))
                .transpose()?,
            router: Netns::new(&format!("{tag}-r"))?,
            server: Netns::new(&format!("{tag}-s"))?,
        };
        t.router
            .run(&["ip", "link", "add", "br0", "type", "bridge"])?;
        t.router.run(&["ip", "link", "set", "br0", "up"])?;
        for (i, c) in t.clients.iter().enumerate() {
            let port = format!("in{i}");
            match (&t.bridge, i) {
                (Some(b), 0) => {
                    veth(c, "eth0", b, "b0")?;
                    veth(b, "b1", &t.router, &port)?;
                    // Frames cross the bridge as AF_PACKET copies: whole and checksummed.
                    no_offloads(c, "eth0")?;
                    no_offloads(&t.router, &port)?;
                    c.run(&["ethtool", "-K", "eth0", "rx", "off"])?;
                }
                _ => veth(c, "eth0", &t.router, &port)?,
            }
            t.router
                .run(&["ip", "link", "set", &port, "master", "br0"])?;
            c.run(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", client_addr(i)),
                "dev",
                "eth0",
            ])?;
            let mut route = vec!["ip", "route", "add", "default", "via", ROUTER_IN];
            let mss = opts.client_mss.map(|m| m.to_string());
            if let Some(m) = &mss {
                route.extend(["advmss", m.as_str()]);
            }
            c.run(&route)?;
            c.run(&[
                "ethtool",
                "-K",
                "eth0",
                "gro",
                if opts.gro { "on" } else { "off" },
            ])?;
            if opts.rss {
                rps(c, "eth0")?;
                rps(&t.router, &port)?;
            }
            if opts.full_csum {
                no_offloads(&t.router, &port)?;
                // And no receive offload, which veth would take as "already verified".
                c.run(&["ethtool", "-K", "eth0", "rx", "off"])?;
            }
            if let Some(mtu) = opts.client_mtu {
                c.run(&["ip", "link", "set", "eth0", "mtu", &mtu.to_string()])?;
                t.router
                    .run(&["ip", "link", "set", &port, "mtu", &mtu.to_string()])?;
            }
        }
        veth(&t.router, "out0", &t.server, "eth0")?;
        t.router.run(&[
            "ip",
            "addr",
            "add",
            &format!("{ROUTER_IN}/24"),
            "dev",
            "br0",
        ])?;
        t.router
            .run(&["ip", "addr", "add", &format!("{NAT}/24"), "dev", "out0"])?;
        for i in 0..opts.servers {
            t.server.run(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", server_addr(i)),
                "dev",
                "eth0",
            ])?;
        }
        t.router.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        t.server
            .run(&["ip", "route", "add", "default", "via", NAT])?;
        if opts.rss {
            rps(&t.router, "out0")?;
        }
        if opts.client_mss.is_some() {
            // Otherwise veth hands 64 KiB GSO packets through and nothing is ever segmented.
            t.server
                .run(&["ethtool", "-K", "eth0", "tso", "off", "gso", "off"])?;
        }
        if let Some(size) = opts.big_tcp {
            link::set_u32(&t.server, "eth0", link::GSO_IPV4_MAX_SIZE, size)?;
            link::set_u32(&t.router, "out0", link::GRO_IPV4_MAX_SIZE, size)?;
            link::set_u32(&t.router, "br0", link::GSO_IPV4_MAX_SIZE, size)?;
            for (i, c) in t.clients.iter().enumerate() {
                link::set_u32(&t.router, &format!("in{i}"), link::GSO_IPV4_MAX_SIZE, size)?;
                link::set_u32(c, "eth0", link::GRO_IPV4_MAX_SIZE, size)?;
            }
        }
        t.rules(&opts)?;
        if let (Some(b), Some(w)) = (&t.bridge, weather) {
            let bin = harness::peer_bin();
            let p = b.spawn(&[
                &bin.to_string_lossy(),
                "impair",
                "--from",
                "b1",
                "--to",
                "b0",
                "--drop",
                &w.drop.to_string(),
                "--hold",
                &w.hold.to_string(),
                "--dup",
                &w.dup.to_string(),
                "--seed",
                &w.seed.to_string(),
                "--tags",
                &opts.tags.to_string(),
            ])?;
            t.bridge_proc = Some(p);
        }
        Ok(t)
    }

    /// NAT and fault-injection rules.
    fn rules(&self, opts: &TopoOpts) -> anyhow::Result<()> {
        let nat = match opts.nat {
            NatMode::HighPort => format!(
                "oifname \"out0\" ip saddr 198.51.100.0/24 meta l4proto tcp snat to {NAT}:40000-49999\n  \
                 oifname \"out0\" ip saddr 198.51.100.0/24 snat to {NAT}\n"
            ),
            NatMode::KeepPort => {
                format!("oifname \"out0\" ip saddr 198.51.100.0/24 snat to {NAT}\n")
            }
            NatMode::None => String::new(),
        };
        let forward = if opts.forward_acceptor {
            format!(
                " chain pre {{\n  type nat hook prerouting priority -100;\n  iifname \"out0\" tcp dport 988 dnat to {CLIENT}:988\n }}\n"
            )
        } else {
            String::new()
        };
        let mut script = format!(
            "table ip lnat_nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  {nat} }}\n{forward}}}\n"
        );
        if opts.router_drop > 0 {
            script += &format!(
                "table ip lnat_loss {{\n chain forward {{\n  type filter hook forward priority 0;\n  \
                 iifname \"out0\" tcp sport 988 numgen random mod 100 < {} drop\n }}\n}}\n",
                opts.router_drop
            );
        }
        if opts.private_unreachable {
            script += "table ip lnat_private {\n chain forward {\n  type filter hook forward priority 0;\n  \
                 iifname \"out0\" ip daddr 198.51.100.0/24 ct state new drop\n }\n}\n";
        }
        if opts.drop_first_push {
            // `@ih,768,32`: the 4 bytes at TCP payload offset 96 (24 ksock + 72 LNet header),
            // the LE magic 0x70696e67 as they lie on the wire. A copy goes when its segment
            // (client address, port, sequence number: forward comes before SNAT) is new; its
            // retransmission, the same segment, passes.
            script += "table ip lnat_push_loss {\n \
                 set seen {\n  typeof ip saddr . tcp sport . tcp sequence; size 1024; flags dynamic;\n }\n \
                 chain forward {\n  type filter hook forward priority 0;\n  \
                 tcp dport 988 @ih,768,32 0x676e6970 ip saddr . tcp sport . tcp sequence != @seen \
                 add @seen { ip saddr . tcp sport . tcp sequence } counter drop\n }\n}\n";
        }
        nft(&self.router, &script)?;
        if opts.post_tc_drop > 0 {
            nft(
                &self.clients[0],
                &format!(
                    "table ip lnat_loss {{\n chain input {{\n  type filter hook input priority 0;\n  \
                     tcp sport 988 numgen random mod 100 < {} drop\n }}\n}}\n",
                    opts.post_tc_drop
                ),
            )?;
        }
        Ok(())
    }

    /// Discovery pushes the router dropped (their first copies), with
    /// [`TopoOpts::drop_first_push`].
    pub fn pushes_dropped(&self) -> anyhow::Result<u64> {
        let rules =
            self.router
                .run(&["nft", "list", "chain", "ip", "lnat_push_loss", "forward"])?;
        rules
            .split("counter packets ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .context("no push-loss counter in the router's rules")
    }

    /// Turns GRO on the first client's `eth0` on or off: whether its stack, and a program on its
    /// ingress, sees the server's segments coalesced.
    pub fn set_gro(&self, on: bool) -> anyhow::Result<()> {
        self.clients[0]
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

    /// Whether the first client receives 64 KiB packets (GSO through the router, GRO on its
    /// `eth0`) or MTU-sized ones (the router segments, the client does not coalesce).
    pub fn set_large_packets(&self, on: bool) -> anyhow::Result<()> {
        self.set_gro(on)?;
        let on = if on { "on" } else { "off" };
        self.router
            .run(&["ethtool", "-K", "in0", "tso", on, "gso", on])
            .map(drop)
            .context("setting segmentation offload on the router's in0")
    }

    /// Steers every received packet on the path to the first client to one CPU, as a NIC with
    /// one receive queue would: each run then shares its CPUs out the same way (with packets
    /// spread by flow hash, a connection's receive work lands by chance on the CPU of one
    /// emulated peer or the other, and its rate with it).
    pub fn steer_to_cpu(&self, cpu: usize) -> anyhow::Result<()> {
        let mask = 1u64 << cpu.min(63);
        rps_mask(&self.router, "out0", mask)?;
        rps_mask(&self.router, "in0", mask)?;
        rps_mask(&self.clients[0], "eth0", mask)
    }

    /// The first LNet client's namespace (interface `eth0`).
    pub fn client(&self) -> &Netns {
        &self.clients[0]
    }

    /// LNet client `i`'s namespace.
    pub fn client_n(&self, i: usize) -> &Netns {
        &self.clients[i]
    }

    /// The NAT router's namespace.
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// The LNet server's namespace.
    pub fn server(&self) -> &Netns {
        &self.server
    }

    /// Stops the impairment bridge and returns what it did to the frames.
    pub fn impairment(&mut self) -> anyhow::Result<crate::impair::Tally> {
        let p = self.bridge_proc.take().context("no impairment bridge")?;
        p.signal(libc::SIGTERM);
        let out = p.wait(std::time::Duration::from_secs(10))?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "impairment report: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}
