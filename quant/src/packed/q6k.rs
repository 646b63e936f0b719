//! Packed Q6_K: eight rows interleaved per 256-value super-block, against Q8_K activations.
//!
//! A packed group of `nsb` super-blocks takes `nsb · 1680` bytes, exactly the 8 × 210 bytes
//! per super-block its rows take stored, so packing changes no memory budget. Super-blocks
//! go in pairs, `[codes 2k][header 2k][header 2k+1][codes 2k+1]` (3360 = 105 · 32 bytes; an
//! odd last one is `[codes][header]`), so that code vectors stay 32-byte aligned wherever
//! the group starts on a 32-byte boundary (with a plain 1680-byte stride every other
//! super-block's loads would split across cache lines) and the weights still stream from
//! one sequential run of memory. (Keeping all headers in a region after all codes measured
//! 12-22 GB/s instead of 25-29 GB/s from DRAM on 2 threads: the short second stream per
//! group defeats the prefetcher.)
//!
//! | offset in the pair | bytes | field |
//! |---|---|---|
//! | 0 | 1536 | codes of super-block `2k` (below) |
//! | 1536 | 16 | its `d` of rows 0..8 (f16): one `vcvtph2ps` |
//! | 1552 | 128 | its sub-block scales (i8): byte `8j + r` = scale `j` (< 16) of row `r` |
//! | 1680 | 144 | header of super-block `2k + 1`, as above |
//! | 1824 | 1536 | codes of super-block `2k + 1` |
//!
//! Codes of one super-block, per unit `u` < 8 (values `32u..32u + 32`):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 192u | 128 | low nibbles |
//! | 192u + 128 | 64 | top 2 bits |
//!
//! Codes are the stored unsigned 6-bit `q` (value = `d·scale·(q − 32)`), because
//! `vpdpbusd` multiplies unsigned weight bytes by signed activation bytes; the `−32` is
//! applied once per sub-block pair as `−32·Σ_j scale_j·bsum_j` with the Q8_K block sums.
//!
//! A *chunk* is 4 consecutive values of all 8 rows, one 32-byte vector whose byte `4r + i`
//! is value `i` of row `r`, so the i32 lane `r` of `vpdpbusd` against 4 broadcast
//! activation bytes is row `r`'s partial sum. Unit `u` holds 8 chunks `(h, t)` (`h` < 2,
//! `t` < 4) covering values `32u + 16h + 4t + i` (sub-block `2u + h`):
//! - low-nibble vector `t` (at `192u + 32t`) keeps chunk `(0, t)` in its low nibbles
//!   and chunk `(1, t)` in its high nibbles;
//! - high-bit vector `s` (at `192u + 128 + 32s`) keeps the top 2 bits of chunk `(h, t)` with
//!   `t / 2 = s` in bits `2p..2p + 2`, `p = 2h + t % 2`. Shifting by `4 − 2p` and masking
//!   with `0x30` puts them in place; `p = 2` needs no shift.
//!
//! The kernels accumulate one i32 per row and sub-block with `vpdpbusd` (AVX2: `pmaddubsw`
//! pairs, whose i16 sums stay below 2·2·63·128 = 32256), multiply by the row's scale in
//! i32, and convert to f32 once per super-block: `d_w·d_a·(Σ_j s_j·Σ q·a − 32·Σ_j s_j·bsum_j)`.
//! All of it fits i32 (|Σ_j s_j·Σ q·a| ≤ 16·128·16·63·128 < 2^29). The tiles are 8 rows ×
//! up to 8 columns (VNNI) or 4 (AVX2); `tiles::run_tiles` walks the matrix. With AVX-512
//! and many columns (a prompt) it hands two groups at once to `vnni_pair`, the VNNI kernel
//! on 512-bit registers with 16 rows per `vpdpbusd` and one unit decode for both groups
//! (4096 × 14336 × 512 tokens, one thread, Zen 5 VM, 3 alternated runs: 260-291 → 354-480
//! Gop/s). On aarch64 the `sdot` kernel takes up to 4 columns, and with i8mm calls of 4 or
//! more columns go to `k_mmla` (`usmmla`, half a group against up to 8 columns, each
//! sub-block's sum seeded with the pairs' `−32·Σa`: see `packed::mmla`).

use crate::dot::Backend;
use crate::GgmlType;

pub(super) const READY: bool = true;

/// Values per super-block.
const QK: usize = 256;
/// Bytes of one stored Q6_K block.
const STORED: usize = 210;
/// Bytes of one packed super-block (8 rows): codes and header.
const SB: usize = 8 * STORED;
/// Bytes of one super-block's codes, and of one unit (32 values) of them.
const CODE_BYTES: usize = 1536;
const UNIT: usize = 192;
/// Bytes of one super-block's header (d, scales) and the scales' offset in it.
const HEAD: usize = SB - CODE_BYTES;
const SCALES: usize = 16;
/// Bytes of one Q8_K activation block.
const ACT: usize = 292;

/// Offsets of super-block `b`'s codes and header in a group: super-blocks go in pairs laid
/// out `[codes 0][header 0][header 1][codes 1]` (3360 = 105 · 32 bytes), so every code
/// region starts 32-byte aligned relative to the group.
fn codes(b: usize) -> usize {
    (b / 2) * 2 * SB + (b % 2) * (SB + HEAD)
}

fn head(b: usize) -> usize {
    (b / 2) * 2 * SB + CODE_BYTES + (b % 2) * HEAD
}

