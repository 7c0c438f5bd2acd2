//! Model files: a sequential CNN or MLP described in TOML, so a user's own checkpoint
//! runs on any hardware without writing Rust. Each layer with parameters names its
//! tensor prefix, as in the PyTorch module that trained it:
//!
//! ```toml
//! name = "lenet5"
//!
//! [[layers]]
//! type = "conv"        # conv1.weight [6, 1, 5, 5], conv1.bias [6]
//! name = "conv1"
//! in = 1
//! out = 6
//! kernel = 5
//! padding = 2
//!
//! [[layers]]
//! type = "relu"
//!
//! [[layers]]
//! type = "max-pool"
//! kernel = 2
//!
//! [[layers]]
//! type = "flatten"
//!
//! [[layers]]
//! type = "linear"      # fc1.weight [10, 1176], fc1.bias [10]
//! name = "fc1"
//! in = 1176
//! out = 10
//! ```
//!
//! Layer types: `conv` (`in`, `out`, `kernel`, `stride` = 1, `padding` = 0, `bias` =
//! true), `linear` (`in`, `out`, `bias` = true), `batch-norm` (`channels`,
//! `quantized` = false: REX-SC's quantized affine map), `relu`, `hardtanh` (`min` =
//! 0, `max` = 1), `max-pool` (`kernel`, stride = kernel), `avg-pool` (`kernel`,
//! `stride` = kernel, `padding` = 0), `global-avg-pool`, `flatten`, `dropout` (`p`).
//! Unknown keys are errors. Every shape is checked against the input before any
//! parameter is allocated, within the limits in [`Limits`].

use std::path::Path;

use serde::Deserialize;

use crate::sequential::{Builder, Step};

/// Size limits of a model file, checked before anything is allocated. A file from a
/// stranger cannot make the loader allocate more than `max_params` floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file, bytes.
    pub max_file_bytes: u64,
    /// Most layers.
    pub max_layers: usize,
    /// Most channels or features of one layer.
    pub max_width: usize,
    /// Largest kernel side, stride or padding, pixels.
    pub max_kernel: usize,
    /// Most parameters in the model (weights, biases, batch-norm tensors).
    pub max_params: usize,
    /// Most activation values per image after any layer.
    pub max_activations: usize,
}

impl Default for Limits {
    /// 1 MiB files, 10,000 layers, 65,536 channels, 64-pixel kernels, 2^28
    /// parameters (1 GiB of f32) and 2^28 activations per image.
    fn default() -> Self {
        Self {
            max_file_bytes: 1 << 20,
            max_layers: 10_000,
            max_width: 1 << 16,
            max_kernel: 64,
            max_params: 1 << 28,
            max_activations: 1 << 28,
        }
    }
}

/// A model described by a TOML file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// The model's name, recorded in saved models.
    pub name: String,
    /// Factor on PyTorch's default initialisation of conv and linear weights (REX-SC
    /// uses 4 for TinyConv), for training from scratch.
    #[serde(default = "one")]
    pub init_scale: f32,
    /// The layers, in order.
    pub layers: Vec<LayerSpec>,
}

fn one() -> f32 {
    1.0
}

fn yes() -> bool {
    true
}

fn stride_one() -> usize {
    1
}

