//! The float conv2d of every training layer: forward and both backward passes as one
//! candle op, each a matrix product per image: the forward and the stride-1 input
//! gradient, and the weight gradient, through this crate's FMA micro-kernels
//! ([`crate::microkernel`], reading a stride-1 conv's receptive fields from the padded
//! input in place); the `gemm` crate where a layer's weights outsize its maps and for
//! a strided conv's input gradient. candle's own CPU conv2d is
//! several times slower, and its backward (a direct `conv_transpose2d` loop) slower
//! still; approximate-hardware training runs two or more exact convs per layer per
//! step, so this is its hot path.

use std::borrow::Cow;

use approx_hw::im2col::{col2im_image, im2col, zero_padded_planes};
use approx_hw::{Conv2dParams, ConvGeometry};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::microkernel::{self, Fields, PackedWeights, WeightGradient};
use crate::polarity::{fold_gradient, split_values, stacked};
use crate::storage::{f32_values, read_f32};

/// `conv2d(input, weight)` (NCHW, OIHW, f32, no bias) as matrix products, with
/// backward. Matches candle's `Tensor::conv2d` within float rounding.
pub fn conv2d(input: &Tensor, weight: &Tensor, params: Conv2dParams) -> Result<Tensor> {
    input.apply_op2(
        weight,
        FastConv2d {
            params,
            polarities: false,
        },
    )
}

/// `conv2d(input, split_polarities(weight))`: both polarities' partial sums of a
/// split-unipolar layer (`[N, 2O, H, W]`, the positive weights' sums first), with the
/// same values and gradients, bit for bit. The split weights (twice the weight's size)
/// and their gradient live only inside the op's forward and backward calls instead of
/// in the graph: on VGG-16's 512-channel layers they, not the activations, were the
/// largest tensors of a checkpointed step.
pub fn conv2d_polarities(input: &Tensor, weight: &Tensor, params: Conv2dParams) -> Result<Tensor> {
    input.apply_op2(weight, FastConv2d::polarities(params))
}

/// The candle op behind [`conv2d`] and [`conv2d_polarities`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastConv2d {
    params: Conv2dParams,
    /// The conv runs on the weight's split polarities (see [`conv2d_polarities`]).
    polarities: bool,
}

impl FastConv2d {
    /// The op of [`conv2d_polarities`].
    pub(crate) fn polarities(params: Conv2dParams) -> Self {
        Self {
            params,
            polarities: true,
        }
    }

    /// The output shape for NCHW `input` dims and the weight's shape (`[N, 2O, H, W]`
    /// when the op splits polarities).
    pub(crate) fn output_shape(&self, input: &[usize], weight_shape: &Shape) -> Result<Shape> {
        let weight = if self.polarities {
            stacked(weight_shape)?
        } else {
            weight_shape.clone()
        };
        let geo = geometry(input, weight.dims(), self.params)?;
        Ok(Shape::from(geo.out_shape().to_vec()))
    }

    /// The output values and shape for input values `x` (NCHW `input` dims) and the
    /// weight's values.
    pub(crate) fn run(
        &self,
        input: &[usize],
        x: &[f32],
        weight_shape: &Shape,
        weight: Cow<'_, [f32]>,
    ) -> Result<(Vec<f32>, Shape)> {
        let batch = input.first().copied().unwrap_or(0);
        self.run_then(
            input,
            x,
            weight_shape,
            weight,
            (0..batch).into_par_iter(),
            |_, _| (),
        )
    }

    /// [`FastConv2d::run`], handing each image's outputs to `then` with that image's
    /// item of `items` (one per image) while they are in cache.
    pub(crate) fn run_then<T: Send>(
        &self,
        input: &[usize],
        x: &[f32],
        weight_shape: &Shape,
        weight: Cow<'_, [f32]>,
        items: impl IndexedParallelIterator<Item = T>,
        then: impl Fn(&mut [f32], T) + Sync,
    ) -> Result<(Vec<f32>, Shape)> {
        let geo = self.geometry(input, weight_shape)?;
        let weight = RunWeight::new(&weight, self.polarities);
        if items.len() != geo.batch {
            return Err(candle_core::Error::Msg(format!(
                "fast conv2d: {} per-image items for a batch of {}",
                items.len(),
                geo.batch
            )));
        }
        Ok((
            forward_then(&geo, x, weight, items, then),
            Shape::from(geo.out_shape().to_vec()),
        ))
    }

