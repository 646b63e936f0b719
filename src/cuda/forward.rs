//! The forward pass on the GPU, mirroring src/model/context.rs step by step.
//!
//! A call runs a batch of *rows* made of *segments*: a segment is a run of consecutive
//! positions of one sequence (a prompt chunk), or a single decode token; batched decoding is
//! one segment per sequence. Two small tables describe the batch to the kernels (see
//! cuda/recurrent.cu): 4 ints per row (sequence slot, position, first row of its segment,
//! segment length) and 3 per segment (first row, length, sequence slot).

use std::cell::Cell;
use std::sync::Arc;

use cudarc::driver::{sys, CudaGraph, CudaStream, PushKernelArg};
use rgemma_quant::GgmlType;

use super::kernels::Kernels;
use super::kernels::{
    cfg, f32_bytes_mut, grid_1d, i32_bytes, launch, DevBuf, MMV_MAX_COLS, Q8_1_BLOCK_BYTES,
};
use super::weights::{CudaModel, GpuLayer, GpuMatrix, GpuTemporal};
use crate::model::{LayerKind, Offload};
use crate::{Error, Result};

/// Per-layer state of all sequences.
enum StateGpu {
    /// conv tails `[S, K-1, L]`, RG-LRU states `[S, L]`.
    Recurrent { conv_tail: DevBuf, h: DevBuf },
    /// K/V rings `[S, W, kv_width]` (keys after RoPE).
    Attention { k_ring: DevBuf, v_ring: DevBuf },
}

/// Activation buffers for up to `max_rows` rows.
struct ScratchGpu {
    x: DevBuf,
    norm: DevBuf,
    block_out: DevBuf,
    rg_y: DevBuf,
    rg_x: DevBuf,
    rg_conv: DevBuf,
    gate_x: DevBuf,
    gate_a: DevBuf,
    q: DevBuf,
    k: DevBuf,
    v: DevBuf,
    attn: DevBuf,
    mlp_gate: DevBuf,
    mlp_up: DevBuf,
    /// q8_1 activations of the widest matmul input, `MMV_MAX_COLS` rows.
    act_q8: DevBuf,
    /// `[max_rows, n_vocab]`.
    logits: DevBuf,
    ids: DevBuf,
    rows: DevBuf,
    segs: DevBuf,
    argmax: DevBuf,
}

/// Which rows of a batch get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadRows {
    None,
    /// The last row of the batch only.
    Last,
    /// Every row.
    All,
}

/// The state of `n_seq` sequences on the GPU and the forward pass over them.
pub struct CudaBatch {
    model: Arc<CudaModel>,
    n_seq: usize,
    max_rows: usize,
    layers: Vec<StateGpu>,
    s: ScratchGpu,
    /// Host copies of the row/segment tables (reused: no allocation per call).
    row_tab: Vec<i32>,
    seg_tab: Vec<i32>,
    ids_host: Vec<i32>,
    /// Rows of logits present in `s.logits` after the last call, and where they start.
    head_rows: usize,
    /// Whether decode-sized forward passes run from captured graphs.
    use_graphs: bool,
    /// Which input `s.act_q8` holds in q8_1 form (see [`linear`]).
    q8_input: Q8Input,
    /// Captured forward passes by (rows, segments, head rows).
    graphs: Vec<((usize, usize, HeadRows), SendGraph)>,
}

/// A captured forward pass. Its handles belong to this batch's context and are only used
/// through `&mut CudaBatch`, so moving it to another thread is sound (cudarc binds the
/// context on every call).
struct SendGraph(CudaGraph);
// SAFETY: see above; the graph is never used from two threads at once.
unsafe impl Send for SendGraph {}

