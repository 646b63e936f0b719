//! Local (sliding-window) multi-query attention over a chunk of queries, with keys drawn from
//! a ring buffer (earlier chunks) and from the chunk itself.
//!
//! Window rule (official RecurrentGemma): the query at position p attends the keys at
//! positions `max(0, p - W) ..= p` (W + 1 keys). The ring holds W slots, position q in slot
//! `q mod W`; a chunk first attends, then [`write_ring`] stores its keys and values.

use super::team::{self, SharedMut};

use super::matmul::ThreadScratch;
use super::ops::softmax_in_place;
use super::state::KvElem;

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
/// `first_pos` (f32 or f16: ring rows are read as f32). `scratch` must hold at least
/// [`attention_scratch_len`] floats per thread.
///
/// Work is split into tasks of (token, KV head, group of the query heads sharing it): a task
/// walks the keys once for all its heads (with multi-query attention every head reads the
/// same K/V rows, up to 2 × W × head_dim floats per layer, so reading them once per head
/// group instead of once per head is what keeps long-context decode near its short-context
/// speed). Each head's arithmetic is that of one head alone: scores in key order,
/// max-subtracted `exp` and their sum (`ops::softmax_in_place`), then `Σ_i (e_i / sum) · v_i`
/// in key order.
#[allow(clippy::too_many_arguments)]
pub fn attend_chunk<E: KvElem>(
    g: AttnGeom,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    k_ring: &[E],
    v_ring: &[E],
    first_pos: usize,
    out: &mut [f32],
    scratch: &ThreadScratch,
    concurrent_seqs: usize,
) {
    let (hd, qw, kvw, win) = (g.head_dim, g.q_width(), g.kv_width(), g.window);
    let group = g.n_heads / g.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let t_len = out.len() / qw;
    // As many heads per task as their score rows fit in the thread scratch; when there are
    // fewer tasks than threads (decoding one sequence), the heads are split so that every
    // thread gets a share (each share reads the K/V rows again, from cache: cheaper than
    // idling). `concurrent_seqs` other sequences attending at the same time also keep the
    // threads busy, and then each sequence reads its ring once.
    // The end of each thread's buffer holds ring rows converted to f32 (f16 rings).
    let row_tmp_len = (VALUE_BLOCK + 1) * hd;
    let score_capacity = scratch.capacity().saturating_sub(row_tmp_len);
    let mut heads_per_task =
        (score_capacity / (win + 1)).clamp(1, group.clamp(1, MAX_HEADS_PER_TASK));
    let threads = rayon::current_num_threads().max(1);
    if t_len * g.n_kv_heads * concurrent_seqs.max(1) < threads {
        heads_per_task = heads_per_task.min(group.div_ceil(threads)).max(1);
    }
    let parts = group.div_ceil(heads_per_task);
    let tasks_per_token = g.n_kv_heads * parts;
    let out_ptr = SharedMut(out.as_mut_ptr());
    team::for_each_task(t_len * tasks_per_token, |task| {
        let t = task / tasks_per_token;
        let (kv_head, part) = ((task % tasks_per_token) / parts, task % parts);
        let h0 = kv_head * group + part * heads_per_task;
        let h1 = (h0 + heads_per_task).min((kv_head + 1) * group);
        let nh = h1 - h0;
        let col = kv_head * hd;
        scratch.with(|buf| {
            let pos = first_pos + t;
            let lo = pos.saturating_sub(win);
            let n_keys = pos - lo + 1;
            let (scores, row_tmp) = buf.split_at_mut(score_capacity);
            let scores = &mut scores[..nh * n_keys];
            // The task's query heads are adjacent rows of q: one pass over each key
            // row computes all their scores.
            let qs = &q[t * qw + h0 * hd..t * qw + h1 * hd];
            let mut row_scores = [0.0f32; MAX_HEADS_PER_TASK];
            // The chunk's first token streams the ring from memory; the later ones of a
            // prompt chunk find its rows in cache, where prefetches only cost instructions.
            let prefetch = t == 0;
            for i in 0..n_keys {
                if prefetch && i + KEY_PREFETCH < n_keys {
                    prefetch_ring_row(
                        lo + i + KEY_PREFETCH,
                        col,
                        first_pos,
                        (kvw, win, hd),
                        k_ring,
                    );
                }
                // Ring rows go to the kernels in their stored type (f16 is widened as it
                // is loaded, where the CPU allows), the chunk's own rows as f32.
                let p = lo + i;
                if p >= first_pos {
                    let r = (p - first_pos) * kvw + col;
                    rgemma_quant::dot::f32_dots(qs, hd, &k[r..r + hd], &mut row_scores[..nh]);
                } else {
                    let r = (p % win) * kvw + col;
                    E::dots(qs, hd, &k_ring[r..r + hd], row_tmp, &mut row_scores[..nh]);
                }
                for j in 0..nh {
                    scores[j * n_keys + i] = row_scores[j] * scale;
                }
            }
            for row in scores.chunks_exact_mut(n_keys) {
                softmax_in_place(row);
            }
            // SAFETY: heads h0..h1 of token t are written by this task only, and
            // t * qw + h1 * hd <= out.len().
            let o = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.ptr().add(t * qw + h0 * hd), nh * hd)
            };
            o.fill(0.0);
            // Value rows in blocks: each row is read once for all the task's heads,
            // whose running sums stay in registers across the block.
            let mut i0 = 0;
            while i0 < n_keys {
                let nb = (n_keys - i0).min(VALUE_BLOCK);
                if prefetch {
                    for i in (i0 + VALUE_BLOCK..n_keys).take(VALUE_BLOCK) {
                        prefetch_ring_row(lo + i, col, first_pos, (kvw, win, hd), v_ring);
                    }
                }
                let mut rows: [&[f32]; VALUE_BLOCK] = [&[]; VALUE_BLOCK];
                let mut tmps = row_tmp.chunks_exact_mut(hd);
                for (b, row) in rows[..nb].iter_mut().enumerate() {
                    let tmp = tmps.next().expect("VALUE_BLOCK + 1 rows reserved");
                    *row = value_row(lo + i0 + b, col, first_pos, (kvw, win, hd), v, v_ring, tmp);
                }
                rgemma_quant::dot::f32_axpy_many(o, hd, &scores[i0..], n_keys, &rows[..nb]);
                i0 += nb;
            }
        })
    });
}

