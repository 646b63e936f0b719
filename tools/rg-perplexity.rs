//! `rg-perplexity`: perplexity of a RecurrentGemma GGUF model on a text file, and KL divergence
//! of one model against another's saved log-probabilities, like llama.cpp's `llama-perplexity`.
//!
//! ```text
//! rg-perplexity -m model.gguf -f text.txt [-c 512] [-b 512] [-t N] [--chunks N]
//! rg-perplexity -m f32.gguf  -f text.txt -c 256 --kl-divergence-base base.bin   # PPL + save log-probs
//! rg-perplexity -m q4_0.gguf --kl-divergence --kl-divergence-base base.bin     # compare with them
//! ```
//!
//! The text is tokenized once (BOS first) and cut into non-overlapping chunks of `-c` tokens; the
//! first token of every chunk is set to BOS, the state is reset per chunk, and the second half of
//! each chunk is scored (see `rgemma::perplexity`). Errors are one `error: ...` line, exit 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use rgemma::model::{Context, ContextParams, Model};
use rgemma::perplexity::{
    log_softmax, scored_positions, text_chunks, KlDivergence, KldHeader, KldReader, KldWriter,
    Perplexity,
};

#[derive(Parser, Debug)]
#[command(
    name = "rg-perplexity",
    version,
    about = "Perplexity / KL divergence of a RecurrentGemma GGUF model on a text file"
)]
struct Args {
    /// Model file (GGUF).
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: PathBuf,

    /// Text file to score (not needed with --kl-divergence: the base file holds the tokens).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,

    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx: usize,

    /// Tokens per forward batch (default: the chunk size, at most 512).
    #[arg(short = 'b', long = "batch-size")]
    batch: Option<usize>,

    /// Threads (default: all available cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,

    /// Score at most this many chunks (default: all).
    #[arg(long = "chunks")]
    chunks: Option<usize>,

    /// Without --kl-divergence: write the log-probs of the scored positions to this file.
    /// With it: read them and compare the model with them.
    #[arg(long = "kl-divergence-base", value_name = "FILE")]
    kl_base: Option<PathBuf>,

    /// Compare the model with the log-probs in --kl-divergence-base.
    #[arg(long = "kl-divergence", requires = "kl_base")]
    kl_divergence: bool,
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

    // The chunks: from the base file in KL mode, else from the text.
    let mut reader = None;
    let (n_ctx, tokens) = if args.kl_divergence {
        let path = args.kl_base.as_ref().expect("clap requires it");
        let r = KldReader::open(path).map_err(|e| e.to_string())?;
        if r.header.n_vocab as usize != n_vocab {
            return Err(format!(
                "{}: vocabulary {} differs from the model's {n_vocab}",
                path.display(),
                r.header.n_vocab
            ));
        }
        let n_ctx = r.header.n_ctx as usize;
        if let Some(file) = &args.file {
            let own = chunk_tokens(&model, file, n_ctx, args.chunks)?;
            let n = own.len().min(r.tokens.len());
            if own[..n] != r.tokens[..n] {
                return Err(format!(
                    "{} tokenizes differently from the text behind {}",
                    file.display(),
                    path.display()
                ));
            }
        }
        let mut tokens = r.tokens.clone();
        if let Some(c) = args.chunks {
            tokens.truncate(c.max(1) * n_ctx);
        }
        reader = Some(r);
        (n_ctx, tokens)
    } else {
        let file = args
            .file
            .as_ref()
            .ok_or("a text file is needed (-f FILE)")?;
        (args.ctx, chunk_tokens(&model, file, args.ctx, args.chunks)?)
    };
    let n_chunks = tokens.len() / n_ctx;
    let scored = scored_positions(n_ctx);
    let n_scored = scored.len();

    let batch = args.batch.unwrap_or(n_ctx.min(512));
    if batch == 0 {
        return Err("batch size must be at least 1".into());
    }
    if args.threads == Some(0) {
        return Err("threads must be at least 1".into());
    }
    let params = ContextParams {
        batch_size: batch,
        n_threads: args.threads.unwrap_or(0),
        ..Default::default()
    };
    let mut ctx = Context::new(model.clone(), params).map_err(|e| e.to_string())?;
    eprintln!(
        "perplexity: {n_chunks} chunks of {n_ctx} tokens, scoring {n_scored} per chunk, batch {batch}"
    );

    let mut writer = match (&args.kl_base, args.kl_divergence) {
        (Some(path), false) => {
            let header = KldHeader {
                n_vocab: n_vocab as u32,
                n_ctx: n_ctx as u32,
                n_chunks: n_chunks as u32,
            };
            Some(KldWriter::create(path, header, &tokens).map_err(|e| e.to_string())?)
        }
        _ => None,
    };

