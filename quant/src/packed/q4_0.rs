//! Packed layout of Q4_0 and its kernels.
//!
//! A group holds 8 rows of `n` values (`nb = n / 32` blocks per row) as units of 4
//! blocks (the last unit holds the `nb % 4` leftover blocks): unit `u`, of `m` blocks,
//! starts at byte `576·u` and holds
//!
//! | offset within the unit   | size | content                                          |
//! |--------------------------|------|--------------------------------------------------|
//! | 16r + 2j                 | 2    | f16 scale `d` of row `j`'s stored block `4u + r` |
//! | 16m + 128r + 32k + 4j + t| 1    | byte `qs[4k + t]` of row `j`'s stored block      |
//!
//! (r < m, k, t < 4, j < 8.) A group is as large as its 8 stored rows (`144·nb` bytes).
//! Why units: the 32-byte code loads stay aligned (a 64-byte scale header, then 64-byte
//! aligned codes, if the group is; a block with its own scales would be 144 bytes and a
//! quarter of the loads would straddle two cache lines, costing Zen 4 a second load), and
//! each group is still read as one sequential stream. Keeping all scales at the end of the
//! group instead was measured: the short scale stream is not prefetched from DRAM and
//! decode fell from ~26 to ~10 GB/s on 2 threads. Groups stay 64-byte aligned when `nb` is
//! a multiple of 4 and the packed matrix starts on a 64-byte boundary.
//!
//! A stored byte `qs[i]` holds value `i` in its low nibble and value `i + 16` in its high
//! nibble, so the 32-byte chunk `k` carries values `4k..4k+4` (low nibbles) and
//! `16+4k..16+4k+4` (high nibbles) of every row, row `j` in 32-bit lane `j`. One
//! `vpdpbusd` of the masked low nibbles against the 4 broadcast activation bytes
//! `a[4k..4k+4]` adds those 4 products to each row's lane; the high nibbles are masked in
//! place (`q & 0xF0` = 16·q) and go to a second accumulator that is shifted right by 4 once
//! per block. The codes stay unsigned (`q` in 0..16 for the value `q − 8`); the activation
//! block carries `−8·Σa` (see `act_q8_0`) to seed the accumulator. The 8 scales convert
//! with one `vcvtph2ps` and scale 8 rows' sums with one FMA: no horizontal reduction.

use super::act_q8_0::{self as act, drive, PairFn, TileFn};
#[cfg(target_arch = "x86_64")]
use super::tiles::two_groups;
use crate::dot::Backend;

pub(super) const READY: bool = true;

/// Code bytes of one packed block (8 rows × 32 values).
const CODE_BYTES: usize = 128;
/// Scale bytes of one packed block (8 × f16).
const SCALE_BYTES: usize = 16;
/// Bytes of one stored Q4_0 block.
const STORED: usize = 18;

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
            for k in 0..4 {
                let o = co + 32 * k + 4 * j;
                dst[o..o + 4].copy_from_slice(&blk[2 + 4 * k..2 + 4 * k + 4]);
            }
        }
    }
}

