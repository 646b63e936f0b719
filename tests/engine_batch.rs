//! Many sequences in one `BatchContext` against the official references and against the
//! same sequences decoded alone:
//! - up to 16 slots, 24 sequences of different lengths (past the attention window) that join
//!   and leave at different steps, prompt chunks mixed with single tokens, rows of different
//!   sequences interleaved in each batch;
//! - forks (`seq_copy`) that continue independently;
//! - per-sequence save / load, also across a single-sequence `Context`;
//! - bad input is refused with every state unchanged;
//! - F16 K/V rings: half the ring bytes, logits close to the reference.
//!
//! Every sequence is a fixture prompt followed by its reference greedy tokens (teacher
//! forcing), so every row has an official logits row to compare with.

mod engine_common;

use std::sync::Arc;

use engine_common::{argmax, context, max_abs_diff, model, model_with, Reference};
use rgemma::convert::FileType;
use rgemma::model::{
    state_bytes_per_sequence, BatchContext, BatchRow, ContextParams, KvType, LoadOptions,
    MatmulPath, Model,
};
use rgemma::quant::dot::Backend;

/// Against the official logits (the fixtures README's limit).
const REF_TOL: f32 = 1e-4;
/// Against the same sequence decoded alone: none. The packed kernels are batch invariant
/// (`rgemma_quant::packed`'s module doc) and the per-sequence work does not depend on its
/// neighbours, so a sequence gets the same bits in any batch, prompt chunk or none.
const ALONE_TOL: f32 = 0.0;

/// A fixture sequence: prompt + reference greedy tokens, and the official logits after each.
struct Stream {
    tokens: Vec<u32>,
    /// `[tokens, n_vocab]`: prefill rows, then the decode rows.
    want: Vec<f32>,
}

fn streams() -> Vec<Stream> {
    let mut out = Vec::new();
    for dir in ["tiny-rg", "tiny-rg-long"] {
        let r = Reference::open(dir);
        for k in r.prompts() {
            let mut tokens = r.ids(&format!("p{k}.input_ids"));
            let gen = r.ids(&format!("p{k}.gen_tokens"));
            let (mut want, shape) = r.f32s(&format!("p{k}.prefill_logits"));
            let n_vocab = shape[1];
            let (decode, _) = r.f32s(&format!("p{k}.decode_logits"));
            // decode_logits[i] are the logits after gen[i]; the last generated token has no
            // reference row after it, so it is not fed.
            tokens.extend_from_slice(&gen[..gen.len() - 1]);
            want.extend_from_slice(&decode[..(gen.len() - 1) * n_vocab]);
            out.push(Stream { tokens, want });
        }
    }
    out
}

fn batch_ctx(m: &Arc<Model>, n_seq: usize, batch: usize, kv: KvType) -> BatchContext {
    BatchContext::new(
        m.clone(),
        ContextParams {
            batch_size: batch,
            n_threads: 2,
            n_seq_max: n_seq,
            kv_type: kv,
        },
    )
    .unwrap()
}

/// Every row's logits of `tokens` decoded alone, in one call.
fn alone(m: &Arc<Model>, tokens: &[u32]) -> Vec<f32> {
    let mut ctx = context(m, 512);
    ctx.eval(tokens, true).unwrap();
    ctx.all_logits().to_vec()
}

/// A sequence in flight: which stream, which slot, how far.
struct Running {
    stream: usize,
    slot: usize,
    fed: usize,
    /// Prompt rows fed per step (1 = token by token).
    chunk: usize,
}

