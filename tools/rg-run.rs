//! `rg-run`: generate text (or token ids) with a RecurrentGemma GGUF model, llama.cpp style.
//!
//! ```text
//! rg-run -m model.gguf -p "Why is the sky blue?" -n 64
//! rg-run -m model.gguf -cnv                       # chat with the Gemma turn template
//! rg-run -m tiny.gguf --prompt-ids 2,17,300 -n 16 --temp 0 --ids-out ids.json --logits-out l.npy
//! rg-run -m model.gguf -p "Once upon a time" -n 64 -np 4 --seed 1   # 4 continuations at once
//! rg-run -m model.gguf -f long.txt --prompt-cache long.cache       # later runs skip the prefix
//! ```
//!
//! Generated text streams to stdout; timings and diagnostics go to stderr. Every error is one
//! `error: ...` line and a non-zero exit status.
//!
//! With `-np N` (llama.cpp's `--parallel`) the prompt is evaluated once, forked into N
//! sequences of one [`BatchContext`] and continued with the seeds `seed .. seed + N - 1`, one
//! batched decode per step for all the sequences still running; continuation `i` (1..=N) is
//! exactly what a single run with `--seed seed+i-1` prints. The continuations are printed when
//! all are done (see [`run_parallel`]).

use std::fs::File;
use std::io::{self, BufRead, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rgemma::chat::ChatTemplate;
use rgemma::generate::{
    feed_prompt, generate, generate_after_prompt, GenerateOptions, GenerateSink, Generation, Next,
    StopReason, TokenLoop,
};
use rgemma::model::{BatchContext, BatchRow, Context, ContextParams, KvType, LoadOptions, Model};
use rgemma::prompt_cache::SavedPrompt;
use rgemma::sampling::{Sampler, SamplerParams};
use rgemma::tokenizer::{Tokenizer, TokenizerSource};

/// Set when a write to stdout finds the pipe closed; generation then stops without an error.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Gemma's `<eos>` id, used when the model carries no tokenizer to ask.
const GEMMA_EOS: u32 = 1;

/// Most sequences `-np` takes: each holds a whole recurrent state and K/V window, so a
/// mistyped count would otherwise end in an out-of-memory abort instead of an error line.
const MAX_PARALLEL: i64 = 256;

#[derive(Parser, Debug)]
#[command(
    name = "rg-run",
    version,
    about = "Generate text with a RecurrentGemma GGUF model",
    after_help = "As in llama.cpp, -cnv means --conversation, -sp means --special, -np means \
                  --parallel, -sys means --system-prompt, -ctk --cache-type-k and -ctv \
                  --cache-type-v.\n\n\
                  In a conversation, a line /save FILE writes the conversation's state (a few \
                  tens of MB whatever its length) and /load FILE resumes one saved by this \
                  model.\n\n\
                  With -np N > 1 the output is the prompt (unless --no-display-prompt), then for \
                  each continuation i = 1..N a line\n  \
                  --- continuation i/N (seed S) ---\n\
                  followed by its text (a newline added if it has none), printed when all N \
                  are done. \
                  Continuation i uses the seed S = seed + i - 1 and is the text a single run with \
                  --seed S gives.",
    args_override_self = true
)]
struct Args {
    /// Model file (GGUF).
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: PathBuf,

    /// Prompt text (BOS is prepended when the vocabulary asks for it, unless --no-bos).
    #[arg(short = 'p', long = "prompt", value_name = "TEXT", conflicts_with_all = ["file", "prompt_ids"])]
    prompt: Option<String>,

