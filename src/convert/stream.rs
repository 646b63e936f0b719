//! Converts one tensor: source bytes -> f32 rows -> layout change -> target type, in
//! parallel over groups of rows and in sequential windows of the source, each window's output
//! handed to the writer before the next starts, so that only one window of output and one
//! small f32 buffer per worker are in memory at a time, whatever the tensor's size (a 9B
//! embedding is 2 GB in BF16).

use rayon::prelude::*;
use rgemma_quant::GgmlType;

use crate::convert::plan::{PlannedTensor, Transform};
use crate::{Error, Result};

/// Elements each parallel task converts (a few hundred KiB of f32 per worker).
const TASK_ELEMENTS: u64 = 1 << 16;
/// Source bytes converted between two page releases.
const WINDOW_BYTES: usize = 32 << 20;

/// Decodes `src` (a whole number of `ty` blocks) into `dst`.
pub fn decode(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    match ty {
        GgmlType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
            }
        }
        _ => rgemma_quant::dequantize_row(ty, src, dst)?,
    }
    Ok(())
}

/// Encodes `src` (whole rows) as `ty` into `dst`.
pub fn encode(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    match ty {
        GgmlType::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        _ => rgemma_quant::quantize_row(ty, src, dst)?,
    }
    Ok(())
}

/// Importance weights of one tensor (`rg-quantize --imatrix`): one weight per column for
/// each matrix of the tensor (the blocks of a block-diagonal tensor, else one), whose rows
/// come `rows_per_mat` at a time.
pub struct RowWeights {
    per_mat: Vec<Vec<f32>>,
    rows_per_mat: usize,
}

impl RowWeights {
    pub fn new(per_mat: Vec<Vec<f32>>, rows_per_mat: usize) -> RowWeights {
        RowWeights {
            per_mat,
            rows_per_mat: rows_per_mat.max(1),
        }
    }

    /// The weights of row `r` of the tensor.
    fn for_row(&self, r: usize) -> &[f32] {
        &self.per_mat[(r / self.rows_per_mat).min(self.per_mat.len() - 1)]
    }
}

/// [`encode`] of whole rows `first_row..` of a tensor, through the weighted quantizer when
/// `weights` are given (`dst_ty` must then have one: see `Importance::weights_for`).
fn encode_rows(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    first_row: usize,
    weights: Option<&RowWeights>,
    dst: &mut [u8],
) -> Result<()> {
    let Some(weights) = weights else {
        return encode(ty, src, dst);
    };
    let row_bytes = dst.len() / (src.len() / row_len.max(1)).max(1);
    for (i, (x, out)) in src
        .chunks_exact(row_len)
        .zip(dst.chunks_exact_mut(row_bytes))
        .enumerate()
    {
        rgemma_quant::quantize_row_weighted(ty, x, weights.for_row(first_row + i), out)?;
    }
    Ok(())
}

fn check_finite(source: &str, values: &[f32], first_index: u64) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::Format(format!(
            "tensor {source}: element {} is {} (weights must be finite)",
            first_index + i as u64,
            values[i]
        ))),
    }
}

/// Byte size of `plan` stored as `ty`.
pub fn stored_size(plan: &PlannedTensor, ty: GgmlType) -> Result<u64> {
    let row = ty.row_size(plan.row_len()).ok_or_else(|| {
        Error::Format(format!(
            "tensor {}: row length {} does not fit type {ty}",
            plan.name,
            plan.row_len()
        ))
    })?;
    row.checked_mul(plan.n_elements() / plan.row_len())
        .ok_or_else(|| Error::Format(format!("tensor {}: size overflows", plan.name)))
}

