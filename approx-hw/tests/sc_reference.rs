//! The fast SC kernels against a slow, obviously-correct model written straight from
//! the spec's pseudocode (`specs/sc-rexsc.md` §3.4b): one bit at a time, one cycle at
//! a time, with its own LFSR. Both instruction sets, random shapes, strides, paddings,
//! stream lengths, accumulations and generators, on sparse post-activation-like data
//! (many zeros, small values) that does not saturate OR-n.

use approx_hw::sc::stream::{Operand, StreamGenerator};
use approx_hw::sc::{Accumulation, Generator, Isa, ScOp, ScSpec};
use approx_hw::Conv2dParams;
use candle_core::{Device, Tensor};
use proptest::prelude::*;

/// REX-SC LFSR step, written out independently of the library.
fn lfsr_next(l: u32, xnor: bool, s: u32) -> u32 {
    let taps: &[u32] = match l {
        3 => &[2, 1],
        4 => &[3, 2],
        5 => &[4, 2],
        6 => &[5, 4],
        7 => &[6, 5],
        8 => &[7, 5, 4, 3],
        _ => unreachable!(),
    };
    let mut fb = 0;
    for t in taps {
        fb ^= (s >> t) & 1;
    }
    if xnor {
        fb ^= 1;
    }
    2 * (s % (1 << (l - 1))) + fb
}

fn quantize(x: f32, b: usize) -> u32 {
    (x * b as f32).clamp(0.0, (b - 1) as f32).ceil() as u32
}

/// The B bits of one stream: `value > state_t`, state stepped before each comparison.
fn stream_bits(
    spec: &ScSpec,
    value: u32,
    seed_index: usize,
    operand: Operand,
    element: u64,
) -> Vec<bool> {
    let b = spec.stream_len();
    match spec.gen {
        Generator::Random { seed } => (0..b)
            .map(|t| value > StreamGenerator::random_threshold(seed, operand, element, t, b))
            .collect(),
        gen => {
            let xnor = gen == Generator::LfsrXnor;
            let period = b - 1;
            let mut state = (seed_index % period + usize::from(!xnor)) as u32;
            (0..b)
                .map(|_| {
                    state = lfsr_next(spec.log2_len, xnor, state);
                    value > state
                })
                .collect()
        }
    }
}

fn saturate(count: u32, acc: Accumulation) -> u32 {
    match acc {
        Accumulation::Or(n) => count.min(u32::from(n)),
        Accumulation::Exact => count,
    }
}

