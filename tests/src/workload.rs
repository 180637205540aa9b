//! What the emulated server sends: message sizes and payloads from a seed and an index, so the
//! client and the tests can check every byte by digest.

use std::str::FromStr;

use lnat_common::{testkit::Rng, wire::LNET_MTU};
use sha2::{Digest as _, Sha256};

/// How PUT payload sizes are chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sizes {
    /// 0 B to 1 MiB: zeros, odd sizes, page sizes, random sizes, and LNET_MTU itself.
    Mixed,
    /// All empty.
    Zero,
    /// 0 to 300 bytes.
    Small,
    /// The given sizes, in turn.
    List(Vec<u32>),
}

impl FromStr for Sizes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mixed" => Ok(Sizes::Mixed),
            "zero" => Ok(Sizes::Zero),
            "small" => Ok(Sizes::Small),
            list => list
                .split(',')
                .map(|v| v.trim().parse::<u32>().ok().filter(|&n| n <= LNET_MTU))
                .collect::<Option<Vec<_>>>()
                .filter(|l| !l.is_empty())
                .map(Sizes::List)
                .ok_or_else(|| {
                    format!(
                        "sizes must be mixed, zero, small or a list of numbers up to {LNET_MTU}"
                    )
                }),
        }
    }
}

/// The payload size of message `index`.
pub fn size(sizes: &Sizes, seed: u64, index: u64) -> u32 {
    let mut rng = Rng::new(seed ^ index.wrapping_mul(0x9E37_79B9));
    match sizes {
        Sizes::Zero => 0,
        Sizes::Small => rng.below(301) as u32,
        Sizes::List(l) => l[(index % l.len() as u64) as usize],
        Sizes::Mixed => match index % 10 {
            0 => 0,
            1 => 1 + 2 * rng.below(500) as u32,
            2 => 4096,
            3 => 4095 + 2 * rng.below(2) as u32,
            4 if index % 50 == 4 => LNET_MTU,
            4 | 5 => rng.below(LNET_MTU as u64 + 1) as u32,
            6 => rng.below(65536) as u32,
            _ => rng.below(3000) as u32,
        },
    }
}

/// The payload of message `index`.
pub fn payload(seed: u64, index: u64, size: u32) -> Vec<u8> {
    let mut rng = Rng::new(seed.rotate_left(17) ^ index);
    let mut out = Vec::with_capacity(size as usize);
    while out.len() < size as usize {
        out.extend_from_slice(&rng.bits().to_le_bytes());
    }
    out.truncate(size as usize);
    out
}

/// SHA-256 of `bytes`, in hex.
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
