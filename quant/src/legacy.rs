//! The 32-element "legacy" formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1.
//!
//! Shared conventions (ggml-common.h / ggml-quants.c):
//! - scales (`d`) and offsets (`m`) are f16, stored as raw bits;
//! - 4-bit codes are packed "split halves": byte `j` of `qs` holds element `j` in its low
//!   nibble and element `j + 16` in its high nibble;
//! - Q5 formats keep the 5th bit of element `j` in bit `j` of the little-endian u32 `qh`;
//! - the codes are computed with the full-precision f32 scale; only the stored scale is
//!   rounded to f16 (so dequantization uses a slightly different scale than quantization).

use crate::block::{read_array, read_i8_array, read_u16, write_i8_slice, write_u16, Block};
use crate::float::{f16_to_f32, f32_to_f16};
use crate::rounding::{c_f32_to_low_byte, c_max};

/// Elements per legacy block.
pub const QK: usize = 32;

/// The value of largest magnitude in `x`, with its sign (the first one on ties; NaNs are
/// never selected), as ggml's Q4_0/Q5_0 quantizers pick it.
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// `(min, max)` of `x` as ggml's Q4_1/Q5_1 quantizers compute them (NaNs are skipped).
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `d ? 1.0f/d : 0.0f`: the inverse scale, 0 for an all-zero block.
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// ggml's `MIN(cap, (int8_t)v)` stored into a `uint8_t`: truncation after the caller's
/// +0.5/+8.5/+16.5 offset (which makes it round half up), capped at the top code. A negative
/// result (impossible for finite input) wraps like the C assignment does.
fn trunc_code(v: f32, cap: i32) -> u8 {
    let t = c_f32_to_low_byte(v) as i8 as i32;
    t.min(cap) as u8
}

