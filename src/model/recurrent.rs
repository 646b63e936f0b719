//! The recurrent block's sequence operations: causal depthwise conv with a carried tail, and
//! the RG-LRU scan with its position-0 reset. Both work on a chunk of T rows of width L and
//! carry their state across chunks, so prompt chunks and single tokens share one path.

use super::team::{self, SharedMut};

use super::ops::{add_in_place, avx2_dispatch, exp_fast, sigmoid};

/// Causal depthwise conv over a chunk.
///
/// `x` is `[T, L]` (linear_x outputs of the chunk), `tail` is `[K-1, L]`: the K-1 previous
/// inputs, oldest first (zeros before the start of the sequence). `w` is `[K, L]` with tap
/// K-1 on the current token. Writes `out[t, c] = b[c] + Σ_k w[k, c] · x[t-(K-1)+k, c]` and
/// then replaces `tail` with the last K-1 inputs.
pub fn conv1d_chunk(x: &[f32], tail: &mut [f32], w: &[f32], b: &[f32], out: &mut [f32]) {
    let l = b.len();
    let k = w.len() / l;
    let t_len = x.len() / l;
    let hist = k - 1;
    for t in 0..t_len {
        let o = &mut out[t * l..(t + 1) * l];
        o.fill(0.0);
        // Same order as the reference: current tap first, bias last.
        for shift in 0..k {
            // Input row t - shift of the chunk; before the chunk it is in the tail.
            let input = match t.checked_sub(shift) {
                Some(j) => &x[j * l..(j + 1) * l],
                None => &tail[(hist + t - shift) * l..(hist + t - shift + 1) * l],
            };
            conv_tap(o, input, &w[(hist - shift) * l..(hist - shift + 1) * l]);
        }
        add_in_place(o, b);
    }
    // New tail = last K-1 rows of [tail; x].
    if hist == 0 {
        return;
    }
    if t_len >= hist {
        tail.copy_from_slice(&x[(t_len - hist) * l..t_len * l]);
    } else {
        tail.copy_within(t_len * l.., 0);
        tail[(hist - t_len) * l..].copy_from_slice(x);
    }
}

/// RG-LRU over a chunk whose first row is at absolute position `first_pos`.
///
/// `x` `[T, L]` is the conv output; `gate_x` and `gate_a` `[T, L]` are the gate
/// pre-activations; `softplus_a` `[L]` is `softplus(Λ)`; `h` `[L]` is the f32 state, updated
/// in place. The output `h_t` of every step goes to `out` `[T, L]`.
///
/// Per step: `log_a = -8 · σ(gate_a) · softplus(Λ)`, `a = exp(log_a)`,
/// `m = sqrt(1 - a²)` (as the reference: `sqrt(1 - exp(2 log_a))`), `h = a·h + x·σ(gate_x)·m`; at position 0
/// the state is reset: `m = 1` and the previous `h` is ignored.
pub fn rglru_chunk(
    x: &[f32],
    gate_x: &[f32],
    gate_a: &[f32],
    softplus_a: &[f32],
    h: &mut [f32],
    first_pos: usize,
    out: &mut [f32],
) {
    let l = softplus_a.len();
    let t_len = x.len() / l;
    assert!(
        h.len() == l
            && gate_x.len() >= t_len * l
            && gate_a.len() >= t_len * l
            && out.len() >= t_len * l,
        "rglru_chunk: buffer sizes do not match the width"
    );
    // Channels are independent: tasks own disjoint channel ranges (the same arithmetic in
    // the same order per channel as a sequential loop) and walk all T steps.
    let out_ptr = SharedMut(out.as_mut_ptr());
    team::for_each_chunk_mut(h, CHANNELS_PER_TASK, |k, h_part| {
        let c0 = k * CHANNELS_PER_TASK;
        let cs = c0..c0 + h_part.len();
        for t in 0..t_len {
            let row = t * l;
            let (x, gx, ga) = (
                &x[row + cs.start..row + cs.end],
                &gate_x[row + cs.start..row + cs.end],
                &gate_a[row + cs.start..row + cs.end],
            );
            // SAFETY: row + c < t_len * l <= out.len() (asserted) for c in cs; these
            // channels belong to this task only, so no other task writes them.
            let out = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.ptr().add(row + cs.start), cs.len())
            };
            if first_pos + t == 0 {
                rglru_reset(h_part, out, x, gx);
            } else {
                rglru_step(h_part, out, x, gx, ga, &softplus_a[cs.clone()]);
            }
        }
    });
}

