//! Straight-through ops: a value computed one way, a gradient taken from another.

use std::borrow::Cow;
use std::sync::Mutex;

use approx_hw::buffer::copied;
use approx_hw::simd::with_avx2;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::storage::{f32_values, read_f32};

/// An elementwise quantizer, applied as a straight-through op: its values forward,
/// the identity gradient backward.
pub trait Quantize: Copy + Send + Sync + 'static {
    /// The op's name in candle's graph.
    const NAME: &'static str;

    /// The quantized value of `v`.
    fn value(self, v: f32) -> f32;

    /// Quantizes `x` (f32), passing gradients straight through.
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1(StraightThroughMap(self))
    }
}

/// REX-SC's activation and weight quantizer (`specs/sc-rexsc.md` §1.2 step A):
/// `clamp(round_half_even(x·2^p), −(2^p − 1), 2^p − 1) / 2^p`, identity gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantizer {
    /// Fraction bits p (7 in REX-SC: the 1/128 grid).
    pub bits: u32,
}

impl Quantize for Quantizer {
    const NAME: &'static str = "ste-quantize";

    #[inline(always)]
    fn value(self, v: f32) -> f32 {
        let q = (1u32 << self.bits) as f32;
        clamp((v * q).round_ties_even(), 1.0 - q, q - 1.0) / q
    }
}

/// SC's stream quantization (`specs/sc-rexsc.md` §1.2 step C) with an identity
/// gradient: `ceil(clamp(v·B, 0, B − 1)) / B` for activations (negative values become
/// 0, as the hardware sees them) and the same on the magnitude, sign kept, for
/// weights. Values already on the 1/B grid pass unchanged, so the bit-accurate kernel
/// sees exactly what the surrogate sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamQuantizer {
    /// Stream length B.
    pub len: u32,
    /// Weights (sign kept) rather than activations.
    pub signed: bool,
}

impl Quantize for StreamQuantizer {
    const NAME: &'static str = "ste-stream-quantize";

    #[inline(always)]
    fn value(self, v: f32) -> f32 {
        let b = self.len as f32;
        let level = |m: f32| clamp(m * b, 0.0, b - 1.0).ceil() / b;
        if self.signed {
            level(v.abs()).copysign(v)
        } else {
            level(v)
        }
    }
}

/// `f32::clamp` without its check that `lo ≤ hi`, which kept the quantizers' loops
/// from vectorising (an SC operand quantizer took 5.7 ns per element on one core,
/// 0.9 ns vectorised); the same results, NaN included.
#[inline(always)]
fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

/// An SC layer's whole operand chain, the grid of [`Quantizer`] then
/// [`StreamQuantizer`], as one op: the same values as applying the two in turn, with
/// one tensor in the graph instead of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperandQuantizer {
    /// REX-SC's grid (§1.2 step A).
    pub grid: Quantizer,
    /// The stream levels (§1.2 step C).
    pub stream: StreamQuantizer,
}

impl Quantize for OperandQuantizer {
    const NAME: &'static str = "ste-operand-quantize";

    #[inline(always)]
    fn value(self, v: f32) -> f32 {
        self.stream.value(self.grid.value(v))
    }
}

/// Elements per parallel work unit of the quantizers.
const CHUNK: usize = 1 << 14;

/// The straight-through op of a [`Quantize`].
#[derive(Debug, Clone, Copy)]
struct StraightThroughMap<Q>(Q);

