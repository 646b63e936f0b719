//! The tokenizer, loaded from the metadata of a GGUF file.
//!
//! Two sources, in this order of preference:
//! - `tokenizer.huggingface.json`: the checkpoint's `tokenizer.json`, run through the
//!   `tokenizers` crate (module `hf`).
//! - `tokenizer.ggml.*` arrays (files made by llama.cpp's tools): `model = "llama"` is a
//!   SentencePiece BPE vocabulary with scores, encoded here the way llama.cpp and
//!   `sentencepiece` do (module `spm`).
//!
//! Decoding maps `▁` to a space and `<0xNN>` pieces to their byte; [`StreamDecoder`] does the
//! same one token at a time without ever cutting a UTF-8 character.

mod hf;
mod spm;
mod stream;
mod vocab;

use std::borrow::Cow;

use crate::gguf::{GgufFile, MetaArray, MetaValue};
use crate::{Error, Result};
use hf::HfEncoder;
use spm::SpmEncoder;
use vocab::{TokenKind, Vocab};

pub use stream::StreamDecoder;

/// GGUF metadata keys read here (gguf-and-quantization.md section 1.8).
pub mod keys {
    pub const HF_JSON: &str = "tokenizer.huggingface.json";
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const SCORES: &str = "tokenizer.ggml.scores";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const UNKNOWN_ID: &str = "tokenizer.ggml.unknown_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    /// rgemma's own (rg-quantize writes it): true when the embedded `tokenizer.json` is a
    /// SentencePiece model whose ids the `tokenizer.ggml.*` arrays reproduce.
    pub const GGML_EXACT: &str = "rgemma.tokenizer.ggml_exact";
}

/// Which of a GGUF file's two tokenizer descriptions to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerSource {
    /// The `tokenizer.ggml.*` arrays (rgemma's SentencePiece encoder: a 256k vocabulary
    /// loads in well under 0.1 s), unless the file also embeds a `tokenizer.json` that its
    /// converter did not mark as reproduced by them (`rgemma.tokenizer.ggml_exact`): then
    /// that one, the exact choice.
    Auto,
    /// The `tokenizer.ggml.*` arrays when the file has them.
    GgmlArrays,
    /// The embedded `tokenizer.huggingface.json`, run by the `tokenizers` crate, when the
    /// file has it (about 2 s and 400 MB to load for a 256k vocabulary).
    HuggingFace,
}

impl TokenizerSource {
    /// `RGEMMA_TOKENIZER=ggml` or `=hf`; otherwise (unset or anything else) `Auto`.
    pub fn from_env() -> TokenizerSource {
        match std::env::var("RGEMMA_TOKENIZER").as_deref() {
            Ok("ggml") => TokenizerSource::GgmlArrays,
            Ok("hf") => TokenizerSource::HuggingFace,
            _ => TokenizerSource::Auto,
        }
    }
}

/// Both boxed: each is a few KiB (a byte table; two HF tokenizer structs).
enum Encoder {
    Spm(Box<SpmEncoder>),
    Hf(Box<HfEncoder>),
}

