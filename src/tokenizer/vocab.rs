//! The vocabulary: one piece string and one kind per token id, and the reverse map.

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

/// Token id <-> piece, and each token's kind. Built once per model load, so it is laid out
/// for a 256k-token vocabulary: every piece's text in one buffer, the reverse map an
/// open-addressing table of ids over that buffer (no string per piece; a few MB in all).
pub(crate) struct Vocab {
    /// Piece `i` is `text[text_offsets[i]..text_offsets[i + 1]]`.
    text: String,
    text_offsets: Vec<u32>,
    kinds: Vec<TokenKind>,
    by_piece: PieceIndex,
    /// The bytes of every token back to back (see [`Vocab::token_bytes`]), computed once so
    /// that per-token decoding never allocates; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
}

impl Vocab {
    /// `pieces` and `kinds` have one entry per id (fewer than `u32::MAX`, and texts under
    /// 4 GiB in all: callers check what a file holds). When a piece string occurs twice the
    /// lower id wins the reverse lookup, as in llama.cpp.
    pub(crate) fn new<S: AsRef<str>>(pieces: &[S], kinds: Vec<TokenKind>) -> Vocab {
        debug_assert_eq!(pieces.len(), kinds.len());
        let total: usize = pieces.iter().map(|p| p.as_ref().len()).sum();
        assert!(
            pieces.len() < u32::MAX as usize && total <= u32::MAX as usize,
            "vocabulary too large"
        );
        let mut text = String::with_capacity(total);
        let mut text_offsets = Vec::with_capacity(pieces.len() + 1);
        let mut bytes = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(pieces.len() + 1);
        text_offsets.push(0);
        offsets.push(0);
        for (piece, kind) in pieces.iter().zip(&kinds) {
            let piece = piece.as_ref();
            text.push_str(piece);
            text_offsets.push(text.len() as u32);
            match kind {
                TokenKind::Byte(b) => bytes.push(*b),
                _ => {
                    for c in piece.chars() {
                        let c = if c == SPACE_MARKER { ' ' } else { c };
                        bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                }
            }
            offsets.push(bytes.len() as u32);
        }
        let mut by_piece = PieceIndex::with_capacity(pieces.len());
        for id in 0..pieces.len() as u32 {
            by_piece.insert(id, |i| piece_at((&text, &text_offsets), i));
        }
        Vocab {
            text,
            text_offsets,
            kinds,
            by_piece,
            bytes,
            offsets,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.kinds.len()
    }

    pub(crate) fn piece(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.len()).then(|| piece_at((&self.text, &self.text_offsets), id))
    }

    pub(crate) fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    pub(crate) fn id(&self, piece: &str) -> Option<u32> {
        self.by_piece
            .get(piece, |i| piece_at((&self.text, &self.text_offsets), i))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &str, TokenKind)> {
        self.kinds.iter().enumerate().map(|(id, kind)| {
            let id = id as u32;
            (id, piece_at((&self.text, &self.text_offsets), id), *kind)
        })
    }

    /// The bytes a token stands for: a byte piece is its byte, `▁` is a space, anything else
    /// (control tokens included) is its piece text.
    pub(crate) fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let id = id as usize;
        let (start, end) = (*self.offsets.get(id)?, *self.offsets.get(id + 1)?);
        Some(&self.bytes[start as usize..end as usize])
    }
}

/// Piece `id` of a text buffer and its offsets (`id` in range).
fn piece_at<'a>((text, offsets): (&'a str, &[u32]), id: u32) -> &'a str {
    let id = id as usize;
    &text[offsets[id] as usize..offsets[id + 1] as usize]
}

/// Piece text -> lowest id: linear probing over a power-of-two table of ids at most half
/// full; the texts themselves are looked up through `piece_of`, so the table holds no keys.
struct PieceIndex {
    slots: Vec<u32>,
}

const EMPTY_SLOT: u32 = u32::MAX;

impl PieceIndex {
    fn with_capacity(n: usize) -> PieceIndex {
        PieceIndex {
            slots: vec![EMPTY_SLOT; (2 * n).next_power_of_two().max(2)],
        }
    }

    /// FNV-1a, with a final multiply so that the low bits (the slot) depend on every byte.
    fn slot(&self, piece: &str) -> usize {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for &b in piece.as_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let h = (h ^ (h >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 32) as usize & (self.slots.len() - 1)
    }

    /// Adds `id` unless its text is already present (then the earlier, lower id stays).
    fn insert<'a>(&mut self, id: u32, piece_of: impl Fn(u32) -> &'a str) {
        let piece = piece_of(id);
        let mask = self.slots.len() - 1;
        let mut i = self.slot(piece);
        loop {
            match self.slots[i] {
                EMPTY_SLOT => {
                    self.slots[i] = id;
                    return;
                }
                other if piece_of(other) == piece => return,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn get<'a>(&self, piece: &str, piece_of: impl Fn(u32) -> &'a str) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = self.slot(piece);
        loop {
            match self.slots[i] {
                EMPTY_SLOT => return None,
                id if piece_of(id) == piece => return Some(id),
                _ => i = (i + 1) & mask,
            }
        }
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
        let v = Vocab::new(&pieces, kinds);
        assert_eq!(v.token_bytes(0).unwrap(), b"<bos>");
        assert_eq!(v.token_bytes(1).unwrap(), b" hi");
        assert_eq!(v.token_bytes(2).unwrap(), &[0xE2]);
        assert_eq!(v.token_bytes(3).unwrap(), b"  ");
        assert!(v.token_bytes(4).is_none());
        assert_eq!(v.id("\u{2581}hi"), Some(1));
        assert_eq!(v.piece(1), Some("\u{2581}hi"));
        assert_eq!(v.piece(4), None);
    }

    #[test]
    fn reverse_lookup_finds_every_piece_and_the_lowest_duplicate() {
        // Enough pieces for many probe collisions, a duplicate text and the empty piece.
        let mut pieces: Vec<String> = (0..5000).map(|i| format!("p{i}")).collect();
        pieces.push("p17".into());
        pieces.push(String::new());
        let kinds = vec![TokenKind::Normal; pieces.len()];
        let v = Vocab::new(&pieces, kinds);
        for (i, p) in pieces.iter().enumerate().take(5000) {
            assert_eq!(v.id(p), Some(i as u32));
        }
        assert_eq!(v.id("p17"), Some(17));
        assert_eq!(v.id(""), Some(5001));
        assert_eq!(v.id("p5000"), None);
        assert_eq!(v.iter().nth(5000).map(|(_, p, _)| p), Some("p17"));
    }
}
