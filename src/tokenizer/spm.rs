//! SentencePiece-style BPE over a GGUF vocabulary (`tokenizer.ggml.model = "llama"`), the
//! way llama.cpp's SPM tokenizer and the `sentencepiece` library encode:
//!
//! 1. Special pieces are cut out of the text first, leftmost-longest: user-defined pieces
//!    (whitespace runs, `<html>`, ...) always, control pieces (`<start_of_turn>`, ...) only when
//!    special parsing is on.
//!    Spaces are replaced by `▁` before matching, in the text and in the pieces.
//! 2. Each remaining text fragment (with a leading `▁` when the vocabulary asks for a space
//!    prefix) is split into characters, and adjacent symbols are
//!    merged while their concatenation is a normal piece: the pair whose result has the highest
//!    score first, the leftmost pair on ties.
//! 3. A final symbol that is not a piece (a character outside the vocabulary) becomes its
//!    UTF-8 bytes as `<0xNN>` byte pieces (or `<unk>` when the vocabulary has no byte pieces).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::{TokenKind, Vocab, SPACE_MARKER};

/// The special pieces, escaped (`' '` -> `▁`), in a byte trie for leftmost-longest matching
/// against the escaped text in time proportional to the match length. Escaping both sides makes
/// a whitespace piece match whether the vocabulary spells it with spaces (llama.cpp's Gemma 3
/// files) or with `▁` (sentencepiece's own convention).
struct SpecialMatcher {
    /// Node 0 is the root.
    nodes: Vec<TrieNode>,
}

#[derive(Default)]
struct TrieNode {
    /// (next byte, node index), sorted by byte.
    children: Vec<(u8, u32)>,
    /// The piece that ends here.
    piece: Option<SpecialPiece>,
}

#[derive(Clone, Copy)]
struct SpecialPiece {
    id: u32,
    /// Control or unknown: matched only when parsing special tokens.
    control: bool,
}

impl TrieNode {
    fn child(&self, byte: u8) -> Option<usize> {
        let i = self
            .children
            .binary_search_by_key(&byte, |&(b, _)| b)
            .ok()?;
        Some(self.children[i].1 as usize)
    }
}

impl SpecialMatcher {
    fn new(vocab: &Vocab) -> SpecialMatcher {
        let mut nodes = vec![TrieNode::default()];
        for (id, piece, kind) in vocab.iter() {
            let matched_in_text = matches!(
                kind,
                TokenKind::Control | TokenKind::Unknown | TokenKind::UserDefined
            );
            if !matched_in_text || piece.is_empty() {
                continue;
            }
            let mut node = 0;
            for &byte in escape_spaces(piece).as_bytes() {
                node = match nodes[node].child(byte) {
                    Some(child) => child,
                    None => {
                        let child = nodes.len();
                        nodes.push(TrieNode::default());
                        let children = &mut nodes[node].children;
                        let at = children.partition_point(|&(b, _)| b < byte);
                        children.insert(at, (byte, child as u32));
                        child
                    }
                };
            }
            // The same escaped string twice (e.g. "  " and "▁▁"): the lower id wins.
            let control = kind.is_special();
            nodes[node]
                .piece
                .get_or_insert(SpecialPiece { id, control });
        }
        SpecialMatcher { nodes }
    }

    /// The first special piece in `text[from..]` as `(start, end, id)`; at one start the longest
    /// piece wins. Control (and unknown) pieces take part only when `parse_special`.
    fn find(&self, text: &str, from: usize, parse_special: bool) -> Option<(usize, usize, u32)> {
        let bytes = text.as_bytes();
        // A piece is valid UTF-8, so it can only match where a character starts.
        for start in from..bytes.len() {
            let mut node = 0;
            let mut longest = None;
            for (end, &byte) in bytes.iter().enumerate().skip(start) {
                match self.nodes[node].child(byte) {
                    Some(child) => node = child,
                    None => break,
                }
                if let Some(piece) = self.nodes[node].piece {
                    if parse_special || !piece.control {
                        longest = Some((start, end + 1, piece.id));
                    }
                }
            }
            if longest.is_some() {
                return longest;
            }
        }
        None
    }
}

/// `' '` -> `▁` ([`SPACE_MARKER`]).
fn escape_spaces(text: &str) -> String {
    text.replace(' ', "\u{2581}")
}

