//! Typed views of the weights: matrices stay in the memory map in their stored type, small
//! 1-D tensors (norms, biases, conv taps, Λ) are copied to f32 at load.

use crate::gguf::{GgufFile, TensorInfo};
use crate::{Error, Result};
use rgemma_quant::GgmlType;

use super::dequant::{dequantize_row, is_dequantizable};
use super::hparams::{HParams, LayerKind};

/// A 2-D weight `[rows, cols]` (numpy order; row = one output) kept in the mmap.
/// 3-D block-diagonal gates are viewed as `[blocks * out, in]`.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub info: TensorInfo,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// Bytes of one stored row.
    pub row_bytes: usize,
    /// The rows repacked for the x86 kernels at load time (`super::packing`), if they were.
    pub packed: Option<std::sync::Arc<super::packing::PackedRows>>,
}

impl Matrix {
    /// The stored bytes of the whole matrix (`rows * row_bytes`).
    pub fn data<'a>(&self, file: &'a GgufFile) -> &'a [u8] {
        file.tensor_data(&self.info)
    }
}

/// Weights of a recurrent temporal block.
#[derive(Clone, Debug)]
pub struct RecurrentWeights {
    pub linear_x: Matrix,
    pub linear_x_bias: Vec<f32>,
    pub linear_y: Matrix,
    pub linear_y_bias: Vec<f32>,
    pub linear_out: Matrix,
    pub linear_out_bias: Vec<f32>,
    /// `[K, L]`: row k is tap k; tap K-1 multiplies the current token.
    pub conv_w: Vec<f32>,
    pub conv_b: Vec<f32>,
    /// Block-diagonal gates viewed as `[L, bw]` (row `n*bw + o` holds `W[n, o, :]`).
    pub input_gate: Matrix,
    pub input_gate_bias: Vec<f32>,
    pub a_gate: Matrix,
    pub a_gate_bias: Vec<f32>,
    /// `softplus(Λ)` per channel (the decay is `exp(-8 * r * softplus(Λ))`).
    pub softplus_a: Vec<f32>,
}

/// Weights of a local-attention temporal block.
#[derive(Clone, Debug)]
pub struct AttentionWeights {
    pub q: Matrix,
    pub k: Matrix,
    pub v: Matrix,
    pub o: Matrix,
    pub o_bias: Vec<f32>,
}

#[derive(Clone, Debug)]
pub enum TemporalWeights {
    Recurrent(Box<RecurrentWeights>),
    Attention(Box<AttentionWeights>),
}

/// One residual layer.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// Temporal pre-norm multiplier (already `1 + w`).
    pub attn_norm: Vec<f32>,
    /// Channel pre-norm multiplier (already `1 + w`).
    pub ffn_norm: Vec<f32>,
    pub temporal: TemporalWeights,
    pub ffn_gate: Matrix,
    pub ffn_gate_bias: Vec<f32>,
    pub ffn_up: Matrix,
    pub ffn_up_bias: Vec<f32>,
    pub ffn_down: Matrix,
    pub ffn_down_bias: Vec<f32>,
}

/// All weights of the model.
#[derive(Clone, Debug)]
pub struct Weights {
    /// `[n_vocab, hidden]`, also the output head.
    pub token_embd: Matrix,
    /// Final norm multiplier (already `1 + w`).
    pub output_norm: Vec<f32>,
    pub layers: Vec<LayerWeights>,
}

/// Loads tensors by name, checking presence, shape and type, with messages that name the tensor.
struct Loader<'a> {
    file: &'a GgufFile,
    norm_folded: bool,
}

impl Loader<'_> {
    fn info(&self, name: &str, shape: &[usize]) -> Result<&TensorInfo> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| Error::Format(format!("missing tensor {name}")))?;
        let found = info.shape();
        if found.len() != shape.len() || found.iter().zip(shape).any(|(&f, &e)| f != e as u64) {
            return Err(Error::Format(format!(
                "tensor {name} has shape {found:?}, expected {shape:?}"
            )));
        }
        if !is_dequantizable(info.ty) {
            return Err(Error::Unsupported(format!(
                "tensor {name} has type {}, which rgemma cannot compute with",
                info.ty
            )));
        }
        let last = *shape.last().unwrap_or(&1) as u64;
        let row_bytes = info.ty.row_size(last).ok_or_else(|| {
            Error::Format(format!(
                "tensor {name}: row length {last} is not a multiple of the {} block size {}",
                info.ty,
                info.ty.block_size()
            ))
        })?;
        let rows: u64 = shape[..shape.len() - 1].iter().map(|&d| d as u64).product();
        let data_len = self.file.tensor_data(info).len() as u64;
        if rows.checked_mul(row_bytes) != Some(data_len) {
            return Err(Error::Format(format!(
                "tensor {name}: {data_len} data bytes, expected {rows} rows of {row_bytes}"
            )));
        }
        Ok(info)
    }

    /// A matrix `[rows, cols]`, or a 3-D `[blocks, out, in]` viewed as `[blocks*out, in]`.
    fn matrix(&self, name: &str, shape: &[usize]) -> Result<Matrix> {
        let info = self.info(name, shape)?.clone();
        let cols = *shape.last().unwrap_or(&1);
        let rows = shape[..shape.len() - 1].iter().product();
        let row_bytes = info.ty.row_size(cols as u64).unwrap_or(0) as usize;
        Ok(Matrix {
            ty: info.ty,
            info,
            rows,
            cols,
            row_bytes,
            packed: None,
        })
    }

    /// A small tensor copied to f32 (any dequantizable type is accepted).
    fn vector(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let info = self.info(name, shape)?;
        let n: usize = shape.iter().product();
        let mut out = vec![0.0f32; n];
        dequantize_row(info.ty, self.file.tensor_data(info), &mut out)
            .map_err(|e| Error::Format(format!("tensor {name}: {e}")))?;
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(Error::Format(format!(
                "tensor {name}: element {i} is not finite"
            )));
        }
        Ok(out)
    }

    /// A norm weight turned into the multiplier the forward pass applies.
    fn norm(&self, name: &str, hidden: usize) -> Result<Vec<f32>> {
        let mut w = self.vector(name, &[hidden])?;
        if !self.norm_folded {
            for v in &mut w {
                *v += 1.0;
            }
        }
        Ok(w)
    }
}

