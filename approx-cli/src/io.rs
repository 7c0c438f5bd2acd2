//! Reading tensors from safetensors files with errors that name the file and tensor,
//! and atomic writes: a failed command never leaves a half-written output file.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

/// A safetensors file read into memory, with its path for error messages.
pub struct TensorFile {
    path: String,
    bytes: Vec<u8>,
}

impl TensorFile {
    /// Reads `path`; fails with the path in the message.
    pub fn read(path: &Path) -> Result<Self> {
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

/// Writes `tensors` (all f32) with `metadata` to `path` atomically: a temporary file in
/// the same folder, fsync, rename.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes = tensors
        .iter()
        .map(|(_, t)| -> Result<Vec<u8>> {
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect::<Result<Vec<_>>>()?;
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.dims().to_vec(), bytes)
                .map(|v| (name.to_string(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let encoded = safetensors::serialize(views, Some(metadata))?;
    write_atomic(path, &encoded)
}

/// Writes `bytes` to `path` through a temporary file in the same folder, so that the
/// file either appears whole or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("output path `{}` has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write `{}`", path.display()));
    }
    Ok(())
}
