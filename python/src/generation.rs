//! Sampling and text generation: `Sampler`, `Model._complete` (one call, the whole text) and
//! `Stream` (an iterator of text pieces). Both run the engine's generation loop
//! (`rgemma::generate`) on a context of the model's and poll Python's signal handlers
//! between prompt chunks and tokens, so Ctrl-C stops them with `KeyboardInterrupt`.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use rgemma::generate::{
    feed_prompt, generate, GenerateOptions, GenerateSink, Next, StopReason, TokenLoop,
};
use rgemma::model::Context;
use rgemma::sampling::{SamplerParams, TokenPenalties};

use crate::model::Shared;
use crate::{lock, to_py, token_ids};

/// Token sampling: penalties, top-k, top-p, min-p, temperature (0 = greedy), seeded draw.
/// The defaults are llama.cpp's.
#[pyclass(frozen, module = "rgemma._rgemma")]
pub struct Sampler {
    inner: Mutex<rgemma::sampling::Sampler>,
}

impl Sampler {
    /// Samples from `logits` and records nothing (call `accept` for the chosen token).
    pub(crate) fn sample_from(&self, logits: &[f32]) -> PyResult<u32> {
        Ok(lock(&self.inner)?.sample(logits))
    }

    fn snapshot(&self) -> PyResult<rgemma::sampling::Sampler> {
        Ok(lock(&self.inner)?.clone())
    }
}

#[pymethods]
impl Sampler {
    #[new]
    #[pyo3(signature = (
        temperature = 0.8, top_k = 40, top_p = 0.95, min_p = 0.05, repeat_penalty = 1.0,
        repeat_last_n = 64, presence_penalty = 0.0, frequency_penalty = 0.0, seed = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        temperature: f32,
        top_k: i32,
        top_p: f32,
        min_p: f32,
        repeat_penalty: f32,
        repeat_last_n: usize,
        presence_penalty: f32,
        frequency_penalty: f32,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let params = SamplerParams {
            temp: temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            seed,
        };
        params.validate().map_err(to_py)?;
        let penalties = TokenPenalties {
            presence: presence_penalty,
            frequency: frequency_penalty,
        };
        penalties.validate().map_err(to_py)?;
        let mut sampler = rgemma::sampling::Sampler::new(params);
        sampler.set_token_penalties(penalties);
        Ok(Sampler {
            inner: Mutex::new(sampler),
        })
    }

    /// Records `id` as the sequence's next token (for the penalties).
    fn accept(&self, py: Python<'_>, id: i64) -> PyResult<()> {
        let id = token_ids(vec![id])?[0];
        py.detach(|| lock(&self.inner).map(|mut s| s.accept(id)))
    }

    /// Forgets the accepted tokens and restarts the random stream from the seed.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| lock(&self.inner).map(|mut s| s.reset()))
    }

    /// The seed in use (drawn at random when none was given).
    #[getter]
    fn seed(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| lock(&self.inner).map(|s| s.seed()))
    }
}

/// Collects the text of a generation and polls the signal handlers.
struct PySink {
    text: String,
    /// Only the main thread receives signals; elsewhere there is nothing to poll.
    poll_signals: bool,
}

impl PySink {
    fn new(py: Python<'_>) -> PyResult<PySink> {
        let threading = py.import("threading")?;
        let main = threading.call_method0("main_thread")?;
        let current = threading.call_method0("current_thread")?;
        Ok(PySink {
            text: String::new(),
            poll_signals: main.is(&current),
        })
    }

    /// Stands for a Python exception raised by a signal handler inside the engine's loop;
    /// `interrupted` keeps the exception itself.
    fn interrupted() -> rgemma::Error {
        rgemma::Error::InvalidArgument("interrupted".into())
    }
}

struct PollingSink<'a> {
    sink: &'a mut PySink,
    raised: &'a mut Option<PyErr>,
}

impl GenerateSink for PollingSink<'_> {
    fn text(&mut self, text: &str) -> rgemma::Result<()> {
        self.sink.text.push_str(text);
        Ok(())
    }

    fn poll(&mut self) -> rgemma::Result<()> {
        if !self.sink.poll_signals {
            return Ok(());
        }
        match Python::attach(|py| py.check_signals()) {
            Ok(()) => Ok(()),
            Err(e) => {
                *self.raised = Some(e);
                Err(PySink::interrupted())
            }
        }
    }
}

/// An engine error, or the Python exception a signal handler raised.
fn raise(e: rgemma::Error, raised: Option<PyErr>) -> PyErr {
    raised.unwrap_or_else(|| to_py(e))
}

fn options(
    shared: &Shared,
    max_tokens: Option<usize>,
    stop: Vec<String>,
    stop_tokens: Option<Vec<i64>>,
) -> PyResult<GenerateOptions> {
    Ok(GenerateOptions {
        max_tokens,
        stop_tokens: match stop_tokens {
            Some(ids) => token_ids(ids)?,
            None => shared.stop_tokens(),
        },
        stop_strings: stop,
        all_logits: false,
        // Chunks of a context's batch: Ctrl-C is polled between them.
        batch_size: rgemma::model::ContextParams::default().batch_size,
        show_special: false,
    })
}

fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens => "length",
        StopReason::StopToken(_) | StopReason::StopString => "stop",
    }
}

