//! The fixed-pattern error of a calibrated layer (see
//! [`crate::calibration::fit_with_fixed_pattern`]): one offset per output unit, added
//! to every sample, as a candle op whose gradient passes straight through.
//!
//! Why an op of its own: `y.broadcast_add(pattern)` is an addition of two tensors of
//! the output's shape in candle's graph, and candle's backward accumulates a gradient
//! for both, the broadcast constant included: a zeroed tensor of the output's size
//! and an addition into it, every step, for a gradient nothing reads. On an SC
//! `inject` step of TinyConv that was 6 % of the step.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::storage::f32_values;

/// `y + pattern` per sample: `y` is `[N, ...]`, `pattern` (a constant, f32) has `y`'s
/// shape without the batch dimension. The gradient with respect to `y` is the output
/// gradient; `pattern` gets none.
pub fn add_fixed_pattern(y: &Tensor, pattern: &Tensor) -> Result<Tensor> {
    check_fits(y.dims(), pattern.dims())?;
    y.apply_op2(pattern, AddFixedPattern)
}

/// An error unless a pattern of shape `pattern` fits outputs of shape `outputs` (the
/// outputs' shape without the batch dimension).
pub(crate) fn check_fits(outputs: &[usize], pattern: &[usize]) -> Result<()> {
    if outputs.get(1..) != Some(pattern) {
        return Err(candle_core::Error::Msg(format!(
            "a fixed pattern of shape {pattern:?} does not fit outputs of shape {outputs:?}"
        )));
    }
    Ok(())
}

/// `sample ← sample + pattern`, elementwise: one sample's outputs.
pub(crate) fn add_to_sample(sample: &mut [f32], pattern: &[f32]) {
    for (o, p) in sample.iter_mut().zip(pattern) {
        *o += p;
    }
}

/// The op of [`add_fixed_pattern`].
struct AddFixedPattern;

impl CustomOp2 for AddFixedPattern {
    fn name(&self) -> &'static str {
        "add-fixed-pattern"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        y_layout: &Layout,
        pattern: &CpuStorage,
        pattern_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y_values = f32_values(y, y_layout, "the fixed pattern's output")?;
        let pattern = f32_values(pattern, pattern_layout, "the fixed pattern")?;
        let mut out = y_values.into_owned();
        if !pattern.is_empty() {
            out.par_chunks_mut(pattern.len())
                .for_each(|sample| add_to_sample(sample, &pattern));
        }
        Ok((CpuStorage::F32(out), y_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _pattern: &Tensor,
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
    fn adds_per_sample_and_passes_the_gradient_to_the_input_alone() {
        let dev = Device::Cpu;
        let y = Var::from_vec((0..24).map(|i| i as f32).collect(), (2, 3, 4), &dev).unwrap();
        let pattern =
            Tensor::from_vec((0..12).map(|i| -0.5 * i as f32).collect(), (3, 4), &dev).unwrap();
        let sum = add_fixed_pattern(&y, &pattern).unwrap();
        let want = y.broadcast_add(&pattern.unsqueeze(0).unwrap()).unwrap();
        assert_eq!(
            sum.to_vec3::<f32>().unwrap(),
            want.to_vec3::<f32>().unwrap()
        );
        let r =
            Tensor::from_vec((0..24).map(|i| (i % 5) as f32).collect(), (2, 3, 4), &dev).unwrap();
        let grads = (sum * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            grads.get(&y).unwrap().to_vec3::<f32>().unwrap(),
            r.to_vec3::<f32>().unwrap()
        );
        assert!(grads.get(&pattern).is_none());
        let wrong = Tensor::zeros((4, 3), candle_core::DType::F32, &dev).unwrap();
        let e = add_fixed_pattern(&y, &wrong).unwrap_err().to_string();
        assert!(e.contains("[4, 3]") && e.contains("[2, 3, 4]"), "{e}");
    }
}
