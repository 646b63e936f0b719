//! Importance-weighted quantization: what llama-quantize does with `--imatrix`.
//!
//! ggml's `quantize_q4_0(src, dst, nrow, n_per_row, quant_weights)` and its siblings take one
//! importance value per column (the same for every row). With `quant_weights == NULL` they
//! run the reference quantizer (our [`crate::quantize_row`]); with weights they take a
//! different, search-heavier path (`quantize_row_*_impl` in `ggml-quants.c`), which
//! [`quantize_row_weighted`] reproduces bit for bit. What that path does, per type:
//!
//! - every type except Q6_K turns the importance `qw[j]` of a value `x[j]` into the fit
//!   weight `qw[j] * sqrt(sigma2 + x[j]²)`, where `sigma2` is the mean square of the values
//!   (over the whole row for the legacy types, over the super-block for K-quants, doubled
//!   for Q3_K/Q4_K/Q5_K);
//! - Q4_0/Q5_0: symmetric codes from a weighted least-squares scale search
//!   (`make_qx_quants`); the block scale is that fit, not `max / -8`;
//! - Q4_1/Q5_1: scale and min from the weighted search `make_qkx3_quants` (rmin -0.9,
//!   rdelta 0.05, 36 steps), codes straight from the search (no re-quantization);
//! - Q2_K/Q4_K/Q5_K: sub-block scale and min from the same search, then the sub-block scales
//!   and mins are themselves quantized by a weighted search (`make_qp_quants`, weighted by the
//!   sum of each sub-block's weights) instead of "largest maps to the top code";
//! - Q3_K: sub-block scales by `make_qx_quants`, their 6-bit codes by `make_qx_quants` again;
//! - Q6_K: the reference algorithm with the raw importance as the `make_qx_quants` weights.
//!
//! All arithmetic is f32 in ggml's operation order (the searches compare float errors, so a
//! reordered sum can flip a choice). The fixtures in `quant/tests/fixtures/quant_w/` come
//! from ggml's own C code.

use crate::float::{f16_to_f32, f32_to_f16};
use crate::kquants::{
    make_qkx2_quants, make_qx_quants, pack_2bit, pack_scale_min_k4, q3k_scale, quantize_q6k,
    requantize_with_stored_scales, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, GROUP_MAX_EPS,
    K_SCALE_SIZE, QK_K,
};
use crate::legacy::{pack_5bit, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, QK};
use crate::rounding::{c_max, nearest_int};
use crate::{Block, GgmlType, QuantError};

/// Whether [`quantize_row_weighted`] accepts `ty`: the types whose ggml quantizer has an
/// importance-matrix path. Q8_0 is not one of them: ggml's `quantize_q8_0` ignores its
/// weights and runs the reference quantizer, so use [`crate::quantize_row`] for it (as for
/// F16/BF16/F32, which have no search to weight).
pub fn can_quantize_weighted(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q2K | Q3K | Q4K | Q5K | Q6K)
}

