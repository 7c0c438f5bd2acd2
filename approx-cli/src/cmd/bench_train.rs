//! `approx bench train`: the same fine-tune three ways from the same float weights —
//! the baseline (bit-accurate every step, no checkpointing), the accelerated schedule
//! (error injection with periodic calibration, then bit-accurate epochs, with
//! checkpointing) and plain float training — with wall time, peak memory and final
//! bit-accurate accuracy of each.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use approx_hw::HwSpec;
use approx_models::{save, HwMap, Sequential};
use approx_train::data::Dataset;
use approx_train::io::{peak_rss_bytes, reset_peak_rss, write_atomic};
use approx_train::mode::ExecMode;
use approx_train::schedule::Phases;
use approx_train::trainer::{evaluate, on_large_stack, train};
use serde::Serialize;

use super::data::DataArgs;
use super::finetune::{train_config, STOP};
use super::model_args::ModelArgs;
use crate::progress::TrainProgress;

/// Arguments of `approx bench train`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  approx bench train --json bench-train.json\n  approx bench train --weights float.safetensors --hw mult:design=drum4 --epochs 5 --schedule inject:0.8,accurate:0.2"
)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Fine-tuning epochs of each run.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Float pretraining epochs when no --weights are given (not timed).
    #[arg(long, default_value_t = 4)]
    pretrain_epochs: usize,
    /// The accelerated schedule (the baseline is `accurate:1`, the float run `float:1`).
    #[arg(long, default_value = "inject:2,accurate:1")]
    schedule: Phases,
    /// Checkpointed segments of the accelerated run (the baseline runs without).
    #[arg(long, default_value_t = 2)]
    segments: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Learning rate of fine-tuning.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed of every run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for the pretrained weights and the runs' checkpoints.
    #[arg(long, default_value = "approx-bench")]
    out: PathBuf,
    /// Also write the record as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One measured run.
#[derive(Debug, Serialize)]
struct RunRecord {
    schedule: String,
    checkpoint_segments: usize,
    wall_seconds: f64,
    /// Peak resident memory during the run (training and the final evaluation), bytes.
    peak_rss_bytes: Option<u64>,
    /// Final bit-accurate test accuracy (fraction); absent for the float run.
    #[serde(skip_serializing_if = "Option::is_none")]
    hw_accuracy: Option<f64>,
    /// Final float test accuracy (fraction).
    float_accuracy: f64,
}

/// The whole comparison (`--json`).
#[derive(Debug, Serialize)]
struct Record {
    model: String,
    hw: String,
    data: String,
    epochs: usize,
    batch: usize,
    seed: u64,
    baseline: RunRecord,
    accelerated: RunRecord,
    float: RunRecord,
    /// Baseline wall time over accelerated wall time.
    speedup: f64,
    /// Accelerated wall time over float wall time.
    overhead_vs_float: f64,
}

/// Runs `approx bench train`.
pub fn run(args: Args) -> Result<()> {
    if args.batch == 0 || args.epochs == 0 {
        bail!("--batch and --epochs must be at least 1");
    }
    args.schedule
        .epochs(args.epochs)
        .map_err(anyhow::Error::msg)
        .context("bad --schedule")?;
    let hw = args.model.hw_map()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder `{}`", args.out.display()))?;
    let (train_set, test_set) = args.data.load()?;
    let record = on_large_stack(|| bench(&args, &hw, &train_set, &test_set))?;
    println!(
        "{:<12} {:>10} {:>12} {:>14} {:>12}",
        "run", "wall s", "peak MiB", "hw accuracy", "float acc."
    );
    for (name, r) in [
        ("baseline", &record.baseline),
        ("accelerated", &record.accelerated),
        ("float", &record.float),
    ] {
        println!(
            "{name:<12} {:>10.1} {:>12} {:>14} {:>11.2} %",
            r.wall_seconds,
            r.peak_rss_bytes.map_or("-".into(), |b| format!(
                "{:.0}",
                b as f64 / (1 << 20) as f64
            )),
            r.hw_accuracy
                .map_or("-".into(), |a| format!("{:.2} %", 100.0 * a)),
            100.0 * r.float_accuracy
        );
    }
    println!(
        "speed-up of the accelerated schedule over the baseline: {:.2}x; its cost over float training: {:.2}x",
        record.speedup, record.overhead_vs_float
    );
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&record)?.as_bytes())?;
    }
    Ok(())
}

