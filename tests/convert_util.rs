//! Helpers shared by the converter tests (`mod convert_util;` in each). An independent
//! safetensors reader/writer, the expected stored layout of each GGUF tensor computed from
//! the HF source per docs/gguf-schema.md, and per-type error bounds.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rgemma::convert::{convert, ConvertOptions, ConvertSummary, FileType, Progress};
use rgemma::gguf::GgufFile;
use rgemma::quant::GgmlType;

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A fresh, empty directory under cargo's per-target temp dir.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("convert-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One safetensors tensor: dtype name, shape, raw little-endian bytes.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub dtype: String,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    pub fn f32(shape: &[u64], values: &[f32]) -> RawTensor {
        RawTensor {
            dtype: "F32".into(),
            shape: shape.to_vec(),
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// Values as f32 (F32 and BF16 only).
    pub fn values(&self) -> Vec<f32> {
        match self.dtype.as_str() {
            "F32" => self
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            "F16" => self
                .bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            "BF16" => self
                .bytes
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            d => panic!("dtype {d} not handled in tests"),
        }
    }
}

/// Reads a safetensors file with a minimal parser of its own (not the converter's).
pub fn read_safetensors(path: &Path) -> BTreeMap<String, RawTensor> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    for (name, v) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let off: Vec<usize> = v["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        out.insert(
            name.clone(),
            RawTensor {
                dtype: v["dtype"].as_str().unwrap().into(),
                shape: v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect(),
                bytes: data[off[0]..off[1]].to_vec(),
            },
        );
    }
    out
}

/// Writes tensors in the given order (header keys sorted, as safetensors does).
pub fn write_safetensors(path: &Path, tensors: &[(String, RawTensor)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, t) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.len()]}),
        );
        offset += t.bytes.len();
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&h);
    for (_, t) in tensors {
        file.extend_from_slice(&t.bytes);
    }
    std::fs::write(path, file).unwrap();
}

/// Copies a checkpoint directory's small files (config, generation config, tokenizer files).
pub fn copy_configs(from: &Path, to: &Path) {
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
}

/// Runs the library conversion, collecting warnings.
pub fn run(
    input: &Path,
    output: &Path,
    ft: FileType,
) -> rgemma::Result<(ConvertSummary, Vec<String>)> {
    let mut warnings = Vec::new();
    let mut opts = ConvertOptions::new(input, output, ft);
    opts.threads = Some(2);
    let s = convert(&opts, &mut |p| {
        if let Progress::Warning(w) = p {
            warnings.push(w)
        }
    })?;
    Ok((s, warnings))
}

/// The stored tensor expected for GGUF name `name`, from the HF source: (numpy shape, values)
/// after the documented layout changes (norms +1, conv [L,1,K] -> [K,L], gates per block
/// [in,out] -> [out,in], gate biases flattened).
pub fn expected(src: &BTreeMap<String, RawTensor>, name: &str) -> (Vec<u64>, Vec<f32>) {
    let get = |n: &str| src.get(n).unwrap_or_else(|| panic!("source has no {n}"));
    if name == "token_embd.weight" {
        let t = get("model.embed_tokens.weight");
        return (t.shape.clone(), t.values());
    }
    if name == "output_norm.weight" {
        let t = get("model.final_norm.weight");
        return (
            t.shape.clone(),
            t.values().iter().map(|w| 1.0 + w).collect(),
        );
    }
    let rest = name.strip_prefix("blk.").unwrap();
    let (layer, tail) = rest.split_once('.').unwrap();
    let hf = |s: &str| format!("model.layers.{layer}.{s}");
    let tb = |s: &str| hf(&format!("temporal_block.{s}"));
    let plain = |n: String| {
        let t = get(&n);
        (t.shape.clone(), t.values())
    };
    match tail {
        "attn_norm.weight" | "ffn_norm.weight" => {
            let n = if tail == "attn_norm.weight" {
                "temporal_pre_norm.weight"
            } else {
                "channel_pre_norm.weight"
            };
            let t = get(&hf(n));
            (
                t.shape.clone(),
                t.values().iter().map(|w| 1.0 + w).collect(),
            )
        }
        "ssm_conv1d.weight" => {
            let t = get(&tb("conv_1d.weight"));
            let (l, k) = (t.shape[0] as usize, t.shape[2] as usize);
            let v = t.values();
            let mut out = vec![0f32; l * k];
            for c in 0..l {
                for tap in 0..k {
                    out[tap * l + c] = v[c * k + tap];
                }
            }
            (vec![k as u64, l as u64], out)
        }
        "rg_input_gate.weight" | "rg_a_gate.weight" => {
            let n = if tail == "rg_input_gate.weight" {
                "rg_lru.input_gate_weight"
            } else {
                "rg_lru.recurrent_gate_weight"
            };
            let t = get(&tb(n));
            let (nb, w) = (t.shape[0] as usize, t.shape[1] as usize);
            let v = t.values();
            let mut out = vec![0f32; nb * w * w];
            for b in 0..nb {
                for i in 0..w {
                    for o in 0..w {
                        out[b * w * w + o * w + i] = v[b * w * w + i * w + o];
                    }
                }
            }
            (t.shape.clone(), out)
        }
        "rg_input_gate.bias" | "rg_a_gate.bias" => {
            let n = if tail == "rg_input_gate.bias" {
                "rg_lru.input_gate_bias"
            } else {
                "rg_lru.recurrent_gate_bias"
            };
            let t = get(&tb(n));
            (vec![t.shape.iter().product()], t.values())
        }
        _ => {
            let map = [
                ("rg_x.", "temporal_block.linear_x."),
                ("rg_y.", "temporal_block.linear_y."),
                ("rg_out.", "temporal_block.linear_out."),
                ("ssm_conv1d.", "temporal_block.conv_1d."),
                ("rg_a.weight", "temporal_block.rg_lru.recurrent_param"),
                ("attn_q.", "temporal_block.q_proj."),
                ("attn_k.", "temporal_block.k_proj."),
                ("attn_v.", "temporal_block.v_proj."),
                ("attn_output.", "temporal_block.o_proj."),
                ("ffn_gate.", "mlp_block.gate_proj."),
                ("ffn_up.", "mlp_block.up_proj."),
                ("ffn_down.", "mlp_block.down_proj."),
            ];
            for (g, h) in map {
                if let Some(suffix) = tail.strip_prefix(g) {
                    return plain(hf(&format!("{h}{suffix}")));
                }
                if tail == g {
                    return plain(hf(h));
                }
            }
            panic!("unexpected GGUF tensor {name}");
        }
    }
}

