//! Bit-exactness against references produced outside this crate.
//!
//! The fixtures in `tests/fixtures/` were made by `scripts/gen_quant_fixtures.py` from the
//! `gguf` PyPI package (numpy ports of ggml's quantizers) and from ggml's own C reference
//! code (`quantize_row_*_ref`, `dequantize_row_*`), cross-checked against each other where
//! both exist; `MANIFEST.txt` lists every file with its source. Nothing here compares against
//! this crate's own earlier output.

use std::collections::HashMap;

use rgemma_quant::{dequantize_row, quantize_row, GgmlType};

mod common;
use common::{read_fixture as read, read_fixture_f32 as read_f32, same_but_nan_payloads};

/// One manifest line: `kind case type elements source`.
struct Entry {
    kind: String,
    case: String,
    ty: GgmlType,
    elements: usize,
}

fn manifest() -> Vec<Entry> {
    let text = String::from_utf8(read("MANIFEST.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 5, "bad manifest line {l:?}");
            Entry {
                kind: f[0].to_string(),
                case: f[1].to_string(),
                ty: GgmlType::from_name(f[2]).unwrap_or_else(|| panic!("type {}", f[2])),
                elements: f[3].parse().unwrap(),
            }
        })
        .collect()
}

/// Describes the first difference between two byte strings, by block.
fn first_difference(ty: GgmlType, ours: &[u8], expected: &[u8]) -> String {
    let ts = ty.type_size();
    let i = ours
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len());
    let blk = i / ts;
    let range = blk * ts..((blk + 1) * ts).min(ours.len()).min(expected.len());
    format!(
        "first difference at byte {i} (block {blk}, offset {})\n  ours:     {:02x?}\n  expected: {:02x?}",
        i % ts,
        &ours[range.clone()],
        &expected[range]
    )
}

/// Compares f32 arrays bit for bit (so -0.0 vs 0.0 and NaN payloads count).
fn assert_same_bits(what: &str, ours: &[f32], expected: &[f32]) {
    assert_eq!(ours.len(), expected.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(expected).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{what}: element {i}: ours {a:e}, expected {b:e}"
        );
    }
}

/// Checks every `quant` fixture of type `ty`; returns the cases checked.
fn check_quantize(ty: GgmlType) -> Vec<String> {
    let mut checked = Vec::new();
    for e in manifest()
        .iter()
        .filter(|e| e.kind == "quant" && e.ty == ty)
    {
        let x = read_f32(&format!("inputs/{}.f32", e.case));
        assert_eq!(x.len(), e.elements);
        let expected = read(&format!("quant/{}.{}.bin", e.case, ty.name()));
        let mut ours = vec![0u8; ty.row_size(x.len() as u64).unwrap() as usize];
        quantize_row(ty, &x, &mut ours).unwrap();
        assert!(
            ours == expected || same_but_nan_payloads(ty, &ours, &expected),
            "quantize {ty} case {}: {}",
            e.case,
            first_difference(ty, &ours, &expected)
        );
        checked.push(e.case.clone());
    }
    checked
}

/// Checks every `dequant` and `blocks` fixture of type `ty`; returns how many.
fn check_dequantize(ty: GgmlType) -> usize {
    let mut n = 0;
    for e in manifest().iter().filter(|e| e.ty == ty) {
        let (src, expected) = match e.kind.as_str() {
            "dequant" => (
                format!("quant/{}.{}.bin", e.case, ty.name()),
                format!("dequant/{}.{}.f32", e.case, ty.name()),
            ),
            "blocks" => (
                format!("blocks/{}.bin", ty.name()),
                format!("blocks/{}.f32", ty.name()),
            ),
            _ => continue,
        };
        let bytes = read(&src);
        let expected = read_f32(&expected);
        assert_eq!(expected.len(), e.elements);
        let mut ours = vec![0f32; expected.len()];
        dequantize_row(ty, &bytes, &mut ours).unwrap();
        assert_same_bits(
            &format!("dequantize {ty} {} {}", e.kind, e.case),
            &ours,
            &expected,
        );
        n += 1;
    }
    n
}