impl CudaBatch {
    /// State for `n_seq` sequences and scratch for `max_rows` rows per forward call (prompt
    /// chunks longer than that are split).
    pub fn new(model: Arc<CudaModel>, n_seq: usize, max_rows: usize) -> Result<CudaBatch> {
        if n_seq == 0 || max_rows == 0 {
            return Err(Error::InvalidArgument(
                "CUDA batch needs at least one sequence and one row".into(),
            ));
        }
        let hp = model.hparams.clone();
        let st = &model.dev.stream;
        let f = |n: usize| DevBuf::zeros(st, n * 4);
        let mut layers = Vec::new();
        for kind in &hp.layer_kinds {
            layers.push(match kind {
                LayerKind::Recurrent => StateGpu::Recurrent {
                    conv_tail: f(n_seq * hp.conv_kernel.saturating_sub(1) * hp.lru_width)?,
                    h: f(n_seq * hp.lru_width)?,
                },
                LayerKind::Attention => {
                    let n = n_seq * hp.window * hp.n_kv_heads * hp.head_dim;
                    StateGpu::Attention {
                        k_ring: f(n)?,
                        v_ring: f(n)?,
                    }
                }
            });
        }
        let (l, qw, kvw) = (
            hp.lru_width,
            hp.n_heads * hp.head_dim,
            hp.n_kv_heads * hp.head_dim,
        );
        let widest = [hp.hidden, hp.mlp_width, l, qw]
            .into_iter()
            .max()
            .unwrap_or(0);
        let r = max_rows;
        let s = ScratchGpu {
            x: f(r * hp.hidden)?,
            norm: f(r * hp.hidden)?,
            block_out: f(r * hp.hidden)?,
            rg_y: f(r * l)?,
            rg_x: f(r * l)?,
            rg_conv: f(r * l)?,
            gate_x: f(r * l)?,
            gate_a: f(r * l)?,
            q: f(r * qw)?,
            k: f(r * kvw)?,
            v: f(r * kvw)?,
            attn: f(r * qw)?,
            mlp_gate: f(r * hp.mlp_width)?,
            mlp_up: f(r * hp.mlp_width)?,
            act_q8: DevBuf::zeros(st, MMV_MAX_COLS * widest.div_ceil(32) * Q8_1_BLOCK_BYTES)?,
            logits: f(r * hp.n_vocab)?,
            ids: f(r)?,
            rows: f(r * 4)?,
            segs: f(r * 3)?,
            argmax: f(r)?,
        };
        Ok(CudaBatch {
            model,
            n_seq,
            max_rows,
            layers,
            s,
            row_tab: Vec::with_capacity(4 * r),
            seg_tab: Vec::with_capacity(3 * r),
            ids_host: Vec::with_capacity(r),
            head_rows: 0,
            use_graphs: std::env::var("RGEMMA_CUDA_GRAPHS").is_ok_and(|v| v == "1"),
            graphs: Vec::new(),
            q8_input: Cell::new(None),
        })
    }

    pub fn model(&self) -> &Arc<CudaModel> {
        &self.model
    }

    pub fn n_seq(&self) -> usize {
        self.n_seq
    }

    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// Zeroes the state of every sequence (positions restart at 0 by the caller).
    pub fn reset_all(&mut self) -> Result<()> {
        let st = self.model.dev.stream.clone();
        for l in &mut self.layers {
            match l {
                StateGpu::Recurrent { conv_tail, h } => {
                    conv_tail.zero(&st)?;
                    h.zero(&st)?;
                }
                StateGpu::Attention { k_ring, v_ring } => {
                    k_ring.zero(&st)?;
                    v_ring.zero(&st)?;
                }
            }
        }
        Ok(())
    }

