//! Packed F16 and BF16: eight rows interleaved value by value, against f32 activations.
//!
//! A group of `n` values takes `16n` bytes, exactly its 8 stored rows:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 16k + 2r | 2 | value `k` of row `r` (the stored f16 / bf16 bits) |
//!
//! so one 16-byte load is value `k` of all 8 rows, which one `vcvtph2ps` (F16) or a widen
//! and shift (BF16) turns into 8 f32 lanes, lane `r` = row `r`. A tile of 8 rows × `C`
//! tokens then costs per value one load and conversion and `C` broadcast-FMAs, and needs no
//! horizontal sum: the stored layout's kernels reduce 8 lanes per row and token, which for
//! the RG-LRU gates' 256-value rows was most of their time.
//!
//! Activations are the f32 values themselves (`4n` bytes per row). The sums are f32 as in
//! the stored kernels; only their order differs, and it is one order for every tile width
//! (per 64-value block, even and odd values in two chains; see the module doc of `packed`
//! on batch invariance). The driver (`tiles::run_tiles`) sees
//! "super-blocks" of [`BLOCK`] values, so `n` must be a multiple of 64.

use crate::dot::Backend;

pub(super) const READY: bool = true;

/// Values per driver block (the reduction is split into passes of whole blocks).
pub(super) const BLOCK: usize = 64;
/// Bytes of one packed block (8 rows × 64 values × 2 bytes) and of its activations.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const BLOCK_BYTES: usize = 16 * BLOCK;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const ACT_BYTES: usize = 4 * BLOCK;

pub(super) fn group_bytes(n: usize) -> usize {
    16 * n
}

pub(super) fn pack_group(n: usize, src: &[u8], src_row_bytes: usize, dst: &mut [u8]) {
    for r in 0..8 {
        let row = &src[r * src_row_bytes..r * src_row_bytes + 2 * n];
        for (k, v) in row.chunks_exact(2).enumerate() {
            dst[16 * k + 2 * r..16 * k + 2 * r + 2].copy_from_slice(v);
        }
    }
}

pub(super) fn unpack_row(n: usize, group: &[u8], r: usize, dst: &mut [u8]) {
    for (k, v) in dst[..2 * n].chunks_exact_mut(2).enumerate() {
        v.copy_from_slice(&group[16 * k + 2 * r..16 * k + 2 * r + 2]);
    }
}

pub(super) fn activation_row_bytes(n: usize) -> usize {
    4 * n
}

pub(super) fn quantize_activation(x: &[f32], dst: &mut [u8]) {
    for (d, v) in dst.chunks_exact_mut(4).zip(x) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// The SIMD tile of `backend` and the most columns it takes, or `None` (scalar kernel).
/// x86: the same body compiled for AVX-512 (32 registers: the 3 accumulators of 8 columns
/// fit) and for AVX2 (16 registers: 4 columns); aarch64: every NEON backend, 4 columns.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn simd_tile<const BF16: bool>(backend: Backend) -> Option<(super::tiles::Tile, usize)> {
    #[cfg(target_arch = "x86_64")]
    let tile: Option<(super::tiles::Tile, usize)> = match backend {
        Backend::Avx512 => Some((
            if BF16 {
                x86::tile_bf16_avx512
            } else {
                x86::tile_f16_avx512
            },
            8,
        )),
        b if b.has_avx2() => Some((if BF16 { x86::tile_bf16 } else { x86::tile_f16 }, 4)),
        _ => None,
    };
    #[cfg(target_arch = "aarch64")]
    let tile: Option<(super::tiles::Tile, usize)> = backend
        .has_neon()
        .then_some((if BF16 { arm::tile_bf16 } else { arm::tile_f16 }, 4));
    tile
}

