//! Bit-exactness of the importance-matrix quantizers against ggml's C code.
//!
//! The `quant_w` fixtures (see `tests/fixtures/README.md`) are the bytes ggml's
//! `quantize_<type>(src, dst, nrow, n_per_row, quant_weights)` writes with non-NULL weights,
//! for the rows in `inputs_w/<case>.f32` and the per-column weights in `weights/<case>.f32`
//! (n_per_row = the number of weights). Nothing here compares against this crate's own
//! earlier output.

use std::collections::BTreeMap;

use rgemma_quant::{can_quantize_weighted, quantize_row_weighted, GgmlType, QuantError};

mod common;
use common::{read_fixture as read, read_fixture_f32 as read_f32};

/// The types with an importance-matrix path, and the fixture cases every one must have.
const TYPES: [GgmlType; 9] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];
const CASES: [&str; 8] = [
    "imatrix",
    "imatrix768",
    "equal",
    "zero_w",
    "zero_rows",
    "extremes",
    "ties_w",
    "nonfinite_w",
];

/// Bytes of `n` values of `ty` (whole blocks).
fn bytes(ty: GgmlType, n: usize) -> usize {
    ty.row_size(n as u64).unwrap() as usize
}

/// The `quant_w` manifest lines: (case, type) -> element count.
fn weighted_manifest() -> BTreeMap<(String, String), usize> {
    let text = String::from_utf8(read("MANIFEST.txt")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("quant_w "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 5, "bad manifest line {l:?}");
            ((f[1].to_string(), f[2].to_string()), f[3].parse().unwrap())
        })
        .collect()
}

/// Where two outputs first differ, as row / block / byte within the block.
fn first_difference(
    ty: GgmlType,
    n_per_row: usize,
    ours: &[u8],
    expected: &[u8],
) -> Option<String> {
    let i = ours.iter().zip(expected).position(|(a, b)| a != b)?;
    let ts = ty.type_size();
    let row_bytes = n_per_row / ty.block_size() * ts;
    let (row, in_row) = (i / row_bytes, i % row_bytes);
    let (blk, off) = (in_row / ts, in_row % ts);
    let start = i - off;
    let end = (start + ts).min(ours.len());
    Some(format!(
        "row {row}, block {blk} (values {}..{}), byte {off} of the block\n  ours:     {:02x?}\n  expected: {:02x?}",
        blk * ty.block_size(),
        (blk + 1) * ty.block_size(),
        &ours[start..end],
        &expected[start..end]
    ))
}

/// Checks every weighted fixture of `ty`; returns how many there were.
fn check_type(ty: GgmlType) -> usize {
    let manifest = weighted_manifest();
    let mut failures = Vec::new();
    let mut n = 0;
    for ((case, name), &elements) in &manifest {
        if name != ty.name() {
            continue;
        }
        let x = read_f32(&format!("inputs_w/{case}.f32"));
        let w = read_f32(&format!("weights/{case}.f32"));
        let expected = read(&format!("quant_w/{case}.{name}.bin"));
        assert_eq!(x.len(), elements, "{case}: input length");
        let mut ours = vec![0u8; bytes(ty, x.len())];
        quantize_row_weighted(ty, &x, &w, &mut ours).unwrap_or_else(|e| panic!("{ty} {case}: {e}"));
        assert_eq!(ours.len(), expected.len(), "{ty} {case}: output length");
        if common::same_but_nan_payloads(ty, &ours, &expected) {
            // Equal but for the sign of NaN scales (x86's fixtures, aarch64's NaNs).
        } else if let Some(diff) = first_difference(ty, w.len(), &ours, &expected) {
            failures.push(format!("{ty} case {case} (n_per_row {}): {diff}", w.len()));
        }
        n += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {n} weighted fixtures differ from ggml:\n{}",
        failures.len(),
        failures.join("\n")
    );
    n
}

macro_rules! bit_exact {
    ($($name:ident: $ty:expr,)*) => {
        $(
            #[test]
            fn $name() {
                assert_eq!(check_type($ty), CASES.len(), "fixture count of {}", $ty);
            }
        )*
    };
}

bit_exact! {
    q4_0_matches_ggml: GgmlType::Q4_0,
    q4_1_matches_ggml: GgmlType::Q4_1,
    q5_0_matches_ggml: GgmlType::Q5_0,
    q5_1_matches_ggml: GgmlType::Q5_1,
    q2_k_matches_ggml: GgmlType::Q2K,
    q3_k_matches_ggml: GgmlType::Q3K,
    q4_k_matches_ggml: GgmlType::Q4K,
    q5_k_matches_ggml: GgmlType::Q5K,
    q6_k_matches_ggml: GgmlType::Q6K,
}

