//! Tokenizer metadata: `tokenizer.json` verbatim as `tokenizer.huggingface.json`, plus the
//! llama.cpp-style `tokenizer.ggml.*` arrays derived from it, the special ids and the chat
//! template.
//!
//! Scores: a Unigram model carries its own scores. A BPE model (Gemma's HF tokenizer is a
//! SentencePiece BPE converted to HF BPE, whose merges are ordered by the SentencePiece piece
//! score) gets `score(piece) = -(rank of the first merge that produces it)`, so a
//! SentencePiece-style "merge the highest-scoring pair first" tokenizer merges in HF's merge
//! order. Pieces no merge produces (single characters, bytes, added tokens) get 0.0, as
//! SentencePiece gives user-defined and control pieces.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::gguf::{MetaArray, MetaValue};
use crate::{Error, Result};

/// llama.cpp token types.
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;
const TYPE_BYTE: i32 = 6;

fn tok_err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {what}", path.display()))
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Format(format!("{}: not valid JSON: {e}", path.display())))
}

/// Is `s` a SentencePiece byte piece `<0xNN>`?
fn is_byte_piece(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 6
        && s.starts_with("<0x")
        && s.ends_with('>')
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

/// A merge entry is `"a b"` (older files) or `["a", "b"]` (tokenizers >= 0.20).
fn merge_result(m: &Value) -> Option<String> {
    match m {
        Value::String(s) => {
            let (a, b) = s.split_once(' ')?;
            Some(format!("{a}{b}"))
        }
        Value::Array(parts) if parts.len() == 2 => {
            Some(format!("{}{}", parts[0].as_str()?, parts[1].as_str()?))
        }
        _ => None,
    }
}

/// The id of a special token given as an integer (or list of integers) in a config file.
fn id_from(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::Array(a) => a.first()?.as_u64(),
        _ => None,
    }
}

