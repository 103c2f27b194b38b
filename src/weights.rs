//! Checkpoint weights: single or sharded safetensors files, validated before use.
//!
//! Every file is memory-mapped and its header parsed and checked (offsets, sizes) once;
//! tensors are then fetched by name with the shape the model expects, so a wrong or
//! missing tensor is reported by name instead of failing deep inside a matmul.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{tensor::Metadata, Dtype, SafeTensors};
use serde::Deserialize;

use crate::config::read_json;
use crate::error::{io_err, Error, Result};
use crate::gguf::GgufFile;

mod raw;
use raw::widen_to_f32;
pub use raw::{Kind, RawTensor};

/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct WeightFile {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// All tensors of a checkpoint (safetensors files or one GGUF file), memory-mapped and
/// validated.
pub struct Weights {
    dir: PathBuf,
    store: Store,
}

enum Store {
    Safetensors {
        files: Vec<WeightFile>,
        /// Tensor name -> index into `files`.
        location: HashMap<String, usize>,
    },
    Gguf(Arc<GgufFile>),
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Weights {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        if index_path.exists() {
            Self::open_sharded(dir, &index_path)
        } else if single.exists() {
            let file = WeightFile::open(single)?;
            let location = file.metadata.tensors().keys().map(|k| (k.clone(), 0)).collect();
            Ok(Self {
                dir: dir.to_path_buf(),
                store: Store::Safetensors {
                    files: vec![file],
                    location,
                },
            })
        } else {
            Err(Error::MissingFile {
                path: single,
                what: "model weights: model.safetensors or model.safetensors.index.json",
            })
        }
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Self> {
        let index: ShardIndex = read_json(index_path)?;
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut files = Vec::new();
        let mut location = HashMap::new();
        for (tensor, file_name) in &index.weight_map {
            let slot = match by_name.get(file_name.as_str()) {
                Some(&slot) => slot,
                None => {
                    let path = shard_path(dir, index_path, file_name)?;
                    files.push(WeightFile::open(path)?);
                    by_name.insert(file_name, files.len() - 1);
                    files.len() - 1
                }
            };
            if files[slot].metadata.info(tensor).is_none() {
                return Err(Error::ShardIndex {
                    path: index_path.to_path_buf(),
                    reason: format!("tensor `{tensor}` is not in {file_name} as the index says"),
                });
            }
            location.insert(tensor.clone(), slot);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            store: Store::Safetensors { files, location },
        })
    }

    /// The tensors of a GGUF file, served by their Hugging Face names.
    pub fn from_gguf(file: Arc<GgufFile>) -> Self {
        Self {
            dir: file.path().to_path_buf(),
            store: Store::Gguf(file),
        }
    }

    /// True when the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        match &self.store {
            Store::Safetensors { location, .. } => location.contains_key(name),
            Store::Gguf(g) => g.tensor(name).is_some(),
        }
    }

    /// The checkpoint directory (the file, for GGUF).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The on-disk dtype of the first floating-point tensor (what the checkpoint "is").
    /// For GGUF, the token embedding's: f16 when it is block-quantized (its values are
    /// then kept at 16 bits beside quantized layers).
    pub fn storage_dtype(&self) -> Option<DType> {
        match &self.store {
            Store::Safetensors { files, .. } => files
                .iter()
                .flat_map(|f| f.metadata.tensors().into_values().map(|i| i.dtype))
                .find_map(|d| candle_dtype(d).ok()),
            Store::Gguf(g) => g.tensor("model.embed_tokens.weight").map(|t| match t.dtype {
                GgmlDType::F32 => DType::F32,
                GgmlDType::BF16 => DType::BF16,
                _ => DType::F16,
            }),
        }
    }

    /// Checks that tensor `name` exists with `shape` and a supported dtype, without loading it.
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        self.raw(name, shape).map(|_| ())
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            name: name.to_string(),
            dir: self.dir.clone(),
        }
    }

    /// The stored bytes of tensor `name` (shape checked), without copying.
    pub fn raw(&self, name: &str, shape: &[usize]) -> Result<RawTensor<'_>> {
        match &self.store {
            Store::Safetensors { files, location } => {
                let slot = *location.get(name).ok_or_else(|| self.missing(name))?;
                files[slot].raw(name, shape)
            }
            Store::Gguf(g) => {
                let t = g.tensor(name).ok_or_else(|| self.missing(name))?;
                if t.dims != shape {
                    return Err(Error::BadTensor {
                        path: g.path().to_path_buf(),
                        name: format!("{} ({name})", t.gguf_name),
                        reason: format!("expected shape {shape:?}, found {:?}", t.dims),
                    });
                }
                let kind = match t.dtype {
                    GgmlDType::F32 => Kind::Float(DType::F32),
                    GgmlDType::F16 => Kind::Float(DType::F16),
                    GgmlDType::BF16 => Kind::Float(DType::BF16),
                    q => Kind::Ggml(q),
                };
                Ok(RawTensor {
                    bytes: g.data(t),
                    kind,
                    cols: shape.last().copied().unwrap_or(1).max(1),
                    rope_rows: t.rope_rows,
                })
            }
        }
    }

    /// Loads tensor `name`, checks its shape, converts it to `dtype` on `device`.
    pub fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let raw = self.raw(name, shape)?;
        let tensor = match (raw.kind, raw.rope_rows, dtype) {
            (Kind::Float(src @ (DType::BF16 | DType::F16)), None, DType::F32) => {
                Tensor::from_vec(widen_to_f32(raw.bytes, src), shape, &Device::Cpu)?
            }
            (Kind::Float(src), None, _) => {
                Tensor::from_raw_buffer(raw.bytes, src, shape, &Device::Cpu)?.to_dtype(dtype)?
            }
            _ => {
                let mut all = vec![0f32; shape.iter().product()];
                raw.read_f32(0, &mut all).map_err(|reason| Error::BadTensor {
                    path: self.dir.clone(),
                    name: name.to_string(),
                    reason,
                })?;
                Tensor::from_vec(all, shape, &Device::Cpu)?.to_dtype(dtype)?
            }
        };
        Ok(tensor.to_device(device)?)
    }
}

