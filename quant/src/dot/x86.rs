//! AVX2 + FMA + F16C kernels (x86-64), and AVX-512 BW ones for Q2_K and Q3_K. Every function
//! here is `#[target_feature]` and only reached through a backend that `Backend` hands out
//! only after runtime detection (`Backend::Avx512` for the AVX-512 ones).
//!
//! Integer products use `_mm256_maddubs_epi16` (u8 × i8 → pairwise i16, no saturation for
//! our ranges: at most 2·63·127 < 32767, or 2·127·127 for signed Q8 × Q8 through the sign
//! trick) followed by `_mm256_madd_epi16` into i32 lanes.
//!
//! Every kernel handles one weight row against `C` (1..=4) activation rows: the weight
//! block is loaded and unpacked once and reused for each activation row.

// The kernels index several per-column arrays with the same column index.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{by_count, tile_dispatch, TileFn};
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

/// The kernels `Backend::Avx512` runs instead of [`tile_fn`]'s, where 512-bit registers
/// help (the CPU has AVX-512 F/BW/VL and VNNI); `None` for the other types.
pub(super) fn tile_fn_avx512(ty: GgmlType) -> Option<TileFn> {
    use GgmlType::*;
    Some(match ty {
        Q2K => tile_q2k_avx512,
        Q3K => tile_q3k_avx512,
        _ => return None,
    })
}

// ------------------------------------------------------------------ helpers

/// f16 bits at `p` (unaligned) as f32.
///
/// `_mm_set1_epi16` (a `vmovd` + broadcast) rather than `_mm_cvtsi32_si128`: LLVM turns the
/// latter into a `vpinsrw` into whatever register is free — often an accumulator — which
/// chains every block's scale conversion behind the previous block's FMA.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes.
    let h = unsafe { (p as *const u16).read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(h as i16)))
}

/// f16 bits at `p` as f32 in lane 0 of an xmm register (upper lanes are junk). Reads 4
/// bytes (`p` is the start of a block, so the 2 extra bytes are in bounds); a 32-bit
/// `vmovd` load has no dependency on an older register value.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_lane0(p: *const u8) -> __m128 {
    // SAFETY: the caller guarantees 4 readable bytes.
    let v = unsafe { (p as *const i32).read_unaligned() };
    _mm_cvtph_ps(_mm_cvtsi32_si128(v))
}

/// `d_w · d_a` of two blocks (f16 scales at `w` and `a`) broadcast to 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_product(w: *const u8, a: *const u8) -> __m256 {
    // SAFETY: forwarded (4 bytes at each).
    unsafe { _mm256_broadcastss_ps(_mm_mul_ss(f16_lane0(w), f16_lane0(a))) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 4 readable bytes.
    unsafe { (p as *const f32).read_unaligned() }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load256(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load128(p: *const u8) -> __m128i {
    // SAFETY: the caller guarantees 16 readable bytes.
    unsafe { _mm_loadu_si128(p as *const __m128i) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 16 bytes of packed nibbles -> 32 codes 0..15: low nibbles first (elements 0..16), then
/// high nibbles (elements 16..32), the legacy "split halves" order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles_32(p: *const u8) -> __m256i {
    // The 16 bytes in both halves; the upper half shifted right by 4: one load, one shift,
    // one mask.
    // SAFETY: forwarded (16 bytes).
    let x = unsafe { _mm256_broadcastsi128_si256(load128(p)) };
    let shifted = _mm256_srlv_epi64(x, _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
}

/// 0xFF in byte j where bit j of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits_to_bytes(bits: u32) -> __m256i {
    // Byte j gets a copy of byte j/8 of `bits`...
    let spread = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), spread);
    // ...then every bit except bit j%8 is forced to 1: all ones iff bit j%8 was set.
    let others = _mm256_set1_epi64x(i64::from_le_bytes([
        0xFE, 0xFD, 0xFB, 0xF7, 0xEF, 0xDF, 0xBF, 0x7F,
    ]));
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi8(-1))
}

/// Σ w·a over 32 signed bytes as 8 i32 lanes (|w| ≤ 127 so `abs` fits u8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_i8_signed(w_abs: __m256i, w: __m256i, a: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(a, w));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// Σ q·a over 32 bytes (q unsigned ≤ 63, a signed) as 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(q: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), _mm256_set1_epi16(1))
}

/// Σ q·a·scale where q·a pairs are summed in i16 then multiplied by per-lane i16 scales.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8_scaled(q: __m256i, a: __m256i, scale: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), scale)
}

// ------------------------------------------------------------------ float weights

/// Float weights (8 decoded per step by `load8`) against f32 activations.
macro_rules! float_kernel {
    ($k:ident, $tile:ident, $wsize:expr, $load8:ident, $scalar:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $k<const C: usize>(
            n: usize,
            w: *const u8,
            a: *const u8,
            stride: usize,
        ) -> [f32; C] {
            let mut acc0 = [_mm256_setzero_ps(); C];
            let mut acc1 = [_mm256_setzero_ps(); C];
            let mut i = 0;
            // SAFETY (loop bodies): TileFn contract; i + 16 <= n (or i + 8 <= n) values.
            unsafe {
                while i + 16 <= n {
                    let w0 = $load8(w.add(i * $wsize));
                    let w1 = $load8(w.add((i + 8) * $wsize));
                    for c in 0..C {
                        let ap = a.add(c * stride + i * 4) as *const f32;
                        acc0[c] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(ap), acc0[c]);
                        acc1[c] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(ap.add(8)), acc1[c]);
                    }
                    i += 16;
                }
                while i + 8 <= n {
                    let w0 = $load8(w.add(i * $wsize));
                    for c in 0..C {
                        let ap = a.add(c * stride + i * 4) as *const f32;
                        acc0[c] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(ap), acc0[c]);
                    }
                    i += 8;
                }
            }
            let mut out = [0.0f32; C];
            for c in 0..C {
                out[c] = hsum_ps(_mm256_add_ps(acc0[c], acc1[c]));
                for j in i..n {
                    // SAFETY: j < n.
                    unsafe {
                        let x = f32_at(a.add(c * stride + j * 4));
                        out[c] += $scalar(w.add(j * $wsize)) * x;
                    }
                }
            }
            out
        }
        tile_dispatch!($tile, $k);
    };
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_f32(p: *const u8) -> __m256 {
    // SAFETY: 32 readable bytes.
    unsafe { _mm256_loadu_ps(p as *const f32) }
}
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_f16(p: *const u8) -> __m256 {
    // SAFETY: 16 readable bytes.
    unsafe { _mm256_cvtph_ps(load128(p)) }
}
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_bf16(p: *const u8) -> __m256 {
    // bf16 is the top half of an f32: widen to 32 bits and shift into place.
    // SAFETY: 16 readable bytes.
    let h = unsafe { load128(p) };
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
}
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_at(p: *const u8) -> f32 {
    // SAFETY: 2 readable bytes.
    let h = unsafe { (p as *const u16).read_unaligned() };
    f32::from_bits((h as u32) << 16)
}
float_kernel!(k_f32, tile_f32, 4, load8_f32, f32_at);
float_kernel!(k_f16, tile_f16, 2, load8_f16, f16_at);
float_kernel!(k_bf16, tile_bf16, 2, load8_bf16, bf16_at);

