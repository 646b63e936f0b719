//! Activation format of the packed Q4_0 and Q8_0 kernels: Q8_0 codes plus the per-block
//! offset corrections the unsigned weight codes need.
//!
//! `vpdpbusd` multiplies unsigned weight bytes with signed activation bytes, so the packed
//! layouts store weight codes with an offset (Q4_0: `q + 8` as ggml does, Q8_0: `q + 128`).
//! `Σ (q + o)·a = Σ q·a + o·Σ a`, so each block carries `−o·Σa` ready to seed the integer
//! accumulator: the correction then costs no instruction in the kernel.
//!
//! One block of 32 values, [`BLOCK_BYTES`] bytes:
//!
//! | offset | size | content                                                         |
//! |--------|------|-----------------------------------------------------------------|
//! | 0      | 32   | codes `q` (i8), exactly those of the reference Q8_0 quantizer    |
//! | 32     | 4    | `d` as f32: the f16 scale of the Q8_0 block, widened exactly     |
//! | 36     | 4    | `−8·Σq` (i32), the Q4_0 correction                               |
//! | 40     | 4    | `−128·Σq` (i32), the Q8_0 correction                             |
//! | 44     | 4    | zero (pads blocks to 16-byte multiples)                          |
//!
//! The module also holds what the two types' `gemm` share besides the format: the
//! micro-kernel signature ([`TileFn`]), the loop nest that calls it ([`drive`]) and the
//! macro that turns a const-generic kernel into a `TileFn` (`tile_fn!`).

use crate::dot::Backend;
use crate::GgmlType;

/// Bytes of one 32-value activation block.
pub(super) const BLOCK_BYTES: usize = 48;
/// Offset of the f32 scale in a block.
pub(super) const D_OFF: usize = 32;
/// Offset of `−8·Σq`.
pub(super) const M8_OFF: usize = 36;
/// Offset of `−128·Σq`.
pub(super) const M128_OFF: usize = 40;

/// Bytes of one activation row of `n` values (`n` a multiple of 32).
pub(super) fn row_bytes(n: usize) -> usize {
    n / 32 * BLOCK_BYTES
}

/// Stored Q8_0 block size.
const Q8_0_BYTES: usize = 34;

/// Quantizes `x` (a multiple of 32 values) into `dst` (exactly [`row_bytes`] long).
///
/// The codes come from `crate::dot::quantize_activation`, the quantizer the unpacked
/// kernels use (bit-exact with ggml's Q8_0 reference), so packed and unpacked results agree
/// up to f32 summation order. It writes the stored Q8_0 row into the tail of `dst`, which
/// is then widened front to back in place: block `b`'s 48 output bytes end at `48(b+1)`,
/// no later than where the unread Q8_0 block `b+1` starts (`14·nb + 34(b+1)`), and block
/// `b` itself is copied out before it is overwritten. No allocation.
pub(super) fn quantize(backend: Backend, x: &[f32], dst: &mut [u8]) {
    let nb = x.len() / 32;
    debug_assert_eq!(dst.len(), nb * BLOCK_BYTES);
    let tail = nb * (BLOCK_BYTES - Q8_0_BYTES);
    crate::dot::quantize_activation(backend, GgmlType::Q8_0, x, &mut dst[tail..])
        .expect("lengths checked by packed::quantize_activation");
    for b in 0..nb {
        let mut blk = [0u8; Q8_0_BYTES];
        let src = tail + b * Q8_0_BYTES;
        blk.copy_from_slice(&dst[src..src + Q8_0_BYTES]);
        let d = crate::f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
        let sum: i32 = blk[2..].iter().map(|&q| q as i8 as i32).sum();
        let out = &mut dst[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
        out[..32].copy_from_slice(&blk[2..]);
        out[D_OFF..D_OFF + 4].copy_from_slice(&d.to_le_bytes());
        out[M8_OFF..M8_OFF + 4].copy_from_slice(&(-8 * sum).to_le_bytes());
        out[M128_OFF..M128_OFF + 4].copy_from_slice(&(-128 * sum).to_le_bytes());
        out[44..48].fill(0);
    }
}

/// The fields of one activation block, for the scalar kernels.
pub(super) struct Block<'a> {
    pub codes: &'a [u8],
    pub d: f32,
    pub m8: i32,
    pub m128: i32,
}

/// Block `b` of an activation row.
pub(super) fn block(row: &[u8], b: usize) -> Block<'_> {
    let p = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
    let word = |o: usize| [p[o], p[o + 1], p[o + 2], p[o + 3]];
    Block {
        codes: &p[..32],
        d: f32::from_le_bytes(word(D_OFF)),
        m8: i32::from_le_bytes(word(M8_OFF)),
        m128: i32::from_le_bytes(word(M128_OFF)),
    }
}

