//! Many sequences at once: a [`BatchContext`] holds `n_seq_max` sequence slots over one
//! shared model, and each [`BatchContext::decode`] call runs a batch of rows (in the shape
//! of llama.cpp's `llama_batch`: a token, its sequence, whether its logits are wanted)
//! through the forward pass once. The weights are read once per call whatever the number
//! of sequences; the state of each sequence is its own ([`SeqState`], fixed size).
//!
//! Positions are implicit: a sequence's rows continue where it stopped (a recurrent state
//! cannot be rewound). Sequence operations (clear, copy = fork, save, load) work on whole
//! states.

use std::sync::Arc;

use super::context::ContextParams;
use super::forward::{check_state, forward, Plan, Scratch, Span};
use super::matmul::{MatmulObserver, MatmulPath};
use super::state::{model_fingerprint, KvType, LogitsAt, SeqState};
use super::Model;
use crate::{Error, Result};

/// One row of a batch: `token` appended to sequence `seq`; when `logits` is set, the logits
/// after this token are computed (read them with [`BatchContext::logits_ith`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRow {
    pub token: u32,
    pub seq: usize,
    pub logits: bool,
}

/// Decodes batches of rows from up to `n_seq_max` sequences (see the module doc).
pub struct BatchContext {
    model: Arc<Model>,
    params: ContextParams,
    pool: rayon::ThreadPool,
    seqs: Vec<SeqState>,
    plan: Plan,
    scratch: Scratch,
    /// `[outputs, n_vocab]`: logits of the rows of the last decode that asked for them. Sized
    /// for one row per sequence at creation; grows (once) when a call asks for more.
    outputs: Vec<f32>,
    /// For each row of the last decode: its row in `outputs`.
    row_output: Vec<Option<usize>>,
    /// Per row of the current call: its row in the grouped layout.
    grouped_of_row: Vec<usize>,
    /// Per sequence: rows in the current call, then the next free grouped row.
    seq_cursor: Vec<usize>,
    fingerprint: u64,
}