/// Upper bound on heads per task (the per-head sums live on the stack).
const MAX_HEADS_PER_TASK: usize = 64;

/// Value rows combined per `f32_axpy_many` call.
const VALUE_BLOCK: usize = 16;

/// How many key rows ahead of the one being scored the ring is prefetched (the value rows:
/// one block ahead). The hardware prefetcher alone leaves the kernels waiting on memory:
/// at 32 sequences × 2048 keys (`attn_bench`, Intel Xeon family 6 model 207, 2 threads,
/// in-process medians) the rings are read 1.17× (AVX2) and 1.12× (AVX-512) faster.
const KEY_PREFETCH: usize = 4;

/// Floats of thread scratch [`attend_chunk`] needs: the score rows of up to `heads` query
/// heads over `W + 1` keys, and `VALUE_BLOCK + 1` ring rows converted to f32.
pub fn attention_scratch_len(g: AttnGeom, heads: usize) -> usize {
    heads.clamp(1, MAX_HEADS_PER_TASK) * (g.window + 1) + (VALUE_BLOCK + 1) * g.head_dim
}

/// Value row `[hd]` at column `col` of position `p`, as f32: from the chunk when
/// `p >= first_pos`, else from the ring slot `p mod W` (converted into `tmp` when the ring
/// is not f32).
#[allow(clippy::too_many_arguments)]
fn value_row<'a, E: KvElem>(
    p: usize,
    col: usize,
    first_pos: usize,
    (kvw, win, hd): (usize, usize, usize),
    chunk: &'a [f32],
    ring: &'a [E],
    tmp: &'a mut [f32],
) -> &'a [f32] {
    if p >= first_pos {
        let r = (p - first_pos) * kvw + col;
        &chunk[r..r + hd]
    } else {
        let r = (p % win) * kvw + col;
        E::load(&ring[r..r + hd], tmp)
    }
}

/// Prefetches the ring row of position `p` (nothing for positions of the chunk itself,
/// which were just written and are in cache).
fn prefetch_ring_row<E: KvElem>(
    p: usize,
    col: usize,
    first_pos: usize,
    (kvw, win, hd): (usize, usize, usize),
    ring: &[E],
) {
    if p < first_pos {
        let r = (p % win) * kvw + col;
        rgemma_quant::dot::prefetch_lines(&ring[r..r + hd]);
    }
}

/// Stores the chunk's keys and values (position `first_pos + t` in slot `(first_pos+t) mod W`).
/// Only the last W rows of the chunk can survive, so earlier ones are skipped.
pub fn write_ring<E: KvElem>(
    g: AttnGeom,
    k: &[f32],
    v: &[f32],
    k_ring: &mut [E],
    v_ring: &mut [E],
    first_pos: usize,
) {
    let kvw = g.kv_width();
    let t_len = k.len() / kvw;
    for t in t_len.saturating_sub(g.window)..t_len {
        let slot = (first_pos + t) % g.window;
        E::store(
            &k[t * kvw..(t + 1) * kvw],
            &mut k_ring[slot * kvw..(slot + 1) * kvw],
        );
        E::store(
            &v[t * kvw..(t + 1) * kvw],
            &mut v_ring[slot * kvw..(slot + 1) * kvw],
        );
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
        check_ring_attention(f32::NAN, 1e-5);
    }

    /// F16 rings: keys and values rounded to 11 significant bits when stored.
    #[test]
    fn f16_ring_attention_stays_close_to_naive_window() {
        check_ring_attention(half::f16::NAN, 1e-2);
    }

    fn check_ring_attention<E: KvElem + std::fmt::Debug>(empty: E, tol: f32) {
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
        let scratch = ThreadScratch::new(rayon::current_num_threads(), attention_scratch_len(g, 1));
        // Chunk sizes below, at and above the window, and single tokens.
        for chunk in [1usize, 3, 5, 6, 11, n] {
            let mut k_ring = vec![empty; g.window * g.kv_width()];
            let mut v_ring = vec![empty; g.window * g.kv_width()];
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
                    1,
                );
                write_ring(g, kc, vc, &mut k_ring, &mut v_ring, t0);
                t0 = t1;
            }
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                // NaN in never-written slots would show here if an empty slot were read.
                assert!((a - b).abs() < tol, "chunk {chunk} elem {i}: {a} vs {b}");
            }
        }
    }
}
