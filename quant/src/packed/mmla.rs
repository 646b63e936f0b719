//! The int8 matrix-multiply (i8mm) kernels of packed Q4_0 and Q8_0 on aarch64, for calls of
//! [`MIN_COLS`] or more columns (prompts, batched decoding). Fewer columns (decoding one
//! sequence, or a few) stay on the `sdot` kernels: per column, the weight operands cost the
//! `usmmla` kernel more than the multiplies it saves (see [`MIN_COLS`]).
//!
//! `usmmla acc, w, a` reads `w` as 2 rows × 8 unsigned bytes and `a` as 2 rows × 8 signed
//! bytes and adds the 4 dot products to `acc = [w0·a0, w0·a1, w1·a0, w1·a1]`: 32
//! multiply-adds, twice what `sdot` does. Its operands want 8 values of one row in each
//! 8-byte half:
//! - weights: the packed layouts keep 4 values per row in 32-bit lanes (the layout the x86
//!   and `sdot` kernels read, so one packed matrix serves every backend); `zip1`/`zip2` on
//!   the 32-bit lanes of two chunks give a row pair's 8 values ([`MmlaWeights::operands`];
//!   for Q4_0 before the nibbles are split, so one zip serves two operands).
//! - activations: [`gemm`] first interleaves the call's columns in pairs into a per-thread
//!   buffer, once per call (every group then reuses it). A pair block ([`PAIR_BLOCK`]
//!   bytes) holds, for columns `a` and `b` of one 32-value block:
//!
//! | offset | size | content                                                             |
//! |--------|------|---------------------------------------------------------------------|
//! | 16g    | 16   | codes `a[8g..8g+8]`, then `b[8g..8g+8]` (g < 4)                      |
//! | 64     | 16   | the f32 scales `[d_a, d_b, d_a, d_b]`                               |
//! | 80     | 16   | the type's offset correction (`act_q8_0`) `[s_a, s_b, s_a, s_b]`     |
//!
//!   An odd last column is paired with itself; its twin's results are not stored.
//!
//! The kernel takes half a group (rows `4h..4h+4`, two row pairs) against up to
//! [`MAX_PAIRS`] column pairs over the whole row, then the other half: 8 f32 accumulators
//! in the 2 × 2 order, 8 weight operands per block, and per block and column pair 8
//! `usmmla`, 6 loads and 6 float operations. Its results are transposed to rows once, at
//! the store.
//!
//! Bits: the integer sums are exact whichever instruction forms them, and each block adds
//! `fma(acc, f32(sum), d_w · d_a)` exactly as the `sdot` kernels do, so every column gets
//! the bits the one-column call gives it (batch invariance, `packed` module doc).
#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;
use std::cell::RefCell;

use super::act_q8_0::{self as act, drive};
use super::neon::usmmla;
use crate::dot::neon::f16x4_to_f32;

/// Bytes of one pair block (two columns, 32 values).
pub(super) const PAIR_BLOCK: usize = 96;
/// Offsets inside a pair block.
const D_PAIR: usize = 64;
const SEED_PAIR: usize = 80;
/// Column pairs per kernel call (8 columns). Read off the compiled code (aarch64, rustc
/// 1.95), hot-loop instructions per half block (4 rows × 32 values): 51 / 62 / 81 / 99 for 1
/// to 4 pairs, 140 for 5 (its 10 accumulators, 8 weight and 4 activation operands no longer
/// fit the 32 registers without spills); from 6 pairs on the compiler loops over the pairs.
pub(super) const MAX_PAIRS: usize = 4;
/// Fewest columns a call (or a call's last tile) gives the `usmmla` kernel; fewer run the
/// `sdot` kernel ([`MmlaWeights::PAIR_DOT`] on the pairs). Per 32 weights and column, compiled
/// hot loops: 2 columns `usmmla` 6.4 against `sdot` 5.3, 3 (one pair half empty) 5.2
/// against 4.7, 4 3.9 against 4.4, 8 3.1.
pub(super) const MIN_COLS: usize = 4;