avx2_dispatch! {
    /// `acc += input · w` elementwise (one tap of the depthwise conv).
    pub fn conv_tap(acc: &mut [f32], input: &[f32], w: &[f32]) {
        for ((a, &v), &wv) in acc.iter_mut().zip(input).zip(w) {
            *a += v * wv;
        }
    }
}

avx2_dispatch! {
    /// The RG-LRU step at position 0 for a run of channels: the state resets to the gated
    /// input (`m = 1`, the previous `h` ignored).
    pub fn rglru_reset(h: &mut [f32], out: &mut [f32], x: &[f32], gate_x: &[f32]) {
        for (((hc, o), &x), &gx) in h.iter_mut().zip(out).zip(x).zip(gate_x) {
            *hc = x * sigmoid(gx);
            *o = *hc;
        }
    }
}

avx2_dispatch! {
    /// One RG-LRU step for a run of channels (see [`rglru_chunk`]); branch-free and
    /// libm-free so that it vectorises across channels.
    pub fn rglru_step(
        h: &mut [f32],
        out: &mut [f32],
        x: &[f32],
        gate_x: &[f32],
        gate_a: &[f32],
        softplus_a: &[f32],
    ) {
        for (((((hc, o), &x), &gx), &ga), &sp) in
            h.iter_mut().zip(out).zip(x).zip(gate_x).zip(gate_a).zip(softplus_a)
        {
            let gated = x * sigmoid(gx);
            let log_a = -8.0 * sigmoid(ga) * sp;
            let a = exp_fast(log_a);
            // 1 - a² as the reference computes it (1 - exp(2 log_a)).
            let multiplier = (1.0 - exp_fast(2.0 * log_a)).max(0.0).sqrt();
            *hc = a * *hc + gated * multiplier;
            *o = *hc;
        }
    }
}