    /// Runs `tokens` of sequence `seq` at positions `first_pos ..` (split into chunks of
    /// `max_rows`). Afterwards the logits of the last token (or, with `all_logits` and a
    /// single chunk, of every token) are on the device: see [`CudaBatch::logits_to_host`].
    /// When `all_out` is given (`tokens.len() * n_vocab` values), every row's logits are
    /// copied there chunk by chunk.
    pub fn eval_sequence(
        &mut self,
        seq: usize,
        tokens: &[u32],
        first_pos: usize,
        mut all_out: Option<&mut [f32]>,
    ) -> Result<()> {
        let n_vocab = self.model.hparams.n_vocab;
        self.check_tokens(tokens)?;
        if seq >= self.n_seq {
            return Err(Error::InvalidArgument(format!(
                "sequence {seq} of a batch of {}",
                self.n_seq
            )));
        }
        if let Some(out) = &all_out {
            if out.len() != tokens.len() * n_vocab {
                return Err(Error::InvalidArgument("all-logits buffer size".into()));
            }
        }
        let n_chunks = tokens.len().div_ceil(self.max_rows);
        for (ci, chunk) in tokens.chunks(self.max_rows).enumerate() {
            let pos0 = first_pos + ci * self.max_rows;
            self.row_tab.clear();
            self.seg_tab.clear();
            self.ids_host.clear();
            for (i, &t) in chunk.iter().enumerate() {
                self.row_tab.extend_from_slice(&[
                    seq as i32,
                    (pos0 + i) as i32,
                    0,
                    chunk.len() as i32,
                ]);
                self.ids_host.push(t as i32);
            }
            self.seg_tab
                .extend_from_slice(&[0, chunk.len() as i32, seq as i32]);
            let head = if all_out.is_some() {
                HeadRows::All
            } else if ci + 1 == n_chunks {
                HeadRows::Last
            } else {
                HeadRows::None
            };
            self.forward(chunk.len(), head)?;
            if let Some(out) = all_out.as_deref_mut() {
                let start = ci * self.max_rows * n_vocab;
                self.logits_to_host(&mut out[start..start + chunk.len() * n_vocab])?;
            }
        }
        Ok(())
    }

    /// One decode step for several sequences at once: row i is token `tokens[i]` of
    /// sequence `seqs[i]` at position `positions[i]` (distinct sequences). Afterwards row i of
    /// the device logits belongs to `seqs[i]`.
    pub fn decode_step(
        &mut self,
        tokens: &[u32],
        seqs: &[usize],
        positions: &[usize],
    ) -> Result<()> {
        self.check_tokens(tokens)?;
        let n = tokens.len();
        if seqs.len() != n || positions.len() != n || n > self.max_rows {
            return Err(Error::InvalidArgument(format!(
                "decode_step: {n} tokens, {} sequences, {} positions, at most {} rows",
                seqs.len(),
                positions.len(),
                self.max_rows
            )));
        }
        self.row_tab.clear();
        self.seg_tab.clear();
        self.ids_host.clear();
        for i in 0..n {
            if seqs[i] >= self.n_seq || seqs[..i].contains(&seqs[i]) {
                return Err(Error::InvalidArgument(format!(
                    "decode_step: sequence {} is out of range or repeated",
                    seqs[i]
                )));
            }
            self.row_tab
                .extend_from_slice(&[seqs[i] as i32, positions[i] as i32, i as i32, 1]);
            self.seg_tab
                .extend_from_slice(&[i as i32, 1, seqs[i] as i32]);
            self.ids_host.push(tokens[i] as i32);
        }
        self.forward(n, HeadRows::All)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let n_vocab = self.model.hparams.n_vocab;
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
        Ok(())
    }

    /// Copies the logits rows of the last call (`head_rows * n_vocab` values, or a prefix).
    pub fn logits_to_host(&self, dst: &mut [f32]) -> Result<()> {
        let n = self.head_rows * self.model.hparams.n_vocab;
        if dst.len() > n {
            return Err(Error::InvalidArgument(format!(
                "{} logits asked, {n} computed",
                dst.len()
            )));
        }
        self.s
            .logits
            .download(&self.model.dev.stream, 0, f32_bytes_mut(dst))
    }

