//! The shipped tiny-fortunes model (models/README.md): a RecurrentGemma trained on Debian's fortunes,
//! checked against what PyTorch (transformers' RecurrentGemmaForCausalLM, float32) computed with the
//! same trained weights (models/tiny-fortunes/reference_logits.safetensors and reference.json, written
//! by scripts/train_tiny.py). Every reference sequence is shorter than the attention window (256), where
//! HF's window rule and the official one coincide.
//!
//! Also runs the `rg-run` and `rg-perplexity` binaries on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use rgemma::model::{Context, ContextParams, Model};
use rgemma::tokenizer::Tokenizer;

const F32_GGUF: &str = "models/tiny-fortunes-f32.gguf";
const Q8_GGUF: &str = "models/tiny-fortunes-q8_0.gguf";
const REF_LOGITS: &str = "models/tiny-fortunes/reference_logits.safetensors";
const REF_JSON: &str = "models/tiny-fortunes/reference.json";
const HELDOUT: &str = "models/tiny-fortunes/heldout.txt";
/// Held-out PPL of the F32 model in the models/README.md table (-c 256, whole heldout.txt).
const TABLE_PPL_F32: f64 = 43.922;

fn path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn load(rel: &str) -> Arc<Model> {
    Arc::new(Model::load(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")))
}

fn context(model: &Arc<Model>, batch_size: usize) -> Context {
    let params = ContextParams {
        batch_size,
        n_threads: 2,
        ..Default::default()
    };
    Context::new(model.clone(), params).unwrap()
}

fn reference_json() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path(REF_JSON)).unwrap()).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The tensors of a small safetensors file: name -> (dtype, shape, raw little-endian bytes).
fn read_safetensors(rel: &str) -> HashMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path(rel)).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = HashMap::new();
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap().to_string();
        let shape = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let off = info["data_offsets"].as_array().unwrap();
        let (a, b) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        out.insert(name.clone(), (dtype, shape, data[a..b].to_vec()));
    }
    out
}

