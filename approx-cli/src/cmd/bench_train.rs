//! `approx bench train`: the same fine-tune three ways from the same float weights —
//! the baseline (bit-accurate every step, no checkpointing), the accelerated schedule
//! (error injection with periodic calibration, then bit-accurate epochs, with
//! checkpointing) and plain float training — with wall time, peak memory and final
//! bit-accurate accuracy of each.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use approx_hw::HwSpec;
use approx_models::{save, HwMap, Sequential};
use approx_train::data::Dataset;
use approx_train::io::{peak_rss_bytes, write_atomic};
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::schedule::Phases;
use approx_train::trainer::{evaluate, on_large_stack, train, EpochRecord};
use serde::{Deserialize, Serialize};

use super::data::DataArgs;
use super::finetune::{train_config, STOP};
use super::finetune_args::FinetuneArgs;
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
    #[command(flatten)]
    train: FinetuneArgs,
    /// Checkpointed segments of the accelerated run (the baseline runs without);
    /// default: one per hardware layer, whose recomputation then never runs a
    /// bit-accurate kernel.
    #[arg(long)]
    segments: Option<usize>,
    /// Folder for the pretrained weights and the runs' checkpoints.
    #[arg(long, default_value = "approx-bench")]
    out: PathBuf,
    /// Also write the record as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: run only this one of `baseline`, `accelerated`, `float` from --weights
    /// and write its record to --json (each run is measured in a fresh process, so
    /// that its peak memory is its own).
    #[arg(long, hide = true)]
    only: Option<String>,
}

/// One measured run.
#[derive(Debug, Serialize, Deserialize)]
struct RunRecord {
    schedule: String,
    checkpoint_segments: usize,
    /// Training steps between calibrations in `inject` epochs (each also calibrates
    /// at its first step).
    calibrate_every: u64,
    /// What the calibrations fit (`fixed-pattern`, `polynomials` or `rex-sc`).
    calibration: String,
    /// The learning rate each phase after the first restarts Adam at, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    tune_lr: Option<f64>,
    wall_seconds: f64,
    /// Peak resident memory of the process that ran it (data, model, training and the
    /// final evaluation), bytes.
    peak_rss_bytes: Option<u64>,
    /// Final bit-accurate test accuracy (fraction); absent for the float run.
    #[serde(skip_serializing_if = "Option::is_none")]
    hw_accuracy: Option<f64>,
    /// Final float test accuracy (fraction).
    float_accuracy: f64,
    /// Every epoch's mode, time and metrics: which part of the schedule cost what.
    epochs: Vec<EpochRecord>,
}

/// The starting point every run fine-tunes from.
#[derive(Debug, Serialize)]
struct StartRecord {
    /// Float test accuracy of the starting weights (fraction).
    float_accuracy: f64,
    /// Bit-accurate test accuracy of the starting weights on the hardware (fraction):
    /// what deploying the float model unchanged would give.
    hw_accuracy: f64,
}

/// The whole comparison (`--json`).
#[derive(Debug, Serialize)]
struct Record {
    model: String,
    hw: String,
    data: String,
    /// Training and test images.
    train_images: usize,
    test_images: usize,
    epochs: usize,
    batch: usize,
    seed: u64,
    start: StartRecord,
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
    if args.train.batch == 0 || args.train.epochs == 0 {
        bail!("--batch and --epochs must be at least 1");
    }
    args.train
        .schedule
        .epochs(args.train.epochs)
        .map_err(anyhow::Error::msg)
        .context("bad --schedule")?;
    let hw = args.model.hw_map()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder `{}`", args.out.display()))?;
    let (train_set, test_set) = args.data.load()?;
    if let Some(label) = &args.only {
        let start = args
            .model
            .weights
            .as_deref()
            .context("--only needs --weights")?;
        let json = args.json.as_ref().context("--only needs --json")?;
        let run =
            on_large_stack(|| measure(&args, Path::new(start), label, &train_set, &test_set, &hw))?;
        write_atomic(json, serde_json::to_string_pretty(&run)?.as_bytes())?;
        return Ok(());
    }
    let record = on_large_stack(|| bench(&args, &hw, &train_set, &test_set))?;
    println!(
        "start: float {:.2} %, on the hardware {:.2} %",
        100.0 * record.start.float_accuracy,
        100.0 * record.start.hw_accuracy
    );
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
                (args.train.batch, args.train.seed, None),
                args.train.pretrain_epochs,
                Phases::single(ExecMode::Float),
                args.train.pretrain_lr,
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
    let model = build(args, Some(&start), train_set, hw, ExecMode::Float)?;
    let start_record = StartRecord {
        float_accuracy: evaluate(&model, test_set, ExecMode::Float, args.train.batch)?,
        hw_accuracy: evaluate(&model, test_set, ExecMode::Accurate, args.train.batch)?,
    };
    drop(model);
    let baseline = in_child(args, &start, "baseline")?;
    let accelerated = in_child(args, &start, "accelerated")?;
    let float = in_child(args, &start, "float")?;
    Ok(Record {
        model: args.model.model.to_string(),
        hw: hw.to_string(),
        data: args.data.data.to_string(),
        train_images: train_set.len(),
        test_images: test_set.len(),
        epochs: args.train.epochs,
        batch: args.train.batch,
        seed: args.train.seed,
        start: start_record,
        speedup: baseline.wall_seconds / accelerated.wall_seconds,
        overhead_vs_float: accelerated.wall_seconds / float.wall_seconds,
        baseline,
        accelerated,
        float,
    })
}

