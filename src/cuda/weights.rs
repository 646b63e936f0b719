//! The model on the GPU: every weight uploaded once, straight from the memory map in its
//! stored type (quantized matrices stay quantized; small f32 vectors as they are), plus the
//! compiled kernels and the RoPE frequency table.

use std::sync::Arc;

use rgemma_quant::GgmlType;

use super::device::Device;
use super::kernels::{DevBuf, Kernels};
use crate::model::{HParams, LayerKind, Matrix, Model, TemporalWeights};
use crate::{Error, Result};

/// Weight types the CUDA kernels decode (`dequant_elem` in cuda/common.cuh).
pub fn is_supported_type(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K | Q5K | Q6K
    )
}

/// A weight matrix `[rows, cols]` in device memory, in its stored type.
pub struct GpuMatrix {
    pub buf: DevBuf,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
}

impl GpuMatrix {
    pub fn upload(dev: &Device, m: &Matrix, data: &[u8]) -> Result<GpuMatrix> {
        if !is_supported_type(m.ty) {
            return Err(Error::Unsupported(format!(
                "tensor {} has type {}, which the CUDA kernels do not decode",
                m.info.name, m.ty
            )));
        }
        Ok(GpuMatrix {
            buf: DevBuf::from_bytes(&dev.stream, &data[..m.rows * m.row_bytes])?,
            ty: m.ty,
            rows: m.rows,
            cols: m.cols,
            row_bytes: m.row_bytes,
        })
    }

    /// The ggml type id the kernels switch on.
    pub fn type_id(&self) -> i32 {
        self.ty.id() as i32
    }
}

pub(crate) struct GpuRecurrent {
    pub linear_x: GpuMatrix,
    pub linear_x_bias: DevBuf,
    pub linear_y: GpuMatrix,
    pub linear_y_bias: DevBuf,
    pub linear_out: GpuMatrix,
    pub linear_out_bias: DevBuf,
    pub conv_w: DevBuf,
    pub conv_b: DevBuf,
    pub input_gate: GpuMatrix,
    pub input_gate_bias: DevBuf,
    pub a_gate: GpuMatrix,
    pub a_gate_bias: DevBuf,
    pub softplus_a: DevBuf,
}

pub(crate) struct GpuAttention {
    pub q: GpuMatrix,
    pub k: GpuMatrix,
    pub v: GpuMatrix,
    pub o: GpuMatrix,
    pub o_bias: DevBuf,
}

pub(crate) enum GpuTemporal {
    Recurrent(Box<GpuRecurrent>),
    Attention(Box<GpuAttention>),
}

pub(crate) struct GpuLayer {
    pub attn_norm: DevBuf,
    pub ffn_norm: DevBuf,
    pub temporal: GpuTemporal,
    pub ffn_gate: GpuMatrix,
    pub ffn_gate_bias: DevBuf,
    pub ffn_up: GpuMatrix,
    pub ffn_up_bias: DevBuf,
    pub ffn_down: GpuMatrix,
    pub ffn_down_bias: DevBuf,
}

/// A model resident on the GPU.
pub struct CudaModel {
    pub dev: Device,
    pub kernels: Kernels,
    pub hparams: HParams,
    pub(crate) token_embd: GpuMatrix,
    pub(crate) output_norm: DevBuf,
    pub(crate) layers: Vec<GpuLayer>,
    /// `rotary_dim / 2` inverse frequencies, computed as ops.rs::rope_tables does.
    pub(crate) inv_freq: DevBuf,
    /// Bytes of weights in device memory.
    pub weight_bytes: usize,
}

/// Largest conv tail the conv kernel keeps in registers (`CONV_MAX_HIST` in recurrent.cu).
pub const CONV_MAX_HIST: usize = 15;

impl CudaModel {
    /// Opens GPU 0, compiles the kernels and uploads the weights of `model`.
    pub fn new(model: &Model) -> Result<Arc<CudaModel>> {
        let dev = Device::open(0)?;
        CudaModel::with_device(dev, model)
    }