/// A token string from tokenizer_config.json: `"<bos>"` or `{"content": "<bos>", ...}`.
fn token_string(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// Builds the tokenizer metadata for checkpoint directory `dir`, or `None` (with a warning)
/// when it has no `tokenizer.json`. `n_vocab` is the embedding's row count.
pub fn tokenizer_metadata(
    dir: &Path,
    n_vocab: u64,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<(String, MetaValue)>>> {
    let configs = Configs {
        tokenizer: read_json(&dir.join("tokenizer_config.json"))?,
        generation: read_json(&dir.join("generation_config.json"))?,
        model: read_json(&dir.join("config.json"))?,
    };
    let tj_path = dir.join("tokenizer.json");
    if tj_path.exists() {
        return json_metadata(dir, &tj_path, n_vocab, &configs, warnings).map(Some);
    }
    let spm_path = dir.join("tokenizer.model");
    if spm_path.exists() {
        return spm_metadata(dir, &spm_path, n_vocab, &configs, warnings).map(Some);
    }
    warnings.push(format!(
        "{}: no tokenizer.json or tokenizer.model; the output has no tokenizer keys",
        dir.display()
    ));
    Ok(None)
}

/// The checkpoint's JSON configuration files, those present.
struct Configs {
    tokenizer: Option<Value>,
    generation: Option<Value>,
    model: Option<Value>,
}

/// From `tokenizer.json`: the arrays, plus the json itself.
fn json_metadata(
    dir: &Path,
    tj_path: &Path,
    n_vocab: u64,
    configs: &Configs,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, MetaValue)>> {
    let tj_path = tj_path.to_path_buf();
    let raw = std::fs::read(&tj_path).map_err(|e| Error::io(&tj_path, e))?;
    let raw = String::from_utf8(raw).map_err(|_| tok_err(&tj_path, "not UTF-8"))?;
    let tj: Value = serde_json::from_str(&raw)
        .map_err(|e| tok_err(&tj_path, format!("not valid JSON: {e}")))?;
    let tok_cfg = configs.tokenizer.as_ref();

    let model = tj
        .get("model")
        .and_then(Value::as_object)
        .ok_or_else(|| tok_err(&tj_path, "missing model object"))?;
    let model_type = model.get("type").and_then(Value::as_str).unwrap_or("BPE");

    // (piece, score) by id.
    let mut pieces: Vec<Option<(String, f32)>> = Vec::new();
    let put =
        |id: u64, piece: &str, score: f32, pieces: &mut Vec<Option<(String, f32)>>| -> Result<()> {
            if id >= n_vocab.max(1 << 24) {
                return Err(tok_err(&tj_path, format!("token id {id} is out of range")));
            }
            let id = id as usize;
            if pieces.len() <= id {
                pieces.resize(id + 1, None);
            }
            pieces[id] = Some((piece.to_string(), score));
            Ok(())
        };
    match model_type {
        "BPE" => {
            let vocab = model
                .get("vocab")
                .and_then(Value::as_object)
                .ok_or_else(|| tok_err(&tj_path, "BPE model without a vocab object"))?;
            let mut first_rank: HashMap<String, usize> = HashMap::new();
            if let Some(merges) = model.get("merges").and_then(Value::as_array) {
                for (rank, m) in merges.iter().enumerate() {
                    let piece = merge_result(m).ok_or_else(|| {
                        tok_err(&tj_path, format!("merge #{rank} is malformed: {m}"))
                    })?;
                    first_rank.entry(piece).or_insert(rank);
                }
            }
            for (piece, id) in vocab {
                let id = id.as_u64().ok_or_else(|| {
                    tok_err(&tj_path, format!("vocab id of {piece:?} is not an integer"))
                })?;
                let score = first_rank.get(piece).map_or(0.0, |&r| -((r + 1) as f32));
                put(id, piece, score, &mut pieces)?;
            }
        }
        "Unigram" => {
            let vocab = model
                .get("vocab")
                .and_then(Value::as_array)
                .ok_or_else(|| tok_err(&tj_path, "Unigram model without a vocab array"))?;
            for (id, entry) in vocab.iter().enumerate() {
                let piece = entry.get(0).and_then(Value::as_str);
                let score = entry.get(1).and_then(Value::as_f64);
                let (Some(piece), Some(score)) = (piece, score) else {
                    return Err(tok_err(
                        &tj_path,
                        format!("Unigram vocab entry #{id} is not [piece, score]"),
                    ));
                };
                put(id as u64, piece, score as f32, &mut pieces)?;
            }
        }
        other => {
            return Err(tok_err(
                &tj_path,
                format!("tokenizer model type {other} is not supported (expected BPE or Unigram)"),
            ));
        }
    }

    let mut types: Vec<i32> = vec![TYPE_NORMAL; pieces.len()];
    let mut added: Vec<(u64, String, bool)> = Vec::new();
    if let Some(list) = tj.get("added_tokens").and_then(Value::as_array) {
        for t in list {
            let id = t.get("id").and_then(Value::as_u64);
            let content = t.get("content").and_then(Value::as_str);
            let (Some(id), Some(content)) = (id, content) else {
                return Err(tok_err(
                    &tj_path,
                    format!("added token {t} has no id/content"),
                ));
            };
            let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
            added.push((id, content.to_string(), special));
        }
    }
    for (id, content, _) in &added {
        let keep = pieces
            .get(*id as usize)
            .and_then(|p| p.as_ref())
            .map(|p| p.1)
            .unwrap_or(0.0);
        put(*id, content, keep, &mut pieces)?;
    }
    types.resize(pieces.len(), TYPE_NORMAL);
    for (id, (piece, _)) in pieces
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
    {
        if is_byte_piece(piece) {
            types[id] = TYPE_BYTE;
        }
    }
    for (id, _, special) in &added {
        types[*id as usize] = if *special {
            TYPE_CONTROL
        } else {
            TYPE_USER_DEFINED
        };
    }
    let find_id = |s: &str| {
        pieces
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.0 == s))
    };
    let unk_id = match model.get("unk_token").and_then(Value::as_str) {
        Some(s) => find_id(s),
        None => model
            .get("unk_id")
            .and_then(Value::as_u64)
            .map(|i| i as usize),
    };
    if let Some(u) = unk_id.filter(|&u| u < types.len()) {
        types[u] = TYPE_UNKNOWN;
    }

    let named: Vec<(&str, Option<u64>)> = ["bos_token", "eos_token", "pad_token"]
        .into_iter()
        .map(|k| {
            let id = token_string(tok_cfg.and_then(|c| c.get(k))).and_then(find_id);
            (k, id.map(|i| i as u64))
        })
        .collect();
    let mut meta = vocabulary_metadata(
        dir,
        &tj_path,
        Vocabulary {
            pieces,
            types,
            unk_id,
            add_space_prefix: prepends_space(&tj),
        },
        n_vocab,
        configs,
        // tokenizer_config.json names the special tokens by their strings.
        &|str_key| {
            named
                .iter()
                .find(|(k, _)| *k == str_key)
                .and_then(|(_, id)| *id)
        },
        warnings,
    )?;
    if ggml_arrays_exact(&tj) {
        meta.push((
            crate::tokenizer::keys::GGML_EXACT.into(),
            MetaValue::Bool(true),
        ));
    }
    meta.push(("tokenizer.huggingface.json".into(), MetaValue::String(raw)));
    Ok(meta)
}

