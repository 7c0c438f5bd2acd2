//! `approx eval`: accuracy of a model on one or more hardware specs, bit-accurate by
//! default.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use approx_hw::HwSpec;
use approx_models::{load, Architecture};
use approx_train::mode::ExecMode;
use approx_train::trainer::on_large_stack;

use crate::progress::evaluate;
use serde_json::json;

use super::data::DataArgs;

/// Arguments of `approx eval`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  approx eval --weights approx-out/model.safetensors\n  approx eval --weights approx-out/pretrained.safetensors --hw exact --hw sc:len=32,acc=or2 --hw sc:len=64,acc=or1 --json sweep.json"
)]
pub struct Args {
    /// Model: a built-in name (see `approx finetune --help`) or a TOML model file.
    #[arg(long, default_value = "tinyconv")]
    model: Architecture,
    /// REX-SC's quantized batch norm for every batch norm of the model.
    #[arg(long)]
    quantized_bn: bool,
    /// Safetensors weights to evaluate: a path, or `hf://ORG/NAME[@REV]/FILE` from the
    /// local Hugging Face cache.
    #[arg(long)]
    weights: String,
    /// Hardware to evaluate on (repeatable: a sweep printed as a table). Default: the
    /// `approx.hw` recorded in the weights file, else exact.
    #[arg(long = "hw")]
    hw: Vec<String>,
    /// Execution mode of the hardware layers.
    #[arg(long, default_value = "accurate")]
    mode: String,
    #[command(flatten)]
    data: DataArgs,
    /// Images per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs `approx eval`.
pub fn run(args: Args) -> Result<()> {
    let mode: ExecMode = args
        .mode
        .parse()
        .map_err(anyhow::Error::msg)
        .context("bad --mode")?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let weights = approx_models::hub::resolve(&args.weights)
        .with_context(|| format!("--weights `{}`", args.weights))?;
    let specs: Vec<String> = if args.hw.is_empty() {
        let meta = approx_models::store::read_metadata(&weights)?;
        vec![meta
            .get(approx_models::META_HW)
            .filter(|h| h.parse::<HwSpec>().is_ok())
            .cloned()
            .unwrap_or_else(|| "exact".into())]
    } else {
        args.hw.clone()
    };
    let specs: Vec<HwSpec> = specs
        .iter()
        .map(|s| {
            s.parse::<HwSpec>()
                .with_context(|| format!("bad --hw `{s}`"))
        })
        .collect::<Result<_>>()?;
    let (_, test) = args.data.load()?;
    let mut rows = Vec::new();
    for spec in specs {
        let model = load(
            args.model.clone().with_quantized_bn(args.quantized_bn),
            &weights,
            test.shape,
            test.classes,
            &args.model.paper_map(spec.clone()),
            mode,
            false,
        )
        .with_context(|| format!("loading --weights for model `{}`", args.model))?;
        let label = spec.to_string();
        let accuracy = on_large_stack(|| evaluate(&label, &model, &test, mode, args.batch))?;
        println!("{:<48} {:>8.2} %", spec.to_string(), 100.0 * accuracy);
        rows.push(json!({ "hw": spec.to_string(), "mode": mode.name(), "accuracy": accuracy }));
    }
    if let Some(path) = &args.json {
        let record = json!({ "model": args.model.name(), "weights": args.weights, "data": args.data.data.to_string(), "results": rows });
        approx_train::io::write_atomic(path, serde_json::to_string_pretty(&record)?.as_bytes())?;
    }
    Ok(())
}
