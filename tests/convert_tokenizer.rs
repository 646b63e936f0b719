//! Tokenizer metadata from a synthetic SentencePiece-style BPE tokenizer.json (the shape of
//! Gemma's: byte-fallback pieces, added special tokens, merges) beside tiny-rg's weights.

mod convert_util;

use convert_util::*;
use rgemma::convert::FileType;
use rgemma::gguf::{GgufFile, MetaArray, MetaValue};

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

#[test]
fn tokenizer_json_becomes_ggml_arrays() {
    let dir = fresh_dir("tokenizer").join("tiny-tok");
    std::fs::create_dir_all(&dir).unwrap();
    copy_configs(&fixture("tiny-rg"), &dir);
    std::fs::copy(
        fixture("tiny-rg/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
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
}

#[test]
fn corrupt_tokenizer_json_is_an_error() {
    let dir = fresh_dir("tokenizer-bad").join("tiny-tok");
    std::fs::create_dir_all(&dir).unwrap();
    copy_configs(&fixture("tiny-rg"), &dir);
    std::fs::copy(
        fixture("tiny-rg/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
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