/// A symbol of the fragment being merged: a byte range of the escaped fragment in a linked
/// list of the symbols still alive.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    end: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of symbol `left` with its right neighbour `right`, whose concatenation
/// is a piece with `score` and `len` bytes (to detect pairs made stale by an earlier merge).
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// Reused buffers of one `encode` call.
#[derive(Default)]
struct Scratch {
    escaped: String,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

/// The SentencePiece BPE encoder over a [`Vocab`].
pub(crate) struct SpmEncoder {
    /// Merge priority of each piece (`tokenizer.ggml.scores`).
    scores: Vec<f32>,
    /// `<0xNN>` piece id for each byte, when the vocabulary has it.
    byte_ids: [Option<u32>; 256],
    unknown: Option<u32>,
    add_space_prefix: bool,
    specials: SpecialMatcher,
}

impl SpmEncoder {
    pub(crate) fn new(
        vocab: &Vocab,
        scores: Vec<f32>,
        unknown: Option<u32>,
        add_space_prefix: bool,
    ) -> SpmEncoder {
        let mut byte_ids = [None; 256];
        for (id, _, kind) in vocab.iter() {
            if let TokenKind::Byte(b) = kind {
                byte_ids[b as usize].get_or_insert(id);
            }
        }
        SpmEncoder {
            scores,
            byte_ids,
            unknown,
            add_space_prefix,
            specials: SpecialMatcher::new(vocab),
        }
    }

