//! `rg-run` end to end on the tiny-rg fixture converted to an F32 GGUF: greedy ids and logits
//! against the official references, seeded sampling, and the error paths.

mod cli_run_support;

use std::path::{Path, PathBuf};

use cli_run_support::{ids_arg, read_npy_f32, rg_run, run_ok, stderr_of, tiny_f32_gguf, Reference};

/// Parses `{"prompt_ids": [...], "generated_ids": [...], ...}`.
fn read_ids_json(path: &Path) -> (Vec<u32>, Vec<u32>, serde_json::Value) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        v[k].as_array()
            .unwrap_or_else(|| panic!("{k} missing"))
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    (ids("prompt_ids"), ids("generated_ids"), v)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn scratch(name: &str) -> PathBuf {
    let dir = cli_run_support::scratch_dir();
    dir.join(name)
}

/// Runs a prompt greedily and checks ids and every logits row against the reference.
fn check_greedy_against_reference(prompt: usize, n: usize, extra: &[&str]) {
    let reference = Reference::load();
    let p = reference.prompt(prompt);
    let tag = format!("p{prompt}_{n}_{}", extra.join("_").replace('-', ""));
    let ids_path = scratch(&format!("{tag}.json"));
    let npy_path = scratch(&format!("{tag}.npy"));
    let out = run_ok(
        rg_run()
            .arg("-m")
            .arg(tiny_f32_gguf())
            .args([
                "--prompt-ids",
                &ids_arg(&p.input_ids),
                "-n",
                &n.to_string(),
                "--temp",
                "0",
            ])
            .arg("--ids-out")
            .arg(&ids_path)
            .arg("--logits-out")
            .arg(&npy_path)
            .args(extra),
    );

    let (prompt_ids, generated, json) = read_ids_json(&ids_path);
    assert_eq!(prompt_ids, p.input_ids);
    assert_eq!(
        generated,
        p.gen_tokens[..n].to_vec(),
        "greedy tokens differ from the reference"
    );
    assert_eq!(json["stop_reason"], "max_tokens");

    // Without a tokenizer the ids are printed.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let printed: Vec<u32> = stdout
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(printed, generated);

    let (shape, data) = read_npy_f32(&npy_path);
    let t = p.input_ids.len();
    let vocab = reference.vocab;
    let rows = t + n.saturating_sub(1);
    assert_eq!(shape, vec![rows, vocab]);
    let prefill = max_abs_diff(&data[..t * vocab], &p.prefill_logits);
    assert!(prefill <= 1e-4, "prefill logits differ by {prefill}");
    if n > 1 {
        let decode = max_abs_diff(&data[t * vocab..], &p.decode_logits[..(n - 1) * vocab]);
        assert!(decode <= 1e-4, "decode logits differ by {decode}");
    }
}

#[test]
fn greedy_p1_matches_reference_ids_and_logits() {
    check_greedy_against_reference(1, 16, &[]);
}

#[test]
fn greedy_long_prompt_in_small_batches_matches_reference() {
    // 64 prompt tokens in batches of 5: several prompt chunks, window 16 crossed in prefill.
    check_greedy_against_reference(3, 16, &["-b", "5", "-t", "2"]);
}

#[test]
fn single_token_prompt_and_short_runs() {
    check_greedy_against_reference(0, 16, &[]);
    check_greedy_against_reference(2, 1, &[]);
}

#[test]
fn zero_tokens_writes_only_the_prompt_rows() {
    let reference = Reference::load();
    let p = reference.prompt(1);
    let ids_path = scratch("n0.json");
    let npy_path = scratch("n0.npy");
    run_ok(
        rg_run()
            .arg("-m")
            .arg(tiny_f32_gguf())
            .args(["--prompt-ids", &ids_arg(&p.input_ids), "-n", "0"])
            .arg("--ids-out")
            .arg(&ids_path)
            .arg("--logits-out")
            .arg(&npy_path),
    );
    let (_, generated, _) = read_ids_json(&ids_path);
    assert!(generated.is_empty());
    let (shape, data) = read_npy_f32(&npy_path);
    assert_eq!(shape, vec![p.input_ids.len(), reference.vocab]);
    assert!(max_abs_diff(&data, &p.prefill_logits) <= 1e-4);
}

fn sampled_ids(prompt: &[u32], extra: &[&str], tag: &str) -> Vec<u32> {
    let ids_path = scratch(&format!("{tag}.json"));
    run_ok(
        rg_run()
            .arg("-m")
            .arg(tiny_f32_gguf())
            .args(["--prompt-ids", &ids_arg(prompt), "-n", "24", "--ignore-eos"])
            .arg("--ids-out")
            .arg(&ids_path)
            .args(extra),
    );
    read_ids_json(&ids_path).1
}

#[test]
fn same_seed_same_output() {
    let reference = Reference::load();
    let prompt = reference.prompt(1).input_ids.clone();
    let args = [
        "--temp", "0.8", "--seed", "1234", "--top-k", "0", "--top-p", "1", "--min-p", "0",
    ];
    let a = sampled_ids(&prompt, &args, "seed_a");
    let b = sampled_ids(&prompt, &args, "seed_b");
    assert_eq!(a.len(), 24);
    assert_eq!(a, b, "the same seed must reproduce the same tokens");
}

#[test]
fn top_k_1_reproduces_the_greedy_reference_at_any_temperature() {
    let reference = Reference::load();
    let p = reference.prompt(1);
    let ids = sampled_ids(
        &p.input_ids,
        &["--temp", "1.5", "--top-k", "1", "-n", "16"],
        "topk1",
    );
    assert_eq!(ids, p.gen_tokens);
}

