//! Packed Q4_K and Q6_K layouts and kernels against the unpacked reference.
//!
//! - pack → unpack is the identity on arbitrary stored bytes (every bit pattern of a block
//!   is a valid block) and on quantized rows;
//! - `packed::gemm` on every available backend equals the unpacked scalar `dot::gemm` on the
//!   same weight rows and the same Q8_K activation bytes within `1e-5·Σ|w·a| + 1e-6` (the
//!   integer sums are identical, only f32 rounding differs);
//! - length errors through the public API are `Err`s.
//!
//! `kquant_throughput` (ignored) times the packed kernels against the unpacked ones.

use rgemma_quant::dot::{self, Backend};
use rgemma_quant::packed::{self, GROUP_ROWS};
use rgemma_quant::{dequantize_row, quantize_row, GgmlType};

mod common;
use common::Rng;

const TYPES: [GgmlType; 2] = [GgmlType::Q4K, GgmlType::Q6K];

fn row_bytes(ty: GgmlType, n: usize) -> usize {
    ty.row_size(n as u64).unwrap() as usize
}

/// `rows` quantized random rows of `n` values, with an all-zero block in row 0 and an
/// all-zero row 5 (when present).
fn weights(ty: GgmlType, n: usize, rows: usize, rng: &mut Rng) -> Vec<u8> {
    let mut wf = rng.vec(rows * n);
    wf[256..512.min(n)].iter_mut().for_each(|v| *v = 0.0);
    wf[..256].iter_mut().for_each(|v| *v *= 0.01);
    if rows > 5 {
        wf[5 * n..6 * n].iter_mut().for_each(|v| *v = 0.0);
    }
    let mut q = vec![0u8; rows * row_bytes(ty, n)];
    quantize_row(ty, &wf, &mut q).unwrap();
    q
}

fn pack(ty: GgmlType, n: usize, rows: &[u8]) -> Vec<u8> {
    let rb = row_bytes(ty, n);
    let gb = packed::group_bytes(ty, n).unwrap();
    let ngroups = rows.len() / rb / GROUP_ROWS;
    let mut out = vec![0u8; ngroups * gb];
    for g in 0..ngroups {
        let src = &rows[g * GROUP_ROWS * rb..(g + 1) * GROUP_ROWS * rb];
        packed::pack_group(ty, n, src, rb, &mut out[g * gb..(g + 1) * gb]).unwrap();
    }
    out
}

fn ready(ty: GgmlType) -> bool {
    let ok = packed::supports(ty);
    if !ok {
        eprintln!("{ty}: no packed layout yet, skipped");
    }
    ok
}

#[test]
fn pack_unpack_is_the_identity() {
    let mut rng = Rng(0x5EED_0001);
    for ty in TYPES.into_iter().filter(|&t| ready(t)) {
        for n in [256usize, 512, 2560] {
            let rb = row_bytes(ty, n);
            let gb = packed::group_bytes(ty, n).unwrap();
            assert_eq!(gb, GROUP_ROWS * rb, "{ty}: packed size = stored size");
            // Arbitrary bytes (any bit pattern is a block), with a source row stride
            // larger than the row, and quantized rows.
            let stride = rb + 3;
            let random: Vec<u8> = (0..GROUP_ROWS * stride).map(|_| rng.bits() as u8).collect();
            let quantized = weights(ty, n, GROUP_ROWS, &mut rng);
            for (src, stride) in [(&random, stride), (&quantized, rb)] {
                let mut group = vec![0xAAu8; gb];
                packed::pack_group(ty, n, src, stride, &mut group).unwrap();
                for r in 0..GROUP_ROWS {
                    let mut row = vec![0x55u8; rb];
                    packed::unpack_row(ty, n, &group, r, &mut row).unwrap();
                    assert_eq!(row, src[r * stride..r * stride + rb], "{ty} n={n} row {r}");
                }
            }
        }
    }
}

#[test]
fn packed_activation_is_the_q8k_activation() {
    let mut rng = Rng(0x5EED_0002);
    for ty in TYPES.into_iter().filter(|&t| ready(t)) {
        for backend in Backend::all_available() {
            let n = 2560;
            let x = rng.vec(n);
            let bytes = packed::activation_row_bytes(ty, n).unwrap();
            assert_eq!(bytes, dot::activation_row_bytes(ty, n).unwrap());
            let mut got = vec![0u8; bytes];
            packed::quantize_activation(backend, ty, &x, &mut got).unwrap();
            let mut want = vec![0u8; bytes];
            dot::quantize_activation(backend, GgmlType::Q8K, &x, &mut want).unwrap();
            assert_eq!(got, want, "{ty} {backend:?}");
        }
    }
}

