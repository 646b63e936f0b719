//! Batched decoding with the one-group and the two-group AVX-512 kernels
//! (`rgemma_quant::packed::set_two_group_kernels`), alternated step by step in one process,
//! so that a shared machine's drift over seconds hits both alike (separate runs of
//! `rg-batched-bench` differ by more than the effect on a noisy VM).
//!
//! `cargo run --release --example two_groups_ab -- MODEL.gguf [NPL] [NPP] [STEPS]`
//! (defaults 4 sequences, 512-token shared prompt, 64 steps of each kernel). Prints the mean
//! step time of each and the median of the per-pair ratios.

use std::sync::Arc;
use std::time::Instant;

use rgemma::model::{BatchContext, BatchRow, ContextParams, KvType, Model};
use rgemma::quant::packed::set_two_group_kernels;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|v| v.parse().expect("a positive integer"))
        .unwrap_or(default)
}

fn main() -> rgemma::Result<()> {
    let path = std::env::args()
        .nth(1)
        .expect("usage: two_groups_ab MODEL [NPL] [NPP] [STEPS]");
    let (npl, npp, steps) = (arg(2, 4), arg(3, 512), arg(4, 64));
    let model = Arc::new(Model::load(std::path::Path::new(&path))?);
    let params = ContextParams {
        batch_size: 512,
        n_threads: 2,
        n_seq_max: npl,
        kv_type: KvType::F32,
    };
    let mut ctx = BatchContext::new(model.clone(), params)?;
    let n_vocab = model.n_vocab() as u32;
    let mut rows: Vec<BatchRow> = (0..npp)
        .map(|i| BatchRow {
            token: (i as u32 * 7919 + 13) % n_vocab,
            seq: 0,
            logits: i + 1 == npp,
        })
        .collect();
    for chunk in rows.chunks(512) {
        ctx.decode(chunk)?;
    }
    for seq in 1..npl {
        ctx.seq_copy(0, seq)?;
    }
    let mut times = [Vec::new(), Vec::new()];
    for step in 0..2 * steps + 2 {
        let two = step % 2 == 1;
        set_two_group_kernels(Some(two));
        rows.clear();
        for seq in 0..npl {
            let l = ctx.seq_logits(seq).expect("logits");
            let best = (0..l.len())
                .max_by(|&a, &b| l[a].total_cmp(&l[b]))
                .unwrap_or(0);
            rows.push(BatchRow {
                token: best as u32,
                seq,
                logits: true,
            });
        }
        let t = Instant::now();
        ctx.decode(&rows)?;
        // The first pair warms both kernels up.
        if step >= 2 {
            times[two as usize].push(t.elapsed().as_secs_f64());
        }
    }
    set_two_group_kernels(None);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut ratios: Vec<f64> = times[0].iter().zip(&times[1]).map(|(a, b)| a / b).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "{path}: {npl} sequences after {npp} tokens, {steps} steps each: one group {:.1} ms \
         ({:.2} t/s), two groups {:.1} ms ({:.2} t/s); speed two / one: median {:.3} \
         (quartiles {:.3}-{:.3})",
        1e3 * mean(&times[0]),
        npl as f64 / mean(&times[0]),
        1e3 * mean(&times[1]),
        npl as f64 / mean(&times[1]),
        ratios[ratios.len() / 2],
        ratios[ratios.len() / 4],
        ratios[3 * ratios.len() / 4]
    );
    Ok(())
}
