//! `approx pretrain`: train a float model (the starting point of a fine-tune).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use approx_hw::HwSpec;
use approx_models::{save, HwMap};
use approx_train::mode::ExecMode;
use approx_train::schedule::Phases;
use approx_train::trainer::{on_large_stack, train};
use serde_json::json;

use super::data::DataArgs;
use super::finetune::{train_config, STOP};
use super::model_args::ModelArgs;
use crate::progress::{evaluate, TrainProgress};

/// Arguments of `approx pretrain`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  approx pretrain --out float.safetensors\n  approx pretrain --model lenet5 --data mnist:DIR --epochs 10 --out lenet5.safetensors\n  approx finetune --weights float.safetensors --hw sc:len=64,acc=or1"
)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Epochs.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Learning rate (Adam, cosine decay).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Seed of initialisation, data order and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many steps (checkpointing first).
    #[arg(long)]
    max_steps: Option<u64>,
    /// The model file to write (its checkpoint goes next to it).
    #[arg(long, default_value = "pretrained.safetensors")]
    out: PathBuf,
    /// Continue an interrupted run from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// Also write a JSON record (float accuracy, wall time) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs `approx pretrain`.
pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    if args.batch == 0 || args.epochs == 0 {
        bail!("--batch and --epochs must be at least 1");
    }
    let (train_set, test_set) = args.data.load()?;
    let exact = HwMap::All(HwSpec::Exact);
    let model = args.model.build(
        train_set.shape,
        train_set.classes,
        &exact,
        ExecMode::Float,
        args.seed,
    )?;
    let mut checkpoint = args.out.clone().into_os_string();
    checkpoint.push(".checkpoint");
    let cfg = train_config(
        (args.batch, args.seed, args.max_steps),
        args.epochs,
        Phases::single(ExecMode::Float),
        args.lr,
        checkpoint.into(),
    );
    let (outcome, accuracy) = on_large_stack(|| -> Result<_> {
        let mut bars = TrainProgress::new("pretrain");
        let outcome = train(
            &model,
            &train_set,
            None,
            &cfg,
            args.resume,
            &STOP,
            &mut |e| bars.on_event(e),
        )?;
        let accuracy = evaluate("float", &model, &test_set, ExecMode::Float, args.batch)?;
        Ok((outcome, accuracy))
    })?;
    if outcome.stopped {
        println!(
            "stopped after {} steps; continue with --resume",
            outcome.steps
        );
        return Ok(());
    }
    save(&model, &args.out, &exact).with_context(|| format!("writing `{}`", args.out.display()))?;
    let wall = started.elapsed().as_secs_f64();
    println!("{:<16} {:>9.2} %", "float accuracy", 100.0 * accuracy);
    println!("{:<16} {:>9.1} s", "wall time", wall);
    println!("wrote {}", args.out.display());
    if let Some(path) = &args.json {
        let record = json!({ "model": args.model.model.name(), "data": args.data.data.to_string(), "epochs": args.epochs, "seed": args.seed, "float_accuracy": accuracy, "wall_seconds": wall, "history": outcome.history });
        approx_train::io::write_atomic(path, serde_json::to_string_pretty(&record)?.as_bytes())?;
    }
    Ok(())
}
