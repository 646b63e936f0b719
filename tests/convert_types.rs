//! rg-quantize on the tiny-rg fixture (and a synthetic checkpoint with 256-wide rows) to
//! every preset: metadata, tensor types per the llama-quantize rules, and every tensor
//! against the HF source within its type's error bound (convert_util::block_bound).

mod convert_util;

use convert_util::*;
use rgemma::convert::FileType;
use rgemma::gguf::{GgufFile, MetaArray, MetaValue};
use rgemma::quant::GgmlType;

/// Expected type of each tiny-rg tensor. Hidden size 64 and MLP width 96 are multiples of 32
/// but not of 256, so (llama-quantize's fallbacks) Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0;
/// the tied embedding's Q6_K becomes Q8_0 in every quantized preset.
fn tiny_expected_type(ft: FileType, name: &str, n_dims: usize) -> GgmlType {
    use GgmlType as G;
    if n_dims == 1 || name.contains("ssm_conv1d") {
        return G::F32;
    }
    if name.contains("rg_input_gate") || name.contains("rg_a_gate") {
        return match ft {
            FileType::F32 => G::F32,
            FileType::BF16 => G::BF16,
            _ => G::F16,
        };
    }
    let quantized_embd = G::Q8_0;
    match ft {
        FileType::F32 => G::F32,
        FileType::F16 => G::F16,
        FileType::BF16 => G::BF16,
        _ if name == "token_embd.weight" => quantized_embd,
        FileType::Q8_0 => G::Q8_0,
        FileType::Q4_0 => G::Q4_0,
        FileType::Q4_1 => G::Q4_1,
        FileType::Q5_0 => G::Q5_0,
        FileType::Q5_1 => G::Q5_1,
        // Q4_K_S gives the first 4 attn_v Q5_K (-> Q5_1).
        FileType::Q4KS if name.contains("attn_v") => G::Q5_1,
        FileType::Q4KS => G::Q5_0,
        FileType::Q5KS => G::Q5_1,
        FileType::Q6K => G::Q8_0,
        // Q2_K and Q3_K fall back to Q4_0. Q2_K: attn_v Q4_K (4 query heads per K/V head) ->
        // Q5_0. Q3_K_M: attn_v Q5_K (-> Q5_1), ffn_down and attn_output Q4_K (-> Q5_0).
        // Q3_K_L: attn_v, ffn_down and attn_output Q5_K (-> Q5_1).
        FileType::Q2K if name.contains("attn_v") => G::Q5_0,
        FileType::Q3KM if name.contains("attn_v") => G::Q5_1,
        FileType::Q3KM if name.contains("ffn_down") || name.contains("attn_output") => G::Q5_0,
        FileType::Q3KL
            if name.contains("attn_v")
                || name.contains("ffn_down")
                || name.contains("attn_output") =>
        {
            G::Q5_1
        }
        FileType::Q2K | FileType::Q3KS | FileType::Q3KM | FileType::Q3KL => G::Q4_0,
        FileType::Q4KM | FileType::Q5KM => {
            // use_more_bits over 6 ffn_down (layers 2 and 5) and 2 attn_v (#1, layer 5).
            let more = name == "blk.2.ffn_down.weight"
                || name == "blk.5.ffn_down.weight"
                || name == "blk.5.attn_v.weight";
            match (more, ft) {
                (true, _) => G::Q8_0,
                (false, FileType::Q4KM) => G::Q5_0,
                _ => G::Q5_1,
            }
        }
    }
}

fn u32_key(g: &GgufFile, k: &str) -> u32 {
    g.get_u32(k).unwrap_or_else(|e| panic!("{k}: {e}"))
}

