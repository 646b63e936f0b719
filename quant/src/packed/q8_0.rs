//! Packed layout of Q8_0 and its kernels.
//!
//! A group holds 8 rows of `n` values (`nb = n / 32` blocks per row) as units of 4
//! blocks (the last unit holds the `nb % 4` leftover blocks): unit `u`, of `m` blocks,
//! starts at byte `1088·u` and holds
//!
//! | offset within the unit   | size | content                                              |
//! |--------------------------|------|------------------------------------------------------|
//! | 16r + 2j                 | 2    | f16 scale `d` of row `j`'s stored block `4u + r`     |
//! | 16m + 256r + 32k + 4j + t| 1    | code `q[4k + t]` of row `j`'s block, as `q ^ 0x80`   |
//!
//! (r < m, k < 8, t < 4, j < 8.) A group is as large as its 8 stored rows (`272·nb`
//! bytes). Units keep the code loads aligned and the group one sequential stream (see
//! `q4_0`).
//!
//! The 32-byte chunk `k` carries values `4k..4k+4` of every row, row `j` in 32-bit lane
//! `j`, so one `vpdpbusd` against the 4 broadcast activation bytes `a[4k..4k+4]` advances
//! the 8 row sums. `q ^ 0x80` is `q + 128` as an unsigned byte (what `vpdpbusd` wants);
//! the activation block's `−128·Σa` (see `act_q8_0`) seeds the accumulator to remove the
//! offset. The plain-AVX2 kernel flips the bit back and uses the sign trick instead
//! (`pmaddubsw(|q|, sign(a, q))`), because `pmaddubsw` would saturate on `(q+128)·a`.
//! The XOR is a bijection, so every stored byte (even the code −128 the reference
//! quantizer never writes) round-trips and multiplies correctly.

use super::act_q8_0::{self as act, drive, TileFn};
use crate::dot::Backend;

pub(super) const READY: bool = true;

/// Code bytes of one packed block (8 rows × 32 values).
const CODE_BYTES: usize = 256;
/// Scale bytes of one packed block (8 × f16).
const SCALE_BYTES: usize = 16;
/// Bytes of one stored Q8_0 block.
const STORED: usize = 34;

pub(super) fn group_bytes(n: usize) -> usize {
    n / 32 * (CODE_BYTES + SCALE_BYTES)
}

/// Blocks per unit: a unit stores its blocks' scales, then their codes.
const UNIT_BLOCKS: usize = 4;

/// Offsets of block `b`'s codes and scales in a group of `nb` blocks per row. Blocks
/// come in units of [`UNIT_BLOCKS`]: `[4 × 16 scale bytes][4 × CODE_BYTES code bytes]`,
/// the last unit holding the `nb % 4` leftover blocks the same way.
#[inline(always)]
fn offsets(nb: usize, b: usize) -> (usize, usize) {
    let (u, r) = (b / UNIT_BLOCKS, b % UNIT_BLOCKS);
    let base = u * UNIT_BLOCKS * (CODE_BYTES + SCALE_BYTES);
    let m = if u < nb / UNIT_BLOCKS {
        UNIT_BLOCKS
    } else {
        nb % UNIT_BLOCKS
    };
    (
        base + m * SCALE_BYTES + r * CODE_BYTES,
        base + r * SCALE_BYTES,
    )
}

pub(super) fn pack_group(n: usize, src: &[u8], src_row_bytes: usize, dst: &mut [u8]) {
    let nb = n / 32;
    for b in 0..nb {
        let (co, so) = offsets(nb, b);
        for j in 0..8 {
            let blk = &src[j * src_row_bytes + b * STORED..][..STORED];
            dst[so + 2 * j..so + 2 * j + 2].copy_from_slice(&blk[..2]);
            for k in 0..8 {
                let q = word(&blk[2 + 4 * k..]) ^ 0x8080_8080;
                let o = co + 32 * k + 4 * j;
                dst[o..o + 4].copy_from_slice(&q.to_le_bytes());
            }
        }
    }
}

