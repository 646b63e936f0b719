//! The K-quant formats: super-blocks of 256 values split into sub-blocks, each with a small
//! integer scale (and min) that is itself quantized against one f16 super-scale.
//!
//! - Q2_K (16 × 16, 2-bit codes, 4-bit scale + 4-bit min), Q3_K (16 × 16, 3-bit codes,
//!   6-bit signed scales), Q4_K (8 × 32, 4-bit, 6-bit scale + 6-bit min),
//!   Q5_K (8 × 32, 5-bit, as Q4_K), Q6_K (16 × 16, 6-bit, 8-bit signed scales);
//! - Q8_K: the activation-side format (f32 scale, int8 codes, per-16 sums).
//!
//! Quantization copies ggml's `quantize_row_*_ref` (the path llama-quantize takes without an
//! importance matrix) operation for operation, in f32 and in the same order, because the
//! iterative scale searches compare float errors and any reordering can flip a choice:
//! - every integer rounding is [`nearest_int`] (round half to even);
//! - the sub-block scales are searched with the full-precision floats, then quantized to
//!   6/8 bits against the super-scale, and finally every value is re-quantized with the
//!   *stored* (f16 × integer) scale and min.
//!
//! (The team notes mention a Q5_K "Σx² accumulated twice" quirk. In the ggml this was
//! checked against (ggml-org/ggml d99724f, 2026-08) no such thing exists in the reference
//! path: `quantize_row_q5_K_ref` weights each value by `sqrt(Σx²/32) + |x|` per sub-block,
//! exactly like Q4_K. Only the importance-matrix paths `quantize_row_q{4,5}_K_impl` use a
//! doubled `sqrt(2·Σx²/256)` over the whole super-block, and llama-quantize takes those
//! only with `--imatrix`. The ggml-generated fixtures confirm the single sum; the doubled
//! one fails them.)

use crate::block::{read_array, read_i8_array, read_u16, write_i8_slice, write_u16, Block};
use crate::float::{f16_to_f32, f32_to_f16};
use crate::rounding::nearest_int;

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes of the packed 6-bit scales and mins of Q4_K/Q5_K (and of Q3_K's scales).
pub const K_SCALE_SIZE: usize = 12;
/// ggml's `GROUP_MAX_EPS`: groups whose largest magnitude is below this are all-zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

// ----------------------------------------------------------------------------- helpers

/// The value of largest magnitude with its sign (first one on ties), and that magnitude.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// ggml's `make_qkx2_quants`: fits `x ≈ scale * L - min_out` with codes `L` in `0..=nmax`,
/// scale >= 0 and min_out >= 0, minimising the `weights`-weighted squared (or, with
/// `use_mad`, absolute) error.
///
/// Starts from the min/max range (min clipped to <= 0), then tries `nstep + 1` inverse
/// scales `(nmax + rmin + rdelta·i) / (max - min)`; for each it rounds the codes and solves
/// the weighted least-squares problem for (scale, min) in closed form, keeping the best.
/// Returns `(scale, min_out)`; writes the codes into `l`.
///
/// The importance-matrix quantizers call ggml's `make_qkx3_quants` instead; with explicit
/// weights it is this function (its `max <= min` early exit can only trigger when
/// `max == min`, since `min` is clipped to <= 0 after `max >= min` held), so
/// [`crate::weighted`] reuses this one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let error_of = |diff: f32| if use_mad { diff.abs() } else { diff * diff };

    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * error_of(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }

    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let w = weights[i];
            let q = q as f32;
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                // The optimum wants a positive offset, which the format cannot store.
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * error_of(diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qx_quants` with `rmse_type = 1` (the only type the reference and weighted
/// quantizers use): symmetric codes `L` in `0..2·nmax` (stored with +nmax offset) for
/// `x ≈ scale * (L - nmax)`, weighted by `qw` or, without it, by `x²`. Tries the inverse
/// scale `-nmax/max` and 18 perturbations `-(nmax + 0.1·k)/max`, keeping the weighted
/// least-squares best.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Σ w·x·l and Σ w·l² for codes at `iscale`, in ggml's operation order.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for (i, &v) in x.iter().enumerate() {
            let q = code(iscale, v) as f32;
            let w = match qw {
                Some(qw) => qw[i],
                None => v * v,
            };
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let set_codes = |iscale: f32, l: &mut [i8]| {
        for (li, &v) in l.iter_mut().zip(x) {
            *li = (code(iscale, v) + nmax) as i8;
        }
    };

    let iscale = -(nmax as f32) / max;
    set_codes(iscale, l);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            set_codes(iscale, l);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse = true` (Q3_K): symmetric codes in `-nmax..nmax`
/// (returned with +nmax offset), weights `x²`, refined by up to 5 passes of coordinate
/// descent on the least-squares objective.
fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (li, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *li = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let cur = *li as f32;
            let mut slx = sumlx - w * v * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for li in l.iter_mut() {
        *li += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) of Q4_K/Q5_K (`get_scale_min_k4`).
///
/// Bytes 0..4 hold scales 0..3 in their low 6 bits, bytes 4..8 mins 0..3; scales and mins
/// 4..7 keep their low 4 bits in bytes 8..12 (scale low nibble, min high nibble) and their
/// top 2 bits in the top 2 bits of bytes 0..4 (scales) and 4..8 (mins).
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc, m)
    }
}

