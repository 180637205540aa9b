//! What sits on the client's receive path during a measurement.

use serde::Serialize;

use crate::{
    bench::hook::EmptyHook,
    harness::{Host, Lnat},
};

/// One configuration of the client.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Config {
    /// No TC program: the baseline.
    None,
    /// The empty TC program: the cost of the hook itself.
    Empty,
    /// lnat attached.
    Lnat,
    /// lnat attached with nothing to rewrite (`--no-learn`): it follows every connection and
    /// parses every header but never writes, which isolates the cost of following a stream.
    Following,
    /// No TC program; the client talks through the userspace relay, which rewrites NIDs.
    Relay,
}

impl Config {
    /// Every configuration, in the order a round starts from.
    pub const ALL: [Config; 5] = [
        Config::None,
        Config::Empty,
        Config::Lnat,
        Config::Following,
        Config::Relay,
    ];

    /// Its name in tables.
    pub const fn name(self) -> &'static str {
        match self {
            Config::None => "no program",
            Config::Empty => "empty program",
            Config::Lnat => "lnat",
            Config::Following => "lnat, no rewrite",
            Config::Relay => "userspace relay",
        }
    }
}

/// A configuration in place on the client's `eth0`, taken down on drop.
pub enum Active<'h> {
    /// Nothing attached.
    Bare,
    /// The empty program attached.
    Empty(EmptyHook),
    /// lnat attached.
    Lnat(Lnat<'h>),
}

impl<'h> Active<'h> {
    /// Puts `config` in place on `host`'s `eth0`.
    pub fn start(config: Config, host: &'h Host) -> anyhow::Result<Active<'h>> {
        Ok(match config {
            Config::None | Config::Relay => Active::Bare,
            Config::Empty => Active::Empty(EmptyHook::start(host, "eth0")?),
            Config::Lnat => Active::Lnat(Lnat::attach(host, "eth0", &[])?),
            Config::Following => Active::Lnat(Lnat::attach(host, "eth0", &["--no-learn"])?),
        })
    }

    /// The id of the program attached, if any.
    pub fn program_id(&self) -> Option<u32> {
        match self {
            Active::Bare => None,
            Active::Empty(h) => Some(h.program_id),
            Active::Lnat(l) => l.program_id(),
        }
    }

    /// lnat, when it is what is attached.
    pub fn lnat(&self) -> Option<&Lnat<'h>> {
        match self {
            Active::Lnat(l) => Some(l),
            _ => None,
        }
    }
}