/// RG-LRU channels per parallel task.
const CHANNELS_PER_TASK: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Naive causal conv over the whole sequence with zero left padding.
    fn naive_conv(x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let l = b.len();
        let k = w.len() / l;
        let n = x.len() / l;
        let mut out = vec![0.0; n * l];
        for t in 0..n {
            for c in 0..l {
                let mut acc = b[c] as f64;
                for tap in 0..k {
                    let j = t as isize - (k - 1) as isize + tap as isize;
                    if j >= 0 {
                        acc += w[tap * l + c] as f64 * x[j as usize * l + c] as f64;
                    }
                }
                out[t * l + c] = acc as f32;
            }
        }
        out
    }

    #[test]
    fn conv_with_state_matches_whole_sequence() {
        let (l, k, n) = (5usize, 4usize, 11usize);
        let mut s = 7u64;
        let x: Vec<f32> = (0..n * l).map(|_| lcg(&mut s)).collect();
        let w: Vec<f32> = (0..k * l).map(|_| lcg(&mut s)).collect();
        let b: Vec<f32> = (0..l).map(|_| lcg(&mut s)).collect();
        let want = naive_conv(&x, &w, &b);
        // Chunkings that cross the tail length in every way: 1-row steps, 2 (< K-1), 3, 5.
        for chunk in [1usize, 2, 3, 5, n] {
            let mut tail = vec![0.0; (k - 1) * l];
            let mut got = vec![0.0; n * l];
            let mut t0 = 0;
            while t0 < n {
                let t1 = (t0 + chunk).min(n);
                conv1d_chunk(
                    &x[t0 * l..t1 * l],
                    &mut tail,
                    &w,
                    &b,
                    &mut got[t0 * l..t1 * l],
                );
                t0 = t1;
            }
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!((g - e).abs() < 1e-5, "chunk {chunk} elem {i}: {g} vs {e}");
            }
            // The tail holds the last K-1 inputs.
            assert_eq!(tail, x[(n - (k - 1)) * l..]);
        }
    }

    /// Naive RG-LRU in f64 from the formula, positions starting at 0.
    fn naive_rglru(x: &[f32], gx: &[f32], ga: &[f32], lambda: &[f32]) -> Vec<f32> {
        let l = lambda.len();
        let n = x.len() / l;
        let sig = |v: f32| 1.0 / (1.0 + (-(v as f64)).exp());
        let mut h = vec![0.0f64; l];
        let mut out = vec![0.0; n * l];
        for t in 0..n {
            for c in 0..l {
                let sp = (1.0 + (lambda[c] as f64).exp()).ln();
                let log_a = -8.0 * sig(ga[t * l + c]) * sp;
                let a = log_a.exp();
                let xi = x[t * l + c] as f64 * sig(gx[t * l + c]);
                h[c] = if t == 0 {
                    xi
                } else {
                    a * h[c] + xi * (1.0 - a * a).sqrt()
                };
                out[t * l + c] = h[c] as f32;
            }
        }
        out
    }

    #[test]
    fn rglru_resets_at_position_zero_and_chunks_agree() {
        let (l, n) = (6usize, 9usize);
        let mut s = 99u64;
        let x: Vec<f32> = (0..n * l).map(|_| 3.0 * lcg(&mut s)).collect();
        let gx: Vec<f32> = (0..n * l).map(|_| 2.0 * lcg(&mut s)).collect();
        let ga: Vec<f32> = (0..n * l).map(|_| 2.0 * lcg(&mut s)).collect();
        let lambda: Vec<f32> = (0..l).map(|_| 4.0 * lcg(&mut s) - 2.0).collect();
        let sp: Vec<f32> = lambda
            .iter()
            .map(|&z| super::super::weights::softplus(z))
            .collect();
        let want = naive_rglru(&x, &gx, &ga, &lambda);
        for chunk in [1usize, 4, n] {
            // Garbage in the state must not leak into position 0.
            let mut h = vec![123.0f32; l];
            let mut got = vec![0.0; n * l];
            let mut t0 = 0;
            while t0 < n {
                let t1 = (t0 + chunk).min(n);
                let r = t0 * l..t1 * l;
                rglru_chunk(
                    &x[r.clone()],
                    &gx[r.clone()],
                    &ga[r.clone()],
                    &sp,
                    &mut h,
                    t0,
                    &mut got[r],
                );
                t0 = t1;
            }
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() < 1e-5 * (1.0 + e.abs()),
                    "chunk {chunk} elem {i}: {g} vs {e}"
                );
            }
        }
        // The first step is exactly x * sigmoid(gate_x): no sqrt(1-a^2) factor.
        let mut h = vec![0.0f32; l];
        let mut out = vec![0.0; l];
        rglru_chunk(&x[..l], &gx[..l], &ga[..l], &sp, &mut h, 0, &mut out);
        for c in 0..l {
            assert_eq!(out[c], x[c] * sigmoid(gx[c]));
        }
    }

    #[test]
    fn avx2_copies_are_bit_identical() {
        // 300 channels (vector bodies and a tail), 3 chunks of 7 steps, 4 conv taps.
        let (l, n, k) = (300usize, 21usize, 4usize);
        let mut s = 5u64;
        let mut v = |len: usize, scale: f32| -> Vec<f32> {
            (0..len).map(|_| scale * lcg(&mut s)).collect()
        };
        let (x, gx, ga) = (v(n * l, 3.0), v(n * l, 4.0), v(n * l, 4.0));
        let (w, b, sp) = (v(k * l, 1.0), v(l, 1.0), v(l, 2.0));
        let run = || {
            let mut h = vec![0.0f32; l];
            let mut tail = vec![0.0f32; (k - 1) * l];
            let (mut conv, mut out) = (vec![0.0f32; n * l], vec![0.0f32; n * l]);
            for c in 0..3 {
                let r = c * 7 * l..(c + 1) * 7 * l;
                conv1d_chunk(&x[r.clone()], &mut tail, &w, &b, &mut conv[r.clone()]);
                let (cx, o) = (&conv[r.clone()], &mut out[r.clone()]);
                rglru_chunk(cx, &gx[r.clone()], &ga[r.clone()], &sp, &mut h, c * 7, o);
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            (bits(&conv), bits(&out), bits(&h))
        };
        let (portable, dispatched) = super::super::ops::tests::both_copies(run);
        assert!(portable == dispatched, "AVX2 and portable copies differ");
    }
}
