//! Batch normalisation with PyTorch's names and semantics, and REX-SC's quantized
//! variant (`specs/sc-rexsc.md` §1.5).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Device, InplaceOp2, Layout, Result, Shape, Tensor, Var};

use crate::pointwise::Epilogue;
use crate::store::{Init, ParamStore};
use approx_train::alloc::zeros;
use approx_train::packed::{Codes, Packed};
use approx_train::recompute::{BlockInput, Gradients};
use approx_train::storage::{f32_values, read_f32};
use rayon::prelude::*;

/// PyTorch's default batch-norm momentum and epsilon.
const MOMENTUM: f64 = 0.1;
const EPS: f64 = 1e-5;

/// `BatchNorm2d` (over N, H, W of NCHW) or `BatchNorm1d` (over N of `[N, C]`):
/// `weight`, `bias`, `running_mean`, `running_var` (and torchvision's
/// `num_batches_tracked`, accepted and ignored).
pub struct BatchNorm {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    /// REX-SC's `BatchNorm2d_fixed`: the forward value is the affine map quantized to
    /// 8 bits with a shared power-of-two scale; the gradient is the float one's.
    quantized: bool,
}

impl BatchNorm {
    /// The batch norm `prefix` over `channels`.
    pub fn new(store: &mut ParamStore, prefix: &str, channels: usize, quantized: bool) -> Self {
        let weight = store.param(&format!("{prefix}.weight"), &[channels], Init::Const(1.0));
        let bias = store.param(&format!("{prefix}.bias"), &[channels], Init::Const(0.0));
        let running_mean = store.param(
            &format!("{prefix}.running_mean"),
            &[channels],
            Init::Const(0.0),
        );
        let running_var = store.param(
            &format!("{prefix}.running_var"),
            &[channels],
            Init::Const(1.0),
        );
        store.ignore(&format!("{prefix}.num_batches_tracked"));
        Self {
            weight,
            bias,
            running_mean,
            running_var,
            quantized,
        }
    }

    /// The trained parameters: scale γ and shift β.
    pub fn params(&self) -> [&Var; 2] {
        [&self.weight, &self.bias]
    }