/// One layer of a model file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LayerSpec {
    /// A conv2d layer on the hardware.
    Conv {
        /// Tensor prefix (`conv1` for `conv1.weight`).
        name: String,
        /// Input channels.
        #[serde(rename = "in")]
        in_channels: usize,
        /// Output channels.
        #[serde(rename = "out")]
        out_channels: usize,
        /// Square kernel side, pixels.
        kernel: usize,
        /// Stride, pixels.
        #[serde(default = "stride_one")]
        stride: usize,
        /// Zero padding on each side, pixels.
        #[serde(default)]
        padding: usize,
        /// Whether the layer has a bias.
        #[serde(default = "yes")]
        bias: bool,
    },
    /// A linear layer on the hardware.
    Linear {
        /// Tensor prefix.
        name: String,
        /// Input features.
        #[serde(rename = "in")]
        in_features: usize,
        /// Output features.
        #[serde(rename = "out")]
        out_features: usize,
        /// Whether the layer has a bias.
        #[serde(default = "yes")]
        bias: bool,
    },
    /// Batch normalisation over channels (or features after `flatten`).
    BatchNorm {
        /// Tensor prefix.
        name: String,
        /// Channels.
        channels: usize,
        /// REX-SC's quantized affine map (§1.5) instead of the float one.
        #[serde(default)]
        quantized: bool,
    },
    /// `max(x, 0)`.
    Relu {},
    /// `clamp(x, min, max)`.
    Hardtanh {
        /// Lower bound.
        #[serde(default)]
        min: f32,
        /// Upper bound.
        #[serde(default = "one")]
        max: f32,
    },
    /// Max pooling, square kernel, stride = kernel.
    MaxPool {
        /// Window side, pixels.
        kernel: usize,
    },
    /// Average pooling, square kernel.
    AvgPool {
        /// Window side, pixels.
        kernel: usize,
        /// Step between windows (default: the kernel).
        stride: Option<usize>,
        /// Zero padding on each side, counted in the mean.
        #[serde(default)]
        padding: usize,
    },
    /// Mean over the spatial dimensions.
    GlobalAvgPool {},
    /// `[N, ...]` to `[N, features]`.
    Flatten {},
    /// Inverted dropout in training.
    Dropout {
        /// Drop probability, in [0, 1).
        p: f32,
    },
}

/// The activation shape between layers, per image.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Map(usize, usize, usize),
    Flat(usize),
}

impl ModelFile {
    /// Reads and parses the model file `path` within the default [`Limits`]; errors
    /// name the file and, for TOML errors, the line.
    pub fn read(path: &Path) -> Result<Self, String> {
        Self::read_with(path, Limits::default())
    }