/// A micro-kernel: one packed group (`n` values of 8 rows at `w`) against `ncols`
/// activation rows at `act`, `act_stride` bytes apart; writes 8 consecutive floats per
/// column, `out_stride` floats apart.
///
/// Safety: the caller guarantees those bytes and floats are in bounds, `ncols` is between 1
/// and the tile width the kernel was registered with, and the CPU has the kernel's features.
pub(super) type TileFn = unsafe fn(
    n: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
);

/// A micro-kernel over two adjacent groups at once (16 rows, AVX-512): as [`TileFn`], with
/// the second group's weights `w_stride` bytes after the first's; writes 16 consecutive
/// floats per column (the two groups' rows are adjacent in the output).
///
/// Safety: as [`TileFn`] for both groups.
pub(super) type PairFn = unsafe fn(
    n: usize,
    w: *const u8,
    w_stride: usize,
    act: *const u8,
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
);

/// Weight bytes a chunk of groups may span so that it stays in L2 while every tile of
/// activation columns passes over it (the prompt path; decode reads each group once).
const CHUNK_BYTES: usize = 128 * 1024;

/// The loop nest of `packed::gemm_to_ptr` for the Q8_0-activation types: groups in chunks
/// that stay in L2, then tiles of at most `tile_cols` activation rows (they stay in L1
/// while the chunk's groups pass), then one kernel call per group, or per two groups when
/// `pair` is given and the call has at least its `min_cols` columns (a chunk's odd last
/// group goes to `tile`). A pair kernel must give every row the bits `tile` gives it
/// (batch invariance, `packed` module doc).
///
/// # Safety
/// As `packed::gemm_to_ptr`, with `w` holding `ngroups` groups of `group_bytes` bytes and
/// `tile` (and `pair`) able to run on this CPU for any `ncols` in `1..=tile_cols`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn drive(
    tile: TileFn,
    pair: Option<(PairFn, usize)>,
    tile_cols: usize,
    group_bytes: usize,
    n: usize,
    w: &[u8],
    ngroups: usize,
    act: &[u8],
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let pair = pair.and_then(|(f, min_cols)| (ncols >= min_cols).then_some(f));
    let mut chunk = (CHUNK_BYTES / group_bytes).max(1);
    if pair.is_some() {
        // Even, so that no chunk but the last has a group left over.
        chunk = (chunk & !1).max(2);
    }
    let mut g0 = 0;
    while g0 < ngroups {
        let g1 = (g0 + chunk).min(ngroups);
        let mut c0 = 0;
        while c0 < ncols {
            let nc = (ncols - c0).min(tile_cols);
            let mut g = g0;
            while g < g1 {
                // SAFETY: g (and g + 1 for a pair) < ngroups and c0 + nc <= ncols, within
                // the extents the caller checked (weights, activations) or guarantees
                // (output).
                unsafe {
                    let wg = w.as_ptr().add(g * group_bytes);
                    let ag = act.as_ptr().add(c0 * act_stride);
                    let og = out.add(c0 * out_stride + g * super::GROUP_ROWS);
                    match pair {
                        Some(pair) if g + 1 < g1 => {
                            pair(n, wg, group_bytes, ag, act_stride, nc, og, out_stride);
                            g += 2;
                        }
                        _ => {
                            tile(n, wg, ag, act_stride, nc, og, out_stride);
                            g += 1;
                        }
                    }
                }
            }
            c0 += nc;
        }
        g0 = g1;
    }
}

/// Where an aarch64 `sdot` kernel reads column `c`'s block `b`: rows in the format above
/// ([`Rows`]), or the column pairs of the i8mm kernels (`mmla::Pairs`), so that the last
/// 1-3 columns of an i8mm call run the `sdot` kernel on the pairs already built.
#[cfg(target_arch = "aarch64")]
pub(super) trait ActBlocks {
    /// The 32 codes: values `0..16` and `16..32`.
    ///
    /// # Safety
    /// Column `c`, block `b` lies inside the activations at `act` (`act_stride` apart).
    unsafe fn codes(
        act: *const u8,
        act_stride: usize,
        c: usize,
        b: usize,
    ) -> [std::arch::aarch64::int8x16_t; 2];
    /// The f32 scale `d`, in every lane.
    ///
    /// # Safety
    /// As [`Self::codes`].
    unsafe fn scale(
        act: *const u8,
        act_stride: usize,
        c: usize,
        b: usize,
    ) -> std::arch::aarch64::float32x4_t;
    /// The offset correction at `field` ([`M8_OFF`] or [`M128_OFF`]), in every lane.
    ///
    /// # Safety
    /// As [`Self::codes`].
    unsafe fn correction(
        act: *const u8,
        act_stride: usize,
        c: usize,
        b: usize,
        field: usize,
    ) -> std::arch::aarch64::int32x4_t;
}

/// Activation rows in this module's format.
#[cfg(target_arch = "aarch64")]
pub(super) struct Rows;

