//! The `mult`, `fxp` and `analog` kernels against slow, obviously-correct models: one
//! output at a time, one product at a time, in the order `(c, kh, kw)`, on random
//! shapes, strides and paddings, with sparse post-activation-like and signed data.

use approx_hw::analog::{AnalogOp, AnalogSpec};
use approx_hw::fxp::{saturating_add, Accumulator, FxpOp, FxpSpec};
use approx_hw::mult::{
    quantize, Design, LookupIsa, MulTable, MultOp, MultPath, MultSpec, Multiplier,
};
use approx_hw::{Conv2dParams, Layer};
use candle_core::{Device, Tensor};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

/// One random layer: NCHW input, OIHW weight, stride, padding.
#[derive(Debug, Clone)]
struct Case {
    input: Vec<f32>,
    in_dims: [usize; 4],
    weight: Vec<f32>,
    w_dims: [usize; 4],
    stride: (usize, usize),
    padding: (usize, usize),
}

impl Case {
    fn out_size(&self) -> (usize, usize) {
        let [_, _, h, w] = self.in_dims;
        let [_, _, kh, kw] = self.w_dims;
        (
            (h + 2 * self.padding.0 - kh) / self.stride.0 + 1,
            (w + 2 * self.padding.1 - kw) / self.stride.1 + 1,
        )
    }

    /// For every output (NCHW order), the (input, weight) pairs of its receptive
    /// field in `(c, kh, kw)` order, padding included as input 0.
    fn fields(&self) -> Vec<(usize, Vec<(f32, f32)>)> {
        let [n, c, h, w] = self.in_dims;
        let [o, _, kh, kw] = self.w_dims;
        let (oh, ow) = self.out_size();
        let mut out = Vec::new();
        for img in 0..n {
            for oc in 0..o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut pairs = Vec::new();
                        for ci in 0..c {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let y =
                                        (oy * self.stride.0 + i) as isize - self.padding.0 as isize;
                                    let x =
                                        (ox * self.stride.1 + j) as isize - self.padding.1 as isize;
                                    let a =
                                        if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w
                                        {
                                            self.input
                                                [((img * c + ci) * h + y as usize) * w + x as usize]
                                        } else {
                                            0.0
                                        };
                                    pairs.push((a, self.weight[((oc * c + ci) * kh + i) * kw + j]));
                                }
                            }
                        }
                        out.push((oc, pairs));
                    }
                }
            }
        }
        out
    }

    fn tensors(&self) -> (Tensor, Tensor) {
        (
            Tensor::from_vec(self.input.clone(), self.in_dims.to_vec(), &Device::Cpu).unwrap(),
            Tensor::from_vec(self.weight.clone(), self.w_dims.to_vec(), &Device::Cpu).unwrap(),
        )
    }

    fn layer(&self) -> Layer {
        Layer::Conv2d(Conv2dParams {
            stride: self.stride,
            padding: self.padding,
        })
    }
}

/// Post-activation-like values: about half zeros, the rest small, some negative when
/// `signed`.
fn values(len: usize, signed: bool) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec((0u8..4, 0f32..1.0), len).prop_map(move |v| {
        v.into_iter()
            .map(|(kind, x)| match kind {
                0 | 1 => 0.0,
                2 => x * 0.3,
                _ if signed => -x,
                _ => x,
            })
            .collect()
    })
}

fn cases() -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..5,
        1usize..8,
        1usize..8,
        1usize..6,
        1usize..4,
        1usize..4,
        1usize..3,
        1usize..3,
        0usize..3,
        0usize..3,
    )
        .prop_filter("kernel fits", |&(_, _, h, w, _, kh, kw, _, _, ph, pw)| {
            kh <= h + 2 * ph && kw <= w + 2 * pw
        })
        .prop_flat_map(|(n, c, h, w, o, kh, kw, sy, sx, ph, pw)| {
            (values(n * c * h * w, true), values(o * c * kh * kw, true)).prop_map(
                move |(input, weight)| Case {
                    input,
                    in_dims: [n, c, h, w],
                    weight,
                    w_dims: [o, c, kh, kw],
                    stride: (sy, sx),
                    padding: (ph, pw),
                },
            )
        })
}