#[test]
fn tiny_rg_converts_to_every_type_within_bounds() {
    let src_dir = fixture("tiny-rg");
    let src = read_safetensors(&src_dir.join("model.safetensors"));
    let dir = fresh_dir("every-type");
    for ft in FileType::ALL {
        let out = dir.join(format!("tiny-{}.gguf", ft.name()));
        let (summary, warnings) = run(&src_dir, &out, ft).unwrap_or_else(|e| panic!("{ft}: {e}"));
        assert!(
            warnings.iter().any(|w| w.contains("tokenizer")),
            "{ft}: expected a no-tokenizer warning: {warnings:?}"
        );
        let g = GgufFile::open(&out).unwrap();

        // Metadata (values from tests/fixtures/README.md's tiny-rg geometry).
        assert_eq!(g.get_str("general.architecture").unwrap(), "recurrentgemma");
        assert_eq!(u32_key(&g, "general.file_type"), ft.ftype_id());
        assert_eq!(u32_key(&g, "general.quantization_version"), 2);
        assert_eq!(u32_key(&g, "general.alignment"), 32);
        assert_eq!(u32_key(&g, "recurrentgemma.embedding_length"), 64);
        assert_eq!(u32_key(&g, "recurrentgemma.block_count"), 6);
        assert_eq!(u32_key(&g, "recurrentgemma.feed_forward_length"), 96);
        assert_eq!(u32_key(&g, "recurrentgemma.attention.head_count"), 4);
        assert_eq!(u32_key(&g, "recurrentgemma.attention.head_count_kv"), 1);
        assert_eq!(u32_key(&g, "recurrentgemma.attention.key_length"), 16);
        assert_eq!(u32_key(&g, "recurrentgemma.attention.value_length"), 16);
        assert_eq!(u32_key(&g, "recurrentgemma.attention.sliding_window"), 16);
        assert_eq!(u32_key(&g, "recurrentgemma.rope.dimension_count"), 8);
        assert_eq!(u32_key(&g, "recurrentgemma.ssm.conv_kernel"), 4);
        assert_eq!(u32_key(&g, "recurrentgemma.rglru.width"), 64);
        assert_eq!(u32_key(&g, "recurrentgemma.rglru.block_count"), 4);
        assert_eq!(
            g.get_f32("recurrentgemma.attention.layer_norm_rms_epsilon")
                .unwrap(),
            1e-6
        );
        assert_eq!(g.get_f32("recurrentgemma.rope.freq_base").unwrap(), 10000.0);
        assert_eq!(
            g.get_f32("recurrentgemma.final_logit_softcapping").unwrap(),
            30.0
        );
        assert_eq!(g.get_f32("recurrentgemma.embedding_scale").unwrap(), 8.0);
        assert!(g.get_bool("recurrentgemma.norm_weight_folded").unwrap());
        assert_eq!(
            g.get_str_array("recurrentgemma.layer_types").unwrap(),
            [
                "recurrent",
                "recurrent",
                "attention",
                "recurrent",
                "recurrent",
                "attention"
            ]
        );
        assert!(g.get("tokenizer.ggml.tokens").is_none());

        // Every source tensor but none other: 4 recurrent layers x 21 + 2 attention x 13 + 2.
        assert_eq!(g.tensors().len(), 4 * 21 + 2 * 13 + 2, "{ft}");
        assert_eq!(summary.n_tensors, g.tensors().len());
        for t in g.tensors() {
            assert_eq!(
                t.ty,
                tiny_expected_type(ft, &t.name, t.dims.len()),
                "{ft}: type of {}",
                t.name
            );
        }
        let n = check_against_source(&g, &src);
        assert_eq!(n, 112, "{ft}");
    }
}

#[test]
fn f32_output_is_the_source_exactly() {
    // Covered with bound 0 in the test above; here explicitly on raw bytes of a few tensors
    // whose layout does not change, and on the folded norms computed in f32.
    let src_dir = fixture("tiny-rg");
    let src = read_safetensors(&src_dir.join("model.safetensors"));
    let dir = fresh_dir("f32-exact");
    let out = dir.join("tiny-f32.gguf");
    run(&src_dir, &out, FileType::F32).unwrap();
    let g = GgufFile::open(&out).unwrap();
    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        g.tensor_data(emb),
        &src["model.embed_tokens.weight"].bytes[..]
    );
    let q = g.tensor("blk.2.attn_q.weight").unwrap();
    assert_eq!(
        g.tensor_data(q),
        &src["model.layers.2.temporal_block.q_proj.weight"].bytes[..]
    );
    let norm = g.tensor("blk.3.ffn_norm.weight").unwrap();
    let want: Vec<u8> = src["model.layers.3.channel_pre_norm.weight"]
        .values()
        .iter()
        .flat_map(|w| (1.0f32 + w).to_le_bytes())
        .collect();
    assert_eq!(g.tensor_data(norm), &want[..]);
    // Conv: row k = tap k; tap K-1 multiplies the current token (HF index [c, 0, K-1]).
    let conv = g.tensor("blk.0.ssm_conv1d.weight").unwrap();
    assert_eq!(conv.shape(), vec![4, 64]);
    let hf = src["model.layers.0.temporal_block.conv_1d.weight"].values();
    let stored = decode(conv.ty, g.tensor_data(conv), 256);
    assert_eq!(stored[3 * 64 + 5], hf[5 * 4 + 3]);
    // Gate: stored[n, o, i] = HF[n, i, o].
    let gate = g.tensor("blk.1.rg_a_gate.weight").unwrap();
    let hf = src["model.layers.1.temporal_block.rg_lru.recurrent_gate_weight"].values();
    let stored = decode(gate.ty, g.tensor_data(gate), hf.len());
    let (n, o, i) = (2, 7, 11);
    assert_eq!(stored[n * 256 + o * 16 + i], hf[n * 256 + i * 16 + o]);
}

