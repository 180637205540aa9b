//! The protocol brain of lnat, shared by the eBPF datapath, the `lnat` command and the tests.
//!
//! Pure `no_std` logic: NIDs, the socklnd wire format, and the stream tracker that decides which
//! bytes of a Lustre connection's byte stream to rewrite. The datapath only moves bytes between
//! packets and this crate.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod ahead;
pub mod crc;
pub mod csum;
pub mod flow;
pub mod history;
pub mod maps;
pub mod nid;
pub mod ping;
pub mod quiet;
pub mod segment;
pub mod seq;
pub mod tracker;
pub mod wire;