    /// The input (when `input` is tracked) and weight gradients for the output
    /// gradient values `grad`.
    pub(crate) fn gradients(
        &self,
        input: &Tensor,
        weight: &Tensor,
        grad: &[f32],
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let with_input_grad = input.track_op();
        self.backward_with(input, weight, |geo, x, run_weight| {
            backward(geo, x, run_weight, grad, with_input_grad)
        })
    }

    /// The input (when `with_input_grad`) and weight gradients of `f(conv(input,
    /// weight))` for an `f` that acts on each image's outputs alone, where
    /// `to_gradient(n, outputs)` overwrites image `n`'s outputs (`[O, H·W]`, `[2O,
    /// H·W]` for split polarities) with their gradient. The outputs are computed image
    /// by image inside the weight gradient's image groups, so the batch's outputs and
    /// their gradient are never in memory at once, and each image's receptive fields
    /// serve its outputs and its weight gradient. Bit for bit the gradients of
    /// computing every output, then every gradient, then [`FastConv2d::gradients`].
    pub(crate) fn recomputed_gradients(
        &self,
        input: &Tensor,
        weight: &Tensor,
        with_input_grad: bool,
        to_gradient: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.backward_with(input, weight, |geo, x, run_weight| {
            if whole_batch_weight_grad(geo) {
                // That weight gradient needs every image's output gradient at once.
                let mut grad = forward(geo, x, run_weight);
                grad.par_chunks_mut(geo.out_channels * geo.out_pixels())
                    .enumerate()
                    .for_each(|(n, g)| to_gradient(n, g));
                return backward(geo, x, run_weight, &grad, with_input_grad);
            }
            backward_recomputed(geo, x, run_weight, with_input_grad, &to_gradient)
        })
    }

