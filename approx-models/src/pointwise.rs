//! Clamping (ReLU, Hardtanh) and non-overlapping average pooling as one-pass candle
//! ops with one-pass backwards. candle builds these from generic pieces: its ReLU
//! backward is a comparison, a dtype cast and a product, its clamp a maximum and a
//! minimum whose backwards each compare, cast and multiply again, and pooling by
//! `mean` reduces over strided axes. On TinyConv's first block (2 M activations) those
//! cost more than the block's convolution; these ops are a read and a write each way.
//!
//! REX-SC's blocks end in ReLU → pooling → Hardtanh(0, 1): [`clamp_pool_clamp`] is
//! that chain as one op, which saves two activation-sized tensors and their gradient
//! sums (candle's backward allocates a zeroed gradient per node and adds into it).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use approx_train::alloc::zeros;
use approx_train::storage::f32_values;

/// Elements per parallel task: large enough to amortise scheduling, small enough to
/// split TinyConv's smallest maps over two threads.
const CHUNK: usize = 1 << 14;

/// `clamp(x, min, max)` with PyTorch's Hardtanh gradient: the output gradient passes
/// where `min < x < max` and is zero elsewhere. `min = 0, max = ∞` is ReLU.
pub fn clamp(x: &Tensor, min: f32, max: f32) -> Result<Tensor> {
    x.apply_op1(Clamp { min, max })
}

/// Average pooling over `k`x`k` windows with stride `k` on NCHW input; rows and
/// columns past the last whole window are dropped, as PyTorch's `AvgPool2d(k)`.
pub fn avg_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    clamp_pool_clamp(x, None, k, None)
}

/// `post(avg_pool(pre(x), k))` for optional clamps `pre` and `post` given as
/// `(min, max)`: the value and gradient of the three steps, in one op.
pub fn clamp_pool_clamp(
    x: &Tensor,
    pre: Option<(f32, f32)>,
    k: usize,
    post: Option<(f32, f32)>,
) -> Result<Tensor> {
    x.apply_op1(AvgPool::new(pre, k, post))
}

/// The op behind [`clamp`].
#[derive(Debug, Clone, Copy)]
struct Clamp {
    min: f32,
    max: f32,
}

impl Clamp {
    #[inline(always)]
    fn apply(&self, v: f32) -> f32 {
        v.max(self.min).min(self.max)
    }

    /// Whether the gradient passes at `v`. Both comparisons are made (`&`, not
    /// `&&`), so that callers select rather than branch on activations that fall on
    /// either side at random.
    #[inline(always)]
    fn passes(&self, v: f32) -> bool {
        (v > self.min) & (v < self.max)
    }
}

impl CustomOp1 for Clamp {
    fn name(&self) -> &'static str {
        "clamp"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_values(s, l, "clamp")?;
        let mut y = zeros(x.len());
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                for (y, &v) in y.iter_mut().zip(x) {
                    *y = self.apply(v);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        grad.apply_op2_no_bwd(x, &ClampGrad(*self)).map(Some)
    }
}

/// `grad · [min < x < max]`, the backward of [`Clamp`], over (grad, x).
struct ClampGrad(Clamp);

impl CustomOp2 for ClampGrad {
    fn name(&self) -> &'static str {
        "clamp-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, x) = (
            f32_values(s1, l1, "clamp backward")?,
            f32_values(s2, l2, "clamp backward")?,
        );
        let clamp = self.0;
        let mut dx = zeros(x.len());
        dx.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
            .for_each(|(dx, (g, x))| {
                for ((d, &g), &v) in dx.iter_mut().zip(g).zip(x) {
                    *d = if clamp.passes(v) { g } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(dx), l2.shape().clone()))
    }
}

/// The op behind [`clamp_pool_clamp`] and [`avg_pool`].
#[derive(Debug, Clone, Copy)]
struct AvgPool {
    k: usize,
    pre: Option<Clamp>,
    post: Option<Clamp>,
}

