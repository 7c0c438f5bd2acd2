//! `approx finetune`: the whole story in one command. Pretrain (or load) a float
//! model, measure its float and bit-accurate accuracy on the hardware, fine-tune with
//! the accelerated schedule (error injection, then bit-accurate epochs), measure again,
//! and write the model and a report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use approx_models::{save, HwMap, Sequential};
use approx_train::data::Dataset;
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::schedule::Phases;
use approx_train::trainer::{on_large_stack, train, EpochRecord, TrainConfig};
use serde::Serialize;

use super::data::DataArgs;
use super::finetune_args::FinetuneArgs;
use super::model_args::ModelArgs;
use crate::plot::{self, Curves, LayerProfile};
use crate::progress::{evaluate, TrainProgress};
use approx_train::io::write_atomic;

/// Set by Ctrl-C: the trainer finishes its step, checkpoints and stops.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Arguments of `approx finetune`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  approx finetune\n  approx finetune --hw sc:len=64,acc=or1 --epochs 6 --out runs/or1\n  approx finetune --weights float.safetensors --hw mult:design=drum4 --schedule inject:0.5,accurate:0.5\n\nExit status: 0 done, 1 error, 2 usage error, 130 interrupted (resume with --resume)."
)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    train: FinetuneArgs,
    /// Stop each training run after this many steps (for smoke tests).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Output folder.
    #[arg(long, default_value = "approx-out")]
    out: PathBuf,
    /// Continue an interrupted run from the checkpoints in --out.
    #[arg(long)]
    resume: bool,
    /// Also write the report to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The run's record (`report.json`).
#[derive(Debug, Serialize)]
struct Report {
    model: String,
    hw: String,
    data: String,
    schedule: String,
    /// What the calibrations of `inject` epochs fit.
    calibration: String,
    seed: u64,
    epochs: usize,
    pretrain_epochs: usize,
    float_accuracy: f64,
    hw_accuracy_before: f64,
    hw_accuracy_after: f64,
    wall_seconds: f64,
    pretrain: Vec<EpochRecord>,
    finetune: Vec<EpochRecord>,
}

/// Runs `approx finetune`.
pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let hw = args.model.hw_map()?;
    args.train
        .schedule
        .epochs(args.train.epochs)
        .map_err(anyhow::Error::msg)
        .context("bad --schedule")?;
    if args.train.batch == 0 {
        bail!("--batch must be at least 1");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder `{}`", args.out.display()))?;
    let probe = args.out.join(".approx-write-test");
    write_atomic(&probe, b"")
        .with_context(|| format!("output folder `{}` is not writable", args.out.display()))?;
    let _ = std::fs::remove_file(&probe);
    let (train_set, test_set) = args.data.load()?;
    on_large_stack(|| job(&args, &hw, &train_set, &test_set, started))
}

/// [`TrainConfig::recipe`] with the run's step limit and checkpoint file.
pub(crate) fn train_config(
    (batch, seed, max_steps): (usize, u64, Option<u64>),
    epochs: usize,
    phases: Phases,
    lr: f64,
    checkpoint: PathBuf,
) -> TrainConfig {
    TrainConfig {
        max_steps,
        checkpoint: Some(checkpoint),
        ..TrainConfig::recipe(batch, seed, epochs, phases, lr)
    }
}

