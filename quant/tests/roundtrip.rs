//! Properties of quantize -> dequantize that hold by construction of each format:
//! - per-element error bounds in terms of the stored block scales (stated per type below);
//! - values that a format can represent exactly come back exactly;
//! - ggml's own acceptance thresholds (test-quantize-fns) on its synthetic data;
//! - argument checking: wrong lengths and unsupported types are errors, never panics.

use rgemma_quant::block::Block;
use rgemma_quant::kquants::{get_scale_min_k4, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use rgemma_quant::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use rgemma_quant::types::ALL_TYPES;
use rgemma_quant::{dequantize_row, f16_to_f32, quantize_row, GgmlType, QuantError};

/// SplitMix64: a tiny deterministic generator (no dependency needed).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.uniform() * n as f64) as u32
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// Test rows: Gaussian, scaled Gaussian with outliers, uniform, all-positive, and one with
/// a zero block, 4096 values each.
fn test_rows() -> Vec<Vec<f32>> {
    let mut rng = Rng(0x5EED);
    let n = 4096;
    let mut rows = vec![
        (0..n).map(|_| rng.normal()).collect::<Vec<f32>>(),
        (0..n)
            .map(|i| rng.normal() * 0.02 * if i % 397 == 0 { 15.0 } else { 1.0 })
            .collect(),
        (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect(),
        (0..n).map(|_| (1.0 + rng.uniform()) as f32).collect(),
    ];
    let mut with_zero_block: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0).collect();
    with_zero_block[256..512].fill(0.0);
    rows.push(with_zero_block);
    rows
}

fn quantize_blocks<B: Block>(x: &[f32]) -> Vec<(B, Vec<f32>)> {
    x.chunks_exact(B::ELEMENTS)
        .map(|xs| {
            let b = B::quantize(xs);
            let mut y = vec![0f32; B::ELEMENTS];
            b.dequantize(&mut y);
            (b, y)
        })
        .collect()
}

/// Relative f16 rounding of a stored scale: |d - f16(d)| <= 2^-11 |d| (normal range).
const F16_REL: f32 = 1.0 / 2048.0;
/// Slack for the f32 arithmetic of quantizing and dequantizing.
const F32_SLACK: f32 = 1e-5;

/// Q4_0 / Q5_0: `d = m / -h` (m the signed max-abs, h = 2^(b-1)), codes
/// `min(2h - 1, trunc(x/d + h + 0.5))`. So |x - x̂| <= |d|/2, except for the capped top code
/// (x/d >= h - 0.5, values of opposite sign to m and nearly its size) where it is <= |d|;
/// plus the f16 rounding of d times the largest code magnitude h.
fn check_symmetric<B: Block>(x: &[f32], d_of: impl Fn(&B) -> u16, h: f32) {
    for (xs, (b, y)) in x.chunks_exact(B::ELEMENTS).zip(quantize_blocks::<B>(x)) {
        let d = f16_to_f32(d_of(&b));
        for (&xv, &yv) in xs.iter().zip(&y) {
            let r = if d != 0.0 { xv / d } else { 0.0 };
            // (h - 1 rather than h - 0.5: the f32 d that chose the code differs slightly.)
            let step = if r > h - 1.0 { d.abs() } else { 0.5 * d.abs() };
            let bound = step + h * d.abs() * F16_REL + F32_SLACK * d.abs();
            let err = (xv - yv).abs();
            assert!(err <= bound, "x {xv} deq {yv} err {err} > {bound} (d {d})");
        }
    }
}

#[test]
fn q4_0_and_q5_0_error_within_half_step() {
    for x in test_rows() {
        check_symmetric::<BlockQ4_0>(&x, |b| b.d, 8.0);
        check_symmetric::<BlockQ5_0>(&x, |b| b.d, 16.0);
    }
}

/// Q4_1 / Q5_1: `d = (max - min)/(2^b - 1)`, codes `trunc((x - min)/d + 0.5)`: every value is
/// within d/2 of its code, plus the f16 rounding of d (times the code) and of the min.
fn check_affine<B: Block>(x: &[f32], dm_of: impl Fn(&B) -> (u16, u16), nmax: f32) {
    for (xs, (b, y)) in x.chunks_exact(B::ELEMENTS).zip(quantize_blocks::<B>(x)) {
        let (d, m) = dm_of(&b);
        let (d, m) = (f16_to_f32(d), f16_to_f32(m));
        for (&xv, &yv) in xs.iter().zip(&y) {
            let err = (xv - yv).abs();
            let bound =
                0.5 * d + nmax * d * F16_REL + m.abs() * F16_REL + F32_SLACK * (d + m.abs());
            assert!(
                err <= bound,
                "x {xv} deq {yv} err {err} > {bound} (d {d}, m {m})"
            );
        }
    }
}

#[test]
fn q4_1_and_q5_1_error_within_half_step() {
    for x in test_rows() {
        check_affine::<BlockQ4_1>(&x, |b| (b.d, b.m), 15.0);
        check_affine::<BlockQ5_1>(&x, |b| (b.d, b.m), 31.0);
    }
}

/// Q8_0 / Q8_1: `d = max|x|/127`, `q = round(x/d)`: |x - x̂| <= |d|/2 + 127 |d| 2^-11.
/// Q8_1's `s` equals d·Σq as computed in f32 from the f32 d, so it is within f16 rounding
/// (and the f32→f16 difference of d) of Σ x̂.
#[test]
fn q8_0_and_q8_1_error_within_half_step() {
    for x in test_rows() {
        for (xs, (b, y)) in x.chunks_exact(32).zip(quantize_blocks::<BlockQ8_0>(&x)) {
            let d = f16_to_f32(b.d);
            for (&xv, &yv) in xs.iter().zip(&y) {
                let bound = 0.5 * d + 127.0 * d * F16_REL + F32_SLACK * d;
                assert!((xv - yv).abs() <= bound, "x {xv} deq {yv} d {d}");
            }
        }
        for (b, y) in quantize_blocks::<BlockQ8_1>(&x) {
            let d = f16_to_f32(b.d);
            let sum_deq: f32 = y.iter().sum();
            let s = f16_to_f32(b.s);
            let sum_q: i32 = b.qs.iter().map(|&q| q as i32).sum();
            let bound = (sum_q.unsigned_abs() as f32) * d * 2.0 * F16_REL + 1e-4 * d;
            assert!((s - sum_deq).abs() <= bound, "s {s} vs Σdeq {sum_deq}");
        }
    }
}

/// Q8_K: f32 scale `d = 1/iscale`, `q = nearest_int(x·iscale)`: |x - x̂| <= |d|/2 (+ f32
/// slack); bsums are the exact sums of the codes.
#[test]
fn q8_k_error_within_half_step_and_bsums_exact() {
    for x in test_rows() {
        for (xs, (b, y)) in x.chunks_exact(256).zip(quantize_blocks::<BlockQ8K>(&x)) {
            let d = b.d.abs();
            for (&xv, &yv) in xs.iter().zip(&y) {
                assert!(
                    (xv - yv).abs() <= 0.5 * d * (1.0 + 1e-5) + 1e-30,
                    "x {xv} deq {yv} d {d}"
                );
            }
            for j in 0..16 {
                let s: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
                assert_eq!(b.bsums[j] as i32, s);
            }
        }
    }
}

/// K-quants re-quantize every value with the stored sub-block scale `d_j` (and min `m_j`):
/// `q = clamp(nearest_int((x + m_j)/d_j), 0, nmax)`. So any value whose code is not clamped
/// is within d_j/2 of its dequantization, whatever the scale search chose; clamped values
/// are within d_j/2 of the range edge or beyond it (outside [-m_j, nmax·d_j - m_j]).
fn check_k_affine<B: Block>(
    x: &[f32],
    sub: usize,
    scale_min: impl Fn(&B, usize) -> (f32, f32),
    nmax: f32,
) {
    for (xs, (b, y)) in x.chunks_exact(256).zip(quantize_blocks::<B>(x)) {
        for j in 0..256 / sub {
            let (dj, mj) = scale_min(&b, j);
            for i in sub * j..sub * (j + 1) {
                let err = (xs[i] - y[i]).abs();
                let lo = -mj;
                let hi = nmax * dj - mj;
                let slack = F32_SLACK * (dj + mj.abs() + xs[i].abs());
                if dj == 0.0 {
                    continue; // sub-block kept its search codes under a zero scale
                }
                if xs[i] >= lo - 0.5 * dj && xs[i] <= hi + 0.5 * dj {
                    assert!(
                        err <= 0.5 * dj + slack,
                        "x {} deq {} err {err} d_j {dj}",
                        xs[i],
                        y[i]
                    );
                } else {
                    // Clamped: dequantizes to the nearest end of the range.
                    let edge = if xs[i] < lo { lo } else { hi };
                    assert!(
                        (y[i] - edge).abs() <= slack,
                        "clamped x {} deq {} edge {edge}",
                        xs[i],
                        y[i]
                    );
                }
            }
        }
    }
}

#[test]
fn q4_k_and_q5_k_error_within_half_step_of_stored_scale() {
    fn sm(d: u16, dmin: u16, scales: &[u8; 12], j: usize) -> (f32, f32) {
        let (sc, m) = get_scale_min_k4(j, scales);
        (f16_to_f32(d) * sc as f32, f16_to_f32(dmin) * m as f32)
    }
    for x in test_rows() {
        check_k_affine::<BlockQ4K>(&x, 32, |b, j| sm(b.d, b.dmin, &b.scales, j), 15.0);
        check_k_affine::<BlockQ5K>(&x, 32, |b, j| sm(b.d, b.dmin, &b.scales, j), 31.0);
    }
}

/// Q6_K: `q = clamp(nearest_int(x/d_j), -32, 31)` with `d_j = d·sc_j` (signed): within
/// |d_j|/2 unless clamped.
#[test]
fn q6_k_error_within_half_step_of_stored_scale() {
    for x in test_rows() {
        for (xs, (b, y)) in x.chunks_exact(256).zip(quantize_blocks::<BlockQ6K>(&x)) {
            for j in 0..16 {
                let dj = f16_to_f32(b.d) * b.scales[j] as f32;
                if dj == 0.0 {
                    continue;
                }
                for i in 16 * j..16 * j + 16 {
                    let r = xs[i] / dj;
                    let slack = F32_SLACK * (dj.abs() + xs[i].abs());
                    let err = (xs[i] - y[i]).abs();
                    if (-32.5..=31.5).contains(&r) {
                        assert!(
                            err <= 0.5 * dj.abs() + slack,
                            "x {} deq {} d_j {dj}",
                            xs[i],
                            y[i]
                        );
                    } else {
                        let edge = if r < 0.0 { -32.0 * dj } else { 31.0 * dj };
                        assert!((y[i] - edge).abs() <= slack);
                    }
                }
            }
        }
    }
}

/// ggml's `test-quantize-fns` acceptance check: on `0.1 + 2·cos(i + offset)` (4096 values),
/// `sqrt(Σ(x - x̂)²)/n` must stay below 0.002 (0.0075 for 2-bit, 0.0040 for 3-bit types).
#[test]
fn ggml_acceptance_thresholds() {
    let n = 4096;
    let x: Vec<f32> = (0..n).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect();
    use GgmlType::*;
    for (ty, max_err) in [
        (F16, 0.002),
        (BF16, 0.002),
        (Q4_0, 0.002),
        (Q4_1, 0.002),
        (Q5_0, 0.002),
        (Q5_1, 0.002),
        (Q8_0, 0.002),
        (Q8_1, 0.002),
        (Q2K, 0.0075),
        (Q3K, 0.0040),
        (Q4K, 0.002),
        (Q5K, 0.002),
        (Q6K, 0.002),
        (Q8K, 0.002),
    ] {
        let mut q = vec![0u8; ty.row_size(n as u64).unwrap() as usize];
        quantize_row(ty, &x, &mut q).unwrap();
        let mut y = vec![0f32; n];
        dequantize_row(ty, &q, &mut y).unwrap();
        let sum2: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let err = sum2.sqrt() / n as f64;
        assert!(err < max_err, "{ty}: error {err} >= {max_err}");
        // And not suspiciously perfect for the lossy types (catches a no-op dequantizer
        // paired with an identity "quantizer").
        if ty.is_quantized() {
            assert!(err > 0.0, "{ty}");
        }
    }
}

/// Values a format represents exactly survive quantize -> dequantize bit for bit.
#[test]
fn exactly_representable_values_round_trip() {
    let mut rng = Rng(42);
    let check = |ty: GgmlType, x: &[f32]| {
        let mut q = vec![0u8; ty.row_size(x.len() as u64).unwrap() as usize];
        quantize_row(ty, x, &mut q).unwrap();
        let mut y = vec![0f32; x.len()];
        dequantize_row(ty, &q, &mut y).unwrap();
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{ty} element {i}: {a} -> {b}");
        }
    };

    // Plain floats: any f32; f16/bf16-representable values.
    let f: Vec<f32> = (0..256).map(|_| rng.normal() * 1e3).collect();
    check(GgmlType::F32, &f);
    let h: Vec<f32> = f.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    check(GgmlType::F16, &h);
    let bh: Vec<f32> = f
        .iter()
        .map(|&v| half::bf16::from_f32(v * 1e20).to_f32())
        .collect();
    check(GgmlType::BF16, &bh);

    // Symmetric legacy: d a power of two; values d·(q - h) with code 0 (= -h·d, the signed
    // max-abs) present in each block, so the chosen scale is exactly d.
    for (ty, h) in [(GgmlType::Q4_0, 8i32), (GgmlType::Q5_0, 16)] {
        let x: Vec<f32> = (0..256)
            .map(|i| {
                let d = 2f32.powi(-(i / 32) - 2);
                let q = if i % 32 == 7 {
                    0
                } else {
                    1 + rng.below(2 * h as u32 - 1) as i32
                };
                d * (q - h) as f32
            })
            .collect();
        check(ty, &x);
    }
    // Affine legacy: codes 0 and nmax both present; d a power of two, min f16-exact.
    for (ty, nmax) in [(GgmlType::Q4_1, 15u32), (GgmlType::Q5_1, 31)] {
        let x: Vec<f32> = (0..256)
            .map(|i| {
                let d = 2f32.powi(-(i / 32) - 1);
                let min = -1.25 * (i / 32) as f32;
                let q = match i % 32 {
                    3 => 0,
                    20 => nmax,
                    _ => rng.below(nmax + 1),
                };
                q as f32 * d + min
            })
            .collect();
        check(ty, &x);
    }
    // Q8_0 / Q8_1: d = 2^-k, |q| <= 127 with ±127 present.
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
        let x: Vec<f32> = (0..256)
            .map(|i| {
                let d = 2f32.powi(-(i / 32));
                let q = if i % 32 == 5 {
                    127
                } else {
                    rng.below(255) as i32 - 127
                };
                d * q as f32
            })
            .collect();
        check(ty, &x);
    }
    // Q8_K: d = 2^-5 per super-block, -127 present.
    let x: Vec<f32> = (0..512)
        .map(|i| {
            let q = if i % 256 == 9 {
                -127
            } else {
                rng.below(255) as i32 - 127
            };
            q as f32 / 32.0
        })
        .collect();
    check(GgmlType::Q8K, &x);
    // Q6_K: every sub-block has the same power-of-two scale s and contains -32·s (its
    // signed max-abs, no +32): every sub-scale code is -128, d = -s/128, d·sc = s exactly.
    let x: Vec<f32> = (0..512)
        .map(|i| {
            let s = if i < 256 { 0.25 } else { 2f32.powi(-9) };
            let q = if i % 16 == 11 {
                -32
            } else {
                rng.below(63) as i32 - 31
            };
            s * q as f32
        })
        .collect();
    check(GgmlType::Q6K, &x);
    // Q4_K / Q5_K: every sub-block uses the full code range 0..=nmax with step 63·2^-10 and
    // offset 63·2^-9, so all 6-bit scale/min codes are 63 and the f16 d = 2^-10,
    // dmin = 2^-9 are exact.
    for (ty, nmax) in [(GgmlType::Q4K, 15u32), (GgmlType::Q5K, 31)] {
        let step = 63.0 / 1024.0;
        let offset = 63.0 / 512.0;
        let x: Vec<f32> = (0..512)
            .map(|i| {
                let q = match i % 32 {
                    1 => 0,
                    30 => nmax,
                    _ => rng.below(nmax + 1),
                };
                step * q as f32 - offset
            })
            .collect();
        check(ty, &x);
    }
}