/// What the kernel needs from a packed weight type: the unit layout it shares with the
/// `sdot` kernel (scales of [`Self::UNIT_BLOCKS`] blocks, then their codes) and how to form
/// the `usmmla` operands of half a block.
pub(super) trait MmlaWeights {
    /// Code bytes of one packed block (8 rows × 32 values).
    const CODE_BYTES: usize;
    /// Scale bytes of one packed block (8 × f16).
    const SCALE_BYTES: usize;
    /// Blocks per unit.
    const UNIT_BLOCKS: usize;
    /// The type's `sdot` kernel on column pairs ([`Pairs`]), for 1 to `MIN_COLS − 1`
    /// columns: the last columns of a call, where `usmmla` would not pay.
    const PAIR_DOT: act::TileFn;
    /// Offset of the activation block's correction for this type's code offset
    /// (`act_q8_0::M8_OFF` or `M128_OFF`).
    const SEED: usize;

    /// The 8 operands of rows `4h..4h + 4` of the block whose codes start at `wp`:
    /// `[row pair][value group]`, row pair `p` = rows `4h + 2p`, `4h + 2p + 1`, value group
    /// `g` = values `8g..8g + 8`, as unsigned bytes (the stored code plus the type's offset).
    ///
    /// # Safety
    /// `wp` points at a packed block's codes ([`Self::CODE_BYTES`] readable).
    unsafe fn operands(wp: *const u8, h: usize) -> [[uint8x16_t; 4]; 2];
}

