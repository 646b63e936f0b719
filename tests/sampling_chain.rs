//! Sampler tests against hand-computed expectations: greedy, the filters (top-k, top-p, min-p,
//! temperature), the repetition penalty, reproducibility, and empirical frequencies.

use rgemma::sampling::{Sampler, SamplerParams};

fn params(temp: f32, top_k: i32, top_p: f32, min_p: f32) -> SamplerParams {
    SamplerParams {
        temp,
        top_k,
        top_p,
        min_p,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: Some(42),
    }
}

/// softmax(logits / t) in f64, the reference for the probabilities.
fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / t).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// A pseudo-random but fixed logit row (an LCG, independent of the sampler's PRNG).
fn logit_row(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

fn argmax_lowest(logits: &[f32]) -> u32 {
    let mut best = 0;
    for i in 1..logits.len() {
        if logits[i] > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn defaults_are_llama_cpp_defaults() {
    let p = SamplerParams::default();
    assert_eq!((p.temp, p.top_k, p.top_p, p.min_p), (0.8, 40, 0.95, 0.05));
    assert_eq!((p.repeat_penalty, p.repeat_last_n, p.seed), (1.0, 64, None));
}

#[test]
fn greedy_is_argmax_with_ties_to_lowest_id() {
    for seed in 0..20u64 {
        let logits = logit_row(1000, seed, 10.0);
        let mut s = Sampler::new(SamplerParams::greedy());
        assert_eq!(s.sample(&logits), argmax_lowest(&logits));
    }
    let tied = [0.5, 3.0, -1.0, 3.0, 3.0];
    for temp in [0.0, -1.0] {
        let mut s = Sampler::new(SamplerParams {
            temp,
            ..Default::default()
        });
        assert_eq!(s.sample(&tied), 1);
    }
    // NaN never wins.
    let mut s = Sampler::new(SamplerParams::greedy());
    assert_eq!(s.sample(&[f32::NAN, 1.0, f32::NAN, 2.0]), 3);
}

#[test]
fn top_k_1_is_greedy_whatever_the_temperature() {
    for seed in 0..10u64 {
        let logits = logit_row(500, seed + 100, 3.0);
        let want = argmax_lowest(&logits);
        for temp in [0.1, 0.8, 1.5, 100.0] {
            let mut s = Sampler::new(SamplerParams {
                temp,
                top_k: 1,
                seed: Some(5),
                ..Default::default()
            });
            for _ in 0..50 {
                assert_eq!(s.sample(&logits), want);
            }
        }
    }
}

#[test]
fn caller_logits_are_not_modified() {
    let logits = logit_row(300, 7, 4.0);
    let copy = logits.clone();
    let mut s = Sampler::new(SamplerParams {
        repeat_penalty: 1.3,
        ..params(0.9, 20, 0.9, 0.05)
    });
    for id in [1, 2, 3, 50] {
        s.accept(id);
    }
    for _ in 0..10 {
        s.sample(&logits);
    }
    s.distribution(&logits);
    assert_eq!(logits, copy);
}

#[test]
fn top_k_keeps_exactly_the_k_largest() {
    let logits = [1.0, 5.0, 3.0, 4.0, 2.0, 0.0];
    let mut s = Sampler::new(params(1.0, 3, 1.0, 0.0));
    let d = s.distribution(&logits);
    let ids: Vec<u32> = d.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![1, 3, 2]);
    // Probabilities are the softmax restricted to the kept set.
    let want = softmax(&[5.0, 4.0, 3.0], 1.0);
    for (c, w) in d.iter().zip(&want) {
        assert!((c.p as f64 - w).abs() < 1e-6, "{} vs {}", c.p, w);
    }
}

#[test]
fn top_p_keeps_the_smallest_prefix_reaching_p() {
    // Probabilities at temperature 1 (ln of 0.5, 0.3, 0.15, 0.05).
    let probs = [0.5f32, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let cases = [
        (0.4, 1),
        (0.49, 1),
        (0.79, 2),
        (0.81, 3),
        (0.94, 3),
        (0.96, 4),
        (1.0, 4),
    ];
    for (top_p, n_kept) in cases {
        let mut s = Sampler::new(params(1.0, 0, top_p, 0.0));
        let d = s.distribution(&logits);
        assert_eq!(d.len(), n_kept, "top_p {top_p}");
        let mass: f32 = probs[..n_kept].iter().sum();
        for (c, p) in d.iter().zip(probs) {
            assert!((c.p - p / mass).abs() < 1e-5);
        }
    }
    // top_p = 0 still keeps the most likely token.
    let mut s = Sampler::new(params(1.0, 0, 0.0, 0.0));
    assert_eq!(s.distribution(&logits).len(), 1);
}

#[test]
fn min_p_drops_tokens_below_the_fraction_of_the_top_probability() {
    let probs = [0.4f32, 0.3, 0.2, 0.06, 0.04];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    // p >= min_p * 0.4: min_p 0.125 -> threshold 0.05 keeps 4; min_p 0.6 -> 0.24 keeps 2.
    for (min_p, n_kept) in [(0.125, 4), (0.6, 2), (0.76, 1), (0.0, 5)] {
        let mut s = Sampler::new(params(1.0, 0, 1.0, min_p));
        assert_eq!(s.distribution(&logits).len(), n_kept, "min_p {min_p}");
    }
}

#[test]
fn filters_use_temperature_1_and_temperature_reshapes_the_survivors() {
    // With the filters ahead of the temperature, a high temperature must not widen the nucleus.
    let probs = [0.5f32, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let mut s = Sampler::new(params(5.0, 0, 0.81, 0.0));
    let d = s.distribution(&logits).to_vec();
    assert_eq!(d.len(), 3);
    let want = softmax(&logits[..3], 5.0);
    for (c, w) in d.iter().zip(&want) {
        assert!((c.p as f64 - w).abs() < 1e-6);
    }
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    // Greedy sees the penalised logits: token 0 (2.0 -> 2.0/1.5 = 1.333) loses to token 1 (1.5).
    let logits = [2.0, 1.5, -1.0, -0.2];
    let mut s = Sampler::new(SamplerParams {
        repeat_penalty: 1.5,
        ..SamplerParams::greedy()
    });
    assert_eq!(s.sample(&logits), 0);
    s.accept(0);
    assert_eq!(s.sample(&logits), 1);

    // Check the exact penalised values through the distribution at temperature 1.
    let mut s = Sampler::new(SamplerParams {
        repeat_penalty: 2.0,
        ..params(1.0, 0, 1.0, 0.0)
    });
    // Token 3 accepted twice: the penalty applies once, not per occurrence.
    for id in [0, 3, 3] {
        s.accept(id);
    }
    let d = s.distribution(&logits);
    let penalised = [1.0f32, 1.5, -1.0, -0.4];
    let want = softmax(&penalised, 1.0);
    for c in d {
        assert!(
            (c.p as f64 - want[c.id as usize]).abs() < 1e-6,
            "id {}: {} vs {}",
            c.id,
            c.p,
            want[c.id as usize]
        );
    }
    // The order follows the penalised logits.
    let ids: Vec<u32> = d.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![1, 0, 3, 2]);
}

#[test]
fn repetition_penalty_only_looks_at_the_last_n_tokens() {
    let logits = [2.0, 1.9, 0.0];
    let mut s = Sampler::new(SamplerParams {
        repeat_penalty: 1.5,
        repeat_last_n: 2,
        ..SamplerParams::greedy()
    });
    s.accept(0);
    assert_eq!(s.sample(&logits), 1);
    s.accept(2);
    s.accept(2); // token 0 has left the window of 2
    assert_eq!(s.history().collect::<Vec<_>>(), vec![2, 2]);
    assert_eq!(s.sample(&logits), 0);
    // repeat_last_n = 0 turns the penalty off.
    let mut s = Sampler::new(SamplerParams {
        repeat_penalty: 1.5,
        repeat_last_n: 0,
        ..SamplerParams::greedy()
    });
    s.accept(0);
    assert_eq!(s.sample(&logits), 0);
    // reset() clears the history.
    let mut s = Sampler::new(SamplerParams {
        repeat_penalty: 1.5,
        ..SamplerParams::greedy()
    });
    s.accept(0);
    s.reset();
    assert_eq!(s.sample(&logits), 0);
}

#[test]
fn same_seed_same_tokens_and_reset_restarts() {
    let rows: Vec<Vec<f32>> = (0..200).map(|i| logit_row(256, i, 2.0)).collect();
    let run = |seed: u64| {
        let mut s = Sampler::new(SamplerParams {
            seed: Some(seed),
            ..Default::default()
        });
        rows.iter().map(|r| s.sample(r)).collect::<Vec<u32>>()
    };
    let a = run(1234);
    assert_eq!(a, run(1234));
    assert_ne!(
        a,
        run(1235),
        "different seeds should give different draws over 200 tokens"
    );

    let mut s = Sampler::new(SamplerParams {
        seed: Some(99),
        ..Default::default()
    });
    let first: Vec<u32> = rows.iter().map(|r| s.sample(r)).collect();
    s.reset();
    let second: Vec<u32> = rows.iter().map(|r| s.sample(r)).collect();
    assert_eq!(first, second);

    // A random seed is reported, and reusing it reproduces the run.
    let mut s = Sampler::new(SamplerParams::default());
    let seed = s.seed();
    let drawn: Vec<u32> = rows.iter().map(|r| s.sample(r)).collect();
    assert_eq!(drawn, run(seed));
}

/// Draws `n` tokens and checks every frequency against `want` (a probability per id) within
/// 5 standard deviations of a binomial (plus a small absolute slack); ids with `want == 0`
/// must never be drawn.
fn check_frequencies(s: &mut Sampler, logits: &[f32], want: &[f64], n: usize) {
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..n {
        counts[s.sample(logits) as usize] += 1;
    }
    for (id, (&c, &p)) in counts.iter().zip(want).enumerate() {
        if p == 0.0 {
            assert_eq!(
                c, 0,
                "token {id} is outside the kept set but was drawn {c} times"
            );
            continue;
        }
        let f = c as f64 / n as f64;
        let sigma = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (f - p).abs() <= 5.0 * sigma + 1e-4,
            "token {id}: frequency {f:.5}, expected {p:.5} (sigma {sigma:.5})"
        );
    }
}

#[test]
fn empirical_frequencies_match_softmax_over_temperature() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 3.0, 0.0];
    for temp in [0.5f32, 1.0, 2.0] {
        let mut s = Sampler::new(params(temp, 0, 1.0, 0.0));
        let want = softmax(&logits, temp as f64);
        check_frequencies(&mut s, &logits, &want, 200_000);
    }
}