    /// Greedy tokens of the logits rows of the last call, computed on the GPU (only the ids
    /// come back).
    pub fn argmax(&self, dst: &mut [u32]) -> Result<()> {
        let m = &self.model;
        let n = dst.len().min(self.head_rows);
        if n == 0 {
            return Ok(());
        }
        let st = &m.dev.stream;
        launch!(
            st,
            m.kernels.argmax_rows,
            cfg((n as u32, 1, 1), 1024, 0),
            &self.s.logits.ptr,
            &(m.hparams.n_vocab as i32),
            &self.s.argmax.ptr
        )?;
        let mut ids = [0i32; 64];
        for (c, chunk) in dst[..n].chunks_mut(64).enumerate() {
            let bytes = i32_bytes_mut(&mut ids[..chunk.len()]);
            self.s.argmax.download(st, c * 64 * 4, bytes)?;
            for (d, &v) in chunk.iter_mut().zip(&ids) {
                *d = v as u32;
            }
        }
        Ok(())
    }

    /// Bytes of sequence state on the device.
    pub fn state_size_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                StateGpu::Recurrent { conv_tail, h } => conv_tail.bytes + h.bytes,
                StateGpu::Attention { k_ring, v_ring } => k_ring.bytes + v_ring.bytes,
            })
            .sum()
    }

    /// The forward pass over the rows described by the host tables.
    fn forward(&mut self, n: usize, head: HeadRows) -> Result<()> {
        let st = self.model.dev.stream.clone();
        let n_seg = self.seg_tab.len() / 3;
        self.s.rows.upload(&st, 0, i32_bytes(&self.row_tab))?;
        self.s.segs.upload(&st, 0, i32_bytes(&self.seg_tab))?;
        self.s.ids.upload(&st, 0, i32_bytes(&self.ids_host))?;
        self.head_rows = match head {
            HeadRows::None => 0,
            HeadRows::Last => 1,
            HeadRows::All => n,
        };
        // Every launch below depends only on (n, n_seg, head): the tables are read on the
        // device. So a decode-sized step can be replayed from a captured CUDA graph.
        if !self.use_graphs || n > MMV_MAX_COLS {
            return self.run_kernels(n, n_seg, head);
        }
        let key = (n, n_seg, head);
        if let Some((_, g)) = self.graphs.iter().find(|(k, _)| *k == key) {
            return g.0.launch().map_err(|e| super::cu_err("graph launch", e));
        }
        st.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| super::cu_err("begin capture", e))?;
        let ran = self.run_kernels(n, n_seg, head);
        // End the capture in every case, so that the stream is usable again.
        let graph = st.end_capture(sys::CUgraphInstantiate_flags(0));
        match (ran, graph) {
            (Ok(()), Ok(Some(g))) => {
                g.launch().map_err(|e| super::cu_err("graph launch", e))?;
                self.graphs.push((key, SendGraph(g)));
                Ok(())
            }
            (ran, graph) => {
                // Capture failed: run directly from now on.
                self.use_graphs = false;
                ran?;
                graph.map_err(|e| super::cu_err("end capture", e))?;
                self.run_kernels(n, n_seg, head)
            }
        }
    }

    /// Launches the whole forward pass for `n` rows in `n_seg` segments (tables uploaded).
    fn run_kernels(&self, n: usize, n_seg: usize, head: HeadRows) -> Result<()> {
        let m = self.model.clone();
        let hp = &m.hparams;
        let st = m.dev.stream.clone();
        let k = &m.kernels;
        let hid = hp.hidden;
        let s = &self.s;

        // Embedding rows, scaled.
        let e = &m.token_embd;
        launch!(
            st,
            k.embed_rows,
            cfg((hid.div_ceil(256) as u32, n as u32, 1), 256, 0),
            &e.buf.ptr,
            &e.type_id(),
            &(e.row_bytes as u64),
            &s.ids.ptr,
            &(hid as i32),
            &hp.embed_scale,
            &s.x.ptr
        )?;

        for (lw, state) in m.layers.iter().zip(self.layers.iter()) {
            self.rmsnorm(s.x.ptr, lw.attn_norm.ptr, n, s.norm.ptr)?;
            match (&lw.temporal, state) {
                (GpuTemporal::Recurrent(rw), StateGpu::Recurrent { conv_tail, h }) => {
                    let l = hp.lru_width;
                    let nl = (n * l) as u64;
                    self.linear(
                        &rw.linear_y,
                        rw.linear_y_bias.ptr,
                        s.norm.ptr,
                        n,
                        None,
                        s.rg_y.ptr,
                    )?;
                    launch!(
                        st,
                        k.gelu_in_place,
                        cfg(grid_1d(n * l), 256, 0),
                        &s.rg_y.ptr,
                        &nl
                    )?;
                    // Same input as linear_y (the GeLU touched only rg_y).
                    self.linear_same_input(
                        &rw.linear_x,
                        rw.linear_x_bias.ptr,
                        s.norm.ptr,
                        n,
                        s.rg_x.ptr,
                    )?;
                    let seg_grid = (l.div_ceil(128) as u32, n_seg as u32, 1);
                    launch!(
                        st,
                        k.conv1d_segments,
                        cfg(seg_grid, 128, 0),
                        &s.rg_x.ptr,
                        &conv_tail.ptr,
                        &rw.conv_w.ptr,
                        &rw.conv_b.ptr,
                        &s.rg_conv.ptr,
                        &s.segs.ptr,
                        &s.rows.ptr,
                        &(l as i32),
                        &(hp.conv_kernel as i32)
                    )?;
                    let bw = hp.gate_block_width();
                    self.linear(
                        &rw.input_gate,
                        rw.input_gate_bias.ptr,
                        s.rg_conv.ptr,
                        n,
                        Some(bw),
                        s.gate_x.ptr,
                    )?;
                    self.linear(
                        &rw.a_gate,
                        rw.a_gate_bias.ptr,
                        s.rg_conv.ptr,
                        n,
                        Some(bw),
                        s.gate_a.ptr,
                    )?;
                    // The scan output replaces linear_x, then merges with the GeLU branch.
                    launch!(
                        st,
                        k.rglru_segments,
                        cfg(seg_grid, 128, 0),
                        &s.rg_conv.ptr,
                        &s.gate_x.ptr,
                        &s.gate_a.ptr,
                        &rw.softplus_a.ptr,
                        &h.ptr,
                        &s.rg_x.ptr,
                        &s.segs.ptr,
                        &s.rows.ptr,
                        &(l as i32)
                    )?;
                    launch!(
                        st,
                        k.mul_in_place,
                        cfg(grid_1d(n * l), 256, 0),
                        &s.rg_x.ptr,
                        &s.rg_y.ptr,
                        &nl
                    )?;
                    self.linear(
                        &rw.linear_out,
                        rw.linear_out_bias.ptr,
                        s.rg_x.ptr,
                        n,
                        None,
                        s.block_out.ptr,
                    )?;
                }
                (GpuTemporal::Attention(aw), StateGpu::Attention { k_ring, v_ring }) => {
                    let (hd, half) = (hp.head_dim, hp.rotary_dim / 2);
                    let (qw, kvw) = (hp.n_heads * hd, hp.n_kv_heads * hd);
                    self.linear(&aw.q, 0, s.norm.ptr, n, None, s.q.ptr)?;
                    self.linear_same_input(&aw.k, 0, s.norm.ptr, n, s.k.ptr)?;
                    self.linear_same_input(&aw.v, 0, s.norm.ptr, n, s.v.ptr)?;
                    if half > 0 {
                        for (buf, heads, width) in
                            [(&s.q, hp.n_heads, qw), (&s.k, hp.n_kv_heads, kvw)]
                        {
                            launch!(
                                st,
                                k.rope_rows,
                                cfg(
                                    (heads as u32, n as u32, 1),
                                    half.next_multiple_of(32).min(256) as u32,
                                    0
                                ),
                                &buf.ptr,
                                &(width as i32),
                                &(hd as i32),
                                &(half as i32),
                                &m.inv_freq.ptr,
                                &s.rows.ptr
                            )?;
                        }
                    }
                    let smem = ((hp.window + 1 + hd) * 4) as u32;
                    launch!(
                        st,
                        k.attend_rows,
                        cfg((hp.n_heads as u32, n as u32, 1), 256, smem),
                        &s.q.ptr,
                        &s.k.ptr,
                        &s.v.ptr,
                        &k_ring.ptr,
                        &v_ring.ptr,
                        &s.attn.ptr,
                        &s.rows.ptr,
                        &(hp.n_heads as i32),
                        &(hp.n_kv_heads as i32),
                        &(hd as i32),
                        &(hp.window as i32),
                        &(1.0f32 / (hd as f32).sqrt())
                    )?;
                    launch!(
                        st,
                        k.ring_write,
                        cfg((n as u32, 1, 1), 256, 0),
                        &s.k.ptr,
                        &s.v.ptr,
                        &k_ring.ptr,
                        &v_ring.ptr,
                        &s.rows.ptr,
                        &(kvw as i32),
                        &(hp.window as i32)
                    )?;
                    self.linear(&aw.o, aw.o_bias.ptr, s.attn.ptr, n, None, s.block_out.ptr)?;
                }
                _ => {
                    return Err(Error::Format(
                        "layer state does not match layer weights".into(),
                    ))
                }
            }
            let nh = (n * hid) as u64;
            launch!(
                st,
                k.add_in_place,
                cfg(grid_1d(n * hid), 256, 0),
                &s.x.ptr,
                &s.block_out.ptr,
                &nh
            )?;
            self.rmsnorm(s.x.ptr, lw.ffn_norm.ptr, n, s.norm.ptr)?;
            self.mlp(lw, n)?;
            launch!(
                st,
                k.add_in_place,
                cfg(grid_1d(n * hid), 256, 0),
                &s.x.ptr,
                &s.block_out.ptr,
                &nh
            )?;
        }

        let (first, rows) = match head {
            HeadRows::None => return Ok(()),
            HeadRows::Last => (n - 1, 1),
            HeadRows::All => (0, n),
        };
        self.rmsnorm(s.x.f32_at(first * hid), m.output_norm.ptr, rows, s.norm.ptr)?;
        self.linear(&m.token_embd, 0, s.norm.ptr, rows, None, s.logits.ptr)?;
        if hp.softcap > 0.0 {
            let nv = (rows * hp.n_vocab) as u64;
            launch!(
                st,
                k.softcap_in_place,
                cfg(grid_1d(rows * hp.n_vocab), 256, 0),
                &s.logits.ptr,
                &nv,
                &hp.softcap
            )?;
        }
        Ok(())
    }

    /// Replays decode steps (up to 8 rows) from captured CUDA graphs: fewer launch costs.
    /// Off by default; `RGEMMA_CUDA_GRAPHS=1` turns it on for new batches.
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
        if !on {
            self.graphs.clear();
        }
    }

    fn rmsnorm(&self, x: u64, weight: u64, n: usize, out: u64) -> Result<()> {
        let m = &self.model;
        let hid = m.hparams.hidden as i32;
        launch!(
            m.dev.stream,
            m.kernels.rmsnorm_rows,
            cfg((n as u32, 1, 1), 256, 0),
            &x,
            &hid,
            &weight,
            &hid,
            &m.hparams.rms_eps,
            &out
        )
    }

    fn mlp(&self, lw: &GpuLayer, n: usize) -> Result<()> {
        let s = &self.s;
        let m = &self.model;
        self.linear(
            &lw.ffn_gate,
            lw.ffn_gate_bias.ptr,
            s.norm.ptr,
            n,
            None,
            s.mlp_gate.ptr,
        )?;
        self.linear_same_input(&lw.ffn_up, lw.ffn_up_bias.ptr, s.norm.ptr, n, s.mlp_up.ptr)?;
        let nm = (n * m.hparams.mlp_width) as u64;
        launch!(
            m.dev.stream,
            m.kernels.geglu_in_place,
            cfg(grid_1d(n * m.hparams.mlp_width), 256, 0),
            &s.mlp_gate.ptr,
            &s.mlp_up.ptr,
            &nm
        )?;
        self.linear(
            &lw.ffn_down,
            lw.ffn_down_bias.ptr,
            s.mlp_gate.ptr,
            n,
            None,
            s.block_out.ptr,
        )
    }

    /// `out[t, r] = bias[r] + W[r, :] . x[t, off(r) :]`: see [`linear`].
    fn linear(
        &self,
        w: &GpuMatrix,
        bias: u64,
        x: u64,
        n: usize,
        block_rows: Option<usize>,
        out: u64,
    ) -> Result<()> {
        self.q8_input.set(None);
        let m = &self.model;
        linear(
            &m.kernels,
            &m.dev.stream,
            (self.s.act_q8.ptr, &self.q8_input),
            w,
            bias,
            x,
            n,
            block_rows,
            out,
            MatmulKernel::Auto,
        )
    }

    /// As [`CudaBatch::linear`] (dense) for an input that has not changed since the previous
    /// call: its q8_1 form, when that call made one, is reused.
    fn linear_same_input(
        &self,
        w: &GpuMatrix,
        bias: u64,
        x: u64,
        n: usize,
        out: u64,
    ) -> Result<()> {
        let m = &self.model;
        linear(
            &m.kernels,
            &m.dev.stream,
            (self.s.act_q8.ptr, &self.q8_input),
            w,
            bias,
            x,
            n,
            None,
            out,
            MatmulKernel::Auto,
        )
    }
}

