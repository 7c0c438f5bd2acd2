//! The execution modes of `HwLayer` on every hardware kind: finite-difference
//! gradient checks of `approx-fn` and `inject`, `accurate` mode's value and
//! gradient, and calibration on a real SC layer.

use approx_hw::{Conv2dParams, HwSpec, Layer};
use approx_train::calibration::{Calibration, CalibrationScheme};
use approx_train::layer::HwLayer;
use approx_train::mode::ExecMode;
use approx_train::ste::Quantize;
use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tensor(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A conv layer 3→4, 3x3, padding 1 on `hw`, with its input (post-activation-like).
fn conv_layer(hw: &str, mode: ExecMode) -> (HwLayer, Var) {
    let hw: HwSpec = hw.parse().unwrap();
    let weight = Var::from_tensor(&tensor(&[4, 3, 3, 3], 1, -0.4, 0.4)).unwrap();
    let bias = Var::from_tensor(&tensor(&[4], 2, -0.1, 0.1)).unwrap();
    let layer = HwLayer::new(
        "conv",
        Layer::Conv2d(Conv2dParams::new(1, 1)),
        weight,
        Some(bias),
        hw,
        mode,
    )
    .unwrap();
    let x = Var::from_tensor(&tensor(&[2, 3, 5, 5], 3, 0.0, 1.0)).unwrap();
    (layer, x)
}

/// `Σ y·probe`, a scalar whose gradient is the vector-Jacobian product with `probe`.
fn objective(layer: &HwLayer, x: &Tensor, probe: &Tensor) -> f64 {
    let y = layer.forward(x).unwrap();
    f64::from(
        (y * probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
    )
}

fn check_gradients(hw: &str, mode: ExecMode, calibration: Option<Calibration>) {
    let (layer, x) = conv_layer(hw, mode);
    layer.set_calibration(calibration);
    layer.set_step(5);
    let probe = tensor(&[2, 4, 5, 5], 4, -1.0, 1.0);
    let y = layer.forward(&x).unwrap();
    let grads = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    let h = 1e-2f32;
    for (var, name) in [(layer.weight(), "weight"), (&x, "input")] {
        let analytic = grads
            .get(var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in (0..base.len()).step_by(7) {
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let f = objective(&layer, &x, &probe);
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                f
            };
            let fd = (at(h) - at(-h)) / (2.0 * f64::from(h));
            let a = f64::from(analytic[i]);
            assert!(
                (fd - a).abs() <= 2e-2 * (1.0 + a.abs()),
                "{hw} {mode} d{name}[{i}]: finite difference {fd} vs autograd {a}"
            );
        }
    }
}

/// A calibration with a constant std (its derivative is 0, which the gradient drops
/// by design) and a curved bias.
fn test_calibration() -> Calibration {
    Calibration {
        bias: [0.01, -0.04, 0.02, -0.003, 0.0, 0.0],
        std: [0.03, 0.0, 0.0, 0.0, 0.0, 0.0],
        ..Calibration::default()
    }
}

#[test]
fn approx_fn_and_inject_gradients_match_finite_differences() {
    for hw in [
        "mult:design=mitchell",
        "fxp",
        "analog:tile_rows=10",
        "exact",
    ] {
        check_gradients(hw, ExecMode::ApproxFn, None);
        check_gradients(hw, ExecMode::Inject, Some(test_calibration()));
    }
}

/// Which calibrations carry a fixed pattern: the `fixed-pattern` scheme's, on every
/// kind but analog (whose noise is redrawn every step), shaped like one sample's
/// output; the other schemes fit the polynomials alone.
#[test]
fn fixed_patterns_follow_the_scheme_and_the_hardware() {
    for hw in ["sc:len=32,acc=or2", "mult:design=drum4", "fxp", "analog"] {
        for scheme in CalibrationScheme::ALL {
            let (layer, x) = conv_layer(hw, ExecMode::Inject);
            layer.set_calibration_scheme(scheme);
            layer.request_calibration();
            let y = layer.forward(&x).unwrap();
            assert!(layer.calibration().is_some(), "{hw} {scheme}");
            let pattern = layer.fixed_pattern();
            let want = scheme == CalibrationScheme::FixedPattern && !hw.starts_with("analog");
            assert_eq!(pattern.is_some(), want, "{hw} {scheme}");
            if let Some(p) = pattern {
                assert_eq!(p.dims(), &y.dims()[1..], "{hw}");
            }
        }
    }
    assert_eq!("rex-sc".parse(), Ok(CalibrationScheme::RexSc));
    let err = "rexsc".parse::<CalibrationScheme>().unwrap_err();
    assert!(
        err.contains("`rexsc`") && err.contains("`fixed-pattern`"),
        "{err}"
    );
}

#[test]
fn accurate_mode_takes_the_hardware_value_and_the_approx_fn_gradient() {
    for hw in ["sc:len=32,acc=or2", "mult:design=drum4", "analog", "fxp"] {
        let (layer, x) = conv_layer(hw, ExecMode::Accurate);
        layer.set_step(3);
        let y = layer.forward(&x).unwrap();
        // The value: the hardware op on the operands as the layer quantizes them,
        // plus the bias.
        let spec: HwSpec = hw.parse().unwrap();
        let (xq, wq) = match spec {
            HwSpec::Sc(sc) => {
                let q = approx_train::ste::Quantizer { bits: 7 };
                let len = sc.stream_len() as u32;
                let stream = |t: &Tensor, signed| {
                    approx_train::ste::StreamQuantizer { len, signed }
                        .apply(&q.apply(t).unwrap())
                        .unwrap()
                };
                (stream(&x, false), stream(layer.weight(), true))
            }
            _ => (x.as_tensor().clone(), layer.weight().as_tensor().clone()),
        };
        let conv = Layer::Conv2d(Conv2dParams::new(1, 1));
        let hardware = match &spec {
            HwSpec::Analog(a) => approx_hw::analog::AnalogOp::new(*a, conv)
                .with_draw(3)
                .apply(&xq, &wq)
                .unwrap(),
            _ => approx_hw::forward(&spec, conv, &xq, &wq).unwrap(),
        };
        let want = hardware
            .broadcast_add(&layer.bias().unwrap().reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{hw}"
        );
        // The gradient: exactly approx-fn's.
        let g_acc = y.sum_all().unwrap().backward().unwrap();
        layer.set_mode(ExecMode::ApproxFn);
        let g_fn = layer
            .forward(&x)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [layer.weight(), &x] {
            assert_eq!(
                g_acc
                    .get(v)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                g_fn.get(v)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                "{hw}"
            );
        }
    }
}

/// Per-bin count, mean and std of `value − reference`, binned by `reference` into 8
/// bins.
fn binned(reference: &[f32], value: &[f32]) -> Vec<(usize, f64, f64)> {
    let (lo, hi) = reference
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let width = (hi - lo) / 8.0;
    let mut bins = vec![Vec::new(); 8];
    for (&r, &v) in reference.iter().zip(value) {
        let i = (((r - lo) / width) as usize).min(7);
        bins[i].push(f64::from(v - r));
    }
    bins.iter()
        .map(|b| {
            let n = b.len().max(1) as f64;
            let mean = b.iter().sum::<f64>() / n;
            let var = b.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n;
            (b.len(), mean, var.sqrt())
        })
        .collect()
}

/// Post-ReLU-like SC inputs: half zeros, the rest uniform in `[0, 0.6)`.
fn sparse_input(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let x: Vec<f32> = (0..n)
        .map(|_| {
            if rng.random_bool(0.5) {
                0.0
            } else {
                rng.random_range(0.0..0.6)
            }
        })
        .collect();
    Tensor::from_vec(x, shape, &Device::Cpu).unwrap()
}

/// Per unit (element of one sample), the mean over the samples of `value − reference`.
fn unit_means(reference: &[f32], value: &[f32], units: usize) -> Vec<f64> {
    let mut sum = vec![0f64; units];
    for (i, (&r, &v)) in reference.iter().zip(value).enumerate() {
        sum[i % units] += f64::from(v - r);
    }
    let samples = (reference.len() / units) as f64;
    sum.iter().map(|s| s / samples).collect()
}

/// The injected error model of a real SC layer (the calibrated polynomials per
/// polarity and the fixed pattern on the output), calibrated on one batch and
/// measured on another: per bin of the approximation's output, the injected
/// residual's mean and std match the bit-accurate residual's within 10 %, and per
/// output unit its mean follows the bit-accurate one's (which noise alone cannot).
#[test]
fn injected_error_matches_the_bit_accurate_residual_on_an_sc_layer() {
    // TinyConv's conv2 shape at batch 32: 32→32, 5x5, padding 2, on 16x16 inputs.
    let spec: HwSpec = "sc:len=32,acc=or2".parse().unwrap();
    let params = Conv2dParams::new(1, 2);
    let weight = Var::from_tensor(&tensor(&[32, 32, 5, 5], 11, -0.15, 0.15)).unwrap();
    let layer = HwLayer::new(
        "conv2",
        Layer::Conv2d(params),
        weight,
        None,
        spec,
        ExecMode::Inject,
    )
    .unwrap();
    layer.request_calibration();
    layer.forward(&sparse_input((32, 32, 16, 16), 12)).unwrap();
    let pattern = layer.fixed_pattern().expect("a fixed pattern");
    assert_eq!(pattern.dims(), &[32, 16, 16]);
    let x = sparse_input((32, 32, 16, 16), 13);
    let output = |mode| {
        layer.set_mode(mode);
        flat(&layer.forward(&x).unwrap())
    };
    let approx = output(ExecMode::ApproxFn);
    let bit = output(ExecMode::Accurate);
    let injected = output(ExecMode::Inject);
    let (want, got) = (binned(&approx, &bit), binned(&approx, &injected));
    let spread = want.iter().map(|b| b.2).fold(0f64, f64::max);
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        if w.0 < 500 {
            continue;
        }
        assert!(
            (g.1 - w.1).abs() <= 0.1 * spread.max(w.1.abs()),
            "bin {i}: injected mean {} vs bit-accurate {}",
            g.1,
            w.1
        );
        assert!(
            (g.2 - w.2).abs() <= 0.1 * w.2,
            "bin {i}: injected std {} vs bit-accurate {}",
            g.2,
            w.2
        );
    }
    let units = 32 * 16 * 16;
    let want = unit_means(&approx, &bit, units);
    let mismatch = |value: &[f32]| -> f64 {
        let got = unit_means(&approx, value, units);
        got.iter()
            .zip(&want)
            .map(|(g, w)| (g - w).powi(2))
            .sum::<f64>()
            / units as f64
    };
    // Per unit, without the noise (whose 16-sample means would blur the comparison).
    let calibration = layer.calibration().expect("calibrated");
    layer.set_calibration(Some(Calibration {
        std: [0.0; 6],
        ..calibration
    }));
    let with = mismatch(&output(ExecMode::Inject));
    layer.set_fixed_pattern(None);
    let without = mismatch(&output(ExecMode::Inject));
    assert!(
        with < 0.6 * without,
        "per-unit mean error: {with} with the fixed pattern, {without} without"
    );
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}