// ------------------------------------------------------------------ legacy x Q8_0 / Q8_1

/// Q4_0 codes `q − 8` (the scale `d` is at offset 0 of every legacy block).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dec_q4_0(p: *const u8) -> __m256i {
    // SAFETY: one 18-byte block.
    unsafe { _mm256_sub_epi8(nibbles_32(p.add(2)), _mm256_set1_epi8(8)) }
}

/// Q5_0 codes `q − 16`; a clear 5th bit makes the code `nibble − 16` = `nibble | 0xF0`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dec_q5_0(p: *const u8) -> __m256i {
    // SAFETY: one 22-byte block.
    unsafe {
        let qh = (p.add(2) as *const u32).read_unaligned();
        let hi = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(0xF0u8 as i8));
        _mm256_or_si256(nibbles_32(p.add(6)), hi)
    }
}

/// Q8_0 codes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dec_q8_0(p: *const u8) -> __m256i {
    // SAFETY: one 34-byte block.
    unsafe { load256(p.add(2)) }
}

/// Q4_1: `(d, m, q)`, q in 0..=15.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dec_q4_1(p: *const u8) -> (f32, f32, __m256i) {
    // SAFETY: one 20-byte block.
    unsafe { (f16_at(p), f16_at(p.add(2)), nibbles_32(p.add(4))) }
}

/// Q5_1: `(d, m, q)`, q in 0..=31.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dec_q5_1(p: *const u8) -> (f32, f32, __m256i) {
    // SAFETY: one 24-byte block.
    unsafe {
        let qh = (p.add(4) as *const u32).read_unaligned();
        let hi = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
        (
            f16_at(p),
            f16_at(p.add(2)),
            _mm256_or_si256(nibbles_32(p.add(8)), hi),
        )
    }
}

/// Signed-code legacy weights against Q8_0 (34-byte blocks: d, 32 × i8). Two accumulator
/// sets (even / odd blocks) keep the FMA latency off the critical path.
macro_rules! signed_legacy_kernel {
    ($k:ident, $tile:ident, $wbytes:expr, $dec:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $k<const C: usize>(
            n: usize,
            w: *const u8,
            a: *const u8,
            stride: usize,
        ) -> [f32; C] {
            let mut acc0 = [_mm256_setzero_ps(); C];
            let mut acc1 = [_mm256_setzero_ps(); C];
            // One block into `acc`; a macro so that both accumulator sets stay registers.
            macro_rules! block {
                ($i:expr, $acc:ident) => {
                    // SAFETY: block $i < n/32 of the weight row and of each activation row.
                    unsafe {
                        let wp = w.add($i * $wbytes);
                        let q = $dec(wp);
                        let q_abs = _mm256_sign_epi8(q, q);
                        for c in 0..C {
                            let ap = a.add(c * stride + $i * 34);
                            let p = dot_i8_signed(q_abs, q, load256(ap.add(2)));
                            let scale = scale_product(wp, ap);
                            $acc[c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), $acc[c]);
                        }
                    }
                };
            }
            let nb = n / 32;
            let mut i = 0;
            while i + 2 <= nb {
                block!(i, acc0);
                block!(i + 1, acc1);
                i += 2;
            }
            if i < nb {
                block!(i, acc0);
            }
            let mut out = [0.0f32; C];
            for c in 0..C {
                out[c] = hsum_ps(_mm256_add_ps(acc0[c], acc1[c]));
            }
            out
        }
        tile_dispatch!($tile, $k);
    };
}
signed_legacy_kernel!(k_q4_0, tile_q4_0, 18, dec_q4_0);
signed_legacy_kernel!(k_q5_0, tile_q5_0, 22, dec_q5_0);
signed_legacy_kernel!(k_q8_0, tile_q8_0, 34, dec_q8_0);

/// Unsigned-code legacy weights with a min, against Q8_1 (36-byte blocks: d, s = d·Σq,
/// 32 × i8): `d_w·d_a·Σ q·a + m·s`.
macro_rules! min_legacy_kernel {
    ($k:ident, $tile:ident, $wbytes:expr, $dec:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $k<const C: usize>(
            n: usize,
            w: *const u8,
            a: *const u8,
            stride: usize,
        ) -> [f32; C] {
            let mut acc0 = [_mm256_setzero_ps(); C];
            let mut acc1 = [_mm256_setzero_ps(); C];
            let mut mins = [0.0f32; C];
            macro_rules! block {
                ($i:expr, $acc:ident) => {
                    // SAFETY: block $i < n/32 of the weight row and of each activation row.
                    unsafe {
                        let wp = w.add($i * $wbytes);
                        let (_, mw, q) = $dec(wp);
                        for c in 0..C {
                            let ap = a.add(c * stride + $i * 36);
                            let p = dot_u8_i8(q, load256(ap.add(4)));
                            let scale = scale_product(wp, ap);
                            $acc[c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), $acc[c]);
                            mins[c] += mw * f16_at(ap.add(2));
                        }
                    }
                };
            }
            let nb = n / 32;
            let mut i = 0;
            while i + 2 <= nb {
                block!(i, acc0);
                block!(i + 1, acc1);
                i += 2;
            }
            if i < nb {
                block!(i, acc0);
            }
            let mut out = [0.0f32; C];
            for c in 0..C {
                out[c] = hsum_ps(_mm256_add_ps(acc0[c], acc1[c])) + mins[c];
            }
            out
        }
        tile_dispatch!($tile, $k);
    };
}
min_legacy_kernel!(k_q4_1, tile_q4_1, 20, dec_q4_1);
min_legacy_kernel!(k_q5_1, tile_q5_1, 24, dec_q5_1);

