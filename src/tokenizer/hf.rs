//! The Hugging Face tokenizer a GGUF may embed as `tokenizer.huggingface.json` (the
//! `tokenizer.json` of the checkpoint, verbatim), run through the `tokenizers` crate.

use std::sync::OnceLock;

use super::vocab::{parse_byte_piece, TokenKind, Vocab};

pub(crate) struct HfEncoder {
    /// Recognises special (added, `special: true`) tokens written in the text.
    parsing_special: tokenizers::Tokenizer,
    /// The same tokenizer with special-token matching off (`parse_special = false`); cloned
    /// from `parsing_special` on first use, since the setting lives in the tokenizer itself.
    splitting_special: OnceLock<tokenizers::Tokenizer>,
}

fn tokenizer_error(what: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Tokenizer(format!("{what}: {e}"))
}

impl HfEncoder {
    pub(crate) fn from_json(json: &str) -> crate::Result<HfEncoder> {
        let mut tokenizer: tokenizers::Tokenizer = json.parse().map_err(|e| {
            tokenizer_error("tokenizer.huggingface.json is not a valid tokenizer", e)
        })?;
        // A json saved with truncation or padding on would silently cut or pad prompts.
        tokenizer
            .with_truncation(None)
            .map_err(|e| tokenizer_error("tokenizer.huggingface.json", e))?;
        tokenizer.with_padding(None);
        Ok(HfEncoder {
            parsing_special: tokenizer,
            splitting_special: OnceLock::new(),
        })
    }

    /// The vocabulary as the HF tokenizer sees it: added tokens marked `special` are control
    /// tokens, other added tokens user-defined, `<0xNN>` model pieces byte pieces.
    pub(crate) fn vocab(&self) -> Vocab {
        let tokenizer = &self.parsing_special;
        let added = tokenizer.get_added_tokens_decoder();
        let mut n = tokenizer.get_vocab_size(true);
        if let Some(max_added) = added.keys().max() {
            n = n.max(*max_added as usize + 1);
        }
        let mut pieces = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let (piece, kind) = match added.get(&id) {
                Some(token) if token.special => (token.content.clone(), TokenKind::Control),
                Some(token) => (token.content.clone(), TokenKind::UserDefined),
                None => match tokenizer.id_to_token(id) {
                    Some(piece) => {
                        let kind =
                            parse_byte_piece(&piece).map_or(TokenKind::Normal, TokenKind::Byte);
                        (piece, kind)
                    }
                    // A hole in the id space.
                    None => (String::new(), TokenKind::Unused),
                },
            };
            pieces.push(piece);
            kinds.push(kind);
        }
        Vocab::new(&pieces, kinds)
    }

    /// Appends the ids of `text` (no BOS: the caller adds it, whatever the json's
    /// post-processor says).
    pub(crate) fn encode(
        &self,
        text: &str,
        parse_special: bool,
        out: &mut Vec<u32>,
    ) -> crate::Result<()> {
        let tokenizer = if parse_special {
            &self.parsing_special
        } else {
            self.splitting_special.get_or_init(|| {
                let mut splitting = self.parsing_special.clone();
                splitting.set_encode_special_tokens(true);
                splitting
            })
        };
        let encoding = tokenizer
            .encode_fast(text, false)
            .map_err(|e| tokenizer_error("encoding failed", e))?;
        out.extend_from_slice(encoding.get_ids());
        Ok(())
    }

    pub(crate) fn decode(&self, ids: &[u32], skip_special: bool) -> crate::Result<String> {
        self.parsing_special
            .decode(ids, skip_special)
            .map_err(|e| tokenizer_error("decoding failed", e))
    }
}
