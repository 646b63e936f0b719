//! `rg-batched-bench`: llama-batched-bench-style throughput of many sequences decoded together.
//!
//! ```text
//! rg-batched-bench -m model.gguf -npp 128,2048 -ntg 128 -npl 1,2,4,8,16,32,64
//!                  [-t N] [-b 512] [-pps] [--cache-type-k f32|f16] [-o md|json|jsonl]
//! ```
//!
//! For each (PP, TG, B) in that nesting order, in one [`BatchContext`] with `max(B)` sequence
//! slots (allocated once; the slots a run uses are cleared before it, untimed):
//!
//! - PP: B prompts of PP pseudo-random token ids (a different prompt per sequence) are
//!   prefilled in batches of at most `-b` rows, rows of several sequences sharing a batch;
//!   only the last row of each prompt asks for logits. With `-pps` (prompt shared) one prompt
//!   is prefilled in sequence 0 and then forked (`seq_copy`) into sequences 1..B; the forks
//!   are part of T_PP, as in llama.cpp.
//! - TG: TG steps, each decoding one token per sequence (B rows, split into batches of `-b`
//!   rows when B is larger), the token taken greedily from that sequence's logits.
//!
//! The columns are llama-batched-bench's: N_KV = B*(PP+TG), or PP + B*TG with `-pps` (the
//! tokens held across all sequences; here the state has a fixed size whatever N_KV);
//! S_PP = prefilled tokens / T_PP (B*PP, or PP with `-pps`); S_TG = B*TG / T_TG;
//! T = T_PP + T_TG; S = N_KV / T. Two columns are added: the state of one sequence and the
//! process's peak resident memory (VmHWM, a high-water mark since start, model included)
//! read after the run.
//!
//! `-o json` prints a JSON array of one object per run, `-o jsonl` one object per line
//! (llama-batched-bench's `--output-format jsonl`); both use llama.cpp's field names for the
//! shared fields, so `scripts/plot-batched-bench.py` plots either. Everything except the
//! results goes to stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use rgemma::convert::FileType;
use rgemma::model::{
    state_bytes_per_sequence, BatchContext, BatchRow, ContextParams, KvType, Model,
};
use rgemma::process_memory;
use rgemma_quant::dot::Backend;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Md,
    Json,
    Jsonl,
}

#[derive(Parser, Debug)]
#[command(
    name = "rg-batched-bench",
    version,
    about = "Measure prompt and generation throughput of many sequences decoded together",
    after_help = "As in llama-batched-bench, -npp, -ntg, -npl, -pps and -ctk may be written \
                  with one dash."
)]
struct Args {
    /// Model file (GGUF).
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: PathBuf,
    /// Prompt length(s) per sequence, PP (comma-separated).
    #[arg(long = "npp", value_delimiter = ',', default_value = "128,256,512")]
    npp: Vec<usize>,
    /// Tokens generated per sequence, TG (comma-separated).
    #[arg(long = "ntg", value_delimiter = ',', default_value = "128,256")]
    ntg: Vec<usize>,
    /// Numbers of parallel sequences, B (comma-separated).
    #[arg(long = "npl", value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    npl: Vec<usize>,
    /// Threads (default: all available cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Most rows per decode call (prompt chunks; generation steps of more sequences split).
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch: usize,
    /// Prompt shared: prefill one prompt and fork it into every sequence.
    #[arg(long = "pps")]
    pps: bool,
    /// Element type of the attention K/V rings: f32 (exact) or f16.
    #[arg(long = "cache-type-k", value_name = "TYPE", default_value = "f32")]
    cache_type_k: String,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        alias = "output-format",
        value_enum,
        default_value = "md"
    )]
    output: OutputFormat,
    /// Random seed for the prompt token ids.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Also write the runs as JSON lines to FILE (whatever `-o` prints), e.g. for
    /// scripts/plot-batched-bench.py next to a markdown report.
    #[arg(long = "jsonl-out", value_name = "FILE")]
    jsonl_out: Option<PathBuf>,
}

/// llama-batched-bench spells these flags with one dash; clap would read `-npp` as `-n -p -p`.
fn llama_spelling(arg: std::ffi::OsString) -> std::ffi::OsString {
    match arg.to_str() {
        Some("-npp") => "--npp".into(),
        Some("-ntg") => "--ntg".into(),
        Some("-npl") => "--npl".into(),
        Some("-pps") => "--pps".into(),
        Some("-ctk") => "--cache-type-k".into(),
        _ => arg,
    }
}

