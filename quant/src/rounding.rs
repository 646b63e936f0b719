//! The float -> integer conversions that ggml's reference quantizers use.
//!
//! ggml rounds in three different ways depending on the format, and bit-exact output needs
//! each one copied, including what happens outside the normal range:
//! - legacy Q4/Q5 formats: `(int8_t)(v + 8.5f)` etc., i.e. a C cast (truncation toward zero)
//!   after adding 0.5 + offset, which rounds half up;
//! - Q8_0/Q8_1: `roundf` (half away from zero), then a cast to `int8_t`;
//! - K-quants: [`nearest_int`], a magic-number trick that rounds half to even.

/// The C conversion `(int32_t)v` as compiled for x86-64 (`cvttss2si`): truncation toward
/// zero, and the "integer indefinite" value `i32::MIN` for NaN and out-of-range inputs.
///
/// C leaves the out-of-range case undefined; ggml's reference files are produced by x86-64
/// builds, where this is what happens. It matters only for degenerate blocks (NaN input, or
/// a denormal scale whose inverse overflows to infinity, giving `0 * inf = NaN`).
#[inline]
pub(crate) fn c_f32_to_i32(v: f32) -> i32 {
    // 2^31 is exactly representable; anything >= it or < -2^31 (or NaN) is out of range.
    if v.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32 // in range: Rust's `as` truncates toward zero like C
    }
}

/// The C conversion of a float to a narrow integer type (`(int8_t)v`, `(uint8_t)v`): gcc and
/// clang convert to a 32-bit int first and keep the low byte. Returned as that low byte.
#[inline]
pub(crate) fn c_f32_to_low_byte(v: f32) -> u8 {
    c_f32_to_i32(v) as u8 // `as u8` keeps the low 8 bits, like the C narrowing
}

/// ggml's `nearest_int`: round to nearest, ties to even, valid for |v| <= 4194303.
///
/// Adding 1.5 * 2^23 moves the integer part of `v` into the low mantissa bits (the f32 adder
/// does the rounding, in the default round-to-nearest-even mode); subtracting the magic
/// number's own mantissa (2^22) recovers it. Outside the valid range, and for NaN/inf, the
/// result is whatever those bit operations give, exactly as in ggml.
#[inline]
pub(crate) fn nearest_int(v: f32) -> i32 {
    let val = v + 12_582_912.0;
    let i = val.to_bits() as i32;
    (i & 0x007F_FFFF) - 0x0040_0000
}

/// ggml's `MAX(a, b)` macro, `a > b ? a : b`: with a NaN, the second argument wins. (This is
/// not `f32::max`, which ignores NaNs.)
#[inline]
pub(crate) fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_is_round_half_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(2.4999998), 2);
        assert_eq!(nearest_int(-7.6), -8);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
        for i in -1000..1000 {
            let v = i as f32 * 0.37;
            assert_eq!(nearest_int(v), v.round_ties_even() as i32, "{v}");
        }
    }

    #[test]
    fn c_casts_follow_x86() {
        assert_eq!(c_f32_to_i32(8.99), 8);
        assert_eq!(c_f32_to_i32(-0.99), 0);
        assert_eq!(c_f32_to_i32(f32::NAN), i32::MIN);
        assert_eq!(c_f32_to_i32(f32::INFINITY), i32::MIN);
        assert_eq!(c_f32_to_i32(-3e9), i32::MIN);
        assert_eq!(c_f32_to_i32(-2_147_483_648.0), i32::MIN);
        assert_eq!(c_f32_to_low_byte(-1.5), 0xFF);
        assert_eq!(c_f32_to_low_byte(300.0), 44);
        assert_eq!(c_f32_to_low_byte(f32::NAN), 0);
    }

    #[test]
    fn c_max_lets_nan_through_only_as_second_argument() {
        assert!(c_max(1.0, f32::NAN).is_nan());
        assert_eq!(c_max(f32::NAN, 1.0), 1.0);
        assert_eq!(c_max(2.0, 1.0), 2.0);
    }
}
