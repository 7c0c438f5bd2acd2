//! Time of one training step (forward, backward, Adam) of TinyConv at batch 64 on
//! CIFAR-shaped inputs, in each execution mode on a hardware spec (default
//! `sc:len=64,acc=or2`).
//!
//! ```sh
//! cargo run --release -p approx-models --example step_time -- [SPEC]
//! ```

use std::time::Instant;

use approx_models::{build, HwMap, ModelKind};
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::optim::{Optimizer, OptimizerKind};
use approx_train::trainer::{loss_and_correct, on_large_stack};
use candle_core::{Device, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    on_large_stack(|| {
        let spec = std::env::args()
            .nth(1)
            .unwrap_or_else(|| "sc:len=64,acc=or2".into());
        let hw = HwMap::All(spec.parse()?);
        println!("TinyConv, batch 64, 3x32x32, on `{spec}`");
        let net = build(
            ModelKind::TinyConv,
            (3, 32, 32),
            10,
            &hw,
            ExecMode::Float,
            0,
        )?;
        let n = 64 * 3 * 32 * 32;
        let x = Tensor::from_vec(
            (0..n)
                .map(|i| ((i * 7919) % 256) as f32 / 255.0)
                .collect::<Vec<_>>(),
            (64, 3, 32, 32),
            &Device::Cpu,
        )?;
        let y = Tensor::from_vec(
            (0..64u32).map(|i| i % 10).collect::<Vec<_>>(),
            64,
            &Device::Cpu,
        )?;
        let params = net.named_vars().into_iter().map(|(_, v)| v).collect();
        let mut opt = Optimizer::new(OptimizerKind::Adam { weight_decay: 1e-4 }, params, 1e-3)?;
        let mut float_ms = 0.0;
        for mode in [
            ExecMode::Float,
            ExecMode::ApproxFn,
            ExecMode::Inject,
            ExecMode::Accurate,
        ] {
            net.set_mode(mode);
            if mode == ExecMode::Inject {
                for l in net.hw_layers() {
                    l.request_calibration();
                }
            }
            let mut times = Vec::new();
            for step in 0..6 {
                let t = Instant::now();
                let logits = net.forward(&x, true)?;
                let (loss, _) = loss_and_correct(&logits, &y, 0.1)?;
                opt.step(&loss.backward()?)?;
                if step > 0 {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(f64::total_cmp);
            let ms = times[times.len() / 2];
            if mode == ExecMode::Float {
                float_ms = ms;
            }
            println!(
                "{:<10} {:>8.1} ms/step  {:>5.2}x float",
                mode.name(),
                ms,
                ms / float_ms
            );
        }
        Ok(())
    })
}