pub(super) fn group_bytes(n: usize) -> usize {
    n / QK * SB
}

/// The 256 unsigned 6-bit codes of one stored block.
fn stored_codes(b: &[u8]) -> [u8; QK] {
    let mut q = [0u8; QK];
    for half in 0..2 {
        let (ql, qh) = (&b[64 * half..], &b[128 + 32 * half..]);
        let y = &mut q[128 * half..];
        for l in 0..32 {
            let h = qh[l];
            y[l] = (ql[l] & 15) | (h & 3) << 4;
            y[l + 32] = (ql[l + 32] & 15) | ((h >> 2) & 3) << 4;
            y[l + 64] = (ql[l] >> 4) | ((h >> 4) & 3) << 4;
            y[l + 96] = (ql[l + 32] >> 4) | ((h >> 6) & 3) << 4;
        }
    }
    q
}

/// Byte offsets (inside a super-block's codes) of the low-nibble and high-bit bytes of
/// value `k` of row `r`, with the nibble (0 or 1) and the bit shift of the top bits.
fn code_position(k: usize, r: usize) -> (usize, usize, usize, usize) {
    let (u, w, i) = (k / 32, k % 32, k % 4);
    let (h, t) = (w / 16, (w % 16) / 4);
    let low = UNIT * u + 32 * t + 4 * r + i;
    let high = UNIT * u + 128 + 32 * (t / 2) + 4 * r + i;
    (low, h, high, 2 * (2 * h + t % 2))
}

