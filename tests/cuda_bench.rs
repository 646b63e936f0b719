//! Throughput of the CUDA backend on a model file (not a correctness test; run by
//! scripts/gpu-check.sh):
//!
//! ```text
//! RG_BENCH_MODEL=model.gguf cargo test --release --features cuda --test cuda_bench -- --ignored --nocapture
//! ```
//!
//! Prints one line per measurement: prompt processing (pp512, one sequence), greedy decoding
//! of one sequence with the argmax on the GPU (tg128), and batched greedy decoding of B
//! sequences at once (B = 1, 8, 32, 64; total tokens per second), for B <= 8 also with the
//! decode step replayed from CUDA graphs.
#![cfg(feature = "cuda")]

use std::sync::Arc;
use std::time::Instant;

use rgemma::cuda::{CudaBatch, CudaModel};
use rgemma::model::Model;

fn ids(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % (n_vocab as u64 - 3)) as u32 + 3
        })
        .collect()
}

#[test]
#[ignore = "benchmark: needs RG_BENCH_MODEL and a GPU"]
fn cuda_throughput() {
    let Some(path) = std::env::var_os("RG_BENCH_MODEL") else {
        eprintln!("skipped: set RG_BENCH_MODEL to a GGUF file");
        return;
    };
    if let Err(e) = rgemma::cuda::probe() {
        eprintln!("skipped: no CUDA device ({e})");
        return;
    }
    let model = Arc::new(Model::load(&path).expect("model"));
    let n_vocab = model.n_vocab();
    let t = Instant::now();
    let cm = CudaModel::new(&model).expect("upload");
    println!(
        "bench: {} ({:.2} s to compile/load kernels and upload)",
        cm.describe(),
        t.elapsed().as_secs_f64()
    );
    let mut results: Vec<(String, f64)> = Vec::new();

    // pp512: one sequence, one 512-row chunk (after a warm-up chunk).
    {
        let mut b = CudaBatch::new(cm.clone(), 1, 512).unwrap();
        let prompt = ids(512, n_vocab, 1);
        b.eval_sequence(0, &prompt, 0, None).unwrap();
        let mut last = vec![0.0f32; n_vocab];
        b.logits_to_host(&mut last).unwrap();
        let reps = 3;
        let t = Instant::now();
        for _ in 0..reps {
            b.reset_all().unwrap();
            b.eval_sequence(0, &prompt, 0, None).unwrap();
            b.logits_to_host(&mut last).unwrap();
        }
        results.push((
            "pp512".into(),
            (reps * 512) as f64 / t.elapsed().as_secs_f64(),
        ));
    }

    // Greedy decoding of B sequences at once; B = 1 is tg128.
    for (n_seq, graphs) in [
        (1usize, false),
        (1, true),
        (8, false),
        (8, true),
        (32, false),
        (64, false),
    ] {
        let mut b = CudaBatch::new(cm.clone(), n_seq, 64).unwrap();
        b.set_graphs(graphs);
        let prompt_len = 16;
        for s in 0..n_seq {
            b.eval_sequence(s, &ids(prompt_len, n_vocab, 7 + s as u64), 0, None)
                .unwrap();
        }
        let seqs: Vec<usize> = (0..n_seq).collect();
        let mut tokens = vec![3u32; n_seq];
        let mut positions = vec![prompt_len; n_seq];
        let steps = if n_seq == 1 { 128 } else { 32 };
        // One warm-up step, then the timed ones.
        let mut step = |tokens: &mut Vec<u32>, positions: &mut Vec<usize>| {
            b.decode_step(tokens, &seqs, positions).unwrap();
            b.argmax(tokens).unwrap();
            for p in positions.iter_mut() {
                *p += 1;
            }
        };
        step(&mut tokens, &mut positions);
        let t = Instant::now();
        for _ in 0..steps {
            step(&mut tokens, &mut positions);
        }
        let name = if n_seq == 1 {
            "tg128 (batch 1)".to_string()
        } else {
            format!("decode batch {n_seq}")
        };
        let name = if graphs {
            format!("{name}, CUDA graphs")
        } else {
            name
        };
        results.push((name, (steps * n_seq) as f64 / t.elapsed().as_secs_f64()));
    }

    println!("| test | tokens/s |");
    println!("| --- | ---: |");
    for (name, tps) in &results {
        println!("| {name} | {tps:.1} |");
    }
    // Not a timing assertion: only that every measurement ran.
    assert_eq!(results.len(), 7);
}
