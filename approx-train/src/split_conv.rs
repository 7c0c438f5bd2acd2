//! A split-unipolar conv and its surrogate as one op: `surrogate.apply_split(
//! conv2d_polarities(x, w))` bit for bit, value and gradients, without the stacked
//! partial sums (twice the output's size) passing through candle's graph.
//!
//! As two ops, the graph holds the sums from the forward to the backward, the
//! surrogate's backward copies them to write their gradient, and candle accumulates
//! that gradient into a zeroed tensor of their size before the conv's backward reads
//! it: three passes over twice the output, every step, for nothing. Here the op runs
//! the surrogate on each image's sums as soon as the conv has computed them (in
//! cache), keeps their local derivatives in their place, and in backward multiplies
//! those by the output gradient: the error model is evaluated once per step, not once
//! in forward and again in backward.
//!
//! For its gradient alone ([`Output::GradientOnly`]) it keeps no sums at all and
//! returns zeros for its value. That serves where nothing reads the surrogate's value:
//! `accurate` mode, whose value is the bit-accurate kernel's, and the last hardware
//! layer of a recomputed block ([`crate::recompute`]), whose output only carries
//! gradients. The forward then costs nothing, and the backward computes the sums
//! image by image, each image's overwritten by its gradient before the next
//! ([`FastConv2d::recomputed_gradients`]), so the batch's sums never exist at once (on
//! a checkpointed VGG-16 step, as two ops, they made up six of the thirteen
//! output-sized tensors at the peak).

use std::sync::Mutex;

use approx_hw::Conv2dParams;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::alloc::zeros;
use crate::conv::FastConv2d;
use crate::fixed_pattern::{add_to_sample, check_fits};
use crate::ste::HardwareValue;
use crate::storage::{f32_values, read_f32};
use crate::surrogate::{split_shape, Output, Surrogate};

/// `surrogate.apply_split(conv2d_polarities(input, weight, params))` as one op (see
/// the module docs): its value and gradients, or with [`Output::GradientOnly`] zeros
/// of its output's shape for the value and the same gradients, holding only `input`
/// and `weight` for backward. A `fixed_pattern` (one sample's output shape) is added
/// to every sample's value, bit for bit as [`add_fixed_pattern`] would, without that
/// op's copy of the output in the graph and the zeroed gradient candle's backward
/// makes for it.
///
/// [`add_fixed_pattern`]: crate::fixed_pattern::add_fixed_pattern
pub fn split_surrogate_conv2d(
    input: &Tensor,
    weight: &Tensor,
    params: Conv2dParams,
    surrogate: Surrogate,
    output: Output,
    fixed_pattern: Option<&Tensor>,
) -> Result<Tensor> {
    input.apply_op2(
        weight,
        SplitSurrogateConv {
            fixed_pattern: fixed_pattern.cloned(),
            ..SplitSurrogateConv::new(params, surrogate, output)
        },
    )
}

/// `accurate` mode's layer output in one op: the value of `hardware` (the bit-accurate
/// output, read as a constant), the gradients of [`split_surrogate_conv2d`]'s
/// surrogate; the same as [`crate::ste::straight_through`] over that op with
/// [`Output::GradientOnly`], without the zeros it returns for a value nothing reads,
/// and without the straight-through op, whose input gradient candle's backward
/// accumulates into one more zeroed output-sized tensor.
pub fn split_surrogate_conv2d_straight_through(
    input: &Tensor,
    weight: &Tensor,
    params: Conv2dParams,
    surrogate: Surrogate,
    hardware: &Tensor,
) -> Result<Tensor> {
    input.apply_op2(
        weight,
        SplitSurrogateConv {
            hardware: Some(HardwareValue::new(hardware)),
            ..SplitSurrogateConv::new(params, surrogate, Output::GradientOnly)
        },
    )
}

/// `⟨split_surrogate_conv2d(input, weight, ..), seed⟩` as a scalar, for its gradients
/// alone (its value is zero): the op's backward starts from `seed` (the gradient of
/// the conv's output, of its shape) instead of an output gradient, so neither the
/// conv's output nor candle's zeroed gradient for it is ever made. For the last layer
/// of a recomputed checkpoint block ([`crate::recompute::BlockFn`]).
pub fn split_surrogate_conv2d_seeded(
    input: &Tensor,
    weight: &Tensor,
    params: Conv2dParams,
    surrogate: Surrogate,
    seed: &Tensor,
) -> Result<Tensor> {
    input.apply_op2(
        weight,
        SplitSurrogateConv {
            seed: Some(seed.detach()),
            ..SplitSurrogateConv::new(params, surrogate, Output::GradientOnly)
        },
    )
}

