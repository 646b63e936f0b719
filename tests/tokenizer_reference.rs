//! The GGUF tokenizer against the Hugging Face reference ids in
//! tests/fixtures/tokenizer/tokenizer_reference.json (40 texts, Gemma 3 vocabulary; see the
//! README there). Needs the real Gemma 3 270M GGUF, whose path comes from RG_GEMMA3_GGUF; its
//! `tokenizer.ggml.*` arrays exercise the SentencePiece path.
//!
//! Optional: RG_GEMMA3_HF_JSON names a tokenizer.json for the same vocabulary (regenerated as
//! the fixture README says, or built by scripts/gemma3_hf_tokenizer_json.py); the same checks
//! then also run on a GGUF carrying it as `tokenizer.huggingface.json` (the HF path).

use std::io::Write;
use std::sync::OnceLock;

use rgemma::gguf::{GgufFile, GgufWriter, MetaValue};
use rgemma::tokenizer::{StreamDecoder, Tokenizer, TokenizerSource};
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tokenizer/tokenizer_reference.json"
);

/// The tokenizers under test, labelled, loaded once for all tests of this file.
fn tokenizers() -> &'static [(String, Tokenizer)] {
    static TOKENIZERS: OnceLock<Vec<(String, Tokenizer)>> = OnceLock::new();
    TOKENIZERS.get_or_init(|| {
        let Some(path) = std::env::var_os("RG_GEMMA3_GGUF") else {
            // Straight to stderr: the test harness would swallow println!/eprintln!.
            let _ = writeln!(std::io::stderr(), "skipped: RG_GEMMA3_GGUF not set");
            return Vec::new();
        };
        let file = GgufFile::open(&path).expect("open RG_GEMMA3_GGUF");
        let load = |file: &GgufFile, source| {
            Tokenizer::from_gguf_with(file, source)
                .expect("load tokenizer")
                .expect("the file has a tokenizer")
        };
        let ggml = load(&file, TokenizerSource::GgmlArrays);
        let mut all = vec![("tokenizer.ggml arrays".to_owned(), ggml)];
        match std::env::var_os("RG_GEMMA3_HF_JSON") {
            Some(json_path) => {
                let json = std::fs::read_to_string(&json_path).expect("read RG_GEMMA3_HF_JSON");
                // As rgemma's converter writes it: the json next to the ggml arrays.
                let mut metadata: Vec<(String, MetaValue)> = file
                    .metadata()
                    .iter()
                    .filter(|(key, _)| {
                        key.starts_with("tokenizer.") || key == "general.architecture"
                    })
                    .cloned()
                    .collect();
                metadata.push((
                    "tokenizer.huggingface.json".to_owned(),
                    MetaValue::String(json),
                ));
                let out = std::env::temp_dir()
                    .join(format!("rgemma-gemma3-hf-{}.gguf", std::process::id()));
                GgufWriter::create(&out, &metadata, &[])
                    .unwrap()
                    .finish()
                    .unwrap();
                let hf_file = GgufFile::open(&out).expect("open the HF GGUF");
                let _ = std::fs::remove_file(&out);
                let tokenizer = load(&hf_file, TokenizerSource::HuggingFace);
                assert!(
                    format!("{tokenizer:?}").contains("huggingface"),
                    "{tokenizer:?}"
                );
                all.push(("tokenizer.huggingface.json".to_owned(), tokenizer));
            }
            None => {
                let _ = writeln!(
                    std::io::stderr(),
                    "HF path at full scale skipped: RG_GEMMA3_HF_JSON not set"
                );
            }
        }
        all
    })
}

struct Case {
    text: String,
    ids: Vec<u32>,
    ids_with_bos: Vec<u32>,
    ids_split_special: Vec<u32>,
    decoded_with_bos_skip_special: String,
}

fn ids_of(entry: &Value, field: &str) -> Vec<u32> {
    entry[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} missing"))
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

fn cases() -> Vec<Case> {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(FIXTURE).expect("read fixture"))
            .expect("parse fixture");
    let texts = json["texts"].as_array().expect("texts");
    assert_eq!(texts.len(), 40);
    texts
        .iter()
        .map(|entry| Case {
            text: entry["text"].as_str().expect("text").to_owned(),
            ids: ids_of(entry, "ids"),
            ids_with_bos: ids_of(entry, "ids_with_bos"),
            ids_split_special: ids_of(entry, "ids_split_special"),
            decoded_with_bos_skip_special: entry["decoded_with_bos_skip_special"]
                .as_str()
                .expect("decoded")
                .to_owned(),
        })
        .collect()
}

/// Runs `check` on every case with every tokenizer, prints each failure and the pass counts,
/// fails if any failed.
fn check_all(mode: &str, check: impl Fn(&Tokenizer, &Case) -> Result<(), String>) {
    let cases = cases();
    let mut failures = Vec::new();
    for (label, tokenizer) in tokenizers() {
        let before = failures.len();
        for case in &cases {
            if let Err(why) = check(tokenizer, case) {
                failures.push(format!("{label}: {:?}: {why}", case.text));
            }
        }
        let passed = cases.len() - (failures.len() - before);
        println!("{label}: {mode}: {passed}/{} texts pass", cases.len());
    }
    assert!(
        failures.is_empty(),
        "{mode}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn compare(got: &[u32], want: &[u32]) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("got {got:?}, want {want:?}"))
    }
}