/// Σ|w·a| of one weight row and one activation row (the error scale).
fn abs_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f64 {
    let (mut wf, mut af) = (vec![0.0f32; n], vec![0.0f32; n]);
    dequantize_row(ty, w, &mut wf).unwrap();
    dequantize_row(GgmlType::Q8K, a, &mut af).unwrap();
    wf.iter()
        .zip(&af)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum()
}

#[test]
fn packed_gemm_matches_the_unpacked_kernels() {
    let mut rng = Rng(0x5EED_0003);
    let backends = Backend::all_available();
    eprintln!("backends under test: {backends:?}");
    for ty in TYPES.into_iter().filter(|&t| ready(t)) {
        // n = 7680 takes the SIMD driver three passes over the reduction (10 super-blocks
        // each), n = 5888 (23 super-blocks) passes of 8, 8 and an odd 7; 24 groups of
        // n = 2560 span two of its L2 blocks of groups (256 KiB of weights).
        let shapes = [256usize, 768, 2560]
            .into_iter()
            .flat_map(|n| [(n, 1usize), (n, 3)])
            .map(|(n, g)| (n, g, vec![1usize, 2, 3, 4, 5, 6, 7, 8, 9, 17]))
            .chain([
                (7680, 2, vec![33]),
                (5888, 1, vec![1, 2, 9]),
                (2560, 24, vec![9]),
            ]);
        for (n, ngroups, cols) in shapes {
            let rows = ngroups * GROUP_ROWS;
            let rb = row_bytes(ty, n);
            let wq = weights(ty, n, rows, &mut rng);
            let wp = pack(ty, n, &wq);
            for ncols in cols {
                let ab = packed::activation_row_bytes(ty, n).unwrap();
                // Activation rows ab + 8 bytes apart; column 1 has an all-zero block.
                let astride = ab + 8;
                let mut act = vec![0u8; ncols * astride];
                for c in 0..ncols {
                    let mut x = rng.vec(n);
                    if c == 1 {
                        x[..256].iter_mut().for_each(|v| *v = 0.0);
                    }
                    let dst = &mut act[c * astride..c * astride + ab];
                    packed::quantize_activation(Backend::Scalar, ty, &x, dst).unwrap();
                }
                let ostride = rows + 3;
                let mut want = vec![f32::NAN; ncols * ostride];
                dot::gemm(
                    Backend::Scalar,
                    ty,
                    n,
                    &wq,
                    rb,
                    rows,
                    &act,
                    astride,
                    ncols,
                    &mut want,
                    ostride,
                )
                .unwrap();
                // On AVX-512 both kernels: one group per call, or two from 4 columns on
                // (`packed::set_two_group_kernels`; above 16 columns always two).
                let runs = backends.iter().flat_map(|&b| [(b, false), (b, true)]);
                for (b, two_groups) in runs {
                    packed::set_two_group_kernels(Some(two_groups));
                    let mut got = vec![f32::NAN; ncols * ostride];
                    packed::gemm(
                        b, ty, n, &wp, ngroups, &act, astride, ncols, &mut got, ostride,
                    )
                    .unwrap();
                    for c in 0..ncols {
                        let a = &act[c * astride..c * astride + ab];
                        for r in 0..rows {
                            let (g, w) = (got[c * ostride + r], want[c * ostride + r]);
                            let tol = 1e-5 * abs_dot(ty, n, &wq[r * rb..(r + 1) * rb], a) + 1e-6;
                            assert!(
                                ((g - w) as f64).abs() <= tol,
                                "{ty} {b:?} (two groups: {two_groups}) n={n} groups={ngroups} \
                                 cols={ncols} r={r} c={c}: {g} vs {w} (tol {tol})"
                            );
                        }
                        for pad in rows..ostride {
                            if c * ostride + pad < got.len() {
                                assert!(got[c * ostride + pad].is_nan(), "{ty} {b:?} pad");
                            }
                        }
                    }
                }
            }
        }
    }
    packed::set_two_group_kernels(None);
}

