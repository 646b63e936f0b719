//! Tokenizer metadata from a synthetic SentencePiece-style BPE tokenizer.json (the shape of
//! Gemma's: byte-fallback pieces, added special tokens, merges) beside tiny-rg's weights.

mod convert_util;

use convert_util::*;
use rgemma::convert::FileType;
use rgemma::gguf::{GgufFile, MetaArray, MetaValue};
use rgemma::tokenizer::{Tokenizer, TokenizerSource};

const LETTERS: &str = "abcdefghij";

/// Returns (tokenizer.json text, tokens by id, expected scores, expected types).
fn synthetic_tokenizer() -> (String, Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![3, 3, 3, 2]; // specials are control, <unk> is "unknown"
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for c in "\u{2581}abcdefghijklmnopqrstuvwxyz".chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    let mut merges: Vec<serde_json::Value> = Vec::new();
    let mut scores_of = std::collections::HashMap::new();
    for a in LETTERS.chars() {
        for b in LETTERS.chars() {
            let piece = format!("{a}{b}");
            scores_of.insert(piece.clone(), -((merges.len() + 1) as f32));
            // Both merge spellings tokenizers writes: "a b" and ["a", "b"].
            merges.push(if merges.len().is_multiple_of(2) {
                format!("{a} {b}").into()
            } else {
                serde_json::json!([a.to_string(), b.to_string()])
            });
            tokens.push(piece);
            types.push(1);
        }
    }
    // "abc" is produced by two merges; its score comes from the first (higher-priority) one.
    scores_of.insert("abc".into(), -((merges.len() + 1) as f32));
    merges.push("ab c".into());
    merges.push("a bc".into());
    tokens.push("abc".into());
    types.push(1);
    for (piece, ty) in [("<start_of_turn>", 3), ("<end_of_turn>", 3), ("\n\n", 4)] {
        tokens.push(piece.into());
        types.push(ty);
    }
    while tokens.len() < 500 {
        tokens.push(format!("zz{}", tokens.len()));
        types.push(1);
    }
    let scores: Vec<f32> = tokens
        .iter()
        .map(|t| scores_of.get(t).copied().unwrap_or(0.0))
        .collect();

    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i.into()))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 4 || (388..391).contains(i))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": types[i] != 4})
        })
        .collect();
    let tj = serde_json::json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "byte_fallback": true,
                  "fuse_unk": true, "vocab": vocab, "merges": merges}
    });
    (
        serde_json::to_string_pretty(&tj).unwrap(),
        tokens,
        scores,
        types,
    )
}

/// A checkpoint folder `name` (in a fresh directory for `tag`) holding tiny-rg's config,
/// generation config and weights, and no tokenizer: each test adds the tokenizer it checks.
fn tiny_rg_weights(tag: &str, name: &str) -> std::path::PathBuf {
    let dir = fresh_dir(tag).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    copy_configs(&fixture("tiny-rg"), &dir);
    std::fs::copy(
        fixture("tiny-rg/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    dir
}

#[test]
fn tokenizer_json_becomes_ggml_arrays() {
    let dir = tiny_rg_weights("tokenizer", "tiny-tok");
    let (tj, tokens, scores, types) = synthetic_tokenizer();
    assert_eq!(tokens[388], "<start_of_turn>");
    std::fs::write(dir.join("tokenizer.json"), &tj).unwrap();
    let template = "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}";
    let cfg = serde_json::json!({"add_bos_token": true, "add_eos_token": false, "bos_token": "<bos>",
                                 "chat_template": template});
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();

    let out = dir.parent().unwrap().join("tok.gguf");
    let (_, warnings) = run(&dir, &out, FileType::Q8_0).unwrap();
    // 500 tokens for 512 embedding rows: padded, with a warning.
    assert!(
        warnings.iter().any(|w| w.contains("500 tokens for 512")),
        "{warnings:?}"
    );
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "llama");
    let got_tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(got_tokens.len(), 512);
    assert_eq!(&got_tokens[..500], &tokens[..]);
    assert_eq!(got_tokens[511], "[PAD511]");
    match g.get("tokenizer.ggml.scores") {
        Some(MetaValue::Array(MetaArray::F32(s))) => {
            assert_eq!(&s[..500], &scores[..]);
            assert_eq!(s[286 + 1], -1.0); // "aa", the first merge
        }
        other => panic!("scores: {other:?}"),
    }
    match g.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(MetaArray::I32(t))) => {
            assert_eq!(&t[..500], &types[..]);
            assert!(t[500..].iter().all(|&x| x == 5));
        }
        other => panic!("token_type: {other:?}"),
    }
    assert_eq!(g.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 2);
    assert_eq!(g.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 1);
    assert_eq!(g.get_u32("tokenizer.ggml.unknown_token_id").unwrap(), 3);
    assert_eq!(g.get_u32("tokenizer.ggml.padding_token_id").unwrap(), 0);
    assert!(g.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert!(!g.get_bool("tokenizer.ggml.add_eos_token").unwrap());
    assert!(!g.get_bool("tokenizer.ggml.add_space_prefix").unwrap());
    assert_eq!(g.get_str("tokenizer.chat_template").unwrap(), template);
    assert_eq!(g.get_str("tokenizer.huggingface.json").unwrap(), tj);
    // Gemma-shaped: marked so that loaders take the fast tokenizer.ggml path by default
    // (which does not even parse the embedded json).
    assert!(g.get_bool("rgemma.tokenizer.ggml_exact").unwrap());
    let auto = load(&g, TokenizerSource::Auto);
    assert_eq!(auto.source(), TokenizerSource::GgmlArrays);
}

