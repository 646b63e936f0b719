//! aarch64 Advanced SIMD (NEON) kernels, mirroring `x86.rs`: one weight row against `C`
//! (1..=4) activation rows per call, the weight block unpacked once per call.
//!
//! Integer products use `vmull_s8` (i8 × i8 → i16, exact: |q·a| ≤ 127·127) and
//! `vpadalq_s16` (pairwise add into i32 lanes) — the baseline form of `SDOT`, so that they
//! run on every aarch64 core. They serve `Backend::Neon` and `Backend::NeonDot` for the
//! matrices that stay in the stored layout; with the dot product, Q4_0 and Q8_0 matrices are
//! repacked and multiplied by the `sdot` kernels of `packed/`. NEON is part of the aarch64
//! baseline, so these functions need no runtime check.

// The kernels index several per-column arrays with the same column index.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;

use super::{by_count, tile_dispatch, TileFn};
use crate::kquants::q3k_scale;
use crate::GgmlType;

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

// ------------------------------------------------------------------ helpers

/// 32 codes as two 16-lane halves (elements 0..16, 16..32).
type Codes = [int8x16_t; 2];

#[inline]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes.
    crate::f16_to_f32(unsafe { (p as *const u16).read_unaligned() })
}

#[inline]
unsafe fn f32_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 4 readable bytes.
    unsafe { (p as *const f32).read_unaligned() }
}

#[inline]
unsafe fn load_i8x32(p: *const u8) -> Codes {
    // SAFETY: the caller guarantees 32 readable bytes.
    unsafe { [vld1q_s8(p as *const i8), vld1q_s8(p.add(16) as *const i8)] }
}

/// Σ w·a over 32 lanes, as 4 i32 lanes.
#[inline]
unsafe fn dot32(w: &Codes, a: &Codes) -> int32x4_t {
    // SAFETY: register-only NEON arithmetic.
    unsafe {
        let mut acc = vdupq_n_s32(0);
        for k in 0..2 {
            acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w[k]), vget_low_s8(a[k])));
            acc = vpadalq_s16(acc, vmull_high_s8(w[k], a[k]));
        }
        acc
    }
}

/// Σ w·a over 16 lanes as one i32.
#[inline]
unsafe fn dot16(w: int8x16_t, a: int8x16_t) -> i32 {
    // SAFETY: register-only NEON arithmetic.
    unsafe {
        let acc = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(a)));
        vaddvq_s32(vpadalq_s16(acc, vmull_high_s8(w, a)))
    }
}

/// 16 bytes of packed nibbles -> codes 0..15: low nibbles (elements 0..16), high nibbles
/// (elements 16..32).
#[inline]
unsafe fn nibbles_32(p: *const u8) -> [uint8x16_t; 2] {
    // SAFETY: 16 readable bytes.
    unsafe {
        let x = vld1q_u8(p);
        [vandq_u8(x, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(x)]
    }
}

/// 0x10 in byte j where bit j of the little-endian u32 at `p` is set (Q5 high bits).
#[inline]
unsafe fn high_bits_32(p: *const u8) -> [uint8x16_t; 2] {
    // SAFETY: 4 readable bytes.
    unsafe {
        let b: [u8; 4] = *(p as *const [u8; 4]);
        let mask = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
        let sel = |lo: u8, hi: u8| {
            let bytes = vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi));
            vandq_u8(vtstq_u8(bytes, mask), vdupq_n_u8(0x10))
        };
        [sel(b[0], b[1]), sel(b[2], b[3])]
    }
}

#[inline]
unsafe fn to_signed(u: [uint8x16_t; 2], offset: i8) -> Codes {
    // SAFETY: register-only NEON arithmetic.
    unsafe { u.map(|v| vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(offset))) }
}

// ------------------------------------------------------------------ float weights

/// 4 f16 values (bits) to f32, exactly (`fcvtl`: half-precision conversion is in the aarch64
/// baseline; the Rust intrinsic needs the unstable f16 vector types, hence `asm!`).
#[inline(always)]
pub(crate) unsafe fn f16x4_to_f32(p: *const u8) -> float32x4_t {
    // SAFETY: 8 readable bytes; the conversion is register-only.
    unsafe {
        let h = vld1_u16(p as *const u16);
        let f: float32x4_t;
        std::arch::asm!(
            "fcvtl {f:v}.4s, {h:v}.4h",
            h = in(vreg) h,
            f = out(vreg) f,
            options(pure, nomem, nostack, preserves_flags)
        );
        f
    }
}