#[test]
fn bad_arguments_are_errors() {
    let x = vec![0.5f32; 64];
    let mut q = vec![0u8; 36];
    // Not a whole number of blocks.
    assert_eq!(
        quantize_row(GgmlType::Q4_0, &x[..40], &mut q),
        Err(QuantError::NotBlockAligned {
            ty: GgmlType::Q4_0,
            n: 40
        })
    );
    assert!(matches!(
        quantize_row(GgmlType::Q4K, &x, &mut q),
        Err(QuantError::NotBlockAligned { .. })
    ));
    // Destination of the wrong size.
    assert_eq!(
        quantize_row(GgmlType::Q4_0, &x, &mut q[..35]),
        Err(QuantError::LengthMismatch {
            expected: 36,
            found: 35
        })
    );
    assert!(quantize_row(GgmlType::Q4_0, &x, &mut [0u8; 37]).is_err());
    quantize_row(GgmlType::Q4_0, &x, &mut q).unwrap();
    // Dequantize: source not whole blocks, destination of the wrong size.
    let mut y = vec![0f32; 64];
    assert_eq!(
        dequantize_row(GgmlType::Q4_0, &q[..20], &mut y),
        Err(QuantError::NotWholeBlocks {
            ty: GgmlType::Q4_0,
            bytes: 20
        })
    );
    assert_eq!(
        dequantize_row(GgmlType::Q4_0, &q, &mut y[..63]),
        Err(QuantError::ElementCountMismatch {
            expected: 64,
            found: 63
        })
    );
    dequantize_row(GgmlType::Q4_0, &q, &mut y).unwrap();
    // Empty rows are fine.
    quantize_row(GgmlType::Q6K, &[], &mut []).unwrap();
    dequantize_row(GgmlType::Q6K, &[], &mut []).unwrap();
    // Types without a converter are refused for both directions, with a readable message.
    for ty in ALL_TYPES {
        if rgemma_quant::can_quantize(ty) {
            continue;
        }
        let n = ty.block_size();
        let mut buf = vec![0u8; ty.type_size()];
        let e = quantize_row(ty, &vec![0f32; n], &mut buf).unwrap_err();
        assert_eq!(e, QuantError::Unsupported(ty));
        assert!(e.to_string().contains(ty.name()), "{e}");
        let e = dequantize_row(ty, &buf, &mut vec![0f32; n]).unwrap_err();
        assert_eq!(e, QuantError::Unsupported(ty));
    }
    // Every message names what went wrong.
    let msg = QuantError::NotWholeBlocks {
        ty: GgmlType::Q6K,
        bytes: 7,
    }
    .to_string();
    assert!(msg.contains("Q6_K") && msg.contains('7'), "{msg}");
}

/// Garbage block bytes (any scale bits, NaN and infinity included) dequantize without
/// panicking, for every type.
#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = Rng(7);
    for ty in ALL_TYPES
        .into_iter()
        .filter(|&t| rgemma_quant::can_dequantize(t))
    {
        let bytes: Vec<u8> = (0..ty.type_size() * 8)
            .map(|_| rng.next_u64() as u8)
            .collect();
        let mut y = vec![0f32; ty.block_size() * 8];
        dequantize_row(ty, &bytes, &mut y).unwrap();
        let x: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .cycle()
            .take(ty.block_size() * 8)
            .collect();
        let mut q = vec![0u8; ty.type_size() * 8];
        quantize_row(ty, &x, &mut q).unwrap();
    }
}
