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

pub mod hub;
mod hwmap;
mod norm;
mod sequential;
pub mod store;
mod zoo;

use std::collections::BTreeMap;
use std::path::Path;

pub use hwmap::HwMap;
pub use norm::BatchNorm;
pub use sequential::{Builder, Residual, Sequential, Step, HARDTANH01};
pub use store::{LoadError, ParamStore};
pub use zoo::ModelKind;

use approx_train::calibration::Calibration;
use approx_train::mode::ExecMode;
use approx_train::model::Model;

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

/// A fresh model (parameters initialised from `seed`).
pub fn build(
    kind: ModelKind,
    input: (usize, usize, usize),
    classes: usize,
    hw: &HwMap,
    mode: ExecMode,
    seed: u64,
) -> Result<Sequential, LoadError> {
    from_store(kind, ParamStore::fresh(seed), input, classes, hw, mode)
}

/// A model with its parameters from the safetensors file `path`, strictly (unless
/// `allow_missing`), its calibration restored from the file's metadata if present.
pub fn load(
    kind: ModelKind,
    path: &Path,
    input: (usize, usize, usize),
    classes: usize,
    hw: &HwMap,
    mode: ExecMode,
    allow_missing: bool,
) -> Result<Sequential, LoadError> {
    let store = ParamStore::from_file(path, allow_missing, 0)?;
    let model = from_store(kind, store, input, classes, hw, mode)?;
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
    Ok(model)
}

fn from_store(
    kind: ModelKind,
    store: ParamStore,
    input: (usize, usize, usize),
    classes: usize,
    hw: &HwMap,
    mode: ExecMode,
) -> Result<Sequential, LoadError> {
    kind.check_input(input)
        .map_err(|message| LoadError::Hardware {
            layer: kind.to_string(),
            message,
        })?;
    let mut b = Builder::new(store);
    kind.layers(&mut b, input, classes, false);
    b.finish(kind.name(), input, classes, hw, mode)
}

/// Saves `model` to `path` (atomically) with its name, hardware, input shape,
/// calibration and the toolkit version in the metadata.
pub fn save(model: &Sequential, path: &Path, hw: &HwMap) -> candle_core::Result<()> {
    let calibration: BTreeMap<String, Calibration> = model
        .hw_layers()
        .iter()
        .filter_map(|l| Some((l.name().to_string(), l.calibration()?)))
        .collect();
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
    ]);
    store::save(path, &model.named_vars(), meta)
}
