//! Every dot-product kernel against an obviously correct reference, on random data.
//!
//! Reference: both operands are decoded with `dequantize_row` (the bit-exact scalar decoders
//! tested against ggml in `bit_exact.rs`) and multiplied in f64. The kernels compute the same
//! products exactly in integers per block and only round when scaling and summing in f32,
//! so they must agree within `1e-5 · Σ|w·a|` (f32 rounding over at most a few thousand
//! terms is far below that). The one documented exception is Q8_1's stored block sum
//! `s = f16(d·Σq)`, which ggml's Q4_1/Q5_1 kernels use for the min term: its f16 rounding
//! adds up to `|m|·|s|·2⁻¹⁰` per block to the allowed error.
//!
//! Each SIMD backend is additionally compared with the scalar backend on identical inputs.

use rgemma_quant::dot::{self, Backend};
use rgemma_quant::{dequantize_row, quantize_row, GgmlType};

mod common;
use common::Rng;

const WEIGHT_TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Row lengths to try for a type: multiples of its block (and of the activation block).
fn lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        1 => vec![1, 7, 8, 15, 16, 33, 256, 2560],
        32 => vec![32, 64, 96, 256, 2560],
        _ => vec![256, 512, 2560],
    }
}

fn dequant(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f64> {
    let mut out = vec![0.0f32; n];
    dequantize_row(ty, bytes, &mut out).unwrap();
    out.into_iter().map(f64::from).collect()
}

/// The allowed difference for one output, from the decoded operands.
fn tolerance(ty: GgmlType, w: &[f64], a: &[f64], w_bytes: &[u8], a_bytes: &[u8]) -> f64 {
    let abs_sum: f64 = w.iter().zip(a).map(|(x, y)| (x * y).abs()).sum();
    let mut tol = 1e-5 * abs_sum + 1e-6;
    if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
        let (wb, moff) = (ty.type_size(), 2);
        for (wblk, ablk) in w_bytes.chunks_exact(wb).zip(a_bytes.chunks_exact(36)) {
            let m = rgemma_quant::f16_to_f32(u16::from_le_bytes([wblk[moff], wblk[moff + 1]]));
            let s = rgemma_quant::f16_to_f32(u16::from_le_bytes([ablk[2], ablk[3]]));
            tol += (m as f64 * s as f64).abs() * 2f64.powi(-10);
        }
    }
    tol
}

