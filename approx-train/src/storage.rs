//! Reading candle CPU storage inside custom ops.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result};

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