/// Decodes `n_streams` sequences (stream `i % 5`) through `n_slots` slots: sequence `i` joins
/// at step `join(i)` when a slot is free, feeds its tokens `chunk` at a time (one per step
/// after its prompt), and leaves (its slot cleared) when done. Rows of different sequences
/// are interleaved in every batch. Checks every row's logits against `check(stream, row,
/// logits)`. Returns the number of decode calls.
fn run_schedule(
    ctx: &mut BatchContext,
    streams: &[Stream],
    n_streams: usize,
    mut check: impl FnMut(usize, usize, &[f32]),
) -> usize {
    let n_slots = ctx.n_seq_max();
    let cap = ctx.batch_capacity();
    let join = |i: usize| (i * 3) % 11 + i / 4;
    let mut waiting: Vec<usize> = (0..n_streams).collect();
    let mut running: Vec<Running> = Vec::new();
    let mut free: Vec<usize> = (0..n_slots).rev().collect();
    let mut rows: Vec<BatchRow> = Vec::new();
    let mut owners: Vec<(usize, usize)> = Vec::new(); // (running index, stream row)
    let mut step = 0;
    let mut calls = 0;
    while !waiting.is_empty() || !running.is_empty() {
        // Join.
        waiting.retain(|&i| {
            if join(i) <= step {
                if let Some(slot) = free.pop() {
                    assert_eq!(ctx.seq_position(slot).unwrap(), 0, "a freed slot is empty");
                    running.push(Running {
                        stream: i % streams.len(),
                        slot,
                        fed: 0,
                        chunk: 1 + (i * 5) % 13,
                    });
                    return false;
                }
            }
            true
        });
        // Each running sequence's rows for this step, interleaved round-robin.
        let mut pending: Vec<std::ops::Range<usize>> = running
            .iter()
            .map(|r| {
                let s = &streams[r.stream];
                let n = if r.fed < 16 { r.chunk } else { 1 };
                r.fed..(r.fed + n).min(s.tokens.len())
            })
            .collect();
        rows.clear();
        owners.clear();
        while rows.len() < cap && pending.iter().any(|p| !p.is_empty()) {
            for (ri, p) in pending.iter_mut().enumerate() {
                if rows.len() < cap {
                    if let Some(t) = p.next() {
                        let r = &running[ri];
                        rows.push(BatchRow {
                            token: streams[r.stream].tokens[t],
                            seq: r.slot,
                            logits: true,
                        });
                        owners.push((ri, t));
                    }
                }
            }
        }
        if !rows.is_empty() {
            ctx.decode(&rows).unwrap();
            calls += 1;
            for (i, &(ri, t)) in owners.iter().enumerate() {
                check(running[ri].stream, t, ctx.logits_ith(i).unwrap());
                running[ri].fed = running[ri].fed.max(t + 1);
            }
        }
        for r in &running {
            assert_eq!(ctx.seq_position(r.slot).unwrap(), r.fed);
        }
        // Leave.
        running.retain(|r| {
            if r.fed == streams[r.stream].tokens.len() {
                ctx.seq_clear(r.slot).unwrap();
                free.push(r.slot);
                false
            } else {
                true
            }
        });
        step += 1;
    }
    calls
}

#[test]
fn sequences_joining_and_leaving_match_reference_and_alone() {
    let m = model("tiny-rg", FileType::F32);
    let n_vocab = m.n_vocab();
    let streams = streams();
    let alone: Vec<Vec<f32>> = streams.iter().map(|s| alone(&m, &s.tokens)).collect();
    for (n_slots, n_streams, batch) in [(1, 3, 512), (4, 9, 40), (16, 24, 64)] {
        let mut ctx = batch_ctx(&m, n_slots, batch, KvType::F32);
        let (mut worst_ref, mut worst_alone, mut rows) = (0.0f32, 0.0f32, 0);
        let calls = run_schedule(&mut ctx, &streams, n_streams, |s, t, got| {
            let row = t * n_vocab..(t + 1) * n_vocab;
            let d_ref = max_abs_diff(got, &streams[s].want[row.clone()]);
            let d_alone = max_abs_diff(got, &alone[s][row.clone()]);
            assert!(
                d_ref <= REF_TOL,
                "{n_slots} slots: stream {s} row {t}: |diff| {d_ref} vs official"
            );
            assert!(
                d_alone <= ALONE_TOL,
                "{n_slots} slots: stream {s} row {t}: |diff| {d_alone} vs alone"
            );
            if t + 1 < streams[s].tokens.len() && t >= 1 {
                // The greedy token of the reference follows wherever the prompt has ended.
                let want_next = argmax(&streams[s].want[row]);
                assert_eq!(argmax(got), want_next, "stream {s} row {t}");
            }
            worst_ref = worst_ref.max(d_ref);
            worst_alone = worst_alone.max(d_alone);
            rows += 1;
        });
        eprintln!("{n_slots} slots, {n_streams} sequences: {rows} rows in {calls} calls, max |diff| {worst_ref:e} vs official, {worst_alone:e} vs alone");
        assert!(calls < rows, "rows of several sequences shared calls");
    }
}

