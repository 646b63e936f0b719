//! Streaming detokenization. A character outside the vocabulary is encoded as several
//! byte-fallback tokens, so a token's bytes may end in the middle of a UTF-8 sequence; the
//! decoder keeps such an incomplete tail until the next token completes it.

use super::Tokenizer;

/// Turns tokens into text one at a time. The concatenation of everything [`push`] and
/// [`flush`] return equals `decode(ids, false)` for the same ids; every chunk is whole
/// characters, and a byte sequence that can no longer become valid UTF-8 turns into U+FFFD
/// (one per invalid sequence, like `String::from_utf8_lossy`; a `tokenizer.huggingface.json`
/// decoder writes one per byte token there, so only on such invalid input the two differ).
/// Control tokens come out as their piece (`<end_of_turn>`), as in `decode(ids, false)`:
/// callers that stop on them check [`Tokenizer::is_control`] before pushing.
///
/// [`push`]: StreamDecoder::push
/// [`flush`]: StreamDecoder::flush
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// Bytes of an incomplete UTF-8 sequence waiting for the next token.
    pending: Vec<u8>,
    /// Text has come out already; until then a space-prefix vocabulary's first space is
    /// dropped (the encoder added it, it is not part of the text).
    emitted_text: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        StreamDecoder::default()
    }

    /// The text that token `id` completes (possibly empty). An id outside the vocabulary
    /// gives U+FFFD.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        match tok.token_bytes(id) {
            Some(bytes) => {
                let bytes = tok.strip_prefix_space(&bytes, id, !self.emitted_text);
                if !bytes.is_empty() && !tok.is_control(id) {
                    self.emitted_text = true;
                }
                self.pending.extend_from_slice(bytes);
            }
            None => self.pending.extend_from_slice("\u{FFFD}".as_bytes()),
        }
        self.take_complete()
    }

    /// The end of the stream: whatever is still buffered (an incomplete sequence becomes
    /// U+FFFD). The decoder is then ready for a new stream.
    pub fn flush(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.emitted_text = false;
        text
    }

    /// Emits the longest prefix of `pending` that will not change with more bytes: valid
    /// characters, and U+FFFD for each invalid sequence (the same substitution as
    /// `String::from_utf8_lossy`); keeps an incomplete final sequence.
    fn take_complete(&mut self) -> String {
        let mut text = String::new();
        let mut consumed = 0;
        while consumed < self.pending.len() {
            match std::str::from_utf8(&self.pending[consumed..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    consumed = self.pending.len();
                }
                Err(e) => {
                    let valid_end = consumed + e.valid_up_to();
                    // from_utf8 has just checked this prefix, so this never falls back.
                    text.push_str(
                        std::str::from_utf8(&self.pending[consumed..valid_end]).unwrap_or_default(),
                    );
                    consumed = valid_end;
                    match e.error_len() {
                        Some(invalid) => {
                            text.push('\u{FFFD}');
                            consumed += invalid;
                        }
                        None => break, // an incomplete sequence at the end: wait for more
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::super::vocab::TokenKind;
    use super::*;

    /// Pieces: <bos>, <eos>, "a", then the 256 byte pieces from id 3.
    fn byte_tokenizer() -> Tokenizer {
        let names: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        let mut entries = vec![
            ("<bos>", 0.0, TokenKind::Control),
            ("<eos>", 0.0, TokenKind::Control),
            ("a", 0.0, TokenKind::Normal),
        ];
        for (b, name) in names.iter().enumerate() {
            entries.push((name.as_str(), 0.0, TokenKind::Byte(b as u8)));
        }
        Tokenizer::spm_for_tests(&entries, false)
    }

    fn byte(b: u8) -> u32 {
        3 + b as u32
    }

    /// Pushes `ids`, returns the chunks (flush last) and checks they add up to `decode`.
    fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
        let mut decoder = StreamDecoder::new();
        let mut chunks: Vec<String> = ids.iter().map(|&id| decoder.push(tok, id)).collect();
        chunks.push(decoder.flush());
        assert_eq!(chunks.concat(), tok.decode(ids, false).unwrap(), "{ids:?}");
        chunks
    }

    #[test]
    fn split_characters_come_out_whole() {
        let tok = byte_tokenizer();
        // "€" = E2 82 AC, "😀" = F0 9F 98 80
        let ids = [
            0,
            byte(0xE2),
            byte(0x82),
            byte(0xAC),
            2,
            byte(0xF0),
            byte(0x9F),
            byte(0x98),
            byte(0x80),
        ];
        assert_eq!(
            stream(&tok, &ids),
            ["<bos>", "", "", "€", "a", "", "", "", "😀", ""]
        );
    }

    #[test]
    fn invalid_sequences_become_replacement_characters() {
        let tok = byte_tokenizer();
        // A lead byte followed by a non-continuation: U+FFFD as soon as it is clear.
        assert_eq!(stream(&tok, &[byte(0xE2), 2]), ["", "\u{FFFD}a", ""]);
        // A stray continuation byte.
        assert_eq!(stream(&tok, &[byte(0x80), 2]), ["\u{FFFD}", "a", ""]);
        // Truncated at the end of the stream: flush gives U+FFFD.
        assert_eq!(
            stream(&tok, &[2, byte(0xF0), byte(0x9F)]),
            ["a", "", "", "\u{FFFD}"]
        );
        // Bytes that can never start UTF-8.
        assert_eq!(
            stream(&tok, &[byte(0xFF), byte(0xC0)]),
            ["\u{FFFD}", "\u{FFFD}", ""]
        );
    }

    #[test]
    fn unknown_ids_give_replacement_character() {
        let tok = byte_tokenizer();
        let mut decoder = StreamDecoder::new();
        assert_eq!(decoder.push(&tok, 100_000), "\u{FFFD}");
        assert_eq!(decoder.flush(), "");
    }
}
