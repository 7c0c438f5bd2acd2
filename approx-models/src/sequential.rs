//! A model as a sequence of layers: what TinyConv, LeNet-5 and the MLP are, and what
//! a model file describes.

use std::ops::Range;
use std::sync::Arc;

use approx_hw::{Conv2dParams, Layer};
use approx_train::layer::HwLayer;
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::recompute::{Pass, Recompute};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::hwmap::HwMap;
use crate::norm::BatchNorm;
use crate::store::{Init, LoadError, ParamStore};

/// One step of a sequential model.
pub enum Step {
    /// A conv2d or linear layer on (possibly) approximate hardware.
    Hw(Box<HwLayer>),
    /// Batch normalisation.
    BatchNorm(BatchNorm),
    /// `max(x, 0)`.
    Relu,
    /// `clamp(x, 0, 1)` (REX-SC's `Hardtanh(0, 1)`, which keeps SC inputs unipolar).
    Hardtanh01,
    /// Average pooling, square kernel = stride.
    AvgPool(usize),
    /// Max pooling, square kernel = stride.
    MaxPool(usize),
    /// `[N, ...]` to `[N, features]`.
    Flatten,
}

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
    /// with or without bias; PyTorch's default initialisation U(±1/√fan_in).
    pub fn conv(
        &mut self,
        name: &str,
        (in_ch, out_ch): (usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> &mut Self {
        let bound = 1.0 / ((in_ch * kernel * kernel) as f32).sqrt();
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
        let count = self
            .steps
            .iter()
            .filter(|s| matches!(s, Pending::Layer(_)))
            .count();
        let mut index = 0;
        let mut steps = Vec::with_capacity(self.steps.len());
        for s in self.steps {
            steps.push(match s {
                Pending::Other(step) => step,
                Pending::Layer(p) => {
                    let spec = hw.resolve(&p.name, index, count);
                    index += 1;
                    let layer =
                        HwLayer::new(&p.name, p.op, p.weight, p.bias, spec, mode).map_err(|e| {
                            LoadError::Hardware {
                                layer: p.name.clone(),
                                message: e.to_string(),
                            }
                        })?;
                    Step::Hw(Box::new(layer))
                }
            });
        }
        Ok(Sequential {
            name: name.to_string(),
            input,
            classes,
            steps: Arc::new(steps),
            vars,
            segments: Vec::new(),
            recompute: Recompute::default(),
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
            _ => Vec::new(),
        }
    }

    /// Applies the step to `h`; `train` selects batch statistics, `pass` whether
    /// running statistics are updated.
    fn forward(&self, h: &Tensor, train: bool, pass: Pass) -> Result<Tensor> {
        match self {
            Step::Hw(l) => l.forward(h),
            Step::BatchNorm(bn) => bn.forward_with(h, train, train && pass == Pass::Forward),
            Step::Relu => h.relu(),
            Step::Hardtanh01 => h.clamp(0f32, 1f32),
            Step::AvgPool(k) => avg_pool(h, *k),
            Step::MaxPool(k) => h.max_pool2d(*k),
            Step::Flatten => h.flatten_from(1),
        }
    }
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
    /// hardware layers (0 or 1: off). Each block keeps only its input for backward
    /// and recomputes its activations there (bit-accurate kernels included), trading
    /// one more forward for memory; gradients are unchanged.
    pub fn set_checkpoint_segments(&mut self, segments: usize) {
        self.segments.clear();
        let layers = self
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Hw(_)))
            .count();
        if segments <= 1 || layers == 0 {
            return;
        }
        // Hardware layer j goes to segment ⌊j·S/L⌋; a segment starts at its first layer.
        let segments = segments.min(layers);
        let (mut start, mut seen) = (0, 0);
        for (i, step) in self.steps.iter().enumerate() {
            if matches!(step, Step::Hw(_)) {
                if seen > 0 && seen * segments / layers != (seen - 1) * segments / layers {
                    self.segments.push(start..i);
                    start = i;
                }
                seen += 1;
            }
        }
        self.segments.push(start..self.steps.len());
    }

    /// The checkpointed segments, as step index ranges (empty: none).
    pub fn checkpoint_segments(&self) -> &[Range<usize>] {
        &self.segments
    }
}

impl Model for Sequential {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.segments.is_empty() {
            return self
                .steps
                .iter()
                .try_fold(x.clone(), |h, s| s.forward(&h, train, Pass::Forward));
        }
        let mut h = x.clone();
        for range in &self.segments {
            let params = self.steps[range.clone()]
                .iter()
                .flat_map(Step::params)
                .collect();
            let (steps, range) = (self.steps.clone(), range.clone());
            h = self.recompute.block(
                &h,
                params,
                Arc::new(move |t: &Tensor, pass: Pass| {
                    steps[range.clone()]
                        .iter()
                        .try_fold(t.clone(), |h, s| s.forward(&h, true, pass))
                }),
            )?;
        }
        Ok(h)
    }

    fn merge_recomputed_grads(&self, grads: &mut GradStore) -> Result<()> {
        self.recompute.merge_into(grads)
    }

    fn hw_layers(&self) -> Vec<&HwLayer> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Hw(l) => Some(l.as_ref()),
                _ => None,
            })
            .collect()
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }
}

/// `k x k` average pooling with stride `k` (trailing rows and columns that do not fill
/// a window are dropped, as PyTorch's `AvgPool2d` does), as a reshape and two means:
/// candle's own pooling backward goes through a slow index-dividing upsampling.
fn avg_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / k, w / k);
    let x = if oh * k != h || ow * k != w {
        x.narrow(2, 0, oh * k)?.narrow(3, 0, ow * k)?.contiguous()?
    } else {
        x.clone()
    };
    x.reshape((n, c, oh, k, ow, k))?.mean(5)?.mean(3)
}