    /// Runs `backward(geometry, input values, run weight values)` and returns its gradients as tensors (the weight's folded back from
    /// its split polarities).
    fn backward_with(
        &self,
        input: &Tensor,
        weight: &Tensor,
        backward: impl FnOnce(&ConvGeometry, &[f32], RunWeight<'_>) -> (Option<Vec<f32>>, Vec<f32>),
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = "fast conv2d backward";
        let (x, w) = (read_f32(input), read_f32(weight));
        let w = w.values(op)?;
        let geo = self.geometry(input.dims(), weight.shape())?;
        let run_weight = RunWeight::new(&w, self.polarities);
        let (dx, dw) = backward(&geo, &x.values(op)?, run_weight);
        let dw = if self.polarities {
            fold_gradient(&w, &dw)
        } else {
            dw
        };
        Ok((
            dx.map(|dx| Tensor::from_vec(dx, input.shape(), input.device()))
                .transpose()?,
            Some(Tensor::from_vec(dw, weight.shape(), weight.device())?),
        ))
    }

    /// The geometry of the conv as run (on `[2O, C, KH, KW]` weights when the op
    /// splits polarities).
    fn geometry(&self, input: &[usize], weight_shape: &Shape) -> Result<ConvGeometry> {
        if !self.polarities {
            return geometry(input, weight_shape.dims(), self.params);
        }
        geometry(input, stacked(weight_shape)?.dims(), self.params)
    }
}

/// A conv's weights as it runs them, read in place: the layer's own, or their split
/// polarities (`max(w, 0)` stacked over `max(−w, 0)` on the output channels), which
/// are never materialised (on VGG-16's 512-channel layers, an 18 MB copy at the
/// checkpointed step's peak).
#[derive(Debug, Clone, Copy)]
enum RunWeight<'a> {
    Plain(&'a [f32]),
    Split(&'a [f32]),
}

impl<'a> RunWeight<'a> {
    /// The layer's weights `w`, split into polarities when `split`.
    fn new(w: &'a [f32], split: bool) -> Self {
        if split {
            Self::Split(w)
        } else {
            Self::Plain(w)
        }
    }

    /// Entry `i` of the run weights, row-major `[O, C, KH, KW]` (`[2O, ...]` split).
    #[inline(always)]
    fn at(self, i: usize) -> f32 {
        match self {
            Self::Plain(w) => w[i],
            Self::Split(w) => match w.get(i) {
                Some(&v) => v.max(0.0),
                None => (-w[i - w.len()]).max(0.0),
            },
        }
    }

    /// The run weights as values (a copy only when split).
    fn values(self) -> Cow<'a, [f32]> {
        match self {
            Self::Plain(w) => Cow::Borrowed(w),
            Self::Split(w) => Cow::Owned(split_values(w)),
        }
    }
}

fn geometry(input: &[usize], weight: &[usize], params: Conv2dParams) -> Result<ConvGeometry> {
    ConvGeometry::conv2d(input, weight, params).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// `C = A · B` for row-major `A` (m x k) and `B` (k x n) into row-major `C` (m x n),
/// accumulating into `C` when `accumulate`. Each operand is `(data, transposed)`: a
/// transposed operand is stored as the row-major transpose.
pub(crate) fn gemm_rm(
    m: usize,
    n: usize,
    k: usize,
    a: (&[f32], bool),
    b: (&[f32], bool),
    c: &mut [f32],
    accumulate: bool,
) {
    gemm_rm_into(m, n, k, a, b, (c, n), accumulate);
}

/// [`gemm_rm`] into the first `n` columns of a row-major `C` whose rows are `ldc`
/// values apart (`ldc ≥ n`): a block of columns of a wider matrix.
fn gemm_rm_into(
    m: usize,
    n: usize,
    k: usize,
    (a, a_t): (&[f32], bool),
    (b, b_t): (&[f32], bool),
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
) {
    debug_assert!(a.len() >= m * k && b.len() >= k * n && ldc >= n);
    debug_assert!(m == 0 || c.len() >= (m - 1) * ldc + n);
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
            ldc as isize,
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
pub(crate) const WEIGHT_GRAD_GROUPS: usize = 8;

fn forward(geo: &ConvGeometry, input: &[f32], weight: RunWeight<'_>) -> Vec<f32> {
    forward_then(
        geo,
        input,
        weight,
        (0..geo.batch).into_par_iter(),
        |_, _| (),
    )
}

/// [`forward`], handing each image's outputs (`[O, H·W]`) to `then` with that
/// image's item of `items` (one per image) as soon as they are computed, while they
/// are in cache.
fn forward_then<T: Send>(
    geo: &ConvGeometry,
    input: &[f32],
    weight: RunWeight<'_>,
    items: impl IndexedParallelIterator<Item = T>,
    then: impl Fn(&mut [f32], T) + Sync,
) -> Vec<f32> {
    let per_image = geo.out_channels * geo.out_pixels();
    let product = ForwardProduct::new(geo, weight);
    let mut out = crate::alloc::zeros(geo.batch * per_image);
    out.par_chunks_mut(per_image)
        .zip(items)
        .enumerate()
        .for_each_init(Vec::new, |scratch, (n, (out, item))| {
            product.image(geo, input, n, scratch, out);
            then(out, item);
        });
    out
}

/// Output maps at least this wide are read from the input's zero-padded planes in
/// place (a stride-1 conv's receptive fields are runs of them), with no im2col
/// matrix: on TinyConv's 32 → 32 layer that matrix was 800 KB per image, written and
/// then read back from beyond L2. On its 8x8 layer, in place measured the same
/// forward and a 20 % faster backward (the weight gradient needs no matrix either);
/// narrower maps would run the micro-kernel's short row blocks only.
const MIN_IN_PLACE_WIDTH: usize = 8;

/// Where a conv reads each image's receptive fields ([`Fields`]), with the fields'
/// offsets there.
enum ReceptiveFields {
    /// In place from its zero-padded planes ([`MIN_IN_PLACE_WIDTH`]).
    InPlace(Vec<usize>),
    /// From its im2col matrix.
    Matrix(Vec<usize>),
}

impl ReceptiveFields {
    /// In place for a stride-1 conv whose output maps are at least
    /// [`MIN_IN_PLACE_WIDTH`] wide, otherwise through the matrix.
    fn new(geo: &ConvGeometry) -> Self {
        let (_, ow) = geo.out_size();
        if geo.params.stride == (1, 1) && ow >= MIN_IN_PLACE_WIDTH {
            Self::InPlace(Fields::padded_starts(
                geo.in_channels,
                geo.kernel,
                geo.padded_size(),
            ))
        } else {
            Self::Matrix(Fields::matrix_starts(geo.fan_in(), geo.out_pixels()))
        }
    }

    /// Image `n`'s receptive fields, gathered into `scratch`: its zero-padded planes
    /// or its im2col matrix.
    fn gather<'a>(
        &'a self,
        geo: &ConvGeometry,
        input: &[f32],
        n: usize,
        scratch: &'a mut Vec<f32>,
    ) -> Fields<'a> {
        match self {
            Self::Matrix(starts) => {
                let pixels = geo.out_pixels();
                scratch.resize(geo.fan_in() * pixels, 0.0);
                im2col(geo, input, n * pixels..(n + 1) * pixels, scratch);
                Fields::matrix(scratch, starts, pixels)
            }
            Self::InPlace(starts) => {
                let (ph, pw) = geo.padded_size();
                scratch.resize(geo.in_channels * ph * pw, 0.0);
                zero_padded_planes(geo, input, n, scratch);
                let (oh, ow) = geo.out_size();
                Fields {
                    values: scratch,
                    starts,
                    height: oh,
                    width: ow,
                    pitch: pw,
                }
            }
        }
    }
}

/// A conv's forward product `W · Col`, image by image ([`microkernel`]).
struct ForwardProduct {
    weight: PackedWeights,
    fields: ReceptiveFields,
}

impl ForwardProduct {
    /// The product for the conv `geo` with weights `weight` (`[O, C, KH, KW]`).
    fn new(geo: &ConvGeometry, weight: RunWeight<'_>) -> Self {
        let depth = geo.fan_in();
        Self {
            weight: PackedWeights::from_fn(geo.out_channels, depth, |i, j| {
                weight.at(i * depth + j)
            }),
            fields: ReceptiveFields::new(geo),
        }
    }

