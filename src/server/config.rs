//! What `rg-server`'s flags set: the model, the engine's shape, the limits and the prompt
//! cache budget.

use std::path::PathBuf;
use std::time::Duration;

use crate::model::KvType;

/// Limits on what one request may ask (400 or 413 beyond them).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Request body bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Prompt tokens after the chat template.
    pub max_prompt_tokens: usize,
    /// The largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Stop strings per request, and bytes per stop string.
    pub max_stop_strings: usize,
    pub max_stop_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 << 20,
            max_prompt_tokens: 32_768,
            max_tokens: 16_384,
            default_max_tokens: 512,
            max_stop_strings: 16,
            max_stop_bytes: 256,
        }
    }
}

/// Default of `--burst-interval`: tokens a running stream generates between two prompt
/// bursts. 32 keeps the waits under 5 % of a stream's gaps (one in 33), so the median and
/// 95th-percentile time between tokens are those of pure decode steps.
pub const DEFAULT_BURST_INTERVAL: usize = 32;

/// How new prompts share the engine with streams that are generating. Every running stream
/// waits for each step, and on a CPU a prompt row costs about as much as a generated token of
/// every stream together, so the choice is between a few long waits and many longer steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptPolicy {
    /// Streams run in steps of their own; waiting prompts run together in prompt-only steps
    /// (a burst) once every running stream has generated `interval` tokens since its
    /// previous wait (0: whenever prompts are waiting). A burst runs the prompts admitted
    /// before it started, to their end; later ones wait for the next burst.
    Bursts { interval: usize },
    /// Every step beside streams carries the prompt rows that fit in `max_step` at the
    /// measured speed (`pacing.rs`): no long waits, but every step is slower while prompts
    /// are read.
    Paced { max_step: Duration },
}

/// The server's settings (see `tools/rg-server.rs` for the flags).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub model_path: PathBuf,
    /// The model id of `/v1/models` and of responses; the file name when `None`.
    pub alias: Option<String>,
    pub host: String,
    /// 0 = a free port chosen by the system.
    pub port: u16,
    /// Sequence slots (requests decoded together).
    pub n_parallel: usize,
    /// Engine threads; 0 = all cores.
    pub n_threads: usize,
    /// Rows per decode step (tokens of all sequences together).
    pub batch_size: usize,
    /// How prompt rows share decode steps with running streams.
    pub prompt_policy: PromptPolicy,
    pub kv_type: KvType,
    pub api_key: Option<String>,
    /// `/metrics` without the API key.
    pub metrics_no_auth: bool,
    /// The longest a request may take, from arrival; `None` = no bound.
    pub timeout: Option<Duration>,
    /// Bytes of prompt-cache snapshots kept in RAM; 0 = no cache.
    pub cache_ram_bytes: usize,
    /// Requests waiting for a slot beyond which new ones get 503.
    pub max_queue: usize,
    /// After SIGINT/SIGTERM, how long in-flight requests may still run.
    pub shutdown_grace: Duration,
    pub limits: Limits,
}

impl ServerConfig {
    /// The defaults of the flags for `model_path`.
    pub fn new(model_path: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            model_path: model_path.into(),
            alias: None,
            host: "127.0.0.1".into(),
            port: 8080,
            n_parallel: 4,
            n_threads: 0,
            batch_size: 512,
            prompt_policy: PromptPolicy::Bursts {
                interval: DEFAULT_BURST_INTERVAL,
            },
            kv_type: KvType::F32,
            api_key: None,
            metrics_no_auth: false,
            timeout: Some(Duration::from_secs(600)),
            cache_ram_bytes: 1024 << 20,
            max_queue: default_max_queue(4),
            shutdown_grace: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }

    /// The model id clients see: `--alias`, else the file name without `.gguf`.
    pub fn model_id(&self) -> String {
        if let Some(alias) = &self.alias {
            return alias.clone();
        }
        let name = self
            .model_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        name.strip_suffix(".gguf").unwrap_or(&name).to_string()
    }
}

/// The queue bound when `--max-queue` is not given: 4 waiting requests per slot, and at least
/// 64, so that a burst of clients a few times the slot count waits instead of failing.
pub fn default_max_queue(n_parallel: usize) -> usize {
    (4 * n_parallel).max(64)
}