fn load(g: &GgufFile, source: TokenizerSource) -> Tokenizer {
    Tokenizer::from_gguf_with(g, source)
        .expect("tokenizer loads")
        .expect("the file has a tokenizer")
}

/// tiny-rg's weights with the 512-token Gemma-style tokenizer of the rg-run tests, its
/// `pre_tokenizer` replaced by `pre_tokenizer` when given; converted, opened.
fn convert_with_tokenizer_512(tag: &str, pre_tokenizer: Option<serde_json::Value>) -> GgufFile {
    let dir = tiny_rg_weights(tag, "tiny-tok");
    let json = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cli_run_support/tokenizer-512.json");
    let mut tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    if let Some(p) = pre_tokenizer {
        tj["pre_tokenizer"] = p;
    }
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    let out = dir.parent().unwrap().join("tok.gguf");
    run(&dir, &out, FileType::F32).unwrap();
    GgufFile::open(&out).unwrap()
}

/// A Gemma-style tokenizer loads through the tokenizer.ggml arrays by default, and gives
/// the ids of the embedded Hugging Face tokenizer (which stays selectable).
#[test]
fn gemma_style_tokenizers_default_to_the_ggml_arrays() {
    let g = convert_with_tokenizer_512("tokenizer-gemma-style", None);
    assert!(g.get_bool("rgemma.tokenizer.ggml_exact").unwrap());
    let auto = load(&g, TokenizerSource::Auto);
    assert_eq!(auto.source(), TokenizerSource::GgmlArrays);
    let hf = load(&g, TokenizerSource::HuggingFace);
    assert_eq!(hf.source(), TokenizerSource::HuggingFace);
    for text in [
        "Hello there, the world is a strange place.",
        "  two  spaces\n\tand a tab <start_of_turn>user\nhi<end_of_turn>",
        "digits 0123456789, bytes \u{1F600} ä \u{E000}",
    ] {
        for special in [true, false] {
            assert_eq!(
                auto.encode(text, true, special).unwrap(),
                hf.encode(text, true, special).unwrap(),
                "{text:?}"
            );
        }
    }
}

/// A tokenizer.json that is not SentencePiece-shaped (a byte-level pre-tokenizer) is not
/// marked, and the embedded Hugging Face tokenizer stays the default.
#[test]
fn other_tokenizers_keep_the_hf_path() {
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
                                        "trim_offsets": true, "use_regex": true});
    let g = convert_with_tokenizer_512("tokenizer-bytelevel", Some(byte_level));
    assert!(g.get("rgemma.tokenizer.ggml_exact").is_none());
    let auto = load(&g, TokenizerSource::Auto);
    assert_eq!(auto.source(), TokenizerSource::HuggingFace);
    let ggml = load(&g, TokenizerSource::GgmlArrays);
    assert_eq!(ggml.source(), TokenizerSource::GgmlArrays);
}

#[test]
fn corrupt_tokenizer_json_is_an_error() {
    let dir = tiny_rg_weights("tokenizer-bad", "tiny-tok");
    std::fs::write(
        dir.join("tokenizer.json"),
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 2}}}",
    )
    .unwrap();
    let out = dir.parent().unwrap().join("tok.gguf");
    let err = run(&dir, &out, FileType::F32).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("no token has id 1"),
        "{err}"
    );
    assert!(!out.exists());
}

