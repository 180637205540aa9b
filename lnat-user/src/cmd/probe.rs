//! `lnat probe`: whether this host needs lnat, asked of the server before anything is installed.

use anyhow::Context as _;
use lnat::probe;

use crate::cli::ProbeArgs;

/// Probes the server and prints what it calls this host and what to do.
pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let report = probe::probe(args.server, args.port)?;
    if args.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the probe as JSON")?;
        println!("{json}");
    } else {
        print!("{report}");
    }
    Ok(())
}
