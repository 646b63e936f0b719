//! Single kernels on host data, for the tests in tests/cuda_*.rs (each compares a kernel with
//! the CPU's scalar reference). Not used by the forward pass.

use std::sync::Arc;

use cudarc::driver::PushKernelArg;
use rgemma_quant::GgmlType;

use super::device::Device;
use super::forward::{linear, MatmulKernel};
use super::kernels::{cfg, f32_bytes_mut, launch, DevBuf, Kernels, MMV_MAX_COLS, Q8_1_BLOCK_BYTES};
use super::weights::{is_supported_type, GpuMatrix};
use crate::{Error, Result};

/// GPU 0 with the kernels loaded.
pub struct KernelRunner {
    pub dev: Device,
    pub kernels: Kernels,
}

impl KernelRunner {
    pub fn new() -> Result<Arc<KernelRunner>> {
        let dev = Device::open(0)?;
        let kernels = Kernels::load(&dev)?;
        Ok(Arc::new(KernelRunner { dev, kernels }))
    }

    fn matrix(&self, ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> Result<GpuMatrix> {
        let row_bytes = ty
            .row_size(cols as u64)
            .ok_or_else(|| Error::InvalidArgument(format!("{cols} columns of {ty}")))?
            as usize;
        if data.len() != rows * row_bytes || !is_supported_type(ty) {
            return Err(Error::InvalidArgument(format!(
                "{ty} matrix {rows}x{cols}: {} bytes",
                data.len()
            )));
        }
        Ok(GpuMatrix {
            buf: DevBuf::from_bytes(&self.dev.stream, data)?,
            ty,
            rows,
            cols,
            row_bytes,
        })
    }

    /// `out[t, r] = bias[r] + W[r, :] . x[t, off(r) :]` with the chosen kernel; `x` is
    /// `[n, width]` with width = cols for dense, `(rows / block_rows) * cols` otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        ty: GgmlType,
        data: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        n: usize,
        block_rows: Option<usize>,
        bias: Option<&[f32]>,
        which: MatmulKernel,
    ) -> Result<Vec<f32>> {
        let st = &self.dev.stream;
        let w = self.matrix(ty, data, rows, cols)?;
        let width = rows.div_ceil(block_rows.unwrap_or(rows).max(1)) * cols;
        if x.len() != n * width {
            return Err(Error::InvalidArgument("x size".into()));
        }
        let xb = DevBuf::from_f32(st, x)?;
        let bb = bias.map(|b| DevBuf::from_f32(st, b)).transpose()?;
        let act = DevBuf::zeros(st, MMV_MAX_COLS * width.div_ceil(32) * Q8_1_BLOCK_BYTES)?;
        let out = DevBuf::zeros(st, n * rows * 4)?;
        linear(
            &self.kernels,
            st,
            (act.ptr, &std::cell::Cell::new(None)),
            &w,
            bb.as_ref().map_or(0, |b| b.ptr),
            xb.ptr,
            n,
            block_rows,
            out.ptr,
            which,
        )?;
        let mut host = vec![0.0f32; n * rows];
        out.download(st, 0, f32_bytes_mut(&mut host))?;
        Ok(host)
    }

    /// The dequantize_rows kernel.
    pub fn dequantize(
        &self,
        ty: GgmlType,
        data: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>> {
        let st = &self.dev.stream;
        let w = self.matrix(ty, data, rows, cols)?;
        let out = DevBuf::zeros(st, rows * cols * 4)?;
        launch!(
            st,
            self.kernels.dequantize_rows,
            cfg((cols.div_ceil(256) as u32, rows as u32, 1), 256, 0),
            &w.buf.ptr,
            &w.type_id(),
            &(w.row_bytes as u64),
            &(cols as i32),
            &out.ptr
        )?;
        let mut host = vec![0.0f32; rows * cols];
        out.download(st, 0, f32_bytes_mut(&mut host))?;
        Ok(host)
    }

    /// rmsnorm_rows over `x` `[rows, weight.len()]`.
    pub fn rmsnorm(&self, x: &[f32], weight: &[f32], eps: f32) -> Result<Vec<f32>> {
        let st = &self.dev.stream;
        let width = weight.len();
        let rows = x.len() / width.max(1);
        let xb = DevBuf::from_f32(st, x)?;
        let wb = DevBuf::from_f32(st, weight)?;
        let out = DevBuf::zeros(st, x.len() * 4)?;
        launch!(
            st,
            self.kernels.rmsnorm_rows,
            cfg((rows as u32, 1, 1), 256, 0),
            &xb.ptr,
            &(width as i32),
            &wb.ptr,
            &(width as i32),
            &eps,
            &out.ptr
        )?;
        let mut host = vec![0.0f32; x.len()];
        out.download(st, 0, f32_bytes_mut(&mut host))?;
        Ok(host)
    }

    /// argmax_rows over `x` `[rows, n]`.
    pub fn argmax(&self, x: &[f32], n: usize) -> Result<Vec<u32>> {
        let st = &self.dev.stream;
        let rows = x.len() / n.max(1);
        let xb = DevBuf::from_f32(st, x)?;
        let out = DevBuf::zeros(st, rows * 4)?;
        launch!(
            st,
            self.kernels.argmax_rows,
            cfg((rows as u32, 1, 1), 1024, 0),
            &xb.ptr,
            &(n as i32),
            &out.ptr
        )?;
        let mut host = vec![0.0f32; rows];
        out.download(st, 0, f32_bytes_mut(&mut host))?;
        Ok(host.iter().map(|v| v.to_bits()).collect())
    }
}