/// Runs rg-run expecting failure; returns (exit code, stderr).
fn run_err(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = rg_run().args(args).output().expect("spawn rg-run");
    let stderr = stderr_of(&out);
    assert!(
        !out.status.success(),
        "expected failure for {args:?}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "panic for {args:?}:\n{stderr}"
    );
    assert!(
        !stderr.contains("RUST_BACKTRACE"),
        "panic for {args:?}:\n{stderr}"
    );
    (out.status.code().unwrap_or(-1), stderr)
}

/// Our own errors: exit 1, exactly one line starting with `error: ` that contains `needle`.
fn assert_one_line_error(args: &[&str], needle: &str) {
    let os: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let (code, stderr) = run_err(&os);
    assert_eq!(code, 1, "exit code for {args:?}; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line for {args:?}, got:\n{stderr}"
    );
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert!(
        lines[0].contains(needle),
        "expected '{needle}' in: {}",
        lines[0]
    );
}

#[test]
fn errors_are_one_line_and_non_zero() {
    let model = tiny_f32_gguf();
    let model = model.to_str().unwrap();
    let missing = scratch("does-not-exist.gguf");
    assert_one_line_error(
        &["-m", missing.to_str().unwrap(), "--prompt-ids", "2,3"],
        "does-not-exist.gguf",
    );

    let dir = cli_run_support::fixture_dir();
    assert_one_line_error(
        &["-m", dir.to_str().unwrap(), "--prompt-ids", "2,3"],
        "directory",
    );

    let corrupt = scratch("corrupt.gguf");
    std::fs::write(
        &corrupt,
        b"GGUF\x03\x00\x00\x00 this is not a gguf file at all",
    )
    .unwrap();
    assert_one_line_error(
        &["-m", corrupt.to_str().unwrap(), "--prompt-ids", "2,3"],
        "",
    );
    let not_gguf = scratch("not-gguf.gguf");
    std::fs::write(&not_gguf, b"hello world, definitely not a model").unwrap();
    assert_one_line_error(
        &["-m", not_gguf.to_str().unwrap(), "--prompt-ids", "2,3"],
        "",
    );

    assert_one_line_error(&["-m", model, "--prompt-ids", "2,512"], "512");
    assert_one_line_error(&["-m", model, "--prompt-ids", "2,x"], "x");
    assert_one_line_error(&["-m", model, "--prompt-ids", ""], "empty prompt");
    assert_one_line_error(&["-m", model, "-p", ""], "empty prompt");
    assert_one_line_error(&["-m", model], "no prompt");
    assert_one_line_error(&["-m", model, "--prompt-ids", "2", "--top-p", "2"], "top-p");
    assert_one_line_error(
        &["-m", model, "--prompt-ids", "2", "--min-p", "-1"],
        "min-p",
    );
    assert_one_line_error(
        &["-m", model, "--prompt-ids", "2", "--repeat-penalty", "0"],
        "penalty",
    );
    assert_one_line_error(&["-m", model, "--prompt-ids", "2", "-n", "-5"], "n-predict");
    assert_one_line_error(
        &["-m", model, "--prompt-ids", "2", "-ctk", "q8", "-ctv", "q8"],
        "--cache-type-k 'q8': expected f32 or f16",
    );
    assert_one_line_error(
        &["-m", model, "--prompt-ids", "2", "-ctk", "f16"],
        "must be the same",
    );
    assert_one_line_error(
        &[
            "-m",
            model,
            "--prompt-ids",
            "2",
            "-ctk",
            "f16",
            "-ctv",
            "f16",
            "-ngl",
            "99",
        ],
        "runs on the CPU only",
    );
    // Text needs a tokenizer, which the converted tiny model does not carry.
    assert_one_line_error(&["-m", model, "-p", "hello"], "tokenizer");
    assert_one_line_error(
        &["-m", model, "--prompt-ids", "2", "--stop", "x"],
        "tokenizer",
    );

    // clap's own errors: exit 2, no panic.
    for args in [
        vec!["-m", model, "--prompt-ids", "2", "--no-such-flag"],
        vec!["-m", model, "--prompt-ids", "2", "--temp", "warm"],
        vec!["-m", model, "--prompt-ids", "2", "-t", "0"],
        vec!["--prompt-ids", "2"],
    ] {
        let os: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        let (code, stderr) = run_err(&os);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("error"), "{stderr}");
    }
}

#[test]
fn timings_go_to_stderr() {
    let out = run_ok(rg_run().arg("-m").arg(tiny_f32_gguf()).args([
        "--prompt-ids",
        "2,10,20",
        "-n",
        "4",
        "--temp",
        "0",
    ]));
    let stderr = stderr_of(&out);
    for what in [
        "load time",
        "prompt eval",
        "generation",
        "state memory",
        "seed",
    ] {
        assert!(stderr.contains(what), "missing '{what}' in:\n{stderr}");
    }
    assert!(stderr.contains("/     3 tokens"), "{stderr}");
    assert!(stderr.contains("/     4 tokens"), "{stderr}");
}

#[test]
fn closed_stdout_ends_an_endless_generation_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = rg_run()
        .arg("-m")
        .arg(tiny_f32_gguf())
        .args([
            "--prompt-ids",
            "2,3",
            "-n",
            "-1",
            "--ignore-eos",
            "--temp",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout); // the reader goes away, like `| head -c 16`
    let out = child.wait_with_output().unwrap();
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("error"), "{stderr}");
}