#[test]
fn bad_lengths_are_errors() {
    for ty in TYPES.into_iter().filter(|&t| ready(t)) {
        let n = 512;
        let rb = row_bytes(ty, n);
        let gb = packed::group_bytes(ty, n).unwrap();
        let ab = packed::activation_row_bytes(ty, n).unwrap();
        assert!(packed::group_bytes(ty, 100).is_err());
        assert!(packed::group_bytes(ty, 0).is_err());
        let src = vec![0u8; GROUP_ROWS * rb];
        let mut dst = vec![0u8; gb];
        assert!(packed::pack_group(ty, n, &src, rb, &mut dst[..gb - 1]).is_err());
        assert!(packed::pack_group(ty, n, &src[..src.len() - 1], rb, &mut dst).is_err());
        assert!(packed::pack_group(ty, n, &src, rb - 1, &mut dst).is_err());
        packed::pack_group(ty, n, &src, rb, &mut dst).unwrap();
        let mut row = vec![0u8; rb];
        assert!(packed::unpack_row(ty, n, &dst, GROUP_ROWS, &mut row).is_err());
        assert!(packed::unpack_row(ty, n, &dst[..gb - 1], 0, &mut row).is_err());
        assert!(packed::unpack_row(ty, n, &dst, 0, &mut row[..rb - 1]).is_err());
        let x = vec![0.5f32; n];
        let mut a = vec![0u8; ab];
        assert!(packed::quantize_activation(Backend::Scalar, ty, &x, &mut a[..ab - 1]).is_err());
        assert!(packed::quantize_activation(Backend::Scalar, ty, &x[..n - 1], &mut a).is_err());
        packed::quantize_activation(Backend::Scalar, ty, &x, &mut a).unwrap();
        let mut out = vec![0.0f32; 2 * GROUP_ROWS];
        for b in Backend::all_available() {
            let g = |w: &[u8], a: &[u8], ac: usize, out: &mut [f32], os: usize| {
                packed::gemm(b, ty, n, w, 1, a, ac.max(ab), 2, out, os)
            };
            let a2 = [a.clone(), a.clone()].concat();
            assert!(g(&dst, &a2, ab, &mut out, GROUP_ROWS).is_ok());
            assert!(g(&dst[..gb - 1], &a2, ab, &mut out, GROUP_ROWS).is_err());
            assert!(g(&dst, &a2[..2 * ab - 1], ab, &mut out, GROUP_ROWS).is_err());
            assert!(g(&dst, &a2, ab, &mut out[..2 * GROUP_ROWS - 1], GROUP_ROWS).is_err());
            assert!(g(&dst, &a2, ab, &mut out, GROUP_ROWS - 1).is_err());
            assert!(packed::gemm(b, ty, n, &dst, 1, &a2, ab - 1, 2, &mut out, 8).is_err());
        }
    }
}