/// `(planes, (h, w), (oh, ow))` of an NCHW layout pooled by `k`.
type PoolShape = (usize, (usize, usize), (usize, usize));

impl AvgPool {
    /// Pooling over `k`x`k` windows between the optional clamps `pre` and `post`,
    /// given as `(min, max)`.
    fn new(pre: Option<(f32, f32)>, k: usize, post: Option<(f32, f32)>) -> Self {
        let bounds = |b: Option<(f32, f32)>| b.map(|(min, max)| Clamp { min, max });
        Self {
            k,
            pre: bounds(pre),
            post: bounds(post),
        }
    }

    fn shape(&self, dims: &[usize]) -> Result<PoolShape> {
        let &[n, c, h, w] = dims else {
            return Err(candle_core::Error::Msg(format!(
                "average pooling takes NCHW input, got shape {dims:?}"
            )));
        };
        let (oh, ow) = (h / self.k.max(1), w / self.k.max(1));
        if self.k == 0 || oh == 0 || ow == 0 {
            return Err(candle_core::Error::Msg(format!(
                "average pooling window {} does not fit a {h}x{w} map",
                self.k
            )));
        }
        Ok((n * c, (h, w), (oh, ow)))
    }
}

impl AvgPool {
    /// One plane's pooled outputs `y` (rows of `ow`) from its input `x` (rows of `w`)
    /// with window `k` (inlined, so that a constant `k` specialises the loops).
    #[inline(always)]
    fn pool_plane(&self, k: usize, x: &[f32], y: &mut [f32], w: usize, ow: usize) {
        let scale = 1.0 / (k * k) as f32;
        let pre = |v: f32| self.pre.map_or(v, |c| c.apply(v));
        for (oy, row) in y.chunks_mut(ow).enumerate() {
            row.fill(0.0);
            for line in x[oy * k * w..].chunks(w).take(k) {
                for (o, win) in row.iter_mut().zip(line.chunks_exact(k)) {
                    *o += win.iter().map(|&v| pre(v)).sum::<f32>();
                }
            }
            for o in row.iter_mut() {
                *o *= scale;
                if let Some(c) = self.post {
                    *o = c.apply(*o);
                }
            }
        }
    }