fn word(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn put_word(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn pack_group(n: usize, src: &[u8], src_row_bytes: usize, dst: &mut [u8]) {
    let nsb = n / QK;
    for b in 0..nsb {
        let (co, ho) = (codes(b), head(b));
        for r in 0..8 {
            let blk = &src[r * src_row_bytes + b * STORED..][..STORED];
            let hd = &mut dst[ho..ho + HEAD];
            hd[2 * r..2 * r + 2].copy_from_slice(&blk[208..210]);
            for j in 0..16 {
                hd[SCALES + 8 * j + r] = blk[192 + j];
            }
            let out = &mut dst[co..co + CODE_BYTES];
            // Row r's 4 bytes of each vector, built from whole chunks and written once.
            let q = stored_codes(blk);
            let chunk = |u: usize, h: usize, t: usize| word(&q, 32 * u + 16 * h + 4 * t);
            for u in 0..8 {
                for t in 0..4 {
                    let low = (chunk(u, 0, t) & 0x0F0F_0F0F) | (chunk(u, 1, t) & 0x0F0F_0F0F) << 4;
                    put_word(out, UNIT * u + 32 * t + 4 * r, low);
                }
                for s in 0..2 {
                    let mut high = 0u32;
                    for (h, t) in [(0, 2 * s), (0, 2 * s + 1), (1, 2 * s), (1, 2 * s + 1)] {
                        let p = 2 * h + t % 2;
                        high |= ((chunk(u, h, t) >> 4) & 0x0303_0303) << (2 * p);
                    }
                    put_word(out, UNIT * u + 128 + 32 * s + 4 * r, high);
                }
            }
        }
    }
}

pub(super) fn unpack_row(n: usize, group: &[u8], r: usize, dst: &mut [u8]) {
    let nsb = n / QK;
    for b in 0..nsb {
        let sb = &group[codes(b)..codes(b) + CODE_BYTES];
        let hd = &group[head(b)..head(b) + HEAD];
        let blk = &mut dst[b * STORED..(b + 1) * STORED];
        let mut q = [0u8; QK];
        for k in (0..QK).step_by(4) {
            let (lo, nib, hi, shift) = code_position(k, r);
            let c = (word(sb, lo) >> (4 * nib)) & 0x0F0F_0F0F
                | ((word(sb, hi) >> shift) & 0x0303_0303) << 4;
            q[k..k + 4].copy_from_slice(&c.to_le_bytes());
        }
        // The stored encoding (see `kquants::BlockQ6K`); every bit of ql/qh is a code bit.
        for half in 0..2 {
            let c = &q[128 * half..];
            for l in 0..32 {
                blk[64 * half + l] = (c[l] & 15) | (c[l + 64] & 15) << 4;
                blk[64 * half + l + 32] = (c[l + 32] & 15) | (c[l + 96] & 15) << 4;
                blk[128 + 32 * half + l] = (c[l] >> 4)
                    | (c[l + 32] >> 4) << 2
                    | (c[l + 64] >> 4) << 4
                    | (c[l + 96] >> 4) << 6;
            }
        }
        for j in 0..16 {
            blk[192 + j] = hd[SCALES + 8 * j + r];
        }
        blk[208..210].copy_from_slice(&hd[2 * r..2 * r + 2]);
    }
}

pub(super) fn activation_row_bytes(n: usize) -> usize {
    n / QK * ACT
}

pub(super) fn quantize_activation(backend: Backend, x: &[f32], dst: &mut [u8]) {
    let done = crate::dot::quantize_activation(backend, GgmlType::Q8K, x, dst);
    debug_assert!(
        done.is_ok(),
        "lengths checked by packed::quantize_activation"
    );
}

/// The SIMD tile of `backend` and the most columns it takes, or `None` (scalar kernel).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn simd_tile(backend: Backend) -> Option<(super::tiles::Tile, usize)> {
    #[cfg(target_arch = "x86_64")]
    let tile: Option<(super::tiles::Tile, usize)> = match backend {
        Backend::Avx512 => Some((x86::tile_vnni, 8)),
        Backend::AvxVnni => Some((x86::tile_avxvnni, 4)),
        Backend::Avx2 => Some((x86::tile_avx2, 4)),
        _ => None,
    };
    #[cfg(target_arch = "aarch64")]
    let tile: Option<(super::tiles::Tile, usize)> = backend
        .has_dotprod()
        .then_some((arm::tile_dot, arm::DOT_COLS));
    tile
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
    let nsb = n / QK;
    #[cfg(target_arch = "aarch64")]
    if backend == Backend::NeonI8mm && ncols >= super::mmla::MIN_COLS {
        // SAFETY: forwarded; the CPU has i8mm (`packed::gemm_to_ptr` mapped the backend).
        unsafe {
            super::mmla::gemm_kquant(
                arm::tile_mmla,
                SB,
                (16, -32),
                n,
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
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if let Some((tile, width)) = simd_tile(backend) {
        #[cfg(target_arch = "x86_64")]
        let pair = (backend == Backend::Avx512).then(|| {
            (
                x86::tile_vnni_pair as _,
                super::tiles::two_groups::kquant_min_cols(),
            )
        });
        #[cfg(not(target_arch = "x86_64"))]
        let pair = None;
        // SAFETY: the backend is usable (mod.rs maps others to Scalar), so the CPU has the
        // features the tile needs; extents are the caller's contract.
        unsafe {
            super::tiles::run_tiles(
                tile, pair, width, nsb, SB, ACT, w, ngroups, act, act_stride, ncols, out,
                out_stride,
            )
        };
        return;
    }
    let _ = backend;
    for g in 0..ngroups {
        let wg = &w[g * nsb * SB..(g + 1) * nsb * SB];
        for c in 0..ncols {
            let a = &act[c * act_stride..c * act_stride + nsb * ACT];
            let sums = scalar_group(nsb, wg, a);
            for (r, s) in sums.iter().enumerate() {
                // SAFETY: row g*8 + r < ngroups*8 and column c < ncols (caller's contract).
                unsafe { *out.add(c * out_stride + g * 8 + r) = *s };
            }
        }
    }
}

// ------------------------------------------------------------------ kernels

/// The 8 rows of one group dotted with one activation row: the reference kernel.
fn scalar_group(nsb: usize, w: &[u8], act: &[u8]) -> [f32; 8] {
    let mut sums = [0.0f32; 8];
    for b in 0..nsb {
        let sb = &w[codes(b)..codes(b) + CODE_BYTES];
        let hd = &w[head(b)..head(b) + HEAD];
        let a = &act[b * ACT..(b + 1) * ACT];
        let da = f32::from_le_bytes([a[0], a[1], a[2], a[3]]);
        let bsum = |j: usize| i16::from_le_bytes([a[260 + 2 * j], a[261 + 2 * j]]) as i32;
        for (r, sum) in sums.iter_mut().enumerate() {
            let mut tot = 0i32;
            for j in 0..16 {
                let mut dot = -32 * bsum(j);
                for k in 16 * j..16 * j + 16 {
                    let (lo, nib, hi, shift) = code_position(k, r);
                    let q = (sb[lo] >> (4 * nib)) & 15 | ((sb[hi] >> shift) & 3) << 4;
                    dot += q as i32 * a[4 + k] as i8 as i32;
                }
                tot += hd[SCALES + 8 * j + r] as i8 as i32 * dot;
            }
            let dw = crate::f16_to_f32(u16::from_le_bytes([hd[2 * r], hd[2 * r + 1]]));
            *sum += dw * da * tot as f32;
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::tiles::{
        dpbusd, load2, load_acc, load_acc16, prefetch_ahead, store, store16,
    };
    use super::{codes, head, ACT, SB, SCALES, UNIT};

    /// Reads 4 activation bytes as one i32 and broadcasts them to the 8 lanes.
    ///
    /// # Safety
    /// `p..p + 4` must be readable.
    #[inline(always)]
    unsafe fn bcast4(p: *const u8) -> __m256i {
        // SAFETY: forwarded.
        unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
    }

    /// The 8 chunks of unit `u` as unsigned 6-bit codes, indexed `4h + t`.
    ///
    /// # Safety
    /// `unit` must point at a packed unit (192 readable bytes); AVX2 must be available.
    #[inline(always)]
    unsafe fn decode_unit(unit: *const u8) -> [__m256i; 8] {
        // SAFETY: the unit's 192 bytes are readable (caller); AVX2 (caller).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let m30 = _mm256_set1_epi8(0x30);
            let h0 = _mm256_loadu_si256(unit.add(128) as *const __m256i);
            let h1 = _mm256_loadu_si256(unit.add(160) as *const __m256i);
            let mut q = [_mm256_setzero_si256(); 8];
            for t in 0..4 {
                let l = _mm256_loadu_si256(unit.add(32 * t) as *const __m256i);
                let h = if t < 2 { h0 } else { h1 };
                // Top bits of chunk (0, t) at bits 2(t%2), of chunk (1, t) at 4 + 2(t%2).
                let (top0, top1) = if t % 2 == 0 {
                    (_mm256_slli_epi16(h, 4), h)
                } else {
                    (_mm256_slli_epi16(h, 2), _mm256_srli_epi16(h, 2))
                };
                q[t] = _mm256_or_si256(_mm256_and_si256(l, m4), _mm256_and_si256(top0, m30));
                q[4 + t] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(l, 4), m4),
                    _mm256_and_si256(top1, m30),
                );
            }
            q
        }
    }

    /// Scales of sub-blocks `2u` and `2u + 1` as i32 per row, and both as i16 pairs
    /// (`pmaddwd` against the broadcast bsum pair gives `s_2u·bsum_2u + s_2u+1·bsum_2u+1`).
    ///
    /// # Safety
    /// `hd` must point at a super-block header; AVX2 must be available.
    #[inline(always)]
    unsafe fn unit_scales(hd: *const u8, u: usize) -> (__m256i, __m256i, __m256i) {
        // SAFETY: 16 scale bytes of unit u lie inside the header (caller).
        unsafe {
            let p = hd.add(SCALES + 16 * u);
            let s0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i));
            let s1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(8) as *const __m128i));
            let pair = _mm256_blend_epi16(s0, _mm256_slli_epi32(s1, 16), 0xAA);
            (s0, s1, pair)
        }
    }

    /// Folds one super-block's integer sums into the f32 accumulators.
    ///
    /// # Safety
    /// `hd` must point at a super-block header and `a[c]` at a Q8_K block; AVX2/FMA/F16C.
    #[inline(always)]
    unsafe fn finish<const C: usize>(
        hd: *const u8,
        a: &[*const u8; C],
        tot: &[__m256i; C],
        corr: &[__m256i; C],
        acc: &mut [__m256; C],
    ) {
        // SAFETY: d of the 8 rows are the first 16 bytes, d_a the first 4 of a Q8_K block.
        unsafe {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(hd as *const __m128i));
            for c in 0..C {
                let da = _mm256_set1_ps((a[c] as *const f32).read_unaligned());
                let t = _mm256_sub_epi32(tot[c], _mm256_slli_epi32(corr[c], 5));
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(dw, da), acc[c]);
            }
        }
    }

    /// `vpdpbusd` kernel: 8 rows of `nsb` packed super-blocks at `w` × `C` activation rows.
    ///
    /// # Safety
    /// `w` holds `nsb` packed super-blocks, `act + c·act_stride` `nsb` Q8_K blocks for
    /// `c < C`, `out` as in [`store`]; the CPU has what `vnni` (AVX-512
    /// VNNI/VL) or `avxvnni` (AVX-VNNI) enable, whichever inlines this body (`VEX` says which).
    #[inline(always)]
    unsafe fn vnni_body<const VEX: bool, const C: usize, const ADD: bool>(
        nsb: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY: the output extent is the caller's contract.
        let mut acc = unsafe { load_acc::<C, ADD>(out, out_stride) };
        for b in 0..nsb {
            // The group's super-blocks take SB bytes each, in order (pairs interleave codes
            // and heads, but a pair spans its two super-blocks' bytes): a unit's share of
            // them is asked for as it is read.
            let stream = w.wrapping_add(b * SB);
            // SAFETY: b < nsb keeps every pointer below inside its super-block / Q8_K block.
            unsafe {
                let (sb, hd) = (w.add(codes(b)), w.add(head(b)));
                let a: [*const u8; C] = std::array::from_fn(|c| act.add(c * act_stride + b * ACT));
                let mut tot = [_mm256_setzero_si256(); C];
                let mut corr = [_mm256_setzero_si256(); C];
                for u in 0..8 {
                    prefetch_ahead::<C>(stream, u * SB / 8, (u + 1) * SB / 8);
                    let q = decode_unit(sb.add(UNIT * u));
                    let (s0, s1, pair) = unit_scales(hd, u);
                    for c in 0..C {
                        let av = a[c].add(4 + 32 * u);
                        let z = _mm256_setzero_si256();
                        let mut d0 = dpbusd::<VEX>(z, q[0], bcast4(av));
                        let mut d1 = dpbusd::<VEX>(z, q[4], bcast4(av.add(16)));
                        d0 = dpbusd::<VEX>(d0, q[1], bcast4(av.add(4)));
                        d1 = dpbusd::<VEX>(d1, q[5], bcast4(av.add(20)));
                        if C == 1 {
                            // Two chains per sub-block (t = 0, 1 and 2, 3): one column is
                            // bound by `vpdpbusd` latency otherwise. Several columns have
                            // enough independent chains.
                            let mut e0 = dpbusd::<VEX>(z, q[2], bcast4(av.add(8)));
                            let mut e1 = dpbusd::<VEX>(z, q[6], bcast4(av.add(24)));
                            e0 = dpbusd::<VEX>(e0, q[3], bcast4(av.add(12)));
                            e1 = dpbusd::<VEX>(e1, q[7], bcast4(av.add(28)));
                            d0 = _mm256_add_epi32(d0, e0);
                            d1 = _mm256_add_epi32(d1, e1);
                        } else {
                            for t in 2..4 {
                                d0 = dpbusd::<VEX>(d0, q[t], bcast4(av.add(4 * t)));
                                d1 = dpbusd::<VEX>(d1, q[4 + t], bcast4(av.add(16 + 4 * t)));
                            }
                        }
                        let s = _mm256_add_epi32(
                            _mm256_mullo_epi32(d0, s0),
                            _mm256_mullo_epi32(d1, s1),
                        );
                        tot[c] = _mm256_add_epi32(tot[c], s);
                        let bs = bcast4(a[c].add(260 + 4 * u));
                        corr[c] = _mm256_add_epi32(corr[c], _mm256_madd_epi16(pair, bs));
                    }
                }
                finish(hd, &a, &tot, &corr, &mut acc);
            }
        }
        // SAFETY: forwarded.
        unsafe { store(&acc, out, out_stride) };
    }

    /// AVX2 kernel: as [`vnni`] with `pmaddubsw` (two chunks summed in i16, at most
    /// 4·63·128 = 32256 in magnitude) and `pmaddwd` against the scale duplicated in both
    /// halves of each row's lane, which applies the scale without `vpmulld`.
    ///
    /// # Safety
    /// As [`vnni`], with AVX2/FMA/F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2<const C: usize, const ADD: bool>(
        nsb: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY: the output extent is the caller's contract.
        let mut acc = unsafe { load_acc::<C, ADD>(out, out_stride) };
        for b in 0..nsb {
            let stream = w.wrapping_add(b * SB);
            // SAFETY: as in `vnni`.
            unsafe {
                let (sb, hd) = (w.add(codes(b)), w.add(head(b)));
                let a: [*const u8; C] = std::array::from_fn(|c| act.add(c * act_stride + b * ACT));
                let mut tot = [_mm256_setzero_si256(); C];
                let mut corr = [_mm256_setzero_si256(); C];
                for u in 0..8 {
                    prefetch_ahead::<C>(stream, u * SB / 8, (u + 1) * SB / 8);
                    let q = decode_unit(sb.add(UNIT * u));
                    let (s0, s1, pair) = unit_scales(hd, u);
                    let dup0 = _mm256_blend_epi16(s0, _mm256_slli_epi32(s0, 16), 0xAA);
                    let dup1 = _mm256_blend_epi16(s1, _mm256_slli_epi32(s1, 16), 0xAA);
                    for c in 0..C {
                        let av = a[c].add(4 + 32 * u);
                        let x0 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(q[0], bcast4(av.add(0))),
                            _mm256_maddubs_epi16(q[1], bcast4(av.add(4))),
                        );
                        let x1 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(q[2], bcast4(av.add(8))),
                            _mm256_maddubs_epi16(q[3], bcast4(av.add(12))),
                        );
                        let y0 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(q[4], bcast4(av.add(16))),
                            _mm256_maddubs_epi16(q[5], bcast4(av.add(20))),
                        );
                        let y1 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(q[6], bcast4(av.add(24))),
                            _mm256_maddubs_epi16(q[7], bcast4(av.add(28))),
                        );
                        let s = _mm256_add_epi32(
                            _mm256_add_epi32(
                                _mm256_madd_epi16(x0, dup0),
                                _mm256_madd_epi16(x1, dup0),
                            ),
                            _mm256_add_epi32(
                                _mm256_madd_epi16(y0, dup1),
                                _mm256_madd_epi16(y1, dup1),
                            ),
                        );
                        tot[c] = _mm256_add_epi32(tot[c], s);
                        let bs = bcast4(a[c].add(260 + 4 * u));
                        corr[c] = _mm256_add_epi32(corr[c], _mm256_madd_epi16(pair, bs));
                    }
                }
                finish(hd, &a, &tot, &corr, &mut acc);
            }
        }
        // SAFETY: forwarded.
        unsafe { store(&acc, out, out_stride) };
    }

    /// [`decode_unit`] of unit `unit` of two groups, `stride` bytes apart, lanes 0..8 the
    /// first group's rows.
    ///
    /// # Safety
    /// Both units readable; AVX-512 F/BW.
    #[inline(always)]
    unsafe fn decode_unit2(unit: *const u8, stride: usize) -> [__m512i; 8] {
        // SAFETY: the units' 192 bytes are readable (caller); the caller's CPU.
        unsafe {
            let m4 = _mm512_set1_epi8(0x0F);
            let m30 = _mm512_set1_epi8(0x30);
            let h0 = load2(unit.add(128), stride);
            let h1 = load2(unit.add(160), stride);
            let mut q = [_mm512_setzero_si512(); 8];
            for t in 0..4 {
                let l = load2(unit.add(32 * t), stride);
                let h = if t < 2 { h0 } else { h1 };
                let (top0, top1) = if t % 2 == 0 {
                    (_mm512_slli_epi16(h, 4), h)
                } else {
                    (_mm512_slli_epi16(h, 2), _mm512_srli_epi16(h, 2))
                };
                q[t] = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(top0, m30));
                q[4 + t] = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                    _mm512_and_si512(top1, m30),
                );
            }
            q
        }
    }

    /// [`unit_scales`] of two groups' headers, `stride` bytes apart.
    ///
    /// # Safety
    /// Both headers readable; AVX-512 F/BW.
    #[inline(always)]
    unsafe fn unit_scales2(hd: *const u8, stride: usize, u: usize) -> (__m512i, __m512i, __m512i) {
        // SAFETY: 16 scale bytes of unit u lie inside each header (caller).
        unsafe {
            let p = hd.add(SCALES + 16 * u);
            let bytes = |o: usize| {
                let lo = _mm_loadl_epi64(p.add(o) as *const __m128i);
                let hi = _mm_loadl_epi64(p.add(stride + o) as *const __m128i);
                _mm512_cvtepi8_epi32(_mm_unpacklo_epi64(lo, hi))
            };
            let (s0, s1) = (bytes(0), bytes(8));
            let pair = _mm512_mask_blend_epi16(0xAAAA_AAAA, s0, _mm512_slli_epi32(s1, 16));
            (s0, s1, pair)
        }
    }

    /// As [`vnni_body`] for several columns, on 512-bit registers, for two groups at once
    /// (the second `w_stride` bytes after the first): lanes 0..8 are the first group's rows,
    /// 8..16 the second's, so one `vpdpbusd` against the same broadcast activation bytes
    /// does the work of two 256-bit ones, and each unit is decoded once for both. Every
    /// row's integer sums are those of `vnni_body` (exact, whatever the order) and its f32
    /// operations those of [`finish`], in the same order, so a row gets the same bits as
    /// from the 8-row tile (batch invariance).
    ///
    /// # Safety
    /// As `vnni_body` for both groups, `out + c·out_stride + 0..16` writable; the CPU has
    /// AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn vnni_pair<const C: usize, const ADD: bool>(
        nsb: usize,
        w: *const u8,
        w_stride: usize,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let bcast16 = |p: *const u8| {
            // SAFETY: p..p + 4 lies inside a Q8_K block (the callers below).
            _mm512_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
        };
        // SAFETY: the output extent is the caller's contract.
        let mut acc = unsafe { load_acc16::<C, ADD>(out, out_stride) };
        for b in 0..nsb {
            let stream = w.wrapping_add(b * SB);
            // SAFETY: b < nsb keeps every pointer below inside its super-block (of either
            // group) or Q8_K block.
            unsafe {
                let (sb, hd) = (w.add(codes(b)), w.add(head(b)));
                let a: [*const u8; C] = std::array::from_fn(|c| act.add(c * act_stride + b * ACT));
                let mut tot = [_mm512_setzero_si512(); C];
                let mut corr = [_mm512_setzero_si512(); C];
                for u in 0..8 {
                    let (from, to) = (u * SB / 8, (u + 1) * SB / 8);
                    prefetch_ahead::<C>(stream, from, to);
                    prefetch_ahead::<C>(stream.wrapping_add(w_stride), from, to);
                    let q = decode_unit2(sb.add(UNIT * u), w_stride);
                    let (s0, s1, pair) = unit_scales2(hd, w_stride, u);
                    for c in 0..C {
                        let av = a[c].add(4 + 32 * u);
                        let z = _mm512_setzero_si512();
                        let mut d0 = _mm512_dpbusd_epi32(z, q[0], bcast16(av));
                        let mut d1 = _mm512_dpbusd_epi32(z, q[4], bcast16(av.add(16)));
                        for t in 1..4 {
                            d0 = _mm512_dpbusd_epi32(d0, q[t], bcast16(av.add(4 * t)));
                            d1 = _mm512_dpbusd_epi32(d1, q[4 + t], bcast16(av.add(16 + 4 * t)));
                        }
                        let s = _mm512_add_epi32(
                            _mm512_mullo_epi32(d0, s0),
                            _mm512_mullo_epi32(d1, s1),
                        );
                        tot[c] = _mm512_add_epi32(tot[c], s);
                        let bs = bcast16(a[c].add(260 + 4 * u));
                        corr[c] = _mm512_add_epi32(corr[c], _mm512_madd_epi16(pair, bs));
                    }
                }
                // `finish` for 16 rows: the same operations, lane by lane.
                let lo = _mm_loadu_si128(hd as *const __m128i);
                let hi = _mm_loadu_si128(hd.add(w_stride) as *const __m128i);
                let dw = _mm512_cvtph_ps(_mm256_set_m128i(hi, lo));
                for c in 0..C {
                    let da = _mm512_set1_ps((a[c] as *const f32).read_unaligned());
                    let t = _mm512_sub_epi32(tot[c], _mm512_slli_epi32(corr[c], 5));
                    acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(dw, da), acc[c]);
                }
            }
        }
        // SAFETY: the output extent is the caller's contract.
        unsafe { store16(&acc, out, out_stride) };
    }

    super::super::tiles::vnni_tiles!(vnni_body, avx2);
    super::super::tiles::tile_fn!(tile_avx2, avx2);
    super::super::tiles::pair_tile_fn!(tile_vnni_pair, vnni_pair);
}

