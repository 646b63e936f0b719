//! The vocabulary: one piece string and one kind per token id, and the reverse map.

use std::collections::HashMap;

/// SentencePiece's word-boundary marker; stands for a space in piece strings.
pub(crate) const SPACE_MARKER: char = '\u{2581}';

/// What a token id stands for (llama.cpp's `tokenizer.ggml.token_type` values 1..6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// An ordinary piece, produced by BPE merges.
    Normal,
    /// `<unk>`: behaves like a control token.
    Unknown,
    /// `<bos>`, `<start_of_turn>`, ...: only recognised in text when special parsing is on.
    Control,
    /// Matched verbatim in the text before BPE (whitespace runs, `<html>`, ...).
    UserDefined,
    /// Reserved, never produced.
    Unused,
    /// A byte-fallback piece `<0xNN>`.
    Byte(u8),
}

impl TokenKind {
    /// From a `tokenizer.ggml.token_type` value; byte pieces need their piece to know the byte.
    pub(crate) fn from_ggml(ty: i64, piece: &str) -> TokenKind {
        match ty {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            // A byte piece whose text is not `<0xNN>` cannot be decoded to its byte; treat it
            // as normal text rather than guessing.
            6 => parse_byte_piece(piece).map_or(TokenKind::Normal, TokenKind::Byte),
            _ => TokenKind::Normal,
        }
    }

    /// Control and unknown tokens: left out by `decode(.., skip_special = true)`.
    pub(crate) fn is_special(self) -> bool {
        matches!(self, TokenKind::Control | TokenKind::Unknown)
    }
}

/// `<0xNN>` (two hex digits) -> the byte NN.
pub(crate) fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Token id <-> piece, and each token's kind.
pub(crate) struct Vocab {
    pieces: Vec<String>,
    kinds: Vec<TokenKind>,
    by_piece: HashMap<String, u32>,
    /// The bytes of every token back to back (see [`Vocab::token_bytes`]), computed once so
    /// that per-token decoding never allocates; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
}

impl Vocab {
    /// `pieces` and `kinds` have one entry per id. When a piece string occurs twice the lower
    /// id wins the reverse lookup, as in llama.cpp.
    pub(crate) fn new(pieces: Vec<String>, kinds: Vec<TokenKind>) -> Vocab {
        debug_assert_eq!(pieces.len(), kinds.len());
        let mut by_piece = HashMap::with_capacity(pieces.len());
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(pieces.len() + 1);
        offsets.push(0);
        for (id, (piece, kind)) in pieces.iter().zip(&kinds).enumerate() {
            by_piece.entry(piece.clone()).or_insert(id as u32);
            match kind {
                TokenKind::Byte(b) => bytes.push(*b),
                _ => {
                    for c in piece.chars() {
                        let c = if c == SPACE_MARKER { ' ' } else { c };
                        bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                }
            }
            offsets.push(bytes.len());
        }
        Vocab {
            pieces,
            kinds,
            by_piece,
            bytes,
            offsets,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.pieces.len()
    }

    pub(crate) fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    pub(crate) fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    pub(crate) fn id(&self, piece: &str) -> Option<u32> {
        self.by_piece.get(piece).copied()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &str, TokenKind)> {
        self.pieces
            .iter()
            .zip(&self.kinds)
            .enumerate()
            .map(|(id, (piece, kind))| (id as u32, piece.as_str(), *kind))
    }

    /// The bytes a token stands for: a byte piece is its byte, `▁` is a space, anything else
    /// (control tokens included) is its piece text.
    pub(crate) fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let id = id as usize;
        let (start, end) = (*self.offsets.get(id)?, *self.offsets.get(id + 1)?);
        Some(&self.bytes[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_pieces_parse() {
        assert_eq!(parse_byte_piece("<0x00>"), Some(0));
        assert_eq!(parse_byte_piece("<0xFF>"), Some(255));
        assert_eq!(parse_byte_piece("<0xe2>"), Some(0xe2));
        assert_eq!(parse_byte_piece("<0x1>"), None);
        assert_eq!(parse_byte_piece("<0x100>"), None);
        assert_eq!(parse_byte_piece("0x41"), None);
    }

    #[test]
    fn token_bytes_map_marker_and_bytes() {
        let pieces = ["<bos>", "\u{2581}hi", "<0xE2>", "  "]
            .map(String::from)
            .to_vec();
        let kinds = vec![
            TokenKind::Control,
            TokenKind::Normal,
            TokenKind::Byte(0xE2),
            TokenKind::UserDefined,
        ];
        let v = Vocab::new(pieces, kinds);
        assert_eq!(v.token_bytes(0).unwrap(), b"<bos>");
        assert_eq!(v.token_bytes(1).unwrap(), b" hi");
        assert_eq!(v.token_bytes(2).unwrap(), &[0xE2]);
        assert_eq!(v.token_bytes(3).unwrap(), b"  ");
        assert!(v.token_bytes(4).is_none());
        assert_eq!(v.id("\u{2581}hi"), Some(1));
    }
}