fn bench(args: &Args, hw: &HwMap, train_set: &Dataset, test_set: &Dataset) -> Result<Record> {
    let start = match &args.model.weights {
        Some(w) => approx_models::hub::resolve(w).with_context(|| format!("--weights `{w}`"))?,
        None => {
            let path = args.out.join("pretrained.safetensors");
            let model = build(args, None, train_set, hw, ExecMode::Float)?;
            let cfg = train_config(
                (args.batch, args.seed, None),
                args.pretrain_epochs,
                Phases::single(ExecMode::Float),
                3e-3,
                args.out.join("pretrain-checkpoint.safetensors"),
            );
            let mut bars = TrainProgress::new("pretrain");
            train(&model, train_set, None, &cfg, false, &STOP, &mut |e| {
                bars.on_event(e)
            })?;
            save(&model, &path, &HwMap::All(HwSpec::Exact))?;
            path
        }
    };
    let measure = |label: &'static str, phases: Phases, segments: usize| -> Result<RunRecord> {
        let mut model = build(args, Some(&start), train_set, hw, ExecMode::Float)?;
        model.set_checkpoint_segments(segments);
        let cfg = train_config(
            (args.batch, args.seed, None),
            args.epochs,
            phases.clone(),
            args.lr,
            args.out.join(format!("{label}-checkpoint.safetensors")),
        );
        let measured_memory = reset_peak_rss();
        let started = Instant::now();
        let mut bars = TrainProgress::new(label);
        train(&model, train_set, None, &cfg, false, &STOP, &mut |e| {
            bars.on_event(e)
        })?;
        let hw_accuracy = (label != "float")
            .then(|| evaluate(&model, test_set, ExecMode::Accurate, args.batch))
            .transpose()?;
        let wall_seconds = started.elapsed().as_secs_f64();
        let float_accuracy = evaluate(&model, test_set, ExecMode::Float, args.batch)?;
        Ok(RunRecord {
            schedule: phases.to_string(),
            checkpoint_segments: segments,
            wall_seconds,
            peak_rss_bytes: if measured_memory {
                peak_rss_bytes()
            } else {
                None
            },
            hw_accuracy,
            float_accuracy,
        })
    };
    let baseline = measure("baseline", Phases::single(ExecMode::Accurate), 0)?;
    let accelerated = measure("accelerated", args.schedule.clone(), args.segments)?;
    let float = measure("float", Phases::single(ExecMode::Float), 0)?;
    Ok(Record {
        model: args.model.model.to_string(),
        hw: hw.to_string(),
        data: args.data.data.to_string(),
        epochs: args.epochs,
        batch: args.batch,
        seed: args.seed,
        speedup: baseline.wall_seconds / accelerated.wall_seconds,
        overhead_vs_float: accelerated.wall_seconds / float.wall_seconds,
        baseline,
        accelerated,
        float,
    })
}

/// The model of `args`, fresh or with the weights at `weights`.
fn build(
    args: &Args,
    weights: Option<&PathBuf>,
    data: &Dataset,
    hw: &HwMap,
    mode: ExecMode,
) -> Result<Sequential> {
    let mut model_args = args.model.clone();
    model_args.weights = weights.map(|p| p.to_string_lossy().into_owned());
    model_args.checkpoint_segments = 0;
    model_args.build(data.shape, data.classes, hw, mode, args.seed)
}