/// # Safety
/// See `packed::gemm_to_ptr`; `n` is a multiple of [`BLOCK`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm<const BF16: bool>(
    backend: Backend,
    n: usize,
    w: &[u8],
    ngroups: usize,
    act: &[u8],
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
) {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if let Some((tile, width)) = simd_tile::<BF16>(backend) {
        // SAFETY: the backend is usable (mod.rs maps others to Scalar), so the CPU has the
        // features the tile needs; extents are the caller's contract.
        unsafe {
            super::tiles::run_tiles(
                tile,
                None,
                width,
                n / BLOCK,
                BLOCK_BYTES,
                ACT_BYTES,
                w,
                ngroups,
                act,
                act_stride,
                ncols,
                out,
                out_stride,
            )
        };
        return;
    }
    let _ = backend;
    let to_f32 = |b: &[u8]| {
        let bits = u16::from_le_bytes([b[0], b[1]]);
        if BF16 {
            crate::bf16_to_f32(bits)
        } else {
            crate::f16_to_f32(bits)
        }
    };
    for g in 0..ngroups {
        let wg = &w[g * 16 * n..(g + 1) * 16 * n];
        for c in 0..ncols {
            let a = &act[c * act_stride..c * act_stride + 4 * n];
            for r in 0..8 {
                // The reference kernel: one f32 sum per row and token, in value order.
                let mut sum = 0.0f32;
                for k in 0..n {
                    let x =
                        f32::from_le_bytes([a[4 * k], a[4 * k + 1], a[4 * k + 2], a[4 * k + 3]]);
                    sum += to_f32(&wg[16 * k + 2 * r..]) * x;
                }
                // SAFETY: row g*8 + r < ngroups*8 and column c < ncols (caller's contract).
                unsafe { *out.add(c * out_stride + g * 8 + r) = sum };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::tiles::{load_acc, store};
    use super::BLOCK;

    /// Value `k` of the 8 rows (16 bytes at `p`) as f32 lanes.
    ///
    /// # Safety
    /// `p..p + 16` readable; AVX2 and F16C.
    #[inline(always)]
    unsafe fn load8<const BF16: bool>(p: *const u8) -> __m256 {
        // SAFETY: forwarded.
        let h = unsafe { _mm_loadu_si128(p as *const __m128i) };
        if BF16 {
            // bf16 is the top half of an f32.
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        } else {
            _mm256_cvtph_ps(h)
        }
    }

    /// 8 rows of `nb` packed blocks at `w` × `C` f32 activation rows.
    ///
    /// # Safety
    /// `w` holds `nb` packed blocks, `act + c·act_stride` `64·nb` f32 for `c < C`, `out`
    /// as in `tiles::store`; AVX2/FMA/F16C (inlined into the `kernel!` instances).
    #[inline(always)]
    unsafe fn body<const BF16: bool, const C: usize, const ADD: bool>(
        nb: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let a = |c: usize, k: usize| -> __m256 {
            // SAFETY: c < C and k < 64·nb are inside the activations (caller).
            unsafe {
                _mm256_set1_ps((act.add(c * act_stride + 4 * k) as *const f32).read_unaligned())
            }
        };
        // SAFETY: the output extent is the caller's contract.
        let mut acc = unsafe { load_acc::<C, ADD>(out, out_stride) };
        // Per block, every column sums even and odd values in two chains from zero and
        // adds their sum to its accumulator: the same operations in the same order for any
        // `C` (batch invariance), and two chains per column keep one token's loop from
        // waiting on the FMA latency.
        for blk in 0..nb {
            let k0 = blk * BLOCK;
            let mut even = [_mm256_setzero_ps(); C];
            let mut odd = [_mm256_setzero_ps(); C];
            for k in (k0..k0 + BLOCK).step_by(2) {
                // SAFETY: k + 1 < 64·nb, inside the group.
                let (w0, w1) = unsafe {
                    (
                        load8::<BF16>(w.add(16 * k)),
                        load8::<BF16>(w.add(16 * (k + 1))),
                    )
                };
                for c in 0..C {
                    even[c] = _mm256_fmadd_ps(w0, a(c, k), even[c]);
                    odd[c] = _mm256_fmadd_ps(w1, a(c, k + 1), odd[c]);
                }
            }
            for c in 0..C {
                acc[c] = _mm256_add_ps(acc[c], _mm256_add_ps(even[c], odd[c]));
            }
        }
        // SAFETY: forwarded.
        unsafe { store(&acc, out, out_stride) };
    }

    /// Instantiates [`body`] for one weight type and instruction set.
    macro_rules! kernel {
        ($name:ident, $bf16:literal, $features:literal) => {
            /// # Safety
            /// As `body`; the CPU has the features enabled here.
            #[target_feature(enable = $features)]
            unsafe fn $name<const C: usize, const ADD: bool>(
                nb: usize,
                w: *const u8,
                act: *const u8,
                act_stride: usize,
                out: *mut f32,
                out_stride: usize,
            ) {
                // SAFETY: forwarded.
                unsafe { body::<$bf16, C, ADD>(nb, w, act, act_stride, out, out_stride) }
            }
        };
    }
    kernel!(f16_kernel, false, "avx2,fma,f16c");
    kernel!(bf16_kernel, true, "avx2,fma,f16c");
    kernel!(f16_avx512, false, "avx2,fma,f16c,avx512f,avx512vl");
    kernel!(bf16_avx512, true, "avx2,fma,f16c,avx512f,avx512vl");

    super::super::tiles::tile_fn!(tile_f16, f16_kernel);
    super::super::tiles::tile_fn!(tile_bf16, bf16_kernel);
    super::super::tiles::tile_fn!(tile_f16_avx512, f16_avx512);
    super::super::tiles::tile_fn!(tile_bf16_avx512, bf16_avx512);
}

#[cfg(target_arch = "aarch64")]
mod arm {
    //! NEON: value `k` of the 8 rows (16 bytes) widens to two f32x4 (`fcvtl` for F16, a
    //! 16-bit left shift for BF16) and meets each token's activation in a multiply-add by
    //! scalar; plain NEON, so every aarch64 core runs it.

    use super::super::neon::{f16x8_to_f32, load_acc, store};
    use super::BLOCK;
    use std::arch::aarch64::*;

    /// Value `k` of the 8 rows (16 bytes at `p`) as f32: rows 0..4, 4..8.
    ///
    /// Safety: `p..p + 16` readable.
    #[inline(always)]
    unsafe fn load8<const BF16: bool>(p: *const u8) -> [float32x4_t; 2] {
        // SAFETY: forwarded; register-only conversions.
        unsafe {
            if BF16 {
                // bf16 is the top half of an f32.
                let h = vld1q_u16(p as *const u16);
                [
                    vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
                    vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
                ]
            } else {
                f16x8_to_f32(p)
            }
        }
    }

    /// 8 rows of `nb` packed blocks at `w` × `C` f32 activation rows.
    ///
    /// Safety: `w` holds `nb` packed blocks, `act + c·act_stride` `64·nb` f32 for `c < C`,
    /// `out` as in `neon::store`.
    unsafe fn kernel<const BF16: bool, const C: usize, const ADD: bool>(
        nb: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let a = |c: usize, k: usize| -> f32 {
            // SAFETY: c < C and k < 64·nb are inside the activations (caller).
            unsafe { (act.add(c * act_stride + 4 * k) as *const f32).read_unaligned() }
        };
        // SAFETY: the output extent is the caller's contract.
        let mut acc = unsafe { load_acc::<C, ADD>(out, out_stride) };
        // As on x86: per block, even and odd values in two chains from zero per column.
        for blk in 0..nb {
            let k0 = blk * BLOCK;
            let mut even = [[vdupq_n_f32(0.0); 2]; C];
            let mut odd = [[vdupq_n_f32(0.0); 2]; C];
            for k in (k0..k0 + BLOCK).step_by(2) {
                // SAFETY: k + 1 < 64·nb, inside the group.
                let (w0, w1) = unsafe {
                    (
                        load8::<BF16>(w.add(16 * k)),
                        load8::<BF16>(w.add(16 * (k + 1))),
                    )
                };
                for c in 0..C {
                    for h in 0..2 {
                        even[c][h] = vfmaq_n_f32(even[c][h], w0[h], a(c, k));
                        odd[c][h] = vfmaq_n_f32(odd[c][h], w1[h], a(c, k + 1));
                    }
                }
            }
            for c in 0..C {
                for h in 0..2 {
                    acc[c][h] = vaddq_f32(acc[c][h], vaddq_f32(even[c][h], odd[c][h]));
                }
            }
        }
        // SAFETY: forwarded.
        unsafe { store(&acc, out, out_stride) };
    }

    /// Safety: as `kernel`.
    unsafe fn f16_kernel<const C: usize, const ADD: bool>(
        nb: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY: forwarded.
        unsafe { kernel::<false, C, ADD>(nb, w, act, act_stride, out, out_stride) }
    }

    /// Safety: as `kernel`.
    unsafe fn bf16_kernel<const C: usize, const ADD: bool>(
        nb: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY: forwarded.
        unsafe { kernel::<true, C, ADD>(nb, w, act, act_stride, out, out_stride) }
    }

    super::super::tiles::tile_fn!(tile_f16, f16_kernel);
    super::super::tiles::tile_fn!(tile_bf16, bf16_kernel);
}