/// The 8 f16 values at `p` as two f32x4 (the packed kernels' per-row scales).
///
/// Safety: 16 readable bytes at `p`.
#[inline(always)]
pub(crate) unsafe fn f16x8_to_f32(p: *const u8) -> [float32x4_t; 2] {
    // SAFETY: forwarded (8 bytes each).
    unsafe { [f16x4_to_f32(p), f16x4_to_f32(p.add(8))] }
}

/// `dst[i] = src[i]` widened from f16 (exact), 4 values per step.
///
/// # Safety
/// `dst.len() >= src.len()` (NEON is in every aarch64 CPU).
pub(super) unsafe fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    let n = src.len();
    let (s, d) = (src.as_ptr() as *const u8, dst.as_mut_ptr());
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: values i..i + 4 lie inside both slices (`dst` is at least as long).
        unsafe { vst1q_f32(d.add(i), f16x4_to_f32(s.add(2 * i))) };
        i += 4;
    }
    for j in i..n {
        dst[j] = crate::f16_to_f32(src[j].to_bits());
    }
}

#[inline]
unsafe fn f32x4(p: *const u8) -> float32x4_t {
    // SAFETY: 16 readable bytes.
    unsafe { vld1q_f32(p as *const f32) }
}

#[inline]
unsafe fn bf16x4_to_f32(p: *const u8) -> float32x4_t {
    // SAFETY: 8 readable bytes.
    unsafe { vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p as *const u16))) }
}

#[inline]
unsafe fn bf16_at(p: *const u8) -> f32 {
    // SAFETY: 2 readable bytes.
    f32::from_bits((unsafe { (p as *const u16).read_unaligned() } as u32) << 16)
}

macro_rules! float_kernel {
    ($k:ident, $tile:ident, $wsize:expr, $load4:ident, $scalar:ident) => {
        unsafe fn $k<const C: usize>(
            n: usize,
            w: *const u8,
            a: *const u8,
            stride: usize,
        ) -> [f32; C] {
            let mut acc0 = [unsafe { vdupq_n_f32(0.0) }; C];
            let mut acc1 = acc0;
            let mut i = 0;
            // SAFETY (loop bodies): TileFn contract; i + 8 <= n (or i + 4 <= n) values.
            unsafe {
                while i + 8 <= n {
                    let w0 = $load4(w.add(i * $wsize));
                    let w1 = $load4(w.add((i + 4) * $wsize));
                    for c in 0..C {
                        let ap = a.add(c * stride + i * 4);
                        acc0[c] = vfmaq_f32(acc0[c], w0, f32x4(ap));
                        acc1[c] = vfmaq_f32(acc1[c], w1, f32x4(ap.add(16)));
                    }
                    i += 8;
                }
                while i + 4 <= n {
                    let w0 = $load4(w.add(i * $wsize));
                    for c in 0..C {
                        acc0[c] = vfmaq_f32(acc0[c], w0, f32x4(a.add(c * stride + i * 4)));
                    }
                    i += 4;
                }
            }
            let mut out = [0.0f32; C];
            for c in 0..C {
                // SAFETY: register arithmetic; j < n for the tail.
                unsafe {
                    out[c] = vaddvq_f32(vaddq_f32(acc0[c], acc1[c]));
                    for j in i..n {
                        out[c] += $scalar(w.add(j * $wsize)) * f32_at(a.add(c * stride + j * 4));
                    }
                }
            }
            out
        }
        tile_dispatch!($tile, $k);
    };
}
float_kernel!(k_f32, tile_f32, 4, f32x4, f32_at);
float_kernel!(k_f16, tile_f16, 2, f16x4_to_f32, f16_at);
float_kernel!(k_bf16, tile_bf16, 2, bf16x4_to_f32, bf16_at);

// ------------------------------------------------------------------ legacy x Q8_0 / Q8_1

#[inline]
unsafe fn dec_q4_0(p: *const u8) -> (f32, f32, Codes) {
    // SAFETY: one 18-byte block.
    unsafe { (f16_at(p), 0.0, to_signed(nibbles_32(p.add(2)), 8)) }
}