    /// Read the prompt from a file (one trailing newline is dropped).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "prompt_ids"
    )]
    file: Option<PathBuf>,

    /// The prompt as comma-separated token ids, used verbatim (no BOS added); needs no tokenizer.
    #[arg(long = "prompt-ids", value_name = "IDS")]
    prompt_ids: Option<String>,

    /// Number of tokens to generate; -1 = until a stop token.
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    n_predict: i64,

    /// Threads for evaluation (default: all available cores).
    #[arg(short = 't', long = "threads", value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,

    /// Accepted for llama.cpp compatibility and ignored: the recurrent state and the attention
    /// window have a fixed size, so there is no context length to set.
    #[arg(
        short = 'c',
        long = "ctx-size",
        value_name = "N",
        hide_short_help = true
    )]
    ctx_size: Option<i64>,

    /// Prompt tokens evaluated per batch.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,

    /// Temperature; 0 or less = greedy (argmax).
    #[arg(long = "temp", default_value_t = 0.8, allow_negative_numbers = true)]
    temp: f32,

    /// Top-k sampling; 0 or less = off.
    #[arg(long = "top-k", default_value_t = 40, allow_negative_numbers = true)]
    top_k: i32,

    /// Top-p (nucleus) sampling, in [0, 1]; 1 = off.
    #[arg(long = "top-p", default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,

    /// Min-p sampling, in [0, 1]; 0 = off.
    #[arg(long = "min-p", default_value_t = 0.05, allow_negative_numbers = true)]
    min_p: f32,

    /// Repetition penalty (> 0); 1 = off.
    #[arg(
        long = "repeat-penalty",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    repeat_penalty: f32,

    /// How many recent tokens the repetition penalty looks at; 0 = off.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: u32,

    /// Sampler seed; -1 = random (the seed used is printed with the timings).
    #[arg(long = "seed", default_value_t = -1, allow_negative_numbers = true)]
    seed: i64,

    /// Continuations of the prompt to generate together (llama.cpp's --parallel, 1..=256):
    /// one prompt evaluation, then N sequences sampled with the seeds seed, seed+1, ... and
    /// decoded in one batch per step; printed one after another when all are done. With N > 1,
    /// --ids-out writes every continuation; --conversation, --logits-out and the GPU are not
    /// available.
    #[arg(
        long = "parallel",
        value_name = "N",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    parallel: i64,

    /// Interactive chat: read user turns from stdin, answer with the Gemma turn template.
    /// A line `/save FILE` saves the conversation, `/load FILE` resumes a saved one.
    #[arg(long = "conversation")]
    conversation: bool,

    /// With --conversation: a system prompt, folded into the first user turn (Gemma has no
    /// system role; its templates do the same).
    #[arg(long = "system-prompt", value_name = "TEXT", requires = "conversation")]
    system_prompt: Option<String>,

    /// Cache the state after the prompt in FILE (llama.cpp's flag): a later run whose prompt
    /// starts with the cached prompt's tokens restores it and evaluates only the rest. A
    /// file made by another model, or damaged, is reported and ignored (then overwritten).
    #[arg(long = "prompt-cache", value_name = "FILE")]
    prompt_cache: Option<PathBuf>,

    /// Use --prompt-cache without updating the file.
    #[arg(long = "prompt-cache-ro", requires = "prompt_cache")]
    prompt_cache_ro: bool,

    /// Stop when this string is generated (repeatable); the text before it is printed.
    #[arg(long = "stop", value_name = "STR")]
    stop: Vec<String>,

    /// Do not prepend BOS to a text prompt.
    #[arg(long = "no-bos")]
    no_bos: bool,

    /// Keep generating after EOS / <end_of_turn>.
    #[arg(long = "ignore-eos")]
    ignore_eos: bool,

    /// Print control tokens (<start_of_turn>, <bos>, ...) of the output as text.
    #[arg(long = "special")]
    special: bool,

    /// Do not echo a text prompt before the generated text.
    #[arg(long = "no-display-prompt")]
    no_display_prompt: bool,

    /// Write the logits as a float32 .npy [rows, vocab]: one row per prompt position, then
    /// one per generated token fed back (T + n - 1 rows for n generated tokens).
    #[arg(long = "logits-out", value_name = "FILE.npy")]
    logits_out: Option<PathBuf>,

    /// Write {"prompt_ids": [...], "generated_ids": [...], "stop_reason": ...} as JSON
    /// (with --conversation: {"turns": [one such object per turn]}; with --parallel N > 1:
    /// {"prompt_ids": [...], "continuations": [{"seed", "generated_ids", "stop_reason"}, ...]}).
    #[arg(long = "ids-out", value_name = "FILE.json")]
    ids_out: Option<PathBuf>,

    /// Element type of the attention K/V rings: f32 (exact, the default) or f16 (half the
    /// state per sequence, logits within a few 1e-3); must equal --cache-type-v.
    #[arg(long = "cache-type-k", value_name = "TYPE", default_value = "f32")]
    cache_type_k: String,

    /// Element type of the attention K/V rings (must equal --cache-type-k).
    #[arg(long = "cache-type-v", value_name = "TYPE", default_value = "f32")]
    cache_type_v: String,

    /// Layers to run on the GPU (llama.cpp's -ngl): any value > 0 runs the whole model with
    /// CUDA (there is no partial offload); falls back to the CPU with a message when no GPU
    /// (or no `cuda` feature in this build) is there.
    #[arg(long = "n-gpu-layers", value_name = "N")]
    n_gpu_layers: Option<u32>,

    /// Where to run: cpu, or cuda (same as -ngl 99); cpu wins over -ngl.
    #[arg(long = "device", value_parser = ["cpu", "cuda"])]
    device: Option<String>,

    /// Print model details and the prompt's token ids to stderr.
    #[arg(long = "verbose")]
    verbose: bool,
}

/// A CLI failure: the message of the `error: ...` line.
struct CliError(String);

impl From<rgemma::Error> for CliError {
    fn from(e: rgemma::Error) -> Self {
        CliError(e.to_string())
    }
}

type CliResult<T> = Result<T, CliError>;

fn fail<T>(msg: impl Into<String>) -> CliResult<T> {
    Err(CliError(msg.into()))
}