pub(super) fn unpack_row(n: usize, group: &[u8], r: usize, dst: &mut [u8]) {
    let nb = n / 32;
    for (b, blk) in dst.chunks_exact_mut(STORED).enumerate() {
        let (co, so) = offsets(nb, b);
        blk[..2].copy_from_slice(&group[so + 2 * r..so + 2 * r + 2]);
        for k in 0..4 {
            let o = co + 32 * k + 4 * r;
            blk[2 + 4 * k..2 + 4 * k + 4].copy_from_slice(&group[o..o + 4]);
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
    // AVX-512: two groups per call when the call has enough columns (`tiles::two_groups`).
    #[cfg(target_arch = "x86_64")]
    let pair = (backend == Backend::Avx512 && two_groups::enabled())
        .then_some((x86::pair_vnni as PairFn, two_groups::MIN_COLS));
    #[cfg(not(target_arch = "x86_64"))]
    let pair: Option<(PairFn, usize)> = None;
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
            pair,
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

/// The reference kernel: the integer sum of each row and block exactly as the SIMD kernels
/// form it, scaled by `d_w·d_a` and summed in block order.
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
                let mut s = ab.m8;
                for k in 0..4 {
                    for t in 0..4 {
                        let q = p[32 * k + 4 * j + t];
                        let lo = ab.codes[4 * k + t] as i8 as i32;
                        let hi = ab.codes[16 + 4 * k + t] as i8 as i32;
                        s += (q & 15) as i32 * lo + (q >> 4) as i32 * hi;
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
    //! weights is loaded and unpacked once and feeds all `C` columns.

    // The kernels index several per-column arrays with the same column index.
    #![allow(clippy::needless_range_loop)]

    use super::super::act_q8_0::{pair_fn, tile_fn};
    use super::super::act_q8_0::{BLOCK_BYTES as ABLK, D_OFF, M8_OFF};
    use super::super::tiles::{dpbusd, load2, prefetch_ahead};
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

    /// The registers a VNNI body runs on: [`Ymm`] holds the 8 rows of one group per register,
    /// [`Zmm`] the 16 rows of two groups (`w_stride` bytes apart), so that one 512-bit
    /// `vpdpbusd` does the work of two 256-bit ones. Every lane goes through the same
    /// operations in the same order in both, so a row gets the same bits whichever runs it
    /// (batch invariance).
    ///
    /// Safety (every method): the CPU has the features of the kernel the body is inlined
    /// into; pointers cover what each method reads or writes.
    trait Rows {
        /// Groups per register.
        const GROUPS: usize;
        type I: Copy;
        type F: Copy;
        unsafe fn splat8(x: i8) -> Self::I;
        unsafe fn zero_i() -> Self::I;
        unsafe fn zero_f() -> Self::F;
        /// 32 code bytes at `p` (and at `p + w_stride`).
        unsafe fn codes(p: *const u8, w_stride: usize) -> Self::I;
        /// 8 f16 scales at `p` (and at `p + w_stride`) as f32.
        unsafe fn scales(p: *const u8, w_stride: usize) -> Self::F;
        unsafe fn and(a: Self::I, b: Self::I) -> Self::I;
        unsafe fn dpbusd(acc: Self::I, q: Self::I, a: Self::I) -> Self::I;
        /// 4 activation bytes at `p` in every lane.
        unsafe fn bcast4(p: *const u8) -> Self::I;
        /// `acc + f32(lo + (hi >> 4))·(dw·d_a)`, `d_a` the f32 at `da`.
        unsafe fn fold(
            lo: Self::I,
            hi: Self::I,
            dw: Self::F,
            da: *const u8,
            acc: Self::F,
        ) -> Self::F;
        unsafe fn store(p: *mut f32, v: Self::F);
    }

    /// 8 rows of one group in 256-bit registers, EVEX (AVX-512 VNNI + VL) or VEX (AVX-VNNI)
    /// `vpdpbusd` as `VEX` says.
    struct Ymm<const VEX: bool>;

    impl<const VEX: bool> Rows for Ymm<VEX> {
        const GROUPS: usize = 1;
        type I = __m256i;
        type F = __m256;
        #[inline(always)]
        unsafe fn splat8(x: i8) -> __m256i {
            unsafe { _mm256_set1_epi8(x) }
        }
        #[inline(always)]
        unsafe fn zero_i() -> __m256i {
            unsafe { _mm256_setzero_si256() }
        }
        #[inline(always)]
        unsafe fn zero_f() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn codes(p: *const u8, _: usize) -> __m256i {
            // SAFETY: the caller's bounds.
            unsafe { _mm256_loadu_si256(p as *const __m256i) }
        }
        #[inline(always)]
        unsafe fn scales(p: *const u8, _: usize) -> __m256 {
            // SAFETY: the caller's bounds.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
        }
        #[inline(always)]
        unsafe fn and(a: __m256i, b: __m256i) -> __m256i {
            unsafe { _mm256_and_si256(a, b) }
        }
        #[inline(always)]
        unsafe fn dpbusd(acc: __m256i, q: __m256i, a: __m256i) -> __m256i {
            unsafe { dpbusd::<VEX>(acc, q, a) }
        }
        #[inline(always)]
        unsafe fn bcast4(p: *const u8) -> __m256i {
            // SAFETY: the caller's bounds.
            unsafe { bcast4(p) }
        }
        #[inline(always)]
        unsafe fn fold(lo: __m256i, hi: __m256i, dw: __m256, da: *const u8, acc: __m256) -> __m256 {
            // SAFETY: the caller's bounds.
            unsafe {
                let s = _mm256_add_epi32(lo, _mm256_srai_epi32::<4>(hi));
                let d = _mm256_mul_ps(dw, bcast_f32(da));
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc)
            }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: the caller's bounds.
            unsafe { _mm256_storeu_ps(p, v) }
        }
    }

    /// 16 rows of two groups in 512-bit registers (AVX-512 F/BW/VNNI): lanes 0..8 the first
    /// group's rows, 8..16 the second's.
    struct Zmm;

    impl Rows for Zmm {
        const GROUPS: usize = 2;
        type I = __m512i;
        type F = __m512;
        #[inline(always)]
        unsafe fn splat8(x: i8) -> __m512i {
            unsafe { _mm512_set1_epi8(x) }
        }
        #[inline(always)]
        unsafe fn zero_i() -> __m512i {
            unsafe { _mm512_setzero_si512() }
        }
        #[inline(always)]
        unsafe fn zero_f() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn codes(p: *const u8, w_stride: usize) -> __m512i {
            // SAFETY: the caller's bounds.
            unsafe { load2(p, w_stride) }
        }
        #[inline(always)]
        unsafe fn scales(p: *const u8, w_stride: usize) -> __m512 {
            // SAFETY: the caller's bounds.
            unsafe {
                let lo = _mm_loadu_si128(p as *const __m128i);
                let hi = _mm_loadu_si128(p.add(w_stride) as *const __m128i);
                _mm512_cvtph_ps(_mm256_set_m128i(hi, lo))
            }
        }
        #[inline(always)]
        unsafe fn and(a: __m512i, b: __m512i) -> __m512i {
            unsafe { _mm512_and_si512(a, b) }
        }
        #[inline(always)]
        unsafe fn dpbusd(acc: __m512i, q: __m512i, a: __m512i) -> __m512i {
            unsafe { _mm512_dpbusd_epi32(acc, q, a) }
        }
        #[inline(always)]
        unsafe fn bcast4(p: *const u8) -> __m512i {
            // SAFETY: the caller's bounds.
            unsafe { _mm512_set1_epi32((p as *const i32).read_unaligned()) }
        }
        #[inline(always)]
        unsafe fn fold(lo: __m512i, hi: __m512i, dw: __m512, da: *const u8, acc: __m512) -> __m512 {
            // SAFETY: the caller's bounds.
            unsafe {
                let s = _mm512_add_epi32(lo, _mm512_srai_epi32::<4>(hi));
                let d = _mm512_mul_ps(dw, _mm512_set1_ps((da as *const f32).read_unaligned()));
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc)
            }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: the caller's bounds.
            unsafe { _mm512_storeu_ps(p, v) }
        }
    }

    /// Per block and column: 8 `vpdpbusd`, then one `vmulps` (the two scales) and one
    /// `vfmadd` into the f32 sums. On Zen 4 those share the two pipes that run
    /// `vpdpbusd`, so the prompt path tops out at 8/10 of the `vpdpbusd` peak (measured:
    /// ~320 of 453 Gop/s on one core); wide tiles (up to 8 columns) amortise the
    /// weight unpacking, which runs on the other pipes.
    ///
    /// Safety: the CPU has what the kernel this body is inlined into enables (`k_vnni`,
    /// `k_vnni_pair`: AVX-512 F/BW/VL/VNNI; `k_avxvnni`: AVX-VNNI), matching `R`; `TileFn`
    /// contract with `C` columns for each of `R::GROUPS` groups `w_stride` bytes apart, and
    /// `8·R::GROUPS` floats per output column.
    #[inline(always)]
    unsafe fn vnni_body<R: Rows, const C: usize>(
        n: usize,
        w: *const u8,
        w_stride: usize,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY (whole body): the caller's CPU and bounds, as each comment says.
        unsafe {
            let lo_mask = R::splat8(0x0F);
            let hi_mask = R::splat8(0xF0u8 as i8);
            let mut acc = [R::zero_f(); C];
            let nb = n / 32;
            // Units of blocks (see the layout): base and size once per unit rather than
            // `offsets` per block, whose arithmetic measurably slowed the 8-column tile.
            let mut b0 = 0;
            while b0 < nb {
                let m = (nb - b0).min(UNIT_BLOCKS);
                for g in 0..R::GROUPS {
                    prefetch_unit::<C>(w.wrapping_add(g * w_stride), b0);
                }
                for r in 0..m {
                    let b = b0 + r;
                    // Block b < n/32 of the group(s) (unit at block b0, `m` blocks, as in
                    // `offsets`) and of each activation row.
                    let unit = w.add(b0 * (CODE_BYTES + SCALE_BYTES));
                    let (wp, sp) = (
                        unit.add(m * SCALE_BYTES + r * CODE_BYTES),
                        unit.add(r * SCALE_BYTES),
                    );
                    let ap: [*const u8; C] =
                        std::array::from_fn(|c| act.add(c * act_stride + b * ABLK));
                    let mut lo: [R::I; C] = std::array::from_fn(|c| R::bcast4(ap[c].add(M8_OFF)));
                    let mut hi = [R::zero_i(); C];
                    for k in 0..4 {
                        let v = R::codes(wp.add(32 * k), w_stride);
                        let l = R::and(v, lo_mask);
                        let h = R::and(v, hi_mask);
                        for c in 0..C {
                            lo[c] = R::dpbusd(lo[c], l, R::bcast4(ap[c].add(4 * k)));
                            hi[c] = R::dpbusd(hi[c], h, R::bcast4(ap[c].add(16 + 4 * k)));
                        }
                    }
                    let dw = R::scales(sp, w_stride);
                    for c in 0..C {
                        acc[c] = R::fold(lo[c], hi[c], dw, ap[c].add(D_OFF), acc[c]);
                    }
                }
                b0 += m;
            }
            for c in 0..C {
                // 8·R::GROUPS floats of output row c.
                R::store(out.add(c * out_stride), acc[c]);
            }
        }
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
        unsafe { vnni_body::<Ymm<false>, C>(n, w, 0, act, act_stride, out, out_stride) }
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
        unsafe { vnni_body::<Ymm<true>, C>(n, w, 0, act, act_stride, out, out_stride) }
    }
    tile_fn!(pub(super) tile_vnni, k_vnni, 1 2 3 4 5 6 7 8);
    tile_fn!(avxvnni_tile, k_avxvnni, 2 3 4);

    /// The kernel above for two groups at once (the second `w_stride` bytes after the
    /// first), 16 rows per 512-bit register (see [`Zmm`], `tiles::two_groups`).
    ///
    /// # Safety
    /// As the kernel for both groups, `out + c·out_stride + 0..16` writable; the CPU has
    /// AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn k_vnni_pair<const C: usize>(
        n: usize,
        w: *const u8,
        w_stride: usize,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY: forwarded.
        unsafe { vnni_body::<Zmm, C>(n, w, w_stride, act, act_stride, out, out_stride) }
    }
    pair_fn!(pub(super) pair_vnni, k_vnni_pair, 1 2 3 4 5 6 7 8);

    /// The AVX-VNNI tile: one column (decode, bound by memory) runs the AVX2 kernel, several
    /// the VNNI one. With 16 registers the VNNI kernel's one-column loop gained nothing on
    /// the Xeon it was measured on (packed Q4_0 × 1 token, one thread: 10.6-11.0 against
    /// 10.9-11.5 GB/s for AVX2), while 512 tokens ran 46 % faster.
    ///
    /// Safety: AVX2/FMA/F16C and AVX-VNNI; `TileFn` contract with up to 4 columns.
    pub(super) unsafe fn tile_avxvnni(
        n: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        ncols: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY: forwarded; the CPU has both kernels' features.
        unsafe {
            if ncols == 1 {
                k_avx2::<1>(n, w, act, act_stride, out, out_stride)
            } else {
                avxvnni_tile(n, w, act, act_stride, ncols, out, out_stride)
            }
        }
    }

    /// Few columns: asks for the unit at block `b0`'s share of the weight stream ahead of
    /// its loads (see `tiles::prefetch_ahead`), 9 lines at once. Per block instead (2-3
    /// lines, as the K-quant kernels ask per part) measured the same in decode and cost the
    /// 8-column tiles of a prompt, where the weights already sit in L2, the extra address
    /// arithmetic (Intel Xeon, 2B Q4_0 file, alternated in one process, speed per block / per
    /// unit: 1 and 4 sequences 0.99 and 1.02, 512-token prompts 0.95).
    #[inline(always)]
    fn prefetch_unit<const C: usize>(w: *const u8, b0: usize) {
        let bytes = CODE_BYTES + SCALE_BYTES;
        prefetch_ahead::<C>(w, b0 * bytes, (b0 + UNIT_BLOCKS) * bytes);
    }

    /// Plain AVX2: `pmaddubsw` products of a whole block summed in i16 (8 pairs of at most
    /// 2·15·128 = 3840 each: at most 30720, no saturation), widened once by `pmaddwd`.
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
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); C];
        let nb = n / 32;
        // Units of blocks (see the layout): base and size once per unit rather than
        // `offsets` per block, whose arithmetic measurably slowed the 8-column tile.
        let mut b0 = 0;
        while b0 < nb {
            let m = (nb - b0).min(UNIT_BLOCKS);
            prefetch_unit::<C>(w, b0);
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
                    let ap: [*const u8; C] =
                        std::array::from_fn(|c| act.add(c * act_stride + b * ABLK));
                    let mut s16 = [_mm256_setzero_si256(); C];
                    for k in 0..4 {
                        let v = _mm256_loadu_si256(wp.add(32 * k) as *const __m256i);
                        let l = _mm256_and_si256(v, mask);
                        let h = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                        for c in 0..C {
                            let pl = _mm256_maddubs_epi16(l, bcast4(ap[c].add(4 * k)));
                            let ph = _mm256_maddubs_epi16(h, bcast4(ap[c].add(16 + 4 * k)));
                            s16[c] = _mm256_add_epi16(s16[c], _mm256_add_epi16(pl, ph));
                        }
                    }
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(sp as *const __m128i));
                    for c in 0..C {
                        let s = _mm256_add_epi32(
                            _mm256_madd_epi16(s16[c], ones),
                            bcast4(ap[c].add(M8_OFF)),
                        );
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
    tile_fn!(pub(super) tile_avx2, k_avx2, 1 2 3 4);
}