/// From SentencePiece's `tokenizer.model` (a folder without `tokenizer.json`): the arrays
/// come straight from its pieces, scores and types.
fn spm_metadata(
    dir: &Path,
    path: &Path,
    n_vocab: u64,
    configs: &Configs,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, MetaValue)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let model = super::sentencepiece::parse(&bytes, &path.display().to_string())?;
    let unk_id = model
        .pieces
        .iter()
        .position(|p| p.kind == TYPE_UNKNOWN)
        .or(model.unk_id.map(|u| u as usize));
    let types = model.pieces.iter().map(|p| p.kind).collect();
    // SentencePiece matches user-defined pieces after escaping whitespace, so Gemma's runs of
    // spaces are stored as "▁▁"...; the encoder (like llama.cpp's) matches them in the raw
    // text, so they are written pre-normalized, as llama.cpp's converter does.
    let pieces = model
        .pieces
        .into_iter()
        .map(|p| match p.kind {
            TYPE_USER_DEFINED => Some((p.piece.replace('\u{2581}', " "), p.score)),
            _ => Some((p.piece, p.score)),
        })
        .collect();
    let (bos, eos, pad) = (model.bos_id, model.eos_id, model.pad_id);
    vocabulary_metadata(
        dir,
        path,
        Vocabulary {
            pieces,
            types,
            unk_id,
            add_space_prefix: model.add_dummy_prefix,
        },
        n_vocab,
        configs,
        // The trainer's ids.
        &|str_key| match str_key {
            "bos_token" => bos,
            "eos_token" => eos,
            "pad_token" => pad,
            _ => None,
        },
        warnings,
    )
}

/// A vocabulary as the `tokenizer.ggml.*` arrays hold it, from either source.
struct Vocabulary {
    /// (piece, score) by id; `None` where the source has no token.
    pieces: Vec<Option<(String, f32)>>,
    types: Vec<i32>,
    unk_id: Option<usize>,
    add_space_prefix: bool,
}