fn io_err(path: &Path, e: io::Error) -> CliError {
    CliError(format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    rgemma::cli::install_panic_hook();

    // llama.cpp spells these flags with one dash.
    let argv = std::env::args_os().map(|a| match a.to_str() {
        Some("-cnv") => "--conversation".into(),
        Some("-sp") => "--special".into(),
        Some("-ngl") => "--n-gpu-layers".into(),
        Some("-np") => "--parallel".into(),
        Some("-sys") => "--system-prompt".into(),
        Some("-ctk") => "--cache-type-k".into(),
        Some("-ctv") => "--cache-type-v".into(),
        _ => a,
    });
    let args = Args::parse_from(argv);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`rg-run ... | head`): stop quietly, like a tool killed by SIGPIPE
        // but without the signal.
        Err(_) if STDOUT_CLOSED.load(Ordering::Relaxed) => ExitCode::SUCCESS,
        Err(CliError(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn sampler_params(args: &Args) -> CliResult<SamplerParams> {
    let seed = match args.seed {
        -1 => None,
        s if s >= 0 => Some(s as u64),
        s => return fail(format!("--seed must be >= 0 or -1 (random), got {s}")),
    };
    let params = SamplerParams {
        temp: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n as usize,
        seed,
    };
    params.validate()?;
    Ok(params)
}

fn parse_ids(text: &str) -> CliResult<Vec<u32>> {
    let mut ids = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(id) => ids.push(id),
            Err(_) => return fail(format!("--prompt-ids: '{part}' is not a token id")),
        }
    }
    Ok(ids)
}

fn run(args: &Args) -> CliResult<()> {
    // Check everything that needs no model first, so a bad flag fails fast.
    let sampler_params = sampler_params(args)?;
    let max_tokens = match args.n_predict {
        -1 => None,
        n if n >= 0 => Some(n as usize),
        n => {
            return fail(format!(
                "--n-predict must be >= 0 or -1 (no limit), got {n}"
            ))
        }
    };
    if args.conversation && args.logits_out.is_some() {
        return fail("--logits-out is not available with --conversation");
    }
    if args.conversation && args.prompt_ids.is_some() {
        return fail("--prompt-ids cannot be used with --conversation");
    }
    if args.prompt_cache.is_some() {
        if args.conversation {
            return fail(
                "--prompt-cache is not available with --conversation (save and resume a \
                 conversation with /save FILE and /load FILE)",
            );
        }
        if args.logits_out.is_some() {
            return fail(
                "--prompt-cache cannot be used with --logits-out (a restored prompt has no \
                 per-position logits)",
            );
        }
    }
    let n_parallel = parallel_count(args)?;
    let kv_type = KvType::from_flags(&args.cache_type_k, &args.cache_type_v)?;
    let prompt_ids_arg = args.prompt_ids.as_deref().map(parse_ids).transpose()?;
    let prompt_text = match (&args.prompt, &args.file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(path)) => {
            let mut text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
            if text.ends_with('\n') {
                text.pop();
            }
            Some(text)
        }
        (None, None) => None,
    };
    if !args.conversation && prompt_text.is_none() && prompt_ids_arg.is_none() {
        return fail("no prompt: give -p TEXT, -f FILE or --prompt-ids IDS (or -cnv to chat)");
    }
    if matches!(&prompt_ids_arg, Some(ids) if ids.is_empty()) {
        return fail("empty prompt: --prompt-ids has no token ids");
    }
    if !args.conversation && matches!(&prompt_text, Some(t) if t.is_empty()) {
        return fail("empty prompt");
    }

    // Load.
    if args.model.is_dir() {
        return fail(format!(
            "{} is a directory, not a GGUF file (convert a checkpoint folder with rg-quantize)",
            args.model.display()
        ));
    }
    let want_gpu = match args.device.as_deref() {
        Some("cpu") => false,
        Some(_) => true,
        None => args.n_gpu_layers.is_some_and(|n| n > 0),
    };
    if want_gpu && args.prompt_cache.is_some() {
        return fail(
            "--prompt-cache runs on the CPU only (the GPU backend's state is not saved); drop \
             -ngl / --device cuda",
        );
    }
    if want_gpu && kv_type != KvType::F32 {
        return fail(format!(
            "--cache-type-k {} runs on the CPU only (the GPU backend keeps f32 rings); drop \
             -ngl / --device cuda",
            kv_type.name()
        ));
    }
    if want_gpu && n_parallel > 1 {
        return fail(
            "--parallel > 1 runs on the CPU only (the GPU backend decodes one sequence); \
             drop -ngl / --device cuda",
        );
    }
    let t_load = Instant::now();
    // The weights are repacked for the CPU kernels unless the model is meant for the GPU
    // (the packed copy would only cost load time and memory there).
    let mut load_options = LoadOptions::default();
    if want_gpu && cfg!(feature = "cuda") {
        load_options.repack = false;
    }
    let model = Arc::new(Model::load_with(&args.model, &load_options)?);
    let n_threads = args
        .threads
        .map(|t| t as usize)
        .unwrap_or_else(default_threads);
    if n_parallel > 1 {
        let setup = ParallelSetup {
            n_seq: n_parallel,
            n_threads,
            kv_type,
            t_load,
            max_tokens,
            sampler_params,
            prompt_ids: prompt_ids_arg,
            prompt_text,
        };
        return run_parallel(args, model, setup);
    }
    let mut ctx = Context::new(
        Arc::clone(&model),
        ContextParams {
            batch_size: args.batch_size as usize,
            n_threads,
            kv_type,
            ..Default::default()
        },
    )?;
    if want_gpu {
        attach_gpu(&mut ctx, &model, args.batch_size as usize, args.verbose);
    }
    let load_time = t_load.elapsed();
    let tokenizer = model.tokenizer();
    if args.verbose {
        print_model_info(&model, tokenizer, &args.model, n_threads);
        if args.ctx_size.is_some() {
            eprintln!("note: --ctx-size is ignored (the sequence state has a fixed size)");
        }
    }

    if !args.stop.is_empty() {
        needs_tokenizer(tokenizer, "--stop")?;
    }
    let opts = generate_options(args, tokenizer, max_tokens);
    let mut sampler = Sampler::new(sampler_params);
    let mut out = StdoutSink::new(args.logits_out.as_deref(), model.n_vocab())?;
    let mut stats = Stats::default();

    if args.conversation {
        let tok = needs_tokenizer(tokenizer, "--conversation")?;
        let template = ChatTemplate::for_file(model.gguf(), tok)?;
        let turns = chat(
            &mut ctx,
            &mut sampler,
            tok,
            &template,
            &opts,
            &mut out,
            &mut stats,
            prompt_text,
            args,
        )?;
        if let Some(path) = &args.ids_out {
            let turns: Vec<serde_json::Value> = turns
                .iter()
                .map(|(prompt, gen)| ids_json(prompt, gen))
                .collect();
            write_json(path, &serde_json::json!({ "turns": turns }))?;
        }
    } else {
        let prompt = prompt_tokens(args, tokenizer, prompt_ids_arg, prompt_text, &mut out)?;
        let t_prompt = Instant::now();
        let mut restored = 0;
        if let Some(path) = &args.prompt_cache {
            restored = restore_prompt_cache(path, &prompt, |saved| saved.restore(&mut ctx));
            for &id in &prompt[..restored] {
                sampler.accept(id);
            }
        }
        if restored < prompt.len() {
            feed_prompt(&mut ctx, &mut sampler, &prompt[restored..], &opts, &mut out)?;
            if let Some(path) = args
                .prompt_cache
                .as_deref()
                .filter(|_| !args.prompt_cache_ro)
            {
                save_prompt_cache(path, || SavedPrompt::capture(&ctx, &prompt));
            }
        }
        let gen = generate_after_prompt(
            &mut ctx,
            &mut sampler,
            tokenizer,
            prompt.len() - restored,
            t_prompt.elapsed(),
            &opts,
            &mut out,
        )?;
        out.end_of_output()?;
        stats.add(&gen);
        if args.verbose {
            eprintln!("stop reason: {}", describe_stop(&gen.stop));
        }
        if let Some(path) = &args.ids_out {
            write_json(path, &ids_json(&prompt, &gen))?;
        }
    }
    out.finish_logits()?;
    print_timings(load_time, &stats, &sampler, &ctx);
    Ok(())
}