#[cfg(target_arch = "aarch64")]
impl ActBlocks for Rows {
    #[inline(always)]
    unsafe fn codes(
        act: *const u8,
        act_stride: usize,
        c: usize,
        b: usize,
    ) -> [std::arch::aarch64::int8x16_t; 2] {
        use std::arch::aarch64::vld1q_s8;
        // SAFETY: the block's 32 codes (caller).
        unsafe {
            let p = act.add(c * act_stride + b * BLOCK_BYTES) as *const i8;
            [vld1q_s8(p), vld1q_s8(p.add(16))]
        }
    }

    #[inline(always)]
    unsafe fn scale(
        act: *const u8,
        act_stride: usize,
        c: usize,
        b: usize,
    ) -> std::arch::aarch64::float32x4_t {
        // SAFETY: the block's scale (caller).
        unsafe {
            std::arch::aarch64::vld1q_dup_f32(
                act.add(c * act_stride + b * BLOCK_BYTES + D_OFF) as *const f32
            )
        }
    }

    #[inline(always)]
    unsafe fn correction(
        act: *const u8,
        act_stride: usize,
        c: usize,
        b: usize,
        field: usize,
    ) -> std::arch::aarch64::int32x4_t {
        // SAFETY: the block's field (caller).
        unsafe {
            std::arch::aarch64::vld1q_dup_s32(
                act.add(c * act_stride + b * BLOCK_BYTES + field) as *const i32
            )
        }
    }
}

/// Expands a const-generic kernel `$k::<C>(n, w, act, act_stride, out, out_stride)` (or
/// `$k::<A, C>` for `$k::<A>`) into a [`TileFn`] that picks `C` (one of the listed widths)
/// from `ncols`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! tile_fn {
    ($vis:vis $name:ident, $k:ident, $($c:literal)+) => {
        $crate::packed::act_q8_0::tile_fn!(@emit $vis $name, $k [], $($c)+);
    };
    ($vis:vis $name:ident, $k:ident::<$a:ty>, $($c:literal)+) => {
        $crate::packed::act_q8_0::tile_fn!(@emit $vis $name, $k [$a], $($c)+);
    };
    // `$args` is `[]` or `[A]`: one token tree, so it may stand inside the `$c` repetition.
    (@emit $vis:vis $name:ident, $k:ident $args:tt, $($c:literal)+) => {
        $vis unsafe fn $name(
            n: usize,
            w: *const u8,
            act: *const u8,
            act_stride: usize,
            ncols: usize,
            out: *mut f32,
            out_stride: usize,
        ) {
            // SAFETY: forwarded from the TileFn contract (which bounds `ncols`).
            unsafe {
                match ncols {
                    $($c => $crate::packed::act_q8_0::tile_fn!(@kernel $k $args $c)(
                        n, w, act, act_stride, out, out_stride
                    ),)+
                    _ => unreachable!("tile width checked by drive"),
                }
            }
        }
    };
    (@kernel $k:ident [] $c:literal) => { $k::<$c> };
    (@kernel $k:ident [$a:ty] $c:literal) => { $k::<$a, $c> };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) use tile_fn;

/// As `tile_fn!` for a two-group kernel `$k::<C>(n, w, w_stride, act, act_stride, out,
/// out_stride)`: a [`PairFn`].
#[cfg(target_arch = "x86_64")]
macro_rules! pair_fn {
    ($vis:vis $name:ident, $k:ident, $($c:literal)+) => {
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name(
            n: usize,
            w: *const u8,
            w_stride: usize,
            act: *const u8,
            act_stride: usize,
            ncols: usize,
            out: *mut f32,
            out_stride: usize,
        ) {
            // SAFETY: forwarded from the PairFn contract (which bounds `ncols`).
            unsafe {
                match ncols {
                    $($c => $k::<$c>(n, w, w_stride, act, act_stride, out, out_stride),)+
                    _ => unreachable!("tile width checked by drive"),
                }
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use pair_fn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_carry_the_reference_q8_0_codes_scale_and_sums() {
        let n = 96;
        let mut s = 7u32;
        let mut x: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 6.0 - 3.0
            })
            .collect();
        x[32..64].iter_mut().for_each(|v| *v = 0.0);
        let mut want = vec![0u8; n / 32 * Q8_0_BYTES];
        crate::quantize_row(GgmlType::Q8_0, &x, &mut want).unwrap();
        for backend in Backend::all_available() {
            let mut got = vec![0xEEu8; row_bytes(n)];
            quantize(backend, &x, &mut got);
            for b in 0..n / 32 {
                let r = &want[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
                let blk = block(&got, b);
                assert_eq!(blk.codes, &r[2..], "{backend:?} block {b}");
                let d = crate::f16_to_f32(u16::from_le_bytes([r[0], r[1]]));
                assert_eq!(blk.d.to_bits(), d.to_bits());
                let sum: i32 = r[2..].iter().map(|&q| q as i8 as i32).sum();
                assert_eq!((blk.m8, blk.m128), (-8 * sum, -128 * sum));
                assert_eq!(&got[b * BLOCK_BYTES + 44..(b + 1) * BLOCK_BYTES], &[0; 4]);
            }
        }
    }
}