/// The first 4 bytes of `b` as a little-endian word (4 codes flipped at once).
fn word(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub(super) fn unpack_row(n: usize, group: &[u8], r: usize, dst: &mut [u8]) {
    let nb = n / 32;
    for (b, blk) in dst.chunks_exact_mut(STORED).enumerate() {
        let (co, so) = offsets(nb, b);
        blk[..2].copy_from_slice(&group[so + 2 * r..so + 2 * r + 2]);
        for k in 0..8 {
            let q = word(&group[co + 32 * k + 4 * r..]) ^ 0x8080_8080;
            blk[2 + 4 * k..2 + 4 * k + 4].copy_from_slice(&q.to_le_bytes());
        }
    }
}

/// # Safety
/// See `packed::gemm_to_ptr`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
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
    let (tile, cols): (TileFn, usize) = match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => (x86::tile_vnni, x86::VNNI_COLS),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => (x86::tile_avx2, x86::AVX2_COLS),
        #[cfg(target_arch = "x86_64")]
        Backend::AvxVnni => (x86::tile_avxvnni, x86::AVX2_COLS),
        #[cfg(target_arch = "aarch64")]
        Backend::NeonDot | Backend::NeonI8mm => (arm::tile_dot, arm::DOT_COLS),
        _ => (tile_scalar, 4),
    };
    #[cfg(target_arch = "aarch64")]
    if backend == Backend::NeonI8mm && ncols >= super::mmla::MIN_COLS {
        // SAFETY: forwarded; the CPU has i8mm (`packed::gemm_to_ptr` mapped the backend).
        unsafe {
            super::mmla::gemm::<arm::Mmla>(n, w, ngroups, act, act_stride, ncols, out, out_stride)
        };
        return;
    }
    // SAFETY: forwarded; `backend` is usable on this CPU (`packed::gemm_to_ptr` mapped it).
    unsafe {
        drive(
            tile,
            None,
            cols,
            group_bytes(n),
            n,
            w,
            ngroups,
            act,
            act_stride,
            ncols,
            out,
            out_stride,
        )
    }
}