/// A Hugging Face cache snapshot folder (every file a symlink into `blobs/`, as
/// `huggingface_hub` lays it out) converts to the same bytes as the plain folder, the model
/// named after the repository rather than the revision.
#[cfg(unix)]
#[test]
fn a_hugging_face_cache_snapshot_converts_like_the_plain_folder() {
    let root = fresh_dir("tokenizer-hf-cache");
    let plain = root.join("recurrentgemma-tiny");
    std::fs::create_dir_all(&plain).unwrap();
    copy_configs(&fixture("tiny-rg"), &plain);
    std::fs::copy(
        fixture("tiny-rg/model.safetensors"),
        plain.join("model.safetensors"),
    )
    .unwrap();
    let (tj, ..) = synthetic_tokenizer();
    std::fs::write(plain.join("tokenizer.json"), &tj).unwrap();

    let repo = root.join("models--google--recurrentgemma-tiny");
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots").join("0123456789abcdef");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for (i, entry) in std::fs::read_dir(&plain).unwrap().enumerate() {
        let entry = entry.unwrap();
        let blob = format!("{i:040x}");
        std::fs::copy(entry.path(), blobs.join(&blob)).unwrap();
        std::os::unix::fs::symlink(
            format!("../../blobs/{blob}"),
            snapshot.join(entry.file_name()),
        )
        .unwrap();
    }

    let from_plain = root.join("plain.gguf");
    let from_snapshot = root.join("snapshot.gguf");
    run(&plain, &from_plain, FileType::Q8_0).unwrap();
    run(&snapshot, &from_snapshot, FileType::Q8_0).unwrap();
    let g = GgufFile::open(&from_snapshot).unwrap();
    assert_eq!(g.get_str("general.name").unwrap(), "recurrentgemma-tiny");
    assert_eq!(
        std::fs::read(&from_plain).unwrap(),
        std::fs::read(&from_snapshot).unwrap()
    );
}

/// A checkpoint folder with only SentencePiece's tokenizer.model (no tokenizer.json): the
/// converted file's tokenizer gives the ids Google's `sentencepiece` gives
/// (tests/fixtures/tokenizer-tiny-spm, written by scripts/make_spm_tokenizer_fixture.py).
#[test]
fn a_sentencepiece_model_alone_converts_to_the_same_ids() {
    let dir = tiny_rg_weights("tokenizer-spm", "tiny-spm");
    std::fs::copy(
        fixture("tokenizer-tiny-spm/tokenizer.model"),
        dir.join("tokenizer.model"),
    )
    .unwrap();
    let out = dir.parent().unwrap().join("spm.gguf");
    let (_, warnings) = run(&dir, &out, FileType::F32).unwrap();
    assert!(
        warnings.iter().all(|w| !w.contains("tokenizer")),
        "{warnings:?}"
    );
    let g = GgufFile::open(&out).unwrap();
    assert!(g.get("tokenizer.huggingface.json").is_none());
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 512);
    assert!(!g.get_bool("tokenizer.ggml.add_space_prefix").unwrap());
    let tok = Tokenizer::from_gguf(&g).unwrap().unwrap();
    assert_eq!(tok.source(), TokenizerSource::GgmlArrays);
    assert_eq!((tok.bos(), tok.eos()), (2, 1));
    assert_eq!(tok.token_id("<start_of_turn>"), Some(4));

    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tokenizer-tiny-spm/expected.json")).unwrap(),
    )
    .unwrap();
    let cases = expected["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, false, true).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want, true).unwrap(), text, "{text:?}");
    }
}

/// The real 262144-token Gemma 3 vocabulary in Hugging Face's files, from `.ci/run`:
/// RG_GEMMA3_HF_JSON (tokenizer.json) and RG_GEMMA3_SPM_MODEL (SentencePiece's tokenizer.model,
/// which Google's `sentencepiece` loads and encodes the reference texts with; see
/// scripts/gemma3_hf_tokenizer_json.py). `None` (and a visible skip) when either is unset.
fn gemma3_tokenizer_files() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    match (
        std::env::var_os("RG_GEMMA3_HF_JSON"),
        std::env::var_os("RG_GEMMA3_SPM_MODEL"),
    ) {
        (Some(json), Some(model)) => Some((json.into(), model.into())),
        _ => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: RG_GEMMA3_HF_JSON and RG_GEMMA3_SPM_MODEL not both set"
            );
            None
        }
    }
}

const FULL_VOCAB: u64 = 262_144;

