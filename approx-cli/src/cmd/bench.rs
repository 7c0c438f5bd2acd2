//! `approx bench kernels`: hardware kernels against candle's f32 conv2d, same shapes,
//! same run, alternating, so that the ratio survives a noisy machine.

use std::time::Instant;

use anyhow::{Context, Result};
use approx_hw::mult::MultOp;
use approx_hw::workload::TINYCONV;
use approx_hw::{forward, ConvGeometry, HwSpec, Layer};
use candle_core::Tensor;
use serde::Serialize;

/// Arguments of `approx bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Time each hardware kernel on TinyConv's four conv layers (batch 64, CIFAR shapes)
    /// next to candle's f32 conv2d.
    #[command(
        after_help = "Example:\n  approx bench kernels --hw sc:len=64,acc=or1 --hw sc:len=64,acc=exact --json"
    )]
    Kernels(KernelArgs),
    /// Time the same fine-tune as the baseline (bit-accurate every step), the
    /// accelerated schedule and float training, with peak memory and accuracy.
    Train(Box<super::bench_train::Args>),
}

/// Arguments of `approx bench kernels`.
#[derive(Debug, clap::Args)]
pub struct KernelArgs {
    /// Hardware specs to time (repeatable). Default: SC B=64 with OR-1, OR-2 and exact,
    /// B=32 OR-2, the exact and Mitchell multipliers, analog and fxp at their defaults.
    #[arg(long = "hw")]
    hw: Vec<String>,
    /// Layers to time (`conv1`..`conv4`); default all.
    #[arg(long = "layer")]
    layers: Vec<String>,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed rounds per (layer, hardware); each round times the kernel and candle once.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Print a JSON array of records instead of a table.
    #[arg(long)]
    json: bool,
}

const DEFAULT_HW: [&str; 8] = [
    "sc:len=64,acc=or1",
    "sc:len=64,acc=or2",
    "sc:len=64,acc=exact",
    "sc:len=32,acc=or2",
    "mult:design=exact",
    "mult:design=mitchell",
    "analog",
    "fxp",
];

/// One measured (layer, hardware) pair.
#[derive(Debug, Serialize)]
struct Record {
    layer: String,
    hw: String,
    /// Median milliseconds per call of the hardware kernel.
    ms: f64,
    /// Median milliseconds per call of candle's f32 conv2d.
    f32_ms: f64,
    /// Median over rounds of (kernel time / f32 time in the same round).
    ratio: f64,
    /// Bit-level multiply-accumulates per second: MACs × stream length / time (SC only).
    bit_macs_per_s: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_ms(f: &mut impl FnMut() -> Result<Tensor>) -> Result<f64> {
    let start = Instant::now();
    let out = f()?;
    std::hint::black_box(out);
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// Runs `approx bench`.
pub fn run(args: Args) -> Result<()> {
    let args = match args.command {
        BenchCommand::Kernels(args) => args,
        BenchCommand::Train(args) => return super::bench_train::run(*args),
    };
    let hw: Vec<String> = if args.hw.is_empty() {
        DEFAULT_HW.iter().map(|s| s.to_string()).collect()
    } else {
        args.hw.clone()
    };
    let specs = hw
        .iter()
        .map(|s| {
            s.parse::<HwSpec>()
                .with_context(|| format!("bad --hw `{s}`"))
        })
        .collect::<Result<Vec<_>>>()?;
    for name in &args.layers {
        if !TINYCONV.iter().any(|l| l.name == name) {
            anyhow::bail!("unknown --layer `{name}`: expected conv1, conv2, conv3 or conv4");
        }
    }
    let rounds = args.rounds.max(1);
    let mut records = Vec::new();
    for (i, layer) in TINYCONV.iter().enumerate() {
        let name = layer.name;
        if !args.layers.is_empty() && !args.layers.iter().any(|l| l == name) {
            continue;
        }
        let (input, weight) = layer.tensors(args.batch, i as u64)?;
        let (pad, params) = (layer.padding, layer.params());
        let geo = ConvGeometry::conv2d(input.dims(), weight.dims(), params)?;
        for spec in &specs {
            // A `mult` op holds its product table: build it once, as a training loop
            // would, so that the timing is the layer's.
            let mult = match spec {
                HwSpec::Mult(m) => Some(MultOp::new(m, Layer::Conv2d(params))?),
                _ => None,
            };
            let mut kernel = || -> Result<Tensor> {
                Ok(match &mult {
                    Some(op) => op.apply(&input, &weight)?,
                    None => forward(spec, Layer::Conv2d(params), &input, &weight)?,
                })
            };
            let mut f32_conv = || -> Result<Tensor> { Ok(input.conv2d(&weight, pad, 1, 1, 1)?) };
            time_ms(&mut kernel)?;
            time_ms(&mut f32_conv)?;
            let (mut ms, mut base, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                let t = time_ms(&mut kernel)?;
                let b = time_ms(&mut f32_conv)?;
                ms.push(t);
                base.push(b);
                ratios.push(t / b);
            }
            let ms = median(ms);
            let bits = match spec {
                HwSpec::Sc(sc) => Some(sc.stream_len() as f64),
                _ => None,
            };
            let record = Record {
                layer: name.to_string(),
                hw: spec.to_string(),
                ms,
                f32_ms: median(base),
                ratio: median(ratios),
                bit_macs_per_s: bits.map(|b| geo.macs() as f64 * b / (ms / 1e3)),
            };
            tracing::info!("{name} {spec}: {ms:.2} ms");
            records.push(record);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        println!(
            "{:<6} {:<34} {:>10} {:>10} {:>8} {:>14}",
            "layer", "hw", "ms", "f32 ms", "ratio", "G bit-MAC/s"
        );
        for r in &records {
            let gbm = r
                .bit_macs_per_s
                .map_or("-".to_string(), |v| format!("{:.0}", v / 1e9));
            println!(
                "{:<6} {:<34} {:>10.2} {:>10.2} {:>8.2} {:>14}",
                r.layer, r.hw, r.ms, r.f32_ms, r.ratio, gbm
            );
        }
    }
    Ok(())
}