/// Converts `src` (`src_ty`, the source tensor's bytes) to `dst_ty`, passing the output to
/// `sink` in order, a window at a time (`window` is the reused output buffer); returns the
/// output's size. `src_row_len` is the source's innermost dimension (block-quantized sources
/// are decoded in whole rows). `release` is called with each part of `src` once it has been
/// consumed (the caller drops those pages from the resident set). `weights`: importance
/// weights for `dst_ty`'s weighted quantizer (`rg-quantize --imatrix`). Runs on the current
/// rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn convert_tensor(
    plan: &PlannedTensor,
    src_ty: GgmlType,
    src: &[u8],
    src_row_len: u64,
    dst_ty: GgmlType,
    weights: Option<&RowWeights>,
    window: &mut Vec<u8>,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    release: &(dyn Fn(&[u8]) + Sync),
) -> Result<u64> {
    let n = plan.n_elements();
    let src_row_bytes = src_ty.row_size(src_row_len).ok_or_else(|| {
        Error::Format(format!(
            "tensor {}: source rows do not fit type {src_ty}",
            plan.source
        ))
    })?;
    let expected_src = src_row_bytes * (n / src_row_len.max(1));
    if !n.is_multiple_of(src_row_len.max(1)) || expected_src != src.len() as u64 {
        return Err(Error::Format(format!(
            "tensor {}: {} source bytes, expected {expected_src}",
            plan.source,
            src.len()
        )));
    }
    let out_len = stored_size(plan, dst_ty)? as usize;

    match plan.transform {
        Transform::Copy | Transform::AddOne => {
            // Rows of the output and the source hold the same elements when their lengths
            // agree (always, except for flattened 1-D tensors, which are one output row).
            let row_len = plan.row_len();
            let dst_row_bytes = (out_len as u64 / (n / row_len)) as usize;
            let (unit_len, src_unit_bytes, dst_unit_bytes) = if src_row_len == row_len {
                (row_len, src_row_bytes as usize, dst_row_bytes)
            } else {
                // 1-D output from a multi-row source (e.g. gate bias [nb, bw] -> [L]): one unit.
                (n, src.len(), out_len)
            };
            let units_per_task = (TASK_ELEMENTS / unit_len).max(1) as usize;
            // Sequential windows of about WINDOW_BYTES of source, parallel inside each, so
            // consumed source pages are released and the output written while a large tensor
            // is converted.
            let tasks_per_window = (WINDOW_BYTES / (units_per_task * src_unit_bytes).max(1)).max(1);
            let window_units = tasks_per_window * units_per_task;
            let add_one = plan.transform == Transform::AddOne;
            for (w, src_w) in src.chunks(window_units * src_unit_bytes).enumerate() {
                window.clear();
                window.resize(src_w.len() / src_unit_bytes * dst_unit_bytes, 0);
                window
                    .par_chunks_mut(units_per_task * dst_unit_bytes)
                    .zip(src_w.par_chunks(units_per_task * src_unit_bytes))
                    .enumerate()
                    .try_for_each_init(Vec::<f32>::new, |buf, (task, (dst, src))| {
                        let units = dst.len() / dst_unit_bytes;
                        buf.clear();
                        buf.resize(units * unit_len as usize, 0.0);
                        decode(src_ty, src, buf)?;
                        let first_unit = w * window_units + task * units_per_task;
                        check_finite(&plan.source, buf, first_unit as u64 * unit_len)?;
                        if add_one {
                            buf.iter_mut().for_each(|w| *w += 1.0);
                        }
                        // A unit is a row here whenever weights apply (1-D tensors stay F32).
                        let w = weights.filter(|_| unit_len == row_len);
                        encode_rows(dst_ty, buf, unit_len as usize, first_unit, w, dst)
                    })?;
                release(src_w);
                sink(window)?;
            }
        }
        Transform::ConvTapMajor { channels, taps } => {
            let mut vals = vec![0f32; n as usize];
            decode(src_ty, src, &mut vals)?;
            check_finite(&plan.source, &vals, 0)?;
            let (c_n, k_n) = (channels as usize, taps as usize);
            // HF [c, 0, k] -> stored [k, c].
            let mut tap_major = vec![0f32; n as usize];
            for c in 0..c_n {
                for k in 0..k_n {
                    tap_major[k * c_n + c] = vals[c * k_n + k];
                }
            }
            window.clear();
            window.resize(out_len, 0);
            encode(dst_ty, &tap_major, window)?;
            sink(window)?;
        }
        Transform::GateTranspose { blocks, width } => {
            let mut vals = vec![0f32; n as usize];
            decode(src_ty, src, &mut vals)?;
            check_finite(&plan.source, &vals, 0)?;
            let w = width as usize;
            // HF [b, in, out] -> stored [b, out, in].
            let mut linear = vec![0f32; n as usize];
            for b in 0..blocks as usize {
                let base = b * w * w;
                for i in 0..w {
                    for o in 0..w {
                        linear[base + o * w + i] = vals[base + i * w + o];
                    }
                }
            }
            window.clear();
            window.resize(out_len, 0);
            encode_rows(dst_ty, &linear, w, 0, weights, window)?;
            sink(window)?;
        }
    }
    if out_len == 0 {
        sink(&[])?; // an empty tensor still counts as written
    }
    Ok(out_len as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor larger than a window streams: the writer gets it in several parts, each at
    /// most one window's output, that join to the tensor converted in one piece; the source
    /// is released in consecutive parts that cover it.
    #[test]
    fn large_tensors_reach_the_writer_one_window_at_a_time() {
        let (rows, cols) = (1280usize, 16384usize); // 40 MiB of BF16: two windows
        let plan = PlannedTensor {
            name: "t".into(),
            shape: vec![rows as u64, cols as u64],
            source: "t".into(),
            transform: Transform::Copy,
        };
        let mut state = 0x9e37_79b9u32;
        let src: Vec<u8> = (0..rows * cols)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                // A BF16 value in about ±2: sign, exponent 126..=128, 7 mantissa bits.
                let bits = (state & 0x807f) as u16 | ((126 + (state >> 16) % 3) as u16) << 7;
                bits.to_le_bytes()
            })
            .collect();
        let mut values = vec![0f32; rows * cols];
        decode(GgmlType::BF16, &src, &mut values).unwrap();
        let mut whole = vec![0u8; stored_size(&plan, GgmlType::Q8_0).unwrap() as usize];
        encode(GgmlType::Q8_0, &values, &mut whole).unwrap();

        let mut parts: Vec<Vec<u8>> = Vec::new();
        let released = std::sync::Mutex::new(Vec::new());
        let release = |part: &[u8]| {
            let offset = part.as_ptr() as usize - src.as_ptr() as usize;
            released.lock().unwrap().push((offset, part.len()));
        };
        let mut window = Vec::new();
        let written = convert_tensor(
            &plan,
            GgmlType::BF16,
            &src,
            cols as u64,
            GgmlType::Q8_0,
            None,
            &mut window,
            &mut |part| {
                parts.push(part.to_vec());
                Ok(())
            },
            &release,
        )
        .unwrap();
        assert_eq!(written, whole.len() as u64);
        assert!(parts.len() >= 2, "{} parts", parts.len());
        let window_out = WINDOW_BYTES / 2 / 32 * 34; // Q8_0 of one window of BF16
        assert!(parts.iter().all(|p| p.len() <= window_out));
        assert!(parts.concat() == whole, "streamed output differs");
        let released = released.into_inner().unwrap();
        let mut next = 0;
        for &(offset, len) in &released {
            assert_eq!(offset, next);
            next += len;
        }
        assert_eq!(next, src.len());
    }
}