#[test]
fn bf16_fixture_converts() {
    let src_dir = fixture("tiny-rg/bf16");
    let src = read_safetensors(&src_dir.join("model.safetensors"));
    assert!(src.values().all(|t| t.dtype == "BF16"));
    let dir = fresh_dir("bf16");
    for ft in [FileType::BF16, FileType::F32, FileType::Q8_0] {
        let out = dir.join(format!("bf16-{}.gguf", ft.name()));
        run(&src_dir, &out, ft).unwrap();
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(check_against_source(&g, &src), 112);
        if ft == FileType::BF16 {
            // bf16 -> f32 -> bf16 is lossless: unchanged layouts keep the exact bytes.
            let t = g.tensor("blk.0.rg_x.weight").unwrap();
            assert_eq!(t.ty, GgmlType::BF16);
            assert_eq!(
                g.tensor_data(t),
                &src["model.layers.0.temporal_block.linear_x.weight"].bytes[..]
            );
        }
    }
}

#[test]
fn wide_checkpoint_uses_k_quants_with_llama_quantize_mix() {
    let ck = fresh_dir("wide-ckpt");
    write_wide_checkpoint(&ck);
    let src = read_safetensors(&ck.join("model.safetensors"));
    let dir = fresh_dir("wide-out");
    use GgmlType as G;
    // (preset, default matrix, ffn_down per layer, attn_v, attn_output) — llama-quantize with
    // 3 layers and 1 attn_v: use_more_bits(i, 3) is true only for i = 2; use_more_bits(0, 1)
    // is true; Q4_K_S gives the first 4 attn_v Q5_K and ffn_down i < 3/8 = 0 none. The 2- and
    // 3-bit presets: 2 query heads per K/V head (< 4), so Q2_K's attn_v is Q3_K; Q3_K_M's
    // ffn_down of layer i < 3/16 = 0 none is Q5_K, the rest Q4_K.
    let cases = [
        (
            FileType::Q4KM,
            G::Q4K,
            [G::Q4K, G::Q4K, G::Q6K],
            G::Q6K,
            G::Q4K,
        ),
        (
            FileType::Q5KM,
            G::Q5K,
            [G::Q5K, G::Q5K, G::Q6K],
            G::Q6K,
            G::Q5K,
        ),
        (
            FileType::Q4KS,
            G::Q4K,
            [G::Q4K, G::Q4K, G::Q4K],
            G::Q5K,
            G::Q4K,
        ),
        (
            FileType::Q5KS,
            G::Q5K,
            [G::Q5K, G::Q5K, G::Q5K],
            G::Q5K,
            G::Q5K,
        ),
        (
            FileType::Q6K,
            G::Q6K,
            [G::Q6K, G::Q6K, G::Q6K],
            G::Q6K,
            G::Q6K,
        ),
        (
            FileType::Q2K,
            G::Q2K,
            [G::Q3K, G::Q3K, G::Q3K],
            G::Q3K,
            G::Q3K,
        ),
        (
            FileType::Q3KS,
            G::Q3K,
            [G::Q3K, G::Q3K, G::Q3K],
            G::Q3K,
            G::Q3K,
        ),
        (
            FileType::Q3KM,
            G::Q3K,
            [G::Q4K, G::Q4K, G::Q4K],
            G::Q5K,
            G::Q4K,
        ),
        (
            FileType::Q3KL,
            G::Q3K,
            [G::Q5K, G::Q5K, G::Q5K],
            G::Q5K,
            G::Q5K,
        ),
        (
            FileType::Q4_0,
            G::Q4_0,
            [G::Q4_0, G::Q4_0, G::Q4_0],
            G::Q4_0,
            G::Q4_0,
        ),
        (
            FileType::Q8_0,
            G::Q8_0,
            [G::Q8_0, G::Q8_0, G::Q8_0],
            G::Q8_0,
            G::Q8_0,
        ),
    ];
    for (ft, default, down, v, attn_out) in cases {
        let out = dir.join(format!("wide-{}.gguf", ft.name()));
        run(&ck, &out, ft).unwrap_or_else(|e| panic!("{ft}: {e}"));
        let g = GgufFile::open(&out).unwrap();
        let ty = |n: &str| g.tensor(n).unwrap_or_else(|| panic!("{n}")).ty;
        let embd = if ft == FileType::Q8_0 {
            G::Q8_0
        } else {
            G::Q6K
        };
        assert_eq!(ty("token_embd.weight"), embd, "{ft}");
        for (i, d) in down.iter().enumerate() {
            assert_eq!(
                ty(&format!("blk.{i}.ffn_down.weight")),
                *d,
                "{ft} layer {i}"
            );
        }
        assert_eq!(ty("blk.2.attn_v.weight"), v, "{ft}");
        assert_eq!(ty("blk.2.attn_output.weight"), attn_out, "{ft}");
        for n in [
            "blk.0.rg_x.weight",
            "blk.1.rg_out.weight",
            "blk.2.attn_q.weight",
            "blk.2.attn_k.weight",
            "blk.0.ffn_up.weight",
        ] {
            assert_eq!(ty(n), default, "{ft}: {n}");
        }
        assert_eq!(ty("blk.0.rg_input_gate.weight"), G::F16);
        assert_eq!(check_against_source(&g, &src), 2 + 2 * 21 + 13);
    }
}

