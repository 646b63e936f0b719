//! `rg-server`: an OpenAI-compatible HTTP server for a RecurrentGemma GGUF model, with
//! continuous batching and a prompt cache of state snapshots (see `rgemma::server`).
//!
//! ```text
//! rg-server -m model.gguf                         # http://127.0.0.1:8080, 4 slots
//! rg-server -m model.gguf -np 8 -t 2 --port 0     # a free port, printed on stderr
//! rg-server -m model.gguf --api-key secret --cache-ram 2048
//! ```
//!
//! Flags follow llama-server's spellings. The first stderr line is
//! `rg-server listening on http://HOST:PORT`; `/health` answers 200 once the model is
//! loaded. Every error is one `error: ...` line and a non-zero exit status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rgemma::model::KvType;
use rgemma::server::{
    default_max_queue, Limits, PromptPolicy, ServerConfig, DEFAULT_BURST_INTERVAL,
};

/// Most slots `-np` takes: each holds a whole sequence state (tens of MB for 2B models).
const MAX_PARALLEL: usize = 256;

#[derive(Parser, Debug)]
#[command(
    name = "rg-server",
    version,
    about = "OpenAI-compatible HTTP server for a RecurrentGemma GGUF model",
    after_help = "As in llama-server, -np means --parallel, -ctk --cache-type-k and -ctv --cache-type-v.\n\n\
                  Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, \
                  GET /health, GET /metrics, POST /tokenize, POST /detokenize, GET / (chat page).",
    args_override_self = true
)]
struct Args {
    /// GGUF model file.
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: PathBuf,

    /// Model id reported by /v1/models and in responses (default: the file name).
    #[arg(short = 'a', long = "alias")]
    alias: Option<String>,

    /// Address to bind; 127.0.0.1 keeps the server local.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Port; 0 picks a free one (printed in the first stderr line).
    #[arg(long, default_value_t = 8080)]
    port: u16,

    /// Sequence slots: requests decoded together (each holds one sequence state).
    #[arg(long = "parallel", default_value_t = 4, value_name = "N")]
    parallel: usize,

    /// Engine threads (default: all cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,

    /// Rows per decode step: one per generating request plus prompt chunks.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,

    /// Running streams generate at least N tokens between two waits for new prompts, which
    /// run together in prompt-only steps (a burst); 0 = prompts run as soon as they arrive.
    #[arg(long = "burst-interval", value_name = "N", default_value_t = DEFAULT_BURST_INTERVAL)]
    burst_interval: usize,

    /// Pace prompts instead of bursts: while requests are streaming, every step carries the
    /// prompt rows that fit in this many milliseconds (at the measured speed), so no stream
    /// waits much longer than this for a token; 0 = bursts (--burst-interval).
    #[arg(
        long = "max-step-ms",
        default_value_t = 0,
        value_name = "MS",
        conflicts_with = "burst_interval"
    )]
    max_step_ms: u64,

    /// Element type of the attention K/V rings (must equal --cache-type-v).
    #[arg(long = "cache-type-k", value_name = "TYPE", default_value = "f32")]
    cache_type_k: String,

    /// Element type of the attention K/V rings (must equal --cache-type-k).
    #[arg(long = "cache-type-v", value_name = "TYPE", default_value = "f32")]
    cache_type_v: String,

    /// Require `Authorization: Bearer KEY` on every endpoint but /health and /.
    #[arg(long = "api-key", value_name = "KEY")]
    api_key: Option<String>,

    /// Serve /metrics without the API key.
    #[arg(long = "metrics-no-auth")]
    metrics_no_auth: bool,

    /// Longest time a request may take, in seconds (0 = no limit). A request still waiting
    /// for a slot then gets 503; one that has a slot ends with finish_reason "length".
    #[arg(long = "timeout", default_value_t = 600, value_name = "S")]
    timeout: u64,

    /// MiB of RAM for prompt-cache snapshots (0 disables the cache).
    #[arg(long = "cache-ram", default_value_t = 1024, value_name = "MiB")]
    cache_ram: usize,

    /// Requests that may wait for a slot before new ones get 503 + Retry-After
    /// (default: 4 per slot, at least 64).
    #[arg(long = "max-queue", value_name = "N")]
    max_queue: Option<usize>,

    /// Default max_tokens for requests that give none.
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 512,
        value_name = "N"
    )]
    n_predict: usize,

    /// Largest max_tokens a request may ask for.
    #[arg(long = "max-tokens", default_value_t = 16384, value_name = "N")]
    max_tokens: usize,

    /// Largest prompt, in tokens after the chat template.
    #[arg(long = "max-prompt-tokens", default_value_t = 32768, value_name = "N")]
    max_prompt_tokens: usize,

    /// Largest request body, in bytes.
    #[arg(long = "max-body", default_value_t = 8 << 20, value_name = "BYTES")]
    max_body: usize,

    /// Seconds in-flight requests may still run after SIGINT / SIGTERM.
    #[arg(long = "shutdown-grace", default_value_t = 10, value_name = "S")]
    shutdown_grace: u64,
}

fn main() -> ExitCode {
    // llama-server spells these flags with one dash.
    let argv = std::env::args_os().map(|a| match a.to_str() {
        Some("-np") => "--parallel".into(),
        Some("-ctk") => "--cache-type-k".into(),
        Some("-ctv") => "--cache-type-v".into(),
        _ => a,
    });
    let args = Args::parse_from(argv);
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rgemma::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(args: &Args) -> Result<ServerConfig, String> {
    if !(1..=MAX_PARALLEL).contains(&args.parallel) {
        return Err(format!(
            "--parallel must be between 1 and {MAX_PARALLEL}, got {}",
            args.parallel
        ));
    }
    if args.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    let kv_type =
        KvType::from_flags(&args.cache_type_k, &args.cache_type_v).map_err(|e| e.to_string())?;
    if args
        .api_key
        .as_deref()
        .is_some_and(|key| key.trim().is_empty())
    {
        return Err("--api-key must not be empty".into());
    }
    if args.n_predict == 0 || args.max_tokens == 0 || args.max_prompt_tokens == 0 {
        return Err("--n-predict, --max-tokens and --max-prompt-tokens must be at least 1".into());
    }
    let mut config = ServerConfig::new(&args.model);
    config.alias = args.alias.clone();
    config.host = args.host.clone();
    config.port = args.port;
    config.n_parallel = args.parallel;
    config.n_threads = args.threads.unwrap_or(0);
    config.batch_size = args.batch_size;
    config.prompt_policy = if args.max_step_ms > 0 {
        PromptPolicy::Paced {
            max_step: Duration::from_millis(args.max_step_ms),
        }
    } else {
        PromptPolicy::Bursts {
            interval: args.burst_interval,
        }
    };
    config.kv_type = kv_type;
    config.api_key = args.api_key.clone();
    config.metrics_no_auth = args.metrics_no_auth;
    config.timeout = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    config.cache_ram_bytes = args.cache_ram.saturating_mul(1 << 20);
    config.max_queue = args
        .max_queue
        .unwrap_or_else(|| default_max_queue(args.parallel));
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace);
    config.limits = Limits {
        max_body_bytes: args.max_body,
        max_prompt_tokens: args.max_prompt_tokens,
        max_tokens: args.max_tokens,
        default_max_tokens: args.n_predict.min(args.max_tokens),
        ..Limits::default()
    };
    Ok(config)
}