/// A checkpoint folder laid out like the Hugging Face repository of recurrentgemma-2b-it
/// (config files, the chat template in tokenizer_config.json, special_tokens_map.json) with
/// tiny-rg's weights, the embedding grown to the full vocabulary, and the given tokenizer
/// files copied in under their Hugging Face names.
fn full_vocabulary_folder(
    tag: &str,
    tokenizer_files: &[(&std::path::Path, &str)],
) -> std::path::PathBuf {
    let dir = fresh_dir(tag).join("recurrentgemma-tiny-256k");
    std::fs::create_dir_all(&dir).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-rg/config.json")).unwrap())
            .unwrap();
    config["vocab_size"] = FULL_VOCAB.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        fixture("tiny-rg/generation_config.json"),
        dir.join("generation_config.json"),
    )
    .unwrap();
    let mut tensors: Vec<(String, RawTensor)> =
        read_safetensors(&fixture("tiny-rg/model.safetensors"))
            .into_iter()
            .collect();
    for (name, t) in tensors.iter_mut() {
        if name == "model.embed_tokens.weight" {
            let hidden = t.shape[1];
            let mut values = t.values();
            values.resize((FULL_VOCAB * hidden) as usize, 0.01);
            *t = RawTensor::f32(&[FULL_VOCAB, hidden], &values);
        }
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors);
    for (source, name) in tokenizer_files {
        std::fs::copy(source, dir.join(name)).unwrap();
    }
    let specials = serde_json::json!({"bos_token": "<bos>", "eos_token": "<eos>",
                                      "pad_token": "<pad>", "unk_token": "<unk>"});
    let mut tok_cfg = specials.clone();
    tok_cfg["add_bos_token"] = true.into();
    tok_cfg["chat_template"] =
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}".into();
    std::fs::write(dir.join("tokenizer_config.json"), tok_cfg.to_string()).unwrap();
    std::fs::write(dir.join("special_tokens_map.json"), specials.to_string()).unwrap();
    dir
}

/// Converts `dir` to Q8_0 and returns the file and its tokenizer, checking that the
/// tokenizer takes the fast path (the `tokenizer.ggml.*` arrays) and has the full vocabulary.
fn converted_tokenizer(dir: &std::path::Path) -> (GgufFile, Tokenizer) {
    let out = dir.parent().unwrap().join("tiny-256k-q8_0.gguf");
    run(dir, &out, FileType::Q8_0).unwrap();
    let g = GgufFile::open(&out).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap().unwrap();
    assert_eq!(tok.source(), TokenizerSource::GgmlArrays);
    assert_eq!(tok.n_vocab(), FULL_VOCAB as usize);
    (g, tok)
}

/// The 40 reference texts (tests/fixtures/tokenizer, from the real Gemma tokenizer) encode to
/// their reference ids, with and without BOS, special tokens parsed, and those ids decode to
/// the text again.
fn assert_encodes_reference_texts(tok: &Tokenizer) {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tokenizer/tokenizer_reference.json")).unwrap(),
    )
    .unwrap();
    let texts = reference["texts"].as_array().unwrap();
    assert_eq!(texts.len(), 40);
    for entry in texts {
        let text = entry["text"].as_str().unwrap();
        let ids = |field: &str| -> Vec<u32> {
            entry[field]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        assert_eq!(
            tok.encode(text, false, true).unwrap(),
            ids("ids"),
            "{text:?}"
        );
        assert_eq!(
            tok.encode(text, true, true).unwrap(),
            ids("ids_with_bos"),
            "{text:?}"
        );
        assert_eq!(tok.decode(&ids("ids"), false).unwrap(), text, "{text:?}");
    }
}

/// The folder as the Hugging Face repository has it (tokenizer.json and tokenizer.model side
/// by side) converts to a file whose tokenizer takes the fast path and encodes the 40
/// reference texts exactly.
#[test]
fn a_full_vocabulary_folder_converts_and_encodes_the_reference_texts() {
    let Some((json, model)) = gemma3_tokenizer_files() else {
        return;
    };
    let dir = full_vocabulary_folder(
        "tokenizer-256k",
        &[(&json, "tokenizer.json"), (&model, "tokenizer.model")],
    );
    let (_, tok) = converted_tokenizer(&dir);
    assert_encodes_reference_texts(&tok);
}

/// The same vocabulary from SentencePiece's tokenizer.model alone (no tokenizer.json): the
/// arrays equal those llama.cpp's converter made from Google's file (the Gemma 3 GGUF of
/// RG_GEMMA3_GGUF: its user-defined runs of spaces are stored pre-normalized, "  " rather
/// than SentencePiece's "▁▁"), and every reference text encodes as with tokenizer.json.
#[test]
fn a_full_vocabulary_sentencepiece_model_alone_encodes_the_reference_texts() {
    let Some((_, model)) = gemma3_tokenizer_files() else {
        return;
    };
    let gemma3 =
        GgufFile::open(std::env::var_os("RG_GEMMA3_GGUF").expect("RG_GEMMA3_GGUF")).unwrap();
    let dir = full_vocabulary_folder("tokenizer-256k-spm", &[(&model, "tokenizer.model")]);
    let (g, tok) = converted_tokenizer(&dir);
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
    ] {
        assert!(
            g.get(key) == gemma3.get(key),
            "{key} differs from llama.cpp's"
        );
    }
    assert_encodes_reference_texts(&tok);
}
