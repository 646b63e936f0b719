//! Packed Q4_0 and Q8_0 layouts (`rgemma_quant::packed`) against the unpacked kernels.
//!
//! The reference is `dot::gemm(Backend::Scalar, ...)` on the stored rows, itself tested
//! against dequantized f64 products in `dot_kernels.rs`. Packed kernels form the same
//! integer block sums and differ only in f32 summation order, so every backend must agree
//! within `1e-5 · Σ|w·a| + 1e-6` per output (as `dot_kernels.rs` allows).

use rgemma_quant::dot::{self, Backend};
use rgemma_quant::packed::{self, GROUP_ROWS};
use rgemma_quant::{dequantize_row, quantize_row, GgmlType, QuantError};

mod common;
use common::Rng;

const TYPES: [GgmlType; 2] = [GgmlType::Q4_0, GgmlType::Q8_0];

fn row_bytes(ty: GgmlType, n: usize) -> usize {
    ty.row_size(n as u64).unwrap() as usize
}

fn pack(ty: GgmlType, n: usize, rows: &[u8], ngroups: usize) -> Vec<u8> {
    let rb = row_bytes(ty, n);
    let gb = packed::group_bytes(ty, n).unwrap();
    let mut out = vec![0u8; ngroups * gb];
    for g in 0..ngroups {
        let src = &rows[g * GROUP_ROWS * rb..(g + 1) * GROUP_ROWS * rb];
        packed::pack_group(ty, n, src, rb, &mut out[g * gb..(g + 1) * gb]).unwrap();
    }
    out
}

#[test]
fn both_types_are_ready() {
    for ty in TYPES {
        assert!(packed::supports(ty), "{ty}");
    }
}

#[test]
fn unpack_inverts_pack_byte_for_byte() {
    let mut rng = Rng(0x9e37_79b9);
    for ty in TYPES {
        for n in [32, 64, 96, 192, 2560] {
            let rb = row_bytes(ty, n);
            // Arbitrary bytes (NaN scales included): the layout is a permutation.
            // A source stride larger than the row checks `src_row_bytes` is honoured.
            let stride = rb + 5;
            let src = rng.bytes(GROUP_ROWS * stride);
            let gb = packed::group_bytes(ty, n).unwrap();
            assert_eq!(gb, GROUP_ROWS * rb, "{ty} packs without padding");
            let mut group = vec![0u8; gb];
            packed::pack_group(ty, n, &src, stride, &mut group).unwrap();
            for r in 0..GROUP_ROWS {
                let mut row = vec![0u8; rb];
                packed::unpack_row(ty, n, &group, r, &mut row).unwrap();
                assert_eq!(row, src[r * stride..r * stride + rb], "{ty} n={n} r={r}");
            }
        }
    }
}

#[test]
fn activation_quantization_is_backend_independent() {
    let mut rng = Rng(0x0bad_cafe);
    for ty in TYPES {
        for n in [32, 96, 2560] {
            let mut x = rng.vec(n);
            x[..32].iter_mut().for_each(|v| *v = 0.0);
            let ab = packed::activation_row_bytes(ty, n).unwrap();
            let mut want = vec![0u8; ab];
            packed::quantize_activation(Backend::Scalar, ty, &x, &mut want).unwrap();
            for b in Backend::all_available() {
                let mut got = vec![0xAAu8; ab];
                packed::quantize_activation(b, ty, &x, &mut got).unwrap();
                assert_eq!(got, want, "{ty} {b:?} n={n}");
            }
        }
    }
}