/// The inverse of [`get_scale_min_k4`] for all 8 sub-blocks. Codes are < 64 in practice;
/// a larger one (possible only in ggml's weighted Q4_K, which does not cap them) is packed as
/// the C code packs it: the bits shifted out of a byte are dropped.
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut q = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

/// The shared scale search of Q4_K and Q5_K (`quantize_row_q{4,5}_K_ref` up to packing):
/// returns the stored d, dmin, packed scales, and the final codes (0..=nmax) of all 256
/// values.
fn quantize_k_scale_min(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> (u16, u16, [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut codes = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut max_scale = 0.0f32; // scales are >= 0, the min being subtracted
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        // Importance of each value: the sub-block RMS plus its own magnitude.
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + xs[l].abs());
        let (scale, min) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut codes[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    // 6-bit codes for the scales and mins, relative to the largest of each.
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // `uint8_t ls = nearest_int(...)` wraps a negative int before `MIN(63, ls)`.
    let ls: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);

    requantize_with_stored_scales(x, &packed, d, dmin, nmax, &mut codes);
    (d, dmin, packed, codes)
}

/// Re-quantizes every value of a Q4_K / Q5_K super-block with its sub-blocks' scales and mins
/// as stored (`d`, `dmin` and the packed 6-bit fields). A sub-block whose stored scale is 0
/// keeps the codes it has (the search's, as ggml does).
pub(crate) fn requantize_with_stored_scales(
    x: &[f32],
    packed: &[u8; K_SCALE_SIZE],
    d: u16,
    dmin: u16,
    nmax: i32,
    codes: &mut [u8; QK_K],
) {
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, packed);
        let dj = f16_to_f32(d) * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dmin) * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dj).clamp(0, nmax);
            codes[32 * j + ii] = q as u8;
        }
    }
}

// ----------------------------------------------------------------------------- Q2_K

/// Q2_K: 16 sub-blocks of 16, `x = d·(sc & 15)·q − dmin·(sc >> 4)`, q in 0..=3. 84 bytes.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 16 | `scales`: per sub-block, scale (low nibble) and min (high nibble) |
/// | 16 | 64 | `qs`: for each 128-half h, byte `32h + l` holds elements `128h + l + 32k` in bits `2k..2k+2` |
/// | 80 | 2 | `d` (f16) |
/// | 82 | 2 | `dmin` (f16) |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: u16,
    pub dmin: u16,
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

/// Packs 2-bit codes (Q2_K's and Q3_K's low bits): byte `32h + l` of the output holds codes
/// `128h + l`, `+32`, `+64`, `+96` in bit pairs 0, 2, 4, 6.
pub(crate) fn pack_2bit(codes: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for h in 0..2 {
        let c = &codes[128 * h..];
        for l in 0..32 {
            qs[32 * h + l] = c[l] | (c[l + 32] << 2) | (c[l + 64] << 4) | (c[l + 96] << 6);
        }
    }
    qs
}

impl Block for BlockQ2K {
    const ELEMENTS: usize = QK_K;
    const BYTES: usize = 84;

    fn read(b: &[u8]) -> Self {
        BlockQ2K {
            scales: read_array(b, 0),
            qs: read_array(b, 16),
            d: read_u16(b, 80),
            dmin: read_u16(b, 82),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0..16].copy_from_slice(&self.scales);
        b[16..80].copy_from_slice(&self.qs);
        write_u16(b, 80, self.d);
        write_u16(b, 82, self.dmin);
    }

