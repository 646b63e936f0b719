//! The engine at the real recurrentgemma-9b widths without its 17 GB: a checkpoint with the
//! 9B geometry (hidden 4096, 16 heads of 256, one K/V head, MLP 2 × 12288, lru_width 4096 in
//! 16 gate blocks of 256, window 2048) but 3 layers (recurrent, recurrent, attention) and a
//! 512-token vocabulary, in the layout of the real Hugging Face repository (BF16 shards with
//! `model.safetensors.index.json`). Its weights come from a fixed generator (below), so the
//! 1.2 GB checkpoint is written by the test rather than stored; the official implementation's
//! logits for it are stored in `tests/fixtures/nine-b-wide/` (made by
//! `scripts/official_reference.py` from the folder that `write_checkpoint_for_reference`
//! writes). Checked: the prefill logits of every position and cached decoding with the
//! official greedy tokens, after conversion to BF16 (the checkpoint's own values, exact) and
//! to Q8_0 (within the quantization's error).

mod engine_common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine_common::{argmax, context, max_abs_diff, Reference};
use rgemma::convert::{convert, ConvertOptions, FileType};
use rgemma::model::Model;

const HIDDEN: usize = 4096;
const LRU: usize = 4096;
const MLP: usize = 12288;
const HEADS: usize = 16;
const HEAD_DIM: usize = 256;
const CONV: usize = 4;
const VOCAB: usize = 512;
const LAYERS: [&str; 3] = ["recurrent", "recurrent", "attention"];

/// How far the f32 logits may be from the official f32 ones: the official f32 pass is itself
/// up to ~2e-4 from its float64 twin at these widths (reference.json records it per prompt),
/// and summation order alone moves sums of 12288 products by as much.
const BF16_TOL: f32 = 3e-4;
/// Q8_0: largest difference and RMS difference relative to the logits' RMS.
const Q8_0_TOL: f32 = 1.0;
const Q8_0_REL_RMS: f64 = 0.08;

/// Deterministic values: a SplitMix64 stream seeded with the FNV-1a hash of the tensor's
/// name, 24 bits per value, mapped to `center + scale · U(-1/2, 1/2)` and rounded to BF16.
fn values(name: &str, n: usize, scale: f64, center: f64) -> Vec<u16> {
    let mut state = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let u = ((z >> 40) as f64 + 0.5) / (1u64 << 24) as f64 - 0.5;
            half::bf16::from_f32((center + scale * u) as f32).to_bits()
        })
        .collect()
}

/// One tensor of the checkpoint: name, shape, and the generator's scale and center.
struct Spec {
    name: String,
    shape: Vec<usize>,
    scale: f64,
    center: f64,
}

/// Gain of the blocks' output projections (linear_out, o_proj, down_proj). The residual
/// stream starts as the token's embedding times sqrt(4096) = 64, and with tied embeddings a
/// stream still dominated by it gives its own token a logit near the soft-cap and greedy
/// decoding repeats the input; blocks that write 16x more than a unit-gain projection
/// dominate the stream, as in a trained model.
const OUT_GAIN: f64 = 64.0;