/// Decodes a stored tensor to f32 (F32/F16/BF16 here, the rest through rgemma_quant).
pub fn decode(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    match ty {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        GgmlType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        GgmlType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => {
            let mut out = vec![0f32; n];
            rgemma::quant::dequantize_row(ty, bytes, &mut out).unwrap();
            out
        }
    }
}

/// Largest allowed |dequantized - source| for each element of one block of `ty`.
///
/// Derivations (x = the block's values, amax = max |x|, d = the step):
/// - F32 exact; F16 / BF16: round-to-nearest, half an ulp: |x|·2^-11 / |x|·2^-8 (+ the F16
///   subnormal spacing).
/// - Q8_0 (d = amax/127), Q4_0 (d = amax/8), Q5_0 (d = amax/16): half a step, plus the error
///   of storing d as F16 times the largest code (≤ 16·d·2^-11): 0.6·d. Q4_0 / Q5_0 map the
///   max-abs value to code 0 and cap the other end at 15 / 31 (7·d / 15·d), so values beyond
///   7.5·d / 15.5·d on the other side get the excess on top.
/// - Q4_1 / Q5_1 (d = (max-min)/15 or /31, offset = min): 0.6·d plus the F16 error of min.
/// - K-quants (super-blocks of 256 with quantized sub-block scales): one full step of the
///   super-block's own range, (max-min)/15 for Q4_K, /31 for Q5_K, amax/32 for Q6_K. A layout
///   error (a permuted or shifted tensor) is off by the size of the values, far above these.
pub fn block_bound(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let max = x.iter().fold(f32::MIN, |a, &v| a.max(v));
    let min = x.iter().fold(f32::MAX, |a, &v| a.min(v));
    let tiny = 1e-7 * amax.max(1.0);
    let uniform = |b: f32| vec![b + tiny; x.len()];
    match ty {
        GgmlType::F32 => vec![0.0; x.len()],
        GgmlType::F16 => x
            .iter()
            .map(|v| v.abs() * 2f32.powi(-11) + 2f32.powi(-24))
            .collect(),
        GgmlType::BF16 => x.iter().map(|v| v.abs() * 2f32.powi(-8)).collect(),
        GgmlType::Q8_0 => uniform(0.6 * amax / 127.0),
        // Codes are capped at 15 / 31, so a value of the opposite sign to the max-abs one
        // can be off by up to a full step beyond 7.5·d / 15.5·d.
        GgmlType::Q4_0 => {
            let d = amax / 8.0;
            x.iter()
                .map(|v| 0.6 * d + (v.abs() - 7.5 * d).max(0.0) + tiny)
                .collect()
        }
        GgmlType::Q5_0 => {
            let d = amax / 16.0;
            x.iter()
                .map(|v| 0.6 * d + (v.abs() - 15.5 * d).max(0.0) + tiny)
                .collect()
        }
        GgmlType::Q4_1 => uniform(0.6 * (max - min) / 15.0 + min.abs() * 2f32.powi(-10)),
        GgmlType::Q5_1 => uniform(0.6 * (max - min) / 31.0 + min.abs() * 2f32.powi(-10)),
        // Q2_K: 2-bit codes over a sub-block's range (4-bit scales and mins): a full step.
        // Q3_K: signed codes -4..3, so a value of the other sign than the sub-block's extreme
        // is clipped at 3 steps of amax/4, and the 6-bit sub-block scales add their own
        // rounding: two steps.
        GgmlType::Q2K => uniform((max - min.min(0.0)) / 3.0),
        GgmlType::Q3K => uniform(amax / 2.0),
        GgmlType::Q4K => uniform((max - min.min(0.0)) / 15.0),
        GgmlType::Q5K => uniform((max - min.min(0.0)) / 31.0),
        GgmlType::Q6K => uniform(amax / 32.0),
        t => panic!("no bound for {t}"),
    }
}

