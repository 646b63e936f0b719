//! The int8 matrix-multiply (i8mm) kernels of the packed types on aarch64, for calls of
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
//!   the 32-bit lanes of two chunks give a row pair's 8 values (for the 4-bit types before
//!   the nibbles are split, so one zip serves two operands).
//! - activations: each call first interleaves its columns in pairs into a per-thread buffer
//!   (every group then reuses it): [`gemm`] for the Q8_0 activations of Q4_0 and Q8_0 (a
//!   pair block of [`PAIR_BLOCK`] bytes per 32 values, below), [`gemm_kquant`] for the Q8_K
//!   activations of Q4_K and Q6_K ([`KPAIR_BLOCK`] bytes per 256 values). An odd last
//!   column is paired with itself; its twin's results are not stored.
//!
//! | offset | size | content of a Q8_0 pair block (columns `a`, `b`)                      |
//! |--------|------|---------------------------------------------------------------------|
//! | 16g    | 16   | codes `a[8g..8g+8]`, then `b[8g..8g+8]` (g < 4)                      |
//! | 64     | 16   | the f32 scales `[d_a, d_b, d_a, d_b]`                               |
//! | 80     | 16   | the type's offset correction (`act_q8_0`) `[s_a, s_b, s_a, s_b]`     |
//!
//! Every kernel takes half a group (rows `4h..4h+4`, two row pairs) against up to 4 column
//! pairs over the whole row (or pass), then the other half: 8 f32 accumulators in the
//! 2 × 2 order ([`load_pairs`]), 8 weight operands per 32 values, and per 32 values and
//! column pair 8 `usmmla`. The results are transposed to rows once, at the store
//! ([`store_pairs`]). The Q4_0 / Q8_0 kernel is here (generic over [`MmlaWeights`]); the
//! K-quant ones (`k_mmla` in `q4k` and `q6k`) follow their `sdot` kernels' arithmetic.
//!
//! Bits: the integer sums are exact whichever instruction forms them, and each block (or
//! super-block) applies the same f32 operations to them as the `sdot` kernels, so every
//! column gets the bits the one-column call gives it (batch invariance, `packed` module
//! doc).
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
/// 1.95), Q4_0 / Q8_0 hot-loop instructions per half block (4 rows × 32 values): 51 / 62 /
/// 81 / 99 for 1 to 4 pairs, 140 for 5 (its 10 accumulators, 8 weight and 4 activation
/// operands no longer fit the 32 registers without spills); from 6 pairs on the compiler
/// loops over the pairs. The K-quant kernels, whose integer sums per pair also stay in
/// registers across a super-block, fit 4 pairs without spills.
pub(super) const MAX_PAIRS: usize = 4;
/// Fewest columns a call gives the `usmmla` kernels. Q4_0 / Q8_0, per 32 weights and
/// column in the compiled hot loops: 2 columns `usmmla` 6.4 against `sdot` 5.3, 3 (one
/// pair half empty) 5.2 against 4.7, 4 3.9 against 4.4, 8 3.1; their last 1-3 columns of a
/// call run the `sdot` kernel on the pairs ([`MmlaWeights::PAIR_DOT`]). The K-quant
/// `sdot` kernels cost more per column (5.7 for Q4_K, 7.6 for Q6_K at 4 columns, executed:
/// `scripts/kernel-insns-qemu.py`), so there a last tile of 1-3 columns stays on `usmmla`.
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
/// correction field read from offset `seed` of each activation block. NEON: it runs once per
/// call, i.e. per matmul task, so its cost counts against as few as 8-10 groups' products on
/// a many-core machine (zips and stores instead of sixteen small copies per pair block).
fn interleave(act: &[u8], act_stride: usize, ncols: usize, nb: usize, seed: usize, dst: &mut [u8]) {
    assert!(ncols > 0 && act.len() >= (ncols - 1) * act_stride + nb * act::BLOCK_BYTES);
    assert_eq!(dst.len(), ncols.div_ceil(2) * nb * PAIR_BLOCK);
    for p in 0..ncols.div_ceil(2) {
        let (ca, cb) = (2 * p, (2 * p + 1).min(ncols - 1));
        for b in 0..nb {
            // SAFETY: blocks b < nb of columns ca, cb < ncols lie in `act`, pair block (p, b)
            // in `dst` (both asserted above); NEON is in every aarch64 CPU.
            unsafe {
                let xa = act.as_ptr().add(ca * act_stride + b * act::BLOCK_BYTES);
                let xb = act.as_ptr().add(cb * act_stride + b * act::BLOCK_BYTES);
                let out = dst.as_mut_ptr().add((p * nb + b) * PAIR_BLOCK);
                for h in 0..2 {
                    let a = vld1q_u64(xa.add(16 * h) as *const u64);
                    let c = vld1q_u64(xb.add(16 * h) as *const u64);
                    vst1q_u64(out.add(32 * h) as *mut u64, vzip1q_u64(a, c));
                    vst1q_u64(out.add(32 * h + 16) as *mut u64, vzip2q_u64(a, c));
                }
                for (o, field) in [(D_PAIR, act::D_OFF), (SEED_PAIR, seed)] {
                    let fa = vld1q_dup_u32(xa.add(field) as *const u32);
                    let fb = vld1q_dup_u32(xb.add(field) as *const u32);
                    vst1q_u32(out.add(o) as *mut u32, vzip1q_u32(fa, fb));
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
                    let drow = row_pairs_f16(unit.add(r * W::SCALE_BYTES), h);
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
        // SAFETY: the tile's output (caller).
        unsafe { store_pairs(&acc, out, out_stride, ncols, h) };
    }
}

/// The f32 accumulators of `P` column pairs for rows `4h..4h + 4`, in the 2 × 2 order
/// (`acc[p][q]`: rows `4h + 2q`, `4h + 2q + 1` × columns `2p`, `2p + 1`): zero, or with
/// `ADD` the partial sums already in `out` (a later pass over the reduction, see
/// `tiles::run_tiles`); a missing last column reads its twin.
///
/// # Safety
/// Rows `4h..4h + 4` of the `ncols` output columns readable when `ADD`.
#[inline(always)]
pub(super) unsafe fn load_pairs<const P: usize, const ADD: bool>(
    out: *const f32,
    out_stride: usize,
    ncols: usize,
    h: usize,
) -> [[float32x4_t; 2]; P] {
    std::array::from_fn(|p| {
        if !ADD {
            return [vdupq_n_f32(0.0); 2];
        }
        let cb = (2 * p + 1).min(ncols - 1);
        // SAFETY: rows 4h..4h + 4 of columns 2p and cb < ncols (caller).
        let (a, b) = unsafe {
            (
                vld1q_f32(out.add(2 * p * out_stride + 4 * h)),
                vld1q_f32(out.add(cb * out_stride + 4 * h)),
            )
        };
        [vzip1q_f32(a, b), vzip2q_f32(a, b)]
    })
}

/// Writes the accumulators of [`load_pairs`] back as rows `4h..4h + 4` of columns `2p`
/// and (when it exists) `2p + 1`.
///
/// # Safety
/// Those output floats writable.
#[inline(always)]
pub(super) unsafe fn store_pairs<const P: usize>(
    acc: &[[float32x4_t; 2]; P],
    out: *mut f32,
    out_stride: usize,
    ncols: usize,
    h: usize,
) {
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

/// Rows `4h..4h + 4` of 8 per-row values (`v`: rows 0..8, one f16 each at `p`) as the two
/// row-pair vectors `[x0, x0, x1, x1]`, `[x2, x2, x3, x3]`: the weight scales in the 2 × 2
/// order.
///
/// # Safety
/// 16 readable bytes at `p`.
#[inline(always)]
pub(super) unsafe fn row_pairs_f16(p: *const u8, h: usize) -> [float32x4_t; 2] {
    // SAFETY: bytes 8h..8h + 8 (caller).
    let x = unsafe { f16x4_to_f32(p.add(8 * h)) };
    [vzip1q_f32(x, x), vzip2q_f32(x, x)]
}

/// As [`row_pairs_f16`] for 8 per-row integers (rows 0..8, widened to i16: `vmovl_u8` or
/// `vmovl_s8` of the bytes), as i32.
#[inline(always)]
pub(super) fn row_pairs_i16(v: int16x8_t, h: usize) -> [int32x4_t; 2] {
    // SAFETY: register-only NEON arithmetic (NEON is in every aarch64 CPU).
    unsafe {
        let x = vmovl_s16(if h == 0 {
            vget_low_s16(v)
        } else {
            vget_high_s16(v)
        });
        [vzip1q_s32(x, x), vzip2q_s32(x, x)]
    }
}

// ------------------------------------------------------------ K-quants: Q8_K column pairs

/// Bytes of one Q8_K pair block (two columns `a`, `b` of one 256-value super-block):
///
/// | offset | size | content                                                         |
/// |--------|------|-----------------------------------------------------------------|
/// | 16v    | 16   | codes `a[8v..8v+8]`, then `b[8v..8v+8]` (v < 32)                 |
/// | 512    | 16   | the f32 scales `[d_a, d_b, d_a, d_b]`                           |
/// | 528+16k| 16   | `f·Σ` of sub-block `k`'s codes as i32 `[s_a, s_b, s_a, s_b]`   |
///
/// The sums cover the type's sub-blocks, times its factor `f`: values `16k..16k + 16` times
/// −32 for Q6_K (`k` < 16: the correction of its code offset, ready to seed a sub-block's
/// sum), `32k..32k + 32` times 1 for Q4_K (`k` < 8, the rest of the field unused: its mins
/// term), so that the kernels load each sub-block's term ready-made.
pub(super) const KPAIR_BLOCK: usize = 784;
/// Offset of the scales in a Q8_K pair block.
pub(super) const KPAIR_D: usize = 512;
/// Offset of the block sums in a Q8_K pair block.
pub(super) const KPAIR_BSUMS: usize = 528;
/// The Q8_K activation block (`dot::quantize_activation`): f32 `d`, 256 codes, 16 i16 sums.
const Q8K_BYTES: usize = 292;
const Q8K_CODES: usize = 4;
const Q8K_BSUMS: usize = 260;

/// Writes the Q8_K pair blocks of `ncols` activation rows (`nsb` blocks each, `act_stride`
/// bytes apart) into `dst`, pair `p` at `p · nsb · KPAIR_BLOCK`, with sums over `sub_block`
/// (16 or 32) values times `factor`.
fn interleave_q8k(
    act: &[u8],
    act_stride: usize,
    ncols: usize,
    nsb: usize,
    (sub_block, factor): (usize, i32),
    dst: &mut [u8],
) {
    assert!(ncols > 0 && act.len() >= (ncols - 1) * act_stride + nsb * Q8K_BYTES);
    assert_eq!(dst.len(), ncols.div_ceil(2) * nsb * KPAIR_BLOCK);
    assert!(sub_block == 16 || sub_block == 32);
    for p in 0..ncols.div_ceil(2) {
        let (ca, cb) = (2 * p, (2 * p + 1).min(ncols - 1));
        for b in 0..nsb {
            // SAFETY: super-blocks b < nsb of columns ca, cb < ncols lie in `act`, pair block
            // (p, b) in `dst` (asserted above); NEON is in every aarch64 CPU.
            unsafe {
                let xa = act.as_ptr().add(ca * act_stride + b * Q8K_BYTES);
                let xb = act.as_ptr().add(cb * act_stride + b * Q8K_BYTES);
                let out = dst.as_mut_ptr().add((p * nsb + b) * KPAIR_BLOCK);
                for h in 0..16 {
                    let a = vld1q_u64(xa.add(Q8K_CODES + 16 * h) as *const u64);
                    let c = vld1q_u64(xb.add(Q8K_CODES + 16 * h) as *const u64);
                    vst1q_u64(out.add(32 * h) as *mut u64, vzip1q_u64(a, c));
                    vst1q_u64(out.add(32 * h + 16) as *mut u64, vzip2q_u64(a, c));
                }
                let (da, db) = (
                    vld1q_dup_u32(xa as *const u32),
                    vld1q_dup_u32(xb as *const u32),
                );
                vst1q_u32(out.add(KPAIR_D) as *mut u32, vzip1q_u32(da, db));
                // The sums of each column as i32 times `factor`, 4 per register: the 16
                // stored i16 sums widened, or (32-value sub-blocks) added in pairs.
                let sums = |x: *const u8| -> [int32x4_t; 4] {
                    let lo = vld1q_s16(x.add(Q8K_BSUMS) as *const i16);
                    let hi = vld1q_s16(x.add(Q8K_BSUMS + 16) as *const i16);
                    let v = if sub_block == 16 {
                        [
                            vmovl_s16(vget_low_s16(lo)),
                            vmovl_high_s16(lo),
                            vmovl_s16(vget_low_s16(hi)),
                            vmovl_high_s16(hi),
                        ]
                    } else {
                        let z = vdupq_n_s32(0);
                        [vpaddlq_s16(lo), vpaddlq_s16(hi), z, z]
                    };
                    v.map(|v| vmulq_n_s32(v, factor))
                };
                let (sa, sb) = (sums(xa), sums(xb));
                for r in 0..256 / sub_block / 4 {
                    // [a0, b0, a1, b1] and [a2, b2, a3, b3]: each 64-bit half is one pair.
                    let x = [
                        vreinterpretq_u64_s32(vzip1q_s32(sa[r], sb[r])),
                        vreinterpretq_u64_s32(vzip2q_s32(sa[r], sb[r])),
                    ];
                    for (k, v) in [
                        vdupq_laneq_u64::<0>(x[0]),
                        vdupq_laneq_u64::<1>(x[0]),
                        vdupq_laneq_u64::<0>(x[1]),
                        vdupq_laneq_u64::<1>(x[1]),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        vst1q_u64(out.add(KPAIR_BSUMS + 16 * (4 * r + k)) as *mut u64, v);
                    }
                }
            }
        }
    }
}

/// `packed::gemm_to_ptr` for a K-quant with at least [`MIN_COLS`] columns on an i8mm CPU:
/// interleaves the columns, then walks the matrix with `tiles::run_tiles` and `tile` (see
/// [`kquant_tile`]), whose column tiles of `2·MAX_PAIRS` start at pair boundaries; a last
/// tile of one column runs with its twin (whose results are not stored).
///
/// # Safety
/// As `packed::gemm_to_ptr` (extents checked there); the CPU has i8mm and the dot product;
/// `sb_bytes` is the type's packed super-block (8 rows), `sums` its sub-block (the values
/// each activation sum covers) and the factor the kernel wants the sums times.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_kquant(
    tile: super::tiles::Tile,
    sb_bytes: usize,
    sums: (usize, i32),
    n: usize,
    w: &[u8],
    ngroups: usize,
    act: &[u8],
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let nsb = n / 256;
    PAIRS.with_borrow_mut(|pairs| {
        pairs.resize(ncols.div_ceil(2) * nsb * KPAIR_BLOCK, 0);
        interleave_q8k(act, act_stride, ncols, nsb, sums, pairs);
        // SAFETY: forwarded; the driver's activation "rows" are half pairs, so the even
        // column c of a tile starts pair c / 2, and super-block k of a pass is KPAIR_BLOCK
        // further on per block, all inside `pairs`.
        unsafe {
            super::tiles::run_tiles(
                tile,
                None,
                2 * MAX_PAIRS,
                nsb,
                sb_bytes,
                KPAIR_BLOCK,
                w,
                ngroups,
                &pairs[..],
                nsb * KPAIR_BLOCK / 2,
                ncols,
                out,
                out_stride,
            )
        }
    });
}

/// Expands a K-quant i8mm kernel `$k::<P, ADD>(nsb, w, pairs, pair_stride, ncols, out,
/// out_stride)` (`P` ≤ [`MAX_PAIRS`] column pairs) into a `tiles::Tile` over the pair
/// rows [`gemm_kquant`] hands the driver.
macro_rules! kquant_tile {
    ($name:ident, $k:ident) => {
        /// # Safety
        /// See `tiles::Tile` (activations: Q8_K pairs); the CPU has i8mm.
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name(
            nsb: usize,
            w: *const u8,
            act: *const u8,
            act_stride: usize,
            ncols: usize,
            out: *mut f32,
            out_stride: usize,
            add: bool,
        ) {
            let s = 2 * act_stride;
            // SAFETY: forwarded from the Tile contract.
            unsafe {
                match (ncols.div_ceil(2), add) {
                    (1, false) => $k::<1, false>(nsb, w, act, s, ncols, out, out_stride),
                    (2, false) => $k::<2, false>(nsb, w, act, s, ncols, out, out_stride),
                    (3, false) => $k::<3, false>(nsb, w, act, s, ncols, out, out_stride),
                    (4, false) => $k::<4, false>(nsb, w, act, s, ncols, out, out_stride),
                    (1, true) => $k::<1, true>(nsb, w, act, s, ncols, out, out_stride),
                    (2, true) => $k::<2, true>(nsb, w, act, s, ncols, out, out_stride),
                    (3, true) => $k::<3, true>(nsb, w, act, s, ncols, out, out_stride),
                    (4, true) => $k::<4, true>(nsb, w, act, s, ncols, out, out_stride),
                    _ => unreachable!("tile width checked by run_tiles"),
                }
            }
        }
    };
}
pub(super) use kquant_tile;

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