#[cfg(target_arch = "aarch64")]
mod arm {
    //! The dot-product kernel. A 32-byte chunk vector holds rows 0..4 in its first 16 bytes
    //! and rows 4..8 in the second, so one `sdot` by element against the activation's
    //! 4-byte group advances 4 rows' sums; the 6-bit codes (0..64) are positive as signed
    //! bytes too, and the `−32` is applied per sub-block with the Q8_K sums, as on x86.

    // The kernels index several per-column arrays with the same column index.
    #![allow(clippy::needless_range_loop)]

    use super::super::mmla::{
        kquant_tile, load_pairs, row_pairs_f16, row_pairs_i16, store_pairs, KPAIR_BLOCK,
        KPAIR_BSUMS, KPAIR_D,
    };
    use super::super::neon::{f16x8_to_f32, load_acc, sdot_lane, store, usmmla};
    use super::{codes, head, ACT, SCALES, UNIT};
    use std::arch::aarch64::*;

    /// Columns per tile.
    pub(super) const DOT_COLS: usize = 4;

    /// 8 signed bytes at `p` as 8 i32 in two registers (rows 0..4, 4..8).
    ///
    /// Safety: 8 readable bytes at `p`.
    #[inline(always)]
    unsafe fn scales8(p: *const u8) -> [int32x4_t; 2] {
        // SAFETY: the caller's 8 bytes; register-only widening.
        unsafe {
            let h = vmovl_s8(vld1_s8(p as *const i8));
            [vmovl_s16(vget_low_s16(h)), vmovl_high_s16(h)]
        }
    }