#[test]
fn batched_quantized_kernels_match_alone_on_every_backend() {
    let streams = streams();
    let n_streams = 7;
    for (ft, repack) in [
        (FileType::Q4_0, true),
        (FileType::Q8_0, true),
        (FileType::Q4KM, true),
        (FileType::Q4_0, false),
    ] {
        let m = model_with("tiny-rg", ft, &LoadOptions { repack });
        let n_vocab = m.n_vocab();
        for backend in Backend::all_available() {
            let path = MatmulPath::Kernels(backend);
            let alone: Vec<Vec<f32>> = streams
                .iter()
                .map(|s| {
                    let mut c = context(&m, 512);
                    c.set_matmul_path(path);
                    c.eval(&s.tokens, true).unwrap();
                    c.all_logits().to_vec()
                })
                .collect();
            let mut ctx = batch_ctx(&m, 5, 48, KvType::F32);
            ctx.set_matmul_path(path);
            let mut worst = 0.0f32;
            run_schedule(&mut ctx, &streams, n_streams, |s, t, got| {
                let row = t * n_vocab..(t + 1) * n_vocab;
                let d = max_abs_diff(got, &alone[s][row]);
                assert!(
                    d <= ALONE_TOL,
                    "{} repack {repack} {backend:?}: stream {s} row {t}: |diff| {d}",
                    ft.name()
                );
                worst = worst.max(d);
            });
            eprintln!(
                "{} repack {repack} {backend:?}: max |diff| vs alone {worst:e}",
                ft.name()
            );
        }
    }
}

#[test]
fn forked_sequences_continue_independently() {
    let m = model("tiny-rg", FileType::F32);
    let n_vocab = m.n_vocab();
    let r = Reference::open("tiny-rg-long");
    let ids = r.ids("p0.input_ids");
    let gen = r.ids("p0.gen_tokens");
    let (decode, _) = r.f32s("p0.decode_logits");
    let mut ctx = batch_ctx(&m, 6, 512, KvType::F32);
    // One prefill, its last row's logits only.
    let rows: Vec<BatchRow> = ids
        .iter()
        .enumerate()
        .map(|(i, &token)| BatchRow {
            token,
            seq: 0,
            logits: i + 1 == ids.len(),
        })
        .collect();
    ctx.decode(&rows).unwrap();
    assert!(ctx.logits_ith(0).is_none(), "row 0 asked for no logits");
    let after_prompt = ctx.seq_logits(0).unwrap().to_vec();
    assert_eq!(argmax(&after_prompt), gen[0]);
    for dst in 1..4 {
        ctx.seq_copy(0, dst).unwrap();
        assert_eq!(ctx.seq_position(dst).unwrap(), ids.len());
        assert_eq!(ctx.seq_logits(dst).unwrap(), &after_prompt[..]);
    }
    // Sequences 0, 2 and 3 follow the reference; sequence 1 takes other tokens.
    for (i, &tok) in gen[..gen.len() - 1].iter().enumerate() {
        let other = (tok + 7 + i as u32) % n_vocab as u32;
        let rows = [
            BatchRow {
                token: other,
                seq: 1,
                logits: true,
            },
            BatchRow {
                token: tok,
                seq: 3,
                logits: true,
            },
            BatchRow {
                token: tok,
                seq: 0,
                logits: true,
            },
            BatchRow {
                token: tok,
                seq: 2,
                logits: true,
            },
        ];
        ctx.decode(&rows).unwrap();
        let want = &decode[i * n_vocab..(i + 1) * n_vocab];
        for (row, seq) in [(1, 3), (2, 0), (3, 2)] {
            let got = ctx.logits_ith(row).unwrap();
            assert_eq!(got, ctx.seq_logits(seq).unwrap());
            let d = max_abs_diff(got, want);
            assert!(d <= REF_TOL, "fork {seq} step {i}: |diff| {d}");
        }
        assert!(
            max_abs_diff(ctx.logits_ith(0).unwrap(), want) > 1e-3,
            "the diverging fork differs"
        );
    }
    // The fork that took other tokens equals that sequence decoded alone.
    let mut other_seq = ids.clone();
    other_seq.extend(
        gen[..gen.len() - 1]
            .iter()
            .enumerate()
            .map(|(i, &t)| (t + 7 + i as u32) % n_vocab as u32),
    );
    let want = alone(&m, &other_seq);
    let last = other_seq.len() - 1;
    let d = max_abs_diff(ctx.seq_logits(1).unwrap(), &want[last * n_vocab..]);
    assert!(d <= ALONE_TOL, "diverging fork vs alone: {d}");
}

