//! Reading tensors from safetensors files with errors that name the file and tensor,
//! and atomic writes: a failed command never leaves a half-written output file.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use safetensors::SafeTensors;

/// Largest tensor file read into memory, in bytes: 16 GiB, the size of
/// [`approx_hw::MAX_ELEMENTS`] f32 values, the largest input one layer call takes.
pub const MAX_TENSOR_FILE_BYTES: u64 = 16 << 30;

/// A safetensors file read into memory, with its path for error messages.
pub struct TensorFile {
    path: String,
    bytes: Vec<u8>,
}

impl TensorFile {
    /// Reads `path`; fails with the path in the message, and before reading when the
    /// file is larger than [`MAX_TENSOR_FILE_BYTES`].
    pub fn read(path: &Path) -> Result<Self> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?
            .len();
        if size > MAX_TENSOR_FILE_BYTES {
            bail!(
                "`{}` is {size} bytes, more than the limit of {MAX_TENSOR_FILE_BYTES} bytes for a tensor file",
                path.display()
            );
        }
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        let file = Self {
            path: path.display().to_string(),
            bytes,
        };
        file.parse()?;
        Ok(file)
    }

    fn parse(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes)
            .with_context(|| format!("`{}` is not a valid safetensors file", self.path))
    }

    /// The f32 tensor `name`; fails if it is missing or not f32.
    pub fn f32_tensor(&self, name: &str) -> Result<Tensor> {
        let st = self.parse()?;
        let view = st.tensor(name).map_err(|_| {
            let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
            names.sort();
            anyhow::anyhow!(
                "`{}` has no tensor `{name}` (it has: {})",
                self.path,
                if names.is_empty() {
                    "no tensors".to_string()
                } else {
                    names.join(", ")
                }
            )
        })?;
        if view.dtype() != safetensors::Dtype::F32 {
            bail!(
                "tensor `{name}` in `{}` is {:?}; expected F32",
                self.path,
                view.dtype()
            );
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Tensor::from_vec(values, view.shape(), &Device::Cpu)
            .with_context(|| format!("tensor `{name}` in `{}`", self.path))
    }
}

pub use approx_train::io::write_safetensors;
