//! One module per subcommand.

pub mod attach;
pub mod docs;
pub mod map;
pub mod probe;
pub mod status;