/// Which input (device address, rows, width) a q8_1 activation buffer holds, if any.
pub(crate) type Q8Input = Cell<Option<(u64, usize, usize)>>;

/// Which matmul kernel [`linear`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// mmvq (q8_1 activations) for up to 8 rows of Q4_0/Q8_0/Q4_K/Q6_K, else matvec_any for
    /// up to 8 rows, else gemm_tiled.
    Auto,
    /// matvec_any (f32 activations, any type; up to 8 rows).
    Generic,
    /// gemm_tiled (any type, any row count).
    Tiled,
}

/// `out[t, r] = bias[r] + W[r, :] . x[t, off(r) :]` for `n` rows of `x` (row stride = the
/// input width). `block_rows`: rows per block of a block-diagonal weight (each block reads
/// its own `cols`-wide slice of x); `None` for dense. `bias` 0 = none. `act_q8.0` must hold
/// 8 rows of q8_1 blocks of the input width; `act_q8.1` says which input (address, rows,
/// width) they hold: a match skips the quantization (the caller clears it when the input
/// may have changed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    k: &Kernels,
    st: &Arc<CudaStream>,
    (act_q8, q8_input): (u64, &Q8Input),
    w: &GpuMatrix,
    bias: u64,
    x: u64,
    n: usize,
    block_rows: Option<usize>,
    out: u64,
    which: MatmulKernel,
) -> Result<()> {
    let group_rows = block_rows.unwrap_or(w.rows).max(1);
    let groups = w.rows.div_ceil(group_rows);
    let x_width = groups * w.cols;
    let (rows, cols) = (w.rows as i32, w.cols as i32);
    let row_bytes = w.row_bytes as u64;
    let out_stride = w.rows as i32;
    let mmvq = match w.ty {
        GgmlType::Q4_0 => Some(&k.mmvq_q4_0),
        GgmlType::Q8_0 => Some(&k.mmvq_q8_0),
        GgmlType::Q4K => Some(&k.mmvq_q4_k),
        GgmlType::Q6K => Some(&k.mmvq_q6_k),
        _ => None,
    };
    let small = n <= MMV_MAX_COLS;
    if which == MatmulKernel::Auto && small && w.cols.is_multiple_of(32) {
        if let Some(f) = mmvq {
            let act_blocks = (x_width / 32) as i32;
            if q8_input.get() != Some((x, n, x_width)) {
                launch!(
                    st,
                    k.quantize_q8_1,
                    cfg(((x_width / 32).div_ceil(8) as u32, n as u32, 1), 256, 0),
                    &x,
                    &(x_width as i32),
                    &(x_width as i32),
                    &act_q8
                )?;
                q8_input.set(Some((x, n, x_width)));
            }
            return launch!(
                st,
                *f,
                cfg((w.rows.div_ceil(4) as u32, 1, 1), 128, 0),
                &w.buf.ptr,
                &row_bytes,
                &rows,
                &cols,
                &act_q8,
                &act_blocks,
                &(group_rows as i32),
                &bias,
                &out,
                &out_stride,
                &(n as i32)
            );
        }
    }
    if (which == MatmulKernel::Auto && small) || which == MatmulKernel::Generic {
        if !small {
            return Err(Error::InvalidArgument(format!(
                "matvec_any takes at most {MMV_MAX_COLS} rows, got {n}"
            )));
        }
        return launch!(
            st,
            k.matvec_any,
            cfg((w.rows.div_ceil(4) as u32, 1, 1), 128, 0),
            &w.buf.ptr,
            &w.type_id(),
            &row_bytes,
            &rows,
            &cols,
            &x,
            &(x_width as i32),
            &(group_rows as i32),
            &bias,
            &out,
            &out_stride,
            &(n as i32)
        );
    }
    let grid = (
        group_rows.div_ceil(64) as u32,
        n.div_ceil(64) as u32,
        groups as u32,
    );
    launch!(
        st,
        k.gemm_tiled,
        cfg(grid, 256, 0),
        &w.buf.ptr,
        &w.type_id(),
        &row_bytes,
        &rows,
        &cols,
        &x,
        &(x_width as i32),
        &(group_rows as i32),
        &bias,
        &out,
        &out_stride,
        &(n as i32)
    )
}