/// Positions enter RoPE as f32, which holds consecutive integers exactly only up to 2^24:
/// a sequence longer than that would see repeated positions.
const MAX_SEQ_TOKENS: usize = 1 << 24;

/// Checks the flags before the model is loaded, so that a typo costs nothing.
fn validate(args: &Args) -> Result<(), String> {
    for (flag, list) in [
        ("-npp", &args.npp),
        ("-ntg", &args.ntg),
        ("-npl", &args.npl),
    ] {
        if list.is_empty() {
            return Err(format!("{flag}: empty list"));
        }
        if list.contains(&0) {
            return Err(format!(
                "{flag}: every value must be at least 1, got {list:?}"
            ));
        }
    }
    if args.batch == 0 {
        return Err("-b must be at least 1".into());
    }
    if args.threads == Some(0) {
        return Err("-t must be at least 1".into());
    }
    KvType::parse(&args.cache_type_k).map_err(|e| format!("--cache-type-k: {e}"))?;
    let longest = max_of(&args.npp).saturating_add(max_of(&args.ntg));
    if longest > MAX_SEQ_TOKENS {
        return Err(format!(
            "-npp + -ntg = {longest} tokens per sequence: at most {MAX_SEQ_TOKENS} \
             (positions beyond 2^24 are not distinct in the f32 rotary angles)"
        ));
    }
    if !args.model.is_file() {
        return Err(format!("{}: no such file", args.model.display()));
    }
    Ok(())
}

fn max_of(v: &[usize]) -> usize {
    v.iter().copied().max().unwrap_or(0)
}

/// The CPU's marketing name: /proc/cpuinfo's `model name` on Linux (x86), `sysctl
/// machdep.cpu.brand_string` on macOS ("Apple M2"), else `unknown`.
fn cpu_name() -> String {
    let linux = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let macos = || {
        let out = std::process::Command::new("sysctl")
            .args(["-n", "machdep.cpu.brand_string"])
            .output()
            .ok()?;
        let name = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !name.is_empty()).then_some(name)
    };
    linux
        .or_else(|| cfg!(target_os = "macos").then(macos).flatten())
        .unwrap_or_else(|| "unknown".into())
}

const MIB: f64 = (1u64 << 20) as f64;

/// splitmix64: token ids for the prompts, the same for a given seed on every machine.
struct TokenIds(u64);

impl TokenIds {
    fn next(&mut self, n_vocab: usize) -> u32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 32 bits times n_vocab, shifted: uniform enough and never >= n_vocab.
        (((z >> 32) * n_vocab as u64) >> 32) as u32
    }
}

/// Index of the largest logit (the first one on ties).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// What is fixed for the whole invocation.
struct Setup {
    model_file: String,
    model_size: u64,
    model_type: String,
    cpu: String,
    backend: &'static str,
    threads: usize,
    batch: usize,
    pps: bool,
    kv_type: KvType,
    state_bytes_per_seq: usize,
}

/// One (PP, TG, B) measurement.
struct Run {
    pp: usize,
    tg: usize,
    pl: usize,
    t_pp: f64,
    t_tg: f64,
    vm_hwm_kib: Option<u64>,
}

/// The derived columns, as llama-batched-bench computes them.
struct Speeds {
    n_kv: usize,
    speed_pp: f64,
    speed_tg: f64,
    t: f64,
    speed: f64,
}

impl Run {
    fn speeds(&self, pps: bool) -> Speeds {
        let (n_kv, prefilled) = if pps {
            (self.pp + self.pl * self.tg, self.pp)
        } else {
            (self.pl * (self.pp + self.tg), self.pl * self.pp)
        };
        let t = self.t_pp + self.t_tg;
        Speeds {
            n_kv,
            speed_pp: prefilled as f64 / self.t_pp,
            speed_tg: (self.pl * self.tg) as f64 / self.t_tg,
            t,
            speed: n_kv as f64 / t,
        }
    }
}