    /// Safety: the CPU has the dot-product extension; `Tile` contract with `C` columns.
    #[target_feature(enable = "dotprod")]
    unsafe fn k_dot<const C: usize, const ADD: bool>(
        nsb: usize,
        w: *const u8,
        act: *const u8,
        act_stride: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        // SAFETY: the output extent is the caller's contract.
        let mut acc = unsafe { load_acc::<C, ADD>(out, out_stride) };
        for b in 0..nsb {
            // SAFETY: b < nsb keeps every pointer below inside its super-block / Q8_K block.
            unsafe {
                let (sb, hd) = (w.add(codes(b)), w.add(head(b)));
                let a: [*const u8; C] = std::array::from_fn(|c| act.add(c * act_stride + b * ACT));
                let mut tot = [[vdupq_n_s32(0); 2]; C];
                let mut corr = [[vdupq_n_s32(0); 2]; C];
                for u in 0..8 {
                    let unit = sb.add(UNIT * u);
                    // Activations of sub-blocks 2u (values 0..16 of the unit) and 2u + 1.
                    let alo: [int8x16_t; C] =
                        std::array::from_fn(|c| vld1q_s8(a[c].add(4 + 32 * u) as *const i8));
                    let ahi: [int8x16_t; C] =
                        std::array::from_fn(|c| vld1q_s8(a[c].add(20 + 32 * u) as *const i8));
                    let mut d0 = [[vdupq_n_s32(0); 2]; C];
                    let mut d1 = [[vdupq_n_s32(0); 2]; C];
                    // Chunks t = 2s, 2s + 1 (sdot lane t), both 8-row halves: q[h][i][k] is
                    // chunk (k, 2s + i), rows 4h..4h + 4.
                    macro_rules! steps {
                        ($s:literal) => {{
                            let q = [chunk_quad_half(unit, $s, 0), chunk_quad_half(unit, $s, 1)];
                            let v = |h: usize, i: usize, k: usize| vreinterpretq_s8_u8(q[h][i][k]);
                            for c in 0..C {
                                for h in 0..2 {
                                    let (a0, a1) = (alo[c], ahi[c]);
                                    d0[c][h] = sdot_lane::<{ 2 * $s }>(d0[c][h], v(h, 0, 0), a0);
                                    d1[c][h] = sdot_lane::<{ 2 * $s }>(d1[c][h], v(h, 0, 1), a1);
                                    d0[c][h] =
                                        sdot_lane::<{ 2 * $s + 1 }>(d0[c][h], v(h, 1, 0), a0);
                                    d1[c][h] =
                                        sdot_lane::<{ 2 * $s + 1 }>(d1[c][h], v(h, 1, 1), a1);
                                }
                            }
                        }};
                    }
                    steps!(0);
                    steps!(1);
                    let s0 = scales8(hd.add(SCALES + 16 * u));
                    let s1 = scales8(hd.add(SCALES + 16 * u + 8));
                    for c in 0..C {
                        let bs = |j: usize| {
                            (a[c].add(260 + 2 * j) as *const i16).read_unaligned() as i32
                        };
                        let (b0, b1) = (bs(2 * u), bs(2 * u + 1));
                        for h in 0..2 {
                            tot[c][h] = vmlaq_s32(tot[c][h], d0[c][h], s0[h]);
                            tot[c][h] = vmlaq_s32(tot[c][h], d1[c][h], s1[h]);
                            corr[c][h] = vmlaq_n_s32(corr[c][h], s0[h], b0);
                            corr[c][h] = vmlaq_n_s32(corr[c][h], s1[h], b1);
                        }
                    }
                }
                // acc += d·d_a·(Σ s·(q·a) − 32·Σ s·bsum), per row.
                let dw = f16x8_to_f32(hd);
                for c in 0..C {
                    let da = vld1q_dup_f32(a[c] as *const f32);
                    for h in 0..2 {
                        let t = vsubq_s32(tot[c][h], vshlq_n_s32::<5>(corr[c][h]));
                        acc[c][h] = vfmaq_f32(acc[c][h], vcvtq_f32_s32(t), vmulq_f32(dw[h], da));
                    }
                }
            }
        }
        // SAFETY: forwarded.
        unsafe { store(&acc, out, out_stride) };
    }
    super::super::tiles::tile_fn!(tile_dot, k_dot);

