//! SentencePiece's `tokenizer.model` (a serialized `ModelProto`), read for the converter when
//! a checkpoint has no `tokenizer.json`: the pieces with their scores and types, the trainer's
//! special ids and the normalizer settings. Only what rgemma's SentencePiece encoder can
//! reproduce is accepted: a BPE model (Gemma's) with the identity normalizer; anything else is
//! an error that says what to provide instead.
//!
//! The protobuf wire format needs no library for this: a message is a sequence of
//! `(field number, wire type)` keys, each followed by a varint, a fixed 32/64-bit value or a
//! length-delimited byte string (strings and sub-messages). Field numbers are those of
//! `sentencepiece_model.proto`.

use crate::{Error, Result};

/// One vocabulary entry (`ModelProto.SentencePiece`).
pub(crate) struct Piece {
    pub piece: String,
    pub score: f32,
    /// SentencePiece's type numbers, which are llama.cpp's token types: 1 normal,
    /// 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub kind: i32,
}

/// What the converter needs from a `tokenizer.model`.
pub(crate) struct SpmModel {
    pub pieces: Vec<Piece>,
    /// Trainer spec ids; `None` when absent or disabled (-1).
    pub unk_id: Option<u64>,
    pub bos_id: Option<u64>,
    pub eos_id: Option<u64>,
    pub pad_id: Option<u64>,
    /// `NormalizerSpec.add_dummy_prefix` (SentencePiece's default: true).
    pub add_dummy_prefix: bool,
}

/// `TrainerSpec.model_type` values.
const MODEL_UNIGRAM: u64 = 1;
const MODEL_BPE: u64 = 2;

/// A protobuf field's value.
enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Fixed64,
}

/// Iterates over the fields of one message.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len())?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Some(s)
    }

    /// The next `(field number, value)`; `Some(Err)` on malformed data.
    fn next_field(&mut self) -> Option<std::result::Result<(u64, Value<'a>), ()>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Value::Fixed64
                }
                2 => {
                    let n = usize::try_from(self.varint()?).ok()?;
                    Value::Bytes(self.take(n)?)
                }
                5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().ok()?)),
                _ => return None,
            };
            Some((key >> 3, value))
        })();
        Some(field.ok_or(()))
    }
}

/// Calls `f` for every field of `buf`.
fn for_each_field<'a>(
    buf: &'a [u8],
    what: &str,
    mut f: impl FnMut(u64, Value<'a>) -> Result<()>,
) -> Result<()> {
    let mut fields = Fields::new(buf);
    while let Some(field) = fields.next_field() {
        let (number, value) =
            field.map_err(|()| Error::Format(format!("{what}: malformed protobuf data")))?;
        f(number, value)?;
    }
    Ok(())
}

