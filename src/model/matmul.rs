//! `out[t, r] = bias[r] + W[r, :] · x[t, :]`: weight rows times a block of T activations.
//!
//! Rows are split across the rayon pool; each task decodes one stored row at a time into its
//! thread's scratch (so any stored type works and no f32 copy of the model exists) and dots
//! it with every activation row. A tiled SIMD kernel can replace the inner loops later
//! without changing the callers.

use std::sync::Mutex;

use rayon::prelude::*;

use super::dequant::dequantize_row;
use super::weights::Matrix;
use crate::{Error, Result};

/// Output rows handled by one parallel task.
const ROWS_PER_TASK: usize = 16;

/// Per-thread f32 scratch, allocated once per `Context` (one slot per pool thread plus one
/// for the calling thread).
pub struct ThreadScratch {
    slots: Vec<Mutex<Vec<f32>>>,
    capacity: usize,
}

impl ThreadScratch {
    pub fn new(n_threads: usize, len: usize) -> ThreadScratch {
        let slots = (0..n_threads + 1)
            .map(|_| Mutex::new(vec![0.0; len]))
            .collect();
        ThreadScratch {
            slots,
            capacity: len,
        }
    }

    /// Runs `f` with this thread's buffer (at least the `len` given at creation).
    pub fn with<R>(&self, f: impl FnOnce(&mut [f32]) -> R) -> R {
        let slot = rayon::current_thread_index().map_or(0, |i| i + 1) % self.slots.len();
        // A thread outside our pool may share a slot with a pool thread; the lock keeps
        // that correct. A poisoned lock only means an earlier panic: the buffer is scratch.
        let mut buf = self.slots[slot].lock().unwrap_or_else(|e| e.into_inner());
        f(&mut buf)
    }

    /// Floats available to each thread.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Which slice of an activation row a weight row reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputMap {
    /// Every row reads `x[t, 0..cols]`.
    Dense,
    /// Block-diagonal weight viewed as `[blocks * out_per_block, cols]`: row `r` belongs to
    /// block `r / out_per_block` and reads `x[t, block*cols .. (block+1)*cols]`.
    BlockDiag { out_per_block: usize },
}

