//! `rg-imatrix`: an importance matrix of a RecurrentGemma GGUF model on calibration text, like
//! llama.cpp's `llama-imatrix`, for `rg-quantize --imatrix`.
//!
//! ```text
//! rg-imatrix -m model.gguf -f calib.txt [-c 512] [--chunks N] [-b N] [-t N] [-o imatrix.gguf]
//!            [--output-format gguf|dat]
//! ```
//!
//! The text is cut into chunks as `rg-perplexity` cuts it (BOS first, the state reset per
//! chunk); every matrix product of every chunk adds its inputs' squares per column
//! (`rgemma::imatrix`). A progress line shows the running perplexity of the chunks' second
//! halves, as llama-imatrix does. The file is llama.cpp's GGUF imatrix format (or its legacy
//! `.dat` with `--output-format dat`), written once at the end. Errors are one `error: ...`
//! line, exit 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use rgemma::imatrix::Collector;
use rgemma::model::{Context, ContextParams, Model};
use rgemma::perplexity::{log_softmax, scored_positions, text_chunks, Perplexity};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Gguf,
    Dat,
}

#[derive(Parser, Debug)]
#[command(
    name = "rg-imatrix",
    version,
    about = "Importance matrix of a RecurrentGemma GGUF model on calibration text"
)]
struct Args {
    /// Model file (GGUF), ideally the unquantized one (F32, BF16 or F16).
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: PathBuf,

    /// Calibration text (UTF-8).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,

    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx: usize,

    /// Process at most this many chunks (default: all).
    #[arg(long = "chunks")]
    chunks: Option<usize>,

    /// Tokens per forward batch (default: the chunk size, at most 512).
    #[arg(short = 'b', long = "batch-size")]
    batch: Option<usize>,

    /// Threads (default: all available cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,

    /// Output file.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        default_value = "imatrix.gguf"
    )]
    output: PathBuf,

    /// File format: llama.cpp's GGUF imatrix, or its legacy .dat.
    #[arg(long = "output-format", value_enum, default_value_t = Format::Gguf)]
    format: Format,
}

type CliResult<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    rgemma::cli::install_panic_hook();
    let args: Args = match rgemma::cli::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> CliResult<()> {
    if args.threads == Some(0) {
        return Err("threads must be at least 1".into());
    }
    if args.chunks == Some(0) {
        return Err("--chunks must be at least 1".into());
    }
    let t_load = Instant::now();
    let model =
        Arc::new(Model::load(&args.model).map_err(|e| format!("{}: {e}", args.model.display()))?);
    let n_vocab = model.n_vocab();
    eprintln!(
        "loaded {} ({} layers, vocab {n_vocab}) in {:.2} s",
        args.model.display(),
        model.hparams().n_layers,
        t_load.elapsed().as_secs_f64()
    );
    let text = std::fs::read(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let text = String::from_utf8(text)
        .map_err(|_| format!("{}: the text is not valid UTF-8", args.file.display()))?;
    let n_ctx = args.ctx;
    let tokens = text_chunks(&model, &text, n_ctx, args.chunks)
        .map_err(|e| format!("{}: {e}", args.file.display()))?;
    let n_chunks = tokens.len() / n_ctx;

    let batch = args.batch.unwrap_or(n_ctx.min(512));
    if batch == 0 {
        return Err("batch size must be at least 1".into());
    }
    let params = ContextParams {
        batch_size: batch,
        n_threads: args.threads.unwrap_or(0),
        ..Default::default()
    };
    let mut ctx = Context::new(model.clone(), params).map_err(|e| e.to_string())?;
    let collector = Arc::new(Collector::new());
    ctx.set_matmul_observer(Some(collector.clone()));
    eprintln!("imatrix: {n_chunks} chunks of {n_ctx} tokens, batch {batch}");

    let scored = scored_positions(n_ctx);
    let mut logp = vec![0f32; n_vocab];
    let mut ppl = Perplexity::default();
    let t_eval = Instant::now();
    for (ci, chunk) in tokens.chunks_exact(n_ctx).enumerate() {
        ctx.reset();
        ctx.eval(chunk, true).map_err(|e| e.to_string())?;
        let all = ctx.all_logits();
        for pos in scored.clone() {
            log_softmax(&all[pos * n_vocab..(pos + 1) * n_vocab], &mut logp);
            ppl.add(logp[chunk[pos + 1] as usize] as f64);
        }
        print!("[{}]{:.4},", ci + 1, ppl.ppl());
        use std::io::Write;
        std::io::stdout().flush().ok();
        if ci == 0 {
            eprintln!(
                "imatrix: {:.2} s per chunk, about {:.1} s in all",
                t_eval.elapsed().as_secs_f64(),
                t_eval.elapsed().as_secs_f64() * n_chunks as f64
            );
        }
    }
    println!();
    let secs = t_eval.elapsed().as_secs_f64();
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5}",
        ppl.ppl(),
        ppl.ppl_se()
    );

    let dataset = args.file.display().to_string();
    let m = collector.imatrix(vec![dataset], n_chunks as u32, n_ctx as u32);
    let written = match args.format {
        Format::Gguf => m.write_gguf(&args.output),
        Format::Dat => m.write_dat(&args.output),
    };
    written.map_err(|e| format!("{}: {e}", args.output.display()))?;
    let rss = rgemma::process_memory::status_kib("VmHWM")
        .map_or("n/a".to_string(), |k| format!("{} MiB", k / 1024));
    eprintln!(
        "imatrix: {} entries from {n_chunks} chunks in {secs:.2} s ({:.2} s per chunk, peak RSS {rss}) -> {}",
        m.entries.len(),
        secs / n_chunks as f64,
        args.output.display()
    );
    Ok(())
}
