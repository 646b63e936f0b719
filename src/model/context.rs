//! A decoding context: fixed-size sequence state, scratch buffers allocated once, and the
//! chunked forward pass.

use std::sync::Arc;

use rayon::prelude::*;

use super::attention::{attend_chunk, write_ring, AttnGeom};
use super::dequant::dequantize_row;
use super::hparams::{HParams, LayerKind};
use super::matmul::{matmul, matmul_same_input, InputMap, MatmulPath, Product, ThreadScratch};
use super::ops::{
    add_in_place, gelu_in_place, gelu_mul, rmsnorm_rows, rope_apply, rope_tables, softcap,
};
use super::recurrent::{conv1d_chunk, rglru_chunk};
use super::weights::{AttentionWeights, LayerWeights, RecurrentWeights, TemporalWeights};
use super::Model;
use crate::{Error, Result};

mod state;

/// Elements per parallel task in the elementwise passes (GeLU, logit soft-cap).
const ELEMENTWISE_CHUNK: usize = 4096;

/// Settings of a [`Context`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextParams {
    /// Tokens per forward chunk (prompt processing); 512 by default.
    pub batch_size: usize,
    /// Worker threads; 0 = all available cores.
    pub n_threads: usize,
}

impl Default for ContextParams {
    fn default() -> Self {
        ContextParams {
            batch_size: 512,
            n_threads: 0,
        }
    }
}

/// Sequence state of one layer. Its size is fixed at creation.
enum LayerState {
    Recurrent {
        /// `[K-1, L]`: the last K-1 linear_x outputs, oldest first.
        conv_tail: Vec<f32>,
        /// `[L]`: RG-LRU state, f32.
        h: Vec<f32>,
    },
    Attention {
        /// `[W, kv_width]`: keys after RoPE, position q in slot q mod W.
        k_ring: Vec<f32>,
        /// `[W, kv_width]`.
        v_ring: Vec<f32>,
    },
}

impl LayerState {
    fn new(kind: LayerKind, hp: &HParams) -> LayerState {
        match kind {
            LayerKind::Recurrent => LayerState::Recurrent {
                conv_tail: vec![0.0; hp.conv_kernel.saturating_sub(1) * hp.lru_width],
                h: vec![0.0; hp.lru_width],
            },
            LayerKind::Attention => {
                let n = hp.window * hp.n_kv_heads * hp.head_dim;
                LayerState::Attention {
                    k_ring: vec![0.0; n],
                    v_ring: vec![0.0; n],
                }
            }
        }
    }

    fn buffers(&mut self) -> [&mut Vec<f32>; 2] {
        match self {
            LayerState::Recurrent { conv_tail, h } => [conv_tail, h],
            LayerState::Attention { k_ring, v_ring } => [k_ring, v_ring],
        }
    }

    fn buffers_ref(&self) -> [&Vec<f32>; 2] {
        match self {
            LayerState::Recurrent { conv_tail, h } => [conv_tail, h],
            LayerState::Attention { k_ring, v_ring } => [k_ring, v_ring],
        }
    }

    fn size_bytes(&self) -> usize {
        let n = match self {
            LayerState::Recurrent { conv_tail, h } => conv_tail.len() + h.len(),
            LayerState::Attention { k_ring, v_ring } => k_ring.len() + v_ring.len(),
        };
        n * std::mem::size_of::<f32>()
    }
}

