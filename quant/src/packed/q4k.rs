//! Packed Q4_K: eight rows interleaved per 256-value super-block, against Q8_K activations.
//!
//! A packed super-block holds super-block `b` of the group's 8 rows in 1152 bytes, exactly
//! the 8 × 144 bytes they take stored; packing is a pure byte transposition. Super-block
//! `b` starts at `1152b` (= 36 · 32b), so code loads are 32-byte aligned whenever the group
//! is:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 16 | `d` of rows 0..8 (f16): one `vcvtph2ps` |
//! | 16 | 16 | `dmin` of rows 0..8 (f16) |
//! | 32 | 96 | the stored 12-byte scale/min field: byte `32 + 8k + r` = byte `k` of row `r` |
//! | 128 + 256c + 32t | 32 | codes of sub-blocks `2c` and `2c + 1` (`c` < 4, `t` < 8) |
//!
//! Code vector `(c, t)` holds in byte `4r + i` the stored byte `32c + 4t + i` of row `r`:
//! its low nibble is value `64c + 4t + i` (sub-block `2c`), its high nibble value
//! `64c + 32 + 4t + i` (sub-block `2c + 1`). One 32-byte load is thus two *chunks* (4
//! consecutive values of the 8 rows), and lane `r` of `vpdpbusd` against 4 broadcast
//! activation bytes is row `r`'s partial sum.
//!
//! The 6-bit scales and mins stay in their stored encoding (unpacking them to bytes would
//! cost 32 more bytes per super-block, 2.8 % of the weight traffic at decode): with the
//! bytes `k` of the 8 rows side by side, the kernel decodes all 64 scales and 64 mins of a
//! super-block with a handful of vector ops (see `kquants::get_scale_min_k4` for the bits).
//!
//! The kernels accumulate one i32 per row and sub-block (VNNI uses the high nibble in
//! place, `q & 0xF0 = 16·q`, and shifts the sum right by 4; AVX2 shifts the codes, as
//! `pmaddubsw` would saturate), multiply by the row's scale in i32,
//! and convert once per super-block: `d·d_a·Σ_j s_j·Σ q·a − dmin·d_a·Σ_j m_j·bsum32_j`,
//! the mins term from the Q8_K block sums with `pmaddwd`. Sizes: `|Σ q·a| ≤ 32·15·128`
//! per sub-block, times `s ≤ 63`, summed over 8 sub-blocks: below 2^28. The tiles are 8 rows
//! × up to 8 columns (VNNI) or 4 (AVX2), driven by `tiles::run_tiles`. With AVX-512 and
//! many columns (a prompt) `run_tiles` hands two groups at once to `vnni_pair`, the VNNI
//! kernel on 512-bit registers with 16 rows per `vpdpbusd` (4096 × 14336 × 512 tokens, one
//! thread, Zen 5 VM, 3 alternated runs: 296-364 → 492-584 Gop/s). On aarch64 the `sdot`
//! kernel takes up to 4 columns, and with i8mm calls of 4 or more columns go to `k_mmla`
//! (`usmmla`, half a group against up to 8 columns: see `packed::mmla`).

use crate::dot::Backend;
use crate::GgmlType;

pub(super) const READY: bool = true;

/// Values per super-block.
const QK: usize = 256;
/// Bytes of one stored Q4_K block.
const STORED: usize = 144;
/// Bytes of one packed super-block (8 rows).
const SB: usize = 8 * STORED;
/// Bytes of one Q8_K activation block.
const ACT: usize = 292;
/// Offsets inside a packed super-block.
const DMIN: usize = 16;
const SCALES: usize = 32;
const CODES: usize = 128;

pub(super) fn group_bytes(n: usize) -> usize {
    n / QK * SB
}

/// Offset inside a packed super-block of byte `k` (< 128) of row `r`'s stored `qs`.
fn code_offset(k: usize, r: usize) -> usize {
    // Stored bytes 4w..4w + 4 (w = 8c + t) of row r land at CODES + 32w + 4r.
    CODES + 32 * (k / 4) + 4 * r + k % 4
}