thread_local! {
    /// The interleaved activations of the calling thread's current gemm: grows to the
    /// largest call once, then is reused (no allocation per call after warm-up).
    static PAIRS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes the pair blocks of `ncols` activation rows (`nb` blocks each, `act_stride` bytes
/// apart) into `dst`: pair `p` (columns `2p`, `2p + 1`) at `p · nb · PAIR_BLOCK`, its
/// correction field read from offset `seed` of each activation block.
fn interleave(act: &[u8], act_stride: usize, ncols: usize, nb: usize, seed: usize, dst: &mut [u8]) {
    for (p, pair) in dst.chunks_exact_mut(nb * PAIR_BLOCK).enumerate() {
        let (ca, cb) = (2 * p, (2 * p + 1).min(ncols - 1));
        let (ra, rb) = (&act[ca * act_stride..], &act[cb * act_stride..]);
        for (b, out) in pair.chunks_exact_mut(PAIR_BLOCK).enumerate() {
            let (xa, xb) = (&ra[b * act::BLOCK_BYTES..], &rb[b * act::BLOCK_BYTES..]);
            for g in 0..4 {
                out[16 * g..16 * g + 8].copy_from_slice(&xa[8 * g..8 * g + 8]);
                out[16 * g + 8..16 * g + 16].copy_from_slice(&xb[8 * g..8 * g + 8]);
            }
            for (o, field) in [(D_PAIR, act::D_OFF), (SEED_PAIR, seed)] {
                let (fa, fb) = (&xa[field..field + 4], &xb[field..field + 4]);
                for (i, f) in [fa, fb, fa, fb].into_iter().enumerate() {
                    out[o + 4 * i..o + 4 * i + 4].copy_from_slice(f);
                }
            }
        }
    }
}

/// `packed::gemm_to_ptr` for a type `W` with at least [`MIN_COLS`] columns on an i8mm CPU:
/// interleaves the columns, then runs the kernel through the Q8_0-activation driver, whose
/// column tiles of `2·MAX_PAIRS` start at even columns, i.e. at pair boundaries (a last tile
/// of fewer than [`MIN_COLS`] columns runs `W::PAIR_DOT`).
///
/// # Safety
/// As `packed::gemm_to_ptr` (extents checked there); the CPU has i8mm and the dot product.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm<W: MmlaWeights>(
    n: usize,
    w: &[u8],
    ngroups: usize,
    act: &[u8],
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let nb = n / 32;
    let group_bytes = nb * (W::CODE_BYTES + W::SCALE_BYTES);
    PAIRS.with_borrow_mut(|pairs| {
        pairs.resize(ncols.div_ceil(2) * nb * PAIR_BLOCK, 0);
        interleave(act, act_stride, ncols, nb, W::SEED, pairs);
        // SAFETY: forwarded; the driver's activation "rows" are half pairs (`nb · PAIR_BLOCK
        // / 2` bytes), so the even column c0 of a tile starts pair c0 / 2, and the tile reads
        // its `ncols.div_ceil(2)` pairs, all inside `pairs`.
        unsafe {
            drive(
                tile::<W>,
                None,
                2 * MAX_PAIRS,
                group_bytes,
                n,
                w,
                ngroups,
                &pairs[..],
                nb * PAIR_BLOCK / 2,
                ncols,
                out,
                out_stride,
            )
        }
    });
}

/// The `act_q8_0::TileFn` of the kernel: `ncols` (1..=8) columns as `ncols.div_ceil(2)`
/// pairs starting at `pairs`, `2 · half_stride` bytes apart.
///
/// Safety: `TileFn` contract for pair rows; the CPU has i8mm.
unsafe fn tile<W: MmlaWeights>(
    n: usize,
    w: *const u8,
    pairs: *const u8,
    half_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
) {
    if ncols < MIN_COLS {
        // SAFETY: forwarded (the pair tile reads the same pairs).
        return unsafe { (W::PAIR_DOT)(n, w, pairs, half_stride, ncols, out, out_stride) };
    }
    let s = 2 * half_stride;
    // SAFETY: forwarded.
    unsafe {
        match ncols.div_ceil(2) {
            2 => kernel::<W, 2>(n, w, pairs, s, ncols, out, out_stride),
            3 => kernel::<W, 3>(n, w, pairs, s, ncols, out, out_stride),
            4 => kernel::<W, 4>(n, w, pairs, s, ncols, out, out_stride),
            _ => unreachable!("tile width checked by drive"),
        }
    }
}

/// One group against `P` column pairs (`ncols` columns: `2P` or `2P − 1`).
///
/// Safety: as [`tile`], with `pair_stride` bytes between pairs.
#[target_feature(enable = "dotprod,i8mm")]
unsafe fn kernel<W: MmlaWeights, const P: usize>(
    n: usize,
    w: *const u8,
    pairs: *const u8,
    pair_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let nb = n / 32;
    let block_bytes = W::CODE_BYTES + W::SCALE_BYTES;
    for h in 0..2 {
        // acc[p][q]: rows 4h + 2q, 4h + 2q + 1 against columns 2p, 2p + 1, 2 × 2 order.
        let mut acc = [[vdupq_n_f32(0.0); 2]; P];
        let mut b0 = 0;
        while b0 < nb {
            let m = (nb - b0).min(W::UNIT_BLOCKS);
            for r in 0..m {
                let b = b0 + r;
                // SAFETY: block b < n/32 of the group (unit at block b0 of `m` blocks, as in
                // the type's `offsets`) and of each pair row.
                unsafe {
                    let unit = w.add(b0 * block_bytes);
                    let wp = unit.add(m * W::SCALE_BYTES + r * W::CODE_BYTES);
                    let ops = W::operands(wp, h);
                    // Rows 4h..4h + 4 as [d0, d0, d1, d1], [d2, d2, d3, d3].
                    let dw = f16x4_to_f32(unit.add(r * W::SCALE_BYTES + 8 * h));
                    let drow = [vzip1q_f32(dw, dw), vzip2q_f32(dw, dw)];
                    for (p, acc) in acc.iter_mut().enumerate() {
                        let ab = pairs.add(p * pair_stride + b * PAIR_BLOCK);
                        let a: [int8x16_t; 4] =
                            std::array::from_fn(|g| vld1q_s8(ab.add(16 * g) as *const i8));
                        let da = vld1q_f32(ab.add(D_PAIR) as *const f32);
                        let seed = vld1q_s32(ab.add(SEED_PAIR) as *const i32);
                        for q in 0..2 {
                            let mut s = seed;
                            for g in 0..4 {
                                s = usmmla(s, ops[q][g], a[g]);
                            }
                            let d = vmulq_f32(drow[q], da);
                            acc[q] = vfmaq_f32(acc[q], vcvtq_f32_s32(s), d);
                        }
                    }
                }
            }
            b0 += m;
        }
        for (p, acc) in acc.iter().enumerate() {
            // [r0, r1, r2, r3] of column 2p (even lanes) and of column 2p + 1 (odd lanes).
            let (ca, cb) = (vuzp1q_f32(acc[0], acc[1]), vuzp2q_f32(acc[0], acc[1]));
            // SAFETY: rows 4h..4h + 4 of output columns 2p and (when it exists) 2p + 1.
            unsafe {
                vst1q_f32(out.add(2 * p * out_stride + 4 * h), ca);
                if 2 * p + 1 < ncols {
                    vst1q_f32(out.add((2 * p + 1) * out_stride + 4 * h), cb);
                }
            }
        }
    }
}

/// The pair blocks as an `sdot` kernel's activations (`act_q8_0::ActBlocks`): `act_stride`
/// is half a pair row, as [`gemm`] hands it to the driver.
pub(super) struct Pairs;

impl Pairs {
    /// Pair block `b` of column `c`'s pair, and `c`'s place in it (0: first, 1: second).
    #[inline(always)]
    fn locate(act: *const u8, act_stride: usize, c: usize, b: usize) -> (*const u8, usize) {
        (
            act.wrapping_add(c / 2 * 2 * act_stride + b * PAIR_BLOCK),
            c % 2,
        )
    }
}

impl act::ActBlocks for Pairs {
    #[inline(always)]
    unsafe fn codes(act: *const u8, act_stride: usize, c: usize, b: usize) -> [int8x16_t; 2] {
        let (p, second) = Pairs::locate(act, act_stride, c, b);
        // SAFETY: the pair block's 64 code bytes (caller).
        let r: [int64x2_t; 4] =
            std::array::from_fn(|g| unsafe { vld1q_s64(p.add(16 * g) as *const i64) });
        // Column a's 8-byte groups are the low halves of the 4 registers, b's the high ones.
        let (lo, hi) = if second == 0 {
            (vzip1q_s64(r[0], r[1]), vzip1q_s64(r[2], r[3]))
        } else {
            (vzip2q_s64(r[0], r[1]), vzip2q_s64(r[2], r[3]))
        };
        [vreinterpretq_s8_s64(lo), vreinterpretq_s8_s64(hi)]
    }

    #[inline(always)]
    unsafe fn scale(act: *const u8, act_stride: usize, c: usize, b: usize) -> float32x4_t {
        let (p, second) = Pairs::locate(act, act_stride, c, b);
        // SAFETY: the pair block's scales (caller).
        unsafe { vld1q_dup_f32(p.add(D_PAIR + 4 * second) as *const f32) }
    }

    /// The pairs hold only the correction `gemm` was built for (`MmlaWeights::SEED`), which
    /// is the one the type's kernel asks for.
    #[inline(always)]
    unsafe fn correction(
        act: *const u8,
        act_stride: usize,
        c: usize,
        b: usize,
        _field: usize,
    ) -> int32x4_t {
        let (p, second) = Pairs::locate(act, act_stride, c, b);
        // SAFETY: the pair block's corrections (caller).
        unsafe { vld1q_dup_s32(p.add(SEED_PAIR + 4 * second) as *const i32) }
    }
}