/// Weight bytes at their extremes (random bits, all-ones codes, the largest scales) against
/// activations whose codes are all ±127: the i16 and i32 intermediate sums of every
/// backend must not overflow. Block scales are set to 1.0 so that no value is NaN.
#[test]
fn extreme_codes_do_not_overflow() {
    let mut rng = Rng(0x5EED_0004);
    let n = 512;
    const COLS: usize = 5;
    for ty in TYPES.into_iter().filter(|&t| ready(t)) {
        let rb = row_bytes(ty, n);
        let bb = ty.type_size();
        let mut wq: Vec<u8> = (0..GROUP_ROWS * rb).map(|_| rng.bits() as u8).collect();
        for (i, blk) in wq.chunks_exact_mut(bb).enumerate() {
            let one = 0x3C00u16.to_le_bytes();
            if ty == GgmlType::Q6K {
                if i % 2 == 0 {
                    blk[..192].fill(0xFF); // q = 63
                    blk[192..208].fill(0x80); // scale -128
                }
                blk[208..210].copy_from_slice(&one);
            } else {
                if i % 2 == 0 {
                    blk[4..144].fill(0xFF); // scales and mins 63, q = 15
                }
                blk[0..2].copy_from_slice(&one);
                blk[2..4].copy_from_slice(&one);
            }
        }
        let wp = pack(ty, n, &wq);
        let ab = packed::activation_row_bytes(ty, n).unwrap();
        let mut act = vec![0u8; COLS * ab];
        // Five columns: the i8mm kernels take calls of 4 or more.
        let xs = [
            vec![1.0f32; n],
            vec![-1.0f32; n],
            rng.vec(n),
            vec![-1.0f32; n],
            vec![1.0f32; n],
        ];
        for (x, dst) in xs.iter().zip(act.chunks_exact_mut(ab)) {
            packed::quantize_activation(Backend::Scalar, ty, x, dst).unwrap();
        }
        let mut want = vec![0.0f32; COLS * GROUP_ROWS];
        dot::gemm(
            Backend::Scalar,
            ty,
            n,
            &wq,
            rb,
            GROUP_ROWS,
            &act,
            ab,
            COLS,
            &mut want,
            GROUP_ROWS,
        )
        .unwrap();
        for b in Backend::all_available() {
            let mut got = vec![0.0f32; COLS * GROUP_ROWS];
            packed::gemm(b, ty, n, &wp, 1, &act, ab, COLS, &mut got, GROUP_ROWS).unwrap();
            for c in 0..COLS {
                for r in 0..GROUP_ROWS {
                    let a = &act[c * ab..(c + 1) * ab];
                    let tol = 1e-5 * abs_dot(ty, n, &wq[r * rb..(r + 1) * rb], a) + 1e-6;
                    let (g, w) = (got[c * GROUP_ROWS + r], want[c * GROUP_ROWS + r]);
                    assert!(
                        ((g - w) as f64).abs() <= tol,
                        "{ty} {b:?} r={r} c={c}: {g} vs {w} (tol {tol})"
                    );
                }
            }
        }
    }
}

/// Packing speed (load time): `cargo test --release -p rgemma-quant --test packed_kquants
/// -- --ignored --nocapture pack_speed`.
#[test]
#[ignore]
fn pack_speed() {
    let mut rng = Rng(0x5EED_0005);
    let n = 2560;
    for ty in TYPES.into_iter().filter(|&t| ready(t)) {
        let rows = 8 * 1024;
        let wq = weights(ty, n, rows, &mut rng);
        let t = std::time::Instant::now();
        let wp = pack(ty, n, &wq);
        let secs = t.elapsed().as_secs_f64();
        eprintln!("{ty} pack: {:.2} GB/s", wq.len() as f64 / secs / 1e9);
        let rb = row_bytes(ty, n);
        let gb = packed::group_bytes(ty, n).unwrap();
        let mut row = vec![0u8; rb];
        let t = std::time::Instant::now();
        for g in 0..rows / GROUP_ROWS {
            packed::unpack_row(ty, n, &wp[g * gb..(g + 1) * gb], g % 8, &mut row).unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "{ty} unpack_row: {:.2} µs per row",
            secs * 1e6 / (rows / GROUP_ROWS) as f64
        );
    }
}

/// In-cache decode speed against the alignment of the packed matrix (`-- --ignored
/// --nocapture alignment_speed`): 64 rows × 2560, one column, one thread.
#[test]
#[ignore]
fn alignment_speed() {
    let mut rng = Rng(0x5EED_0006);
    let (n, rows) = (2560, 64);
    let backend = Backend::best_available();
    for ty in TYPES.into_iter().filter(|&t| ready(t)) {
        let wp = pack(ty, n, &weights(ty, n, rows, &mut rng));
        let ab = packed::activation_row_bytes(ty, n).unwrap();
        let mut act = vec![0u8; ab];
        packed::quantize_activation(backend, ty, &rng.vec(n), &mut act).unwrap();
        let mut buf = vec![0u8; wp.len() + 128];
        let base = buf.as_ptr().align_offset(64);
        for skew in [0usize, 16, 32, 48] {
            let w = &mut buf[base + skew..base + skew + wp.len()];
            w.copy_from_slice(&wp);
            let mut out = vec![0.0f32; rows];
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                for _ in 0..2000 {
                    packed::gemm(backend, ty, n, w, rows / 8, &act, ab, 1, &mut out, rows).unwrap();
                }
                best = best.min(t.elapsed().as_secs_f64() / 2000.0);
            }
            eprintln!("{ty} skew {skew}: {:.1} GB/s", wp.len() as f64 / best / 1e9);
        }
    }
}