/// The gradients of [`split_surrogate_conv2d_seeded`]'s scalar, computed now, outside
/// candle's graph: the input's (when `with_input_grad`) and the weight's; `seed` is
/// dropped on return, before the caller goes on. For a recomputed block that runs its
/// ops' backwards itself ([`crate::recompute::Recomputed::Gradients`]).
pub fn split_surrogate_conv2d_seeded_gradients(
    input: &Tensor,
    weight: &Tensor,
    params: Conv2dParams,
    surrogate: Surrogate,
    seed: Tensor,
    with_input_grad: bool,
) -> Result<(Option<Tensor>, Tensor)> {
    let op = SplitSurrogateConv::new(params, surrogate, Output::GradientOnly);
    let (_, shape) = split_shape(&op.conv.output_shape(input.dims(), weight.shape())?)?;
    check_seed(&seed, &shape)?;
    let (dx, dw) = op.seeded_backward(input, weight, seed, with_input_grad)?;
    let dw = dw.ok_or_else(|| {
        candle_core::Error::Msg("split surrogate conv2d: no weight gradient".into())
    })?;
    Ok((dx, dw))
}

/// Checks that a seed has the conv's output shape.
fn check_seed(seed: &Tensor, shape: &Shape) -> Result<()> {
    if seed.shape() != shape {
        return Err(candle_core::Error::Msg(format!(
            "split surrogate conv2d: seed shape {:?} differs from output shape {shape:?}",
            seed.dims()
        )));
    }
    Ok(())
}

/// The op behind [`split_surrogate_conv2d`].
struct SplitSurrogateConv {
    conv: FastConv2d,
    surrogate: Surrogate,
    output: Output,
    /// Added to each sample's value.
    fixed_pattern: Option<Tensor>,
    /// With [`Output::GradientOnly`], the value to return instead of zeros.
    hardware: Option<HardwareValue>,
    /// With [`Output::GradientOnly`], the gradient of the output to start the backward
    /// from, in place of the output (see [`split_surrogate_conv2d_seeded`]).
    seed: Option<Tensor>,
    /// The local derivatives of the stacked sums, from the forward that computed
    /// them ([`Surrogate::split_image_keeping_local`]), until the backward turns them
    /// into the sums' gradient (a second backward recomputes the sums).
    local: Mutex<Option<Vec<f32>>>,
}

impl SplitSurrogateConv {
    /// The op without a fixed pattern or a hardware value.
    fn new(params: Conv2dParams, surrogate: Surrogate, output: Output) -> Self {
        Self {
            conv: FastConv2d::polarities(params),
            surrogate,
            output,
            fixed_pattern: None,
            hardware: None,
            seed: None,
            local: Mutex::new(None),
        }
    }
}

impl CustomOp2 for SplitSurrogateConv {
    fn name(&self) -> &'static str {
        "split-surrogate-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if self.output == Output::GradientOnly {
            let (_, shape) = split_shape(&self.conv.output_shape(l1.dims(), l2.shape())?)?;
            if let Some(seed) = &self.seed {
                check_seed(seed, &shape)?;
                return Ok((CpuStorage::F32(vec![0.0]), Shape::from(())));
            }
            let value = match &self.hardware {
                Some(hardware) => hardware.take(&shape)?,
                None => zeros(shape.elem_count()),
            };
            return Ok((CpuStorage::F32(value), shape));
        }
        let op = "the split surrogate conv2d";
        let (half, shape) = split_shape(&self.conv.output_shape(l1.dims(), l2.shape())?)?;
        if let Some(pattern) = &self.fixed_pattern {
            check_fits(shape.dims(), pattern.dims())?;
        }
        let pattern = self.fixed_pattern.as_ref().map(read_f32);
        let pattern = pattern
            .as_ref()
            .map(|p| p.values("the split surrogate conv2d's fixed pattern"))
            .transpose()?;
        let mut value = zeros(shape.elem_count());
        if value.is_empty() {
            return Ok((CpuStorage::F32(value), shape));
        }
        let (local, _) = self.conv.run_then(
            l1.dims(),
            &f32_values(s1, l1, op)?,
            l2.shape(),
            f32_values(s2, l2, op)?,
            value.par_chunks_mut(half).enumerate(),
            |sums, (n, value)| {
                self.surrogate.split_image_keeping_local(n, sums, value);
                if let Some(pattern) = &pattern {
                    add_to_sample(value, pattern);
                }
            },
        )?;
        *self.local.lock().unwrap_or_else(|e| e.into_inner()) = Some(local);
        Ok((CpuStorage::F32(value), shape))
    }

    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let kept = self.local.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut local) = kept {
            let g = read_f32(grad);
            let g = g.values("the split surrogate conv2d's backward")?;
            let (half, _) = split_shape(&self.conv.output_shape(input.dims(), weight.shape())?)?;
            Surrogate::split_backward_from_local(&mut local, &g, half);
            return self.conv.gradients(input, weight, &local);
        }
        let g = self.seed.as_ref().unwrap_or(grad).clone();
        self.seeded_backward(input, weight, g, input.track_op())
    }
}