/// `--parallel` as a sequence count, with the flags that cannot go with more than one.
fn parallel_count(args: &Args) -> CliResult<usize> {
    let n = args.parallel;
    if !(1..=MAX_PARALLEL).contains(&n) {
        return fail(format!(
            "--parallel must be between 1 and {MAX_PARALLEL}, got {n}"
        ));
    }
    if n > 1 && args.conversation {
        return fail("--parallel > 1 is not available with --conversation");
    }
    if n > 1 && args.logits_out.is_some() {
        return fail(
            "--parallel > 1 is not available with --logits-out (one sequence's logits per file)",
        );
    }
    Ok(n as usize)
}

/// The model's tokenizer, or an error naming what needed it.
fn needs_tokenizer<'a>(tokenizer: Option<&'a Tokenizer>, what: &str) -> CliResult<&'a Tokenizer> {
    tokenizer.ok_or_else(|| {
        CliError(format!(
            "{what} needs a tokenizer, and this model file has none (use --prompt-ids)"
        ))
    })
}

/// Stop tokens, limits and text settings from the flags.
fn generate_options(
    args: &Args,
    tokenizer: Option<&Tokenizer>,
    max_tokens: Option<usize>,
) -> GenerateOptions {
    let mut stop_tokens = Vec::new();
    if !args.ignore_eos {
        match tokenizer {
            Some(tok) => {
                stop_tokens.push(tok.eos());
                stop_tokens.extend(tok.token_id("<end_of_turn>"));
            }
            None => stop_tokens.push(GEMMA_EOS),
        }
    }
    GenerateOptions {
        max_tokens,
        stop_tokens,
        stop_strings: args.stop.clone(),
        all_logits: args.logits_out.is_some(),
        batch_size: args.batch_size as usize,
        show_special: args.special,
    }
}

/// The prompt's token ids (--prompt-ids verbatim, or the text encoded); a text prompt is
/// echoed to stdout unless --no-display-prompt.
fn prompt_tokens(
    args: &Args,
    tokenizer: Option<&Tokenizer>,
    ids: Option<Vec<u32>>,
    text: Option<String>,
    out: &mut StdoutSink,
) -> CliResult<Vec<u32>> {
    let prompt = match (ids, text) {
        (Some(ids), _) => ids,
        (None, Some(text)) => {
            let tok = needs_tokenizer(tokenizer, "a text prompt")?;
            let ids = tok.encode(&text, add_bos(tok, args), true)?;
            if ids.is_empty() {
                return fail("empty prompt: the text encodes to no tokens");
            }
            if !args.no_display_prompt {
                out.print(&text)?;
            }
            ids
        }
        (None, None) => unreachable!("checked in run"),
    };
    if args.verbose {
        eprintln!("prompt ids ({}): {prompt:?}", prompt.len());
    }
    Ok(prompt)
}

/// BOS goes in front of a text prompt when the vocabulary asks for it
/// (`tokenizer.ggml.add_bos_token`, true for Gemma) and --no-bos is not given.
fn add_bos(tok: &Tokenizer, args: &Args) -> bool {
    tok.add_bos_by_default() && !args.no_bos
}

/// `--prompt-cache`: restores the saved prompt in `path` when `prompt` starts with all of its
/// tokens, and returns how many prompt tokens it covers (0 when there is nothing usable,
/// which is said on stderr: the run then evaluates the whole prompt).
fn restore_prompt_cache(
    path: &Path,
    prompt: &[u32],
    restore: impl FnOnce(&SavedPrompt) -> rgemma::Result<()>,
) -> usize {
    let shown = path.display();
    let saved = match SavedPrompt::read(path) {
        Ok(saved) => saved,
        Err(rgemma::Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            eprintln!("prompt cache: {shown} does not exist yet");
            return 0;
        }
        Err(e) => {
            eprintln!("prompt cache: ignored: {e}");
            return 0;
        }
    };
    if !saved.serves(prompt) {
        let common = saved
            .tokens()
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "prompt cache: {shown} holds another prompt ({} tokens, the first {common} in \
             common with this one); evaluating all {} tokens",
            saved.tokens().len(),
            prompt.len()
        );
        return 0;
    }
    match restore(&saved) {
        Ok(()) => {
            eprintln!(
                "prompt cache: restored {} of {} prompt tokens from {shown}",
                saved.tokens().len(),
                prompt.len()
            );
            saved.tokens().len()
        }
        Err(e) => {
            eprintln!("prompt cache: {shown} ignored: {e}");
            0
        }
    }
}