#[inline]
unsafe fn dec_q5_0(p: *const u8) -> (f32, f32, Codes) {
    // SAFETY: one 22-byte block.
    unsafe {
        let [lo, hi] = nibbles_32(p.add(6));
        let [hl, hh] = high_bits_32(p.add(2));
        (
            f16_at(p),
            0.0,
            to_signed([vorrq_u8(lo, hl), vorrq_u8(hi, hh)], 16),
        )
    }
}

#[inline]
unsafe fn dec_q8_0(p: *const u8) -> (f32, f32, Codes) {
    // SAFETY: one 34-byte block.
    unsafe { (f16_at(p), 0.0, load_i8x32(p.add(2))) }
}

#[inline]
unsafe fn dec_q4_1(p: *const u8) -> (f32, f32, Codes) {
    // SAFETY: one 20-byte block.
    unsafe {
        (
            f16_at(p),
            f16_at(p.add(2)),
            to_signed(nibbles_32(p.add(4)), 0),
        )
    }
}

#[inline]
unsafe fn dec_q5_1(p: *const u8) -> (f32, f32, Codes) {
    // SAFETY: one 24-byte block.
    unsafe {
        let [lo, hi] = nibbles_32(p.add(8));
        let [hl, hh] = high_bits_32(p.add(4));
        (
            f16_at(p),
            f16_at(p.add(2)),
            to_signed([vorrq_u8(lo, hl), vorrq_u8(hi, hh)], 0),
        )
    }
}

/// Legacy weights against Q8_0 (`$abytes` = 34, codes @2) or Q8_1 (36, s @2, codes @4;
/// adds `m·s`).
macro_rules! legacy_kernel {
    ($k:ident, $tile:ident, $wbytes:expr, $abytes:expr, $dec:ident) => {
        unsafe fn $k<const C: usize>(
            n: usize,
            w: *const u8,
            a: *const u8,
            stride: usize,
        ) -> [f32; C] {
            let mut acc = [unsafe { vdupq_n_f32(0.0) }; C];
            let mut mins = [0.0f32; C];
            for i in 0..n / 32 {
                // SAFETY: block i < n/32 of the weight row and of each activation row.
                unsafe {
                    let (dw, mw, q) = $dec(w.add(i * $wbytes));
                    for c in 0..C {
                        let ap = a.add(c * stride + i * $abytes);
                        let p = dot32(&q, &load_i8x32(ap.add($abytes - 32)));
                        acc[c] = vfmaq_n_f32(acc[c], vcvtq_f32_s32(p), dw * f16_at(ap));
                        if $abytes == 36 {
                            mins[c] += mw * f16_at(ap.add(2));
                        }
                    }
                }
            }
            let mut out = [0.0f32; C];
            for c in 0..C {
                // SAFETY: register arithmetic.
                out[c] = unsafe { vaddvq_f32(acc[c]) } + mins[c];
            }
            out
        }
        tile_dispatch!($tile, $k);
    };
}
legacy_kernel!(k_q4_0, tile_q4_0, 18, 34, dec_q4_0);
legacy_kernel!(k_q5_0, tile_q5_0, 22, 34, dec_q5_0);
legacy_kernel!(k_q8_0, tile_q8_0, 34, 34, dec_q8_0);
legacy_kernel!(k_q4_1, tile_q4_1, 20, 36, dec_q4_1);
legacy_kernel!(k_q5_1, tile_q5_1, 24, 36, dec_q5_1);

// ------------------------------------------------------------------ K-quants x Q8_K
//
// Q8_K block (292 bytes): d (f32) @0, qs[256] (i8) @4, bsums[16] (i16) @260.

#[inline]
unsafe fn bsum(ap: *const u8, j: usize) -> i32 {
    // SAFETY: inside one Q8_K block.
    unsafe { (ap.add(260 + 2 * j) as *const i16).read_unaligned() as i32 }
}

