//! aarch64 instructions the packed kernels need whose Rust intrinsics are not stable yet
//! (`vdotq_laneq_s32` is behind `stdarch_neon_dotprod`, `vusmmlaq_s32` behind
//! `stdarch_neon_i8mm`): one-instruction `asm!` blocks (the f16 conversion is `dot::neon`'s).
//! They are `pure, nomem, nostack`: each reads only its register operands and writes only
//! its output, so the compiler may schedule it like an intrinsic.
#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;
use std::arch::asm;

/// `acc[i] += Σ_t w[4i + t] · a[4·LANE + t]` for the 4 lanes `i` (`sdot` by element: the 4
/// bytes of group `LANE` of `a` against each 4-byte group of `w`).
///
/// Safety: the CPU has the dot-product extension (`Backend::NeonDot`).
#[inline(always)]
pub(super) unsafe fn sdot_lane<const LANE: i32>(
    mut acc: int32x4_t,
    w: int8x16_t,
    a: int8x16_t,
) -> int32x4_t {
    // SAFETY: register-only; the caller guarantees the instruction exists. The directive
    // lets the assembler take `sdot` wherever this is inlined.
    unsafe {
        asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            lane = const LANE,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `acc += w · aᵀ` for `w` as 2 rows × 8 unsigned bytes and `a` as 2 rows × 8 signed bytes
/// (`usmmla`, i8mm): `acc = [w0·a0, w0·a1, w1·a0, w1·a1]` + the 2 × 2 products, 32
/// multiply-adds in one instruction (`vusmmlaq_s32` is behind `stdarch_neon_i8mm`).
///
/// Safety: the CPU has the int8 matrix multiply (`Backend::NeonI8mm`).
#[inline(always)]
pub(super) unsafe fn usmmla(mut acc: int32x4_t, w: uint8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: register-only; the caller guarantees the instruction exists.
    unsafe {
        asm!(
            ".arch_extension i8mm",
            "usmmla {acc:v}.4s, {w:v}.16b, {a:v}.16b",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// f16 scales to f32 (`fcvtl`), shared with the dot kernels.
pub(super) use crate::dot::neon::f16x8_to_f32;

/// The f32 accumulators of `C` columns (8 rows each, as two f32x4): zero, or the partial
/// sums already in `out` when `ADD` (a later pass over the reduction, see
/// `tiles::run_tiles`).
///
/// Safety: as [`store`], and readable.
#[inline(always)]
pub(super) unsafe fn load_acc<const C: usize, const ADD: bool>(
    out: *mut f32,
    out_stride: usize,
) -> [[float32x4_t; 2]; C] {
    let mut acc = [[vdupq_n_f32(0.0); 2]; C];
    if ADD {
        for (c, v) in acc.iter_mut().enumerate() {
            // SAFETY: forwarded.
            unsafe {
                v[0] = vld1q_f32(out.add(c * out_stride));
                v[1] = vld1q_f32(out.add(c * out_stride + 4));
            }
        }
    }
    acc
}

/// Writes 8 row sums of `C` columns.
///
/// Safety: `out + c·out_stride + 0..8` writable for `c < C`.
#[inline(always)]
pub(super) unsafe fn store<const C: usize>(
    acc: &[[float32x4_t; 2]; C],
    out: *mut f32,
    out_stride: usize,
) {
    for (c, v) in acc.iter().enumerate() {
        // SAFETY: forwarded.
        unsafe {
            vst1q_f32(out.add(c * out_stride), v[0]);
            vst1q_f32(out.add(c * out_stride + 4), v[1]);
        }
    }
}