/// Every tensor, with the scales of a trained-looking network: linear weights with a
/// standard deviation near 1/sqrt(fan-in) (output projections [`OUT_GAIN`] times that), norms
/// and biases of order 0.1-0.5, the RG-LRU `recurrent_param` in (-6, 2) as in the shared
/// fixtures (long- and short-memory channels).
fn specs() -> Vec<Spec> {
    let mut v = Vec::new();
    let mut add = |name: String, shape: &[usize], scale: f64, center: f64| {
        v.push(Spec {
            name,
            shape: shape.to_vec(),
            scale,
            center,
        })
    };
    // U(-s/2, s/2) has standard deviation s / sqrt(12).
    let lin = |fan_in: usize| (12.0 / fan_in as f64).sqrt();
    add(
        "model.embed_tokens.weight".into(),
        &[VOCAB, HIDDEN],
        0.125,
        0.0,
    );
    for (i, kind) in LAYERS.iter().enumerate() {
        let p = format!("model.layers.{i}.");
        add(format!("{p}temporal_pre_norm.weight"), &[HIDDEN], 1.0, 0.0);
        add(format!("{p}channel_pre_norm.weight"), &[HIDDEN], 1.0, 0.0);
        for proj in ["gate_proj", "up_proj"] {
            add(
                format!("{p}mlp_block.{proj}.weight"),
                &[MLP, HIDDEN],
                lin(HIDDEN),
                0.0,
            );
            add(format!("{p}mlp_block.{proj}.bias"), &[MLP], 0.25, 0.0);
        }
        add(
            format!("{p}mlp_block.down_proj.weight"),
            &[HIDDEN, MLP],
            OUT_GAIN * lin(MLP),
            0.0,
        );
        add(format!("{p}mlp_block.down_proj.bias"), &[HIDDEN], 0.25, 0.0);
        let t = format!("{p}temporal_block.");
        if *kind == "recurrent" {
            for lin_name in ["linear_x", "linear_y"] {
                add(
                    format!("{t}{lin_name}.weight"),
                    &[LRU, HIDDEN],
                    lin(HIDDEN),
                    0.0,
                );
                add(format!("{t}{lin_name}.bias"), &[LRU], 0.25, 0.0);
            }
            add(
                format!("{t}linear_out.weight"),
                &[HIDDEN, LRU],
                OUT_GAIN * lin(LRU),
                0.0,
            );
            add(format!("{t}linear_out.bias"), &[HIDDEN], 0.25, 0.0);
            add(format!("{t}conv_1d.weight"), &[LRU, 1, CONV], 1.0, 0.0);
            add(format!("{t}conv_1d.bias"), &[LRU], 0.25, 0.0);
            add(format!("{t}rg_lru.recurrent_param"), &[LRU], 8.0, -2.0);
            let bw = LRU / HEADS;
            for gate in ["input_gate", "recurrent_gate"] {
                add(
                    format!("{t}rg_lru.{gate}_weight"),
                    &[HEADS, bw, bw],
                    lin(bw),
                    0.0,
                );
                add(format!("{t}rg_lru.{gate}_bias"), &[HEADS, bw], 0.25, 0.0);
            }
        } else {
            add(
                format!("{t}q_proj.weight"),
                &[HEADS * HEAD_DIM, HIDDEN],
                lin(HIDDEN),
                0.0,
            );
            for kv in ["k_proj", "v_proj"] {
                add(
                    format!("{t}{kv}.weight"),
                    &[HEAD_DIM, HIDDEN],
                    lin(HIDDEN),
                    0.0,
                );
            }
            add(
                format!("{t}o_proj.weight"),
                &[HIDDEN, HEADS * HEAD_DIM],
                OUT_GAIN * lin(HEADS * HEAD_DIM),
                0.0,
            );
            add(format!("{t}o_proj.bias"), &[HIDDEN], 0.25, 0.0);
        }
    }
    add("model.final_norm.weight".into(), &[HIDDEN], 1.0, 0.0);
    v
}

/// Writes one BF16 safetensors shard (header, then the tensors in order).
fn write_shard(path: &Path, specs: &[&Spec]) -> u64 {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for s in specs {
        let bytes = 2 * s.shape.iter().product::<usize>() as u64;
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": s.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    for s in specs {
        let vals = values(&s.name, s.shape.iter().product(), s.scale, s.center);
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        f.write_all(&bytes).unwrap();
    }
    f.flush().unwrap();
    offset
}

