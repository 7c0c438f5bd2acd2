//! A model as a sequence of layers: what TinyConv, LeNet-5 and the MLP are, and what
//! a model file describes.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use approx_hw::rng::mix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use approx_hw::{Conv2dParams, Layer};
use approx_train::layer::HwLayer;
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::recompute::{inner_product, tracked, Block, BlockInput, Recompute, Recomputed};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::attention::{ActivationMatmul, LayerNorm, SelfAttention, Tokens};
use crate::hwmap::HwMap;
use crate::norm::{BatchNorm, InputGrad};
use crate::pointwise::{self, Epilogue};
use crate::store::{Init, LoadError, ParamStore};

/// One step of a sequential model.
pub enum Step {
    /// A conv2d or linear layer on (possibly) approximate hardware.
    Hw(Box<HwLayer>),
    /// Batch normalisation.
    BatchNorm(BatchNorm),
    /// `max(x, 0)`.
    Relu,
    /// `clamp(x, min, max)`; REX-SC's `Hardtanh(0, 1)` keeps SC inputs unipolar.
    Hardtanh {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// Average pooling, square kernel = stride.
    AvgPool(usize),
    /// Average pooling with a square `kernel`, `stride` and zero `padding` (counted in
    /// the mean, as PyTorch's default `count_include_pad`).
    AvgPoolPadded {
        /// Window side, pixels.
        kernel: usize,
        /// Step between windows, pixels.
        stride: usize,
        /// Zeros added on each side, pixels.
        padding: usize,
    },
    /// Max pooling, square kernel = stride.
    MaxPool(usize),
    /// Mean over the spatial dimensions: `[N, C, H, W]` to `[N, C]`.
    GlobalAvgPool,
    /// `[N, ...]` to `[N, features]`.
    Flatten,
    /// Inverted dropout with drop probability `p` in training, identity otherwise; the
    /// mask is drawn from the training step and `key`, so runs are reproducible.
    Dropout {
        /// Drop probability.
        p: f32,
        /// Distinguishes the model's dropout steps.
        key: u64,
    },
    /// A residual block: `body(x) + shortcut(x)`.
    Residual(Box<Residual>),
    /// Layer normalisation over the last dimension.
    LayerNorm(LayerNorm),
    /// Patch features `[N, D, h, w]` to tokens `[N, 1 + h·w, D]`.
    Tokens(Tokens),
    /// Multi-head self-attention, `[N, T, 3·D]` to `[N, T, D]`.
    SelfAttention(Box<SelfAttention>),
    /// GELU (the exact, erf form).
    Gelu,
    /// The class token: `[N, T, D]` to `[N, D]`.
    ClassToken,
}

/// The two paths of a residual block.
pub struct Residual {
    /// The main path.
    pub body: Vec<Step>,
    /// The shortcut; empty for the identity.
    pub shortcut: Vec<Step>,
}

/// REX-SC's `Hardtanh(0, 1)`.
pub const HARDTANH01: Step = Step::Hardtanh { min: 0.0, max: 1.0 };

/// A layer waiting for its hardware (assigned when the model is complete, since
/// "all but first and last" needs the count).
struct PendingLayer {
    name: String,
    op: Layer,
    weight: Var,
    bias: Option<Var>,
}

enum Pending {
    Layer(PendingLayer),
    Other(Step),
    Attention {
        prefix: String,
        heads: usize,
    },
    Residual {
        body: Vec<Pending>,
        shortcut: Vec<Pending>,
    },
}

impl Pending {
    fn layers(&self) -> usize {
        match self {
            Pending::Layer(_) => 1,
            Pending::Other(_) | Pending::Attention { .. } => 0,
            Pending::Residual { body, shortcut } => {
                body.iter().chain(shortcut).map(Pending::layers).sum()
            }
        }
    }
}

/// Builds a [`Sequential`] step by step, taking parameters from a [`ParamStore`].
pub struct Builder {
    store: ParamStore,
    steps: Vec<Pending>,
    init_scale: f32,
}

impl Builder {
    /// A builder drawing parameters from `store`.
    pub fn new(store: ParamStore) -> Self {
        Self {
            store,
            steps: Vec::new(),
            init_scale: 1.0,
        }
    }

    /// Multiplies the initialisation range of the layers added after this call (REX-SC
    /// initialises TinyConv and VGG-11 ×4, so that weights start well above SC's
    /// 1/B resolution).
    pub fn init_scale(&mut self, scale: f32) -> &mut Self {
        self.init_scale = scale;
        self
    }

