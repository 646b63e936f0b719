//! The CPU forward pass, in one place for single and batched decoding: one batch of rows
//! (tokens of one or more sequences) goes through every layer. What mixes rows of
//! different sequences (the matrix products, norms, activations) runs once over all rows,
//! so the weights are read once per call whatever the number of sequences; what carries
//! state (the conv, the RG-LRU scan, attention over the K/V ring) runs per sequence on that
//! sequence's own [`SeqState`], in parallel across sequences and channels.
//!
//! Rows are laid out grouped by sequence ([`Plan`]): each sequence's rows are contiguous and
//! in their order, so a sequence's rows are a `[T, width]` matrix like a prompt chunk.

use std::marker::PhantomData;

use super::attention::{attend_chunk, attention_scratch_len, write_ring, AttnGeom};
use super::dequant::dequantize_row;
use super::hparams::{HParams, LayerKind};
use super::matmul::{matmul, matmul_same_input, InputMap, Product, ThreadScratch};
use super::ops::{
    add_in_place, gelu_in_place, gelu_mul, rmsnorm_rows, rope_apply, rope_tables, softcap,
};
use super::recurrent::{conv1d_chunk, rglru_chunk};
use super::state::{KvElem, LayerState, Ring, SeqState};
use super::team;
use super::weights::{AttentionWeights, LayerWeights, Matrix, RecurrentWeights, TemporalWeights};
use super::Model;
use crate::{Error, Result};

/// Elements per parallel task in the elementwise passes (GeLU, logit soft-cap).
const ELEMENTWISE_CHUNK: usize = 4096;

/// The rows of one sequence in a batch: rows `start .. start + len` of the grouped layout,
/// at positions `first_pos ..`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub seq: usize,
    pub start: usize,
    pub len: usize,
    pub first_pos: usize,
}