    /// Normalises `x` (`[N, C, H, W]` or `[N, C]`): batch statistics when `train`
    /// (updating the running ones with momentum 0.1, unbiased variance), running ones
    /// otherwise. One fused op with its own backward (candle's gradients of
    /// broadcast channel vectors reduce over strided axes, which is slow).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_then(x, train, train, None)
    }

    /// [`BatchNorm::forward`], updating the running statistics only when `update` (a
    /// checkpointed block's recomputation must not count its batch twice), followed by
    /// `epilogue` (a clamp, or a clamp-pool-clamp chain) in the same op, with the same
    /// values and gradients as the two ops: the backward recomputes the normalised
    /// activations plane by plane from the input, which the graph holds anyway, instead
    /// of keeping them (one input-sized tensor less per batch norm in a step's graph,
    /// and one gradient less in its backward).
    pub fn forward_then(
        &self,
        x: &Tensor,
        train: bool,
        update: bool,
        epilogue: Option<Epilogue>,
    ) -> Result<Tensor> {
        let op = {
            let values = read_f32(x);
            self.op(
                &*values.values("batch norm")?,
                x.dims(),
                train,
                update,
                epilogue,
            )?
        };
        x.apply_op3(self.weight.as_tensor(), self.bias.as_tensor(), op)
    }

    /// A checkpointed block's recomputation of [`BatchNorm::forward_then`] (the
    /// running statistics not updated) on its input `x`, outside candle's graph: the
    /// value, and the backward that turns the value's gradient into the gradients of
    /// the input, γ and β. Packed codes are read a plane at a time, never all in f32.
    pub fn recompute(
        &self,
        x: &BlockInput,
        train: bool,
        epilogue: Option<Epilogue>,
    ) -> Result<(Tensor, BatchNormBackward)> {
        let (gamma, beta) = (self.weight.to_vec1::<f32>()?, self.bias.to_vec1::<f32>()?);
        let ((values, out_dims), op) = match x {
            BlockInput::Packed(Packed::Codes(codes)) => {
                let op = self.op(codes, codes.dims(), train, false, epilogue)?;
                (op.forward(codes, codes.dims(), &gamma, &beta)?, op)
            }
            _ => {
                let x = x.values()?;
                let values = read_f32(&x);
                let values = values.values("batch norm")?;
                let op = self.op(&*values, x.dims(), train, false, epilogue)?;
                (op.forward(&*values, x.dims(), &gamma, &beta)?, op)
            }
        };
        let backward = BatchNormBackward {
            op,
            weight: self.weight.clone(),
            bias: self.bias.clone(),
        };
        Ok((Tensor::from_vec(values, out_dims, &Device::Cpu)?, backward))
    }

    /// The op of [`BatchNorm::forward_then`]: the statistics it normalises with
    /// (updating the running ones when `update`), the quantized affine map, the
    /// epilogue.
    fn op(
        &self,
        x: &(impl InputPlanes + ?Sized),
        dims: &[usize],
        train: bool,
        update: bool,
        epilogue: Option<Epilogue>,
    ) -> Result<BatchNormOp> {
        let (n, c) = match dims {
            [n, c, ..] => (*n, *c),
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "batch norm takes [N, C, ...], got {dims:?}"
                )))
            }
        };
        let inner = dims[2..].iter().product::<usize>();
        let (mean, var) = if train {
            let (mean, var) = channel_stats(x, n, c, inner);
            let count = (n * inner) as f32;
            let unbiased: Vec<f32> = var
                .iter()
                .map(|v| v * count / (count - 1.0).max(1.0))
                .collect();
            let blend = |running: &Var, batch: Vec<f32>| -> Result<()> {
                let batch = Tensor::from_vec(batch, c, &Device::Cpu)?;
                running.set(&((running.as_tensor() * (1.0 - MOMENTUM))? + (batch * MOMENTUM)?)?)
            };
            if update {
                blend(&self.running_mean, mean.clone())?;
                blend(&self.running_var, unbiased)?;
            }
            (mean, var)
        } else {
            (
                self.running_mean.to_vec1::<f32>()?,
                self.running_var.to_vec1::<f32>()?,
            )
        };
        let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + EPS as f32).sqrt()).collect();
        let quantized = if self.quantized {
            let gamma = self.weight.to_vec1::<f32>()?;
            let beta = self.bias.to_vec1::<f32>()?;
            let k: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, i)| g * i).collect();
            let b: Vec<f32> = beta
                .iter()
                .zip(&k)
                .zip(&mean)
                .map(|((b, k), m)| b - m * k)
                .collect();
            Some(quantize_affine(&k, &b))
        } else {
            None
        };
        Ok(BatchNormOp {
            mean,
            inv_std,
            batch_stats: train,
            quantized,
            epilogue,
        })
    }
}

/// The backward of a batch norm recomputed outside candle's graph
/// ([`BatchNorm::recompute`]).
pub struct BatchNormBackward {
    op: BatchNormOp,
    weight: Var,
    bias: Var,
}

impl BatchNormBackward {
    /// The gradients of the recomputed batch norm on `x` for the gradient `grad` of
    /// its value, the op's backward bit for bit: γ's and β's, and `x`'s when
    /// `input` asks for it.
    pub fn gradients(&self, x: &Tensor, grad: &Tensor, input: InputGrad) -> Result<Gradients> {
        let (weight, bias) = (self.weight.as_tensor(), self.bias.as_tensor());
        let (input, (dgamma, dbeta)) = match input {
            InputGrad::Skip => {
                let op = "batch norm backward";
                let (xv, g) = (read_f32(x), read_f32(grad));
                let g = g.values(op)?;
                let back = self.op.backward(x.dims(), weight, bias, &g)?;
                let sums = back.sums(&xv.values(op)?);
                (None, back.param_grads(sums, x.device())?)
            }
            InputGrad::OverInput => {
                let over = OverInput {
                    op: &self.op,
                    gamma: weight,
                    beta: bias,
                    param_grads: Mutex::new(None),
                };
                x.inplace_op2(grad, &over)?;
                let grads = over
                    .param_grads
                    .into_inner()
                    .unwrap_or_else(|e| e.into_inner());
                let grads = grads.ok_or_else(|| {
                    candle_core::Error::Msg("batch norm backward: no parameter gradients".into())
                })?;
                (Some(x.clone()), grads)
            }
        };
        Ok(Gradients {
            input,
            params: vec![(self.weight.clone(), dgamma), (self.bias.clone(), dbeta)],
        })
    }
}