/// Writes the state after the prompt to `path`; a failure is a warning (the run goes on).
fn save_prompt_cache(path: &Path, capture: impl FnOnce() -> rgemma::Result<SavedPrompt>) {
    match capture().and_then(|saved| saved.write(path).map(|()| saved.tokens().len())) {
        Ok(n) => eprintln!(
            "prompt cache: saved the state after {n} prompt tokens to {}",
            path.display()
        ),
        Err(e) => eprintln!("prompt cache: warning: not saved: {e}"),
    }
}

/// Moves evaluation to the GPU, or says in one line why it stays on the CPU.
#[cfg(feature = "cuda")]
fn attach_gpu(ctx: &mut Context, model: &Model, batch_size: usize, verbose: bool) {
    match rgemma::cuda::CudaOffload::new(model, batch_size) {
        Ok(off) => {
            if verbose {
                eprintln!("running on {}", rgemma::model::Offload::describe(&off));
            }
            ctx.set_offload(Some(Box::new(off)));
        }
        Err(e) => eprintln!("{}", rgemma::cuda::fallback_message(&e)),
    }
}

#[cfg(not(feature = "cuda"))]
fn attach_gpu(_: &mut Context, _: &Model, _: usize, _: bool) {
    eprintln!("rgemma: CUDA unavailable (rg-run was built without the `cuda` feature); running on the CPU");
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The interactive loop: one Gemma turn per stdin line (the chat template from the file, see
/// [`ChatTemplate::next_user_turn`]), the state kept across turns. A line `/save FILE` or
/// `/load FILE` parks or resumes the conversation instead. Returns each turn's new prompt
/// tokens and generation; the whole sequence is the concatenation of `prompt + generated`
/// over the turns (a reply's stop token is not part of it: the next turn starts with
/// `<end_of_turn>`).
#[allow(clippy::too_many_arguments)]
fn chat(
    ctx: &mut Context,
    sampler: &mut Sampler,
    tok: &Tokenizer,
    template: &ChatTemplate,
    opts: &GenerateOptions,
    out: &mut StdoutSink,
    stats: &mut Stats,
    first_message: Option<String>,
    args: &Args,
) -> CliResult<Vec<(Vec<u32>, Generation)>> {
    let mut turns = Vec::new();
    let stdin = io::stdin();
    let mut stdin = stdin.lock();
    // Every token fed to the context so far: what /save records with the state.
    let mut fed: Vec<u32> = Vec::new();
    // The token the previous reply ended on when it was not fed (token limit, stop string).
    let mut unfed: Option<u32> = None;
    let mut pending_first = first_message.filter(|m| !m.trim().is_empty());
    loop {
        let message = match pending_first.take() {
            Some(m) => {
                out.print(&format!("> {m}\n"))?;
                m
            }
            None => {
                out.print("> ")?;
                let mut line = String::new();
                let n = stdin
                    .read_line(&mut line)
                    .map_err(|e| CliError(format!("stdin: {e}")))?;
                if n == 0 {
                    out.print("\n")?;
                    return Ok(turns); // EOF: the user is done
                }
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                line.to_string()
            }
        };
        if let Some(command) = ChatCommand::parse(&message) {
            // A failed command is reported and the chat goes on.
            match command.and_then(|c| run_chat_command(c, ctx, sampler, &mut fed, &mut unfed)) {
                Ok(note) => eprintln!("{note}"),
                Err(CliError(msg)) => eprintln!("error: {msg}"),
            }
            continue;
        }
        let first = fed.is_empty() && unfed.is_none();
        let mut new_ids =
            template.next_user_turn(tok, first, args.system_prompt.as_deref(), &message)?;
        if first && args.no_bos && new_ids.first() == Some(&tok.bos()) {
            new_ids.remove(0);
        }
        let mut ids = Vec::with_capacity(new_ids.len() + 1);
        ids.extend(unfed.take());
        ids.extend_from_slice(&new_ids);
        if args.verbose {
            eprintln!("turn ids ({}): {ids:?}", ids.len());
        }
        let gen = generate(ctx, sampler, Some(tok), &ids, opts, out)?;
        out.print("\n")?;
        stats.add(&gen);
        fed.extend_from_slice(&ids);
        let n_fed = gen.generated.len() - usize::from(gen.unfed.is_some());
        fed.extend_from_slice(&gen.generated[..n_fed]);
        unfed = gen.unfed;
        turns.push((new_ids, gen));
    }
}

/// A chat line that is a command rather than a message.
enum ChatCommand {
    Save(PathBuf),
    Load(PathBuf),
}

impl ChatCommand {
    /// `None` for an ordinary message; an error for a command without its file.
    fn parse(line: &str) -> Option<CliResult<ChatCommand>> {
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let make: fn(PathBuf) -> ChatCommand = match word {
            "/save" => ChatCommand::Save,
            "/load" => ChatCommand::Load,
            _ => return None,
        };
        let path = rest.trim();
        Some(if path.is_empty() {
            fail(format!("{word} needs a file name: {word} FILE"))
        } else {
            Ok(make(PathBuf::from(path)))
        })
    }
}

/// Runs a chat command; returns the line that reports it.
fn run_chat_command(
    command: ChatCommand,
    ctx: &mut Context,
    sampler: &mut Sampler,
    fed: &mut Vec<u32>,
    unfed: &mut Option<u32>,
) -> CliResult<String> {
    match command {
        ChatCommand::Save(path) => {
            // The saved state must stand alone: feed the pending token first (the next turn
            // would feed it anyway, so nothing changes).
            if let Some(id) = unfed.take() {
                ctx.eval(&[id], false)?;
                fed.push(id);
            }
            SavedPrompt::capture(ctx, fed)?.write(&path)?;
            Ok(format!(
                "saved the conversation ({} tokens) to {}",
                fed.len(),
                path.display()
            ))
        }
        ChatCommand::Load(path) => {
            let saved = SavedPrompt::read(&path)?;
            saved.restore(ctx)?;
            *fed = saved.tokens().to_vec();
            *unfed = None;
            // The repetition penalty looks at the resumed conversation, as if it had been
            // typed here.
            sampler.reset();
            for &id in fed.iter() {
                sampler.accept(id);
            }
            Ok(format!(
                "loaded a conversation ({} tokens) from {}",
                fed.len(),
                path.display()
            ))
        }
    }
}

/// What `run` has worked out for [`run_parallel`].
struct ParallelSetup {
    n_seq: usize,
    n_threads: usize,
    kv_type: KvType,
    t_load: Instant,
    max_tokens: Option<usize>,
    sampler_params: SamplerParams,
    prompt_ids: Option<Vec<u32>>,
    prompt_text: Option<String>,
}

/// `-np N`: the prompt is evaluated once in sequence 0 (in batches of -b rows, logits only
/// for the last one), copied into sequences 1..N, and each sequence is sampled with its own
/// [`Sampler`] (seed `seed + i`, the prompt in its penalty history, as [`generate`] does).
/// Each step samples one token for every running sequence from its logits and decodes all of
/// them in one [`BatchContext::decode`]; a sequence stops, by the rules of [`generate`], at
/// -n tokens, a stop token or a stop string while the others go on. The text is printed when
/// all are done: the prompt (unless --no-display-prompt), then per continuation a header
/// line and its text.
fn run_parallel(args: &Args, model: Arc<Model>, setup: ParallelSetup) -> CliResult<()> {
    let n_seq = setup.n_seq;
    let prompt_batch = args.batch_size as usize;
    // One decode carries a row for every running sequence, even with a -b smaller than N.
    let mut ctx = BatchContext::new(
        Arc::clone(&model),
        ContextParams {
            batch_size: prompt_batch.max(n_seq),
            n_threads: setup.n_threads,
            n_seq_max: n_seq,
            kv_type: setup.kv_type,
        },
    )?;
    let load_time = setup.t_load.elapsed();
    let tokenizer = model.tokenizer();
    if args.verbose {
        print_model_info(&model, tokenizer, &args.model, setup.n_threads);
        if args.ctx_size.is_some() {
            eprintln!("note: --ctx-size is ignored (the sequence state has a fixed size)");
        }
    }
    if !args.stop.is_empty() {
        needs_tokenizer(tokenizer, "--stop")?;
    }
    let opts = generate_options(args, tokenizer, setup.max_tokens);
    let mut out = StdoutSink::new(None, model.n_vocab())?;
    let prompt = prompt_tokens(
        args,
        tokenizer,
        setup.prompt_ids,
        setup.prompt_text,
        &mut out,
    )?;
    let n_vocab = model.n_vocab();
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= n_vocab) {
        return fail(format!(
            "token id {bad} is out of range (vocabulary size {n_vocab})"
        ));
    }
    // The seed of continuation 1: --seed, or a drawn one below 2^62, so that every seed
    // printed (up to base + 255) can be given back to --seed (an i64) to repeat a run.
    let base_seed = match setup.sampler_params.seed {
        Some(seed) => seed,
        None => Sampler::new(setup.sampler_params.clone()).seed() >> 2,
    };

    // Prompt: once (after what the prompt cache restores), then forked.
    let t_prompt = Instant::now();
    let mut restored = 0;
    if let Some(path) = &args.prompt_cache {
        restored = restore_prompt_cache(path, &prompt, |saved| saved.restore_seq(&mut ctx, 0));
    }
    let mut rows: Vec<BatchRow> = Vec::with_capacity(ctx.batch_capacity());
    let rest = &prompt[restored..];
    let n_chunks = rest.len().div_ceil(prompt_batch);
    for (ci, chunk) in rest.chunks(prompt_batch).enumerate() {
        let last_chunk = ci + 1 == n_chunks;
        rows.clear();
        rows.extend(chunk.iter().enumerate().map(|(t, &token)| BatchRow {
            token,
            seq: 0,
            logits: last_chunk && t + 1 == chunk.len(),
        }));
        ctx.decode(&rows)?;
    }
    if let Some(path) = args.prompt_cache.as_deref() {
        if !rest.is_empty() && !args.prompt_cache_ro {
            save_prompt_cache(path, || SavedPrompt::capture_seq(&ctx, 0, &prompt));
        }
    }
    for seq in 1..n_seq {
        ctx.seq_copy(0, seq)?;
    }
    let mut conts: Vec<Continuation> = (0..n_seq)
        .map(|i| {
            let seed = base_seed + i as u64;
            let params = SamplerParams {
                seed: Some(seed),
                ..setup.sampler_params.clone()
            };
            Continuation::new(Sampler::new(params), &opts, &prompt)
        })
        .collect();
    let prompt_time = t_prompt.elapsed();

    // Generation: one batched decode per step.
    let t_gen = Instant::now();
    let mut decodes = 0usize;
    loop {
        rows.clear();
        for (seq, cont) in conts.iter_mut().enumerate() {
            if cont.tokens.stopped().is_some() {
                continue;
            }
            let logits = ctx
                .seq_logits(seq)
                .ok_or_else(|| CliError(format!("internal error: no logits for sequence {seq}")))?;
            if let Some(token) = cont.step(logits, tokenizer) {
                rows.push(BatchRow {
                    token,
                    seq,
                    logits: true,
                });
            }
        }
        if rows.is_empty() {
            break;
        }
        ctx.decode(&rows)?;
        decodes += 1;
    }
    let gen_time = t_gen.elapsed();

    out.end_of_output()?;
    for (i, cont) in conts.iter().enumerate() {
        out.print(&format!(
            "--- continuation {}/{n_seq} (seed {}) ---\n",
            i + 1,
            cont.sampler.seed()
        ))?;
        out.print(&cont.text)?;
        out.end_of_output()?;
        if args.verbose {
            let stop = cont
                .tokens
                .stopped()
                .expect("every continuation has stopped");
            eprintln!(
                "continuation {}: stop reason: {}",
                i + 1,
                describe_stop(&stop)
            );
        }
    }
    if let Some(path) = &args.ids_out {
        let continuations: Vec<serde_json::Value> = conts
            .iter()
            .map(|c| {
                let mut v = serde_json::json!({
                    "seed": c.sampler.seed(),
                    "generated_ids": c.tokens.generated,
                });
                if let Some(stop) = c.tokens.stopped() {
                    v["stop_reason"] = stop.as_str().into();
                    if let StopReason::StopToken(id) = stop {
                        v["stop_token"] = id.into();
                    }
                }
                v
            })
            .collect();
        let json = serde_json::json!({ "prompt_ids": prompt, "continuations": continuations });
        write_json(path, &json)?;
    }

    let generated: usize = conts.iter().map(|c| c.tokens.generated.len()).sum();
    eprintln!();
    eprintln!(
        "rg-run: {:<13} = {:10.2} ms",
        "load time",
        load_time.as_secs_f64() * 1e3
    );
    eprintln!("{}", rate_line("prompt eval", rest.len(), prompt_time));
    eprintln!("{}", rate_line("generation", generated, gen_time));
    eprintln!(
        "rg-run: {:<13} = {n_seq} sequences, {decodes} batched decodes",
        "parallel"
    );
    eprintln!(
        "rg-run: {:<13} = {:10.2} MiB ({n_seq} x {:.2} MiB)",
        "state memory",
        (n_seq * ctx.seq_state_bytes()) as f64 / (1024.0 * 1024.0),
        ctx.seq_state_bytes() as f64 / (1024.0 * 1024.0)
    );
    let last_seed = base_seed + (n_seq as u64 - 1);
    eprintln!(
        "rg-run: {:<13} = {base_seed} (continuations 1..{n_seq}: seeds {base_seed}..{last_seed})",
        "seed"
    );
    Ok(())
}

/// One sequence of `-np`: its sampler, generation loop and text.
struct Continuation {
    sampler: Sampler,
    tokens: TokenLoop,
    /// The text to print (stop strings cut, as [`generate`] streams it).
    text: String,
}

impl Continuation {
    fn new(mut sampler: Sampler, opts: &GenerateOptions, prompt: &[u32]) -> Self {
        for &id in prompt {
            sampler.accept(id);
        }
        Continuation {
            sampler,
            tokens: TokenLoop::new(opts),
            text: String::new(),
        }
    }

    /// One step of [`generate`]'s loop on `logits` (those after this sequence's last token):
    /// the token to decode next, or `None` when the sequence has ended.
    fn step(&mut self, logits: &[f32], tokenizer: Option<&Tokenizer>) -> Option<u32> {
        match self
            .tokens
            .step(logits, &mut self.sampler, tokenizer, &mut self.text)
        {
            Next::Feed(id) => Some(id),
            Next::Stop(_) => None,
        }
    }
}

fn describe_stop(stop: &StopReason) -> String {
    match stop {
        StopReason::StopToken(id) => format!("stop token {id}"),
        other => other.as_str().to_string(),
    }
}

/// Streams text to stdout (flushed per piece) and logit rows to the .npy file.
struct StdoutSink {
    stdout: io::Stdout,
    wrote_text: bool,
    ended_with_newline: bool,
    logits: Option<NpyF32Writer>,
}

impl StdoutSink {
    fn new(logits_path: Option<&Path>, n_vocab: usize) -> CliResult<Self> {
        let logits = logits_path
            .map(|p| NpyF32Writer::create(p, n_vocab))
            .transpose()?;
        Ok(StdoutSink {
            stdout: io::stdout(),
            wrote_text: false,
            ended_with_newline: false,
            logits,
        })
    }

    fn print(&mut self, text: &str) -> CliResult<()> {
        self.write(text)
            .map_err(|e| CliError(format!("stdout: {e}")))
    }

    fn write(&mut self, text: &str) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let mut lock = self.stdout.lock();
        let res = lock.write_all(text.as_bytes()).and_then(|()| lock.flush());
        if let Err(e) = &res {
            if e.kind() == io::ErrorKind::BrokenPipe {
                STDOUT_CLOSED.store(true, Ordering::Relaxed);
            }
        }
        res?;
        self.wrote_text = true;
        self.ended_with_newline = text.ends_with('\n');
        Ok(())
    }

    /// Ends the output with a newline, as llama.cpp does.
    fn end_of_output(&mut self) -> CliResult<()> {
        if self.wrote_text && !self.ended_with_newline {
            self.print("\n")?;
        }
        Ok(())
    }

    fn finish_logits(&mut self) -> CliResult<()> {
        match self.logits.take() {
            Some(w) => w.finish(),
            None => Ok(()),
        }
    }
}

