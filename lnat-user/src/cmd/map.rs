//! `lnat map add|del`: static mappings on a running attachment.

use anyhow::bail;
use lnat::{datapath::Maps, privileges};

use crate::cli::MapCommand;

/// Adds or removes a mapping.
pub fn run(cmd: MapCommand) -> anyhow::Result<()> {
    privileges::require()?;
    match cmd {
        MapCommand::Add {
            external,
            local,
            iface,
        } => {
            if let Some(l) = local
                && l.net() != external.net()
            {
                bail!("LOCAL_NID {l} is not on the same LNet net as EXTERNAL_NID {external}");
            }
            Maps::pinned(&iface)?.add_static(external, local)?;
            let to = local.map_or_else(
                || "each connection's own address".to_owned(),
                |l| l.to_string(),
            );
            println!("lnat: {external} -> {to} on {iface} (static)");
        }
        MapCommand::Del { external, iface } => {
            if !Maps::pinned(&iface)?.remove(external)? {
                bail!("no mapping for {external} on {iface}");
            }
            println!("lnat: removed the mapping for {external} on {iface}");
        }
    }
    Ok(())
}