    /// Image `n`'s outputs (`[O, H·W]`) into `out`; `scratch` holds its receptive
    /// fields.
    fn image(
        &self,
        geo: &ConvGeometry,
        input: &[f32],
        n: usize,
        scratch: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let fields = self.fields.gather(geo, input, n, scratch);
        microkernel::multiply(&self.weight, &fields, out);
    }
}

/// Input (when `with_input_grad`) and weight gradients of the conv for the output
/// gradient `grad`. A network's first conv reads data, which needs no gradient: its
/// input gradient is a GEMM as large as the weight gradient's.
fn backward(
    geo: &ConvGeometry,
    input: &[f32],
    weight: RunWeight<'_>,
    grad: &[f32],
    with_input_grad: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let dx = with_input_grad.then(|| {
        let input_grad = InputGrad::new(geo, weight);
        let (image, per_image) = (geo.in_image_len(), geo.out_channels * geo.out_pixels());
        let mut dx = crate::alloc::zeros(geo.batch * image);
        dx.par_chunks_mut(image)
            .zip(grad.par_chunks(per_image))
            .for_each_init(Vec::new, |col, (dx, g)| input_grad.image(geo, g, col, dx));
        dx
    });
    (dx, weight_grad(geo, input, grad))
}

/// [`backward`] with each image's output gradient made from its outputs by
/// `to_gradient` (see [`FastConv2d::recomputed_gradients`]): image by image within
/// [`weight_grad`]'s groups, in its order, so the sums are the same.
fn backward_recomputed(
    geo: &ConvGeometry,
    input: &[f32],
    weight: RunWeight<'_>,
    with_input_grad: bool,
    to_gradient: &(impl Fn(usize, &mut [f32]) + Sync),
) -> (Option<Vec<f32>>, Vec<f32>) {
    let (fan_in, out_ch, pixels) = (geo.fan_in(), geo.out_channels, geo.out_pixels());
    let image = geo.in_image_len();
    let input_grad = with_input_grad.then(|| InputGrad::new(geo, weight));
    let product = ForwardProduct::new(geo, weight);
    let per_group = images_per_group(geo);
    let groups = geo.batch.div_ceil(per_group);
    let mut dx = vec![
        0f32;
        if with_input_grad {
            geo.batch * image
        } else {
            0
        }
    ];
    // Each group's part of the input gradient (empty without one).
    let parts: Vec<&mut [f32]> = if with_input_grad {
        dx.chunks_mut(per_group * image).collect()
    } else {
        (0..groups).map(|_| <&mut [f32]>::default()).collect()
    };
    let partials: Vec<Vec<f32>> = parts
        .into_par_iter()
        .enumerate()
        .map(|(group, dx)| {
            let mut dw = WeightGradient::new(out_ch, fan_in);
            let mut field_values = Vec::new();
            let mut g = vec![0f32; out_ch * pixels];
            let mut scratch = Vec::new();
            for (i, n) in (group * per_group..((group + 1) * per_group).min(geo.batch)).enumerate()
            {
                let image_fields = product.fields.gather(geo, input, n, &mut field_values);
                microkernel::multiply(&product.weight, &image_fields, &mut g);
                to_gradient(n, &mut g);
                dw.add(&g, &image_fields);
                if let Some(input_grad) = &input_grad {
                    input_grad.image(geo, &g, &mut scratch, &mut dx[i * image..][..image]);
                }
            }
            dw.into_rows()
        })
        .collect();
    (
        with_input_grad.then_some(dx),
        sum_in_order(partials, out_ch * fan_in),
    )
}

/// How a conv's input gradient is computed, one image at a time.
enum InputGrad<'a> {
    /// Stride 1: a conv of the output gradient ([`InputGradConv`]).
    Conv(InputGradConv),
    /// Any conv: the columns `Wᵀ·g` scattered back ([`scatter_image`]), with the
    /// run weights' values.
    Scatter(Cow<'a, [f32]>),
}

impl<'a> InputGrad<'a> {
    fn new(geo: &ConvGeometry, weight: RunWeight<'a>) -> Self {
        InputGradConv::new(geo, weight).map_or_else(|| Self::Scatter(weight.values()), Self::Conv)
    }

