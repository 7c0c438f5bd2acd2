//! Every loader of untrusted input, fed raw bytes: the entry points of the fuzz targets
//! (`fuzz/`) and of the test that replays their corpus. Each returns whether the input
//! was accepted; any input may be rejected, none may panic, hang or exhaust memory.

use std::path::{Path, PathBuf};

use approx_hw::HwSpec;

use crate::{load, HwMap, Limits, ModelFile, ModelKind};

/// A loader fed raw bytes; whether it accepted them.
pub type Target = fn(&[u8]) -> bool;

/// The fuzz targets by name, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME/`.
pub const TARGETS: [(&str, Target); 6] = [
    ("hw_spec", hw_spec),
    ("lut_table", lut_table),
    ("model_file", model_file),
    ("idx", idx),
    ("cifar", cifar),
    ("safetensors_model", safetensors_model),
];

/// A hardware spec string.
pub fn hw_spec(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    match text.parse::<HwSpec>() {
        // Accepted specs print and parse back to themselves.
        Ok(spec) => {
            let again: HwSpec = spec
                .to_string()
                .parse()
                .unwrap_or_else(|e| panic!("`{spec}` does not parse back: {e}"));
            assert_eq!(again, spec);
            true
        }
        Err(_) => false,
    }
}

/// A per-process scratch file `name` holding `bytes` (the file loaders take paths).
fn scratch(name: &str, bytes: &[u8]) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("approx-untrusted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(name);
    std::fs::write(&path, bytes).ok()?;
    Some(path)
}

/// A multiplier table file, as raw binary and as text, signed and unsigned.
pub fn lut_table(bytes: &[u8]) -> bool {
    let mut accepted = false;
    for name in ["table.bin", "table.txt"] {
        if let Some(path) = scratch(name, bytes) {
            for signed in [false, true] {
                accepted |= approx_hw::mult::table::read_table(&path, signed).is_ok();
            }
        }
    }
    accepted
}

/// A TOML model file, parsed and checked against MNIST- and CIFAR-shaped data.
pub fn model_file(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let limits = Limits::default();
    let Ok(file) = ModelFile::parse(text, limits) else {
        return false;
    };
    let mnist = file.check((1, 28, 28), 10, limits).is_ok();
    let cifar = file.check((3, 32, 32), 10, limits).is_ok();
    mnist || cifar
}

/// An IDX image/label pair: a little-endian u32 length of the image file, the image
/// file, then the label file.
pub fn idx(bytes: &[u8]) -> bool {
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
        return false;
    };
    let at = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (images, labels) = rest.split_at(at);
    approx_train::data::idx_pair_from_bytes(
        (Path::new("images"), images),
        (Path::new("labels"), labels),
        10,
    )
    .is_ok()
}

/// A CIFAR-10 binary batch file.
pub fn cifar(bytes: &[u8]) -> bool {
    scratch("batch.bin", bytes)
        .is_some_and(|path| approx_train::data::read_cifar10(&[&path]).is_ok())
}

/// A safetensors model file, loaded strictly (and leniently) as an MLP.
pub fn safetensors_model(bytes: &[u8]) -> bool {
    let Some(path) = scratch("model.safetensors", bytes) else {
        return false;
    };
    let hw = HwMap::All(HwSpec::Exact);
    let mode = approx_train::mode::ExecMode::Float;
    let strict = load(ModelKind::Mlp, &path, (1, 28, 28), 10, &hw, mode, false).is_ok();
    let lenient = load(ModelKind::Mlp, &path, (1, 28, 28), 10, &hw, mode, true).is_ok();
    strict || lenient
}