/// The `tokenizer.*` keys of a vocabulary: the arrays (padded to the embedding's rows), the
/// special ids (generation_config.json, then config.json, then `own_special`, the source's
/// own naming, keyed by tokenizer_config.json's `bos_token` / `eos_token` / `pad_token`), the
/// flags and the chat template.
#[allow(clippy::too_many_arguments)]
fn vocabulary_metadata(
    dir: &Path,
    source_path: &Path,
    vocab: Vocabulary,
    n_vocab: u64,
    configs: &Configs,
    own_special: &dyn Fn(&str) -> Option<u64>,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, MetaValue)>> {
    let Vocabulary {
        pieces,
        mut types,
        unk_id,
        add_space_prefix,
    } = vocab;
    let tok_cfg = configs.tokenizer.as_ref();
    if pieces.len() as u64 > n_vocab {
        return Err(tok_err(
            source_path,
            format!(
                "{} tokens, more than the {n_vocab} rows of model.embed_tokens.weight",
                pieces.len()
            ),
        ));
    }
    let mut tokens = Vec::with_capacity(n_vocab as usize);
    let mut scores = Vec::with_capacity(n_vocab as usize);
    for (id, p) in pieces.iter().enumerate() {
        let (piece, score) = p
            .as_ref()
            .ok_or_else(|| tok_err(source_path, format!("no token has id {id}")))?;
        tokens.push(piece.clone());
        scores.push(*score);
    }
    if (tokens.len() as u64) < n_vocab {
        warnings.push(format!(
            "{}: {} tokens for {n_vocab} embedding rows; padding with [PAD<id>] (type unused)",
            source_path.display(),
            tokens.len()
        ));
        for id in tokens.len()..n_vocab as usize {
            tokens.push(format!("[PAD{id}]"));
            scores.push(0.0);
            types.push(TYPE_UNUSED);
        }
    }

    // Special ids: generation_config.json, then config.json, then the source's own.
    let special = |key: &str, str_key: &str| -> Option<u64> {
        id_from(configs.generation.as_ref().and_then(|g| g.get(key)))
            .or_else(|| id_from(configs.model.as_ref().and_then(|c| c.get(key))))
            .or_else(|| own_special(str_key))
    };
    let mut meta: Vec<(String, MetaValue)> = vec![
        (
            "tokenizer.ggml.model".into(),
            MetaValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            MetaValue::String("default".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            MetaValue::Array(MetaArray::String(tokens)),
        ),
        (
            "tokenizer.ggml.scores".into(),
            MetaValue::Array(MetaArray::F32(scores)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            MetaValue::Array(MetaArray::I32(types)),
        ),
    ];
    let ids = [
        (
            "tokenizer.ggml.bos_token_id",
            special("bos_token_id", "bos_token"),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            special("eos_token_id", "eos_token"),
        ),
        ("tokenizer.ggml.unknown_token_id", unk_id.map(|u| u as u64)),
        (
            "tokenizer.ggml.padding_token_id",
            special("pad_token_id", "pad_token"),
        ),
    ];
    for (key, id) in ids {
        if let Some(id) = id {
            if id >= n_vocab {
                return Err(tok_err(
                    source_path,
                    format!("{key} {id} is outside the vocabulary"),
                ));
            }
            meta.push((key.into(), MetaValue::U32(id as u32)));
        }
    }
    let flag = |key: &str, default: bool| {
        tok_cfg
            .and_then(|c| c.get(key))
            .and_then(Value::as_bool)
            .unwrap_or(default)
    };
    meta.push((
        "tokenizer.ggml.add_bos_token".into(),
        MetaValue::Bool(flag("add_bos_token", true)),
    ));
    meta.push((
        "tokenizer.ggml.add_eos_token".into(),
        MetaValue::Bool(flag("add_eos_token", false)),
    ));
    meta.push((
        "tokenizer.ggml.add_space_prefix".into(),
        MetaValue::Bool(add_space_prefix),
    ));
    if let Some(t) = chat_template(dir, tok_cfg)? {
        meta.push(("tokenizer.chat_template".into(), MetaValue::String(t)));
    }
    Ok(meta)
}

/// Whether rgemma's SentencePiece encoder, run on the `tokenizer.ggml.*` arrays derived
/// here, gives the ids `tokenizer.json` gives, so that loaders may take the fast path: a
/// SentencePiece BPE exported to Hugging Face (Gemma's shape), i.e. a BPE model with byte
/// fallback whose only text processing is spaces replaced by `▁`, an optional `▁` prefix and
/// a split at spaces. Anything else (byte-level BPE, regular-expression pre-tokenizers,
/// Unicode normalization, Unigram models) keeps the `tokenizers` crate the default.
/// tests/tokenizer_reference.rs proves the equality on the Gemma 3 vocabulary.
fn ggml_arrays_exact(tj: &Value) -> bool {
    let model = tj.get("model");
    let is_bpe = model
        .and_then(|m| m.get("type"))
        .and_then(Value::as_str)
        .is_none_or(|t| t == "BPE");
    let byte_fallback = model
        .and_then(|m| m.get("byte_fallback"))
        .and_then(Value::as_bool)
        == Some(true);
    // Each step of the normalizer / pre-tokenizer must be one of these.
    fn steps_ok(v: Option<&Value>, ok: &dyn Fn(&serde_json::Map<String, Value>) -> bool) -> bool {
        match v {
            None | Some(Value::Null) => true,
            Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
                Some("Sequence") => o
                    .get("normalizers")
                    .or_else(|| o.get("pretokenizers"))
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().all(|x| steps_ok(Some(x), ok))),
                _ => ok(o),
            },
            _ => false,
        }
    }
    let space = |o: &serde_json::Map<String, Value>, key: &str| {
        o.get(key)
            .and_then(|p| p.get("String"))
            .and_then(Value::as_str)
            == Some(" ")
    };
    let normalizer_ok = steps_ok(tj.get("normalizer"), &|o| match o
        .get("type")
        .and_then(Value::as_str)
    {
        Some("Replace") => {
            space(o, "pattern") && o.get("content").and_then(Value::as_str) == Some("\u{2581}")
        }
        Some("Prepend") => o.get("prepend").and_then(Value::as_str) == Some("\u{2581}"),
        _ => false,
    });
    let pre_tokenizer_ok = steps_ok(tj.get("pre_tokenizer"), &|o| {
        match o.get("type").and_then(Value::as_str) {
            Some("Split") => space(o, "pattern"),
            // Splitting at every ▁ would stop merges across words, which SentencePiece makes.
            Some("Metaspace") => {
                o.get("replacement").and_then(Value::as_str) == Some("\u{2581}")
                    && o.get("split").and_then(Value::as_bool) == Some(false)
            }
            _ => false,
        }
    });
    is_bpe && byte_fallback && normalizer_ok && pre_tokenizer_ok
}