#[test]
fn metadata_matches_the_fixture() {
    for (label, tok) in tokenizers() {
        assert_eq!(tok.n_vocab(), 262144, "{label}");
        assert_eq!((tok.bos(), tok.eos()), (2, 1), "{label}");
        assert_eq!(tok.token_id("<start_of_turn>"), Some(105), "{label}");
        assert_eq!(tok.token_id("<end_of_turn>"), Some(106), "{label}");
        assert!(tok.is_control(105) && tok.is_control(2), "{label}");
        assert!(!tok.is_control(107) && !tok.is_control(9259), "{label}");
        assert_eq!(tok.piece(236743), Some("\u{2581}"), "{label}");
        assert_eq!(
            tok.token_bytes(236743).as_deref(),
            Some(&b" "[..]),
            "{label}"
        );
        assert_eq!(tok.token_bytes(138).as_deref(), Some(&b"  "[..]), "{label}");
        let newline_byte = tok.token_id("<0x0A>").and_then(|id| tok.token_bytes(id));
        assert_eq!(newline_byte.as_deref(), Some(&b"\n"[..]), "{label}");
        assert!(tok.add_bos_by_default(), "{label}");
    }
}

#[test]
fn encode_parse_special_no_bos() {
    check_all("ids (parse_special, no BOS)", |tok, case| {
        compare(
            &tok.encode(&case.text, false, true)
                .map_err(|e| e.to_string())?,
            &case.ids,
        )
    });
}

#[test]
fn encode_with_bos() {
    check_all("ids_with_bos", |tok, case| {
        compare(
            &tok.encode(&case.text, true, true)
                .map_err(|e| e.to_string())?,
            &case.ids_with_bos,
        )
    });
}

#[test]
fn encode_split_special() {
    check_all("ids_split_special (parse_special = false)", |tok, case| {
        compare(
            &tok.encode(&case.text, false, false)
                .map_err(|e| e.to_string())?,
            &case.ids_split_special,
        )
    });
}

#[test]
fn decode_roundtrips() {
    check_all("decode", |tok, case| {
        let decoded = tok.decode(&case.ids, false).map_err(|e| e.to_string())?;
        if decoded != case.text {
            return Err(format!("decode(ids) = {decoded:?}"));
        }
        let skipped = tok
            .decode(&case.ids_with_bos, true)
            .map_err(|e| e.to_string())?;
        if skipped != case.decoded_with_bos_skip_special {
            return Err(format!("decode(ids_with_bos, skip_special) = {skipped:?}"));
        }
        Ok(())
    });
}

#[test]
fn stream_decoder_matches_decode() {
    check_all("stream", |tok, case| {
        for ids in [&case.ids, &case.ids_with_bos, &case.ids_split_special] {
            let mut stream = StreamDecoder::new();
            let mut text = String::new();
            for &id in ids.iter() {
                let chunk = stream.push(tok, id);
                if chunk.contains('\u{FFFD}') {
                    return Err(format!("chunk {chunk:?} after token {id} has U+FFFD"));
                }
                text.push_str(&chunk);
            }
            text.push_str(&stream.flush());
            let whole = tok.decode(ids, false).map_err(|e| e.to_string())?;
            if text != whole {
                return Err(format!("streamed {text:?} != decoded {whole:?}"));
            }
        }
        Ok(())
    });
}

#[test]
fn bad_ids_are_errors() {
    for (label, tok) in tokenizers() {
        assert!(tok.decode(&[9259, 262144], false).is_err(), "{label}");
        assert!(tok.token_bytes(262144).is_none() && tok.piece(u32::MAX).is_none());
        let mut stream = StreamDecoder::new();
        assert_eq!(stream.push(tok, u32::MAX), "\u{FFFD}", "{label}");
    }
}

/// With RG_GEMMA3_HF_JSON: random strings made of pieces of the reference texts give the same
/// ids on both paths, and decode back to the text.
#[test]
fn random_text_both_paths_agree() {
    let [(_, spm), (_, hf)] = tokenizers() else {
        return;
    };
    let cases = cases();
    // Fragments: every reference text cut into runs of 1 to 6 characters (the run length
    // varies from text to text).
    let mut fragments: Vec<String> = Vec::new();
    for case in &cases {
        let chars: Vec<char> = case.text.chars().collect();
        let run = 1 + case.text.len() % 6;
        fragments.extend(
            chars
                .chunks(run)
                .map(|chunk| chunk.iter().collect::<String>()),
        );
    }
    fragments.retain(|f| !f.contains('\u{2581}'));
    let mut next = xorshift(0x2545_F491_4F6C_DD1Du64);
    let mut checked = 0;
    for _ in 0..3000 {
        let len = (next() % 16) as usize;
        let text: String = (0..len)
            .map(|_| fragments[(next() % fragments.len() as u64) as usize].as_str())
            .collect();
        for parse_special in [true, false] {
            let a = spm.encode(&text, false, parse_special).unwrap();
            let b = hf.encode(&text, false, parse_special).unwrap();
            assert_eq!(a, b, "{text:?} parse_special={parse_special}");
            assert_eq!(spm.decode(&a, false).unwrap(), text);
            checked += 1;
        }
    }
    println!("{checked} random encodings agree");
}

