//! Each kind's analytic error model: a smooth function of exact (float) partial sums
//! that captures the hardware's systematic behaviour. Training runs cheap exact ops
//! plus this function; its derivative is the gradient the bit-accurate forward lacks,
//! and what remains (bit-accurate output minus model) is calibrated and injected.

use crate::mult::MulTable;
use crate::sc::or_fn::{or_n, or_n_derivative, or_n_slices};
use crate::sc::Accumulation;
use crate::simd::with_avx2;
use crate::{HwSpec, Result};

/// Which exact partial sums an [`ErrorModel`] is applied to, and how its values add up
/// to the layer output `y`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PartialSums {
    /// The whole dot product `s = Σ x·w`: `y = model(s)`.
    Whole,
    /// Split-unipolar weights, `s± = Σ x·max(±w, 0)`: `y = model(s+) − model(s−)`.
    SplitWeights,
    /// Tiles of `rows` fan-in rows, each normalised by `scale_t = α_t·ω_t` (the
    /// tile's input abs-max and weight abs-max): `y = Σ_t scale_t · model(s_t /
    /// scale_t)`.
    Tiles {
        /// Fan-in rows per tile.
        rows: usize,
    },
}

/// The analytic error model of one hardware kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorModel {
    /// No systematic error: `model(s) = s` (`exact`, SC with exact accumulation).
    Identity,
    /// SC OR-n accumulation: `model(s) = f_n(s) = E[min(Poisson(s), n)]` on the
    /// split-unipolar sums (`specs/sc-rexsc.md` §5.1).
    OrN {
        /// Saturation level n.
        n: u8,
    },
    /// Approximate multipliers: `model(s) = gain·s`, the design's mean relative bias
    /// over the operand codes a layer uses, as a gain ([`MulTable::mean_gain`]).
    Gain {
        /// The gain.
        gain: f64,
    },
    /// Analog ADC saturation: each tile's normalised partial sum clamped to
    /// `±bound` (`out_bound`).
    TileClamp {
        /// Fan-in rows per tile.
        rows: usize,
        /// The ADC bound, normalised units.
        bound: f64,
    },
    /// Fixed-point saturation: `model(s) = min(s, limit)` on each polarity's sum,
    /// `limit` the accumulator's ceiling in value units.
    Saturate {
        /// The ceiling, value units.
        limit: f64,
    },
}

impl ErrorModel {
    /// The model of `spec` (for `mult:lut=PATH` this reads the table).
    pub fn for_spec(spec: &HwSpec) -> Result<Self> {
        Ok(match spec {
            HwSpec::Exact => ErrorModel::Identity,
            HwSpec::Sc(sc) => match sc.acc {
                Accumulation::Or(n) => ErrorModel::OrN { n },
                Accumulation::Exact => ErrorModel::Identity,
            },
            HwSpec::Mult(m) => ErrorModel::Gain {
                gain: MulTable::for_spec(m)?.mean_gain(m.act_max()),
            },
            HwSpec::Analog(a) => ErrorModel::TileClamp {
                rows: a.tile_rows,
                bound: f64::from(a.out_bound),
            },
            HwSpec::Fxp(x) => {
                let q = f64::from(x.scale());
                ErrorModel::Saturate {
                    limit: crate::fxp::Accumulator::new(x).ceiling() as f64 / (q * q),
                }
            }
        })
    }

    /// The partial sums the model applies to.
    pub fn partial_sums(&self) -> PartialSums {
        match *self {
            ErrorModel::Identity | ErrorModel::Gain { .. } => PartialSums::Whole,
            ErrorModel::OrN { .. } | ErrorModel::Saturate { .. } => PartialSums::SplitWeights,
            ErrorModel::TileClamp { rows, .. } => PartialSums::Tiles { rows },
        }
    }

    /// The model's value at partial sum `s`.
    pub fn value(&self, s: f64) -> f64 {
        match *self {
            ErrorModel::Identity => s,
            ErrorModel::OrN { n } => or_n(u32::from(n), s),
            ErrorModel::Gain { gain } => gain * s,
            ErrorModel::TileClamp { bound, .. } => s.clamp(-bound, bound),
            ErrorModel::Saturate { limit } => s.min(limit),
        }
    }

    /// The model's derivative at `s` (0 where it saturates).
    pub fn derivative(&self, s: f64) -> f64 {
        match *self {
            ErrorModel::Identity => 1.0,
            ErrorModel::OrN { n } => or_n_derivative(u32::from(n), s),
            ErrorModel::Gain { gain } => gain,
            ErrorModel::TileClamp { bound, .. } => f64::from(u8::from(s.abs() < bound)),
            ErrorModel::Saturate { limit } => f64::from(u8::from(s < limit)),
        }
    }

