//! Crash-safe file writes and memory statistics.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Tensor};

/// Writes `bytes` to `path` through a temporary file in the same folder (written,
/// synced, renamed over `path`, folder synced), so the file appears whole or not at
/// all, even if the process is killed mid-write; the next write of `path` removes such
/// a killed write's temporary file. The error names the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let with_path = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("cannot write `{}`: {e}", path.display()))
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("output path `{}` has no file name", path.display()),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable (best effort: not every file system allows
        // opening a folder).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(with_path(e));
    }
    remove_stale_temporaries(dir, &name.to_string_lossy());
    Ok(())
}

/// Removes the temporary files of earlier writes of `name` in `dir` whose process is
/// gone (killed mid-write: the target itself is whole, but the partial temporary file
/// stayed). Best effort, and only where `/proc` tells which processes are alive.
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp");
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `tensors` (stored as f32) with string `metadata` to a safetensors file at
/// `path`, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: HashMap<String, String>,
) -> candle_core::Result<()> {
    let fail =
        |e: String| candle_core::Error::Msg(format!("cannot write `{}`: {e}", path.display()));
    let bytes = tensors
        .iter()
        .map(|(_, t)| -> candle_core::Result<Vec<u8>> {
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.dims().to_vec(), bytes)
                .map(|v| (name.to_string(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let encoded = safetensors::serialize(views, Some(metadata)).map_err(|e| fail(e.to_string()))?;
    let encoded = sorted_header(encoded).map_err(fail)?;
    write_atomic(path, &encoded).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// The safetensors file `encoded` with its JSON header's keys in sorted order
/// (`safetensors` writes the metadata in hash order), so that equal models give
/// byte-equal files. Data offsets are relative to the data section and do not change.
fn sorted_header(encoded: Vec<u8>) -> Result<Vec<u8>, String> {
    let short = || "serialized safetensors file is truncated".to_string();
    let len = u64::from_le_bytes(
        encoded
            .get(..8)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?,
    );
    let end = usize::try_from(len)
        .map_err(|_| short())?
        .checked_add(8)
        .ok_or_else(short)?;
    let header: serde_json::Value = serde_json::from_slice(encoded.get(8..end).ok_or_else(short)?)
        .map_err(|e| e.to_string())?;
    // serde_json's map is a BTreeMap: keys come out sorted.
    let mut json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + encoded.len() - end);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&encoded[end..]);
    Ok(out)
}

/// Peak resident memory of this process in bytes (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Resident memory of this process now (`VmRSS`) in bytes, where the OS reports it.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Resets the peak resident memory to the current value (Linux `clear_refs`), so a
/// following [`peak_rss_bytes`] measures one phase. Returns whether it worked: some
/// kernels and sandboxes accept the write and keep the old peak, which is checked.
pub fn reset_peak_rss() -> bool {
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        return false;
    }
    match (peak_rss_bytes(), rss_bytes()) {
        (Some(peak), Some(now)) => peak <= now + (4 << 20),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_files_and_names_the_path_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary file left behind"
        );
        // A temporary file of a killed writer (a process that no longer exists) goes
        // with the next write of the same file.
        let stale = dir.path().join(format!(".out.bin.tmp{}", u32::MAX));
        std::fs::write(&stale, b"partial").unwrap();
        write_atomic(&path, b"third").unwrap();
        assert!(!stale.exists());
        let bad = dir.path().join("missing/out.bin");
        let err = write_atomic(&bad, b"x").unwrap_err().to_string();
        assert!(err.contains("missing/out.bin"), "{err}");
    }
}
