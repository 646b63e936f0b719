//! Helpers shared by the kernel test files (each includes this with `mod common;`).
// Each test file uses a different subset.
#![allow(dead_code)]

/// xorshift32: reproducible test data without a dependency. `next` is in [-1, 1), with an
/// occasional 8× outlier like real weights and activations.
pub struct Rng(pub u32);

impl Rng {
    pub fn bits(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }

    pub fn next(&mut self) -> f32 {
        let b = self.bits();
        let u = (b >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
        if b.is_multiple_of(97) {
            u * 8.0
        } else {
            u
        }
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.bits() as u8).collect()
    }
}

/// Offsets of a block's f16 fields: `d` (and `m` / `s` / `dmin`) of the legacy and K-quant
/// formats.
pub fn f16_offsets(ty: rgemma_quant::GgmlType) -> &'static [usize] {
    use rgemma_quant::GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q8_1 | Q4K | Q5K => &[0, 2],
        Q2K => &[80, 82],
        Q3K => &[108],
        Q6K => &[208],
        _ => &[],
    }
}

/// Equal bytes except f16 fields that are NaN on both sides. The fixtures come from ggml on
/// x86, whose NaNs are negative (0xFE00); aarch64 makes positive ones (0x7E00) for the same
/// non-finite input, in ggml as in our code.
pub fn same_but_nan_payloads(ty: rgemma_quant::GgmlType, ours: &[u8], expected: &[u8]) -> bool {
    let offsets = f16_offsets(ty);
    if ours.len() != expected.len() || offsets.is_empty() {
        return false;
    }
    let is_nan = |b: &[u8]| {
        let h = u16::from_le_bytes([b[0], b[1]]);
        h & 0x7c00 == 0x7c00 && h & 0x03ff != 0
    };
    let ts = ty.type_size();
    ours.chunks(ts).zip(expected.chunks(ts)).all(|(a, b)| {
        let mut a = a.to_vec();
        for &o in offsets {
            if is_nan(&a[o..o + 2]) && is_nan(&b[o..o + 2]) {
                a[o..o + 2].copy_from_slice(&b[o..o + 2]);
            }
        }
        a == b
    })
}

/// The bytes of `quant/tests/fixtures/<rel>`.
pub fn read_fixture(rel: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `quant/tests/fixtures/<rel>` as little-endian f32.
pub fn read_fixture_f32(rel: &str) -> Vec<f32> {
    read_fixture(rel)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