#[test]
fn metadata_order_and_values_for_the_2b_style_config() {
    // The 4.x config spelling (top-level rope keys, _block_types, no head_dim) on the wide
    // checkpoint: the derived values must be the same.
    let ck = fresh_dir("wide-4x");
    write_wide_checkpoint(&ck);
    let out = fresh_dir("wide-4x-out").join("w.gguf");
    run(&ck, &out, FileType::F16).unwrap();
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_f32("recurrentgemma.embedding_scale").unwrap(), 16.0);
    assert_eq!(
        g.get_u32("recurrentgemma.rope.dimension_count").unwrap(),
        64
    );
    assert_eq!(g.get_u32("recurrentgemma.rglru.block_count").unwrap(), 2);
    assert_eq!(g.get_str("general.name").unwrap(), "wide-4x");
    assert_eq!(g.metadata()[0].0, "general.architecture");
    match g.get("recurrentgemma.layer_types") {
        Some(MetaValue::Array(MetaArray::String(v))) => {
            assert_eq!(v, &["recurrent", "recurrent", "attention"])
        }
        other => panic!("layer_types: {other:?}"),
    }
}

#[test]
fn f16_checkpoint_converts() {
    // tiny-rg rounded to F16 (HF checkpoints may be saved in float16).
    let ck = fresh_dir("f16-ckpt").join("tiny-f16");
    std::fs::create_dir_all(&ck).unwrap();
    copy_configs(&fixture("tiny-rg"), &ck);
    let tensors: Vec<(String, RawTensor)> = read_safetensors(&fixture("tiny-rg/model.safetensors"))
        .into_iter()
        .map(|(n, t)| {
            let bytes = t
                .values()
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect();
            (
                n,
                RawTensor {
                    dtype: "F16".into(),
                    shape: t.shape,
                    bytes,
                },
            )
        })
        .collect();
    write_safetensors(&ck.join("model.safetensors"), &tensors);
    let src = read_safetensors(&ck.join("model.safetensors"));
    let out = ck.parent().unwrap().join("f16.gguf");
    for ft in [FileType::F32, FileType::F16, FileType::Q5_1] {
        let _ = std::fs::remove_file(&out);
        run(&ck, &out, ft).unwrap();
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(check_against_source(&g, &src), 112, "{ft}");
        if ft == FileType::F16 {
            let t = g.tensor("blk.4.ffn_up.weight").unwrap();
            assert_eq!(
                g.tensor_data(t),
                &src["model.layers.4.mlp_block.up_proj.weight"].bytes[..]
            );
        }
    }
}
