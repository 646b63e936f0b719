//! The engine: one thread that owns the [`BatchContext`] and decodes for every request.
//!
//! HTTP handlers turn a request into a [`Job`] (prompt tokens and generation settings) and
//! [`EngineHandle::submit`] it; the engine answers on the job's own channel with [`Event`]s
//! (text pieces, finish reasons, usage, or an error). Scheduling and the prompt cache are in
//! `scheduler.rs` and `cache.rs`.
//!
//! The request channel is a std channel (the engine blocks on it when idle); the event
//! channels are tokio's unbounded channels, whose send side works from any thread and never
//! blocks the engine. They are bounded in practice by `max_tokens` per request. When the
//! handler drops its receiver (the client went away), the engine sees the channel closed and
//! ends the request at its next step.

mod cache;
mod logprobs;
mod pacing;
mod rates;
mod scheduler;

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::config::ServerConfig;
use super::error::ApiError;
use super::metrics::Metrics;
use crate::chat::ChatTemplate;
use crate::model::{BatchContext, ContextParams, Model};
use crate::sampling::{SamplerParams, TokenPenalties};

pub use logprobs::TokenLogprob;
/// Decode steps the tokens-per-second gauges of `/metrics` cover.
pub use rates::WINDOW as RECENT_STEPS;

/// How a request's tokens are generated.
#[derive(Clone, Debug)]
pub struct GenParams {
    pub sampler: SamplerParams,
    pub penalties: TokenPenalties,
    /// Generated tokens per choice at most (finish reason `length`).
    pub max_tokens: usize,
    pub stop_strings: Vec<String>,
    /// Choices: the prompt is run once and forked into `n` slots.
    pub n: usize,
    /// `Some(k)`: report each token's log-probability and the `k` most likely tokens.
    pub logprobs: Option<usize>,
}

/// What the text of a request is, for the answer snapshot of the prompt cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptKind {
    /// A raw prompt: an answer continues it as is.
    Completion,
    /// A chat rendered with the Gemma template: an answer is closed with `<end_of_turn>\n`
    /// as the next turn's prompt writes it.
    Chat,
}

/// One request for the engine.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenParams,
    pub kind: PromptKind,
    pub events: UnboundedSender<Event>,
    /// When the request must end (`--timeout`).
    pub deadline: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens`, or the request's time ran out (`--timeout`).
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens restored from the prompt cache (not run).
    pub cached_tokens: usize,
    /// Generated tokens over all choices.
    pub completion_tokens: usize,
}

/// What the engine tells a request, in order: per choice any number of `Token`s then one
/// `Finish`; then one `Done`. Or one `Error` at any point, after which nothing follows.
#[derive(Clone, Debug)]
pub enum Event {
    /// A generated token of `choice` and the text it completes (maybe empty: an incomplete
    /// character or a possible stop string is held back); also the text released at the
    /// end (then without a logprob).
    Token {
        choice: usize,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Finish {
        choice: usize,
        reason: FinishReason,
    },
    Done(Usage),
    Error(ApiError),
}

/// What the engine publishes once the model is loaded (read by the HTTP handlers).
pub struct Loaded {
    pub model: Arc<Model>,
    /// `None` when the vocabulary has no Gemma turn tokens (no chat endpoint then).
    pub template: Option<ChatTemplate>,
}

/// State shared by the HTTP side and the engine.
pub struct Shared {
    pub loaded: OnceLock<Loaded>,
    /// `metrics.queue_length` is also the admission counter (jobs submitted and not yet
    /// given a slot), so the gauge is never stale.
    pub metrics: Metrics,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            loaded: OnceLock::new(),
            metrics: Metrics::default(),
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

/// The HTTP side's end of the engine.
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    max_queue: usize,
}

impl EngineHandle {
    /// Queues `job`; 503 (busy) when `max_queue` requests already wait for a slot.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let queued = &self.shared.metrics.queue_length;
        let before = queued.fetch_add(1, Ordering::SeqCst) as usize;
        if before >= self.max_queue {
            queued.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::busy(format!(
                "{before} requests are already waiting for a slot (--max-queue {}); retry later",
                self.max_queue
            )));
        }
        self.tx.send(job).map_err(|_| {
            queued.fetch_sub(1, Ordering::SeqCst);
            ApiError::internal("the engine has stopped")
        })
    }
}

/// Starts the engine thread: it loads the model, publishes it in `shared.loaded`, reports
/// through `ready` (an error message when loading fails), then serves jobs until every
/// [`EngineHandle`] is dropped and its work is done.
pub fn spawn(
    config: &ServerConfig,
    shared: Arc<Shared>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
) -> std::io::Result<EngineHandle> {
    let (tx, rx) = mpsc::channel();
    let handle = EngineHandle {
        tx,
        shared: Arc::clone(&shared),
        max_queue: config.max_queue,
    };
    let config = config.clone();
    std::thread::Builder::new()
        .name("rg-engine".into())
        .spawn(move || {
            let started = match load(&config) {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let (ctx, template) = started;
            let model = Arc::clone(ctx.model());
            let _ = shared.loaded.set(Loaded {
                model: Arc::clone(&model),
                template,
            });
            let loaded = shared.loaded.get().expect("set just above");
            let mut scheduler = scheduler::Scheduler::new(
                ctx,
                model.tokenizer(),
                loaded.template.as_ref(),
                rx,
                &shared,
                config.cache_ram_bytes,
                config.prompt_policy,
            );
            let _ = ready.send(Ok(()));
            scheduler.run();
        })?;
    Ok(handle)
}

/// The model and the batch context of the flags.
fn load(config: &ServerConfig) -> Result<(BatchContext, Option<ChatTemplate>), String> {
    let model = Model::load(&config.model_path)
        .map_err(|e| format!("cannot load {}: {e}", config.model_path.display()))?;
    let template = model.tokenizer().and_then(ChatTemplate::new);
    let params = ContextParams {
        // Every generating sequence needs its row in every step.
        batch_size: config.batch_size.max(config.n_parallel),
        n_threads: config.n_threads,
        n_seq_max: config.n_parallel,
        kv_type: config.kv_type,
    };
    let ctx = BatchContext::new(Arc::new(model), params).map_err(|e| e.to_string())?;
    Ok((ctx, template))
}