/// Packs random rows, runs every backend and compares with the unpacked scalar kernel.
/// With `raw`, the weight codes are arbitrary bytes (Q8_0's −128 included, which the
/// quantizer never writes) under finite random scales.
fn check_gemm(rng: &mut Rng, ty: GgmlType, n: usize, ngroups: usize, ncols: usize, raw: bool) {
    let rows = ngroups * GROUP_ROWS;
    let rb = row_bytes(ty, n);
    let mut wq = vec![0u8; rows * rb];
    if raw {
        wq = rng.bytes(rows * rb);
        for blk in wq.chunks_exact_mut(ty.type_size()) {
            let d = rgemma_quant::f32_to_f16(rng.next() * 0.01);
            blk[..2].copy_from_slice(&d.to_le_bytes());
        }
    } else {
        let mut wf = rng.vec(rows * n);
        // An all-zero block in row 0 and an all-zero last row.
        wf[..32].iter_mut().for_each(|v| *v = 0.0);
        wf[(rows - 1) * n..].iter_mut().for_each(|v| *v = 0.0);
        quantize_row(ty, &wf, &mut wq).unwrap();
    }
    let wp = pack(ty, n, &wq, ngroups);

    let mut af = rng.vec(ncols * n);
    if ncols > 1 {
        // An all-zero activation block.
        af[n..n + 32].iter_mut().for_each(|v| *v = 0.0);
    }
    let act_ty = dot::activation_type(ty).unwrap();
    let arb = dot::activation_row_bytes(ty, n).unwrap();
    let mut aq = vec![0u8; ncols * arb];
    dot::quantize_activation(Backend::Scalar, act_ty, &af, &mut aq).unwrap();
    let stride = rows + 3;
    let mut want = vec![0.0f32; ncols * stride];
    dot::gemm(
        Backend::Scalar,
        ty,
        n,
        &wq,
        rb,
        rows,
        &aq,
        arb,
        ncols,
        &mut want,
        stride,
    )
    .unwrap();

    // Σ|w·a| per output, from the decoded operands.
    let deq = |t: GgmlType, bytes: &[u8]| {
        let mut v = vec![0.0f32; n];
        dequantize_row(t, bytes, &mut v).unwrap();
        v
    };
    let wd: Vec<Vec<f32>> = (0..rows).map(|r| deq(ty, &wq[r * rb..][..rb])).collect();
    let ad: Vec<Vec<f32>> = (0..ncols)
        .map(|c| deq(act_ty, &aq[c * arb..][..arb]))
        .collect();

    // Packed activations with a stride larger than a row.
    let pab = packed::activation_row_bytes(ty, n).unwrap();
    let pstride = pab + 16;
    let mut pa = vec![0u8; ncols * pstride];
    for c in 0..ncols {
        let dst = &mut pa[c * pstride..c * pstride + pab];
        packed::quantize_activation(Backend::Scalar, ty, &af[c * n..(c + 1) * n], dst).unwrap();
    }
    // On AVX-512 both Q4_0 kernels: one group per call, or two from 4 columns on.
    for (b, two_groups) in Backend::all_available()
        .into_iter()
        .flat_map(|b| [(b, false), (b, true)])
    {
        packed::set_two_group_kernels(Some(two_groups));
        let mut got = vec![f32::NAN; (ncols - 1) * stride + rows];
        packed::gemm(
            b, ty, n, &wp, ngroups, &pa, pstride, ncols, &mut got, stride,
        )
        .unwrap();
        for c in 0..ncols {
            for r in 0..rows {
                let abs: f64 = wd[r]
                    .iter()
                    .zip(&ad[c])
                    .map(|(x, y)| (*x as f64 * *y as f64).abs())
                    .sum();
                let tol = 1e-5 * abs + 1e-6;
                let (g, e) = (got[c * stride + r] as f64, want[c * stride + r] as f64);
                assert!(
                    (g - e).abs() <= tol,
                    "{ty} {b:?} (two groups: {two_groups}) n={n} groups={ngroups} \
                     ncols={ncols} r={r} c={c}: got {g} want {e} tol {tol}"
                );
            }
            // The padding between output rows is untouched.
            for pad in rows..stride {
                if c * stride + pad < got.len() {
                    assert!(got[c * stride + pad].is_nan(), "{ty} {b:?} wrote padding");
                }
            }
        }
    }
}