/// Text <-> token ids for one vocabulary. Cheap to share between threads (`Send + Sync`).
pub struct Tokenizer {
    vocab: Vocab,
    bos: u32,
    eos: u32,
    add_bos_by_default: bool,
    encoder: Encoder,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match self.encoder {
            Encoder::Spm(_) => "tokenizer.ggml (SentencePiece BPE)",
            Encoder::Hf(_) => "tokenizer.huggingface.json",
        };
        f.debug_struct("Tokenizer")
            .field("source", &source)
            .field("n_vocab", &self.vocab.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn format_error(msg: impl Into<String>) -> Error {
    Error::Format(msg.into())
}

/// A u32 key that may be absent.
fn optional_u32(file: &GgufFile, key: &str) -> Result<Option<u32>> {
    match file.get(key) {
        None => Ok(None),
        Some(_) => Ok(Some(file.get_u32(key)?)),
    }
}

fn optional_bool(file: &GgufFile, key: &str) -> Result<Option<bool>> {
    match file.get(key) {
        None => Ok(None),
        Some(_) => Ok(Some(file.get_bool(key)?)),
    }
}

/// `tokenizer.ggml.scores`: one f32 per token; absent means all zero (as in llama.cpp).
fn read_scores(file: &GgufFile, n: usize) -> Result<Vec<f32>> {
    let scores = match file.get(keys::SCORES) {
        None => return Ok(vec![0.0; n]),
        Some(MetaValue::Array(MetaArray::F32(v))) => v.clone(),
        Some(MetaValue::Array(MetaArray::F64(v))) => v.iter().map(|&x| x as f32).collect(),
        Some(_) => {
            return Err(format_error(format!(
                "{} is not an array of floats",
                keys::SCORES
            )))
        }
    };
    if scores.len() != n {
        return Err(format_error(format!(
            "{} has {} entries for {n} tokens",
            keys::SCORES,
            scores.len()
        )));
    }
    Ok(scores)
}

/// `tokenizer.ggml.token_type`: one integer per token; absent means all normal.
fn read_token_types(file: &GgufFile, n: usize) -> Result<Vec<i64>> {
    fn widen<T: Copy + Into<i64>>(v: &[T]) -> Vec<i64> {
        v.iter().map(|&x| x.into()).collect()
    }
    let types = match file.get(keys::TOKEN_TYPE) {
        None => return Ok(vec![1; n]),
        Some(MetaValue::Array(array)) => match array {
            MetaArray::I32(v) => widen(v),
            MetaArray::U32(v) => widen(v),
            MetaArray::I8(v) => widen(v),
            MetaArray::U8(v) => widen(v),
            MetaArray::I16(v) => widen(v),
            MetaArray::U16(v) => widen(v),
            MetaArray::I64(v) => v.clone(),
            // Out-of-range values are not a known type either way: they read as normal.
            MetaArray::U64(v) => v.iter().map(|&x| i64::try_from(x).unwrap_or(1)).collect(),
            _ => {
                return Err(format_error(format!(
                    "{} is not an array of integers",
                    keys::TOKEN_TYPE
                )))
            }
        },
        Some(_) => {
            return Err(format_error(format!(
                "{} is not an array",
                keys::TOKEN_TYPE
            )))
        }
    };
    if types.len() != n {
        return Err(format_error(format!(
            "{} has {} entries for {n} tokens",
            keys::TOKEN_TYPE,
            types.len()
        )));
    }
    Ok(types)
}

impl Tokenizer {
    /// Which description of the file this tokenizer runs.
    pub fn source(&self) -> TokenizerSource {
        match self.encoder {
            Encoder::Spm(_) => TokenizerSource::GgmlArrays,
            Encoder::Hf(_) => TokenizerSource::HuggingFace,
        }
    }

    /// Builds the tokenizer from a GGUF file's metadata (no tensor is touched), from the
    /// source `RGEMMA_TOKENIZER` asks for ([`TokenizerSource::from_env`]). `Ok(None)` when the
    /// file carries neither `tokenizer.huggingface.json` nor `tokenizer.ggml.tokens`.
    pub fn from_gguf(file: &GgufFile) -> Result<Option<Tokenizer>> {
        Tokenizer::from_gguf_with(file, TokenizerSource::from_env())
    }

    /// [`Tokenizer::from_gguf`] from the given source.
    pub fn from_gguf_with(file: &GgufFile, source: TokenizerSource) -> Result<Option<Tokenizer>> {
        let has_ggml = file.get(keys::TOKENS).is_some();
        let hf_json = file.get(keys::HF_JSON);
        let use_hf = hf_json.is_some()
            && match source {
                TokenizerSource::HuggingFace => true,
                TokenizerSource::GgmlArrays => !has_ggml,
                TokenizerSource::Auto => {
                    !has_ggml || optional_bool(file, keys::GGML_EXACT)? != Some(true)
                }
            };
        if let Some(value) = hf_json.filter(|_| use_hf) {
            let MetaValue::String(json) = value else {
                return Err(format_error(format!("{} is not a string", keys::HF_JSON)));
            };
            let encoder = HfEncoder::from_json(json)?;
            let vocab = encoder.vocab();
            return Tokenizer::assemble(file, vocab, Encoder::Hf(Box::new(encoder))).map(Some);
        }
        if file.get(keys::TOKENS).is_none() {
            return Ok(None);
        }
        let model = match file.get(keys::MODEL) {
            Some(_) => file.get_str(keys::MODEL)?,
            None => {
                return Err(format_error(format!(
                    "{} is present but {} is not",
                    keys::TOKENS,
                    keys::MODEL
                )))
            }
        };
        if model != "llama" {
            return Err(Error::Unsupported(format!(
                "tokenizer model {model:?} (only \"llama\", SentencePiece, is supported without {})",
                keys::HF_JSON
            )));
        }

        let pieces = file.get_str_array(keys::TOKENS)?;
        let n = pieces.len();
        if n == 0 || n >= u32::MAX as usize {
            return Err(format_error(format!("{} has {n} entries", keys::TOKENS)));
        }
        // The vocabulary indexes its text with u32 offsets.
        let text_bytes: usize = pieces.iter().map(String::len).sum();
        if text_bytes > u32::MAX as usize {
            return Err(format_error(format!(
                "{} holds {text_bytes} bytes of text",
                keys::TOKENS
            )));
        }
        let scores = read_scores(file, n)?;
        let kinds = read_token_types(file, n)?
            .iter()
            .zip(pieces)
            .map(|(&ty, piece)| TokenKind::from_ggml(ty, piece))
            .collect();
        let vocab = Vocab::new(pieces, kinds);

        let unknown = match optional_u32(file, keys::UNKNOWN_ID)? {
            Some(id) if (id as usize) < n => Some(id),
            Some(id) => {
                return Err(format_error(format!(
                    "{} = {id} is out of range",
                    keys::UNKNOWN_ID
                )))
            }
            None => vocab.id("<unk>"),
        };
        // llama.cpp's default for SentencePiece vocabularies when the key is absent.
        let add_space_prefix = optional_bool(file, keys::ADD_SPACE_PREFIX)?.unwrap_or(true);
        let encoder = SpmEncoder::new(&vocab, scores, unknown, add_space_prefix);
        Tokenizer::assemble(file, vocab, Encoder::Spm(Box::new(encoder))).map(Some)
    }

    /// Adds the special ids (from the metadata, else by their usual piece) to a vocabulary.
    fn assemble(file: &GgufFile, vocab: Vocab, encoder: Encoder) -> Result<Tokenizer> {
        let special = |key: &str, fallbacks: &[&str]| -> Result<u32> {
            let id = match optional_u32(file, key)? {
                Some(id) => id,
                None => fallbacks
                    .iter()
                    .find_map(|piece| vocab.id(piece))
                    .ok_or_else(|| {
                        format_error(format!(
                            "{key} is missing and the vocabulary has no {fallbacks:?}"
                        ))
                    })?,
            };
            if id as usize >= vocab.len() {
                return Err(format_error(format!(
                    "{key} = {id} is out of range ({} tokens)",
                    vocab.len()
                )));
            }
            Ok(id)
        };
        let bos = special(keys::BOS_ID, &["<bos>", "<s>"])?;
        let eos = special(keys::EOS_ID, &["<eos>", "</s>"])?;
        let add_bos_by_default = optional_bool(file, keys::ADD_BOS)?.unwrap_or(true);
        Ok(Tokenizer {
            vocab,
            bos,
            eos,
            add_bos_by_default,
            encoder,
        })
    }

    /// Token ids of `text`, with BOS first when `add_bos`. With `parse_special`, control
    /// pieces written in the text (`<start_of_turn>`, `<bos>`, ...) become their single token;
    /// without, they are tokenized as plain text.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            ids.push(self.bos);
        }
        match &self.encoder {
            Encoder::Spm(spm) => spm
                .encode(&self.vocab, text, parse_special, &mut ids)
                .map_err(Error::Tokenizer)?,
            Encoder::Hf(hf) => hf.encode(text, parse_special, &mut ids)?,
        }
        Ok(ids)
    }