/// The reference kernel: `−128·Σa + Σ (q+128)·a` per row and block, the integer sum the
/// VNNI kernel forms, scaled by `d_w·d_a` and summed in block order.
///
/// Safety: `TileFn` contract.
unsafe fn tile_scalar(
    n: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let nb = n / 32;
    // SAFETY: the group has `group_bytes(n)` bytes (TileFn contract).
    let w = unsafe { std::slice::from_raw_parts(w, group_bytes(n)) };
    for c in 0..ncols {
        // SAFETY: activation row c is in bounds (TileFn contract).
        let a = unsafe { std::slice::from_raw_parts(act.add(c * act_stride), act::row_bytes(n)) };
        let mut acc = [0.0f32; 8];
        for b in 0..nb {
            let (co, so) = offsets(nb, b);
            let p = &w[co..co + CODE_BYTES];
            let sc = &w[so..so + SCALE_BYTES];
            let ab = act::block(a, b);
            for (j, acc) in acc.iter_mut().enumerate() {
                let d = crate::f16_to_f32(u16::from_le_bytes([sc[2 * j], sc[2 * j + 1]]));
                let mut s = ab.m128;
                for k in 0..8 {
                    for t in 0..4 {
                        let u = p[32 * k + 4 * j + t] as i32;
                        s += u * ab.codes[4 * k + t] as i8 as i32;
                    }
                }
                *acc += (d * ab.d) * s as f32;
            }
        }
        for (j, v) in acc.iter().enumerate() {
            // SAFETY: output row c, 8 floats (TileFn contract).
            unsafe { *out.add(c * out_stride + j) = *v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The SIMD kernels. Each handles one group against `C` activation rows: a chunk of
    //! weights is loaded once and feeds all `C` columns.

    // The kernels index several per-column arrays with the same column index.
    #![allow(clippy::needless_range_loop)]

    use super::super::act_q8_0::tile_fn;
    use super::super::act_q8_0::{BLOCK_BYTES as ABLK, D_OFF, M128_OFF};
    use super::super::tiles::{dpbusd, prefetch_ahead};
    use super::{CODE_BYTES, SCALE_BYTES, UNIT_BLOCKS};
    use std::arch::x86_64::*;

    /// Columns per tile of the VNNI kernel.
    pub(super) const VNNI_COLS: usize = 8;
    /// Columns per tile of the AVX2 kernel.
    pub(super) const AVX2_COLS: usize = 4;

    /// 4 activation bytes at `p` broadcast to every 32-bit lane.
    #[inline(always)]
    unsafe fn bcast4(p: *const u8) -> __m256i {
        // SAFETY: the caller's pointer covers 4 bytes.
        unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
    }

    #[inline(always)]
    unsafe fn bcast_f32(p: *const u8) -> __m256 {
        // SAFETY: the caller's pointer covers 4 bytes.
        unsafe { _mm256_set1_ps((p as *const f32).read_unaligned()) }
    }

    /// Two integer accumulators per column (even / odd chunks) halve the `vpdpbusd`
    /// dependency chain of a block.
    ///
    /// Safety: the CPU has what `k_vnni` (AVX-512 F/BW/VL/VNNI) or `k_avxvnni` (AVX-VNNI)
    /// enable, whichever inlines this body (`VEX` says which); `TileFn` contract with `C`
    /// columns.
    #[inline(always)]
    unsafe fn vnni_body<const VEX: bool, const C: usize>(
        n: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let mut acc = [_mm256_setzero_ps(); C];
        let nb = n / 32;
        // Units of blocks (see the layout): base and size once per unit rather than
        // `offsets` per block, whose arithmetic measurably slowed the 8-column tile.
        let mut b0 = 0;
        while b0 < nb {
            let m = (nb - b0).min(UNIT_BLOCKS);
            for r in 0..m {
                let b = b0 + r;
                prefetch_block::<C>(w, b);
                // SAFETY: block b < n/32 of the group (unit at block b0, `m` blocks, as in
                // `offsets`) and of each activation row.
                unsafe {
                    let unit = w.add(b0 * (CODE_BYTES + SCALE_BYTES));
                    let (wp, sp) = (
                        unit.add(m * SCALE_BYTES + r * CODE_BYTES),
                        unit.add(r * SCALE_BYTES),
                    );
                    let ap: [*const u8; C] =
                        std::array::from_fn(|c| act.add(c * act_stride + b * ABLK));
                    let mut s0: [__m256i; C] = std::array::from_fn(|c| bcast4(ap[c].add(M128_OFF)));
                    let mut s1 = [_mm256_setzero_si256(); C];
                    for k in (0..8).step_by(2) {
                        let v0 = _mm256_loadu_si256(wp.add(32 * k) as *const __m256i);
                        let v1 = _mm256_loadu_si256(wp.add(32 + 32 * k) as *const __m256i);
                        for c in 0..C {
                            s0[c] = dpbusd::<VEX>(s0[c], v0, bcast4(ap[c].add(4 * k)));
                            s1[c] = dpbusd::<VEX>(s1[c], v1, bcast4(ap[c].add(4 * k + 4)));
                        }
                    }
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(sp as *const __m128i));
                    for c in 0..C {
                        let s = _mm256_add_epi32(s0[c], s1[c]);
                        let d = _mm256_mul_ps(dw, bcast_f32(ap[c].add(D_OFF)));
                        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[c]);
                    }
                }
            }
            b0 += m;
        }
        for c in 0..C {
            // SAFETY: 8 floats of output row c (TileFn contract).
            unsafe { _mm256_storeu_ps(out.add(c * out_stride), acc[c]) };
        }
    }

    /// Few columns: asks for a block's share of the weight stream ahead of its loads (see
    /// `tiles::prefetch_ahead`; the stream up to block `b` holds `b` blocks' bytes). Without
    /// it the Q8_0 kernels waited on memory: Intel Xeon (family 6 model 207), 2 threads, decode
    /// steps alternated in one process, the 2B Q8_0 file 1 / 4 sequences 1.08 / 1.32× as fast
    /// with it, the AVX2 kernels 1.30 / 1.31×.
    #[inline(always)]
    fn prefetch_block<const C: usize>(w: *const u8, b: usize) {
        let bytes = CODE_BYTES + SCALE_BYTES;
        prefetch_ahead::<C>(w, b * bytes, (b + 1) * bytes);
    }

    /// The kernel above with AVX-512 VNNI (EVEX `vpdpbusd`, 32 registers: tiles up to 8 wide).
    ///
    /// # Safety
    /// As the kernel; the CPU has AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn k_vnni<const C: usize>(
        n: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY: forwarded.
        unsafe { vnni_body::<false, C>(n, w, act, act_stride, out, out_stride) }
    }

    /// The kernel above with AVX-VNNI (VEX `vpdpbusd`; Alder Lake and later, Zen 5: 16
    /// registers, tiles up to 4 wide).
    ///
    /// # Safety
    /// As the kernel; the CPU has AVX2/FMA/F16C and AVX-VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn k_avxvnni<const C: usize>(
        n: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY: forwarded.
        unsafe { vnni_body::<true, C>(n, w, act, act_stride, out, out_stride) }
    }
    tile_fn!(pub(super) tile_vnni, k_vnni, 1 2 3 4 5 6 7 8);
    tile_fn!(pub(super) tile_avxvnni, k_avxvnni, 1 2 3 4);

    /// Plain AVX2 with the sign trick: `pmaddubsw(|q|, sign(a, q))` pairs are at most
    /// 2·128·127 = 32512 (no saturation), widened by `pmaddwd` per chunk.
    ///
    /// Safety: the CPU has AVX2/FMA/F16C; `TileFn` contract with `C` columns.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn k_avx2<const C: usize>(
        n: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let flip = _mm256_set1_epi8(0x80u8 as i8);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); C];
        let nb = n / 32;
        // Units of blocks (see the layout): base and size once per unit rather than
        // `offsets` per block, whose arithmetic measurably slowed the 8-column tile.
        let mut b0 = 0;
        while b0 < nb {
            let m = (nb - b0).min(UNIT_BLOCKS);
            for r in 0..m {
                let b = b0 + r;
                prefetch_block::<C>(w, b);
                // SAFETY: block b < n/32 of the group (unit at block b0, `m` blocks, as in
                // `offsets`) and of each activation row.
                unsafe {
                    let unit = w.add(b0 * (CODE_BYTES + SCALE_BYTES));
                    let (wp, sp) = (
                        unit.add(m * SCALE_BYTES + r * CODE_BYTES),
                        unit.add(r * SCALE_BYTES),
                    );
                    let ap: [*const u8; C] =
                        std::array::from_fn(|c| act.add(c * act_stride + b * ABLK));
                    let mut s = [_mm256_setzero_si256(); C];
                    for k in 0..8 {
                        let v = _mm256_loadu_si256(wp.add(32 * k) as *const __m256i);
                        let q = _mm256_xor_si256(v, flip);
                        let qa = _mm256_abs_epi8(q);
                        for c in 0..C {
                            let a = _mm256_sign_epi8(bcast4(ap[c].add(4 * k)), q);
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qa, a), ones);
                            s[c] = _mm256_add_epi32(s[c], p);
                        }
                    }
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(sp as *const __m128i));
                    for c in 0..C {
                        let d = _mm256_mul_ps(dw, bcast_f32(ap[c].add(D_OFF)));
                        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[c]), d, acc[c]);
                    }
                }
            }
            b0 += m;
        }
        for c in 0..C {
            // SAFETY: 8 floats of output row c (TileFn contract).
            unsafe { _mm256_storeu_ps(out.add(c * out_stride), acc[c]) };
        }
    }
    tile_fn!(pub(super) tile_avx2, k_avx2, 1 2 3 4);
}

