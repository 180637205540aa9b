//! `lnat-bench`: what lnat costs a Lustre client, measured in the namespaces of
//! [`crate::topology`] against no program, an empty program and a userspace relay.

pub mod chart;
pub mod config;
pub mod headers;
pub mod hook;
pub mod kernel;
pub mod packets;
pub mod report;
pub mod run;
pub mod stats;
pub mod test_run;
pub mod workload;
