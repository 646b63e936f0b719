//! The list of output tensors: schema name, numpy shape, where the values come from and
//! which layout change they need. Building the plan checks every source tensor's presence,
//! shape and dtype before any output is written.

use crate::convert::config::{LayerKind, ModelConfig};
use crate::convert::safetensors::{Checkpoint, Dtype};
use crate::{Error, Result};

/// The layout change between the source tensor and the stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// Same values in the same (row-major) order; the shape may be flattened.
    Copy,
    /// RMSNorm weight stored as `1 + w`, computed in f32.
    AddOne,
    /// HF conv `[L, 1, K]` -> `[K, L]` (row k = tap k).
    ConvTapMajor { channels: u64, taps: u64 },
    /// HF gate `[nb, in, out]` -> `[nb, out, in]` (each block transposed to a Linear).
    GateTranspose { blocks: u64, width: u64 },
}

/// One tensor of the output file.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub name: String,
    /// Output shape in numpy order.
    pub shape: Vec<u64>,
    /// Name of the source tensor (HF name, or the same GGUF name when requantizing).
    pub source: String,
    pub transform: Transform,
}

impl PlannedTensor {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// `ne[0]`: the innermost dimension (the row length).
    pub fn row_len(&self) -> u64 {
        *self
            .shape
            .last()
            .expect("tensors have at least one dimension")
    }
}

struct Builder<'a> {
    ckpt: &'a Checkpoint,
    out: Vec<PlannedTensor>,
}

impl Builder<'_> {
    /// Adds `name` from HF tensor `src`, which must have exactly `src_shape`.
    fn add(
        &mut self,
        name: String,
        shape: Vec<u64>,
        src: String,
        src_shape: &[u64],
        transform: Transform,
    ) -> Result<()> {
        let t = self
            .ckpt
            .get(&src)
            .ok_or_else(|| Error::Format(format!("checkpoint: missing tensor {src}")))?;
        match t.entry.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {}
            ref other => {
                return Err(Error::Unsupported(format!(
                    "{}: tensor {src} has dtype {}, expected F32, BF16 or F16",
                    t.file.path().display(),
                    other.name()
                )))
            }
        }
        if t.entry.shape != src_shape {
            return Err(Error::Format(format!(
                "{}: tensor {src} has shape {:?}, expected {src_shape:?}",
                t.file.path().display(),
                t.entry.shape
            )));
        }
        self.out.push(PlannedTensor {
            name,
            shape,
            source: src,
            transform,
        });
        Ok(())
    }

    fn same(&mut self, name: String, src: String, shape: &[u64]) -> Result<()> {
        self.add(name, shape.to_vec(), src, shape, Transform::Copy)
    }

    fn norm(&mut self, name: String, src: String, width: u64) -> Result<()> {
        self.add(name, vec![width], src, &[width], Transform::AddOne)
    }
}

