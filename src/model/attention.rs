//! Local (sliding-window) multi-query attention over a chunk of queries, with keys drawn from
//! a ring buffer (earlier chunks) and from the chunk itself.
//!
//! Window rule (official RecurrentGemma): the query at position p attends the keys at
//! positions `max(0, p - W) ..= p` (W + 1 keys). The ring holds W slots, position q in slot
//! `q mod W`; a chunk first attends, then [`write_ring`] stores its keys and values.

use rayon::prelude::*;

use super::matmul::ThreadScratch;

/// Attention shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnGeom {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub window: usize,
}

impl AttnGeom {
    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Computes `out` `[T, n_heads*head_dim]` for queries `q` `[T, n_heads*head_dim]` at positions
/// `first_pos ..`, keys/values of the chunk `k`, `v` `[T, kv_width]` (keys after RoPE), and
/// the ring buffers `k_ring`, `v_ring` `[W, kv_width]` holding the positions before
/// `first_pos`. `scratch` must hold at least `W + 1` floats per thread.
#[allow(clippy::too_many_arguments)]
pub fn attend_chunk(
    g: AttnGeom,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    k_ring: &[f32],
    v_ring: &[f32],
    first_pos: usize,
    out: &mut [f32],
    scratch: &ThreadScratch,
) {
    let (hd, qw, kvw, win) = (g.head_dim, g.q_width(), g.kv_width(), g.window);
    let group = g.n_heads / g.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(qw).enumerate().for_each(|(t, out_row)| {
        scratch.with(|scores| {
            let pos = first_pos + t;
            let lo = pos.saturating_sub(win);
            let n_keys = pos - lo + 1;
            let scores = &mut scores[..n_keys];
            // Key/value row of position p: from the ring before the chunk, else the chunk.
            fn kv_row<'a>(
                p: usize,
                col: usize,
                first_pos: usize,
                (kvw, win, hd): (usize, usize, usize),
                chunk: &'a [f32],
                ring: &'a [f32],
            ) -> &'a [f32] {
                if p >= first_pos {
                    let r = (p - first_pos) * kvw + col;
                    &chunk[r..r + hd]
                } else {
                    let r = (p % win) * kvw + col;
                    &ring[r..r + hd]
                }
            }
            let dims = (kvw, win, hd);
            for h in 0..g.n_heads {
                let kv_head = h / group;
                let qh = &q[t * qw + h * hd..t * qw + (h + 1) * hd];
                let mut max = f32::NEG_INFINITY;
                for (i, s) in scores.iter_mut().enumerate() {
                    let kr = kv_row(lo + i, kv_head * hd, first_pos, dims, k, k_ring);
                    let dot = rgemma_quant::dot::f32_dot(qh, kr);
                    *s = dot * scale;
                    max = max.max(*s);
                }
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let oh = &mut out_row[h * hd..(h + 1) * hd];
                oh.fill(0.0);
                for (i, s) in scores.iter().enumerate() {
                    let p = *s / sum;
                    let vr = kv_row(lo + i, kv_head * hd, first_pos, dims, v, v_ring);
                    rgemma_quant::dot::f32_axpy(oh, p, vr);
                }
            }
        })
    });
}

/// Stores the chunk's keys and values (position `first_pos + t` in slot `(first_pos+t) mod W`).
/// Only the last W rows of the chunk can survive, so earlier ones are skipped.
pub fn write_ring(
    g: AttnGeom,
    k: &[f32],
    v: &[f32],
    k_ring: &mut [f32],
    v_ring: &mut [f32],
    first_pos: usize,
) {
    let kvw = g.kv_width();
    let t_len = k.len() / kvw;
    for t in t_len.saturating_sub(g.window)..t_len {
        let slot = (first_pos + t) % g.window;
        k_ring[slot * kvw..(slot + 1) * kvw].copy_from_slice(&k[t * kvw..(t + 1) * kvw]);
        v_ring[slot * kvw..(slot + 1) * kvw].copy_from_slice(&v[t * kvw..(t + 1) * kvw]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Naive windowed attention over the whole sequence (f64), keys max(0,p-W)..=p.
    fn naive(g: AttnGeom, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (hd, qw, kvw) = (g.head_dim, g.q_width(), g.kv_width());
        let n = q.len() / qw;
        let mut out = vec![0.0; n * qw];
        for p in 0..n {
            for h in 0..g.n_heads {
                let kvh = h / (g.n_heads / g.n_kv_heads);
                let keys: Vec<usize> = (p.saturating_sub(g.window)..=p).collect();
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        (0..hd)
                            .map(|d| {
                                q[p * qw + h * hd + d] as f64 * k[j * kvw + kvh * hd + d] as f64
                            })
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..hd {
                    out[p * qw + h * hd + d] = keys
                        .iter()
                        .zip(&s)
                        .map(|(&j, x)| (x - m).exp() / z * v[j * kvw + kvh * hd + d] as f64)
                        .sum::<f64>() as f32;
                }
            }
        }
        out
    }

    #[test]
    fn ring_buffer_attention_matches_naive_window() {
        let g = AttnGeom {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
            window: 5,
        };
        let n = 23;
        let mut s = 5u64;
        let q: Vec<f32> = (0..n * g.q_width()).map(|_| 2.0 * lcg(&mut s)).collect();
        let k: Vec<f32> = (0..n * g.kv_width()).map(|_| 2.0 * lcg(&mut s)).collect();
        let v: Vec<f32> = (0..n * g.kv_width()).map(|_| lcg(&mut s)).collect();
        let want = naive(g, &q, &k, &v);
        let scratch = ThreadScratch::new(rayon::current_num_threads(), g.window + 1);
        // Chunk sizes below, at and above the window, and single tokens.
        for chunk in [1usize, 3, 5, 6, 11, n] {
            let mut k_ring = vec![f32::NAN; g.window * g.kv_width()];
            let mut v_ring = vec![f32::NAN; g.window * g.kv_width()];
            let mut got = vec![0.0; n * g.q_width()];
            let mut t0 = 0;
            while t0 < n {
                let t1 = (t0 + chunk).min(n);
                let (kc, vc) = (
                    &k[t0 * g.kv_width()..t1 * g.kv_width()],
                    &v[t0 * g.kv_width()..t1 * g.kv_width()],
                );
                attend_chunk(
                    g,
                    &q[t0 * g.q_width()..t1 * g.q_width()],
                    kc,
                    vc,
                    &k_ring,
                    &v_ring,
                    t0,
                    &mut got[t0 * g.q_width()..t1 * g.q_width()],
                    &scratch,
                );
                write_ring(g, kc, vc, &mut k_ring, &mut v_ring, t0);
                t0 = t1;
            }
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                // NaN in never-written slots would show here if an empty slot were read.
                assert!((a - b).abs() < 1e-5, "chunk {chunk} elem {i}: {a} vs {b}");
            }
        }
    }
}