/// Q4_0: 32 values as `d * (q - 8)`, q in 0..=15. 18 bytes.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 2 | `d` (f16) |
/// | 2 | 16 | `qs`: byte j = q[j] \| q[j+16] << 4 |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl Block for BlockQ4_0 {
    const ELEMENTS: usize = QK;
    const BYTES: usize = 18;

    fn read(b: &[u8]) -> Self {
        BlockQ4_0 {
            d: read_u16(b, 0),
            qs: read_array(b, 2),
        }
    }

    fn write(&self, b: &mut [u8]) {
        write_u16(b, 0, self.d);
        b[2..18].copy_from_slice(&self.qs);
    }

    /// `quantize_row_q4_0_ref`: d = (signed max-abs) / -8, so that element lands exactly on
    /// code 0 (value -8d); q = min(15, trunc(x/d + 8.5)).
    fn quantize(x: &[f32]) -> Self {
        let d = signed_absmax(x) / -8.0;
        let id = inverse(d);
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            let lo = trunc_code(x[j] * id + 8.5, 15);
            let hi = trunc_code(x[j + QK / 2] * id + 8.5, 15);
            *q = lo | (hi << 4);
        }
        BlockQ4_0 {
            d: f32_to_f16(d),
            qs,
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            y[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Q4_1: 32 values as `d * q + m`, q in 0..=15. 20 bytes.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 2 | `d` (f16) |
/// | 2 | 2 | `m` (f16): the block minimum |
/// | 4 | 16 | `qs` (as Q4_0) |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

impl Block for BlockQ4_1 {
    const ELEMENTS: usize = QK;
    const BYTES: usize = 20;

    fn read(b: &[u8]) -> Self {
        BlockQ4_1 {
            d: read_u16(b, 0),
            m: read_u16(b, 2),
            qs: read_array(b, 4),
        }
    }

    fn write(&self, b: &mut [u8]) {
        write_u16(b, 0, self.d);
        write_u16(b, 2, self.m);
        b[4..20].copy_from_slice(&self.qs);
    }

    /// `quantize_row_q4_1_ref`: d = (max - min) / 15, q = min(15, trunc((x - min)/d + 0.5)).
    fn quantize(x: &[f32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            let lo = trunc_code((x[j] - min) * id + 0.5, 15);
            let hi = trunc_code((x[j + QK / 2] - min) * id + 0.5, 15);
            *q = lo | (hi << 4);
        }
        BlockQ4_1 {
            d: f32_to_f16(d),
            m: f32_to_f16(min),
            qs,
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = (q & 0x0F) as f32 * d + m;
            y[j + QK / 2] = (q >> 4) as f32 * d + m;
        }
    }
}

/// Q5_0: 32 values as `d * (q - 16)`, q in 0..=31. 22 bytes.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 2 | `d` (f16) |
/// | 2 | 4 | `qh`: u32 LE, bit j = bit 4 of q[j] |
/// | 6 | 16 | `qs`: low 4 bits (as Q4_0) |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// Packs 5-bit codes: low nibbles into `qs` (split halves), 5th bits into a u32.
pub(crate) fn pack_5bit(codes: impl Fn(usize) -> u8) -> ([u8; 4], [u8; QK / 2]) {
    let mut qh = 0u32;
    let mut qs = [0u8; QK / 2];
    for (j, q) in qs.iter_mut().enumerate() {
        let lo = codes(j);
        let hi = codes(j + QK / 2);
        *q = (lo & 0x0F) | ((hi & 0x0F) << 4);
        qh |= (((lo & 0x10) >> 4) as u32) << j;
        qh |= (((hi & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    (qh.to_le_bytes(), qs)
}

/// The 5-bit code of element `j` (and `j + 16`) of a Q5 block.
fn unpack_5bit(qh: [u8; 4], qs: &[u8; QK / 2], j: usize) -> (i32, i32) {
    let qh = u32::from_le_bytes(qh);
    let high_lo = ((qh >> j) << 4) & 0x10;
    let high_hi = (qh >> (j + 12)) & 0x10;
    let lo = (qs[j] & 0x0F) as u32 | high_lo;
    let hi = (qs[j] >> 4) as u32 | high_hi;
    (lo as i32, hi as i32)
}

impl Block for BlockQ5_0 {
    const ELEMENTS: usize = QK;
    const BYTES: usize = 22;

    fn read(b: &[u8]) -> Self {
        BlockQ5_0 {
            d: read_u16(b, 0),
            qh: read_array(b, 2),
            qs: read_array(b, 6),
        }
    }

    fn write(&self, b: &mut [u8]) {
        write_u16(b, 0, self.d);
        b[2..6].copy_from_slice(&self.qh);
        b[6..22].copy_from_slice(&self.qs);
    }

    /// `quantize_row_q5_0_ref`: d = (signed max-abs) / -16, q = min(31, trunc(x/d + 16.5)).
    fn quantize(x: &[f32]) -> Self {
        let d = signed_absmax(x) / -16.0;
        let id = inverse(d);
        let (qh, qs) = pack_5bit(|j| trunc_code(x[j] * id + 16.5, 31));
        BlockQ5_0 {
            d: f32_to_f16(d),
            qh,
            qs,
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for j in 0..QK / 2 {
            let (lo, hi) = unpack_5bit(self.qh, &self.qs, j);
            y[j] = (lo - 16) as f32 * d;
            y[j + QK / 2] = (hi - 16) as f32 * d;
        }
    }
}

/// Q5_1: 32 values as `d * q + m`, q in 0..=31. 24 bytes.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 2 | `d` (f16) |
/// | 2 | 2 | `m` (f16) |
/// | 4 | 4 | `qh` (as Q5_0) |
/// | 8 | 16 | `qs` (as Q5_0) |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_1 {
    pub d: u16,
    pub m: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

impl Block for BlockQ5_1 {
    const ELEMENTS: usize = QK;
    const BYTES: usize = 24;

    fn read(b: &[u8]) -> Self {
        BlockQ5_1 {
            d: read_u16(b, 0),
            m: read_u16(b, 2),
            qh: read_array(b, 4),
            qs: read_array(b, 8),
        }
    }

    fn write(&self, b: &mut [u8]) {
        write_u16(b, 0, self.d);
        write_u16(b, 2, self.m);
        b[4..8].copy_from_slice(&self.qh);
        b[8..24].copy_from_slice(&self.qs);
    }

    /// `quantize_row_q5_1_ref`: d = (max - min) / 31, q = trunc((x - min)/d + 0.5). Unlike
    /// Q4_1 there is no cap: the C code casts straight to `uint8_t`.
    fn quantize(x: &[f32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        let (qh, qs) = pack_5bit(|j| c_f32_to_low_byte((x[j] - min) * id + 0.5));
        BlockQ5_1 {
            d: f32_to_f16(d),
            m: f32_to_f16(min),
            qh,
            qs,
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        for j in 0..QK / 2 {
            let (lo, hi) = unpack_5bit(self.qh, &self.qs, j);
            y[j] = lo as f32 * d + m;
            y[j + QK / 2] = hi as f32 * d + m;
        }
    }
}

/// The Q8_0/Q8_1 codes: d = max|x| / 127, q = roundf(x/d) (half away from zero).
fn quantize_q8(x: &[f32]) -> (f32, [i8; QK]) {
    let mut amax = 0.0f32;
    for &v in x {
        amax = c_max(amax, v.abs());
    }
    let d = amax / 127.0;
    let id = inverse(d);
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(x) {
        // C assigns the float result of roundf to an int8_t: a truncating conversion of an
        // already-integral value.
        *q = c_f32_to_low_byte((v * id).round()) as i8;
    }
    (d, qs)
}

/// Q8_0: 32 values as `d * q`, q in -127..=127. 34 bytes.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 2 | `d` (f16) |
/// | 2 | 32 | `qs` (i8) |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl Block for BlockQ8_0 {
    const ELEMENTS: usize = QK;
    const BYTES: usize = 34;

    fn read(b: &[u8]) -> Self {
        BlockQ8_0 {
            d: read_u16(b, 0),
            qs: read_i8_array(b, 2),
        }
    }

    fn write(&self, b: &mut [u8]) {
        write_u16(b, 0, self.d);
        write_i8_slice(b, 2, &self.qs);
    }

    /// `quantize_row_q8_0_ref`.
    fn quantize(x: &[f32]) -> Self {
        let (d, qs) = quantize_q8(x);
        BlockQ8_0 {
            d: f32_to_f16(d),
            qs,
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}

/// Q8_1: Q8_0 plus `s`, used as the activation side of Q4_1/Q5_1 dot products. 36 bytes.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 2 | `d` (f16) |
/// | 2 | 2 | `s` (f16) = d * Σq (ggml's C reference; the CUDA quantizer stores Σx instead) |
/// | 4 | 32 | `qs` (i8) |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_1 {
    pub d: u16,
    pub s: u16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

impl Block for BlockQ8_1 {
    const ELEMENTS: usize = QK;
    const BYTES: usize = 36;

    fn read(b: &[u8]) -> Self {
        BlockQ8_1 {
            d: read_u16(b, 0),
            s: read_u16(b, 2),
            qs: read_i8_array(b, 4),
        }
    }

    fn write(&self, b: &mut [u8]) {
        write_u16(b, 0, self.d);
        write_u16(b, 2, self.s);
        write_i8_slice(b, 4, &self.qs);
    }

    /// `quantize_row_q8_1_ref`: the Q8_0 codes, and `s = f16((Σq) * d)` with the f32 `d`.
    fn quantize(x: &[f32]) -> Self {
        let (d, qs) = quantize_q8(x);
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        BlockQ8_1 {
            d: f32_to_f16(d),
            s: f32_to_f16(sum as f32 * d),
            qs,
        }
    }

    /// `d * q` (ggml has no Q8_1 dequantizer; `s` is redundant for this).
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}