    /// The text of `ids`. Control tokens appear as their piece (`<start_of_turn>`) unless
    /// `skip_special`. Byte sequences that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab.len()) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is out of range (the vocabulary has {} tokens)",
                self.vocab.len()
            )));
        }
        match &self.encoder {
            Encoder::Hf(hf) => hf.decode(ids, skip_special),
            Encoder::Spm(_) => {
                let mut bytes = Vec::with_capacity(ids.len() * 4);
                // Same rule as StreamDecoder: the first non-control token with text.
                let mut emitted_text = false;
                for &id in ids {
                    if skip_special && self.is_control(id) {
                        continue;
                    }
                    let token = self.token_bytes(id).unwrap_or_default();
                    let token = self.strip_prefix_space(&token, id, !emitted_text);
                    emitted_text |= !token.is_empty() && !self.is_control(id);
                    bytes.extend_from_slice(token);
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    /// The raw bytes token `id` stands for: a byte piece is one byte, `▁` is a space, a
    /// control token is its piece text. `None` for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<Cow<'_, [u8]>> {
        self.vocab.token_bytes(id).map(Cow::Borrowed)
    }

    /// The vocabulary string of `id` (`▁world`, `<0x0A>`, `<start_of_turn>`).
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.vocab.piece(id)
    }

    pub fn n_vocab(&self) -> usize {
        self.vocab.len()
    }

    pub fn bos(&self) -> u32 {
        self.bos
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// `tokenizer.ggml.add_bos_token` (true when absent).
    pub fn add_bos_by_default(&self) -> bool {
        self.add_bos_by_default
    }

    /// The id of a vocabulary string, e.g. `"<end_of_turn>"`.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.vocab.id(piece)
    }

    /// Control (and unknown) tokens: `<bos>`, `<eos>`, `<start_of_turn>`, `<unusedN>`, ...
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.kind(id).is_some_and(TokenKind::is_special)
    }

    /// With a space-prefix vocabulary the encoder added a space before the text; the first
    /// text token of a decode gives it back.
    fn strip_prefix_space<'a>(&self, bytes: &'a [u8], id: u32, at_start: bool) -> &'a [u8] {
        let adds_prefix = matches!(&self.encoder, Encoder::Spm(spm) if spm.add_space_prefix());
        if adds_prefix && at_start && !self.is_control(id) {
            bytes.strip_prefix(b" ").unwrap_or(bytes)
        } else {
            bytes
        }
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Tokenizer>();
    is::<StreamDecoder>();
}

#[cfg(test)]
impl Tokenizer {
    /// A SentencePiece tokenizer over `(piece, score, kind)` entries, for unit tests; BOS and
    /// EOS are ids 0 and 1.
    pub(crate) fn spm_for_tests(
        entries: &[(&str, f32, TokenKind)],
        add_space_prefix: bool,
    ) -> Tokenizer {
        let pieces: Vec<&str> = entries.iter().map(|e| e.0).collect();
        let kinds = entries.iter().map(|e| e.2).collect();
        let scores = entries.iter().map(|e| e.1).collect();
        let vocab = Vocab::new(&pieces, kinds);
        let encoder = SpmEncoder::new(&vocab, scores, None, add_space_prefix);
        Tokenizer {
            vocab,
            bos: 0,
            eos: 1,
            add_bos_by_default: true,
            encoder: Encoder::Spm(Box::new(encoder)),
        }
    }
}