    /// `quantize_row_q2_K_ref`: per 16 values `make_qkx2_quants(nmax 3, weights |x|,
    /// rmin -0.5, rdelta 0.1, 15 steps, absolute error)`, 4-bit scale and min codes against
    /// the largest of each, then re-quantization with the stored values.
    fn quantize(x: &[f32]) -> Self {
        const Q4SCALE: f32 = 15.0;
        let mut codes = [0u8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut mins = [0.0f32; 16];
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let weights: [f32; 16] = std::array::from_fn(|l| xs[l].abs());
            let (scale, min) = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut codes[16 * j..16 * j + 16],
                -0.5,
                0.1,
                15,
                true,
            );
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }

        let mut sc = [0u8; 16];
        let d = if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            f32_to_f16(max_scale / Q4SCALE)
        } else {
            f32_to_f16(0.0)
        };
        let dmin = if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..16 {
                sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            f32_to_f16(max_min / Q4SCALE)
        } else {
            f32_to_f16(0.0)
        };

        for j in 0..16 {
            let dj = f16_to_f32(d) * (sc[j] & 0x0F) as f32;
            if dj == 0.0 {
                continue;
            }
            let dm = f16_to_f32(dmin) * (sc[j] >> 4) as f32;
            for ii in 0..16 {
                codes[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dj).clamp(0, 3) as u8;
            }
        }
        BlockQ2K {
            scales: sc,
            qs: pack_2bit(&codes),
            d,
            dmin,
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        let mut is = 0;
        for h in 0..2 {
            let q = &self.qs[32 * h..32 * h + 32];
            for shift_idx in 0..4 {
                let shift = 2 * shift_idx;
                let out = &mut y[128 * h + 32 * shift_idx..];
                for half in 0..2 {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * (sc & 0x0F) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        let code = (q[16 * half + l] >> shift) & 3;
                        out[16 * half + l] = dl * code as f32 - ml;
                    }
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------- Q3_K

/// Q3_K: 16 sub-blocks of 16, `x = d·(sc − 32)·(q − 4)`, q in 0..=7. 110 bytes.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 32 | `hmask`: bit 2 of the codes; element `i` uses bit `i / 32` of byte `i % 32` |
/// | 32 | 64 | `qs`: low 2 bits, packed like Q2_K |
/// | 96 | 12 | `scales`: 16 six-bit codes (low nibbles in bytes 0..8, top 2 bits in 8..12) |
/// | 108 | 2 | `d` (f16) |
///
/// A set `hmask` bit means code = low bits + 4 (so the value is low bits − 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; K_SCALE_SIZE],
    pub d: u16,
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

impl BlockQ3K {
    /// Assembles a block from its final codes (0..=7), packed scales and f16 `d`.
    pub(crate) fn from_codes(codes: &[i8; QK_K], scales: [u8; K_SCALE_SIZE], d: u16) -> Self {
        // Bit 2 of each code goes to hmask: the first 32 elements use bit 0, the next 32
        // bit 1, and so on; the low 2 bits are packed like Q2_K.
        let mut hmask = [0u8; QK_K / 8];
        let mut low = [0u8; QK_K];
        for (i, &c) in codes.iter().enumerate() {
            let mut c = c as u8;
            if c > 3 {
                hmask[i % 32] |= 1 << (i / 32);
                c -= 4;
            }
            low[i] = c;
        }
        BlockQ3K {
            hmask,
            qs: pack_2bit(&low),
            scales,
            d,
        }
    }
}

/// The signed 6-bit scale of Q3_K sub-block `j` (0..16), i.e. `sc − 32`.
pub(crate) fn q3k_scale(scales: &[u8; K_SCALE_SIZE], j: usize) -> i32 {
    let low = if j < 8 {
        scales[j] & 0x0F
    } else {
        scales[j - 8] >> 4
    };
    let high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

impl Block for BlockQ3K {
    const ELEMENTS: usize = QK_K;
    const BYTES: usize = 110;

    fn read(b: &[u8]) -> Self {
        BlockQ3K {
            hmask: read_array(b, 0),
            qs: read_array(b, 32),
            scales: read_array(b, 96),
            d: read_u16(b, 108),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0..32].copy_from_slice(&self.hmask);
        b[32..96].copy_from_slice(&self.qs);
        b[96..108].copy_from_slice(&self.scales);
        write_u16(b, 108, self.d);
    }

    /// `quantize_row_q3_K_ref`: per 16 values `make_q3_quants(nmax 4, rmse)`, 6-bit signed
    /// scale codes against the scale of largest magnitude, re-quantization with the stored
    /// scales.
    fn quantize(x: &[f32]) -> Self {
        let mut codes = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut codes[16 * j..16 * j + 16]);
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }

        let mut sc = [0u8; K_SCALE_SIZE];
        let d = if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                // `int8_t l = nearest_int(...)` truncates to 8 bits before the clamp.
                let l = ((nearest_int(iscale * scales[j]) as i8 as i32).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    sc[j] = l & 0x0F;
                } else {
                    sc[j - 8] |= (l & 0x0F) << 4;
                }
                sc[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
            }
            f32_to_f16(1.0 / iscale)
        } else {
            f32_to_f16(0.0)
        };

        for j in 0..16 {
            let dj = f16_to_f32(d) * q3k_scale(&sc, j) as f32;
            if dj == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / dj).clamp(-4, 3);
                codes[16 * j + ii] = (q + 4) as i8;
            }
        }

        BlockQ3K::from_codes(&codes, sc, d)
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d_all = f16_to_f32(self.d);
        let mut is = 0;
        for h in 0..2 {
            let q = &self.qs[32 * h..32 * h + 32];
            for shift_idx in 0..4 {
                let shift = 2 * shift_idx;
                let mask = 1u8 << (4 * h + shift_idx);
                let out = &mut y[128 * h + 32 * shift_idx..];
                for half in 0..2 {
                    let dl = d_all * q3k_scale(&self.scales, is) as f32;
                    is += 1;
                    for l in 0..16 {
                        let i = 16 * half + l;
                        let low = ((q[i] >> shift) & 3) as i32;
                        let offset = if self.hmask[i] & mask != 0 { 0 } else { 4 };
                        out[i] = dl * (low - offset) as f32;
                    }
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------- Q4_K

/// Q4_K: 8 sub-blocks of 32, `x = d·sc·q − dmin·m`, q in 0..=15. 144 bytes.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 2 | `d` (f16): scale of the sub-block scales |
/// | 2 | 2 | `dmin` (f16): scale of the sub-block mins |
/// | 4 | 12 | `scales`: 8 six-bit scales + 8 six-bit mins ([`get_scale_min_k4`]) |
/// | 16 | 128 | `qs`: byte `32c + l` = element `64c + l` (low nibble) \| element `64c + 32 + l` (high) |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

impl BlockQ4K {
    /// Assembles a block from its final codes (0..=15), f16 `d`/`dmin` and packed scales.
    pub(crate) fn from_codes(
        codes: &[u8; QK_K],
        d: u16,
        dmin: u16,
        scales: [u8; K_SCALE_SIZE],
    ) -> Self {
        let mut qs = [0u8; QK_K / 2];
        for c in 0..4 {
            for l in 0..32 {
                qs[32 * c + l] = codes[64 * c + l] | (codes[64 * c + 32 + l] << 4);
            }
        }
        BlockQ4K {
            d,
            dmin,
            scales,
            qs,
        }
    }
}

impl Block for BlockQ4K {
    const ELEMENTS: usize = QK_K;
    const BYTES: usize = 144;

    fn read(b: &[u8]) -> Self {
        BlockQ4K {
            d: read_u16(b, 0),
            dmin: read_u16(b, 2),
            scales: read_array(b, 4),
            qs: read_array(b, 16),
        }
    }

    fn write(&self, b: &mut [u8]) {
        write_u16(b, 0, self.d);
        write_u16(b, 2, self.dmin);
        b[4..16].copy_from_slice(&self.scales);
        b[16..144].copy_from_slice(&self.qs);
    }

    /// `quantize_row_q4_K_ref`: per 32 values `make_qkx2_quants(nmax 15, weights
    /// rms + |x|, rmin -1, rdelta 0.1, 20 steps)`.
    fn quantize(x: &[f32]) -> Self {
        let (d, dmin, scales, codes) = quantize_k_scale_min(x, 15, -1.0, 20);
        BlockQ4K::from_codes(&codes, d, dmin, scales)
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        for c in 0..4 {
            let (sc1, m1) = get_scale_min_k4(2 * c, &self.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let q = &self.qs[32 * c..32 * c + 32];
            for l in 0..32 {
                y[64 * c + l] = d1 * (q[l] & 0x0F) as f32 - m1;
                y[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

// ----------------------------------------------------------------------------- Q5_K

/// Q5_K: 8 sub-blocks of 32, `x = d·sc·q − dmin·m`, q in 0..=31. 176 bytes.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 2 | `d` (f16) |
/// | 2 | 2 | `dmin` (f16) |
/// | 4 | 12 | `scales` (as Q4_K) |
/// | 16 | 32 | `qh`: element `64c + l` takes bit 4 from bit `2c` of `qh[l]`, element `64c + 32 + l` from bit `2c + 1` |
/// | 48 | 128 | `qs`: low 4 bits, as Q4_K |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

impl BlockQ5K {
    /// Assembles a block from its final codes (0..=31), f16 `d`/`dmin` and packed scales.
    pub(crate) fn from_codes(
        codes: &[u8; QK_K],
        d: u16,
        dmin: u16,
        scales: [u8; K_SCALE_SIZE],
    ) -> Self {
        let mut qh = [0u8; QK_K / 8];
        let mut qs = [0u8; QK_K / 2];
        for c in 0..4 {
            for j in 0..32 {
                let mut lo = codes[64 * c + j];
                if lo > 15 {
                    lo -= 16;
                    qh[j] |= 1 << (2 * c);
                }
                let mut hi = codes[64 * c + 32 + j];
                if hi > 15 {
                    hi -= 16;
                    qh[j] |= 2 << (2 * c);
                }
                qs[32 * c + j] = lo | (hi << 4);
            }
        }
        BlockQ5K {
            d,
            dmin,
            scales,
            qh,
            qs,
        }
    }
}

impl Block for BlockQ5K {
    const ELEMENTS: usize = QK_K;
    const BYTES: usize = 176;

    fn read(b: &[u8]) -> Self {
        BlockQ5K {
            d: read_u16(b, 0),
            dmin: read_u16(b, 2),
            scales: read_array(b, 4),
            qh: read_array(b, 16),
            qs: read_array(b, 48),
        }
    }

    fn write(&self, b: &mut [u8]) {
        write_u16(b, 0, self.d);
        write_u16(b, 2, self.dmin);
        b[4..16].copy_from_slice(&self.scales);
        b[16..48].copy_from_slice(&self.qh);
        b[48..176].copy_from_slice(&self.qs);
    }

    /// `quantize_row_q5_K_ref`: as Q4_K with nmax 31, rmin -0.5, 15 steps.
    fn quantize(x: &[f32]) -> Self {
        let (d, dmin, scales, codes) = quantize_k_scale_min(x, 31, -0.5, 15);
        BlockQ5K::from_codes(&codes, d, dmin, scales)
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        for c in 0..4 {
            let (sc1, m1) = get_scale_min_k4(2 * c, &self.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            let ql = &self.qs[32 * c..32 * c + 32];
            for l in 0..32 {
                let hi1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let hi2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                y[64 * c + l] = d1 * ((ql[l] & 0x0F) + hi1) as f32 - m1;
                y[64 * c + 32 + l] = d2 * ((ql[l] >> 4) + hi2) as f32 - m2;
            }
        }
    }
}

// ----------------------------------------------------------------------------- Q6_K

/// Q6_K: 16 sub-blocks of 16, `x = d·sc·(q − 32)`, q in 0..=63, sc int8. 210 bytes.
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 128 | `ql`: low 4 bits |
/// | 128 | 64 | `qh`: high 2 bits |
/// | 192 | 16 | `scales` (i8) |
/// | 208 | 2 | `d` (f16) |
///
/// For each 128-half h (ql + 64h, qh + 32h) and l in 0..32: element `128h + l` =
/// `ql[l] & 15 | (qh[l] & 3) << 4`; `+32` = `ql[l+32] & 15 | (qh[l] >> 2 & 3) << 4`;
/// `+64` = `ql[l] >> 4 | (qh[l] >> 4 & 3) << 4`; `+96` = `ql[l+32] >> 4 | (qh[l] >> 6) << 4`.
/// Element i uses scale `i / 16`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: u16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

impl Block for BlockQ6K {
    const ELEMENTS: usize = QK_K;
    const BYTES: usize = 210;

    fn read(b: &[u8]) -> Self {
        BlockQ6K {
            ql: read_array(b, 0),
            qh: read_array(b, 128),
            scales: read_i8_array(b, 192),
            d: read_u16(b, 208),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0..128].copy_from_slice(&self.ql);
        b[128..192].copy_from_slice(&self.qh);
        write_i8_slice(b, 192, &self.scales);
        write_u16(b, 208, self.d);
    }

    /// `quantize_row_q6_K_ref`: per 16 values `make_qx_quants(nmax 32, weights x²)`; the
    /// sub-scale of largest magnitude (with its sign) maps to -128, d = 1/iscale, 8-bit
    /// scales `min(127, nearest_int(iscale·scale))`; then re-quantization with the stored
    /// scales. A block whose sub-scales are all below `GROUP_MAX_EPS` is all zeros.
    fn quantize(x: &[f32]) -> Self {
        quantize_q6k(x, None)
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for h in 0..2 {
            let ql = &self.ql[64 * h..64 * h + 64];
            let qh = &self.qh[32 * h..32 * h + 32];
            let sc = &self.scales[8 * h..8 * h + 8];
            let out = &mut y[128 * h..128 * h + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                out[l] = d * sc[is] as f32 * q1 as f32;
                out[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                out[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                out[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}

/// The Q6_K quantizer shared by the reference path (`qw = None`: `quantize_row_q6_K_ref`,
/// sub-block fits weighted by x²) and the importance-matrix path (`quantize_row_q6_K_impl`,
/// which passes the importance weights straight to `make_qx_quants`, without the
/// `sigma2` term the other weighted quantizers add). Everything after the fits is shared.
pub(crate) fn quantize_q6k(x: &[f32], qw: Option<&[f32]>) -> BlockQ6K {
    let mut codes = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..16 {
        let scale = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut codes[16 * ib..16 * ib + 16],
            qw.map(|w| &w[16 * ib..16 * ib + 16]),
        );
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        return BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: f32_to_f16(0.0),
        };
    }

    let iscale = -128.0 / max_scale;
    let d = f32_to_f16(1.0 / iscale);
    let sc: [i8; 16] = std::array::from_fn(|ib| nearest_int(iscale * scales[ib]).min(127) as i8);

    for j in 0..16 {
        let dj = f16_to_f32(d) * sc[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dj).clamp(-32, 31);
            codes[16 * j + ii] = (q + 32) as i8;
        }
    }

    let mut ql = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 4];
    for h in 0..2 {
        let c = |k: usize| codes[128 * h + k] as u8;
        for l in 0..32 {
            let (q1, q2, q3, q4) = (c(l), c(l + 32), c(l + 64), c(l + 96));
            ql[64 * h + l] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
            ql[64 * h + l + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
            qh[32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    BlockQ6K {
        ql,
        qh,
        scales: sc,
        d,
    }
}

// ----------------------------------------------------------------------------- Q8_K

/// Q8_K: 256 values as `d·q`, q int8, with per-16 code sums. 292 bytes. Used for the
/// activations in K-quant dot products (the sums let kernels apply the mins cheaply).
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 4 | `d` (**f32**) |
/// | 4 | 256 | `qs` (i8) |
/// | 260 | 32 | `bsums`: 16 × i16, sum of each 16 consecutive codes |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

impl Block for BlockQ8K {
    const ELEMENTS: usize = QK_K;
    const BYTES: usize = 292;

    fn read(b: &[u8]) -> Self {
        BlockQ8K {
            d: f32::from_le_bytes(read_array(b, 0)),
            qs: read_i8_array(b, 4),
            bsums: std::array::from_fn(|j| i16::from_le_bytes(read_array(b, 260 + 2 * j))),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&self.d.to_le_bytes());
        write_i8_slice(b, 4, &self.qs);
        for (j, s) in self.bsums.iter().enumerate() {
            b[260 + 2 * j..262 + 2 * j].copy_from_slice(&s.to_le_bytes());
        }
    }

    /// `quantize_row_q8_K_ref`: the value of largest magnitude (with its sign) maps to -127,
    /// `q = min(127, nearest_int(x·iscale))`, `d = 1/iscale`. An all-zero block is d = 0 and
    /// zero codes; ggml leaves its `bsums` unwritten, here they are 0 (the true sums).
    fn quantize(x: &[f32]) -> Self {
        let (max, amax) = signed_absmax(x);
        if amax == 0.0 {
            return BlockQ8K {
                d: 0.0,
                qs: [0; QK_K],
                bsums: [0; QK_K / 16],
            };
        }
        let iscale = -127.0 / max;
        let qs: [i8; QK_K] = std::array::from_fn(|j| nearest_int(iscale * x[j]).min(127) as i8);
        let bsums =
            std::array::from_fn(|j| qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum());
        BlockQ8K {
            d: 1.0 / iscale,
            qs,
            bsums,
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = self.d * q as f32;
        }
    }
}
