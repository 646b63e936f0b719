//! The GGUF SentencePiece tokenizer against the Hugging Face reference ids in
//! tests/fixtures/tokenizer/tokenizer_reference.json (40 texts, Gemma 3 vocabulary; see the
//! README there). Needs the real Gemma 3 270M GGUF, whose path comes from RG_GEMMA3_GGUF.

use rgemma::gguf::GgufFile;
use rgemma::tokenizer::{StreamDecoder, Tokenizer};
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tokenizer/tokenizer_reference.json"
);

fn load_tokenizer() -> Option<Tokenizer> {
    let Some(path) = std::env::var_os("RG_GEMMA3_GGUF") else {
        println!("skipped: RG_GEMMA3_GGUF not set");
        return None;
    };
    let file = GgufFile::open(&path).expect("open RG_GEMMA3_GGUF");
    let tokenizer = Tokenizer::from_gguf(&file)
        .expect("load tokenizer")
        .expect("the file has a tokenizer");
    Some(tokenizer)
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

/// Runs `check` on every case, prints each failure and the pass count, fails if any failed.
fn check_all(mode: &str, check: impl Fn(&Tokenizer, &Case) -> Result<(), String>) {
    let Some(tokenizer) = load_tokenizer() else {
        return;
    };
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(why) = check(&tokenizer, case) {
            failures.push(format!("{:?}: {why}", case.text));
        }
    }
    println!(
        "{mode}: {}/{} texts pass",
        cases.len() - failures.len(),
        cases.len()
    );
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
    let Some(tok) = load_tokenizer() else { return };
    assert_eq!(tok.n_vocab(), 262144);
    assert_eq!((tok.bos(), tok.eos()), (2, 1));
    assert_eq!(tok.token_id("<start_of_turn>"), Some(105));
    assert_eq!(tok.token_id("<end_of_turn>"), Some(106));
    assert!(
        tok.is_control(105) && tok.is_control(2) && !tok.is_control(107) && !tok.is_control(9259)
    );
    assert_eq!(tok.piece(236743), Some("\u{2581}"));
    assert_eq!(tok.token_bytes(236743).as_deref(), Some(&b" "[..]));
    assert_eq!(tok.token_bytes(138).as_deref(), Some(&b"  "[..]));
    assert_eq!(
        tok.token_id("<0x0A>")
            .and_then(|id| tok.token_bytes(id))
            .as_deref(),
        Some(&b"\n"[..])
    );
    assert!(tok.add_bos_by_default());
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
    let Some(tok) = load_tokenizer() else { return };
    assert!(tok.decode(&[9259, 262144], false).is_err());
    assert!(tok.token_bytes(262144).is_none() && tok.piece(u32::MAX).is_none());
    let mut stream = StreamDecoder::new();
    assert_eq!(stream.push(&tok, u32::MAX), "\u{FFFD}");
}
