//! `approx hw list`: the hardware kinds, their keys and defaults.

use anyhow::Result;
use approx_hw::spec::KINDS;

/// Arguments of `approx hw`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: HwCommand,
}

#[derive(Debug, clap::Subcommand)]
enum HwCommand {
    /// List hardware kinds with their keys, defaults and allowed values.
    ///
    /// A hardware spec is `KIND[:key=value,...]`, for example `sc:len=32,acc=or2`.
    List,
}

/// Runs `approx hw`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        HwCommand::List => {
            for kind in KINDS {
                println!("{:<8} {}", kind.kind, kind.summary);
                for key in kind.keys {
                    println!(
                        "  {:<6} default {:<10} {}; {}",
                        key.key, key.default, key.summary, key.allowed
                    );
                }
            }
            Ok(())
        }
    }
}
