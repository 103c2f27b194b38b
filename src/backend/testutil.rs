//! Helpers shared by the model's unit tests.

use candle_core::Tensor;

/// max |a - b| over all elements (f32 tensors of the same shape).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("comparable f32 tensors") // ok: test helper
}

/// max |a - b| / max |b|.
pub fn rel_max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b
        .abs()
        .and_then(|t| t.max_all()?.to_scalar::<f32>())
        .expect("an f32 tensor"); // ok: test helper
    max_abs_diff(a, b) / scale
}