    pub(crate) fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Appends the ids of `text` to `out` (no BOS).
    pub(crate) fn encode(
        &self,
        vocab: &Vocab,
        text: &str,
        parse_special: bool,
        out: &mut Vec<u32>,
    ) -> Result<(), String> {
        let text = escape_spaces(text);
        let text = text.as_str();
        let mut scratch = Scratch::default();
        let mut pos = 0;
        while pos < text.len() {
            let found = self.specials.find(text, pos, parse_special);
            let fragment_end = found.map_or(text.len(), |(start, _, _)| start);
            if fragment_end > pos {
                self.encode_fragment(vocab, &text[pos..fragment_end], &mut scratch, out)?;
            }
            match found {
                Some((_, end, id)) => {
                    out.push(id);
                    pos = end;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// BPE over one escaped fragment that contains no special piece. Every fragment starts
    /// the text or follows a special piece, which is where llama.cpp adds the space prefix.
    fn encode_fragment(
        &self,
        vocab: &Vocab,
        fragment: &str,
        scratch: &mut Scratch,
        out: &mut Vec<u32>,
    ) -> Result<(), String> {
        let Scratch {
            escaped,
            symbols,
            queue,
        } = scratch;
        escaped.clear();
        if self.add_space_prefix {
            escaped.push(SPACE_MARKER);
        }
        escaped.push_str(fragment);

        symbols.clear();
        for (start, c) in escaped.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                end: start + c.len_utf8(),
                prev: index.checked_sub(1),
                next: None,
            });
            if index > 0 {
                symbols[index - 1].next = Some(index);
            }
        }

        queue.clear();
        for right in 1..symbols.len() {
            self.push_bigram(vocab, escaped, symbols, queue, right - 1, right);
        }
        while let Some(bigram) = queue.pop() {
            let (left, right) = (symbols[bigram.left], symbols[bigram.right]);
            // Stale: one side was merged away or grew since this pair was queued.
            let alive =
                left.end > left.start && right.end > right.start && left.next == Some(bigram.right);
            if !alive || right.end - left.start != bigram.len {
                continue;
            }
            symbols[bigram.left].end = right.end;
            symbols[bigram.left].next = right.next;
            symbols[bigram.right].end = symbols[bigram.right].start; // merged away
            if let Some(next) = right.next {
                symbols[next].prev = Some(bigram.left);
            }
            if let Some(prev) = left.prev {
                self.push_bigram(vocab, escaped, symbols, queue, prev, bigram.left);
            }
            if let Some(next) = right.next {
                self.push_bigram(vocab, escaped, symbols, queue, bigram.left, next);
            }
        }

        let mut index = if symbols.is_empty() { None } else { Some(0) };
        while let Some(i) = index {
            let symbol = symbols[i];
            let text = &escaped[symbol.start..symbol.end];
            match self.normal_piece(vocab, text) {
                Some(id) => out.push(id),
                None => {
                    for &b in text.as_bytes() {
                        match self.byte_ids[b as usize].or(self.unknown) {
                            Some(id) => out.push(id),
                            None => {
                                return Err(format!(
                                    "{text:?} is not in the vocabulary, which has neither a <0x{b:02X}> byte piece nor an unknown token"
                                ))
                            }
                        }
                    }
                }
            }
            index = symbol.next;
        }
        Ok(())
    }

    /// The id of `text` if it is a normal piece (the only kind merges may produce).
    fn normal_piece(&self, vocab: &Vocab, text: &str) -> Option<u32> {
        vocab
            .id(text)
            .filter(|&id| vocab.kind(id) == Some(TokenKind::Normal))
    }

    fn push_bigram(
        &self,
        vocab: &Vocab,
        escaped: &str,
        symbols: &[Symbol],
        queue: &mut BinaryHeap<Bigram>,
        left: usize,
        right: usize,
    ) {
        let (start, end) = (symbols[left].start, symbols[right].end);
        if let Some(id) = self.normal_piece(vocab, &escaped[start..end]) {
            let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
            queue.push(Bigram {
                score,
                left,
                right,
                len: end - start,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Tokenizer;
    use super::TokenKind::{self, *};

    fn base() -> Vec<(&'static str, f32, TokenKind)> {
        let mut v = vec![
            ("<bos>", 0.0, Control),
            ("<eos>", 0.0, Control),
            ("<t>", 0.0, Control),
        ];
        v.extend([
            ("\u{2581}", -1.0, Normal),
            ("a", -2.0, Normal),
            ("b", -3.0, Normal),
        ]);
        v
    }

    fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false, true).unwrap()
    }

    #[test]
    fn equal_scores_merge_leftmost_first() {
        let mut v = base();
        v.extend([("ab", -5.0, Normal), ("ba", -5.0, Normal)]); // ids 6, 7
        let tok = Tokenizer::spm_for_tests(&v, false);
        assert_eq!(ids(&tok, "aba"), [6, 4]);
        assert_eq!(ids(&tok, "bab"), [7, 5]);
    }

    #[test]
    fn higher_score_merges_first() {
        let mut v = base();
        v.extend([
            ("ab", -6.0, Normal),
            ("ba", -5.0, Normal),
            ("aba", -7.0, Normal),
        ]);
        let tok = Tokenizer::spm_for_tests(&v, false);
        // "ba" (the best pair) first, then "a"+"ba" = "aba": any adjacent pair whose
        // concatenation is a normal piece may merge, not only a fixed merge list.
        assert_eq!(ids(&tok, "aba"), [8]);
        assert_eq!(ids(&tok, "abab"), [8, 5]);
        assert_eq!(ids(&tok, "bab"), [7, 5]);
    }

    #[test]
    fn only_normal_pieces_are_merged_into() {
        let mut v = base();
        v.push(("ab", -1.0, Control)); // id 6: matched as text only when parsing specials
        let tok = Tokenizer::spm_for_tests(&v, false);
        assert_eq!(tok.encode("ab", false, false).unwrap(), [4, 5]);
        assert_eq!(ids(&tok, "ab"), [6]);
    }

    #[test]
    fn unknown_characters_without_byte_pieces_are_an_error() {
        let tok = Tokenizer::spm_for_tests(&base(), false);
        assert!(tok.encode("c", false, true).is_err());
    }

    #[test]
    fn control_pieces_only_with_parse_special() {
        let tok = Tokenizer::spm_for_tests(&base(), false);
        assert_eq!(ids(&tok, "a<t>b"), [4, 2, 5]);
        assert!(tok.encode("a<t>b", false, false).is_err()); // '<' has no piece, no byte pieces
    }

    #[test]
    fn special_pieces_match_leftmost_longest() {
        let mut v = base();
        // ids 6, 7, 8; the control piece is the longest but only counts when parsing specials.
        v.extend([
            ("\n", 0.0, UserDefined),
            ("\n\n", 0.0, UserDefined),
            ("\n\n\n", 0.0, Control),
        ]);
        v.push(("  ", 0.0, UserDefined)); // 9: matches spaces, also written as ▁▁
        let tok = Tokenizer::spm_for_tests(&v, false);
        assert_eq!(ids(&tok, "\n\n\n\n"), [8, 6]);
        assert_eq!(tok.encode("\n\n\n\n", false, false).unwrap(), [7, 7]);
        assert_eq!(tok.encode("a\n\n\nb", false, false).unwrap(), [4, 7, 6, 5]);
        assert_eq!(ids(&tok, "a   b"), [4, 9, 3, 5]);
        assert_eq!(ids(&tok, "a\u{2581}\u{2581}b"), [4, 9, 5]);
    }

    #[test]
    fn space_prefix_is_added_and_removed() {
        let mut v = base();
        v.push(("\u{2581}a", -0.5, Normal)); // id 6
        let tok = Tokenizer::spm_for_tests(&v, true);
        assert_eq!(ids(&tok, "a"), [6]);
        assert_eq!(ids(&tok, "a<t>a"), [6, 2, 6]);
        assert_eq!(tok.decode(&[0, 6, 3, 4], false).unwrap(), "<bos>a a");
        assert_eq!(tok.decode(&[0, 6, 3, 4], true).unwrap(), "a a");
        let plain = Tokenizer::spm_for_tests(&v, false);
        assert_eq!(ids(&plain, "a"), [4]);
    }
}
