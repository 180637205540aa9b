//! What the emulated server sends: message sizes and payloads from a seed and an index, so the
//! client and the tests can check every byte by digest.

use std::str::FromStr;

use lnat_common::{nid::Nid, wire::LNET_MTU};
use lnat_testkit::Rng;
use sha2::{Digest as _, Sha256};

use crate::report::Put;

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

/// The seed of what the server sends `peer` (the NID its HELLO claims): peers get different
/// payloads, and a test can recompute any peer's.
pub fn peer_seed(seed: u64, peer: Nid) -> u64 {
    seed ^ peer.0.rotate_left(17)
}

/// The first `n` PUTs a server seeded `seed` sends `peer`, as the client reports them: what a
/// test compares a client's report with when the server's own report is not at hand.
pub fn expected(sizes: &Sizes, seed: u64, peer: Nid, n: u64) -> Vec<Put> {
    let seed = peer_seed(seed, peer);
    (0..n)
        .map(|index| {
            let size = size(sizes, seed, index);
            Put {
                index,
                size,
                digest: digest(&payload(seed, index, size)),
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_payloads_depend_only_on_seed_and_index() {
        for sizes in [Sizes::Mixed, Sizes::Small, Sizes::Zero] {
            for index in 0..100 {
                let n = size(&sizes, 7, index);
                assert_eq!(n, size(&sizes, 7, index));
                let p = payload(7, index, n);
                assert_eq!(p.len(), n as usize);
                assert_eq!(p, payload(7, index, n));
            }
        }
        assert_ne!(payload(7, 3, 64), payload(8, 3, 64));
        assert_ne!(payload(7, 3, 64), payload(7, 4, 64));
        // A shorter payload is a prefix of a longer one: only its size differs.
        assert_eq!(payload(7, 3, 5), payload(7, 3, 64)[..5]);
    }

    #[test]
    fn mixed_sizes_cover_the_edges() {
        let sizes: Vec<u32> = (0..50).map(|i| size(&Sizes::Mixed, 1, i)).collect();
        assert!(sizes.contains(&0));
        assert!(sizes.contains(&4096));
        assert!(sizes.contains(&LNET_MTU));
        assert!(sizes.iter().any(|n| n % 2 == 1 && *n < 1000));
        assert!(sizes.iter().any(|n| *n > 65536 && *n < LNET_MTU));
        assert!(sizes.iter().all(|n| *n <= LNET_MTU));
    }

    #[test]
    fn small_zero_and_listed_sizes() {
        assert!((0..200).all(|i| size(&Sizes::Small, 3, i) <= 300));
        assert!((0..200).all(|i| size(&Sizes::Zero, 3, i) == 0));
        let list = Sizes::List(vec![5, 0, 4096]);
        let got: Vec<u32> = (0..6).map(|i| size(&list, 3, i)).collect();
        assert_eq!(got, [5, 0, 4096, 5, 0, 4096]);
    }

    #[test]
    fn sizes_parse_from_the_command_line() {
        assert_eq!("mixed".parse(), Ok(Sizes::Mixed));
        assert_eq!("zero".parse(), Ok(Sizes::Zero));
        assert_eq!("small".parse(), Ok(Sizes::Small));
        assert_eq!(
            "0, 17,1048576".parse(),
            Ok(Sizes::List(vec![0, 17, LNET_MTU]))
        );
        for bad in ["", "big", "1,,2", "-1", "1048577"] {
            assert!(bad.parse::<Sizes>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            digest(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