#[cfg(target_arch = "aarch64")]
mod arm {
    //! The dot-product kernel. The 32-byte chunk `k` of a block holds 4 values of every
    //! row, rows 0..4 in its first 16 bytes and rows 4..8 in the second, so one `sdot` by
    //! element against the activation's 4-byte group `k` advances 4 row sums: 16 `sdot`
    //! per block and column. `sdot` multiplies signed bytes, so the stored `q ^ 0x80` is
    //! flipped back to `q` (one `eor` per 16 bytes) and needs no correction.

    // The kernels index several per-column arrays with the same column index.
    #![allow(clippy::needless_range_loop)]

    use super::super::act_q8_0::{tile_fn, ActBlocks, Rows};
    use super::super::mmla::Pairs;
    use super::super::neon::{f16x8_to_f32, sdot_lane};
    use super::{CODE_BYTES, SCALE_BYTES, UNIT_BLOCKS};
    use std::arch::aarch64::*;

    /// Columns per tile.
    pub(super) const DOT_COLS: usize = 4;

    /// Chunks `K` and `K + 4` of the block at `wp`: activation groups `K` of both halves.
    ///
    /// Safety: dot-product CPU; the block's 256 code bytes at `wp`.
    #[inline(always)]
    unsafe fn chunks<const K: i32, const C: usize>(
        wp: *const u8,
        a: &[[int8x16_t; 2]; C],
        s: &mut [[int32x4_t; 2]; C],
    ) {
        // SAFETY: the caller's bounds and CPU.
        unsafe {
            let flip = vdupq_n_u8(0x80);
            let load = |o: usize| vreinterpretq_s8_u8(veorq_u8(vld1q_u8(wp.add(o)), flip));
            let k = K as usize;
            let (v0, v1) = (load(32 * k), load(32 * k + 16));
            let (u0, u1) = (load(32 * (k + 4)), load(32 * (k + 4) + 16));
            for c in 0..C {
                s[c][0] = sdot_lane::<K>(s[c][0], v0, a[c][0]);
                s[c][1] = sdot_lane::<K>(s[c][1], v1, a[c][0]);
                s[c][0] = sdot_lane::<K>(s[c][0], u0, a[c][1]);
                s[c][1] = sdot_lane::<K>(s[c][1], u1, a[c][1]);
            }
        }
    }

