//! `rg-run --prompt-cache` and the conversation's `-sys`, `/save` and `/load`: a restored
//! prompt or conversation must generate exactly what evaluating everything from scratch
//! generates, and a cache that cannot serve (another prompt, another model, a damaged file)
//! is reported and ignored, never trusted.

mod cli_run_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use cli_run_support::{
    convert, ids_arg, json_ids as ids, read_json, rg_run_on as rg_run, run_ok, scratch_dir,
    stderr_of as stderr, tiny_f32_gguf, tiny_tok_checkpoint, tiny_tok_gguf,
};
use rgemma::chat::{ChatTemplate, Message, Role};
use rgemma::gguf::GgufFile;
use rgemma::tokenizer::Tokenizer;

/// A prompt of `n` ids of the tiny model (vocabulary 256), varied so that its state is not
/// trivial.
fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 37 + salt * 11) % 250 + 3)
        .collect()
}

/// Sampling that depends on the sequence's history: a seeded temperature with a repetition
/// penalty (a restored prompt must leave the same penalty history behind).
const SAMPLING: [&str; 8] = [
    "--temp",
    "0.9",
    "--seed",
    "7",
    "--repeat-penalty",
    "1.3",
    "-n",
    "12",
];

/// Generates from `prompt` on `model` with `extra` flags; returns (generated ids, stderr).
fn generate(model: &Path, prompt: &[u32], extra: &[&str], tag: &str) -> (Vec<u32>, String) {
    let ids_path = scratch_dir().join(format!("cache-{tag}.json"));
    let out = run_ok(
        rg_run(model)
            .args(["--prompt-ids", &ids_arg(prompt), "-b", "7"])
            .args(SAMPLING)
            .arg("--ids-out")
            .arg(&ids_path)
            .args(extra),
    );
    (ids(&read_json(&ids_path)["generated_ids"]), stderr(&out))
}

fn cache_path(tag: &str) -> PathBuf {
    let p = scratch_dir().join(format!("{tag}.rgpc"));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn a_cached_prompt_resumes_exactly_and_serves_longer_prompts() {
    let model = tiny_f32_gguf();
    let cache = cache_path("hit");
    let cache_arg = cache.to_str().unwrap();
    let base = prompt(40, 1);
    let mut longer = base.clone();
    longer.extend(prompt(9, 2));

    let (want_base, _) = generate(&model, &base, &[], "base-plain");
    let (want_longer, _) = generate(&model, &longer, &[], "longer-plain");

    // First run: nothing cached yet; the state after the prompt is saved.
    let (got, err) = generate(&model, &base, &["--prompt-cache", cache_arg], "base-1");
    assert_eq!(got, want_base);
    assert!(err.contains("does not exist yet"), "{err}");
    assert!(
        err.contains("saved the state after 40 prompt tokens"),
        "{err}"
    );

    // The same prompt: restored whole, nothing evaluated, same tokens.
    let (got, err) = generate(&model, &base, &["--prompt-cache", cache_arg], "base-2");
    assert_eq!(got, want_base);
    assert!(err.contains("restored 40 of 40 prompt tokens"), "{err}");
    assert!(
        !err.contains("saved the state"),
        "an exact hit rewrites nothing: {err}"
    );

    // A prompt that starts with the cached one: only the rest is evaluated (read-only:
    // the file keeps the 40-token prompt).
    let before = std::fs::read(&cache).unwrap();
    let args = ["--prompt-cache", cache_arg, "--prompt-cache-ro"];
    let (got, err) = generate(&model, &longer, &args, "longer-ro");
    assert_eq!(got, want_longer);
    assert!(err.contains("restored 40 of 49 prompt tokens"), "{err}");
    assert!(err.contains("prompt eval"), "{err}");
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        before,
        "--prompt-cache-ro wrote the file"
    );

    // Without -ro the longer prompt replaces it.
    let (got, err) = generate(&model, &longer, &["--prompt-cache", cache_arg], "longer");
    assert_eq!(got, want_longer);
    assert!(
        err.contains("saved the state after 49 prompt tokens"),
        "{err}"
    );

    // A prompt that is not an extension of the cached one: evaluated in full.
    let other = prompt(30, 5);
    let (want_other, _) = generate(&model, &other, &[], "other-plain");
    let args = ["--prompt-cache", cache_arg, "--prompt-cache-ro"];
    let (got, err) = generate(&model, &other, &args, "other");
    assert_eq!(got, want_other);
    assert!(err.contains("holds another prompt (49 tokens"), "{err}");
}