fn i32_bytes_mut(v: &mut [i32]) -> &mut [u8] {
    // SAFETY: every bit pattern is a valid i32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

/// A one-sequence [`CudaBatch`] behind [`crate::model::Context`]: `Context::eval` runs on
/// the GPU and copies the logits back.
pub struct CudaOffload {
    batch: CudaBatch,
}

impl CudaOffload {
    /// Opens the GPU, uploads the model and allocates the state of one sequence.
    pub fn new(model: &crate::model::Model, batch_size: usize) -> Result<CudaOffload> {
        CudaOffload::with_model(CudaModel::new(model)?, batch_size)
    }

    /// One more sequence over weights already on the GPU.
    pub fn with_model(model: Arc<CudaModel>, batch_size: usize) -> Result<CudaOffload> {
        Ok(CudaOffload {
            batch: CudaBatch::new(model, 1, batch_size)?,
        })
    }

    pub fn batch(&self) -> &CudaBatch {
        &self.batch
    }

    pub fn batch_mut(&mut self) -> &mut CudaBatch {
        &mut self.batch
    }
}

impl Offload for CudaOffload {
    fn eval(
        &mut self,
        tokens: &[u32],
        first_pos: usize,
        logits: &mut [f32],
        all_logits: Option<&mut [f32]>,
    ) -> Result<()> {
        let n_vocab = logits.len();
        match all_logits {
            Some(all) => {
                self.batch
                    .eval_sequence(0, tokens, first_pos, Some(&mut *all))?;
                let last = tokens.len() - 1;
                logits.copy_from_slice(&all[last * n_vocab..(last + 1) * n_vocab]);
            }
            None => {
                self.batch.eval_sequence(0, tokens, first_pos, None)?;
                self.batch.logits_to_host(logits)?;
            }
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        self.batch.reset_all()
    }

    fn describe(&self) -> String {
        format!("CUDA: {}", self.batch.model().describe())
    }
}
