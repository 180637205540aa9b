//! The `lnat` command as an administrator meets it: one-line errors, static mappings changed
//! while traffic flows, learned mappings that expire.

use std::{process::Command, time::Duration};

use lnat_tests::{
    harness::{self, Host, Lnat},
    ns::Proc,
    report::ClientReport,
    topology::{CLIENT_NID, NAT_NID, TopoOpts, Topology},
    workload::{self, Sizes},
};

/// Runs lnat with `args` in `host`'s namespaces (or as given by `wrap`); returns exit code and
/// stderr.
fn fails(mut cmd: Command) -> (i32, String) {
    let out = cmd.output().expect("running lnat");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lnat_cmd(host: &Host, args: &[&str]) -> Command {
    let bin = harness::lnat_bin();
    let mut argv = vec![bin.to_str().unwrap_or("lnat")];
    argv.extend_from_slice(args);
    host.command(&argv)
}

/// Asserts a failure is one line starting `lnat: error:` and containing `what`.
fn assert_one_line(code: i32, stderr: &str, what: &str) {
    assert_ne!(code, 0);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("lnat: error: ") && stderr.contains(what),
        "{stderr}"
    );
}

#[test]
fn bad_input_gets_one_line_errors() {
    let t = Topology::new("err", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let (code, e) = fails(lnat_cmd(&host, &["attach", "nosuchif0"]));
    assert_one_line(code, &e, "unknown interface 'nosuchif0'");
    let (code, e) = fails(lnat_cmd(
        &host,
        &["attach", "eth0", "--external", "203.0.113@tcp"],
    ));
    assert_one_line(code, &e, "malformed NID");
    assert_eq!(code, 2);
    let (code, e) = fails(lnat_cmd(&host, &["attach", "eth0", "--port", "0"]));
    assert_one_line(code, &e, "port 0");
    let (code, e) = fails(lnat_cmd(
        &host,
        &["map", "add", "203.0.113.1@tcp", "--iface", "eth0"],
    ));
    assert_one_line(code, &e, "not attached to eth0");
    let (code, e) = fails(lnat_cmd(&host, &["status", "eth0"]));
    assert_one_line(code, &e, "not attached to eth0");
    // Without root: setpriv drops to nobody and every capability.
    let bin = harness::lnat_bin();
    let mut cmd = host.command(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ]);
    cmd.args([bin.to_str().unwrap_or("lnat"), "attach", "eth0"]);
    let (code, e) = fails(cmd);
    assert_one_line(code, &e, "needs root");
    let _lnat = Lnat::attach(&host, "eth0", &[]).expect("attach");
    let (code, e) = fails(lnat_cmd(
        &host,
        &[
            "map",
            "add",
            "203.0.113.1@tcp",
            "10.0.0.1@tcp1",
            "--iface",
            "eth0",
        ],
    ));
    assert_one_line(code, &e, "not on the same LNet net");
    let (code, e) = fails(lnat_cmd(
        &host,
        &["map", "del", "203.0.113.77@tcp", "--iface", "eth0"],
    ));
    assert_one_line(code, &e, "no mapping for 203.0.113.77@tcp");
}

/// `puts` small PUTs to the first client; its report.
fn exchange(t: &Topology, puts: u64) -> ClientReport {
    let _server = harness::lnet_server(t, puts, "small", &[]).expect("server");
    let client = harness::lnet_client(t, puts, Duration::from_secs(30), &[]).expect("client");
    harness::client_report(client, Duration::from_secs(60)).expect("client report")
}

#[test]
fn static_mappings_apply_and_stop_applying_while_attached() {
    let t = Topology::new("static", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &["--no-learn"]).expect("attach");
    assert_eq!(
        exchange(&t, 5).status,
        "rejected",
        "nothing mapped, nothing learned"
    );
    host.lnat(&["map", "add", NAT_NID, "--iface", "eth0"])
        .expect("map add");
    let ok = exchange(&t, 20);
    assert_eq!(ok.status, "ok", "{}", ok.reason);
    let status = lnat.status().expect("status");
    assert_eq!(status["mappings"][0]["origin"], "static");
    // The HELLO dst_nid and 20 PUT dest_nids.
    assert_eq!(status["mappings"][0]["hits"], 21);
    assert_eq!(status["counters"]["learned"], 0);
    host.lnat(&["map", "del", NAT_NID, "--iface", "eth0"])
        .expect("map del");
    assert_eq!(exchange(&t, 5).status, "rejected", "the mapping is gone");
    drop(lnat);
    // --external at attach time is the same as a map add.
    let lnat = Lnat::attach(&host, "eth0", &["--no-learn", "--external", NAT_NID]).expect("attach");
    assert_eq!(exchange(&t, 20).status, "ok");
    assert_eq!(lnat.counter("rewritten").expect("counter"), 21);
}