impl SplitSurrogateConv {
    /// The gradients for the output gradient `g`, the sums recomputed image by image
    /// (see [`FastConv2d::recomputed_gradients`]).
    fn seeded_backward(
        &self,
        input: &Tensor,
        weight: &Tensor,
        g: Tensor,
        with_input_grad: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (half, _) = split_shape(&self.conv.output_shape(input.dims(), weight.shape())?)?;
        let values = read_f32(&g);
        let values = values.values("the split surrogate conv2d's backward")?;
        self.conv
            .recomputed_gradients(input, weight, with_input_grad, |n, sums| {
                self.surrogate
                    .split_backward(sums, &values[n * half..][..half], half)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::Calibration;
    use crate::fixed_pattern::add_fixed_pattern;
    use crate::surrogate::Injection;
    use approx_hw::ErrorModel;
    use candle_core::{Device, Var};

    /// The OR-2 surrogate without injection.
    fn or2() -> Surrogate {
        Surrogate {
            model: ErrorModel::OrN { n: 2 },
            injection: None,
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The value (or zeros, for the gradient alone) and both gradients equal the
    /// two-op form's bit for bit, with and without injected error and a fixed
    /// pattern, on odd shapes, strides and paddings, through either weight gradient
    /// (image groups, whole batch), with maps of more than one surrogate chunk; a
    /// second backward of the same forward (the sums then recomputed) too.
    #[test]
    fn value_and_gradients_equal_conv_then_split_surrogate() {
        let dev = Device::Cpu;
        let calibration = Calibration {
            bias: [0.01, -0.02, 0.003, 0.0, 0.0, 0.0],
            std: [0.02, 0.01, 0.0, 0.0, 0.0, 0.0],
            range: [0.0, 2.0],
        };
        let cases = [
            ([2, 3, 7, 6], [4, 3, 3, 3], (1, 1), (1, 1)),
            ([3, 5, 9, 9], [2, 5, 5, 3], (2, 1), (2, 0)),
            ([1, 16, 6, 5], [6, 16, 3, 3], (1, 1), (0, 2)),
            // Image groups with the input gradient as a conv (stride 1, 16 channels).
            ([9, 16, 8, 8], [3, 16, 3, 3], (1, 1), (1, 1)),
            // 130 x 129 outputs per channel: more than one surrogate chunk per image.
            ([2, 2, 130, 129], [1, 2, 3, 3], (1, 1), (1, 1)),
        ];
        for (i, (xs, ws, stride, padding)) in cases.into_iter().enumerate() {
            let x = Var::from_tensor(&Tensor::rand(0f32, 1.0, &xs, &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::rand(-0.5f32, 0.5, &ws, &dev).unwrap()).unwrap();
            let params = Conv2dParams { stride, padding };
            let cases = [None, Some(i as u64)].into_iter().flat_map(|seed| {
                [
                    (seed, Output::Value, false),
                    (seed, Output::Value, true),
                    (seed, Output::GradientOnly, false),
                ]
            });
            for (injection, output, with_pattern) in cases {
                let surrogate = Surrogate {
                    model: ErrorModel::OrN { n: 2 },
                    injection: injection.map(|seed| Injection { calibration, seed }),
                };
                let case = format!("case {i}, {injection:?}, {output:?}, pattern {with_pattern}");
                let mut two_ops = surrogate
                    .apply_split(&crate::conv::conv2d_polarities(&x, &w, params).unwrap())
                    .unwrap();
                let pattern = with_pattern
                    .then(|| Tensor::rand(-0.1f32, 0.1, &two_ops.dims()[1..], &dev).unwrap());
                if let Some(pattern) = &pattern {
                    two_ops = add_fixed_pattern(&two_ops, pattern).unwrap();
                }
                let fused =
                    split_surrogate_conv2d(&x, &w, params, surrogate, output, pattern.as_ref())
                        .unwrap();
                assert_eq!(fused.dims(), two_ops.dims(), "{case}");
                let bits = |t: &Tensor| values(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                match output {
                    Output::Value => assert_eq!(bits(&fused), bits(&two_ops), "{case}"),
                    Output::GradientOnly => {
                        assert!(values(&fused).iter().all(|&v| v == 0.0), "{case}")
                    }
                }
                let probe = Tensor::rand(-1f32, 1.0, two_ops.shape(), &dev).unwrap();
                let gradients = |y: &Tensor| {
                    let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    [&x, &w].map(|v| values(g.get(v).unwrap()))
                };
                let want = gradients(&two_ops);
                assert_eq!(gradients(&fused), want, "{case}");
                assert_eq!(gradients(&fused), want, "{case}, second backward");
            }
        }
    }

    /// The straight-through form's value is the hardware tensor's, bit for bit, and
    /// its gradients those of the op for the gradient alone, as are the seeded form's
    /// under the seed; a hardware tensor or seed of another shape is an error naming
    /// both shapes.
    #[test]
    fn straight_through_takes_the_hardware_value_and_the_surrogate_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::rand(0f32, 1.0, (3, 4, 7, 6), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::rand(-0.5f32, 0.5, (5, 4, 3, 3), &dev).unwrap()).unwrap();
        let (params, surrogate) = (Conv2dParams::new(1, 1), or2());
        let gradient_only =
            split_surrogate_conv2d(&x, &w, params, surrogate, Output::GradientOnly, None).unwrap();
        let hardware = Tensor::rand(-1f32, 1.0, gradient_only.shape(), &dev).unwrap();
        let fused =
            split_surrogate_conv2d_straight_through(&x, &w, params, surrogate, &hardware).unwrap();
        let bits = |t: &Tensor| values(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fused), bits(&hardware));
        let probe = Tensor::rand(-1f32, 1.0, hardware.shape(), &dev).unwrap();
        let gradients = |y: &Tensor| {
            let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            [&x, &w].map(|v| values(g.get(v).unwrap()))
        };
        assert_eq!(gradients(&fused), gradients(&gradient_only));
        let wrong = Tensor::zeros((3, 5, 7, 5), candle_core::DType::F32, &dev).unwrap();
        let e = split_surrogate_conv2d_straight_through(&x, &w, params, surrogate, &wrong)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[3, 5, 7, 6]") && e.contains("[3, 5, 7, 5]"),
            "{e}"
        );
        // The seeded form: a scalar with the gradients of the gradient-only op under
        // the seed.
        let seeded = split_surrogate_conv2d_seeded(&x, &w, params, surrogate, &probe).unwrap();
        assert_eq!(seeded.dims(), &[] as &[usize]);
        let g = seeded.backward().unwrap();
        let seeded_gradients = [&x, &w].map(|v| values(g.get(v).unwrap()));
        assert_eq!(seeded_gradients, gradients(&gradient_only));
        let e = split_surrogate_conv2d_seeded(&x, &w, params, surrogate, &wrong)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[3, 5, 7, 6]") && e.contains("[3, 5, 7, 5]"),
            "{e}"
        );
    }

    #[test]
    fn a_fixed_pattern_of_another_shape_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::rand(0f32, 1.0, (2, 3, 6, 6), &dev).unwrap();
        let w = Tensor::rand(-0.5f32, 0.5, (4, 3, 3, 3), &dev).unwrap();
        let (params, surrogate) = (Conv2dParams::new(1, 1), or2());
        let pattern = Tensor::zeros((4, 5, 6), candle_core::DType::F32, &dev).unwrap();
        let e = split_surrogate_conv2d(&x, &w, params, surrogate, Output::Value, Some(&pattern))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[4, 5, 6]") && e.contains("[2, 4, 6, 6]"), "{e}");
    }
}