/// `Model._complete`: generates from `prompt` on a fresh sequence; returns (text, generated
/// ids, finish reason, prompt token count).
pub(crate) fn complete(
    py: Python<'_>,
    shared: &Arc<Shared>,
    prompt: Vec<i64>,
    sampler: &Sampler,
    max_tokens: Option<usize>,
    stop: Vec<String>,
    stop_tokens: Option<Vec<i64>>,
) -> PyResult<(String, Vec<u32>, &'static str, usize)> {
    let prompt = token_ids(prompt)?;
    let opts = options(shared, max_tokens, stop, stop_tokens)?;
    let mut sampler = sampler.snapshot()?;
    let mut sink = PySink::new(py)?;
    let mut raised = None;
    let result = py.detach(|| {
        let mut ctx = shared.take_context()?;
        let mut polling = PollingSink {
            sink: &mut sink,
            raised: &mut raised,
        };
        let tok = shared.model.tokenizer();
        let result = generate(&mut ctx, &mut sampler, tok, &prompt, &opts, &mut polling);
        shared.give_back(ctx);
        result
    });
    let generation = result.map_err(|e| raise(e, raised))?;
    Ok((
        sink.text,
        generation.generated,
        finish_reason(generation.stop),
        prompt.len(),
    ))
}

/// `Model._stream`: like [`complete`], as an iterator of text pieces (the prompt runs at
/// the first `next`).
pub(crate) fn stream(
    py: Python<'_>,
    shared: &Arc<Shared>,
    prompt: Vec<i64>,
    sampler: &Sampler,
    max_tokens: Option<usize>,
    stop: Vec<String>,
    stop_tokens: Option<Vec<i64>>,
) -> PyResult<Stream> {
    let prompt = token_ids(prompt)?;
    if prompt.is_empty() {
        return Err(to_py(rgemma::Error::InvalidArgument("empty prompt".into())));
    }
    let opts = options(shared, max_tokens, stop, stop_tokens)?;
    Ok(Stream {
        state: Mutex::new(StreamState {
            ctx: None,
            sampler: sampler.snapshot()?,
            tokens: TokenLoop::new(&opts),
            prompt_tokens: prompt.len(),
            pending_prompt: Some(prompt),
            opts,
            sink: PySink::new(py)?,
            stop: None,
            failed: false,
        }),
        shared: shared.clone(),
    })
}

struct StreamState {
    /// Taken from the model when the prompt runs, given back when the stream ends.
    ctx: Option<Context>,
    sampler: rgemma::sampling::Sampler,
    tokens: TokenLoop,
    pending_prompt: Option<Vec<u32>>,
    prompt_tokens: usize,
    opts: GenerateOptions,
    sink: PySink,
    stop: Option<StopReason>,
    failed: bool,
}

impl StreamState {
    fn finished(&self) -> bool {
        self.stop.is_some() || self.failed
    }

    /// Runs until there is text to hand out or the generation ends.
    fn next_piece(
        &mut self,
        shared: &Shared,
        raised: &mut Option<PyErr>,
    ) -> rgemma::Result<Option<String>> {
        if self.finished() {
            return Ok(None);
        }
        let tok = shared.model.tokenizer();
        let mut polling = PollingSink {
            sink: &mut self.sink,
            raised,
        };
        if let Some(prompt) = self.pending_prompt.take() {
            let ctx = self.ctx.insert(shared.take_context()?);
            feed_prompt(ctx, &mut self.sampler, &prompt, &self.opts, &mut polling)?;
        }
        let ctx = self.ctx.as_mut().expect("the prompt ran");
        let mut piece = String::new();
        loop {
            polling.poll()?;
            match self
                .tokens
                .step(ctx.logits(), &mut self.sampler, tok, &mut piece)
            {
                Next::Feed(id) => {
                    ctx.eval(&[id], false)?;
                    if !piece.is_empty() {
                        return Ok(Some(piece));
                    }
                }
                Next::Stop(stop) => {
                    self.stop = Some(stop);
                    return Ok((!piece.is_empty()).then_some(piece));
                }
            }
        }
    }
}

/// Text pieces of one generation, as they are decoded (`Model.stream`).
#[pyclass(frozen, module = "rgemma._rgemma")]
pub struct Stream {
    state: Mutex<StreamState>,
    shared: Arc<Shared>,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let mut raised = None;
        let result = py.detach(|| {
            let mut state = lock(&self.state)?;
            let piece = state.next_piece(&self.shared, &mut raised);
            if piece.is_err() {
                state.failed = true;
            }
            if state.finished() {
                if let Some(ctx) = state.ctx.take() {
                    self.shared.give_back(ctx);
                }
            }
            Ok::<_, PyErr>(piece)
        })?;
        result.map_err(|e| raise(e, raised))
    }

    /// "stop" (a stop token or string), "length" (max_tokens), or None while running.
    #[getter]
    fn finish_reason(&self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        py.detach(|| Ok(lock(&self.state)?.stop.map(finish_reason)))
    }

    #[getter]
    fn prompt_tokens(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| Ok(lock(&self.state)?.prompt_tokens))
    }

    /// The ids generated so far (stop token excluded).
    #[getter]
    fn tokens(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        py.detach(|| Ok(lock(&self.state)?.tokens.generated.clone()))
    }
}

impl Drop for Stream {
    /// A stream dropped before its end gives its context back.
    fn drop(&mut self) {
        if let Ok(state) = self.state.get_mut() {
            if let Some(ctx) = state.ctx.take() {
                self.shared.give_back(ctx);
            }
        }
    }
}