/// Prompt-path speed, one thread (`-- --ignored --nocapture pp_speed`): 512 rows × 2560
/// against 512 columns, packed and unpacked (best backend), alternated to share the noise.
#[test]
#[ignore]
fn pp_speed() {
    let mut rng = Rng(0x5EED_0007);
    let (n, rows, ncols) = (2560, 512, 512);
    let backend = Backend::best_available();
    for ty in TYPES.into_iter().filter(|&t| ready(t)) {
        let (rb, wq) = (row_bytes(ty, n), weights(ty, n, rows, &mut rng));
        let wp = pack(ty, n, &wq);
        let ab = packed::activation_row_bytes(ty, n).unwrap();
        let mut act = vec![0u8; ncols * ab];
        for dst in act.chunks_exact_mut(ab) {
            packed::quantize_activation(backend, ty, &rng.vec(n), dst).unwrap();
        }
        let mut out = vec![0.0f32; ncols * rows];
        let mut best = [f64::INFINITY; 2];
        for _ in 0..5 {
            let t = std::time::Instant::now();
            dot::gemm(
                backend, ty, n, &wq, rb, rows, &act, ab, ncols, &mut out, rows,
            )
            .unwrap();
            best[0] = best[0].min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            packed::gemm(
                backend,
                ty,
                n,
                &wp,
                rows / 8,
                &act,
                ab,
                ncols,
                &mut out,
                rows,
            )
            .unwrap();
            best[1] = best[1].min(t.elapsed().as_secs_f64());
        }
        let gops = |s: f64| 2.0 * (rows * n * ncols) as f64 / s / 1e9;
        eprintln!(
            "{ty} pp Gop/s: unpacked {:.0}, packed {:.0}",
            gops(best[0]),
            gops(best[1])
        );
    }
}

/// Decode from DRAM (`-- --ignored --nocapture dram_speed`): a 1 GiB matrix × one column
/// on 2 threads, packed and unpacked alternated 10 times (best of each), in GB/s of
/// weights. The matrix is one group replicated, so building it is cheap.
#[test]
#[ignore]
fn dram_speed() {
    let mut rng = Rng(0x5EED_0008);
    let n = 2560;
    let backend = Backend::best_available();
    for ty in TYPES.into_iter().filter(|&t| ready(t)) {
        let rb = row_bytes(ty, n);
        let ngroups = (1usize << 30) / (GROUP_ROWS * rb) / 2 * 2;
        let one = weights(ty, n, GROUP_ROWS, &mut rng);
        let wq = one.repeat(ngroups);
        let wp = pack(ty, n, &one).repeat(ngroups);
        let ab = packed::activation_row_bytes(ty, n).unwrap();
        let mut act = vec![0u8; ab];
        packed::quantize_activation(backend, ty, &rng.vec(n), &mut act).unwrap();
        let rows = ngroups * GROUP_ROWS;
        let mut out = vec![0.0f32; rows];
        let half = rows / 2;
        let mut best = [f64::INFINITY; 2];
        for _ in 0..10 {
            for (k, slot) in best.iter_mut().enumerate() {
                let (o0, o1) = out.split_at_mut(half);
                let t = std::time::Instant::now();
                std::thread::scope(|s| {
                    for (i, o) in [o0, o1].into_iter().enumerate() {
                        let (wq, wp, act) = (&wq, &wp, &act);
                        s.spawn(move || {
                            if k == 0 {
                                let w = &wq[i * half * rb..(i + 1) * half * rb];
                                dot::gemm(backend, ty, n, w, rb, half, act, ab, 1, o, half)
                                    .unwrap();
                            } else {
                                let gb = wp.len() / ngroups;
                                let g = ngroups / 2;
                                let w = &wp[i * g * gb..(i + 1) * g * gb];
                                packed::gemm(backend, ty, n, w, g, act, ab, 1, o, half).unwrap();
                            }
                        });
                    }
                });
                *slot = slot.min(t.elapsed().as_secs_f64());
            }
        }
        let gbps = |s: f64| wq.len() as f64 / s / 1e9;
        eprintln!(
            "{ty} DRAM 2 threads GB/s: unpacked {:.1}, packed {:.1}",
            gbps(best[0]),
            gbps(best[1])
        );
    }
}
