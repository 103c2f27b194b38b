//! A bias-free linear layer over `[tokens, in]` activations: dense, or with weights
//! quantized in place (Q8_0 / Q4_K blocks, candle's quantized matmul kernels).

use std::sync::Arc;

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::error::Result;

/// `y = x W^T` with `W: [out, in]` as stored in HF checkpoints.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Weights in the compute dtype.
    Dense(Tensor),
    /// Weights quantized in blocks; activations stay f32.
    Quantized(Arc<QTensor>),
}

impl Linear {
    /// Wraps a `[out, in]` weight.
    pub fn new(weight: Tensor) -> Self {
        Self::Dense(weight)
    }

    /// Quantizes a `[out, in]` f32 weight to `dtype`. A row length that is not a whole
    /// number of `dtype` blocks falls back to Q8_0 (blocks of 32), then to dense f32.
    pub fn quantize(weight: Tensor, dtype: GgmlDType) -> Result<Self> {
        let cols = weight.dim(1)?;
        let dtype = [dtype, GgmlDType::Q8_0]
            .into_iter()
            .find(|d| cols % d.block_size() == 0);
        Ok(match dtype {
            Some(d) => Self::Quantized(Arc::new(quantize_parallel(&weight, d)?)),
            None => Self::Dense(weight),
        })
    }

    /// `x: [tokens, in] -> [tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Dense(w) => match crate::model::gemv::try_gemv(x, w)? {
                Some(y) => y,
                None => x.matmul(&w.t()?)?,
            },
            Self::Quantized(q) => QMatMul::from_arc(q.clone())?.forward(x)?,
        })
    }

    /// Applies several layers to the same input; when all are quantized with the same
    /// format, one fused kernel quantizes `x` once and runs them in one parallel region.
    pub fn forward_shared(layers: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        let quantized: Option<Vec<&QTensor>> = layers
            .iter()
            .map(|l| match l {
                Self::Quantized(q) => Some(q.as_ref()),
                Self::Dense(_) => None,
            })
            .collect();
        if let Some(qs) = quantized {
            if let Some(outs) = QTensor::gemv_fused_shared_lhs(&qs, &x.contiguous()?)? {
                return Ok(outs);
            }
        }
        layers.iter().map(|l| l.forward(x)).collect()
    }
}

/// `QTensor::quantize` split over the available cores by rows (rows are independent, and
/// a row is a whole number of blocks, so the pieces concatenate to the same bytes).
fn quantize_parallel(weight: &Tensor, dtype: GgmlDType) -> Result<QTensor> {
    let (rows, cols) = weight.dims2()?;
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(16);
    if !weight.device().is_cpu() || threads == 1 || rows < 64 * threads {
        return Ok(QTensor::quantize(weight, dtype)?);
    }
    let per = rows.div_ceil(threads);
    let parts: Vec<candle_core::Result<Vec<u8>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..rows)
            .step_by(per)
            .map(|start| {
                // `QTensor::quantize` reads its input's whole storage (ignoring a narrowed
                // view's offset), so each piece gets a storage of its own.
                let len = per.min(rows - start);
                let piece = weight
                    .narrow(0, start, len)
                    .and_then(|p| p.flatten_all()?.to_vec1::<f32>())
                    .and_then(|v| Tensor::from_vec(v, (len, cols), &Device::Cpu));
                scope.spawn(move || QTensor::quantize(&piece?, dtype)?.data().map(|d| d.into_owned()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(candle_core::Error::Msg("quantization thread panicked".into())))
            })
            .collect()
    });
    let mut bytes = Vec::new();
    for part in parts {
        bytes.extend_from_slice(&part?);
    }
    let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::rel_max_diff;
    use candle_core::Device;

    #[test]
    fn quantized_layers_track_the_dense_layer() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (64, 512), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 512), &dev).unwrap();
        let dense = Linear::new(w.clone()).forward(&x).unwrap();
        for (dtype, tol) in [(GgmlDType::Q8_0, 0.02), (GgmlDType::Q4K, 0.15)] {
            let q = Linear::quantize(w.clone(), dtype).unwrap();
            assert!(matches!(q, Linear::Quantized(_)));
            let err = rel_max_diff(&q.forward(&x).unwrap(), &dense);
            assert!(err < tol, "{dtype:?}: {err}");
            let shared = Linear::forward_shared(&[&q, &q], &x.narrow(0, 0, 1).unwrap()).unwrap();
            let single = q.forward(&x.narrow(0, 0, 1).unwrap()).unwrap();
            assert!(rel_max_diff(&shared[1], &single) < 1e-5);
        }
    }

    #[test]
    fn parallel_quantization_gives_the_same_blocks() {
        let w = Tensor::randn(0f32, 1.0, (1000, 256), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K] {
            let serial = QTensor::quantize(&w, dtype).unwrap();
            let parallel = quantize_parallel(&w, dtype).unwrap();
            assert_eq!(serial.data().unwrap(), parallel.data().unwrap());
            assert_eq!(parallel.shape().dims(), &[1000, 256]);
        }
    }

    #[test]
    fn rows_that_are_not_whole_blocks_fall_back() {
        let w = Tensor::randn(0f32, 1.0, (4, 64), &Device::Cpu).unwrap();
        let Linear::Quantized(q) = Linear::quantize(w.clone(), GgmlDType::Q4K).unwrap() else {
            panic!()
        };
        assert_eq!(q.dtype(), GgmlDType::Q8_0);
        let w = Tensor::randn(0f32, 1.0, (4, 40), &Device::Cpu).unwrap();
        assert!(matches!(
            Linear::quantize(w, GgmlDType::Q8_0).unwrap(),
            Linear::Dense(_)
        ));
    }
}