/// What [`BatchNormBackward::gradients`] does about the input's gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputGrad {
    /// Nothing: the input is data, whose gradient nobody asks for.
    Skip,
    /// Computes it over the input's values, which the caller gives up (a recomputed
    /// block's input, which nothing reads after the block's backward): no second
    /// input-sized tensor at the backward's peak.
    OverInput,
}

/// Per-channel mean and biased variance of `[n, c, inner]` data, in two passes (the
/// variance about the mean, which loses nothing to cancellation), channels in
/// parallel. Each channel's sums run in a fixed order, whatever the thread count.
fn channel_stats(
    x: &(impl InputPlanes + ?Sized),
    n: usize,
    c: usize,
    inner: usize,
) -> (Vec<f32>, Vec<f32>) {
    let count = (n * inner).max(1) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut scratch = Vec::new();
            let mut sum = |f: &dyn Fn(f32) -> f32| {
                (0..n)
                    .map(|img| lane_sum(x.plane(img * c + ch, inner, &mut scratch), f))
                    .sum::<f64>()
            };
            let mean = sum(&|v| v) / count;
            let m = mean as f32;
            let var = sum(&|v| (v - m) * (v - m)) / count;
            (mean as f32, var as f32)
        })
        .unzip()
}

/// A batch norm's input values, plane by plane (one channel of one sample): a slice,
/// or the codes that a checkpoint link keeps, decoded a plane at a time.
pub trait InputPlanes: Sync {
    /// The `len` values of plane `index`, decoded into `scratch` where need be.
    fn plane<'a>(&'a self, index: usize, len: usize, scratch: &'a mut Vec<f32>) -> &'a [f32];
}

impl InputPlanes for [f32] {
    fn plane<'a>(&'a self, index: usize, len: usize, _: &'a mut Vec<f32>) -> &'a [f32] {
        &self[index * len..][..len]
    }
}

impl InputPlanes for Codes {
    fn plane<'a>(&'a self, index: usize, len: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        self.decode_into(index * len..(index + 1) * len, scratch);
        scratch
    }
}

/// `Σ f(v)` over `values`, in eight f32 lanes (so that it vectorises) added up in f64.
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    lane_sum2(values, values, |v, _| f(v))
}

/// `Σ f(a, b)` over the pairs of `a` and `b`, as [`lane_sum`].
fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut lanes = [0f32; 8];
    let (mut ac, mut bc) = (a.chunks_exact(8), b.chunks_exact(8));
    for (xs, ys) in (&mut ac).zip(&mut bc) {
        for ((l, &x), &y) in lanes.iter_mut().zip(xs).zip(ys) {
            *l += f(x, y);
        }
    }
    let rest: f64 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(&x, &y)| f64::from(f(x, y)))
        .sum();
    lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + rest
}

/// Per-channel `Σ g` and `Σ g·x̂` over `[n, c, inner]` inputs `x` and the gradients
/// `g` with respect to the batch norm's output (`x̂ = (x − mean)·inv_std`), channels
/// in parallel; `grad.plane` gives each plane's `g`.
fn grad_sums(
    x: &[f32],
    grad: &OutputGrad<'_>,
    (n, c, inner): (usize, usize, usize),
    mean: &[f32],
    inv_std: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (m, i) = (mean[ch], inv_std[ch]);
            let mut scratch = Scratch::default();
            (0..n)
                .map(|img| {
                    let plane = img * c + ch;
                    let xp = &x[plane * inner..][..inner];
                    let gp = grad.plane(plane, xp, &mut scratch);
                    (
                        lane_sum(gp, |d| d),
                        lane_sum2(xp, gp, |v, d| d * ((v - m) * i)),
                    )
                })
                .fold((0f64, 0f64), |(sg, sgx), (a, b)| (sg + a, sgx + b))
        })
        .unzip()
}