#[test]
fn empirical_frequencies_with_top_k_top_p_min_p() {
    let logits = logit_row(64, 5, 3.0);
    // Reference: rank by logit, apply the filters by hand at temperature 1, then softmax(l / t).
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap());
    let (top_k, top_p, min_p, temp) = (10usize, 0.8f64, 0.1f64, 0.7f64);
    let kept_k: Vec<usize> = order[..top_k].to_vec();
    let pk = softmax(&kept_k.iter().map(|&i| logits[i]).collect::<Vec<_>>(), 1.0);
    let mut cum = 0.0;
    let mut n_p = kept_k.len();
    for (i, p) in pk.iter().enumerate() {
        cum += p;
        if cum >= top_p {
            n_p = i + 1;
            break;
        }
    }
    let kept: Vec<usize> = kept_k[..n_p]
        .iter()
        .copied()
        .filter(|&i| pk[kept_k.iter().position(|&j| j == i).unwrap()] >= min_p * pk[0])
        .collect();
    assert!(
        kept.len() >= 2 && kept.len() < top_k,
        "test row should exercise the filters: kept {}",
        kept.len()
    );
    let pt = softmax(&kept.iter().map(|&i| logits[i]).collect::<Vec<_>>(), temp);
    let mut want = vec![0.0; logits.len()];
    for (&i, p) in kept.iter().zip(pt) {
        want[i] = p;
    }
    let mut s = Sampler::new(SamplerParams {
        seed: Some(7),
        ..params(temp as f32, top_k as i32, top_p as f32, min_p as f32)
    });
    check_frequencies(&mut s, &logits, &want, 200_000);
}

