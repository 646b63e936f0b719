//! Throughput measurement of the packed kernels, and of the unpacked `dot::gemm` on the
//! same matrix for comparison (used by `rg-bench --kernels` and the `packed_bench`
//! example).
//!
//! The matrix is one random row quantized with [`crate::quantize_row`] and replicated:
//! the kernels' speed does not depend on the values, and replicating keeps a 1 GiB matrix
//! cheap to build. The activations are random. Each repetition runs the whole product
//! split into contiguous ranges of groups (rows) over `threads` scoped threads, repeated
//! enough times to last about 20 ms so that small (in-cache) matrices are not dominated by
//! thread start-up; the best repetition is reported.

use std::time::Instant;

use super::GROUP_ROWS;
use crate::dot::{self, Backend};
use crate::GgmlType;

/// Throughput of one measurement.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Weight bytes read per second, in GB/s (10⁹ bytes).
    pub gbps: f64,
    /// Multiply-adds ×2 per second (`2·rows·n·ncols / s`), in Gop/s.
    pub gops: f64,
}

/// `rows` (rounded up to a multiple of [`GROUP_ROWS`]) copies of one random row of `n`
/// values of `ty`, in the stored layout.
fn random_matrix(ty: GgmlType, n: usize, rows: usize) -> Vec<u8> {
    let mut x = vec![0.0f32; n];
    let mut s = 0x2545_f491u32;
    for v in &mut x {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        *v = (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
    }
    let rb = ty.row_size(n as u64).expect("row size") as usize;
    let mut row = vec![0u8; rb];
    crate::quantize_row(ty, &x, &mut row).expect("quantizable type and aligned n");
    let rows = rows.div_ceil(GROUP_ROWS) * GROUP_ROWS;
    let mut m = Vec::with_capacity(rows * rb);
    for _ in 0..rows {
        m.extend_from_slice(&row);
    }
    m
}

fn random_activations(n: usize, ncols: usize) -> Vec<f32> {
    let mut s = 0x9e37_79b9u32;
    (0..n * ncols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// A raw output pointer that threads write disjoint parts of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every thread writes a disjoint range of rows (see `measure`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Runs `run(first_unit, units, out)` over `units` split into `threads` contiguous ranges,
/// `reps` times (each repeated to last ~20 ms); returns the best seconds per product.
fn measure<F>(units: usize, threads: usize, reps: usize, out: OutPtr, run: F) -> f64
where
    F: Fn(usize, usize, OutPtr) + Sync,
{
    let threads = threads.clamp(1, units.max(1));
    let once = |iters: usize| {
        let t = Instant::now();
        std::thread::scope(|s| {
            let per = units.div_ceil(threads);
            for k in 0..threads {
                let (u0, u1) = (k * per, ((k + 1) * per).min(units));
                if u0 >= u1 {
                    continue;
                }
                let run = &run;
                s.spawn(move || {
                    for _ in 0..iters {
                        run(u0, u1 - u0, out);
                    }
                });
            }
        });
        t.elapsed().as_secs_f64() / iters as f64
    };
    // Grow the repeat count until a repetition takes 20 ms, so thread start-up (tens of
    // microseconds, more on a loaded machine) stays negligible.
    let mut iters = 1;
    while iters < 1 << 24 && once(iters) * (iters as f64) < 0.02 {
        iters *= 4;
    }
    (0..reps.max(1))
        .map(|_| once(iters))
        .fold(f64::INFINITY, f64::min)
}

fn throughput(bytes: usize, rows: usize, n: usize, ncols: usize, secs: f64) -> Throughput {
    Throughput {
        gbps: bytes as f64 / secs / 1e9,
        gops: 2.0 * rows as f64 * n as f64 * ncols as f64 / secs / 1e9,
    }
}

/// Packed `gemm` of `rows` (rounded up to a multiple of 8) × `n` weights of `ty` with
/// `ncols` activation rows on `threads` threads, with the best backend of this CPU; the
/// best of `reps` repetitions as `(GB/s of weights, Gop/s)`.
///
/// # Panics
/// If `ty` has no packed layout or `n` is not a whole number of its blocks.
pub fn bench_gemm(
    ty: GgmlType,
    n: usize,
    rows: usize,
    ncols: usize,
    threads: usize,
    reps: usize,
) -> (f64, f64) {
    let t = bench_packed_with(Backend::detect(), ty, n, rows, ncols, threads, reps);
    (t.gbps, t.gops)
}

/// [`bench_gemm`] with an explicit backend.
pub fn bench_packed_with(
    backend: Backend,
    ty: GgmlType,
    n: usize,
    rows: usize,
    ncols: usize,
    threads: usize,
    reps: usize,
) -> Throughput {
    let mut case = PackedCase::new(backend, ty, n, rows, ncols);
    case.run(threads, reps)
}

/// The same packed product under several settings, measured alternately: `rounds` times,
/// `set(v)` then one repetition for each variant `v < variants`. Drifts of a shared
/// machine's speed over seconds then hit every variant alike, which separate runs do not
/// give. Returns each variant's throughputs, round by round.
#[allow(clippy::too_many_arguments)]
pub fn bench_packed_alternating(
    backend: Backend,
    ty: GgmlType,
    n: usize,
    rows: usize,
    ncols: usize,
    threads: usize,
    rounds: usize,
    variants: usize,
    set: impl Fn(usize),
) -> Vec<Vec<Throughput>> {
    let mut case = PackedCase::new(backend, ty, n, rows, ncols);
    let mut res = vec![Vec::with_capacity(rounds); variants];
    for _ in 0..rounds {
        for (v, r) in res.iter_mut().enumerate() {
            set(v);
            r.push(case.run(threads, 1));
        }
    }
    res
}

/// A packed matrix with its activations and output, ready to be multiplied.
struct PackedCase {
    backend: Backend,
    ty: GgmlType,
    n: usize,
    rows: usize,
    ncols: usize,
    buf: Vec<u8>,
    skew: usize,
    ngroups: usize,
    gb: usize,
    act: Vec<u8>,
    ab: usize,
    out: Vec<f32>,
}

impl PackedCase {
    fn new(backend: Backend, ty: GgmlType, n: usize, rows: usize, ncols: usize) -> Self {
        let stored = random_matrix(ty, n, rows);
        let rows = rows.div_ceil(GROUP_ROWS) * GROUP_ROWS;
        let ngroups = rows / GROUP_ROWS;
        let rb = stored.len() / rows;
        let gb = super::group_bytes(ty, n).expect("packed layout for this type");
        // Packed weights on a 64-byte boundary, as the engine should place them (see the
        // type modules: the code loads are then cache-line friendly).
        let mut buf = vec![0u8; ngroups * gb + 64];
        let skew = buf.as_ptr().align_offset(64);
        let w = &mut buf[skew..skew + ngroups * gb];
        for (g, dst) in w.chunks_exact_mut(gb).enumerate() {
            let src = &stored[g * GROUP_ROWS * rb..(g + 1) * GROUP_ROWS * rb];
            super::pack_group(ty, n, src, rb, dst).expect("lengths");
        }
        drop(stored);
        let x = random_activations(n, ncols);
        let ab = super::activation_row_bytes(ty, n).expect("aligned n");
        let mut act = vec![0u8; ncols * ab];
        for (xr, ar) in x.chunks_exact(n).zip(act.chunks_exact_mut(ab)) {
            super::quantize_activation(backend, ty, xr, ar).expect("lengths");
        }
        let out = vec![0.0f32; ncols * rows];
        Self {
            backend,
            ty,
            n,
            rows,
            ncols,
            buf,
            skew,
            ngroups,
            gb,
            act,
            ab,
            out,
        }
    }

    /// The best of `reps` repetitions on `threads` threads.
    fn run(&mut self, threads: usize, reps: usize) -> Throughput {
        let (backend, ty, n, rows, ncols) = (self.backend, self.ty, self.n, self.rows, self.ncols);
        let (gb, ab) = (self.gb, self.ab);
        let w = &self.buf[self.skew..self.skew + self.ngroups * gb];
        let act = &self.act;
        let op = OutPtr(self.out.as_mut_ptr());
        let secs = measure(self.ngroups, threads, reps, op, |g0, ng, o| {
            // SAFETY: groups g0..g0+ng write rows g0*8.. of every column, disjoint between
            // threads and inside `out` (ncols × rows, stride rows).
            unsafe {
                super::gemm_to_ptr(
                    backend,
                    ty,
                    n,
                    &w[g0 * gb..(g0 + ng) * gb],
                    ng,
                    act,
                    ab,
                    ncols,
                    o.0.add(g0 * GROUP_ROWS),
                    rows,
                )
                .expect("lengths");
            }
        });
        throughput(w.len(), rows, n, ncols, secs)
    }
}

/// The unpacked `dot::gemm` on the same kind of matrix and activations as
/// [`bench_packed_with`], for comparison.
///
/// # Panics
/// If `dot` has no kernel for `ty` or `n` is not a whole number of its blocks.
pub fn bench_unpacked_with(
    backend: Backend,
    ty: GgmlType,
    n: usize,
    rows: usize,
    ncols: usize,
    threads: usize,
    reps: usize,
) -> Throughput {
    let w = random_matrix(ty, n, rows);
    let rows = rows.div_ceil(GROUP_ROWS) * GROUP_ROWS;
    let rb = w.len() / rows;
    let act_ty = dot::activation_type(ty).expect("dot kernel for this type");
    let x = random_activations(n, ncols);
    let ab = dot::activation_row_bytes(ty, n).expect("aligned n");
    let mut act = vec![0u8; ncols * ab];
    dot::quantize_activation(backend, act_ty, &x, &mut act).expect("lengths");
    let mut out = vec![0.0f32; ncols * rows];
    let op = OutPtr(out.as_mut_ptr());
    let secs = measure(rows, threads, reps, op, |r0, nr, o| {
        // SAFETY: rows r0..r0+nr of every column, disjoint between threads, inside `out`.
        unsafe {
            dot::gemm_to_ptr(
                backend,
                ty,
                n,
                &w[r0 * rb..(r0 + nr) * rb],
                rb,
                nr,
                &act,
                ab,
                ncols,
                o.0.add(r0),
                rows,
            )
            .expect("lengths");
        }
    });
    throughput(w.len(), rows, n, ncols, secs)
}