/// A plane's `(height, width)`: an NCHW map's, or one row of the values per channel
/// and sample of other shapes (`[N, C]`: one value).
fn plane_size(dims: &[usize]) -> (usize, usize) {
    match dims {
        &[_, _, h, w] => (h, w),
        _ => (1, dims[2..].iter().product()),
    }
}

/// Per-plane buffers of a fused batch norm's backward.
#[derive(Default)]
struct Scratch {
    /// The batch norm's output plane, recomputed.
    normalised: Vec<f32>,
    /// The gradient with respect to it.
    grad: Vec<f32>,
    /// The epilogue's pooled plane.
    pooled: Vec<f32>,
}

/// The gradient with respect to a batch norm's own output, plane by plane: the op's
/// output gradient itself, or, through an epilogue, made from it and the recomputed
/// normalised plane.
struct OutputGrad<'a> {
    /// The op's output gradient.
    grad: &'a [f32],
    /// The epilogue the gradient passes back through, if any.
    epilogue: Option<EpilogueGrad>,
    channels: usize,
}

/// What [`OutputGrad`] needs to pass a gradient back through an epilogue.
struct EpilogueGrad {
    epilogue: Epilogue,
    /// The forward's per-channel affine map `(k, b)`.
    affine: Vec<(f32, f32)>,
    /// The input plane's `(h, w)`.
    plane: (usize, usize),
    /// The output plane's length.
    out: usize,
}

impl OutputGrad<'_> {
    /// Plane `plane`'s gradient, whose input is `x`.
    fn plane<'s>(&'s self, plane: usize, x: &[f32], scratch: &'s mut Scratch) -> &'s [f32] {
        let Some(EpilogueGrad {
            epilogue,
            affine,
            plane: (h, w),
            out,
        }) = &self.epilogue
        else {
            return &self.grad[plane * x.len()..][..x.len()];
        };
        let (k, b) = affine[plane % self.channels];
        scratch.normalised.clear();
        scratch.normalised.extend(x.iter().map(|&v| v * k + b));
        scratch.grad.resize(x.len(), 0.0);
        epilogue.grad_plane(
            &scratch.normalised,
            &self.grad[plane * out..][..*out],
            &mut scratch.grad,
            (*h, *w),
            &mut scratch.pooled,
        );
        &scratch.grad
    }
}

/// `y = γ·(x − μ)·inv_std + β` per channel over (x, γ, β); or, quantized, the value
/// `x·k_q + b_q` with the float op's gradient. With batch statistics the gradient
/// flows through μ and the variance, as PyTorch's. An epilogue applies to `y` in the
/// same op.
#[derive(Clone)]
struct BatchNormOp {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    batch_stats: bool,
    quantized: Option<(Vec<f32>, Vec<f32>)>,
    epilogue: Option<Epilogue>,
}

impl BatchNormOp {
    /// Channel `ch`'s affine map `y = x·k + b` as the forward computes it.
    fn affine(&self, ch: usize, gamma: &[f32], beta: &[f32]) -> (f32, f32) {
        match &self.quantized {
            Some((kq, bq)) => (kq[ch], bq[ch]),
            None => {
                let k = gamma[ch] * self.inv_std[ch];
                (k, beta[ch] - self.mean[ch] * k)
            }
        }
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_values(s1, l1, "batch norm")?;
        let (gamma, beta) = (
            f32_values(s2, l2, "batch norm")?,
            f32_values(s3, l3, "batch norm")?,
        );
        let (y, dims) = self.forward(&*x, l1.dims(), &gamma, &beta)?;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dgamma, dbeta) = self.gradients(x, gamma, beta, grad)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

impl BatchNormOp {
    /// The op's value on input `x` of `dims` with the scales `gamma` and shifts
    /// `beta`, and its dims.
    fn forward(
        &self,
        x: &(impl InputPlanes + ?Sized),
        dims: &[usize],
        gamma: &[f32],
        beta: &[f32],
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let (c, inner) = (dims[1], dims[2..].iter().product::<usize>());
        let planes = dims[0] * c;
        let Some(epilogue) = self.epilogue else {
            let mut y = zeros(planes * inner);
            if inner > 0 {
                y.par_chunks_mut(inner).enumerate().for_each_init(
                    Vec::new,
                    |scratch, (plane, dst)| {
                        let src = x.plane(plane, inner, scratch);
                        let (k, b) = self.affine(plane % c, gamma, beta);
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d = v * k + b;
                        }
                    },
                );
            }
            return Ok((y, dims.to_vec()));
        };
        let out_dims = epilogue.output_dims(dims)?;
        let out_plane = out_dims[2..].iter().product::<usize>();
        let mut y = zeros(planes * out_plane);
        let width = plane_size(dims).1;
        if out_plane > 0 {
            y.par_chunks_mut(out_plane).enumerate().for_each_init(
                || (Vec::new(), Vec::new()),
                |(scratch, normalised), (plane, dst)| {
                    let src = x.plane(plane, inner, scratch);
                    let (k, b) = self.affine(plane % c, gamma, beta);
                    normalised.clear();
                    normalised.extend(src.iter().map(|&v| v * k + b));
                    epilogue.plane(normalised, dst, width);
                },
            );
        }
        Ok((y, out_dims))
    }

