//! `rg-bench`: llama-bench-style speed measurements for RecurrentGemma GGUF models.
//!
//! ```text
//! rg-bench -m model.gguf [-m other.gguf] [-p 512] [-n 128] [-t 2] [-r 5] [-o md|json]
//!          [-d 0,128,16384] [--membw] [--kernels]
//! ```
//!
//! Tests per model and thread count: `pp{p}` (one prompt of p random tokens from a fresh
//! state, t/s = p / time) and `tg{n}` (n single-token evals, t/s = n / time), the latter at
//! each requested depth (`tg128 @ d16384`: the context first ingests D tokens with batched
//! prefill, untimed). Each test runs once untimed as warm-up, then `-r` times; the table
//! shows mean ± sample standard deviation.
//!
//! For tg the table adds the effective weight bandwidth: the bytes of weights one decode
//! step reads (every tensor in the file: the tied embedding is read in full as the output
//! head) × t/s. `--membw` first measures the streaming read bandwidth of this machine (1 and
//! N threads over a buffer much larger than the caches) and then shows tg as a fraction of
//! it. The bandwidth of these shared virtual machines drifts by ±20 % within minutes, so
//! with `--membw` every timed tg repetition is also bracketed by bandwidth probes (same
//! threads, a fresh 512 MiB buffer, freed before the repetition) and tg is related to the
//! mean of its own probes. VmRSS is read after the probe buffer is freed; VmHWM includes
//! it. `--kernels` measures the dot-product kernels alone on synthetic weights.
//!
//! Everything except the result table/JSON goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use rgemma::model::{Context, ContextParams, Model};
use rgemma::process_memory;
use rgemma_quant::dot::{self, Backend};
use rgemma_quant::packed;
use rgemma_quant::GgmlType;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Md,
    Json,
}

#[derive(Parser, Debug)]
#[command(
    name = "rg-bench",
    version,
    about = "Measure prompt and generation speed"
)]
struct Args {
    /// Model file(s) (GGUF); repeat -m for several.
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    models: Vec<PathBuf>,
    /// Prompt length(s) for pp tests (comma-separated; 0 = none).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generated tokens for tg tests (comma-separated; 0 = none).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Thread count(s) (comma-separated).
    #[arg(
        short = 't',
        long = "threads",
        value_delimiter = ',',
        default_value = "2"
    )]
    threads: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    reps: usize,
    /// Context depth(s) before the tg tests (comma-separated).
    #[arg(
        short = 'd',
        long = "depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    depth: Vec<usize>,
    /// Batch size for prompt processing and depth prefill.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch: usize,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "md")]
    output: OutputFormat,
    /// Measure streaming read bandwidth first and relate tg to it.
    #[arg(long)]
    membw: bool,
    /// Buffer size for --membw in MiB.
    #[arg(long, default_value_t = 2048)]
    membw_mib: usize,
    /// Measure the dot-product kernels on synthetic weights (1 token and 4-token tiles).
    #[arg(long)]
    kernels: bool,
    /// Random seed for the token ids.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
}

/// One result row.
struct Record {
    model: String,
    model_type: String,
    model_size: u64,
    n_params: u64,
    threads: usize,
    n_prompt: usize,
    n_gen: usize,
    depth: usize,
    samples_ts: Vec<f64>,
    samples_ns: Vec<u64>,
    /// Effective weight bandwidth (tg only), GB/s.
    weight_gbps: Option<f64>,
    /// Peak resident set (VmHWM) after the test, KiB.
    vm_hwm_kib: Option<u64>,
    /// Resident set (VmRSS) right after the test, KiB: flat across depths when the
    /// state does not grow with context.
    vm_rss_kib: Option<u64>,
    /// Mean read bandwidth of the probes run next to this test's repetitions, GB/s.
    probe_gbps: Option<f64>,
}