// ------------------------------------------------------------------ K-quants x Q8_K
//
// Q8_K block (292 bytes): d (f32) @0, qs[256] (i8) @4, bsums[16] (i16) @260.

/// 32 bytes of 2-bit codes (Q2_K's `qs`, Q3_K's low bits) of one 128-element half -> the
/// codes 0..3 of its elements 0..32, 32..64, 64..96, 96..128 (bit pairs 0, 2, 4, 6 of
/// byte `l` are elements `l`, `l + 32`, `l + 64`, `l + 96`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn two_bit_codes(p: *const u8) -> [__m256i; 4] {
    // SAFETY: the caller guarantees 32 readable bytes.
    let q = unsafe { load256(p) };
    let m = _mm256_set1_epi8(3);
    [
        _mm256_and_si256(q, m),
        _mm256_and_si256(_mm256_srli_epi16::<2>(q), m),
        _mm256_and_si256(_mm256_srli_epi16::<4>(q), m),
        _mm256_and_si256(_mm256_srli_epi16::<6>(q), m),
    ]
}

/// The 16 per-sub-block scales (i16, sub-blocks 0..8 in the lower 128-bit half) as one
/// register per 128-element half with that half's 8 scales in both 128-bit halves, for
/// [`scale_pair_shuffle`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales_by_half(s16: __m256i) -> [__m256i; 2] {
    [
        _mm256_permute2x128_si256::<0x00>(s16, s16),
        _mm256_permute2x128_si256::<0x11>(s16, s16),
    ]
}

/// A `pshufb` mask that copies i16 lane `j` to every lane of the lower 128-bit half and
/// lane `j + 1` to every lane of the upper half: the scales of the two 16-element
/// sub-blocks that one 32-code vector spans.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_pair_shuffle(j: usize) -> __m256i {
    let pick = |k: usize| (2 * k) as i16 | (((2 * k + 1) as i16) << 8);
    _mm256_set_m128i(_mm_set1_epi16(pick(j + 1)), _mm_set1_epi16(pick(j)))
}

/// The 8 six-bit scales (bytes 0..8) and mins (bytes 8..16) of a Q4_K/Q5_K super-block
/// (`get_scale_min_k4` for all j at once, on 32-bit words).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_scales_mins(p: *const u8) -> __m128i {
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    // SAFETY: the caller guarantees 12 readable bytes.
    let u: [u32; 3] =
        unsafe { std::array::from_fn(|k| (p.add(4 * k) as *const u32).read_unaligned()) };
    let sc_lo = u[0] & LOW6;
    let sc_hi = (u[2] & LOW4) | (((u[0] >> 6) & LOW2) << 4);
    let mn_lo = u[1] & LOW6;
    let mn_hi = ((u[2] >> 4) & LOW4) | (((u[1] >> 6) & LOW2) << 4);
    _mm_setr_epi32(sc_lo as i32, sc_hi as i32, mn_lo as i32, mn_hi as i32)
}

/// A `pshufb` mask that copies i16 lane `j` (0..8) to every i16 lane of both halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_shuffle(j: usize) -> __m256i {
    let lo = (2 * j) as i16;
    _mm256_set1_epi16(lo | ((lo + 1) << 8))
}

/// Shared body of Q4_K and Q5_K: `codes(chunk)` gives the two 32-code vectors (sub-blocks
/// 2c and 2c+1, unsigned) of 64-element chunk c.
macro_rules! k4_kernel {
    ($k:ident, $tile:ident, $wbytes:expr, $codes:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $k<const C: usize>(
            n: usize,
            w: *const u8,
            a: *const u8,
            stride: usize,
        ) -> [f32; C] {
            let mut acc = [_mm256_setzero_ps(); C];
            for i in 0..n / 256 {
                // SAFETY: super-block i < n/256 of the weight row and each activation row.
                unsafe {
                    let wp = w.add(i * $wbytes);
                    let d = f16_at(wp);
                    let dmin = f16_at(wp.add(2));
                    let sm = k4_scales_mins(wp.add(4));
                    // min_j duplicated over the two 16-element bsums of sub-block j.
                    let dup =
                        _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
                    let mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, dup));
                    // Scales as i16 in both 128-bit halves, broadcast per sub-block below.
                    let scales16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
                    let mut isum = [_mm256_setzero_si256(); C];
                    for chunk in 0..4 {
                        let (lo, hi) = $codes(wp, chunk);
                        let s_lo = _mm256_shuffle_epi8(scales16, scale_shuffle(2 * chunk));
                        let s_hi = _mm256_shuffle_epi8(scales16, scale_shuffle(2 * chunk + 1));
                        for c in 0..C {
                            let ap = a.add(c * stride + i * 292 + 4 + 64 * chunk);
                            let p_lo = dot_u8_i8_scaled(lo, load256(ap), s_lo);
                            let p_hi = dot_u8_i8_scaled(hi, load256(ap.add(32)), s_hi);
                            isum[c] = _mm256_add_epi32(isum[c], _mm256_add_epi32(p_lo, p_hi));
                        }
                    }
                    for c in 0..C {
                        let ap = a.add(c * stride + i * 292);
                        let da = f32_at(ap);
                        let min_sum = _mm256_madd_epi16(load256(ap.add(260)), mins16);
                        let dots = _mm256_cvtepi32_ps(isum[c]);
                        acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), dots, acc[c]);
                        let m = _mm256_set1_ps(-dmin * da);
                        acc[c] = _mm256_fmadd_ps(m, _mm256_cvtepi32_ps(min_sum), acc[c]);
                    }
                }
            }
            acc.map(|v| hsum_ps(v))
        }
        tile_dispatch!($tile, $k);
    };
}

/// Q4_K chunk c: 32 bytes at qs (@16) + 32c; low nibbles = sub-block 2c, high = 2c+1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_codes(wp: *const u8, chunk: usize) -> (__m256i, __m256i) {
    // SAFETY: inside one 144-byte block.
    let q = unsafe { load256(wp.add(16 + 32 * chunk)) };
    let m = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(q, m),
        _mm256_and_si256(_mm256_srli_epi16::<4>(q), m),
    )
}

