//! CUDA kernels against the CPU's scalar reference on random data, odd sizes included
//! (`--features cuda`; skipped with a message when no CUDA device is present).
#![cfg(feature = "cuda")]

use std::sync::{Arc, Mutex, OnceLock};

use rgemma::cuda::testing::KernelRunner;
use rgemma::cuda::MatmulKernel;
use rgemma_quant::{dequantize_row, quantize_row, GgmlType};

/// The shared runner, or `None` (after printing why) when there is no GPU. A GPU whose
/// kernels fail to build is a failure, not a skip.
fn runner() -> Option<Arc<KernelRunner>> {
    static R: OnceLock<Mutex<Option<Arc<KernelRunner>>>> = OnceLock::new();
    let cell = R.get_or_init(|| {
        Mutex::new(match rgemma::cuda::probe() {
            Err(e) => {
                skip(&format!("skipped: no CUDA device ({e})"));
                None
            }
            Ok(_) => Some(KernelRunner::new().expect("CUDA device present but kernels failed")),
        })
    });
    let r = cell.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if r.is_none() {
        skip("skipped: no CUDA device");
    }
    r
}

/// Prints past the test harness's output capture, so that a skip is visible in a normal
/// `cargo test` run.
fn skip(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// Deterministic values in [-1, 1) with some large ones (exercises the scales).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            if i % 97 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

const TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

fn quantized(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let w = values(rows * cols, seed);
    let row_bytes = ty.row_size(cols as u64).unwrap() as usize;
    let mut data = vec![0u8; rows * row_bytes];
    quantize_row(ty, &w, &mut data).unwrap();
    let mut wd = vec![0.0f32; rows * cols];
    dequantize_row(ty, &data, &mut wd).unwrap();
    (data, wd)
}

#[test]
fn dequantize_matches_cpu_decoders() {
    let Some(r) = runner() else { return };
    for ty in TYPES {
        let (rows, cols) = (7, 512);
        let (data, want) = quantized(ty, rows, cols, 1);
        let got = r.dequantize(ty, &data, rows, cols).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // Only a fused multiply-add may round differently.
            assert!(
                (g - w).abs() <= 1e-6 * w.abs() + 1e-7,
                "{ty} element {i}: {g} vs {w}"
            );
        }
    }
}

/// f64 product of decoded weights and `x`, plus the sum of |terms| for tolerances.
fn reference(
    wd: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    block_rows: usize,
    bias: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let width = rows.div_ceil(block_rows) * cols;
    let mut out = vec![0.0; n * rows];
    let mut mag = vec![0.0; n * rows];
    for t in 0..n {
        for r in 0..rows {
            let off = (r / block_rows) * cols;
            let mut acc = bias[r] as f64;
            let mut m = bias[r].abs() as f64;
            for c in 0..cols {
                let p = wd[r * cols + c] as f64 * x[t * width + off + c] as f64;
                acc += p;
                m += p.abs();
            }
            out[t * rows + r] = acc;
            mag[t * rows + r] = m;
        }
    }
    (out, mag)
}

/// The q8_1 activation error bound of one output: per 32-value block, |x - x̂| <= amax/254.
fn q8_bound(wd: &[f32], r: usize, cols: usize, xs: &[f32]) -> f64 {
    let mut b = 0.0f64;
    for blk in 0..cols / 32 {
        let amax = xs[blk * 32..blk * 32 + 32]
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        let wabs: f64 = (0..32)
            .map(|j| wd[r * cols + blk * 32 + j].abs() as f64)
            .sum();
        b += wabs * amax / 254.0 * 1.01;
    }
    b
}

