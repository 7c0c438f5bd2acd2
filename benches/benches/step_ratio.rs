//! Each execution mode's training step as a ratio of the `float` step, measured in
//! alternation: TinyConv at batch 64 on 3x32x32 inputs, as `train_step` runs it, but
//! one `float` step and one step of the mode in turn, a ratio per pair, and the median
//! of those ratios.
//!
//! Why besides `train_step`: criterion times one mode for seconds before the next, and
//! this shared machine's speed drifts by 10-20 % over such spans, so a ratio of two of
//! its medians carries that drift. Steps in alternation see the same machine.
//!
//! `cargo bench -p approx-benches --bench step_ratio [-- FILTER]` runs the hardware
//! specs containing FILTER (all by default) and prints a Markdown table.

use std::time::Instant;

use approx_benches::{step_batch, step_model, STEP_SPECS};
use approx_models::Sequential;
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::optim::Optimizer;
use approx_train::trainer::{self, on_large_stack};
use candle_core::Tensor;

/// Steps of each mode before measuring (allocator and caches settle).
const WARM_UP: usize = 2;
/// Measured (float, mode) pairs per mode.
const PAIRS: usize = 15;

/// One step of `net` in `mode`, in milliseconds.
fn timed_step(
    net: &Sequential,
    opt: &mut Optimizer,
    mode: ExecMode,
    (x, y): (&Tensor, &Tensor),
) -> f64 {
    net.set_mode(mode);
    let start = Instant::now();
    trainer::train_step(net, opt, x, y, 0.1, None).expect("training step");
    start.elapsed().as_secs_f64() * 1e3
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The median `float` step (ms) and, per other mode, the median ratio of its step to
/// the `float` step of the same pair.
fn measure(spec: &str, data: (&Tensor, &Tensor)) -> (f64, Vec<f64>) {
    let (net, mut opt) = step_model(spec);
    let mut float_times = Vec::new();
    let ratios = ExecMode::ALL
        .into_iter()
        .filter(|&mode| mode != ExecMode::Float)
        .map(|mode| {
            if mode == ExecMode::Inject {
                // Timed between calibrations, as `train_step` times it.
                net.set_mode(mode);
                for l in net.hw_layers() {
                    l.request_calibration();
                }
            }
            for _ in 0..WARM_UP {
                timed_step(&net, &mut opt, mode, data);
                timed_step(&net, &mut opt, ExecMode::Float, data);
            }
            let ratios = (0..PAIRS)
                .map(|_| {
                    let float = timed_step(&net, &mut opt, ExecMode::Float, data);
                    float_times.push(float);
                    timed_step(&net, &mut opt, mode, data) / float
                })
                .collect();
            median(ratios)
        })
        .collect();
    (median(float_times), ratios)
}

fn main() {
    on_large_stack(|| {
        let filter = std::env::args()
            .skip(1)
            .find(|a| !a.starts_with('-'))
            .unwrap_or_default();
        let (x, y) = step_batch();
        let modes: Vec<&str> = ExecMode::ALL
            .into_iter()
            .filter(|&m| m != ExecMode::Float)
            .map(ExecMode::name)
            .collect();
        println!(
            "| hardware | float ms | {} |\n|---|---:|{}",
            modes.join(" | "),
            "---:|".repeat(modes.len())
        );
        for spec in STEP_SPECS.into_iter().filter(|s| s.contains(&filter)) {
            let (float, ratios) = measure(spec, (&x, &y));
            let ratios: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
            println!("| `{spec}` | {float:.1} | {} |", ratios.join(" | "));
        }
    });
}