#[test]
fn gemm_matches_the_unpacked_kernels() {
    let mut rng = Rng(0x1234_5678);
    eprintln!("backends under test: {:?}", Backend::all_available());
    for ty in TYPES {
        for n in [32, 96, 192, 2560, 7680] {
            for ngroups in [1, 3] {
                for ncols in [1, 2, 3, 4, 5, 7, 9, 11, 17] {
                    check_gemm(&mut rng, ty, n, ngroups, ncols, false);
                }
            }
        }
    }
}

#[test]
fn gemm_over_several_l2_chunks() {
    // Enough groups that the loop nest splits them into several chunks, with several
    // column tiles per chunk.
    let mut rng = Rng(0x5eed_0001);
    for ty in TYPES {
        check_gemm(&mut rng, ty, 7680, 9, 13, false);
    }
}

#[test]
fn gemm_on_arbitrary_code_bytes() {
    let mut rng = Rng(0xfeed_beef);
    for ty in TYPES {
        for ncols in [1, 4, 5] {
            check_gemm(&mut rng, ty, 2560, 2, ncols, true);
        }
    }
}

#[test]
fn length_errors_are_reported_not_panics() {
    for ty in TYPES {
        let n = 64;
        let rb = row_bytes(ty, n);
        let gb = packed::group_bytes(ty, n).unwrap();
        let ab = packed::activation_row_bytes(ty, n).unwrap();
        let src = vec![0u8; GROUP_ROWS * rb];
        let mut group = vec![0u8; gb];
        let mut row = vec![0u8; rb];
        let mut act = vec![0u8; 2 * ab];
        let mut out = [0.0f32; 2 * GROUP_ROWS];
        let x = vec![0.5f32; n];

        assert!(matches!(
            packed::group_bytes(ty, 48),
            Err(QuantError::NotBlockAligned { .. })
        ));
        assert!(packed::group_bytes(ty, 0).is_err());
        assert!(packed::pack_group(ty, n, &src[1..], rb, &mut group).is_err());
        assert!(packed::pack_group(ty, n, &src, rb - 1, &mut group).is_err());
        assert!(packed::pack_group(ty, n, &src, rb, &mut group[1..]).is_err());
        assert!(packed::unpack_row(ty, n, &group[1..], 0, &mut row).is_err());
        assert!(packed::unpack_row(ty, n, &group, GROUP_ROWS, &mut row).is_err());
        assert!(packed::unpack_row(ty, n, &group, 0, &mut row[1..]).is_err());
        assert!(packed::quantize_activation(Backend::Scalar, ty, &x, &mut act[1..ab]).is_err());
        assert!(packed::quantize_activation(Backend::Scalar, ty, &x[..48], &mut act).is_err());
        let (a, o) = (&act[..], &mut out[..]);
        let s = GROUP_ROWS;
        assert!(packed::gemm(Backend::Scalar, ty, n, &group[1..], 1, a, ab, 2, o, s).is_err());
        assert!(packed::gemm(Backend::Scalar, ty, n, &group, 2, a, ab, 2, o, s).is_err());
        assert!(packed::gemm(Backend::Scalar, ty, n, &group, 1, &a[1..], ab, 2, o, s).is_err());
        assert!(packed::gemm(Backend::Scalar, ty, n, &group, 1, a, ab - 1, 1, o, s).is_err());
        assert!(packed::gemm(Backend::Scalar, ty, n, &group, 1, a, ab, 2, &mut o[1..], s).is_err());
        assert!(packed::gemm(Backend::Scalar, ty, n, &group, 1, a, ab, 2, o, s - 1).is_err());
        assert!(packed::gemm(Backend::Scalar, ty, n, &group, 1, a, ab, 2, o, s).is_ok());
    }
}

#[test]
fn bench_gemm_runs_and_reports_positive_rates() {
    for ty in TYPES {
        let (gbps, gops) = packed::bench::bench_gemm(ty, 64, 16, 3, 2, 1);
        assert!(gbps.is_finite() && gbps > 0.0, "{ty}: {gbps}");
        assert!(gops.is_finite() && gops > 0.0, "{ty}: {gops}");
    }
}
