//! Text <-> token ids: a wrapper over the `tokenizers` crate with typed errors, panic
//! isolation, and an incremental decoder that only ever emits complete UTF-8 text.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::error::{Error, Result};

/// A loaded `tokenizer.json` (cheap to clone: the clones share it).
#[derive(Clone)]
pub struct Tokenizer {
    inner: std::sync::Arc<tokenizers::Tokenizer>,
    /// A copy that encodes special-token text as plain text (made on first use).
    plain: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<tokenizers::Tokenizer>>>,
}

/// Runs `f`, turning both its error and a panic inside the tokenizers crate into [`Error::Tokenizer`].
fn guarded<T>(what: &str, f: impl FnOnce() -> tokenizers::Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Tokenizer(format!("{what}: {e}"))),
        Err(_) => Err(Error::Tokenizer(format!("{what}: the tokenizer library panicked"))),
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                what: "tokenizer",
            });
        }
        let what = format!("{}", path.display());
        let inner = guarded(&what, || tokenizers::Tokenizer::from_file(path))?;
        Ok(Self {
            inner: inner.into(),
            plain: Default::default(),
        })
    }

    /// Builds a tokenizer from `tokenizer.json` text (`origin` names it in errors).
    pub fn from_json_str(json: &str, origin: &Path) -> Result<Self> {
        let what = format!("{} (tokenizer from metadata)", origin.display());
        let inner = guarded(&what, || json.parse::<tokenizers::Tokenizer>())?;
        Ok(Self {
            inner: inner.into(),
            plain: Default::default(),
        })
    }

    /// Encodes `text`; with `add_special_tokens` the tokenizer's post-processor adds BOS
    /// exactly as HF's `tokenizer(text)` does. Special-token text in `text` (such as
    /// `<|eot_id|>`) is recognised as the special token, as in HF.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = guarded("encode", || self.inner.encode(text, add_special_tokens))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes text with special-token strings taken as plain text (no BOS added).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let plain = self.plain.get_or_init(|| {
            let mut t = (*self.inner).clone();
            t.set_encode_special_tokens(true);
            std::sync::Arc::new(t)
        });
        let enc = guarded("encode", || plain.encode(text, false))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, leaving out special tokens when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        guarded("decode", || self.inner.decode(ids, skip_special))
    }

    /// The bytes a token stands for (byte-level BPE pieces mapped back to bytes; a special
    /// token's own text). Empty for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        // GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the
        // other bytes, in order, for U+0100 onwards.
        let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let others: Vec<u8> = (0u32..256).filter(|&b| !printable(b)).map(|b| b as u8).collect();
        let mut bytes = Vec::with_capacity(piece.len());
        for c in piece.chars() {
            let code = c as u32;
            match (
                printable(code),
                code.checked_sub(256).and_then(|n| others.get(n as usize)),
            ) {
                (true, _) => bytes.push(code as u8),
                (false, Some(&b)) => bytes.push(b),
                (false, None) => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        bytes
    }

    /// True for the tokenizer's special tokens (`<|eot_id|>`, reserved ids...).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }

    /// The id of a token given by its text, e.g. `<|eot_id|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids the tokenizer can produce, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// A fresh incremental decoder for generated tokens.
    pub fn stream(&self, skip_special: bool) -> TextStream {
        TextStream {
            tok: self.clone(),
            skip_special,
            all: Vec::new(),
            window: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }
}

/// Turns generated ids into text pieces as they arrive, with the `tokenizers` crate's own
/// streaming decoder (`DecodeStream`'s step, whose state is kept here so the stream can
/// own its tokenizer). A piece is only emitted once it is complete UTF-8 (a character
/// split over several tokens is held back), and the pieces concatenate to exactly
/// `decode(all ids)`.
pub struct TextStream {
    tok: Tokenizer,
    skip_special: bool,
    all: Vec<u32>,
    /// `DecodeStream`'s state: the ids still re-decoded, the text of their first
    /// `prefix_index`, already emitted.
    window: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl TextStream {
    /// Adds one id; returns the new text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.all.push(id);
        let (window, prefix, index) = (&mut self.window, &mut self.prefix, &mut self.prefix_index);
        let tok = &**self.tok.inner;
        let step = guarded("decode", || {
            tokenizers::tokenizer::step_decode_stream(tok, vec![id], self.skip_special, window, prefix, index)
        })?;
        Ok(step.unwrap_or_default())
    }

    /// Text held back so far (an incomplete character at the end of the output).
    pub fn finish(&mut self) -> Result<String> {
        let now = self.tok.decode(&self.window, self.skip_special)?;
        let rest = now.strip_prefix(self.prefix.as_str()).unwrap_or(&now).to_string();
        self.window.clear();
        self.prefix.clear();
        self.prefix_index = 0;
        Ok(rest)
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_pieces_are_whole_characters_and_add_up_to_the_decoding() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tied-f32-mha/tokenizer.json");
        let tok = Tokenizer::from_file(&dir).unwrap();
        let text = "héllo 世界 🎉🎉 naïve café <|eot_id|> end\n\n  spaced";
        let ids = tok.encode(text, true).unwrap();
        for skip in [false, true] {
            let mut stream = tok.stream(skip);
            let mut out = String::new();
            for &id in &ids {
                let piece = stream.push(id).unwrap();
                assert!(!piece.contains(char::REPLACEMENT_CHARACTER), "{piece:?}");
                out.push_str(&piece);
            }
            out.push_str(&stream.finish().unwrap());
            assert_eq!(out, tok.decode(&ids, skip).unwrap());
            assert_eq!(stream.ids(), ids);
        }
        // A stream cut inside a character gives the rest on finish.
        let emoji = tok.encode("🎉", false).unwrap();
        assert!(emoji.len() > 1, "{emoji:?}");
        let mut stream = tok.stream(true);
        assert_eq!(stream.push(emoji[0]).unwrap(), "");
        assert!(!stream.finish().unwrap().is_empty());
    }
}
