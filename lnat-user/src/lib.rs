//! The `lnat` command's library: the embedded datapath and how to load, attach, configure and
//! inspect it. The integration tests load the datapath through it too.

pub mod datapath;
pub mod iface;
pub mod kernel;
pub mod lock;
pub mod pins;
pub mod privileges;
pub mod probe;
pub mod report;
pub mod verifier;
