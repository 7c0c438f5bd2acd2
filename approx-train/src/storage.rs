//! Reading candle CPU storage inside custom ops.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, StorageRef, Tensor};

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

/// A CPU tensor's storage held for reading (candle's read lock), so that a custom op's
/// backward can borrow its f32 values instead of copying them out with `to_vec1`.
pub struct ReadF32<'a> {
    tensor: &'a Tensor,
    storage: StorageRef<'a>,
    layout: &'a Layout,
}

/// Holds `t`'s storage for reading; [`ReadF32::values`] borrows its values.
pub fn read_f32(t: &Tensor) -> ReadF32<'_> {
    let (storage, layout) = t.storage_and_layout();
    ReadF32 {
        tensor: t,
        storage,
        layout,
    }
}

impl ReadF32<'_> {
    /// The tensor's f32 values in logical order, as [`f32_values`]. `op` names the op
    /// in the error for another dtype or device.
    pub fn values(&self, op: &str) -> Result<Cow<'_, [f32]>> {
        let Storage::Cpu(cpu) = &*self.storage else {
            return Err(candle_core::Error::Msg(format!(
                "{op} runs on the CPU, got a tensor on {:?}",
                self.tensor.device()
            )));
        };
        f32_values(cpu, self.layout, op)
    }
}