/// Reference conv: P and N counts, NCHW, from contiguous NCHW input and OIHW weight.
#[allow(clippy::too_many_arguments)]
fn reference_conv(
    input: &[f32],
    [n_img, c_in, h, w]: [usize; 4],
    weight: &[f32],
    [o_out, _, kh, kw]: [usize; 4],
    (sy, sx): (usize, usize),
    (ph, pw): (usize, usize),
    spec: &ScSpec,
) -> (Vec<u32>, Vec<u32>) {
    let b = spec.stream_len();
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let (oh, ow) = ((hp - kh) / sy + 1, (wp - kw) / sx + 1);
    // Activation bits over the padded input, [n][c][y][x][t].
    let mut abit = vec![false; n_img * c_in * hp * wp * b];
    for n in 0..n_img {
        for c in 0..c_in {
            for y in 0..hp {
                for x in 0..wp {
                    let inside = y >= ph && y < h + ph && x >= pw && x < w + pw;
                    let v = if inside {
                        quantize(input[((n * c_in + c) * h + y - ph) * w + x - pw], b)
                    } else {
                        0
                    };
                    let element = if inside {
                        (((n * c_in + c) * h + y - ph) * w + x - pw) as u64
                    } else {
                        0
                    };
                    let bits =
                        stream_bits(spec, v, c * hp * wp + y * wp + x, Operand::Input, element);
                    let at = (((n * c_in + c) * hp + y) * wp + x) * b;
                    abit[at..at + b].copy_from_slice(&bits);
                }
            }
        }
    }
    // Weight bits, [o][c][i][j][t] per polarity.
    let mut pbit = vec![false; o_out * c_in * kh * kw * b];
    let mut nbit = pbit.clone();
    for o in 0..o_out {
        for c in 0..c_in {
            for i in 0..kh {
                for j in 0..kw {
                    let e = ((o * c_in + c) * kh + i) * kw + j;
                    let seed = 13 + c * kh * kw + i * kw + j;
                    let vp = quantize(weight[e], b);
                    let vn = quantize(-weight[e], b);
                    pbit[e * b..(e + 1) * b].copy_from_slice(&stream_bits(
                        spec,
                        vp,
                        seed,
                        Operand::Weight,
                        e as u64,
                    ));
                    nbit[e * b..(e + 1) * b].copy_from_slice(&stream_bits(
                        spec,
                        vn,
                        seed,
                        Operand::Weight,
                        e as u64,
                    ));
                }
            }
        }
    }
    let mut pos = vec![0; n_img * o_out * oh * ow];
    let mut neg = pos.clone();
    for n in 0..n_img {
        for o in 0..o_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut pc, mut nc) = (0, 0);
                    for t in 0..b {
                        let (mut cp, mut cn) = (0, 0);
                        for c in 0..c_in {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let a = abit[(((n * c_in + c) * hp + oy * sy + i) * wp
                                        + ox * sx
                                        + j)
                                        * b
                                        + t];
                                    let e = ((o * c_in + c) * kh + i) * kw + j;
                                    cp += u32::from(a && pbit[e * b + t]);
                                    cn += u32::from(a && nbit[e * b + t]);
                                }
                            }
                        }
                        pc += saturate(cp, spec.acc);
                        nc += saturate(cn, spec.acc);
                    }
                    let at = ((n * o_out + o) * oh + oy) * ow + ox;
                    pos[at] = pc;
                    neg[at] = nc;
                }
            }
        }
    }
    (pos, neg)
}

/// Reference linear layer from the linear pseudocode: input seeds `k`, weight seeds
/// `13 + k`, one stream per element.
#[allow(clippy::needless_range_loop)]
fn reference_linear(
    input: &[f32],
    n_rows: usize,
    weight: &[f32],
    o_out: usize,
    k_in: usize,
    spec: &ScSpec,
) -> (Vec<u32>, Vec<u32>) {
    let b = spec.stream_len();
    let mut pos = vec![0; n_rows * o_out];
    let mut neg = pos.clone();
    for n in 0..n_rows {
        let abits: Vec<Vec<bool>> = (0..k_in)
            .map(|k| {
                stream_bits(
                    spec,
                    quantize(input[n * k_in + k], b),
                    k,
                    Operand::Input,
                    (n * k_in + k) as u64,
                )
            })
            .collect();
        for o in 0..o_out {
            let (mut pc, mut nc) = (0, 0);
            let wbits: Vec<(Vec<bool>, Vec<bool>)> = (0..k_in)
                .map(|k| {
                    let e = o * k_in + k;
                    (
                        stream_bits(
                            spec,
                            quantize(weight[e], b),
                            13 + k,
                            Operand::Weight,
                            e as u64,
                        ),
                        stream_bits(
                            spec,
                            quantize(-weight[e], b),
                            13 + k,
                            Operand::Weight,
                            e as u64,
                        ),
                    )
                })
                .collect();
            for t in 0..b {
                let cp = (0..k_in).filter(|&k| abits[k][t] && wbits[k].0[t]).count() as u32;
                let cn = (0..k_in).filter(|&k| abits[k][t] && wbits[k].1[t]).count() as u32;
                pc += saturate(cp, spec.acc);
                nc += saturate(cn, spec.acc);
            }
            pos[n * o_out + o] = pc;
            neg[n * o_out + o] = nc;
        }
    }
    (pos, neg)
}

/// Post-activation-like inputs: about half zeros, the rest small multiples of 1/128;
/// or uniform in [0, 1).
fn input_values(len: usize, sparse: bool) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec((any::<bool>(), 1u32..24, 0.0f32..1.0), len).prop_map(move |v| {
        v.into_iter()
            .map(|(zero, k, u)| {
                if !sparse {
                    u
                } else if zero {
                    0.0
                } else {
                    k as f32 / 128.0
                }
            })
            .collect()
    })
}

