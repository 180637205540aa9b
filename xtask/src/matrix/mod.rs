//! `cargo xtask test`'s kernel matrix: lnat's tests inside Debian's own kernels under qemu,
//! and on the host's kernel, with one table of what each proved.

mod guest;
mod kernels;

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail};

use crate::workspace::{self, output};
use kernels::{Expect, KERNELS, Kernel};

/// The tests each passing guest runs: test target, and the test binary's arguments. The
/// lifecycle tests attach, report and detach in each mode, and SIGKILL lnat to see the next
/// attach remove the stale filter or pins; the one whose client must outlast lnat's downtime
/// mid-transfer runs on the host only (under TCG a re-attach outlasts its server). The
/// talk-back tests are the egress program's and the ingress ping-reply rule's, end to end.
const GUEST_TESTS: [(&str, &str); 4] = [
    ("golden", ""),
    ("core", ""),
    (
        "lifecycle",
        "--skip sigkill_mid_transfer_then_reattach_and_reconnect",
    ),
    ("talk_back", ""),
];

/// Longest a guest that runs the tests may take (TCG runs them about 5 times slower).
const PASS_LIMIT: Duration = Duration::from_secs(1500);
/// Longest a guest that only tries to attach may take.
const REFUSE_LIMIT: Duration = Duration::from_secs(240);

/// Attaches to a veth in a namespace of its own, reads `lnat status --json` once both programs
/// run, then ends `lnat attach` with SIGTERM: what the table reports for a kernel.
const PROBE: &str = r#"
ip netns del lnat-probe 2>/dev/null
ip netns add lnat-probe || exit 1
ip -n lnat-probe link add probe0 type veth peer name probe1 || exit 1
ip -n lnat-probe link set probe0 up && ip -n lnat-probe link set probe1 up || exit 1
ip netns exec lnat-probe sh -c '
    mount -t bpf bpf /sys/fs/bpf 2>/dev/null
    timeout 300 "$LNAT_BIN" attach probe0 > ${TMPDIR:-/tmp}/lnat-probe.out 2> ${TMPDIR:-/tmp}/lnat-probe.err &
    pid=$!
    i=0
    while [ $i -lt 240 ] && kill -0 $pid 2>/dev/null; do
        "$LNAT_BIN" status probe0 --json > ${TMPDIR:-/tmp}/lnat-probe.json 2>/dev/null &&
            grep -q "\"egress\": *{" ${TMPDIR:-/tmp}/lnat-probe.json && break
        i=$((i + 1)); sleep 1
    done
    echo "LNAT-MATRIX status=$(tr -d "\n" < ${TMPDIR:-/tmp}/lnat-probe.json)"
    kill -TERM $pid 2>/dev/null
    wait $pid
    echo "LNAT-MATRIX attach-exit=$?"
    echo "LNAT-MATRIX stderr-lines=$(wc -l < ${TMPDIR:-/tmp}/lnat-probe.err)"
    sed "s/^/LNAT-MATRIX stderr=/" ${TMPDIR:-/tmp}/lnat-probe.err
    sed "s/^/LNAT-MATRIX stdout=/" ${TMPDIR:-/tmp}/lnat-probe.out
'
ip netns del lnat-probe
"#;

/// One row of the table.
struct Row {
    release: String,
    runs_it: &'static str,
    mode: String,
    verified: String,
    result: String,
}

/// Boots every kernel of the matrix and probes the host's; fails on the first kernel that
/// does not do what it must, after printing the table so far.
pub fn run() -> anyhow::Result<()> {
    let dir = workspace::target_dir().join("matrix");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tests = test_binaries()?;
    let mut rows = vec![host_row(&dir)?];
    let mut failure = None;
    for kernel in KERNELS {
        match guest_row(kernel, &dir, &tests) {
            Ok(row) => rows.push(row),
            Err(e) => {
                failure = Some(e.context(format!("the {} kernel", kernel.suite)));
                break;
            }
        }
    }
    let table = table(&rows);
    println!("\n{table}");
    let file = dir.join("kernels.md");
    std::fs::write(&file, &table).with_context(|| format!("writing {}", file.display()))?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The release test binaries of the guest tests, built if needed.
fn test_binaries() -> anyhow::Result<Vec<(String, String)>> {
    let mut cargo = workspace::cargo();
    cargo.args([
        "test",
        "--release",
        "--no-run",
        "--message-format=json",
        "-p",
        "lnat-tests",
    ]);
    for (target, _) in GUEST_TESTS {
        cargo.args(["--test", target]);
    }
    let json = output(&mut cargo)?;
    let mut found = Vec::new();
    for line in json.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && let (Some(name), Some(exe)) =
                (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.push((name.to_owned(), exe.to_owned()));
        }
    }
    GUEST_TESTS
        .iter()
        .map(|(target, args)| {
            let exe = found
                .iter()
                .find(|(n, _)| n == target)
                .map(|(_, e)| e.clone())
                .with_context(|| format!("cargo built no test binary for {target}"))?;
            Ok((exe, args.to_string()))
        })
        .collect()
}

/// The environment every script starts with: the host's tools and lnat's binaries.
fn prelude() -> String {
    format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         export LNAT_BIN='{}' LNET_PEER_BIN='{}'\n\
         echo \"LNAT-MATRIX release=$(uname -r)\"\n",
        workspace::release_bin("lnat").display(),
        workspace::release_bin("lnet-peer").display(),
    )
}