#[test]
fn logits_of_a_sequence_left_out_of_a_call_are_kept() {
    let m = model("tiny-rg", FileType::F32);
    let streams = streams();
    let (a, b) = (&streams[2].tokens, &streams[3].tokens);
    let mut ctx = batch_ctx(&m, 3, 64, KvType::F32);
    let row = |token, seq, logits| BatchRow { token, seq, logits };
    ctx.decode(&[row(a[0], 0, false), row(a[1], 0, true), row(b[0], 1, true)])
        .unwrap();
    let a_logits = ctx.seq_logits(0).unwrap().to_vec();
    assert_eq!(ctx.logits_ith(1).unwrap(), &a_logits[..]);
    assert!(ctx.logits_ith(0).is_none() && ctx.logits_ith(3).is_none());
    // Sequence 0 sits out the next calls; its logits stay.
    ctx.decode(&[row(b[1], 1, true), row(b[2], 1, true)])
        .unwrap();
    ctx.decode(&[row(b[3], 1, true)]).unwrap();
    assert_eq!(ctx.seq_logits(0).unwrap(), &a_logits[..]);
    // A sequence whose last row asks for no logits has none.
    ctx.decode(&[row(b[4], 1, true), row(b[5], 1, false)])
        .unwrap();
    assert!(ctx.seq_logits(1).is_none());
    assert!(ctx.seq_logits(2).is_none(), "an untouched slot has none");
    // Saving and loading carries them.
    let mut saved = vec![0u8; ctx.seq_state_len()];
    ctx.seq_save(0, &mut saved).unwrap();
    ctx.seq_load(2, &saved).unwrap();
    assert_eq!(ctx.seq_logits(2).unwrap(), &a_logits[..]);
    assert_eq!(ctx.seq_position(2).unwrap(), 2);
    // A state saved without logits loads without logits.
    ctx.seq_save(1, &mut saved).unwrap();
    ctx.seq_load(2, &saved).unwrap();
    assert!(ctx.seq_logits(2).is_none());
    assert_eq!(ctx.seq_position(2).unwrap(), 6);
}

#[test]
fn sequence_states_move_between_slots_and_single_contexts() {
    let m = model("tiny-rg", FileType::F32);
    let n_vocab = m.n_vocab();
    let s = &streams()[4]; // tiny-rg-long: past many windows
    let split = 100;
    let mut ctx = batch_ctx(&m, 4, 512, KvType::F32);
    let rows: Vec<BatchRow> = s.tokens[..split]
        .iter()
        .map(|&token| BatchRow {
            token,
            seq: 3,
            logits: true,
        })
        .collect();
    ctx.decode(&rows).unwrap();
    let mut saved = vec![0u8; ctx.seq_state_len()];
    ctx.seq_save(3, &mut saved).unwrap();

    // Into a single-sequence context, which continues exactly.
    let mut single = context(&m, 16);
    assert_eq!(single.saved_state_len(), saved.len());
    single.load_state(&saved).unwrap();
    assert_eq!(single.position(), split);
    assert_eq!(single.logits(), ctx.seq_logits(3).unwrap());
    single.eval(&s.tokens[split..], true).unwrap();
    for t in split..s.tokens.len() {
        let got = &single.all_logits()[(t - split) * n_vocab..(t - split + 1) * n_vocab];
        let d = max_abs_diff(got, &s.want[t * n_vocab..(t + 1) * n_vocab]);
        assert!(d <= REF_TOL, "single context after load, row {t}: {d}");
    }
    // And back from the single context into slot 0 of an F16 context and slot 1 here.
    let mut from_single = vec![0u8; single.saved_state_len()];
    single.save_state(&mut from_single).unwrap();
    ctx.seq_load(1, &from_single).unwrap();
    assert_eq!(ctx.seq_position(1).unwrap(), s.tokens.len());
    assert_eq!(ctx.seq_logits(1).unwrap(), single.logits());
    let mut f16 = batch_ctx(&m, 2, 64, KvType::F16);
    f16.seq_load(0, &saved).unwrap();
    assert_eq!(f16.seq_position(0).unwrap(), split);

    // Corrupt, truncated or foreign states are refused and change nothing.
    let before = {
        let mut b = vec![0u8; ctx.seq_state_len()];
        ctx.seq_save(1, &mut b).unwrap();
        b
    };
    let mut corrupt = saved.clone();
    corrupt[100] ^= 1;
    assert!(ctx.seq_load(1, &corrupt).is_err());
    assert!(ctx.seq_load(1, &saved[..saved.len() - 1]).is_err());
    let other = model("tiny-rg", FileType::Q8_0);
    let mut other_ctx = batch_ctx(&other, 1, 16, KvType::F32);
    assert!(
        other_ctx.seq_load(0, &saved).is_err(),
        "state of another model"
    );
    assert!(ctx.seq_load(9, &saved).is_err(), "slot out of range");
    let mut after = vec![0u8; ctx.seq_state_len()];
    ctx.seq_save(1, &mut after).unwrap();
    assert_eq!(before, after);
}