/// Q5_K chunk c: nibbles from qs (@48) + 32c, 5th bits from bits 2c / 2c+1 of qh[l] (@16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5k_codes(wp: *const u8, chunk: usize) -> (__m256i, __m256i) {
    // SAFETY: inside one 176-byte block.
    let (q, h) = unsafe { (load256(wp.add(48 + 32 * chunk)), load256(wp.add(16))) };
    let m = _mm256_set1_epi8(0x0F);
    let b16 = _mm256_set1_epi8(0x10);
    let bit = |k: usize| {
        let mask = _mm256_set1_epi8((1u8 << k) as i8);
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, mask), mask), b16)
    };
    let lo = _mm256_or_si256(_mm256_and_si256(q, m), bit(2 * chunk));
    let hi = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi16::<4>(q), m),
        bit(2 * chunk + 1),
    );
    (lo, hi)
}
k4_kernel!(k_q4k, tile_q4k, 144, q4k_codes);
k4_kernel!(k_q5k, tile_q5k, 176, q5k_codes);

/// Q2_K (84 bytes: scales[16] @0, qs[64] @16, d f16 @80, dmin f16 @82): sub-block j (16
/// elements) has scale `scales[j] & 15` and min `scales[j] >> 4`; the codes (0..3) are
/// multiplied unsigned and the mins come in through Q8_K's bsums, as for Q4_K.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k_q2k<const C: usize>(n: usize, w: *const u8, a: *const u8, stride: usize) -> [f32; C] {
    let mut acc = [_mm256_setzero_ps(); C];
    let m4 = _mm_set1_epi8(0x0F);
    for i in 0..n / 256 {
        // SAFETY: super-block i < n/256 of the weight row and each activation row.
        unsafe {
            let wp = w.add(i * 84);
            let d = f16_at(wp.add(80));
            let dmin = f16_at(wp.add(82));
            let sc = load128(wp);
            let mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), m4));
            let scales = scales_by_half(_mm256_cvtepu8_epi16(_mm_and_si128(sc, m4)));
            let mut isum = [_mm256_setzero_si256(); C];
            for half in 0..2 {
                let q = two_bit_codes(wp.add(16 + 32 * half));
                for (g, qg) in q.iter().enumerate() {
                    // Elements 0..16 of the group are sub-block 8·half + 2g, 16..32 the next.
                    let scale = _mm256_shuffle_epi8(scales[half], scale_pair_shuffle(2 * g));
                    for c in 0..C {
                        let ap = a.add(c * stride + i * 292 + 4 + 128 * half + 32 * g);
                        let p = dot_u8_i8_scaled(*qg, load256(ap), scale);
                        isum[c] = _mm256_add_epi32(isum[c], p);
                    }
                }
            }
            for c in 0..C {
                let ap = a.add(c * stride + i * 292);
                let da = f32_at(ap);
                let min_sum = _mm256_madd_epi16(load256(ap.add(260)), mins16);
                let dots = _mm256_cvtepi32_ps(isum[c]);
                acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), dots, acc[c]);
                let m = _mm256_set1_ps(-dmin * da);
                acc[c] = _mm256_fmadd_ps(m, _mm256_cvtepi32_ps(min_sum), acc[c]);
            }
        }
    }
    acc.map(|v| hsum_ps(v))
}
tile_dispatch!(tile_q2k, k_q2k);

/// The 16 signed scales `sc − 32` of a Q3_K super-block as i8, on 32-bit words: byte j
/// (< 8) holds the low nibbles of scales j and j + 8, and bits `2·(j / 4)..+2` of byte
/// `8 + j % 4` the top two bits of scale j.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3k_scales(p: *const u8) -> __m128i {
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    // SAFETY: the caller guarantees 12 readable bytes.
    let u: [u32; 3] =
        unsafe { std::array::from_fn(|k| (p.add(4 * k) as *const u32).read_unaligned()) };
    let sc = |low: u32, top_shift: u32| low | (((u[2] >> top_shift) & LOW2) << 4);
    let v = _mm_setr_epi32(
        sc(u[0] & LOW4, 0) as i32,
        sc(u[1] & LOW4, 2) as i32,
        sc((u[0] >> 4) & LOW4, 4) as i32,
        sc((u[1] >> 4) & LOW4, 6) as i32,
    );
    _mm_sub_epi8(v, _mm_set1_epi8(32))
}

/// Q3_K (110 bytes: hmask[32] @0, qs[64] @32, scales[12] @96, d f16 @108): codes are used
/// unsigned (`low2 + 4·hbit`, 0..7) and the −4 offset is applied as `−4·Σ_j scale_j·bsum_j`,
/// as Q6_K's −32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k_q3k<const C: usize>(n: usize, w: *const u8, a: *const u8, stride: usize) -> [f32; C] {
    let mut acc = [_mm256_setzero_ps(); C];
    let four = _mm256_set1_epi8(4);
    for i in 0..n / 256 {
        // SAFETY: super-block i < n/256 of the weight row and each activation row.
        unsafe {
            let wp = w.add(i * 110);
            let d = f16_at(wp.add(108));
            let sc = q3k_scales(wp.add(96));
            let sc16 = _mm256_cvtepi8_epi16(sc);
            let scales = scales_by_half(sc16);
            let hm = load256(wp);
            let mut isum = [_mm256_setzero_si256(); C];
            for half in 0..2 {
                let low = two_bit_codes(wp.add(32 + 32 * half));
                for (g, lg) in low.iter().enumerate() {
                    // Bit 4·half + g of hmask[l] is bit 2 of element 128·half + 32g + l.
                    let mask = _mm256_set1_epi8((1u8 << (4 * half + g)) as i8);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(hm, mask), mask);
                    let q = _mm256_or_si256(*lg, _mm256_and_si256(set, four));
                    // Elements 0..16 of the group are sub-block 8·half + 2g, 16..32 the next.
                    let scale = _mm256_shuffle_epi8(scales[half], scale_pair_shuffle(2 * g));
                    for c in 0..C {
                        let ap = a.add(c * stride + i * 292 + 4 + 128 * half + 32 * g);
                        let p = dot_u8_i8_scaled(q, load256(ap), scale);
                        isum[c] = _mm256_add_epi32(isum[c], p);
                    }
                }
            }
            for c in 0..C {
                let ap = a.add(c * stride + i * 292);
                let da = f32_at(ap);
                let offset = _mm256_madd_epi16(load256(ap.add(260)), sc16);
                let dots = _mm256_sub_epi32(isum[c], _mm256_slli_epi32::<2>(offset));
                acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(dots), acc[c]);
            }
        }
    }
    acc.map(|v| hsum_ps(v))
}
tile_dispatch!(tile_q3k, k_q3k);