pub(super) fn pack_group(n: usize, src: &[u8], src_row_bytes: usize, dst: &mut [u8]) {
    for b in 0..n / QK {
        let out = &mut dst[b * SB..(b + 1) * SB];
        for r in 0..8 {
            let blk = &src[r * src_row_bytes + b * STORED..][..STORED];
            out[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
            out[DMIN + 2 * r..DMIN + 2 * r + 2].copy_from_slice(&blk[2..4]);
            for k in 0..12 {
                out[SCALES + 8 * k + r] = blk[4 + k];
            }
            for (w, word) in blk[16..].chunks_exact(4).enumerate() {
                let o = code_offset(4 * w, r);
                out[o..o + 4].copy_from_slice(word);
            }
        }
    }
}

pub(super) fn unpack_row(n: usize, group: &[u8], r: usize, dst: &mut [u8]) {
    for b in 0..n / QK {
        let sb = &group[b * SB..(b + 1) * SB];
        let blk = &mut dst[b * STORED..(b + 1) * STORED];
        blk[0..2].copy_from_slice(&sb[2 * r..2 * r + 2]);
        blk[2..4].copy_from_slice(&sb[DMIN + 2 * r..DMIN + 2 * r + 2]);
        for k in 0..12 {
            blk[4 + k] = sb[SCALES + 8 * k + r];
        }
        for (w, word) in blk[16..].chunks_exact_mut(4).enumerate() {
            let o = code_offset(4 * w, r);
            word.copy_from_slice(&sb[o..o + 4]);
        }
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
                (32, 1),
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

/// The 8 rows of one group dotted with one activation row: the reference kernel.
fn scalar_group(nsb: usize, w: &[u8], act: &[u8]) -> [f32; 8] {
    let mut sums = [0.0f32; 8];
    for b in 0..nsb {
        let sb = &w[b * SB..(b + 1) * SB];
        let a = &act[b * ACT..(b + 1) * ACT];
        let da = f32::from_le_bytes([a[0], a[1], a[2], a[3]]);
        let bsum = |j: usize| i16::from_le_bytes([a[260 + 2 * j], a[261 + 2 * j]]) as i32;
        for (r, sum) in sums.iter_mut().enumerate() {
            let sc: [u8; 12] = std::array::from_fn(|k| sb[SCALES + 8 * k + r]);
            let (mut dots, mut mins) = (0i32, 0i32);
            for j in 0..8 {
                let (s, m) = crate::kquants::get_scale_min_k4(j, &sc);
                let (c, high) = (j / 2, j % 2);
                let mut dot = 0i32;
                for v in 0..32 {
                    let byte = sb[code_offset(32 * c + v, r)];
                    let q = if high == 1 { byte >> 4 } else { byte & 15 };
                    dot += q as i32 * a[4 + 32 * j + v] as i8 as i32;
                }
                dots += s as i32 * dot;
                mins += m as i32 * (bsum(2 * j) + bsum(2 * j + 1));
            }
            let f = |o: usize| crate::f16_to_f32(u16::from_le_bytes([sb[o], sb[o + 1]]));
            let (d, dmin) = (f(2 * r), f(DMIN + 2 * r));
            *sum += d * da * dots as f32 - dmin * da * mins as f32;
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
    use super::{ACT, CODES, DMIN, SB, SCALES};

    /// Reads 4 activation bytes as one i32 and broadcasts them to the 8 lanes.
    ///
    /// # Safety
    /// `p..p + 4` must be readable.
    #[inline(always)]
    unsafe fn bcast4(p: *const u8) -> __m256i {
        // SAFETY: forwarded.
        unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
    }

    /// An unaligned 32-byte load.
    ///
    /// # Safety
    /// `p..p + 32` must be readable.
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        // SAFETY: forwarded.
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }

    /// A super-block's scales and mins, decoded once for all columns.
    struct Scales {
        /// Scale of sub-block `j` per row, as i32 lanes.
        s: [__m256i; 8],
        /// Mins of sub-blocks `2c`, `2c + 1` per row as an i16 pair in lane `r`.
        m: [__m256i; 4],
    }

    /// Decodes the 6-bit scales and mins of the 8 rows (`kquants::get_scale_min_k4`).
    ///
    /// # Safety
    /// `sb` points at a packed super-block; AVX2.
    #[inline(always)]
    unsafe fn scales(sb: *const u8) -> Scales {
        // SAFETY: bytes SCALES..SCALES + 96 of the super-block are readable (caller).
        unsafe {
            let x0 = load(sb.add(SCALES));
            let x1 = load(sb.add(SCALES + 32));
            let x2 = load(sb.add(SCALES + 64));
            let m63 = _mm256_set1_epi8(63);
            let (m4, m30) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
            // Bytes [j][r] for j < 4 and 4 <= j < 8: bits 6..8 of bytes 0..4 / 4..8 are the
            // top bits of scales / mins 4..8, the rest of those bytes scales / mins 0..4.
            let s03 = _mm256_and_si256(x0, m63);
            let m03 = _mm256_and_si256(x1, m63);
            let s47 = _mm256_or_si256(
                _mm256_and_si256(x2, m4),
                _mm256_and_si256(_mm256_srli_epi16(x0, 2), m30),
            );
            let m47 = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(x2, 4), m4),
                _mm256_and_si256(_mm256_srli_epi16(x1, 2), m30),
            );
            // Each 128-bit half holds two sub-blocks' 8 bytes: [j][r], [j + 1][r].
            let sh = [
                _mm256_castsi256_si128(s03),
                _mm256_extracti128_si256(s03, 1),
                _mm256_castsi256_si128(s47),
                _mm256_extracti128_si256(s47, 1),
            ];
            let mh = [
                _mm256_castsi256_si128(m03),
                _mm256_extracti128_si256(m03, 1),
                _mm256_castsi256_si128(m47),
                _mm256_extracti128_si256(m47, 1),
            ];
            let mut s = [_mm256_setzero_si256(); 8];
            let mut m = [_mm256_setzero_si256(); 4];
            for c in 0..4 {
                s[2 * c] = _mm256_cvtepu8_epi32(sh[c]);
                s[2 * c + 1] = _mm256_cvtepu8_epi32(_mm_srli_si128(sh[c], 8));
                m[c] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mh[c], _mm_srli_si128(mh[c], 8)));
            }
            Scales { s, m }
        }
    }

    /// Per-32 activation sums of one Q8_K block as i16 pairs `(bs_2c, bs_2c+1)`
    /// broadcast to all lanes, for `c < 4`.
    ///
    /// # Safety
    /// `a` points at a Q8_K block; AVX2.
    #[inline(always)]
    unsafe fn bsum_pairs(a: *const u8) -> [__m256i; 4] {
        // SAFETY: the 32 bsum bytes of the block are readable (caller).
        unsafe {
            let b = _mm256_loadu_si256(a.add(260) as *const __m256i);
            // Lane 0 words 0..4 = bs0..bs3, lane 1 words 0..4 = bs4..bs7 (|bs| ≤ 32·128).
            let h = _mm256_hadd_epi16(b, b);
            [
                _mm256_permutevar8x32_epi32(h, _mm256_set1_epi32(0)),
                _mm256_permutevar8x32_epi32(h, _mm256_set1_epi32(1)),
                _mm256_permutevar8x32_epi32(h, _mm256_set1_epi32(4)),
                _mm256_permutevar8x32_epi32(h, _mm256_set1_epi32(5)),
            ]
        }
    }

    /// `Σ_j m_j·bsum32_j` of one super-block for each column (the mins' integer sums).
    ///
    /// # Safety
    /// `a[c]` points at a Q8_K block; AVX2.
    #[inline(always)]
    unsafe fn mins_sums<const C: usize>(sc: &Scales, a: &[*const u8; C]) -> [__m256i; C] {
        let mut mins = [_mm256_setzero_si256(); C];
        for c in 0..C {
            // SAFETY: forwarded.
            let bs = unsafe { bsum_pairs(a[c]) };
            for (p, m) in sc.m.iter().enumerate() {
                mins[c] = _mm256_add_epi32(mins[c], _mm256_madd_epi16(*m, bs[p]));
            }
        }
        mins
    }

    /// Folds one super-block's integer sums into the f32 accumulators:
    /// `acc += d_a·(unit·d·tot − dmin·mins)`, where `unit` (a power of two) undoes a scaling
    /// of `tot`. Scaling by a power of two is exact in both the i32 → f32 conversion and the
    /// product, so a scaled and an unscaled `tot` give the same bits.
    ///
    /// # Safety
    /// `sb` points at a packed super-block and `a[c]` at a Q8_K block; AVX2/FMA/F16C.
    #[inline(always)]
    unsafe fn finish<const C: usize>(
        sb: *const u8,
        a: &[*const u8; C],
        tot: &[__m256i; C],
        mins: &[__m256i; C],
        acc: &mut [__m256; C],
        unit: f32,
    ) {
        // SAFETY: d and dmin of the 8 rows are the first 32 bytes, d_a the first 4 of a
        // Q8_K block.
        unsafe {
            let mut d = _mm256_cvtph_ps(_mm_loadu_si128(sb as *const __m128i));
            if unit != 1.0 {
                d = _mm256_mul_ps(d, _mm256_set1_ps(unit));
            }
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(sb.add(DMIN) as *const __m128i));
            for c in 0..C {
                // One formula for every `C` (batch invariance, `packed` module doc); only the
                // final FMA waits on the accumulator, so one column's loop-carried chain is
                // one operation per super-block.
                let da = _mm256_set1_ps((a[c] as *const f32).read_unaligned());
                let (t, m) = (_mm256_cvtepi32_ps(tot[c]), _mm256_cvtepi32_ps(mins[c]));
                let x = _mm256_fmsub_ps(t, d, _mm256_mul_ps(m, dmin));
                acc[c] = _mm256_fmadd_ps(x, da, acc[c]);
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
        let m4 = _mm256_set1_epi8(0x0F);
        let mf0 = _mm256_set1_epi8(0xF0u8 as i8);
        // SAFETY: the output extent is the caller's contract.
        let mut acc = unsafe { load_acc::<C, ADD>(out, out_stride) };
        for b in 0..nsb {
            // SAFETY: b < nsb keeps every pointer below inside its super-block / Q8_K block.
            unsafe {
                let sb = w.add(b * SB);
                let a: [*const u8; C] = std::array::from_fn(|c| act.add(c * act_stride + b * ACT));
                let sc = scales(sb);
                let early_mins = if C == 1 {
                    Some(mins_sums(&sc, &a))
                } else {
                    None
                };
                let mut tot = [_mm256_setzero_si256(); C];
                for p in 0..4 {
                    prefetch_ahead::<C>(sb, p * SB / 4, (p + 1) * SB / 4);
                    // One column: two accumulators per sub-block (t even / odd) halve the
                    // `vpdpbusd` dependency chains, which bound that case. Several columns
                    // have enough independent chains (and no registers to spare).
                    let (mut lo0, mut lo1) =
                        ([_mm256_setzero_si256(); C], [_mm256_setzero_si256(); C]);
                    let (mut hi0, mut hi1) =
                        ([_mm256_setzero_si256(); C], [_mm256_setzero_si256(); C]);
                    for t in (0..8).step_by(2) {
                        let v0 = load(sb.add(CODES + 256 * p + 32 * t));
                        let v1 = load(sb.add(CODES + 256 * p + 32 * t + 32));
                        let (ql0, qh0) = (_mm256_and_si256(v0, m4), _mm256_and_si256(v0, mf0));
                        let (ql1, qh1) = (_mm256_and_si256(v1, m4), _mm256_and_si256(v1, mf0));
                        for c in 0..C {
                            let av = a[c].add(4 + 64 * p + 4 * t);
                            lo0[c] = dpbusd::<VEX>(lo0[c], ql0, bcast4(av));
                            hi0[c] = dpbusd::<VEX>(hi0[c], qh0, bcast4(av.add(32)));
                            if C == 1 {
                                lo1[c] = dpbusd::<VEX>(lo1[c], ql1, bcast4(av.add(4)));
                                hi1[c] = dpbusd::<VEX>(hi1[c], qh1, bcast4(av.add(36)));
                            } else {
                                lo0[c] = dpbusd::<VEX>(lo0[c], ql1, bcast4(av.add(4)));
                                hi0[c] = dpbusd::<VEX>(hi0[c], qh1, bcast4(av.add(36)));
                            }
                        }
                    }
                    // The high nibbles' sums are 16·Σ q·a. One column shifts them back;
                    // several columns scale the low nibbles' sums by 16 instead (one
                    // shift per sub-block, not per column) and `finish` divides the
                    // total by 16, exactly (below 2^29: 8 · 16·32·15·128·63).
                    let s_lo = if C == 1 {
                        sc.s[2 * p]
                    } else {
                        _mm256_slli_epi32(sc.s[2 * p], 4)
                    };
                    for c in 0..C {
                        let l = _mm256_add_epi32(lo0[c], lo1[c]);
                        let h = if C == 1 {
                            _mm256_srai_epi32(_mm256_add_epi32(hi0[c], hi1[c]), 4)
                        } else {
                            _mm256_add_epi32(hi0[c], hi1[c])
                        };
                        let x = _mm256_mullo_epi32(l, s_lo);
                        let y = _mm256_mullo_epi32(h, sc.s[2 * p + 1]);
                        tot[c] = _mm256_add_epi32(tot[c], _mm256_add_epi32(x, y));
                    }
                }
                // Several columns: the mins' sums after the codes' loop, so that they hold
                // no registers during it (+3 % at 512 tokens). One column keeps the order
                // that decode was measured with.
                let mins = match early_mins {
                    Some(m) => m,
                    None => mins_sums(&sc, &a),
                };
                let unit = if C == 1 { 1.0 } else { 1.0 / 16.0 };
                finish(sb, &a, &tot, &mins, &mut acc, unit);
            }
        }
        // SAFETY: forwarded.
        unsafe { store(&acc, out, out_stride) };
    }

    /// AVX2 kernel: as [`vnni`] with `pmaddubsw`: the 8 products of a sub-block's row
    /// lane sum in i16 (at most 8·2·15·128 = 30720), then `pmaddwd` against the scale
    /// duplicated in both halves of the row's lane applies the scale.
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
        let m4 = _mm256_set1_epi8(0x0F);
        // SAFETY: the output extent is the caller's contract.
        let mut acc = unsafe { load_acc::<C, ADD>(out, out_stride) };
        for b in 0..nsb {
            // SAFETY: as in `vnni`.
            unsafe {
                let sb = w.add(b * SB);
                let a: [*const u8; C] = std::array::from_fn(|c| act.add(c * act_stride + b * ACT));
                let sc = scales(sb);
                let mut tot = [_mm256_setzero_si256(); C];
                let mins = mins_sums(&sc, &a);
                for p in 0..4 {
                    prefetch_ahead::<C>(sb, p * SB / 4, (p + 1) * SB / 4);
                    let (s_lo, s_hi) = (sc.s[2 * p], sc.s[2 * p + 1]);
                    // The scale in both i16 halves of each row's lane (it is below 64).
                    let s_lo = _mm256_or_si256(s_lo, _mm256_slli_epi32(s_lo, 16));
                    let s_hi = _mm256_or_si256(s_hi, _mm256_slli_epi32(s_hi, 16));
                    let mut lo = [_mm256_setzero_si256(); C];
                    let mut hi = [_mm256_setzero_si256(); C];
                    for t in 0..8 {
                        let v =
                            _mm256_loadu_si256(sb.add(CODES + 256 * p + 32 * t) as *const __m256i);
                        let ql = _mm256_and_si256(v, m4);
                        let qh = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                        for c in 0..C {
                            let av = a[c].add(4 + 64 * p + 4 * t);
                            lo[c] = _mm256_add_epi16(lo[c], _mm256_maddubs_epi16(ql, bcast4(av)));
                            hi[c] = _mm256_add_epi16(
                                hi[c],
                                _mm256_maddubs_epi16(qh, bcast4(av.add(32))),
                            );
                        }
                    }
                    for c in 0..C {
                        let x = _mm256_madd_epi16(lo[c], s_lo);
                        let y = _mm256_madd_epi16(hi[c], s_hi);
                        tot[c] = _mm256_add_epi32(tot[c], _mm256_add_epi32(x, y));
                    }
                }
                finish(sb, &a, &tot, &mins, &mut acc, 1.0);
            }
        }
        // SAFETY: forwarded.
        unsafe { store(&acc, out, out_stride) };
    }

    /// `lo` and `hi` as the two halves of a zmm.
    ///
    /// # Safety
    /// AVX-512 F.
    #[inline(always)]
    unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
        // SAFETY: register-only; the caller's CPU.
        unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi) }
    }

    /// As [`vnni_body`] for several columns, on 512-bit registers, for two groups at once
    /// (the second `w_stride` bytes after the first): lanes 0..8 are the first group's rows,
    /// 8..16 the second's, so one `vpdpbusd` against the same broadcast activation bytes
    /// does the work of two 256-bit ones. Every row's integer sums are those of
    /// `vnni_body` (exact, whatever the order) and its f32 operations are those of
    /// [`finish`], in the same order, so a row gets the same bits as from the 8-row tile
    /// (batch invariance).
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
        let m4 = _mm512_set1_epi8(0x0F);
        let mf0 = _mm512_set1_epi8(0xF0u8 as i8);
        // SAFETY: the output extent is the caller's contract.
        let mut acc = unsafe { load_acc16::<C, ADD>(out, out_stride) };
        for b in 0..nsb {
            // SAFETY: b < nsb keeps every pointer below inside its super-block (of either
            // group) or Q8_K block.
            unsafe {
                let sb = w.add(b * SB);
                let a: [*const u8; C] = std::array::from_fn(|c| act.add(c * act_stride + b * ACT));
                let (sc0, sc1) = (scales(sb), scales(sb.add(w_stride)));
                let mut tot = [_mm512_setzero_si512(); C];
                for p in 0..4 {
                    let (from, to) = (p * SB / 4, (p + 1) * SB / 4);
                    prefetch_ahead::<C>(sb, from, to);
                    prefetch_ahead::<C>(sb.wrapping_add(w_stride), from, to);
                    let mut lo = [_mm512_setzero_si512(); C];
                    let mut hi = [_mm512_setzero_si512(); C];
                    for t in 0..8 {
                        let v = load2(sb.add(CODES + 256 * p + 32 * t), w_stride);
                        let (ql, qh) = (_mm512_and_si512(v, m4), _mm512_and_si512(v, mf0));
                        for c in 0..C {
                            let av = a[c].add(4 + 64 * p + 4 * t);
                            let (al, ah) = (bcast16(av), bcast16(av.add(32)));
                            lo[c] = _mm512_dpbusd_epi32(lo[c], ql, al);
                            hi[c] = _mm512_dpbusd_epi32(hi[c], qh, ah);
                        }
                    }
                    // The high nibbles' sums are 16·Σ q·a: scale the low ones' by 16 too
                    // (as `vnni_body` does for several columns; `finish` divides by 16).
                    let s_lo = _mm512_slli_epi32(join(sc0.s[2 * p], sc1.s[2 * p]), 4);
                    let s_hi = join(sc0.s[2 * p + 1], sc1.s[2 * p + 1]);
                    for c in 0..C {
                        let x = _mm512_mullo_epi32(lo[c], s_lo);
                        let y = _mm512_mullo_epi32(hi[c], s_hi);
                        tot[c] = _mm512_add_epi32(tot[c], _mm512_add_epi32(x, y));
                    }
                }
                let m: [__m512i; 4] = std::array::from_fn(|p| join(sc0.m[p], sc1.m[p]));
                let mut mins = [_mm512_setzero_si512(); C];
                for c in 0..C {
                    let bs = bsum_pairs(a[c]);
                    for p in 0..4 {
                        // The pair is the same in every lane: widening is a broadcast.
                        let bs = _mm512_broadcast_i64x4(bs[p]);
                        mins[c] = _mm512_add_epi32(mins[c], _mm512_madd_epi16(m[p], bs));
                    }
                }
                // `finish` for 16 rows: the same operations, lane by lane.
                let f16x16 = |o: usize| {
                    let lo = _mm_loadu_si128(sb.add(o) as *const __m128i);
                    let hi = _mm_loadu_si128(sb.add(w_stride + o) as *const __m128i);
                    _mm512_cvtph_ps(_mm256_set_m128i(hi, lo))
                };
                let d = _mm512_mul_ps(f16x16(0), _mm512_set1_ps(1.0 / 16.0));
                let dmin = f16x16(DMIN);
                for c in 0..C {
                    let da = _mm512_set1_ps((a[c] as *const f32).read_unaligned());
                    let (t, m) = (_mm512_cvtepi32_ps(tot[c]), _mm512_cvtepi32_ps(mins[c]));
                    let x = _mm512_fmsub_ps(t, d, _mm512_mul_ps(m, dmin));
                    acc[c] = _mm512_fmadd_ps(x, da, acc[c]);
                }
            }
        }
        // SAFETY: the output extent is the caller's contract.
        unsafe { store16(&acc, out, out_stride) };
    }

    /// Reads 4 activation bytes as one i32 and broadcasts them to the 16 lanes.
    ///
    /// # Safety
    /// `p..p + 4` must be readable; AVX-512 F.
    #[inline(always)]
    unsafe fn bcast16(p: *const u8) -> __m512i {
        // SAFETY: forwarded.
        unsafe { _mm512_set1_epi32((p as *const i32).read_unaligned()) }
    }

    super::super::tiles::vnni_tiles!(vnni_body, avx2);
    super::super::tiles::tile_fn!(tile_avx2, avx2);
    super::super::tiles::pair_tile_fn!(tile_vnni_pair, vnni_pair);
}