/// (input ids, logits [T, vocab] row-major, vocab) of the torch reference.
fn reference_logits() -> (Vec<u32>, Vec<f32>, usize) {
    let t = read_safetensors(REF_LOGITS);
    let (dt, _, raw) = &t["input_ids"];
    assert_eq!(dt, "I64");
    let ids = raw
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect::<Vec<_>>();
    let (dt, shape, raw) = &t["logits"];
    assert_eq!(dt, "F32");
    assert_eq!(shape[0], ids.len());
    let logits = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (ids, logits, shape[1])
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[test]
fn f32_prefill_logits_match_torch_reference() {
    let model = load(F32_GGUF);
    let (ids, want, vocab) = reference_logits();
    assert_eq!(model.n_vocab(), vocab);
    assert_eq!(ids.len(), 64);
    let mut ctx = context(&model, 512);
    ctx.eval(&ids, true).unwrap();
    let diff = max_abs_diff(ctx.all_logits(), &want);
    eprintln!("F32 GGUF vs torch, 64 prefill rows: max |diff| = {diff:.3e}");
    assert!(diff <= 1e-4, "max |diff| {diff}");
    // The same rows through small batches (chunk boundaries inside the sequence).
    let mut ctx = context(&model, 7);
    ctx.eval(&ids, true).unwrap();
    let diff = max_abs_diff(ctx.all_logits(), &want);
    assert!(diff <= 1e-4, "batch 7: max |diff| {diff}");
}

#[test]
fn f32_token_by_token_logits_match_torch_reference() {
    let model = load(F32_GGUF);
    let (ids, want, vocab) = reference_logits();
    let mut ctx = context(&model, 512);
    let mut worst = 0.0f32;
    for (i, &id) in ids.iter().enumerate() {
        ctx.eval(&[id], false).unwrap();
        worst = worst.max(max_abs_diff(
            ctx.logits(),
            &want[i * vocab..(i + 1) * vocab],
        ));
    }
    eprintln!("F32 GGUF vs torch, 64 single-token steps: max |diff| = {worst:.3e}");
    assert!(worst <= 1e-4, "max |diff| {worst}");
}

#[test]
fn embedded_tokenizer_gives_the_training_ids_and_round_trips() {
    let model = load(F32_GGUF);
    let tok = Tokenizer::from_gguf(model.gguf())
        .unwrap()
        .expect("the GGUF carries a tokenizer");
    let r = reference_json();
    let prompt = r["greedy"]["prompt"].as_str().unwrap();
    assert_eq!(
        tok.encode(prompt, true, false).unwrap(),
        ids_of(&r["greedy"]["prompt_ids"])
    );
    let text = std::fs::read_to_string(path(HELDOUT)).unwrap();
    let ids = tok.encode(&text, true, false).unwrap();
    let (ref_ids, _, _) = reference_logits();
    assert_eq!(ids[..ref_ids.len()], ref_ids[..], "held-out passage ids");
    assert_eq!(tok.decode(&ids[1..], false).unwrap(), text);
}

#[test]
fn f32_greedy_decoding_matches_torch() {
    let model = load(F32_GGUF);
    let r = reference_json();
    let prompt = ids_of(&r["greedy"]["prompt_ids"]);
    let want = ids_of(&r["greedy"]["gen_ids"]);
    let margins: Vec<f64> = r["greedy"]["margins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_f64().unwrap())
        .collect();
    let mut ctx = context(&model, 512);
    ctx.eval(&prompt, false).unwrap();
    for (i, &w) in want.iter().enumerate() {
        let got = argmax(ctx.logits()) as u32;
        if margins[i] > 1e-3 {
            assert_eq!(got, w, "greedy token {i}");
        }
        // Feed the reference token so that one near-tie cannot derail the rest.
        ctx.eval(&[w], false).unwrap();
    }
}

#[test]
fn q8_0_tracks_the_torch_reference() {
    let model = load(Q8_GGUF);
    let (ids, want, vocab) = reference_logits();
    let mut ctx = context(&model, 512);
    ctx.eval(&ids, true).unwrap();
    let got = ctx.all_logits();
    let rows = ids.len();
    let same = (0..rows)
        .filter(|&i| {
            argmax(&got[i * vocab..(i + 1) * vocab]) == argmax(&want[i * vocab..(i + 1) * vocab])
        })
        .count();
    let diff = max_abs_diff(got, &want);
    eprintln!("Q8_0 GGUF vs torch F32: top-1 same in {same}/{rows} rows, max |diff| {diff:.3}");
    assert!(same * 100 >= rows * 90, "top-1 agreement {same}/{rows}");
    assert!(diff < 0.5, "max |diff| {diff}");
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rg-real-model-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

#[test]
fn rg_run_greedy_matches_torch_and_sampling_is_seeded() {
    let r = reference_json();
    let dir = tmp_dir("run");
    let ids_path = dir.join("ids.json");
    let ids_arg = ids_path.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_rg-run");

    // Greedy, through the CLI: the torch continuation (all its margins are > 1e-3, checked here).
    let prompt = r["greedy"]["prompt"].as_str().unwrap();
    assert!(r["greedy"]["margins"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m.as_f64().unwrap() > 1e-3));
    let o = run(
        bin,
        &[
            "-m",
            F32_GGUF,
            "-p",
            prompt,
            "-n",
            "32",
            "--temp",
            "0",
            "--ids-out",
            ids_arg,
        ],
    );
    let text = stdout(&o);
    let ids: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ids_path).unwrap()).unwrap();
    assert_eq!(
        ids_of(&ids["generated_ids"]),
        ids_of(&r["greedy"]["gen_ids"])
    );
    let want_text = format!("{prompt}{}", r["greedy"]["gen_text"].as_str().unwrap());
    assert!(text.starts_with(&want_text), "{text:?} vs {want_text:?}");

    // Sampling with a seed: the same text twice, 48 tokens, mostly corpus words.
    let args = [
        "-m",
        Q8_GGUF,
        "-p",
        "A fool and his money",
        "-n",
        "48",
        "--temp",
        "0.8",
        "--seed",
        "1234",
        "--ids-out",
        ids_arg,
    ];
    let a = stdout(&run(bin, &args));
    let ids: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ids_path).unwrap()).unwrap();
    let b = stdout(&run(bin, &args));
    assert_eq!(a, b, "same seed, same text");
    assert!(a.starts_with("A fool and his money"));
    let n_gen = ids["generated_ids"].as_array().unwrap().len();
    assert_eq!(n_gen, 48, "stop reason {}", ids["stop_reason"]);
    let heldout = std::fs::read_to_string(path(HELDOUT))
        .unwrap()
        .to_lowercase();
    let known: std::collections::HashSet<&str> = heldout
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let words: Vec<String> = a["A fool and his money".len()..]
        .to_lowercase()
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let hits = words.iter().filter(|w| known.contains(w.as_str())).count();
    eprintln!(
        "sampled: {a:?}\n{hits}/{} words occur in heldout.txt",
        words.len()
    );
    assert!(words.len() >= 8, "too few words: {a:?}");
    assert!(
        hits * 100 >= words.len() * 60,
        "{hits}/{} known words",
        words.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// (PPL, its standard error) from rg-perplexity's `Final estimate` line.
fn final_estimate(out: &str) -> (f64, f64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("Final estimate: PPL = "))
        .unwrap_or_else(|| panic!("no final estimate in {out:?}"));
    let rest = &line["Final estimate: PPL = ".len()..];
    let (p, se) = rest.split_once(" +/- ").unwrap();
    (p.parse().unwrap(), se.parse().unwrap())
}