/// The schedule and checkpointed segments of run `label` on a model with
/// `hw_layers` hardware layers.
fn plan(args: &Args, label: &str, hw_layers: usize) -> Result<(Phases, usize)> {
    Ok(match label {
        "baseline" => (Phases::single(ExecMode::Accurate), 0),
        "accelerated" => (
            args.train.schedule.clone(),
            args.segments.unwrap_or(hw_layers),
        ),
        "float" => (Phases::single(ExecMode::Float), 0),
        other => bail!("unknown run `{other}`: expected baseline, accelerated or float"),
    })
}

/// Measures run `label` from the weights `start` in this process.
fn measure(
    args: &Args,
    start: &Path,
    label: &str,
    train_set: &Dataset,
    test_set: &Dataset,
    hw: &HwMap,
) -> Result<RunRecord> {
    let started = Instant::now();
    let mut model = build(args, Some(start), train_set, hw, ExecMode::Float)?;
    let (phases, segments) = plan(args, label, model.hw_layers().len())?;
    model.set_checkpoint_segments(segments);
    let mut cfg = train_config(
        (args.train.batch, args.train.seed, None),
        args.train.epochs,
        phases.clone(),
        args.train.lr,
        args.out.join(format!("{label}-checkpoint.safetensors")),
    );
    args.train.configure(&mut cfg, &model);
    let mut bars = TrainProgress::new("run");
    let outcome = train(&model, train_set, None, &cfg, false, &STOP, &mut |e| {
        bars.on_event(e)
    })?;
    let hw_accuracy = (label != "float")
        .then(|| evaluate(&model, test_set, ExecMode::Accurate, args.train.batch))
        .transpose()?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let float_accuracy = evaluate(&model, test_set, ExecMode::Float, args.train.batch)?;
    Ok(RunRecord {
        schedule: phases.to_string(),
        checkpoint_segments: segments,
        calibrate_every: cfg.calibration_period(train_set.len()),
        calibration: args.train.calibration.to_string(),
        tune_lr: cfg.tune_lr,
        wall_seconds,
        peak_rss_bytes: peak_rss_bytes(),
        hw_accuracy,
        float_accuracy,
        epochs: outcome.history,
    })
}

/// Runs `label` in a fresh `approx` process with this command's arguments and reads
/// its record.
fn in_child(args: &Args, start: &Path, label: &str) -> Result<RunRecord> {
    let record = args.out.join(format!("{label}.json"));
    // This command's own arguments, less those the child gets anew.
    let mut argv: Vec<String> = Vec::new();
    let mut skip = false;
    for a in std::env::args().skip(1) {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--weights" || a == "--json" {
            skip = true;
        } else if !a.starts_with("--weights=") && !a.starts_with("--json=") {
            argv.push(a);
        }
    }
    tracing::info!("{label} run");
    let status = Command::new(std::env::current_exe()?)
        .args(&argv)
        .arg("--weights")
        .arg(start)
        .arg("--json")
        .arg(&record)
        .args(["--only", label])
        .status()
        .context("cannot start a child `approx` process")?;
    if !status.success() {
        bail!("the {label} run failed ({status})");
    }
    let text = std::fs::read_to_string(&record)
        .with_context(|| format!("reading `{}`", record.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The model of `args`, fresh or with the weights at `weights`.
fn build(
    args: &Args,
    weights: Option<&Path>,
    data: &Dataset,
    hw: &HwMap,
    mode: ExecMode,
) -> Result<Sequential> {
    let mut model_args = args.model.clone();
    model_args.weights = weights.map(|p| p.to_string_lossy().into_owned());
    model_args.checkpoint_segments = 0;
    model_args.build(data.shape, data.classes, hw, mode, args.train.seed)
}