#[test]
fn bad_batches_are_refused_and_change_nothing() {
    let m = model("tiny-rg", FileType::F32);
    let n_vocab = m.n_vocab() as u32;
    let mut ctx = batch_ctx(&m, 3, 8, KvType::F32);
    let row = |token, seq| BatchRow {
        token,
        seq,
        logits: true,
    };
    ctx.decode(&[row(2, 0), row(5, 1), row(9, 0)]).unwrap();
    let snapshot = |ctx: &BatchContext| -> Vec<Vec<u8>> {
        (0..3)
            .map(|s| {
                let mut b = vec![0u8; ctx.seq_state_len()];
                ctx.seq_save(s, &mut b).unwrap();
                b
            })
            .collect()
    };
    let before = snapshot(&ctx);
    let logits_before = ctx.logits_ith(2).unwrap().to_vec();
    let cases: Vec<(Vec<BatchRow>, &str)> = vec![
        (vec![], "empty batch"),
        (vec![row(3, 0), row(4, 3)], "sequence id 3 out of range"),
        (vec![row(3, 1), row(n_vocab, 2)], "outside the vocabulary"),
        ((0..9).map(|i| row(3 + i, 0)).collect(), "at most 8"),
    ];
    for (rows, what) in cases {
        let err = ctx.decode(&rows).expect_err(what).to_string();
        assert!(err.contains(what), "error '{err}' should say '{what}'");
        assert_eq!(snapshot(&ctx), before, "{what}: states changed");
        assert_eq!(
            ctx.logits_ith(2).unwrap(),
            &logits_before[..],
            "{what}: outputs changed"
        );
    }
    assert!(
        ctx.seq_clear(3).is_err() && ctx.seq_copy(0, 3).is_err() && ctx.seq_copy(7, 0).is_err()
    );
    assert!(ctx.seq_position(3).is_err());
    assert_eq!(snapshot(&ctx), before);
    for bad in [
        ContextParams {
            n_seq_max: 0,
            ..Default::default()
        },
        ContextParams {
            batch_size: 0,
            ..Default::default()
        },
    ] {
        assert!(BatchContext::new(m.clone(), bad).is_err());
    }
}

#[test]
fn f16_rings_halve_the_state_and_stay_close_to_the_reference() {
    let m = model("tiny-rg", FileType::F32);
    let n_vocab = m.n_vocab();
    let hp = m.hparams();
    let (full, half) = (
        state_bytes_per_sequence(hp, KvType::F32),
        state_bytes_per_sequence(hp, KvType::F16),
    );
    let ring_bytes_f32 = hp
        .layer_kinds
        .iter()
        .filter(|k| **k == rgemma::model::LayerKind::Attention)
        .count()
        * 2
        * hp.window
        * hp.n_kv_heads
        * hp.head_dim
        * 4;
    assert_eq!(full - half, ring_bytes_f32 / 2);
    let streams = streams();
    let mut ctx16 = batch_ctx(&m, 4, 64, KvType::F16);
    assert_eq!(ctx16.seq_state_bytes(), half);
    assert_eq!(batch_ctx(&m, 1, 8, KvType::F32).seq_state_bytes(), full);
    let (mut worst, mut agree, mut rows) = (0.0f32, 0, 0);
    run_schedule(&mut ctx16, &streams, 8, |s, t, got| {
        let want = &streams[s].want[t * n_vocab..(t + 1) * n_vocab];
        worst = worst.max(max_abs_diff(got, want));
        agree += (argmax(got) == argmax(want)) as usize;
        rows += 1;
    });
    eprintln!("f16 rings: max |diff| {worst:e} vs official, top-1 agreement {agree}/{rows}");
    assert!(worst < F16_TOL, "f16 rings: max |diff| {worst}");
    assert!(agree * 100 >= rows * 99, "f16 rings: top-1 {agree}/{rows}");
}

/// F16 keys and values carry ~11 significant bits; measured max |diff| on these fixtures is
/// reported by the test (logits span about ±30 after the soft-cap).
const F16_TOL: f32 = 2e-2;