#[test]
fn large_vocabulary_with_defaults_only_draws_from_the_top_40() {
    let logits = logit_row(256_000, 11, 8.0);
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].partial_cmp(&logits[a as usize]).unwrap());
    let top40 = &order[..40];
    let mut s = Sampler::new(SamplerParams {
        seed: Some(3),
        ..Default::default()
    });
    for _ in 0..300 {
        let id = s.sample(&logits);
        assert!(top40.contains(&id));
    }
}

#[test]
fn validate_rejects_out_of_range_values() {
    let ok = SamplerParams::default();
    assert!(ok.validate().is_ok());
    for bad in [
        SamplerParams {
            top_p: 2.0,
            ..ok.clone()
        },
        SamplerParams {
            top_p: -0.1,
            ..ok.clone()
        },
        SamplerParams {
            min_p: 1.5,
            ..ok.clone()
        },
        SamplerParams {
            repeat_penalty: 0.0,
            ..ok.clone()
        },
        SamplerParams {
            temp: f32::NAN,
            ..ok.clone()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

/// A direct transcription of the chain (full sort of the whole vocabulary at every step),
/// to check the sampler's selective fast paths against: returns (id, probability) pairs.
fn naive_distribution(logits: &[f32], p: &SamplerParams, history: &[u32]) -> Vec<(u32, f64)> {
    let mut l: Vec<f64> = logits
        .iter()
        .map(|&x| {
            if x.is_nan() {
                f64::NEG_INFINITY
            } else {
                x as f64
            }
        })
        .collect();
    let mut seen = history.to_vec();
    seen.sort();
    seen.dedup();
    if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
        for &id in &seen {
            let x = l[id as usize] as f32;
            l[id as usize] = if x > 0.0 {
                (x / p.repeat_penalty) as f64
            } else {
                (x * p.repeat_penalty) as f64
            };
        }
    }
    let mut c: Vec<(u32, f64)> = l.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
    c.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    if p.top_k > 0 {
        c.truncate(p.top_k as usize);
    }
    if p.top_p < 1.0 {
        let probs = softmax(&c.iter().map(|x| x.1 as f32).collect::<Vec<_>>(), 1.0);
        let mut cum = 0.0;
        let mut keep = c.len();
        for (i, q) in probs.iter().enumerate() {
            cum += q;
            if cum >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        c.truncate(keep.max(1));
    }
    if p.min_p > 0.0 {
        let floor = c[0].1 as f32 + p.min_p.ln();
        let keep = c.iter().take_while(|x| x.1 as f32 >= floor).count();
        c.truncate(keep.max(1));
    }
    let probs = softmax(
        &c.iter().map(|x| x.1 as f32).collect::<Vec<_>>(),
        p.temp as f64,
    );
    c.iter().zip(probs).map(|(x, q)| (x.0, q)).collect()
}

#[test]
fn selective_paths_agree_with_a_full_sort() {
    let mut rng = 12345u64;
    let mut next = move || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) as u32
    };
    for case in 0..300 {
        let n = [5usize, 50, 300, 3000][case % 4];
        let mut logits = logit_row(n, case as u64 + 1000, [0.5, 3.0, 12.0][case % 3]);
        // Ties (quantised logits), -inf and NaN entries.
        if case % 5 == 0 {
            for x in logits.iter_mut() {
                *x = (*x * 2.0).round() / 2.0;
            }
        }
        if case % 7 == 0 {
            logits[next() as usize % n] = f32::NEG_INFINITY;
            logits[next() as usize % n] = f32::NAN;
        }
        let params = SamplerParams {
            temp: [0.3, 0.8, 1.0, 2.5][next() as usize % 4],
            top_k: [0, 1, 3, 40, 100_000][next() as usize % 5],
            top_p: [1.0, 0.95, 0.5, 0.0][next() as usize % 4],
            min_p: [0.0, 0.05, 0.3][next() as usize % 3],
            repeat_penalty: [1.0, 1.3, 0.8][next() as usize % 3],
            repeat_last_n: 64,
            seed: Some(1),
        };
        let history: Vec<u32> = (0..next() % 10).map(|_| next() % n as u32).collect();
        let mut s = Sampler::new(params.clone());
        for &id in &history {
            s.accept(id);
        }
        let got: Vec<(u32, f32)> = s
            .distribution(&logits)
            .iter()
            .map(|c| (c.id, c.p))
            .collect();
        let want = naive_distribution(&logits, &params, &history);
        let got_ids: Vec<u32> = got.iter().map(|x| x.0).collect();
        let want_ids: Vec<u32> = want.iter().map(|x| x.0).collect();
        assert_eq!(got_ids, want_ids, "case {case}: {params:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g.1 as f64 - w.1).abs() < 1e-5,
                "case {case}: p {} vs {}",
                g.1,
                w.1
            );
        }
    }
}
