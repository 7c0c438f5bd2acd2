//! `approx simulate`: one layer on one hardware model.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use approx_hw::{forward, Conv2dParams, HwSpec, Layer};

use crate::io::{write_safetensors, TensorFile};

/// The layer type to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// 2-D convolution: input NCHW, weight OIHW.
    Conv2d,
    /// Fully connected: input [N, K], weight [O, K].
    Linear,
}

/// Arguments of `approx simulate`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  approx simulate --hw sc:len=64,acc=or2 --op conv2d --padding 2 \\\n      --input examples/conv2.safetensors --output out.safetensors"
)]
pub struct Args {
    /// Hardware spec, e.g. `sc:len=64,acc=or2`, `mult:design=drum4`, `analog`, `fxp`
    /// (see `approx hw list`).
    #[arg(long)]
    hw: String,
    /// Layer type.
    #[arg(long, value_enum)]
    op: Op,
    /// Convolution stride in pixels.
    #[arg(long, default_value_t = 1)]
    stride: usize,
    /// Zero padding on each side, in pixels.
    #[arg(long, default_value_t = 0)]
    padding: usize,
    /// Safetensors file with f32 tensors `input` and `weight`.
    #[arg(long)]
    input: PathBuf,
    /// Safetensors file to write with the f32 tensor `output` (in value units,
    /// comparable with the exact layer; for SC `(P − N) / len`).
    #[arg(long)]
    output: PathBuf,
}

/// Runs `approx simulate`.
pub fn run(args: Args) -> Result<()> {
    let spec: HwSpec = args
        .hw
        .parse()
        .with_context(|| format!("bad --hw `{}`", args.hw))?;
    let file = TensorFile::read(&args.input)?;
    let input = file.f32_tensor("input")?;
    let weight = file.f32_tensor("weight")?;
    let params = Conv2dParams::new(args.stride, args.padding);
    let op_name = format!("{:?}", args.op).to_lowercase();
    let what = || format!("--op {op_name} on `{}`", args.input.display());
    let layer = match args.op {
        Op::Conv2d => Layer::Conv2d(params),
        Op::Linear => Layer::Linear,
    };
    let output = forward(&spec, layer, &input, &weight).with_context(what)?;
    let metadata = HashMap::from([
        ("approx.hw".to_string(), spec.to_string()),
        ("approx.op".to_string(), op_name.clone()),
        (
            "approx.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    write_safetensors(&args.output, &[("output", &output)], metadata)?;
    tracing::info!(
        "wrote `{}` with output {:?}",
        args.output.display(),
        output.dims()
    );
    Ok(())
}