/// Q6_K (210 bytes: ql[128] @0, qh[64] @128, scales[16] i8 @192, d f16 @208): codes are
/// used unsigned (0..63) and the −32 offset is applied as `−32·Σ_j scale_j·bsum_j`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k_q6k<const C: usize>(n: usize, w: *const u8, a: *const u8, stride: usize) -> [f32; C] {
    let mut acc = [_mm256_setzero_ps(); C];
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x30);
    for i in 0..n / 256 {
        // SAFETY: super-block i < n/256 of the weight row and each activation row.
        unsafe {
            let wp = w.add(i * 210);
            let d = f16_at(wp.add(208));
            let sc: [i8; 16] = *(wp.add(192) as *const [i8; 16]);
            let sc16 = _mm256_cvtepi8_epi16(load128(wp.add(192)));
            let mut isum = [_mm256_setzero_si256(); C];
            for half in 0..2 {
                let ql0 = load256(wp.add(64 * half));
                let ql1 = load256(wp.add(64 * half + 32));
                let qh = load256(wp.add(128 + 32 * half));
                // Element groups l, l+32, l+64, l+96 (l < 32) of this 128-element half.
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                        _mm256_and_si256(qh, m2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
                    ),
                ];
                for (g, qg) in q.iter().enumerate() {
                    // Elements 0..16 of the group use scale 8·half + 2g, 16..32 the next.
                    let s = 8 * half + 2 * g;
                    let scale = _mm256_set_m128i(
                        _mm_set1_epi16(sc[s + 1] as i16),
                        _mm_set1_epi16(sc[s] as i16),
                    );
                    for c in 0..C {
                        let ap = a.add(c * stride + i * 292 + 4 + 128 * half + 32 * g);
                        let p = dot_u8_i8_scaled(*qg, load256(ap), scale);
                        isum[c] = _mm256_add_epi32(isum[c], p);
                    }
                }
            }
            for c in 0..C {
                let ap = a.add(c * stride + i * 292);
                let da = f32_at(ap);
                let offset = _mm256_madd_epi16(load256(ap.add(260)), sc16);
                let dots = _mm256_sub_epi32(isum[c], _mm256_slli_epi32::<5>(offset));
                acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(dots), acc[c]);
            }
        }
    }
    acc.map(|v| hsum_ps(v))
}
tile_dispatch!(tile_q6k, k_q6k);

// ------------------------------------------------------------------ K-quants x Q8_K, AVX-512
//
// Q2_K and Q3_K spend most of their time unpacking 2-bit codes and multiplying them with
// the activations (few weight bytes per element), so 64 codes per instruction nearly halve
// their in-cache time; the wider formats stay on the AVX2 code.

/// The i16 scale of every element pair of 64-element chunk `k` (sub-blocks 4k..4k+4):
/// lane t of the `maddubs` result covers elements 2t, 2t+1, i.e. sub-block 4k + t/8.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
fn chunk_scales(s16: __m256i, k: usize) -> __m512i {
    let idx: [i16; 32] = std::array::from_fn(|t| (4 * k + t / 8) as i16);
    // SAFETY: 64 readable bytes in `idx`; indices < 16 only read the defined lower half.
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr() as *const __m512i) };
    _mm512_permutexvar_epi16(idx, _mm512_castsi256_si512(s16))
}

/// The 2-bit codes 0..3 of 64-element chunk `k` of a Q2_K/Q3_K super-block: bit pairs
/// `2·(2k % 4)` (elements 0..32 of the chunk) and `2·(2k % 4) + 2` (32..64) of the 32
/// bytes of `qs` that hold its 128-element half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
unsafe fn two_bit_chunk(qs: *const u8, k: usize) -> __m512i {
    // SAFETY: the caller guarantees 64 readable bytes at `qs`.
    let q = unsafe { _mm512_broadcast_i64x4(load256(qs.add(32 * (k / 2)))) };
    let g = 2 * (k % 2);
    let shift = _mm512_inserti64x4::<1>(
        _mm512_set1_epi16((2 * g) as i16),
        _mm256_set1_epi16((2 * g + 2) as i16),
    );
    _mm512_and_si512(_mm512_srlv_epi16(q, shift), _mm512_set1_epi8(3))
}

/// Q2_K as [`k_q2k`], 64 elements per step.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
unsafe fn k_q2k_avx512<const C: usize>(
    n: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
) -> [f32; C] {
    let mut acc = [_mm512_setzero_ps(); C];
    let m4 = _mm_set1_epi8(0x0F);
    for i in 0..n / 256 {
        // SAFETY: super-block i < n/256 of the weight row and each activation row.
        unsafe {
            let wp = w.add(i * 84);
            let d = f16_at(wp.add(80));
            let dmin = f16_at(wp.add(82));
            let sc = load128(wp);
            let mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), m4));
            let s16 = _mm256_cvtepu8_epi16(_mm_and_si128(sc, m4));
            let mut isum = [_mm512_setzero_si512(); C];
            for k in 0..4 {
                let q = two_bit_chunk(wp.add(16), k);
                let scale = chunk_scales(s16, k);
                for c in 0..C {
                    let ap = a.add(c * stride + i * 292 + 4 + 64 * k);
                    let av = _mm512_loadu_si512(ap as *const __m512i);
                    let p = _mm512_madd_epi16(_mm512_maddubs_epi16(q, av), scale);
                    isum[c] = _mm512_add_epi32(isum[c], p);
                }
            }
            for c in 0..C {
                let ap = a.add(c * stride + i * 292);
                let da = f32_at(ap);
                let min_sum = _mm256_madd_epi16(load256(ap.add(260)), mins16);
                let dots = _mm512_cvtepi32_ps(isum[c]);
                acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(d * da), dots, acc[c]);
                let mins = _mm512_cvtepi32_ps(_mm512_zextsi256_si512(min_sum));
                acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(-dmin * da), mins, acc[c]);
            }
        }
    }
    acc.map(|v| _mm512_reduce_add_ps(v))
}
tile_dispatch!(tile_q2k_avx512, k_q2k_avx512);

