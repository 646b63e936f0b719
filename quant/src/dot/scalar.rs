//! Portable kernels: integer dot per block, scaled into f32 per block. They are the
//! fallback on CPUs without SIMD and the reference the SIMD kernels are tested against, so
//! they favour obviousness: every block is decoded into plain integer codes with the
//! layouts documented in `legacy.rs` / `kquants.rs`, then multiplied element by element.

use super::{tile_dispatch, TileFn};
use crate::block::read_u16;
use crate::kquants::{get_scale_min_k4, q3k_scale};
use crate::{bf16_to_f32, f16_to_f32, GgmlType};

pub(super) fn tile_fn(ty: GgmlType) -> Option<TileFn> {
    use GgmlType::*;
    Some(match ty {
        F32 => tile_f32,
        F16 => tile_f16,
        BF16 => tile_bf16,
        Q4_0 => tile_q4_0,
        Q4_1 => tile_q4_1,
        Q5_0 => tile_q5_0,
        Q5_1 => tile_q5_1,
        Q8_0 => tile_q8_0,
        Q2K => tile_q2k,
        Q3K => tile_q3k,
        Q4K => tile_q4k,
        Q5K => tile_q5k,
        Q6K => tile_q6k,
        _ => return None,
    })
}

/// The bytes of `n` values of `ty` at `p`.
///
/// Safety: the caller guarantees they are in bounds.
unsafe fn bytes<'a>(p: *const u8, n: usize, ty: GgmlType) -> &'a [u8] {
    // SAFETY: forwarded.
    unsafe { std::slice::from_raw_parts(p, n / ty.block_size() * ty.type_size()) }
}

// ------------------------------------------------------------------ float weights

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// Float weights (decoded by `weight`) against f32 activations, summed in f32.
unsafe fn float_kernel<const C: usize>(
    n: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    ty: GgmlType,
    weight: impl Fn(&[u8], usize) -> f32,
) -> [f32; C] {
    // SAFETY: TileFn contract.
    let wb = unsafe { bytes(w, n, ty) };
    std::array::from_fn(|c| {
        // SAFETY: TileFn contract (column c < ncols).
        let ab = unsafe { bytes(act.add(c * act_stride), n, GgmlType::F32) };
        (0..n).map(|i| weight(wb, i) * f32_at(ab, i)).sum()
    })
}

unsafe fn k_f32<const C: usize>(n: usize, w: *const u8, a: *const u8, s: usize) -> [f32; C] {
    // SAFETY: forwarded.
    unsafe { float_kernel::<C>(n, w, a, s, GgmlType::F32, f32_at) }
}
unsafe fn k_f16<const C: usize>(n: usize, w: *const u8, a: *const u8, s: usize) -> [f32; C] {
    // SAFETY: forwarded.
    unsafe {
        float_kernel::<C>(n, w, a, s, GgmlType::F16, |b, i| {
            f16_to_f32(read_u16(b, 2 * i))
        })
    }
}
unsafe fn k_bf16<const C: usize>(n: usize, w: *const u8, a: *const u8, s: usize) -> [f32; C] {
    // SAFETY: forwarded.
    unsafe {
        float_kernel::<C>(n, w, a, s, GgmlType::BF16, |b, i| {
            bf16_to_f32(read_u16(b, 2 * i))
        })
    }
}
tile_dispatch!(tile_f32, k_f32);
tile_dispatch!(tile_f16, k_f16);
tile_dispatch!(tile_bf16, k_bf16);

// ------------------------------------------------------------------ legacy 32-blocks

/// A decoded legacy weight block: value j = `d * codes[j] + m`.
struct Legacy {
    d: f32,
    m: f32,
    codes: [i32; 32],
}

/// Low nibbles are elements 0..16, high nibbles elements 16..32.
fn nibbles(qs: &[u8]) -> [i32; 32] {
    std::array::from_fn(|j| {
        if j < 16 {
            (qs[j] & 15) as i32
        } else {
            (qs[j - 16] >> 4) as i32
        }
    })
}