/// Activation buffers for one chunk of up to `batch_size` tokens (row-major `[T, width]`).
struct Scratch {
    /// Residual stream `[B, hidden]`.
    x: Vec<f32>,
    /// Normalised input of the current sub-block `[B, hidden]`.
    norm: Vec<f32>,
    /// Output of the current sub-block `[B, hidden]`.
    block_out: Vec<f32>,
    /// Recurrent block `[B, L]` each: GeLU branch, linear_x, conv output, gate inputs.
    rg_y: Vec<f32>,
    rg_x: Vec<f32>,
    rg_conv: Vec<f32>,
    rg_gate_x: Vec<f32>,
    rg_gate_a: Vec<f32>,
    /// Attention: queries and outputs `[B, heads*hd]`, keys and values `[B, kv_width]`.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    /// MLP branches `[B, mlp_width]`.
    mlp_gate: Vec<f32>,
    mlp_up: Vec<f32>,
    /// RoPE cos/sin of the chunk's positions `[B, rotary_dim/2]`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    /// Per-thread row/score buffers.
    threads: ThreadScratch,
    /// One embedding row in its stored layout, unpacked from a packed head (at most 4
    /// bytes per value: F32 is the widest stored type).
    embd_row: Vec<u8>,
}

impl Scratch {
    fn new(hp: &HParams, batch: usize, n_threads: usize) -> Scratch {
        let has_attn = hp.layer_kinds.contains(&LayerKind::Attention);
        let has_rec = hp.layer_kinds.contains(&LayerKind::Recurrent);
        let l = if has_rec { hp.lru_width } else { 0 };
        let (qw, kvw) = if has_attn {
            (hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim)
        } else {
            (0, 0)
        };
        let half_rot = if has_attn { hp.rotary_dim / 2 } else { 0 };
        // Longest weight row (matmul) or score vector (attention) a thread handles.
        let per_thread = [
            hp.hidden,
            hp.mlp_width,
            l,
            qw,
            // Score rows of every query head sharing one KV head, so that one attention
            // task can serve them all with a single pass over the keys and values.
            if has_attn {
                (hp.n_heads / hp.n_kv_heads.max(1)).max(1) * (hp.window + 1)
            } else {
                0
            },
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let z = |n: usize| vec![0.0f32; batch * n];
        Scratch {
            x: z(hp.hidden),
            norm: z(hp.hidden),
            block_out: z(hp.hidden),
            rg_y: z(l),
            rg_x: z(l),
            rg_conv: z(l),
            rg_gate_x: z(l),
            rg_gate_a: z(l),
            q: z(qw),
            k: z(kvw),
            v: z(kvw),
            attn: z(qw),
            mlp_gate: z(hp.mlp_width),
            mlp_up: z(hp.mlp_width),
            rope_cos: z(half_rot),
            rope_sin: z(half_rot),
            threads: ThreadScratch::new(n_threads, per_thread),
            embd_row: vec![0u8; 4 * hp.hidden],
        }
    }
}

/// Another executor for [`Context::eval`] (the CUDA backend implements it): it owns the
/// sequence state while attached, and the CPU state is not used.
pub trait Offload: Send {
    /// Runs `tokens` at positions `first_pos ..`; writes the last token's logits to `logits`
    /// and, when given, every token's logits to `all_logits` (`tokens.len() * n_vocab`).
    fn eval(
        &mut self,
        tokens: &[u32],
        first_pos: usize,
        logits: &mut [f32],
        all_logits: Option<&mut [f32]>,
    ) -> Result<()>;
    /// Zeroes the sequence state.
    fn reset(&mut self) -> Result<()>;
    /// One line naming the device, for logs.
    fn describe(&self) -> String;
}

/// Which rows of a chunk go through the output head.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadRows {
    None,
    Last,
    All,
}

/// One decoding sequence over a shared [`Model`].
pub struct Context {
    model: Arc<Model>,
    params: ContextParams,
    pool: rayon::ThreadPool,
    layers: Vec<LayerState>,
    position: usize,
    scratch: Scratch,
    /// Logits of the last evaluated position `[n_vocab]`.
    logits: Vec<f32>,
    /// `[n_rows, n_vocab]` when the last eval asked for all logits (else empty).
    all_logits: Vec<f32>,
    /// When set, `eval` runs there instead of on the CPU.
    offload: Option<Box<dyn Offload>>,
}

