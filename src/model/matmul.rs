//! `out[t, r] = bias[r] + W[r, :] · x[t, :]`: weight rows times a block of T activations.
//!
//! Two paths compute the same product:
//! - **kernels** (default): each activation row is converted once per matmul into the
//!   format the weight type's dot kernel reads (Q8_0 / Q8_1 / Q8_K for quantized weights,
//!   f32 for float weights; `rgemma_quant::dot`) in a buffer reused across calls; then
//!   chunks of weight rows are spread over the rayon pool and each chunk is multiplied with
//!   all T activation rows by the SIMD micro-kernel (one weight row × 4 tokens per call, so
//!   prompt processing unpacks each weight block once per 4 tokens). Quantized weights thus
//!   see 8-bit activations, exactly like ggml's CPU backend.
//! - **reference**: each stored row is decoded to f32 (bit-exact with ggml's dequantizers)
//!   into the thread's scratch and dotted in f32 with every activation row. Used for weight
//!   types without a kernel, and selectable with `RGEMMA_MATMUL=reference` (or
//!   [`ThreadScratch::set_path`]) to compare against.

use std::sync::{Arc, Mutex};

use rgemma_quant::dot::{self, Backend};
use rgemma_quant::packed;

use super::dequant::dequantize_row;
use super::team;
use super::weights::Matrix;
use crate::{Error, Result};

/// Output rows handled by one parallel task of the reference path.
const ROWS_PER_TASK: usize = 16;

/// Which implementation [`matmul`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPath {
    /// Integer/SIMD dot kernels of this backend (`Backend::Scalar` = their portable form).
    Kernels(Backend),
    /// Decode each weight row to f32, f32 activations.
    Reference,
}

impl MatmulPath {
    /// `RGEMMA_MATMUL=reference` selects the reference path; otherwise the kernels of the
    /// detected backend (`RGEMMA_SIMD=0` forces their scalar form).
    pub fn from_env() -> MatmulPath {
        if std::env::var("RGEMMA_MATMUL").is_ok_and(|v| v == "reference") {
            MatmulPath::Reference
        } else {
            MatmulPath::Kernels(Backend::detect())
        }
    }
}

/// The f32 input rows one weight matrix meets in one product, as an observer sees them.
pub struct MatmulInput<'a> {
    /// The weight's tensor name in the GGUF file (`blk.3.ffn_down.weight`; the tied output
    /// head is `token_embd.weight`).
    pub weight: &'a str,
    /// Independent matrices in the weight: 1, or the blocks of a block-diagonal weight
    /// (the RG-LRU gates), each reading its own `cols`-wide slice of the input row.
    pub n_mat: usize,
    /// Values of one row that one matrix reads (the weight's row length).
    pub cols: usize,
    /// `n_rows` rows of `n_mat * cols` values, `x_stride` apart.
    pub x: &'a [f32],
    pub x_stride: usize,
    pub n_rows: usize,
}