    /// The 6-bit codes of chunks `(k, t)`, `t` = `2s`, `2s + 1`, rows `4h..4h + 4` of the unit
    /// at `unit` (16-byte halves of its chunk vectors), as `[[(0, 2s), (1, 2s)], [(0, 2s + 1),
    /// (1, 2s + 1)]]`: the four chunks whose top bits share high-bit vector `s`.
    ///
    /// Shift-insert instructions merge the two fields: `sli` puts a chunk's top bits (moved
    /// to bits 0..2) over its low nibble, `sri` its high nibble under its top bits (moved to
    /// bits 4..6). 8 operations for the 4 vectors, against 13 with a mask and an OR per field
    /// (what the compiler made of `(l & 15) | ((hb << 4) & 0x30)`): executed, Q6_K `sdot` per
    /// 32 weights and column 13.5 → 11.5 at one column, 8.8 → 7.6 at 4, `usmmla` 4.7 → 4.6 at
    /// 8 (`scripts/kernel-insns-qemu.py`).
    ///
    /// Safety: the unit's 192 bytes at `unit`; `s`, `h` < 2.
    #[inline(always)]
    unsafe fn chunk_quad_half(unit: *const u8, s: usize, h: usize) -> [[uint8x16_t; 2]; 2] {
        // SAFETY: high-bit vector s and low-nibble vectors 2s, 2s + 1 of the unit (caller).
        unsafe {
            let hb = vld1q_u8(unit.add(128 + 32 * s + 16 * h));
            let l0 = vld1q_u8(unit.add(64 * s + 16 * h));
            let l1 = vld1q_u8(unit.add(64 * s + 32 + 16 * h));
            let (m3, m30) = (vdupq_n_u8(3), vdupq_n_u8(0x30));
            // Chunk (k, 2s + i) keeps its top bits at bits 2p of `hb`, p = 2k + i. Low
            // nibbles: shift-left-insert the top bits (at bits 0..2) over the low nibble;
            // high nibbles: shift-right-insert the high nibble under the top bits (at bits
            // 4..6, bits 6..8 clear).
            [
                [
                    vsliq_n_u8::<4>(l0, vandq_u8(hb, m3)),
                    vsriq_n_u8::<4>(vandq_u8(hb, m30), l0),
                ],
                [
                    vsliq_n_u8::<4>(l1, vandq_u8(vshrq_n_u8::<2>(hb), m3)),
                    vsriq_n_u8::<4>(vshrq_n_u8::<2>(hb), l1),
                ],
            ]
        }
    }

