//! Importance matrices end to end, on the bundled trained model:
//! - the collector sees exactly the inputs of every matrix product (checked against the first
//!   layer's input computed here from the file's embedding and norm, and by counts);
//! - `rg-imatrix` writes llama.cpp's GGUF and legacy formats, which read back alike;
//! - `rg-quantize --imatrix` quantizes each tensor with its weights (the bytes of
//!   `quantize_row_weighted` on the source rows), records the provenance keys, falls back
//!   with a warning where an entry is missing, and refuses an imatrix made for another model;
//! - bad flags and files are clear errors that leave nothing behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rgemma::gguf::{GgufFile, MetaValue};
use rgemma::imatrix::{Collector, Entry, Imatrix};
use rgemma::model::{Context, ContextParams, Model};
use rgemma::perplexity::text_chunks;
use rgemma::quant::GgmlType;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny-fortunes-f32.gguf");
const TEXT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/tiny-fortunes/heldout.txt"
);

fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("imatrix-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn f32s(g: &GgufFile, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap();
    assert_eq!(t.ty, GgmlType::F32, "{name}");
    g.tensor_data(t)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The weight matrices the forward pass multiplies: every 2-D or 3-D weight but the conv taps.
fn matrices(g: &GgufFile) -> BTreeSet<String> {
    g.tensors()
        .iter()
        .filter(|t| t.dims.len() >= 2 && !t.name.contains("ssm_conv1d"))
        .map(|t| t.name.clone())
        .collect()
}

/// Runs `n_chunks` chunks of `n_ctx` held-out tokens through `path` with a collector installed;
/// checks that every matrix saw every token once (the gates once per block) and returns the
/// model, the tokens and the collected matrix.
fn collect(path: &str, n_ctx: usize, n_chunks: usize) -> (Arc<Model>, Vec<u32>, Imatrix) {
    let model = Arc::new(Model::load(path).unwrap());
    let hp = model.hparams().clone();
    let text = std::fs::read_to_string(TEXT).unwrap();
    let tokens = text_chunks(&model, &text, n_ctx, Some(n_chunks)).unwrap();
    let params = ContextParams {
        batch_size: 40, // chunks of a prompt: several calls per chunk
        n_threads: 2,
        ..Default::default()
    };
    let mut ctx = Context::new(model.clone(), params).unwrap();
    let collector = Arc::new(Collector::new());
    ctx.set_matmul_observer(Some(collector.clone()));
    for chunk in tokens.chunks_exact(n_ctx) {
        ctx.reset();
        ctx.eval(chunk, true).unwrap();
    }
    let m = collector.imatrix(vec!["heldout".into()], n_chunks as u32, n_ctx as u32);
    let names: BTreeSet<String> = m.entries.keys().cloned().collect();
    assert_eq!(names, matrices(model.gguf()), "{path}");
    for (name, e) in &m.entries {
        let want_mats = if name.contains("_gate.weight") && name.contains("rg_") {
            hp.gate_blocks
        } else {
            1
        };
        assert_eq!(
            e.counts,
            vec![tokens.len() as u64; want_mats],
            "{path}: {name}"
        );
        assert!(e.sums.iter().all(|&s| s >= 0.0 && s.is_finite()), "{name}");
    }
    (model, tokens, m)
}

#[test]
fn the_collector_sees_every_product_input() {
    // The Q8_0 file runs the packed kernels, whose products of one input share one call.
    collect(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/tiny-fortunes-q8_0.gguf"
        ),
        64,
        2,
    );
    let (model, tokens, m) = collect(MODEL, 64, 3);
    let hp = model.hparams().clone();
    let g = model.gguf();

    // Layer 0 (recurrent) reads the normed, scaled embedding: recompute its sums here.
    assert_eq!(hp.layer_kinds[0], rgemma::model::LayerKind::Recurrent);
    assert!(hp.norm_weight_folded);
    let emb = f32s(g, "token_embd.weight");
    let norm = f32s(g, "blk.0.attn_norm.weight");
    let h = hp.hidden;
    let mut want = vec![0f64; h];
    for &t in &tokens {
        let x: Vec<f32> = emb[t as usize * h..(t as usize + 1) * h]
            .iter()
            .map(|v| v * hp.embed_scale)
            .collect();
        let ms = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / h as f64;
        let inv = 1.0 / (ms + hp.rms_eps as f64).sqrt();
        for j in 0..h {
            let y = x[j] as f64 * inv * norm[j] as f64;
            want[j] += y * y;
        }
    }
    for name in ["blk.0.rg_x.weight", "blk.0.rg_y.weight"] {
        let got = &m.entries[name].sums;
        for j in 0..h {
            let (a, b) = (got[j] as f64, want[j]);
            assert!(
                (a - b).abs() <= 1e-4 * b.abs() + 1e-6,
                "{name} column {j}: {a} collected, {b} recomputed"
            );
        }
    }
}

