//! `rg-run` in text mode, on the tiny-rg weights converted together with a 512-token
//! Gemma-style BPE tokenizer (tests/cli_run_support/tokenizer-512.json): prompt tokenization,
//! streamed text, stop strings, and the conversation mode's state across turns.
//!
//! The weights are random, so the text is gibberish; what is checked is that text mode feeds
//! the model the same ids as HF `tokenizers` produces, that it generates what ids mode
//! generates for those ids, and that the printed text is the decoding of the generated ids.

mod cli_run_support;

use std::io::Write;
use std::process::{Output, Stdio};

use cli_run_support::{
    ids_arg, json_ids as ids, read_json as json, rg_run_on as rg_run, run_ok, scratch_dir,
    tiny_tok_gguf,
};
use rgemma::gguf::GgufFile;
use rgemma::tokenizer::Tokenizer;

const PROMPT: &str = "Hello there, the world is a strange place.";
/// HF `tokenizers` 0.22 `encode(PROMPT)` with tokenizer-512.json (BOS added by its template).
const PROMPT_IDS: [u32; 23] = [
    2, 303, 332, 397, 342, 380, 379, 275, 380, 383, 389, 443, 418, 375, 466, 345, 386, 334, 332,
    399, 339, 440, 497,
];
/// HF `encode("<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n")`, BOS first.
const TURN1_IDS: [u32; 16] = [
    2, 4, 509, 377, 263, 335, 336, 5, 263, 4, 340, 342, 331, 332, 339, 263,
];
/// HF `encode("<end_of_turn>\n<start_of_turn>user\nhow are you<end_of_turn>\n<start_of_turn>model\n",
/// add_special_tokens=False)`.
const TURN2_IDS: [u32; 19] = [
    5, 263, 4, 509, 377, 263, 335, 428, 492, 416, 5, 263, 4, 340, 342, 331, 332, 339, 263,
];

fn tokenizer() -> Tokenizer {
    let file = GgufFile::open(tiny_tok_gguf()).unwrap();
    Tokenizer::from_gguf(&file)
        .unwrap()
        .expect("the converted model carries a tokenizer")
}

