//! Scalar float formats: f16 (IEEE binary16) and bf16 (bfloat16), stored as raw `u16` bits.
//!
//! The conversions reproduce ggml's software routines in `ggml-impl.h`
//! (`ggml_compute_fp32_to_fp16`, `ggml_compute_fp16_to_fp32`, `ggml_compute_fp32_to_bf16`),
//! which are what ggml's reference quantizers use for every stored scale:
//! - f32 -> f16 rounds to nearest, ties to even, with subnormals and overflow to infinity;
//!   every NaN becomes the canonical quiet NaN `sign | 0x7E00` (the payload is dropped; the
//!   `half` crate and F16C hardware keep it instead, which is the only difference from them).
//! - f16 -> f32 is exact (NaN payloads shifted into the f32 mantissa).
//! - f32 -> bf16 rounds to nearest even on the bit pattern; a NaN keeps its top 16 bits with
//!   the quiet bit forced (`| 0x0040`), so a signalling NaN never turns into infinity.
//! - bf16 -> f32 is a 16-bit shift.

/// ggml's f32 -> f16 conversion (round to nearest even; NaN -> `sign | 0x7E00`).
pub fn f32_to_f16(x: f32) -> u16 {
    // The trick (from Maratyszcza/FP16, as used by ggml): scaling |x| up by 2^112 and back
    // down by 2^-110 makes overflowing values infinite and leaves the others unchanged
    // (times 4). Adding a power of two chosen from x's exponent then lets the f32 adder do
    // the round-to-nearest-even at exactly the f16 precision, also for f16 subnormals.
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (x.abs() * scale_to_inf) * scale_to_zero;

    let w = x.to_bits();
    let shl1_w = w.wrapping_add(w); // exponent and mantissa, sign shifted out
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000; // below f16's normal range: round at the subnormal step
    }

    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    let magnitude = if shl1_w > 0xFF00_0000 {
        0x7E00
    } else {
        nonsign
    };
    ((sign >> 16) | magnitude) as u16
}

/// ggml's f16 -> f32 conversion (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);

    // Normal (and inf/NaN) inputs: move exponent+mantissa into place, then rescale the
    // exponent bias from 15 to 127 with one exact multiplication by 2^-112.
    const EXP_OFFSET: u32 = 0xE0 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized = f32::from_bits((two_w >> 4) + EXP_OFFSET) * exp_scale;

    // Subnormal inputs: put the mantissa under an exponent of 2^-1 and subtract 0.5, which
    // is exact and yields mantissa * 2^-24.
    const MAGIC_MASK: u32 = 126 << 23;
    let denormalized = f32::from_bits((two_w >> 17) | MAGIC_MASK) - 0.5;

    const DENORMALIZED_CUTOFF: u32 = 1 << 27;
    let magnitude = if two_w < DENORMALIZED_CUTOFF {
        denormalized.to_bits()
    } else {
        normalized.to_bits()
    };
    f32::from_bits(sign | magnitude)
}

/// ggml's f32 -> bf16 conversion (round to nearest even; NaN kept, made quiet).
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7FFF_FFFF) > 0x7F80_0000 {
        // NaN: truncating could clear every mantissa bit (turning it into infinity), and
        // rounding could carry into the exponent; keep the top half and force the quiet bit.
        return ((u >> 16) | 64) as u16;
    }
    // Adding 0x7FFF plus the lowest kept bit rounds half to even; overflow to infinity comes
    // out naturally (0x7F7F_FFFF + 0x8000 carries into the exponent).
    ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) as u16
}

/// bf16 -> f32 (exact: bf16 is the top half of an f32).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Encodes `src` as little-endian f16 into `dst` (`dst.len() == 2 * src.len()`, checked by
/// the caller).
pub(crate) fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
        out.copy_from_slice(&f32_to_f16(*x).to_le_bytes());
    }
}

pub(crate) fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (h, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = f16_to_f32(u16::from_le_bytes([h[0], h[1]]));
    }
}

pub(crate) fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
        out.copy_from_slice(&f32_to_bf16(*x).to_le_bytes());
    }
}

pub(crate) fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (h, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = bf16_to_f32(u16::from_le_bytes([h[0], h[1]]));
    }
}

pub(crate) fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(4)) {
        out.copy_from_slice(&x.to_le_bytes());
    }
}

pub(crate) fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f16 bit pattern converts like the `half` crate (NaNs: both NaN with the same
    /// sign).
    #[test]
    fn f16_to_f32_matches_half_exhaustively() {
        for h in 0..=u16::MAX {
            let ours = f16_to_f32(h);
            let theirs = half::f16::from_bits(h).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
                assert_eq!(ours.is_sign_negative(), theirs.is_sign_negative());
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
        }
    }

    /// f16 -> f32 -> f16 is the identity for every non-NaN pattern; NaNs become 0x7E00.
    #[test]
    fn f16_round_trip_exhaustive() {
        for h in 0..=u16::MAX {
            let back = f32_to_f16(f16_to_f32(h));
            if (h & 0x7FFF) > 0x7C00 {
                assert_eq!(back, (h & 0x8000) | 0x7E00, "{h:#06x}");
            } else {
                assert_eq!(back, h, "{h:#06x}");
            }
        }
    }

    /// f32 -> f16 matches `half`'s RNE conversion on a dense sweep of f32 bit patterns
    /// (every 97th pattern, and every pattern around each f16 rounding boundary).
    #[test]
    fn f32_to_f16_matches_half() {
        let check = |bits: u32| {
            let x = f32::from_bits(bits);
            if x.is_nan() {
                return;
            }
            assert_eq!(
                f32_to_f16(x),
                half::f16::from_f32(x).to_bits(),
                "{bits:#010x}"
            );
        };
        let mut bits = 0u32;
        while let Some(next) = bits.checked_add(97) {
            check(bits);
            bits = next;
        }
        // Around each f16 boundary (half-way points and representable values): ±4 ulps.
        for h in 0..0x7C00u32 {
            let lo = f16_to_f32(h as u16).to_bits();
            for sign in [0, 0x8000_0000] {
                for mid in [lo, lo + 0x1000, lo + 0x0FFF] {
                    for d in 0..8 {
                        check((mid + d).wrapping_sub(4) | sign);
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_rules() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        // Ties to even: 1 + 2^-8 (tie, even stays) and 1 + 3*2^-8 (tie, rounds up).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        // Overflow to infinity; infinity stays.
        assert_eq!(f32_to_bf16(f32::MAX), 0x7F80);
        assert_eq!(f32_to_bf16(f32::NEG_INFINITY), 0xFF80);
        // A signalling NaN whose payload sits in the low half stays NaN (quiet).
        assert_eq!(f32_to_bf16(f32::from_bits(0x7F80_0001)), 0x7FC0);
        assert_eq!(f32_to_bf16(f32::from_bits(0xFFA0_0000)), 0xFFE0);
        for h in 0..=u16::MAX {
            let x = bf16_to_f32(h);
            if !x.is_nan() {
                assert_eq!(f32_to_bf16(x), h);
                assert_eq!(half::bf16::from_bits(h).to_f32().to_bits(), x.to_bits());
            }
        }
    }
}
