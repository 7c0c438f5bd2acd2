//! Reading candle CPU storage inside custom ops.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// The f32 values of `storage` under `layout`, in logical (row-major) order: borrowed
/// when contiguous, gathered otherwise. `op` names the op in the error for another
/// dtype.
pub fn f32_values<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<Cow<'a, [f32]>> {
    let CpuStorage::F32(data) = storage else {
        return Err(candle_core::Error::Msg(format!(
            "{op} takes f32, got {:?}",
            storage.dtype()
        )));
    };
    Ok(match layout.contiguous_offsets() {
        Some((a, b)) => Cow::Borrowed(&data[a..b]),
        None => Cow::Owned(candle_core::cpu_backend::unary_map(data, layout, |v| v)),
    })
}

/// Calls `f` with the f32 values of the CPU tensor `t` in logical order, borrowed
/// from its storage when contiguous (no copy, unlike `to_vec1`). `op` names the op in
/// the error for another dtype or device.
pub fn with_f32_values<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg(format!(
            "{op} runs on the CPU, got a tensor on {:?}",
            t.device()
        )));
    };
    Ok(f(&f32_values(cpu, layout, op)?))
}