/// Runs the prefill and generation of one measurement in sequences `0..npl` of `ctx`.
/// `rows` is reused across calls (capacity `-b`), so the timed loops do not allocate.
fn measure(
    ctx: &mut BatchContext,
    rows: &mut Vec<BatchRow>,
    ids: &mut TokenIds,
    (pp, tg, npl): (usize, usize, usize),
    pps: bool,
) -> rgemma::Result<(f64, f64)> {
    for seq in 0..npl {
        ctx.seq_clear(seq)?;
    }
    let n_vocab = ctx.model().n_vocab();
    let batch = ctx.batch_capacity();
    let prompts = if pps { 1 } else { npl };

    let start = Instant::now();
    // Sequence-major rows cut into batches of `batch`: a batch holds the end of one prompt
    // and the start of the next when they do not line up.
    rows.clear();
    for seq in 0..prompts {
        for i in 0..pp {
            rows.push(BatchRow {
                token: ids.next(n_vocab),
                seq,
                logits: i + 1 == pp,
            });
            if rows.len() == batch {
                ctx.decode(rows)?;
                rows.clear();
            }
        }
    }
    if !rows.is_empty() {
        ctx.decode(rows)?;
    }
    if pps {
        for seq in 1..npl {
            ctx.seq_copy(0, seq)?;
        }
    }
    let t_pp = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for _ in 0..tg {
        for first in (0..npl).step_by(batch) {
            rows.clear();
            for seq in first..(first + batch).min(npl) {
                let logits = ctx.seq_logits(seq).ok_or_else(|| {
                    rgemma::Error::InvalidArgument(format!("sequence {seq} has no logits"))
                })?;
                rows.push(BatchRow {
                    token: argmax(logits),
                    seq,
                    logits: true,
                });
            }
            ctx.decode(rows)?;
        }
    }
    let t_tg = start.elapsed().as_secs_f64();
    Ok((t_pp, t_tg))
}

fn run(args: &Args) -> Result<(Setup, Vec<Run>), String> {
    let kv_type = KvType::parse(&args.cache_type_k).map_err(|e| format!("--cache-type-k: {e}"))?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    let t_load = Instant::now();
    let path = &args.model;
    let model = Model::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "rg-batched-bench: loaded {} in {:.2} s",
        path.display(),
        t_load.elapsed().as_secs_f64()
    );
    let model = Arc::new(model);
    let gguf = model.gguf();
    let n_params: u64 = gguf.tensors().iter().map(|t| t.n_elements()).sum();
    let ftype = gguf
        .get_u32("general.file_type")
        .ok()
        .and_then(FileType::from_ftype_id)
        .map_or("?", FileType::name);
    let state_bytes_per_seq = state_bytes_per_sequence(model.hparams(), kv_type);
    let setup = Setup {
        model_file: file_name(path),
        model_size: gguf.file_size(),
        model_type: format!("recurrentgemma {} {ftype}", human_params(n_params)),
        cpu: cpu_name(),
        backend: Backend::detect().name(),
        threads,
        batch: args.batch,
        pps: args.pps,
        kv_type,
        state_bytes_per_seq,
    };

    // Every slot is cleared (written) by the run that first uses it; refuse up front rather
    // than be killed half-way for want of memory.
    let n_seq_max = max_of(&args.npl);
    let state_total = (n_seq_max as u64).saturating_mul(state_bytes_per_seq as u64);
    if let Some(avail_kib) = process_memory::meminfo_kib("MemAvailable") {
        if state_total > avail_kib.saturating_mul(1024) {
            return Err(format!(
                "-npl {n_seq_max} needs {:.1} MiB of sequence state ({:.2} MiB each), \
                 only {:.1} MiB of memory is available",
                state_total as f64 / MIB,
                state_bytes_per_seq as f64 / MIB,
                avail_kib as f64 / 1024.0
            ));
        }
    }
    let params = ContextParams {
        batch_size: args.batch,
        n_threads: threads,
        n_seq_max,
        kv_type,
    };
    let mut ctx = BatchContext::new(model.clone(), params).map_err(|e| e.to_string())?;
    let mut rows = Vec::with_capacity(args.batch);
    let mut ids = TokenIds(args.seed);

    // Warm-up (untimed): thread pool, page cache and scratch buffers, through both the
    // prompt path (several rows) and the one-row path.
    let warm = args.batch.min(16);
    rows.extend((0..warm).map(|i| BatchRow {
        token: ids.next(model.n_vocab()),
        seq: 0,
        logits: i + 1 == warm,
    }));
    ctx.decode(&rows).map_err(|e| format!("warm-up: {e}"))?;
    ctx.decode(&rows[..1])
        .map_err(|e| format!("warm-up: {e}"))?;

    let mut runs = Vec::new();
    for &pp in &args.npp {
        for &tg in &args.ntg {
            for &pl in &args.npl {
                let (t_pp, t_tg) = measure(&mut ctx, &mut rows, &mut ids, (pp, tg, pl), args.pps)
                    .map_err(|e| format!("PP {pp}, TG {tg}, B {pl}: {e}"))?;
                let r = Run {
                    pp,
                    tg,
                    pl,
                    t_pp,
                    t_tg,
                    vm_hwm_kib: process_memory::status_kib("VmHWM"),
                };
                let s = r.speeds(args.pps);
                eprintln!(
                    "PP {pp} TG {tg} B {pl}: S_PP {:.2} t/s, S_TG {:.2} t/s",
                    s.speed_pp, s.speed_tg
                );
                runs.push(r);
            }
        }
    }
    Ok((setup, runs))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2}B", n as f64 / 1e9)
    } else {
        format!("{:.0}M", n as f64 / 1e6)
    }
}