/// The host's own kernel: the namespace tests ran on it already; the probe adds its row.
fn host_row(dir: &Path) -> anyhow::Result<Row> {
    let script = dir.join("host-probe.sh");
    write(&script, &format!("{}{PROBE}", prelude()))?;
    let log = output(Command::new("sh").arg(&script))?;
    let fields = Fields::of(&log);
    let (mode, verified) = attached(&fields).context("probing the host's kernel")?;
    Ok(Row {
        release: fields.get("release").unwrap_or("?").to_owned(),
        runs_it: "this host",
        mode,
        verified,
        result: "pass (the whole suite)".to_owned(),
    })
}

/// Boots `kernel`, runs what it must pass or refuse, and checks the outcome.
fn guest_row(kernel: Kernel, dir: &Path, tests: &[(String, String)]) -> anyhow::Result<Row> {
    let unpacked = kernels::fetch(kernel.suite)?;
    let gdir = dir.join(&unpacked.release);
    std::fs::create_dir_all(&gdir).with_context(|| format!("creating {}", gdir.display()))?;
    let initrd = guest::initramfs(&unpacked, &gdir)?;
    let tests_dir = workspace::root().join("tests");
    let (body, limit) = match kernel.expect {
        Expect::Pass { .. } => {
            let mut body = format!("cd '{}' || exit 1\nrc=0\n", tests_dir.display());
            for (exe, args) in tests {
                body += &format!(
                    "echo \"LNAT-MATRIX running={exe} {args}\"\n'{exe}' --test-threads=2 {args} || rc=1\n"
                );
            }
            body += PROBE;
            body += "exit $rc\n";
            (body, PASS_LIMIT)
        }
        Expect::Refused { .. } => (PROBE.to_owned(), REFUSE_LIMIT),
    };
    let script = gdir.join("guest.sh");
    write(&script, &format!("{}{body}", prelude()))?;
    let log_file = gdir.join("console.log");
    eprintln!(
        "xtask: booting {} ({}) under qemu; console in {}",
        unpacked.release,
        kernel.suite,
        log_file.display()
    );
    let run = guest::boot(&unpacked, &initrd, &script, &log_file, limit)?;
    let fields = Fields::of(&run.log);
    let release = fields.get("release").unwrap_or("?").to_owned();
    if release != unpacked.release {
        bail!(
            "the guest did not run its script on {} (console ends:\n{})",
            unpacked.release,
            guest::tail(&run.log, 60)
        );
    }
    let row = |mode, verified, result| Row {
        release: release.clone(),
        runs_it: kernel.runs_it,
        mode,
        verified,
        result,
    };
    match kernel.expect {
        Expect::Pass { mode: want } => {
            if run.status != Some(0) {
                bail!(
                    "guest tests failed on {release} (exit {:?}); console ends:\n{}",
                    run.status,
                    guest::tail(&run.log, 120)
                );
            }
            let (mode, verified) = attached(&fields)?;
            if mode != want {
                bail!("lnat chose {mode} on {release}, where it must choose {want}");
            }
            Ok(row(
                mode,
                verified,
                "pass (golden, core, lifecycle, talk_back)".to_owned(),
            ))
        }
        Expect::Refused { lacks } => {
            let line = fields.get("stderr").unwrap_or_default().to_owned();
            let lines = fields.get("stderr-lines").unwrap_or("?");
            if fields.get("attach-exit") == Some("0")
                || lines != "1"
                || !line.contains(&release)
                || !line.contains(lacks)
            {
                bail!(
                    "lnat attach on {release} must fail with one line naming {release} and \
                     {lacks}; it printed {lines} lines, the first: {line:?}"
                );
            }
            Ok(row(
                "-".to_owned(),
                "-".to_owned(),
                format!("refused: `{line}`"),
            ))
        }
    }
}

/// The mode and the verified instruction counts (ingress / egress) of the probe's
/// `lnat status --json`.
fn attached(fields: &Fields) -> anyhow::Result<(String, String)> {
    let raw = fields.get("status").unwrap_or_default();
    let status: serde_json::Value = serde_json::from_str(raw).with_context(|| {
        format!(
            "lnat status gave no JSON ({raw:?}); lnat attach said: {:?}",
            fields.all("stderr")
        )
    })?;
    let (Some(mode), Some(ingress), Some(egress)) = (
        status["mode"].as_str(),
        status["verified_insns"].as_u64(),
        status["egress"]["verified_insns"].as_u64(),
    ) else {
        bail!("lnat status names no mode and verified instructions of both programs: {raw}");
    };
    Ok((mode.to_owned(), format!("{ingress} / {egress}")))
}

/// The `LNAT-MATRIX key=value` lines a script printed.
struct Fields(Vec<(String, String)>);

impl Fields {
    fn of(log: &str) -> Fields {
        Fields(
            log.lines()
                .filter_map(|l| l.trim_end_matches('\r').split_once("LNAT-MATRIX "))
                .filter_map(|(_, kv)| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The README's Kernels table.
fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| kernel | who runs it | attach mode | verified instructions (ingress / egress) | result |\n\
         |---|---|---|---|---|\n",
    );
    for r in rows {
        t += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r.release, r.runs_it, r.mode, r.verified, r.result
        );
    }
    t
}