    /// A conv2d layer `name`: `in_ch → out_ch`, square `kernel`, `stride`, `padding`,
    /// with or without bias; PyTorch's default initialisation U(±1/√fan_in), times
    /// the [`Builder::init_scale`].
    pub fn conv(
        &mut self,
        name: &str,
        (in_ch, out_ch): (usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> &mut Self {
        let bound = self.init_scale / ((in_ch * kernel * kernel) as f32).sqrt();
        let weight = self.store.param(
            &format!("{name}.weight"),
            &[out_ch, in_ch, kernel, kernel],
            Init::Uniform(bound),
        );
        let bias = bias.then(|| {
            self.store
                .param(&format!("{name}.bias"), &[out_ch], Init::Uniform(bound))
        });
        self.steps.push(Pending::Layer(PendingLayer {
            name: name.to_string(),
            op: Layer::Conv2d(Conv2dParams::new(stride, padding)),
            weight,
            bias,
        }));
        self
    }

    /// A linear layer `name`: `in_f → out_f`, with or without bias.
    pub fn linear(&mut self, name: &str, (in_f, out_f): (usize, usize), bias: bool) -> &mut Self {
        let bound = self.init_scale / (in_f as f32).sqrt();
        let weight = self.store.param(
            &format!("{name}.weight"),
            &[out_f, in_f],
            Init::Uniform(bound),
        );
        let bias = bias.then(|| {
            self.store
                .param(&format!("{name}.bias"), &[out_f], Init::Uniform(bound))
        });
        self.steps.push(Pending::Layer(PendingLayer {
            name: name.to_string(),
            op: Layer::Linear,
            weight,
            bias,
        }));
        self
    }

    /// A batch norm `name` over `channels`, quantized as REX-SC's when `quantized`.
    pub fn batch_norm(&mut self, name: &str, channels: usize, quantized: bool) -> &mut Self {
        let bn = BatchNorm::new(&mut self.store, name, channels, quantized);
        self.steps.push(Pending::Other(Step::BatchNorm(bn)));
        self
    }

    /// A parameter-free step.
    pub fn step(&mut self, step: Step) -> &mut Self {
        self.steps.push(Pending::Other(step));
        self
    }

    /// A layer norm `name` over `dim` features.
    pub fn layer_norm(&mut self, name: &str, dim: usize) -> &mut Self {
        let norm = LayerNorm::new(&mut self.store, name, dim);
        self.step(Step::LayerNorm(norm))
    }

    /// The class token and position embedding of `patches` patches of `dim` features.
    pub fn tokens(&mut self, dim: usize, patches: usize) -> &mut Self {
        let tokens = Tokens::new(&mut self.store, dim, patches);
        self.step(Step::Tokens(tokens))
    }

    /// Self-attention with `heads` heads; its activation matmuls are named
    /// `{prefix}.qk` and `{prefix}.av` in hardware maps (exact unless a map names
    /// them).
    pub fn self_attention(&mut self, prefix: &str, heads: usize) -> &mut Self {
        self.steps.push(Pending::Attention {
            prefix: prefix.to_string(),
            heads,
        });
        self
    }

    /// Inverted dropout with drop probability `p` (a fresh mask per training step).
    pub fn dropout(&mut self, p: f32) -> &mut Self {
        let key = self.steps.len() as u64;
        self.step(Step::Dropout { p, key })
    }

    /// A residual block whose main path `body` and shortcut `shortcut` add their
    /// steps to the builder they are given (a shortcut that adds nothing is the
    /// identity). Layers are numbered body first, as PyTorch registers them.
    pub fn residual(
        &mut self,
        body: impl FnOnce(&mut Self),
        shortcut: impl FnOnce(&mut Self),
    ) -> &mut Self {
        let outer = std::mem::take(&mut self.steps);
        body(self);
        let body = std::mem::take(&mut self.steps);
        shortcut(self);
        let shortcut = std::mem::replace(&mut self.steps, outer);
        self.steps.push(Pending::Residual { body, shortcut });
        self
    }

    /// The finished model `name` for inputs `input` (C, H, W) and `classes` outputs,
    /// its layers on the hardware `hw` says, in `mode`; fails listing every tensor of
    /// a loaded file that does not fit.
    pub fn finish(
        self,
        name: &str,
        input: (usize, usize, usize),
        classes: usize,
        hw: &HwMap,
        mode: ExecMode,
    ) -> std::result::Result<Sequential, LoadError> {
        let vars = self.store.finish(name)?;
        let count = self.steps.iter().map(Pending::layers).sum();
        let mut index = 0;
        let steps = resolve(self.steps, hw, mode, &mut index, count)?;
        Ok(Sequential {
            name: name.to_string(),
            input,
            classes,
            steps: Arc::new(steps),
            vars,
            segments: Vec::new(),
            recompute: Recompute::default(),
            step: AtomicU64::new(0),
        })
    }
}

impl Step {
    /// The step's trained parameters.
    fn params(&self) -> Vec<Var> {
        match self {
            Step::Hw(l) => std::iter::once(l.weight())
                .chain(l.bias())
                .cloned()
                .collect(),
            Step::BatchNorm(bn) => bn.params().into_iter().cloned().collect(),
            Step::LayerNorm(ln) => ln.params().into_iter().cloned().collect(),
            Step::Tokens(t) => t.params().into_iter().cloned().collect(),
            Step::Residual(r) => r
                .body
                .iter()
                .chain(&r.shortcut)
                .flat_map(Step::params)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The hardware layers in the step, in order.
    fn hw_layers(&self) -> Vec<&HwLayer> {
        match self {
            Step::Hw(l) => vec![l.as_ref()],
            Step::Residual(r) => r
                .body
                .iter()
                .chain(&r.shortcut)
                .flat_map(Step::hw_layers)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Applies the step to `h`.
    fn forward(&self, h: &Tensor, ctx: Ctx) -> Result<Tensor> {
        match self {
            Step::Hw(l) if ctx.values_only => hw_step(l, h, HwLayer::forward_value_only),
            Step::Hw(l) => hw_step(l, h, HwLayer::forward),
            Step::LayerNorm(ln) => ln.forward(h),
            Step::Tokens(t) => t.forward(h),
            Step::SelfAttention(a) => a.forward(h, ctx.mode),
            Step::Gelu => h.gelu_erf(),
            Step::ClassToken => h.narrow(1, 0, 1)?.squeeze(1),
            Step::BatchNorm(bn) => batch_norm(bn, h, ctx, None),
            Step::Relu => pointwise::clamp(h, 0.0, f32::INFINITY),
            Step::Hardtanh { min, max } => pointwise::clamp(h, *min, *max),
            Step::AvgPool(k) => pointwise::avg_pool(h, *k),
            Step::AvgPoolPadded {
                kernel,
                stride,
                padding,
            } => avg_pool_padded(h, *kernel, *stride, *padding),
            Step::MaxPool(k) => h.max_pool2d(*k),
            Step::GlobalAvgPool => h.flatten_from(2)?.mean(2),
            Step::Flatten => h.flatten_from(1),
            Step::Dropout { p, key } if ctx.train && *p > 0.0 => {
                let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(ctx.step) ^ mix(*key)));
                let keep = 1.0 - *p;
                let mask: Vec<f32> = (0..h.elem_count())
                    .map(|_| {
                        if rng.random::<f32>() < keep {
                            1.0 / keep
                        } else {
                            0.0
                        }
                    })
                    .collect();
                h * Tensor::from_vec(mask, h.shape(), h.device())?
            }
            Step::Dropout { .. } => Ok(h.clone()),
            Step::Residual(r) => {
                let main = run(&r.body, h.clone(), ctx)?;
                if r.shortcut.is_empty() {
                    main + h
                } else {
                    main + run(&r.shortcut, h.clone(), ctx)?
                }
            }
        }
    }
}

/// Gives every pending layer its hardware (layers numbered from `index` in order,
/// `count` in the model) and builds the steps.
fn resolve(
    pending: Vec<Pending>,
    hw: &HwMap,
    mode: ExecMode,
    index: &mut usize,
    count: usize,
) -> std::result::Result<Vec<Step>, LoadError> {
    let mut steps = Vec::with_capacity(pending.len());
    for p in pending {
        steps.push(match p {
            Pending::Other(step) => step,
            Pending::Layer(p) => {
                let spec = hw.resolve(&p.name, *index, count);
                *index += 1;
                let layer =
                    HwLayer::new(&p.name, p.op, p.weight, p.bias, spec, mode).map_err(|e| {
                        LoadError::Hardware {
                            layer: p.name.clone(),
                            message: e.to_string(),
                        }
                    })?;
                Step::Hw(Box::new(layer))
            }
            Pending::Attention { prefix, heads } => {
                let matmul = |suffix: &str| {
                    let name = format!("{prefix}.{suffix}");
                    let spec = hw.resolve_activation_matmul(&name);
                    ActivationMatmul::new(name, spec)
                };
                Step::SelfAttention(Box::new(SelfAttention::new(
                    heads,
                    matmul("qk"),
                    matmul("av"),
                )))
            }
            Pending::Residual { body, shortcut } => {
                let body = resolve(body, hw, mode, index, count)?;
                let shortcut = resolve(shortcut, hw, mode, index, count)?;
                Step::Residual(Box::new(Residual { body, shortcut }))
            }
        });
    }
    Ok(steps)
}

/// The hardware layer `l` on `h` through `forward` (its forward or its gradient-only
/// form); on `[N, T, K]` tokens, a linear layer applied to every token.
fn hw_step(
    l: &HwLayer,
    h: &Tensor,
    forward: fn(&HwLayer, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if h.rank() != 3 {
        return forward(l, h);
    }
    let (n, t, d) = h.dims3()?;
    let y = forward(l, &h.reshape((n * t, d))?)?;
    let out = y.dim(1)?;
    y.reshape((n, t, out))
}

/// A checkpointed block's recomputation in backward (see
/// [`approx_train::recompute::BackwardFn`]). Nothing reads a recomputed block's output
/// value, only gradients flow through it, so a last hardware layer runs for its
/// gradients alone, from the seed, without its bit-accurate kernel and without
/// materialising the block's output. A hardware layer with a graph-free backward
/// ([`HwLayer::seeded_gradients`]), alone or after a batch norm and the clamps and
/// pooling that its op runs, makes the block run its ops' backwards itself
/// ([`Recomputed::Gradients`]): the seed, the normalised activations and each
/// gradient are dropped as soon as they have been used, and the input's gradient is
/// written over the input (at a checkpointed VGG-16 step's peak, candle's backward of
/// the same ops held eight block-output-sized tensors). Other blocks give candle the
/// scalar `⟨output, seed⟩`, with a last hardware layer's from
/// [`HwLayer::seeded_gradient`].
fn recompute_block(
    steps: &[Step],
    x: BlockInput,
    input_grad: bool,
    ctx: Ctx,
    seed: Tensor,
) -> Result<Recomputed> {
    if let Some((Step::Hw(l), body)) = steps.split_last() {
        if l.has_seeded_gradients() {
            match body {
                [] => {
                    return l
                        .seeded_gradients(x.into_values()?, seed, input_grad)
                        .map(Recomputed::Gradients)
                }
                [Step::BatchNorm(bn), rest @ ..] if epilogue_at_start(rest).1 == rest.len() => {
                    // A packed input is read plane by plane for the batch norm's
                    // forward, and unpacked only for its backward, after the layer's.
                    let epilogue = epilogue_at_start(rest).0;
                    let (h, norm) = bn.recompute(&x, ctx.train, epilogue)?;
                    let layer = l.seeded_gradients(h, seed, true)?;
                    let dh = layer.input.ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "layer `{}` gave no input gradient to its batch norm",
                            l.name()
                        ))
                    })?;
                    let input = match input_grad {
                        true => InputGrad::OverInput,
                        false => InputGrad::Skip,
                    };
                    let mut grads = norm.gradients(&x.into_values()?, &dh, input)?;
                    grads.params.extend(layer.params);
                    return Ok(Recomputed::Gradients(grads));
                }
                _ => {}
            }
        }
    }
    let input = tracked(&x.into_values()?, input_grad)?;
    let value = match steps.split_last() {
        Some((Step::Hw(l), body)) => {
            let h = run(body, input.clone(), ctx)?;
            match h.rank() {
                3 => inner_product(&hw_step(l, &h, HwLayer::forward_gradient_only)?, &seed)?,
                _ => l.seeded_gradient(&h, &seed)?,
            }
        }
        _ => inner_product(&run(steps, input.clone(), ctx)?, &seed)?,
    };
    Ok(Recomputed::Scalar { value, input })
}

/// Applies `steps` in order to `x`, which is dropped after the first step that reads
/// it (unless the caller keeps a clone). A values-only forward detaches each step's
/// output: an op on a parameter is recorded even then, and its node would keep the
/// step's input alive as long as the output.
fn run(steps: &[Step], x: Tensor, ctx: Ctx) -> Result<Tensor> {
    let mut h = x;
    let mut rest = steps;
    while let Some(step) = rest.first() {
        if let Step::BatchNorm(bn) = step {
            let (epilogue, steps) = epilogue_at_start(&rest[1..]);
            h = batch_norm(bn, &h, ctx, epilogue)?;
            rest = &rest[1 + steps..];
        } else if let Some(chain) = PoolChain::at_start(rest) {
            h = pointwise::clamp_pool_clamp(&h, chain.pre, chain.k, chain.post)?;
            rest = &rest[chain.steps..];
        } else {
            h = step.forward(&h, ctx)?;
            rest = &rest[1..];
        }
        if ctx.values_only {
            h = h.detach();
        }
    }
    Ok(h)
}

/// The batch norm `bn` on `h`, followed by `epilogue` in its op; the running
/// statistics are updated in training, but not in a checkpoint's recomputation.
fn batch_norm(bn: &BatchNorm, h: &Tensor, ctx: Ctx, epilogue: Option<Epilogue>) -> Result<Tensor> {
    let update = ctx.train && ctx.pass == Pass::Forward;
    bn.forward_then(h, ctx.train, update, epilogue)
}

/// The steps at the start of `steps` that a batch norm before them runs in its own op
/// ([`BatchNorm::forward_then`]), and how many steps that covers: a clamp → pooling →
/// clamp chain, pooling, or a clamp.
fn epilogue_at_start(steps: &[Step]) -> (Option<Epilogue>, usize) {
    if let Some(chain) = PoolChain::at_start(steps) {
        return (
            Some(Epilogue::pool(chain.pre, chain.k, chain.post)),
            chain.steps,
        );
    }
    match (steps.first(), clamp_bounds(steps.first())) {
        (Some(Step::AvgPool(k)), _) => (Some(Epilogue::pool(None, *k, None)), 1),
        (_, Some((min, max))) => (Some(Epilogue::clamp(min, max)), 1),
        _ => (None, 0),
    }
}

/// The bounds of a clamping step (ReLU is `(0, ∞)`).
fn clamp_bounds(step: Option<&Step>) -> Option<(f32, f32)> {
    match step? {
        Step::Relu => Some((0.0, f32::INFINITY)),
        Step::Hardtanh { min, max } => Some((*min, *max)),
        _ => None,
    }
}

/// A clamp → average pooling → clamp chain of steps (either clamp optional, at least
/// two steps): run as one op, it keeps no intermediate tensors.
struct PoolChain {
    /// The clamp before pooling, `(min, max)`.
    pre: Option<(f32, f32)>,
    /// The pooling window side (= stride), pixels.
    k: usize,
    /// The clamp after pooling.
    post: Option<(f32, f32)>,
    /// Steps the chain covers.
    steps: usize,
}

impl PoolChain {
    /// The chain at the start of `steps`, if there is one.
    fn at_start(steps: &[Step]) -> Option<Self> {
        let pre = clamp_bounds(steps.first());
        let at = usize::from(pre.is_some());
        let Some(Step::AvgPool(k)) = steps.get(at) else {
            return None;
        };
        let post = clamp_bounds(steps.get(at + 1));
        let len = at + 1 + usize::from(post.is_some());
        (len >= 2).then_some(Self {
            pre,
            k: *k,
            post,
            steps: len,
        })
    }
}

/// Which run of a checkpointed block's steps this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// The step's forward: side effects (batch-norm running statistics) happen here.
    Forward,
    /// The recomputation in backward: the same values, no side effects.
    Recompute,
}

/// What a step's forward depends on besides its input.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    /// Training behaviour (batch statistics, dropout).
    train: bool,
    /// Whether side effects happen (not in a checkpoint's recomputation).
    pass: Pass,
    /// The training step (keys dropout masks).
    step: u64,
    /// The model's execution mode (for steps that are not hardware layers).
    mode: ExecMode,
    /// Nothing takes gradients of this forward (evaluation, a checkpointed block's
    /// first run): hardware layers compute only their values
    /// ([`HwLayer::forward_value_only`]).
    values_only: bool,
}