/// The text of `ids` as a stream shows it: the bytes of the non-control tokens, concatenated,
/// with invalid UTF-8 replaced per maximal invalid sequence (`from_utf8_lossy`). (HF's
/// `decode` differs on an invalid byte-fallback run: it turns every byte of the run into
/// U+FFFD.)
fn stream_text(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut bytes = Vec::new();
    for &id in ids.iter().filter(|&&id| !tok.is_control(id)) {
        bytes.extend_from_slice(&tok.token_bytes(id).unwrap());
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs PROMPT greedily; returns (stdout, ids json).
fn greedy_text(extra: &[&str], tag: &str) -> (String, serde_json::Value) {
    let ids_path = scratch_dir().join(format!("text-{tag}.json"));
    let out = run_ok(
        rg_run(&tiny_tok_gguf())
            .args(["-p", PROMPT, "--temp", "0"])
            .arg("--ids-out")
            .arg(&ids_path)
            .args(extra),
    );
    (
        String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        json(&ids_path),
    )
}

#[test]
fn text_prompt_is_tokenized_like_hf_and_generates_like_ids_mode() {
    let (stdout, v) = greedy_text(&["-n", "20"], "basic");
    assert_eq!(ids(&v["prompt_ids"]), PROMPT_IDS.to_vec());
    let generated = ids(&v["generated_ids"]);

    // The same ids through --prompt-ids give the same tokens.
    let ids_path = scratch_dir().join("text-basic-ids.json");
    run_ok(
        rg_run(&tiny_tok_gguf())
            .args([
                "--prompt-ids",
                &ids_arg(&PROMPT_IDS),
                "-n",
                "20",
                "--temp",
                "0",
            ])
            .arg("--ids-out")
            .arg(&ids_path),
    );
    assert_eq!(ids(&json(&ids_path)["generated_ids"]), generated);

    // stdout = the prompt, then the decoded generation (control tokens hidden), then "\n".
    let text = stream_text(&tokenizer(), &generated);
    let want = format!("{PROMPT}{text}");
    let want = if want.ends_with('\n') {
        want
    } else {
        want + "\n"
    };
    assert_eq!(stdout, want);

    // --no-display-prompt drops the echo.
    let (stdout, _) = greedy_text(&["-n", "20", "--no-display-prompt"], "noecho");
    assert_eq!(stdout.trim_end_matches('\n'), text.trim_end_matches('\n'));
}

#[test]
fn stop_string_cuts_the_text_before_it() {
    let (_, v) = greedy_text(&["-n", "24", "--ignore-eos", "--no-display-prompt"], "full");
    let generated = ids(&v["generated_ids"]);
    let text = stream_text(&tokenizer(), &generated);
    // A stop string from the middle of the greedy text (3 characters at the middle character).
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    assert!(
        chars.len() >= 8,
        "greedy text too short for the test: {text:?}"
    );
    let start = chars[chars.len() / 2].0;
    let end = chars.get(chars.len() / 2 + 3).map_or(text.len(), |c| c.0);
    let stop = &text[start..end];
    let cut = text.find(stop).unwrap();

    let (stdout, v) = greedy_text(
        &[
            "-n",
            "24",
            "--ignore-eos",
            "--no-display-prompt",
            "--stop",
            stop,
        ],
        "stop",
    );
    assert_eq!(v["stop_reason"], "stop_string");
    assert_eq!(
        stdout.trim_end_matches('\n'),
        text[..cut].trim_end_matches('\n')
    );
    // The generation stopped at the token that completed the stop string.
    let n = ids(&v["generated_ids"]).len();
    assert!(n <= generated.len());
    assert_eq!(ids(&v["generated_ids"]), generated[..n].to_vec());
    let tok = tokenizer();
    assert!(stream_text(&tok, &generated[..n]).contains(stop));
    assert!(!stream_text(&tok, &generated[..n - 1]).contains(stop));

    // A stop string that never appears changes nothing.
    let (_, v) = greedy_text(
        &["-n", "24", "--ignore-eos", "--stop", "\u{1F600}never"],
        "nostop",
    );
    assert_eq!(ids(&v["generated_ids"]), generated);
}

fn chat(stdin: &str, extra: &[&str], tag: &str) -> (Output, serde_json::Value) {
    let ids_path = scratch_dir().join(format!("chat-{tag}.json"));
    let mut child = rg_run(&tiny_tok_gguf())
        .args(["-cnv", "--temp", "0"])
        .arg("--ids-out")
        .arg(&ids_path)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rg-run");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "rg-run -cnv failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out, json(&ids_path))
}

#[test]
fn conversation_keeps_the_state_across_turns() {
    let (out, v) = chat("hi\n\nhow are you\n", &["-n", "6"], "two");
    let turns = v["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2, "the empty line is skipped");
    assert_eq!(ids(&turns[0]["prompt_ids"]), TURN1_IDS.to_vec());
    assert_eq!(ids(&turns[1]["prompt_ids"]), TURN2_IDS.to_vec());
    let (g1, g2) = (
        ids(&turns[0]["generated_ids"]),
        ids(&turns[1]["generated_ids"]),
    );

    // One pass over the whole conversation so far must give the second reply.
    let mut seq = TURN1_IDS.to_vec();
    seq.extend(&g1);
    seq.extend(TURN2_IDS);
    let ids_path = scratch_dir().join("chat-oneshot.json");
    run_ok(
        rg_run(&tiny_tok_gguf())
            .args(["--prompt-ids", &ids_arg(&seq), "-n", "6", "--temp", "0"])
            .arg("--ids-out")
            .arg(&ids_path),
    );
    assert_eq!(ids(&json(&ids_path)["generated_ids"]), g2);

    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("> ") && stdout.matches("> ").count() >= 3,
        "{stdout:?}"
    );
}

#[test]
fn conversation_ends_cleanly_on_eof() {
    let (out, v) = chat("", &[], "eof");
    assert_eq!(v["turns"].as_array().unwrap().len(), 0);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("error"));
}