#[test]
fn learned_mappings_expire_when_unused() {
    let t = Topology::new("ttl", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let mut lnat = Lnat::attach(&host, "eth0", &["--learn-ttl", "1"]).expect("attach");
    assert_eq!(exchange(&t, 5).status, "ok");
    let line = lnat
        .wait_line("expired", Duration::from_secs(20))
        .expect("expiry");
    assert!(line.contains(&format!("expired {NAT_NID}")), "{line}");
    let status = lnat.status().expect("status");
    assert!(
        status["mappings"].as_array().is_some_and(Vec::is_empty),
        "{status}"
    );
    // Learned again on the next connection.
    assert_eq!(exchange(&t, 5).status, "ok");
    assert_eq!(lnat.counter("learned").expect("counter"), 2);
}

/// A paced transfer of `puts` small PUTs in the background: the server, and the client allowed
/// `reconnects` LNet-style reconnections.
fn paced_transfer(t: &Topology, puts: u64, reconnects: &str) -> (Proc, Proc) {
    let server = harness::lnet_server(
        t,
        puts,
        "small",
        &["--pace-ms", "5", "--conns", "1000", "--hold-secs", "5"],
    )
    .expect("server");
    let client = harness::lnet_client(
        t,
        puts,
        Duration::from_secs(60),
        &["--reconnects", reconnects],
    )
    .expect("client");
    (server, client)
}

#[test]
fn static_mappings_change_while_traffic_flows() {
    let t = Topology::new("churn", TopoOpts::default()).expect("topology");
    let host = Host::new(t.client()).expect("host");
    let lnat = Lnat::attach(&host, "eth0", &["--no-learn", "--external", NAT_NID]).expect("attach");
    let me = CLIENT_NID.parse().expect("nid");
    let other = "203.0.113.77@tcp";

    // Other mappings come and go in the middle of a transfer: it never notices.
    let (server, mut client) = paced_transfer(&t, 400, "0");
    let mut churns = 0;
    while client.running() {
        host.lnat(&["map", "add", other, "--iface", "eth0"])
            .expect("map add");
        host.lnat(&["map", "del", other, "--iface", "eth0"])
            .expect("map del");
        churns += 1;
    }
    let report = harness::client_report(client, Duration::from_secs(10)).expect("client");
    assert_eq!(report.status, "ok", "{}", report.reason);
    assert_eq!(report.connections, 1, "the transfer was disturbed");
    assert_eq!(
        report.received,
        workload::expected(&Sizes::Small, 1, me, 400)
    );
    assert!(churns >= 10, "only {churns} changes during the transfer");
    drop(server);

    // The mapping in use goes away mid-transfer and comes back: what arrives meanwhile is
    // rejected, as without lnat; the client reconnects and the transfer completes intact.
    let (_server, client) = paced_transfer(&t, 400, "100");
    std::thread::sleep(Duration::from_millis(500));
    host.lnat(&["map", "del", NAT_NID, "--iface", "eth0"])
        .expect("map del");
    std::thread::sleep(Duration::from_millis(600));
    host.lnat(&["map", "add", NAT_NID, "--iface", "eth0"])
        .expect("map add");
    let report = harness::client_report(client, Duration::from_secs(70)).expect("client");
    assert_eq!(report.status, "ok", "{}", report.reason);
    assert!(
        report.failures >= 1,
        "no message was rejected while unmapped"
    );
    assert_eq!(
        report.received,
        workload::expected(&Sizes::Small, 1, me, 400)
    );
    assert_eq!(t.client().nstat("TcpInCsumErrors").expect("nstat"), 0);
    let c = lnat.counters().expect("counters");
    assert_eq!(c["desynced"], 0, "{c}");
    assert_eq!(c["conflicts"], 0, "{c}");
    println!(
        "RESULT mapping churn: {churns} add/del pairs under traffic, 0 reconnects; the mapping \
         in use removed for 0.6 s: {} rejected connections, then intact",
        report.failures
    );
}

/// What a package installs beside the binary comes from the command line itself: each shell's
/// completions offer every command, the bash script parses, and the manual pages cover lnat and
/// each command with its options; an unknown shell is a one-line error.
#[test]
fn completions_and_manual_pages_cover_every_command() {
    let bin = harness::lnat_bin();
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .args(args)
            .output()
            .expect("running lnat");
        assert!(out.status.success(), "lnat {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let commands = ["attach", "status", "map", "probe", "completions", "man"];
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        for c in commands {
            assert!(script.contains(c), "{shell} completions lack {c}");
        }
    }
    let path = std::env::temp_dir().join(format!("lnat-completion-{}.bash", std::process::id()));
    std::fs::write(&path, run(&["completions", "bash"])).expect("writing the script");
    let parsed = Command::new("bash").arg("-n").arg(&path).status();
    let _ = std::fs::remove_file(&path);
    assert!(
        parsed.expect("bash").success(),
        "the bash script does not parse"
    );
    let dir = std::env::temp_dir().join(format!("lnat-man-{}", std::process::id()));
    run(&["man", &dir.to_string_lossy()]);
    let page = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let (top, attach) = (page("lnat.1"), page("lnat-attach.1"));
    let probe = page("lnat-probe.1");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        top.starts_with(".ie") && top.contains(".TH lnat 1"),
        "{top}"
    );
    for c in commands {
        assert!(top.contains(c), "lnat.1 lacks {c}");
    }
    assert!(attach.contains(".TH lnat-attach 1"), "{attach}");
    assert!(attach.contains("\\-\\-attach\\-mode") && attach.contains("\\-\\-ingress\\-only"));
    assert!(probe.contains("SERVER_NID"), "{probe}");
    let (code, e) = fails({
        let mut c = Command::new(&bin);
        c.args(["completions", "tcsh"]);
        c
    });
    assert_eq!(code, 2);
    assert_one_line(code, &e, "invalid value 'tcsh'");
}