/// Q3_K as [`k_q3k`], 64 elements per step.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
unsafe fn k_q3k_avx512<const C: usize>(
    n: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
) -> [f32; C] {
    let mut acc = [_mm512_setzero_ps(); C];
    let four = _mm512_set1_epi8(4);
    for i in 0..n / 256 {
        // SAFETY: super-block i < n/256 of the weight row and each activation row.
        unsafe {
            let wp = w.add(i * 110);
            let d = f16_at(wp.add(108));
            let sc16 = _mm256_cvtepi8_epi16(q3k_scales(wp.add(96)));
            let hm = _mm512_broadcast_i64x4(load256(wp));
            let mut isum = [_mm512_setzero_si512(); C];
            for k in 0..4 {
                // hmask bit 2k (elements 0..32 of the chunk) and 2k + 1 (32..64) is bit 2 of
                // the codes.
                let bits = _mm512_inserti64x4::<1>(
                    _mm512_set1_epi8((1u8 << (2 * k)) as i8),
                    _mm256_set1_epi8((1u8 << (2 * k + 1)) as i8),
                );
                let high = _mm512_test_epi8_mask(hm, bits);
                let low = two_bit_chunk(wp.add(32), k);
                let q = _mm512_mask_add_epi8(low, high, low, four);
                let scale = chunk_scales(sc16, k);
                for c in 0..C {
                    let ap = a.add(c * stride + i * 292 + 4 + 64 * k);
                    let av = _mm512_loadu_si512(ap as *const __m512i);
                    let p = _mm512_madd_epi16(_mm512_maddubs_epi16(q, av), scale);
                    isum[c] = _mm512_add_epi32(isum[c], p);
                }
            }
            for c in 0..C {
                let ap = a.add(c * stride + i * 292);
                let da = f32_at(ap);
                let offset = _mm256_madd_epi16(load256(ap.add(260)), sc16);
                let offset = _mm512_zextsi256_si512(_mm256_slli_epi32::<2>(offset));
                let dots = _mm512_cvtepi32_ps(_mm512_sub_epi32(isum[c], offset));
                acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(d * da), dots, acc[c]);
            }
        }
    }
    acc.map(|v| _mm512_reduce_add_ps(v))
}
tile_dispatch!(tile_q3k_avx512, k_q3k_avx512);

// ------------------------------------------------------------------ activation quantizers

/// `roundf` (half away from zero) of 8 lanes: truncate, then step away from zero where the
/// dropped fraction is at least one half (exact: `v − trunc(v)` has no rounding error).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_half_away(v: __m256) -> __m256 {
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    let frac = _mm256_sub_ps(v, t);
    let sign_bit = _mm256_set1_ps(-0.0);
    let abs_frac = _mm256_andnot_ps(sign_bit, frac);
    let step = _mm256_or_ps(_mm256_and_ps(v, sign_bit), _mm256_set1_ps(1.0));
    let need = _mm256_cmp_ps::<_CMP_GE_OQ>(abs_frac, _mm256_set1_ps(0.5));
    _mm256_add_ps(t, _mm256_and_ps(need, step))
}

/// Packs 4 × 8 i32 lanes (values in −127..=127) into 32 i8 in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_i32x32(q: [__m256i; 4]) -> __m256i {
    let p01 = _mm256_packs_epi32(q[0], q[1]);
    let p23 = _mm256_packs_epi32(q[2], q[3]);
    let p = _mm256_packs_epi16(p01, p23);
    // packs works per 128-bit lane; restore element order of the 4-byte groups.
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Q8_0 (34-byte blocks) or, with `with_sum`, Q8_1 (36 bytes, `s = f16(d·Σq)`), with the
/// reference arithmetic: `d = amax/127`, `q = roundf(x/d)` via `x·(1/d)`.
///
/// Safety: the CPU has AVX2/FMA/F16C; `dst` holds exactly the blocks of `x`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_0(x: &[f32], dst: &mut [u8], with_sum: bool) {
    let bytes = if with_sum { 36 } else { 34 };
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    for (xb, out) in x.chunks_exact(32).zip(dst.chunks_exact_mut(bytes)) {
        // SAFETY: xb has 32 floats.
        let v: [__m256; 4] =
            std::array::from_fn(|k| unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * k)) });
        let mut amax = _mm256_and_ps(v[0], abs_mask);
        for vk in &v[1..] {
            amax = _mm256_max_ps(amax, _mm256_and_ps(*vk, abs_mask));
        }
        let m = _mm_max_ps(
            _mm256_castps256_ps128(amax),
            _mm256_extractf128_ps::<1>(amax),
        );
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let d = _mm_cvtss_f32(m) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        let q = v.map(|vk| _mm256_cvtps_epi32(round_half_away(_mm256_mul_ps(vk, idv))));
        let packed = pack_i32x32(q);
        let off = bytes - 32;
        // SAFETY: out has `bytes` bytes, the codes go to its last 32.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(off) as *mut __m256i, packed) };
        out[0..2].copy_from_slice(&crate::f32_to_f16(d).to_le_bytes());
        if with_sum {
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            let sum = _mm_cvtsi128_si32(s);
            out[2..4].copy_from_slice(&crate::f32_to_f16(sum as f32 * d).to_le_bytes());
        }
    }
}

/// Q8_K (292-byte blocks): the value of largest magnitude (first one, with its sign) maps
/// to −127, `q = min(127, round(x·iscale))` (ties to even), `d = 1/iscale`, plus the sums
/// of each 16 codes.
///
/// Safety: the CPU has AVX2/FMA/F16C; `dst` holds exactly the blocks of `x`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8k(x: &[f32], dst: &mut [u8]) {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    for (xb, out) in x.chunks_exact(256).zip(dst.chunks_exact_mut(292)) {
        // SAFETY: xb has 256 floats.
        let load = |k: usize| unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * k)) };
        let mut amax = _mm256_setzero_ps();
        for k in 0..32 {
            amax = _mm256_max_ps(amax, _mm256_and_ps(load(k), abs_mask));
        }
        let m = _mm_max_ps(
            _mm256_castps256_ps128(amax),
            _mm256_extractf128_ps::<1>(amax),
        );
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        if amax == 0.0 || amax.is_nan() {
            // Same as the reference for an all-zero block: d = 0, codes and sums 0.
            out.fill(0);
            if amax.is_nan() {
                crate::quantize_row(GgmlType::Q8K, xb, out).expect("one block");
            }
            continue;
        }
        // The first element whose magnitude is amax keeps its sign.
        let max = *xb
            .iter()
            .find(|v| v.abs() == amax)
            .expect("amax is one of the values");
        let iscale = -127.0 / max;
        let isv = _mm256_set1_ps(iscale);
        let top = _mm256_set1_epi32(127);
        for g in 0..8 {
            let q: [__m256i; 4] = std::array::from_fn(|k| {
                let v = _mm256_mul_ps(load(4 * g + k), isv);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_min_epi32(_mm256_cvtps_epi32(r), top)
            });
            // SAFETY: 32 codes at 4 + 32g < 260.
            unsafe {
                let p = out.as_mut_ptr().add(4 + 32 * g) as *mut __m256i;
                _mm256_storeu_si256(p, pack_i32x32(q));
            }
        }
        out[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        for j in 0..16 {
            let s: i16 = out[4 + 16 * j..20 + 16 * j]
                .iter()
                .map(|&b| b as i8 as i16)
                .sum();
            out[260 + 2 * j..262 + 2 * j].copy_from_slice(&s.to_le_bytes());
        }
    }
}

