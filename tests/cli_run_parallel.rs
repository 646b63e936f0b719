//! `rg-run -np N` (llama.cpp's `--parallel`) on the bundled tiny-fortunes model: N
//! continuations of one prompt, evaluated once, forked and decoded together in batches.
//!
//! The reference for every continuation is a single-sequence `rg-run` (the path that the
//! other `cli_run*` tests check against the official implementation): continuation i of
//! `-np N --seed S` must be token for token and byte for byte what `--seed S+i-1` prints alone.
//! That holds only if the prompt state is forked exactly, every sequence keeps its own sampler
//! and stop rules, and a sequence's logits do not depend on the other rows of its batch.

mod cli_run_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use cli_run_support::{json_ids as ids, read_json, rg_run_on, scratch_dir, stderr_of};

const PROMPT: &str = "The meaning of life is";

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-fortunes-q8_0.gguf")
}

fn rg_run() -> Command {
    rg_run_on(&model())
}

/// One successful run: its stdout and its `--ids-out` JSON.
struct Run {
    stdout: String,
    stderr: String,
    ids: serde_json::Value,
}

/// Runs rg-run on the model with `args` and `--ids-out` into a file named after `tag`.
fn run_ok(tag: &str, args: &[&str]) -> Run {
    let ids_path = scratch_dir().join(format!("parallel-{tag}.json"));
    let out = rg_run()
        .args(args)
        .arg("--ids-out")
        .arg(&ids_path)
        .output()
        .expect("spawn rg-run");
    assert!(
        out.status.success(),
        "rg-run {args:?} failed: {:?}\nstderr:\n{}",
        out.status,
        stderr_of(&out)
    );
    let ids = read_json(&ids_path);
    Run {
        stderr: stderr_of(&out),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        ids,
    }
}

/// One continuation as printed: the seed of its header and the text after the header.
#[derive(Debug)]
struct Printed {
    seed: u64,
    text: String,
}

/// Splits `-np n` output into what comes before the first header (the echoed prompt) and
/// the continuations, checking that the headers read `--- continuation i/n (seed S) ---`
/// with i = 1..n in order.
fn parse_parallel(stdout: &str, n: usize) -> (String, Vec<Printed>) {
    let mut before = String::new();
    let mut printed: Vec<Printed> = Vec::new();
    for line in stdout.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("--- continuation ") {
            let rest = rest
                .strip_suffix(") ---\n")
                .unwrap_or_else(|| panic!("malformed header {line:?}"));
            let (count, seed) = rest
                .split_once(" (seed ")
                .unwrap_or_else(|| panic!("malformed header {line:?}"));
            assert_eq!(
                count,
                format!("{}/{n}", printed.len() + 1),
                "header {line:?}"
            );
            printed.push(Printed {
                seed: seed.parse().expect("header seed"),
                text: String::new(),
            });
        } else {
            match printed.last_mut() {
                Some(p) => p.text.push_str(line),
                None => before.push_str(line),
            }
        }
    }
    assert_eq!(printed.len(), n, "continuations in:\n{stdout}");
    (before, printed)
}

/// Checks continuation `i` of a parallel run against a single run: ids, stop reason, text.
fn assert_same_as_single(par: &Run, printed: &[Printed], i: usize, single: &Run, what: &str) {
    let cont = &par.ids["continuations"][i];
    assert_eq!(
        ids(&cont["generated_ids"]),
        ids(&single.ids["generated_ids"]),
        "{what}: continuation {} ids",
        i + 1
    );
    assert_eq!(
        cont["stop_reason"],
        single.ids["stop_reason"],
        "{what}: continuation {} stop reason",
        i + 1
    );
    assert_eq!(
        printed[i].text,
        single.stdout,
        "{what}: continuation {} text",
        i + 1
    );
}