/// Plans the conversion of an HF checkpoint. The MLP width, head counts etc. come from
/// `cfg` and are checked against the tensor shapes here.
pub fn plan_hf(cfg: &ModelConfig, ckpt: &Checkpoint) -> Result<Vec<PlannedTensor>> {
    let h = cfg.hidden_size;
    let m = cfg.mlp_width;
    let l = cfg.lru_width;
    let nb = cfg.num_heads;
    let bw = cfg.gate_block_width();
    let q_rows = cfg.num_heads * cfg.head_dim;
    let kv_rows = cfg.num_kv_heads * cfg.head_dim;
    let k = cfg.conv_width;

    // A clearer message than "shape mismatch" for the one inconsistency real configs have.
    if let Some(g) = ckpt.get("model.layers.0.mlp_block.gate_proj.weight") {
        if g.entry.shape.first() != Some(&m) {
            return Err(Error::Format(format!(
                "config.json: key intermediate_size: {} / 2 = {m} does not match model.layers.0.mlp_block.gate_proj.weight shape {:?}",
                2 * m,
                g.entry.shape
            )));
        }
    }
    if let Some(e) = ckpt.get("model.embed_tokens.weight") {
        if e.entry.shape.first() != Some(&cfg.vocab_size) {
            return Err(Error::Format(format!(
                "config.json: key vocab_size: {} does not match model.embed_tokens.weight shape {:?}",
                cfg.vocab_size, e.entry.shape
            )));
        }
    }

    let mut b = Builder {
        ckpt,
        out: Vec::new(),
    };
    b.same(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        &[cfg.vocab_size, h],
    )?;
    for (i, kind) in cfg.layers.iter().enumerate() {
        let hf = |s: &str| format!("model.layers.{i}.{s}");
        let gg = |s: &str| format!("blk.{i}.{s}");
        b.norm(gg("attn_norm.weight"), hf("temporal_pre_norm.weight"), h)?;
        match kind {
            LayerKind::Recurrent => {
                let t = |s: &str| hf(&format!("temporal_block.{s}"));
                b.same(gg("rg_x.weight"), t("linear_x.weight"), &[l, h])?;
                b.same(gg("rg_x.bias"), t("linear_x.bias"), &[l])?;
                b.same(gg("rg_y.weight"), t("linear_y.weight"), &[l, h])?;
                b.same(gg("rg_y.bias"), t("linear_y.bias"), &[l])?;
                b.add(
                    gg("ssm_conv1d.weight"),
                    vec![k, l],
                    t("conv_1d.weight"),
                    &[l, 1, k],
                    Transform::ConvTapMajor {
                        channels: l,
                        taps: k,
                    },
                )?;
                b.same(gg("ssm_conv1d.bias"), t("conv_1d.bias"), &[l])?;
                let gate = Transform::GateTranspose {
                    blocks: nb,
                    width: bw,
                };
                b.add(
                    gg("rg_input_gate.weight"),
                    vec![nb, bw, bw],
                    t("rg_lru.input_gate_weight"),
                    &[nb, bw, bw],
                    gate,
                )?;
                b.add(
                    gg("rg_input_gate.bias"),
                    vec![l],
                    t("rg_lru.input_gate_bias"),
                    &[nb, bw],
                    Transform::Copy,
                )?;
                b.add(
                    gg("rg_a_gate.weight"),
                    vec![nb, bw, bw],
                    t("rg_lru.recurrent_gate_weight"),
                    &[nb, bw, bw],
                    gate,
                )?;
                b.add(
                    gg("rg_a_gate.bias"),
                    vec![l],
                    t("rg_lru.recurrent_gate_bias"),
                    &[nb, bw],
                    Transform::Copy,
                )?;
                b.same(gg("rg_a.weight"), t("rg_lru.recurrent_param"), &[l])?;
                b.same(gg("rg_out.weight"), t("linear_out.weight"), &[h, l])?;
                b.same(gg("rg_out.bias"), t("linear_out.bias"), &[h])?;
            }
            LayerKind::Attention => {
                let t = |s: &str| hf(&format!("temporal_block.{s}"));
                b.same(gg("attn_q.weight"), t("q_proj.weight"), &[q_rows, h])?;
                b.same(gg("attn_k.weight"), t("k_proj.weight"), &[kv_rows, h])?;
                b.same(gg("attn_v.weight"), t("v_proj.weight"), &[kv_rows, h])?;
                b.same(gg("attn_output.weight"), t("o_proj.weight"), &[h, q_rows])?;
                b.same(gg("attn_output.bias"), t("o_proj.bias"), &[h])?;
            }
        }
        b.norm(gg("ffn_norm.weight"), hf("channel_pre_norm.weight"), h)?;
        let mlp = |s: &str| hf(&format!("mlp_block.{s}"));
        b.same(gg("ffn_gate.weight"), mlp("gate_proj.weight"), &[m, h])?;
        b.same(gg("ffn_gate.bias"), mlp("gate_proj.bias"), &[m])?;
        b.same(gg("ffn_up.weight"), mlp("up_proj.weight"), &[m, h])?;
        b.same(gg("ffn_up.bias"), mlp("up_proj.bias"), &[m])?;
        b.same(gg("ffn_down.weight"), mlp("down_proj.weight"), &[h, m])?;
        b.same(gg("ffn_down.bias"), mlp("down_proj.bias"), &[h])?;
    }
    b.norm(
        "output_norm.weight".into(),
        "model.final_norm.weight".into(),
        h,
    )?;

    // Everything in the checkpoint must have been used, except the tied LM head.
    let used: std::collections::HashSet<&str> = b.out.iter().map(|p| p.source.as_str()).collect();
    if let Some(extra) = ckpt
        .names()
        .find(|n| !used.contains(n) && *n != "lm_head.weight")
    {
        let file = ckpt
            .get(extra)
            .map(|t| t.file.path().display().to_string())
            .unwrap_or_default();
        return Err(Error::Format(format!(
            "{file}: unexpected tensor {extra} (not part of a RecurrentGemma checkpoint with this config)"
        )));
    }
    Ok(b.out)
}