#[cfg(target_arch = "aarch64")]
mod arm {
    //! The dot-product kernel. Code vector `(p, t)` is 32 bytes: rows 0..4 in the first 16,
    //! rows 4..8 in the second, 4 bytes per row; its low nibbles are values `64p + 4t..`
    //! (sub-block `2p`), its high nibbles values `64p + 32 + 4t..` (sub-block `2p + 1`). One
    //! `sdot` by element against the activation's matching 4-byte group advances 4 rows'
    //! sums; each sub-block's sum is multiplied by the row's scale in i32 and the
    //! super-block converts to f32 once (see the module doc for the sizes).

    // The kernels index several per-column arrays with the same column index.
    #![allow(clippy::needless_range_loop)]

    use super::super::mmla::{
        kquant_tile, load_pairs, row_pairs_f16, row_pairs_i16, store_pairs, KPAIR_BLOCK,
        KPAIR_BSUMS, KPAIR_D,
    };
    use super::super::neon::{f16x8_to_f32, load_acc, sdot_lane, store, usmmla};
    use super::{ACT, CODES, DMIN, SB, SCALES};
    use std::arch::aarch64::*;

    /// Columns per tile: the sums of one sub-block pair take 4 registers per column.
    pub(super) const DOT_COLS: usize = 4;