#[test]
fn greedy_continuations_are_all_the_single_greedy_output() {
    let common = ["-p", PROMPT, "-n", "24", "--temp", "0"];
    let single = run_ok(
        "greedy-single",
        &[&common[..], &["--no-display-prompt"]].concat(),
    );
    assert_eq!(ids(&single.ids["generated_ids"]).len(), 24);
    assert!(!single.stdout.trim().is_empty());

    // -b 3: the 7-token prompt goes in three batches before the fork.
    let par = run_ok(
        "greedy-np3",
        &[&common[..], &["-np", "3", "-b", "3"]].concat(),
    );
    let (before, printed) = parse_parallel(&par.stdout, 3);
    assert_eq!(before, format!("{PROMPT}\n"), "the prompt is echoed once");
    assert_eq!(ids(&par.ids["prompt_ids"]), ids(&single.ids["prompt_ids"]));
    for i in 0..3 {
        assert_same_as_single(&par, &printed, i, &single, "greedy");
    }
    assert!(
        par.stderr.contains("3 sequences"),
        "stderr:\n{}",
        par.stderr
    );

    // -np 1 is the single-sequence path: same output, no headers.
    let with_prompt = run_ok("greedy-single-prompt", &common);
    let np1 = run_ok("greedy-np1", &[&common[..], &["-np", "1"]].concat());
    assert_eq!(np1.stdout, with_prompt.stdout);
    assert_eq!(np1.ids, with_prompt.ids);
    assert!(with_prompt.stdout.starts_with(PROMPT));
    assert_eq!(&with_prompt.stdout[PROMPT.len()..], single.stdout);
}

#[test]
fn sampled_continuation_i_is_the_single_run_with_seed_plus_i() {
    // The penalty makes each sequence's history matter, not just its seed.
    let common = [
        "-p",
        PROMPT,
        "-n",
        "40",
        "--temp",
        "0.9",
        "--repeat-penalty",
        "1.1",
    ];
    let par = run_ok(
        "sampled-np3",
        &[&common[..], &["-np", "3", "--seed", "5"]].concat(),
    );
    let (before, printed) = parse_parallel(&par.stdout, 3);
    assert_eq!(before, format!("{PROMPT}\n"));
    for (i, seed) in [5u64, 6, 7].into_iter().enumerate() {
        assert_eq!(printed[i].seed, seed);
        assert_eq!(par.ids["continuations"][i]["seed"], seed);
        let single = run_ok(
            &format!("sampled-seed{seed}"),
            &[
                &common[..],
                &["--seed", &seed.to_string(), "--no-display-prompt"],
            ]
            .concat(),
        );
        assert_same_as_single(&par, &printed, i, &single, "sampled");
    }
    // Otherwise the comparison above could not tell the seeds apart.
    assert!(
        printed[0].text != printed[1].text || printed[1].text != printed[2].text,
        "the three seeds gave the same text:\n{}",
        par.stdout
    );
}

/// `-ctk f16 -ctv f16`: the printed state per sequence shrinks (the rings are most of it), and
/// continuation i of `-np 3` is still exactly the single run with the same rings and seed:
/// forking and batching do not depend on the ring type.
#[test]
fn f16_rings_shrink_the_state_and_keep_continuations_exact() {
    let f16 = ["-ctk", "f16", "-ctv", "f16"];
    let common = ["-p", PROMPT, "-n", "24", "--temp", "0.9"];
    let par = run_ok(
        "f16-np3",
        &[&common[..], &f16, &["-np", "3", "--seed", "21"]].concat(),
    );
    let (_, printed) = parse_parallel(&par.stdout, 3);
    for (i, seed) in (21u64..24).enumerate() {
        let single = run_ok(
            &format!("f16-seed{seed}"),
            &[
                &common[..],
                &f16,
                &["--seed", &seed.to_string(), "--no-display-prompt"],
            ]
            .concat(),
        );
        assert_same_as_single(&par, &printed, i, &single, "f16 rings");
        if i == 0 {
            let f32 = run_ok(
                "f32-seed21",
                &[&common[..], &["--seed", "21", "--no-display-prompt"]].concat(),
            );
            let (half, full) = (state_mib(&single.stderr), state_mib(&f32.stderr));
            assert!(
                half > 0.0 && half < 0.6 * full,
                "state with f16 rings {half} MiB, with f32 {full} MiB"
            );
            // The parallel run's slots have f16 rings too (its line is the sum of 3).
            let per_seq = state_mib(&par.stderr) / 3.0;
            assert!(
                (per_seq - half).abs() < 0.01,
                "-np 3 state {per_seq} MiB per sequence, single run {half} MiB"
            );
        }
    }
}