/// Checks every tensor of `gguf` against the HF source within the bound of its type.
/// Returns the number of tensors checked.
pub fn check_against_source(gguf: &GgufFile, src: &BTreeMap<String, RawTensor>) -> usize {
    for t in gguf.tensors() {
        let (shape, want) = expected(src, &t.name);
        assert_eq!(t.shape(), shape, "{}: shape", t.name);
        let got = decode(t.ty, gguf.tensor_data(t), want.len());
        assert_eq!(got.len(), want.len(), "{}", t.name);
        let bs = t.ty.block_size();
        for (b, (g, w)) in got.chunks(bs).zip(want.chunks(bs)).enumerate() {
            let bound = block_bound(t.ty, w);
            for j in 0..w.len() {
                let err = (g[j] - w[j]).abs();
                assert!(
                    err <= bound[j],
                    "{} ({}): element {} = {} vs source {} (|err| {err} > bound {})",
                    t.name,
                    t.ty,
                    b * bs + j,
                    g[j],
                    w[j],
                    bound[j]
                );
            }
        }
    }
    gguf.tensors().len()
}

/// Writes a synthetic HF checkpoint whose rows are multiples of 256, so the K-quant presets
/// store real K-quant blocks (tiny-rg's hidden size 64 makes every K type fall back).
/// hidden 256, 3 layers (R, R, A), MLP width 512, lru 256 = 2 gate blocks of 128, 2 heads of
/// 128, 1 KV head, vocab 40, conv 4.
pub fn write_wide_checkpoint(dir: &Path) {
    let (v, h, m, l, nb, hd, k) = (40u64, 256u64, 512u64, 256u64, 2u64, 128u64, 4u64);
    let bw = l / nb;
    let config = serde_json::json!({
        "architectures": ["RecurrentGemmaForCausalLM"], "model_type": "recurrent_gemma",
        "vocab_size": v, "hidden_size": h, "intermediate_size": 2 * m, "num_hidden_layers": 3,
        "num_attention_heads": nb, "num_key_value_heads": 1, "head_dim": hd, "lru_width": l,
        "attention_window_size": 32, "conv1d_width": k, "logits_soft_cap": 30.0, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
        "_block_types": ["recurrent", "recurrent", "attention"], "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = |shape: &[u64], scale: f32| {
        let n: u64 = shape.iter().product();
        let vals: Vec<f32> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Uniform in [-1, 1) with an occasional large value, as real weights have.
                let u = (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                if seed.is_multiple_of(97) {
                    4.0 * u * scale
                } else {
                    u * scale
                }
            })
            .collect();
        RawTensor::f32(shape, &vals)
    };
    let mut t: Vec<(String, RawTensor)> =
        vec![("model.embed_tokens.weight".into(), rnd(&[v, h], 1.0))];
    t.push(("model.final_norm.weight".into(), rnd(&[h], 0.5)));
    for i in 0..3 {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        t.push((p("temporal_pre_norm.weight"), rnd(&[h], 0.5)));
        t.push((p("channel_pre_norm.weight"), rnd(&[h], 0.5)));
        for (n, shape) in [
            ("mlp_block.gate_proj.weight", vec![m, h]),
            ("mlp_block.gate_proj.bias", vec![m]),
            ("mlp_block.up_proj.weight", vec![m, h]),
            ("mlp_block.up_proj.bias", vec![m]),
            ("mlp_block.down_proj.weight", vec![h, m]),
            ("mlp_block.down_proj.bias", vec![h]),
        ] {
            t.push((p(n), rnd(&shape, 0.1)));
        }
        let tb: Vec<(&str, Vec<u64>)> = if i < 2 {
            vec![
                ("linear_x.weight", vec![l, h]),
                ("linear_x.bias", vec![l]),
                ("linear_y.weight", vec![l, h]),
                ("linear_y.bias", vec![l]),
                ("linear_out.weight", vec![h, l]),
                ("linear_out.bias", vec![h]),
                ("conv_1d.weight", vec![l, 1, k]),
                ("conv_1d.bias", vec![l]),
                ("rg_lru.input_gate_weight", vec![nb, bw, bw]),
                ("rg_lru.input_gate_bias", vec![nb, bw]),
                ("rg_lru.recurrent_gate_weight", vec![nb, bw, bw]),
                ("rg_lru.recurrent_gate_bias", vec![nb, bw]),
                ("rg_lru.recurrent_param", vec![l]),
            ]
        } else {
            vec![
                ("q_proj.weight", vec![nb * hd, h]),
                ("k_proj.weight", vec![hd, h]),
                ("v_proj.weight", vec![hd, h]),
                ("o_proj.weight", vec![h, nb * hd]),
                ("o_proj.bias", vec![h]),
            ]
        };
        for (n, shape) in tb {
            t.push((p(&format!("temporal_block.{n}")), rnd(&shape, 0.1)));
        }
    }
    write_safetensors(&dir.join("model.safetensors"), &t);
}
