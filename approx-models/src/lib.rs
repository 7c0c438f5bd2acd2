//! Models built from `approx-train` layers, loaded from and saved to safetensors with
//! PyTorch tensor names (`conv1.weight`, `bn1.running_mean`, `fc3.bias`, ...).
//!
//! ```
//! use approx_models::{build, HwMap, ModelKind};
//! use approx_train::{mode::ExecMode, model::Model};
//! use candle_core::{Device, Tensor};
//!
//! let hw = HwMap::All("sc:len=32,acc=or2".parse()?);
//! let net = build(ModelKind::LeNet5, (1, 28, 28), 10, &hw, ExecMode::Accurate, 0)?;
//! let x = Tensor::zeros((2, 1, 28, 28), candle_core::DType::F32, &Device::Cpu)?;
//! assert_eq!(net.forward(&x, false)?.dims(), &[2, 10]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod attention;
pub mod hub;
mod hwmap;
pub mod model_file;
mod norm;
mod pointwise;
mod sequential;
pub mod store;
pub mod untrusted;
mod zoo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

pub use attention::{ActivationMatmul, LayerNorm, SelfAttention, Tokens};
pub use hwmap::HwMap;
pub use model_file::{Limits, ModelFile};
pub use norm::BatchNorm;
pub use sequential::{Builder, Residual, Sequential, Step, HARDTANH01};
pub use store::{LoadError, ParamStore};
pub use zoo::ModelKind;

use approx_train::calibration::Calibration;
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use candle_core::Tensor;

/// Metadata keys of model files the toolkit writes.
pub const META_MODEL: &str = "approx.model";
/// The hardware the model was fine-tuned for.
pub const META_HW: &str = "approx.hw";
/// The toolkit version that wrote the file.
pub const META_VERSION: &str = "approx.version";
/// Calibration coefficients per layer, JSON.
pub const META_CALIBRATION: &str = "approx.calibration";
/// The input shape, `CxHxW`.
pub const META_INPUT: &str = "approx.input";
/// Each hardware layer's calibrated fixed-pattern error, JSON: `{LAYER: {"shape":
/// [...], "values": [...]}}`. Metadata rather than tensors, so that the file's
/// tensors stay exactly the model's PyTorch-named parameters (a strict
/// `load_state_dict` takes them as they are).
pub const META_FIXED_PATTERN: &str = "approx.fixed_pattern";

/// A fixed-pattern error as [`META_FIXED_PATTERN`] stores it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredPattern {
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// A model's architecture: a built-in one, or one read from a TOML model file.
#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    /// A built-in model.
    Builtin {
        /// Which one.
        kind: ModelKind,
        /// REX-SC's quantized batch norm (§1.5) instead of the float one.
        quantized_bn: bool,
    },
    /// A model file.
    File {
        /// Where it was read from (named in errors).
        path: PathBuf,
        /// The parsed file.
        file: Arc<ModelFile>,
        /// Every batch norm quantized, whatever the file says.
        quantized_bn: bool,
    },
}

impl From<ModelKind> for Architecture {
    fn from(kind: ModelKind) -> Self {
        Architecture::Builtin {
            kind,
            quantized_bn: false,
        }
    }
}

impl From<&Architecture> for Architecture {
    fn from(arch: &Architecture) -> Self {
        arch.clone()
    }
}

impl FromStr for Architecture {
    type Err = String;

    /// A built-in model's name, or the path of a model file (ending in `.toml`).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.ends_with(".toml") {
            return Ok(Architecture::File {
                path: PathBuf::from(s),
                file: Arc::new(ModelFile::read(Path::new(s))?),
                quantized_bn: false,
            });
        }
        s.parse::<ModelKind>().map(Architecture::from)
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Architecture {
    /// The same architecture with every batch norm quantized as REX-SC's (§1.5) when
    /// `quantized`.
    pub fn with_quantized_bn(self, quantized: bool) -> Self {
        match self {
            Architecture::Builtin { kind, .. } => Architecture::Builtin {
                kind,
                quantized_bn: quantized,
            },
            Architecture::File { path, file, .. } => Architecture::File {
                path,
                file,
                quantized_bn: quantized,
            },
        }
    }

    /// The model's name (saved as `approx.model`).
    pub fn name(&self) -> &str {
        match self {
            Architecture::Builtin { kind, .. } => kind.name(),
            Architecture::File { file, .. } => &file.name,
        }
    }

    /// The layers that run on `hw` when one hardware is named for the model (the
    /// paper's choice for built-in models; every layer of a model file).
    pub fn paper_map(&self, hw: approx_hw::HwSpec) -> HwMap {
        match self {
            Architecture::Builtin { kind, .. } => kind.paper_map(hw),
            Architecture::File { .. } => HwMap::All(hw),
        }
    }

    /// Checks that the model takes `input` (C, H, W) and gives `classes` scores.
    pub fn check(&self, input: (usize, usize, usize), classes: usize) -> Result<(), String> {
        match self {
            Architecture::Builtin { kind, .. } => kind.check_input(input),
            Architecture::File { path, file, .. } => file
                .check(input, classes, Limits::default())
                .map_err(|e| format!("model file `{}`: {e}", path.display())),
        }
    }

    fn layers(&self, b: &mut Builder, input: (usize, usize, usize), classes: usize) {
        match self {
            Architecture::Builtin { kind, quantized_bn } => {
                kind.layers(b, input, classes, *quantized_bn)
            }
            Architecture::File {
                file, quantized_bn, ..
            } => file.layers(b, *quantized_bn),
        }
    }
}

