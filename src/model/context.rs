//! One decoding sequence: the one-slot case of [`BatchContext`] (same forward pass, same
//! state), with the conveniences of a single stream: `eval` takes any number of tokens and
//! splits them into batches, the logits of the last token are always at hand, and another
//! executor (the CUDA backend) can take over through [`Offload`].

use std::sync::Arc;

use super::batch::{BatchContext, BatchRow};
use super::matmul::{MatmulObserver, MatmulPath};
use super::state::KvType;
use super::Model;
use crate::{Error, Result};

/// Settings of a [`Context`] or [`BatchContext`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextParams {
    /// Rows per forward call (prompt chunk, or batch capacity); 512 by default.
    pub batch_size: usize,
    /// Worker threads; 0 = all available cores.
    pub n_threads: usize,
    /// Sequence slots of a [`BatchContext`]; 1 by default (a [`Context`] always has one).
    pub n_seq_max: usize,
    /// Element type of the attention K/V rings; F32 (exact) by default.
    pub kv_type: KvType,
}

impl Default for ContextParams {
    fn default() -> Self {
        ContextParams {
            batch_size: 512,
            n_threads: 0,
            n_seq_max: 1,
            kv_type: KvType::F32,
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

/// The only sequence of a [`Context`]'s inner batch context.
const SEQ: usize = 0;

/// One decoding sequence over a shared [`Model`].
pub struct Context {
    inner: BatchContext,
    /// Rows of one batch, reused (capacity `batch_size`).
    rows: Vec<BatchRow>,
    /// `[n_tokens, n_vocab]` when the last eval asked for all logits in more than one batch
    /// (one batch's rows are read from the inner context without a copy).
    all_logits: Vec<f32>,
    /// Rows of the last eval's logits held by the inner context (0 when `all_logits` has them).
    all_in_inner: usize,
    /// When set, `eval` runs there instead of on the CPU.
    offload: Option<Box<dyn Offload>>,
    /// The offload's last logits; zeros when no logits were computed.
    offload_logits: Vec<f32>,
    offload_position: usize,
}

impl Context {
    /// A context whose single-sequence calls (`eval`, `logits`, `save_state`, ...) work on
    /// sequence 0; with `params.n_seq_max > 1` the other sequences are reached through
    /// [`Context::batch_mut`].
    pub fn new(model: Arc<Model>, params: ContextParams) -> Result<Context> {
        let n_vocab = model.n_vocab();
        Ok(Context {
            inner: BatchContext::new(model, params)?,
            rows: Vec::with_capacity(params.batch_size),
            all_logits: Vec::new(),
            all_in_inner: 0,
            offload: None,
            offload_logits: vec![0.0; n_vocab],
            offload_position: 0,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        self.inner.model()
    }

    /// The batch context underneath (sequence 0 is this context's own sequence).
    pub fn batch(&self) -> &BatchContext {
        &self.inner
    }

    /// The batch context underneath, to decode several sequences (the single-sequence
    /// `all_logits` of an earlier eval are dropped). Not while an offload runs the model.
    pub fn batch_mut(&mut self) -> Result<&mut BatchContext> {
        self.check_on_host()?;
        self.all_logits.clear();
        self.all_in_inner = 0;
        Ok(&mut self.inner)
    }

    pub fn params(&self) -> ContextParams {
        self.inner.params()
    }

    /// Runs `tokens` (any count, in batches of `batch_size`) at the next positions.
    /// Afterwards [`Context::logits`] holds the logits of the last token and, when
    /// `all_logits` is set, [`Context::all_logits`] one row per token of this call. An id
    /// `>= n_vocab` is refused before anything changes.
    pub fn eval(&mut self, tokens: &[u32], all_logits: bool) -> Result<()> {
        let n_vocab = self.model().n_vocab();
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
        let batch = self.inner.batch_capacity();
        let one_batch = tokens.len() <= batch;
        self.all_logits.clear();
        self.all_in_inner = 0;
        if all_logits && (!one_batch || self.offload.is_some()) {
            self.all_logits.resize(tokens.len() * n_vocab, 0.0);
        }
        if let Some(off) = &mut self.offload {
            let all = all_logits.then_some(&mut self.all_logits[..]);
            off.eval(tokens, self.offload_position, &mut self.offload_logits, all)?;
            self.offload_position += tokens.len();
            return Ok(());
        }
        let n_chunks = tokens.len().div_ceil(batch);
        for (ci, chunk) in tokens.chunks(batch).enumerate() {
            let last_chunk = ci + 1 == n_chunks;
            self.rows.clear();
            self.rows
                .extend(chunk.iter().enumerate().map(|(t, &token)| BatchRow {
                    token,
                    seq: SEQ,
                    logits: all_logits || (last_chunk && t + 1 == chunk.len()),
                }));
            self.inner.decode(&self.rows)?;
            if all_logits && !one_batch {
                // Every row asked for logits: the outputs are the chunk's rows, in order.
                let rows = self.inner.outputs_prefix(chunk.len() * n_vocab);
                let at = ci * batch * n_vocab;
                self.all_logits[at..at + rows.len()].copy_from_slice(rows);
            }
        }
        if all_logits && one_batch {
            self.all_in_inner = tokens.len();
        }
        Ok(())
    }

    /// Logits of the last evaluated position (`n_vocab` values, after the soft-cap); zeros
    /// before the first eval.
    pub fn logits(&self) -> &[f32] {
        if self.offload.is_some() {
            return &self.offload_logits;
        }
        self.inner.seq_logits(SEQ).unwrap_or(&self.offload_logits)
    }

    /// When the last eval asked for all logits: `n_tokens * n_vocab` values, row i = logits
    /// after token i of that call. Empty otherwise.
    pub fn all_logits(&self) -> &[f32] {
        match self.all_in_inner {
            0 => &self.all_logits,
            // One batch: its rows are the inner context's outputs 0..n, in order.
            n => {
                let n_vocab = self.model().n_vocab();
                self.inner.outputs_prefix(n * n_vocab)
            }
        }
    }

    /// Number of tokens evaluated since creation or the last reset (= next position).
    pub fn position(&self) -> usize {
        if self.offload.is_some() {
            self.offload_position
        } else {
            self.inner.seq_position(SEQ).expect("one sequence")
        }
    }

    /// Starts a new sequence: position 0, all state zeroed.
    pub fn reset(&mut self) {
        self.inner.clear_all();
        self.offload_position = 0;
        self.offload_logits.fill(0.0);
        self.all_logits.clear();
        self.all_in_inner = 0;
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
        self.inner.set_matmul_path(path);
    }

    /// Shows the f32 input of every matrix product of later evals to `observer` (the
    /// importance-matrix collector); `None` stops it. CPU only: an offloaded context's evals
    /// run elsewhere and are not observed.
    pub fn set_matmul_observer(&mut self, observer: Option<Arc<dyn MatmulObserver>>) {
        self.inner.set_matmul_observer(observer);
    }

    /// Bytes of sequence state (conv tails, RG-LRU states, K/V rings). Fixed for a model.
    pub fn state_size_bytes(&self) -> usize {
        self.inner.seq_state_bytes()
    }

    /// Bytes [`Context::save_state`] writes. Fixed for a model.
    pub fn saved_state_len(&self) -> usize {
        self.inner.seq_state_len()
    }

    /// Writes the state (format in `state.rs`) into `dst`, which must be exactly
    /// [`Context::saved_state_len`] bytes. It loads into any sequence of a
    /// [`BatchContext`] of the same model, and back.
    pub fn save_state(&self, dst: &mut [u8]) -> Result<()> {
        self.check_on_host()?;
        self.inner.seq_save(SEQ, dst)
    }

    /// Restores a state written by [`Context::save_state`] (or a sequence's
    /// [`BatchContext::seq_save`]) of the same model. On any error (wrong size, corrupt,
    /// other model) the context is unchanged.
    pub fn load_state(&mut self, src: &[u8]) -> Result<()> {
        self.check_on_host()?;
        self.inner.seq_load(SEQ, src)?;
        self.all_logits.clear();
        self.all_in_inner = 0;
        Ok(())
    }

    /// The state lives on the host only when no offload runs the model.
    fn check_on_host(&self) -> Result<()> {
        match &self.offload {
            Some(o) => Err(Error::Unsupported(format!(
                "state save/restore while the model runs on {}",
                o.describe()
            ))),
            None => Ok(()),
        }
    }
}
