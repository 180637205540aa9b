//! `lnat status`: what an attachment is doing, from its pinned maps.

use anyhow::Context as _;
use lnat::{pins, privileges, report::Status};

use crate::cli::StatusArgs;

/// Prints the status of one attachment or of all.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    privileges::require()?;
    let ifaces = match &args.iface {
        Some(name) => {
            if name.contains('/') || name.is_empty() {
                anyhow::bail!("invalid interface name '{name}'");
            }
            vec![name.clone()]
        }
        None => pins::attached()?,
    };
    let statuses = ifaces
        .iter()
        .map(|i| Status::read(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.json {
        let json = match (&args.iface, statuses.as_slice()) {
            (Some(_), [one]) => serde_json::to_string_pretty(one),
            _ => serde_json::to_string_pretty(&statuses),
        };
        println!("{}", json.context("encoding the status as JSON")?);
    } else if statuses.is_empty() {
        println!(
            "lnat is not attached to any interface (nothing under {})",
            pins::ROOT
        );
    } else {
        for s in &statuses {
            print!("{s}");
        }
    }
    Ok(())
}
