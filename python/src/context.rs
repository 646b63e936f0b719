//! `Context` (one sequence) and `BatchContext` (many sequences decoded together).
//!
//! Each wraps the engine's context in a mutex that is only locked with the GIL released (see
//! lib.rs). Logits leave as [`F32Buffer`]s: the engine reuses (and may grow) its output
//! buffers from one call to the next, so a view into them would change or dangle under the
//! caller; one copy of the requested rows per call is the price of arrays that keep their
//! values.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rgemma::model::{BatchRow, ContextParams, KvType};

use crate::model::{thread_count, Model, Shared};
use crate::{lock, to_py, token_ids, F32Buffer};

fn context_params(
    shared: &Shared,
    batch_size: i64,
    n_threads: Option<i64>,
    n_seq_max: i64,
    kv_type: &str,
) -> PyResult<ContextParams> {
    let n_threads = match n_threads {
        None => shared.n_threads,
        some => thread_count(some)?,
    };
    let positive = |name: &str, v: i64| {
        usize::try_from(v)
            .ok()
            .filter(|&v| v >= 1)
            .ok_or_else(|| PyValueError::new_err(format!("{name} must be at least 1, got {v}")))
    };
    let kv_type = match kv_type {
        "f32" => KvType::F32,
        "f16" => KvType::F16,
        other => {
            return Err(PyValueError::new_err(format!(
                "kv_type must be \"f32\" or \"f16\", got {other:?}"
            )))
        }
    };
    Ok(ContextParams {
        batch_size: positive("batch_size", batch_size)?,
        n_threads,
        n_seq_max: positive("n_seq_max", n_seq_max)?,
        kv_type,
    })
}

fn logits_buffer(row: &[f32]) -> F32Buffer {
    F32Buffer::new(row.into(), vec![row.len()])
}

struct ContextInner {
    ctx: rgemma::model::Context,
    /// Counts the calls that change the logits (eval, reset, load_state).
    generation: u64,
}

/// One decoding sequence of a model: `eval` token ids, read the logits, save and restore
/// the state.
#[pyclass(subclass, frozen, module = "rgemma._rgemma")]
pub struct Context {
    inner: Mutex<ContextInner>,
    /// The logits as last handed out and the generation they belong to, so that asking twice
    /// between evals copies once. Locked only with the GIL held (never while waiting).
    logits: Mutex<Option<(u64, Py<F32Buffer>)>>,
    shared: Arc<Shared>,
}

impl Context {
    /// Runs `f` on the engine context with the GIL released; `changes_logits` moves the
    /// generation on.
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        changes_logits: bool,
        f: impl FnOnce(&mut rgemma::model::Context) -> PyResult<R> + Send,
    ) -> PyResult<R> {
        py.detach(|| {
            let mut inner = lock(&self.inner)?;
            if changes_logits {
                inner.generation += 1;
            }
            f(&mut inner.ctx)
        })
    }
}

#[pymethods]
impl Context {
    #[new]
    #[pyo3(signature = (model, batch_size = 512, n_threads = None, kv_type = "f32"))]
    fn new(
        py: Python<'_>,
        model: &Model,
        batch_size: i64,
        n_threads: Option<i64>,
        kv_type: &str,
    ) -> PyResult<Self> {
        let shared = model.shared.clone();
        let params = context_params(&shared, batch_size, n_threads, 1, kv_type)?;
        let ctx = py
            .detach(|| rgemma::model::Context::new(shared.model.clone(), params))
            .map_err(to_py)?;
        Ok(Context {
            inner: Mutex::new(ContextInner { ctx, generation: 0 }),
            logits: Mutex::new(None),
            shared,
        })
    }

    /// Runs `ids` at the next positions (any number; in chunks of `batch_size`). With
    /// `all_logits`, `all_logits()` then has one row per id.
    #[pyo3(signature = (ids, all_logits = false))]
    fn eval(&self, py: Python<'_>, ids: Vec<i64>, all_logits: bool) -> PyResult<()> {
        let ids = token_ids(ids)?;
        self.with(py, true, |ctx| ctx.eval(&ids, all_logits).map_err(to_py))
    }

    /// The logits after the last evaluated token (`n_vocab` values, after the soft-cap).
    fn _logits(&self, py: Python<'_>) -> PyResult<Py<F32Buffer>> {
        let cached_generation = lock(&self.logits)?.as_ref().map(|(g, _)| *g);
        let fresh = py.detach(|| {
            let inner = lock(&self.inner)?;
            if cached_generation == Some(inner.generation) {
                return Ok(None);
            }
            match inner.ctx.batch().seq_logits(0) {
                Some(row) => Ok(Some((inner.generation, logits_buffer(row)))),
                None => Err(PyValueError::new_err(
                    "no logits yet: eval() has not run since the context was made or reset",
                )),
            }
        })?;
        // Made before the lock: nothing runs Python code while the cache is locked.
        let fresh = fresh
            .map(|(generation, buf)| Py::new(py, buf).map(|buf| (generation, buf)))
            .transpose()?;
        let mut cache = lock(&self.logits)?;
        if let Some((generation, buf)) = fresh {
            // Keep the newest of what concurrent callers saw.
            if cache.as_ref().is_none_or(|(g, _)| *g < generation) {
                *cache = Some((generation, buf.clone_ref(py)));
            }
            return Ok(buf);
        }
        Ok(cache
            .as_ref()
            .expect("cached generation seen")
            .1
            .clone_ref(py))
    }