impl Span {
    fn rows(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

/// A batch laid out for [`forward`]. Its vectors are sized once (batch capacity, sequence
/// slots) and refilled per call.
pub(crate) struct Plan {
    /// Token of each row, grouped by sequence.
    pub tokens: Vec<u32>,
    /// One span per sequence with rows, in increasing sequence order.
    pub spans: Vec<Span>,
    /// `[n_seq_max]`: index into `spans` of each sequence with rows.
    pub span_of_seq: Vec<Option<usize>>,
    /// Grouped rows whose logits are wanted; output row `k` is the logits of `head_rows[k]`.
    pub head_rows: Vec<usize>,
}

impl Plan {
    pub fn new(batch: usize, n_seq: usize) -> Plan {
        Plan {
            tokens: Vec::with_capacity(batch),
            spans: Vec::with_capacity(n_seq),
            span_of_seq: vec![None; n_seq],
            head_rows: Vec::with_capacity(batch),
        }
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        self.spans.clear();
        self.span_of_seq.fill(None);
        self.head_rows.clear();
    }
}

/// Activation buffers for one batch of up to `batch_size` rows (row-major `[T, width]`).
pub(crate) struct Scratch {
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
    /// RoPE cos/sin of each row's position `[B, rotary_dim/2]`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    /// Per-thread row/score buffers.
    pub threads: ThreadScratch,
    /// One embedding row in its stored layout, unpacked from a packed head (at most 4
    /// bytes per value: F32 is the widest stored type).
    embd_row: Vec<u8>,
}

impl Scratch {
    pub fn new(hp: &HParams, batch: usize, n_threads: usize) -> Scratch {
        let has_attn = hp.layer_kinds.contains(&LayerKind::Attention);
        let has_rec = hp.layer_kinds.contains(&LayerKind::Recurrent);
        let l = if has_rec { hp.lru_width } else { 0 };
        let (qw, kvw) = if has_attn {
            (hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim)
        } else {
            (0, 0)
        };
        let half_rot = if has_attn { hp.rotary_dim / 2 } else { 0 };
        // Longest weight row (matmul) or score buffer (attention) a thread handles.
        let per_thread = [
            hp.hidden,
            hp.mlp_width,
            l,
            qw,
            // Score rows of every query head sharing one KV head, so that one attention
            // task can serve them all with a single pass over the keys and values.
            if has_attn {
                attention_scratch_len(attn_geom(hp), hp.n_heads / hp.n_kv_heads.max(1))
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

fn attn_geom(hp: &HParams) -> AttnGeom {
    AttnGeom {
        n_heads: hp.n_heads,
        n_kv_heads: hp.n_kv_heads,
        head_dim: hp.head_dim,
        window: hp.window,
    }
}

/// Runs the rows of `plan` through every layer, advancing the state of each sequence with
/// rows (`seqs` is indexed by sequence id), and writes the logits of `plan.head_rows` into
/// `out` (`[head_rows, n_vocab]`). Positions are not advanced here (the caller does).
pub(crate) fn forward(
    model: &Model,
    seqs: &mut [SeqState],
    plan: &Plan,
    s: &mut Scratch,
    out: &mut [f32],
) -> Result<()> {
    let hp = model.hparams();
    let w = model.weights();
    let file = model.gguf();
    let t_len = plan.tokens.len();
    let hid = hp.hidden;

    // Embedding rows, scaled.
    let embd = &w.token_embd;
    let embd_data = embd.data(file);
    for (t, &id) in plan.tokens.iter().enumerate() {
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

    // RoPE tables at each row's position.
    if hp.layer_kinds.contains(&LayerKind::Attention) {
        let half = hp.rotary_dim / 2;
        for sp in &plan.spans {
            let rows = sp.start * half..(sp.start + sp.len) * half;
            rope_tables(
                sp.first_pos,
                sp.len,
                hp.rotary_dim,
                hp.rope_theta,
                &mut s.rope_cos[rows.clone()],
                &mut s.rope_sin[rows],
            );
        }
    }

    for (li, lw) in w.layers.iter().enumerate() {
        rmsnorm_rows(
            &s.x[..t_len * hid],
            &lw.attn_norm,
            hp.rms_eps,
            &mut s.norm[..t_len * hid],
        );
        match &lw.temporal {
            TemporalWeights::Recurrent(rw) => recurrent_block(model, rw, seqs, plan, li, s)?,
            TemporalWeights::Attention(aw) => attention_block(model, aw, seqs, plan, li, s)?,
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

    // The output head, for the rows whose logits are wanted only.
    let n_out = plan.head_rows.len();
    if n_out == 0 {
        return Ok(());
    }
    for (k, &r) in plan.head_rows.iter().enumerate() {
        rmsnorm_rows(
            &s.x[r * hid..(r + 1) * hid],
            &w.output_norm,
            hp.rms_eps,
            &mut s.norm[k * hid..(k + 1) * hid],
        );
    }
    let n_vocab = hp.n_vocab;
    let out = &mut out[..n_out * n_vocab];
    matmul(
        embd,
        embd_data,
        InputMap::Dense,
        &s.norm,
        hid,
        n_out,
        None,
        out,
        &s.threads,
    )?;
    let cap = hp.softcap;
    team::for_each_chunk_mut(out, ELEMENTWISE_CHUNK, |_, c| softcap(c, cap));
    Ok(())
}

/// Runs `f(layer state, span)` for every sequence with rows in the batch, in parallel
/// (sequences are independent; `f` may itself run in parallel across channels or heads).
fn per_sequence(
    seqs: &mut [SeqState],
    plan: &Plan,
    layer: usize,
    f: impl Fn(&mut LayerState, &Span) + Sync,
) {
    let run = |(st, slot): (&mut SeqState, &Option<usize>)| {
        if let Some(k) = *slot {
            f(&mut st.layers[layer], &plan.spans[k]);
        }
    };
    if plan.spans.len() == 1 {
        // One sequence (a prompt, or single decoding): no outer task.
        seqs.iter_mut().zip(&plan.span_of_seq).for_each(run);
    } else {
        team::for_each_chunk_mut(seqs, 1, |i, st| run((&mut st[0], &plan.span_of_seq[i])));
    }
}

/// A `[rows, width]` buffer whose rows per-sequence tasks write, each only its own span.
struct SpanRows<'a> {
    ptr: *mut f32,
    len: usize,
    width: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: tasks write disjoint spans (see `rows`), and the buffer outlives them (`'a`).
unsafe impl Send for SpanRows<'_> {}
unsafe impl Sync for SpanRows<'_> {}

impl<'a> SpanRows<'a> {
    fn new(buf: &'a mut [f32], width: usize) -> SpanRows<'a> {
        SpanRows {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            width,
            _buf: PhantomData,
        }
    }

    /// The rows of `sp`.
    ///
    /// # Safety
    /// No other live borrow covers these rows: callers take each span of one [`Plan`] at
    /// most once, and the spans of a plan are disjoint.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows(&self, sp: &Span) -> &mut [f32] {
        let (start, n) = (sp.start * self.width, sp.len * self.width);
        assert!(start + n <= self.len, "span outside the buffer");
        // SAFETY: in bounds (asserted); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), n) }
    }
}

/// Dense `out[T, rows] = W · input[T, cols] + b`.
fn linear(
    model: &Model,
    m: &Matrix,
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
    seqs: &mut [SeqState],
    plan: &Plan,
    layer: usize,
    s: &mut Scratch,
) -> Result<()> {
    let hp = model.hparams();
    let t_len = plan.tokens.len();
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
    team::for_each_chunk_mut(&mut s.rg_y[..n], ELEMENTWISE_CHUNK, |_, c| gelu_in_place(c));

    // Each sequence's conv over its own rows and tail.
    {
        let rg_x = &s.rg_x[..n];
        let conv_out = SpanRows::new(&mut s.rg_conv[..n], l);
        per_sequence(seqs, plan, layer, |state, sp| {
            let LayerState::Recurrent { conv_tail, .. } = state else {
                unreachable!("layer kinds are checked at load");
            };
            let x = &rg_x[sp.start * l..(sp.start + sp.len) * l];
            // SAFETY: each span is taken once in this pass.
            let out = unsafe { conv_out.rows(sp) };
            conv1d_chunk(x, conv_tail, &rw.conv_w, &rw.conv_b, out);
        });
    }

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

    // Each sequence's scan; the output replaces linear_x (no longer needed).
    {
        let (conv, gx, ga) = (&s.rg_conv[..n], &s.rg_gate_x[..n], &s.rg_gate_a[..n]);
        let scan_out = SpanRows::new(&mut s.rg_x[..n], l);
        per_sequence(seqs, plan, layer, |state, sp| {
            let LayerState::Recurrent { h, .. } = state else {
                unreachable!("layer kinds are checked at load");
            };
            let r = sp.start * l..(sp.start + sp.len) * l;
            // SAFETY: each span is taken once in this pass.
            let out = unsafe { scan_out.rows(sp) };
            let (x, gate_x, gate_a) = (&conv[r.clone()], &gx[r.clone()], &ga[r]);
            rglru_chunk(x, gate_x, gate_a, &rw.softplus_a, h, sp.first_pos, out);
        });
    }
    // Merge with the GeLU branch.
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
    seqs: &mut [SeqState],
    plan: &Plan,
    layer: usize,
    s: &mut Scratch,
) -> Result<()> {
    let hp = model.hparams();
    let t_len = plan.tokens.len();
    let g = attn_geom(hp);
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

    // Each sequence attends over its own ring, then stores its keys and values there.
    {
        let (q, k, v) = (&s.q[..t_len * qw], &s.k[..t_len * kvw], &s.v[..t_len * kvw]);
        let th = &s.threads;
        let attn_out = SpanRows::new(&mut s.attn[..t_len * qw], qw);
        let n_seqs = plan.spans.len();
        per_sequence(seqs, plan, layer, |state, sp| {
            let LayerState::Attention { k_ring, v_ring } = state else {
                unreachable!("layer kinds are checked at load");
            };
            let r = sp.rows();
            let (q, k, v) = (
                &q[r.start * qw..r.end * qw],
                &k[r.start * kvw..r.end * kvw],
                &v[r.start * kvw..r.end * kvw],
            );
            // SAFETY: each span is taken once in this pass.
            let out = unsafe { attn_out.rows(sp) };
            match (k_ring, v_ring) {
                (Ring::F32(kr), Ring::F32(vr)) => {
                    attend_and_store(g, q, k, v, kr, vr, sp, out, th, n_seqs)
                }
                (Ring::F16(kr), Ring::F16(vr)) => {
                    attend_and_store(g, q, k, v, kr, vr, sp, out, th, n_seqs)
                }
                _ => unreachable!("both rings of a layer have one type"),
            }
        });
    }
    linear(
        model,
        &aw.o,
        Some(&aw.o_bias),
        &s.attn,
        t_len,
        &mut s.block_out,
        &s.threads,
    )
}

/// One sequence's attention: its queries over its ring and its own new keys, then the new
/// keys and values into the ring.
#[allow(clippy::too_many_arguments)]
fn attend_and_store<E: KvElem>(
    g: AttnGeom,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    k_ring: &mut [E],
    v_ring: &mut [E],
    sp: &Span,
    out: &mut [f32],
    threads: &ThreadScratch,
    concurrent_seqs: usize,
) {
    attend_chunk(
        g,
        q,
        k,
        v,
        k_ring,
        v_ring,
        sp.first_pos,
        out,
        threads,
        concurrent_seqs,
    );
    write_ring(g, k, v, k_ring, v_ring, sp.first_pos);
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
    let up = &s.mlp_up[..n];
    team::for_each_chunk_mut(&mut s.mlp_gate[..n], ELEMENTWISE_CHUNK, |i, gs| {
        gelu_mul(gs, &up[i * ELEMENTWISE_CHUNK..][..gs.len()])
    });
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

/// Checks that a state matches the model's layers (states are made from the model's own
/// hyperparameters, so this guards against a programming error, not user input).
pub(crate) fn check_state(model: &Model, st: &SeqState) -> Result<()> {
    let ok = model.weights().layers.len() == st.layers.len()
        && model
            .weights()
            .layers
            .iter()
            .zip(&st.layers)
            .all(|(lw, ls)| {
                matches!(
                    (&lw.temporal, ls),
                    (TemporalWeights::Recurrent(_), LayerState::Recurrent { .. })
                        | (TemporalWeights::Attention(_), LayerState::Attention { .. })
                )
            });
    if ok {
        Ok(())
    } else {
        Err(Error::Format(
            "layer state does not match layer weights".into(),
        ))
    }
}
