//! The float conv2d of every training layer: im2col + GEMM forward and both backward
//! passes, as one candle op. candle's own CPU conv2d is several times slower, and
//! its backward (a direct `conv_transpose2d` loop) slower still; approximate-hardware
//! training runs two or more exact convs per layer per step, so this is its hot path.

use approx_hw::im2col::{col2im_image, im2col};
use approx_hw::{Conv2dParams, ConvGeometry};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::storage::f32_values;

/// `conv2d(input, weight)` (NCHW, OIHW, f32, no bias) through im2col + GEMM, with
/// backward. Matches candle's `Tensor::conv2d` within float rounding.
pub fn conv2d(input: &Tensor, weight: &Tensor, params: Conv2dParams) -> Result<Tensor> {
    input.apply_op2(weight, FastConv2d { params })
}

/// The candle op behind [`conv2d`].
#[derive(Debug, Clone, Copy)]
struct FastConv2d {
    params: Conv2dParams,
}

fn geometry(input: &[usize], weight: &[usize], params: Conv2dParams) -> Result<ConvGeometry> {
    ConvGeometry::conv2d(input, weight, params).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// `C = A · B` for row-major `A` (m x k) and `B` (k x n) into row-major `C` (m x n),
/// accumulating into `C` when `accumulate`. Each operand is `(data, transposed)`: a
/// transposed operand is stored as the row-major transpose.
fn gemm_rm(
    m: usize,
    n: usize,
    k: usize,
    (a, a_t): (&[f32], bool),
    (b, b_t): (&[f32], bool),
    c: &mut [f32],
    accumulate: bool,
) {
    debug_assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // Element (i, j) of A is a[i·rs + j·cs]; a transposed operand swaps the strides.
    let (a_rs, a_cs) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the asserted lengths cover every element the strides reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Image groups whose weight gradients are summed separately (fixed, so that results
/// do not depend on the thread count).
const WEIGHT_GRAD_GROUPS: usize = 8;

fn forward(geo: &ConvGeometry, input: &[f32], weight: &[f32]) -> Vec<f32> {
    let (fan_in, out_ch, pixels) = (geo.fan_in(), geo.out_channels, geo.out_pixels());
    let mut out = vec![0f32; geo.batch * out_ch * pixels];
    out.par_chunks_mut(out_ch * pixels)
        .enumerate()
        .for_each_init(
            || vec![0f32; fan_in * pixels],
            |col, (n, out)| {
                im2col(geo, input, n * pixels..(n + 1) * pixels, col);
                gemm_rm(
                    out_ch,
                    pixels,
                    fan_in,
                    (weight, false),
                    (col, false),
                    out,
                    false,
                );
            },
        );
    out
}

/// Input (when `with_input_grad`) and weight gradients of the conv for the output
/// gradient `grad`. A network's first conv reads data, which needs no gradient: its
/// input gradient is a GEMM and a scatter as large as the weight gradient's.
fn backward(
    geo: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    grad: &[f32],
    with_input_grad: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let (fan_in, out_ch, pixels) = (geo.fan_in(), geo.out_channels, geo.out_pixels());
    let image = geo.in_channels * geo.in_size.0 * geo.in_size.1;
    let mut dx = vec![
        0f32;
        if with_input_grad {
            geo.batch * image
        } else {
            0
        }
    ];
    // Weight gradients are summed in a fixed number of image groups, then the groups
    // in order: the float sum is the same whatever the thread count or scheduling
    // (rayon's fold/reduce splits by work stealing, which changes the rounding).
    let per_group = geo.batch.div_ceil(WEIGHT_GRAD_GROUPS).max(1);
    let groups = geo.batch.div_ceil(per_group);
    let mut dx_groups: Vec<&mut [f32]> = if with_input_grad {
        dx.chunks_mut(image * per_group).collect()
    } else {
        (0..groups).map(|_| Default::default()).collect()
    };
    let partials: Vec<Vec<f32>> = dx_groups
        .par_iter_mut()
        .enumerate()
        .map(|(group, dx)| {
            let mut dw = vec![0f32; out_ch * fan_in];
            let mut col = vec![0f32; fan_in * pixels];
            let images = group * per_group..((group + 1) * per_group).min(geo.batch);
            for (i, n) in images.enumerate() {
                let g = &grad[n * out_ch * pixels..][..out_ch * pixels];
                if with_input_grad {
                    // dX: columns Wᵀ·g, scattered back to the input positions.
                    gemm_rm(
                        fan_in,
                        pixels,
                        out_ch,
                        (weight, true),
                        (g, false),
                        &mut col,
                        false,
                    );
                    col2im_image(geo, &col, &mut dx[i * image..][..image]);
                }
                // dW += g · colᵀ.
                im2col(geo, input, n * pixels..(n + 1) * pixels, &mut col);
                gemm_rm(
                    out_ch,
                    fan_in,
                    pixels,
                    (g, false),
                    (&col, true),
                    &mut dw,
                    true,
                );
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; out_ch * fan_in];
    for part in partials {
        dw.iter_mut().zip(part).for_each(|(x, y)| *x += y);
    }
    (with_input_grad.then_some(dx), dw)
}

impl CustomOp2 for FastConv2d {
    fn name(&self) -> &'static str {
        "fast-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let geo = geometry(l1.dims(), l2.dims(), self.params)?;
        let out = forward(
            &geo,
            &f32_values(s1, l1, "fast conv2d")?,
            &f32_values(s2, l2, "fast conv2d")?,
        );
        Ok((CpuStorage::F32(out), Shape::from(geo.out_shape().to_vec())))
    }

    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let geo = geometry(input.dims(), weight.dims(), self.params)?;
        let flat = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1::<f32>() };
        let (dx, dw) = backward(
            &geo,
            &flat(input)?,
            &flat(weight)?,
            &flat(grad)?,
            input.track_op(),
        );
        Ok((
            dx.map(|dx| Tensor::from_vec(dx, input.shape(), input.device()))
                .transpose()?,
            Some(Tensor::from_vec(dw, weight.shape(), weight.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1e-6);
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            / scale
    }

    #[test]
    fn matches_candle_forward_and_backward() {
        for (i, &(n, c, h, w, o, k, stride, pad)) in [
            (2, 3, 9, 7, 4, 3, 1, 1),
            (3, 2, 8, 8, 5, 5, 2, 2),
            (1, 4, 6, 5, 3, 1, 1, 0),
            (2, 3, 7, 7, 2, 3, 3, 0),
        ]
        .iter()
        .enumerate()
        {
            let x = Var::from_tensor(&rand(&[n, c, h, w], i as u64)).unwrap();
            let wt = Var::from_tensor(&rand(&[o, c, k, k], 100 + i as u64)).unwrap();
            let ours = conv2d(&x, &wt, Conv2dParams::new(stride, pad)).unwrap();
            let theirs = x.conv2d(&wt, pad, stride, 1, 1).unwrap();
            assert!(max_rel(&ours, &theirs) < 1e-5, "forward {i}");
            let probe = rand(ours.dims(), 200 + i as u64);
            let g1 = (&ours * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&theirs * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &wt] {
                let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(max_rel(a, b) < 1e-5, "gradient {i}: {}", max_rel(a, b));
            }
        }
    }
}