    /// One image's input gradient into `dx` (zeros on entry) from its output gradient
    /// `g`; `col` is scratch space.
    fn image(&self, geo: &ConvGeometry, g: &[f32], col: &mut Vec<f32>, dx: &mut [f32]) {
        match self {
            Self::Conv(conv) => conv.product.image(&conv.geo, g, 0, col, dx),
            Self::Scatter(weight) => {
                col.resize(geo.fan_in() * geo.out_pixels(), 0.0);
                scatter_image(geo, weight, g, col, dx);
            }
        }
    }
}

/// The input gradient of a stride-1 conv as a conv of the output gradient: with the
/// kernel flipped and its channel axes swapped, and padding `k − 1 − p`, it is the
/// forward conv again: one product per image into the gradient itself, with fan-in
/// `O·KH·KW`. The general path's GEMM (fan-in `O`) writes `C·KH·KW` columns per pixel
/// that a scatter then adds up. The forward's micro-kernel broadcasts the rows (here
/// the input channels), so even a 3-channel input's gradient fills its vectors
/// (TinyConv's first layer: backward 17.3 → 15.9 ms against the scatter).
struct InputGradConv {
    geo: ConvGeometry,
    /// The product with the flipped kernel.
    product: ForwardProduct,
}

impl InputGradConv {
    /// `None` unless the stride is 1 and the padding at most `k − 1` on both axes.
    fn new(geo: &ConvGeometry, weight: RunWeight<'_>) -> Option<Self> {
        let (kh, kw) = geo.kernel;
        let (py, px) = geo.params.padding;
        if geo.params.stride != (1, 1) || py >= kh || px >= kw {
            return None;
        }
        let (oh, ow) = geo.out_size();
        let (o, c) = (geo.out_channels, geo.in_channels);
        let params = Conv2dParams {
            stride: (1, 1),
            padding: (kh - 1 - py, kw - 1 - px),
        };
        let t = ConvGeometry::conv2d(&[geo.batch, o, oh, ow], &[c, o, kh, kw], params).ok()?;
        debug_assert_eq!(t.out_size(), geo.in_size);
        // The flipped kernel `[C, O, KH, KW]`, packed straight from the weights.
        let taps = kh * kw;
        let flipped = PackedWeights::from_fn(c, o * taps, |ic, j| {
            let (oc, tap) = (j / taps, j % taps);
            weight.at((oc * c + ic) * taps + taps - 1 - tap)
        });
        let product = ForwardProduct {
            weight: flipped,
            fields: ReceptiveFields::new(&t),
        };
        Some(Self { geo: t, product })
    }
}

/// The input gradient of any conv for one image: the columns `Wᵀ·g` (into `col`)
/// scattered back to the input positions they were gathered from, added into `dx`.
fn scatter_image(geo: &ConvGeometry, weight: &[f32], g: &[f32], col: &mut [f32], dx: &mut [f32]) {
    let (fan_in, out_ch, pixels) = (geo.fan_in(), geo.out_channels, geo.out_pixels());
    gemm_rm(
        fan_in,
        pixels,
        out_ch,
        (weight, true),
        (g, false),
        col,
        false,
    );
    col2im_image(geo, col, dx);
}

/// `dW = Σ_images g · colᵀ`, summed in a fixed number of image groups and then the
/// groups in order: the float sum is the same whatever the thread count or scheduling
/// (rayon's fold/reduce splits by work stealing, which changes the rounding). Each
/// group runs through [`WeightGradient`], reading the receptive fields where the
/// forward reads them (in place for wide stride-1 maps): on TinyConv's 32 → 32 layer
/// the conv's backward went from 21-23 to 16 ms with it, against `gemm` over im2col.
///
/// Each group holds a whole partial `dW`. Where those outsize the batch's columns
/// (weights larger than maps: VGG's 512-channel layers on 2x2 maps, where eight
/// partials of a split-polarity layer took 151 MB), the gradient is one GEMM over the
/// whole batch instead ([`weight_grad_by_rows`]).
fn weight_grad(geo: &ConvGeometry, input: &[f32], grad: &[f32]) -> Vec<f32> {
    let (fan_in, out_ch, pixels) = (geo.fan_in(), geo.out_channels, geo.out_pixels());
    if whole_batch_weight_grad(geo) {
        return weight_grad_by_rows(geo, input, grad);
    }
    let fields = ReceptiveFields::new(geo);
    let per_group = images_per_group(geo);
    let partials: Vec<Vec<f32>> = (0..geo.batch.div_ceil(per_group))
        .into_par_iter()
        .map(|group| {
            let mut dw = WeightGradient::new(out_ch, fan_in);
            let mut scratch = Vec::new();
            for n in group * per_group..((group + 1) * per_group).min(geo.batch) {
                let g = &grad[n * out_ch * pixels..][..out_ch * pixels];
                dw.add(g, &fields.gather(geo, input, n, &mut scratch));
            }
            dw.into_rows()
        })
        .collect();
    sum_in_order(partials, out_ch * fan_in)
}

/// Whether [`weight_grad`] runs as one GEMM over the whole batch
/// ([`weight_grad_by_rows`]): where the groups' partial sums would outsize the
/// batch's receptive fields.
fn whole_batch_weight_grad(geo: &ConvGeometry) -> bool {
    geo.batch * geo.out_pixels() < WEIGHT_GRAD_GROUPS * geo.out_channels
}

/// Images per group of [`weight_grad`].
fn images_per_group(geo: &ConvGeometry) -> usize {
    geo.batch.div_ceil(WEIGHT_GRAD_GROUPS).max(1)
}

/// The sum of the groups' partial weight gradients (`len` values each), in order.
fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut dw = vec![0f32; len];
    for part in partials {
        dw.iter_mut().zip(part).for_each(|(x, y)| *x += y);
    }
    dw
}

