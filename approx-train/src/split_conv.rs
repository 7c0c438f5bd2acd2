//! A split-unipolar conv's surrogate for its gradient alone, as one op that keeps no
//! partial sums: the gradients of `surrogate.apply_split(conv2d_polarities(x, w))`,
//! bit for bit, with the stacked sums (twice the output's size) computed in backward,
//! and zeros for its value.
//!
//! It serves where nothing reads the surrogate's value: `accurate` mode, whose value
//! is the bit-accurate kernel's, and the last hardware layer of a recomputed block
//! ([`crate::recompute`]), whose output only carries gradients. The forward then costs
//! nothing (the two-op form computes both polarities' GEMM and the error model for a
//! value that is thrown away), and the backward computes the sums image by image,
//! each image's overwritten by its gradient before the next
//! ([`FastConv2d::recomputed_gradients`]), so the batch's sums never exist at once:
//! as two ops the graph holds them from the forward to the backward, and candle
//! builds their gradient as a zero tensor plus the op's (on a checkpointed VGG-16 step
//! they made up six of the thirteen output-sized tensors at the peak).

use approx_hw::Conv2dParams;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use crate::conv::FastConv2d;
use crate::storage::read_f32;
use crate::surrogate::{split_shape, Surrogate};

/// The gradients of `surrogate.apply_split(conv2d_polarities(input, weight, params))`
/// with zeros of its output's shape for the value, holding only `input` and `weight`
/// for backward (see the module docs).
pub fn split_surrogate_conv2d(
    input: &Tensor,
    weight: &Tensor,
    params: Conv2dParams,
    surrogate: Surrogate,
) -> Result<Tensor> {
    input.apply_op2(
        weight,
        RecomputedSplitConv {
            conv: FastConv2d::polarities(params),
            surrogate,
        },
    )
}

/// The op behind [`split_surrogate_conv2d`].
struct RecomputedSplitConv {
    conv: FastConv2d,
    surrogate: Surrogate,
}

impl CustomOp2 for RecomputedSplitConv {
    fn name(&self) -> &'static str {
        "split-surrogate-conv2d"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, shape) = split_shape(&self.conv.output_shape(l1.dims(), l2.shape())?)?;
        Ok((CpuStorage::F32(vec![0f32; shape.elem_count()]), shape))
    }

    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = read_f32(grad);
        let g = g.values("the split surrogate conv2d's backward")?;
        let (half, _) = split_shape(&self.conv.output_shape(input.dims(), weight.shape())?)?;
        self.conv.recomputed_gradients(input, weight, |n, sums| {
            self.surrogate
                .split_backward(sums, &g[n * half..][..half], half)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::Calibration;
    use crate::surrogate::Injection;
    use approx_hw::ErrorModel;
    use candle_core::{Device, Var};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Both gradients equal the two-op form's bit for bit, with and without injected
    /// error, on odd shapes, strides and paddings, through either weight gradient
    /// (image groups, whole batch); the value is zeros of its shape.
    #[test]
    fn gradients_equal_conv_then_split_surrogate() {
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
        ];
        for (i, (xs, ws, stride, padding)) in cases.into_iter().enumerate() {
            let x = Var::from_tensor(&Tensor::rand(0f32, 1.0, &xs, &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::rand(-0.5f32, 0.5, &ws, &dev).unwrap()).unwrap();
            let params = Conv2dParams { stride, padding };
            for injection in [
                None,
                Some(Injection {
                    calibration,
                    seed: i as u64,
                }),
            ] {
                let surrogate = Surrogate {
                    model: ErrorModel::OrN { n: 2 },
                    injection,
                };
                let two_ops = surrogate
                    .apply_split(&crate::conv::conv2d_polarities(&x, &w, params).unwrap())
                    .unwrap();
                let fused = split_surrogate_conv2d(&x, &w, params, surrogate).unwrap();
                assert_eq!(fused.dims(), two_ops.dims(), "case {i}");
                assert!(values(&fused).iter().all(|&v| v == 0.0), "case {i}");
                let probe = Tensor::rand(-1f32, 1.0, two_ops.shape(), &dev).unwrap();
                let g_two = (two_ops * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let g_fused = (fused * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                for v in [&x, &w] {
                    assert_eq!(
                        values(g_fused.get(v).unwrap()),
                        values(g_two.get(v).unwrap()),
                        "case {i}"
                    );
                }
            }
        }
    }
}