    /// Every row of the last `eval(ids, all_logits=True)`: `[len(ids), n_vocab]`.
    fn _all_logits(&self, py: Python<'_>) -> PyResult<F32Buffer> {
        let n_vocab = self.shared.model.n_vocab();
        self.with(py, false, |ctx| {
            let all = ctx.all_logits();
            if all.is_empty() {
                return Err(PyValueError::new_err(
                    "no rows: the last eval() did not ask for all_logits",
                ));
            }
            Ok(F32Buffer::new(
                all.into(),
                vec![all.len() / n_vocab, n_vocab],
            ))
        })
    }

    /// Tokens evaluated since the context was made or reset (= the next position).
    #[getter]
    fn n_past(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, false, |ctx| Ok(ctx.position()))
    }

    #[getter]
    fn n_vocab(&self) -> usize {
        self.shared.model.n_vocab()
    }

    /// Starts a new sequence (position 0, zero state).
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, true, |ctx| {
            ctx.reset();
            Ok(())
        })
    }

    /// Bytes of the sequence state (conv tails, RG-LRU states, K/V rings): fixed for a model.
    #[getter]
    fn state_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, false, |ctx| Ok(ctx.state_size_bytes()))
    }

    /// The state (and the last logits) in rgemma's checked format: load it into any context
    /// or batch sequence of the same model.
    fn save_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.with(py, false, |ctx| {
            let mut out = vec![0u8; ctx.saved_state_len()];
            ctx.save_state(&mut out).map_err(to_py)?;
            Ok(out)
        })?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Restores a state from `save_state` (or `BatchContext.seq_save`) of the same model. A
    /// wrong size, a corrupt state or another model's is a ValueError and changes nothing.
    fn load_state(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        self.with(py, true, |ctx| ctx.load_state(data).map_err(to_py))
    }

    /// Samples the next token from this context's logits (see `Sampler`).
    fn _sample(&self, py: Python<'_>, sampler: &crate::generation::Sampler) -> PyResult<u32> {
        self.with(py, false, |ctx| {
            let logits = ctx.batch().seq_logits(0).ok_or_else(|| {
                PyValueError::new_err(
                    "no logits yet: eval() has not run since the context was made or reset",
                )
            })?;
            sampler.sample_from(logits)
        })
    }
}

/// Up to `n_seq_max` sequences decoded together: each `decode` reads the weights once for
/// all its rows.
#[pyclass(subclass, frozen, module = "rgemma._rgemma")]
pub struct BatchContext {
    inner: Mutex<rgemma::model::BatchContext>,
    shared: Arc<Shared>,
}

#[pymethods]
impl BatchContext {
    #[new]
    #[pyo3(signature = (model, n_seq_max, batch_size = 512, n_threads = None, kv_type = "f32"))]
    fn new(
        py: Python<'_>,
        model: &Model,
        n_seq_max: i64,
        batch_size: i64,
        n_threads: Option<i64>,
        kv_type: &str,
    ) -> PyResult<Self> {
        let shared = model.shared.clone();
        let params = context_params(&shared, batch_size, n_threads, n_seq_max, kv_type)?;
        let ctx = py
            .detach(|| rgemma::model::BatchContext::new(shared.model.clone(), params))
            .map_err(to_py)?;
        Ok(BatchContext {
            inner: Mutex::new(ctx),
            shared,
        })
    }

    /// Decodes one batch: row i appends `tokens[i]` to sequence `seq_ids[i]`. `logits[i]`
    /// asks for the logits after row i; by default each sequence's last row gets them.
    #[pyo3(signature = (tokens, seq_ids, logits = None))]
    fn decode(
        &self,
        py: Python<'_>,
        tokens: Vec<i64>,
        seq_ids: Vec<i64>,
        logits: Option<Vec<bool>>,
    ) -> PyResult<()> {
        let tokens = token_ids(tokens)?;
        if seq_ids.len() != tokens.len() {
            return Err(PyValueError::new_err(format!(
                "seq_ids has {} entries for {} tokens",
                seq_ids.len(),
                tokens.len()
            )));
        }
        if let Some(l) = &logits {
            if l.len() != tokens.len() {
                return Err(PyValueError::new_err(format!(
                    "logits has {} entries for {} tokens",
                    l.len(),
                    tokens.len()
                )));
            }
        }
        let mut rows = Vec::with_capacity(tokens.len());
        for (i, (&token, &seq)) in tokens.iter().zip(&seq_ids).enumerate() {
            let seq = usize::try_from(seq).map_err(|_| {
                PyValueError::new_err(format!("row {i}: invalid sequence id {seq}"))
            })?;
            let wanted = match &logits {
                Some(l) => l[i],
                None => !seq_ids[i + 1..].iter().any(|&s| s as usize == seq),
            };
            rows.push(BatchRow {
                token,
                seq,
                logits: wanted,
            });
        }
        py.detach(|| lock(&self.inner)?.decode(&rows).map_err(to_py))
    }