/// Output channels per work unit of [`weight_grad_by_rows`]: fixed, so that the
/// GEMM's blocking, and with it the rounding, does not depend on the thread count.
const WEIGHT_GRAD_ROWS: usize = 64;

/// Most receptive-field values [`weight_grad_by_rows`] unfolds at once (4 Mi values,
/// 16 MiB): on VGG-16's 512-channel 4x4 maps at batch 128 the whole batch's were 36
/// MiB, more than the weight gradient itself.
const BY_ROWS_FIELD_VALUES: usize = 1 << 22;

/// Fewest fan-in rows in a group of [`weight_grad_by_rows`] that has others: the
/// `gemm` crate blocks the reduction by the problem's size when both of its sides are
/// at most 64, and a group that small would round differently from the whole product.
const BY_ROWS_MIN_ROWS: usize = 65;

/// `dW = G · Colᵀ` with the whole batch as the reduction: `G` is the output gradient
/// as `O x N·P` and `Col` the batch's receptive fields as `K x N·P`, both smaller than
/// one partial `dW` where this runs. Rows of `dW` are computed in parallel, each
/// summed over the batch in one order; `Col` is unfolded a few input channels at a
/// time (at most [`BY_ROWS_FIELD_VALUES`] values, at least [`BY_ROWS_MIN_ROWS`] rows),
/// each group of channels giving its block of `dW`'s columns, bit for bit the whole
/// product's.
fn weight_grad_by_rows(geo: &ConvGeometry, input: &[f32], grad: &[f32]) -> Vec<f32> {
    weight_grad_by_rows_within(geo, input, grad, BY_ROWS_FIELD_VALUES)
}

