//! The `fxp` layer kernel and candle op.

use candle_core::Tensor;
use rayon::prelude::*;

use super::spec::FxpSpec;
use crate::im2col::{im2col, scatter_outputs};
use crate::layer::{DenseKernel, Layer};
use crate::simd::with_avx2;
use crate::{ConvGeometry, Result};

/// The saturating accumulator of REX-SC's fixed-point baseline, for `p` operand bits
/// and an `acc_bits`-bit output: `pmax = min(31, max(2p, acc_bits))`,
/// `d = max(0, 2p − acc_bits)`, `MAX = ((2^pmax − 1) >> d) << d`. With `p ≤ 15` and
/// `acc_bits ≤ 30`, `pmax ≤ 30`, so a sum plus one product always fits in i32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accumulator {
    /// Low bits dropped after every addition.
    pub drop: u32,
    /// The saturation value before rounding.
    pub max: i32,
}

impl Accumulator {
    /// The accumulator of `spec`.
    pub fn new(spec: &FxpSpec) -> Self {
        let two_p = 2 * u32::from(spec.bits);
        let acc = u32::from(spec.acc_bits);
        let pmax = 31.min(two_p.max(acc));
        let drop = two_p.saturating_sub(acc);
        Self {
            drop,
            max: (((1i32 << pmax) - 1) >> drop) << drop,
        }
    }

    /// The largest value the accumulator can hold (its saturated state).
    pub fn ceiling(&self) -> i32 {
        saturating_add(self, self.max, 0)
    }
}

/// One accumulation step, `sat(acc + product)`: with `m = min(v, MAX)` and rounding
/// bit `r = (m >> max(0, d − 1)) mod 2`, the result is `((m >> d) + r) << d`.
#[inline]
pub fn saturating_add(acc: &Accumulator, sum: i32, product: i32) -> i32 {
    let m = (sum + product).min(acc.max);
    let r = (m >> acc.drop.saturating_sub(1)) & 1;
    ((m >> acc.drop) + r) << acc.drop
}

/// Operand code `rhe(clamp(v·Q, lo, hi))`.
#[inline]
fn code(v: f32, q: f32, lo: f32, hi: f32) -> i32 {
    let x = (v * q).clamp(lo, hi).round_ties_even();
    if x.is_nan() {
        0
    } else {
        x as i32
    }
}

/// `sums[g] = sat(sums[g] + a[g]·w)` for one weight over a run of pixels, with the
/// AVX2 instruction set when the CPU has it (the same integer ops either way; the
/// baseline x86-64 target has no vector i32 min).
fn accumulate(acc: &Accumulator, sums: &mut [i32], a: &[i32], w: i32) {
    with_avx2(
        #[inline(always)]
        || {
            for (s, &x) in sums.iter_mut().zip(a) {
                *s = saturating_add(acc, *s, x * w);
            }
        },
    );
}

/// Output pixels per work item.
const CHUNK: usize = 256;

/// An `fxp` layer (conv2d or linear) as a forward-only candle op.
#[derive(Debug, Clone, Copy)]
pub struct FxpOp {
    spec: FxpSpec,
    layer: Layer,
}

impl FxpOp {
    /// The op for `spec`.
    pub fn new(spec: FxpSpec, layer: Layer) -> Self {
        Self { spec, layer }
    }

    /// Runs the op.
    pub fn apply(&self, input: &Tensor, weight: &Tensor) -> Result<Tensor> {
        DenseKernel::apply(self, input, weight)
    }
}

impl DenseKernel for FxpOp {
    const NAME: &'static str = "fxp";

    fn layer(&self) -> Layer {
        self.layer
    }

    fn run(&self, geo: &ConvGeometry, input: &[f32], weight: &[f32]) -> Result<Vec<f32>> {
        let q = self.spec.scale();
        let top = q - 1.0;
        let acc = Accumulator::new(&self.spec);
        let acts: Vec<i32> = input.iter().map(|&x| code(x, q, 0.0, top)).collect();
        let pos: Vec<i32> = weight.iter().map(|&w| code(w, q, 0.0, top)).collect();
        let neg: Vec<i32> = weight.iter().map(|&w| -code(w, q, -top, 0.0)).collect();
        let fan_in = geo.fan_in();
        let pixels = geo.batch * geo.out_pixels();
        let chunks: Vec<(usize, Vec<f32>)> = (0..pixels.div_ceil(CHUNK))
            .into_par_iter()
            .map(|chunk| {
                let start = chunk * CHUNK;
                let len = CHUNK.min(pixels - start);
                let mut col = vec![0i32; fan_in * len];
                im2col(geo, &acts, start..start + len, &mut col);
                let mut values = Vec::with_capacity(geo.out_channels * len);
                let (mut acc_pos, mut acc_neg) = (vec![0i32; len], vec![0i32; len]);
                for o in 0..geo.out_channels {
                    acc_pos.fill(0);
                    acc_neg.fill(0);
                    for k in 0..fan_in {
                        let a = &col[k * len..(k + 1) * len];
                        // A zero product leaves every reachable accumulator state as
                        // it is, so zero weights are skipped.
                        for (sum, w) in [
                            (&mut acc_pos, pos[o * fan_in + k]),
                            (&mut acc_neg, neg[o * fan_in + k]),
                        ] {
                            if w != 0 {
                                accumulate(&acc, sum, a, w);
                            }
                        }
                    }
                    let scale = q * q;
                    values.extend(
                        acc_pos
                            .iter()
                            .zip(&acc_neg)
                            .map(|(&p, &n)| (p - n) as f32 / scale),
                    );
                }
                (start, values)
            })
            .collect();
        let mut out = vec![0f32; geo.batch * geo.out_channels * geo.out_pixels()];
        for (start, values) in chunks {
            let len = values.len() / geo.out_channels;
            scatter_outputs(geo, &values, (len, 1), start..start + len, &mut out);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulator_matches_the_spec_formulas() {
        // p = 5, acc_bits = 24: no dropped bits, MAX = 2^24 − 1, odd sums bumped.
        let acc = Accumulator::new(&FxpSpec::default());
        assert_eq!(
            acc,
            Accumulator {
                drop: 0,
                max: (1 << 24) - 1
            }
        );
        assert_eq!(saturating_add(&acc, 0, 3), 4);
        assert_eq!(saturating_add(&acc, 4, 4), 8);
        assert_eq!(saturating_add(&acc, (1 << 24) - 2, 5), 1 << 24);
        assert_eq!(acc.ceiling(), 1 << 24);
        // p = 8, acc_bits = 12: d = 4, round half up after every add.
        let acc = Accumulator::new(&FxpSpec {
            bits: 8,
            acc_bits: 12,
        });
        assert_eq!(acc.drop, 4);
        assert_eq!(acc.max, ((1 << 16) - 1) >> 4 << 4);
        assert_eq!(saturating_add(&acc, 0, 7), 0);
        assert_eq!(saturating_add(&acc, 0, 8), 16);
        assert_eq!(saturating_add(&acc, 16, 23), 32);
        assert_eq!(saturating_add(&acc, 0, 1 << 20), acc.max);
        // p = 15, acc_bits = 30: the widest accumulator; a full sum plus the largest
        // product stays below 2^31.
        let acc = Accumulator::new(&FxpSpec {
            bits: 15,
            acc_bits: 30,
        });
        assert_eq!(acc.ceiling(), 1 << 30);
        assert_eq!(saturating_add(&acc, 1 << 30, (1 << 15) - 1), 1 << 30);
    }
}