#[test]
fn parallel_continuations_resume_from_the_cache() {
    let model = tiny_f32_gguf();
    let cache = cache_path("parallel");
    let cache_arg = cache.to_str().unwrap();
    let p = prompt(25, 3);
    let continuations = |extra: &[&str], tag: &str| {
        let ids_path = scratch_dir().join(format!("cache-np-{tag}.json"));
        let out = run_ok(
            rg_run(&model)
                .args(["--prompt-ids", &ids_arg(&p), "-np", "3"])
                .args(SAMPLING)
                .arg("--ids-out")
                .arg(&ids_path)
                .args(extra),
        );
        (read_json(&ids_path)["continuations"].clone(), stderr(&out))
    };
    let (want, _) = continuations(&[], "plain");
    let (got, err) = continuations(&["--prompt-cache", cache_arg], "first");
    assert_eq!(got, want);
    assert!(
        err.contains("saved the state after 25 prompt tokens"),
        "{err}"
    );
    let (got, err) = continuations(&["--prompt-cache", cache_arg], "second");
    assert_eq!(got, want);
    assert!(err.contains("restored 25 of 25 prompt tokens"), "{err}");
}

#[test]
fn a_foreign_or_damaged_cache_is_reported_and_ignored() {
    let model = tiny_f32_gguf();
    let p = prompt(20, 4);
    let (want, _) = generate(&model, &p, &[], "bad-plain");

    // Made by another model (the bundled tiny-fortunes) for the same ids.
    let foreign = cache_path("foreign");
    let other_model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-fortunes-q8_0.gguf");
    let args = ["--prompt-cache", foreign.to_str().unwrap()];
    let (_, err) = generate(&other_model, &p, &args, "foreign-make");
    assert!(err.contains("saved the state"), "{err}");
    let (got, err) = generate(&model, &p, &args, "foreign-use");
    assert_eq!(got, want);
    assert!(err.contains("saved from another model"), "{err}");
    // ... and then replaced by this model's.
    let (got, err) = generate(&model, &p, &args, "foreign-again");
    assert_eq!(got, want);
    assert!(err.contains("restored 20 of 20"), "{err}");

    // Damaged copies of a good cache: a byte of the token list, a byte of the state, a
    // truncated file, something else altogether.
    let good = std::fs::read(&foreign).unwrap();
    let token_byte = 16 + 4 * 3;
    let state_byte = good.len() - 1000;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "tokens",
            flip(&good, token_byte),
            "checksum mismatch in the token list",
        ),
        ("state", flip(&good, state_byte), "checksum mismatch"),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "invalid state",
        ),
        (
            "other",
            b"GGUF\x03\0\0\0 not a cache".to_vec(),
            "not an rgemma prompt cache",
        ),
    ];
    for (tag, bytes, says) in cases {
        let path = cache_path(&format!("damaged-{tag}"));
        std::fs::write(&path, &bytes).unwrap();
        let args = [
            "--prompt-cache",
            path.to_str().unwrap(),
            "--prompt-cache-ro",
        ];
        let (got, err) = generate(&model, &p, &args, &format!("damaged-{tag}"));
        assert_eq!(got, want, "{tag}");
        assert!(
            err.contains("ignored") && err.contains(says),
            "{tag}: {err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{tag}: -ro rewrote it"
        );
    }
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= 0x5a;
    b
}

