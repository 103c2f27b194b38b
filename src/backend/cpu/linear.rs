//! A bias-free linear layer on slices: weights in our packed formats (8-bit activations,
//! integer kernels) or dense f32 (a GEMV per token when decoding, the `gemm` crate's GEMM
//! for prompts).

use std::sync::Arc;

use candle_core::quantized::GgmlDType;

use super::gemv::gemv;
use super::half_rows::{gemv_half, widen_rows, HalfKind, GEMM_BLOCK_ROWS};
use super::quant::{PackedFormat, PackedWeight};
use super::spare::Spare;
use crate::error::{Error, Result};
use crate::weights::{Kind, RawTensor};

/// `y = x W^T` with `W: [out, in]` as stored in HF checkpoints, on CPU slices.
#[derive(Debug, Clone)]
pub(crate) enum CpuLinear {
    /// Our packed formats.
    Packed(Arc<PackedWeight>),
    /// Row-major 16-bit `[rows, cols]` (bf16 or f16), widened as read.
    Half {
        /// The weights' bits.
        w: Arc<Vec<u16>>,
        /// Their encoding.
        kind: HalfKind,
        /// Output width.
        rows: usize,
        /// Input width.
        cols: usize,
    },
    /// Row-major f32 `[rows, cols]`.
    Dense {
        /// The weights.
        w: Arc<Vec<f32>>,
        /// Output width.
        rows: usize,
        /// Input width.
        cols: usize,
    },
}

/// Prompt rows from which dense layers run as one GEMM instead of one GEMV per row.
const GEMM_ROWS: usize = 2;

impl CpuLinear {
    /// `x: [m, in]` (row-major) through several layers sharing it. Packed layers with the
    /// same activation format quantize `x` once and take their buffers from `spare`. Each
    /// output row of a packed layer depends only on its input row.
    pub fn forward_rows(layers: &[&CpuLinear], x: &[f32], m: usize, spare: &mut Spare) -> Result<Vec<Vec<f32>>> {
        let packed: Option<Vec<&PackedWeight>> = layers
            .iter()
            .map(|l| match l {
                Self::Packed(p) => Some(p.as_ref()),
                Self::Dense { .. } | Self::Half { .. } => None,
            })
            .collect();
        if let Some(ps) = packed {
            return PackedWeight::matmul_many_spare(&ps, x, m, spare);
        }
        layers.iter().map(|l| l.forward_one(x, m)).collect()
    }

    /// `x: [m, in]` through this layer alone.
    fn forward_one(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        match self {
            Self::Packed(p) => p.matmul(x, m),
            Self::Dense { w, rows, cols } => {
                check_width(x, m, *cols)?;
                Ok(match m < GEMM_ROWS {
                    true => x.chunks(*cols).flat_map(|row| gemv(w, row)).collect(),
                    false => gemm_rows(w, *rows, *cols, x, m),
                })
            }
            Self::Half { w, kind, rows, cols } => {
                check_width(x, m, *cols)?;
                Ok(match m < GEMM_ROWS {
                    true => x.chunks(*cols).flat_map(|row| gemv_half(w, *kind, row)).collect(),
                    false => gemm_half(w, *kind, (*rows, *cols), x, m),
                })
            }
        }
    }
}

/// Refuses an input that is not `m` rows of `cols` values (an internal contract).
fn check_width(x: &[f32], m: usize, cols: usize) -> Result<()> {
    match x.len() == m * cols {
        true => Ok(()),
        false => Err(Error::Internal(format!(
            "a {m}-row input of {} values for {cols} columns",
            x.len()
        ))),
    }
}

/// `x: [m, k] W^T` for `w: [n, k]`, both row-major, with the `gemm` crate.
fn gemm_rows(w: &[f32], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    gemm_into(w, n, k, x, m, (&mut y, n));
    y
}

/// `x: [m, k] W^T` for 16-bit `w: [n, k]`: blocks of rows widened to f32, each one GEMM
/// into its columns of the output.
fn gemm_half(w: &[u16], kind: HalfKind, (n, k): (usize, usize), x: &[f32], m: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    let mut block = Vec::new();
    for first in (0..n).step_by(GEMM_BLOCK_ROWS) {
        let rows = GEMM_BLOCK_ROWS.min(n - first);
        block.resize(rows * k, 0.0);
        widen_rows(w, kind, k, first, &mut block);
        gemm_into(&block, rows, k, x, m, (&mut y[first..], n));
    }
    y
}

/// Writes `x: [m, k] W^T` for `w: [n, k]` into `dst`, whose rows are `stride` apart (the
/// first `n` values of each row are written).
fn gemm_into(w: &[f32], n: usize, k: usize, x: &[f32], m: usize, (dst, stride): (&mut [f32], usize)) {
    let fits = m == 0 || dst.len() >= (m - 1) * stride + n;
    if m == 0 || n == 0 || k == 0 || w.len() < n * k || x.len() < m * k || !fits || stride < n {
        return;
    }
    let threads = rayon::current_num_threads();
    // SAFETY: `dst` holds at least (m - 1) * stride + n values, written with strides
    // (column 1, row `stride`); `x` holds at least m * k values read with strides (1, k); `w`
    // holds at least n * k values read as the k x n matrix W^T with strides (row 1, column
    // k): every index stays inside its slice (checked just above). `read_dst` is false, so
    // `dst`'s initial values are not read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            stride as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(threads),
        );
    }
}