    /// The gradients of `x`, γ and β for the output gradient `grad`.
    fn gradients(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = "batch norm backward";
        let (xv, g) = (read_f32(x), read_f32(grad));
        let (xv, g) = (xv.values(op)?, g.values(op)?);
        let back = self.backward(x.dims(), gamma, beta, &g)?;
        let sums = back.sums(&xv);
        let mut dx = zeros(xv.len());
        if back.inner > 0 {
            dx.par_chunks_mut(back.inner)
                .zip(xv.par_chunks(back.inner))
                .enumerate()
                .for_each_init(Scratch::default, |scratch, (plane, (dst, xp))| {
                    back.input_grad(plane, xp, &sums, scratch, dst)
                });
        }
        let (dgamma, dbeta) = back.param_grads(sums, x.device())?;
        Ok((Tensor::from_vec(dx, x.dims(), x.device())?, dgamma, dbeta))
    }

    /// What the backward for the output gradient values `g` needs besides the input.
    fn backward<'a>(
        &'a self,
        dims: &[usize],
        gamma: &Tensor,
        beta: &Tensor,
        g: &'a [f32],
    ) -> Result<Backward<'a>> {
        let (n, c, inner) = (dims[0], dims[1], dims[2..].iter().product::<usize>());
        let gamma = gamma.to_vec1::<f32>()?;
        let epilogue = match self.epilogue {
            None => None,
            Some(epilogue) => {
                let out = epilogue.output_dims(dims)?[2..].iter().product::<usize>();
                let beta = beta.to_vec1::<f32>()?;
                let affine = (0..c).map(|ch| self.affine(ch, &gamma, &beta)).collect();
                Some(EpilogueGrad {
                    epilogue,
                    affine,
                    plane: plane_size(dims),
                    out,
                })
            }
        };
        Ok(Backward {
            op: self,
            gamma,
            out_grad: OutputGrad {
                grad: g,
                epilogue,
                channels: c,
            },
            n,
            c,
            inner,
        })
    }
}

/// A batch norm's backward for one output gradient (see [`BatchNormOp::backward`]).
struct Backward<'a> {
    op: &'a BatchNormOp,
    gamma: Vec<f32>,
    out_grad: OutputGrad<'a>,
    n: usize,
    c: usize,
    inner: usize,
}

/// Per-channel `(Σ g, Σ g·x̂)` (see [`grad_sums`]).
type ChannelSums = (Vec<f64>, Vec<f64>);