    /// Safety: the CPU has the dot-product extension; `TileFn` contract with `C` columns.
    #[target_feature(enable = "dotprod")]
    unsafe fn k_dot<A: ActBlocks, const C: usize>(
        n: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let mut acc = [[vdupq_n_f32(0.0); 2]; C];
        let nb = n / 32;
        let mut b0 = 0;
        while b0 < nb {
            let m = (nb - b0).min(UNIT_BLOCKS);
            for r in 0..m {
                let b = b0 + r;
                // SAFETY: block b < n/32 of the group (unit at block b0, `m` blocks, as in
                // `offsets`) and of each activation row.
                unsafe {
                    let unit = w.add(b0 * (CODE_BYTES + SCALE_BYTES));
                    let (wp, sp) = (
                        unit.add(m * SCALE_BYTES + r * CODE_BYTES),
                        unit.add(r * SCALE_BYTES),
                    );
                    let a: [[int8x16_t; 2]; C] =
                        std::array::from_fn(|c| A::codes(act, act_stride, c, b));
                    let mut s = [[vdupq_n_s32(0); 2]; C];
                    chunks::<0, C>(wp, &a, &mut s);
                    chunks::<1, C>(wp, &a, &mut s);
                    chunks::<2, C>(wp, &a, &mut s);
                    chunks::<3, C>(wp, &a, &mut s);
                    let dw = f16x8_to_f32(sp);
                    for c in 0..C {
                        let da = A::scale(act, act_stride, c, b);
                        for h in 0..2 {
                            let d = vmulq_f32(dw[h], da);
                            acc[c][h] = vfmaq_f32(acc[c][h], vcvtq_f32_s32(s[c][h]), d);
                        }
                    }
                }
            }
            b0 += m;
        }
        for c in 0..C {
            // SAFETY: 8 floats of output row c (TileFn contract).
            unsafe {
                vst1q_f32(out.add(c * out_stride), acc[c][0]);
                vst1q_f32(out.add(c * out_stride + 4), acc[c][1]);
            }
        }
    }
    tile_fn!(pub(super) tile_dot, k_dot::<Rows>, 1 2 3 4);
    // The last 1-3 columns of an i8mm call, on its column pairs (`packed::mmla`).
    tile_fn!(tile_dot_pairs, k_dot::<Pairs>, 1 2 3);

    /// The layout as `usmmla` operands (`packed::mmla`). Half `h` of chunk `k` (16 bytes at
    /// `32k + 16h`) holds values `4k..4k + 4` of rows `4h..4h + 4`; zipping the 32-bit lanes
    /// of chunks `2g` and `2g + 1` gives values `8g..8g + 8` of rows `4h`, `4h + 1`
    /// (`zip1`) or `4h + 2`, `4h + 3` (`zip2`). The codes stay `q + 128`, unsigned, against
    /// the activation's `−128·Σa`.
    pub(super) struct Mmla;

    impl super::super::mmla::MmlaWeights for Mmla {
        const CODE_BYTES: usize = CODE_BYTES;
        const SCALE_BYTES: usize = SCALE_BYTES;
        const UNIT_BLOCKS: usize = UNIT_BLOCKS;
        const PAIR_DOT: super::super::act_q8_0::TileFn = tile_dot_pairs;
        const SEED: usize = super::super::act_q8_0::M128_OFF;

        #[inline(always)]
        unsafe fn operands(wp: *const u8, h: usize) -> [[uint8x16_t; 4]; 2] {
            // SAFETY: the block's 256 code bytes (caller).
            let c: [uint32x4_t; 8] = std::array::from_fn(|k| unsafe {
                vld1q_u32(wp.add(32 * k + 16 * h) as *const u32)
            });
            std::array::from_fn(|q| {
                std::array::from_fn(|g| {
                    let (x, y) = (c[2 * g], c[2 * g + 1]);
                    vreinterpretq_u8_u32(if q == 0 {
                        vzip1q_u32(x, y)
                    } else {
                        vzip2q_u32(x, y)
                    })
                })
            })
        }
    }
}