impl Record {
    fn test_name(&self) -> String {
        let base = if self.n_gen == 0 {
            format!("pp{}", self.n_prompt)
        } else {
            format!("tg{}", self.n_gen)
        };
        if self.depth > 0 {
            format!("{base} @ d{}", self.depth)
        } else {
            base
        }
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// xorshift64* token ids in `1..n_vocab` (id 0 is padding in Gemma vocabularies).
struct TokenRng(u64);
impl TokenRng {
    fn next(&mut self, n_vocab: usize) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (1 + (r >> 33) as usize % (n_vocab - 1).max(1)) as u32
    }
    fn tokens(&mut self, n: usize, n_vocab: usize) -> Vec<u32> {
        (0..n).map(|_| self.next(n_vocab)).collect()
    }
}

fn ftype_name(ft: u32) -> &'static str {
    match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => "?",
    }
}

fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2}B", n as f64 / 1e9)
    } else {
        format!("{:.0}M", n as f64 / 1e6)
    }
}

// ------------------------------------------------------------------ memory bandwidth

/// Streaming read bandwidth in GB/s (best and mean of `reps`) with `threads` threads, each
/// reading its own contiguous part of `buf`.
fn read_bandwidth(buf: &[u8], threads: usize, reps: usize) -> (f64, f64) {
    let part = buf.len().div_ceil(threads);
    let mut samples = Vec::new();
    let mut sink = 0u64;
    for _ in 0..reps + 1 {
        let start = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(part)
                .map(|chunk| s.spawn(move || dot::membw::read_checksum(chunk)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        let secs = start.elapsed().as_secs_f64();
        sink = sums.iter().fold(sink, |a, &b| a.wrapping_add(b));
        samples.push(buf.len() as f64 / secs / 1e9);
    }
    std::hint::black_box(sink);
    samples.remove(0); // warm-up
    let best = samples.iter().cloned().fold(0.0, f64::max);
    (best, mean_std(&samples).0)
}

/// Best of 3 passes over a fresh 512 MiB buffer with `threads` threads, GB/s; the buffer is
/// freed before returning (glibc gives such large blocks back to the OS at once).
fn probe_bandwidth(threads: usize) -> f64 {
    let mut buf = vec![0u8; 512 << 20];
    for (i, b) in buf.iter_mut().enumerate().step_by(4096) {
        *b = i as u8;
    }
    let (best, _) = read_bandwidth(&buf, threads, 3);
    best
}

fn membw(mib: usize, threads: &[usize], reps: usize) -> Vec<(usize, f64, f64)> {
    let mut buf = vec![0u8; mib << 20];
    // Touch every page (and make the content non-trivial) before timing.
    for (i, b) in buf.iter_mut().enumerate().step_by(64) {
        *b = i as u8;
    }
    let mut counts: Vec<usize> = vec![1];
    counts.extend(threads.iter().copied().filter(|&t| t != 1));
    counts
        .into_iter()
        .map(|t| {
            let (best, mean) = read_bandwidth(&buf, t, reps);
            eprintln!(
                "membw: {t} thread(s): best {best:.2} GB/s, mean {mean:.2} GB/s over {mib} MiB"
            );
            (t, best, mean)
        })
        .collect()
}

// ------------------------------------------------------------------ kernel benchmark

/// Weight rows per `gemm` call in the kernel benchmark (as the engine's prompt tasks).
const KERNEL_ROWS: usize = 8;

/// GB/s of weight bytes for `gemm` over ~`mib` MiB of synthetic rows of width 2560, with
/// `ncols` activation rows, split over `threads` threads by row chunks.
fn kernel_bench(ty: GgmlType, mib: usize, threads: usize, ncols: usize, reps: usize) -> f64 {
    let n = 2560usize;
    let row_bytes = ty.row_size(n as u64).expect("2560 is block aligned") as usize;
    let rows = (mib << 20) / row_bytes;
    // One quantized random row replicated (quantizing a GiB with the reference would be slow).
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut row = vec![0u8; row_bytes];
    rgemma_quant::quantize_row(ty, &x, &mut row).expect("quantize");
    let mut w = vec![0u8; rows * row_bytes];
    for r in w.chunks_exact_mut(row_bytes) {
        r.copy_from_slice(&row);
    }
    let act_ty = dot::activation_type(ty).expect("kernel");
    let act_row = dot::activation_row_bytes(ty, n).expect("aligned");
    let xs: Vec<f32> = (0..ncols * n)
        .map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0)
        .collect();
    let mut act = vec![0u8; ncols * act_row];
    dot::quantize_activation(Backend::detect(), act_ty, &xs, &mut act).expect("act");
    let per = rows.div_ceil(threads);
    let mut best = 0.0f64;
    for _ in 0..reps + 1 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for (ti, chunk) in w.chunks(per * row_bytes).enumerate() {
                let act = &act;
                s.spawn(move || {
                    let nr = chunk.len() / row_bytes;
                    let mut out = vec![0.0f32; ncols * nr];
                    for r0 in (0..nr).step_by(KERNEL_ROWS) {
                        let rr = (nr - r0).min(KERNEL_ROWS);
                        dot::gemm(
                            Backend::detect(),
                            ty,
                            n,
                            &chunk[r0 * row_bytes..],
                            row_bytes,
                            rr,
                            act,
                            act_row,
                            ncols,
                            &mut out[r0..],
                            nr,
                        )
                        .expect("gemm");
                    }
                    std::hint::black_box((ti, out));
                });
            }
        });
        best = best.max(w.len() as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

// ------------------------------------------------------------------ model tests

fn run_model(args: &Args, path: &PathBuf, records: &mut Vec<Record>) -> Result<(), String> {
    let t_load = Instant::now();
    let model = Model::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let packed = model
        .weights()
        .clone()
        .matrices_mut()
        .iter()
        .filter(|m| m.packed.is_some())
        .count();
    eprintln!(
        "rg-bench: loaded {} in {:.2} s ({packed} matrices repacked for the {} kernels)",
        path.display(),
        t_load.elapsed().as_secs_f64(),
        Backend::detect().name()
    );
    let model = Arc::new(model);
    let gguf = model.gguf();
    let model_size: u64 = gguf.tensors().iter().map(|t| t.size).sum();
    let n_params: u64 = gguf.tensors().iter().map(|t| t.n_elements()).sum();
    let ftype = gguf
        .get_u32("general.file_type")
        .map(ftype_name)
        .unwrap_or("?");
    let model_type = format!("recurrentgemma {} {ftype}", human_params(n_params));
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    let n_vocab = model.n_vocab();
    let mut rng = TokenRng(args.seed.max(1));
    for &threads in &args.threads {
        let params = ContextParams {
            batch_size: args.batch,
            n_threads: threads,
            ..Default::default()
        };
        let mut ctx = Context::new(model.clone(), params).map_err(|e| e.to_string())?;
        let mut record =
            |n_prompt: usize, n_gen: usize, depth: usize, samples_ns: Vec<u64>, probes: &[f64]| {
                let tokens = if n_gen > 0 { n_gen } else { n_prompt } as f64;
                let samples_ts: Vec<f64> = samples_ns
                    .iter()
                    .map(|&ns| tokens * 1e9 / ns as f64)
                    .collect();
                let weight_gbps =
                    (n_gen > 0).then(|| mean_std(&samples_ts).0 * model_size as f64 / 1e9);
                let r = Record {
                    model: name.clone(),
                    model_type: model_type.clone(),
                    model_size,
                    n_params,
                    threads,
                    n_prompt,
                    n_gen,
                    depth,
                    samples_ts,
                    samples_ns,
                    weight_gbps,
                    vm_hwm_kib: process_memory::status_kib("VmHWM"),
                    vm_rss_kib: process_memory::status_kib("VmRSS"),
                    probe_gbps: (!probes.is_empty()).then(|| mean_std(probes).0),
                };
                let (m, s) = mean_std(&r.samples_ts);
                eprintln!(
                    "{} {} t={threads}: {m:.2} ± {s:.2} t/s",
                    r.model,
                    r.test_name()
                );
                records.push(r);
            };
        for &p in args.n_prompt.iter().filter(|&&p| p > 0) {
            let mut samples = Vec::new();
            for rep in 0..args.reps + 1 {
                let tokens = rng.tokens(p, n_vocab);
                ctx.reset();
                let start = Instant::now();
                ctx.eval(&tokens, false).map_err(|e| e.to_string())?;
                let ns = start.elapsed().as_nanos() as u64;
                if rep > 0 {
                    samples.push(ns);
                }
            }
            record(p, 0, 0, samples, &[]);
        }
        for &n in args.n_gen.iter().filter(|&&n| n > 0) {
            for &depth in &args.depth {
                let mut samples = Vec::new();
                let mut probes = Vec::new();
                // With a depth, the untimed prefill already warms everything up.
                let warmup = usize::from(depth == 0);
                for rep in 1 - warmup..args.reps + 1 {
                    ctx.reset();
                    if depth > 0 {
                        let prefix = rng.tokens(depth, n_vocab);
                        let start = Instant::now();
                        ctx.eval(&prefix, false).map_err(|e| e.to_string())?;
                        let secs = start.elapsed().as_secs_f64();
                        eprintln!("depth {depth}: prefill {:.2} t/s", depth as f64 / secs);
                    }
                    let gen = rng.tokens(n, n_vocab);
                    if args.membw && rep > 0 {
                        probes.push(probe_bandwidth(threads));
                    }
                    let start = Instant::now();
                    for &t in &gen {
                        ctx.eval(&[t], false).map_err(|e| e.to_string())?;
                    }
                    let ns = start.elapsed().as_nanos() as u64;
                    if rep > 0 {
                        samples.push(ns);
                        if args.membw {
                            probes.push(probe_bandwidth(threads));
                            let k = probes.len();
                            let gbps = n as f64 * 1e9 / ns as f64 * model_size as f64 / 1e9;
                            eprintln!(
                                "tg{n} rep {rep}: {gbps:.2} GB/s of weights between probes \
                                 of {:.2} and {:.2} GB/s ({:.0} %)",
                                probes[k - 2],
                                probes[k - 1],
                                200.0 * gbps / (probes[k - 2] + probes[k - 1])
                            );
                        }
                    }
                }
                record(0, n, depth, samples, &probes);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.models.is_empty() && !args.membw && !args.kernels {
        eprintln!("error: nothing to do (give -m FILE, --membw or --kernels)");
        return ExitCode::from(2);
    }
    if args.reps == 0 || args.threads.contains(&0) || args.batch == 0 {
        eprintln!("error: -r, -t and -b must be at least 1");
        return ExitCode::from(2);
    }
    eprintln!(
        "rg-bench: kernels {} (CPU extensions: {})",
        Backend::detect().name(),
        dot::cpu_extensions().join(" ")
    );
    if let Ok(s) = std::fs::read_to_string("/proc/loadavg") {
        eprintln!("rg-bench: load average at start: {}", s.trim());
    }
    let bw = if args.membw {
        membw(args.membw_mib, &args.threads, args.reps)
    } else {
        Vec::new()
    };
    if args.kernels {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q6K,
            GgmlType::F16,
        ] {
            for &t in &args.threads {
                for ncols in [1usize, 4] {
                    let gbps = kernel_bench(ty, 1024, t, ncols, args.reps.min(3));
                    eprintln!(
                        "kernels: {ty} x {ncols} token(s), {t} thread(s): {gbps:.2} GB/s of weights ({:.1} Gop/s)",
                        gbps * 1e9 / ty.type_size() as f64 * ty.block_size() as f64 * ncols as f64 * 2.0 / 1e9
                    );
                }
                if packed::supports(ty) {
                    // Decode: 1 GiB of packed rows of 2560, one token.
                    let rows = (1usize << 30) / ty.row_size(2560).expect("aligned") as usize;
                    let (gbps, _) =
                        packed::bench::bench_gemm(ty, 2560, rows, 1, t, args.reps.min(3));
                    eprintln!(
                        "kernels: packed {ty} x 1 token, {t} thread(s): {gbps:.2} GB/s of weights"
                    );
                    // Prompt: the shape of llama.cpp's `test-backend-ops perf -o MUL_MAT`
                    // case m=4096, n=512, k=14336, for a like-for-like comparison.
                    let (_, gops) =
                        packed::bench::bench_gemm(ty, 14336, 4096, 512, t, args.reps.min(2));
                    eprintln!(
                        "kernels: packed {ty} m=4096 k=14336 x 512 tokens, {t} thread(s): {gops:.1} Gop/s"
                    );
                }
            }
        }
    }
    let mut records = Vec::new();
    for path in &args.models {
        if let Err(e) = run_model(&args, path, &mut records) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Ok(s) = std::fs::read_to_string("/proc/loadavg") {
        eprintln!("rg-bench: load average at end: {}", s.trim());
    }
    let ceiling = |threads: usize| bw.iter().find(|b| b.0 == threads).map(|b| b.1);
    match args.output {
        OutputFormat::Md => {
            if !bw.is_empty() {
                println!("| memory read bandwidth | threads | best GB/s | mean GB/s |");
                println!("| --- | ---: | ---: | ---: |");
                for (t, best, mean) in &bw {
                    println!(
                        "| {} MiB stream | {t} | {best:.2} | {mean:.2} |",
                        args.membw_mib
                    );
                }
                println!();
            }
            if records.is_empty() {
                return ExitCode::SUCCESS;
            }
            println!("| model | size | params | type | threads | test | t/s | weight GB/s | membw GB/s | of membw | VmRSS | VmHWM |");
            println!("| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
            for r in &records {
                let (m, s) = mean_std(&r.samples_ts);
                let gb = r.weight_gbps.map_or(String::new(), |g| format!("{g:.2}"));
                let bw = r.probe_gbps.or(ceiling(r.threads));
                let frac = match (r.weight_gbps, bw) {
                    (Some(g), Some(c)) => format!("{:.0} %", 100.0 * g / c),
                    _ => String::new(),
                };
                let bw = match (r.weight_gbps, bw) {
                    (Some(_), Some(c)) => format!("{c:.2}"),
                    _ => String::new(),
                };
                let mib = |k: Option<u64>| {
                    k.map_or(String::new(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
                };
                let (rss, hwm) = (mib(r.vm_rss_kib), mib(r.vm_hwm_kib));
                println!(
                    "| {} | {:.2} GiB | {} | {} | {} | {} | {m:.2} ± {s:.2} | {gb} | {bw} | {frac} | {rss} | {hwm} |",
                    r.model,
                    r.model_size as f64 / (1u64 << 30) as f64,
                    human_params(r.n_params),
                    r.model_type,
                    r.threads,
                    r.test_name()
                );
            }
        }
        OutputFormat::Json => {
            let mut arr: Vec<serde_json::Value> = Vec::new();
            for r in &records {
                let (m, s) = mean_std(&r.samples_ts);
                let ns: Vec<f64> = r.samples_ns.iter().map(|&v| v as f64).collect();
                let (mns, sns) = mean_std(&ns);
                arr.push(json!({
                    "model_filename": r.model,
                    "model_type": r.model_type,
                    "model_size": r.model_size,
                    "model_n_params": r.n_params,
                    "backends": format!("CPU ({})", Backend::detect().name()),
                    "n_threads": r.threads,
                    "n_batch": args.batch,
                    "n_prompt": r.n_prompt,
                    "n_gen": r.n_gen,
                    "n_depth": r.depth,
                    "avg_ns": mns as u64,
                    "stddev_ns": sns as u64,
                    "avg_ts": m,
                    "stddev_ts": s,
                    "samples_ns": r.samples_ns,
                    "samples_ts": r.samples_ts,
                    "weight_gbps": r.weight_gbps,
                    "membw_gbps": ceiling(r.threads),
                    "probe_membw_gbps": r.probe_gbps,
                    "vm_hwm_kib": r.vm_hwm_kib,
                    "vm_rss_kib": r.vm_rss_kib,
                }));
            }
            println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
        }
    }
    ExitCode::SUCCESS
}
