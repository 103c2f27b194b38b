//! Reading the text `perplexity` scores: streamed in pieces of about a megabyte, each cut
//! after a line break and tokenized on its own, until the windows asked for are filled, so
//! that a large file (or `/dev/zero`) costs only what is scored. Text that is not UTF-8 or
//! holds NUL bytes is refused, naming the file and the byte.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use llama32::Engine;

/// Bytes read at a time.
const PIECE: usize = 1 << 20;

/// The token ids of `path` (no BOS), at least `wanted` of them when the file has that many.
pub fn read_tokens(engine: &Engine, path: &Path, wanted: usize) -> anyhow::Result<Vec<u32>> {
    let mut file = std::fs::File::open(path).map_err(|source| crate::common::FlagFileError {
        flag: "--file",
        path: path.to_path_buf(),
        source,
    })?;
    let mut tokens = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut offset = 0usize;
    let mut buf = vec![0u8; PIECE];
    while tokens.len() < wanted {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if let Some(at) = buf[..n].iter().position(|&b| b == 0) {
            bail!(
                "{} is not text: a NUL byte at byte {}",
                path.display(),
                offset + pending.len() + at
            );
        }
        pending.extend_from_slice(&buf[..n]);
        let cut = match n {
            0 => pending.len(),
            _ => piece_end(&pending),
        };
        if cut > 0 {
            let text = std::str::from_utf8(&pending[..cut]).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not UTF-8 text (at byte {})",
                    path.display(),
                    offset + e.valid_up_to()
                )
            })?;
            tokens.extend(engine.tokenizer().encode(text, false)?);
            pending.drain(..cut);
            offset += cut;
        }
        if n == 0 {
            break;
        }
    }
    Ok(tokens)
}

/// Where the text read so far can be cut: after its last line break once a piece has
/// gathered (0: read on), or everything when a piece holds no line break.
fn piece_end(pending: &[u8]) -> usize {
    if pending.len() < PIECE {
        return 0;
    }
    match pending.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        // No line break in a whole piece: cut at a character boundary.
        None => (0..=pending.len())
            .rev()
            .find(|&i| std::str::from_utf8(&pending[..i]).is_ok())
            .unwrap_or(0),
    }
}