fn run(op_result: approx_hw::Result<Tensor>) -> Vec<f32> {
    op_result.unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// The `mult` reference: quantize, then every product from the unsigned design with
/// the sign applied by hand, summed in i64.
fn mult_reference(case: &Case, design: Design, spec: &MultSpec) -> Vec<f32> {
    let qmax = spec.act_max();
    let (_, act_scale) = quantize::activations(&case.input, qmax, spec.signed);
    let fan_in = case.w_dims[1] * case.w_dims[2] * case.w_dims[3];
    let (_, w_scales) = quantize::weights(&case.weight, fan_in, qmax);
    let lo = if spec.signed { -qmax } else { 0 };
    case.fields()
        .into_iter()
        .map(|(o, pairs)| {
            let sum: i64 = pairs
                .iter()
                .map(|&(a, w)| {
                    let a = quantize::code(a, act_scale, lo, qmax);
                    let w = quantize::code(w, w_scales[o], -qmax, qmax);
                    let magnitude = design.product(a.unsigned_abs() as u8, w.unsigned_abs() as u8);
                    i64::from(magnitude) * i64::from(a.signum() * w.signum())
                })
                .sum();
            sum as i32 as f32 * (act_scale * w_scales[o])
        })
        .collect()
}

fn fxp_reference(case: &Case, spec: &FxpSpec) -> Vec<f32> {
    let q = spec.scale();
    let acc = Accumulator::new(spec);
    let rhe = |v: f32, lo: f32, hi: f32| (v * q).clamp(lo, hi).round_ties_even() as i32;
    case.fields()
        .into_iter()
        .map(|(_, pairs)| {
            let (mut pos, mut neg) = (0i32, 0i32);
            for &(a, w) in &pairs {
                let a = rhe(a, 0.0, q - 1.0);
                pos = saturating_add(&acc, pos, a * rhe(w, 0.0, q - 1.0));
                neg = saturating_add(&acc, neg, a * -rhe(w, 1.0 - q, 0.0));
            }
            (pos - neg) as f32 / (q * q)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn mult_kernels_equal_the_reference(case in cases(), design_pick in 0usize..6, signed: bool, bits in 4u8..=8) {
        let design = [Design::Exact, Design::Mitchell, Design::Drum(4), Design::Roba, Design::Kulkarni, Design::Bam { hbl: 2, vbl: 6 }][design_pick];
        let spec = MultSpec { multiplier: Multiplier::Design(design), bits, signed };
        let want = mult_reference(&case, design, &spec);
        let (input, weight) = case.tensors();
        let op = MultOp::new(&spec, case.layer()).unwrap();
        for isa in [LookupIsa::Portable, LookupIsa::best()] {
            let got = run(op.clone().with_path(MultPath::Table(isa)).unwrap().apply(&input, &weight));
            prop_assert_eq!(&got, &want, "{:?} {}", isa, spec);
        }
        if design == Design::Exact {
            let got = run(op.with_path(MultPath::ExactGemm).unwrap().apply(&input, &weight));
            prop_assert_eq!(&got, &want, "exact GEMM path");
        }
    }

    #[test]
    fn fxp_equals_the_reference(case in cases(), bits in 1u8..=9, acc_bits in 4u8..=24) {
        let spec = FxpSpec { bits, acc_bits };
        let want = fxp_reference(&case, &spec);
        let (input, weight) = case.tensors();
        let got = run(FxpOp::new(spec, case.layer()).apply(&input, &weight));
        prop_assert_eq!(got, want, "{}", spec);
    }

    #[test]
    fn noise_free_analog_equals_exact(case in cases(), tile_rows in 1usize..20) {
        let spec = AnalogSpec { inp_bits: 22, out_bits: 22, out_bound: 32.0, out_noise: 0.0, w_noise: 0.0, tile_rows, seed: 0 };
        let want: Vec<f32> = case.fields().into_iter().map(|(_, p)| p.iter().map(|(a, w)| a * w).sum()).collect();
        let (input, weight) = case.tensors();
        let got = run(AnalogOp::new(spec, case.layer()).apply(&input, &weight));
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(&want) {
            prop_assert!((g - w).abs() <= 1e-4 * scale, "{} vs {} ({})", g, w, spec);
        }
    }
}

/// The analog reference, per output and tile, straight from the module docs (no
/// noise, so no generator to share).
fn analog_reference(case: &Case, spec: &AnalogSpec) -> Vec<f32> {
    let l_in = ((1u32 << (spec.inp_bits - 1)) - 1) as f32;
    let l_out = ((1u32 << (spec.out_bits - 1)) - 1) as f32;
    let fan_in = case.w_dims[1] * case.w_dims[2] * case.w_dims[3];
    case.fields()
        .into_iter()
        .map(|(_, pairs)| {
            let mut out = 0f32;
            for (t, tile) in pairs.chunks(spec.tile_rows).enumerate() {
                let rows = t * spec.tile_rows..(t * spec.tile_rows + tile.len()).min(fan_in);
                let omega = case
                    .weight
                    .chunks(fan_in)
                    .flat_map(|w| &w[rows.clone()])
                    .fold(0f32, |m, v| m.max(v.abs()));
                let alpha = tile.iter().fold(0f32, |m, (a, _)| m.max(a.abs()));
                if omega == 0.0 || alpha == 0.0 {
                    continue;
                }
                let y: f32 = tile
                    .iter()
                    .map(|(a, w)| (w / omega) * (a * (l_in / alpha)).round_ties_even())
                    .sum::<f32>()
                    / l_in;
                let level = (y.clamp(-spec.out_bound, spec.out_bound) * (l_out / spec.out_bound))
                    .round_ties_even();
                out += level * (spec.out_bound / l_out) * (alpha * omega);
            }
            out
        })
        .collect()
}

#[test]
fn analog_quantization_and_clipping_follow_the_reference() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let spec = AnalogSpec {
        inp_bits: 5,
        out_bits: 6,
        out_bound: 2.0,
        out_noise: 0.0,
        w_noise: 0.0,
        tile_rows: 7,
        seed: 0,
    };
    for _ in 0..32 {
        let case = cases().new_tree(&mut runner).unwrap().current();
        let want = analog_reference(&case, &spec);
        let (input, weight) = case.tensors();
        let got = run(AnalogOp::new(spec, case.layer()).apply(&input, &weight));
        // The GEMM sums in another order than the reference: a pre-ADC value within
        // float rounding of a level boundary may land one ADC step (times α·ω ≤
        // max|x|·max|w|) away, in each tile.
        let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let fan_in = case.w_dims[1] * case.w_dims[2] * case.w_dims[3];
        let tiles = fan_in.div_ceil(spec.tile_rows) as f32;
        let step = spec.out_bound / 31.0 * max_abs(&case.input) * max_abs(&case.weight);
        let mut off = 0;
        for (g, w) in got.iter().zip(&want) {
            if (g - w).abs() > 1e-5 * (1.0 + w.abs()) {
                off += 1;
                assert!((g - w).abs() <= 1.001 * step * tiles, "{g} vs {w}");
            }
        }
        assert!(
            off * 50 <= want.len().max(50),
            "{off} of {} outputs differ",
            want.len()
        );
    }
}

#[test]
fn analog_noise_is_seeded() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let case = cases()
        .prop_filter("some non-zero outputs", |c| {
            c.input.iter().any(|&x| x != 0.0) && c.weight.iter().any(|&x| x != 0.0)
        })
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let (input, weight) = case.tensors();
    let spec = AnalogSpec::default();
    let out = |spec: AnalogSpec, draw: u64| {
        run(AnalogOp::new(spec, case.layer())
            .with_draw(draw)
            .apply(&input, &weight))
    };
    assert_eq!(out(spec, 0), out(spec, 0), "same seed and draw, same bits");
    assert_ne!(out(spec, 0), out(spec, 1), "another draw, other noise");
    assert_ne!(
        out(spec, 0),
        out(AnalogSpec { seed: 7, ..spec }, 0),
        "another seed, other noise"
    );
}

#[test]
fn lut_file_gives_the_same_layer_as_the_design() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drum4.txt");
    let table = MulTable::from_design(Design::Drum(4), true);
    let mut text = String::new();
    for i in 0..256 {
        let row: Vec<String> = (0..256)
            .map(|j| {
                table
                    .product(i32::from(i as u8 as i8), i32::from(j as u8 as i8))
                    .to_string()
            })
            .collect();
        text.push_str(&row.join(","));
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let case = cases().new_tree(&mut runner).unwrap().current();
    let (input, weight) = case.tensors();
    let from_design = MultSpec {
        multiplier: Multiplier::Design(Design::Drum(4)),
        bits: 8,
        signed: true,
    };
    let from_file = MultSpec {
        multiplier: Multiplier::Lut(path),
        ..from_design.clone()
    };
    let a = run(MultOp::new(&from_design, case.layer())
        .unwrap()
        .apply(&input, &weight));
    let b = run(MultOp::new(&from_file, case.layer())
        .unwrap()
        .apply(&input, &weight));
    assert_eq!(a, b);
}

#[test]
fn linear_layers_match_their_conv_form() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let x = values(3 * 40, true)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let w = values(5 * 40, true)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let dev = Device::Cpu;
    let lin = (
        Tensor::from_vec(x.clone(), (3, 40), &dev).unwrap(),
        Tensor::from_vec(w.clone(), (5, 40), &dev).unwrap(),
    );
    let conv = (
        Tensor::from_vec(x, (3, 40, 1, 1), &dev).unwrap(),
        Tensor::from_vec(w, (5, 40, 1, 1), &dev).unwrap(),
    );
    for spec in ["mult:design=mitchell", "fxp", "analog:tile_rows=16"] {
        let spec: approx_hw::HwSpec = spec.parse().unwrap();
        let a = run(approx_hw::forward(&spec, Layer::Linear, &lin.0, &lin.1));
        let b = run(approx_hw::forward(
            &spec,
            Layer::Conv2d(Conv2dParams::default()),
            &conv.0,
            &conv.1,
        ));
        assert_eq!(a, b, "{spec}");
    }
}

#[test]
fn exact_gemm_path_is_exact_beyond_f32_integers() {
    // Fan-in 1100 with full-scale codes: sums beyond 2^24 take the f64 GEMM.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let x = values(2 * 1100, true)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let w = values(3 * 1100, true)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let x = Tensor::from_vec(x, (2, 1100), &Device::Cpu).unwrap();
    let w = Tensor::from_vec(w, (3, 1100), &Device::Cpu).unwrap();
    let spec = MultSpec::default();
    let op = MultOp::new(&spec, Layer::Linear).unwrap();
    let table = run(op
        .clone()
        .with_path(MultPath::Table(LookupIsa::Portable))
        .unwrap()
        .apply(&x, &w));
    let gemm = run(op.with_path(MultPath::ExactGemm).unwrap().apply(&x, &w));
    assert_eq!(table, gemm);
}
