//! One training step (forward, backward, Adam update) of TinyConv at batch 64 on
//! CIFAR-shaped inputs, in every execution mode, on each hardware kind. Each group
//! holds the `float` step of the same model, the baseline every mode is a ratio of.
//!
//! `inject` is timed between calibrations (the calibration, one bit-accurate forward
//! per period, runs before timing); `accurate` is the bit-accurate forward with the
//! `approx-fn` gradient.

use approx_benches::{step_batch, step_model, STEP_SPECS};
use approx_models::Sequential;
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::optim::Optimizer;
use approx_train::trainer::{self, on_large_stack};
use candle_core::Tensor;
use criterion::{BenchmarkId, Criterion};

/// One step of `net` on `(x, y)`, as the trainer runs it.
fn step(net: &Sequential, opt: &mut Optimizer, x: &Tensor, y: &Tensor) {
    trainer::train_step(net, opt, x, y, 0.1, None).expect("training step");
}

fn train_step(c: &mut Criterion) {
    let (x, y) = step_batch();
    for spec in STEP_SPECS {
        let (net, mut opt) = step_model(spec);
        let mut group = c.benchmark_group(format!("train-step-{spec}"));
        group.sample_size(10);
        for mode in ExecMode::ALL {
            net.set_mode(mode);
            if mode == ExecMode::Inject {
                for l in net.hw_layers() {
                    l.request_calibration();
                }
                step(&net, &mut opt, &x, &y);
            }
            group.bench_function(BenchmarkId::new(mode.name(), spec), |b| {
                b.iter(|| step(&net, &mut opt, &x, &y))
            });
        }
        group.finish();
    }
}

fn main() {
    on_large_stack(|| {
        let mut c = Criterion::default().configure_from_args();
        train_step(&mut c);
        c.final_summary();
    });
}
