//! Straight-through ops: a value computed one way, a gradient taken from another.

use candle_core::backend::BackendStorage;

use crate::storage::f32_values;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// REX-SC's activation and weight quantizer (`specs/sc-rexsc.md` §1.2 step A):
/// `clamp(round_half_even(x·2^p), −(2^p − 1), 2^p − 1) / 2^p`, identity gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantizer {
    /// Fraction bits p (7 in REX-SC: the 1/128 grid).
    pub bits: u32,
}

impl Quantizer {
    /// Quantizes `x` (f32), passing gradients straight through.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1(self)
    }
}

impl CustomOp1 for Quantizer {
    fn name(&self) -> &'static str {
        "ste-quantize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            return Err(candle_core::Error::Msg(format!(
                "quantize takes f32, got {:?}",
                storage.dtype()
            )));
        };
        let q = (1u32 << self.bits) as f32;
        let out = candle_core::cpu_backend::unary_map(data, layout, |v| {
            (v * q).round_ties_even().clamp(1.0 - q, q - 1.0) / q
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
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

impl StreamQuantizer {
    /// Quantizes `x` (f32), passing gradients straight through.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1(self)
    }
}

impl CustomOp1 for StreamQuantizer {
    fn name(&self) -> &'static str {
        "ste-stream-quantize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            return Err(candle_core::Error::Msg(format!(
                "stream quantize takes f32, got {:?}",
                storage.dtype()
            )));
        };
        let b = self.len as f32;
        let level = move |m: f32| (m * b).clamp(0.0, b - 1.0).ceil() / b;
        let out = if self.signed {
            candle_core::cpu_backend::unary_map(data, layout, |v| level(v.abs()).copysign(v))
        } else {
            candle_core::cpu_backend::unary_map(data, layout, level)
        };
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
    }
}

/// `accurate` mode's output: the forward value of `hardware` (bit-accurate, exactly),
/// the gradient of `surrogate`.
pub fn straight_through(surrogate: &Tensor, hardware: &Tensor) -> Result<Tensor> {
    surrogate.apply_op2(&hardware.detach(), StraightThrough)
}

#[derive(Debug, Clone, Copy)]
struct StraightThrough;

impl CustomOp2 for StraightThrough {
    fn name(&self) -> &'static str {
        "straight-through"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            return Err(candle_core::Error::Msg(format!(
                "straight-through: surrogate shape {:?} differs from hardware shape {:?}",
                l1.shape(),
                l2.shape()
            )));
        }
        let data = f32_values(s2, l2, "straight-through")?.into_owned();
        Ok((CpuStorage::F32(data), l2.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), None))
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