/// With RG_GEMMA3_HF_JSON: every control and user-defined token, written in the text, is that
/// one token on both paths (and both paths agree when control pieces are not parsed).
#[test]
fn every_special_token_agrees() {
    let [(_, spm), (_, hf)] = tokenizers() else {
        return;
    };
    let mut checked = 0;
    for id in 0..spm.n_vocab() as u32 {
        let piece = spm.piece(id).unwrap();
        let is_special = spm.is_control(id) || (piece.starts_with('<') && piece.ends_with('>'));
        if !is_special || piece.starts_with("<0x") {
            continue;
        }
        let text = format!("x{piece}y");
        for parse_special in [true, false] {
            let a = spm.encode(&text, false, parse_special).unwrap();
            let b = hf.encode(&text, false, parse_special).unwrap();
            assert_eq!(a, b, "{text:?} parse_special={parse_special}");
        }
        if spm.is_control(id) {
            assert!(
                spm.encode(&text, false, true).unwrap().contains(&id),
                "{piece}"
            );
        }
        checked += 1;
    }
    assert!(checked > 100, "only {checked} special pieces");
    println!("{checked} special pieces agree");
}

/// With RG_GEMMA3_HF_JSON: a generated corpus of mixed scripts, whitespace runs, digits,
/// characters only byte fallback can encode, and control pieces gives the same ids on both
/// paths (the evidence that makes the tokenizer.ggml path the default for Gemma files).
#[test]
fn generated_corpus_both_paths_agree() {
    let [(_, spm), (_, hf)] = tokenizers() else {
        return;
    };
    const PIECES: &[&str] = &[
        // Scripts.
        "Hello",
        "world",
        "Привет",
        "мир",
        "γειά σου",
        "مرحبا بالعالم",
        "नमस्ते",
        "你好世界",
        "こんにちは",
        "カタカナ",
        "안녕하세요",
        "สวัสดีครับ",
        "שלום",
        "Ελληνικά",
        "Ünïcödé",
        "naïve café",
        "straße",
        "İstanbul",
        "ǅ",
        "ﬁ",
        "Ⅻ",
        "①",
        "ℌ𝔢𝔩𝔩𝔬",
        // Whitespace runs.
        " ",
        "  ",
        "   ",
        "        ",
        "\t",
        "\t\t",
        "\n",
        "\n\n",
        "\n\n\n",
        " \n ",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "\u{2009}",
        "\u{200b}",
        // Digits and numbers.
        "0",
        "7",
        "42",
        "1234567890",
        "3.14159",
        "1,000,000",
        "-12",
        "2026-12-02",
        "0x1F",
        // Only byte fallback (or rare pieces) can encode these.
        "🦀",
        "🧬🧪",
        "\u{E000}",
        "\u{F8FF}",
        "\u{10FFFD}",
        "\u{1F9FF}",
        "e\u{301}",
        "\u{7f}",
        "\u{1}",
        "\u{fffd}",
        "𓀀",
        "ꙮ",
        // Code and punctuation.
        "fn main() {",
        "}",
        "<div>",
        "</div>",
        "&amp;",
        "==",
        "->",
        "::",
        "\\",
        "\"",
        "'",
        "...",
        // Control pieces.
        "<start_of_turn>",
        "<end_of_turn>",
        "<bos>",
        "<eos>",
        "<pad>",
        "<unk>",
        "<mask>",
        "<start_of_image>",
    ];
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15u64);
    let mut checked = 0;
    for _ in 0..10_000 {
        let len = 1 + (next() % 24) as usize;
        let mut text = String::new();
        for _ in 0..len {
            match next() % 8 {
                // A random run of digits.
                0 => {
                    let n = 1 + next() % 9;
                    for _ in 0..n {
                        text.push(char::from(b'0' + (next() % 10) as u8));
                    }
                }
                // A random code point (valid, not a surrogate).
                1 => {
                    let c = char::from_u32((next() % 0x3_0000) as u32).unwrap_or('\u{fffd}');
                    text.push(c);
                }
                _ => text.push_str(PIECES[(next() % PIECES.len() as u64) as usize]),
            }
        }
        for parse_special in [true, false] {
            let a = spm.encode(&text, false, parse_special).unwrap();
            let b = hf.encode(&text, false, parse_special).unwrap();
            assert_eq!(a, b, "{text:?} parse_special={parse_special}");
            checked += 1;
        }
    }
    println!("{checked} generated encodings agree");
}

/// A xorshift64* generator: reproducible pseudo-random numbers for the generated texts.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
