//! Criterion benchmarks of the approx kernels and training steps, each group holding
//! its f32 baseline measured in the same run:
//!
//! - `sc_conv`: the SC conv kernels on TinyConv's layers against candle's f32 conv2d;
//! - `hw_conv`: the `mult`, `analog` and `fxp` kernels against candle's f32 conv2d;
//! - `float_conv`: the training layers' float conv (its own FMA kernels) against candle's
//!   conv2d, forward and backward;
//! - `or_fn`: the SC surrogate's OR-n function, vectorised f32 blocks against the
//!   scalar f64 functions;
//! - `train_step`: a TinyConv training step in every execution mode on each hardware
//!   kind, against the `float` step of the same model;
//! - `step_ratio` (plain timing, not criterion): the same steps as ratios of `float`
//!   steps run in alternation with them, which this machine's drift cannot skew.
//!
//! The benchmarks are in `benches/`; run them with `cargo bench -p approx-benches`.
//! This library holds what the two training-step benchmarks share: the hardware
//! list, the batch and the model.

use approx_models::{build, HwMap, ModelKind, Sequential};
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::optim::{Optimizer, OptimizerKind};
use candle_core::{Device, Tensor};

/// The hardware kinds the training-step benchmarks run TinyConv on.
pub const STEP_SPECS: [&str; 5] = [
    "sc:len=64,acc=or2",
    "sc:len=32,acc=or1",
    "mult:design=mitchell",
    "analog",
    "fxp",
];

/// Images per training-step batch.
pub const STEP_BATCH: usize = 64;

/// The training-step benchmarks' fixed batch: pixel-like 3x32x32 inputs in [0, 1] and
/// labels cycling through the ten classes.
pub fn step_batch() -> (Tensor, Tensor) {
    let n = STEP_BATCH * 3 * 32 * 32;
    let x = Tensor::from_vec(
        (0..n)
            .map(|i| ((i * 7919) % 256) as f32 / 255.0)
            .collect::<Vec<_>>(),
        (STEP_BATCH, 3, 32, 32),
        &Device::Cpu,
    )
    .expect("input batch");
    let y = Tensor::from_vec(
        (0..STEP_BATCH as u32).map(|i| i % 10).collect::<Vec<_>>(),
        STEP_BATCH,
        &Device::Cpu,
    )
    .expect("labels");
    (x, y)
}

/// A fresh TinyConv for 3x32x32 inputs on the hardware `spec`, in `float` mode, with
/// Adam (weight decay 1e-4, learning rate 1e-3) over its parameters.
pub fn step_model(spec: &str) -> (Sequential, Optimizer) {
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
    let opt = Optimizer::new(OptimizerKind::Adam { weight_decay: 1e-4 }, params, 1e-3)
        .expect("optimizer");
    (net, opt)
}
