//! One module per `approx` subcommand.

pub mod bench;
pub mod hw;
pub mod simulate;