/// SentencePiece's dummy prefix shows up in tokenizer.json as a `Prepend("▁")` normalizer
/// (or a Metaspace pre-tokenizer with `prepend_scheme` other than "never").
fn prepends_space(tj: &Value) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::Object(o) => {
                let ty = o.get("type").and_then(Value::as_str);
                if ty == Some("Prepend")
                    && o.get("prepend").and_then(Value::as_str) == Some("\u{2581}")
                {
                    return true;
                }
                if ty == Some("Metaspace") {
                    let scheme = o.get("prepend_scheme").and_then(Value::as_str);
                    let legacy = o.get("add_prefix_space").and_then(Value::as_bool);
                    return scheme.map_or(legacy.unwrap_or(true), |s| s != "never");
                }
                o.values().any(walk)
            }
            Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    tj.get("normalizer").is_some_and(walk) || tj.get("pre_tokenizer").is_some_and(walk)
}

/// `chat_template.jinja` (newer transformers) or tokenizer_config.json's `chat_template`
/// (a string, or a list of `{name, template}` from which "default" or the first is taken).
fn chat_template(dir: &Path, tok_cfg: Option<&Value>) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let t = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
        return Ok(Some(t));
    }
    Ok(match tok_cfg.and_then(|c| c.get("chat_template")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => {
            let named = |n: &str| {
                list.iter()
                    .find(|e| e.get("name").and_then(Value::as_str) == Some(n))
            };
            named("default")
                .or(list.first())
                .and_then(|e| e.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_pieces_and_merges() {
        assert!(is_byte_piece("<0x0A>"));
        assert!(is_byte_piece("<0xff>"));
        assert!(!is_byte_piece("<0x0A"));
        assert!(!is_byte_piece("<bos>"));
        assert_eq!(
            merge_result(&serde_json::json!("▁ t")).as_deref(),
            Some("▁t")
        );
        assert_eq!(
            merge_result(&serde_json::json!(["a", "b c"])).as_deref(),
            Some("ab c")
        );
    }

    #[test]
    fn only_sentencepiece_shaped_tokenizers_are_marked_exact() {
        let gemma = serde_json::json!({
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            "pre_tokenizer": null,
            "model": {"type": "BPE", "byte_fallback": true, "vocab": {}, "merges": []}
        });
        assert!(ggml_arrays_exact(&gemma));
        let with = |path: &str, v: Value| {
            let mut tj = gemma.clone();
            *tj.pointer_mut(path).unwrap() = v;
            tj
        };
        // Also Gemma-shaped: Gemma 3's split at spaces, a ▁ prefix, a non-splitting Metaspace.
        for ok in [
            with(
                "/pre_tokenizer",
                serde_json::json!({"type": "Split", "pattern": {"String": " "},
                                   "behavior": "MergedWithPrevious", "invert": false}),
            ),
            with(
                "/normalizer",
                serde_json::json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "\u{2581}"},
                    {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]}),
            ),
            with(
                "/pre_tokenizer",
                serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}",
                                   "prepend_scheme": "first", "split": false}),
            ),
        ] {
            assert!(ggml_arrays_exact(&ok), "{ok}");
        }
        for bad in [
            with("/model/byte_fallback", false.into()),
            with("/model/type", "Unigram".into()),
            with(
                "/pre_tokenizer",
                serde_json::json!({"type": "ByteLevel", "add_prefix_space": false}),
            ),
            with(
                "/pre_tokenizer",
                serde_json::json!({"type": "Split", "pattern": {"Regex": "\\s+"},
                                   "behavior": "Isolated", "invert": false}),
            ),
            with(
                "/pre_tokenizer",
                serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}", "split": true}),
            ),
            with("/normalizer", serde_json::json!({"type": "NFKC"})),
        ] {
            assert!(!ggml_arrays_exact(&bad), "{bad}");
        }
    }
}