/// Weights skewed small, both signs, on the 1/128 grid; or uniform in [−1, 1).
fn weight_values(len: usize, sparse: bool) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec((-20i32..20, -1.0f32..1.0), len).prop_map(move |v| {
        v.into_iter()
            .map(|(k, u)| if sparse { k as f32 / 128.0 } else { u })
            .collect()
    })
}

fn any_spec() -> impl Strategy<Value = ScSpec> {
    (
        3u32..=8,
        prop_oneof![
            Just(Accumulation::Or(1)),
            Just(Accumulation::Or(2)),
            Just(Accumulation::Or(3)),
            Just(Accumulation::Or(4)),
            Just(Accumulation::Or(8)),
            (5u8..=16).prop_map(Accumulation::Or),
            Just(Accumulation::Exact)
        ],
        prop_oneof![
            Just(Generator::LfsrXnor),
            Just(Generator::LfsrXor),
            any::<u64>().prop_map(|seed| Generator::Random { seed })
        ],
    )
        .prop_map(|(log2_len, acc, gen)| ScSpec { log2_len, acc, gen })
}

#[derive(Debug, Clone)]
struct ConvCase {
    spec: ScSpec,
    input_shape: [usize; 4],
    weight_shape: [usize; 4],
    stride: (usize, usize),
    padding: (usize, usize),
    input: Vec<f32>,
    weight: Vec<f32>,
    transposed_input: bool,
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        any_spec(),
        (1usize..=2, 1usize..=9, 1usize..=7, 1usize..=7, 1usize..=5),
        (
            1usize..=4,
            1usize..=4,
            1usize..=2,
            1usize..=2,
            0usize..=2,
            0usize..=2,
        ),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_filter(
            "kernel fits the padded input",
            |(_, (_, _, h, w, _), (kh, kw, _, _, ph, pw), _, _)| {
                kh <= &(h + 2 * ph) && kw <= &(w + 2 * pw)
            },
        )
        .prop_flat_map(
            |(spec, (n, c, h, w, o), (kh, kw, sy, sx, ph, pw), sparse, transposed_input)| {
                (
                    input_values(n * c * h * w, sparse),
                    weight_values(o * c * kh * kw, sparse),
                )
                    .prop_map(move |(input, weight)| ConvCase {
                        spec,
                        input_shape: [n, c, h, w],
                        weight_shape: [o, c, kh, kw],
                        stride: (sy, sx),
                        padding: (ph, pw),
                        input,
                        weight,
                        transposed_input,
                    })
            },
        )
}

fn run_counts(op: ScOp, input: &Tensor, weight: &Tensor) -> (Vec<u32>, Vec<u32>) {
    let both = input.apply_op2_no_bwd(weight, &op.with_counts()).unwrap();
    let pos = both
        .get(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let neg = both
        .get(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (pos, neg)
}

fn isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(Isa::is_supported)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn conv_equals_reference(case in conv_case()) {
        let (expect_p, expect_n) = reference_conv(
            &case.input, case.input_shape, &case.weight, case.weight_shape, case.stride, case.padding, &case.spec,
        );
        let [n, c, h, w] = case.input_shape;
        let input = if case.transposed_input {
            // Same values, stored NCWH: a strided, non-contiguous view.
            let mut t = vec![0.0f32; case.input.len()];
            for i in 0..n * c { for y in 0..h { for x in 0..w { t[(i * w + x) * h + y] = case.input[(i * h + y) * w + x]; } } }
            Tensor::from_vec(t, (n, c, w, h), &Device::Cpu).unwrap().transpose(2, 3).unwrap()
        } else {
            Tensor::from_vec(case.input.clone(), (n, c, h, w), &Device::Cpu).unwrap()
        };
        let weight = Tensor::from_vec(case.weight.clone(), case.weight_shape.to_vec(), &Device::Cpu).unwrap();
        let params = Conv2dParams { stride: case.stride, padding: case.padding };
        for isa in isas() {
            let (p, q) = run_counts(ScOp::conv2d(case.spec, params).with_isa(isa), &input, &weight);
            prop_assert_eq!(&p, &expect_p, "P, {:?}, {}", isa, case.spec);
            prop_assert_eq!(&q, &expect_n, "N, {:?}, {}", isa, case.spec);
            let value: Vec<f32> = input
                .apply_op2_no_bwd(&weight, &ScOp::conv2d(case.spec, params).with_isa(isa))
                .unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let b = case.spec.stream_len() as f32;
            for (i, v) in value.iter().enumerate() {
                prop_assert_eq!(*v, (p[i] as f32 - q[i] as f32) / b);
            }
        }
    }

    #[test]
    fn linear_equals_reference(
        spec in any_spec(),
        (n, o, k) in (1usize..=4, 1usize..=5, 1usize..=70),
        sparse in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u32 };
        let input: Vec<f32> = (0..n * k).map(|_| { let r = next(); if sparse && r % 2 == 0 { 0.0 } else { (r % 40) as f32 / 128.0 } }).collect();
        let weight: Vec<f32> = (0..o * k).map(|_| (next() % 61) as f32 / 128.0 - 30.0 / 128.0).collect();
        let (expect_p, expect_n) = reference_linear(&input, n, &weight, o, k, &spec);
        let input = Tensor::from_vec(input, (n, k), &Device::Cpu).unwrap();
        let weight = Tensor::from_vec(weight, (o, k), &Device::Cpu).unwrap();
        for isa in isas() {
            let (p, q) = run_counts(ScOp::linear(spec).with_isa(isa), &input, &weight);
            prop_assert_eq!(&p, &expect_p, "P, {:?}, {}", isa, spec);
            prop_assert_eq!(&q, &expect_n, "N, {:?}, {}", isa, spec);
        }
    }
}