fn run(bin: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin).args(args).output().expect("spawn")
}

fn ok(bin: &str, args: &[&str]) -> std::process::Output {
    let out = run(bin, args);
    assert!(
        out.status.success(),
        "{bin} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const IMATRIX: &str = env!("CARGO_BIN_EXE_rg-imatrix");
const QUANTIZE: &str = env!("CARGO_BIN_EXE_rg-quantize");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn rg_imatrix_writes_both_formats_and_refuses_bad_input() {
    let dir = scratch("cli");
    let gguf = dir.join("m.gguf");
    let dat = dir.join("m.dat");
    let common = [
        "-m", MODEL, "-f", TEXT, "-c", "64", "--chunks", "3", "-t", "2",
    ];
    let out = ok(IMATRIX, &[&common[..], &["-o", s(&gguf)]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("[1]") && stdout.contains("[3]"),
        "{stdout}"
    );
    assert!(stdout.contains("Final estimate: PPL = "), "{stdout}");
    ok(
        IMATRIX,
        &[&common[..], &["-o", s(&dat), "--output-format", "dat"]].concat(),
    );

    let g = Imatrix::read(&gguf).unwrap();
    assert!(!g.legacy);
    assert_eq!((g.chunk_count, g.chunk_size), (3, 64));
    assert_eq!(g.datasets, vec![TEXT.to_string()]);
    let model = GgufFile::open(MODEL).unwrap();
    let names: BTreeSet<String> = g.entries.keys().cloned().collect();
    assert_eq!(names, matrices(&model));
    // The GGUF is llama.cpp's layout: NAME.in_sum2 [cols, n_mat] and NAME.counts [1, n_mat].
    let raw = GgufFile::open(&gguf).unwrap();
    assert_eq!(raw.get_str("general.type").unwrap(), "imatrix");
    let sums = raw.tensor("blk.0.rg_a_gate.weight.in_sum2").unwrap();
    assert_eq!(sums.dims, vec![64, 4]);
    let counts = raw.tensor("blk.0.rg_a_gate.weight.counts").unwrap();
    assert_eq!(counts.dims, vec![1, 4]);
    // One matrix: dims as ggml records them, trailing 1s dropped.
    assert_eq!(
        raw.tensor("blk.0.rg_x.weight.in_sum2").unwrap().dims,
        vec![256]
    );
    assert_eq!(
        raw.tensor("blk.0.rg_x.weight.counts").unwrap().dims,
        vec![1]
    );

    // The legacy file holds the same mean squares.
    let d = Imatrix::read(&dat).unwrap();
    assert!(d.legacy);
    assert_eq!(d.chunk_count, 3);
    for (name, e) in &g.entries {
        let l = &d.entries[name];
        for m in 0..e.n_mat() {
            let want = e.weights(m);
            let got = rgemma::imatrix::matrix_weights(l, e.cols, e.n_mat(), m).unwrap();
            for (a, b) in want.iter().zip(&got) {
                assert!(
                    (a - b).abs() <= 1e-6 * a.abs().max(1e-30),
                    "{name}: {a} vs {b}"
                );
            }
        }
    }

    // Bad input: one error line, exit 1, no output file.
    let bad_out = dir.join("bad.gguf");
    let missing = dir.join("missing.txt");
    let cases: [(Vec<&str>, &str); 6] = [
        (vec!["-m", MODEL, "-f", s(&missing)], "missing.txt"),
        (vec!["-m", TEXT, "-f", TEXT], "heldout.txt"),
        (vec!["-m", MODEL, "-f", TEXT, "-c", "2"], "too small"),
        (vec!["-m", MODEL, "-f", TEXT, "--chunks", "0"], "--chunks"),
        (vec!["-m", MODEL, "-f", TEXT, "-t", "0"], "threads"),
        (
            vec!["-m", MODEL, "-f", TEXT, "--output-format", "csv"],
            "csv",
        ),
    ];
    for (args, what) in cases {
        let out = run(IMATRIX, &[&args[..], &["-o", s(&bad_out)]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: '{err}' should name {what}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!bad_out.exists(), "{args:?} left a file");
    }
}

/// The rows of `name` in the F32 model, as `[rows][cols]`.
fn source_rows(name: &str) -> (Vec<f32>, usize) {
    let g = GgufFile::open(MODEL).unwrap();
    let t = g.tensor(name).unwrap();
    (f32s(&g, name), t.dims[0] as usize)
}

fn bytes_of(path: &Path, name: &str) -> (GgmlType, Vec<u8>) {
    let g = GgufFile::open(path).unwrap();
    let t = g.tensor(name).unwrap();
    (t.ty, g.tensor_data(t).to_vec())
}

#[test]
fn rg_quantize_uses_the_weights_and_records_where_they_came_from() {
    let dir = scratch("quantize");
    let imx = dir.join("calib.gguf");
    ok(
        IMATRIX,
        &[
            "-m",
            MODEL,
            "-f",
            TEXT,
            "-c",
            "64",
            "--chunks",
            "4",
            "-t",
            "2",
            "-o",
            s(&imx),
        ],
    );
    let m = Imatrix::read(&imx).unwrap();
    let with = dir.join("with.gguf");
    let without = dir.join("without.gguf");
    ok(
        QUANTIZE,
        &[MODEL, s(&with), "Q4_K_M", "-q", "--imatrix", s(&imx)],
    );
    ok(QUANTIZE, &[MODEL, s(&without), "Q4_K_M", "-q"]);

    // Every weighted tensor holds the weighted quantizer's bytes of its source rows.
    let mut checked = 0;
    for name in [
        "blk.0.rg_x.weight",
        "blk.2.attn_v.weight",
        "blk.1.ffn_down.weight",
        "token_embd.weight",
    ] {
        let (ty, got) = bytes_of(&with, name);
        let (ty0, plain) = bytes_of(&without, name);
        assert_eq!(ty, ty0, "{name}: the imatrix changes no K-quant type");
        let (rows, cols) = source_rows(name);
        let weights = m.entries[name].weights(0);
        let mut want = vec![0u8; got.len()];
        rgemma::quant::quantize_row_weighted(ty, &rows, &weights, &mut want).unwrap();
        assert!(
            got == want,
            "{name} ({ty}): not the weighted quantizer's bytes"
        );
        assert!(got != plain, "{name}: weights changed nothing");
        assert_eq!(weights.len(), cols);
        checked += 1;
    }
    assert_eq!(checked, 4);

    // Provenance keys, as llama-quantize writes them.
    let g = GgufFile::open(&with).unwrap();
    assert_eq!(g.get_str("quantize.imatrix.file").unwrap(), s(&imx));
    assert_eq!(g.get_str("quantize.imatrix.dataset").unwrap(), TEXT);
    assert_eq!(
        g.get("quantize.imatrix.entries_count"),
        Some(&MetaValue::I32(m.entries.len() as i32))
    );
    assert_eq!(
        g.get("quantize.imatrix.chunks_count"),
        Some(&MetaValue::I32(4))
    );
    assert!(GgufFile::open(&without)
        .unwrap()
        .get("quantize.imatrix.file")
        .is_none());

    // Q8_0 has no weighted quantizer: the imatrix changes nothing but the keys.
    let q8a = dir.join("q8a.gguf");
    let q8b = dir.join("q8b.gguf");
    ok(
        QUANTIZE,
        &[MODEL, s(&q8a), "Q8_0", "-q", "--imatrix", s(&imx)],
    );
    ok(QUANTIZE, &[MODEL, s(&q8b), "Q8_0", "-q"]);
    assert_eq!(
        bytes_of(&q8a, "blk.0.rg_x.weight"),
        bytes_of(&q8b, "blk.0.rg_x.weight")
    );

    // An entry missing: a warning, that tensor unweighted, the others still weighted.
    let mut partial = m.clone();
    partial.entries.remove("blk.0.rg_x.weight");
    let partial_path = dir.join("partial.gguf");
    partial.write_gguf(&partial_path).unwrap();
    let out_path = dir.join("partial-q4km.gguf");
    let out = ok(
        QUANTIZE,
        &[
            MODEL,
            s(&out_path),
            "Q4_K_M",
            "-q",
            "--imatrix",
            s(&partial_path),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no imatrix entry for blk.0.rg_x.weight"),
        "{err}"
    );
    assert_eq!(
        bytes_of(&out_path, "blk.0.rg_x.weight"),
        bytes_of(&without, "blk.0.rg_x.weight")
    );
    assert_eq!(
        bytes_of(&out_path, "blk.0.rg_y.weight"),
        bytes_of(&with, "blk.0.rg_y.weight")
    );
}

#[test]
fn an_imatrix_of_another_model_is_refused() {
    let dir = scratch("foreign");
    let entry = |cols: usize| Entry {
        cols,
        sums: vec![1.0; cols],
        counts: vec![10],
    };
    // Same names, other widths (a model with hidden 64).
    let mut narrow = Imatrix::default();
    narrow.entries.insert("blk.0.rg_x.weight".into(), entry(64));
    narrow.entries.insert("blk.0.rg_y.weight".into(), entry(64));
    // No name of this model at all.
    let mut alien = Imatrix::default();
    alien
        .entries
        .insert("blk.0.attn_qkv.weight".into(), entry(256));
    for (m, what) in [
        (narrow, "another model"),
        (alien, "names a tensor of this model"),
    ] {
        let p = dir.join("foreign.gguf");
        m.write_gguf(&p).unwrap();
        let out_path = dir.join("out.gguf");
        let out = run(
            QUANTIZE,
            &[MODEL, s(&out_path), "Q4_K_M", "-q", "--imatrix", s(&p)],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(what), "'{err}' should say {what}");
        assert!(!out_path.exists(), "a refused conversion left a file");
    }
    // Not an imatrix at all.
    let out_path = dir.join("out.gguf");
    let out = run(
        QUANTIZE,
        &[MODEL, s(&out_path), "Q4_K_M", "--imatrix", MODEL],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not an imatrix"),
        "{err}"
    );
    let out = run(
        QUANTIZE,
        &[MODEL, s(&out_path), "Q4_K_M", "--imatrix", TEXT],
    );
    assert!(!out.status.success(), "a text file is no imatrix");
    assert!(!out_path.exists());
}

/// Files written by llama.cpp's own `llama-imatrix` (GGUF and `--output-format dat`, one run
/// each on the same text), when `scripts/imatrix_interop.sh` points to them (skipped
/// otherwise: llama.cpp is not part of CI): both read, with the same entries and the same
/// mean squares, and what we write from them reads back unchanged.
#[test]
fn llama_cpp_imatrix_files_read_alike() {
    let (Ok(gguf), Ok(dat)) = (
        std::env::var("RG_LLAMA_IMATRIX_GGUF"),
        std::env::var("RG_LLAMA_IMATRIX_DAT"),
    ) else {
        eprintln!("RG_LLAMA_IMATRIX_GGUF / _DAT not set: skipped (scripts/imatrix_interop.sh)");
        return;
    };
    let g = Imatrix::read(Path::new(&gguf)).unwrap();
    let d = Imatrix::read(Path::new(&dat)).unwrap();
    assert!(!g.legacy && d.legacy);
    assert!(g.chunk_count > 0 && g.chunk_size > 0 && !g.datasets.is_empty());
    assert_eq!(
        g.entries.keys().collect::<Vec<_>>(),
        d.entries.keys().collect::<Vec<_>>()
    );
    for (name, e) in &g.entries {
        for m in 0..e.n_mat() {
            let want = e.weights(m);
            let got =
                rgemma::imatrix::matrix_weights(&d.entries[name], e.cols, e.n_mat(), m).unwrap();
            for (a, b) in want.iter().zip(&got) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1e-30),
                    "{name}: {a} vs {b}"
                );
            }
        }
    }
    let dir = scratch("llama");
    let ours = dir.join("rewritten.gguf");
    g.write_gguf(&ours).unwrap();
    assert_eq!(Imatrix::read(&ours).unwrap(), g);
    if let Ok(out) = std::env::var("RG_IMATRIX_REWRITE") {
        // For llama-quantize to read: our GGUF and our legacy .dat of llama's data.
        std::fs::copy(&ours, format!("{out}.gguf")).unwrap();
        g.write_dat(Path::new(&format!("{out}.dat"))).unwrap();
    }
    eprintln!(
        "{} entries read alike from {gguf} and {dat}",
        g.entries.len()
    );
}

/// Mean KL divergence and same-top-token share of `q` against `base` over the scored halves of
/// `tokens`' chunks (rg-perplexity's statistics, in process).
fn kl_against(base: &Arc<Model>, q: &Arc<Model>, tokens: &[u32], n_ctx: usize) -> (f64, f64) {
    use rgemma::perplexity::{log_softmax, scored_positions, KlDivergence};
    let n_vocab = base.n_vocab();
    let ctx = |m: &Arc<Model>| {
        let p = ContextParams {
            batch_size: n_ctx,
            n_threads: 2,
            ..Default::default()
        };
        Context::new(m.clone(), p).unwrap()
    };
    let (mut cb, mut cq) = (ctx(base), ctx(q));
    let mut kl = KlDivergence::default();
    let (mut lb, mut lq) = (vec![0f32; n_vocab], vec![0f32; n_vocab]);
    for chunk in tokens.chunks_exact(n_ctx) {
        cb.reset();
        cq.reset();
        cb.eval(chunk, true).unwrap();
        cq.eval(chunk, true).unwrap();
        for pos in scored_positions(n_ctx) {
            let row = pos * n_vocab..(pos + 1) * n_vocab;
            log_softmax(&cb.all_logits()[row.clone()], &mut lb);
            log_softmax(&cq.all_logits()[row], &mut lq);
            kl.add(&lb, &lq, chunk[pos + 1] as usize).unwrap();
        }
    }
    let s = kl.summary();
    (s.kld_mean.0, s.same_top_pct.0 / 100.0)
}

/// The 2- and 3-bit presets on the bundled model (256-wide rows: real Q2_K / Q3_K matrices,
/// through their dot kernels): every preset within its bound against F32 (set from
/// scripts/imatrix_quality.sh's full held-out run with about 2x margin on KL), more bits never
/// worse than fewer, and the imatrix lowering Q2_K's divergence.
#[test]
fn low_bit_presets_on_the_trained_model() {
    let dir = scratch("low-bit");
    let base = Arc::new(Model::load(MODEL).unwrap());
    let text = std::fs::read_to_string(TEXT).unwrap();
    let n_ctx = 256;
    let tokens = text_chunks(&base, &text, n_ctx, Some(4)).unwrap();
    // Calibration on other text than the scored chunks: the held-out file's tail.
    let calib = dir.join("calib.txt");
    std::fs::write(&calib, &text[text.len() / 2..]).unwrap();
    let imx = dir.join("calib.gguf");
    ok(
        IMATRIX,
        &[
            "-m",
            MODEL,
            "-f",
            s(&calib),
            "-c",
            "256",
            "--chunks",
            "20",
            "-t",
            "2",
            "-o",
            s(&imx),
        ],
    );
    let convert = |ft: rgemma::convert::FileType, imatrix: bool| {
        let out = dir.join(format!("{}-{imatrix}.gguf", ft.name()));
        let mut o = rgemma::convert::ConvertOptions::new(MODEL, &out, ft);
        o.imatrix = imatrix.then(|| imx.clone());
        rgemma::convert::convert(&o, &mut |_| {}).unwrap();
        let m = Arc::new(Model::load(&out).unwrap());
        let types: Vec<GgmlType> = m.gguf().tensors().iter().map(|t| t.ty).collect();
        (m, types)
    };
    use rgemma::convert::FileType as F;
    // (preset, max mean KL, min same-top share); full held-out run: Q2_K 0.287 / 63 %,
    // Q3_K_S 0.089 / 78 %, Q3_K_M 0.072 / 80 %, Q3_K_L 0.068 / 81 % (these 4 chunks: 0.296 /
    // 60 %, 0.091 / 78 %, 0.074 / 78 %, 0.070 / 81 %).
    let bounds = [
        (F::Q2K, 0.6, 0.5),
        (F::Q3KS, 0.25, 0.65),
        (F::Q3KM, 0.15, 0.7),
        (F::Q3KL, 0.12, 0.72),
    ];
    let mut kls = Vec::new();
    for (ft, max_kl, min_top) in bounds {
        let (m, types) = convert(ft, false);
        let want = if ft == F::Q2K {
            GgmlType::Q2K
        } else {
            GgmlType::Q3K
        };
        assert!(types.contains(&want), "{ft}: {types:?}");
        let (kl, top) = kl_against(&base, &m, &tokens, n_ctx);
        eprintln!("{ft}: mean KL {kl:.4}, same top {:.1} %", 100.0 * top);
        assert!(kl <= max_kl && top >= min_top, "{ft}: KL {kl}, top {top}");
        kls.push(kl);
    }
    assert!(
        kls[0] > kls[1] && kls[1] > kls[2] && kls[2] > kls[3],
        "{kls:?}"
    );
    let (m, _) = convert(F::Q2K, true);
    let (kl, _) = kl_against(&base, &m, &tokens, n_ctx);
    eprintln!("Q2_K + imatrix: mean KL {kl:.4}");
    assert!(
        kl < 0.95 * kls[0],
        "imatrix: {kl} against {} without",
        kls[0]
    );
}