/// The MiB of rg-run's `state memory = X MiB` timing line.
fn state_mib(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("state memory"))
        .unwrap_or_else(|| panic!("no state memory line in:\n{stderr}"));
    let value = line
        .split('=')
        .nth(1)
        .and_then(|v| v.split_whitespace().next());
    value
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable state memory line {line:?}"))
}

#[test]
fn a_stop_string_ends_one_sequence_while_the_others_continue() {
    // The fortunes are separated by "%" lines, so "%" ends some continuations early.
    let common = ["-p", PROMPT, "-n", "40", "--temp", "0.9", "--stop", "%"];
    let par = run_ok(
        "stop-np4",
        &[&common[..], &["-np", "4", "--seed", "11"]].concat(),
    );
    let (_, printed) = parse_parallel(&par.stdout, 4);
    let mut lengths = Vec::new();
    for (i, seed) in (11u64..15).enumerate() {
        let single = run_ok(
            &format!("stop-seed{seed}"),
            &[
                &common[..],
                &["--seed", &seed.to_string(), "--no-display-prompt"],
            ]
            .concat(),
        );
        assert_same_as_single(&par, &printed, i, &single, "stop string");
        assert!(!printed[i].text.contains('%'));
        lengths.push(ids(&single.ids["generated_ids"]).len());
    }
    let reasons: Vec<&str> = (0..4)
        .map(|i| par.ids["continuations"][i]["stop_reason"].as_str().unwrap())
        .collect();
    // The setup must exercise sequences ending at different steps.
    assert!(
        reasons.contains(&"stop_string"),
        "no stop string hit: {reasons:?}"
    );
    lengths.sort_unstable();
    lengths.dedup();
    assert!(
        lengths.len() > 1,
        "all continuations ended at the same step: {reasons:?}"
    );
}

#[test]
fn prompt_ids_and_a_random_seed_are_reproducible() {
    let text = run_ok("ids-text", &["-p", PROMPT, "-n", "1", "--temp", "0"]);
    let prompt_ids = ids(&text.ids["prompt_ids"])
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");

    // No --seed: one is drawn, printed, and the continuations use it and the next ones.
    let common = ["--prompt-ids", &prompt_ids, "-n", "16", "-b", "1"];
    let par = run_ok("ids-random", &[&common[..], &["-np", "2"]].concat());
    let (before, printed) = parse_parallel(&par.stdout, 2);
    assert_eq!(before, "", "an id prompt is not echoed");
    let base = printed[0].seed;
    assert_eq!(printed[1].seed, base + 1);
    assert!(
        par.stderr.contains(&format!("seed          = {base} ")),
        "stderr:\n{}",
        par.stderr
    );
    // Every printed seed can be given back.
    let again = run_ok(
        "ids-again",
        &[&common[..], &["-np", "2", "--seed", &base.to_string()]].concat(),
    );
    assert_eq!(again.stdout, par.stdout);
    let single = run_ok(
        "ids-single",
        &[&common[..], &["--seed", &(base + 1).to_string()]].concat(),
    );
    assert_same_as_single(&par, &printed, 1, &single, "random seed");
}

#[test]
fn bad_counts_and_combinations_are_refused() {
    let logits = scratch_dir().join("parallel-refused.npy");
    let logits = logits.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["-np", "0"], "--parallel must be between 1 and 256"),
        (&["-np", "-2"], "--parallel must be between 1 and 256"),
        (
            &["--parallel", "257"],
            "--parallel must be between 1 and 256",
        ),
        (&["-np", "many"], "invalid value 'many'"),
        (&["-np", "2", "-cnv"], "not available with --conversation"),
        (
            &["-np", "2", "--logits-out", logits],
            "not available with --logits-out",
        ),
        (&["-np", "3", "-ngl", "99"], "runs on the CPU only"),
        (&["-np", "2", "--device", "cuda"], "runs on the CPU only"),
    ];
    for (args, message) in cases {
        let out = rg_run()
            .args(["-p", PROMPT, "-n", "4"])
            .args(args)
            .output()
            .expect("spawn rg-run");
        let stderr = stderr_of(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(message),
            "{args:?}: stderr:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
    assert!(!Path::new(logits).exists(), "a refused run wrote its file");
}