/// A raw pointer to the output that the row tasks share. Each task writes only the elements
/// of its own rows, so the writes never overlap.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (distinct rows r) and the buffer outlives the
// parallel loop, which completes before `matmul` returns.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `out[t * w.rows + r] = bias[r] + Σ_c W[r, c] · x[t * x_stride + offset(r) + c]` for
/// `t < n_tok`. `out` must hold `n_tok * w.rows` values.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    w: &Matrix,
    wdata: &[u8],
    map: InputMap,
    x: &[f32],
    x_stride: usize,
    n_tok: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &ThreadScratch,
) -> Result<()> {
    let (rows, cols) = (w.rows, w.cols);
    let offset = |r: usize| match map {
        InputMap::Dense => 0,
        InputMap::BlockDiag { out_per_block } => (r / out_per_block) * cols,
    };
    // Shape checks up front so that the unchecked writes below stay in bounds.
    let max_offset = if rows == 0 { 0 } else { offset(rows - 1) };
    let x_needed = if n_tok == 0 {
        0
    } else {
        (n_tok - 1) * x_stride + max_offset + cols
    };
    if out.len() < n_tok * rows
        || x.len() < x_needed
        || wdata.len() < rows * w.row_bytes
        || bias.is_some_and(|b| b.len() < rows)
        || scratch.capacity() < cols
    {
        return Err(Error::InvalidArgument(format!(
            "matmul {}: shapes do not fit ({rows}x{cols}, {n_tok} tokens)",
            w.info.name
        )));
    }
    let shared = SharedOut(out.as_mut_ptr());
    let n_tasks = rows.div_ceil(ROWS_PER_TASK);
    (0..n_tasks).into_par_iter().try_for_each(|task| {
        scratch.with(|buf| -> Result<()> {
            let row_buf = &mut buf[..cols];
            let r_end = ((task + 1) * ROWS_PER_TASK).min(rows);
            for r in task * ROWS_PER_TASK..r_end {
                let src = &wdata[r * w.row_bytes..(r + 1) * w.row_bytes];
                dequantize_row(w.ty, src, row_buf)
                    .map_err(|e| Error::Format(format!("tensor {} row {r}: {e}", w.info.name)))?;
                let b = bias.map_or(0.0, |b| b[r]);
                let off = offset(r);
                for t in 0..n_tok {
                    let xs = &x[t * x_stride + off..t * x_stride + off + cols];
                    let dot: f32 = row_buf.iter().zip(xs).map(|(a, b)| a * b).sum();
                    // SAFETY: t < n_tok and r < rows, and out.len() >= n_tok * rows was
                    // checked above; only this task writes row r.
                    unsafe { *shared.ptr().add(t * rows + r) = dot + b };
                }
            }
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::TensorInfo;
    use rgemma_quant::GgmlType;

    fn matrix(ty: GgmlType, rows: usize, cols: usize) -> Matrix {
        let row_bytes = ty.row_size(cols as u64).unwrap() as usize;
        let info = TensorInfo {
            name: "test".into(),
            ty,
            dims: vec![cols as u64, rows as u64],
            offset: 0,
            size: (rows * row_bytes) as u64,
        };
        Matrix {
            info,
            ty,
            rows,
            cols,
            row_bytes,
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn dense_and_block_diagonal_match_naive() {
        let scratch = ThreadScratch::new(rayon::current_num_threads(), 64);
        // Dense 37 x 24 (more rows than one task), 5 tokens, F32 and F16 storage.
        let (rows, cols, n_tok) = (37usize, 24usize, 5usize);
        let w = values(rows * cols, 1);
        let x = values(n_tok * cols, 2);
        let b = values(rows, 3);
        for ty in [GgmlType::F32, GgmlType::F16] {
            let m = matrix(ty, rows, cols);
            let (data, wq): (Vec<u8>, Vec<f32>) = match ty {
                GgmlType::F32 => (w.iter().flat_map(|v| v.to_le_bytes()).collect(), w.clone()),
                _ => {
                    let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
                    (
                        h.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
                        h.iter().map(|v| v.to_f32()).collect(),
                    )
                }
            };
            let mut out = vec![0.0; n_tok * rows];
            matmul(
                &m,
                &data,
                InputMap::Dense,
                &x,
                cols,
                n_tok,
                Some(&b),
                &mut out,
                &scratch,
            )
            .unwrap();
            for t in 0..n_tok {
                for r in 0..rows {
                    let want: f64 = b[r] as f64
                        + (0..cols)
                            .map(|c| wq[r * cols + c] as f64 * x[t * cols + c] as f64)
                            .sum::<f64>();
                    assert!(
                        (out[t * rows + r] as f64 - want).abs() < 1e-5,
                        "{ty} t{t} r{r}"
                    );
                }
            }
        }
        // Block-diagonal: 3 blocks of 4x4 over activations of width 12.
        let (nb, bw) = (3usize, 4usize);
        let w = values(nb * bw * bw, 4);
        let x = values(n_tok * nb * bw, 5);
        let m = matrix(GgmlType::F32, nb * bw, bw);
        let data: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![0.0; n_tok * nb * bw];
        let map = InputMap::BlockDiag { out_per_block: bw };
        matmul(&m, &data, map, &x, nb * bw, n_tok, None, &mut out, &scratch).unwrap();
        for t in 0..n_tok {
            for n in 0..nb {
                for o in 0..bw {
                    // Stored per block as [out, in]: out[n*bw+o] = sum_i W[n,o,i] x[n*bw+i].
                    let want: f32 = (0..bw)
                        .map(|i| w[(n * bw + o) * bw + i] * x[t * nb * bw + n * bw + i])
                        .sum();
                    assert!((out[t * nb * bw + n * bw + o] - want).abs() < 1e-5);
                }
            }
        }
        // Shapes that do not fit are an error, not a panic.
        let mut small = vec![0.0; 3];
        assert!(matmul(
            &m,
            &data,
            map,
            &x,
            nb * bw,
            n_tok,
            None,
            &mut small,
            &scratch
        )
        .is_err());
    }
}
