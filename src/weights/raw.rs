//! A tensor's bytes as a checkpoint file stores them (safetensors floats or GGUF's
//! llama.cpp blocks), read back as f32 rows or handed over as stored blocks.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use crate::gguf::rope_row;

/// How a tensor's bytes encode its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Little-endian floats (bf16, f16 or f32).
    Float(DType),
    /// llama.cpp's blocks of quantized values (GGUF files), one row a whole number of them.
    Ggml(GgmlDType),
}

/// A tensor's bytes as stored, borrowed from the memory-mapped file.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) kind: Kind,
    /// Elements per row (the last dimension).
    pub(super) cols: usize,
    /// Rotary head size when rows are stored in llama.cpp's interleaved order.
    pub(super) rope_rows: Option<usize>,
}

impl<'a> RawTensor<'a> {
    /// A view of llama.cpp-quantized bytes (for tests of the loaders built on it).
    #[cfg(test)]
    pub(crate) fn ggml(bytes: &'a [u8], dtype: GgmlDType, cols: usize, rope_rows: Option<usize>) -> Self {
        Self {
            bytes,
            kind: Kind::Ggml(dtype),
            cols,
            rope_rows,
        }
    }

    /// How the bytes encode values.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The stored little-endian 16-bit values, in HF row order, when the tensor is stored
    /// as bf16 or f16 (`None` otherwise).
    pub(crate) fn halves(&self) -> Option<Vec<u16>> {
        match (self.kind, self.rope_rows) {
            (Kind::Float(DType::BF16 | DType::F16), None) => Some(
                self.bytes
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Bytes of one stored row.
    fn row_bytes(&self) -> usize {
        match self.kind {
            Kind::Float(d) => self.cols * d.size_in_bytes(),
            Kind::Ggml(q) => self.cols / q.block_size() * q.type_size(),
        }
    }

    /// The stored bytes of (HF-order) row `r`.
    fn stored_row(&self, r: usize) -> &[u8] {
        let row = self.rope_rows.map_or(r, |hd| rope_row(r, hd));
        let n = self.row_bytes();
        &self.bytes[row * n..(row + 1) * n]
    }

    /// Writes elements `start..start + dst.len()` (row-major, HF row order) as f32 into
    /// `dst`, which must lie inside the tensor.
    pub fn read_f32(&self, start: usize, dst: &mut [f32]) -> std::result::Result<(), String> {
        if let (Kind::Float(d), None) = (self.kind, self.rope_rows) {
            let size = d.size_in_bytes();
            decode_floats(&self.bytes[start * size..(start + dst.len()) * size], d, dst);
            return Ok(());
        }
        let mut row = vec![0f32; self.cols];
        let (mut at, mut done) = (start, 0);
        while done < dst.len() {
            let (r, c) = (at / self.cols, at % self.cols);
            let take = (self.cols - c).min(dst.len() - done);
            self.decode_row(self.stored_row(r), &mut row)?;
            dst[done..done + take].copy_from_slice(&row[c..c + take]);
            (at, done) = (at + take, done + take);
        }
        Ok(())
    }

    fn decode_row(&self, bytes: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
        match self.kind {
            Kind::Float(d) => {
                decode_floats(bytes, d, out);
                Ok(())
            }
            Kind::Ggml(q) => dequantize(q, bytes, out),
        }
    }

    /// For a tensor of llama.cpp blocks of type `dtype`: writes the stored blocks of rows
    /// `first..first + dst.len() / row bytes` into `dst` (Q8_0: 34 bytes per 32 weights,
    /// Q4_K: 144 per 256); `false` for other kinds.
    pub fn block_rows(&self, dtype: GgmlDType, first: usize, dst: &mut [u8]) -> bool {
        if self.kind != Kind::Ggml(dtype) {
            return false;
        }
        let n = self.row_bytes();
        for (i, out) in dst.chunks_exact_mut(n).enumerate() {
            out.copy_from_slice(self.stored_row(first + i));
        }
        true
    }
}

/// One row of llama.cpp blocks -> f32, through candle's dequantization (the bytes are
/// first copied into an 8-byte-aligned buffer, as candle reads them as block structs).
fn dequantize(q: GgmlDType, bytes: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
    let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
    let view = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()];
    view.copy_from_slice(bytes);
    let fail = |e: candle_core::Error| format!("cannot dequantize {q:?}: {e}");
    let t =
        candle_core::quantized::ggml_file::qtensor_from_ggml(q, view, vec![out.len()], &Device::Cpu).map_err(fail)?;
    let values: Vec<f32> = t.dequantize(&Device::Cpu).and_then(|t| t.to_vec1()).map_err(fail)?;
    if values.len() != out.len() {
        return Err(format!(
            "{q:?} row decoded to {} values, {} expected",
            values.len(),
            out.len()
        ));
    }
    out.copy_from_slice(&values);
    Ok(())
}

fn decode_floats(bytes: &[u8], d: DType, dst: &mut [f32]) {
    if d == DType::F32 {
        for (v, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    } else {
        widen_chunk(dst, bytes, d);
    }
}

/// Little-endian bf16 / f16 bytes -> f32, split over the available cores (loading a 1B
/// checkpoint converts 1.2 billion values; candle's generic cast is several times slower).
pub(super) fn widen_to_f32(bytes: &[u8], src: DType) -> Vec<f32> {
    let n = bytes.len() / 2;
    let mut out = vec![0f32; n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(8);
    let per = n.div_ceil(threads).max(1 << 16);
    std::thread::scope(|scope| {
        for (dst, src_bytes) in out.chunks_mut(per).zip(bytes.chunks(per * 2)) {
            scope.spawn(move || widen_chunk(dst, src_bytes, src));
        }
    });
    out
}

fn widen_chunk(dst: &mut [f32], bytes: &[u8], src: DType) {
    let halves = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if src == DType::BF16 {
        for (d, h) in dst.iter_mut().zip(halves) {
            *d = f32::from_bits((h as u32) << 16);
        }
    } else {
        for (d, h) in dst.iter_mut().zip(halves) {
            *d = half::f16::from_bits(h).to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    #[test]
    fn widening_matches_candle_casts() {
        let vals: Vec<f32> = (0..70_000).map(|i| (i as f32 - 35_000.0) * 0.37).collect();
        for dtype in [DType::BF16, DType::F16] {
            let t = Tensor::new(vals.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let bytes: Vec<u8> = match dtype {
                DType::BF16 => t
                    .to_vec1::<half::bf16>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                _ => t
                    .to_vec1::<half::f16>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            };
            let reference: Vec<f32> = t.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
            assert_eq!(widen_to_f32(&bytes, dtype), reference, "{dtype:?}");
        }
    }
}