/// Adds the 5th bits (bit j of the little-endian u32 at `qh`) to the nibbles.
fn with_high_bits(mut codes: [i32; 32], qh: &[u8]) -> [i32; 32] {
    let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for (j, c) in codes.iter_mut().enumerate() {
        *c |= (((bits >> j) & 1) as i32) << 4;
    }
    codes
}

fn dec_q4_0(b: &[u8]) -> Legacy {
    Legacy {
        d: f16_to_f32(read_u16(b, 0)),
        m: 0.0,
        codes: nibbles(&b[2..18]).map(|q| q - 8),
    }
}
fn dec_q4_1(b: &[u8]) -> Legacy {
    Legacy {
        d: f16_to_f32(read_u16(b, 0)),
        m: f16_to_f32(read_u16(b, 2)),
        codes: nibbles(&b[4..20]),
    }
}
fn dec_q5_0(b: &[u8]) -> Legacy {
    let codes = with_high_bits(nibbles(&b[6..22]), &b[2..6]).map(|q| q - 16);
    Legacy {
        d: f16_to_f32(read_u16(b, 0)),
        m: 0.0,
        codes,
    }
}
fn dec_q5_1(b: &[u8]) -> Legacy {
    let codes = with_high_bits(nibbles(&b[8..24]), &b[4..8]);
    Legacy {
        d: f16_to_f32(read_u16(b, 0)),
        m: f16_to_f32(read_u16(b, 2)),
        codes,
    }
}
fn dec_q8_0(b: &[u8]) -> Legacy {
    Legacy {
        d: f16_to_f32(read_u16(b, 0)),
        m: 0.0,
        codes: std::array::from_fn(|j| b[2 + j] as i8 as i32),
    }
}

/// Legacy weights against Q8_0 (`with_sum` false) or Q8_1 (true) activations:
/// `Σ_blocks d_w·d_a·Σ q_w·q_a (+ m_w·s_a)`.
unsafe fn legacy_kernel<const C: usize>(
    n: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    ty: GgmlType,
    decode: fn(&[u8]) -> Legacy,
) -> [f32; C] {
    let act_ty = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
        GgmlType::Q8_1
    } else {
        GgmlType::Q8_0
    };
    // SAFETY: TileFn contract.
    let wb = unsafe { bytes(w, n, ty) };
    let (wts, ats) = (ty.type_size(), act_ty.type_size());
    std::array::from_fn(|c| {
        // SAFETY: TileFn contract (column c < ncols).
        let ab = unsafe { bytes(act.add(c * act_stride), n, act_ty) };
        let mut sum = 0.0f32;
        for (wblk, ablk) in wb.chunks_exact(wts).zip(ab.chunks_exact(ats)) {
            let wd = decode(wblk);
            let da = f16_to_f32(read_u16(ablk, 0));
            let qa = &ablk[ats - 32..];
            let isum: i32 = wd
                .codes
                .iter()
                .zip(qa)
                .map(|(&q, &a)| q * a as i8 as i32)
                .sum();
            sum += wd.d * da * isum as f32;
            if act_ty == GgmlType::Q8_1 {
                sum += wd.m * f16_to_f32(read_u16(ablk, 2));
            }
        }
        sum
    })
}

macro_rules! legacy_tile {
    ($tile:ident, $k:ident, $ty:expr, $dec:ident) => {
        unsafe fn $k<const C: usize>(n: usize, w: *const u8, a: *const u8, s: usize) -> [f32; C] {
            // SAFETY: forwarded.
            unsafe { legacy_kernel::<C>(n, w, a, s, $ty, $dec) }
        }
        tile_dispatch!($tile, $k);
    };
}
legacy_tile!(tile_q4_0, k_q4_0, GgmlType::Q4_0, dec_q4_0);
legacy_tile!(tile_q4_1, k_q4_1, GgmlType::Q4_1, dec_q4_1);
legacy_tile!(tile_q5_0, k_q5_0, GgmlType::Q5_0, dec_q5_0);
legacy_tile!(tile_q5_1, k_q5_1, GgmlType::Q5_1, dec_q5_1);
legacy_tile!(tile_q8_0, k_q8_0, GgmlType::Q8_0, dec_q8_0);