/// A model that applies its steps in order.
pub struct Sequential {
    name: String,
    input: (usize, usize, usize),
    classes: usize,
    steps: Arc<Vec<Step>>,
    vars: Vec<(String, Var)>,
    /// Checkpointed segments of `steps` in training (empty: none).
    segments: Vec<Range<usize>>,
    recompute: Recompute,
    /// The training step (keys dropout masks).
    step: AtomicU64,
}

impl Sequential {
    /// The model's name (e.g. `tinyconv`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Input shape (C, H, W).
    pub fn input_shape(&self) -> (usize, usize, usize) {
        self.input
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Trains with gradient checkpointing in `segments` blocks of about equally many
    /// hardware layers (0 or 1: off). Each block ends at a hardware layer and keeps
    /// only its input for backward, where its activations are recomputed from it
    /// (one more forward, traded for memory; gradients are unchanged). The block's
    /// last hardware layer is recomputed without its bit-accurate kernel (see
    /// [`run_block`]), so with one block per hardware layer `accurate` training pays
    /// for the recomputation with the surrogate only. Steps after the last hardware
    /// layer (a classifier's batch norm) run unchecked.
    pub fn set_checkpoint_segments(&mut self, segments: usize) {
        self.segments.clear();
        let per_step: Vec<usize> = self.steps.iter().map(|s| s.hw_layers().len()).collect();
        let layers: usize = per_step.iter().sum();
        if segments <= 1 || layers == 0 {
            return;
        }
        // Hardware layer j belongs to block ⌊j·S/L⌋; a block ends after the step that
        // holds its last hardware layer.
        let segments = segments.min(layers);
        let group = |j: usize| j * segments / layers;
        let (mut start, mut seen) = (0, 0);
        for (i, &n) in per_step.iter().enumerate() {
            if n == 0 {
                continue;
            }
            seen += n;
            if seen == layers || group(seen) != group(seen - 1) {
                self.segments.push(start..i + 1);
                start = i + 1;
            }
        }
    }

    /// The checkpointed segments, as step index ranges (empty: none).
    pub fn checkpoint_segments(&self) -> &[Range<usize>] {
        &self.segments
    }
}

impl Sequential {
    /// The context of a forward from its start.
    fn context(&self, train: bool, values_only: bool) -> Ctx {
        Ctx {
            train,
            pass: Pass::Forward,
            step: self.step.load(Ordering::Relaxed),
            // Steps that are not hardware layers follow the first hardware layer.
            mode: self
                .hw_layers()
                .first()
                .map_or(ExecMode::Float, |l| l.mode()),
            values_only,
        }
    }
}

impl Model for Sequential {
    fn predict(&self, x: &Tensor) -> Result<Tensor> {
        run(&self.steps, x.clone(), self.context(false, true))
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let ctx = self.context(train, false);
        if !train || self.segments.is_empty() {
            return run(&self.steps, x.clone(), ctx);
        }
        let tail = self.segments.last().map_or(0, |r| r.end);
        let blocks = self
            .segments
            .iter()
            .map(|range| {
                let params = self.steps[range.clone()]
                    .iter()
                    .flat_map(Step::params)
                    .collect();
                let forward = Ctx {
                    values_only: true,
                    ..ctx
                };
                let recomputed = Ctx {
                    pass: Pass::Recompute,
                    values_only: false,
                    ..ctx
                };
                let (steps, range) = (self.steps.clone(), range.clone());
                let (backward_steps, backward_range) = (steps.clone(), range.clone());
                Block {
                    params,
                    forward: Arc::new(move |t: Tensor| run(&steps[range.clone()], t, forward)),
                    backward: Arc::new(move |t: BlockInput, seed: Tensor, input_grad: bool| {
                        let steps = &backward_steps[backward_range.clone()];
                        recompute_block(steps, t, input_grad, recomputed, seed)
                    }),
                }
            })
            .collect();
        let h = self.recompute.chain(x, blocks)?;
        run(&self.steps[tail..], h, ctx)
    }