#[test]
fn prompt_cache_flags_that_cannot_work_are_refused() {
    let model = tiny_f32_gguf();
    let cache = cache_path("refused");
    let c = cache.to_str().unwrap();
    for (args, says) in [
        (vec!["-p", "x", "-cnv", "--prompt-cache", c], "/save FILE"),
        (
            vec![
                "--prompt-ids",
                "3,4",
                "--logits-out",
                "l.npy",
                "--prompt-cache",
                c,
            ],
            "--logits-out",
        ),
        (
            vec!["--prompt-ids", "3,4", "--prompt-cache-ro"],
            "--prompt-cache",
        ),
        (
            vec!["--prompt-ids", "3,4", "-sys", "be brief"],
            "--conversation",
        ),
    ] {
        let out = rg_run(&model).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!cache.exists());
}

/// Runs `rg-run -cnv` on the tokenizer model with `stdin`; returns (stderr, turns json).
fn chat(stdin: &str, extra: &[&str], tag: &str) -> (String, Vec<serde_json::Value>) {
    let ids_path = scratch_dir().join(format!("cache-chat-{tag}.json"));
    let mut child = rg_run(&tiny_tok_gguf())
        .args(["-cnv", "--temp", "0", "-n", "6"])
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
    let err = stderr(&out);
    assert!(out.status.success(), "rg-run -cnv failed:\n{err}");
    let turns = read_json(&ids_path)["turns"].as_array().unwrap().clone();
    (err, turns)
}

fn tokenizer() -> Tokenizer {
    let file = GgufFile::open(tiny_tok_gguf()).unwrap();
    Tokenizer::from_gguf(&file).unwrap().unwrap()
}

#[test]
fn a_saved_conversation_resumes_where_it_stopped() {
    // Two turns in one session.
    let (_, whole) = chat("hi\nhow are you\n", &[], "whole");
    assert_eq!(whole.len(), 2);

    // The first turn, saved; then a new process loads it and asks the second.
    let saved = cache_path("conversation");
    let s = saved.display();
    let (err, first) = chat(&format!("hi\n/save {s}\n"), &[], "save");
    assert!(err.contains("saved the conversation"), "{err}");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0], whole[0]);
    let (err, second) = chat(&format!("/load {s}\nhow are you\n"), &[], "load");
    assert!(err.contains("loaded a conversation"), "{err}");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["prompt_ids"], whole[1]["prompt_ids"]);
    assert_eq!(second[0]["generated_ids"], whole[1]["generated_ids"]);

    // Commands that fail say so and the chat goes on.
    let (err, turns) = chat(
        "/load /nonexistent/conversation\n/save\nhi\n",
        &[],
        "bad-commands",
    );
    assert!(err.contains("error: /nonexistent/conversation"), "{err}");
    assert!(err.contains("error: /save needs a file name"), "{err}");
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0], whole[0]);
}

#[test]
fn a_system_prompt_is_folded_into_the_first_turn() {
    let (_, turns) = chat("hi\n", &["-sys", "Be brief."], "system");
    let tok = tokenizer();
    let template = ChatTemplate::new(&tok).unwrap();
    let want = template
        .render(
            &tok,
            &[
                Message {
                    role: Role::System,
                    content: "Be brief.".into(),
                },
                Message {
                    role: Role::User,
                    content: "hi".into(),
                },
            ],
        )
        .unwrap();
    assert_eq!(ids(&turns[0]["prompt_ids"]), want);
    // What the file's Jinja template writes, tokenized whole.
    let text = "<start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\n";
    assert_eq!(want, tok.encode(text, true, true).unwrap());
}

#[test]
fn a_chat_template_other_than_gemmas_is_refused() {
    // The tiny checkpoint with a ChatML template beside its tokenizer.
    let ckpt = tiny_tok_checkpoint("tiny-rg-chatml");
    std::fs::write(
        ckpt.join("chat_template.jinja"),
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    )
    .unwrap();
    let gguf = scratch_dir().join("tiny-rg-chatml.gguf");
    convert(&ckpt, &gguf);

    let mut child = rg_run(&gguf)
        .arg("-cnv")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("not Gemma's turn format") && err.contains("<|im_start|>"),
        "{err}"
    );
}
