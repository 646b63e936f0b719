//! `rg-batched-bench` end to end on the bundled tiny model: the Markdown table's shape and
//! columns, the JSON fields and their arithmetic (llama-batched-bench's definitions of N_KV
//! and the speeds), the shared-prompt mode, and the errors for bad flags. Timings are only
//! checked for consistency with each other, never against a bound.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rgemma::model::{state_bytes_per_sequence, KvType, Model};
use serde_json::Value;

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-fortunes-q8_0.gguf")
}

/// Runs the tool on the tiny model with `args` after `-m`.
fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rg-batched-bench"))
        .arg("-m")
        .arg(model_path())
        .args(args)
        .output()
        .expect("spawn rg-batched-bench")
}

fn stdout_ok(args: &[&str]) -> String {
    let out = bench(args);
    assert!(
        out.status.success(),
        "rg-batched-bench {args:?} failed: {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

const SMALL: [&str; 8] = ["-npp", "8,40", "-ntg", "4", "-npl", "1,3", "-t", "2"];

/// (PP, TG, B) in the order llama-batched-bench runs them: PP outer, then TG, then B.
const EXPECTED_RUNS: [(u64, u64, u64); 4] = [(8, 4, 1), (8, 4, 3), (40, 4, 1), (40, 4, 3)];

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn markdown_table_has_llama_columns_and_one_row_per_run() {
    let text = stdout_ok(&SMALL);
    let header = text.lines().next().expect("header line");
    for part in [
        "tiny-fortunes-q8_0.gguf",
        "Q8_0",
        "threads: 2",
        "KV: f32",
        "is_pp_shared: 0",
        "state per sequence",
        "high-water mark",
    ] {
        assert!(header.contains(part), "header lacks {part:?}: {header}");
    }
    let table: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 2 + EXPECTED_RUNS.len(), "table:\n{text}");
    assert_eq!(
        cells(table[0]),
        [
            "PP",
            "TG",
            "B",
            "N_KV",
            "T_PP s",
            "S_PP t/s",
            "T_TG s",
            "S_TG t/s",
            "T s",
            "S t/s",
            "state/seq MiB",
            "peak RSS MiB"
        ]
    );
    assert!(cells(table[1])
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| ch == '-')));
    let mut last_rss = 0.0;
    for (line, &(pp, tg, b)) in table[2..].iter().zip(&EXPECTED_RUNS) {
        let c = cells(line);
        assert_eq!(c.len(), 12, "{line}");
        let num = |i: usize| -> f64 { c[i].parse().unwrap_or_else(|_| panic!("cell {i}: {line}")) };
        assert_eq!((num(0) as u64, num(1) as u64, num(2) as u64), (pp, tg, b));
        assert_eq!(num(3) as u64, b * (pp + tg), "N_KV = B*(PP+TG): {line}");
        // Three decimals each: T and T_PP + T_TG differ by at most the rounding.
        assert!((num(8) - num(4) - num(6)).abs() <= 0.0015 + 1e-9, "{line}");
        assert!(num(5) > 0.0 && num(7) > 0.0 && num(9) > 0.0, "{line}");
        assert!(num(10) > 0.0, "state per sequence: {line}");
        let rss = num(11);
        assert!(rss >= last_rss, "peak RSS is a high-water mark: {line}");
        last_rss = rss;
    }
}

fn json_runs(args: &[&str]) -> Vec<Value> {
    let text = stdout_ok(args);
    let v: Value = serde_json::from_str(&text).expect("-o json is one JSON document");
    v.as_array().expect("a JSON array").clone()
}

