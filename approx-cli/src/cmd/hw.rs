//! `approx hw list|inspect`: the hardware kinds, their keys and defaults, and the
//! error statistics of one hardware spec.

use anyhow::{Context, Result};
use approx_hw::inspect::{dot_product_error, DotProductSetup};
use approx_hw::mult::{ErrorMetrics, MulTable, Multiplier};
use approx_hw::spec::KINDS;
use approx_hw::{ErrorModel, HwSpec};
use serde_json::json;

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
    /// Error statistics of one hardware spec.
    ///
    /// For `mult`: the exhaustive metrics over all 65,536 operand pairs (MRED, NMED,
    /// MAE, WCE, error rate, bias; built-in designs as unsigned 8x8 multipliers, user
    /// tables as their signedness says). For every kind: the output error (hardware −
    /// exact) of random post-activation-like dot products, mean and std per bin of the
    /// exact output value, and the mean left after the kind's analytic error model.
    #[command(
        after_help = "Examples:\n  approx hw inspect --hw mult:design=mitchell\n  approx hw inspect --hw sc:len=32,acc=or2 --fan-in 256 --json"
    )]
    Inspect(InspectArgs),
}

/// Arguments of `approx hw inspect`.
#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// Hardware spec to inspect.
    #[arg(long)]
    hw: String,
    /// Random input vectors of the dot-product profile.
    #[arg(long, default_value_t = 256)]
    samples: usize,
    /// Products per dot product.
    #[arg(long, default_value_t = 128)]
    fan_in: usize,
    /// Output-value bins.
    #[arg(long, default_value_t = 10)]
    bins: usize,
    /// Seed of the random data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON record instead of tables.
    #[arg(long)]
    json: bool,
}

/// Runs `approx hw`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        HwCommand::List => {
            for kind in KINDS {
                println!("{:<8} {}", kind.kind, kind.summary);
                for key in kind.keys {
                    println!(
                        "  {:<10} default {:<10} {}; {}",
                        key.key, key.default, key.summary, key.allowed
                    );
                }
            }
            Ok(())
        }
        HwCommand::Inspect(args) => inspect(args),
    }
}

fn inspect(args: InspectArgs) -> Result<()> {
    let spec: HwSpec = args
        .hw
        .parse()
        .with_context(|| format!("bad --hw `{}`", args.hw))?;
    for (name, value) in [
        ("--samples", args.samples),
        ("--fan-in", args.fan_in),
        ("--bins", args.bins),
    ] {
        if !(1..=1 << 16).contains(&value) {
            anyhow::bail!("{name} must be between 1 and 65536, got {value}");
        }
    }
    let metrics = match &spec {
        HwSpec::Mult(m) => Some(match &m.multiplier {
            Multiplier::Design(d) => ErrorMetrics::exhaustive(|a, b| i64::from(d.product(a, b))),
            Multiplier::Lut(_) => ErrorMetrics::of_table(&MulTable::for_spec(m)?, m.signed),
        }),
        _ => None,
    };
    let model = ErrorModel::for_spec(&spec)?;
    let setup = DotProductSetup {
        samples: args.samples,
        fan_in: args.fan_in,
        bins: args.bins,
        seed: args.seed,
        ..DotProductSetup::default()
    };
    let bins = dot_product_error(&spec, &setup)?;
    if args.json {
        let record = json!({
            "hw": spec.to_string(),
            "metrics": metrics.map(|m| json!({
                "mred_percent": m.mred,
                "nmed_percent": m.nmed,
                "mae_percent": m.mae,
                "wce": m.wce,
                "wce_percent": m.wce_percent(),
                "max_rel_percent": m.max_rel,
                "error_rate_percent": m.error_rate,
                "bias_percent": m.bias,
            })),
            "error_model": format!("{model:?}"),
            "dot_product": {
                "samples": setup.samples,
                "fan_in": setup.fan_in,
                "outputs": setup.outputs,
                "seed": setup.seed,
                "bins": bins.iter().map(|b| json!({
                    "lo": b.lo, "hi": b.hi, "count": b.count,
                    "mean": b.mean, "std": b.std, "model_mean": b.model_mean,
                })).collect::<Vec<_>>(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(());
    }
    println!("hardware: {spec}");
    if let Some(m) = metrics {
        println!(
            "multiplier over all 65,536 operand pairs:\n  MRED {:.2} %  NMED {:.3} %  MAE {:.3} % of 2^16  WCE {} ({:.2} %)  max rel {:.1} %  ER {:.1} %  bias {:+.2} %",
            m.mred, m.nmed, m.mae, m.wce, m.wce_percent(), m.max_rel, m.error_rate, m.bias
        );
    }
    println!("error model: {model:?}");
    println!(
        "output error (hardware − exact) of {} x {} random dot products of fan-in {}, seed {}:",
        setup.samples, setup.outputs, setup.fan_in, setup.seed
    );
    println!(
        "  {:>10} {:>10} {:>7} {:>11} {:>11} {:>13}",
        "exact from", "to", "count", "mean", "std", "mean − model"
    );
    for b in &bins {
        println!(
            "  {:>10.4} {:>10.4} {:>7} {:>11.5} {:>11.5} {:>13.5}",
            b.lo, b.hi, b.count, b.mean, b.std, b.model_mean
        );
    }
    Ok(())
}