#[cfg(target_arch = "aarch64")]
mod arm {
    //! The dot-product kernel. The 32-byte chunk `k` of a block holds 4 values of every
    //! row, rows 0..4 in its first 16 bytes and rows 4..8 in the second, so one `sdot` by
    //! element against the activation's 4-byte group advances 4 row sums: 8 `sdot` per
    //! block and column (low and high nibbles of both halves). The codes are `q + 8` in
    //! 0..16, positive as signed bytes too, so the unsigned trick of the x86 kernels carries
    //! over with the same `−8·Σa` seed; the high nibble is shifted down instead of masked.

    // The kernels index several per-column arrays with the same column index.
    #![allow(clippy::needless_range_loop)]

    use super::super::act_q8_0::{tile_fn, ActBlocks, Rows, M8_OFF};
    use super::super::mmla::Pairs;
    use super::super::neon::{f16x8_to_f32, sdot_lane};
    use super::{CODE_BYTES, SCALE_BYTES, UNIT_BLOCKS};
    use std::arch::aarch64::*;

    /// Columns per tile: 2 activation, 2 integer and 2 f32 registers per column.
    pub(super) const DOT_COLS: usize = 4;

    /// Chunk `K` of the block at `wp` against the activation groups `K` of each column.
    ///
    /// Safety: dot-product CPU; 32 bytes at `wp + 32K`.
    #[inline(always)]
    unsafe fn chunk<const K: i32, const C: usize>(
        wp: *const u8,
        a: &[[int8x16_t; 2]; C],
        s: &mut [[int32x4_t; 2]; C],
    ) {
        // SAFETY: the caller's bounds and CPU.
        unsafe {
            let mask = vdupq_n_u8(0x0F);
            let v0 = vld1q_u8(wp.add(32 * K as usize));
            let v1 = vld1q_u8(wp.add(32 * K as usize + 16));
            let (l0, h0) = (
                vreinterpretq_s8_u8(vandq_u8(v0, mask)),
                vreinterpretq_s8_u8(vshrq_n_u8::<4>(v0)),
            );
            let (l1, h1) = (
                vreinterpretq_s8_u8(vandq_u8(v1, mask)),
                vreinterpretq_s8_u8(vshrq_n_u8::<4>(v1)),
            );
            for c in 0..C {
                s[c][0] = sdot_lane::<K>(s[c][0], l0, a[c][0]);
                s[c][1] = sdot_lane::<K>(s[c][1], l1, a[c][0]);
                s[c][0] = sdot_lane::<K>(s[c][0], h0, a[c][1]);
                s[c][1] = sdot_lane::<K>(s[c][1], h1, a[c][1]);
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
                    let mut s: [[int32x4_t; 2]; C] = std::array::from_fn(|c| {
                        let m8 = A::correction(act, act_stride, c, b, M8_OFF);
                        [m8, m8]
                    });
                    chunk::<0, C>(wp, &a, &mut s);
                    chunk::<1, C>(wp, &a, &mut s);
                    chunk::<2, C>(wp, &a, &mut s);
                    chunk::<3, C>(wp, &a, &mut s);
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
    /// `32k + 16h`) holds 4 bytes of each of rows `4h..4h + 4`; zipping the 32-bit lanes of
    /// chunks 0 and 1 gives rows `4h`, `4h + 1` (`zip1`) or `4h + 2`, `4h + 3` (`zip2`) with
    /// stored bytes `0..8` each: values `0..8` in the low nibbles, `16..24` in the high ones.
    /// Chunks 2 and 3 give values `8..16` and `24..32`. The nibbles are the codes `q + 8`,
    /// unsigned, against the activation's `−8·Σa`.
    pub(super) struct Mmla;

    impl super::super::mmla::MmlaWeights for Mmla {
        const CODE_BYTES: usize = CODE_BYTES;
        const SCALE_BYTES: usize = SCALE_BYTES;
        const UNIT_BLOCKS: usize = UNIT_BLOCKS;
        const PAIR_DOT: super::super::act_q8_0::TileFn = tile_dot_pairs;
        const SEED: usize = M8_OFF;

        #[inline(always)]
        unsafe fn operands(wp: *const u8, h: usize) -> [[uint8x16_t; 4]; 2] {
            // SAFETY: the block's 128 code bytes (caller).
            let c: [uint32x4_t; 4] = std::array::from_fn(|k| unsafe {
                vld1q_u32(wp.add(32 * k + 16 * h) as *const u32)
            });
            let pair = |x: uint32x4_t, y: uint32x4_t| {
                [
                    vreinterpretq_u8_u32(vzip1q_u32(x, y)),
                    vreinterpretq_u8_u32(vzip2q_u32(x, y)),
                ]
            };
            let (v01, v23) = (pair(c[0], c[1]), pair(c[2], c[3]));
            let mask = vdupq_n_u8(0x0F);
            std::array::from_fn(|q| {
                [
                    vandq_u8(v01[q], mask),
                    vandq_u8(v23[q], mask),
                    vshrq_n_u8::<4>(v01[q]),
                    vshrq_n_u8::<4>(v23[q]),
                ]
            })
        }
    }
}