    /// The 6-bit scales and mins of the 8 rows of a super-block, as bytes: `s[j]` holds
    /// sub-blocks `2j`, `2j + 1` (8 rows each), likewise `m[j]` (`kquants::get_scale_min_k4`).
    ///
    /// Safety: `sb` points at a packed super-block.
    #[inline(always)]
    unsafe fn scales_mins(sb: *const u8) -> ([uint8x16_t; 4], [uint8x16_t; 4]) {
        // SAFETY: the 96 scale bytes of the super-block (caller).
        unsafe {
            // x[i] = stored bytes 2i, 2i + 1 of the 8 rows.
            let x: [uint8x16_t; 6] = std::array::from_fn(|i| vld1q_u8(sb.add(SCALES + 16 * i)));
            let m63 = vdupq_n_u8(63);
            let m15 = vdupq_n_u8(15);
            let top = |v: uint8x16_t| vshlq_n_u8::<4>(vshrq_n_u8::<6>(v));
            let s = [
                vandq_u8(x[0], m63),
                vandq_u8(x[1], m63),
                vorrq_u8(vandq_u8(x[4], m15), top(x[0])),
                vorrq_u8(vandq_u8(x[5], m15), top(x[1])),
            ];
            let m = [
                vandq_u8(x[2], m63),
                vandq_u8(x[3], m63),
                vorrq_u8(vshrq_n_u8::<4>(x[4]), top(x[2])),
                vorrq_u8(vshrq_n_u8::<4>(x[5]), top(x[3])),
            ];
            (s, m)
        }
    }