    let mut ppl = Perplexity::default();
    let mut kl = KlDivergence::default();
    let mut logp = vec![0f32; n_scored * n_vocab];
    let mut base = if reader.is_some() {
        vec![0f32; n_scored * n_vocab]
    } else {
        Vec::new()
    };
    if args.kl_divergence {
        println!(
            "chunk        PPL          ln(PPL(Q)/PPL(base))    KL divergence          Same top p"
        );
    }
    let t_eval = Instant::now();
    for (ci, chunk) in tokens.chunks_exact(n_ctx).enumerate() {
        ctx.reset();
        ctx.eval(chunk, true).map_err(|e| e.to_string())?;
        let all = ctx.all_logits();
        for (row, pos) in scored.clone().enumerate() {
            log_softmax(
                &all[pos * n_vocab..(pos + 1) * n_vocab],
                &mut logp[row * n_vocab..(row + 1) * n_vocab],
            );
        }
        if let Some(w) = writer.as_mut() {
            w.write_chunk(&logp).map_err(|e| e.to_string())?;
        }
        if let Some(r) = reader.as_mut() {
            r.read_chunk(&mut base).map_err(|e| e.to_string())?;
        }
        for (row, pos) in scored.clone().enumerate() {
            let target = chunk[pos + 1] as usize;
            let q = &logp[row * n_vocab..(row + 1) * n_vocab];
            if args.kl_divergence {
                let b = &base[row * n_vocab..(row + 1) * n_vocab];
                kl.add(b, q, target).map_err(|e| e.to_string())?;
            } else {
                ppl.add(q[target] as f64);
            }
        }
        if args.kl_divergence {
            let s = kl.summary();
            println!(
                "{:5} {:10.4} ± {:8.4}  {:10.5} ± {:8.5}  {:10.6} ± {:8.6}  {:6.3} ± {:5.3} %",
                ci + 1,
                s.ppl_q.0,
                s.ppl_q.1,
                s.mean_ln_ratio.0,
                s.mean_ln_ratio.1,
                s.kld_mean.0,
                s.kld_mean.1,
                s.same_top_pct.0,
                s.same_top_pct.1
            );
        } else {
            print!("[{}]{:.4},", ci + 1, ppl.ppl());
            use std::io::Write;
            std::io::stdout().flush().ok();
        }
        if ci == 0 {
            eprintln!(
                "perplexity: {:.2} s per chunk, about {:.1} s in all",
                t_eval.elapsed().as_secs_f64(),
                t_eval.elapsed().as_secs_f64() * n_chunks as f64
            );
        }
    }
    if let Some(w) = writer {
        w.finish().map_err(|e| e.to_string())?;
    }

    if args.kl_divergence {
        print_kl_summary(&kl);
    } else {
        println!();
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5}",
            ppl.ppl(),
            ppl.ppl_se()
        );
        eprintln!(
            "scored {} tokens in {:.2} s",
            ppl.count(),
            t_eval.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// [`text_chunks`] of a text file.
fn chunk_tokens(
    model: &Model,
    file: &PathBuf,
    n_ctx: usize,
    max_chunks: Option<usize>,
) -> CliResult<Vec<u32>> {
    let text = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let text = String::from_utf8(text)
        .map_err(|_| format!("{}: the text is not valid UTF-8", file.display()))?;
    text_chunks(model, &text, n_ctx, max_chunks).map_err(|e| format!("{}: {e}", file.display()))
}

fn print_kl_summary(kl: &KlDivergence) {
    let s = kl.summary();
    println!();
    println!("====== Perplexity statistics ======");
    println!(
        "Mean PPL(Q)                   : {:10.6} ± {:10.6}",
        s.ppl_q.0, s.ppl_q.1
    );
    println!(
        "Mean PPL(base)                : {:10.6} ± {:10.6}",
        s.ppl_base.0, s.ppl_base.1
    );
    println!("Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%", 100.0 * s.cor_nll);
    println!(
        "Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}",
        s.mean_ln_ratio.0, s.mean_ln_ratio.1
    );
    println!(
        "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}",
        s.ppl_ratio.0, s.ppl_ratio.1
    );
    println!("Mean PPL(Q)-PPL(base)         : {:10.6}", s.ppl_diff);
    println!();
    println!("====== KL divergence statistics ======");
    println!("Mean    KLD: {:12.9} ± {:12.9}", s.kld_mean.0, s.kld_mean.1);
    println!("Maximum KLD: {:12.9}", s.kld_max);
    println!("99.9%   KLD: {:12.9}", s.kld_p999);
    println!("99.0%   KLD: {:12.9}", s.kld_p99);
    println!("Median  KLD: {:12.9}", s.kld_median);
    println!("Minimum KLD: {:12.9}", s.kld_min);
    println!();
    println!("====== Token probability statistics ======");
    println!(
        "Mean    Δp: {:8.4} ± {:7.4} %",
        100.0 * s.delta_p_mean.0,
        100.0 * s.delta_p_mean.1
    );
    println!("RMS     Δp: {:8.4} %", 100.0 * s.delta_p_rms);
    println!(
        "Same top p: {:8.4} ± {:7.4} %",
        s.same_top_pct.0, s.same_top_pct.1
    );
    println!("Scored tokens: {}", s.n_tokens);
}