impl GenerateSink for StdoutSink {
    fn text(&mut self, text: &str) -> rgemma::Result<()> {
        self.write(text)
            .map_err(|e| rgemma::Error::io("<stdout>", e))
    }

    fn logits_row(&mut self, row: &[f32]) -> rgemma::Result<()> {
        match &mut self.logits {
            Some(w) => w.write_row(row),
            None => Ok(()),
        }
    }
}

/// Writes a float32 C-order `.npy` file of `[rows, cols]` whose row count is known only at the
/// end: a fixed-size header is written first and rewritten with the final shape.
struct NpyF32Writer {
    path: PathBuf,
    file: BufWriter<File>,
    cols: usize,
    rows: usize,
    bytes: Vec<u8>,
}

/// Magic (6) + version (2) + header length (2) + header text: 128 bytes in all, a multiple of
/// 64 as the format asks, with room for any u64 shape.
const NPY_HEADER_LEN: usize = 128;

impl NpyF32Writer {
    fn create(path: &Path, cols: usize) -> CliResult<Self> {
        let file = File::create(path).map_err(|e| io_err(path, e))?;
        let mut w = NpyF32Writer {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            cols,
            rows: 0,
            bytes: Vec::with_capacity(cols * 4),
        };
        let header = npy_header(0, cols);
        w.file.write_all(&header).map_err(|e| io_err(path, e))?;
        Ok(w)
    }

