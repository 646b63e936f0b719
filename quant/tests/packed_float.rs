//! Packed F16 and BF16 layouts and kernels against an f64 reference.
//!
//! - pack → unpack is the identity on arbitrary stored bytes;
//! - `packed::gemm` on every available backend equals `Σ w·a` computed in f64 from the
//!   decoded weights within `1e-5·Σ|w·a| + 1e-6` (f32 sums of up to 2560 products), with
//!   output padding left untouched, for shapes that take the SIMD driver through one or
//!   several passes over the reduction and every tile width;
//! - the stored-layout kernels (`dot::gemm`) meet the same bound on the same data, so the
//!   two layouts agree with each other;
//! - `n` not a multiple of 64 and short buffers are `Err`s.

use rgemma_quant::dot::{self, Backend};
use rgemma_quant::packed::{self, GROUP_ROWS};
use rgemma_quant::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, GgmlType};

mod common;
use common::Rng;

const TYPES: [GgmlType; 2] = [GgmlType::F16, GgmlType::BF16];

/// `rows` stored rows of `n` random values (row 2 all zero when present).
fn weights(ty: GgmlType, n: usize, rows: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * n * rows);
    for r in 0..rows {
        for _ in 0..n {
            let v = if r == 2 { 0.0 } else { rng.next() };
            let bits = if ty == GgmlType::F16 {
                f32_to_f16(v)
            } else {
                f32_to_bf16(v)
            };
            out.extend_from_slice(&bits.to_le_bytes());
        }
    }
    out
}

fn value(ty: GgmlType, b: &[u8]) -> f64 {
    let bits = u16::from_le_bytes([b[0], b[1]]);
    (if ty == GgmlType::F16 {
        f16_to_f32(bits)
    } else {
        bf16_to_f32(bits)
    }) as f64
}

fn pack(ty: GgmlType, n: usize, rows: &[u8]) -> Vec<u8> {
    let gb = packed::group_bytes(ty, n).unwrap();
    let ngroups = rows.len() / (2 * n) / GROUP_ROWS;
    let mut out = vec![0u8; ngroups * gb];
    for (g, dst) in out.chunks_exact_mut(gb).enumerate() {
        let src = &rows[g * GROUP_ROWS * 2 * n..(g + 1) * GROUP_ROWS * 2 * n];
        packed::pack_group(ty, n, src, 2 * n, dst).unwrap();
    }
    out
}

#[test]
fn pack_unpack_is_the_identity() {
    let mut x = 0x1234_5678u32;
    for ty in TYPES {
        for n in [64usize, 256, 2560] {
            // Arbitrary bit patterns (NaNs and infinities included) pass through unchanged.
            let stored: Vec<u8> = (0..GROUP_ROWS * 2 * n)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let p = pack(ty, n, &stored);
            assert_eq!(p.len(), stored.len(), "{ty}: packed size = stored size");
            for r in 0..GROUP_ROWS {
                let mut row = vec![0u8; 2 * n];
                packed::unpack_row(ty, n, &p, r, &mut row).unwrap();
                assert_eq!(
                    row,
                    stored[r * 2 * n..(r + 1) * 2 * n],
                    "{ty} n={n} row {r}"
                );
            }
        }
    }
}

#[test]
fn packed_gemm_matches_f64() {
    let mut rng = Rng(0x5EED_0F16);
    let backends = Backend::all_available();
    eprintln!("backends under test: {backends:?}");
    for ty in TYPES {
        // n = 1344 (21 driver blocks) takes passes of 8, 8 and 5 blocks; 2560 four passes.
        let shapes = [64usize, 256, 1344, 2560]
            .into_iter()
            .flat_map(|n| [(n, 1usize), (n, 3)])
            .map(|(n, g)| (n, g, vec![1usize, 2, 3, 4, 5, 7, 8, 9, 17]));
        for (n, ngroups, cols) in shapes {
            let rows = ngroups * GROUP_ROWS;
            let wq = weights(ty, n, rows, &mut rng);
            let wp = pack(ty, n, &wq);
            for ncols in cols {
                let ab = packed::activation_row_bytes(ty, n).unwrap();
                assert_eq!(ab, 4 * n);
                let astride = ab + 12;
                let mut act = vec![0u8; ncols * astride];
                let mut xs = Vec::new();
                for c in 0..ncols {
                    let x: Vec<f32> = (0..n).map(|_| rng.next()).collect();
                    let dst = &mut act[c * astride..c * astride + ab];
                    packed::quantize_activation(Backend::Scalar, ty, &x, dst).unwrap();
                    xs.push(x);
                }
                let ostride = rows + 3;
                let mut stored = vec![f32::NAN; ncols * ostride];
                dot::gemm(
                    Backend::detect(),
                    ty,
                    n,
                    &wq,
                    2 * n,
                    rows,
                    &act,
                    astride,
                    ncols,
                    &mut stored,
                    ostride,
                )
                .unwrap();
                for &b in &backends {
                    let mut got = vec![f32::NAN; ncols * ostride];
                    packed::gemm(
                        b, ty, n, &wp, ngroups, &act, astride, ncols, &mut got, ostride,
                    )
                    .unwrap();
                    for (c, x) in xs.iter().enumerate() {
                        for r in 0..rows {
                            let w = |k: usize| value(ty, &wq[(r * n + k) * 2..]);
                            let exact: f64 = (0..n).map(|k| w(k) * x[k] as f64).sum();
                            let mag: f64 = (0..n).map(|k| (w(k) * x[k] as f64).abs()).sum();
                            let tol = 1e-5 * mag + 1e-6;
                            let g = got[c * ostride + r] as f64;
                            let s = stored[c * ostride + r] as f64;
                            assert!(
                                (g - exact).abs() <= tol && (s - exact).abs() <= tol,
                                "{ty} {b:?} n={n} groups={ngroups} cols={ncols} r={r} c={c}: \
                                 packed {g}, stored {s}, exact {exact} (tol {tol})"
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
}

#[test]
fn bad_lengths_are_errors() {
    for ty in TYPES {
        let n = 256;
        assert!(
            packed::group_bytes(ty, 96).is_err(),
            "n must be a multiple of 64"
        );
        assert!(packed::group_bytes(ty, 0).is_err());
        let gb = packed::group_bytes(ty, n).unwrap();
        let src = vec![0u8; GROUP_ROWS * 2 * n];
        let mut dst = vec![0u8; gb];
        assert!(packed::pack_group(ty, n, &src, 2 * n, &mut dst[..gb - 1]).is_err());
        assert!(packed::pack_group(ty, n, &src[..src.len() - 1], 2 * n, &mut dst).is_err());
        packed::pack_group(ty, n, &src, 2 * n, &mut dst).unwrap();
        let x = vec![0.5f32; n];
        let mut a = vec![0u8; 4 * n];
        assert!(packed::quantize_activation(Backend::Scalar, ty, &x[..n - 1], &mut a).is_err());
        packed::quantize_activation(Backend::Scalar, ty, &x, &mut a).unwrap();
        let mut out = vec![0.0f32; GROUP_ROWS];
        for b in Backend::all_available() {
            assert!(packed::gemm(b, ty, n, &dst, 1, &a, 4 * n, 1, &mut out, 8).is_ok());
            assert!(packed::gemm(b, ty, n, &dst[..gb - 1], 1, &a, 4 * n, 1, &mut out, 8).is_err());
            assert!(
                packed::gemm(b, ty, n, &dst, 1, &a[..4 * n - 1], 4 * n, 1, &mut out, 8).is_err()
            );
        }
    }
}
