//! lnat's test world: network namespaces with a NAT between an LNet client and server, an LNet
//! peer emulator that follows the kernel's rules (docs/protocol.md), and helpers to run `lnat` in it.
//! The namespace tests in `tests/`, the bench and the demo (`lnat-demo`) are built on it.

pub mod bench;
pub mod blob;
pub mod client;
pub mod discovery;
pub mod harness;
pub mod impair;
pub mod link;
pub mod lnet;
pub mod ns;
pub mod ping;
pub mod relay;
pub mod report;
pub mod rpc;
pub mod rpc_client;
pub mod rpc_server;
pub mod server;
pub mod topology;
pub mod workload;