impl Context {
    pub fn new(model: Arc<Model>, params: ContextParams) -> Result<Context> {
        if params.batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch_size must be at least 1".into(),
            ));
        }
        let n_threads = if params.n_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            params.n_threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n_threads)
            .thread_name(|i| format!("rgemma-{i}"))
            .build()
            .map_err(|e| {
                Error::InvalidArgument(format!("cannot start {n_threads} threads: {e}"))
            })?;
        let hp = model.hparams();
        let layers = hp
            .layer_kinds
            .iter()
            .map(|&k| LayerState::new(k, hp))
            .collect();
        let scratch = Scratch::new(hp, params.batch_size, n_threads);
        let logits = vec![0.0; hp.n_vocab];
        Ok(Context {
            model,
            params,
            pool,
            layers,
            position: 0,
            scratch,
            logits,
            all_logits: Vec::new(),
            offload: None,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn params(&self) -> ContextParams {
        self.params
    }

    /// Runs `tokens` (any count, in chunks of `batch_size`) at the next positions. Afterwards
    /// [`Context::logits`] holds the logits of the last token and, when `all_logits` is set,
    /// [`Context::all_logits`] one row per token of this call. An id `>= n_vocab` is refused
    /// before anything changes.
    pub fn eval(&mut self, tokens: &[u32], all_logits: bool) -> Result<()> {
        let n_vocab = self.model.n_vocab();
        if tokens.is_empty() {
            return Err(Error::InvalidArgument(
                "eval needs at least one token".into(),
            ));
        }
        if let Some((i, &id)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= n_vocab)
        {
            return Err(Error::InvalidArgument(format!(
                "token {i} has id {id}, outside the vocabulary of {n_vocab}"
            )));
        }
        if all_logits {
            self.all_logits.clear();
            self.all_logits.resize(tokens.len() * n_vocab, 0.0);
        } else {
            self.all_logits.clear();
        }
        if let Some(off) = &mut self.offload {
            let all = all_logits.then_some(&mut self.all_logits[..]);
            off.eval(tokens, self.position, &mut self.logits, all)?;
            self.position += tokens.len();
            return Ok(());
        }
        let batch = self.params.batch_size;
        let n_chunks = tokens.len().div_ceil(batch);
        let Context {
            model,
            pool,
            layers,
            position,
            scratch,
            logits,
            all_logits: all,
            ..
        } = self;
        let model: &Model = model;
        for (ci, chunk) in tokens.chunks(batch).enumerate() {
            let first_row = ci * batch;
            let (head, out): (HeadRows, &mut [f32]) = if all_logits {
                let rows = &mut all[first_row * n_vocab..(first_row + chunk.len()) * n_vocab];
                (HeadRows::All, rows)
            } else if ci + 1 == n_chunks {
                (HeadRows::Last, &mut logits[..])
            } else {
                (HeadRows::None, &mut [][..])
            };
            let first_pos = *position;
            pool.install(|| forward_chunk(model, layers, scratch, chunk, first_pos, head, out))?;
            *position += chunk.len();
        }
        if all_logits {
            let last = tokens.len() - 1;
            logits.copy_from_slice(&all[last * n_vocab..(last + 1) * n_vocab]);
        }
        Ok(())
    }

    /// Logits of the last evaluated position (`n_vocab` values, after the soft-cap).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// When the last eval asked for all logits: `n_tokens * n_vocab` values, row i = logits
    /// after token i of that call. Empty otherwise.
    pub fn all_logits(&self) -> &[f32] {
        &self.all_logits
    }

    /// Number of tokens evaluated since creation or the last reset (= next position).
    pub fn position(&self) -> usize {
        self.position
    }

    /// Starts a new sequence: position 0, all state zeroed.
    pub fn reset(&mut self) {
        for layer in &mut self.layers {
            for buf in layer.buffers() {
                buf.fill(0.0);
            }
        }
        self.position = 0;
        self.logits.fill(0.0);
        self.all_logits.clear();
        if let Some(off) = &mut self.offload {
            // A failed reset leaves stale GPU state: detach so that evaluation continues on
            // the (zeroed) CPU state instead.
            if off.reset().is_err() {
                self.offload = None;
            }
        }
    }

    /// Runs every later `eval` on `offload` (e.g. `rgemma::cuda::CudaOffload`), starting a
    /// new sequence; `None` returns to the CPU.
    pub fn set_offload(&mut self, offload: Option<Box<dyn Offload>>) {
        self.offload = offload;
        self.reset();
    }

    /// The attached executor's description, `None` on the CPU.
    pub fn offload_description(&self) -> Option<String> {
        self.offload.as_ref().map(|o| o.describe())
    }

    /// Selects how matmuls are computed: the SIMD kernels with 8-bit activations for
    /// quantized weights (the default), or the f32 reference that decodes each weight row
    /// (`RGEMMA_MATMUL=reference` sets the latter for every new context).
    pub fn set_matmul_path(&mut self, path: MatmulPath) {
        self.scratch.threads.set_path(path);
    }

    /// Bytes of sequence state (conv tails, RG-LRU states, K/V rings). Fixed for a model.
    pub fn state_size_bytes(&self) -> usize {
        self.layers.iter().map(LayerState::size_bytes).sum()
    }
}

/// Runs one chunk of tokens at positions `first_pos ..` through every layer, updating the
/// state, and writes the requested head rows into `out` (`[rows, n_vocab]`).
fn forward_chunk(
    model: &Model,
    layers: &mut [LayerState],
    s: &mut Scratch,
    tokens: &[u32],
    first_pos: usize,
    head: HeadRows,
    out: &mut [f32],
) -> Result<()> {
    let hp = model.hparams();
    let w = model.weights();
    let file = model.gguf();
    let t_len = tokens.len();
    let hid = hp.hidden;

    // Embedding rows, scaled.
    let embd = &w.token_embd;
    let embd_data = embd.data(file);
    for (t, &id) in tokens.iter().enumerate() {
        let id = id as usize;
        let row = &mut s.x[t * hid..(t + 1) * hid];
        let stored = match &embd.packed {
            // The packed head's row, back in the stored layout (its file pages were
            // released after packing, so reading them would fault them back in).
            Some(p) => {
                let buf = &mut s.embd_row[..embd.row_bytes];
                p.unpack_row(embd.ty, embd.cols, id, buf)?;
                &*buf
            }
            None => &embd_data[id * embd.row_bytes..(id + 1) * embd.row_bytes],
        };
        dequantize_row(embd.ty, stored, row)?;
        for v in row.iter_mut() {
            *v *= hp.embed_scale;
        }
    }

    if hp.layer_kinds.contains(&LayerKind::Attention) {
        let half = hp.rotary_dim / 2;
        rope_tables(
            first_pos,
            t_len,
            hp.rotary_dim,
            hp.rope_theta,
            &mut s.rope_cos[..t_len * half],
            &mut s.rope_sin[..t_len * half],
        );
    }

    for (lw, state) in w.layers.iter().zip(layers.iter_mut()) {
        rmsnorm_rows(
            &s.x[..t_len * hid],
            &lw.attn_norm,
            hp.rms_eps,
            &mut s.norm[..t_len * hid],
        );
        match (&lw.temporal, state) {
            (TemporalWeights::Recurrent(rw), LayerState::Recurrent { conv_tail, h }) => {
                recurrent_block(model, rw, conv_tail, h, s, t_len, first_pos)?
            }
            (TemporalWeights::Attention(aw), LayerState::Attention { k_ring, v_ring }) => {
                attention_block(model, aw, k_ring, v_ring, s, t_len, first_pos)?
            }
            _ => {
                return Err(Error::Format(
                    "layer state does not match layer weights".into(),
                ))
            }
        }
        add_in_place(&mut s.x[..t_len * hid], &s.block_out[..t_len * hid]);
        rmsnorm_rows(
            &s.x[..t_len * hid],
            &lw.ffn_norm,
            hp.rms_eps,
            &mut s.norm[..t_len * hid],
        );
        mlp_block(model, lw, s, t_len)?;
        add_in_place(&mut s.x[..t_len * hid], &s.block_out[..t_len * hid]);
    }

    let rows = match head {
        HeadRows::None => return Ok(()),
        HeadRows::Last => t_len - 1..t_len,
        HeadRows::All => 0..t_len,
    };
    let n_rows = rows.len();
    rmsnorm_rows(
        &s.x[rows.start * hid..rows.end * hid],
        &w.output_norm,
        hp.rms_eps,
        &mut s.norm[..n_rows * hid],
    );
    let n_vocab = hp.n_vocab;
    let out = &mut out[..n_rows * n_vocab];
    matmul(
        embd,
        embd_data,
        InputMap::Dense,
        &s.norm,
        hid,
        n_rows,
        None,
        out,
        &s.threads,
    )?;
    let cap = hp.softcap;
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .for_each(|c| softcap(c, cap));
    Ok(())
}

/// Dense `out[T, rows] = W · norm[T, hidden] + b`.
fn linear(
    model: &Model,
    m: &super::weights::Matrix,
    bias: Option<&[f32]>,
    input: &[f32],
    t_len: usize,
    out: &mut [f32],
    threads: &ThreadScratch,
) -> Result<()> {
    let data = m.data(model.gguf());
    matmul(
        m,
        data,
        InputMap::Dense,
        input,
        m.cols,
        t_len,
        bias,
        &mut out[..t_len * m.rows],
        threads,
    )
}

/// Conv1D + RG-LRU temporal block: reads `s.norm`, writes `s.block_out`.
fn recurrent_block(
    model: &Model,
    rw: &RecurrentWeights,
    conv_tail: &mut [f32],
    h: &mut [f32],
    s: &mut Scratch,
    t_len: usize,
    first_pos: usize,
) -> Result<()> {
    let hp = model.hparams();
    let l = hp.lru_width;
    let n = t_len * l;
    let file = model.gguf();
    let mut products = [
        Product {
            w: &rw.linear_y,
            wdata: rw.linear_y.data(file),
            bias: Some(&rw.linear_y_bias),
            out: &mut s.rg_y[..n],
        },
        Product {
            w: &rw.linear_x,
            wdata: rw.linear_x.data(file),
            bias: Some(&rw.linear_x_bias),
            out: &mut s.rg_x[..n],
        },
    ];
    matmul_same_input(
        &mut products,
        InputMap::Dense,
        &s.norm,
        hp.hidden,
        t_len,
        &s.threads,
    )?;
    let th = &s.threads;
    s.rg_y[..n]
        .par_chunks_mut(ELEMENTWISE_CHUNK)
        .for_each(gelu_in_place);
    conv1d_chunk(
        &s.rg_x[..n],
        conv_tail,
        &rw.conv_w,
        &rw.conv_b,
        &mut s.rg_conv[..n],
    );

    let blocks = InputMap::BlockDiag {
        out_per_block: hp.gate_block_width(),
    };
    // Both gates read the conv output: one conversion, one parallel loop when packed.
    let mut gates = [
        Product {
            w: &rw.input_gate,
            wdata: rw.input_gate.data(file),
            bias: Some(&rw.input_gate_bias),
            out: &mut s.rg_gate_x[..n],
        },
        Product {
            w: &rw.a_gate,
            wdata: rw.a_gate.data(file),
            bias: Some(&rw.a_gate_bias),
            out: &mut s.rg_gate_a[..n],
        },
    ];
    matmul_same_input(&mut gates, blocks, &s.rg_conv, l, t_len, th)?;
    // The scan output replaces linear_x (no longer needed), then merges with the GeLU branch.
    rglru_chunk(
        &s.rg_conv[..n],
        &s.rg_gate_x[..n],
        &s.rg_gate_a[..n],
        &rw.softplus_a,
        h,
        first_pos,
        &mut s.rg_x[..n],
    );
    for (o, y) in s.rg_x[..n].iter_mut().zip(&s.rg_y[..n]) {
        *o *= y;
    }
    linear(
        model,
        &rw.linear_out,
        Some(&rw.linear_out_bias),
        &s.rg_x,
        t_len,
        &mut s.block_out,
        th,
    )
}

/// Local MQA temporal block: reads `s.norm`, writes `s.block_out`.
fn attention_block(
    model: &Model,
    aw: &AttentionWeights,
    k_ring: &mut [f32],
    v_ring: &mut [f32],
    s: &mut Scratch,
    t_len: usize,
    first_pos: usize,
) -> Result<()> {
    let hp = model.hparams();
    let g = AttnGeom {
        n_heads: hp.n_heads,
        n_kv_heads: hp.n_kv_heads,
        head_dim: hp.head_dim,
        window: hp.window,
    };
    let (hd, half) = (hp.head_dim, hp.rotary_dim / 2);
    let (qw, kvw) = (g.q_width(), g.kv_width());
    let file = model.gguf();
    let mut products =
        [(&aw.q, &mut s.q), (&aw.k, &mut s.k), (&aw.v, &mut s.v)].map(|(w, out)| Product {
            w,
            wdata: w.data(file),
            bias: None,
            out: &mut out[..t_len * w.rows],
        });
    matmul_same_input(
        &mut products,
        InputMap::Dense,
        &s.norm,
        hp.hidden,
        t_len,
        &s.threads,
    )?;
    let th = &s.threads;
    for t in 0..t_len {
        let cos = &s.rope_cos[t * half..(t + 1) * half];
        let sin = &s.rope_sin[t * half..(t + 1) * half];
        for head in s.q[t * qw..(t + 1) * qw].chunks_exact_mut(hd) {
            rope_apply(head, cos, sin);
        }
        for head in s.k[t * kvw..(t + 1) * kvw].chunks_exact_mut(hd) {
            rope_apply(head, cos, sin);
        }
    }
    let (q, k, v) = (&s.q[..t_len * qw], &s.k[..t_len * kvw], &s.v[..t_len * kvw]);
    attend_chunk(
        g,
        q,
        k,
        v,
        k_ring,
        v_ring,
        first_pos,
        &mut s.attn[..t_len * qw],
        th,
    );
    write_ring(g, k, v, k_ring, v_ring, first_pos);
    linear(
        model,
        &aw.o,
        Some(&aw.o_bias),
        &s.attn,
        t_len,
        &mut s.block_out,
        th,
    )
}

/// GeGLU MLP: reads `s.norm`, writes `s.block_out`.
fn mlp_block(model: &Model, lw: &LayerWeights, s: &mut Scratch, t_len: usize) -> Result<()> {
    let n = t_len * model.hparams().mlp_width;
    let file = model.gguf();
    let mut products = [
        Product {
            w: &lw.ffn_gate,
            wdata: lw.ffn_gate.data(file),
            bias: Some(&lw.ffn_gate_bias),
            out: &mut s.mlp_gate[..n],
        },
        Product {
            w: &lw.ffn_up,
            wdata: lw.ffn_up.data(file),
            bias: Some(&lw.ffn_up_bias),
            out: &mut s.mlp_up[..n],
        },
    ];
    matmul_same_input(
        &mut products,
        InputMap::Dense,
        &s.norm,
        model.hparams().hidden,
        t_len,
        &s.threads,
    )?;
    let th = &s.threads;
    s.mlp_gate[..n]
        .par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(s.mlp_up[..n].par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(gs, us)| gelu_mul(gs, us));
    linear(
        model,
        &lw.ffn_down,
        Some(&lw.ffn_down_bias),
        &s.mlp_gate,
        t_len,
        &mut s.block_out,
        th,
    )
}