/// Sees the input of every matrix product before it runs (the importance-matrix collector,
/// `crate::imatrix`). Called on the thread that runs the forward pass, once per weight and
/// call; nothing is called when no observer is set, so the decode path is unchanged.
pub trait MatmulObserver: Send + Sync {
    fn observe(&self, input: &MatmulInput<'_>);
}

/// Per-thread f32 scratch, allocated once per `Context` (one slot per pool thread plus one
/// for the calling thread), plus the shared activation buffer of the kernel path.
pub struct ThreadScratch {
    slots: Vec<Mutex<Vec<f32>>>,
    capacity: usize,
    /// Activation rows converted for the dot kernels. It grows to the largest size a matmul
    /// needs (the first chunk of that size) and is reused afterwards.
    activations: Mutex<Vec<u8>>,
    path: MatmulPath,
    observer: Option<Arc<dyn MatmulObserver>>,
}

impl ThreadScratch {
    pub fn new(n_threads: usize, len: usize) -> ThreadScratch {
        let slots = (0..n_threads + 1)
            .map(|_| Mutex::new(vec![0.0; len]))
            .collect();
        ThreadScratch {
            slots,
            capacity: len,
            activations: Mutex::new(Vec::new()),
            path: MatmulPath::from_env(),
            observer: None,
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

    /// Selects the implementation (tests compare the two).
    pub fn set_path(&mut self, path: MatmulPath) {
        self.path = path;
    }

    /// Shows every product's input to `observer` from now on (`None`: to nobody).
    pub fn set_observer(&mut self, observer: Option<Arc<dyn MatmulObserver>>) {
        self.observer = observer;
    }

    /// Hands `w`'s input to the observer, if one is set and the input has the rows it
    /// claims (otherwise the product itself fails its shape check right after).
    fn observe(&self, w: &Matrix, map: InputMap, x: &[f32], x_stride: usize, n_tok: usize) {
        if let Some(o) = &self.observer {
            let n_mat = match map {
                InputMap::Dense => 1,
                InputMap::BlockDiag { out_per_block } => w.rows.div_ceil(out_per_block.max(1)),
            };
            let width = n_mat * w.cols;
            let whole = n_tok == 0
                || ((n_tok == 1 || x_stride >= width) && x.len() >= (n_tok - 1) * x_stride + width);
            if !whole {
                return;
            }
            o.observe(&MatmulInput {
                weight: &w.info.name,
                n_mat,
                cols: w.cols,
                x,
                x_stride,
                n_rows: n_tok,
            });
        }
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

impl InputMap {
    /// Rows that share one input slice (all of them when dense).
    fn rows_per_group(self, rows: usize) -> usize {
        match self {
            InputMap::Dense => rows.max(1),
            InputMap::BlockDiag { out_per_block } => out_per_block.max(1),
        }
    }
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

    /// `out[t * stride + r] += bias[r]` for `r` in `rows`, `t < n_tok`.
    ///
    /// # Safety
    /// Those elements are in bounds and written by no other thread meanwhile (the caller's
    /// task owns rows `rows`).
    unsafe fn add_bias(
        self,
        bias: &[f32],
        rows: std::ops::Range<usize>,
        stride: usize,
        n_tok: usize,
    ) {
        for t in 0..n_tok {
            for (r, bv) in rows.clone().zip(&bias[rows.clone()]) {
                // SAFETY: forwarded from the caller.
                unsafe { *self.0.add(t * stride + r) += bv };
            }
        }
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
    // Shape checks up front so that the unchecked writes below stay in bounds.
    let x_width = input_width(w, map);
    let x_needed = if n_tok == 0 {
        0
    } else {
        (n_tok - 1) * x_stride + x_width
    };
    if out.len() < n_tok * rows
        || x.len() < x_needed
        || wdata.len() < rows * w.row_bytes
        || bias.is_some_and(|b| b.len() < rows)
        || scratch.capacity() < cols
        || (n_tok > 1 && x_stride < x_width)
    {
        return Err(Error::InvalidArgument(format!(
            "matmul {}: shapes do not fit ({rows}x{cols}, {n_tok} tokens)",
            w.info.name
        )));
    }
    scratch.observe(w, map, x, x_stride, n_tok);
    matmul_checked(w, wdata, map, x, x_stride, n_tok, bias, out, scratch)
}

/// [`matmul`] after its shape checks and observation.
#[allow(clippy::too_many_arguments)]
fn matmul_checked(
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
    match scratch.path {
        MatmulPath::Kernels(backend) if packed_fits(w, map) => {
            let mut one = [Product {
                w,
                wdata,
                bias,
                out,
            }];
            matmul_packed(backend, &mut one, map, x, x_stride, n_tok, scratch)
        }
        MatmulPath::Kernels(backend) if kernel_fits(w, map) => matmul_kernels(
            backend, w, wdata, map, x, x_stride, n_tok, bias, out, scratch,
        ),
        _ => matmul_reference(w, wdata, map, x, x_stride, n_tok, bias, out, scratch),
    }
}

/// Activation values one token's input spans: `cols`, or every block's slice.
fn input_width(w: &Matrix, map: InputMap) -> usize {
    match map {
        InputMap::Dense => w.cols,
        InputMap::BlockDiag { out_per_block } => w.rows.div_ceil(out_per_block.max(1)) * w.cols,
    }
}

/// Whether `w` is packed and its groups fit `map`: every block-diagonal block is a whole
/// number of groups and starts on an activation block of the packed kernels.
fn packed_fits(w: &Matrix, map: InputMap) -> bool {
    w.packed.is_some()
        && match map {
            InputMap::Dense => true,
            InputMap::BlockDiag { out_per_block } => {
                out_per_block > 0
                    && out_per_block.is_multiple_of(packed::GROUP_ROWS)
                    && w.rows.is_multiple_of(out_per_block)
                    && w.cols.is_multiple_of(packed::block_values(w.ty))
            }
        }
}

/// Whether the kernel path handles this matrix: a dot kernel exists for its type, and each
/// block-diagonal slice starts on an activation block boundary.
fn kernel_fits(w: &Matrix, map: InputMap) -> bool {
    let Some(act) = dot::activation_type(w.ty) else {
        return false;
    };
    let aligned =
        w.cols.is_multiple_of(act.block_size()) && w.cols.is_multiple_of(w.ty.block_size());
    let map_ok = match map {
        InputMap::Dense => true,
        InputMap::BlockDiag { out_per_block } => out_per_block > 0,
    };
    aligned && map_ok && w.cols > 0
}

/// Fills the first `n_tok * act_row` bytes of the reused activation buffer (growing it the
/// first time a size is needed) with `convert(t, row_t)` for every token `t`, in parallel
/// for prompts; returns those bytes.
fn convert_rows(
    buf: &mut Vec<u8>,
    n_tok: usize,
    act_row: usize,
    convert: impl Fn(usize, &mut [u8]) -> std::result::Result<(), rgemma_quant::QuantError> + Sync,
) -> std::result::Result<&[u8], rgemma_quant::QuantError> {
    if buf.len() < n_tok * act_row {
        buf.resize(n_tok * act_row, 0);
    }
    let act = &mut buf[..n_tok * act_row];
    if n_tok > 1 {
        team::try_for_each_chunk_mut(act, act_row, &convert)?;
    } else {
        act.chunks_mut(act_row)
            .enumerate()
            .try_for_each(|(t, dst)| convert(t, dst))?;
    }
    Ok(act)
}

/// Rows per parallel task: enough tasks for load balance in decode (one token); for a
/// prompt, few enough rows that they and one 4-token activation tile share the L1 cache
/// (8 rows of 2560 Q4_0 values = 11.5 KB, 4 Q8_0 activation rows = 11 KB) while the
/// kernel walks the rows once per tile.
fn rows_per_task(rows: usize, n_tok: usize) -> usize {
    if n_tok == 1 {
        let threads = rayon::current_num_threads().max(1);
        (rows / (threads * 8)).clamp(8, 256)
    } else {
        8
    }
}

#[allow(clippy::too_many_arguments)]
fn matmul_kernels(
    backend: Backend,
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
    if rows == 0 || n_tok == 0 {
        return Ok(());
    }
    let qerr = |e: rgemma_quant::QuantError| Error::Format(format!("matmul {}: {e}", w.info.name));
    let act_ty = dot::activation_type(w.ty)
        .ok_or_else(|| qerr(rgemma_quant::QuantError::Unsupported(w.ty)))?;
    let x_width = input_width(w, map);
    let act_row = dot::activation_row_bytes(w.ty, x_width).map_err(qerr)?;

    // 1. Every token's input, converted once into the reused buffer.
    let mut act_buf = scratch
        .activations
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let act = convert_rows(&mut act_buf, n_tok, act_row, |t, dst| {
        let src = &x[t * x_stride..t * x_stride + x_width];
        dot::quantize_activation(backend, act_ty, src, dst)
    })
    .map_err(qerr)?;

    // 2. Row chunks (never straddling two block-diagonal groups) over the pool.
    let group = map.rows_per_group(rows);
    let per_task = rows_per_task(rows, n_tok).min(group);
    let tasks_per_group = group.div_ceil(per_task);
    let n_groups = rows.div_ceil(group);
    let act_block_bytes = |values: usize| values / act_ty.block_size() * act_ty.type_size();
    let shared = SharedOut(out.as_mut_ptr());
    team::try_for_each_task(n_groups * tasks_per_group, |task| -> Result<()> {
        let (g, k) = (task / tasks_per_group, task % tasks_per_group);
        let r0 = g * group + k * per_task;
        let r1 = (r0 + per_task).min((g + 1) * group).min(rows);
        if r0 >= r1 {
            return Ok(());
        }
        let in_off = match map {
            InputMap::Dense => 0,
            InputMap::BlockDiag { .. } => act_block_bytes(g * cols),
        };
        // SAFETY: rows r0..r1 < rows and tokens < n_tok of `out` (checked to hold
        // n_tok * rows values in `matmul`) are written only by this task.
        unsafe {
            dot::gemm_to_ptr(
                backend,
                w.ty,
                cols,
                &wdata[r0 * w.row_bytes..r1 * w.row_bytes],
                w.row_bytes,
                r1 - r0,
                &act[in_off..],
                act_row,
                n_tok,
                shared.ptr().add(r0),
                rows,
            )
            .map_err(qerr)?;
            if let Some(b) = bias {
                shared.add_bias(b, r0..r1, rows, n_tok);
            }
        }
        Ok(())
    })
}

/// One product of [`matmul_same_input`]: `out[t, r] = bias[r] + W[r, :] · x[t, :]`.
pub struct Product<'a> {
    pub w: &'a Matrix,
    /// The stored bytes of `w` (the memory map).
    pub wdata: &'a [u8],
    pub bias: Option<&'a [f32]>,
    pub out: &'a mut [f32],
}

/// Several dense products of the same input (gate and up of the MLP, x and y of the
/// recurrent block, q/k/v): when they are all packed with one type, the input is converted
/// once and all their row groups share one parallel loop (one synchronisation instead of
/// several, and better balance at batch 1). Otherwise each goes through [`matmul`]. All
/// products read the input through `map`.
pub fn matmul_same_input(
    products: &mut [Product<'_>],
    map: InputMap,
    x: &[f32],
    x_stride: usize,
    n_tok: usize,
    scratch: &ThreadScratch,
) -> Result<()> {
    let first = products.first().map(|p| (p.w.ty, p.w.cols));
    let fused = matches!(scratch.path, MatmulPath::Kernels(_))
        && products.len() <= MAX_PRODUCTS
        && products
            .iter()
            .all(|p| packed_fits(p.w, map) && Some((p.w.ty, p.w.cols)) == first);
    if !fused {
        for p in products.iter_mut() {
            matmul(
                p.w, p.wdata, map, x, x_stride, n_tok, p.bias, p.out, scratch,
            )?;
        }
        return Ok(());
    }
    let MatmulPath::Kernels(backend) = scratch.path else {
        unreachable!("checked above");
    };
    for p in products.iter() {
        scratch.observe(p.w, map, x, x_stride, n_tok);
    }
    matmul_packed(backend, products, map, x, x_stride, n_tok, scratch)
}

/// Most products [`matmul_same_input`] fuses into one loop (q, k and v are three).
const MAX_PRODUCTS: usize = 4;

/// Tasks per pool thread of the packed path: enough for rayon to even out a slow thread,
/// few enough that each task's run of groups is long.
const TASKS_PER_THREAD: usize = 4;

/// Weights repacked at load time (`super::packing`): activations are converted once into
/// the packed kernels' format, then runs of 8-row groups of every product are spread over
/// the pool; each kernel call handles its groups for all tokens (the kernel tiles the
/// tokens). All products have the same type and width and fit `map` (checked by the
/// callers with [`packed_fits`]).
fn matmul_packed(
    backend: Backend,
    products: &mut [Product<'_>],
    map: InputMap,
    x: &[f32],
    x_stride: usize,
    n_tok: usize,
    scratch: &ThreadScratch,
) -> Result<()> {
    let Some(first) = products.first() else {
        return Ok(());
    };
    let (ty, cols) = (first.w.ty, first.w.cols);
    if products.len() > MAX_PRODUCTS {
        return Err(Error::InvalidArgument(format!(
            "matmul: {} products of one input, at most {MAX_PRODUCTS}",
            products.len()
        )));
    }
    // Every product has the same width, so the same input width.
    let x_width = input_width(first.w, map);
    for p in products.iter() {
        let w = p.w;
        let ok = packed_fits(w, map)
            && w.packed.as_deref().is_some_and(|pk| {
                pk.ngroups * packed::GROUP_ROWS == w.rows
                    && pk.bytes().len() >= pk.ngroups * pk.group_bytes
            });
        let x_needed = if n_tok == 0 {
            0
        } else {
            (n_tok - 1) * x_stride + x_width
        };
        if !ok
            || w.ty != ty
            || w.cols != cols
            || input_width(w, map) != x_width
            || p.out.len() < n_tok * w.rows
            || x.len() < x_needed
            || p.bias.is_some_and(|b| b.len() < w.rows)
            || (n_tok > 1 && x_stride < x_width)
        {
            return Err(Error::InvalidArgument(format!(
                "matmul {}: shapes do not fit the packed path ({}x{}, {n_tok} tokens)",
                w.info.name, w.rows, w.cols
            )));
        }
    }
    if n_tok == 0 {
        return Ok(());
    }
    let qerr = |e: rgemma_quant::QuantError| Error::Format(format!("matmul ({ty}): {e}"));
    let act_row = packed::activation_row_bytes(ty, x_width).map_err(qerr)?;
    // Activation bytes of one block-diagonal block's slice (its offset step).
    let act_block = packed::activation_row_bytes(ty, cols).map_err(qerr)?;

    // 1. Every token's input, converted once into the reused buffer.
    let mut act_buf = scratch
        .activations
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let act = convert_rows(&mut act_buf, n_tok, act_row, |t, dst| {
        packed::quantize_activation(backend, ty, &x[t * x_stride..t * x_stride + x_width], dst)
    })
    .map_err(qerr)?;

    // 2. Group runs, a few tasks per thread for balance. A prompt's task must span many
    // groups: the kernels' drivers keep a block of groups in L2 while every token tile
    // passes over it, so one group per task would stream all tokens' activations (1.5 MB
    // at n = 2560, 8 MB at 14336) from L3 for every 8 rows. A run never crosses a
    // block-diagonal block (a *span* of groups reading one input slice; a dense matrix is
    // one span). Task k belongs to the product whose run of task indices (prefix sums in
    // `first_task`) contains it; no list is built, so the per-token path does not allocate.
    let total_groups: usize = products.iter().map(|p| p.w.rows / packed::GROUP_ROWS).sum();
    let threads = rayon::current_num_threads().max(1);
    let span_groups = |rows: usize| match map {
        InputMap::Dense => rows / packed::GROUP_ROWS,
        InputMap::BlockDiag { out_per_block } => out_per_block / packed::GROUP_ROWS,
    };
    let per_task = (total_groups / (threads * TASKS_PER_THREAD))
        .clamp(1, 512)
        .min(span_groups(first.w.rows));
    let mut first_task = [0usize; MAX_PRODUCTS + 1];
    let mut outs = [SharedOut(std::ptr::null_mut()); MAX_PRODUCTS];
    for (i, p) in products.iter_mut().enumerate() {
        let (ngroups, span) = (p.w.rows / packed::GROUP_ROWS, span_groups(p.w.rows));
        first_task[i + 1] = first_task[i] + ngroups / span * span.div_ceil(per_task);
        outs[i] = SharedOut(p.out.as_mut_ptr());
    }
    let n_products = products.len();
    let products: &[Product<'_>] = products;
    team::try_for_each_task(first_task[n_products], |task| -> Result<()> {
        let i = (0..n_products)
            .find(|&i| task < first_task[i + 1])
            .expect("task < total");
        let p = &products[i];
        let (w, pk) = (p.w, p.w.packed.as_deref().expect("checked above"));
        let rows = w.rows;
        let gb = pk.group_bytes;
        let span = span_groups(rows);
        let tasks_per_span = span.div_ceil(per_task);
        let local = task - first_task[i];
        let (s, k) = (local / tasks_per_span, local % tasks_per_span);
        let g0 = s * span + k * per_task;
        let g1 = (g0 + per_task).min((s + 1) * span);
        let (r0, r1) = (g0 * packed::GROUP_ROWS, g1 * packed::GROUP_ROWS);
        let in_off = match map {
            InputMap::Dense => 0,
            InputMap::BlockDiag { .. } => s * act_block,
        };
        let out = outs[i];
        // SAFETY: rows r0..r1 <= rows and tokens < n_tok of this product's output
        // (checked above to hold n_tok * rows values) are written only by this task.
        unsafe {
            packed::gemm_to_ptr(
                backend,
                ty,
                cols,
                &pk.bytes()[g0 * gb..g1 * gb],
                g1 - g0,
                &act[in_off..],
                act_row,
                n_tok,
                out.ptr().add(r0),
                rows,
            )
            .map_err(qerr)?;
            if let Some(b) = p.bias {
                out.add_bias(b, r0..r1, rows, n_tok);
            }
        }
        Ok(())
    })
}

/// The reference path: decode each weight row to f32, dot in f32.
#[allow(clippy::too_many_arguments)]
fn matmul_reference(
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
    let shared = SharedOut(out.as_mut_ptr());
    let n_tasks = rows.div_ceil(ROWS_PER_TASK);
    team::try_for_each_task(n_tasks, |task| {
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
            packed: None,
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

    /// Kernel path (every available backend) and reference path on quantized weights, dense
    /// and block-diagonal, 1 and several tokens: against an f64 product of the decoded
    /// weights with the decoded activations each path uses (8-bit for the kernels).
    #[test]
    fn kernel_and_reference_paths_match_decoded_products() {
        use rgemma_quant::{dequantize_row, quantize_row};
        let (rows, cols) = (70usize, 512usize);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q2K,
            GgmlType::Q3K,
            GgmlType::Q4K,
            GgmlType::Q6K,
            GgmlType::BF16,
        ] {
            let row_bytes = ty.row_size(cols as u64).unwrap() as usize;
            let wf = values(rows * cols, 7);
            let mut data = vec![0u8; rows * row_bytes];
            quantize_row(ty, &wf, &mut data).unwrap();
            let mut wd = vec![0.0f32; rows * cols];
            dequantize_row(ty, &data, &mut wd).unwrap();
            let act_ty = dot::activation_type(ty).unwrap();
            for (map, groups) in [
                (InputMap::Dense, 1usize),
                (InputMap::BlockDiag { out_per_block: 35 }, 2),
            ] {
                for n_tok in [1usize, 6] {
                    let width = groups * cols;
                    let x = values(n_tok * width, 9);
                    let b = values(rows, 11);
                    let mut paths = vec![MatmulPath::Reference];
                    paths.extend(
                        Backend::all_available()
                            .into_iter()
                            .map(MatmulPath::Kernels),
                    );
                    for path in paths {
                        let mut scratch = ThreadScratch::new(rayon::current_num_threads(), cols);
                        scratch.set_path(path);
                        let m = matrix(ty, rows, cols);
                        let mut out = vec![0.0; n_tok * rows];
                        matmul(
                            &m,
                            &data,
                            map,
                            &x,
                            width,
                            n_tok,
                            Some(&b),
                            &mut out,
                            &scratch,
                        )
                        .unwrap();
                        for t in 0..n_tok {
                            // The activations this path multiplies with.
                            let xs = &x[t * width..(t + 1) * width];
                            let xd: Vec<f32> = if path == MatmulPath::Reference {
                                xs.to_vec()
                            } else {
                                let nb = width / act_ty.block_size() * act_ty.type_size();
                                let mut q = vec![0u8; nb];
                                dot::quantize_activation(Backend::Scalar, act_ty, xs, &mut q)
                                    .unwrap();
                                let mut d = vec![0.0f32; width];
                                dequantize_row(act_ty, &q, &mut d).unwrap();
                                d
                            };
                            for r in 0..rows {
                                let off = (r / (rows / groups)) * cols;
                                let terms =
                                    (0..cols).map(|c| wd[r * cols + c] as f64 * xd[off + c] as f64);
                                let abs: f64 = terms.clone().map(f64::abs).sum();
                                let want = b[r] as f64 + terms.sum::<f64>();
                                let got = out[t * rows + r] as f64;
                                // Q8_K codes may differ by one at rounding ties between the
                                // scalar and SIMD quantizers: allow one code step there.
                                let tol = 2e-5 * abs + 1e-5;
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{ty} {path:?} {map:?} t{t} r{r}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The packed path with a block-diagonal map (blocks of 2 groups) and two fused
    /// products against the stored layout's kernels on the same weights: every token of
    /// 1, 5 and 17, every backend. Float weights are multiplied in f32 by both, so they
    /// agree to f32 rounding; Q8_0 sees the same 8-bit activations in both.
    #[test]
    fn packed_block_diagonal_and_fused_products_match_the_stored_layout() {
        use rgemma_quant::quantize_row;
        let (blocks, out_per_block, cols) = (3usize, 16usize, 64usize);
        let rows = blocks * out_per_block;
        let map = InputMap::BlockDiag { out_per_block };
        let width = blocks * cols;
        for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
            let row_bytes = ty.row_size(cols as u64).unwrap() as usize;
            let weights = |seed: u32| {
                let mut data = vec![0u8; rows * row_bytes];
                quantize_row(ty, &values(rows * cols, seed), &mut data).unwrap();
                data
            };
            let (d1, d2) = (weights(21), weights(22));
            let stored = matrix(ty, rows, cols);
            let packed_of = |data: &[u8]| {
                let mut m = matrix(ty, rows, cols);
                m.packed = Some(std::sync::Arc::new(
                    super::super::packing::pack_matrix(&m, data).unwrap(),
                ));
                m
            };
            let (p1, p2) = (packed_of(&d1), packed_of(&d2));
            let b = values(rows, 23);
            for backend in Backend::all_available() {
                let mut scratch = ThreadScratch::new(rayon::current_num_threads(), cols);
                scratch.set_path(MatmulPath::Kernels(backend));
                for n_tok in [1usize, 5, 17] {
                    let x = values(n_tok * width, 24 + n_tok as u32);
                    let run = |m: &Matrix, data: &[u8], bias: Option<&[f32]>| {
                        let mut out = vec![0.0; n_tok * rows];
                        matmul(m, data, map, &x, width, n_tok, bias, &mut out, &scratch).unwrap();
                        out
                    };
                    let (want1, want2) = (run(&stored, &d1, Some(&b)), run(&stored, &d2, None));
                    let (mut got1, mut got2) = (vec![0.0; n_tok * rows], vec![0.0; n_tok * rows]);
                    let mut products = [
                        Product {
                            w: &p1,
                            wdata: &d1,
                            bias: Some(&b),
                            out: &mut got1,
                        },
                        Product {
                            w: &p2,
                            wdata: &d2,
                            bias: None,
                            out: &mut got2,
                        },
                    ];
                    matmul_same_input(&mut products, map, &x, width, n_tok, &scratch).unwrap();
                    let single = run(&p1, &d1, Some(&b));
                    for (name, got, want) in [
                        ("fused 1", &got1, &want1),
                        ("fused 2", &got2, &want2),
                        ("single", &single, &want1),
                    ] {
                        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                            assert!(
                                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                                "{ty} {backend:?} {n_tok} tokens {name} [{i}]: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
