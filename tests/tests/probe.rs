//! `lnat probe` against the emulated server: the verdict for each NAT and `accept` setting, and
//! one-line errors for servers that are not there or are not LNet.
//!
//! The probe connects from a reserved port. What the server then calls the client:
//! - keepport: the NAT changes the address but keeps the reserved port, so the server trusts
//!   the HELLO and names the client by its own NID (198.51.100.2@tcp), even though it sees the
//!   connection come from the NAT's 203.0.113.1: nothing needed;
//! - highport, accept=all: the server sees a port of 40000 or more, takes the client for a
//!   userspace peer and names it by the NAT's address, 203.0.113.1@tcp: run lnat attach eth0;
//! - highport, accept=secure: the acceptor closes the connection at once: accept=all needed.

use std::time::{Duration, Instant};

use lnat_tests::{
    harness,
    ns::{Netns, Proc},
    report::ServerReport,
    topology::{ACCEPTOR_PORT, CLIENT_NID, NAT, NAT_NID, NatMode, SERVER_NID, TopoOpts, Topology},
};

/// What one run of lnat gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `lnat ARGS...` in `ns`.
fn lnat(ns: &Netns, args: &[&str]) -> Run {
    let bin = harness::lnat_bin();
    let mut argv = vec![bin.to_str().unwrap_or("lnat")];
    argv.extend_from_slice(args);
    let mut cmd = ns.command(&argv);
    let start = Instant::now();
    let out = cmd.output().expect("running lnat");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

/// `lnat probe SERVER_NID --json` in the first client: its JSON, after checking it succeeded.
fn probe_json(t: &Topology) -> serde_json::Value {
    let r = lnat(t.client(), &["probe", SERVER_NID, "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// The emulated server at SERVER_NID with `accept`, sending no PUTs, serving `conns`
/// connections; returned once it listens.
fn server(t: &Topology, accept: &str, conns: u32) -> Proc {
    let conns = conns.to_string();
    let s = harness::server(
        t.server(),
        &[
            "--nid",
            SERVER_NID,
            "--accept",
            accept,
            "--puts",
            "0",
            "--conns",
            &conns,
            "--hold-secs",
            "10",
        ],
    )
    .expect("server");
    t.server()
        .wait_listening(ACCEPTOR_PORT, Duration::from_secs(10))
        .expect("server listening");
    s
}

fn report(s: Proc) -> ServerReport {
    harness::server_report(s, Duration::from_secs(20)).expect("server report")
}

/// The port in a server's `address:port` for its peer.
fn port_of(peer: &str) -> u16 {
    peer.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// Asserts a failure is one line starting `lnat: error:` and containing `what`.
fn assert_one_line(r: &Run, code: i32, what: &str) {
    assert_eq!(r.code, code, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("lnat: error: ") && r.stderr.contains(what),
        "{}",
        r.stderr
    );
}

#[test]
fn keepport_needs_nothing() {
    let t = Topology::new(
        "pk",
        TopoOpts {
            nat: NatMode::KeepPort,
            ..TopoOpts::default()
        },
    )
    .expect("topology");
    // accept=secure: the connection is only served because the port stayed reserved.
    let s = server(&t, "secure", 1);
    let v = probe_json(&t);
    assert_eq!(v["server_nid"], SERVER_NID);
    assert_eq!(v["address"], "203.0.113.10:988");
    assert_eq!(v["local_nid"], CLIENT_NID);
    let port = v["local_port"].as_u64().unwrap_or(0);
    assert!((512..=1023).contains(&port), "{v}");
    assert_eq!(v["server_calls_us"], CLIENT_NID);
    assert_eq!(v["remapped"], false);
    assert_eq!(v["refused_insecure"], false);
    assert_eq!(v["verdict"], "nothing-needed");
    assert_eq!(v["advice"], "nothing needed");
    let rep = report(s);
    let c = &rep.connections[0];
    // The server saw the NAT's address and the client's own reserved port, and named the
    // client by the NID of its HELLO.
    assert_eq!(c.peer, format!("{NAT}:{port}"));
    assert_eq!(c.peer_nid, CLIENT_NID);
    assert_eq!(c.hello_dst_nid, SERVER_NID);
    assert!(c.refused.is_none(), "{:?}", c.refused);
}

#[test]
fn highport_accept_all_needs_attach() {
    let t = Topology::new("pa", TopoOpts::default()).expect("topology");
    let s = server(&t, "all", 2);
    let v = probe_json(&t);
    assert_eq!(v["local_nid"], CLIENT_NID);
    assert_eq!(v["server_calls_us"], NAT_NID);
    assert_eq!(v["remapped"], true);
    assert_eq!(v["refused_insecure"], false);
    assert_eq!(v["verdict"], "attach");
    assert_eq!(v["advice"], "run lnat attach eth0");
    let r = lnat(t.client(), &["probe", SERVER_NID]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("the server calls this host 203.0.113.1@tcp, not 198.51.100.2@tcp"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.ends_with("advice: run lnat attach eth0\n"),
        "{}",
        r.stdout
    );
    let rep = report(s);
    for c in &rep.connections {
        // The NAT gave the reserved port one of 40000 and up; the server named the client
        // after the NAT, as a userspace peer.
        assert!(port_of(&c.peer) >= 40000, "{}", c.peer);
        assert_eq!(c.peer_nid, NAT_NID);
        assert!(c.refused.is_none(), "{:?}", c.refused);
    }
}

#[test]
fn highport_secure_needs_accept_all() {
    let t = Topology::new("ps", TopoOpts::default()).expect("topology");
    let s = server(&t, "secure", 1);
    let v = probe_json(&t);
    assert_eq!(v["local_nid"], CLIENT_NID);
    assert_eq!(v["server_calls_us"], serde_json::Value::Null);
    assert_eq!(v["remapped"], true);
    assert_eq!(v["refused_insecure"], true);
    assert_eq!(v["verdict"], "accept-all");
    assert_eq!(v["advice"], "set options lnet accept=all on the server");
    let rep = report(s);
    let refused = rep.connections[0].refused.clone().unwrap_or_default();
    assert!(refused.contains("insecure port"), "{refused}");
}

#[test]
fn absent_servers_and_bad_nids_get_one_line_errors() {
    let t = Topology::new("pu", TopoOpts::default()).expect("topology");
    // Nobody has 203.0.113.77: no answer, or the router's "host unreachable", within the
    // connect timeout.
    let r = lnat(t.client(), &["probe", "203.0.113.77@tcp"]);
    assert_one_line(&r, 1, "203.0.113.77:988");
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
    // A server that drops the connection's SYNs: the connect timeout.
    t.server()
        .run(&[
            "nft",
            "add table ip probe_drop { chain input { type filter hook input priority 0; tcp dport 989 drop; }; }",
        ])
        .expect("dropping port 989");
    let r = lnat(t.client(), &["probe", SERVER_NID, "--port", "989"]);
    assert_one_line(&r, 1, "no answer from 203.0.113.10:989 within 5 s");
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
    // The server's address, with nothing listening.
    let r = lnat(t.client(), &["probe", SERVER_NID, "--json"]);
    assert_one_line(&r, 1, "203.0.113.10:988 refused the connection");
    let r = lnat(t.client(), &["probe", "203.0.113@tcp"]);
    assert_one_line(&r, 2, "malformed NID");
    let r = lnat(t.client(), &["probe", "203.0.113.10@o2ib"]);
    assert_one_line(&r, 1, "not a tcp NID");
    let r = lnat(t.client(), &["probe", SERVER_NID, "--port", "0"]);
    assert_one_line(&r, 2, "--port");
}

#[test]
fn servers_that_are_not_lnet_get_one_line_errors() {
    let t = Topology::new("pn", TopoOpts::default()).expect("topology");
    // Something that speaks first, as SSH does.
    let bin = harness::peer_bin();
    let bin = bin.to_string_lossy();
    let blob = t
        .server()
        .spawn(&[
            &bin,
            "blob-server",
            "--listen",
            "0.0.0.0:988",
            "--text",
            "SSH-2.0-OpenSSH_9.6 ",
            "--bytes",
            "40",
        ])
        .expect("blob server");
    t.server()
        .wait_listening(ACCEPTOR_PORT, Duration::from_secs(10))
        .expect("blob server listening");
    let r = lnat(t.client(), &["probe", SERVER_NID]);
    assert_one_line(&r, 1, "is not an LNet acceptor: it spoke first (\"SSH-2.0-");
    blob.wait(Duration::from_secs(10)).expect("blob server");
    // An LNet-like server whose HELLO has a wrong magic.
    let s = harness::server(
        t.server(),
        &[
            "--nid",
            SERVER_NID,
            "--accept",
            "all",
            "--corrupt",
            "hello-magic",
        ],
    )
    .expect("server");
    t.server()
        .wait_listening(ACCEPTOR_PORT, Duration::from_secs(10))
        .expect("server listening");
    let r = lnat(t.client(), &["probe", SERVER_NID, "--json"]);
    assert_one_line(
        &r,
        1,
        "is not an LNet server: its answer has magic 0x12345678",
    );
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
    report(s);
}