/// The input cases every quantized type must have been checked on.
const ALL_CASES: [&str; 15] = [
    "normal",
    "weights",
    "uniform",
    "laplace",
    "positive",
    "negative",
    "zeros",
    "one_nonzero",
    "neg_max",
    "ties",
    "ktie",
    "tiny",
    "large",
    "huge",
    "nonfinite",
];

fn check_type(ty: GgmlType) {
    let cases = check_quantize(ty);
    for case in ALL_CASES {
        assert!(
            cases.iter().any(|c| c == case),
            "{ty}: no quantize fixture for case {case}"
        );
    }
    // 4 dequantized cases + 1 random-bytes set at least.
    assert!(
        check_dequantize(ty) >= 5,
        "{ty}: too few dequantize fixtures"
    );
}

macro_rules! bit_exact_tests {
    ($($name:ident => $ty:expr,)*) => {$(
        #[test]
        fn $name() {
            check_type($ty);
        }
    )*};
}

bit_exact_tests! {
    f16_matches_ggml => GgmlType::F16,
    bf16_matches_ggml => GgmlType::BF16,
    q4_0_matches_ggml => GgmlType::Q4_0,
    q4_1_matches_ggml => GgmlType::Q4_1,
    q5_0_matches_ggml => GgmlType::Q5_0,
    q5_1_matches_ggml => GgmlType::Q5_1,
    q8_0_matches_ggml => GgmlType::Q8_0,
    q8_1_matches_ggml => GgmlType::Q8_1,
    q2_k_matches_ggml => GgmlType::Q2K,
    q3_k_matches_ggml => GgmlType::Q3K,
    q4_k_matches_ggml => GgmlType::Q4K,
    q5_k_matches_ggml => GgmlType::Q5K,
    q6_k_matches_ggml => GgmlType::Q6K,
    q8_k_matches_ggml => GgmlType::Q8K,
}

/// NaN, infinities, signed zeros and rounding boundaries through the scalar float
/// conversions (ggml: f16 NaN -> 0x7E00 | sign; bf16 NaN kept and made quiet).
#[test]
fn float_specials_match_ggml() {
    let x = read_f32("inputs/float_specials.f32");
    let mut count = 0;
    for ty in [GgmlType::F16, GgmlType::BF16] {
        let expected = read(&format!("quant/float_specials.{}.bin", ty.name()));
        for (i, v) in x.iter().enumerate() {
            let want = u16::from_le_bytes([expected[2 * i], expected[2 * i + 1]]);
            let ours = match ty {
                GgmlType::F16 => rgemma_quant::f32_to_f16(*v),
                _ => rgemma_quant::f32_to_bf16(*v),
            };
            assert_eq!(ours, want, "{ty} of {:#010x}", v.to_bits());
            let back = match ty {
                GgmlType::F16 => rgemma_quant::f16_to_f32(want),
                _ => rgemma_quant::bf16_to_f32(want),
            };
            let want_back = read_f32(&format!("dequant/float_specials.{}.f32", ty.name()))[i];
            assert_eq!(
                back.to_bits(),
                want_back.to_bits(),
                "{ty} -> f32 of {want:#06x}"
            );
            count += 1;
        }
    }
    assert!(count > 100);
}

/// Every fixture file the manifest names exists, and every type/kind combination the
/// generator should have produced is present (guards against a silently shrunken manifest).
#[test]
fn manifest_is_complete() {
    let mut kinds: HashMap<(String, GgmlType), usize> = HashMap::new();
    for e in manifest() {
        *kinds.entry((e.kind.clone(), e.ty)).or_default() += 1;
    }
    use GgmlType::*;
    for ty in [
        F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K,
    ] {
        assert!(
            kinds.get(&("quant".into(), ty)).copied().unwrap_or(0) >= ALL_CASES.len(),
            "{ty}"
        );
        assert!(
            kinds.get(&("dequant".into(), ty)).copied().unwrap_or(0) >= 4,
            "{ty}"
        );
        assert_eq!(
            kinds.get(&("blocks".into(), ty)).copied().unwrap_or(0),
            1,
            "{ty}"
        );
    }
}