    fn merge_recomputed_grads(&self, grads: &mut GradStore) -> Result<()> {
        self.recompute.merge_into(grads)
    }

    fn checkpointed_blocks(&self) -> Option<&Recompute> {
        (!self.segments.is_empty()).then_some(&self.recompute)
    }

    fn hw_layers(&self) -> Vec<&HwLayer> {
        self.steps.iter().flat_map(Step::hw_layers).collect()
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }

    fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
        for l in self.hw_layers() {
            l.set_step(step);
        }
    }
}

/// Average pooling with overlapping windows and zero padding (counted in the mean), as
/// a convolution of every channel with a constant `1/k²` kernel: candle has no
/// backward for overlapping average pooling.
fn avg_pool_padded(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let ones = Tensor::ones((1, 1, kernel, kernel), x.dtype(), x.device())?;
    let y = approx_train::conv::conv2d(
        &x.reshape((n * c, 1, h, w))?,
        &(ones / (kernel * kernel) as f64)?,
        Conv2dParams::new(stride, padding),
    )?;
    let (oh, ow) = (y.dim(2)?, y.dim(3)?);
    y.reshape((n, c, oh, ow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx_train::packed::Packed;
    use candle_core::Device;

    #[test]
    fn checkpoint_blocks_end_at_hardware_layers() {
        let hw = crate::HwMap::All("sc:len=16,acc=or2".parse().unwrap());
        for (kind, segments) in [
            (crate::ModelKind::TinyConv, 4),
            (crate::ModelKind::Vgg11, 3),
        ] {
            let mut net = crate::build(kind, (3, 32, 32), 10, &hw, ExecMode::Accurate, 0).unwrap();
            net.set_checkpoint_segments(segments);
            let blocks = net.checkpoint_segments().to_vec();
            assert_eq!(blocks.len(), segments, "{kind}");
            assert_eq!(blocks[0].start, 0);
            for (a, b) in blocks.iter().zip(&blocks[1..]) {
                assert_eq!(a.end, b.start, "{kind}: blocks are contiguous");
            }
            for block in &blocks {
                assert!(
                    matches!(net.steps[block.end - 1], Step::Hw(_)),
                    "{kind} {block:?}"
                );
            }
            // What follows the last hardware layer runs unchecked.
            let tail = &net.steps[blocks[segments - 1].end..];
            assert!(tail.iter().all(|s| s.hw_layers().is_empty()), "{kind}");
        }
    }

    /// In a checkpointed SC TinyConv every block (a conv alone, or a batch norm with
    /// its clamps and pooling, then a conv) runs its ops' backwards itself; analog
    /// blocks give candle the scalar. (Their gradients equal the plain step's: the
    /// `checkpointed_segments_give_the_plain_gradients_and_statistics` test.)
    #[test]
    fn sc_blocks_run_their_own_backward() {
        for (spec, own) in [("sc:len=16,acc=or2", true), ("analog", false)] {
            let hw = crate::HwMap::All(spec.parse().unwrap());
            let mut net = crate::build(
                crate::ModelKind::TinyConv,
                (3, 32, 32),
                10,
                &hw,
                ExecMode::Accurate,
                0,
            )
            .unwrap();
            net.set_checkpoint_segments(4);
            let ctx = Ctx {
                pass: Pass::Recompute,
                ..net.context(true, false)
            };
            let mut h = Tensor::rand(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
            for block in net.checkpoint_segments().to_vec() {
                let steps = &net.steps[block.clone()];
                let y = run(steps, h.clone(), ctx).unwrap().detach();
                let seed = y.ones_like().unwrap();
                // As a link keeps it: packed (codes for an SC block's output).
                let input = BlockInput::Packed(Packed::pack(&h).unwrap());
                let got = recompute_block(steps, input, true, ctx, seed).unwrap();
                let Recomputed::Gradients(grads) = got else {
                    assert!(!own, "{spec} {block:?}: scalar");
                    h = y;
                    continue;
                };
                assert!(own, "{spec} {block:?}: gradients");
                assert_eq!(grads.input.unwrap().dims(), h.dims());
                let params = steps.iter().flat_map(Step::params).count();
                assert_eq!(grads.params.len(), params, "{spec} {block:?}");
                h = y;
            }
        }
    }

    #[test]
    fn padded_average_pooling_matches_candle_on_a_zero_padded_input() {
        let x = Tensor::rand(0f32, 1f32, (2, 3, 9, 8), &Device::Cpu).unwrap();
        for (kernel, stride, padding) in [(3, 2, 1), (3, 2, 0), (2, 2, 0), (3, 1, 1)] {
            let want = x
                .pad_with_zeros(2, padding, padding)
                .unwrap()
                .pad_with_zeros(3, padding, padding)
                .unwrap()
                .avg_pool2d_with_stride(kernel, stride)
                .unwrap();
            let got = avg_pool_padded(&x, kernel, stride, padding).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "{kernel} {stride} {padding}: {diff}");
        }
    }
}