    fn write_row(&mut self, row: &[f32]) -> rgemma::Result<()> {
        if row.len() != self.cols {
            return Err(rgemma::Error::InvalidArgument(format!(
                "logits row of {} values, expected {}",
                row.len(),
                self.cols
            )));
        }
        self.bytes.clear();
        for v in row {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.file
            .write_all(&self.bytes)
            .map_err(|e| rgemma::Error::io(&self.path, e))?;
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self) -> CliResult<()> {
        let header = npy_header(self.rows, self.cols);
        let path = self.path.clone();
        let res = (|| {
            self.file.seek(SeekFrom::Start(0))?;
            self.file.write_all(&header)?;
            self.file.flush()
        })();
        res.map_err(|e| io_err(&path, e))
    }
}

fn npy_header(rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let text_len = NPY_HEADER_LEN - 10;
    let mut text = dict.into_bytes();
    text.resize(text_len - 1, b' ');
    text.push(b'\n');
    let mut h = Vec::with_capacity(NPY_HEADER_LEN);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&(text_len as u16).to_le_bytes());
    h.extend_from_slice(&text);
    h
}

fn ids_json(prompt: &[u32], gen: &Generation) -> serde_json::Value {
    let mut v = serde_json::json!({
        "prompt_ids": prompt,
        "generated_ids": gen.generated,
        "stop_reason": gen.stop.as_str(),
    });
    if let StopReason::StopToken(id) = gen.stop {
        v["stop_token"] = id.into();
    }
    v
}

