//! Borrowing the f32 data of CPU tensors as plain slices, for the kernels that work on
//! slices rather than through candle ops.

use candle_core::{DType, Storage, Tensor};

use crate::error::Result;

/// True when `t` is an f32 tensor in CPU memory.
pub fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` on the data of a CPU tensor as one row-major f32 slice (converting and making
/// it contiguous first when needed; free when it already is both).
pub fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg("expected a CPU tensor".into()).into());
    };
    let data = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    Ok(f(&data[start..start + t.elem_count()]))
}

/// Runs `f` on the data of a 3-D CPU f32 tensor, possibly a strided view, with its strides
/// (in elements).
pub fn with_f32_strided<R>(t: &Tensor, f: impl FnOnce(&[f32], [usize; 3]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg("expected a CPU tensor".into()).into());
    };
    let stride: [usize; 3] = layout
        .stride()
        .try_into()
        .map_err(|_| candle_core::Error::Msg("expected a 3-D tensor".into()))?;
    let data = cpu.as_slice::<f32>()?;
    Ok(f(&data[layout.start_offset()..], stride))
}
