//! Parameters by PyTorch tensor name: fresh (seeded initialisation) or loaded from a
//! safetensors file, checked strictly, and saved back with the toolkit's metadata.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A model file that does not fit the model: every offending tensor, listed at once.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read or is not a valid safetensors file.
    #[error("model file `{}`: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The model does not take the data's shape, or its description is invalid.
    #[error("model `{model}`: {message}")]
    Model {
        /// The model.
        model: String,
        /// What is wrong.
        message: String,
    },
    /// A layer's hardware cannot be set up (e.g. an unreadable multiplier table).
    #[error("layer `{layer}`: {message}")]
    Hardware {
        /// The layer.
        layer: String,
        /// What went wrong.
        message: String,
    },
    /// Tensors are missing, unexpected, of the wrong shape or dtype.
    #[error("model file `{}` does not fit model `{model}`:\n{}", path.display(), problems.join("\n"))]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The model being built.
        model: String,
        /// One line per offending tensor.
        problems: Vec<String>,
    },
}

/// How a fresh parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in `±bound`.
    Uniform(f32),
    /// All equal to this value.
    Const(f32),
}

/// Hands out the parameters of a model being built, by name.
pub struct ParamStore {
    loaded: Option<(PathBuf, MmapedSafetensors)>,
    allow_missing: bool,
    rng: ChaCha8Rng,
    params: Vec<(String, Var)>,
    /// Names a model may find in a file but does not use (e.g. torchvision's
    /// `num_batches_tracked`).
    ignored: Vec<String>,
    problems: Vec<String>,
}

impl ParamStore {
    /// A store that initialises every parameter from `seed`.
    pub fn fresh(seed: u64) -> Self {
        Self {
            loaded: None,
            allow_missing: false,
            rng: ChaCha8Rng::seed_from_u64(seed),
            params: Vec::new(),
            ignored: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// A store that takes every parameter from the safetensors file `path`
    /// (memory-mapped; f16 and bf16 converted to f32). With `allow_missing`,
    /// parameters absent from the file are initialised from `seed` instead of being
    /// an error.
    pub fn from_file(path: &Path, allow_missing: bool, seed: u64) -> Result<Self, LoadError> {
        let file_error = |message: String| LoadError::File {
            path: path.to_path_buf(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| file_error(e.to_string()))?;
        if !meta.is_file() {
            return Err(file_error("is not a file".into()));
        }
        // SAFETY: the mapping is read-only; as with any model loader, the file must
        // not be truncated by another process while it is mapped.
        let mapped = unsafe { MmapedSafetensors::new(path) }
            .map_err(|e| file_error(format!("not a valid safetensors file: {e}")))?;
        Ok(Self {
            loaded: Some((path.to_path_buf(), mapped)),
            allow_missing,
            ..Self::fresh(seed)
        })
    }

    /// The parameter `name` of `shape`: from the file (checked), or initialised.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Var {
        let fresh = |rng: &mut ChaCha8Rng| -> Var {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = match init {
                Init::Uniform(b) => (0..n).map(|_| rng.random_range(-b..=b)).collect(),
                Init::Const(c) => vec![c; n],
            };
            Var::from_vec(v, shape, &Device::Cpu).expect("a vector of the shape's size")
        };
        let var = match &self.loaded {
            None => fresh(&mut self.rng),
            Some((_, file)) => match file.get(name) {
                Err(_) => {
                    if !self.allow_missing {
                        self.problems.push(format!(
                            "  missing tensor `{name}` (expected shape {shape:?})"
                        ));
                    }
                    fresh(&mut self.rng)
                }
                Ok(view) if view.shape() != shape => {
                    self.problems.push(format!(
                        "  tensor `{name}` has shape {:?}, expected {shape:?}",
                        view.shape()
                    ));
                    fresh(&mut self.rng)
                }
                Ok(view)
                    if !matches!(
                        view.dtype(),
                        safetensors::Dtype::F32
                            | safetensors::Dtype::F16
                            | safetensors::Dtype::BF16
                            | safetensors::Dtype::F64
                    ) =>
                {
                    self.problems.push(format!("  tensor `{name}` has dtype {:?}, expected a float (f32, f16, bf16 or f64)", view.dtype()));
                    fresh(&mut self.rng)
                }
                Ok(_) => match file
                    .load(name, &Device::Cpu)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .and_then(|t| Var::from_tensor(&t))
                {
                    Ok(v) => v,
                    Err(e) => {
                        self.problems
                            .push(format!("  tensor `{name}` cannot be read: {e}"));
                        fresh(&mut self.rng)
                    }
                },
            },
        };
        self.params.push((name.to_string(), var.clone()));
        var
    }

    /// Declares a name the model accepts in a file but does not use.
    pub fn ignore(&mut self, name: &str) {
        self.ignored.push(name.to_string());
    }

    /// The parameters in the order they were asked for, or one error listing every
    /// missing, unexpected, mis-shaped or mis-typed tensor of the file.
    pub fn finish(self, model: &str) -> Result<Vec<(String, Var)>, LoadError> {
        let mut problems = self.problems;
        if let Some((path, file)) = &self.loaded {
            let mut unexpected: Vec<String> = file
                .tensors()
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| !self.params.iter().any(|(p, _)| p == n) && !self.ignored.contains(n))
                .collect();
            unexpected.sort();
            problems.extend(
                unexpected
                    .iter()
                    .map(|n| format!("  unexpected tensor `{n}`")),
            );
            if !problems.is_empty() {
                return Err(LoadError::Mismatch {
                    path: path.clone(),
                    model: model.to_string(),
                    problems,
                });
            }
        }
        Ok(self.params)
    }
}

/// Saves `vars` to `path` (atomically) with `metadata`.
pub fn save(
    path: &Path,
    vars: &[(String, Var)],
    metadata: BTreeMap<String, String>,
) -> candle_core::Result<()> {
    let tensors: Vec<(&str, &Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_tensor()))
        .collect();
    approx_train::io::write_safetensors(
        path,
        &tensors,
        metadata.into_iter().collect::<HashMap<_, _>>(),
    )
}

/// Largest safetensors header read for metadata, in bytes.
const MAX_HEADER: u64 = 100 << 20;

/// The string metadata (`__metadata__`) of a safetensors file, read from its header
/// alone.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>, LoadError> {
    use std::io::Read;
    let file_error = |message: String| LoadError::File {
        path: path.to_path_buf(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|e| file_error(e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| file_error("too short for a safetensors header".into()))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(file_error(format!(
            "header claims {len} bytes, more than the {MAX_HEADER}-byte limit"
        )));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|_| {
        file_error(format!(
            "header claims {len} bytes, more than the file holds"
        ))
    })?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| file_error(format!("bad header: {e}")))?;
    Ok(json
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}