impl BatchContext {
    /// A context with `params.n_seq_max` empty sequences, batches of up to
    /// `params.batch_size` rows and `params.n_threads` threads (0 = all cores). Everything
    /// a decode needs is allocated here.
    pub fn new(model: Arc<Model>, params: ContextParams) -> Result<BatchContext> {
        if params.batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch_size must be at least 1".into(),
            ));
        }
        if params.n_seq_max == 0 {
            return Err(Error::InvalidArgument(
                "n_seq_max must be at least 1".into(),
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
        // Building a pool only spawns its threads; wait until each has started and run a job,
        // so the first decode does not pay for thread start-up (and no start-up work lands
        // later, in the middle of decoding).
        pool.broadcast(|_| ());
        let hp = model.hparams();
        let seqs: Vec<SeqState> = (0..params.n_seq_max)
            .map(|_| SeqState::new(hp, params.kv_type))
            .collect();
        check_state(&model, &seqs[0])?;
        let (batch, n_seq) = (params.batch_size, params.n_seq_max);
        Ok(BatchContext {
            scratch: Scratch::new(hp, batch, n_threads),
            plan: Plan::new(batch, n_seq),
            outputs: vec![0.0; n_seq.min(batch) * hp.n_vocab],
            row_output: Vec::with_capacity(batch),
            grouped_of_row: Vec::with_capacity(batch),
            seq_cursor: vec![0; n_seq],
            fingerprint: model_fingerprint(&model),
            seqs,
            pool,
            params,
            model,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn params(&self) -> ContextParams {
        self.params
    }

    /// Number of sequence slots (ids `0 .. n_seq_max`).
    pub fn n_seq_max(&self) -> usize {
        self.seqs.len()
    }

    /// Most rows one [`BatchContext::decode`] takes.
    pub fn batch_capacity(&self) -> usize {
        self.params.batch_size
    }

    /// Runs `rows` through the model. Rows of one sequence are processed in their order and
    /// continue that sequence; rows of different sequences may come in any order. Errors (an
    /// empty batch, more rows than [`BatchContext::batch_capacity`], a sequence id or token
    /// id out of range) are found before anything changes.
    pub fn decode(&mut self, rows: &[BatchRow]) -> Result<()> {
        self.validate(rows)?;
        let n_vocab = self.model.n_vocab();

        // Rows per sequence.
        self.seq_cursor.fill(0);
        for r in rows {
            self.seq_cursor[r.seq] += 1;
        }
        // A sequence left out of this call keeps its logits: move them out of the output
        // buffer that this call overwrites.
        for (st, &n) in self.seqs.iter_mut().zip(&self.seq_cursor) {
            if let (0, LogitsAt::Output(k)) = (n, st.logits_at) {
                st.own_logits
                    .copy_from_slice(&self.outputs[k * n_vocab..(k + 1) * n_vocab]);
                st.logits_at = LogitsAt::Own;
            }
        }

        // Grouped layout: one contiguous span per sequence, in sequence order.
        let plan = &mut self.plan;
        plan.clear();
        let mut start = 0;
        for (seq, cursor) in self.seq_cursor.iter_mut().enumerate() {
            let len = *cursor;
            if len > 0 {
                plan.span_of_seq[seq] = Some(plan.spans.len());
                plan.spans.push(Span {
                    seq,
                    start,
                    len,
                    first_pos: self.seqs[seq].position,
                });
            }
            *cursor = start;
            start += len;
        }
        plan.tokens.resize(rows.len(), 0);
        self.grouped_of_row.clear();
        self.row_output.clear();
        for r in rows {
            let g = self.seq_cursor[r.seq];
            self.seq_cursor[r.seq] += 1;
            plan.tokens[g] = r.token;
            self.grouped_of_row.push(g);
            self.row_output
                .push(r.logits.then_some(plan.head_rows.len()));
            if r.logits {
                plan.head_rows.push(g);
            }
        }
        let need = plan.head_rows.len() * n_vocab;
        if self.outputs.len() < need {
            self.outputs.resize(need, 0.0);
        }

        let BatchContext {
            model,
            pool,
            seqs,
            plan,
            scratch,
            outputs,
            grouped_of_row,
            row_output,
            ..
        } = self;
        let model: &Model = model;
        if let Err(e) = pool
            .install(|| super::team::run_with_team(|| forward(model, seqs, plan, scratch, outputs)))
        {
            // The batch's sequences may be half-updated: start them afresh rather than
            // continue from an inconsistent state.
            for sp in &plan.spans {
                seqs[sp.seq].clear();
            }
            return Err(e);
        }

        // Advance the sequences; their logits are those of their last row, if asked for.
        for sp in &plan.spans {
            let st = &mut seqs[sp.seq];
            st.position += sp.len;
            st.logits_at = LogitsAt::None;
        }
        for ((r, &g), &out) in rows
            .iter()
            .zip(grouped_of_row.iter())
            .zip(row_output.iter())
        {
            let sp = plan.span_of_seq[r.seq].map(|k| plan.spans[k]);
            if let (Some(k), Some(sp)) = (out, sp) {
                if g == sp.start + sp.len - 1 {
                    seqs[r.seq].logits_at = LogitsAt::Output(k);
                }
            }
        }
        Ok(())
    }

    fn validate(&self, rows: &[BatchRow]) -> Result<()> {
        let n_vocab = self.model.n_vocab();
        if rows.is_empty() {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        if rows.len() > self.params.batch_size {
            return Err(Error::InvalidArgument(format!(
                "batch of {} rows, the context takes at most {} (batch_size)",
                rows.len(),
                self.params.batch_size
            )));
        }
        for (i, r) in rows.iter().enumerate() {
            if r.seq >= self.seqs.len() {
                return Err(Error::InvalidArgument(format!(
                    "row {i}: sequence id {} out of range (n_seq_max {})",
                    r.seq,
                    self.seqs.len()
                )));
            }
            if r.token as usize >= n_vocab {
                return Err(Error::InvalidArgument(format!(
                    "row {i}: token id {} outside the vocabulary of {n_vocab}",
                    r.token
                )));
            }
        }
        Ok(())
    }

    /// Logits (`n_vocab`, after the soft-cap) of row `i` of the last decode, `None` when that
    /// row did not ask for them or there is no such row.
    pub fn logits_ith(&self, i: usize) -> Option<&[f32]> {
        let k = (*self.row_output.get(i)?)?;
        let n = self.model.n_vocab();
        Some(&self.outputs[k * n..(k + 1) * n])
    }

    /// The first `len` values of the output buffer (rows in the order they were asked for).
    pub(crate) fn outputs_prefix(&self, len: usize) -> &[f32] {
        &self.outputs[..len]
    }

    /// The logits after the last token of `seq`, when they were computed (asked for in its
    /// last row, or restored by [`BatchContext::seq_load`] / [`BatchContext::seq_copy`]).
    pub fn seq_logits(&self, seq: usize) -> Option<&[f32]> {
        logits_of(self.seqs.get(seq)?, &self.outputs, self.model.n_vocab())
    }

    /// Tokens decoded in `seq` since it was last cleared (= its next position).
    pub fn seq_position(&self, seq: usize) -> Result<usize> {
        Ok(self.seq(seq)?.position)
    }

    /// Empties `seq` (position 0, zero state).
    pub fn seq_clear(&mut self, seq: usize) -> Result<()> {
        self.seq(seq)?;
        self.seqs[seq].clear();
        Ok(())
    }

    /// Empties every sequence.
    pub fn clear_all(&mut self) {
        self.seqs.iter_mut().for_each(SeqState::clear);
    }

    /// Makes `dst` a copy of `src`: state, position and logits (a fork: both continue
    /// independently from here). Copies a few tens of MB at most, whatever the length.
    pub fn seq_copy(&mut self, src: usize, dst: usize) -> Result<()> {
        self.seq(src)?;
        self.seq(dst)?;
        if src == dst {
            return Ok(());
        }
        let n_vocab = self.model.n_vocab();
        let (s, d) = if src < dst {
            let (a, b) = self.seqs.split_at_mut(dst);
            (&a[src], &mut b[0])
        } else {
            let (a, b) = self.seqs.split_at_mut(src);
            (&b[0], &mut a[dst])
        };
        d.assign(s, logits_of(s, &self.outputs, n_vocab));
        Ok(())
    }

    /// Bytes [`BatchContext::seq_save`] writes (the same for every sequence and for
    /// [`super::Context::save_state`]).
    pub fn seq_state_len(&self) -> usize {
        self.seqs[0].saved_len()
    }

    /// Writes the state of `seq` (the format of `state.rs`) into `dst`, which must be
    /// exactly [`BatchContext::seq_state_len`] bytes.
    pub fn seq_save(&self, seq: usize, dst: &mut [u8]) -> Result<()> {
        let st = self.seq(seq)?;
        st.save(
            self.fingerprint,
            logits_of(st, &self.outputs, self.model.n_vocab()),
            dst,
        )
    }

    /// Restores a state saved from any sequence (or single-sequence context) of the same
    /// model into `seq`. On error `seq` is unchanged.
    pub fn seq_load(&mut self, seq: usize, src: &[u8]) -> Result<()> {
        self.seq(seq)?;
        self.seqs[seq].load(self.fingerprint, src)
    }

    /// Bytes of state per sequence (conv tails, RG-LRU states, K/V rings).
    pub fn seq_state_bytes(&self) -> usize {
        self.seqs[0].size_bytes()
    }

    pub fn kv_type(&self) -> KvType {
        self.params.kv_type
    }

    /// See [`super::Context::set_matmul_path`].
    pub fn set_matmul_path(&mut self, path: MatmulPath) {
        self.scratch.threads.set_path(path);
    }

    /// See [`super::Context::set_matmul_observer`].
    pub fn set_matmul_observer(&mut self, observer: Option<Arc<dyn MatmulObserver>>) {
        self.scratch.threads.set_observer(observer);
    }

    fn seq(&self, seq: usize) -> Result<&SeqState> {
        self.seqs.get(seq).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "sequence id {seq} out of range (n_seq_max {})",
                self.seqs.len()
            ))
        })
    }
}

/// The current logits of `st`, wherever they are.
fn logits_of<'a>(st: &'a SeqState, outputs: &'a [f32], n_vocab: usize) -> Option<&'a [f32]> {
    match st.logits_at {
        LogitsAt::None => None,
        LogitsAt::Own => Some(&st.own_logits),
        LogitsAt::Output(k) => Some(&outputs[k * n_vocab..(k + 1) * n_vocab]),
    }
}