/// The sparse data really exercises OR-n: most outputs are far from saturation, so
/// the equality checks above are not vacuous.
#[test]
fn sparse_data_does_not_saturate() {
    let spec = ScSpec {
        log2_len: 6,
        acc: Accumulation::Or(2),
        gen: Generator::LfsrXnor,
    };
    let (n, c, h, w, o) = (2, 8, 6, 6, 4);
    let input: Vec<f32> = (0..n * c * h * w)
        .map(|i| {
            if i % 2 == 0 {
                0.0
            } else {
                (i % 24) as f32 / 128.0
            }
        })
        .collect();
    let weight: Vec<f32> = (0..o * c * 9)
        .map(|i| ((i * 7) % 40) as f32 / 128.0 - 20.0 / 128.0)
        .collect();
    let (p, q) = reference_conv(
        &input,
        [n, c, h, w],
        &weight,
        [o, c, 3, 3],
        (1, 1),
        (1, 1),
        &spec,
    );
    let full = 2 * 64;
    let unsaturated = p.iter().chain(&q).filter(|&&x| x > 0 && x < full).count();
    assert!(
        unsaturated * 4 > 3 * p.len() * 2,
        "{unsaturated} of {} counts unsaturated",
        2 * p.len()
    );
    let input = Tensor::from_vec(input, (n, c, h, w), &Device::Cpu).unwrap();
    let weight = Tensor::from_vec(weight, (o, c, 3, 3), &Device::Cpu).unwrap();
    for isa in isas() {
        assert_eq!(
            run_counts(
                ScOp::conv2d(spec, Conv2dParams::new(1, 1)).with_isa(isa),
                &input,
                &weight
            ),
            (p.clone(), q.clone())
        );
    }
}

/// OR-n never exceeds n·B, exact equals the float dot product of the stream integers in
/// expectation; a wrong dtype or channel count is an error, not a panic.
#[test]
fn errors_are_reported() {
    let spec = ScSpec::default();
    let a = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((2, 4, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = approx_hw::sc::conv2d(&a, &w, &spec, Conv2dParams::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("4 input channels") && err.contains("has 3"),
        "{err}"
    );
    let w = Tensor::zeros((2, 3, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = approx_hw::sc::conv2d(&a, &w, &spec, Conv2dParams::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than the padded input"), "{err}");
    let w = Tensor::zeros((2, 3, 3, 3), candle_core::DType::F64, &Device::Cpu).unwrap();
    let err = approx_hw::sc::conv2d(&a, &w, &spec, Conv2dParams::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("weight must be f32"), "{err}");
    let err = approx_hw::sc::linear(&a, &a, &spec)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank 2"), "{err}");
}