    /// [`ModelFile::read`] within `limits`.
    pub fn read_with(path: &Path, limits: Limits) -> Result<Self, String> {
        let at = |m: String| format!("model file `{}`: {m}", path.display());
        let size = std::fs::metadata(path)
            .map_err(|e| at(e.to_string()))?
            .len();
        if size > limits.max_file_bytes {
            return Err(at(format!(
                "{size} bytes, more than the limit of {} bytes",
                limits.max_file_bytes
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        Self::parse(&text, limits).map_err(at)
    }

    /// Parses model-file text within `limits`.
    pub fn parse(text: &str, limits: Limits) -> Result<Self, String> {
        if text.len() as u64 > limits.max_file_bytes {
            return Err(format!(
                "{} bytes, more than the limit of {} bytes",
                text.len(),
                limits.max_file_bytes
            ));
        }
        let file: ModelFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.layers.len() > limits.max_layers {
            return Err(format!(
                "{} layers, more than the limit of {}",
                file.layers.len(),
                limits.max_layers
            ));
        }
        if file.name.is_empty() {
            return Err("`name` must not be empty".into());
        }
        if !(file.init_scale.is_finite() && file.init_scale > 0.0) {
            return Err(format!(
                "`init_scale` = {} must be positive",
                file.init_scale
            ));
        }
        Ok(file)
    }

    /// Checks every layer against the input shape (C, H, W), the class count and the
    /// limits, without allocating: channel and feature counts must chain, windows
    /// must fit, the last layer must give `classes` values.
    pub fn check(
        &self,
        (c, h, w): (usize, usize, usize),
        classes: usize,
        limits: Limits,
    ) -> Result<(), String> {
        let mut shape = Shape::Map(c, h, w);
        let mut params = 0usize;
        for (i, layer) in self.layers.iter().enumerate() {
            let at = |m: String| format!("layer {} ({}): {m}", i + 1, layer.describe());
            let (next, count) = layer.apply(shape, limits).map_err(at)?;
            params = params.saturating_add(count);
            if params > limits.max_params {
                return Err(at(format!(
                    "the model has more than {} parameters",
                    limits.max_params
                )));
            }
            let size = match next {
                Shape::Map(c, h, w) => c.saturating_mul(h).saturating_mul(w),
                Shape::Flat(n) => n,
            };
            if size > limits.max_activations {
                return Err(at(format!(
                    "{size} activations per image, more than the limit of {}",
                    limits.max_activations
                )));
            }
            shape = next;
        }
        match shape {
            Shape::Flat(n) if n == classes => Ok(()),
            other => Err(format!(
                "the last layer gives {} per image, not the {classes} class scores the data needs",
                other.describe()
            )),
        }
    }

    /// Adds the layers to `b` (call [`ModelFile::check`] first); `quantized_bn` makes
    /// every batch norm REX-SC's quantized one.
    pub fn layers(&self, b: &mut Builder, quantized_bn: bool) {
        b.init_scale(self.init_scale);
        for layer in &self.layers {
            match layer {
                LayerSpec::Conv {
                    name,
                    in_channels,
                    out_channels,
                    kernel,
                    stride,
                    padding,
                    bias,
                } => {
                    b.conv(
                        name,
                        (*in_channels, *out_channels),
                        *kernel,
                        *stride,
                        *padding,
                        *bias,
                    );
                }
                LayerSpec::Linear {
                    name,
                    in_features,
                    out_features,
                    bias,
                } => {
                    b.linear(name, (*in_features, *out_features), *bias);
                }
                LayerSpec::BatchNorm {
                    name,
                    channels,
                    quantized,
                } => {
                    b.batch_norm(name, *channels, *quantized || quantized_bn);
                }
                LayerSpec::Relu {} => {
                    b.step(Step::Relu);
                }
                LayerSpec::Hardtanh { min, max } => {
                    b.step(Step::Hardtanh {
                        min: *min,
                        max: *max,
                    });
                }
                LayerSpec::MaxPool { kernel } => {
                    b.step(Step::MaxPool(*kernel));
                }
                LayerSpec::AvgPool {
                    kernel,
                    stride,
                    padding,
                } => {
                    let stride = stride.unwrap_or(*kernel);
                    b.step(if stride == *kernel && *padding == 0 {
                        Step::AvgPool(*kernel)
                    } else {
                        Step::AvgPoolPadded {
                            kernel: *kernel,
                            stride,
                            padding: *padding,
                        }
                    });
                }
                LayerSpec::GlobalAvgPool {} => {
                    b.step(Step::GlobalAvgPool);
                }
                LayerSpec::Flatten {} => {
                    b.step(Step::Flatten);
                }
                LayerSpec::Dropout { p } => {
                    b.dropout(*p);
                }
            }
        }
    }
}

impl Shape {
    fn describe(self) -> String {
        match self {
            Shape::Map(c, h, w) => format!("a {c}x{h}x{w} map"),
            Shape::Flat(n) => format!("{n} features"),
        }
    }
}

/// Output side of a window of `kernel` with `stride` and `padding` over `side`.
fn window(side: usize, kernel: usize, stride: usize, padding: usize) -> Result<usize, String> {
    let padded = side + 2 * padding;
    if kernel == 0 || stride == 0 || kernel > padded {
        return Err(format!(
            "a {kernel}-pixel window with stride {stride} does not fit a side of {side} (+2x{padding} padding)"
        ));
    }
    Ok((padded - kernel) / stride + 1)
}

impl LayerSpec {
    fn describe(&self) -> String {
        match self {
            LayerSpec::Conv { name, .. }
            | LayerSpec::Linear { name, .. }
            | LayerSpec::BatchNorm { name, .. } => format!("`{name}`"),
            LayerSpec::Relu {} => "relu".into(),
            LayerSpec::Hardtanh { .. } => "hardtanh".into(),
            LayerSpec::MaxPool { .. } => "max-pool".into(),
            LayerSpec::AvgPool { .. } => "avg-pool".into(),
            LayerSpec::GlobalAvgPool {} => "global-avg-pool".into(),
            LayerSpec::Flatten {} => "flatten".into(),
            LayerSpec::Dropout { .. } => "dropout".into(),
        }
    }

    /// The shape after this layer and its parameter count, or what is wrong.
    fn apply(&self, shape: Shape, limits: Limits) -> Result<(Shape, usize), String> {
        let width = |what: &str, n: usize| {
            if n == 0 || n > limits.max_width {
                Err(format!(
                    "{what} = {n} must be in 1..={} (the width limit)",
                    limits.max_width
                ))
            } else {
                Ok(())
            }
        };
        let small = |what: &str, n: usize, min: usize| {
            if n < min || n > limits.max_kernel {
                Err(format!(
                    "{what} = {n} must be in {min}..={} (the kernel limit)",
                    limits.max_kernel
                ))
            } else {
                Ok(())
            }
        };
        let map = |what: &str| match shape {
            Shape::Map(c, h, w) => Ok((c, h, w)),
            Shape::Flat(_) => Err(format!(
                "{what} needs a feature map, but gets {}",
                shape.describe()
            )),
        };
        Ok(match self {
            LayerSpec::Conv {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                bias,
                ..
            } => {
                width("in", *in_channels)?;
                width("out", *out_channels)?;
                small("kernel", *kernel, 1)?;
                small("stride", *stride, 1)?;
                small("padding", *padding, 0)?;
                let (c, h, w) = map("a conv")?;
                if c != *in_channels {
                    return Err(format!(
                        "in = {in_channels}, but the input has {c} channels"
                    ));
                }
                let oh = window(h, *kernel, *stride, *padding)?;
                let ow = window(w, *kernel, *stride, *padding)?;
                let count = out_channels
                    .saturating_mul(*in_channels)
                    .saturating_mul(kernel * kernel)
                    .saturating_add(if *bias { *out_channels } else { 0 });
                (Shape::Map(*out_channels, oh, ow), count)
            }
            LayerSpec::Linear {
                in_features,
                out_features,
                bias,
                ..
            } => {
                width("in", *in_features)?;
                width("out", *out_features)?;
                let n = match shape {
                    Shape::Flat(n) => n,
                    Shape::Map(..) => {
                        return Err(format!(
                            "a linear layer needs features, but gets {} (add a flatten layer)",
                            shape.describe()
                        ))
                    }
                };
                if n != *in_features {
                    return Err(format!(
                        "in = {in_features}, but the input has {n} features"
                    ));
                }
                let count = out_features
                    .saturating_mul(*in_features)
                    .saturating_add(if *bias { *out_features } else { 0 });
                (Shape::Flat(*out_features), count)
            }
            LayerSpec::BatchNorm { channels, .. } => {
                width("channels", *channels)?;
                let c = match shape {
                    Shape::Map(c, ..) | Shape::Flat(c) => c,
                };
                if c != *channels {
                    return Err(format!("channels = {channels}, but the input has {c}"));
                }
                (shape, 4 * channels)
            }
            LayerSpec::Relu {} => (shape, 0),
            LayerSpec::Hardtanh { min, max } => {
                if !(min.is_finite() && max.is_finite() && min <= max) {
                    return Err(format!(
                        "min = {min} and max = {max} must be finite with min <= max"
                    ));
                }
                (shape, 0)
            }
            LayerSpec::MaxPool { kernel } => {
                small("kernel", *kernel, 1)?;
                let (c, h, w) = map("max-pool")?;
                (
                    Shape::Map(
                        c,
                        window(h, *kernel, *kernel, 0)?,
                        window(w, *kernel, *kernel, 0)?,
                    ),
                    0,
                )
            }
            LayerSpec::AvgPool {
                kernel,
                stride,
                padding,
            } => {
                let stride = stride.unwrap_or(*kernel);
                small("kernel", *kernel, 1)?;
                small("stride", stride, 1)?;
                small("padding", *padding, 0)?;
                let (c, h, w) = map("avg-pool")?;
                (
                    Shape::Map(
                        c,
                        window(h, *kernel, stride, *padding)?,
                        window(w, *kernel, stride, *padding)?,
                    ),
                    0,
                )
            }
            LayerSpec::GlobalAvgPool {} => {
                let (c, ..) = map("global-avg-pool")?;
                (Shape::Flat(c), 0)
            }
            LayerSpec::Flatten {} => match shape {
                Shape::Map(c, h, w) => (Shape::Flat(c * h * w), 0),
                flat => (flat, 0),
            },
            LayerSpec::Dropout { p } => {
                if !(0.0..1.0).contains(p) {
                    return Err(format!("p = {p} must be in [0, 1)"));
                }
                (shape, 0)
            }
        })
    }
}
