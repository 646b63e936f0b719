//! Batch invariance of the packed kernels: a column's result must not depend on which
//! other columns share the call. Batched decoding (several sequences, one weight pass)
//! then gives every sequence exactly the logits it would get decoded alone, so a seed
//! reproduces the same text whatever else the server is doing.
//!
//! For every packed type, every backend this CPU has and every call width up to 17
//! columns (tiles of 8, their remainders, and one column: decode), `packed::gemm` over all
//! columns equals, bit for bit, the same gemm called on each column alone.

use rgemma_quant::dot::Backend;
use rgemma_quant::packed::{self, GROUP_ROWS};
use rgemma_quant::{quantize_row, GgmlType};

mod common;
use common::Rng;

const TYPES: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
    GgmlType::F16,
    GgmlType::BF16,
];

fn row_bytes(ty: GgmlType, n: usize) -> usize {
    ty.row_size(n as u64).unwrap() as usize
}

fn packed_weights(ty: GgmlType, n: usize, ngroups: usize, rng: &mut Rng) -> Vec<u8> {
    let rb = row_bytes(ty, n);
    let rows = ngroups * GROUP_ROWS;
    let mut q = vec![0u8; rows * rb];
    quantize_row(ty, &rng.vec(rows * n), &mut q).unwrap();
    let gb = packed::group_bytes(ty, n).unwrap();
    let mut out = vec![0u8; ngroups * gb];
    for g in 0..ngroups {
        let src = &q[g * GROUP_ROWS * rb..(g + 1) * GROUP_ROWS * rb];
        packed::pack_group(ty, n, src, rb, &mut out[g * gb..(g + 1) * gb]).unwrap();
    }
    out
}

#[test]
fn a_column_gives_the_same_bits_whatever_shares_its_call() {
    let mut rng = Rng(0x5eed_1234);
    // One line per (type, n, backend) that differs: the first differing value.
    let mut failures = Vec::new();
    // Both Q4_0 kernels of AVX-512 machines (one group per call, or two with 4+ columns).
    for two_groups in [false, true] {
        packed::set_two_group_kernels(Some(two_groups));
        for ty in TYPES {
            // 2560: the 2B width, several K-quant passes; 256: one pass, Q8_0's 4-block units.
            for n in [256usize, 2560] {
                let ngroups = 3;
                let w = packed_weights(ty, n, ngroups, &mut rng);
                let astride = packed::activation_row_bytes(ty, n).unwrap();
                let rows = ngroups * GROUP_ROWS;
                for backend in Backend::all_available() {
                    let ncols = 17;
                    let mut act = vec![0u8; ncols * astride];
                    for c in 0..ncols {
                        let x = rng.vec(n);
                        packed::quantize_activation(
                            backend,
                            ty,
                            &x,
                            &mut act[c * astride..(c + 1) * astride],
                        )
                        .unwrap();
                    }
                    let mut alone = vec![f32::NAN; ncols * rows];
                    for c in 0..ncols {
                        packed::gemm(
                            backend,
                            ty,
                            n,
                            &w,
                            ngroups,
                            &act[c * astride..(c + 1) * astride],
                            astride,
                            1,
                            &mut alone[c * rows..(c + 1) * rows],
                            rows,
                        )
                        .unwrap();
                    }
                    'widths: for width in 2..=ncols {
                        let mut together = vec![f32::NAN; width * rows];
                        packed::gemm(
                            backend,
                            ty,
                            n,
                            &w,
                            ngroups,
                            &act[..width * astride],
                            astride,
                            width,
                            &mut together,
                            rows,
                        )
                        .unwrap();
                        for (i, (a, b)) in together.iter().zip(&alone).enumerate() {
                            if a.to_bits() != b.to_bits() {
                                failures.push(format!(
                                    "{ty} {backend:?} n={n} {width} columns (two groups: \
                                 {two_groups}): column {} row {}: {a} together, {b} alone",
                                    i / rows,
                                    i % rows
                                ));
                                break 'widths;
                            }
                        }
                    }
                }
            }
        }
    }
    packed::set_two_group_kernels(None);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