/// 16 bytes of 2-bit codes (Q2_K's `qs`, Q3_K's low bits) -> the codes 0..3 in bit pairs
/// 0, 2, 4, 6: elements `l`, `l + 32`, `l + 64`, `l + 96` of a 128-element half for the 16
/// bytes `l` loaded.
#[inline]
unsafe fn two_bit_codes(p: *const u8) -> [uint8x16_t; 4] {
    // SAFETY: 16 readable bytes.
    unsafe {
        let q = vld1q_u8(p);
        let m = vdupq_n_u8(3);
        [
            vandq_u8(q, m),
            vandq_u8(vshrq_n_u8::<2>(q), m),
            vandq_u8(vshrq_n_u8::<4>(q), m),
            vshrq_n_u8::<6>(q),
        ]
    }
}

/// Q2_K (scales[16] @0, qs[64] @16, d f16 @80, dmin f16 @82): sub-block j (16 elements)
/// has scale `scales[j] & 15` and min `scales[j] >> 4`; codes 0..3 fit i8, the mins come
/// in through Q8_K's bsums.
unsafe fn k_q2k<const C: usize>(n: usize, w: *const u8, a: *const u8, stride: usize) -> [f32; C] {
    let mut out = [0.0f32; C];
    for i in 0..n / 256 {
        // SAFETY: super-block i < n/256 of the weight row and each activation row.
        unsafe {
            let wp = w.add(i * 84);
            let (d, dmin) = (f16_at(wp.add(80)), f16_at(wp.add(82)));
            let sc: [u8; 16] = *(wp as *const [u8; 16]);
            let mut isum = [0i32; C];
            for half in 0..2 {
                for k in 0..2 {
                    // 16 of the 32 columns l of this half: l = 16k..16k+16.
                    let q = two_bit_codes(wp.add(16 + 32 * half + 16 * k));
                    for (g, qg) in q.iter().enumerate() {
                        // Elements 32g + 16k .. +16 of the half: sub-block 8·half + 2g + k.
                        let s = (sc[8 * half + 2 * g + k] & 15) as i32;
                        let qg = vreinterpretq_s8_u8(*qg);
                        for c in 0..C {
                            let ap = a.add(c * stride + i * 292 + 4 + 128 * half + 32 * g + 16 * k);
                            isum[c] += s * dot16(qg, vld1q_s8(ap as *const i8));
                        }
                    }
                }
            }
            for c in 0..C {
                let ap = a.add(c * stride + i * 292);
                let da = f32_at(ap);
                let mins: i32 = (0..16).map(|j| (sc[j] >> 4) as i32 * bsum(ap, j)).sum();
                out[c] += d * da * isum[c] as f32 - dmin * da * mins as f32;
            }
        }
    }
    out
}
tile_dispatch!(tile_q2k, k_q2k);

/// Q3_K (hmask[32] @0, qs[64] @32, scales[12] @96, d f16 @108): codes `low2 + 4·hbit − 4`
/// are signed (−4..3), so no bsum correction is needed.
unsafe fn k_q3k<const C: usize>(n: usize, w: *const u8, a: *const u8, stride: usize) -> [f32; C] {
    let mut out = [0.0f32; C];
    for i in 0..n / 256 {
        // SAFETY: super-block i < n/256 of the weight row and each activation row.
        unsafe {
            let wp = w.add(i * 110);
            let d = f16_at(wp.add(108));
            let sc12 = &*(wp.add(96) as *const [u8; 12]);
            let sc: [i32; 16] = std::array::from_fn(|j| q3k_scale(sc12, j));
            let mut isum = [0i32; C];
            for half in 0..2 {
                for k in 0..2 {
                    // 16 of the 32 columns l of this half: l = 16k..16k+16.
                    let low = two_bit_codes(wp.add(32 + 32 * half + 16 * k));
                    let hm = vld1q_u8(wp.add(16 * k));
                    for (g, lg) in low.iter().enumerate() {
                        // Bit 4·half + g of hmask[l] is bit 2 of element 128·half + 32g + l.
                        let set = vtstq_u8(hm, vdupq_n_u8(1u8 << (4 * half + g)));
                        let q = vorrq_u8(*lg, vandq_u8(set, vdupq_n_u8(4)));
                        let q = vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(4));
                        // Elements 32g + 16k .. +16 of the half: sub-block 8·half + 2g + k.
                        let s = sc[8 * half + 2 * g + k];
                        for c in 0..C {
                            let ap = a.add(c * stride + i * 292 + 4 + 128 * half + 32 * g + 16 * k);
                            isum[c] += s * dot16(q, vld1q_s8(ap as *const i8));
                        }
                    }
                }
            }
            for c in 0..C {
                out[c] += d * f32_at(a.add(c * stride + i * 292)) * isum[c] as f32;
            }
        }
    }
    out
}
tile_dispatch!(tile_q3k, k_q3k);

