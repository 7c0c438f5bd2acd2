//! `approx`: run and fine-tune neural networks for approximate hardware.
//!
//! A thin binary over the library crates: argument parsing, logging, reports and
//! exit codes. Exit status: 0 on success, 1 on any error (the message says what and
//! where), 2 on a command-line usage error (from clap), 130 when a training run was
//! interrupted with Ctrl-C (it checkpointed; `--resume` continues it).

mod cmd;
mod io;
mod plot;
mod progress;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Bit-accurate simulation and training for approximate hardware.
#[derive(Debug, Parser)]
#[command(name = "approx", version, about, long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fine-tune a model for approximate hardware: pretrain (or load) a float model,
    /// measure it on the hardware, fine-tune with error injection then bit-accurate
    /// epochs, and report. With no arguments: TinyConv on embedded Fashion-MNIST, SC.
    Finetune(cmd::finetune::Args),
    /// Train a float model (the starting point of a fine-tune).
    Pretrain(cmd::pretrain::Args),
    /// Accuracy of a model on one or more hardware specs (bit-accurate by default).
    Eval(cmd::eval::Args),
    /// Run one layer on one hardware model, for cross-checking against other simulators.
    Simulate(cmd::simulate::Args),
    /// List hardware kinds and their keys.
    Hw(cmd::hw::Args),
    /// Time kernels against candle's f32 ops in the same run.
    Bench(cmd::bench::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    if cli.quiet {
        progress::hide();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    // Ctrl-C asks a running training to finish its step, checkpoint and stop.
    if let Err(e) =
        ctrlc::set_handler(|| cmd::finetune::STOP.store(true, std::sync::atomic::Ordering::SeqCst))
    {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    let result = match cli.command {
        Command::Finetune(args) => cmd::finetune::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Pretrain(args) => cmd::pretrain::run(args),
        Command::Simulate(args) => cmd::simulate::run(args),
        Command::Hw(args) => cmd::hw::run(args),
        Command::Bench(args) => cmd::bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