    /// Bytes 0..8 (`HI` false) or 8..16 of `v` as 8 i32 in two registers (rows 0..4, 4..8).
    #[inline(always)]
    fn widen<const HI: bool>(v: uint8x16_t) -> [int32x4_t; 2] {
        // SAFETY: register-only NEON arithmetic.
        unsafe {
            let h = if HI {
                vmovl_high_u8(v)
            } else {
                vmovl_u8(vget_low_u8(v))
            };
            let h = vreinterpretq_s16_u16(h);
            [vmovl_s16(vget_low_s16(h)), vmovl_high_s16(h)]
        }
    }

    /// Four code vectors `t = T..T + 4` of pair `p` against activation groups `T % 4..` of
    /// the 16-byte registers `alo` / `ahi` (sub-blocks `2p` / `2p + 1`).
    ///
    /// Safety: dot-product CPU; the pair's code bytes at `codes`.
    #[inline(always)]
    unsafe fn quarter<const C: usize>(
        codes: *const u8,
        alo: &[int8x16_t; C],
        ahi: &[int8x16_t; C],
        lo: &mut [[int32x4_t; 2]; C],
        hi: &mut [[int32x4_t; 2]; C],
    ) {
        macro_rules! step {
            ($lane:literal) => {{
                // SAFETY: 32 code bytes at `codes + 32·lane` (caller).
                let (v0, v1) = unsafe {
                    (
                        vld1q_u8(codes.add(32 * $lane)),
                        vld1q_u8(codes.add(32 * $lane + 16)),
                    )
                };
                let m15 = vdupq_n_u8(15);
                let l0 = vreinterpretq_s8_u8(vandq_u8(v0, m15));
                let l1 = vreinterpretq_s8_u8(vandq_u8(v1, m15));
                let h0 = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v0));
                let h1 = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v1));
                for c in 0..C {
                    // SAFETY: the caller's CPU has the dot product.
                    unsafe {
                        lo[c][0] = sdot_lane::<$lane>(lo[c][0], l0, alo[c]);
                        lo[c][1] = sdot_lane::<$lane>(lo[c][1], l1, alo[c]);
                        hi[c][0] = sdot_lane::<$lane>(hi[c][0], h0, ahi[c]);
                        hi[c][1] = sdot_lane::<$lane>(hi[c][1], h1, ahi[c]);
                    }
                }
            }};
        }
        step!(0);
        step!(1);
        step!(2);
        step!(3);
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
                let sb = w.add(b * SB);
                let a: [*const u8; C] = std::array::from_fn(|c| act.add(c * act_stride + b * ACT));
                let (s, m) = scales_mins(sb);
                let mut tot = [[vdupq_n_s32(0); 2]; C];
                let mut mins = [[vdupq_n_s32(0); 2]; C];
                for p in 0..4 {
                    let mut lo = [[vdupq_n_s32(0); 2]; C];
                    let mut hi = [[vdupq_n_s32(0); 2]; C];
                    let codes = sb.add(CODES + 256 * p);
                    for half in 0..2 {
                        let alo: [int8x16_t; C] = std::array::from_fn(|c| {
                            vld1q_s8(a[c].add(4 + 64 * p + 16 * half) as *const i8)
                        });
                        let ahi: [int8x16_t; C] = std::array::from_fn(|c| {
                            vld1q_s8(a[c].add(4 + 64 * p + 32 + 16 * half) as *const i8)
                        });
                        quarter::<C>(codes.add(128 * half), &alo, &ahi, &mut lo, &mut hi);
                    }
                    // s[p] / m[p]: bytes 0..8 sub-block 2p, bytes 8..16 sub-block 2p + 1.
                    let (s_lo, s_hi) = (widen::<false>(s[p]), widen::<true>(s[p]));
                    let (m_lo, m_hi) = (widen::<false>(m[p]), widen::<true>(m[p]));
                    for c in 0..C {
                        // Σ of the activations over sub-blocks 2p and 2p + 1 (Q8_K keeps
                        // one i16 per 16 values at byte 260).
                        let bs = |k: usize| {
                            (a[c].add(260 + 2 * k) as *const i16).read_unaligned() as i32
                        };
                        let (b_lo, b_hi) =
                            (bs(4 * p) + bs(4 * p + 1), bs(4 * p + 2) + bs(4 * p + 3));
                        for h in 0..2 {
                            tot[c][h] = vmlaq_s32(tot[c][h], lo[c][h], s_lo[h]);
                            tot[c][h] = vmlaq_s32(tot[c][h], hi[c][h], s_hi[h]);
                            mins[c][h] = vmlaq_n_s32(mins[c][h], m_lo[h], b_lo);
                            mins[c][h] = vmlaq_n_s32(mins[c][h], m_hi[h], b_hi);
                        }
                    }
                }
                // acc += d_a·(d·Σ s·(q·a) − dmin·Σ m·bsum), per row.
                let d = f16x8_to_f32(sb);
                let dmin = f16x8_to_f32(sb.add(DMIN));
                for c in 0..C {
                    let da = vld1q_dup_f32(a[c] as *const f32);
                    for h in 0..2 {
                        let x = vfmaq_f32(acc[c][h], vcvtq_f32_s32(tot[c][h]), vmulq_f32(d[h], da));
                        acc[c][h] = vfmsq_f32(x, vcvtq_f32_s32(mins[c][h]), vmulq_f32(dmin[h], da));
                    }
                }
            }
        }
        // SAFETY: forwarded.
        unsafe { store(&acc, out, out_stride) };
    }
    super::super::tiles::tile_fn!(tile_dot, k_dot);

    /// The i8mm kernel (`packed::mmla`): rows `4h..4h + 4` of the group against `P` column
    /// pairs (Q8_K pair blocks, `pair_stride` bytes apart), then the other half. Zipping the
    /// 32-bit lanes of code vectors `(c, 2g)` and `(c, 2g + 1)` (their 16-byte halves `h`)
    /// gives a row pair's stored bytes `8g..8g + 8` of sub-block pair `c`: values `8g..` of
    /// sub-block `2c` in the low nibbles, of `2c + 1` in the high ones. Each sub-block's
    /// 2 × 2 sums are multiplied by the rows' scales in i32, the mins term comes from the
    /// pairs' block sums, and the super-block converts to f32 as `k_dot` does (the same
    /// integers, the same float operations: the same bits).
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
        let m15 = vdupq_n_u8(15);
        for h in 0..2 {
            // SAFETY: the output extent is the caller's contract.
            let mut acc = unsafe { load_pairs::<P, ADD>(out, out_stride, ncols, h) };
            for b in 0..nsb {
                // SAFETY: b < nsb keeps every pointer inside its super-block / pair block.
                unsafe {
                    let sb = w.add(b * SB);
                    let ab: [*const u8; P] =
                        std::array::from_fn(|p| pairs.add(p * pair_stride + b * KPAIR_BLOCK));
                    let (s, m) = scales_mins(sb);
                    let mut tot = [[vdupq_n_s32(0); 2]; P];
                    for c in 0..4 {
                        let codes = sb.add(CODES + 256 * c + 16 * h);
                        // Operands of sub-block 2c + sub, value groups g < 4, row pairs q.
                        let operands = |sub: usize| -> [[uint8x16_t; 2]; 4] {
                            std::array::from_fn(|g| {
                                let x = vld1q_u32(codes.add(64 * g) as *const u32);
                                let y = vld1q_u32(codes.add(64 * g + 32) as *const u32);
                                let pair = [vzip1q_u32(x, y), vzip2q_u32(x, y)];
                                pair.map(|v| {
                                    let v = vreinterpretq_u8_u32(v);
                                    if sub == 0 {
                                        vandq_u8(v, m15)
                                    } else {
                                        vshrq_n_u8::<4>(v)
                                    }
                                })
                            })
                        };
                        for sub in 0..2 {
                            let wq = operands(sub);
                            let sc = if sub == 0 {
                                row_pairs_i16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(s[c]))), h)
                            } else {
                                row_pairs_i16(vreinterpretq_s16_u16(vmovl_high_u8(s[c])), h)
                            };
                            for p in 0..P {
                                let a: [int8x16_t; 4] = std::array::from_fn(|g| {
                                    vld1q_s8(ab[p].add(16 * (8 * c + 4 * sub + g)) as *const i8)
                                });
                                for q in 0..2 {
                                    let mut x = vdupq_n_s32(0);
                                    for g in 0..4 {
                                        x = usmmla(x, wq[g][q], a[g]);
                                    }
                                    tot[p][q] = vmlaq_s32(tot[p][q], x, sc[q]);
                                }
                            }
                        }
                    }
                    // Σ_j m_j · bsum_j over the 32-value sub-blocks.
                    let mut mins = [[vdupq_n_s32(0); 2]; P];
                    for c in 0..4 {
                        let (m_lo, m_hi) = (
                            row_pairs_i16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(m[c]))), h),
                            row_pairs_i16(vreinterpretq_s16_u16(vmovl_high_u8(m[c])), h),
                        );
                        for p in 0..P {
                            // The pairs' sums over sub-blocks 2c and 2c + 1.
                            let bs =
                                |j: usize| vld1q_s32(ab[p].add(KPAIR_BSUMS + 16 * j) as *const i32);
                            let (b_lo, b_hi) = (bs(2 * c), bs(2 * c + 1));
                            for q in 0..2 {
                                mins[p][q] = vmlaq_s32(mins[p][q], m_lo[q], b_lo);
                                mins[p][q] = vmlaq_s32(mins[p][q], m_hi[q], b_hi);
                            }
                        }
                    }
                    // acc += d_a·(d·Σ s·(q·a) − dmin·Σ m·bsum), as in `k_dot`.
                    let d = row_pairs_f16(sb, h);
                    let dmin = row_pairs_f16(sb.add(DMIN), h);
                    for p in 0..P {
                        let da = vld1q_f32(ab[p].add(KPAIR_D) as *const f32);
                        for q in 0..2 {
                            let x =
                                vfmaq_f32(acc[p][q], vcvtq_f32_s32(tot[p][q]), vmulq_f32(d[q], da));
                            acc[p][q] =
                                vfmsq_f32(x, vcvtq_f32_s32(mins[p][q]), vmulq_f32(dmin[q], da));
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