/// Numerically stable `ln(1 + e^z)`, computed in f64 and rounded once.
pub fn softplus(z: f32) -> f32 {
    let z = z as f64;
    (z.max(0.0) + (-z.abs()).exp().ln_1p()) as f32
}

impl Weights {
    /// Every weight matrix (the packing pass walks them).
    pub fn matrices_mut(&mut self) -> Vec<&mut Matrix> {
        let mut all = vec![&mut self.token_embd];
        for l in &mut self.layers {
            match &mut l.temporal {
                TemporalWeights::Recurrent(r) => {
                    let r = &mut **r;
                    all.extend([
                        &mut r.linear_x,
                        &mut r.linear_y,
                        &mut r.linear_out,
                        &mut r.input_gate,
                        &mut r.a_gate,
                    ]);
                }
                TemporalWeights::Attention(a) => {
                    let a = &mut **a;
                    all.extend([&mut a.q, &mut a.k, &mut a.v, &mut a.o]);
                }
            }
            all.extend([&mut l.ffn_gate, &mut l.ffn_up, &mut l.ffn_down]);
        }
        all
    }

    pub fn load(file: &GgufFile, hp: &HParams) -> Result<Weights> {
        let ld = Loader {
            file,
            norm_folded: hp.norm_weight_folded,
        };
        let (h, m, l) = (hp.hidden, hp.mlp_width, hp.lru_width);
        let token_embd = ld.matrix("token_embd.weight", &[hp.n_vocab, h])?;
        let output_norm = ld.norm("output_norm.weight", h)?;
        let mut layers = Vec::with_capacity(hp.n_layers);
        for (i, kind) in hp.layer_kinds.iter().enumerate() {
            let n = |s: &str| format!("blk.{i}.{s}");
            let temporal = match kind {
                LayerKind::Recurrent => {
                    let nb = hp.gate_blocks;
                    let bw = hp.gate_block_width();
                    let k = hp.conv_kernel;
                    let lambda = ld.vector(&n("rg_a.weight"), &[l])?;
                    TemporalWeights::Recurrent(Box::new(RecurrentWeights {
                        linear_x: ld.matrix(&n("rg_x.weight"), &[l, h])?,
                        linear_x_bias: ld.vector(&n("rg_x.bias"), &[l])?,
                        linear_y: ld.matrix(&n("rg_y.weight"), &[l, h])?,
                        linear_y_bias: ld.vector(&n("rg_y.bias"), &[l])?,
                        linear_out: ld.matrix(&n("rg_out.weight"), &[h, l])?,
                        linear_out_bias: ld.vector(&n("rg_out.bias"), &[h])?,
                        conv_w: ld.vector(&n("ssm_conv1d.weight"), &[k, l])?,
                        conv_b: ld.vector(&n("ssm_conv1d.bias"), &[l])?,
                        input_gate: ld.matrix(&n("rg_input_gate.weight"), &[nb, bw, bw])?,
                        input_gate_bias: ld.vector(&n("rg_input_gate.bias"), &[l])?,
                        a_gate: ld.matrix(&n("rg_a_gate.weight"), &[nb, bw, bw])?,
                        a_gate_bias: ld.vector(&n("rg_a_gate.bias"), &[l])?,
                        softplus_a: lambda.iter().map(|&z| softplus(z)).collect(),
                    }))
                }
                LayerKind::Attention => {
                    let qd = hp.n_heads * hp.head_dim;
                    let kvd = hp.n_kv_heads * hp.head_dim;
                    TemporalWeights::Attention(Box::new(AttentionWeights {
                        q: ld.matrix(&n("attn_q.weight"), &[qd, h])?,
                        k: ld.matrix(&n("attn_k.weight"), &[kvd, h])?,
                        v: ld.matrix(&n("attn_v.weight"), &[kvd, h])?,
                        o: ld.matrix(&n("attn_output.weight"), &[h, qd])?,
                        o_bias: ld.vector(&n("attn_output.bias"), &[h])?,
                    }))
                }
            };
            layers.push(LayerWeights {
                attn_norm: ld.norm(&n("attn_norm.weight"), h)?,
                ffn_norm: ld.norm(&n("ffn_norm.weight"), h)?,
                temporal,
                ffn_gate: ld.matrix(&n("ffn_gate.weight"), &[m, h])?,
                ffn_gate_bias: ld.vector(&n("ffn_gate.bias"), &[m])?,
                ffn_up: ld.matrix(&n("ffn_up.weight"), &[m, h])?,
                ffn_up_bias: ld.vector(&n("ffn_up.bias"), &[m])?,
                ffn_down: ld.matrix(&n("ffn_down.weight"), &[h, m])?,
                ffn_down_bias: ld.vector(&n("ffn_down.bias"), &[h])?,
            });
        }
        Ok(Weights {
            token_embd,
            output_norm,
            layers,
        })
    }
}