impl<Q: Quantize> CustomOp1 for StraightThroughMap<Q> {
    fn name(&self) -> &'static str {
        Q::NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = f32_values(storage, layout, Q::NAME)?;
        let q = self.0;
        let mut out = crate::alloc::zeros(data.len());
        out.par_chunks_mut(CHUNK)
            .zip(data.par_chunks(CHUNK))
            .for_each(|(out, data)| {
                // AVX2 brings SSE4.1's rounding instructions: no libm call per value.
                with_avx2(
                    #[inline(always)]
                    || {
                        for (o, &v) in out.iter_mut().zip(data) {
                            *o = q.value(v);
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
    }
}

/// `accurate` mode's output: the forward value of `hardware` (bit-accurate, exactly),
/// the gradient of `surrogate`. The graph holds `hardware` only until the forward has
/// copied it.
pub fn straight_through(surrogate: &Tensor, hardware: &Tensor) -> Result<Tensor> {
    surrogate.apply_op1(StraightThrough {
        hardware: HardwareValue::new(hardware),
    })
}

/// `accurate` mode's output value, held by a straight-through op until its one forward
/// takes it ([`HardwareValue::take`]), so that the graph does not hold the kernel's
/// output (one more output-sized tensor per layer) until the backward.
pub(crate) struct HardwareValue(Mutex<Option<Tensor>>);

impl HardwareValue {
    /// The bit-accurate output `hardware`, read as a constant.
    pub(crate) fn new(hardware: &Tensor) -> Self {
        Self(Mutex::new(Some(hardware.detach())))
    }

    /// The values, owned (copied by the pool), once they are checked to have the
    /// `surrogate`'s shape.
    pub(crate) fn take(&self, surrogate: &Shape) -> Result<Vec<f32>> {
        let hardware = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                candle_core::Error::Msg(
                    "a straight-through op ran its forward twice (its hardware value is gone)"
                        .into(),
                )
            })?;
        if surrogate != hardware.shape() {
            return Err(candle_core::Error::Msg(format!(
                "straight-through: surrogate shape {surrogate:?} differs from hardware shape {:?}",
                hardware.shape()
            )));
        }
        let values = read_f32(&hardware);
        Ok(match values.values("straight-through")? {
            Cow::Borrowed(values) => copied(values),
            Cow::Owned(values) => values,
        })
    }
}

/// The op behind [`straight_through`], on the surrogate.
struct StraightThrough {
    hardware: HardwareValue,
}

impl CustomOp1 for StraightThrough {
    fn name(&self) -> &'static str {
        "straight-through"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((
            CpuStorage::F32(self.hardware.take(l.shape())?),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn quantizer_rounds_half_even_and_clamps_with_identity_gradient() {
        let x = Var::from_slice(
            &[0.5f32 / 128.0, 1.5 / 128.0, 1.0, -2.0, 0.3],
            5,
            &Device::Cpu,
        )
        .unwrap();
        let y = Quantizer { bits: 7 }.apply(&x).unwrap();
        assert_eq!(
            y.to_vec1::<f32>().unwrap(),
            vec![
                0.0,
                2.0 / 128.0,
                127.0 / 128.0,
                -127.0 / 128.0,
                38.0 / 128.0
            ]
        );
        let g = (y * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec1::<f32>().unwrap(), vec![3.0; 5]);
    }

    /// The quantizers' op, over values around every level, equals their formulas
    /// written with `f32::clamp`, bit for bit (NaN as NaN).
    #[test]
    fn quantizer_ops_equal_their_formulas() {
        let mut values = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
        for k in -300..=300 {
            let v = k as f32 / 256.0;
            values.extend([v, v + 1e-4, v - 1e-4, v.next_up(), v.next_down()]);
        }
        let x = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
        let grid = |bits: u32, v: f32| {
            let q = (1u32 << bits) as f32;
            (v * q).round_ties_even().clamp(1.0 - q, q - 1.0) / q
        };
        let stream = |len: u32, signed: bool, v: f32| {
            let b = len as f32;
            let level = |m: f32| (m * b).clamp(0.0, b - 1.0).ceil() / b;
            if signed {
                level(v.abs()).copysign(v)
            } else {
                level(v)
            }
        };
        for (bits, len, signed) in [(7, 64, false), (7, 32, true), (4, 256, true), (1, 8, false)] {
            let op = OperandQuantizer {
                grid: Quantizer { bits },
                stream: StreamQuantizer { len, signed },
            };
            let got = op.apply(&x).unwrap().to_vec1::<f32>().unwrap();
            for (v, got) in values.iter().zip(got) {
                let want = stream(len, signed, grid(bits, *v));
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{op:?} of {v}: {got}, formula {want}"
                );
            }
        }
    }

    #[test]
    fn straight_through_takes_value_and_gradient_apart() {
        let x = Var::from_slice(&[1.0f32, 2.0], 2, &Device::Cpu).unwrap();
        let surrogate = (x.as_tensor() * 2.0).unwrap();
        let hardware = Tensor::new(&[5.0f32, -1.0], &Device::Cpu).unwrap();
        let y = straight_through(&surrogate, &hardware).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![5.0, -1.0]);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec1::<f32>().unwrap(), vec![2.0, 2.0]);
    }
}