fn f(r: &Value, k: &str) -> f64 {
    r[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing or not a number: {r}"))
}

fn u(r: &Value, k: &str) -> u64 {
    r[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing or not an integer: {r}"))
}

#[test]
fn json_fields_follow_llama_batched_bench_arithmetic() {
    let mut args = SMALL.to_vec();
    args.extend(["-o", "json"]);
    let runs = json_runs(&args);
    assert_eq!(runs.len(), EXPECTED_RUNS.len());
    let model = Model::load(model_path()).unwrap();
    for (r, &(pp, tg, b)) in runs.iter().zip(&EXPECTED_RUNS) {
        assert_eq!((u(r, "pp"), u(r, "tg"), u(r, "pl")), (pp, tg, b));
        assert_eq!(u(r, "is_pp_shared"), 0);
        assert_eq!(u(r, "n_threads"), 2);
        assert_eq!(u(r, "n_batch"), 512);
        assert_eq!(r["kv_type"], "f32");
        assert_eq!(r["model_filename"], "tiny-fortunes-q8_0.gguf");
        assert_eq!(
            u(r, "model_size"),
            std::fs::metadata(model_path()).unwrap().len()
        );
        assert_eq!(
            u(r, "state_bytes_per_seq"),
            state_bytes_per_sequence(model.hparams(), KvType::F32) as u64
        );
        let (t_pp, t_tg) = (f(r, "t_pp"), f(r, "t_tg"));
        assert!(t_pp > 0.0 && t_tg > 0.0, "{r}");
        assert_eq!(u(r, "n_kv"), b * (pp + tg));
        assert!(close(f(r, "speed_pp"), (b * pp) as f64 / t_pp), "{r}");
        assert!(close(f(r, "speed_tg"), (b * tg) as f64 / t_tg), "{r}");
        assert!(close(f(r, "t"), t_pp + t_tg), "{r}");
        assert!(
            close(f(r, "speed"), (b * (pp + tg)) as f64 / f(r, "t")),
            "{r}"
        );
        if cfg!(target_os = "linux") {
            assert!(close(
                f(r, "peak_rss_mib"),
                u(r, "vm_hwm_kib") as f64 / 1024.0
            ));
        }
    }
}

#[test]
fn shared_prompt_counts_the_prompt_once() {
    // -ctk is llama.cpp's spelling of --cache-type-k.
    let runs = json_runs(&[
        "-npp", "8,40", "-ntg", "4", "-npl", "1,3", "-t", "2", "-pps", "-ctk", "f16", "-o", "json",
    ]);
    assert_eq!(runs.len(), EXPECTED_RUNS.len());
    let model = Model::load(model_path()).unwrap();
    let f16_bytes = state_bytes_per_sequence(model.hparams(), KvType::F16) as u64;
    assert!(f16_bytes < state_bytes_per_sequence(model.hparams(), KvType::F32) as u64);
    for (r, &(pp, tg, b)) in runs.iter().zip(&EXPECTED_RUNS) {
        assert_eq!((u(r, "pp"), u(r, "tg"), u(r, "pl")), (pp, tg, b));
        assert_eq!(u(r, "is_pp_shared"), 1);
        assert_eq!(r["kv_type"], "f16");
        assert_eq!(u(r, "state_bytes_per_seq"), f16_bytes);
        assert_eq!(u(r, "n_kv"), pp + b * tg, "N_KV = PP + B*TG with -pps");
        assert!(close(f(r, "speed_pp"), pp as f64 / f(r, "t_pp")), "{r}");
        assert!(
            close(f(r, "speed_tg"), (b * tg) as f64 / f(r, "t_tg")),
            "{r}"
        );
        assert!(
            close(f(r, "speed"), (pp + b * tg) as f64 / f(r, "t")),
            "{r}"
        );
    }
}

#[test]
fn jsonl_is_one_object_per_line_and_small_batches_split_the_work() {
    // -b 5 is smaller than a prompt (8 rows), so batches are cut across sequences, and than
    // B = 7, so each generation step is split (5 + 2 rows).
    let text = stdout_ok(&[
        "-npp", "8", "-ntg", "3", "-npl", "3,7", "-t", "1", "-b", "5", "-o", "jsonl",
    ]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, b) in lines.iter().zip([3u64, 7]) {
        let r: Value = serde_json::from_str(line).expect("each line is a JSON object");
        assert_eq!((u(&r, "pp"), u(&r, "tg"), u(&r, "pl")), (8, 3, b));
        assert_eq!(u(&r, "n_batch"), 5);
        assert_eq!(u(&r, "n_kv"), b * 11);
    }
}

#[test]
fn bad_flags_fail_with_a_message() {
    let missing = model_path().with_file_name("no-such-model.gguf");
    let mut cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["-npl".into(), "0".into()], "-npl"),
        (vec!["-npl".into(), "1,0,4".into()], "at least 1"),
        (vec!["-npp".into(), "".into()], "npp"),
        (vec!["-ntg".into(), "0".into()], "-ntg"),
        (vec!["-npp".into(), "abc".into()], "abc"),
        (vec!["-b".into(), "0".into()], "-b"),
        (vec!["-t".into(), "0".into()], "-t"),
        (
            vec![
                "-npp".into(),
                "16777000".into(),
                "-ntg".into(),
                "1000".into(),
            ],
            "tokens per sequence",
        ),
        (vec!["--cache-type-k".into(), "q4".into()], "cache type"),
    ];
    if Path::new("/proc/meminfo").exists() {
        // Refused before allocating (where the available memory can be read).
        cases.push((vec!["-npl".into(), "1000000000000".into()], "memory"));
    }
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = bench(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed results");
        assert!(
            err.contains(needle),
            "{args:?}: stderr lacks {needle:?}:\n{err}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_rg-batched-bench"))
        .arg("-m")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-model.gguf"));
}