// ------------------------------------------------------------------ K-quants x Q8_K

/// A decoded K-quant super-block: value i = `d·scale[i/sub]·codes[i] − dmin·min[i/sub]`.
struct KBlock {
    d: f32,
    dmin: f32,
    /// Sub-block length: 32 (Q4_K, Q5_K) or 16 (Q2_K, Q3_K, Q6_K).
    sub: usize,
    scales: [i32; 16],
    mins: [i32; 16],
    codes: [i32; 256],
}

/// Q4_K and Q5_K share the header (d, dmin, 6-bit scales/mins) and the nibble layout of
/// `qs` (at `qs_off`): byte `32c + l` = element `64c + l` (low) | element `64c + 32 + l` (high).
fn dec_k4_common(b: &[u8], qs_off: usize) -> KBlock {
    let sc: &[u8; 12] = b[4..16].try_into().expect("12 bytes");
    let mut k = KBlock {
        d: f16_to_f32(read_u16(b, 0)),
        dmin: f16_to_f32(read_u16(b, 2)),
        sub: 32,
        scales: [0; 16],
        mins: [0; 16],
        codes: [0; 256],
    };
    for j in 0..8 {
        let (s, m) = get_scale_min_k4(j, sc);
        (k.scales[j], k.mins[j]) = (s as i32, m as i32);
    }
    for c in 0..4 {
        for l in 0..32 {
            let q = b[qs_off + 32 * c + l];
            k.codes[64 * c + l] = (q & 15) as i32;
            k.codes[64 * c + 32 + l] = (q >> 4) as i32;
        }
    }
    k
}

/// Q2_K and Q3_K share the 2-bit layout of `qs` (at `qs_off`): byte `32h + l` holds
/// elements `128h + l + 32k` in bits `2k..2k+2`.
fn two_bit_codes(b: &[u8], qs_off: usize) -> [i32; 256] {
    std::array::from_fn(|i| {
        let (h, k, l) = (i / 128, i % 128 / 32, i % 32);
        ((b[qs_off + 32 * h + l] >> (2 * k)) & 3) as i32
    })
}

/// Q2_K: sub-block j has scale `scales[j] & 15` and min `scales[j] >> 4`; codes 0..=3.
fn dec_q2k(b: &[u8]) -> KBlock {
    KBlock {
        d: f16_to_f32(read_u16(b, 80)),
        dmin: f16_to_f32(read_u16(b, 82)),
        sub: 16,
        scales: std::array::from_fn(|j| (b[j] & 15) as i32),
        mins: std::array::from_fn(|j| (b[j] >> 4) as i32),
        codes: two_bit_codes(b, 16),
    }
}

/// Q3_K: signed 6-bit scales, codes `low2 − 4` where element `i`'s bit `i / 32` of
/// `hmask[i % 32]` is clear, `low2` where it is set (so −4..=3); no mins.
fn dec_q3k(b: &[u8]) -> KBlock {
    let sc: &[u8; 12] = b[96..108].try_into().expect("12 bytes");
    let mut codes = two_bit_codes(b, 32);
    for (i, q) in codes.iter_mut().enumerate() {
        if b[i % 32] & (1 << (i / 32)) == 0 {
            *q -= 4;
        }
    }
    KBlock {
        d: f16_to_f32(read_u16(b, 108)),
        dmin: 0.0,
        sub: 16,
        scales: std::array::from_fn(|j| q3k_scale(sc, j)),
        mins: [0; 16],
        codes,
    }
}

fn dec_q4k(b: &[u8]) -> KBlock {
    dec_k4_common(b, 16)
}

/// Q5_K: element `64c + l` takes its 5th bit from bit `2c` of `qh[l]`, element
/// `64c + 32 + l` from bit `2c + 1`.
fn dec_q5k(b: &[u8]) -> KBlock {
    let mut k = dec_k4_common(b, 48);
    for c in 0..4 {
        for l in 0..32 {
            let h = b[16 + l];
            k.codes[64 * c + l] |= (((h >> (2 * c)) & 1) as i32) << 4;
            k.codes[64 * c + 32 + l] |= (((h >> (2 * c + 1)) & 1) as i32) << 4;
        }
    }
    k
}