#[test]
fn matmul_kernels_match_reference() {
    let Some(r) = runner() else { return };
    // (rows, cols, block_rows): odd row counts, a block-diagonal case, small float gates.
    let shapes: [(usize, usize, Option<usize>); 3] =
        [(37, 512, None), (70, 256, Some(35)), (13, 768, None)];
    for ty in TYPES {
        for (rows, cols, blocks) in shapes {
            let br = blocks.unwrap_or(rows);
            let width = rows.div_ceil(br) * cols;
            let (data, wd) = quantized(ty, rows, cols, 3 + rows as u64);
            let bias = values(rows, 5);
            for (which, ns) in [
                (MatmulKernel::Auto, &[1usize, 3, 8][..]),
                (MatmulKernel::Generic, &[1, 5][..]),
                (MatmulKernel::Tiled, &[1, 13, 70][..]),
            ] {
                for &n in ns {
                    let x = values(n * width, 7 + n as u64);
                    let got = r
                        .matmul(ty, &data, rows, cols, &x, n, blocks, Some(&bias), which)
                        .unwrap();
                    let (want, mag) = reference(&wd, rows, cols, &x, n, br, &bias);
                    let int8 = which == MatmulKernel::Auto
                        && matches!(
                            ty,
                            GgmlType::Q4_0 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q6K
                        );
                    for t in 0..n {
                        for row in 0..rows {
                            let i = t * rows + row;
                            let mut tol = 2e-6 * mag[i] + 1e-6;
                            if int8 {
                                let off = (row / br) * cols;
                                tol += q8_bound(
                                    &wd,
                                    row,
                                    cols,
                                    &x[t * width + off..t * width + off + cols],
                                );
                            }
                            let d = (got[i] as f64 - want[i]).abs();
                            assert!(
                                d <= tol,
                                "{ty} {which:?} {rows}x{cols} blocks {blocks:?} n {n} t {t} r {row}: {} vs {} (tol {tol})",
                                got[i],
                                want[i]
                            );
                        }
                    }
                }
            }
        }
    }
    // Float gate blocks narrower than a warp (tiny-rg: 4 blocks of 16x16), odd float width.
    for (ty, rows, cols, blocks) in [
        (GgmlType::F16, 64, 16, Some(16)),
        (GgmlType::F32, 9, 24, None),
    ] {
        let (data, wd) = quantized(ty, rows, cols, 11);
        let br = blocks.unwrap_or(rows);
        let width = rows.div_ceil(br) * cols;
        let bias = values(rows, 12);
        for (which, n) in [
            (MatmulKernel::Auto, 1usize),
            (MatmulKernel::Auto, 6),
            (MatmulKernel::Tiled, 33),
        ] {
            let x = values(n * width, 13);
            let got = r
                .matmul(ty, &data, rows, cols, &x, n, blocks, Some(&bias), which)
                .unwrap();
            let (want, mag) = reference(&wd, rows, cols, &x, n, br, &bias);
            for i in 0..n * rows {
                assert!(
                    (got[i] as f64 - want[i]).abs() <= 2e-6 * mag[i] + 1e-6,
                    "{ty} {which:?} n {n} out {i}: {} vs {}",
                    got[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn rmsnorm_matches_formula() {
    let Some(r) = runner() else { return };
    for width in [64usize, 77, 2560] {
        let x = values(3 * width, width as u64);
        let w = values(width, 1 + width as u64);
        let got = r.rmsnorm(&x, &w, 1e-6).unwrap();
        for row in 0..3 {
            let xr = &x[row * width..(row + 1) * width];
            let ms: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / width as f64;
            for j in 0..width {
                let want = xr[j] as f64 / (ms + 1e-6).sqrt() * w[j] as f64;
                let g = got[row * width + j] as f64;
                assert!(
                    (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{width} {row} {j}: {g} vs {want}"
                );
            }
        }
    }
}

#[test]
fn argmax_takes_the_first_maximum() {
    let Some(r) = runner() else { return };
    let n = 5003;
    let mut x = values(3 * n, 99);
    x[4000] = 50.0;
    x[4500] = 50.0; // tie: the lower index wins
    x[n + 17] = 9.0;
    for v in &mut x[2 * n..] {
        *v = -1.0 - v.abs();
    }
    x[3 * n - 1] = -0.5;
    let got = r.argmax(&x, n).unwrap();
    assert_eq!(got, vec![4000, 17, (n - 1) as u32]);
}