/// scripts/plot-batched-bench.py on this tool's JSON and on llama-batched-bench's JSONL
/// shape (a captured log with a non-JSON line): one line with a marker per point each.
#[test]
fn plot_script_draws_one_line_per_input() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: no python3");
        return;
    }
    let dir = std::env::temp_dir().join(format!("rgemma-batched-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ours = dir.join("rg.json");
    std::fs::write(
        &ours,
        stdout_ok(&[
            "-npp", "8", "-ntg", "2", "-npl", "1,2,4", "-t", "1", "-o", "json",
        ]),
    )
    .unwrap();
    let llama = dir.join("llama.jsonl");
    let mut log = String::from("main: n_kv_max = 4096, n_batch = 2048\n");
    for (pl, s) in [(1, 40.5), (2, 77.0), (4, 140.25), (8, 250.0)] {
        log += &format!(
            "{{\"n_kv_max\": 4096, \"n_batch\": 2048, \"n_ubatch\": 512, \"flash_attn\": 0, \
             \"is_pp_shared\": 0, \"n_gpu_layers\": 0, \"n_threads\": 2, \"n_threads_batch\": 2, \
             \"pp\": 8, \"tg\": 2, \"pl\": {pl}, \"n_kv\": {}, \"t_pp\": 0.1, \"speed_pp\": 80.0, \
             \"t_tg\": 0.2, \"speed_tg\": {s}, \"t\": 0.3, \"speed\": 10.0}}\n",
            pl * 10
        );
    }
    std::fs::write(&llama, log).unwrap();
    let svg = dir.join("plot.svg");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/plot-batched-bench.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(format!("rgemma={}", ours.display()))
        .arg(format!("llama.cpp={}", llama.display()))
        .arg("-o")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plot script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"));
    let polylines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("<polyline"))
        .collect();
    assert_eq!(polylines.len(), 2, "one line per input");
    let points = |l: &str| {
        l.split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .split(' ')
            .count()
    };
    assert_eq!(points(polylines[0]), 3, "rgemma: npl 1, 2, 4");
    assert_eq!(points(polylines[1]), 4, "llama.cpp: npl 1, 2, 4, 8");
    assert!(text.contains(">rgemma</text>") && text.contains(">llama.cpp</text>"));
    // A bad input spec is refused.
    let out = Command::new("python3")
        .arg(&script)
        .arg(ours.display().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=PATH"));
    std::fs::remove_dir_all(&dir).ok();
}