/// Parses a serialized `ModelProto`. `what` names the file in messages.
pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<SpmModel> {
    let bad = |why: String| Error::Format(format!("{what}: {why}"));
    let mut model = SpmModel {
        pieces: Vec::new(),
        unk_id: None,
        bos_id: None,
        eos_id: None,
        pad_id: None,
        add_dummy_prefix: true,
    };
    let mut model_type = MODEL_UNIGRAM;
    let mut byte_fallback = false;
    let mut normalizer = String::from("nmt_nfkc");
    let mut charsmap = false;
    let mut remove_extra_whitespaces = true;
    let id = |v: u64| -> Option<u64> { (v as i64 >= 0).then_some(v) };
    for_each_field(bytes, what, |number, value| {
        match (number, value) {
            (1, Value::Bytes(b)) => {
                let mut piece = Piece {
                    piece: String::new(),
                    score: 0.0,
                    kind: 1,
                };
                for_each_field(b, what, |n, v| {
                    match (n, v) {
                        (1, Value::Bytes(s)) => {
                            piece.piece = String::from_utf8(s.to_vec())
                                .map_err(|_| bad("a piece is not UTF-8".into()))?;
                        }
                        (2, Value::Fixed32(x)) => piece.score = f32::from_bits(x),
                        (3, Value::Varint(t)) => piece.kind = t as i32,
                        _ => {}
                    }
                    Ok(())
                })?;
                if !(1..=6).contains(&piece.kind) {
                    return Err(bad(format!(
                        "piece {:?} has unknown type {}",
                        piece.piece, piece.kind
                    )));
                }
                model.pieces.push(piece);
            }
            (2, Value::Bytes(b)) => for_each_field(b, what, |n, v| {
                match (n, v) {
                    (3, Value::Varint(t)) => model_type = t,
                    (35, Value::Varint(x)) => byte_fallback = x != 0,
                    (40, Value::Varint(x)) => model.unk_id = id(x),
                    (41, Value::Varint(x)) => model.bos_id = id(x),
                    (42, Value::Varint(x)) => model.eos_id = id(x),
                    (43, Value::Varint(x)) => model.pad_id = id(x),
                    _ => {}
                }
                Ok(())
            })?,
            (3, Value::Bytes(b)) => for_each_field(b, what, |n, v| {
                match (n, v) {
                    (1, Value::Bytes(s)) => normalizer = String::from_utf8_lossy(s).into_owned(),
                    (2, Value::Bytes(s)) => charsmap = !s.is_empty(),
                    (3, Value::Varint(x)) => model.add_dummy_prefix = x != 0,
                    (4, Value::Varint(x)) => remove_extra_whitespaces = x != 0,
                    _ => {}
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;

    if model.pieces.is_empty() {
        return Err(bad("no pieces (not a SentencePiece model?)".into()));
    }
    let unsupported = |why: &str| {
        Err(Error::Unsupported(format!(
            "{what}: {why}, which rgemma's SentencePiece encoder does not reproduce; convert \
             with the checkpoint's tokenizer.json instead"
        )))
    };
    if model_type != MODEL_BPE {
        return unsupported(&format!(
            "model type {} (only BPE, Gemma's, is supported)",
            match model_type {
                MODEL_UNIGRAM => "Unigram".to_string(),
                t => t.to_string(),
            }
        ));
    }
    if !byte_fallback {
        return unsupported("BPE without byte fallback");
    }
    if normalizer != "identity" || charsmap || remove_extra_whitespaces {
        return unsupported(&format!(
            "text normalization ({normalizer}{})",
            if remove_extra_whitespaces {
                ", whitespace folding"
            } else {
                ""
            }
        ));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protobuf writers for the tests.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn key(field: u64, wire: u64, out: &mut Vec<u8>) {
        varint(field << 3 | wire, out);
    }
    fn bytes(field: u64, b: &[u8], out: &mut Vec<u8>) {
        key(field, 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn int(field: u64, v: u64, out: &mut Vec<u8>) {
        key(field, 0, out);
        varint(v, out);
    }
    fn piece(p: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut m = Vec::new();
        bytes(1, p.as_bytes(), &mut m);
        key(2, 5, &mut m);
        m.extend_from_slice(&score.to_le_bytes());
        int(3, kind, &mut m);
        m
    }
    fn model(model_type: u64, normalizer: &str) -> Vec<u8> {
        let mut m = Vec::new();
        bytes(1, &piece("<unk>", 0.0, 2), &mut m);
        bytes(1, &piece("▁a", -1.5, 1), &mut m);
        let mut trainer = Vec::new();
        int(3, model_type, &mut trainer);
        int(35, 1, &mut trainer);
        int(40, 0, &mut trainer);
        int(41, u64::MAX, &mut trainer); // -1 as protobuf writes an int32: disabled
        int(42, 1, &mut trainer);
        bytes(2, &trainer, &mut m);
        let mut norm = Vec::new();
        bytes(1, normalizer.as_bytes(), &mut norm);
        int(3, 0, &mut norm);
        int(4, 0, &mut norm);
        bytes(3, &norm, &mut m);
        // An unknown field of every wire type is skipped.
        key(99, 1, &mut m);
        m.extend_from_slice(&[0; 8]);
        m
    }

    #[test]
    fn reads_pieces_ids_and_normalizer() {
        let m = parse(&model(MODEL_BPE, "identity"), "t").unwrap();
        assert_eq!(m.pieces.len(), 2);
        assert_eq!(m.pieces[1].piece, "▁a");
        assert_eq!(m.pieces[1].score, -1.5);
        assert_eq!((m.pieces[0].kind, m.pieces[1].kind), (2, 1));
        assert_eq!((m.unk_id, m.bos_id, m.eos_id), (Some(0), None, Some(1)));
        assert!(!m.add_dummy_prefix);
    }

    #[test]
    fn what_the_encoder_cannot_reproduce_is_refused() {
        let e = parse(&model(MODEL_UNIGRAM, "identity"), "t").err().unwrap();
        assert!(e.to_string().contains("Unigram"), "{e}");
        let e = parse(&model(MODEL_BPE, "nmt_nfkc"), "t").err().unwrap();
        assert!(e.to_string().contains("nmt_nfkc"), "{e}");
        let mut cut = model(MODEL_BPE, "identity");
        cut.truncate(cut.len() - 3);
        let e = parse(&cut, "t").err().unwrap();
        assert!(e.to_string().contains("malformed"), "{e}");
        assert!(parse(b"", "t").is_err());
    }
}
