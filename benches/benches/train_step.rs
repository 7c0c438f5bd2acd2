//! One training step (forward, backward, Adam update) of TinyConv at batch 64 on
//! CIFAR-shaped inputs, in every execution mode, on each hardware kind. Each group
//! holds the `float` step of the same model, the baseline every mode is a ratio of.
//!
//! `inject` is timed between calibrations (the calibration, one bit-accurate forward
//! per period, runs before timing); `accurate` is the bit-accurate forward with the
//! `approx-fn` gradient.

use approx_models::{build, HwMap, ModelKind, Sequential};
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::optim::{Optimizer, OptimizerKind};
use approx_train::trainer::{self, on_large_stack};
use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion};

const SPECS: [&str; 5] = [
    "sc:len=64,acc=or2",
    "sc:len=32,acc=or1",
    "mult:design=mitchell",
    "analog",
    "fxp",
];

const BATCH: usize = 64;

/// A fixed batch: pixel-like inputs in [0, 1] and labels cycling through the classes.
fn batch() -> (Tensor, Tensor) {
    let n = BATCH * 3 * 32 * 32;
    let x = Tensor::from_vec(
        (0..n)
            .map(|i| ((i * 7919) % 256) as f32 / 255.0)
            .collect::<Vec<_>>(),
        (BATCH, 3, 32, 32),
        &Device::Cpu,
    )
    .expect("input batch");
    let y = Tensor::from_vec(
        (0..BATCH as u32).map(|i| i % 10).collect::<Vec<_>>(),
        BATCH,
        &Device::Cpu,
    )
    .expect("labels");
    (x, y)
}

/// One step of `net` on `(x, y)`, as the trainer runs it.
fn step(net: &Sequential, opt: &mut Optimizer, x: &Tensor, y: &Tensor) {
    trainer::train_step(net, opt, x, y, 0.1, None).expect("training step");
}

fn train_step(c: &mut Criterion) {
    let (x, y) = batch();
    for spec in SPECS {
        let hw = HwMap::All(spec.parse().expect("bench spec parses"));
        let net = build(
            ModelKind::TinyConv,
            (3, 32, 32),
            10,
            &hw,
            ExecMode::Float,
            0,
        )
        .expect("TinyConv builds");
        let params = net.named_vars().into_iter().map(|(_, v)| v).collect();
        let mut opt = Optimizer::new(OptimizerKind::Adam { weight_decay: 1e-4 }, params, 1e-3)
            .expect("optimizer");
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