/// The value after `label` on the line that starts with it, and the one after "±".
fn stat(out: &str, label: &str) -> (f64, f64) {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in {out:?}"));
    let rest = line[label.len()..].trim_start_matches([' ', ':']);
    let mut parts = rest.split('±');
    let v = parts.next().unwrap().trim().trim_end_matches('%').trim();
    let se = parts
        .next()
        .unwrap_or("0")
        .trim()
        .trim_end_matches('%')
        .trim();
    (v.parse().unwrap(), se.parse().unwrap())
}

#[test]
fn rg_perplexity_matches_torch() {
    let r = &reference_json()["perplexity"];
    let bin = env!("CARGO_BIN_EXE_rg-perplexity");
    let o = run(
        bin,
        &["-m", F32_GGUF, "-f", HELDOUT, "-c", "128", "--chunks", "4"],
    );
    let (ppl, se) = final_estimate(&stdout(&o));
    let (want, want_se) = (r["ppl"].as_f64().unwrap(), r["ppl_se"].as_f64().unwrap());
    eprintln!("rg-perplexity {ppl} +/- {se}; torch {want} +/- {want_se}");
    assert!(ppl.is_finite());
    assert!((ppl - want).abs() <= 1e-4 * want, "{ppl} vs torch {want}");
    assert!(
        (se - want_se).abs() <= 1e-3 * want_se,
        "{se} vs torch {want_se}"
    );
    // 252 scored tokens: within 4 standard errors of the full held-out figure in the README.
    assert!(
        (ppl - TABLE_PPL_F32).abs() <= 4.0 * se,
        "{ppl} +/- {se} vs table {TABLE_PPL_F32}"
    );
}

#[test]
fn kl_divergence_against_itself_is_zero_and_q8_0_is_close() {
    let dir = tmp_dir("kld");
    let base = dir.join("base.bin");
    let base_arg = base.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_rg-perplexity");
    let o = run(
        bin,
        &[
            "-m",
            F32_GGUF,
            "-f",
            HELDOUT,
            "-c",
            "64",
            "--chunks",
            "3",
            "--kl-divergence-base",
            base_arg,
        ],
    );
    let (ppl_base, _) = final_estimate(&stdout(&o));

    let o = run(
        bin,
        &[
            "-m",
            F32_GGUF,
            "--kl-divergence",
            "--kl-divergence-base",
            base_arg,
        ],
    );
    let out = stdout(&o);
    assert_eq!(stat(&out, "Mean    KLD").0, 0.0, "{out}");
    assert_eq!(stat(&out, "Same top p").0, 100.0, "{out}");
    let (ratio, _) = stat(&out, "Mean PPL(Q)/PPL(base)");
    assert!((ratio - 1.0).abs() < 1e-9, "{out}");
    let (ppl_q, _) = stat(&out, "Mean PPL(Q)");
    assert!((ppl_q - ppl_base).abs() <= 1e-4 * ppl_base, "{out}");

    let o = run(
        bin,
        &[
            "-m",
            Q8_GGUF,
            "--kl-divergence",
            "--kl-divergence-base",
            base_arg,
            "-f",
            HELDOUT,
        ],
    );
    let out = stdout(&o);
    let (kld, _) = stat(&out, "Mean    KLD");
    let (top, _) = stat(&out, "Same top p");
    eprintln!("Q8_0 vs F32 over 3 chunks of 64: KLD {kld}, same top p {top} %");
    assert!(kld > 0.0 && kld < 0.02, "{out}");
    assert!(top >= 90.0, "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rg_perplexity_errors_are_one_line() {
    let dir = tmp_dir("errors");
    let short = dir.join("short.txt");
    std::fs::write(&short, "Too short.").unwrap();
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, b"this is not a KL-divergence base file").unwrap();
    let bin = env!("CARGO_BIN_EXE_rg-perplexity");
    let cases: Vec<Vec<&str>> = vec![
        vec!["-m", "models/does-not-exist.gguf", "-f", HELDOUT],
        vec!["-m", F32_GGUF, "-f", "models/does-not-exist.txt"],
        vec!["-m", F32_GGUF],
        vec!["-m", F32_GGUF, "-f", HELDOUT, "-c", "2"],
        vec!["-m", F32_GGUF, "-f", short.to_str().unwrap(), "-c", "64"],
        vec![
            "-m",
            F32_GGUF,
            "--kl-divergence",
            "--kl-divergence-base",
            junk.to_str().unwrap(),
        ],
        vec!["-m", F32_GGUF, "-f", HELDOUT, "-c", "nope"],
        vec!["-m", HELDOUT, "-f", HELDOUT],
    ];
    for args in cases {
        let o = run(bin, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("loaded ")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].starts_with("error:"), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