    /// [`ErrorModel::value`] and/or [`ErrorModel::derivative`] of every element of
    /// `s`, into `values` and `derivatives` where given (f32 in and out, each as long
    /// as `s`): the training surrogate's form, which evaluates OR-n several times
    /// faster and shares its work between the two (see [`or_n_slices`]).
    pub fn evaluate(&self, s: &[f32], values: Option<&mut [f32]>, derivatives: Option<&mut [f32]>) {
        if let ErrorModel::OrN { n } = *self {
            return or_n_slices(u32::from(n), s, values, derivatives);
        }
        // The other models elementwise through `value` and `derivative`, with the model
        // matched once per slice: in each arm the variant is known, so the loops
        // vectorise instead of matching per element.
        if let Some(out) = values {
            match *self {
                m @ ErrorModel::Gain { .. } => map_each(s, out, |v| m.value(v)),
                m @ ErrorModel::TileClamp { .. } => map_each(s, out, |v| m.value(v)),
                m @ ErrorModel::Saturate { .. } => map_each(s, out, |v| m.value(v)),
                m => map_each(s, out, |v| m.value(v)),
            }
        }
        if let Some(out) = derivatives {
            match *self {
                m @ ErrorModel::Gain { .. } => map_each(s, out, |v| m.derivative(v)),
                m @ ErrorModel::TileClamp { .. } => map_each(s, out, |v| m.derivative(v)),
                m @ ErrorModel::Saturate { .. } => map_each(s, out, |v| m.derivative(v)),
                m => map_each(s, out, |v| m.derivative(v)),
            }
        }
    }

    /// The model's prediction of a linear layer `[N, K] x [O, K]ᵀ` (dense, row-major),
    /// computed in plain loops: the reference that training's tensor version and
    /// `approx hw inspect` compare against.
    pub fn predict_linear(&self, input: &[f32], weight: &[f32], fan_in: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(input.len() / fan_in * weight.len() / fan_in);
        for x in input.chunks(fan_in) {
            for w in weight.chunks(fan_in) {
                let dot = |range: std::ops::Range<usize>, part: fn(f32) -> f32| -> f64 {
                    range.map(|k| f64::from(x[k]) * f64::from(part(w[k]))).sum()
                };
                let y = match self.partial_sums() {
                    PartialSums::Whole => self.value(dot(0..fan_in, |v| v)),
                    PartialSums::SplitWeights => {
                        self.value(dot(0..fan_in, |v| v.max(0.0)))
                            - self.value(dot(0..fan_in, |v| (-v).max(0.0)))
                    }
                    PartialSums::Tiles { rows } => (0..fan_in)
                        .step_by(rows)
                        .map(|r0| {
                            let r1 = (r0 + rows).min(fan_in);
                            let alpha = x[r0..r1].iter().fold(0f32, |m, v| m.max(v.abs()));
                            let omega = tile_weight_max(weight, fan_in, r0..r1);
                            let scale = f64::from(alpha) * f64::from(omega);
                            if scale == 0.0 {
                                0.0
                            } else {
                                scale * self.value(dot(r0..r1, |v| v) / scale)
                            }
                        })
                        .sum(),
                };
                out.push(y as f32);
            }
        }
        out
    }
}

/// The largest |w| of fan-in rows `rows` over all output channels.
fn tile_weight_max(weight: &[f32], fan_in: usize, rows: std::ops::Range<usize>) -> f32 {
    weight
        .chunks(fan_in)
        .flat_map(|w| &w[rows.clone()])
        .fold(0f32, |m, v| m.max(v.abs()))
}

/// `out[i] = f(s[i])` through f64, for every element (compiled for AVX2 where the CPU
/// has it).
#[inline(always)]
fn map_each(s: &[f32], out: &mut [f32], f: impl Fn(f64) -> f64) {
    with_avx2(
        #[inline(always)]
        || {
            for (o, &v) in out.iter_mut().zip(s) {
                *o = f(f64::from(v)) as f32;
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(spec: &str) -> ErrorModel {
        ErrorModel::for_spec(&spec.parse().unwrap()).unwrap()
    }

    #[test]
    fn each_kind_has_its_model() {
        assert_eq!(model("exact"), ErrorModel::Identity);
        assert_eq!(model("sc:acc=or3"), ErrorModel::OrN { n: 3 });
        assert_eq!(model("sc:acc=exact"), ErrorModel::Identity);
        let ErrorModel::Gain { gain } = model("mult:design=trunc8") else {
            panic!()
        };
        assert!(gain < 0.95, "{gain}");
        assert_eq!(model("mult").value(2.0), 2.0);
        assert_eq!(
            model("analog:tile_rows=64,out_bound=3").partial_sums(),
            PartialSums::Tiles { rows: 64 }
        );
        // fxp p = 5, 24-bit accumulator: ceiling 2^24 in units of 1/Q² = 2^-10.
        assert_eq!(model("fxp").value(1e9), 16384.0);
    }

    #[test]
    fn derivatives_match_finite_differences() {
        for spec in [
            "sc:acc=or2",
            "mult:design=mitchell",
            "analog:out_bound=2",
            "fxp:bits=4,acc_bits=8",
        ] {
            let m = model(spec);
            for s in [-3.0, -0.4, 0.3, 1.1, 2.5, 7.0] {
                let h = 1e-5;
                let fd = (m.value(s + h) - m.value(s - h)) / (2.0 * h);
                assert!(
                    (fd - m.derivative(s)).abs() < 1e-4,
                    "{spec} at {s}: {fd} vs {}",
                    m.derivative(s)
                );
            }
        }
    }

    #[test]
    fn tile_clamp_prediction_clips_each_tile() {
        // Two tiles of 2 rows; the first tile's normalised sum (1·1 + 1·1) / 1 = 2 is
        // clipped to 1.5, the second (0.5·1) is kept.
        let m = ErrorModel::TileClamp {
            rows: 2,
            bound: 1.5,
        };
        let y = m.predict_linear(&[1.0, 1.0, 0.5, 0.0], &[1.0, 1.0, 1.0, 1.0], 4);
        assert_eq!(y, vec![1.5 + 0.5]);
    }
}