/// [`weight_grad_by_rows`] unfolding at most `field_values` values at once (at least
/// [`BY_ROWS_MIN_ROWS`] rows' worth of input channels).
fn weight_grad_by_rows_within(
    geo: &ConvGeometry,
    input: &[f32],
    grad: &[f32],
    field_values: usize,
) -> Vec<f32> {
    let (fan_in, out_ch, pixels) = (geo.fan_in(), geo.out_channels, geo.out_pixels());
    let columns = geo.batch * pixels;
    let mut g = vec![0f32; out_ch * columns];
    for (n, image) in grad.chunks_exact(out_ch * pixels).enumerate() {
        for (o, row) in image.chunks_exact(pixels).enumerate() {
            g[o * columns + n * pixels..][..pixels].copy_from_slice(row);
        }
    }
    let mut dw = vec![0f32; out_ch * fan_in];
    let per_channel = geo.kernel.0 * geo.kernel.1;
    let fewest = BY_ROWS_MIN_ROWS.div_ceil(per_channel.max(1));
    let group = (field_values / (per_channel * columns).max(1)).max(fewest);
    let plane = geo.in_size.0 * geo.in_size.1;
    let mut cols = Vec::new();
    let mut part = Vec::new();
    let mut first = 0;
    while first < geo.in_channels {
        // A last group below the fewest rows joins this one.
        let left = geo.in_channels - first;
        let channels = if left < group + fewest { left } else { group };
        let part_geo = ConvGeometry {
            in_channels: channels,
            ..*geo
        };
        let part_input = if channels == geo.in_channels {
            input
        } else {
            part.clear();
            for image in input.chunks_exact(geo.in_channels * plane) {
                part.extend_from_slice(&image[first * plane..][..channels * plane]);
            }
            &part
        };
        let rows = channels * per_channel;
        cols.resize(rows * columns, 0.0);
        im2col(&part_geo, part_input, 0..columns, &mut cols);
        dw.par_chunks_mut(WEIGHT_GRAD_ROWS * fan_in)
            .zip(g.par_chunks(WEIGHT_GRAD_ROWS * columns))
            .for_each(|(dw, g)| {
                let out = dw.len() / fan_in;
                gemm_rm_into(
                    out,
                    rows,
                    columns,
                    (g, false),
                    (&cols, true),
                    (&mut dw[first * per_channel..], fan_in),
                    false,
                );
            });
        first += channels;
    }
    dw
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
        let op = "fast conv2d";
        let (out, shape) = self.run(
            l1.dims(),
            &f32_values(s1, l1, op)?,
            l2.shape(),
            f32_values(s2, l2, op)?,
        )?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = read_f32(grad);
        self.gradients(input, weight, &g.values("fast conv2d backward")?)
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

    /// The whole-batch weight gradient unfolded a few input channels at a time equals
    /// the one-pass gradient bit for bit: groups that do not divide the channels (a
    /// short last one joins the one before), reductions longer than 512 columns, few
    /// and many output channels, strides and paddings.
    #[test]
    fn weight_gradient_by_channel_groups_equals_one_pass() {
        let cases = [
            ([8, 64, 4, 4], [128, 64, 3, 3], (1, 1), (1, 1)),
            ([40, 30, 4, 4], [7, 30, 3, 3], (1, 1), (1, 1)),
            ([9, 40, 9, 7], [70, 40, 3, 2], (2, 1), (0, 1)),
            ([3, 23, 5, 5], [33, 23, 4, 4], (1, 1), (0, 0)),
        ];
        for (i, (xs, ws, stride, padding)) in cases.into_iter().enumerate() {
            let geo = geometry(&xs, &ws, Conv2dParams { stride, padding }).unwrap();
            let input = rand(&xs, i as u64).flatten_all().unwrap();
            let input = input.to_vec1::<f32>().unwrap();
            let grad = rand(&geo.out_shape(), 10 + i as u64).flatten_all().unwrap();
            let grad = grad.to_vec1::<f32>().unwrap();
            let one_pass = weight_grad_by_rows_within(&geo, &input, &grad, usize::MAX);
            let per_channel = ws[2] * ws[3] * geo.batch * geo.out_pixels();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for channels in [1, 8, 9, 10, 17] {
                let got = weight_grad_by_rows_within(&geo, &input, &grad, channels * per_channel);
                assert_eq!(bits(&got), bits(&one_pass), "case {i}, {channels} channels");
            }
        }
    }

    #[test]
    fn matches_candle_forward_and_backward() {
        for (i, &(n, c, h, w, o, k, stride, pad)) in [
            (2, 3, 9, 7, 4, 3, 1, 1),
            (3, 2, 8, 8, 5, 5, 2, 2),
            (1, 4, 6, 5, 3, 1, 1, 0),
            (2, 3, 7, 7, 2, 3, 3, 0),
            (2, 3, 6, 9, 4, 5, 1, 2),
            // Padding of at least the kernel: the input gradient by scatter.
            (1, 2, 5, 5, 3, 2, 1, 2),
            // Stride 1: the input gradient as a conv.
            (2, 16, 6, 7, 3, 3, 1, 1),
            (1, 17, 5, 8, 4, 5, 1, 2),
            (2, 16, 5, 5, 2, 1, 1, 0),
            // Outputs 16 or more wide at stride 1: read from the padded planes in
            // place, with tiles and a rest per map row; the input gradient too where
            // the input is as wide.
            (2, 3, 6, 20, 5, 3, 1, 1),
            (1, 4, 5, 33, 7, 5, 1, 2),
            (2, 2, 3, 16, 13, 1, 1, 0),
            // As wide at stride 2: through the matrix.
            (1, 2, 6, 40, 3, 3, 2, 1),
            // Weights outsizing the maps: the weight gradient over the whole batch,
            // with a partial last block of rows.
            (3, 4, 2, 2, 70, 3, 1, 1),
            (2, 5, 3, 2, 9, 2, 1, 0),
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

    /// The fused split conv equals the conv of the split weights bit for bit, in value
    /// and in both gradients, zero weights included (their ReLU gradient is 1 on both
    /// halves), on both input-gradient paths.
    #[test]
    fn polarity_conv_equals_conv_of_split_weights() {
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        for (i, &(n, c, h, w, o, k, stride, pad)) in [
            (2, 3, 7, 6, 4, 3, 1, 1),
            (2, 16, 6, 6, 3, 3, 1, 1),
            (1, 5, 8, 7, 2, 3, 2, 0),
        ]
        .iter()
        .enumerate()
        {
            let x = Var::from_tensor(&rand(&[n, c, h, w], 300 + i as u64)).unwrap();
            let mut wv = rand(&[o, c, k, k], 400 + i as u64)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            wv[0] = 0.0;
            wv[3] = -0.0;
            let wt = Var::from_vec(wv, (o, c, k, k), &Device::Cpu).unwrap();
            let params = Conv2dParams::new(stride, pad);
            let fused = conv2d_polarities(&x, &wt, params).unwrap();
            let reference =
                conv2d(&x, &crate::polarity::split_polarities(&wt).unwrap(), params).unwrap();
            assert_eq!(bits(&fused), bits(&reference), "forward {i}");
            let probe = rand(fused.dims(), 500 + i as u64);
            let grads = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let (g1, g2) = (grads(&fused), grads(&reference));
            for v in [&x, &wt] {
                assert_eq!(
                    bits(g1.get(v).unwrap()),
                    bits(g2.get(v).unwrap()),
                    "gradient {i}"
                );
            }
        }
    }
}
