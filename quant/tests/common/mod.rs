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