/// The checkpoint folder: config.json with the 9B's settings but 3 layers and a 512-token
/// vocabulary, generation_config.json, two BF16 shards and their index.
fn write_checkpoint(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["RecurrentGemmaForCausalLM"],
        "attention_bias": false,
        "attention_window_size": 2048,
        "block_types": LAYERS,
        "bos_token_id": 2,
        "conv1d_width": CONV,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "head_dim": HEAD_DIM,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * MLP,
        "logits_soft_cap": 30.0,
        "lru_width": LRU,
        "model_type": "recurrent_gemma",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS.len(),
        "num_key_value_heads": 1,
        "partial_rotary_factor": 0.5,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
        "vocab_size": VOCAB,
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}"#,
    )
    .unwrap();
    let all = specs();
    // Shard 1: the embedding and layer 0; shard 2: the rest (as the real repository splits
    // by size, tensors never straddle shards).
    let (first, second): (Vec<&Spec>, Vec<&Spec>) = all
        .iter()
        .partition(|s| s.name.starts_with("model.embed") || s.name.contains(".layers.0."));
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut total = 0;
    let mut map = serde_json::Map::new();
    for (file, specs) in names.iter().zip([&first, &second]) {
        total += write_shard(&dir.join(file), specs);
        for s in specs.iter() {
            map.insert(s.name.clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
}

fn scratch() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nine-b-wide-{}", std::process::id()))
}

/// Converts the generated checkpoint to `ft` and loads it (the GGUF is removed once mapped).
fn model(checkpoint: &Path, ft: FileType) -> Arc<Model> {
    let out = scratch().join(format!("nine-b-wide-{}.gguf", ft.name()));
    let mut opts = ConvertOptions::new(checkpoint, &out, ft);
    opts.force = true;
    convert(&opts, &mut |_| {}).unwrap_or_else(|e| panic!("converting to {}: {e}", ft.name()));
    let m = Arc::new(Model::load(&out).unwrap());
    let _ = std::fs::remove_file(&out);
    m
}

/// Prefill of every prompt (every row) and cached decoding fed with the official greedy
/// tokens; returns the largest difference and the RMS of the differences relative to the
/// RMS of the logits. `greedy` also requires the same argmax.
fn check(m: &Arc<Model>, r: &Reference, tol: f32, greedy: bool, what: &str) -> (f32, f64) {
    let n_vocab = m.n_vocab();
    assert_eq!(n_vocab, VOCAB);
    let mut worst = 0.0f32;
    let (mut err2, mut ref2) = (0.0f64, 0.0f64);
    let mut tally = |got: &[f32], want: &[f32]| {
        for (g, w) in got.iter().zip(want) {
            err2 += ((g - w) as f64).powi(2);
            ref2 += (*w as f64).powi(2);
        }
    };
    for k in r.prompts() {
        let ids = r.ids(&format!("p{k}.input_ids"));
        let (want, _) = r.f32s(&format!("p{k}.prefill_logits"));
        // 16-row chunks as well as one call: the chunked scan and attention are checked too.
        for bs in [16, 512] {
            let mut ctx = context(m, bs);
            ctx.eval(&ids, true).unwrap();
            for t in 0..ids.len() {
                let row = t * n_vocab..(t + 1) * n_vocab;
                let (got, want) = (&ctx.all_logits()[row.clone()], &want[row]);
                let d = max_abs_diff(got, want);
                assert!(d <= tol, "{what} p{k} batch {bs} row {t}: |diff| {d}");
                tally(got, want);
                worst = worst.max(d);
            }
        }
        let gen = r.ids(&format!("p{k}.gen_tokens"));
        let (first, _) = r.f32s(&format!("p{k}.prefill_last_logits_cached"));
        let (decode, _) = r.f32s(&format!("p{k}.decode_logits"));
        let mut ctx = context(m, 512);
        if ids.len() > 1 {
            ctx.eval(&ids[..ids.len() - 1], false).unwrap();
        }
        ctx.eval(&ids[ids.len() - 1..], false).unwrap();
        let d = max_abs_diff(ctx.logits(), &first);
        assert!(d <= tol, "{what} p{k} last prompt token: |diff| {d}");
        if greedy {
            assert_eq!(argmax(ctx.logits()), gen[0], "{what} p{k} first token");
        }
        for (i, &tok) in gen.iter().enumerate() {
            ctx.eval(&[tok], false).unwrap();
            let want = &decode[i * n_vocab..(i + 1) * n_vocab];
            let d = max_abs_diff(ctx.logits(), want);
            assert!(d <= tol, "{what} p{k} decode step {i}: |diff| {d}");
            tally(ctx.logits(), want);
            worst = worst.max(d);
            if let (true, Some(&next)) = (greedy, gen.get(i + 1)) {
                assert_eq!(argmax(ctx.logits()), next, "{what} p{k} decode step {i}");
            }
        }
    }
    (worst, (err2 / ref2).sqrt())
}

#[test]
fn nine_b_widths_match_the_official_implementation() {
    let dir = scratch().join("checkpoint");
    write_checkpoint(&dir);
    let r = Reference::open("nine-b-wide");
    let m = model(&dir, FileType::BF16);
    let (worst, rel) = check(&m, &r, BF16_TOL, true, "BF16");
    eprintln!("9B widths, BF16 file: max |diff| {worst:e}, relative RMS {rel:e}");
    drop(m);
    // Q8_0 of the same checkpoint (the packed Q8_0 kernels at these widths): within what
    // 8-bit weights and activations cost through three blocks of gain 64, not a greedy match.
    // Observed: max 0.45 on logits of RMS 2.4, relative RMS 4 %; a wrong kernel or layout
    // gives differences of the logits' own size (relative RMS near 1).
    let m = model(&dir, FileType::Q8_0);
    let (worst, rel) = check(&m, &r, Q8_0_TOL, false, "Q8_0");
    eprintln!("9B widths, Q8_0 file: max |diff| {worst:e}, relative RMS {rel:e}");
    assert!(rel < Q8_0_REL_RMS, "Q8_0: relative RMS difference {rel}");
    let _ = std::fs::remove_dir_all(scratch());
}

/// Writes the checkpoint to `$RG_9B_WIDE_DIR` for `scripts/official_reference.py`:
/// `RG_9B_WIDE_DIR=/tmp/nbw cargo test --release --test engine_9b_wide -- --ignored`
#[test]
#[ignore]
fn write_checkpoint_for_reference() {
    let dir = std::env::var_os("RG_9B_WIDE_DIR").expect("set RG_9B_WIDE_DIR");
    write_checkpoint(Path::new(&dir));
}
