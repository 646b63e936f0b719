//! Both tokenizer sources on a small Gemma-style vocabulary, against the ids of the Hugging Face
//! `tokenizers` library (tests/fixtures/tokenizer-tiny-hf, written by
//! scripts/make_tiny_tokenizer_fixture.py): a GGUF carrying `tokenizer.huggingface.json` (HF
//! path) and GGUFs carrying only `tokenizer.ggml.*` arrays (SentencePiece path) must give the
//! same ids. Also: files without a tokenizer, and malformed tokenizer metadata.

use std::path::PathBuf;

use rgemma::gguf::{GgufFile, GgufWriter, MetaArray, MetaValue};
use rgemma::tokenizer::{StreamDecoder, Tokenizer};
use rgemma::Error;
use serde_json::Value;

const FIXTURE_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tokenizer-tiny-hf"
);

fn expected() -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURE_DIR}/expected.json"))
        .expect("read expected.json");
    serde_json::from_str(&text).expect("parse expected.json")
}

fn hf_json() -> String {
    std::fs::read_to_string(format!("{FIXTURE_DIR}/tokenizer.json")).expect("read tokenizer.json")
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

type Metadata = Vec<(String, MetaValue)>;

fn key(k: &str, v: MetaValue) -> (String, MetaValue) {
    (k.to_owned(), v)
}

/// `tokenizer.ggml.*` metadata from the fixture; `hf_spaces` spells the whitespace pieces with
/// `▁` (sentencepiece's own convention) instead of spaces (llama.cpp's Gemma files).
fn ggml_metadata(expected: &Value, hf_spaces: bool) -> Vec<(String, MetaValue)> {
    let g = &expected["ggml"];
    let mut tokens = str_list(&g["tokens"]);
    if hf_spaces {
        for t in &mut tokens {
            if !t.is_empty() && t.chars().all(|c| c == ' ') {
                *t = t.replace(' ', "\u{2581}");
            }
        }
    }
    let scores = g["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let types = g["token_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect();
    let id = |name: &str| MetaValue::U32(g[name].as_u64().unwrap() as u32);
    vec![
        key("tokenizer.ggml.model", MetaValue::String("llama".into())),
        key("tokenizer.ggml.pre", MetaValue::String("default".into())),
        key(
            "tokenizer.ggml.tokens",
            MetaValue::Array(MetaArray::String(tokens)),
        ),
        key(
            "tokenizer.ggml.scores",
            MetaValue::Array(MetaArray::F32(scores)),
        ),
        key(
            "tokenizer.ggml.token_type",
            MetaValue::Array(MetaArray::I32(types)),
        ),
        key("tokenizer.ggml.bos_token_id", id("bos_token_id")),
        key("tokenizer.ggml.eos_token_id", id("eos_token_id")),
        key("tokenizer.ggml.unknown_token_id", id("unknown_token_id")),
        key("tokenizer.ggml.padding_token_id", id("padding_token_id")),
        key("tokenizer.ggml.add_bos_token", MetaValue::Bool(true)),
        key("tokenizer.ggml.add_space_prefix", MetaValue::Bool(false)),
    ]
}

/// Writes a tensor-less GGUF with `metadata` and reads it back.
fn gguf_with(name: &str, metadata: Vec<(String, MetaValue)>) -> GgufFile {
    let mut all = vec![key(
        "general.architecture",
        MetaValue::String("test".into()),
    )];
    all.extend(metadata);
    let dir: PathBuf =
        std::env::temp_dir().join(format!("rgemma-tokenizer-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    GgufWriter::create(&path, &all, &[])
        .expect("create")
        .finish()
        .expect("finish");
    let file = GgufFile::open(&path).expect("open");
    let _ = std::fs::remove_file(&path);
    file
}

fn load(file: &GgufFile) -> Tokenizer {
    Tokenizer::from_gguf(file)
        .expect("from_gguf")
        .expect("has a tokenizer")
}

/// Every case of the fixture through `tok`; returns the number of texts that pass fully.
fn check_cases(label: &str, tok: &Tokenizer, expected: &Value) -> usize {
    let cases = expected["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let mut why = Vec::new();
        for (field, add_bos, parse_special) in [
            ("ids", false, true),
            ("ids_with_bos", true, true),
            ("ids_split_special", false, false),
        ] {
            let got = tok.encode(text, add_bos, parse_special).expect("encode");
            if got != ids(&case[field]) {
                why.push(format!(
                    "{field}: got {got:?}, want {:?}",
                    ids(&case[field])
                ));
            }
        }
        let decoded = tok.decode(&ids(&case["ids"]), false).expect("decode");
        if decoded != case["decoded"].as_str().unwrap() || decoded != text {
            why.push(format!("decode: {decoded:?}"));
        }
        let skipped = tok
            .decode(&ids(&case["ids_with_bos"]), true)
            .expect("decode");
        if skipped != case["decoded_with_bos_skip_special"].as_str().unwrap() {
            why.push(format!("decode skip_special: {skipped:?}"));
        }
        let mut stream = StreamDecoder::new();
        let mut streamed = String::new();
        for id in ids(&case["ids_with_bos"]) {
            let chunk = stream.push(tok, id);
            if chunk.contains('\u{FFFD}') {
                why.push(format!("stream chunk {chunk:?} has U+FFFD"));
            }
            streamed.push_str(&chunk);
        }
        streamed.push_str(&stream.flush());
        if streamed != tok.decode(&ids(&case["ids_with_bos"]), false).unwrap() {
            why.push(format!("stream: {streamed:?}"));
        }
        if !why.is_empty() {
            failures.push(format!("{text:?}: {}", why.join("; ")));
        }
    }
    println!(
        "{label}: {}/{} texts pass",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{label}:\n{}", failures.join("\n"));
    cases.len()
}

#[test]
fn hf_json_path_matches_python_tokenizers() {
    let expected = expected();
    // As the converter writes it: the HF json and the ggml arrays; the json wins.
    let mut metadata = ggml_metadata(&expected, false);
    metadata.push(key(
        "tokenizer.huggingface.json",
        MetaValue::String(hf_json()),
    ));
    let tok = load(&gguf_with("hf", metadata));
    assert!(
        format!("{tok:?}").contains("tokenizer.huggingface.json"),
        "{tok:?}"
    );
    assert_eq!(tok.n_vocab(), 366);
    assert_eq!((tok.bos(), tok.eos()), (2, 1));
    assert!(tok.is_control(4) && !tok.is_control(6) && !tok.is_control(100));
    assert_eq!(tok.token_id("<start_of_turn>"), Some(4));
    assert_eq!(tok.token_bytes(8).as_deref(), Some(&b"  "[..]));
    check_cases("hf json", &tok, &expected);
}

#[test]
fn hf_json_alone_is_enough() {
    let expected = expected();
    let tok = load(&gguf_with(
        "hf-only",
        vec![key(
            "tokenizer.huggingface.json",
            MetaValue::String(hf_json()),
        )],
    ));
    // BOS/EOS found by their pieces when the ids are not in the metadata.
    assert_eq!((tok.bos(), tok.eos()), (2, 1));
    check_cases("hf json alone", &tok, &expected);
}

#[test]
fn ggml_arrays_path_matches_python_tokenizers() {
    let expected = expected();
    let tok = load(&gguf_with("ggml", ggml_metadata(&expected, false)));
    assert!(format!("{tok:?}").contains("SentencePiece"), "{tok:?}");
    assert_eq!(tok.piece(8), Some("  "));
    check_cases("ggml arrays", &tok, &expected);
}

#[test]
fn ggml_arrays_with_marker_spelled_whitespace_pieces() {
    let expected = expected();
    let tok = load(&gguf_with("ggml-marker", ggml_metadata(&expected, true)));
    assert_eq!(tok.piece(8), Some("\u{2581}\u{2581}"));
    check_cases("ggml arrays, ▁ whitespace pieces", &tok, &expected);
}

#[test]
fn both_paths_agree_on_more_text() {
    let expected = expected();
    let mut metadata = ggml_metadata(&expected, false);
    metadata.push(key(
        "tokenizer.huggingface.json",
        MetaValue::String(hf_json()),
    ));
    let hf = load(&gguf_with("agree-hf", metadata));
    let spm = load(&gguf_with("agree-ggml", ggml_metadata(&expected, false)));
    let texts = [
        "the the the hello hello world",
        "   \n\n\n\n  x",
        "<end_of_turn><end_of_turn>\n\n<start_of_turn>user",
        "<unk><pad><b><b>",
        "\u{1F600}\u{200D}\u{00E9}e\u{0301}",
        "Hello, World! The start_of_turn is 1234567890.",
    ];
    for text in texts {
        for (add_bos, parse_special) in [(false, true), (true, true), (false, false)] {
            let a = hf.encode(text, add_bos, parse_special).unwrap();
            let b = spm.encode(text, add_bos, parse_special).unwrap();
            assert_eq!(
                a, b,
                "{text:?} add_bos={add_bos} parse_special={parse_special}"
            );
            assert_eq!(
                hf.decode(&a, false).unwrap(),
                spm.decode(&b, false).unwrap()
            );
        }
    }
}

#[test]
fn no_tokenizer_metadata_is_none() {
    let file = gguf_with(
        "none",
        vec![key("general.name", MetaValue::String("x".into()))],
    );
    assert!(Tokenizer::from_gguf(&file).unwrap().is_none());
}

#[test]
fn malformed_tokenizer_metadata_is_an_error() {
    let expected = expected();
    let with = |name: &str, edit: &dyn Fn(&mut Metadata)| {
        let mut metadata = ggml_metadata(&expected, false);
        edit(&mut metadata);
        Tokenizer::from_gguf(&gguf_with(name, metadata))
    };
    let set = |m: &mut Metadata, k: &str, v: MetaValue| {
        m.iter_mut().find(|(name, _)| name == k).expect(k).1 = v;
    };
    let gpt2 = with("gpt2", &|m| {
        set(m, "tokenizer.ggml.model", MetaValue::String("gpt2".into()))
    });
    assert!(matches!(gpt2, Err(Error::Unsupported(_))), "{gpt2:?}");
    let short_scores = with("scores", &|m| {
        set(
            m,
            "tokenizer.ggml.scores",
            MetaValue::Array(MetaArray::F32(vec![0.0; 3])),
        )
    });
    assert!(
        matches!(short_scores, Err(Error::Format(_))),
        "{short_scores:?}"
    );
    let bad_bos = with("bos", &|m| {
        set(m, "tokenizer.ggml.bos_token_id", MetaValue::U32(100_000))
    });
    assert!(matches!(bad_bos, Err(Error::Format(_))), "{bad_bos:?}");
    let bad_types = with("types", &|m| {
        set(
            m,
            "tokenizer.ggml.token_type",
            MetaValue::String("x".into()),
        )
    });
    assert!(matches!(bad_types, Err(Error::Format(_))), "{bad_types:?}");
    let bad_json = with("json", &|m| {
        m.push(key(
            "tokenizer.huggingface.json",
            MetaValue::String("{\"model\": 1}".into()),
        ))
    });
    assert!(matches!(bad_json, Err(Error::Tokenizer(_))), "{bad_json:?}");
}

#[test]
fn decode_rejects_out_of_range_ids() {
    let expected = expected();
    let tok = load(&gguf_with("range", ggml_metadata(&expected, false)));
    assert!(matches!(
        tok.decode(&[10, 366], false),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn truncation_and_padding_in_the_json_are_ignored() {
    let expected = expected();
    let mut json: Value = serde_json::from_str(&hf_json()).unwrap();
    json["truncation"] = serde_json::json!({
        "direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0
    });
    json["padding"] = serde_json::json!({
        "strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"
    });
    let metadata = vec![key(
        "tokenizer.huggingface.json",
        MetaValue::String(json.to_string()),
    )];
    let tok = load(&gguf_with("truncating", metadata));
    check_cases("hf json with truncation/padding", &tok, &expected);
}

/// Random strings over an alphabet rich in pieces, specials and byte-fallback characters: both
/// paths give the same ids, decode gives the text back, streaming gives the same text.
#[test]
fn random_text_roundtrips_and_both_paths_agree() {
    let expected = expected();
    let mut metadata = ggml_metadata(&expected, false);
    metadata.push(key(
        "tokenizer.huggingface.json",
        MetaValue::String(hf_json()),
    ));
    let hf = load(&gguf_with("random-hf", metadata));
    let spm = load(&gguf_with("random-ggml", ggml_metadata(&expected, false)));
    let alphabet = [
        "a",
        "b",
        "e",
        "h",
        "l",
        "o",
        "t",
        "w",
        "r",
        "d",
        "s",
        "1",
        "2",
        "3",
        " ",
        " ",
        "  ",
        "\n",
        "\t",
        "<",
        ">",
        "_",
        "<b>",
        "<bos>",
        "<start_of_turn>",
        "<end_of_turn>",
        "hello",
        "the",
        "\u{e9}",
        "\u{65e5}",
        "\u{1F916}",
        "\u{2581}",
        "\r",
        "\u{0}",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for _ in 0..2000 {
        let len = (next() % 24) as usize;
        let text: String = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        for parse_special in [true, false] {
            let a = hf.encode(&text, false, parse_special).unwrap();
            let b = spm.encode(&text, false, parse_special).unwrap();
            assert_eq!(a, b, "{text:?} parse_special={parse_special}");
            // A literal `▁` in the text is the space marker: it comes back as a space.
            let want = text.replace('\u{2581}', " ");
            for tok in [&hf, &spm] {
                assert_eq!(tok.decode(&a, false).unwrap(), want);
                let mut stream = StreamDecoder::new();
                let mut streamed: String = a.iter().map(|&id| stream.push(tok, id)).collect();
                streamed.push_str(&stream.flush());
                assert_eq!(streamed, want);
            }
        }
    }
}