// ------------------------------------------------------------------ f32 helpers

/// Σ a·b with two 8-lane FMA accumulators.
///
/// Safety: the CPU has AVX2/FMA; `a.len() == b.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f32_dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (loads): i + 16 <= n or i + 8 <= n.
    unsafe {
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
    }
    let mut sum = hsum_ps(_mm256_add_ps(acc0, acc1));
    for j in i..n {
        sum += a[j] * b[j];
    }
    sum
}

/// `y += alpha·x`.
///
/// Safety: the CPU has AVX2/FMA; `y.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f32_axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    let n = y.len();
    let (py, px) = (y.as_mut_ptr(), x.as_ptr());
    let av = _mm256_set1_ps(alpha);
    let mut i = 0;
    // SAFETY: i + 8 <= n for both slices.
    unsafe {
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), v);
            i += 8;
        }
    }
    for j in i..n {
        y[j] += alpha * x[j];
    }
}

/// `dst[i] = src[i]` widened from f16 (exact), 8 values per `vcvtph2ps`.
///
/// # Safety
/// The CPU has AVX2/F16C; `dst.len() >= src.len()`.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    let n = src.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: values i..i + 8 lie inside both slices (`dst` is at least as long).
        unsafe { _mm256_storeu_ps(d.add(i), <half::f16 as KeyElem>::load8(s.add(i))) };
        i += 8;
    }
    for j in i..n {
        dst[j] = crate::f16_to_f32(src[j].to_bits());
    }
}

/// [`widen_f16`], 16 values per `vcvtph2ps`.
///
/// # Safety
/// The CPU has AVX-512F (and so AVX2/F16C); `dst.len() >= src.len()`.
#[target_feature(enable = "avx512f,avx2,f16c")]
pub(super) unsafe fn widen_f16_avx512(src: &[half::f16], dst: &mut [f32]) {
    let n = src.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: values i..i + 16 lie inside both slices (`dst` is at least as long).
        unsafe { _mm512_storeu_ps(d.add(i), <half::f16 as KeyElem>::load16(s.add(i))) };
        i += 16;
    }
    // SAFETY: forwarded; the CPU has AVX2/F16C.
    unsafe { widen_f16(&src[i..], &mut dst[i..]) }
}

/// The element type of the shared row of the score kernels: f32, or f16 (attention's f16
/// rings) widened inside the kernel with `vcvtph2ps`, so that no converted copy of the row
/// is written and read back.
pub(super) trait KeyElem: Copy {
    fn to_f32(self) -> f32;
    /// 8 elements at `p` as f32.
    ///
    /// # Safety
    /// 8 elements readable at `p`; the CPU has AVX2/F16C.
    unsafe fn load8(p: *const Self) -> __m256;
    /// 16 elements at `p` as f32.
    ///
    /// # Safety
    /// 16 elements readable at `p`; the CPU has AVX-512F.
    unsafe fn load16(p: *const Self) -> __m512;
}

impl KeyElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: forwarded.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: forwarded.
        unsafe { _mm512_loadu_ps(p) }
    }
}

impl KeyElem for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> __m256 {
        // SAFETY: forwarded (16 bytes).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> __m512 {
        // SAFETY: forwarded (32 bytes).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
}

/// `out[j] = a[j·stride ..][..x.len()] · x` for up to 8 rows `j < R`: each 8-float chunk of
/// `x` is loaded once for all rows (the query heads that share one key in multi-query
/// attention), one accumulator per row.
///
/// # Safety
/// The CPU has AVX2/FMA; `a` holds `(R - 1) * stride + x.len()` floats.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_dots_rows<const R: usize, X: KeyElem>(
    a: &[f32],
    stride: usize,
    x: &[X],
    out: &mut [f32],
) {
    let n = x.len();
    let (pa, px) = (a.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); R];
    let mut i = 0;
    // SAFETY (loads): i + 8 <= n, and row j < R spans a[j*stride .. j*stride + n].
    unsafe {
        while i + 8 <= n {
            let xv = X::load8(px.add(i));
            for j in 0..R {
                acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(j * stride + i)), xv, acc[j]);
            }
            i += 8;
        }
    }
    for j in 0..R {
        let mut sum = hsum_ps(acc[j]);
        for k in i..n {
            sum += a[j * stride + k] * x[k].to_f32();
        }
        out[j] = sum;
    }
}

/// [`f32_dots_rows`] for any number of rows (in runs of 8).
///
/// # Safety
/// The CPU has AVX2/FMA; `a` holds `(out.len() - 1) * stride + x.len()` floats.
pub(super) unsafe fn f32_dots<X: KeyElem>(a: &[f32], stride: usize, x: &[X], out: &mut [f32]) {
    let mut j0 = 0;
    while j0 < out.len() {
        let r = (out.len() - j0).min(8);
        let (a, o) = (&a[j0 * stride..], &mut out[j0..j0 + r]);
        // SAFETY: forwarded; rows j0..j0+r lie inside `a`.
        unsafe { by_count!(r, f32_dots_rows<X>, (a, stride, x, o), [1 2 3 4 5 6 7], 8) }
        j0 += r;
    }
}

/// [`f32_dots_rows`] on 512-bit registers for up to 16 rows (the query heads that share one
/// key: all ten of the 2B model's in one pass over the key). Lengths must be whole
/// 16-float chunks.
///
/// # Safety
/// The CPU has AVX-512F; `x.len() % 16 == 0`; `a` holds `(R - 1) * stride + x.len()` floats.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn f32_dots_rows_avx512<const R: usize, X: KeyElem>(
    a: &[f32],
    stride: usize,
    x: &[X],
    out: &mut [f32],
) {
    let n = x.len();
    let (pa, px) = (a.as_ptr(), x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); R];
    let mut i = 0;
    // SAFETY (loads): i + 16 <= n, and row j < R spans a[j*stride .. j*stride + n].
    unsafe {
        while i < n {
            let xv = X::load16(px.add(i));
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(j * stride + i)), xv, *acc);
            }
            i += 16;
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        *o = _mm512_reduce_add_ps(acc);
    }
}