/// A fresh model (parameters initialised from `seed`).
pub fn build(
    arch: impl Into<Architecture>,
    input: (usize, usize, usize),
    classes: usize,
    hw: &HwMap,
    mode: ExecMode,
    seed: u64,
) -> Result<Sequential, LoadError> {
    from_store(
        &arch.into(),
        ParamStore::fresh(seed),
        input,
        classes,
        hw,
        mode,
    )
}

/// A model with its parameters from the safetensors file `path`, strictly (unless
/// `allow_missing`), its calibration restored from the file's metadata if present.
pub fn load(
    arch: impl Into<Architecture>,
    path: &Path,
    input: (usize, usize, usize),
    classes: usize,
    hw: &HwMap,
    mode: ExecMode,
    allow_missing: bool,
) -> Result<Sequential, LoadError> {
    let store = ParamStore::from_file(path, allow_missing, 0)?;
    let model = from_store(&arch.into(), store, input, classes, hw, mode)?;
    let meta = store::read_metadata(path)?;
    if let Some(json) = meta.get(META_CALIBRATION) {
        let map: BTreeMap<String, Calibration> =
            serde_json::from_str(json).map_err(|e| LoadError::File {
                path: path.to_path_buf(),
                message: format!("bad `{META_CALIBRATION}` metadata: {e}"),
            })?;
        for l in model.hw_layers() {
            l.set_calibration(map.get(l.name()).copied());
        }
    }
    if let Some(json) = meta.get(META_FIXED_PATTERN) {
        let bad = |message: String| LoadError::File {
            path: path.to_path_buf(),
            message: format!("bad `{META_FIXED_PATTERN}` metadata: {message}"),
        };
        let map: BTreeMap<String, StoredPattern> =
            serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        for l in model.hw_layers() {
            let pattern = match map.get(l.name()) {
                None => None,
                Some(p) => Some(
                    Tensor::from_slice(&p.values, p.shape.as_slice(), &candle_core::Device::Cpu)
                        .map_err(|_| {
                            bad(format!(
                                "layer `{}`: {} values for shape {:?}",
                                l.name(),
                                p.values.len(),
                                p.shape
                            ))
                        })?,
                ),
            };
            l.set_fixed_pattern(pattern);
        }
    }
    Ok(model)
}

fn from_store(
    arch: &Architecture,
    store: ParamStore,
    input: (usize, usize, usize),
    classes: usize,
    hw: &HwMap,
    mode: ExecMode,
) -> Result<Sequential, LoadError> {
    arch.check(input, classes)
        .map_err(|message| LoadError::Model {
            model: arch.name().to_string(),
            message,
        })?;
    let mut b = Builder::new(store);
    arch.layers(&mut b, input, classes);
    b.finish(arch.name(), input, classes, hw, mode)
}

/// Saves `model` to `path` (atomically) with its name, hardware, input shape,
/// calibration (polynomials and fixed patterns) and the toolkit version in the
/// metadata.
pub fn save(model: &Sequential, path: &Path, hw: &HwMap) -> candle_core::Result<()> {
    let calibration: BTreeMap<String, Calibration> = model
        .hw_layers()
        .iter()
        .filter_map(|l| Some((l.name().to_string(), l.calibration()?)))
        .collect();
    let patterns = model
        .hw_layers()
        .iter()
        .filter_map(|l| {
            let p = l.fixed_pattern()?;
            let values = p.flatten_all().and_then(|t| t.to_vec1::<f32>());
            Some(values.map(|values| {
                let shape = p.dims().to_vec();
                (l.name().to_string(), StoredPattern { shape, values })
            }))
        })
        .collect::<candle_core::Result<BTreeMap<_, _>>>()?;
    let (c, h, w) = model.input_shape();
    let meta = BTreeMap::from([
        (META_MODEL.to_string(), model.name().to_string()),
        (META_HW.to_string(), hw.to_string()),
        (
            META_VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (META_INPUT.to_string(), format!("{c}x{h}x{w}")),
        (
            META_CALIBRATION.to_string(),
            serde_json::to_string(&calibration)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
        ),
        (
            META_FIXED_PATTERN.to_string(),
            serde_json::to_string(&patterns).map_err(|e| candle_core::Error::Msg(e.to_string()))?,
        ),
    ]);
    store::save(path, &model.named_vars(), meta)
}