/// The 8 six-bit (scale, min) pairs of a Q4_K/Q5_K super-block (`get_scale_min_k4`).
#[inline]
fn k4_scales_mins(s: &[u8; 12]) -> ([i32; 8], [i32; 8]) {
    let mut sc = [0i32; 8];
    let mut mn = [0i32; 8];
    for j in 0..4 {
        sc[j] = (s[j] & 63) as i32;
        mn[j] = (s[j + 4] & 63) as i32;
        sc[j + 4] = ((s[j + 8] & 0x0F) | ((s[j] >> 6) << 4)) as i32;
        mn[j + 4] = ((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4)) as i32;
    }
    (sc, mn)
}

/// Q4_K / Q5_K: `$codes(wp, chunk)` gives sub-blocks 2c and 2c+1 (unsigned codes).
macro_rules! k4_kernel {
    ($k:ident, $tile:ident, $wbytes:expr, $codes:ident) => {
        unsafe fn $k<const C: usize>(
            n: usize,
            w: *const u8,
            a: *const u8,
            stride: usize,
        ) -> [f32; C] {
            let mut out = [0.0f32; C];
            for i in 0..n / 256 {
                // SAFETY: super-block i < n/256 of the weight row and each activation row.
                unsafe {
                    let wp = w.add(i * $wbytes);
                    let (d, dmin) = (f16_at(wp), f16_at(wp.add(2)));
                    let (sc, mn) = k4_scales_mins(&*(wp.add(4) as *const [u8; 12]));
                    let mut isum = [0i32; C];
                    for chunk in 0..4 {
                        let (lo, hi) = $codes(wp, chunk);
                        for c in 0..C {
                            let ap = a.add(c * stride + i * 292 + 4 + 64 * chunk);
                            let p_lo = vaddvq_s32(dot32(&lo, &load_i8x32(ap)));
                            let p_hi = vaddvq_s32(dot32(&hi, &load_i8x32(ap.add(32))));
                            isum[c] += sc[2 * chunk] * p_lo + sc[2 * chunk + 1] * p_hi;
                        }
                    }
                    for c in 0..C {
                        let ap = a.add(c * stride + i * 292);
                        let da = f32_at(ap);
                        let mins: i32 = (0..8)
                            .map(|j| mn[j] * (bsum(ap, 2 * j) + bsum(ap, 2 * j + 1)))
                            .sum();
                        out[c] += d * da * isum[c] as f32 - dmin * da * mins as f32;
                    }
                }
            }
            out
        }
        tile_dispatch!($tile, $k);
    };
}

#[inline]
unsafe fn q4k_codes(wp: *const u8, chunk: usize) -> (Codes, Codes) {
    // SAFETY: inside one 144-byte block.
    unsafe {
        let p = wp.add(16 + 32 * chunk);
        let q = [vld1q_u8(p), vld1q_u8(p.add(16))];
        let m = vdupq_n_u8(0x0F);
        (
            to_signed(q.map(|v| vandq_u8(v, m)), 0),
            to_signed(q.map(|v| vshrq_n_u8::<4>(v)), 0),
        )
    }
}

#[inline]
unsafe fn q5k_codes(wp: *const u8, chunk: usize) -> (Codes, Codes) {
    // SAFETY: inside one 176-byte block.
    unsafe {
        let p = wp.add(48 + 32 * chunk);
        let q = [vld1q_u8(p), vld1q_u8(p.add(16))];
        let h = [vld1q_u8(wp.add(16)), vld1q_u8(wp.add(32))];
        let m = vdupq_n_u8(0x0F);
        let bit =
            |k: usize, v: uint8x16_t| vandq_u8(vtstq_u8(v, vdupq_n_u8(1u8 << k)), vdupq_n_u8(0x10));
        let lo = [0, 1].map(|j| vorrq_u8(vandq_u8(q[j], m), bit(2 * chunk, h[j])));
        let hi = [0, 1].map(|j| vorrq_u8(vshrq_n_u8::<4>(q[j]), bit(2 * chunk + 1, h[j])));
        (to_signed(lo, 0), to_signed(hi, 0))
    }
}
k4_kernel!(k_q4k, tile_q4k, 144, q4k_codes);
k4_kernel!(k_q5k, tile_q5k, 176, q5k_codes);