/// [`f32_dots_rows_avx512`] for any number of rows (in runs of 16).
///
/// # Safety
/// The CPU has AVX-512F; `x.len() % 16 == 0`; `a` holds `(out.len() - 1) * stride +
/// x.len()` floats.
pub(super) unsafe fn f32_dots_avx512<X: KeyElem>(
    a: &[f32],
    stride: usize,
    x: &[X],
    out: &mut [f32],
) {
    let mut j0 = 0;
    while j0 < out.len() {
        let r = (out.len() - j0).min(16);
        let (a, o) = (&a[j0 * stride..], &mut out[j0..j0 + r]);
        // SAFETY: forwarded; rows j0..j0+r lie inside `a`.
        unsafe {
            by_count!(r, f32_dots_rows_avx512<X>, (a, stride, x, o), [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15], 16)
        }
        j0 += r;
    }
}

/// `y[j·w + c0 ..][..16·V] += Σ_i p[j·p_stride + i] · xs[i][c0 ..][..16·V]` for `H` (1 or 2)
/// rows of `y`: a tile of `H × V` (≤ 16) accumulators that stays in registers across all the
/// `xs`, so each `xs[i]` chunk is loaded once per tile and each weight `p` broadcast once per
/// tile (the AVX2 kernel broadcasts it once per 8-float chunk).
///
/// # Safety
/// The CPU has AVX-512F; `y` holds `(H - 1) * w + c0 + 16 * V` floats, every `xs[i]` at
/// least `c0 + 16 * V`, `p` holds `(H - 1) * p_stride + xs.len()`.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn f32_axpy_tile_avx512<const H: usize, const V: usize>(
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
        let mut acc = [[_mm512_setzero_ps(); V]; H];
        for (h, row) in acc.iter_mut().enumerate() {
            for (v, a) in row.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(py.add(h * w + c0 + 16 * v));
            }
        }
        for (i, x) in xs.iter().enumerate() {
            let px = x.as_ptr().add(c0);
            let weights: [__m512; H] =
                std::array::from_fn(|h| _mm512_set1_ps(*p.get_unchecked(h * p_stride + i)));
            for v in 0..V {
                let xv = _mm512_loadu_ps(px.add(16 * v));
                for h in 0..H {
                    acc[h][v] = _mm512_fmadd_ps(weights[h], xv, acc[h][v]);
                }
            }
        }
        for (h, row) in acc.iter().enumerate() {
            for (v, a) in row.iter().enumerate() {
                _mm512_storeu_ps(py.add(h * w + c0 + 16 * v), *a);
            }
        }
    }
}

/// [`f32_axpy_tile_avx512`] over the whole of `y`: rows in pairs, columns in blocks of
/// 8 vectors (128 floats).
///
/// # Safety
/// The CPU has AVX-512F; `w % 16 == 0`; as [`f32_axpy_rows`] with `R = y.len() / w`.
pub(super) unsafe fn f32_axpy_many_avx512(
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
            let v = ((w - c0) / 16).min(8);
            // SAFETY: forwarded; columns c0..c0 + 16v of rows j0..j0+h lie inside `y` and
            // every `xs[i]`.
            unsafe {
                macro_rules! tile {
                    ($($n:literal)*) => {
                        match (h, v) {
                            $((2, $n) => f32_axpy_tile_avx512::<2, $n>(y, w, c0, p, p_stride, xs),
                              (1, $n) => f32_axpy_tile_avx512::<1, $n>(y, w, c0, p, p_stride, xs),)*
                            _ => unreachable!("1 or 2 rows of 1 to 8 vectors"),
                        }
                    };
                }
                tile!(1 2 3 4 5 6 7 8);
            }
            c0 += 16 * v;
        }
        j0 += h;
    }
}

/// `y[j·w ..][..w] += Σ_i p[j·p_stride + i] · xs[i][..w]` for `R` (≤ 8) rows of `y`: each
/// chunk of every `xs[i]` is loaded once for all rows and the row sums stay in registers
/// across the `xs` (attention: the weighted sum of value rows for several heads).
///
/// # Safety
/// The CPU has AVX2/FMA; `y` holds `R * w` floats, `p` holds `(R - 1) * p_stride +
/// xs.len()`, every `xs[i]` at least `w`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_axpy_rows<const R: usize>(
    y: &mut [f32],
    w: usize,
    p: &[f32],
    p_stride: usize,
    xs: &[&[f32]],
) {
    let py = y.as_mut_ptr();
    let mut c = 0;
    // SAFETY (pointer accesses): c + 8 <= w for every row of y and every xs[i]; p indices
    // are below (R - 1) * p_stride + xs.len().
    unsafe {
        while c + 8 <= w {
            let mut acc = [_mm256_setzero_ps(); R];
            for j in 0..R {
                acc[j] = _mm256_loadu_ps(py.add(j * w + c));
            }
            for (i, x) in xs.iter().enumerate() {
                let v = _mm256_loadu_ps(x.as_ptr().add(c));
                for j in 0..R {
                    let pj = _mm256_set1_ps(*p.get_unchecked(j * p_stride + i));
                    acc[j] = _mm256_fmadd_ps(pj, v, acc[j]);
                }
            }
            for j in 0..R {
                _mm256_storeu_ps(py.add(j * w + c), acc[j]);
            }
            c += 8;
        }
    }
    for j in 0..R {
        for k in c..w {
            for (i, x) in xs.iter().enumerate() {
                y[j * w + k] += p[j * p_stride + i] * x[k];
            }
        }
    }
}

/// [`f32_axpy_rows`] for any number of rows (in runs of 8).
///
/// # Safety
/// As [`f32_axpy_rows`] with `R = y.len() / w`.
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
        let r = (rows - j0).min(8);
        let (y, p) = (&mut y[j0 * w..(j0 + r) * w], &p[j0 * p_stride..]);
        // SAFETY: forwarded for rows j0..j0+r.
        unsafe { by_count!(r, f32_axpy_rows, (y, w, p, p_stride, xs), [1 2 3 4 5 6 7], 8) }
        j0 += r;
    }
}
