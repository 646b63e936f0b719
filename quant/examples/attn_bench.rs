//! The attention kernels of batched decoding (`dot::f32_dots`, `dot::f32_axpy_many`) on each
//! backend this CPU has, with and without prefetching the ring rows, alternated within the
//! process.
//!
//! `cargo run --release --example attn_bench -p rgemma-quant`
//! One decode step of `SEQS` sequences (default 32) at a full window of `KEYS` keys (default
//! 2048) in one attention layer of the 2B geometry (10 query heads sharing one 256-wide
//! K/V head): per sequence, the scores of all heads against every key row, then the
//! weighted sum of the value rows in blocks of 16, as `attend_chunk` runs them (there: key
//! row `i + 4` and the next block of value rows prefetched). The sequences are split over
//! `THREADS` threads (default 2); their K/V rows (`SEQS` × 4 MiB) do not fit in cache, so
//! the figure is read bandwidth once the arithmetic keeps up. `REPEAT=N` walks the same
//! rows N times per round (few keys: the in-cache rate of the arithmetic).
//! Prints GB/s of K/V rows per variant and round, then the median of the per-round ratios
//! of each variant to the first (`ROUNDS`, default 10).

use std::time::Instant;

use rgemma_quant::dot::{self, Backend};

const HEADS: usize = 10;
const HEAD_DIM: usize = 256;
const VALUE_BLOCK: usize = 16;
const KEY_PREFETCH: usize = 4;

fn env_or(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("attn_bench: {name} must be a positive integer, not {v:?}");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

#[derive(Clone, Copy)]
struct Variant {
    backend: Backend,
    prefetch: bool,
}

/// Row `i` of a `[keys, HEAD_DIM]` matrix.
fn row(m: &[f32], i: usize) -> &[f32] {
    &m[i * HEAD_DIM..(i + 1) * HEAD_DIM]
}

/// One sequence's attention arithmetic (no softmax: the kernels are what is measured).
fn attend(how: Variant, q: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], out: &mut [f32]) {
    let n_keys = k.len() / HEAD_DIM;
    let mut dots = [0.0f32; HEADS];
    for i in 0..n_keys {
        if how.prefetch && i + KEY_PREFETCH < n_keys {
            dot::prefetch_lines(row(k, i + KEY_PREFETCH));
        }
        dot::f32_dots_with(how.backend, q, HEAD_DIM, row(k, i), &mut dots);
        for (j, s) in dots.iter().enumerate() {
            scores[j * n_keys + i] = s * 1e-3;
        }
    }
    out.fill(0.0);
    let mut rows: [&[f32]; VALUE_BLOCK] = [&[]; VALUE_BLOCK];
    for i0 in (0..n_keys).step_by(VALUE_BLOCK) {
        let nb = (n_keys - i0).min(VALUE_BLOCK);
        if how.prefetch {
            for i in (i0 + VALUE_BLOCK..n_keys).take(VALUE_BLOCK) {
                dot::prefetch_lines(row(v, i));
            }
        }
        for (b, r) in rows[..nb].iter_mut().enumerate() {
            *r = row(v, i0 + b);
        }
        dot::f32_axpy_many_with(
            how.backend,
            out,
            HEAD_DIM,
            &scores[i0..],
            n_keys,
            &rows[..nb],
        );
    }
}

fn main() {
    let seqs = env_or("SEQS", 32).max(1);
    let keys = env_or("KEYS", 2048).max(1);
    let threads = env_or("THREADS", 2).max(1);
    let rounds = env_or("ROUNDS", 10).max(1);
    let repeat = env_or("REPEAT", 1).max(1);
    let mut backends = Backend::all_available();
    backends.retain(|b| *b != Backend::Scalar && *b != Backend::AvxVnni);
    if backends.is_empty() {
        backends.push(Backend::Scalar);
    }
    let variants: Vec<Variant> = backends
        .iter()
        .flat_map(|&backend| [false, true].map(|prefetch| Variant { backend, prefetch }))
        .collect();
    let name = |v: &Variant| {
        format!(
            "{}{}",
            v.backend.name(),
            if v.prefetch { "+pf" } else { "" }
        )
    };
    let mut seed = 0x9e37_79b9_u32;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed as f32 / u32::MAX as f32) - 0.5
    };
    let q: Vec<f32> = (0..HEADS * HEAD_DIM).map(|_| rand()).collect();
    let kv: Vec<(Vec<f32>, Vec<f32>)> = (0..seqs)
        .map(|_| {
            let k = (0..keys * HEAD_DIM).map(|_| rand()).collect();
            let v = (0..keys * HEAD_DIM).map(|_| rand()).collect();
            (k, v)
        })
        .collect();
    let bytes = (repeat * seqs * keys * HEAD_DIM * 2 * 4) as f64;
    println!(
        "attention kernels: {seqs} sequences x {keys} keys, {HEADS} heads x {HEAD_DIM}, \
         {threads} threads, {:.0} MiB of K/V rows read per round",
        bytes / (1 << 20) as f64
    );
    let mut ratios = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        let mut secs = Vec::new();
        for &how in &variants {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                for part in kv.chunks(seqs.div_ceil(threads)) {
                    let q = &q;
                    s.spawn(move || {
                        let mut scores = vec![0.0f32; HEADS * keys];
                        let mut out = vec![0.0f32; HEADS * HEAD_DIM];
                        for _ in 0..repeat {
                            for (k, v) in part {
                                attend(how, q, k, v, &mut scores, &mut out);
                            }
                        }
                        std::hint::black_box(&out);
                    });
                }
            });
            secs.push(t0.elapsed().as_secs_f64());
        }
        let line: Vec<String> = variants
            .iter()
            .zip(&secs)
            .map(|(v, t)| format!("{} {:.2} GB/s", name(v), bytes / t / 1e9))
            .collect();
        println!("round {round}: {}", line.join(", "));
        for (r, t) in ratios.iter_mut().zip(&secs) {
            r.push(secs[0] / t);
        }
    }
    for (v, r) in variants.iter().zip(&mut ratios) {
        r.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{}: {:.3}x {} (median of {rounds} rounds)",
            name(v),
            r[r.len() / 2],
            name(&variants[0])
        );
    }
}
