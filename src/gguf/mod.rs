//! GGUF checkpoints (llama.cpp's single-file format): header, metadata and tensor table
//! read by candle's reader, then checked here before any tensor is touched.
//!
//! Checks made once at open: the file parses (a panic inside the reader becomes an
//! error), the alignment is a power of two, every tensor's element count fits, its rows
//! are whole blocks of its type, and its data lies aligned inside the file. Tensors are
//! then served by their Hugging Face names (`blk.3.attn_q.weight` is
//! `model.layers.3.self_attn.q_proj.weight`) with the query and key rows put back in HF's
//! order (llama.cpp's converter interleaves the two halves of every rotary head).

mod meta;

use std::collections::HashMap;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use memmap2::Mmap;

use crate::error::{io_err, Error, Result};

pub use meta::GgufMeta;

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";

/// One tensor of the file, located and checked.
#[derive(Debug, Clone)]
pub(crate) struct GgufTensor {
    /// The name in the file.
    pub gguf_name: String,
    /// The stored type.
    pub dtype: GgmlDType,
    /// Dimensions, outermost first (`[rows, cols]` for a matrix, as in HF checkpoints).
    pub dims: Vec<usize>,
    /// Byte range of the data in the file.
    pub start: usize,
    /// Length of the data in bytes.
    pub len: usize,
    /// For query and key projections: the rotary head size whose row halves the
    /// converter interleaved (rows are read back in HF's order).
    pub rope_rows: Option<usize>,
}

/// A memory-mapped, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    metadata: HashMap<String, Value>,
    /// HF tensor name -> tensor.
    tensors: HashMap<String, GgufTensor>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// True when `path` is a file that starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == MAGIC
}

impl GgufFile {
    /// Maps and validates `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: the file is opened read-only; like every mmap-based loader we assume it is
        // not truncated by another process while mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        let bad = |reason: String| Error::Gguf {
            path: path.to_path_buf(),
            reason,
        };
        let content = match catch_unwind(AssertUnwindSafe(|| Content::read(&mut Cursor::new(&mmap[..])))) {
            Ok(Ok(c)) => c,
            // candle's text, without the backtrace it appends when `RUST_BACKTRACE` is set.
            Ok(Err(e)) => return Err(bad(e.to_string().lines().next().unwrap_or_default().to_string())),
            Err(_) => return Err(bad("malformed header (the GGUF reader gave up)".into())),
        };
        let alignment = alignment(&content.metadata).map_err(&bad)?;
        let heads = |key: &str| meta::get_usize(&content.metadata, key).ok().flatten();
        let arch = meta::get_str(&content.metadata, "general.architecture").unwrap_or_default();
        let q_heads = heads(&format!("{arch}.attention.head_count"));
        let kv_heads = heads(&format!("{arch}.attention.head_count_kv")).or(q_heads);
        let base =
            usize::try_from(content.tensor_data_offset).map_err(|_| bad("tensor data offset overflows".into()))?;
        let mut tensors = HashMap::new();
        for (name, info) in &content.tensor_infos {
            let mut t =
                locate(name, info, base, alignment, mmap.len()).map_err(|r| bad(format!("tensor `{name}`: {r}")))?;
            let hf = hf_name(name).unwrap_or_else(|| name.clone());
            let heads = match () {
                _ if name.ends_with("attn_q.weight") => q_heads,
                _ if name.ends_with("attn_k.weight") => kv_heads,
                _ => None,
            };
            if let Some(h) = heads {
                let rows = t.dims.first().copied().unwrap_or(0);
                if h == 0 || !rows.is_multiple_of(2 * h) {
                    return Err(bad(format!(
                        "tensor `{name}`: {rows} rows do not split into {h} rotary heads"
                    )));
                }
                t.rope_rows = Some(rows / h);
            }
            tensors.insert(hf, t);
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            metadata: content.metadata,
            tensors,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata, read through typed accessors.
    pub fn meta(&self) -> GgufMeta<'_> {
        GgufMeta::new(&self.path, &self.metadata, self)
    }

    /// The tensor stored under HF name `name`.
    pub(crate) fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.get(name)
    }

    /// The bytes of `t`.
    pub(crate) fn data(&self, t: &GgufTensor) -> &[u8] {
        // `locate` checked the range against the file length.
        &self.mmap[t.start..t.start + t.len]
    }

    /// How many tensors of each stored type the matrices (2-D tensors) use, most first.
    pub fn matrix_types(&self) -> Vec<(GgmlDType, usize)> {
        let mut counts: Vec<(GgmlDType, usize)> = Vec::new();
        for t in self.tensors.values().filter(|t| t.dims.len() == 2) {
            match counts.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some((_, n)) => *n += 1,
                None => counts.push((t.dtype, 1)),
            }
        }
        counts.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)))
        });
        counts
    }
}

fn alignment(metadata: &HashMap<String, Value>) -> std::result::Result<usize, String> {
    let a = meta::get_usize(metadata, "general.alignment")?.unwrap_or(32);
    if a == 0 || !a.is_power_of_two() {
        return Err(format!("general.alignment {a} is not a power of two"));
    }
    Ok(a)
}

/// Checks one tensor's size, block structure and position.
fn locate(
    name: &str,
    info: &candle_core::quantized::gguf_file::TensorInfo,
    base: usize,
    alignment: usize,
    file_len: usize,
) -> std::result::Result<GgufTensor, String> {
    let dims = info.shape.dims().to_vec();
    let elems = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("element count overflows")?;
    let (block, size) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
    let cols = dims.last().copied().unwrap_or(1);
    if cols == 0 || !cols.is_multiple_of(block) {
        return Err(format!(
            "rows of {cols} are not whole {:?} blocks of {block}",
            info.ggml_dtype
        ));
    }
    let len = (elems / block).checked_mul(size).ok_or("byte size overflows")?;
    let offset = usize::try_from(info.offset).map_err(|_| "offset overflows")?;
    if !offset.is_multiple_of(alignment) {
        return Err(format!("offset {offset} is not aligned to {alignment}"));
    }
    let start = base.checked_add(offset).ok_or("offset overflows")?;
    match start.checked_add(len) {
        Some(end) if end <= file_len => {}
        _ => {
            return Err(format!(
                "{len} bytes at {start} reach past the end of the file ({file_len} bytes)"
            ))
        }
    }
    Ok(GgufTensor {
        gguf_name: name.to_string(),
        dtype: info.ggml_dtype,
        dims,
        start,
        len,
        rope_rows: None,
    })
}

/// The Hugging Face name of a llama.cpp tensor name.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The file row holding HF row `r` of a rotary projection with heads of `head_dim` rows:
/// the converter stores head `h`'s rows `(j, i)` (half `j`, pair `i`) at `h, 2i + j`.
pub(crate) fn rope_row(r: usize, head_dim: usize) -> usize {
    let (h, rem) = (r / head_dim, r % head_dim);
    let half = head_dim / 2;
    h * head_dim + 2 * (rem % half) + rem / half
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.ffn_down.weight").as_deref(),
            Some("model.layers.12.mlp.down_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn rope_rows_undo_the_converters_interleaving() {
        // llama.cpp: reshape(heads, 2, hd/2).swapaxes(1, 2): file row h*hd + 2i + j holds
        // HF row h*hd + j*hd/2 + i.
        let hd = 8;
        let mut seen = vec![false; 2 * hd];
        for r in 0..2 * hd {
            let f = rope_row(r, hd);
            let (h, j, i) = (r / hd, (r % hd) / (hd / 2), r % (hd / 2));
            assert_eq!(f, h * hd + 2 * i + j);
            seen[f] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