impl Backward<'_> {
    /// The per-channel sums over the input values `x`.
    fn sums(&self, x: &[f32]) -> ChannelSums {
        let op = self.op;
        let shape = (self.n, self.c, self.inner);
        grad_sums(x, &self.out_grad, shape, &op.mean, &op.inv_std)
    }

    /// Plane `plane`'s input gradient into `dst`, its input being `xp`.
    fn input_grad(
        &self,
        plane: usize,
        xp: &[f32],
        (sum_g, sum_gx): &ChannelSums,
        scratch: &mut Scratch,
        dst: &mut [f32],
    ) {
        let op = self.op;
        let ch = plane % self.c;
        let count = (self.n * self.inner) as f64;
        let gp = self.out_grad.plane(plane, xp, scratch);
        let (m, i) = (op.mean[ch], op.inv_std[ch]);
        let scale = self.gamma[ch] * i;
        let (mg, mgx) = ((sum_g[ch] / count) as f32, (sum_gx[ch] / count) as f32);
        for ((d, &v), &gg) in dst.iter_mut().zip(xp).zip(gp) {
            *d = if op.batch_stats {
                scale * (gg - mg - (v - m) * i * mgx)
            } else {
                scale * gg
            };
        }
    }

    /// γ's and β's gradients from the sums.
    fn param_grads(&self, (sum_g, sum_gx): ChannelSums, dev: &Device) -> Result<(Tensor, Tensor)> {
        let per_channel = |sums: Vec<f64>| {
            Tensor::from_vec(
                sums.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                self.c,
                dev,
            )
        };
        Ok((per_channel(sum_gx)?, per_channel(sum_g)?))
    }
}

/// [`BatchNormOp::gradients`] writing the input's gradient over the input (the op's
/// first tensor), which the caller gives up; γ's and β's gradients are left in
/// `param_grads`.
struct OverInput<'a> {
    op: &'a BatchNormOp,
    gamma: &'a Tensor,
    beta: &'a Tensor,
    param_grads: Mutex<Option<(Tensor, Tensor)>>,
}

impl InplaceOp2 for OverInput<'_> {
    fn name(&self) -> &'static str {
        "batch-norm-backward-over-input"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let op = "batch norm backward";
        let CpuStorage::F32(x) = s1 else {
            return Err(candle_core::Error::Msg(format!(
                "{op}: the input is not f32"
            )));
        };
        let Some((start, end)) = l1.contiguous_offsets() else {
            return Err(candle_core::Error::Msg(format!(
                "{op}: the input is not contiguous"
            )));
        };
        let x = &mut x[start..end];
        let g = f32_values(s2, l2, op)?;
        let back = self.op.backward(l1.dims(), self.gamma, self.beta, &g)?;
        let sums = back.sums(x);
        if back.inner > 0 {
            x.par_chunks_mut(back.inner).enumerate().for_each_init(
                || (Scratch::default(), Vec::new()),
                |(scratch, xp), (plane, dst)| {
                    xp.clear();
                    xp.extend_from_slice(dst);
                    back.input_grad(plane, xp, &sums, scratch, dst)
                },
            );
        }
        let grads = back.param_grads(sums, &Device::Cpu)?;
        *self.param_grads.lock().unwrap_or_else(|e| e.into_inner()) = Some(grads);
        Ok(())
    }
}