fn dec_q6k(b: &[u8]) -> KBlock {
    let mut k = KBlock {
        d: f16_to_f32(read_u16(b, 208)),
        dmin: 0.0,
        sub: 16,
        scales: std::array::from_fn(|j| b[192 + j] as i8 as i32),
        mins: [0; 16],
        codes: [0; 256],
    };
    for half in 0..2 {
        let (ql, qh) = (&b[64 * half..], &b[128 + 32 * half..]);
        let y = &mut k.codes[128 * half..];
        for l in 0..32 {
            let h = qh[l] as i32;
            y[l] = (ql[l] & 15) as i32 | (h & 3) << 4;
            y[l + 32] = (ql[l + 32] & 15) as i32 | ((h >> 2) & 3) << 4;
            y[l + 64] = (ql[l] >> 4) as i32 | ((h >> 4) & 3) << 4;
            y[l + 96] = (ql[l + 32] >> 4) as i32 | ((h >> 6) & 3) << 4;
        }
    }
    for q in k.codes.iter_mut() {
        *q -= 32;
    }
    k
}

/// K-quant weights against Q8_K activations: per super-block
/// `d·d_a·Σ_j scale_j·Σ q·a − dmin·d_a·Σ_j min_j·Σ a`, the last sum from Q8_K's `bsums`.
unsafe fn kquant_kernel<const C: usize>(
    n: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    ty: GgmlType,
    decode: fn(&[u8]) -> KBlock,
) -> [f32; C] {
    // SAFETY: TileFn contract.
    let wb = unsafe { bytes(w, n, ty) };
    std::array::from_fn(|c| {
        // SAFETY: TileFn contract (column c < ncols).
        let ab = unsafe { bytes(act.add(c * act_stride), n, GgmlType::Q8K) };
        let mut sum = 0.0f32;
        for (wblk, ablk) in wb.chunks_exact(ty.type_size()).zip(ab.chunks_exact(292)) {
            let k = decode(wblk);
            let da = f32::from_le_bytes([ablk[0], ablk[1], ablk[2], ablk[3]]);
            let qa = |i: usize| ablk[4 + i] as i8 as i32;
            let bsum = |j: usize| i16::from_le_bytes([ablk[260 + 2 * j], ablk[261 + 2 * j]]) as i32;
            let (mut dots, mut mins) = (0i32, 0i32);
            for j in 0..256 / k.sub {
                let part: i32 = (j * k.sub..(j + 1) * k.sub)
                    .map(|i| k.codes[i] * qa(i))
                    .sum();
                dots += k.scales[j] * part;
                let a_sum: i32 = (j * k.sub / 16..(j + 1) * k.sub / 16).map(bsum).sum();
                mins += k.mins[j] * a_sum;
            }
            sum += k.d * da * dots as f32 - k.dmin * da * mins as f32;
        }
        sum
    })
}

macro_rules! kquant_tile {
    ($tile:ident, $k:ident, $ty:expr, $dec:ident) => {
        unsafe fn $k<const C: usize>(n: usize, w: *const u8, a: *const u8, s: usize) -> [f32; C] {
            // SAFETY: forwarded.
            unsafe { kquant_kernel::<C>(n, w, a, s, $ty, $dec) }
        }
        tile_dispatch!($tile, $k);
    };
}
kquant_tile!(tile_q2k, k_q2k, GgmlType::Q2K, dec_q2k);
kquant_tile!(tile_q3k, k_q3k, GgmlType::Q3K, dec_q3k);
kquant_tile!(tile_q4k, k_q4k, GgmlType::Q4K, dec_q4k);
kquant_tile!(tile_q5k, k_q5k, GgmlType::Q5K, dec_q5k);
kquant_tile!(tile_q6k, k_q6k, GgmlType::Q6K, dec_q6k);

/// Eight independent partial sums (the compiler can keep them in one SIMD register).
pub(super) fn f32_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}