/// Every case/type pair the generator writes is in the manifest (guards against a silently
/// shrunken fixture set), and the weights match the inputs' row length.
#[test]
fn manifest_is_complete() {
    let manifest = weighted_manifest();
    assert_eq!(manifest.len(), TYPES.len() * CASES.len());
    for case in CASES {
        let n_per_row = read_f32(&format!("weights/{case}.f32")).len();
        assert!(n_per_row > 0 && n_per_row.is_multiple_of(256), "{case}");
        for ty in TYPES {
            let elements = manifest
                .get(&(case.to_string(), ty.name().to_string()))
                .unwrap_or_else(|| panic!("no quant_w {case} {ty}"));
            assert!(elements.is_multiple_of(n_per_row), "{case} {ty}");
            assert!(elements / n_per_row >= 3, "{case}: several rows");
        }
    }
}

/// The weights matter: with non-uniform importances the bytes differ from the reference
/// quantizer's (so the tests above do not pass by falling back to it).
#[test]
fn weights_change_the_result() {
    let x = read_f32("inputs_w/imatrix.f32");
    let w = read_f32("weights/imatrix.f32");
    for ty in TYPES {
        let mut weighted = vec![0u8; bytes(ty, x.len())];
        let mut reference = weighted.clone();
        quantize_row_weighted(ty, &x, &w, &mut weighted).unwrap();
        rgemma_quant::quantize_row(ty, &x, &mut reference).unwrap();
        assert_ne!(weighted, reference, "{ty}");
    }
}

#[test]
fn only_types_with_an_importance_path_are_accepted() {
    use GgmlType::*;
    for ty in TYPES {
        assert!(can_quantize_weighted(ty), "{ty}");
    }
    // Q8_0: ggml's quantize_q8_0 ignores its weights (use quantize_row); the float types and
    // the activation formats have no weighted quantizer; IQ types are not implemented.
    for ty in [F32, F16, BF16, Q8_0, Q8_1, Q8K, Iq4Nl] {
        assert!(!can_quantize_weighted(ty), "{ty}");
        let x = vec![0.5f32; 256];
        let w = vec![1.0f32; 256];
        let mut dst = vec![0u8; 4096];
        assert_eq!(
            quantize_row_weighted(ty, &x, &w, &mut dst),
            Err(QuantError::Unsupported(ty)),
            "{ty}"
        );
    }
}

#[test]
fn bad_lengths_are_errors() {
    use GgmlType::*;
    let x = vec![0.25f32; 1024];
    let w = vec![1.0f32; 512];

    // n_per_row (the weights' length) not a multiple of the block size.
    let mut dst = vec![0u8; bytes(Q4_0, 1024)];
    assert_eq!(
        quantize_row_weighted(Q4_0, &x[..48], &w[..48], &mut dst),
        Err(QuantError::NotBlockAligned { ty: Q4_0, n: 48 })
    );
    assert_eq!(
        quantize_row_weighted(Q4K, &x[..512], &w[..128], &mut dst),
        Err(QuantError::NotBlockAligned { ty: Q4K, n: 128 })
    );

    // src not a whole number of rows.
    let mut dst = vec![0u8; bytes(Q6K, 768)];
    assert_eq!(
        quantize_row_weighted(Q6K, &x[..768], &w, &mut dst),
        Err(QuantError::RowMismatch {
            n: 768,
            n_per_row: 512
        })
    );
    // No weights for a non-empty src.
    assert_eq!(
        quantize_row_weighted(Q6K, &x[..256], &[], &mut dst),
        Err(QuantError::RowMismatch {
            n: 256,
            n_per_row: 0
        })
    );

    // Destination too small / too large.
    for extra in [-1isize, 1] {
        let len = (bytes(Q5K, 1024) as isize + extra) as usize;
        let mut dst = vec![0u8; len];
        assert_eq!(
            quantize_row_weighted(Q5K, &x, &w, &mut dst),
            Err(QuantError::LengthMismatch {
                expected: bytes(Q5K, 1024),
                found: len
            })
        );
    }

    // Nothing to do is fine, with or without weights.
    assert_eq!(quantize_row_weighted(Q2K, &[], &[], &mut []), Ok(()));
    assert_eq!(quantize_row_weighted(Q2K, &[], &w, &mut []), Ok(()));
}

/// Rows are independent: quantizing rows one at a time gives the bytes of quantizing them
/// together (the weights apply to every row alike).
#[test]
fn rows_are_quantized_independently() {
    let x = read_f32("inputs_w/imatrix768.f32");
    let w = read_f32("weights/imatrix768.f32");
    for ty in TYPES {
        let mut all = vec![0u8; bytes(ty, x.len())];
        quantize_row_weighted(ty, &x, &w, &mut all).unwrap();
        let row_bytes = bytes(ty, w.len());
        for (r, (xr, expected)) in x.chunks(w.len()).zip(all.chunks(row_bytes)).enumerate() {
            let mut one = vec![0u8; row_bytes];
            quantize_row_weighted(ty, xr, &w, &mut one).unwrap();
            assert_eq!(&one, expected, "{ty} row {r}");
        }
    }
}