#[test]
fn every_kernel_matches_the_dequantized_reference() {
    let mut rng = Rng(0x1234_5678);
    let backends = Backend::all_available();
    eprintln!("backends under test: {backends:?}");
    for ty in WEIGHT_TYPES {
        let act_ty = dot::activation_type(ty).unwrap();
        for n in lengths(ty) {
            for (nrows, ncols) in [(1, 1), (3, 5), (5, 4), (2, 7), (1, 3)] {
                let mut wf = rng.vec(nrows * n);
                // An all-zero block in row 0 and an all-zero last row.
                let zb = ty.block_size().max(32).min(n);
                wf[..zb].iter_mut().for_each(|v| *v = 0.0);
                if nrows > 1 {
                    wf[(nrows - 1) * n..].iter_mut().for_each(|v| *v = 0.0);
                }
                let mut af = rng.vec(ncols * n);
                if ncols > 1 {
                    // An all-zero activation block.
                    let ab = act_ty.block_size().max(32).min(n);
                    af[n..n + ab].iter_mut().for_each(|v| *v = 0.0);
                }
                let w_row = ty.row_size(n as u64).unwrap() as usize;
                let a_row = dot::activation_row_bytes(ty, n).unwrap();
                let mut wq = vec![0u8; nrows * w_row];
                quantize_row(ty, &wf, &mut wq).unwrap();
                let mut aq = vec![0u8; ncols * a_row];
                dot::quantize_activation(Backend::Scalar, act_ty, &af, &mut aq).unwrap();

                let mut outs = Vec::new();
                for &b in &backends {
                    // Output stride larger than nrows to check strided stores.
                    let stride = nrows + 2;
                    let mut out = vec![f32::NAN; ncols * stride];
                    dot::gemm(
                        b, ty, n, &wq, w_row, nrows, &aq, a_row, ncols, &mut out, stride,
                    )
                    .unwrap();
                    outs.push((b, out, stride));
                }
                for r in 0..nrows {
                    let wb = &wq[r * w_row..(r + 1) * w_row];
                    let w = dequant(ty, wb, n);
                    for c in 0..ncols {
                        let ab = &aq[c * a_row..(c + 1) * a_row];
                        let a = dequant(act_ty, ab, n);
                        let want: f64 = w.iter().zip(&a).map(|(x, y)| x * y).sum();
                        let tol = tolerance(ty, &w, &a, wb, ab);
                        let scalar = outs[0].1[c * outs[0].2 + r] as f64;
                        for (b, out, stride) in &outs {
                            let got = out[c * stride + r] as f64;
                            assert!(
                                (got - want).abs() <= tol,
                                "{ty} {b:?} n={n} r={r} c={c}: got {got} want {want} tol {tol}"
                            );
                            // SIMD vs scalar: same block maths, only f32 summation order.
                            let close = 1e-5
                                * w.iter().zip(&a).map(|(x, y)| (x * y).abs()).sum::<f64>()
                                + 1e-6;
                            assert!(
                                (got - scalar).abs() <= close,
                                "{ty} {b:?} vs scalar n={n} r={r} c={c}: {got} vs {scalar}"
                            );
                        }
                        // Untouched padding between rows stays NaN.
                        for (_, out, stride) in &outs {
                            for pad in nrows..*stride {
                                if c * stride + pad < out.len() {
                                    assert!(out[c * stride + pad].is_nan());
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// K-quant weight bytes at their extremes against activations whose Q8_K codes are all
/// +127 or all −127 (and random ones): random bits with 1.0 as every f16 super-block
/// scale (so that no value is NaN), and every other super-block forced to the largest
/// codes and scales (all bits set: Q2_K scale and min 15 with code 3; Q3_K scale +31 with
/// code +3; Q4_K/Q5_K 63 with 15/31; Q6_K scale −1 with code +31) or, for Q3_K and Q6_K, to
/// the most negative scale and code (Q3_K −32 × −4, Q6_K −128 × −32). The i16/i32
/// intermediate sums of every backend must not overflow: same checks and tolerances as
/// `every_kernel_matches_the_dequantized_reference`.
#[test]
fn extreme_kquant_codes_do_not_overflow() {
    let mut rng = Rng(0x5EED_0009);
    let n = 1024;
    let one = 0x3C00u16.to_le_bytes();
    for ty in [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        let (rows, ncols) = (3, 3);
        let w_row = ty.row_size(n as u64).unwrap() as usize;
        let mut wq = rng.bytes(rows * w_row);
        for (i, blk) in wq.chunks_exact_mut(ty.type_size()).enumerate() {
            // (offsets of the f16 scales, bytes of codes and sub-block scales)
            let (f16s, body): (&[usize], std::ops::Range<usize>) = match ty {
                GgmlType::Q2K => (&[80, 82], 0..80),
                GgmlType::Q3K => (&[108], 0..108),
                GgmlType::Q6K => (&[208], 0..208),
                _ => (&[0, 2], 4..blk.len()),
            };
            match i % 4 {
                0 => blk[body].fill(0xFF),
                // Q3_K: hmask and low bits 0 (code −4), scale codes 0 (−32); Q6_K: codes 0
                // (−32), scales −128.
                2 if ty == GgmlType::Q3K => blk[body].fill(0),
                2 if ty == GgmlType::Q6K => {
                    blk[..192].fill(0);
                    blk[192..208].fill(0x80);
                }
                _ => {}
            }
            for &o in f16s {
                blk[o..o + 2].copy_from_slice(&one);
            }
        }
        let a_row = dot::activation_row_bytes(ty, n).unwrap();
        let mut aq = vec![0u8; ncols * a_row];
        let xs = [vec![1.0f32; n], vec![-1.0f32; n], rng.vec(n)];
        for (x, dst) in xs.iter().zip(aq.chunks_exact_mut(a_row)) {
            dot::quantize_activation(Backend::Scalar, GgmlType::Q8K, x, dst).unwrap();
        }
        let mut scalar = vec![0.0f32; ncols * rows];
        dot::gemm(
            Backend::Scalar,
            ty,
            n,
            &wq,
            w_row,
            rows,
            &aq,
            a_row,
            ncols,
            &mut scalar,
            rows,
        )
        .unwrap();
        for b in Backend::all_available() {
            let mut out = vec![f32::NAN; ncols * rows];
            dot::gemm(
                b, ty, n, &wq, w_row, rows, &aq, a_row, ncols, &mut out, rows,
            )
            .unwrap();
            for r in 0..rows {
                let wb = &wq[r * w_row..(r + 1) * w_row];
                let w = dequant(ty, wb, n);
                for c in 0..ncols {
                    let ab = &aq[c * a_row..(c + 1) * a_row];
                    let a = dequant(GgmlType::Q8K, ab, n);
                    let want: f64 = w.iter().zip(&a).map(|(x, y)| x * y).sum();
                    let tol = tolerance(ty, &w, &a, wb, ab);
                    let (got, sc) = (out[c * rows + r] as f64, scalar[c * rows + r] as f64);
                    assert!(
                        (got - want).abs() <= tol,
                        "{ty} {b:?} r={r} c={c}: got {got} want {want} tol {tol}"
                    );
                    assert!(
                        (got - sc).abs() <= tol,
                        "{ty} {b:?} vs scalar r={r} c={c}: {got} vs {sc}"
                    );
                }
            }
        }
    }
}

#[test]
fn activation_quantizers_match_the_reference() {
    let mut rng = Rng(0xBEEF);
    for backend in Backend::all_available() {
        for act in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8K] {
            for n in [256usize, 512, 2560] {
                let mut x = rng.vec(n);
                // A zero block, a block with a single value, exact .5 multiples.
                x[..256.min(n) / 8].iter_mut().for_each(|v| *v = 0.0);
                x[40..64].iter_mut().for_each(|v| *v = 0.0);
                for (i, v) in x[256 - 32..256].iter_mut().enumerate() {
                    *v = (i as f32 - 16.0) * 0.5;
                }
                let bytes = n / act.block_size() * act.type_size();
                let mut want = vec![0u8; bytes];
                quantize_row(act, &x, &mut want).unwrap();
                let mut got = vec![0u8; bytes];
                dot::quantize_activation(backend, act, &x, &mut got).unwrap();
                if act == GgmlType::Q8K {
                    // Same scale; codes may differ by one at exact rounding ties; the block
                    // sums are those of the codes written.
                    for (g, w) in got.chunks_exact(292).zip(want.chunks_exact(292)) {
                        assert_eq!(g[..4], w[..4], "{backend:?} Q8_K d");
                        for i in 0..256 {
                            let (a, b) = (g[4 + i] as i8 as i32, w[4 + i] as i8 as i32);
                            assert!((a - b).abs() <= 1, "{backend:?} Q8_K code {i}: {a} vs {b}");
                        }
                        for j in 0..16 {
                            let s: i32 = (0..16).map(|k| g[4 + 16 * j + k] as i8 as i32).sum();
                            let stored = i16::from_le_bytes([g[260 + 2 * j], g[261 + 2 * j]]);
                            assert_eq!(s, stored as i32, "{backend:?} Q8_K bsum {j}");
                        }
                    }
                } else {
                    assert_eq!(got, want, "{backend:?} {act} n={n}");
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let w = vec![0u8; 18];
    let a = vec![0u8; 34];
    let mut out = [0.0f32; 1];
    // n not a multiple of the block.
    assert!(dot::gemm(
        Backend::Scalar,
        GgmlType::Q4_0,
        16,
        &w,
        18,
        1,
        &a,
        34,
        1,
        &mut out,
        1
    )
    .is_err());
    // Weights too short.
    assert!(dot::gemm(
        Backend::Scalar,
        GgmlType::Q4_0,
        64,
        &w,
        36,
        1,
        &a,
        68,
        1,
        &mut out,
        1
    )
    .is_err());
    // No kernel for the type.
    assert!(dot::activation_type(GgmlType::Iq2Xxs).is_none());
    assert!(dot::gemm(
        Backend::Scalar,
        GgmlType::Iq2Xxs,
        256,
        &w,
        66,
        1,
        &a,
        292,
        1,
        &mut out,
        1
    )
    .is_err());
    // Activation buffer of the wrong size.
    let mut small = vec![0u8; 10];
    assert!(
        dot::quantize_activation(Backend::Scalar, GgmlType::Q8_0, &[0.0; 32], &mut small).is_err()
    );
    // Works when the shapes fit.
    assert!(dot::gemm(
        Backend::Scalar,
        GgmlType::Q4_0,
        32,
        &w,
        18,
        1,
        &a,
        34,
        1,
        &mut out,
        1
    )
    .is_ok());
    assert_eq!(out[0], 0.0);
}

#[test]
fn f32_helpers_match_f64() {
    let mut rng = Rng(77);
    for n in [0usize, 1, 7, 8, 15, 16, 17, 256, 1000] {
        let a = rng.vec(n);
        let b = rng.vec(n);
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let abs: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum();
        let got = dot::f32_dot(&a, &b) as f64;
        assert!(
            (got - want).abs() <= 1e-6 * abs + 1e-7,
            "n={n}: {got} vs {want}"
        );
        let mut y = rng.vec(n);
        let y0 = y.clone();
        dot::f32_axpy(&mut y, 0.75, &a);
        for i in 0..n {
            assert!((y[i] - (y0[i] + 0.75 * a[i])).abs() <= 1e-6 * (y0[i].abs() + a[i].abs()));
        }
    }
}

/// `f32_dots` (several rows against one shared vector) equals one f64 dot per row on every
/// backend, for row counts around the 8- and 16-row register blocks and lengths around the
/// 8- and 16-float chunks.
#[test]
fn f32_dots_match_per_row_dots() {
    check_dots(0x5eed, |x| x, dot::f32_dots_with);
}

/// `f16_dots` (rows against one shared f16 row, widened inside the x86 kernels) equals one
/// f64 dot per row on every backend, for the row counts and lengths of the f32 test.
#[test]
fn f16_dots_match_per_row_dots() {
    check_dots(
        0xf16,
        |x| x.into_iter().map(half::f16::from_f32).collect::<Vec<_>>(),
        |backend, a, stride, x: &[half::f16], out| {
            let mut tmp = vec![f32::NAN; x.len()];
            dot::f16_dots_with(backend, a, stride, x, &mut tmp, out)
        },
    );
}

/// Runs `dots` (rows of `a` against one shared row of element type `X`, made from f32 by
/// `to_row`) for every backend, row count and length of the score tests, against f64 dots.
fn check_dots<X: Copy + Into<f64>>(
    seed: u32,
    to_row: impl Fn(Vec<f32>) -> Vec<X>,
    dots: impl Fn(Backend, &[f32], usize, &[X], &mut [f32]),
) {
    let mut rng = Rng(seed);
    for (backend, rows) in Backend::all_available()
        .into_iter()
        .flat_map(|b| (1..=18usize).map(move |r| (b, r)))
    {
        for n in [1usize, 7, 8, 16, 33, 48, 256] {
            let stride = n + 3;
            let a = rng.vec(rows * stride);
            let x = to_row(rng.vec(n));
            let mut out = vec![f32::NAN; rows];
            dots(backend, &a, stride, &x, &mut out);
            for (j, &o) in out.iter().enumerate() {
                let row = &a[j * stride..j * stride + n];
                let terms = row.iter().zip(&x).map(|(&p, &q)| p as f64 * q.into());
                let want: f64 = terms.clone().sum();
                let abs: f64 = terms.map(f64::abs).sum();
                assert!(
                    (o as f64 - want).abs() <= 1e-6 * abs + 1e-7,
                    "{backend:?} rows {rows} n {n} row {j}: {o} vs {want}"
                );
            }
        }
    }
}

/// `widen_f16` gives every one of the 65536 f16 values exactly (NaNs as NaNs: hardware
/// conversion quiets signalling ones) on every backend, also at lengths and offsets that
/// leave tails after the 4-, 8- and 16-value steps.
#[test]
fn widen_f16_is_exact() {
    let all: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
    let same = |got: f32, h: half::f16| {
        let want = rgemma_quant::f16_to_f32(h.to_bits());
        if want.is_nan() {
            got.is_nan()
        } else {
            got.to_bits() == want.to_bits()
        }
    };
    for backend in Backend::all_available() {
        let mut out = vec![f32::NAN; all.len() + 1];
        dot::widen_f16_with(backend, &all, &mut out);
        for (i, (&got, &h)) in out.iter().zip(&all).enumerate() {
            assert!(same(got, h), "{backend:?} bits {i:#06x}: {got}");
        }
        for start in 0..3 {
            for len in 0..40 {
                let src = &all[0x3c00 + start..0x3c00 + start + len];
                let mut out = vec![f32::NAN; len + 2];
                dot::widen_f16_with(backend, src, &mut out);
                assert!(
                    out[..len].iter().zip(src).all(|(&g, &h)| same(g, h)),
                    "{backend:?} start {start} len {len}"
                );
                assert!(out[len..].iter().all(|v| v.is_nan()), "wrote past the end");
            }
        }
    }
}

/// `f32_axpy_many` equals the f64 sums `y[j] + Σ_i p[j][i]·x_i` on every backend, for row
/// counts around the 2- and 8-row blocks, widths around the 4-, 8- and 16-float chunks and
/// the 32- and 128-float column blocks (NEON, AVX-512), and several key counts.
#[test]
fn f32_axpy_many_matches_f64_sums() {
    let mut rng = Rng(0xa11ce);
    for (backend, rows) in Backend::all_available()
        .into_iter()
        .flat_map(|b| (1..=11usize).map(move |r| (b, r)))
    {
        for w in [1usize, 8, 13, 16, 36, 48, 144, 256] {
            for nk in [1usize, 3, 8] {
                let y0 = rng.vec(rows * w);
                let p_stride = nk + 2;
                let p = rng.vec(rows * p_stride);
                let xs_data: Vec<Vec<f32>> = (0..nk).map(|_| rng.vec(w + 1)).collect();
                let xs: Vec<&[f32]> = xs_data.iter().map(|v| v.as_slice()).collect();
                let mut y = y0.clone();
                dot::f32_axpy_many_with(backend, &mut y, w, &p, p_stride, &xs);
                for j in 0..rows {
                    for k in 0..w {
                        let terms: Vec<f64> = (0..nk)
                            .map(|i| p[j * p_stride + i] as f64 * xs[i][k] as f64)
                            .collect();
                        let want = y0[j * w + k] as f64 + terms.iter().sum::<f64>();
                        let abs =
                            y0[j * w + k].abs() as f64 + terms.iter().map(|t| t.abs()).sum::<f64>();
                        let got = y[j * w + k] as f64;
                        assert!(
                            (got - want).abs() <= 1e-6 * abs + 1e-7,
                            "{backend:?} rows {rows} w {w} nk {nk} ({j},{k}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// One-token decode speed of the K-quant kernels, one thread (`cargo test --release -p
/// rgemma-quant --test dot_kernels -- --ignored --nocapture kquant_decode_speed`): GB/s of
/// weights for 64 rows × 2560 (in cache) on every SIMD backend, the backends alternated 3
/// times (best of each) to share the noise, and a 256 MiB matrix (from DRAM) on the best.
#[test]
#[ignore]
fn kquant_decode_speed() {
    use rgemma_quant::packed::bench::bench_unpacked_with;
    let backends: Vec<Backend> = Backend::all_available()
        .into_iter()
        .filter(|&b| b != Backend::Scalar)
        .collect();
    let n = 2560;
    for ty in [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        let mut best = vec![0.0f64; backends.len()];
        for _ in 0..3 {
            for (b, v) in backends.iter().zip(best.iter_mut()) {
                *v = v.max(bench_unpacked_with(*b, ty, n, 64, 1, 1, 3).gbps);
            }
        }
        let cache: Vec<String> = backends
            .iter()
            .zip(&best)
            .map(|(b, v)| format!("{} {v:.1}", b.name()))
            .collect();
        let rb = ty.row_size(n as u64).unwrap() as usize;
        let best_b = Backend::best_available();
        let dram = bench_unpacked_with(best_b, ty, n, (256 << 20) / rb, 1, 1, 3);
        eprintln!(
            "{ty}: in cache GB/s: {}; 256 MiB {} {:.1} GB/s",
            cache.join(", "),
            best_b.name(),
            dram.gbps
        );
    }
}

/// The extensions `rg-bench` reports agree with the backend the detection picked: each
/// backend's instructions are listed, and a CPU listing i8mm with the dot product gets the
/// i8mm backend (under qemu: `-cpu max` has both, `-cpu cortex-a72` neither).
#[test]
fn reported_extensions_match_the_detected_backend() {
    let ext = rgemma_quant::dot::cpu_extensions();
    let best = Backend::best_available();
    let needs: &[&str] = match best {
        Backend::Scalar => &[],
        Backend::Avx2 => &["avx2", "fma", "f16c"],
        Backend::AvxVnni => &["avx2", "fma", "f16c", "avxvnni"],
        Backend::Avx512 => &["avx2", "avx512f", "avx512bw", "avx512vl", "avx512vnni"],
        Backend::Neon => &["neon"],
        Backend::NeonDot => &["neon", "dotprod"],
        Backend::NeonI8mm => &["neon", "dotprod", "i8mm"],
    };
    for f in needs {
        assert!(ext.contains(f), "{best:?} without {f} in {ext:?}");
    }
    if ext.contains(&"dotprod") {
        assert!(best.has_dotprod(), "dotprod listed, backend {best:?}");
        assert_eq!(
            ext.contains(&"i8mm"),
            best == Backend::NeonI8mm,
            "{ext:?} {best:?}"
        );
    }
    if ext.contains(&"avx512vnni") && ext.contains(&"avx512bw") && ext.contains(&"avx512vl") {
        assert_eq!(best, Backend::Avx512);
    }
}