    pub fn with_device(dev: Device, model: &Model) -> Result<Arc<CudaModel>> {
        let hp = model.hparams().clone();
        if hp.conv_kernel > CONV_MAX_HIST + 1 {
            return Err(Error::Unsupported(format!(
                "conv kernel {} is larger than the CUDA kernel's {}",
                hp.conv_kernel,
                CONV_MAX_HIST + 1
            )));
        }
        let attn_smem = (hp.window + 1 + hp.head_dim) * 4;
        if hp.layer_kinds.contains(&LayerKind::Attention) && attn_smem > 48 * 1024 {
            return Err(Error::Unsupported(format!(
                "attention window {} needs {attn_smem} bytes of shared memory (max 48 KiB)",
                hp.window
            )));
        }
        let kernels = Kernels::load(&dev)?;
        let file = model.gguf();
        let w = model.weights();
        let s = &dev.stream;
        let mut bytes = 0usize;
        let mut mat = |m: &Matrix| -> Result<GpuMatrix> {
            let g = GpuMatrix::upload(&dev, m, m.data(file))?;
            bytes += g.buf.bytes;
            Ok(g)
        };
        let vec = |v: &[f32]| DevBuf::from_f32(s, v);
        let token_embd = mat(&w.token_embd)?;
        let mut layers = Vec::with_capacity(w.layers.len());
        for lw in &w.layers {
            let temporal = match &lw.temporal {
                TemporalWeights::Recurrent(r) => GpuTemporal::Recurrent(Box::new(GpuRecurrent {
                    linear_x: mat(&r.linear_x)?,
                    linear_x_bias: vec(&r.linear_x_bias)?,
                    linear_y: mat(&r.linear_y)?,
                    linear_y_bias: vec(&r.linear_y_bias)?,
                    linear_out: mat(&r.linear_out)?,
                    linear_out_bias: vec(&r.linear_out_bias)?,
                    conv_w: vec(&r.conv_w)?,
                    conv_b: vec(&r.conv_b)?,
                    input_gate: mat(&r.input_gate)?,
                    input_gate_bias: vec(&r.input_gate_bias)?,
                    a_gate: mat(&r.a_gate)?,
                    a_gate_bias: vec(&r.a_gate_bias)?,
                    softplus_a: vec(&r.softplus_a)?,
                })),
                TemporalWeights::Attention(a) => GpuTemporal::Attention(Box::new(GpuAttention {
                    q: mat(&a.q)?,
                    k: mat(&a.k)?,
                    v: mat(&a.v)?,
                    o: mat(&a.o)?,
                    o_bias: vec(&a.o_bias)?,
                })),
            };
            layers.push(GpuLayer {
                attn_norm: vec(&lw.attn_norm)?,
                ffn_norm: vec(&lw.ffn_norm)?,
                temporal,
                ffn_gate: mat(&lw.ffn_gate)?,
                ffn_gate_bias: vec(&lw.ffn_gate_bias)?,
                ffn_up: mat(&lw.ffn_up)?,
                ffn_up_bias: vec(&lw.ffn_up_bias)?,
                ffn_down: mat(&lw.ffn_down)?,
                ffn_down_bias: vec(&lw.ffn_down_bias)?,
            });
        }
        let output_norm = vec(&w.output_norm)?;
        // Same arithmetic as ops.rs::rope_tables (f32 powf, then 1/x).
        let half = hp.rotary_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|j| {
                let exponent = (2 * j) as f32 / hp.rotary_dim as f32;
                1.0 / hp.rope_theta.powf(exponent)
            })
            .collect();
        let inv_freq = vec(&inv)?;
        s.synchronize().map_err(|e| super::cu_err("upload", e))?;
        Ok(Arc::new(CudaModel {
            dev,
            kernels,
            hparams: hp,
            token_embd,
            output_norm,
            layers,
            inv_freq,
            weight_bytes: bytes,
        }))
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90, NVRTC 12.9)".
    pub fn describe(&self) -> String {
        let i = &self.dev.info;
        let nvrtc = i
            .nvrtc
            .map_or("no NVRTC".into(), |(a, b)| format!("NVRTC {a}.{b}"));
        format!(
            "{} (sm_{}{}, {nvrtc}), {:.1} MiB of weights",
            i.name,
            i.arch.0,
            i.arch.1,
            self.weight_bytes as f64 / (1 << 20) as f64
        )
    }
}