/// Packs a stored matrix into `format`: llama.cpp Q8_0 blocks into Q8_0 and Q4_K blocks
/// into q4k as they are (when the rows are whole 256-wide blocks), anything else through f32
/// rows; `None` when the rows cannot be packed. Refuses NaN or infinite weights
/// (quantizing would hide them as plausible numbers).
pub(crate) fn pack_raw(
    raw: &RawTensor<'_>,
    rows: usize,
    cols: usize,
    format: PackedFormat,
) -> std::result::Result<Option<PackedWeight>, String> {
    let failure = std::sync::Mutex::new(None::<String>);
    let fail = |e: String| {
        let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    };
    let finite_f16 = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).is_finite();
    let packed = if format == PackedFormat::Q8_0 && raw.kind() == Kind::Ggml(GgmlDType::Q8_0) {
        PackedWeight::pack_q8_0_blocks(rows, cols, |first, dst| {
            raw.block_rows(GgmlDType::Q8_0, first, dst);
            if !dst.chunks_exact(34).all(|b| finite_f16(b, 0)) {
                fail("holds NaN or infinite scales".into());
            }
        })
    } else if format == PackedFormat::Q4K && raw.kind() == Kind::Ggml(GgmlDType::Q4K) && cols.is_multiple_of(256) {
        PackedWeight::pack_q4k_blocks(rows, cols, |first, dst| {
            raw.block_rows(GgmlDType::Q4K, first, dst);
            if !dst.chunks_exact(144).all(|b| finite_f16(b, 0) && finite_f16(b, 2)) {
                fail("holds NaN or infinite scales".into());
            }
        })
    } else {
        PackedWeight::pack_with(rows, cols, format, |first, dst| match raw.read_f32(first * cols, dst) {
            Err(e) => fail(e),
            Ok(()) if !dst.iter().all(|v| v.is_finite()) => fail("holds NaN or infinite values".into()),
            Ok(()) => {}
        })
    };
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(packed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_rows_equal_a_gemv_per_row() {
        let (n, k, m) = (37, 96, 5);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.1).collect();
        let dense = CpuLinear::Dense {
            w: Arc::new(w.clone()),
            rows: n,
            cols: k,
        };
        let got = dense.forward_one(&x, m).unwrap();
        let want: Vec<f32> = x.chunks(k).flat_map(|row| gemv(&w, row)).collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
        }
        assert!(dense.forward_one(&x[1..], m).is_err());
    }

    #[test]
    fn half_layers_equal_the_dense_layer_of_their_values() {
        let (n, k, m) = (1100, 64, 3);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.1).collect();
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            let bits = kind.encode(&w);
            let mut wide = vec![0f32; n * k];
            widen_rows(&bits, kind, k, 0, &mut wide);
            let dense = CpuLinear::Dense {
                w: Arc::new(wide),
                rows: n,
                cols: k,
            };
            let half = CpuLinear::Half {
                w: Arc::new(bits),
                kind,
                rows: n,
                cols: k,
            };
            // One row: the same GEMV, bit for bit. Prompt rows: GEMMs over blocks of rows,
            // equal to rounding.
            assert_eq!(
                half.forward_one(&x[..k], 1).unwrap(),
                dense.forward_one(&x[..k], 1).unwrap()
            );
            let (got, want) = (half.forward_one(&x, m).unwrap(), dense.forward_one(&x, m).unwrap());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{kind:?}: {g} vs {w}");
            }
        }
    }
}

#[cfg(test)]
mod gguf_tests {
    use super::*;

    /// Deterministic weights quantized by candle: stored bytes and dequantized values.
    fn stored(dtype: GgmlDType, rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        crate::backend::cpu::quant::tests::ggml_round_trip(&w, rows, cols, dtype)
    }

    #[test]
    fn q8_0_blocks_are_packed_as_stored_in_hf_row_order() {
        let (rows, cols, head) = (48, 64, 16);
        let (bytes, values) = stored(GgmlDType::Q8_0, rows, cols);
        for rope in [None, Some(head)] {
            let raw = RawTensor::ggml(&bytes, GgmlDType::Q8_0, cols, rope);
            let packed = pack_raw(&raw, rows, cols, PackedFormat::Q8_0).unwrap().unwrap();
            for r in 0..rows {
                let src = rope.map_or(r, |h| crate::gguf::rope_row(r, h));
                assert_eq!(packed.row(r), values[src * cols..(src + 1) * cols], "row {r} {rope:?}");
            }
        }
    }

    #[test]
    fn other_block_types_are_read_as_their_dequantized_values() {
        let (rows, cols) = (20, 256);
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let (bytes, values) = stored(dtype, rows, cols);
            let raw = RawTensor::ggml(&bytes, dtype, cols, None);
            let mut out = vec![0f32; 3 * cols - 5];
            raw.read_f32(cols + 5, &mut out).unwrap();
            assert_eq!(out, values[cols + 5..4 * cols], "{dtype:?}");
        }
    }
}