/// Quantizes `src`, one or more rows of `weights.len()` values each, into `dst` with ggml's
/// importance-matrix quantizer: the bytes of `quantize_<ty>(src, dst, nrow, n_per_row,
/// weights)` with non-NULL weights. `weights[j]` is the importance of column `j` (an imatrix
/// entry), used for every row; `weights.len()` must be a multiple of the block size and `dst`
/// exactly `ty.row_size(src.len())` bytes.
///
/// Types: see [`can_quantize_weighted`]; others are [`QuantError::Unsupported`]. The weights
/// are not validated (ggml does not either): NaN or negative importances give whatever the
/// searches make of them.
pub fn quantize_row_weighted(
    ty: GgmlType,
    src: &[f32],
    weights: &[f32],
    dst: &mut [u8],
) -> Result<(), QuantError> {
    if !can_quantize_weighted(ty) {
        return Err(QuantError::Unsupported(ty));
    }
    let n_per_row = weights.len();
    if !n_per_row.is_multiple_of(ty.block_size()) {
        return Err(QuantError::NotBlockAligned { ty, n: n_per_row });
    }
    // `n_per_row == 0` can only describe an empty `src`.
    let whole_rows = if n_per_row == 0 {
        src.is_empty()
    } else {
        src.len().is_multiple_of(n_per_row)
    };
    if !whole_rows {
        return Err(QuantError::RowMismatch {
            n: src.len(),
            n_per_row,
        });
    }
    let expected = src.len() / ty.block_size() * ty.type_size();
    if dst.len() != expected {
        return Err(QuantError::LengthMismatch {
            expected,
            found: dst.len(),
        });
    }
    if n_per_row == 0 {
        return Ok(());
    }
    let row_bytes = n_per_row / ty.block_size() * ty.type_size();
    for (x, out) in src
        .chunks_exact(n_per_row)
        .zip(dst.chunks_exact_mut(row_bytes))
    {
        use GgmlType::*;
        match ty {
            Q4_0 | Q4_1 | Q5_0 | Q5_1 => quantize_legacy_row(ty, x, weights, out),
            _ => quantize_k_row(ty, x, weights, out),
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------------- shared

/// Σ x² in index order (ggml's plain loop; the order matters for the last bits).
fn sum_squares(x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for &v in x {
        sum += v * v;
    }
    sum
}

/// The fit weights `qw[j] * sqrt(sigma2 + x[j]²)`: the importance, scaled so that values
/// large against the typical magnitude count more, but small ones never count for nothing.
fn fit_weights<const N: usize>(qw: &[f32], x: &[f32], sigma2: f32) -> [f32; N] {
    std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt())
}

/// Σ w in index order, starting from 0 as ggml does.
fn sum(w: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in w {
        s += v;
    }
    s
}

/// ggml's `make_qkx3_quants` with explicit weights and its K-quant/legacy settings (rmin
/// -0.9, rdelta 0.05, 36 steps, squared error). It is [`make_qkx2_quants`] under another
/// name (see there). Returns `(scale, min)` with `x ≈ scale·L − min`.
fn qkx3(nmax: i32, x: &[f32], weights: &[f32], codes: &mut [u8]) -> (f32, f32) {
    make_qkx2_quants(nmax, x, weights, codes, -0.9, 0.05, 36, false)
}

/// ggml's `make_qp_quants`: quantizes non-negative values `x` (sub-block scales or mins) to
/// codes `L` in `0..=nmax` against one scale, minimising the `qw`-weighted squared error.
///
/// Starts from `nmax / max`, tries 8 nearby inverse scales `(nmax + 0.1·k) / max`, then runs
/// up to 5 passes of coordinate descent on the codes (each code moved to its optimum given
/// the others' least-squares scale, kept if the fit improves). Returns the least-squares
/// scale of the final codes.
///
/// The codes live in bytes as in ggml (`uint8_t L[]`): a negative code (only possible for a
/// negative input) wraps, and the wrapped value is what later steps read back.
fn make_qp_quants(nmax: i32, x: &[f32], l: &mut [u8], qw: &[f32]) -> f32 {
    let mut max = 0.0f32;
    for &v in x {
        max = c_max(max, v);
    }
    if max < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (li, &v) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * v) as u8; // no clamp here; only the error below reads it
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..x.len() {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += qw[i] * diff * diff;
    }

    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..x.len() {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }

    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..x.len() {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        let (w, q) = (qw[i], q as f32);
        sumlx += w * x[i] * q;
        suml2 += w * q * q;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..x.len() {
            let w = qw[i];
            let cur = l[i] as f32;
            let mut slx = sumlx - w * x[i] * cur;
            let mut sl2 = suml2 - w * cur * cur;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
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
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

// ----------------------------------------------------------------------------- legacy

/// One row of Q4_0/Q4_1/Q5_0/Q5_1 (`quantize_row_q{4,5}_{0,1}_impl`).
fn quantize_legacy_row(ty: GgmlType, x: &[f32], qw: &[f32], out: &mut [u8]) {
    // One sigma2 for the whole row (ggml divides by n_per_row converted to float).
    let sigma2 = sum_squares(x) / x.len() as f32;
    let bytes = ty.type_size();
    for ((xb, qwb), ob) in x
        .chunks_exact(QK)
        .zip(qw.chunks_exact(QK))
        .zip(out.chunks_exact_mut(bytes))
    {
        let weight: [f32; QK] = fit_weights(qwb, xb, sigma2);
        match ty {
            GgmlType::Q4_0 => {
                let mut codes = [0i8; QK];
                let d = make_qx_quants(8, xb, &mut codes, Some(&weight));
                let qs = std::array::from_fn(|j| codes[j] as u8 | ((codes[j + 16] as u8) << 4));
                BlockQ4_0 {
                    d: f32_to_f16(d),
                    qs,
                }
                .write(ob);
            }
            GgmlType::Q5_0 => {
                let mut codes = [0i8; QK];
                let d = make_qx_quants(16, xb, &mut codes, Some(&weight));
                let (qh, qs) = pack_5bit(|j| codes[j] as u8);
                BlockQ5_0 {
                    d: f32_to_f16(d),
                    qh,
                    qs,
                }
                .write(ob);
            }
            GgmlType::Q4_1 => {
                let mut codes = [0u8; QK];
                let (d, min) = qkx3(15, xb, &weight, &mut codes);
                let qs = std::array::from_fn(|j| codes[j] | (codes[j + 16] << 4));
                BlockQ4_1 {
                    d: f32_to_f16(d),
                    m: f32_to_f16(-min),
                    qs,
                }
                .write(ob);
            }
            GgmlType::Q5_1 => {
                let mut codes = [0u8; QK];
                let (d, min) = qkx3(31, xb, &weight, &mut codes);
                let (qh, qs) = pack_5bit(|j| codes[j]);
                BlockQ5_1 {
                    d: f32_to_f16(d),
                    m: f32_to_f16(-min),
                    qh,
                    qs,
                }
                .write(ob);
            }
            _ => unreachable!("not a legacy type: {ty}"),
        }
    }
}

// ----------------------------------------------------------------------------- K-quants

/// One row of a K-quant type: super-block by super-block, each with its own slice of the
/// importance weights.
fn quantize_k_row(ty: GgmlType, x: &[f32], qw: &[f32], out: &mut [u8]) {
    let bytes = ty.type_size();
    for ((xb, qwb), ob) in x
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(out.chunks_exact_mut(bytes))
    {
        match ty {
            GgmlType::Q2K => quantize_q2k(xb, qwb).write(ob),
            GgmlType::Q3K => quantize_q3k(xb, qwb).write(ob),
            GgmlType::Q4K => {
                let (d, dmin, scales, codes) = quantize_k_scale_min(xb, qwb, 15);
                BlockQ4K::from_codes(&codes, d, dmin, scales).write(ob)
            }
            GgmlType::Q5K => {
                let (d, dmin, scales, codes) = quantize_k_scale_min(xb, qwb, 31);
                BlockQ5K::from_codes(&codes, d, dmin, scales).write(ob)
            }
            GgmlType::Q6K => quantize_q6k(xb, Some(qwb)).write(ob),
            _ => unreachable!("not a K-quant type: {ty}"),
        }
    }
}

/// `quantize_row_q2_K_impl`: sub-blocks of 16 fitted with [`qkx3`] (nmax 3), 4-bit scale and
/// min codes from [`make_qp_quants`], then re-quantization with the stored values.
fn quantize_q2k(x: &[f32], qw: &[f32]) -> BlockQ2K {
    // Unlike Q3_K/Q4_K/Q5_K, Q2_K's sigma2 is the plain mean square.
    let sigma2 = sum_squares(x) / QK_K as f32;
    let mut codes = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    for j in 0..16 {
        let r = 16 * j..16 * j + 16;
        let weight: [f32; 16] = fit_weights(&qw[r.clone()], &x[r.clone()], sigma2);
        sw[j] = sum(&weight);
        (scales[j], mins[j]) = qkx3(3, &x[r.clone()], &weight, &mut codes[r]);
    }

    let mut ls = [0u8; 16];
    let mut lm = [0u8; 16];
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);
    let d = f32_to_f16(dm);
    let dmin = f32_to_f16(mm);
    // The C code combines the codes in `int` and stores the low byte.
    let sc: [u8; 16] = std::array::from_fn(|j| (ls[j] as u32 | (lm[j] as u32) << 4) as u8);

    let (dm, mm) = (f16_to_f32(d), f16_to_f32(dmin));
    for j in 0..16 {
        let dj = dm * (sc[j] & 0x0F) as f32;
        if dj == 0.0 {
            continue; // keeps the codes of the search
        }
        let m = mm * (sc[j] >> 4) as f32;
        for ii in 0..16 {
            codes[16 * j + ii] = nearest_int((x[16 * j + ii] + m) / dj).clamp(0, 3) as u8;
        }
    }
    BlockQ2K {
        scales: sc,
        qs: pack_2bit(&codes),
        d,
        dmin,
    }
}

/// `quantize_row_q3_K_impl`: sub-blocks of 16 fitted with `make_qx_quants` (nmax 4), the 16
/// sub-scales quantized to signed 6-bit codes with `make_qx_quants` (nmax 32, weighted by
/// the sub-blocks' weight sums), then re-quantization with the stored scales.
fn quantize_q3k(x: &[f32], qw: &[f32]) -> BlockQ3K {
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let mut codes = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    for j in 0..16 {
        let r = 16 * j..16 * j + 16;
        let weight: [f32; 16] = fit_weights(&qw[r.clone()], &x[r.clone()], sigma2);
        sw[j] = sum(&weight);
        scales[j] = make_qx_quants(4, &x[r.clone()], &mut codes[r], Some(&weight));
    }

    let mut ls = [0i8; 16];
    let d_block = make_qx_quants(32, &scales, &mut ls, Some(&sw));
    // Same layout as the reference: low nibbles in bytes 0..8, top 2 bits in bytes 8..12.
    let mut sc = [0u8; K_SCALE_SIZE];
    for (j, &l) in ls.iter().enumerate() {
        let l = l as i32; // 0..=63
        if j < 8 {
            sc[j] = (l & 0x0F) as u8;
        } else {
            sc[j - 8] |= ((l & 0x0F) << 4) as u8;
        }
        sc[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
    }
    let d = f32_to_f16(d_block);

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

/// `quantize_row_q{4,5}_K_impl` up to the packing of the codes: sub-blocks of 32 fitted with
/// [`qkx3`], 6-bit scale and min codes from [`make_qp_quants`], re-quantization with the
/// stored values. Returns d, dmin, the packed scales and the final codes.
fn quantize_k_scale_min(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
) -> (u16, u16, [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let mut codes = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut sw = [0.0f32; 8];
    for j in 0..8 {
        let r = 32 * j..32 * j + 32;
        let weight: [f32; 32] = fit_weights(&qw[r.clone()], &x[r.clone()], sigma2);
        sw[j] = sum(&weight);
        (scales[j], mins[j]) = qkx3(nmax, &x[r.clone()], &weight, &mut codes[r]);
    }

    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if nmax == 31 {
        // Only Q5_K caps the codes at 63 before packing (they can only exceed it after
        // wrapping from a negative value); Q4_K packs them as they are, like ggml.
        ls = ls.map(|v| v.min(63));
        lm = lm.map(|v| v.min(63));
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f32_to_f16(d_block);
    let dmin = f32_to_f16(m_block);

    requantize_with_stored_scales(x, &packed, d, dmin, nmax, &mut codes);
    (d, dmin, packed, codes)
}
