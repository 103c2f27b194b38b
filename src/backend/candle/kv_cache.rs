//! The key/value cache: grown in chunks, written in place, able to roll back to a prefix.
//!
//! Each layer keeps `k` and `v` buffers of shape `[kv_heads, capacity, head_dim]`. New
//! positions are copied into the buffer (`slice_set`), never concatenated onto the whole
//! cache; when the buffer is full it is reallocated `GROW_CHUNK` positions larger (one copy
//! per chunk). Attention reads a narrowed view of the first `len` positions.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Positions added to the capacity each time a layer's buffer is full.
pub(crate) const GROW_CHUNK: usize = 256;

#[derive(Debug, Clone)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// Key/value cache for every layer of one sequence.
#[derive(Debug, Clone)]
pub(crate) struct KvCache {
    layers: Vec<Option<LayerCache>>,
    len: usize,
    max_len: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

impl KvCache {
    /// An empty cache for `num_layers` layers that may hold up to `max_len` positions.
    /// Nothing is allocated until the first token arrives.
    pub fn new(
        num_layers: usize,
        kv_heads: usize,
        head_dim: usize,
        max_len: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            max_len,
            kv_heads,
            head_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Number of positions cached (the position of the next token).
    /// Positions currently allocated per layer.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| l.k.dim(1).unwrap_or(0))
            .next()
            .unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The most positions this cache accepts.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forgets every position from `len` on, keeping the prefix (and the allocation).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Checks that `n` more positions fit.
    pub fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.max_len {
            return Err(Error::PromptTooLong {
                tokens: self.len + n,
                limit: self.max_len,
            });
        }
        Ok(())
    }

    /// Writes `k`, `v` (`[kv_heads, n, head_dim]`) of layer `layer` at the current position
    /// and returns views of all cached keys and values including them (`[kv_heads, len + n, head_dim]`).
    /// Call [`KvCache::advance`] once all layers are written.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(1)?;
        let needed = self.len + n;
        self.ensure_capacity(layer, needed)?;
        let Some(Some(slot)) = self.layers.get(layer) else {
            return Err(candle_core::Error::Msg(format!("kv cache has no layer {layer}")).into());
        };
        slot.k.slice_set(&k.contiguous()?, 1, self.len)?;
        slot.v.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((slot.k.narrow(1, 0, needed)?, slot.v.narrow(1, 0, needed)?))
    }

    /// Marks `n` new positions as cached in every layer.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    fn ensure_capacity(&mut self, layer: usize, needed: usize) -> Result<()> {
        let have = match self.layers.get(layer) {
            Some(Some(l)) => l.k.dim(1)?,
            Some(None) => 0,
            None => return Err(candle_core::Error::Msg(format!("kv cache has no layer {layer}")).into()),
        };
        if needed <= have {
            return Ok(());
        }
        let cap = needed.div_ceil(GROW_CHUNK) * GROW_CHUNK;
        let cap = cap.min(self.max_len.max(needed));
        let shape = (self.kv_heads, cap, self.head_dim);
        let k = Tensor::zeros(shape, self.dtype, &self.device)?;
        let v = Tensor::zeros(shape, self.dtype, &self.device)?;
        if let Some(Some(old)) = self.layers.get(layer) {
            if self.len > 0 {
                k.slice_set(&old.k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                v.slice_set(&old.v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            }
        }
        self.layers[layer] = Some(LayerCache { k, v });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(val: f32, n: usize) -> Tensor {
        Tensor::full(val, (2, n, 4), &Device::Cpu).unwrap()
    }

    #[test]
    fn grows_in_chunks_keeps_content_and_rolls_back() {
        let mut c = KvCache::new(1, 2, 4, 10_000, DType::F32, &Device::Cpu);
        assert_eq!(c.capacity(), 0);
        let (k, _) = c.append(0, &tok(1.0, 3), &tok(1.0, 3)).unwrap();
        c.advance(3);
        assert_eq!(k.dims(), &[2, 3, 4]);
        assert_eq!(c.capacity(), GROW_CHUNK);
        let (k, v) = c.append(0, &tok(2.0, GROW_CHUNK), &tok(3.0, GROW_CHUNK)).unwrap();
        c.advance(GROW_CHUNK);
        assert_eq!(c.capacity(), 2 * GROW_CHUNK);
        let k0: Vec<f32> = k.narrow(1, 2, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&k0[..4], &[1.0; 4]);
        assert_eq!(&k0[4..8], &[2.0; 4]);
        assert_eq!(v.dim(1).unwrap(), 3 + GROW_CHUNK);
        c.truncate(2);
        let (k, _) = c.append(0, &tok(5.0, 1), &tok(5.0, 1)).unwrap();
        c.advance(1);
        assert_eq!(c.len(), 3);
        let last: Vec<f32> = k.narrow(1, 2, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(last, vec![5.0; 8]);
    }

    #[test]
    fn refuses_more_than_max_len() {
        let c = KvCache::new(1, 2, 4, 8, DType::F32, &Device::Cpu);
        assert!(matches!(
            c.check_room(9),
            Err(Error::PromptTooLong { tokens: 9, limit: 8 })
        ));
        assert!(c.check_room(8).is_ok());
    }
}