/// REX-SC's `quantize_shift`: `scale = 2^ceil(log2(3 · mean(k)))`, then `k` and `b`
/// rounded (half to even) to 1/128 of the scale and clamped to ±127/128 of it.
fn quantize_affine(k: &[f32], b: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mean_k = k.iter().map(|&v| f64::from(v)).sum::<f64>() / k.len().max(1) as f64;
    let scale = if mean_k > 0.0 {
        2f64.powf((3.0 * mean_k).log2().ceil())
    } else {
        1.0
    };
    let q = |t: &[f32]| -> Vec<f32> {
        t.iter()
            .map(|&x| {
                ((f64::from(x) / scale * 128.0)
                    .round_ties_even()
                    .clamp(-127.0, 127.0)
                    / 128.0
                    * scale) as f32
            })
            .collect()
    };
    (q(k), q(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ParamStore;
    use candle_core::Device;

    /// Batch norm from candle's own ops, the obviously-correct reference.
    fn reference(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        stats: Option<(&Tensor, &Tensor)>,
    ) -> Tensor {
        let c = x.dim(1).unwrap();
        let shape = (1, c, 1, 1);
        let (mean, var) = match stats {
            Some((m, v)) => (m.reshape(shape).unwrap(), v.reshape(shape).unwrap()),
            None => {
                let mean = x
                    .mean_keepdim(3)
                    .unwrap()
                    .mean_keepdim(2)
                    .unwrap()
                    .mean_keepdim(0)
                    .unwrap();
                let var = x
                    .broadcast_sub(&mean)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_keepdim(3)
                    .unwrap()
                    .mean_keepdim(2)
                    .unwrap()
                    .mean_keepdim(0)
                    .unwrap();
                (mean, var)
            }
        };
        let xhat = x
            .broadcast_sub(&mean)
            .unwrap()
            .broadcast_div(&(var + EPS).unwrap().sqrt().unwrap())
            .unwrap();
        xhat.broadcast_mul(&gamma.reshape(shape).unwrap())
            .unwrap()
            .broadcast_add(&beta.reshape(shape).unwrap())
            .unwrap()
    }

    #[test]
    fn fused_batch_norm_matches_candle_ops_in_value_and_gradient() {
        let mut store = ParamStore::fresh(1);
        let bn = BatchNorm::new(&mut store, "bn", 3, false);
        bn.weight
            .set(&Tensor::new(&[1.5f32, -0.5, 2.0], &Device::Cpu).unwrap())
            .unwrap();
        bn.bias
            .set(&Tensor::new(&[0.1f32, 0.2, -0.3], &Device::Cpu).unwrap())
            .unwrap();
        let xv: Vec<f32> = (0..2 * 3 * 4 * 5)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let x = Var::from_vec(xv, (2, 3, 4, 5), &Device::Cpu).unwrap();
        let probe = Tensor::from_vec(
            (0..120)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
                .collect::<Vec<_>>(),
            (2, 3, 4, 5),
            &Device::Cpu,
        )
        .unwrap();
        for train in [true, false] {
            let stats = (!train).then(|| {
                (
                    bn.running_mean.as_tensor().clone(),
                    bn.running_var.as_tensor().clone(),
                )
            });
            let ours = bn.forward(&x, train).unwrap();
            let theirs = reference(
                &x,
                &bn.weight,
                &bn.bias,
                stats.as_ref().map(|(m, v)| (m, v)),
            );
            let diff = (&ours - &theirs)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "train={train}: value differs by {diff}");
            let g1 = (ours * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (theirs * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &bn.weight, &bn.bias] {
                let d = (g1.get(v).unwrap() - g2.get(v).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(d < 1e-4, "train={train}: gradient differs by {d}");
            }
        }
        // Running statistics moved by momentum 0.1 towards the batch's.
        let rm = bn.running_mean.to_vec1::<f32>().unwrap();
        assert!(rm.iter().any(|&m| m != 0.0));
    }

    /// A batch norm with an epilogue in its op gives the two ops' values and
    /// gradients bit for bit: clamps and pooling chains (with rows and columns past
    /// the last window), batch and running statistics, float and quantized.
    /// A batch norm over four channels with a negative scale and shifts of both signs.
    fn four_channels(quantized: bool) -> BatchNorm {
        let dev = Device::Cpu;
        let mut store = ParamStore::fresh(1);
        let bn = BatchNorm::new(&mut store, "bn", 4, quantized);
        bn.weight
            .set(&Tensor::new(&[1.5f32, -0.5, 2.0, 0.7], &dev).unwrap())
            .unwrap();
        bn.bias
            .set(&Tensor::new(&[0.1f32, 0.2, -0.3, 0.4], &dev).unwrap())
            .unwrap();
        bn
    }

    /// A recomputed batch norm's value and gradients, the input's written over the
    /// input or not computed, equal the op's bit for bit (after candle's backward adds
    /// each gradient to zeros, which makes a −0 +0), from the input as a tensor and as
    /// a link's codes (read plane by plane).
    #[test]
    fn recomputed_backward_equals_the_ops() {
        let dev = Device::Cpu;
        // On a 1/64 grid, so that a link keeps it as codes.
        let data = ((Tensor::rand(-2f32, 3f32, (3, 4, 8, 6), &dev).unwrap() * 64.0)
            .unwrap()
            .round()
            .unwrap()
            / 64.0)
            .unwrap();
        let packed = BlockInput::Packed(Packed::pack(&data).unwrap());
        assert!(matches!(packed, BlockInput::Packed(Packed::Codes(_))));
        let x = Var::from_tensor(&data).unwrap();
        let bits = |t: &Tensor| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.iter().map(|v| (v + 0.0).to_bits()).collect::<Vec<_>>()
        };
        let pool = Epilogue::pool(Some((0.0, f32::INFINITY)), 2, Some((0.0, 1.0)));
        for quantized in [false, true] {
            let bn = four_channels(quantized);
            for (train, epilogue) in [(true, None), (true, Some(pool)), (false, Some(pool))] {
                let what = format!("quantized {quantized} train {train} {epilogue:?}");
                let y = bn.forward_then(&x, train, false, epilogue).unwrap();
                let probe = Tensor::rand(-1f32, 1f32, y.shape(), &dev).unwrap();
                let want = (&y * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let (value, back) = bn
                    .recompute(&BlockInput::Tensor(data.clone()), train, epilogue)
                    .unwrap();
                assert_eq!(bits(&value), bits(&y), "{what}");
                let (from_codes, _) = bn.recompute(&packed, train, epilogue).unwrap();
                assert_eq!(bits(&from_codes), bits(&y), "{what}: from codes");
                let params = |g: &Gradients| {
                    assert_eq!(g.params.len(), 2);
                    for (p, grad) in &g.params {
                        assert_eq!(bits(grad), bits(want.get(p).unwrap()), "{what}");
                    }
                };
                let skipped = back.gradients(&data, &probe, InputGrad::Skip).unwrap();
                assert!(skipped.input.is_none());
                params(&skipped);
                let given_up = Var::from_tensor(&data).unwrap();
                let over = back
                    .gradients(given_up.as_tensor(), &probe, InputGrad::OverInput)
                    .unwrap();
                params(&over);
                let dx = bits(want.get(&x).unwrap());
                assert_eq!(bits(&over.input.unwrap()), dx, "{what}");
                assert_eq!(
                    bits(given_up.as_tensor()),
                    dx,
                    "{what}: written over the input"
                );
            }
        }
    }

    #[test]
    fn an_epilogue_in_the_op_equals_the_two_ops() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::rand(-2f32, 3f32, (3, 4, 9, 7), &dev).unwrap()).unwrap();
        let relu = Some((0.0, f32::INFINITY));
        type TwoOps<'a> = &'a dyn Fn(&Tensor) -> Tensor;
        let cases: [(Epilogue, TwoOps); 4] = [
            (Epilogue::clamp(0.0, 1.0), &|t| {
                crate::pointwise::clamp(t, 0.0, 1.0).unwrap()
            }),
            (Epilogue::clamp(0.0, f32::INFINITY), &|t| {
                crate::pointwise::clamp(t, 0.0, f32::INFINITY).unwrap()
            }),
            (Epilogue::pool(relu, 2, Some((0.0, 1.0))), &|t| {
                crate::pointwise::clamp_pool_clamp(t, relu, 2, Some((0.0, 1.0))).unwrap()
            }),
            (Epilogue::pool(None, 3, None), &|t| {
                crate::pointwise::avg_pool(t, 3).unwrap()
            }),
        ];
        let bits = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        for quantized in [false, true] {
            let bn = four_channels(quantized);
            for train in [true, false] {
                for (epilogue, steps) in &cases {
                    let fused = bn.forward_then(&x, train, false, Some(*epilogue)).unwrap();
                    let apart = steps(&bn.forward_then(&x, train, false, None).unwrap());
                    let what = format!("{epilogue:?} quantized {quantized} train {train}");
                    assert_eq!(bits(&fused), bits(&apart), "{what}");
                    let probe = Tensor::rand(-1f32, 1f32, fused.shape(), &dev).unwrap();
                    let grads =
                        |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    let (g1, g2) = (grads(&fused), grads(&apart));
                    for v in [x.as_tensor(), bn.weight.as_tensor(), bn.bias.as_tensor()] {
                        assert_eq!(bits(g1.get(v).unwrap()), bits(g2.get(v).unwrap()), "{what}");
                    }
                }
            }
        }
    }
}