fn write_json(path: &Path, v: &serde_json::Value) -> CliResult<()> {
    let text = serde_json::to_string(v).map_err(|e| CliError(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| io_err(path, e))
}

#[derive(Default)]
struct Stats {
    prompt_tokens: usize,
    prompt_time: Duration,
    gen_tokens: usize,
    gen_time: Duration,
}

impl Stats {
    fn add(&mut self, g: &Generation) {
        self.prompt_tokens += g.prompt_tokens;
        self.prompt_time += g.prompt_time;
        self.gen_tokens += g.generated.len();
        self.gen_time += g.gen_time;
    }
}

fn rate_line(what: &str, n: usize, t: Duration) -> String {
    let ms = t.as_secs_f64() * 1e3;
    if n == 0 || ms == 0.0 {
        return format!("rg-run: {what:<13} = {ms:10.2} ms / {n:5} tokens");
    }
    format!(
        "rg-run: {what:<13} = {ms:10.2} ms / {n:5} tokens ({:8.2} ms per token, {:9.2} tokens per second)",
        ms / n as f64,
        n as f64 / t.as_secs_f64()
    )
}

fn print_timings(load: Duration, s: &Stats, sampler: &Sampler, ctx: &Context) {
    eprintln!();
    eprintln!(
        "rg-run: {:<13} = {:10.2} ms",
        "load time",
        load.as_secs_f64() * 1e3
    );
    eprintln!(
        "{}",
        rate_line("prompt eval", s.prompt_tokens, s.prompt_time)
    );
    eprintln!("{}", rate_line("generation", s.gen_tokens, s.gen_time));
    eprintln!(
        "rg-run: {:<13} = {:10.2} MiB",
        "state memory",
        ctx.state_size_bytes() as f64 / (1024.0 * 1024.0)
    );
    eprintln!("rg-run: {:<13} = {}", "seed", sampler.seed());
}

fn print_model_info(model: &Model, tok: Option<&Tokenizer>, path: &Path, n_threads: usize) {
    let hp = model.hparams();
    eprintln!("model: {}", path.display());
    eprintln!(
        "  vocab {} | hidden {} | layers {} | heads {} (kv {}) | window {} | lru width {}",
        hp.n_vocab, hp.hidden, hp.n_layers, hp.n_heads, hp.n_kv_heads, hp.window, hp.lru_width
    );
    let tokenizer = match tok.map(Tokenizer::source) {
        None => "none (ids only)",
        Some(TokenizerSource::HuggingFace) => "tokenizer.huggingface.json (tokenizers crate)",
        Some(_) => "tokenizer.ggml arrays (SentencePiece)",
    };
    eprintln!("  tokenizer: {tokenizer} | threads: {n_threads}");
    let t = model.load_timings();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let tokenizer_mib = t.tokenizer_resident_bytes.map_or("n/a".to_string(), |b| {
        format!("{:.1}", b as f64 / (1 << 20) as f64)
    });
    eprintln!(
        "  load stages: open {:.1} ms | check {:.1} ms | repack {:.1} ms | tokenizer {:.1} ms \
         ({tokenizer_mib} MiB resident)",
        ms(t.open),
        ms(t.check),
        ms(t.repack),
        ms(t.tokenizer)
    );
}