    /// One plane's input gradient `dx` (rows of `w`) from its input `x`, pooled
    /// outputs `y` and their gradient `g` (rows of `ow`), window `k` (inlined as
    /// [`AvgPool::pool_plane`]).
    #[inline(always)]
    fn pool_grad_plane(
        &self,
        k: usize,
        (dx, x): (&mut [f32], &[f32]),
        (g, y): (&[f32], &[f32]),
        (w, ow, oh): (usize, usize, usize),
    ) {
        let scale = 1.0 / (k * k) as f32;
        for (row, (dx, x)) in dx.chunks_mut(w).zip(x.chunks(w)).enumerate().take(oh * k) {
            let at = (row / k) * ow;
            let (g, y) = (&g[at..at + ow], &y[at..at + ow]);
            for (((win, xs), &g), &y) in dx.chunks_exact_mut(k).zip(x.chunks_exact(k)).zip(g).zip(y)
            {
                let passes = self.post.is_none_or(|c| c.passes(y));
                let gv = if passes { g * scale } else { 0.0 };
                for (d, &v) in win.iter_mut().zip(xs) {
                    *d = if self.pre.is_none_or(|c| c.passes(v)) {
                        gv
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "avg-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, (h, w), (oh, ow)) = self.shape(l.dims())?;
        let x = f32_values(s, l, "average pooling")?;
        let mut y = zeros(planes * oh * ow);
        y.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(y, x)| match self.k {
                // The usual window as a constant, so that its loops unroll.
                2 => self.pool_plane(2, x, y, w, ow),
                k => self.pool_plane(k, x, y, w, ow),
            });
        let dims = l.dims();
        Ok((CpuStorage::F32(y), Shape::from((dims[0], dims[1], oh, ow))))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        grad.apply_op3_no_bwd(res, x, &AvgPoolGrad(*self)).map(Some)
    }
}

/// What follows a batch norm in REX-SC's blocks: a clamp (ReLU, Hardtanh) or a
/// clamp → average pooling → clamp chain, which the batch norm runs plane by plane in
/// its own op ([`crate::norm::BatchNorm::forward_then`]), so that the normalised
/// activations are neither kept for backward nor given a gradient tensor of their own.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue(EpilogueKind);

#[derive(Debug, Clone, Copy)]
enum EpilogueKind {
    Clamp(Clamp),
    Pool(AvgPool),
}

impl Epilogue {
    /// `clamp(x, min, max)`, as [`clamp`].
    pub fn clamp(min: f32, max: f32) -> Self {
        Self(EpilogueKind::Clamp(Clamp { min, max }))
    }

    /// `post(avg_pool(pre(x), k))`, as [`clamp_pool_clamp`].
    pub fn pool(pre: Option<(f32, f32)>, k: usize, post: Option<(f32, f32)>) -> Self {
        Self(EpilogueKind::Pool(AvgPool::new(pre, k, post)))
    }

    /// The output shape for NCHW input `dims` (an error names a window that does not
    /// fit).
    pub(crate) fn output_dims(&self, dims: &[usize]) -> Result<Vec<usize>> {
        match self.0 {
            EpilogueKind::Clamp(_) => Ok(dims.to_vec()),
            EpilogueKind::Pool(pool) => {
                let (_, _, (oh, ow)) = pool.shape(dims)?;
                Ok(vec![dims[0], dims[1], oh, ow])
            }
        }
    }

    /// One `h`x`w` plane's output `y` from its input `x`, bit for bit as the
    /// standalone op's.
    pub(crate) fn plane(&self, x: &[f32], y: &mut [f32], w: usize) {
        match self.0 {
            EpilogueKind::Clamp(clamp) => {
                for (y, &v) in y.iter_mut().zip(x) {
                    *y = clamp.apply(v);
                }
            }
            EpilogueKind::Pool(pool) => match pool.k {
                2 => pool.pool_plane(2, x, y, w, w / 2),
                k => pool.pool_plane(k, x, y, w, w / k),
            },
        }
    }

    /// One `h`x`w` plane's input gradient `dx` from its input `x` and output gradient
    /// `g`, bit for bit as the standalone op's backward; `pooled` is scratch space.
    pub(crate) fn grad_plane(
        &self,
        x: &[f32],
        g: &[f32],
        dx: &mut [f32],
        (h, w): (usize, usize),
        pooled: &mut Vec<f32>,
    ) {
        match self.0 {
            EpilogueKind::Clamp(clamp) => {
                for ((d, &g), &v) in dx.iter_mut().zip(g).zip(x) {
                    *d = if clamp.passes(v) { g } else { 0.0 };
                }
            }
            EpilogueKind::Pool(pool) => {
                let (oh, ow) = (h / pool.k, w / pool.k);
                pooled.resize(oh * ow, 0.0);
                self.plane(x, pooled, w);
                // Rows and columns past the last whole window get no gradient.
                dx.fill(0.0);
                match pool.k {
                    2 => pool.pool_grad_plane(2, (dx, x), (g, pooled), (w, ow, oh)),
                    k => pool.pool_grad_plane(k, (dx, x), (g, pooled), (w, ow, oh)),
                }
            }
        }
    }
}

/// The backward of [`AvgPool`] over (output gradient, output, input): every input
/// pixel of a window gets the window's output gradient over `k²` where the clamps pass
/// it (the post-clamp's where the output is strictly inside its bounds, which is where
/// the pooled value was); dropped rows and columns get zero.
struct AvgPoolGrad(AvgPool);

impl CustomOp3 for AvgPoolGrad {
    fn name(&self) -> &'static str {
        "avg-pool-grad"
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
        let pool = self.0;
        let (planes, (h, w), (oh, ow)) = pool.shape(l3.dims())?;
        let k = pool.k;
        let op = "average pooling backward";
        let (g, y, x) = (
            f32_values(s1, l1, op)?,
            f32_values(s2, l2, op)?,
            f32_values(s3, l3, op)?,
        );
        let mut dx = zeros(planes * h * w);
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(g.par_chunks(oh * ow).zip(y.par_chunks(oh * ow)))
            .for_each(|(input, output)| match k {
                2 => pool.pool_grad_plane(2, input, output, (w, ow, oh)),
                k => pool.pool_grad_plane(k, input, output, (w, ow, oh)),
            });
        Ok((CpuStorage::F32(dx), l3.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Forward and gradient of `ours` against candle's `theirs` under a random probe.
    fn check(x: &Var, ours: Tensor, theirs: Tensor) {
        assert_eq!(ours.dims(), theirs.dims());
        assert!(max_diff(&ours, &theirs) < 1e-6);
        let probe = Tensor::rand(-1f32, 1f32, ours.shape(), &Device::Cpu).unwrap();
        let grad = |y: &Tensor| {
            let grads = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            grads.get(x).unwrap().clone()
        };
        assert!(max_diff(&grad(&ours), &grad(&theirs)) < 1e-6);
    }

    #[test]
    fn clamp_matches_candle_away_from_the_bounds() {
        // Values at exactly a bound are where the two gradients' conventions differ;
        // uniform random values never land there.
        let x = Var::from_tensor(&Tensor::rand(-2f32, 2f32, (3, 5, 7, 9), &Device::Cpu).unwrap())
            .unwrap();
        check(
            &x,
            clamp(&x, 0.0, 1.0).unwrap(),
            x.clamp(0f32, 1f32).unwrap(),
        );
        check(
            &x,
            clamp(&x, 0.0, f32::INFINITY).unwrap(),
            x.relu().unwrap(),
        );
    }

    #[test]
    fn clamp_gradient_is_zero_at_the_bounds() {
        let x = Var::new(&[-1f32, 0.0, 0.5, 1.0, 2.0], &Device::Cpu).unwrap();
        let g = clamp(&x, 0.0, 1.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let got = g.get(&x).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, [0.0, 0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn avg_pool_matches_candle_including_dropped_edges() {
        for (h, w, k) in [(8, 8, 2), (9, 7, 2), (12, 10, 3), (5, 5, 5)] {
            let x =
                Var::from_tensor(&Tensor::rand(-1f32, 1f32, (2, 3, h, w), &Device::Cpu).unwrap())
                    .unwrap();
            let (oh, ow) = (h / k, w / k);
            let cropped = x
                .narrow(2, 0, oh * k)
                .unwrap()
                .narrow(3, 0, ow * k)
                .unwrap();
            check(&x, avg_pool(&x, k).unwrap(), cropped.avg_pool2d(k).unwrap());
        }
    }

    #[test]
    fn fused_relu_pool_hardtanh_matches_the_three_steps() {
        let x = Var::from_tensor(&Tensor::rand(-1f32, 3f32, (2, 4, 9, 8), &Device::Cpu).unwrap())
            .unwrap();
        let steps = x
            .relu()
            .unwrap()
            .narrow(2, 0, 8)
            .unwrap()
            .avg_pool2d(2)
            .unwrap()
            .clamp(0f32, 1f32)
            .unwrap();
        let fused = clamp_pool_clamp(&x, Some((0.0, f32::INFINITY)), 2, Some((0.0, 1.0))).unwrap();
        check(&x, fused, steps);
    }

    #[test]
    fn avg_pool_rejects_a_window_larger_than_the_map() {
        let x = Tensor::zeros((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = avg_pool(&x, 4).unwrap_err().to_string();
        assert!(e.contains("window 4"), "{e}");
    }
}