/// Q6_K (ql[128] @0, qh[64] @128, scales[16] i8 @192, d f16 @208); codes − 32 are signed,
/// so no bsum correction is needed.
unsafe fn k_q6k<const C: usize>(n: usize, w: *const u8, a: *const u8, stride: usize) -> [f32; C] {
    let mut out = [0.0f32; C];
    for i in 0..n / 256 {
        // SAFETY: super-block i < n/256 of the weight row and each activation row.
        unsafe {
            let wp = w.add(i * 210);
            let d = f16_at(wp.add(208));
            let sc: [i8; 16] = *(wp.add(192) as *const [i8; 16]);
            let m4 = vdupq_n_u8(0x0F);
            let m2 = vdupq_n_u8(0x03);
            let mut isum = [0i32; C];
            for half in 0..2 {
                for k in 0..2 {
                    // 16 of the 32 columns l of this half: l = 16k..16k+16.
                    let ql0 = vld1q_u8(wp.add(64 * half + 16 * k));
                    let ql1 = vld1q_u8(wp.add(64 * half + 32 + 16 * k));
                    let qh = vld1q_u8(wp.add(128 + 32 * half + 16 * k));
                    let q = [
                        vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8::<4>(vandq_u8(qh, m2))),
                        vorrq_u8(
                            vandq_u8(ql1, m4),
                            vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(qh), m2)),
                        ),
                        vorrq_u8(
                            vshrq_n_u8::<4>(ql0),
                            vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(qh), m2)),
                        ),
                        vorrq_u8(vshrq_n_u8::<4>(ql1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh))),
                    ]
                    .map(|v| vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(32)));
                    for (g, qg) in q.iter().enumerate() {
                        // Elements 32g + 16k .. +16 of the half: scale 8·half + 2g + k.
                        let s = sc[8 * half + 2 * g + k] as i32;
                        for c in 0..C {
                            let ap = a.add(c * stride + i * 292 + 4 + 128 * half + 32 * g + 16 * k);
                            isum[c] += s * dot16(*qg, vld1q_s8(ap as *const i8));
                        }
                    }
                }
            }
            for c in 0..C {
                out[c] += d * f32_at(a.add(c * stride + i * 292)) * isum[c] as f32;
            }
        }
    }
    out
}
tile_dispatch!(tile_q6k, k_q6k);

// ------------------------------------------------------------------ f32 helpers (attention)

/// `out[j] = a[j·stride ..][..x.len()] · x` for `R` (≤ 8) rows (the query heads that share
/// one key): each 8 floats of `x` are loaded once for all rows, with two accumulators per
/// row so that consecutive `fmla` do not wait on each other.
///
/// # Safety
/// `x.len() % 8 == 0`; `a` holds `(R - 1) * stride + x.len()` floats.
unsafe fn f32_dots_rows<const R: usize>(a: &[f32], stride: usize, x: &[f32], out: &mut [f32]) {
    let n = x.len();
    let (pa, px) = (a.as_ptr(), x.as_ptr());
    let mut acc0 = [vdupq_n_f32(0.0); R];
    let mut acc1 = [vdupq_n_f32(0.0); R];
    let mut i = 0;
    // SAFETY (loads): i + 8 <= n, and row j < R spans a[j*stride .. j*stride + n].
    unsafe {
        while i < n {
            let x0 = vld1q_f32(px.add(i));
            let x1 = vld1q_f32(px.add(i + 4));
            for j in 0..R {
                let r = pa.add(j * stride + i);
                acc0[j] = vfmaq_f32(acc0[j], vld1q_f32(r), x0);
                acc1[j] = vfmaq_f32(acc1[j], vld1q_f32(r.add(4)), x1);
            }
            i += 8;
        }
    }
    for j in 0..R {
        out[j] = vaddvq_f32(vaddq_f32(acc0[j], acc1[j]));
    }
}