fn mib_of_kib(k: Option<u64>) -> Option<f64> {
    k.map(|k| k as f64 / 1024.0)
}

fn print_md(setup: &Setup, runs: &[Run]) {
    println!(
        "model: {} ({:.2} MiB, {}), CPU: {} ({} kernels), threads: {}, n_batch: {}, \
         is_pp_shared: {}, KV: {}, state per sequence: {} bytes ({:.2} MiB); \
         peak RSS is the process's high-water mark (VmHWM, model included) after each run",
        setup.model_file,
        setup.model_size as f64 / MIB,
        setup.model_type,
        setup.cpu,
        setup.backend,
        setup.threads,
        setup.batch,
        u8::from(setup.pps),
        setup.kv_type.name(),
        setup.state_bytes_per_seq,
        setup.state_bytes_per_seq as f64 / MIB
    );
    println!();
    println!(
        "| {:>5} | {:>6} | {:>4} | {:>6} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8} | {:>13} | {:>12} |",
        "PP",
        "TG",
        "B",
        "N_KV",
        "T_PP s",
        "S_PP t/s",
        "T_TG s",
        "S_TG t/s",
        "T s",
        "S t/s",
        "state/seq MiB",
        "peak RSS MiB"
    );
    let widths = [5, 6, 4, 6, 8, 8, 8, 8, 8, 8, 13, 12];
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    println!("|{}|", rule.join("|"));
    for r in runs {
        let s = r.speeds(setup.pps);
        let hwm = mib_of_kib(r.vm_hwm_kib).map_or(String::new(), |m| format!("{m:.1}"));
        println!(
            "| {:>5} | {:>6} | {:>4} | {:>6} | {:>8.3} | {:>8.2} | {:>8.3} | {:>8.2} | {:>8.3} | {:>8.2} | {:>13.2} | {:>12} |",
            r.pp,
            r.tg,
            r.pl,
            s.n_kv,
            r.t_pp,
            s.speed_pp,
            r.t_tg,
            s.speed_tg,
            s.t,
            s.speed,
            setup.state_bytes_per_seq as f64 / MIB,
            hwm
        );
    }
}

fn to_json(setup: &Setup, r: &Run) -> serde_json::Value {
    let s = r.speeds(setup.pps);
    json!({
        "model_filename": setup.model_file,
        "model_type": setup.model_type,
        "model_size": setup.model_size,
        "cpu": setup.cpu,
        "backends": format!("CPU ({})", setup.backend),
        "n_batch": setup.batch,
        "is_pp_shared": u8::from(setup.pps),
        "n_gpu_layers": 0,
        "n_threads": setup.threads,
        "kv_type": setup.kv_type.name(),
        "state_bytes_per_seq": setup.state_bytes_per_seq,
        "pp": r.pp,
        "tg": r.tg,
        "pl": r.pl,
        "n_kv": s.n_kv,
        "t_pp": r.t_pp,
        "speed_pp": s.speed_pp,
        "t_tg": r.t_tg,
        "speed_tg": s.speed_tg,
        "t": s.t,
        "speed": s.speed,
        "vm_hwm_kib": r.vm_hwm_kib,
        "peak_rss_mib": mib_of_kib(r.vm_hwm_kib),
    })
}

fn main() -> ExitCode {
    let args = Args::parse_from(std::env::args_os().map(llama_spelling));
    if let Err(e) = validate(&args) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let (setup, runs) = match run(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.jsonl_out {
        let lines: String = runs
            .iter()
            .map(|r| format!("{}\n", to_json(&setup, r)))
            .collect();
        if let Err(e) = std::fs::write(path, lines) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    match args.output {
        OutputFormat::Md => print_md(&setup, &runs),
        OutputFormat::Json => {
            let arr: Vec<serde_json::Value> = runs.iter().map(|r| to_json(&setup, r)).collect();
            println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
        }
        OutputFormat::Jsonl => {
            for r in &runs {
                println!("{}", to_json(&setup, r));
            }
        }
    }
    ExitCode::SUCCESS
}
