//! The training loop end to end on a small conv net and a synthetic two-class task:
//! it learns, runs every phase on hardware, and a stopped-and-resumed run ends with
//! exactly the weights of an uninterrupted one.

use std::sync::atomic::AtomicBool;

use approx_hw::{Conv2dParams, HwSpec, Layer};
use approx_train::data::{Augment, Dataset};
use approx_train::layer::HwLayer;
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::optim::OptimizerKind;
use approx_train::schedule::LrSchedule;
use approx_train::trainer::{train, Event, TrainConfig};
use candle_core::{Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// conv 1→4 3x3 (pad 1) → clamp(0, 1) → 2x2 avg pool → linear 64→2, all on `hw`.
struct Net {
    conv: HwLayer,
    fc: HwLayer,
}

impl Net {
    fn new(hw: &str) -> Net {
        let hw: HwSpec = hw.parse().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut var = |shape: &[usize], scale: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
            Var::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let conv = HwLayer::new(
            "conv",
            Layer::Conv2d(Conv2dParams::new(1, 1)),
            var(&[4, 1, 3, 3], 0.5),
            None,
            hw.clone(),
            ExecMode::Float,
        )
        .unwrap();
        let fc = HwLayer::new(
            "fc",
            Layer::Linear,
            var(&[2, 64], 0.2),
            Some(var(&[2], 0.1)),
            hw,
            ExecMode::Float,
        )
        .unwrap();
        Net { conv, fc }
    }
}

impl Model for Net {
    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let h = self.conv.forward(x)?.clamp(0f32, 1f32)?.avg_pool2d(2)?;
        self.fc.forward(&h.flatten_from(1)?)
    }

    fn hw_layers(&self) -> Vec<&HwLayer> {
        vec![&self.conv, &self.fc]
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        vec![
            ("conv.weight".into(), self.conv.weight().clone()),
            ("fc.weight".into(), self.fc.weight().clone()),
            ("fc.bias".into(), self.fc.bias().unwrap().clone()),
        ]
    }
}

/// 8x8 images: class 1 has a bright left half, class 0 a bright right half, plus noise.
fn task(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let label = (i % 2) as u8;
        for _ in 0..8 {
            for x in 0..8 {
                let bright = (x < 4) == (label == 1);
                images.push(if bright { 0.6 } else { 0.1 } + rng.random_range(0.0..0.3f32));
            }
        }
        labels.push(label);
    }
    Dataset {
        images,
        labels,
        shape: (1, 8, 8),
        classes: 2,
    }
}

fn config(epochs: usize, phases: &str, checkpoint: Option<std::path::PathBuf>) -> TrainConfig {
    TrainConfig {
        epochs,
        batch: 16,
        seed: 5,
        phases: phases.parse().unwrap(),
        optimizer: OptimizerKind::Adam { weight_decay: 1e-4 },
        lr: 0.02,
        lr_schedule: LrSchedule::Cosine { end: 1e-4 },
        tune_lr: None,
        label_smoothing: 0.1,
        clip_grad: Some(5.0),
        weight_clamp: Some((-1.0, 0.999)),
        calibrate_every: Some(3),
        eval_mode: Some(ExecMode::Accurate),
        augment: Augment {
            crop_padding: 1,
            hflip: false,
        },
        max_steps: None,
        checkpoint,
    }
}

fn weights(net: &Net) -> Vec<Vec<f32>> {
    net.named_vars()
        .iter()
        .map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn learns_on_every_kind_through_inject_and_accurate_phases() {
    let (train_set, test_set) = (task(96, 1), task(64, 2));
    for hw in [
        "sc:len=32,acc=or2",
        "mult:design=drum4",
        "analog",
        "fxp:bits=6",
    ] {
        let net = Net::new(hw);
        let mut events = 0;
        let out = train(
            &net,
            &train_set,
            Some(&test_set),
            &config(4, "float:1,inject:2,accurate:1", None),
            false,
            &AtomicBool::new(false),
            &mut |e| events += usize::from(matches!(e, Event::Step { .. })),
        )
        .unwrap();
        assert_eq!(events, 4 * 6);
        assert_eq!(out.history.len(), 4);
        assert_eq!(
            out.history.iter().map(|r| r.mode).collect::<Vec<_>>(),
            vec![
                ExecMode::Float,
                ExecMode::Inject,
                ExecMode::Inject,
                ExecMode::Accurate
            ]
        );
        assert!(
            net.conv.calibration().is_some(),
            "{hw}: inject epochs calibrate"
        );
        let last = out.history.last().unwrap();
        assert!(last.eval_accuracy.unwrap() >= 0.9, "{hw}: {last:?}");
        assert!(last.loss < out.history[0].loss, "{hw}: {:?}", out.history);
    }
}

#[test]
fn stopped_and_resumed_run_equals_the_uninterrupted_run() {
    let (train_set, test_set) = (task(80, 3), task(32, 4));
    let dir = tempfile::tempdir().unwrap();
    let hw = "sc:len=32,acc=or2";
    let full = Net::new(hw);
    let cfg = config(3, "inject:2,accurate:1", None);
    train(
        &full,
        &train_set,
        Some(&test_set),
        &cfg,
        false,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();

    let path = dir.path().join("ckpt.safetensors");
    // Stop twice mid-epoch (steps 7 and 12 of 15), resuming each time.
    for limit in [Some(7), Some(12), None] {
        let mut cfg = config(3, "inject:2,accurate:1", Some(path.clone()));
        cfg.max_steps = limit;
        let fresh = Net::new(hw);
        let out = train(
            &fresh,
            &train_set,
            Some(&test_set),
            &cfg,
            true,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(out.stopped, limit.is_some());
        if limit.is_none() {
            assert_eq!(out.history.len(), 3);
            assert_eq!(weights(&fresh), weights(&full));
            for (a, b) in fresh.hw_layers().iter().zip(full.hw_layers()) {
                assert_eq!(a.calibration(), b.calibration());
                let pattern = |l: &HwLayer| l.fixed_pattern().map(|p| flat(&p));
                assert_eq!(pattern(a), pattern(b));
            }
        }
    }
    // A checkpoint from other settings is refused with both settings shown.
    let mut other = config(4, "inject:2,accurate:2", Some(path));
    other.max_steps = Some(1);
    let err = train(
        &Net::new(hw),
        &train_set,
        None,
        &other,
        true,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("other settings") && err.contains("epochs=3") && err.contains("epochs=4"),
        "{err}"
    );
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}