    /// The logits after row `i` of the last decode.
    fn _logits_ith(&self, py: Python<'_>, i: i64) -> PyResult<F32Buffer> {
        py.detach(|| {
            let ctx = lock(&self.inner)?;
            usize::try_from(i)
                .ok()
                .and_then(|i| ctx.logits_ith(i))
                .map(logits_buffer)
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "row {i} of the last decode did not ask for logits (or there is no such row)"
                    ))
                })
        })
    }

    /// The logits after the last token of sequence `seq`.
    fn _seq_logits(&self, py: Python<'_>, seq: i64) -> PyResult<F32Buffer> {
        py.detach(|| {
            let ctx = lock(&self.inner)?;
            let seq = self.check_seq(&ctx, seq)?;
            ctx.seq_logits(seq).map(logits_buffer).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "sequence {seq} has no logits: its last row did not ask for them"
                ))
            })
        })
    }

    #[getter]
    fn n_seq_max(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| Ok(lock(&self.inner)?.n_seq_max()))
    }

    #[getter]
    fn n_vocab(&self) -> usize {
        self.shared.model.n_vocab()
    }

    /// Tokens decoded in `seq` since it was last cleared.
    fn seq_position(&self, py: Python<'_>, seq: i64) -> PyResult<usize> {
        py.detach(|| {
            let ctx = lock(&self.inner)?;
            let seq = self.check_seq(&ctx, seq)?;
            ctx.seq_position(seq).map_err(to_py)
        })
    }

    /// Empties `seq`.
    fn seq_clear(&self, py: Python<'_>, seq: i64) -> PyResult<()> {
        py.detach(|| {
            let mut ctx = lock(&self.inner)?;
            let seq = self.check_seq(&ctx, seq)?;
            ctx.seq_clear(seq).map_err(to_py)
        })
    }

    /// Makes `dst` a copy of `src` (a fork: both continue independently).
    fn seq_copy(&self, py: Python<'_>, src: i64, dst: i64) -> PyResult<()> {
        py.detach(|| {
            let mut ctx = lock(&self.inner)?;
            let (src, dst) = (self.check_seq(&ctx, src)?, self.check_seq(&ctx, dst)?);
            ctx.seq_copy(src, dst).map_err(to_py)
        })
    }

    /// The state of `seq`, in the format of `Context.save_state`.
    fn seq_save<'py>(&self, py: Python<'py>, seq: i64) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = py.detach(|| {
            let ctx = lock(&self.inner)?;
            let seq = self.check_seq(&ctx, seq)?;
            let mut out = vec![0u8; ctx.seq_state_len()];
            ctx.seq_save(seq, &mut out).map_err(to_py)?;
            Ok::<_, PyErr>(out)
        })?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Restores a saved state into `seq`; on error `seq` is unchanged.
    fn seq_load(&self, py: Python<'_>, seq: i64, data: &[u8]) -> PyResult<()> {
        py.detach(|| {
            let mut ctx = lock(&self.inner)?;
            let seq = self.check_seq(&ctx, seq)?;
            ctx.seq_load(seq, data).map_err(to_py)
        })
    }

    /// Bytes of state per sequence.
    #[getter]
    fn state_size(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| Ok(lock(&self.inner)?.seq_state_bytes()))
    }

    /// Samples the next token of `seq` from its logits.
    fn _sample(
        &self,
        py: Python<'_>,
        sampler: &crate::generation::Sampler,
        seq: i64,
    ) -> PyResult<u32> {
        py.detach(|| {
            let ctx = lock(&self.inner)?;
            let seq = self.check_seq(&ctx, seq)?;
            let logits = ctx.seq_logits(seq).ok_or_else(|| {
                PyValueError::new_err(format!("sequence {seq} has no logits to sample from"))
            })?;
            sampler.sample_from(logits)
        })
    }
}

impl BatchContext {
    fn check_seq(&self, ctx: &rgemma::model::BatchContext, seq: i64) -> PyResult<usize> {
        usize::try_from(seq)
            .ok()
            .filter(|&s| s < ctx.n_seq_max())
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "sequence id {seq} out of range (n_seq_max {})",
                    ctx.n_seq_max()
                ))
            })
    }
}