    /// The i8mm kernel (`packed::mmla`): rows `4h..4h + 4` of the group against `P` column
    /// pairs (Q8_K pair blocks, `pair_stride` bytes apart), then the other half. Per unit,
    /// zipping the 32-bit lanes of chunks `(s, 2v)` and `(s, 2v + 1)` gives a row pair's
    /// values `8v..8v + 8` of sub-block `2u + s`. Each sub-block's 2 × 2 sums start from the
    /// pairs' `−32·Σa` (the code offset), are multiplied by the rows' scales in i32, and the
    /// super-block converts to f32 as `k_dot` does (the same integers, the same float
    /// operations: the same bits).
    ///
    /// Safety: the CPU has i8mm; `Tile` contract on pair rows, `ncols` ∈ `2P − 1..=2P`.
    #[target_feature(enable = "dotprod,i8mm")]
    unsafe fn k_mmla<const P: usize, const ADD: bool>(
        nsb: usize,
        w: *const u8,
        pairs: *const u8,
        pair_stride: usize,
        ncols: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        for h in 0..2 {
            // SAFETY: the output extent is the caller's contract.
            let mut acc = unsafe { load_pairs::<P, ADD>(out, out_stride, ncols, h) };
            for b in 0..nsb {
                // SAFETY: b < nsb keeps every pointer inside its super-block / pair block.
                unsafe {
                    let (sb, hd) = (w.add(codes(b)), w.add(head(b)));
                    let ab: [*const u8; P] =
                        std::array::from_fn(|p| pairs.add(p * pair_stride + b * KPAIR_BLOCK));
                    let mut tot = [[vdupq_n_s32(0); 2]; P];
                    for u in 0..8 {
                        let unit = sb.add(UNIT * u);
                        // q6[v][i][s]: chunk (s, 2v + i); wq[s][v][q]: sub-block 2u + s,
                        // values 8v..8v + 8, row pair q.
                        let q6 = [chunk_quad_half(unit, 0, h), chunk_quad_half(unit, 1, h)];
                        let wq: [[[uint8x16_t; 2]; 2]; 2] = std::array::from_fn(|s| {
                            std::array::from_fn(|v| {
                                let (x, y) = (
                                    vreinterpretq_u32_u8(q6[v][0][s]),
                                    vreinterpretq_u32_u8(q6[v][1][s]),
                                );
                                [
                                    vreinterpretq_u8_u32(vzip1q_u32(x, y)),
                                    vreinterpretq_u8_u32(vzip2q_u32(x, y)),
                                ]
                            })
                        });
                        let sc: [[int32x4_t; 2]; 2] = std::array::from_fn(|s| {
                            row_pairs_i16(
                                vmovl_s8(vld1_s8(hd.add(SCALES + 16 * u + 8 * s) as *const i8)),
                                h,
                            )
                        });
                        for p in 0..P {
                            for s in 0..2 {
                                let j = 2 * u + s;
                                let a0 = vld1q_s8(ab[p].add(32 * j) as *const i8);
                                let a1 = vld1q_s8(ab[p].add(32 * j + 16) as *const i8);
                                let seed = vld1q_s32(ab[p].add(KPAIR_BSUMS + 16 * j) as *const i32);
                                for q in 0..2 {
                                    let x = usmmla(seed, wq[s][0][q], a0);
                                    let x = usmmla(x, wq[s][1][q], a1);
                                    tot[p][q] = vmlaq_s32(tot[p][q], x, sc[s][q]);
                                }
                            }
                        }
                    }
                    // acc += d·d_a·Σ s·(q·a − 32·bsum), as in `k_dot`.
                    let dw = row_pairs_f16(hd, h);
                    for p in 0..P {
                        let da = vld1q_f32(ab[p].add(KPAIR_D) as *const f32);
                        for q in 0..2 {
                            acc[p][q] = vfmaq_f32(
                                acc[p][q],
                                vcvtq_f32_s32(tot[p][q]),
                                vmulq_f32(dw[q], da),
                            );
                        }
                    }
                }
            }
            // SAFETY: the tile's output (caller).
            unsafe { store_pairs(&acc, out, out_stride, ncols, h) };
        }
    }
    kquant_tile!(tile_mmla, k_mmla);
}
