//! Split-unipolar weights (`specs/sc-rexsc.md` §1.1) as one op: a layer's signed
//! weights `w` (`[O, ...]`) as their positive part `max(w, 0)` stacked over their
//! negative part `max(−w, 0)` along the output channels (`[2O, ...]`), so that one
//! conv computes both polarities' partial sums.
//!
//! The value and gradient are those of `cat([relu(w), relu(−w)])` under candle's
//! autograd (whose `relu′` is 1 at 0), bit for bit; the graph holds one tensor instead
//! of five (the negation, both ReLUs, their concatenation) and backward writes the
//! weight gradient in one pass instead of narrowing, masking and summing.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::storage::{f32_values, read_f32};

/// `[max(w, 0); max(−w, 0)]` stacked along dimension 0.
pub fn split_polarities(w: &Tensor) -> Result<Tensor> {
    w.apply_op1(SplitPolarities)
}

/// Elements per parallel work unit.
const CHUNK: usize = 1 << 14;

#[derive(Debug, Clone, Copy)]
struct SplitPolarities;

/// The stacked shape `[2O, ...]` of `[O, ...]`.
pub(crate) fn stacked(shape: &Shape) -> Result<Shape> {
    let mut dims = shape.dims().to_vec();
    let Some(first) = dims.first_mut() else {
        return Err(candle_core::Error::Msg(
            "split polarities takes weights with an output dimension, got a scalar".into(),
        ));
    };
    *first *= 2;
    Ok(Shape::from(dims))
}

impl CustomOp1 for SplitPolarities {
    fn name(&self) -> &'static str {
        "split-polarities"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = stacked(layout.shape())?;
        let w = f32_values(storage, layout, "split polarities")?;
        Ok((CpuStorage::F32(split_values(&w)), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = "the split polarities' backward";
        let (w, g) = (read_f32(arg), read_f32(grad));
        let d = fold_gradient(&w.values(op)?, &g.values(op)?);
        Tensor::from_vec(d, arg.shape(), arg.device()).map(Some)
    }
}

/// The values of [`split_polarities`] on a flat weight `w`: `max(w, 0)` followed by
/// `max(−w, 0)` (twice `w`'s length).
pub(crate) fn split_values(w: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; 2 * w.len()];
    let (pos, neg) = out.split_at_mut(w.len());
    pos.par_chunks_mut(CHUNK)
        .zip(neg.par_chunks_mut(CHUNK))
        .zip(w.par_chunks(CHUNK))
        .for_each(|((pos, neg), w)| {
            for ((p, n), &v) in pos.iter_mut().zip(neg.iter_mut()).zip(w) {
                *p = v.max(0.0);
                *n = (-v).max(0.0);
            }
        });
    out
}

/// The gradient of [`split_polarities`] at the flat weight `w` for the stacked
/// gradient `g` (twice `w`'s length): `g₊·[w ≥ 0] − g₋·[−w ≥ 0]`, candle's ReLU
/// gradient on each half.
pub(crate) fn fold_gradient(w: &[f32], g: &[f32]) -> Vec<f32> {
    let (g_pos, g_neg) = g.split_at(w.len());
    let mut d = vec![0f32; w.len()];
    d.par_chunks_mut(CHUNK)
        .zip(w.par_chunks(CHUNK))
        .zip(g_pos.par_chunks(CHUNK).zip(g_neg.par_chunks(CHUNK)))
        .for_each(|((d, w), (gp, gn))| {
            for (((d, &v), &gp), &gn) in d.iter_mut().zip(w).zip(gp).zip(gn) {
                let mask = |x: f32| if x >= 0.0 { 1.0f32 } else { 0.0 };
                *d = gp * mask(v) - gn * mask(-v);
            }
        });
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Value and gradient equal candle's `cat([relu(w), relu(−w)])` bit for bit, zeros
    /// (of both signs) included, on a transposed (strided) weight too.
    #[test]
    fn equals_the_relu_construction_in_value_and_gradient() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut data: Vec<f32> = (0..5 * 3 * 3 * 2)
            .map(|_| rng.random_range(-1.0..1.0f32))
            .collect();
        data[0] = 0.0;
        data[1] = -0.0;
        data[7] = 0.0;
        let w = Var::from_vec(data, (5, 3, 3, 2), &Device::Cpu).unwrap();
        let r: Vec<f32> = (0..10 * 18)
            .map(|_| rng.random_range(-2.0..2.0f32))
            .collect();
        for transposed in [false, true] {
            let wt = if transposed {
                w.as_tensor().transpose(2, 3).unwrap()
            } else {
                w.as_tensor().clone()
            };
            let dims = wt.dims().to_vec();
            let r = Tensor::from_slice(&r, (10, dims[1], dims[2], dims[3]), &Device::Cpu).unwrap();
            let reference =
                Tensor::cat(&[wt.relu().unwrap(), wt.neg().unwrap().relu().unwrap()], 0).unwrap();
            let fused = split_polarities(&wt).unwrap();
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(values(&fused), values(&reference));
            let grad = |y: Tensor| {
                let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                values(g.get(&w).unwrap())
            };
            let (got, want) = (grad(fused), grad(reference));
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "transposed: {transposed}"
            );
        }
        assert!(split_polarities(&Tensor::new(1f32, &Device::Cpu).unwrap()).is_err());
    }
}
