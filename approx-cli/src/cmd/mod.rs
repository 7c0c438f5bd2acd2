//! One module per `approx` subcommand, plus the options they share.

pub mod bench;
pub mod bench_train;
pub mod data;
pub mod eval;
pub mod finetune;
pub mod finetune_args;
pub mod hw;
pub mod model_args;
pub mod pretrain;
pub mod simulate;