fn job(
    args: &Args,
    hw: &HwMap,
    train_set: &Dataset,
    test_set: &Dataset,
    started: Instant,
) -> Result<()> {
    let model = args.model.build(
        train_set.shape,
        train_set.classes,
        hw,
        ExecMode::Float,
        args.train.seed,
    )?;
    let mut pretrain_history = Vec::new();
    let pretrained_path = args.out.join("pretrained.safetensors");
    if args.model.weights.is_none() {
        if args.resume && pretrained_path.is_file() {
            let loaded = approx_models::load(
                args.model.architecture(),
                &pretrained_path,
                train_set.shape,
                train_set.classes,
                hw,
                ExecMode::Float,
                false,
            )?;
            copy_weights(&loaded, &model)?;
            tracing::info!(
                "loaded the pretrained model from `{}`",
                pretrained_path.display()
            );
        } else {
            let cfg = train_config(
                (args.train.batch, args.train.seed, args.max_steps),
                args.train.pretrain_epochs,
                Phases::single(ExecMode::Float),
                args.train.pretrain_lr,
                args.out.join("pretrain-checkpoint.safetensors"),
            );
            let mut pretrain_bars = TrainProgress::new("pretrain");
            let out = train(
                &model,
                train_set,
                None,
                &cfg,
                args.resume,
                &STOP,
                &mut |e| pretrain_bars.on_event(e),
            )?;
            pretrain_history = out.history;
            if out.stopped {
                return stopped(args, out.steps);
            }
            save(
                &model,
                &pretrained_path,
                &HwMap::All(approx_hw::HwSpec::Exact),
            )?;
        }
    }
    let float_accuracy = evaluate("float", &model, test_set, ExecMode::Float, args.train.batch)?;
    let hw_accuracy_before = evaluate(
        "hardware before",
        &model,
        test_set,
        ExecMode::Accurate,
        args.train.batch,
    )?;
    tracing::info!(
        "float accuracy {:.2} %, on {hw}: {:.2} %",
        100.0 * float_accuracy,
        100.0 * hw_accuracy_before
    );
    let mut cfg = train_config(
        (args.train.batch, args.train.seed, args.max_steps),
        args.train.epochs,
        args.train.schedule.clone(),
        args.train.lr,
        args.out.join("finetune-checkpoint.safetensors"),
    );
    cfg.eval_mode = Some(ExecMode::Accurate);
    args.train.configure(&mut cfg, &model);
    let mut finetune_bars = TrainProgress::new("fine-tune");
    let out = train(
        &model,
        train_set,
        Some(test_set),
        &cfg,
        args.resume,
        &STOP,
        &mut |e| finetune_bars.on_event(e),
    )?;
    if out.stopped {
        return stopped(args, out.steps);
    }
    let hw_accuracy_after = evaluate(
        "hardware after",
        &model,
        test_set,
        ExecMode::Accurate,
        args.train.batch,
    )?;
    let model_path = args.out.join("model.safetensors");
    save(&model, &model_path, hw)?;
    let report = Report {
        model: args.model.model.to_string(),
        hw: hw.to_string(),
        data: args.data.data.to_string(),
        schedule: args.train.schedule.to_string(),
        calibration: args.train.calibration.to_string(),
        seed: args.train.seed,
        epochs: args.train.epochs,
        pretrain_epochs: if args.model.weights.is_none() {
            args.train.pretrain_epochs
        } else {
            0
        },
        float_accuracy,
        hw_accuracy_before,
        hw_accuracy_after,
        wall_seconds: started.elapsed().as_secs_f64(),
        pretrain: pretrain_history,
        finetune: out.history,
    };
    write_outputs(args, &report)?;
    let curves = args.out.join("learning-curves.png");
    plot::learning_curves(
        &curves,
        &Curves {
            pretrain: &report.pretrain,
            finetune: &report.finetune,
            float_accuracy,
            hw_accuracy_before,
        },
    )?;
    let profile = args.out.join("error-profile.png");
    let layers = model
        .hw_layers()
        .iter()
        .map(|l| {
            let rms = l
                .fixed_pattern()
                .map(|p| p.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>())
                .transpose()?;
            Ok(LayerProfile {
                name: l.name().to_string(),
                hw: l.hw().clone(),
                calibration: l.calibration(),
                fixed_pattern_rms: rms.map(f64::from),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    plot::error_profile(&profile, &layers)?;
    println!("{:<28} {:>10}", "model", report.model);
    println!("{:<28} {:>10}", "hardware", report.hw);
    println!("{:<28} {:>9.2} %", "float accuracy", 100.0 * float_accuracy);
    println!(
        "{:<28} {:>9.2} %",
        "hardware accuracy before",
        100.0 * hw_accuracy_before
    );
    println!(
        "{:<28} {:>9.2} %",
        "hardware accuracy after",
        100.0 * hw_accuracy_after
    );
    println!("{:<28} {:>9.1} s", "wall time", report.wall_seconds);
    println!(
        "wrote model.safetensors, report.json, metrics.csv, learning-curves.png and error-profile.png in `{}`",
        args.out.display()
    );
    Ok(())
}

fn stopped(args: &Args, steps: u64) -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        eprintln!(
            "interrupted after {steps} steps; checkpoint written to `{}`: continue with --resume",
            args.out.display()
        );
        std::process::exit(130);
    }
    println!(
        "stopped after --max-steps {steps}; checkpoints are in `{}` (continue with --resume)",
        args.out.display()
    );
    Ok(())
}

/// Copies every tensor of `from` into the same-named tensor of `to`.
fn copy_weights(from: &Sequential, to: &Sequential) -> Result<()> {
    let src: BTreeMap<String, candle_core::Var> = from.named_vars().into_iter().collect();
    for (name, var) in to.named_vars() {
        let t = src
            .get(&name)
            .with_context(|| format!("pretrained model lacks `{name}`"))?;
        var.set(t.as_tensor())?;
    }
    Ok(())
}

fn write_outputs(args: &Args, report: &Report) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    write_atomic(&args.out.join("report.json"), json.as_bytes())?;
    if let Some(path) = &args.json {
        write_atomic(path, json.as_bytes())?;
    }
    let mut csv = String::from(
        "phase,epoch,mode,loss,train_accuracy,eval_accuracy,samples_per_second,seconds\n",
    );
    for (phase, records) in [
        ("pretrain", &report.pretrain),
        ("finetune", &report.finetune),
    ] {
        for r in records.iter() {
            csv.push_str(&format!(
                "{phase},{},{},{:.6},{:.6},{},{:.1},{:.3}\n",
                r.epoch + 1,
                r.mode,
                r.loss,
                r.train_accuracy,
                r.eval_accuracy.map_or(String::new(), |a| format!("{a:.6}")),
                r.samples_per_second,
                r.seconds
            ));
        }
    }
    write_atomic(&args.out.join("metrics.csv"), csv.as_bytes())?;
    Ok(())
}