/// The bundled trained model converted to `ft` (its 256-wide matrices take every packed
/// kernel: Q4_K and Q6_K need rows of 256, its RG-LRU gates are F16 blocks of 64).
fn bundled(ft: FileType) -> Arc<Model> {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-fortunes-f32.gguf");
    let out = engine_common::gguf_path(&format!("fortunes-{}", ft.name()));
    let mut opts = rgemma::convert::ConvertOptions::new(&src, &out, ft);
    opts.force = true;
    rgemma::convert::convert(&opts, &mut |_| {}).unwrap();
    let m = Arc::new(Model::load(&out).unwrap());
    let _ = std::fs::remove_file(&out);
    m
}

/// Batch invariance, end to end: one prompt forked into 5 sequences that then take different
/// tokens, decoded together one row per sequence per call, give every sequence exactly (bit
/// for bit) the logits of that sequence decoded alone one token at a time, on every file type
/// with a packed kernel and every backend; and the first sequence's 23 tokens as one prompt
/// (one call of 23 columns: the tiles of prompts, 512-bit pairs of groups on AVX-512) give the
/// logits of feeding them one by one. (Tolerance-free on purpose: a rounding difference in one
/// step grows through the recurrence within a few tokens, and a seed would then no longer
/// reproduce a text when other requests share the batch.)
#[test]
fn batched_decoding_is_bit_identical_to_decoding_alone() {
    let prompt = [2u32, 433, 1145, 395, 405, 936, 418];
    let (n_seq, steps) = (5usize, 16usize);
    for ft in [
        FileType::Q8_0,
        FileType::Q4_0,
        FileType::Q4KM,
        FileType::F16,
        FileType::BF16,
    ] {
        let m = bundled(ft);
        let n_vocab = m.n_vocab() as u32;
        // Sequence s's token at step i: different for every sequence.
        let token = |s: usize, i: usize| {
            (prompt[i % prompt.len()] + 37 * (s as u32 + 1) + 11 * i as u32) % n_vocab
        };
        for backend in Backend::all_available() {
            let path = MatmulPath::Kernels(backend);
            // Each sequence alone, one token per call (one context at a time: fewer idle
            // thread pools competing for the CI machine's 2 cores).
            let alone: Vec<Vec<Vec<f32>>> = (0..n_seq)
                .map(|s| {
                    let mut c = context(&m, 1);
                    c.set_matmul_path(path);
                    for &t in &prompt {
                        c.eval(&[t], false).unwrap();
                    }
                    (0..steps)
                        .map(|i| {
                            c.eval(&[token(s, i)], false).unwrap();
                            c.logits().to_vec()
                        })
                        .collect()
                })
                .collect();
            // Sequence 0 as one prompt against the same tokens one at a time.
            let seq0: Vec<u32> = prompt
                .iter()
                .copied()
                .chain((0..steps).map(|i| token(0, i)))
                .collect();
            let mut whole = context(&m, seq0.len());
            whole.set_matmul_path(path);
            whole.eval(&seq0, true).unwrap();
            let n_vocab = n_vocab as usize;
            let last = &whole.all_logits()[(seq0.len() - 1) * n_vocab..];
            assert!(
                last.iter()
                    .zip(&alone[0][steps - 1])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} {backend:?}: one prompt call vs token by token: max |diff| {}",
                ft.name(),
                max_abs_diff(last, &alone[0][steps - 1])
            );
            let mut ctx = batch_ctx(&m, n_seq, 8, KvType::F32);
            ctx.set_matmul_path(path);
            for &t in &prompt {
                ctx.decode(&[BatchRow {
                    token: t,
                    seq: 0,
                    logits: true,
                }])
                .unwrap();
            }
            for s in 1..n_seq {
                ctx.seq_copy(0, s).unwrap();
            }
            for i in 0..steps {
                let rows: Vec<BatchRow> = (0..n_seq)
                    .map(|s| BatchRow {
                        token: token(s, i),
                        seq: s,
                        logits: true,
                    })
                    .collect();
                ctx.decode(&rows).unwrap();
                for (s, want) in alone.iter().enumerate() {
                    let got = ctx.seq_logits(s).unwrap();
                    assert!(
                        got.iter()
                            .zip(&want[i])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} {backend:?}: sequence {s} step {i}: max |diff| {} vs alone",
                        ft.name(),
                        max_abs_diff(got, &want[i])
                    );
                }
            }
        }
    }
}