impl WeightFile {
    fn raw(&self, name: &str, shape: &[usize]) -> Result<RawTensor<'_>> {
        let bad = |reason: String| Error::BadTensor {
            path: self.path.clone(),
            name: name.to_string(),
            reason,
        };
        let info = self.metadata.info(name).ok_or_else(|| bad("not in file".into()))?;
        if info.shape != shape {
            return Err(bad(format!("expected shape {shape:?}, found {:?}", info.shape)));
        }
        let dtype = candle_dtype(info.dtype).map_err(bad)?;
        let (start, end) = info.data_offsets;
        let base = 8 + self.header_len;
        let bytes = self
            .mmap
            .get(base + start..base + end)
            .ok_or_else(|| bad("data offsets outside the file".into()))?;
        let want = shape.iter().product::<usize>() * dtype.size_in_bytes();
        if bytes.len() != want {
            return Err(bad(format!("{} data bytes, {want} expected", bytes.len())));
        }
        Ok(RawTensor {
            bytes,
            kind: Kind::Float(dtype),
            cols: shape.last().copied().unwrap_or(1).max(1),
            rope_rows: None,
        })
    }

    fn open(path: PathBuf) -> Result<Self> {
        let file = std::fs::File::open(&path).map_err(io_err(&path))?;
        // SAFETY: the file is opened read-only; like every mmap-based loader we assume it is
        // not truncated by another process while mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(&path))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
            path: path.clone(),
            reason: describe(&e),
        })?;
        Ok(Self {
            path,
            mmap,
            header_len,
            metadata,
        })
    }
}

fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => "the file size does not match its header (truncated or padded file)".into(),
        E::HeaderTooSmall => "the file is too small to hold a header".into(),
        E::InvalidHeaderLength => "the header length is larger than the file".into(),
        other => other.to_string(),
    }
}

fn candle_dtype(d: Dtype) -> std::result::Result<DType, String> {
    match d {
        Dtype::BF16 => Ok(DType::BF16),
        Dtype::F16 => Ok(DType::F16),
        Dtype::F32 => Ok(DType::F32),
        other => Err(format!("on-disk dtype {other:?} is not supported (bf16, f16 or f32)")),
    }
}

/// Resolves a shard file name from the index, refusing anything that leaves `dir`.
fn shard_path(dir: &Path, index_path: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if name.is_empty() || !plain {
        return Err(Error::ShardIndex {
            path: index_path.to_path_buf(),
            reason: format!("shard file name `{name}` is not a plain file name inside the checkpoint directory"),
        });
    }
    Ok(dir.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_must_stay_inside_the_directory() {
        let dir = Path::new("/ckpt");
        let idx = Path::new("/ckpt/model.safetensors.index.json");
        for bad in ["../x.safetensors", "/etc/passwd", "a/../../b", "", "./../c"] {
            assert!(shard_path(dir, idx, bad).is_err(), "{bad}");
        }
        assert_eq!(
            shard_path(dir, idx, "model-00001-of-00002.safetensors").unwrap(),
            Path::new("/ckpt/model-00001-of-00002.safetensors")
        );
    }
}