/// [`f32_dots_rows`] for any number of rows (in runs of 8).
///
/// # Safety
/// `x.len() % 8 == 0`; `a` holds `(out.len() - 1) * stride + x.len()` floats.
pub(super) unsafe fn f32_dots(a: &[f32], stride: usize, x: &[f32], out: &mut [f32]) {
    let mut j0 = 0;
    while j0 < out.len() {
        let r = (out.len() - j0).min(8);
        let (a, o) = (&a[j0 * stride..], &mut out[j0..j0 + r]);
        // SAFETY: forwarded; rows j0..j0+r lie inside `a`.
        unsafe { by_count!(r, f32_dots_rows, (a, stride, x, o), [1 2 3 4 5 6 7], 8) }
        j0 += r;
    }
}

/// `y[j·w + c0 ..][..4·V] += Σ_i p[j·p_stride + i] · xs[i][c0 ..][..4·V]` for `H` (1 or 2)
/// rows of `y`: `H × V` (≤ 16) accumulators stay in registers across all the `xs`, each
/// `xs[i]` chunk is loaded once per tile and multiplied by each row's weight with `fmla`
/// by element.
///
/// # Safety
/// `y` holds `(H - 1) * w + c0 + 4 * V` floats, every `xs[i]` at least `c0 + 4 * V`, `p`
/// holds `(H - 1) * p_stride + xs.len()`.
unsafe fn f32_axpy_tile<const H: usize, const V: usize>(
    y: &mut [f32],
    w: usize,
    c0: usize,
    p: &[f32],
    p_stride: usize,
    xs: &[&[f32]],
) {
    let py = y.as_mut_ptr();
    // SAFETY (pointer accesses): as the contract states.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); V]; H];
        for (h, row) in acc.iter_mut().enumerate() {
            for (v, a) in row.iter_mut().enumerate() {
                *a = vld1q_f32(py.add(h * w + c0 + 4 * v));
            }
        }
        for (i, x) in xs.iter().enumerate() {
            let px = x.as_ptr().add(c0);
            let weights: [f32; H] = std::array::from_fn(|h| *p.get_unchecked(h * p_stride + i));
            for v in 0..V {
                let xv = vld1q_f32(px.add(4 * v));
                for h in 0..H {
                    acc[h][v] = vfmaq_n_f32(acc[h][v], xv, weights[h]);
                }
            }
        }
        for (h, row) in acc.iter().enumerate() {
            for (v, a) in row.iter().enumerate() {
                vst1q_f32(py.add(h * w + c0 + 4 * v), *a);
            }
        }
    }
}

/// `y[j·w ..][..w] += Σ_i p[j·p_stride + i] · xs[i][..w]` for every row of `y`: rows in
/// pairs, columns in blocks of 8 vectors (32 floats) through [`f32_axpy_tile`].
///
/// # Safety
/// `w % 4 == 0`; `y` holds whole rows of `w`; `p` holds `(rows - 1) * p_stride + xs.len()`
/// floats and every `xs[i]` at least `w`.
pub(super) unsafe fn f32_axpy_many(
    y: &mut [f32],
    w: usize,
    p: &[f32],
    p_stride: usize,
    xs: &[&[f32]],
) {
    let rows = y.len() / w;
    let mut j0 = 0;
    while j0 < rows {
        let h = (rows - j0).min(2);
        let (y, p) = (&mut y[j0 * w..(j0 + h) * w], &p[j0 * p_stride..]);
        let mut c0 = 0;
        while c0 < w {
            let v = ((w - c0) / 4).min(8);
            // SAFETY: forwarded; columns c0..c0 + 4v of rows j0..j0+h lie inside `y` and
            // every `xs[i]`.
            unsafe {
                macro_rules! tile {
                    ($($n:literal)*) => {
                        match (h, v) {
                            $((2, $n) => f32_axpy_tile::<2, $n>(y, w, c0, p, p_stride, xs),
                              (1, $n) => f32_axpy_tile::<1, $n>(y, w, c0, p, p_stride, xs),)*
                            _ => unreachable!("1 or 2 rows of 1 to 8 vectors"),
                        }
                    };
                }
                tile!(1 2 3 4 5 6 7 8);
            }
            c0 += 4 * v;
        }
        j0 += h;
    }
}
